//! hearth-policy: the energy agent's decision code, and the schema of the agent's state.
//!
//! * [`reading`]: one device's telemetry and its health verdict.
//! * [`thermal`]: the first-order thermal RC model.
//! * [`policy`]: the decision `decide(input, state) → (decisions, state)`.
//! * [`sim_device`]: a simulated device (power per mode, thermal RC), steppable in simulated time.
//! * [`synthetic`]: reproducible synthetic fleets (property tests, decision timing).
//! * [`agent_state`]: what the agent's `GET /api/state` carries, shared by the agent that writes
//!   it and the node that reads it.
//!
//! Invariant: pure. No IO, no clock, no async: time is an argument (`now_s`), everything that
//! touches hardware or the network lives in `hearth-energy` and reaches the policy only through
//! [`policy::PolicyInput`]. Cargo enforces this: the crate depends on `serde` alone, so code
//! here cannot reach tokio, sockets or the hardware libraries, and the fleet simulator
//! (`hearth-sim`), which depends on this crate and not on `hearth-energy`, runs exactly the code
//! `hearth agent` runs and nothing else of it.

#![forbid(unsafe_code)]

pub mod agent_state;
mod json_float;
pub mod policy;
pub mod reading;
pub mod sim_device;
pub mod synthetic;
pub mod thermal;

pub use policy::{
    decide, decide_into, AiDemand, AiSpec, Decision, DeviceKind, DeviceSpec, DeviceState, DrEvent,
    DrTarget, HeatSpec, MineSpec, Mode, PolicyConfig, PolicyInput, PolicyState, PriceForecast,
    Prices, Reason, Scratch,
};
pub use reading::{validate, Health, HealthIssue, Reading};
pub use sim_device::SimulatedDevice;
pub use thermal::ThermalModel;
