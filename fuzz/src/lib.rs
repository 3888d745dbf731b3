//! Shared checks for the fuzz targets. Every decoder is run with the default limits and with
//! tight ones; whatever decodes must be canonical (re-encodes to the very input bytes) and decode
//! again to the same value, and anything accepted under tight limits must be accepted under the
//! default ones.

use hearth_wire::{HiddenStates, Limits, WireError};
use std::fmt::Debug;

/// Limits small enough that the fuzzer reaches "exactly at the limit" and "one past" often.
pub fn tight() -> Limits {
    Limits {
        max_frame_bytes: 256,
        max_rows: 4,
        max_hidden: 8,
        max_positions: 64,
        max_blocks: 8,
        max_announcement_bytes: 512,
    }
}

/// Decodes `data` under `limits`; on success checks that the value is canonical and stable.
/// Returns the value, if any.
pub fn round_trip<T, D, E>(data: &[u8], limits: &Limits, decode: D, encode: E) -> Option<T>
where
    T: PartialEq + Debug,
    D: Fn(&[u8], &Limits) -> Result<T, WireError>,
    E: Fn(&T) -> Vec<u8>,
{
    let value = decode(data, limits).ok()?;
    let again = encode(&value);
    assert_eq!(
        again, data,
        "decoded value re-encodes differently: {value:?}"
    );
    assert_eq!(
        decode(&again, limits).as_ref(),
        Ok(&value),
        "re-encoding decodes to another value"
    );
    Some(value)
}

/// Decodes under both limit sets; tight ⊂ default.
pub fn both_limits<T, D, E>(data: &[u8], decode: D, encode: E) -> Option<T>
where
    T: PartialEq + Debug,
    D: Fn(&[u8], &Limits) -> Result<T, WireError>,
    E: Fn(&T) -> Vec<u8>,
{
    let default = round_trip(data, &Limits::default(), &decode, &encode);
    let tight = round_trip(data, &tight(), &decode, &encode);
    if let Some(t) = &tight {
        assert_eq!(
            default.as_ref(),
            Some(t),
            "accepted under tight limits only"
        );
    }
    default
}

/// Exercises what a node does with decoded hidden states; none of it may panic, and the shape
/// the decoder vouched for must hold.
pub fn use_hidden(h: &HiddenStates, limits: &Limits) {
    assert!(h.rows >= 1 && h.rows <= limits.max_rows);
    assert!(h.cols >= 1 && h.cols <= limits.max_hidden);
    assert!(u64::from(h.start) + u64::from(h.rows) <= u64::from(limits.max_positions));
    assert_eq!(
        h.data.len(),
        h.rows as usize * h.cols as usize * h.dtype.bytes_per_value()
    );
    let v = h.to_f32();
    assert_eq!(v.len(), h.rows as usize * h.cols as usize);
    match h.first_non_finite() {
        Some((r, c)) => {
            assert!(r < h.rows && c < h.cols);
            assert!(!v[(r * h.cols + c) as usize].is_finite());
            assert!(v[..(r * h.cols + c) as usize].iter().all(|x| x.is_finite()));
        }
        None => assert!(v.iter().all(|x| x.is_finite())),
    }
    let _ = h.digest();
}
