//! Where things live in the DHT. A node that serves blocks A..B of model M
//! - provides `model(M)` (so a client finds every server of M with one query) and
//!   `block(M, b)` for each served block b (so anyone can ask who serves a given block), and
//! - stores its signed [`Announcement`] under `announcement(M, node)`.
//!
//! A node that hosts a re-checked fraud proof against node X of model M provides `fraud(M, X)`
//! ([`crate::gossip`]); clients look the key up for every server they might route to.
//!
//! Provider records and stored announcements expire after the configured record lifetime unless
//! the node refreshes them; announcements also carry their own issue time and lifetime (at most
//! [`MAX_ANNOUNCEMENT_TTL_SECS`]), checked by every reader, so a record that outlives its node on
//! some peer is still ignored.
//!
//! Storing peers keep only valid announcements ([`check_record`]): a value that is not a signed
//! announcement of the node and model its key names, or is expired, issued in the future or
//! claims too long a life, is refused, and an older announcement never replaces a newer one, so
//! nobody can shadow a node's record with junk or with its own stale copy.

use crate::identity::peer_of_key;
use crate::net::Net;
use futures::future::join_all;
use hearth_core::{ContentHash, ContentHasher};
use hearth_wire::{Announcement, Limits, SignedAnnouncement};
use libp2p::kad::RecordKey;
use libp2p::PeerId;

/// The provider key under which every server of `model` is found (a domain-separated hash).
pub fn model_key(model: &ContentHash) -> RecordKey {
    RecordKey::new(&ContentHasher::new("dht-model").field(&model.0).finish().0)
}

/// The provider key of one block of `model`: its servers provide it, for per-block lookups.
pub fn block_key(model: &ContentHash, block: u32) -> RecordKey {
    RecordKey::new(
        &ContentHasher::new("dht-block")
            .field(&model.0)
            .field(&block.to_le_bytes())
            .finish()
            .0,
    )
}

/// The record key under which `node` stores its signed announcement about `model`.
pub fn announcement_key(model: &ContentHash, node: &PeerId) -> RecordKey {
    RecordKey::new(
        &ContentHasher::new("dht-announcement")
            .field(&model.0)
            .field(&node.to_bytes())
            .finish()
            .0,
    )
}

/// The provider key of the nodes that host a fraud proof against `accused` about `model`.
pub fn fraud_key(model: &ContentHash, accused: &PeerId) -> RecordKey {
    RecordKey::new(
        &ContentHasher::new("dht-fraud")
            .field(&model.0)
            .field(&accused.to_bytes())
            .finish()
            .0,
    )
}

/// Clock skew tolerated on an announcement's issue time: a record "issued" further in the future
/// would otherwise stay valid past its real lifetime.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// The longest lifetime an announcement may claim (nodes re-announce every few seconds to a
/// minute): a longer one would keep a dead node routable.
pub const MAX_ANNOUNCEMENT_TTL_SECS: u32 = 3600;

/// Whether `value`, offered for storage under `key`, is a valid announcement: signed, stored
/// under its own node's and model's key, unexpired, not issued in the future and with a capped
/// lifetime. Returns it decoded, or why not.
pub fn check_record(
    key: &RecordKey,
    value: &[u8],
    now_unix_ms: u64,
    limits: &Limits,
) -> Result<SignedAnnouncement, &'static str> {
    let signed =
        SignedAnnouncement::decode(value, limits).map_err(|_| "not a signed announcement")?;
    let a = &signed.announcement;
    let node = peer_of_key(&a.node).ok_or("a signing key with no peer id")?;
    if announcement_key(&a.model_id, &node) != *key {
        return Err("stored under another key than its node's and model's");
    }
    if !valid_at(a, now_unix_ms) {
        return Err("expired, issued in the future or claiming too long a life");
    }
    Ok(signed)
}

/// Unexpired at `now_unix_ms`, not issued in the future (beyond the skew), lifetime capped.
fn valid_at(a: &Announcement, now_unix_ms: u64) -> bool {
    !a.expired(now_unix_ms)
        && a.issued_unix_ms <= now_unix_ms.saturating_add(MAX_CLOCK_SKEW_MS)
        && a.ttl_secs <= MAX_ANNOUNCEMENT_TTL_SECS
}

/// The newest valid, unexpired announcement among `values` that really comes from `node` about
/// `model`. Anything else (bad signature, another node's key, another model, expired, issued in
/// the future) is dropped.
pub fn pick_announcement(
    values: &[Vec<u8>],
    node: &PeerId,
    model: &ContentHash,
    now_unix_ms: u64,
    limits: &Limits,
) -> Option<SignedAnnouncement> {
    values
        .iter()
        .filter_map(|v| SignedAnnouncement::decode(v, limits).ok())
        .filter(|s| {
            let a = &s.announcement;
            a.model_id == *model
                && peer_of_key(&a.node).as_ref() == Some(node)
                && valid_at(a, now_unix_ms)
        })
        .max_by_key(|s| s.announcement.issued_unix_ms)
}

/// Every server that currently announces `model` (of `n_blocks` blocks) with a valid record:
/// the model's providers, then each one's announcement, looked up concurrently.
pub async fn find_servers(
    net: &Net,
    model: &ContentHash,
    n_blocks: u32,
    limits: &Limits,
) -> Vec<(PeerId, Announcement)> {
    let providers = net.get_providers(model_key(model)).await;
    let lookups = providers.into_iter().map(|peer| async move {
        let values = net.get_records(announcement_key(model, &peer)).await;
        pick_announcement(&values, &peer, model, now_unix_ms(), limits)
            .filter(|s| s.announcement.n_blocks == n_blocks)
            .map(|s| (peer, s.announcement))
    });
    join_all(lookups).await.into_iter().flatten().collect()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it), the time base of
/// announcements.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
