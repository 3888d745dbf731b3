//! `Request::decode` on arbitrary bytes: no panic; accepted input is canonical; shapes hold.
#![no_main]

use hearth_wire::{Limits, Request};
use hearth_wire_fuzz::{both_limits, use_hidden};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(req) = both_limits(data, Request::decode, Request::encode) {
        let limits = Limits::default();
        match &req {
            Request::Open(o) => {
                assert!(o.max_len >= 1 && o.max_len <= limits.max_positions);
                assert!(o.span.end() <= limits.max_blocks);
            }
            Request::Step(s) => use_hidden(&s.hidden, &limits),
            Request::Close => assert_eq!(data.len(), 2),
        }
    }
});
