//! hearth-sim: replays a fleet over electricity-price and AI-job traces in simulated time.
//!
//! * [`prices`]: price traces (CSV, `hour,price` or `timestamp,price`), validated, resampled.
//! * [`jobs`]: AI job traces (CSV) and a seeded generator shaped after GPU-cluster traces.
//! * [`fleet`]: sites, device groups and economics (JSON or built in).
//! * [`oracle`]: the exact perfect-foresight on/off schedule (the bound for price-only policies).
//! * [`sched`]: the event-driven site scheduler (FIFO, SRF, Tiresias-like LAS, hearth's).
//! * [`sim`]: the interval loop that runs `hearth_policy::decide_into` — the same policy code as
//!   `hearth agent` — and accounts energy, money, heat, temperature and demand response.
//! * [`report`]: Markdown/JSON tables and SVG plots.
//! * [`run`]: one `hearth simulate` invocation (inputs, run list, report); the CLI is a thin
//!   wrapper over it.
//!
//! Invariant: no IO apart from [`report`] writing an output folder the caller names; every
//! result is a pure function of its inputs and seeds. The simulator depends on `hearth-policy`
//! (the pure decision code) and not on `hearth-energy` (the agent's IO), so Cargo guarantees it
//! replays the agent's decisions without any of the agent's hardware, network or clock.

pub mod fleet;
pub mod jobs;
pub mod oracle;
pub mod prices;
pub mod report;
pub mod run;
pub mod sched;
pub mod sim;
pub mod time;
