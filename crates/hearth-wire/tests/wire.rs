//! The wire protocol from the outside: every message kind round-trips, every limit in [`Limits`]
//! is enforced with the error that names it, hidden-state payloads must match their shape
//! exactly, signed records cannot be altered, the framing layer refuses oversized and truncated
//! frames, and no byte string — truncated, mutated or made up — makes a decoder panic.
//!
//! Byte offsets used below are a protocol fact; `*_layout_is_pinned` tests fail first if the
//! format moves.

use ed25519_dalek::Signer;
use futures::executor::block_on;
use futures::io::Cursor;
use futures::AsyncRead;
use hearth_core::{BlockRange, ContentHash};
use hearth_wire::{
    read_frame, write_frame, ActivationCommitment, Announcement, ErrorCode, ErrorReply, FraudProof,
    FraudReply, FraudRequest, HiddenDType, HiddenStates, Limits, OpenSession, Opened, PeerRtt,
    ProvenStep, Receipt, ReceiptBody, Request, Response, SignedAnnouncement, SigningKey, Step,
    StepDone, WireError, Writer, MAX_ADDRS, MAX_ADDR_LEN, MAX_ERROR_MESSAGE, MAX_RTTS, VERSION,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const KIND_OPEN: u8 = 1;
const KIND_STEP: u8 = 2;
const KIND_CLOSE: u8 = 3;
const KIND_OPENED: u8 = 101;
const KIND_STEP_DONE: u8 = 102;
const KIND_ERROR: u8 = 103;

/// Offsets inside a `Step` request: version, kind, step u64, dtype, start, rows, cols, payload.
const STEP_DTYPE: usize = 10;
const STEP_START: usize = 11;
const STEP_ROWS: usize = 15;
const STEP_COLS: usize = 19;
const STEP_PAYLOAD: usize = 23;
/// Offsets inside an `Open` request.
const OPEN_SPAN_START: usize = 50;
const OPEN_SPAN_END: usize = 54;
const OPEN_MAX_LEN: usize = 58;
const OPEN_DTYPE: usize = 62;
const OPEN_LEN: usize = 63;
/// Offsets inside a signed announcement.
const ANN_N_BLOCKS: usize = 33;
const ANN_N_RTTS: usize = 81;

fn limits() -> Limits {
    Limits::default()
}

/// Small limits, so that "exactly at the limit" cases stay cheap.
fn tight() -> Limits {
    Limits {
        max_frame_bytes: 256,
        max_rows: 4,
        max_hidden: 8,
        max_positions: 64,
        max_blocks: 8,
        max_announcement_bytes: 1024,
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn span(a: u32, b: u32) -> BlockRange {
    BlockRange::new(a, b).unwrap()
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 8.0)
        .collect()
}

fn hidden(dtype: HiddenDType, start: u32, rows: u32, cols: u32) -> HiddenStates {
    let v = values(
        (rows * cols) as usize,
        u64::from(start * 31 + rows * 7 + cols),
    );
    HiddenStates::from_f32(dtype, start, rows, cols, &v)
}

fn receipt_body() -> ReceiptBody {
    ReceiptBody {
        session: [7; 16],
        step: 9,
        model_id: ContentHash::of(b"model"),
        span: span(2, 6),
        input: ContentHash::of(b"input"),
        output: ContentHash::of(b"output"),
        start: 11,
        commitment: ActivationCommitment::of(&hidden(HiddenDType::F16, 11, 2, 8)),
    }
}

fn receipt() -> Receipt {
    receipt_body().sign(&key())
}

/// Two steps of one session: a prefill of 2 rows, a decode step.
fn fraud_proof() -> FraudProof {
    let step = |start, rows| {
        let input = hidden(HiddenDType::F16, start, rows, 8);
        let output = hidden(HiddenDType::F16, start, rows, 8);
        let receipt = ReceiptBody {
            input: input.digest(),
            output: output.digest(),
            start,
            commitment: ActivationCommitment::of(&output),
            ..receipt_body()
        }
        .sign(&key());
        ProvenStep {
            input,
            output,
            receipt,
        }
    };
    FraudProof {
        window_start: 2,
        window_rows: 1,
        steps: vec![step(0, 2), step(2, 1)],
    }
}

fn open() -> OpenSession {
    OpenSession {
        session: [3; 16],
        model_id: ContentHash::of(b"model"),
        span: span(4, 12),
        max_len: 4096,
        dtype: HiddenDType::BF16,
    }
}

fn requests() -> Vec<Request> {
    vec![
        Request::Open(open()),
        Request::Open(OpenSession {
            dtype: HiddenDType::F16,
            span: span(0, 1),
            max_len: 1,
            ..open()
        }),
        Request::Step(Step {
            step: 0,
            hidden: hidden(HiddenDType::F16, 0, 3, 8),
        }),
        Request::Step(Step {
            step: u64::MAX,
            hidden: hidden(HiddenDType::BF16, 17, 1, 5),
        }),
        Request::Step(Step {
            step: 4,
            hidden: hidden(HiddenDType::F32, 2, 2, 3),
        }),
        Request::Close,
    ]
}

fn responses() -> Vec<Response> {
    let mut out = vec![
        Response::Opened(Opened {
            cache_free_tokens: 123_456,
        }),
        Response::Opened(Opened {
            cache_free_tokens: u64::MAX,
        }),
        Response::StepDone(StepDone {
            step: 9,
            hidden: hidden(HiddenDType::BF16, 5, 2, 6),
            receipt: receipt(),
        }),
        Response::StepDone(StepDone {
            step: 1,
            hidden: hidden(HiddenDType::F16, 0, 1, 1),
            receipt: receipt(),
        }),
        Response::error(ErrorCode::Busy, ""),
        Response::error(ErrorCode::Internal, "n\u{e4}n \u{1f525} unicode"),
    ];
    for code in [
        ErrorCode::BadRequest,
        ErrorCode::NotServed,
        ErrorCode::Busy,
        ErrorCode::NotOpen,
        ErrorCode::Internal,
    ] {
        out.push(Response::error(code, format!("because {code:?}")));
    }
    out
}

fn announcement() -> Announcement {
    Announcement {
        model_id: ContentHash::of(b"model"),
        n_blocks: 32,
        span: span(8, 16),
        block_ms: 1.25,
        throughput: 812.5,
        cache_free_tokens: 65_536,
        active_sessions: 3,
        price: 0,
        build_class: 0x0123_4567_89ab_cdef,
        rtts: vec![
            PeerRtt {
                node: [1; 32],
                rtt_us: 350,
            },
            PeerRtt {
                node: [2; 32],
                rtt_us: 12_000,
            },
        ],
        addrs: vec![vec![4, 127, 0, 0, 1, 6, 0x1f, 0x90], vec![0xAB; 40]],
        issued_unix_ms: 1_700_000_000_000,
        ttl_secs: 120,
        node: [0; 32],
    }
}

fn signed() -> SignedAnnouncement {
    announcement().sign(&key())
}

/// The announcement encoding written out independently of the crate, signed with the real
/// algorithm: lets tests produce validly signed records that `Announcement::sign` would never
/// produce (over-long lists, too-long addresses).
fn raw_announcement(a: &Announcement, key: &SigningKey) -> Vec<u8> {
    let mut body = Writer::default();
    body.fixed(&a.model_id.0)
        .u32(a.n_blocks)
        .u32(a.span.start())
        .u32(a.span.end())
        .f32(a.block_ms)
        .f32(a.throughput)
        .u64(a.cache_free_tokens)
        .u32(a.active_sessions)
        .u64(a.price)
        .u64(a.build_class)
        .u32(a.rtts.len() as u32);
    for r in &a.rtts {
        body.fixed(&r.node).u32(r.rtt_us);
    }
    body.u32(a.addrs.len() as u32);
    for addr in &a.addrs {
        body.bytes(addr);
    }
    body.u64(a.issued_unix_ms)
        .u32(a.ttl_secs)
        .fixed(&key.verifying_key().to_bytes());
    let body = body.finish();
    let mut signing = b"hearth/announcement/v2".to_vec();
    signing.extend_from_slice(&body);
    let sig = key.sign(&signing).to_bytes();
    let mut out = vec![VERSION];
    out.extend_from_slice(&body);
    out.extend_from_slice(&sig);
    out
}

/// A `Step` request written field by field, with a payload of `payload` zero bytes.
fn raw_step(dtype: u8, start: u32, rows: u32, cols: u32, payload: usize) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION)
        .u8(KIND_STEP)
        .u64(7)
        .u8(dtype)
        .u32(start)
        .u32(rows)
        .u32(cols)
        .fixed(&vec![0; payload]);
    w.finish()
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[track_caller]
fn assert_too_large<T: std::fmt::Debug>(r: Result<T, WireError>, field: &str, len: usize) {
    match r {
        Err(WireError::TooLarge { what, len: l, .. }) if what.contains(field) && l == len => {}
        other => panic!("expected TooLarge {{ {field}, len {len} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_bad_value<T: std::fmt::Debug>(r: Result<T, WireError>, field: &str) {
    match r {
        Err(WireError::BadValue { what, .. }) if what.contains(field) => {}
        other => panic!("expected BadValue {{ {field} }}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips and layout
// ---------------------------------------------------------------------------------------------

#[test]
fn every_request_kind_round_trips() {
    for req in requests() {
        let bytes = req.encode();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(Request::decode(&bytes, &limits()).unwrap(), req);
    }
}

#[test]
fn every_response_kind_round_trips() {
    for resp in responses() {
        let bytes = resp.encode();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(Response::decode(&bytes, &limits()).unwrap(), resp);
    }
}

#[test]
fn request_kinds_are_not_response_kinds() {
    for req in requests() {
        let bytes = req.encode();
        assert!(matches!(
            Response::decode(&bytes, &limits()),
            Err(WireError::UnknownKind(k)) if k == bytes[1]
        ));
    }
    for resp in responses() {
        let bytes = resp.encode();
        assert!(matches!(
            Request::decode(&bytes, &limits()),
            Err(WireError::UnknownKind(k)) if k == bytes[1]
        ));
    }
}

#[test]
fn signed_announcement_and_receipt_round_trip() {
    let s = signed();
    assert_eq!(s.announcement.node, key().verifying_key().to_bytes());
    let back = SignedAnnouncement::decode(&s.encode(), &limits()).unwrap();
    assert_eq!(back, s);

    let r = receipt();
    let back = Receipt::from_bytes(&r.to_bytes()).unwrap();
    assert_eq!(back, r);
    back.verify().unwrap();
    back.verify_from(&key().verifying_key().to_bytes(), &receipt_body())
        .unwrap();
}

#[test]
fn step_layout_is_pinned() {
    let h = HiddenStates {
        dtype: HiddenDType::F16,
        start: 5,
        rows: 2,
        cols: 3,
        data: vec![0; 12],
    };
    let bytes = Request::Step(Step { step: 7, hidden: h }).encode();
    assert_eq!(bytes, raw_step(1, 5, 2, 3, 12));
    assert_eq!(bytes.len(), STEP_PAYLOAD + 12);
}

#[test]
fn open_layout_is_pinned() {
    let bytes = Request::Open(open()).encode();
    assert_eq!(bytes.len(), OPEN_LEN);
    assert_eq!(bytes[..2], [VERSION, KIND_OPEN]);
    assert_eq!(
        bytes[OPEN_SPAN_START..OPEN_SPAN_START + 4],
        4u32.to_le_bytes()
    );
    assert_eq!(bytes[OPEN_SPAN_END..OPEN_SPAN_END + 4], 12u32.to_le_bytes());
    assert_eq!(bytes[OPEN_MAX_LEN..OPEN_MAX_LEN + 4], 4096u32.to_le_bytes());
    assert_eq!(bytes[OPEN_DTYPE], HiddenDType::BF16.code());
    assert_eq!(Request::Close.encode(), vec![VERSION, KIND_CLOSE]);
    assert_eq!(responses()[2].encode()[..2], [VERSION, KIND_STEP_DONE]);
    assert_eq!(
        responses()[4].encode(),
        vec![VERSION, KIND_ERROR, 3, 0, 0, 0, 0]
    );
    assert_eq!(
        Response::Opened(Opened {
            cache_free_tokens: 1
        })
        .encode(),
        vec![VERSION, KIND_OPENED, 1, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn announcement_layout_is_pinned() {
    // The independent encoder agrees with the crate byte for byte (ed25519 is deterministic).
    assert_eq!(raw_announcement(&announcement(), &key()), signed().encode());
    let bytes = signed().encode();
    assert_eq!(bytes[ANN_N_BLOCKS..ANN_N_BLOCKS + 4], 32u32.to_le_bytes());
    assert_eq!(bytes[ANN_N_RTTS..ANN_N_RTTS + 4], 2u32.to_le_bytes());
}

#[test]
fn sign_drops_what_the_decoder_would_refuse() {
    let mut a = announcement();
    a.rtts = (0..MAX_RTTS as u8 + 5)
        .map(|i| PeerRtt {
            node: [i; 32],
            rtt_us: u32::from(i),
        })
        .collect();
    a.addrs = (0..MAX_ADDRS + 5).map(|i| vec![i as u8; 8]).collect();
    a.addrs.insert(0, vec![9; MAX_ADDR_LEN + 1]);
    let s = a.sign(&key());
    assert_eq!(s.announcement.rtts.len(), MAX_RTTS);
    assert_eq!(s.announcement.addrs.len(), MAX_ADDRS);
    assert!(s.announcement.addrs.iter().all(|a| a.len() <= MAX_ADDR_LEN));
    assert_eq!(
        SignedAnnouncement::decode(&s.encode(), &limits()).unwrap(),
        s
    );
}

#[test]
fn error_message_is_cut_at_the_limit_on_a_char_boundary() {
    // 3-byte chars: 1024 is not a boundary, the sender must cut at 1023.
    let long = "\u{20ac}".repeat(400);
    let bytes = Response::error(ErrorCode::Internal, long.clone()).encode();
    match Response::decode(&bytes, &limits()).unwrap() {
        Response::Error(ErrorReply { code, message }) => {
            assert_eq!(code, ErrorCode::Internal);
            assert_eq!(message.len(), 1023);
            assert!(long.starts_with(&message));
        }
        other => panic!("{other:?}"),
    }
    // Exactly at the limit: kept whole.
    let exact = "x".repeat(MAX_ERROR_MESSAGE);
    let resp = Response::error(ErrorCode::Busy, exact);
    assert_eq!(Response::decode(&resp.encode(), &limits()).unwrap(), resp);
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[test]
fn hidden_rows_must_be_within_one_and_the_limit() {
    let l = tight();
    assert_too_large(Request::decode(&raw_step(1, 0, 0, 4, 0), &l), "rows", 0);
    assert_too_large(Request::decode(&raw_step(1, 0, 5, 4, 40), &l), "rows", 5);
    assert_too_large(
        Request::decode(&raw_step(1, 0, u32::MAX, 4, 0), &l),
        "rows",
        u32::MAX as usize,
    );
    Request::decode(&raw_step(1, 0, 4, 4, 32), &l).unwrap();
    // Default limits: one past max_rows is refused before the (absent) payload is looked at.
    let d = limits();
    assert_too_large(
        Request::decode(&raw_step(2, 0, d.max_rows + 1, 1, 0), &d),
        "rows",
        d.max_rows as usize + 1,
    );
}

#[test]
fn hidden_cols_must_be_within_one_and_the_limit() {
    let l = tight();
    assert_too_large(Request::decode(&raw_step(1, 0, 1, 0, 0), &l), "cols", 0);
    assert_too_large(Request::decode(&raw_step(1, 0, 1, 9, 18), &l), "cols", 9);
    Request::decode(&raw_step(1, 0, 1, 8, 16), &l).unwrap();
    let d = limits();
    assert_too_large(
        Request::decode(&raw_step(2, 0, 1, d.max_hidden + 1, 0), &d),
        "cols",
        d.max_hidden as usize + 1,
    );
    assert_too_large(
        Request::decode(&raw_step(2, 0, 1, u32::MAX, 0), &d),
        "cols",
        u32::MAX as usize,
    );
}

#[test]
fn hidden_positions_must_not_overflow_or_pass_the_limit() {
    let l = tight(); // max_positions 64
    Request::decode(&raw_step(1, 60, 4, 1, 8), &l).unwrap(); // ends exactly at 64
    assert_too_large(
        Request::decode(&raw_step(1, 61, 4, 1, 8), &l),
        "end position",
        65,
    );
    assert_too_large(
        Request::decode(&raw_step(1, 64, 1, 1, 2), &l),
        "end position",
        65,
    );
    // start + rows overflows u32: refused, not wrapped.
    assert_too_large(
        Request::decode(&raw_step(1, u32::MAX, 2, 1, 4), &l),
        "end position",
        u32::MAX as usize + 2,
    );
    assert_too_large(
        Request::decode(&raw_step(1, u32::MAX - 1, 4, 1, 8), &limits()),
        "end position",
        u32::MAX as usize + 3,
    );
}

#[test]
fn hidden_limits_apply_to_step_done_too() {
    let mut bytes = Response::StepDone(StepDone {
        step: 1,
        hidden: hidden(HiddenDType::F16, 0, 4, 8),
        receipt: receipt(),
    })
    .encode();
    Response::decode(&bytes, &tight()).unwrap();
    put_u32(&mut bytes, STEP_ROWS, 5);
    assert_too_large(Response::decode(&bytes, &tight()), "rows", 5);
    put_u32(&mut bytes, STEP_ROWS, 4);
    put_u32(&mut bytes, STEP_COLS, 9);
    assert_too_large(Response::decode(&bytes, &tight()), "cols", 9);
    put_u32(&mut bytes, STEP_COLS, 8);
    put_u32(&mut bytes, STEP_START, 61);
    assert_too_large(Response::decode(&bytes, &tight()), "end position", 65);
}

#[test]
fn largest_valid_step_fits_in_the_largest_frame() {
    // The default limits must agree with each other: a step at max_rows × max_hidden, and its
    // StepDone answer with the receipt, still fit in one frame.
    let l = limits();
    let max_payload = l.max_rows as usize * l.max_hidden as usize * 2;
    let one = hidden(HiddenDType::F16, 0, 1, 1);
    let req = Request::Step(Step {
        step: 0,
        hidden: one.clone(),
    })
    .encode()
    .len();
    let resp = Response::StepDone(StepDone {
        step: 0,
        hidden: one,
        receipt: receipt(),
    })
    .encode()
    .len();
    assert!(req - 2 + max_payload <= l.max_frame_bytes);
    assert!(resp - 2 + max_payload <= l.max_frame_bytes);
}

#[test]
fn permissive_limits_do_not_overflow_the_payload_size() {
    let open = Limits {
        max_rows: u32::MAX,
        max_hidden: u32::MAX,
        max_positions: u32::MAX,
        ..limits()
    };
    let r = catch_unwind(|| Request::decode(&raw_step(1, 0, u32::MAX, u32::MAX, 16), &open));
    assert!(matches!(r, Ok(Err(WireError::Truncated { .. }))), "{r:?}");
}

#[test]
fn hidden_payload_must_be_exactly_rows_times_cols_times_two() {
    let l = limits();
    for (rows, cols) in [(1, 1), (3, 5), (7, 64)] {
        let n = (rows * cols * 2) as usize;
        Request::decode(&raw_step(1, 0, rows, cols, n), &l).unwrap();
        assert!(matches!(
            Request::decode(&raw_step(1, 0, rows, cols, n - 1), &l),
            Err(WireError::Truncated { need, have, .. }) if need == n && have == n - 1
        ));
        assert!(matches!(
            Request::decode(&raw_step(1, 0, rows, cols, n + 1), &l),
            Err(WireError::TrailingBytes { extra: 1, .. })
        ));
        // Half the size (a sender that thinks in bytes per element = 1) fails too.
        assert!(Request::decode(&raw_step(1, 0, rows, cols, n / 2), &l).is_err());
    }
}

#[test]
fn open_max_len_must_be_within_one_and_the_limit() {
    let l = limits();
    let mut bytes = Request::Open(open()).encode();
    put_u32(&mut bytes, OPEN_MAX_LEN, 0);
    assert_too_large(Request::decode(&bytes, &l), "max_len", 0);
    put_u32(&mut bytes, OPEN_MAX_LEN, l.max_positions + 1);
    assert_too_large(
        Request::decode(&bytes, &l),
        "max_len",
        l.max_positions as usize + 1,
    );
    put_u32(&mut bytes, OPEN_MAX_LEN, l.max_positions);
    Request::decode(&bytes, &l).unwrap();
}

#[test]
fn open_span_must_be_non_empty_and_within_max_blocks() {
    let l = limits();
    let with_span = |a: u32, b: u32| {
        let mut bytes = Request::Open(open()).encode();
        put_u32(&mut bytes, OPEN_SPAN_START, a);
        put_u32(&mut bytes, OPEN_SPAN_END, b);
        Request::decode(&bytes, &l)
    };
    with_span(0, l.max_blocks).unwrap();
    assert_too_large(
        with_span(0, l.max_blocks + 1),
        "open span",
        l.max_blocks as usize + 1,
    );
    assert_too_large(with_span(5, u32::MAX), "open span", u32::MAX as usize);
    assert_bad_value(with_span(6, 3), "open span"); // inverted
    assert_bad_value(with_span(4, 4), "open span"); // empty
    assert_bad_value(with_span(0, 0), "open span");
}

#[test]
fn unknown_dtype_is_refused_in_open_and_step() {
    for code in [0u8, 4, 0xff] {
        let mut bytes = Request::Open(open()).encode();
        bytes[OPEN_DTYPE] = code;
        assert_bad_value(Request::decode(&bytes, &limits()), "dtype");
        assert_bad_value(
            Request::decode(&raw_step(code, 0, 1, 1, 2), &limits()),
            "dtype",
        );
        let mut bytes = Response::StepDone(StepDone {
            step: 1,
            hidden: hidden(HiddenDType::F16, 0, 1, 2),
            receipt: receipt(),
        })
        .encode();
        bytes[STEP_DTYPE] = code;
        assert_bad_value(Response::decode(&bytes, &limits()), "dtype");
    }
    assert!(HiddenDType::from_code(4).is_err());
    assert_eq!("BF16".parse::<HiddenDType>(), Ok(HiddenDType::BF16));
    assert_eq!("f32".parse::<HiddenDType>(), Ok(HiddenDType::F32));
    assert!("f64".parse::<HiddenDType>().is_err());
}

#[test]
fn unknown_kinds_and_error_codes_are_refused() {
    for kind in [0u8, 4, 100, 104, 255] {
        assert_eq!(
            Request::decode(&[VERSION, kind], &limits()),
            Err(WireError::UnknownKind(kind))
        );
        assert_eq!(
            Response::decode(&[VERSION, kind], &limits()),
            Err(WireError::UnknownKind(kind))
        );
    }
    for code in [0u8, 6, 255] {
        let mut bytes = Response::error(ErrorCode::Busy, "x").encode();
        bytes[2] = code;
        assert_bad_value(Response::decode(&bytes, &limits()), "error code");
    }
}

#[test]
fn error_message_above_the_limit_or_not_utf8_is_refused() {
    let raw = |len: u32, msg: &[u8]| {
        let mut w = Writer::default();
        w.u8(VERSION).u8(KIND_ERROR).u8(1).u32(len).fixed(msg);
        w.finish()
    };
    let ok = raw(MAX_ERROR_MESSAGE as u32, &[b'a'; MAX_ERROR_MESSAGE]);
    Response::decode(&ok, &limits()).unwrap();
    let long = raw(MAX_ERROR_MESSAGE as u32 + 1, &[b'a'; MAX_ERROR_MESSAGE + 1]);
    assert_too_large(
        Response::decode(&long, &limits()),
        "error message",
        MAX_ERROR_MESSAGE + 1,
    );
    // A huge declared length with no body is refused by the limit, not by truncation.
    assert_too_large(
        Response::decode(&raw(u32::MAX, b""), &limits()),
        "error message",
        u32::MAX as usize,
    );
    assert_bad_value(
        Response::decode(&raw(2, &[0xc3, 0x28]), &limits()),
        "error message",
    );
}

#[test]
fn wrong_version_is_refused_everywhere() {
    for v in [0u8, VERSION + 1, 0xff] {
        let want = WireError::Version {
            got: v,
            supported: VERSION,
        };
        for req in requests() {
            let mut bytes = req.encode();
            bytes[0] = v;
            assert_eq!(Request::decode(&bytes, &limits()), Err(want.clone()));
        }
        for resp in responses() {
            let mut bytes = resp.encode();
            bytes[0] = v;
            assert_eq!(Response::decode(&bytes, &limits()), Err(want.clone()));
        }
        let mut bytes = signed().encode();
        bytes[0] = v;
        assert_eq!(SignedAnnouncement::decode(&bytes, &limits()), Err(want));
    }
}

#[test]
fn trailing_bytes_are_refused_everywhere() {
    for extra in [&[0u8][..], &[1, 2, 3], &[0; 64]] {
        for req in requests() {
            let mut bytes = req.encode();
            bytes.extend_from_slice(extra);
            assert_eq!(
                Request::decode(&bytes, &limits()),
                Err(WireError::TrailingBytes {
                    what: "request",
                    extra: extra.len()
                })
            );
        }
        for resp in responses() {
            let mut bytes = resp.encode();
            bytes.extend_from_slice(extra);
            assert_eq!(
                Response::decode(&bytes, &limits()),
                Err(WireError::TrailingBytes {
                    what: "response",
                    extra: extra.len()
                })
            );
        }
        let mut bytes = signed().encode();
        bytes.extend_from_slice(extra);
        assert_eq!(
            SignedAnnouncement::decode(&bytes, &limits()),
            Err(WireError::TrailingBytes {
                what: "announcement",
                extra: extra.len()
            })
        );
        let mut bytes = receipt().to_bytes();
        bytes.extend_from_slice(extra);
        assert_eq!(
            Receipt::from_bytes(&bytes),
            Err(WireError::TrailingBytes {
                what: "receipt",
                extra: extra.len()
            })
        );
    }
}

#[test]
fn every_truncation_of_every_message_is_an_error() {
    let l = limits();
    let mut checked = 0;
    for req in requests() {
        let bytes = req.encode();
        for n in 0..bytes.len() {
            let r = catch_unwind(|| Request::decode(&bytes[..n], &l));
            assert!(matches!(r, Ok(Err(_))), "{req:?} cut at {n}: {r:?}");
            checked += 1;
        }
    }
    for resp in responses() {
        let bytes = resp.encode();
        for n in 0..bytes.len() {
            let r = catch_unwind(|| Response::decode(&bytes[..n], &l));
            assert!(matches!(r, Ok(Err(_))), "{resp:?} cut at {n}: {r:?}");
            checked += 1;
        }
    }
    let bytes = signed().encode();
    for n in 0..bytes.len() {
        let r = catch_unwind(|| SignedAnnouncement::decode(&bytes[..n], &l));
        assert!(matches!(r, Ok(Err(_))), "announcement cut at {n}: {r:?}");
        checked += 1;
    }
    let bytes = receipt().to_bytes();
    for n in 0..bytes.len() {
        let r = catch_unwind(|| Receipt::from_bytes(&bytes[..n]));
        assert!(matches!(r, Ok(Err(_))), "receipt cut at {n}: {r:?}");
        checked += 1;
    }
    let bytes = fraud_proof().to_bytes();
    assert_eq!(
        FraudProof::from_bytes(&bytes, &l).as_ref(),
        Ok(&fraud_proof())
    );
    for n in 0..bytes.len() {
        let r = catch_unwind(|| FraudProof::from_bytes(&bytes[..n], &l));
        assert!(matches!(r, Ok(Err(_))), "fraud proof cut at {n}: {r:?}");
        checked += 1;
    }
    for msg in fraud_requests() {
        let bytes = msg.encode();
        assert_eq!(FraudRequest::decode(&bytes, &l).as_ref(), Ok(&msg));
        for n in 0..bytes.len() {
            let r = catch_unwind(|| FraudRequest::decode(&bytes[..n], &l));
            assert!(matches!(r, Ok(Err(_))), "fraud request cut at {n}: {r:?}");
            checked += 1;
        }
    }
    for msg in fraud_replies() {
        let bytes = msg.encode();
        assert_eq!(FraudReply::decode(&bytes, &l).as_ref(), Ok(&msg));
        for n in 0..bytes.len() {
            let r = catch_unwind(|| FraudReply::decode(&bytes[..n], &l));
            assert!(matches!(r, Ok(Err(_))), "fraud reply cut at {n}: {r:?}");
            checked += 1;
        }
    }
    assert!(checked > 1000, "{checked}");
}

fn fraud_requests() -> Vec<FraudRequest> {
    vec![
        FraudRequest::Submit(fraud_proof()),
        FraudRequest::Fetch {
            model_id: ContentHash::of(b"m"),
            accused: [9; 32],
        },
    ]
}

fn fraud_replies() -> Vec<FraudReply> {
    vec![
        FraudReply::Accepted,
        FraudReply::Refused("the recomputation agrees".into()),
        FraudReply::Proof(fraud_proof()),
        FraudReply::NotFound,
    ]
}

#[test]
fn fraud_exchange_refuses_what_it_must() {
    let l = limits();
    // A refusal longer than the limit is cut at a character boundary by the sender.
    let long = FraudReply::Refused("é".repeat(MAX_ERROR_MESSAGE));
    match FraudReply::decode(&long.encode(), &l) {
        Ok(FraudReply::Refused(why)) => assert!(why.len() <= MAX_ERROR_MESSAGE && !why.is_empty()),
        other => panic!("{other:?}"),
    }
    // A request kind on the reply side (and the reverse) is an unknown kind, not a misparse.
    let fetch = fraud_requests()[1].encode();
    assert!(matches!(
        FraudReply::decode(&fetch, &l),
        Err(WireError::UnknownKind(12))
    ));
    assert!(matches!(
        FraudRequest::decode(&FraudReply::Accepted.encode(), &l),
        Err(WireError::UnknownKind(111))
    ));
    // Another wire version is refused before anything else is read.
    let mut old = fetch.clone();
    old[0] = VERSION - 1;
    assert!(matches!(
        FraudRequest::decode(&old, &l),
        Err(WireError::Version { .. })
    ));
    // Trailing bytes are an error.
    let mut long_fetch = fetch;
    long_fetch.push(0);
    assert!(FraudRequest::decode(&long_fetch, &l).is_err());
    // A proof with more steps than the limit allows is refused.
    let tight = Limits {
        max_positions: 1,
        ..limits()
    };
    let mut p = fraud_proof();
    p.steps.push(p.steps[0].clone());
    assert!(FraudRequest::decode(&FraudRequest::Submit(p).encode(), &tight).is_err());
}

#[test]
fn announcement_lists_above_their_limits_are_refused_even_when_signed() {
    let k = key();
    // At the limits: accepted.
    let mut a = announcement();
    a.rtts = (0..MAX_RTTS)
        .map(|i| PeerRtt {
            node: [i as u8; 32],
            rtt_us: i as u32,
        })
        .collect();
    a.addrs = (0..MAX_ADDRS)
        .map(|i| vec![i as u8; MAX_ADDR_LEN])
        .collect();
    let bytes = raw_announcement(&a, &k);
    assert!(bytes.len() <= limits().max_announcement_bytes);
    let back = SignedAnnouncement::decode(&bytes, &limits()).unwrap();
    assert_eq!(back.announcement.rtts, a.rtts);
    assert_eq!(back.announcement.addrs, a.addrs);

    let mut more = a.clone();
    more.rtts.push(PeerRtt {
        node: [0xee; 32],
        rtt_us: 1,
    });
    assert_too_large(
        SignedAnnouncement::decode(&raw_announcement(&more, &k), &limits()),
        "announcement rtts",
        MAX_RTTS + 1,
    );

    let mut more = a.clone();
    more.addrs.push(vec![1]);
    assert_too_large(
        SignedAnnouncement::decode(&raw_announcement(&more, &k), &limits()),
        "announcement addrs",
        MAX_ADDRS + 1,
    );

    let mut long = announcement();
    long.addrs[1] = vec![7; MAX_ADDR_LEN + 1];
    assert_too_large(
        SignedAnnouncement::decode(&raw_announcement(&long, &k), &limits()),
        "announcement addr",
        MAX_ADDR_LEN + 1,
    );

    // A huge count with nothing behind it is refused by the limit before any allocation.
    let mut bytes = signed().encode();
    put_u32(&mut bytes, ANN_N_RTTS, u32::MAX);
    assert_too_large(
        SignedAnnouncement::decode(&bytes, &limits()),
        "announcement rtts",
        u32::MAX as usize,
    );
}

#[test]
fn oversized_announcement_is_refused_before_parsing() {
    let bytes = signed().encode();
    let l = Limits {
        max_announcement_bytes: bytes.len() - 1,
        ..limits()
    };
    assert_too_large(
        SignedAnnouncement::decode(&bytes, &l),
        "announcement",
        bytes.len(),
    );
    let l = Limits {
        max_announcement_bytes: bytes.len(),
        ..limits()
    };
    SignedAnnouncement::decode(&bytes, &l).unwrap();
    // Garbage above the limit: the size error, not a parse error.
    let junk = vec![0xff; limits().max_announcement_bytes + 1];
    assert_too_large(
        SignedAnnouncement::decode(&junk, &limits()),
        "announcement",
        junk.len(),
    );
}

#[test]
fn signed_announcement_with_bad_values_is_refused() {
    let k = key();
    let check = |a: Announcement, field: &str| {
        assert_bad_value(
            SignedAnnouncement::decode(&a.sign(&k).encode(), &limits()),
            field,
        );
    };
    let a = announcement();
    check(
        Announcement {
            n_blocks: limits().max_blocks + 1,
            span: span(0, 4),
            ..a.clone()
        },
        "announcement span",
    );
    check(
        Announcement {
            n_blocks: 10,
            span: span(8, 11),
            ..a.clone()
        },
        "announcement span",
    );
    for (block_ms, throughput) in [
        (f32::NAN, 1.0),
        (f32::INFINITY, 1.0),
        (-1.0, 1.0),
        (1.0, f32::NAN),
        (1.0, f32::NEG_INFINITY),
        (1.0, -0.5),
    ] {
        check(
            Announcement {
                block_ms,
                throughput,
                ..a.clone()
            },
            "announcement speed",
        );
    }
    // Inverted and empty spans, written past `BlockRange`'s constructor.
    for (s, e) in [(5u32, 2u32), (3, 3)] {
        let mut bytes = signed().encode();
        put_u32(&mut bytes, ANN_N_BLOCKS + 4, s);
        put_u32(&mut bytes, ANN_N_BLOCKS + 8, e);
        assert_bad_value(
            SignedAnnouncement::decode(&bytes, &limits()),
            "announcement span",
        );
    }
    // Tight limits: n_blocks 32 > max_blocks 8.
    assert_bad_value(
        SignedAnnouncement::decode(&signed().encode(), &tight()),
        "announcement span",
    );
}

#[test]
fn announcement_with_any_bit_flipped_fails_to_decode() {
    let bytes = signed().encode();
    let mut bad_sig = 0;
    for i in 0..bytes.len() * 8 {
        let mut m = bytes.clone();
        m[i / 8] ^= 1 << (i % 8);
        match SignedAnnouncement::decode(&m, &limits()) {
            Ok(a) => panic!("bit {i} flipped still decodes: {a:?}"),
            Err(WireError::BadSignature(_)) => bad_sig += 1,
            Err(_) => {}
        }
    }
    // Most flips land in fields that parse fine and are caught by the signature alone.
    assert!(bad_sig > bytes.len() * 4, "{bad_sig}");
}

#[test]
fn announcement_signed_by_another_key_or_claiming_another_node_fails() {
    let s = signed();
    let mut other = s.clone();
    other.announcement.node = SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes();
    assert_eq!(
        SignedAnnouncement::decode(&other.encode(), &limits()),
        Err(WireError::BadSignature("announcement"))
    );
    // A node field that is not a curve point at all.
    let mut bogus = s.clone();
    bogus.announcement.node = [0xff; 32];
    assert!(SignedAnnouncement::decode(&bogus.encode(), &limits()).is_err());
}

#[test]
fn receipt_with_any_bit_flipped_fails_to_decode_or_verify() {
    let bytes = receipt().to_bytes();
    for i in 0..bytes.len() * 8 {
        let mut m = bytes.clone();
        m[i / 8] ^= 1 << (i % 8);
        if let Ok(r) = Receipt::from_bytes(&m) {
            assert!(r.verify().is_err(), "bit {i} flipped still verifies");
        }
    }
}

#[test]
fn announcement_expiry() {
    let a = announcement();
    assert!(!a.expired(a.issued_unix_ms));
    assert!(!a.expired(a.issued_unix_ms + 120_000));
    assert!(a.expired(a.issued_unix_ms + 120_001));
    // A peer's record with an absurd issue time must not overflow (and panic) in the check.
    let far = Announcement {
        issued_unix_ms: u64::MAX - 5,
        ttl_secs: u32::MAX,
        ..a
    };
    assert!(!far.expired(1_700_000_000_000));
    let far = SignedAnnouncement::decode(&far.sign(&key()).encode(), &limits()).unwrap();
    assert!(!far.announcement.expired(u64::MAX));
}

// ---------------------------------------------------------------------------------------------
// Hidden states: conversion, non-finite detection, digest
// ---------------------------------------------------------------------------------------------

fn rel_bound_holds(dtype: HiddenDType, rel: f32, lo: f32, hi: f32, abs_sub: f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(dtype.code().into());
    let mut xs: Vec<f32> = (0..20_000)
        .map(|_| {
            let u = rng.next_u32() as f32 / u32::MAX as f32;
            let mag = (lo.ln() + u * (hi.ln() - lo.ln())).exp();
            if rng.next_u32() & 1 == 0 {
                mag
            } else {
                -mag
            }
        })
        .collect();
    xs.extend([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 1024.0, lo, hi, -hi]);
    let h = HiddenStates::from_f32(dtype, 0, 1, xs.len() as u32, &xs);
    assert_eq!(h.data.len(), xs.len() * 2);
    let back = h.to_f32();
    assert_eq!(back.len(), xs.len());
    for (x, y) in xs.iter().zip(&back) {
        let err = (x - y).abs();
        assert!(
            err <= x.abs() * rel || err <= abs_sub,
            "{dtype:?}: {x} -> {y} (error {err})"
        );
        assert_eq!(x.is_sign_negative(), y.is_sign_negative(), "{x} -> {y}");
    }
    assert_eq!(h.first_non_finite(), None);
    // Exact for small integers.
    let ints: Vec<f32> = (-256..=256).map(|i| i as f32).collect();
    let h = HiddenStates::from_f32(dtype, 0, 1, ints.len() as u32, &ints);
    assert_eq!(h.to_f32(), ints);
}

#[test]
fn f16_round_trip_is_within_half_an_ulp() {
    // Normal range: 11-bit significand, round to nearest → relative error ≤ 2^-11.
    // Subnormals (below 2^-14): absolute error ≤ half the subnormal spacing, 2^-25.
    rel_bound_holds(
        HiddenDType::F16,
        2f32.powi(-11),
        2f32.powi(-20),
        65_504.0,
        2f32.powi(-25),
    );
}

#[test]
fn bf16_round_trip_is_within_half_an_ulp() {
    // 8-bit significand → relative error ≤ 2^-8, over (nearly) the whole f32 range.
    rel_bound_holds(HiddenDType::BF16, 2f32.powi(-8), 1e-30, 1e38, 0.0);
}

#[test]
fn f32_round_trip_is_exact() {
    let v: Vec<f32> = [0.1f32, -3.5e-39, 1e38, -0.0, 7.0, 123.456]
        .iter()
        .copied()
        .cycle()
        .take(12)
        .collect();
    let h = HiddenStates::from_f32(HiddenDType::F32, 0, 3, 4, &v);
    assert_eq!(h.data.len(), 12 * 4);
    assert!(h
        .to_f32()
        .iter()
        .zip(&v)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let mut nan = v.clone();
    nan[6] = f32::NAN;
    let h = HiddenStates::from_f32(HiddenDType::F32, 0, 3, 4, &nan);
    assert_eq!(h.first_non_finite(), Some((1, 2)));
}

#[test]
fn f16_overflow_becomes_infinite_and_is_found() {
    let mut v = vec![1.0f32; 12];
    v[7] = 70_000.0; // above f16::MAX: rounds to +Inf
    let h = HiddenStates::from_f32(HiddenDType::F16, 0, 3, 4, &v);
    assert_eq!(h.first_non_finite(), Some((1, 3)));
    // The same value is finite in bf16.
    let h = HiddenStates::from_f32(HiddenDType::BF16, 0, 3, 4, &v);
    assert_eq!(h.first_non_finite(), None);
}

#[test]
fn first_non_finite_finds_the_first_nan_or_inf() {
    for dtype in [HiddenDType::F16, HiddenDType::BF16] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for (row, col) in [(0u32, 0u32), (2, 3), (3, 4), (1, 0)] {
                let mut v = values(20, 5);
                v[(row * 5 + col) as usize] = bad;
                let h = HiddenStates::from_f32(dtype, 10, 4, 5, &v);
                assert_eq!(h.first_non_finite(), Some((row, col)), "{dtype:?} {bad}");
                // A second bad value later does not change the answer.
                v[19] = f32::NAN;
                let h = HiddenStates::from_f32(dtype, 10, 4, 5, &v);
                assert_eq!(h.first_non_finite(), Some((row, col)));
            }
        }
        assert_eq!(hidden(dtype, 0, 4, 5).first_non_finite(), None);
    }
    // Non-finite values still decode (the node checks them, the codec does not): the check is
    // the caller's, and it sees them.
    let mut v = values(6, 1);
    v[4] = f32::NAN;
    let req = Request::Step(Step {
        step: 0,
        hidden: HiddenStates::from_f32(HiddenDType::BF16, 0, 2, 3, &v),
    });
    match Request::decode(&req.encode(), &limits()).unwrap() {
        Request::Step(s) => assert_eq!(s.hidden.first_non_finite(), Some((1, 1))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn digest_binds_start_shape_dtype_and_every_byte() {
    let h = hidden(HiddenDType::F16, 3, 2, 4);
    let d = h.digest();
    assert_eq!(h.clone().digest(), d);
    let mut seen = vec![d];
    let mut differs = |other: HiddenStates| {
        let od = other.digest();
        assert!(!seen.contains(&od), "digest collision for {other:?}");
        seen.push(od);
    };
    differs(HiddenStates {
        start: 4,
        ..h.clone()
    });
    differs(HiddenStates {
        rows: 4,
        cols: 2,
        ..h.clone()
    });
    differs(HiddenStates {
        rows: 1,
        cols: 8,
        ..h.clone()
    });
    differs(HiddenStates {
        dtype: HiddenDType::BF16,
        ..h.clone()
    });
    for i in 0..h.data.len() {
        for bit in [0, 7] {
            let mut o = h.clone();
            o.data[i] ^= 1 << bit;
            differs(o);
        }
    }
    // Same values, different start: the receipt covers the positions.
    let a = hidden(HiddenDType::BF16, 0, 1, 4);
    let b = HiddenStates {
        start: 1,
        ..a.clone()
    };
    assert_ne!(a.digest(), b.digest());
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Hands out at most `chunk` bytes per read and counts what was read: shows what `read_frame`
/// pulled off the stream, and exercises partial reads of the length prefix.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

fn framed(bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bodies {
        block_on(write_frame(&mut out, b)).unwrap();
    }
    out
}

#[test]
fn frames_round_trip_and_end_cleanly() {
    let step = requests()[2].encode();
    let bodies: Vec<&[u8]> = vec![b"", b"x", &step, &[0xff; 300]];
    let bytes = framed(&bodies);
    assert_eq!(bytes[..4], [0, 0, 0, 0]);
    assert_eq!(bytes[4..8], [1, 0, 0, 0]);
    for chunk in [1, 3, 4096] {
        let mut r = Trickle {
            data: bytes.clone(),
            pos: 0,
            chunk,
        };
        for b in &bodies {
            assert_eq!(
                block_on(read_frame(&mut r, 300)).unwrap().as_deref(),
                Some(*b)
            );
        }
        assert_eq!(block_on(read_frame(&mut r, 300)).unwrap(), None);
        assert_eq!(block_on(read_frame(&mut r, 300)).unwrap(), None);
    }
    let mut c = Cursor::new(bytes);
    let frame = block_on(read_frame(&mut c, 1 << 20)).unwrap().unwrap();
    assert!(frame.is_empty());
    block_on(read_frame(&mut c, 1 << 20)).unwrap().unwrap();
    let frame = block_on(read_frame(&mut c, 1 << 20)).unwrap().unwrap();
    assert_eq!(Request::decode(&frame, &limits()).unwrap(), requests()[2]);
}

#[test]
fn frame_above_max_is_refused_without_reading_the_body() {
    for (declared, max) in [(301u32, 300usize), (u32::MAX, 1 << 20), (1, 0)] {
        let mut bytes = declared.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xaa; 512]);
        let mut c = Cursor::new(bytes);
        let err = block_on(read_frame(&mut c, max)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(c.position(), 4, "read past the length prefix");
    }
    // Exactly max is fine.
    let bytes = framed(&[&[5; 300]]);
    let mut c = Cursor::new(bytes);
    assert_eq!(
        block_on(read_frame(&mut c, 300)).unwrap().unwrap().len(),
        300
    );
}

#[test]
fn truncated_frame_body_is_unexpected_eof() {
    let bytes = framed(&[&[9; 100]]);
    for cut in 4..bytes.len() {
        let mut c = Cursor::new(bytes[..cut].to_vec());
        let err = block_on(read_frame(&mut c, 1000)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
    }
    // Second frame truncated after a good first one.
    let mut bytes = framed(&[b"ok", &[1; 10]]);
    bytes.truncate(bytes.len() - 1);
    let mut c = Cursor::new(bytes);
    assert_eq!(block_on(read_frame(&mut c, 64)).unwrap().unwrap(), b"ok");
    assert_eq!(
        block_on(read_frame(&mut c, 64)).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn eof_inside_the_length_prefix_is_an_error() {
    for cut in 1..4 {
        for chunk in [1, 4] {
            let mut r = Trickle {
                data: vec![0x10, 0, 0, 0][..cut].to_vec(),
                pos: 0,
                chunk,
            };
            let err = block_on(read_frame(&mut r, 1000)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}");
        }
    }
    let mut empty = Cursor::new(Vec::new());
    assert_eq!(block_on(read_frame(&mut empty, 1000)).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Seeded mutation: no input makes a decoder panic, and what decodes is canonical
// ---------------------------------------------------------------------------------------------

const MUTATIONS_PER_KIND: usize = 20_000;

/// Values that hit length checks hard: huge, sign-bit, just past each default limit.
const HUGE: [u32; 10] = [
    u32::MAX,
    u32::MAX - 1,
    0x8000_0000,
    0x7fff_ffff,
    0x0100_0000,
    2049,
    16_385,
    131_073,
    1025,
    0,
];

fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    let ops = 1 + rng.next_u32() % 3;
    for _ in 0..ops {
        let len = bytes.len();
        let at = |rng: &mut ChaCha8Rng, n: usize| (rng.next_u32() as usize) % n.max(1);
        match rng.next_u32() % 8 {
            0 | 1 if len > 0 => {
                let i = at(rng, len);
                bytes[i] ^= 1 << (rng.next_u32() % 8);
            }
            2 => {
                let i = at(rng, len + 1);
                bytes.insert(i, rng.next_u32() as u8);
            }
            3 if len > 0 => {
                let i = at(rng, len);
                bytes.remove(i);
            }
            4 => {
                let n = at(rng, len + 1);
                bytes.truncate(n);
            }
            5 | 6 if len >= 4 => {
                let i = at(rng, len - 3);
                let v = if rng.next_u32().is_multiple_of(4) {
                    rng.next_u32()
                } else {
                    HUGE[at(rng, HUGE.len())]
                };
                put_u32(bytes, i, v);
            }
            7 if len > 0 => {
                let i = at(rng, len);
                bytes[i] = [0, 1, 2, 3, 4, 101, 102, 103, 0x7f, 0x80, 0xff][at(rng, 11)];
            }
            _ => {
                let extra = at(rng, 8);
                for _ in 0..extra {
                    bytes.push(rng.next_u32() as u8);
                }
            }
        }
    }
}

/// Mutates every seed `MUTATIONS_PER_KIND` times in total; every result must decode to Ok or Err
/// under both limit sets without panicking, and every Ok must be canonical: re-encoding gives
/// back the very bytes, which decode to the same value. Returns how many decodes succeeded and
/// how many failed.
fn fuzz_kind<T, D, E>(
    name: &str,
    seeds: &[Vec<u8>],
    seed: u64,
    decode: D,
    encode: E,
) -> (usize, usize)
where
    T: PartialEq + std::fmt::Debug,
    D: Fn(&[u8], &Limits) -> Result<T, WireError>,
    E: Fn(&T) -> Vec<u8>,
{
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut ok, mut err) = (0, 0);
    for i in 0..MUTATIONS_PER_KIND {
        let mut m = seeds[i % seeds.len()].clone();
        mutate(&mut rng, &mut m);
        for l in [limits(), tight()] {
            let r = catch_unwind(AssertUnwindSafe(|| decode(&m, &l)));
            match r {
                Err(_) => panic!(
                    "{name}: decoder panicked on mutant {i}: {}",
                    hex::encode(&m)
                ),
                Ok(Err(_)) => err += 1,
                Ok(Ok(v)) => {
                    let again = encode(&v);
                    assert_eq!(again, m, "{name}: mutant {i} decoded but is not canonical");
                    assert_eq!(decode(&again, &l).as_ref(), Ok(&v), "{name}: mutant {i}");
                    ok += 1;
                }
            }
        }
    }
    (ok, err)
}

#[test]
fn seeded_mutations_never_panic_and_decode_canonically() {
    let reqs: Vec<Vec<u8>> = requests().iter().map(Request::encode).collect();
    let resps: Vec<Vec<u8>> = responses().iter().map(Response::encode).collect();
    let mut anns = vec![signed().encode()];
    let mut tiny = announcement();
    tiny.rtts.clear();
    tiny.addrs.clear();
    anns.push(tiny.sign(&key()).encode());
    let receipts = vec![receipt().to_bytes()];

    let a = fuzz_kind("request", &reqs, 1, Request::decode, Request::encode);
    let b = fuzz_kind("response", &resps, 2, Response::decode, Response::encode);
    let c = fuzz_kind(
        "announcement",
        &anns,
        3,
        SignedAnnouncement::decode,
        SignedAnnouncement::encode,
    );
    let d = fuzz_kind(
        "receipt",
        &receipts,
        4,
        |b, _| Receipt::from_bytes(b),
        Receipt::to_bytes,
    );
    let proofs = vec![fraud_proof().to_bytes()];
    let e = fuzz_kind(
        "fraud proof",
        &proofs,
        6,
        FraudProof::from_bytes,
        FraudProof::to_bytes,
    );
    let exchange: Vec<Vec<u8>> = fraud_requests()
        .iter()
        .map(FraudRequest::encode)
        .chain(fraud_replies().iter().map(FraudReply::encode))
        .collect();
    let f = fuzz_kind(
        "fraud request",
        &exchange,
        7,
        FraudRequest::decode,
        FraudRequest::encode,
    );
    let g = fuzz_kind(
        "fraud reply",
        &exchange,
        8,
        FraudReply::decode,
        FraudReply::encode,
    );
    // The mutator must not be so destructive that nothing ever decodes (then the Ok branch
    // above would be untested), nor so gentle that everything does.
    for (name, (ok, err)) in [
        ("request", a),
        ("response", b),
        ("receipt", d),
        ("fraud proof", e),
        ("fraud request", f),
        ("fraud reply", g),
    ] {
        assert!(ok > 100 && err > 100, "{name}: {ok} decoded, {err} refused");
    }
    // Signed records: a mutant only decodes if the mutation left the bytes unchanged.
    assert!(c.0 < MUTATIONS_PER_KIND / 10, "announcement: {c:?}");
}

#[test]
fn seeded_frame_streams_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let base = framed(&[b"abc", &requests()[2].encode(), b"", &[7; 40]]);
    for i in 0..MUTATIONS_PER_KIND {
        let mut m = base.clone();
        mutate(&mut rng, &mut m);
        let chunk = 1 + (rng.next_u32() % 7) as usize;
        let max = [0usize, 3, 64, 1 << 20][i % 4];
        let mut r = Trickle {
            data: m.clone(),
            pos: 0,
            chunk,
        };
        let mut consumed = Vec::new();
        loop {
            match block_on(read_frame(&mut r, max)) {
                Ok(Some(body)) => {
                    assert!(body.len() <= max);
                    block_on(write_frame(&mut consumed, &body)).unwrap();
                }
                Ok(None) => {
                    assert_eq!(consumed, m, "clean end must mean every byte was framed");
                    break;
                }
                Err(_) => break,
            }
        }
        assert_eq!(
            consumed,
            m[..consumed.len()],
            "frames re-encode to the input"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz seeds
// ---------------------------------------------------------------------------------------------

/// Writes the valid encodings above as seed inputs for the cargo-fuzz targets (docs/fuzzing.md)
/// into `$HEARTH_FUZZ_CORPUS` (e.g. `fuzz/corpus`), or a scratch folder when unset; then checks
/// that every request and response seed decodes.
#[test]
fn write_fuzz_seeds() {
    let scratch = tempfile::tempdir().unwrap();
    let root = std::env::var_os("HEARTH_FUZZ_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let write = |target: &str, i: usize, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{i:02}")), bytes).unwrap();
    };
    // Request, response and receipt targets take the raw encoding; the announcement target's
    // first byte selects a mode (0 = raw decode), the frame target's first two bytes pick the
    // frame limit and the read chunk size (see fuzz/fuzz_targets/*.rs).
    let mut small = requests();
    small.push(Request::Step(Step {
        step: 1,
        hidden: hidden(HiddenDType::F16, 60, 4, 8),
    }));
    for (i, r) in small.iter().enumerate() {
        write("request", i, &r.encode());
    }
    let mut small = responses();
    small.push(Response::StepDone(StepDone {
        step: 2,
        hidden: hidden(HiddenDType::BF16, 0, 4, 8),
        receipt: receipt(),
    }));
    for (i, r) in small.iter().enumerate() {
        write("response", i, &r.encode());
    }
    write("fraud_proof", 0, &fraud_proof().to_bytes());
    let exchange: Vec<Vec<u8>> = fraud_requests()
        .iter()
        .map(FraudRequest::encode)
        .chain(fraud_replies().iter().map(FraudReply::encode))
        .collect();
    for (i, bytes) in exchange.iter().enumerate() {
        write("fraud_exchange", i, bytes);
    }
    let mut ann = vec![0u8];
    ann.extend_from_slice(&signed().encode());
    write("announcement", 0, &ann);
    let mut tiny = announcement();
    tiny.rtts.truncate(1);
    tiny.addrs.truncate(1);
    tiny.n_blocks = 8;
    tiny.span = span(2, 6);
    let mut ann = vec![0u8];
    ann.extend_from_slice(&tiny.sign(&key()).encode());
    write("announcement", 1, &ann);
    write("receipt", 0, &receipt().to_bytes());
    let mut frames = vec![3u8, 0];
    frames.extend_from_slice(&framed(&[b"abc", &requests()[2].encode(), b""]));
    write("frame", 0, &frames);
    for (target, decode) in [
        (
            "request",
            (|b: &[u8]| Request::decode(b, &Limits::default()).is_ok()) as fn(&[u8]) -> bool,
        ),
        ("response", |b: &[u8]| {
            Response::decode(b, &Limits::default()).is_ok()
        }),
    ] {
        let mut n = 0;
        for entry in std::fs::read_dir(root.join(target)).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(decode(&bytes), "{target} seed does not decode");
            n += 1;
        }
        assert!(n > 3, "{target}: only {n} seeds");
    }
}
