//! Checks of untrusted work, as pure functions (docs/verification.md).
//!
//! - [`linkage`]: the hops of one step form a chain: each input is the previous output, the spans
//!   tile the blocks, one model, one set of positions;
//! - [`compare`]: how far a node's rows are from a recomputation, and the calibrated tolerance
//!   that separates floating-point noise from cheating;
//! - [`spot`]: which windows a client re-executes, chosen with randomness it commits to before
//!   and reveals after the node's answers, and the arithmetic of catching a cheater;
//! - [`fraud`]: the checks that turn a [`hearth_wire::FraudProof`] into "this node signed
//!   outputs that its blocks do not compute";
//! - [`reputation`]: a node's score from its checked windows and measured latency.
//!
//! Invariant: no IO, no async, no clock, no engine. Recomputing hidden states is the caller's
//! (the swarm client, `hearth verify`); storing and gossiping verdicts is the swarm's.

pub mod compare;
pub mod fraud;
pub mod linkage;
pub mod reputation;
pub mod spot;

pub use compare::{Comparison, Verdict, HONEST_TOLERANCE};
pub use fraud::{FraudError, Replay};
pub use linkage::{check_chain, LinkError};
pub use reputation::{Reputation, Standing};
pub use spot::{SpotCheckPolicy, SpotSeed};
