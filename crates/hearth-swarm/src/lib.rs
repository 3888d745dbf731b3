//! hearth's swarm: nodes serve contiguous blocks of a model over libp2p; clients discover them in
//! the DHT, route a chain that covers every block, stream hidden states through it, check every
//! hop's signed receipt, and fail over to other nodes without changing the output.
//!
//! Invariants:
//! - the engine is reached only through `SliceServer` (node side) and `HiddenStage` (client side);
//! - bytes on the network are defined only by `hearth-wire`;
//! - one task owns the libp2p `Swarm` ([`net`]); everything else holds a cloneable handle, and
//!   every queue between them is bounded.

pub mod client;
pub mod dht;
pub mod identity;
pub mod net;
pub mod node;
pub mod placement;
pub mod routing;

pub use client::{ChainLog, ClientConfig, NodeTiming, SwarmChain, SwarmClient};
pub use identity::NodeIdentity;
pub use net::{Net, NetConfig, NetStatus};
pub use node::{Node, NodeConfig};
