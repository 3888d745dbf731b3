//! `Response::decode` on arbitrary bytes: no panic; accepted input is canonical; shapes hold;
//! checking the embedded receipt never panics.
#![no_main]

use hearth_wire::{Limits, Response, MAX_ERROR_MESSAGE};
use hearth_wire_fuzz::{both_limits, use_hidden};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(resp) = both_limits(data, Response::decode, Response::encode) {
        match &resp {
            Response::Opened(_) => {}
            Response::StepDone(s) => {
                use_hidden(&s.hidden, &Limits::default());
                let _ = s.receipt.verify();
                let _ = s.receipt.verify_from(&s.receipt.node, &s.receipt.body);
            }
            Response::Error(e) => assert!(e.message.len() <= MAX_ERROR_MESSAGE),
        }
    }
});
