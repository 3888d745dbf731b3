//! hearth-energy: the energy-aware node agent.
//!
//! * [`reading`]: one device's telemetry and its health verdict.
//! * [`thermal`]: the first-order thermal RC model.
//! * [`policy`]: the pure decision `decide(input, state) → (decisions, state)`.
//! * [`sim_device`]: a simulated device (power per mode, thermal RC), steppable in simulated time.
//! * [`telemetry`]: NVML, RAPL, hwmon, /proc and simulated devices behind one interface.
//! * [`signals`]: price CSV/JSON, hashprice, heat demand, OpenADR-3-shaped demand-response events.
//! * [`control`]: miners (hearth-mining), GPU power limits (NVML), simulated devices; per-device
//!   workers that retry with backoff.
//! * [`agent`]: the runtime loop, the HTTP API (`/metrics`, `/api/state`, `/api/dr/events`) and
//!   the configuration.
//! * [`bench`]: synthetic fleets and the timing of one decision.
//!
//! Invariant: the policy knows no IO and no clock; everything that touches hardware or the
//! network lives outside it and reaches it only through [`policy::PolicyInput`].

pub mod agent;
pub mod bench;
pub mod control;
pub mod policy;
pub mod reading;
pub mod signals;
pub mod sim_device;
pub mod telemetry;
pub mod thermal;

pub use policy::{
    decide, decide_into, AiDemand, AiSpec, Decision, DeviceKind, DeviceSpec, DeviceState, DrEvent,
    DrTarget, HeatSpec, MineSpec, Mode, PolicyConfig, PolicyInput, PolicyState, PriceForecast,
    Prices, Reason, Scratch,
};
pub use reading::{validate, Health, HealthIssue, Reading};
pub use sim_device::SimulatedDevice;
pub use thermal::ThermalModel;
