//! Shared vocabulary of hearth: block ranges, content hashes, API keys, the browser guard of the
//! HTTP APIs, the SplitMix64 generator.
//!
//! Invariant: no IO, no async, no heavy dependencies. Everything here is plain data
//! that any other crate (engine, wire protocol, verifier, ledger) can agree on. The one
//! exception is reading an environment variable of API keys
//! ([`ApiKeys::keys_from_flags_and_env`]).

mod api_keys;
mod block_range;
mod hash;
mod request_guard;
mod rng;

pub use api_keys::{ApiKeys, UnprotectedBind};
pub use block_range::{BlockRange, BlockRangeError};
pub use hash::{ContentHash, ContentHasher};
pub use request_guard::{Refusal, RequestGuard, RequestHead};
pub use rng::SplitMix64;
