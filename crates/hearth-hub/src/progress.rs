//! How a long transfer reports its progress. The CLI draws bars; tests and libraries pass
//! [`Silent`] or record the calls.

/// Receives progress of downloads and extractions, one transfer at a time:
/// `begin`, any number of `advance`, then `end` (also when the transfer fails).
pub trait Progress {
    /// A transfer named `label` of `total` bytes (when known) begins, `done` of them already
    /// present (a resumed download).
    fn begin(&mut self, label: &str, total: Option<u64>, done: u64);
    /// `bytes` more bytes arrived.
    fn advance(&mut self, bytes: u64);
    /// The transfer ended, successfully or not.
    fn end(&mut self);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&mut self, _: &str, _: Option<u64>, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn end(&mut self) {}
}
