//! hearth-gateway: an OpenAI-compatible HTTP API over the swarm.
//!
//! The gateway is a swarm client: it holds the model's embeddings, final norm and output head,
//! tokenizes and samples locally, and sends only hidden states to nodes, so prompts and
//! completions as text never leave it. It speaks `GET /v1/models`, `POST /v1/chat/completions`
//! and `POST /v1/completions` (plain JSON and server-sent events), adds each response's
//! verification trail (route + signed hop receipts) in an extra `hearth` field that OpenAI
//! clients ignore, and exposes `/metrics` in Prometheus text format.
//!
//! This is the only crate that knows HTTP and the OpenAI JSON shapes. A failed generation is
//! answered by the kind of its failure ([`failure`]: 503 + `Retry-After` when the swarm lacks
//! working nodes, 502 for bad data from the route, 504 for a node that timed out, 500 for the
//! gateway's own faults) and counted by kind in `/metrics`.
//!
//! Hostile clients are bounded: every request passes `hearth_core::RequestGuard` (no
//! cross-origin or DNS-rebound browser requests, JSON bodies only) before anything else, and
//! the accept loop caps open connections and puts deadlines on request heads, bodies and
//! blocked response writes (see `GatewayConfig`).

pub mod backend;
mod connection;
pub mod failure;
pub mod metrics;
pub mod openai;
pub mod server;
pub mod trail;

pub use backend::{Backend, LocalBackend, SwarmBackend};
pub use server::{router, serve, Gateway, GatewayConfig};
pub use trail::{verify_trail, Trail, TrailReport};
