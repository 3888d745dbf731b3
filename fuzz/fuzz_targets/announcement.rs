//! Signed announcements, two ways (first input byte picks):
//! - `< 0x80`: `SignedAnnouncement::decode` on the remaining bytes, under default and tight
//!   limits: no panic; what decodes is canonical, within every list limit, and safe to use
//!   (`expired` at any time).
//! - `>= 0x80`: builds an announcement from the remaining bytes, signs it with a real key and
//!   decodes the encoding: it must be accepted exactly when its values are valid (never a
//!   signature, truncation or trailing-bytes error: the encoder and decoder agree on the format),
//!   and when accepted it must come back equal.
#![no_main]

use hearth_core::{BlockRange, ContentHash};
use hearth_wire::{
    Announcement, Limits, PeerRtt, Reader, SignedAnnouncement, SigningKey, WireError, MAX_ADDRS,
    MAX_ADDR_LEN, MAX_RTTS,
};
use hearth_wire_fuzz::{both_limits, tight};
use libfuzzer_sys::fuzz_target;

fn raw(data: &[u8]) {
    let Some(s) = both_limits(data, SignedAnnouncement::decode, SignedAnnouncement::encode) else {
        return;
    };
    let a = &s.announcement;
    assert!(a.rtts.len() <= MAX_RTTS && a.addrs.len() <= MAX_ADDRS);
    assert!(a.addrs.iter().all(|x| x.len() <= MAX_ADDR_LEN));
    assert!(a.span.end() <= a.n_blocks && a.n_blocks <= Limits::default().max_blocks);
    assert!(a.block_ms.is_finite() && a.throughput.is_finite());
    let _ = (
        a.expired(0),
        a.expired(u64::MAX),
        a.expired(a.issued_unix_ms),
    );
}

fn build(r: &mut Reader<'_>) -> Result<Announcement, WireError> {
    let model_id = ContentHash(r.array("model")?);
    let n_blocks = r.u32("n_blocks")?;
    let span =
        BlockRange::new(r.u32("start")?, r.u32("end")?).map_err(|e| WireError::BadValue {
            what: "span",
            detail: e.to_string(),
        })?;
    let block_ms = r.f32("block_ms")?;
    let throughput = r.f32("throughput")?;
    let cache_free_tokens = r.u64("cache")?;
    let active_sessions = r.u32("active")?;
    let price = r.u64("price")?;
    let build_class = r.u64("build class")?;
    let n_rtts = r.u8("n_rtts")? % 40;
    let mut rtts = Vec::new();
    for _ in 0..n_rtts {
        rtts.push(PeerRtt {
            node: [r.u8("rtt node")?; 32],
            rtt_us: r.u32("rtt")?,
        });
    }
    let n_addrs = r.u8("n_addrs")? % 20;
    let mut addrs = Vec::new();
    for _ in 0..n_addrs {
        let len = r.u16("addr len")? as usize % (MAX_ADDR_LEN + 40);
        addrs.push(vec![r.u8("addr byte")?; len]);
    }
    Ok(Announcement {
        model_id,
        n_blocks,
        span,
        block_ms,
        throughput,
        cache_free_tokens,
        active_sessions,
        price,
        build_class,
        rtts,
        addrs,
        issued_unix_ms: r.u64("issued")?,
        ttl_secs: r.u32("ttl")?,
        node: [0; 32],
    })
}

fn structured(data: &[u8]) {
    let Ok(a) = build(&mut Reader::new(data)) else {
        return;
    };
    let key = SigningKey::from_bytes(&[7; 32]);
    let s = a.sign(&key);
    let bytes = s.encode();
    let _ = (s.announcement.expired(0), s.announcement.expired(u64::MAX));
    for limits in [Limits::default(), tight()] {
        let a = &s.announcement;
        let fits = bytes.len() <= limits.max_announcement_bytes;
        let valid = a.n_blocks <= limits.max_blocks
            && a.span.end() <= a.n_blocks
            && a.block_ms.is_finite()
            && a.block_ms >= 0.0
            && a.throughput.is_finite()
            && a.throughput >= 0.0;
        match SignedAnnouncement::decode(&bytes, &limits) {
            Ok(back) => {
                assert!(fits && valid, "accepted an invalid record: {a:?}");
                assert_eq!(back, s);
            }
            Err(WireError::TooLarge {
                what: "announcement",
                ..
            }) => assert!(!fits),
            Err(WireError::BadValue { .. }) => assert!(fits && !valid, "{a:?}"),
            Err(e) => panic!("own signed record refused with {e}: {a:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&mode, rest)) if mode < 0x80 => raw(rest),
        Some((_, rest)) => structured(rest),
        None => {}
    }
});
