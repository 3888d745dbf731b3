//! `FraudRequest::decode` and `FraudReply::decode` on arbitrary bytes, under the default and the
//! tight limits: no panic, and accepted input is canonical.
#![no_main]

use hearth_wire::{FraudReply, FraudRequest};
use hearth_wire_fuzz::both_limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = both_limits(data, FraudRequest::decode, FraudRequest::encode);
    let _ = both_limits(data, FraudReply::decode, FraudReply::encode);
});
