//! hearth's swarm: nodes serve contiguous blocks of a model over libp2p; clients discover them in
//! the DHT, route a chain that covers every block, stream hidden states through it, check every
//! hop's signed receipt, and fail over to other nodes without changing the output.
//!
//! Invariants:
//! - the engine is reached only through `SliceServer` (node side) and `HiddenStage` (client side);
//! - bytes on the network are defined only by `hearth-wire`;
//! - one task owns the libp2p `Swarm` ([`net`]); everything else holds a cloneable handle, and
//!   every queue between them is bounded;
//! - every fallible `pub` function returns [`SwarmError`], whose [`SwarmErrorKind`] says what
//!   went wrong without parsing messages.
//!
//! Error kinds ([`SwarmErrorKind::as_str`] in brackets; the client module says which one a
//! failing chain ends with):
//! - `no_coverage`: some blocks have no server at all (the error names the first gap);
//! - `no_route`: only servers this chain caught misbehaving cover some blocks;
//! - `hops_exhausted`: failover ran out of replacements for a hop (carries its blocks and the
//!   last hop failure);
//! - `peer_misbehaved`: a peer sent bad data (receipt signature, non-finite or wrongly shaped
//!   hidden states, undecodable message);
//! - `unreachable`: a peer could not be reached, dropped the stream or refused the session;
//! - `timeout`: a peer did not answer a step within `step_timeout`;
//! - `io`: local I/O or transport setup (key file, listening, libp2p transports);
//! - `engine`: the local engine failed (loading or measuring a node's blocks);
//! - `invalid_input`: unusable configuration or arguments;
//! - `internal`: a bug in this crate.
//!
//! A [`SwarmChain`] used as a `HiddenStage` returns its `SwarmError` inside
//! `EngineError::Remote`, from which callers can downcast it.

pub mod adversary;
pub mod client;
pub mod dht;
pub mod error;
pub mod gossip;
pub mod identity;
pub mod net;
pub mod node;
pub mod placement;
pub mod routing;

pub use client::{
    ChainLog, ChainStep, CheckOutcome, ClientConfig, NodeTiming, SpotCheck, SwarmChain, SwarmClient,
};
pub use error::{SwarmError, SwarmErrorKind};
pub use identity::NodeIdentity;
pub use net::{Net, NetConfig, NetStatus};
pub use node::{Node, NodeConfig};
