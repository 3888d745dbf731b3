//! hearth-energy: the energy-aware node agent, the IO around the pure policy of `hearth-policy`.
//!
//! * [`reading`], [`thermal`], [`policy`], [`sim_device`]: re-exported from `hearth-policy`
//!   (readings and their health verdict, the thermal RC model, the decision
//!   `decide(input, state) → (decisions, state)`, the simulated device), so `hearth_energy::policy`
//!   and `hearth_policy::policy` are one module.
//! * [`telemetry`]: NVML, RAPL, hwmon, /proc and simulated devices behind one interface.
//! * [`signals`]: price CSV/JSON, hashprice, heat demand, OpenADR-3-shaped demand-response events.
//! * [`control`]: miners (hearth-mining), GPU power limits (NVML), simulated devices; per-device
//!   workers that retry with backoff.
//! * [`agent`]: the runtime loop, the HTTP API (`/metrics`, `/api/state`, `/api/dr/events`) and
//!   the configuration; `/api/state` serializes `hearth_policy::agent_state::Snapshot`.
//! * [`bench`](mod@bench): the timing of one decision over a synthetic fleet.
//!
//! Invariant: the policy knows no IO and no clock (Cargo enforces it: it lives in
//! `hearth-policy`, which depends on serde alone); everything that touches hardware or the
//! network lives here and reaches it only through [`policy::PolicyInput`].

pub mod agent;
pub mod bench;
pub mod control;
pub mod signals;
pub mod telemetry;

pub use hearth_policy::{policy, reading, sim_device, thermal};
pub use policy::{
    decide, decide_into, AiDemand, AiSpec, Decision, DeviceKind, DeviceSpec, DeviceState, DrEvent,
    DrTarget, HeatSpec, MineSpec, Mode, PolicyConfig, PolicyInput, PolicyState, PriceForecast,
    Prices, Reason, Scratch,
};
pub use reading::{validate, Health, HealthIssue, Reading};
pub use sim_device::SimulatedDevice;
pub use thermal::ThermalModel;
