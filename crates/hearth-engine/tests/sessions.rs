//! Many sessions on one slice: isolation, limits, expiry, explicit close.

use hearth_core::BlockRange;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{
    max_abs_diff, CacheQuota, DType, EngineError, LoadOptions, ModelSource, SessionLimits,
    SliceServer, Tensor,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn server(limits: SessionLimits) -> (tempfile::TempDir, Arc<SliceServer>, ModelSource) {
    let dir = tempfile::tempdir().unwrap();
    SynthModel::new(shape("tiny").unwrap(), 3)
        .unwrap()
        .write_hf(dir.path(), DType::F32, &SynthOptions::default())
        .unwrap();
    let src = ModelSource::open(dir.path()).unwrap();
    let slice = src
        .load_slice(
            BlockRange::new(1, 4).unwrap(),
            &LoadOptions::default(),
            None,
        )
        .unwrap();
    (
        dir,
        Arc::new(SliceServer::new(Arc::new(slice), limits)),
        src,
    )
}

fn hidden(src: &ModelSource, ids: &[u32]) -> Tensor {
    src.load_head(&LoadOptions::default(), None)
        .unwrap()
        .embed(ids)
        .unwrap()
}

#[test]
fn interleaved_sessions_do_not_interfere() {
    let (_d, srv, src) = server(SessionLimits::default());
    let a_in = hidden(&src, &[1, 2, 3, 4, 5]);
    let b_in = hidden(&src, &[9, 8, 7]);
    let step_a = hidden(&src, &[42]);
    let step_b = hidden(&src, &[17]);

    // Alone.
    let a = srv.open(64).unwrap();
    srv.step(a, 0, &a_in).unwrap();
    let a_ref = srv.step(a, 5, &step_a).unwrap();
    srv.close(a).unwrap();
    let b = srv.open(64).unwrap();
    srv.step(b, 0, &b_in).unwrap();
    let b_ref = srv.step(b, 3, &step_b).unwrap();
    srv.close(b).unwrap();

    // Interleaved, and concurrently from two threads.
    let a = srv.open(64).unwrap();
    let b = srv.open(64).unwrap();
    srv.step(a, 0, &a_in).unwrap();
    srv.step(b, 0, &b_in).unwrap();
    let (sa, sb) = (srv.clone(), srv.clone());
    let ta = std::thread::spawn(move || sa.step(a, 5, &step_a).unwrap());
    let tb = std::thread::spawn(move || sb.step(b, 3, &step_b).unwrap());
    let (a_out, b_out) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!(max_abs_diff(&a_out, &a_ref).unwrap(), 0.0);
    assert_eq!(max_abs_diff(&b_out, &b_ref).unwrap(), 0.0);
    assert_eq!(srv.session_len(a).unwrap(), 6);
    assert_eq!(srv.session_len(b).unwrap(), 4);
}

#[test]
fn cache_budget_is_enforced_and_released() {
    let probe = server(SessionLimits::default());
    let per_token = probe.1.slice().cache_bytes_per_token();
    assert_eq!(
        per_token,
        3 * 2 * 2 * 64 * 4,
        "3 blocks x (k,v) x 2 kv heads x 64 dims x f32"
    );
    let limits = SessionLimits {
        cache_budget_bytes: per_token * 250,
        ..SessionLimits::default()
    };
    let (_d, srv, src) = server(limits);
    // Opening reserves the first 64 positions (or max_len, if smaller), not the whole max_len.
    let a = srv.open(100).unwrap();
    let b = srv.open(100).unwrap();
    let c = srv.open(100).unwrap();
    assert_eq!(srv.stats().reserved_bytes, per_token * 192);
    let err = srv.open(100).unwrap_err();
    assert!(matches!(err, EngineError::CacheBudget { .. }), "{err}");
    // Growing past 64 reserves up to max_len (the next doubling, capped): 100 for `a`.
    let ids: Vec<u32> = (0..80).map(|i| (i * 7 % 200) as u32 + 1).collect();
    srv.step(a, 0, &hidden(&src, &ids)).unwrap();
    assert_eq!(srv.stats().reserved_bytes, per_token * (100 + 64 + 64));
    // `b` cannot grow as far (100 + 100 + 64 > 250): the step is refused and changes nothing.
    let err = srv.step(b, 0, &hidden(&src, &ids)).unwrap_err();
    assert!(matches!(err, EngineError::CacheBudget { .. }), "{err}");
    assert_eq!(srv.session_len(b).unwrap(), 0);
    assert_eq!(srv.stats().reserved_bytes, per_token * (100 + 64 + 64));
    // Within its first 64 positions it still runs; once `c` closes, it grows.
    srv.step(b, 0, &hidden(&src, &ids[..60])).unwrap();
    srv.close(c).unwrap();
    srv.step(b, 60, &hidden(&src, &ids[60..])).unwrap();
    assert_eq!(srv.session_len(b).unwrap(), 80);
    assert_eq!(srv.stats().reserved_bytes, per_token * 200);
    srv.close(a).unwrap();
    srv.close(b).unwrap();
    assert_eq!(srv.stats().reserved_bytes, 0);
    assert!(matches!(srv.close(a), Err(EngineError::UnknownSession(_))));
}

/// Only sessions that grew recently count as active: one held open without work does not.
#[test]
fn only_sessions_that_grew_recently_are_active() {
    let (_d, srv, src) = server(SessionLimits::default());
    let idle = srv.open(64).unwrap();
    let busy = srv.open(64).unwrap();
    let now = Instant::now();
    assert_eq!(srv.active_sessions(now, Duration::from_secs(10)), 0);
    srv.step(busy, 0, &hidden(&src, &[1, 2, 3])).unwrap();
    let now = Instant::now();
    assert_eq!(srv.active_sessions(now, Duration::from_secs(10)), 1);
    // Past the window without growing, it no longer counts.
    let later = now + Duration::from_secs(11);
    assert_eq!(srv.active_sessions(later, Duration::from_secs(10)), 0);
    srv.close(idle).unwrap();
    srv.close(busy).unwrap();
}

/// Sessions sharing a quota together stay within it, however many there are; other owners
/// still have the rest of the budget, and closing or expiring gives the share back.
#[test]
fn a_quota_bounds_what_one_owners_sessions_reserve_together() {
    let probe = server(SessionLimits::default());
    let per_token = probe.1.slice().cache_bytes_per_token();
    let limits = SessionLimits {
        cache_budget_bytes: per_token * 1000,
        idle_timeout: Duration::from_secs(60),
        ..SessionLimits::default()
    };
    let (_d, srv, src) = server(limits);
    let span = srv.slice().range();
    let mine = CacheQuota::new(per_token * 180);
    let a = srv.open_span_in(100, span, Some(mine.clone())).unwrap();
    let b = srv.open_span_in(100, span, Some(mine.clone())).unwrap();
    assert_eq!(mine.used(), per_token * 128);
    let err = srv.open_span_in(100, span, Some(mine.clone())).unwrap_err();
    assert!(matches!(err, EngineError::CacheQuota { .. }), "{err}");
    // `a` grows to its max_len (100 + 64 = 164 of 180); then `b` cannot (100 + 100 > 180), and
    // its refused step changes nothing.
    let ids: Vec<u32> = (0..80).map(|i| (i * 7 % 200) as u32 + 1).collect();
    srv.step(a, 0, &hidden(&src, &ids)).unwrap();
    assert_eq!(mine.used(), per_token * 164);
    let err = srv.step(b, 0, &hidden(&src, &ids)).unwrap_err();
    assert!(matches!(err, EngineError::CacheQuota { .. }), "{err}");
    assert_eq!(srv.session_len(b).unwrap(), 0);
    assert_eq!(mine.used(), per_token * 164);
    assert_eq!(srv.stats().reserved_bytes, per_token * 164);
    // Someone else, with or without a quota, still gets the rest of the budget.
    let theirs = CacheQuota::new(per_token * 1000);
    let c = srv.open_span_in(100, span, Some(theirs.clone())).unwrap();
    srv.step(c, 0, &hidden(&src, &ids)).unwrap();
    let d = srv.open(100).unwrap();
    assert_eq!(theirs.used(), per_token * 100);
    // A refusal by the server's budget gives the quota back what it took.
    let small = SessionLimits {
        cache_budget_bytes: per_token * 100,
        ..SessionLimits::default()
    };
    let (_d2, tight, _) = server(small);
    let q = CacheQuota::new(per_token * 1000);
    tight.open_span_in(64, span, Some(q.clone())).unwrap();
    let err = tight.open_span_in(64, span, Some(q.clone())).unwrap_err();
    assert!(matches!(err, EngineError::CacheBudget { .. }), "{err}");
    assert_eq!(q.used(), per_token * 64);
    // Closing and expiry give the share back.
    srv.close(a).unwrap();
    assert_eq!(mine.used(), per_token * 64);
    srv.step(b, 0, &hidden(&src, &ids)).unwrap();
    assert_eq!(mine.used(), per_token * 100);
    srv.expire_idle(Instant::now() + Duration::from_secs(120));
    assert_eq!(mine.used(), 0);
    assert_eq!(theirs.used(), 0);
    assert_eq!(srv.stats().reserved_bytes, 0);
    assert!(matches!(srv.close(d), Err(EngineError::UnknownSession(_))));
}

/// One client asking for the longest sessions the node allows, and leaving them empty, holds
/// only their first positions: others can still open and run sessions.
#[test]
fn sessions_opened_long_and_left_empty_do_not_lock_others_out() {
    let probe = server(SessionLimits::default());
    let per_token = probe.1.slice().cache_bytes_per_token();
    let limits = SessionLimits {
        cache_budget_bytes: per_token * 1024,
        max_len_cap: 4096,
        ..SessionLimits::default()
    };
    let (_d, srv, src) = server(limits);
    // Before: one open of max_len 4096 (> the whole budget) was refused, and one of 1024 took
    // everything; now each reserves 64 positions.
    let squatters: Vec<_> = (0..8).map(|_| srv.open(4096).unwrap()).collect();
    let honest = srv.open(256).unwrap();
    let ids: Vec<u32> = (0..200).map(|i| (i * 13 % 200) as u32 + 1).collect();
    srv.step(honest, 0, &hidden(&src, &ids)).unwrap();
    assert_eq!(srv.session_len(honest).unwrap(), 200);
    assert_eq!(
        srv.stats().reserved_bytes,
        per_token * (8 * 64 + 256),
        "the squatters hold 64 positions each"
    );
    for s in squatters {
        srv.close(s).unwrap();
    }
}

#[test]
fn session_count_and_length_limits() {
    let limits = SessionLimits {
        max_sessions: 2,
        max_len_cap: 16,
        ..SessionLimits::default()
    };
    let (_d, srv, src) = server(limits);
    assert!(matches!(
        srv.open(17),
        Err(EngineError::MaxLenTooLarge { .. })
    ));
    assert!(matches!(
        srv.open(0),
        Err(EngineError::MaxLenTooLarge { .. })
    ));
    let s = srv.open(12).unwrap();
    srv.open(12).unwrap();
    assert!(matches!(srv.open(12), Err(EngineError::TooManySessions(2))));

    srv.step(s, 0, &hidden(&src, &[1; 11])).unwrap();
    let err = srv.step(s, 11, &hidden(&src, &[1, 2])).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::SessionFull {
                tokens: 13,
                max_len: 12,
                ..
            }
        ),
        "{err}"
    );
    // The failed step left the cache as it was.
    assert_eq!(srv.session_len(s).unwrap(), 11);
    let err = srv.step(s, 12, &hidden(&src, &[1])).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::PositionGap {
                requested: 12,
                cached: 11,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn idle_sessions_expire() {
    let limits = SessionLimits {
        idle_timeout: Duration::from_secs(60),
        ..SessionLimits::default()
    };
    let (_d, srv, src) = server(limits);
    let s = srv.open(8).unwrap();
    assert_eq!(srv.expire_idle(Instant::now()), 0);
    assert_eq!(srv.expire_idle(Instant::now() + Duration::from_secs(61)), 1);
    assert_eq!(srv.stats().sessions, 0);
    assert_eq!(srv.stats().reserved_bytes, 0);
    assert!(matches!(
        srv.step(s, 0, &hidden(&src, &[1])),
        Err(EngineError::UnknownSession(_))
    ));
}

#[test]
fn wrong_hidden_states_are_rejected_without_damage() {
    let (_d, srv, src) = server(SessionLimits::default());
    let s = srv.open(32).unwrap();
    srv.step(s, 0, &hidden(&src, &[1, 2, 3])).unwrap();
    for bad in [
        Tensor::zeros((1, 2, 255), DType::F32, &hearth_engine::Device::Cpu).unwrap(),
        Tensor::zeros((2, 2, 256), DType::F32, &hearth_engine::Device::Cpu).unwrap(),
        Tensor::zeros((2, 256), DType::F32, &hearth_engine::Device::Cpu).unwrap(),
        Tensor::zeros((1, 0, 256), DType::F32, &hearth_engine::Device::Cpu).unwrap(),
    ] {
        let err = srv.step(s, 3, &bad).unwrap_err();
        assert!(
            matches!(err, EngineError::HiddenShape { hidden: 256, .. }),
            "{err}"
        );
    }
    assert_eq!(srv.session_len(s).unwrap(), 3);
}

/// A session over part of a slice's blocks computes what a slice of exactly those blocks
/// computes, reserves cache for those blocks only, and batches with whole-slice sessions.
#[test]
fn sessions_over_part_of_a_slice_match_a_slice_of_those_blocks() {
    let (_dir, server, src) = server(SessionLimits::default()); // blocks 1..4
    let part = BlockRange::new(2, 4).unwrap();
    let own = src.load_slice(part, &LoadOptions::default(), None).unwrap();
    let x = hidden(&src, &[3, 17, 42, 7]);

    let sub = server.open_span(16, part).unwrap();
    let whole = server.open(16).unwrap();
    let per_token_whole = server.slice().cache_bytes_per_token();
    assert_eq!(
        server.stats().reserved_bytes,
        16 * per_token_whole + 16 * per_token_whole * 2 / 3
    );
    let mut cache = own.new_cache();
    let expected = own.forward(&x, &mut cache).unwrap();
    let got = server.step(sub, 0, &x).unwrap();
    assert!(max_abs_diff(&got, &expected).unwrap() <= 1e-6);

    // Mixed spans in one batch: each equals its own single step.
    let y = hidden(&src, &[9]);
    let expected_sub = own.forward(&y, &mut cache).unwrap();
    let reference = src
        .load_slice(
            BlockRange::new(1, 4).unwrap(),
            &LoadOptions::default(),
            None,
        )
        .unwrap();
    let mut ref_cache = reference.new_cache();
    let expected_whole = reference.forward(&y, &mut ref_cache).unwrap();
    let out = server.step_batch(vec![(sub, 4, y.clone()), (whole, 0, y.clone())]);
    let [a, b] = <[_; 2]>::try_from(out).unwrap();
    assert!(max_abs_diff(&a.unwrap(), &expected_sub).unwrap() <= 1e-6);
    assert!(max_abs_diff(&b.unwrap(), &expected_whole).unwrap() <= 1e-6);

    // Outside the slice: refused.
    assert!(server.open_span(8, BlockRange::new(0, 2).unwrap()).is_err());
    assert!(server.open_span(8, BlockRange::new(3, 5).unwrap()).is_err());
}

/// Steps that only replay or rewind do not keep a session alive: a client stepping the same
/// position over and over loses it after `idle_timeout`, one that grows keeps it; and no session
/// outlives `max_lifetime`.
#[test]
fn only_progress_keeps_a_session_alive() {
    let limits = SessionLimits {
        idle_timeout: Duration::from_millis(400),
        max_lifetime: Duration::from_secs(3600),
        ..SessionLimits::default()
    };
    let (_d, srv, src) = server(limits);
    let squatter = srv.open(64).unwrap();
    let honest = srv.open(64).unwrap();
    srv.step(squatter, 0, &hidden(&src, &[1, 2, 3])).unwrap();
    srv.step(honest, 0, &hidden(&src, &[1, 2, 3])).unwrap();
    let started = Instant::now();
    let mut pos = 3;
    // 0.75 s of steps every 150 ms: the squatter keeps rewriting position 2, the honest session
    // adds a position each time.
    while started.elapsed() < Duration::from_millis(750) {
        std::thread::sleep(Duration::from_millis(150));
        srv.step(squatter, 2, &hidden(&src, &[9])).unwrap();
        srv.step(honest, pos, &hidden(&src, &[9])).unwrap();
        pos += 1;
    }
    assert_eq!(srv.expire_idle(Instant::now()), 1);
    assert!(matches!(
        srv.step(squatter, 2, &hidden(&src, &[9])),
        Err(EngineError::UnknownSession(_))
    ));
    assert_eq!(srv.session_len(honest).unwrap(), pos);
    // However it grows, a session ends after max_lifetime.
    assert_eq!(
        srv.expire_idle(Instant::now() + Duration::from_secs(3601)),
        1
    );
    assert_eq!(srv.stats().sessions, 0);
}
