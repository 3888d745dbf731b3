//! `Receipt::from_bytes` on arbitrary bytes: no panic; accepted input is canonical; verifying
//! never panics.
#![no_main]

use hearth_wire::Receipt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Receipt::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
        assert_eq!(Receipt::from_bytes(&r.to_bytes()).as_ref(), Ok(&r));
        assert!(r.body.span.start() < r.body.span.end());
        let _ = r.verify();
    }
});
