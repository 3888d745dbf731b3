//! Shared vocabulary of hearth: block ranges and content hashes.
//!
//! Invariant: no IO, no async, no heavy dependencies. Everything here is plain data
//! that any other crate (engine, wire protocol, verifier, ledger) can agree on.

mod block_range;
mod hash;

pub use block_range::{BlockRange, BlockRangeError};
pub use hash::{ContentHash, ContentHasher};
