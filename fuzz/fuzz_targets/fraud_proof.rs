//! `FraudProof::from_bytes` on arbitrary bytes: no panic; accepted input is canonical.
#![no_main]

use hearth_wire::{FraudProof, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(p) = FraudProof::from_bytes(data, &limits) {
        assert_eq!(p.to_bytes(), data);
        assert!(p.window_rows > 0);
    }
});
