//! `FraudProof::from_bytes` on arbitrary bytes, under the default and the tight limits: no
//! panic; accepted input is canonical; the disputed window is not empty; checking the proof's
//! structure (`hearth_verify::Replay::of` does the same on the receipts) never panics.
#![no_main]

use hearth_wire::{ActivationCommitment, FraudProof};
use hearth_wire_fuzz::both_limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(p) = both_limits(data, FraudProof::from_bytes, FraudProof::to_bytes) {
        assert!(p.window_rows > 0);
        for s in &p.steps {
            let _ = s.receipt.verify();
            let _ = s.input.digest();
            let _ = ActivationCommitment::of(&s.output);
        }
    }
});
