//! The built-in miner against the local verifying pool.

use std::time::{Duration, Instant};

use hearth_mining::backoff::BackoffConfig;
use hearth_mining::sha256d::hash_difficulty;
use hearth_mining::stratum::{BuiltinMiner, StratumConfig, StratumStats};
use hearth_mining::testing::{PoolOptions, TestPool};
use hearth_mining::{Miner, MinerKind};

const T: Duration = Duration::from_secs(30);

fn config(pool: &TestPool) -> StratumConfig {
    let mut c = StratumConfig::new(pool.url(), "hearth.test");
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(1000),
        factor: 2.0,
        jitter: false,
    };
    c.batch_size = 4096;
    c
}

/// Polls the miner's counters until `pred` holds (they have no change events of their own).
async fn wait_miner(
    miner: &BuiltinMiner,
    what: &str,
    pred: impl Fn(&StratumStats) -> bool,
) -> StratumStats {
    let deadline = Instant::now() + T;
    loop {
        let s = miner.stats();
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_are_found_verified_and_accepted() {
    let pool = TestPool::start(PoolOptions::default()).await.unwrap();
    let mut cfg = config(&pool);
    cfg.version_rolling = true;
    cfg.extranonce_subscribe = true;
    let miner = BuiltinMiner::start(cfg).unwrap();
    let stats = pool
        .wait_until("3 accepted shares", T, |s| s.accepted.len() >= 3)
        .await
        .unwrap();
    assert!(stats.rejected.is_empty(), "rejected: {:?}", stats.rejected);
    // Independently of the pool's target check: each share's hash is as hard as asked.
    let d = PoolOptions::default().difficulty;
    for share in &stats.accepted {
        assert!(hash_difficulty(&share.hash) >= d, "{share:?}");
        assert_eq!(share.extranonce2.len(), 4);
    }
    // The handshake went in the documented order.
    assert_eq!(
        &stats.methods[0][..4],
        [
            "mining.configure",
            "mining.subscribe",
            "mining.extranonce.subscribe",
            "mining.authorize"
        ]
    );
    let s = wait_miner(&miner, "3 accepted", |s| s.accepted >= 3).await;
    assert_eq!(s.rejected, 0);
    assert!(s.connected && s.authorized);
    assert_eq!(s.difficulty, Some(d));
    assert_eq!(s.version_rolling_mask, Some(0x1fff_e000));
    assert!(s.hashes > 0 && s.hashrate_hs > 0.0);

    let m = Miner::Builtin(miner);
    let st = m.status().await.unwrap();
    assert_eq!(st.kind, MinerKind::Builtin);
    assert!(st.connected && !st.paused && st.accepted >= 3);
    if let Miner::Builtin(b) = &m {
        b.shutdown().await;
    }
    pool.wait_until("the miner to hang up", T, |s| s.disconnects >= 1)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_rolling_and_extranonce2_move_through_the_search_space() {
    // Two rollable bits, and small units so that the miner walks versions and extranonce2.
    let pool = TestPool::start(PoolOptions {
        version_rolling_mask: Some(0x0000_6000),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&pool);
    cfg.version_rolling = true;
    cfg.nonces_per_unit = 2048;
    cfg.batch_size = 2048;
    let miner = BuiltinMiner::start(cfg).unwrap();
    let stats = pool
        .wait_until("shares with 2 versions and 2 extranonce2", T, |s| {
            let versions: std::collections::HashSet<_> =
                s.accepted.iter().map(|a| a.version).collect();
            let en2s: std::collections::HashSet<_> =
                s.accepted.iter().map(|a| a.extranonce2.clone()).collect();
            versions.len() >= 2 && en2s.len() >= 2
        })
        .await
        .unwrap();
    assert!(stats.rejected.is_empty(), "{:?}", stats.rejected);
    for a in &stats.accepted {
        assert_eq!(
            a.version & !0x0000_6000,
            0x2000_0000,
            "only mask bits rolled"
        );
    }
    miner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_keeps_the_connection_and_stops_submits() {
    let pool = TestPool::start(PoolOptions::default()).await.unwrap();
    let miner = BuiltinMiner::start(config(&pool)).unwrap();
    pool.wait_until("a share", T, |s| !s.accepted.is_empty())
        .await
        .unwrap();

    miner.pause().await;
    let submits = pool.stats().submits;
    let hashes = miner.stats().hashes;
    // The paused miner still reads jobs and answers the pool...
    pool.new_job(true);
    pool.ask_version();
    pool.wait_until("get_version answer", T, |s| s.versions.len() == 1)
        .await
        .unwrap();
    // ...and over a window where it would otherwise find several shares, submits nothing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    pool.ask_version();
    let stats = pool
        .wait_until("second get_version answer", T, |s| s.versions.len() == 2)
        .await
        .unwrap();
    assert!(stats.versions[0].starts_with("hearth/"));
    assert_eq!(stats.submits, submits, "no submits while paused");
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.disconnects, 0, "pause keeps the pool connection");
    assert_eq!(miner.stats().hashes, hashes, "no hashing while paused");
    let st = miner.status();
    assert!(st.paused && st.connected);
    assert_eq!(st.hashrate_hs, 0.0);

    miner.resume().await;
    pool.wait_until("a share after resume", T, |s| {
        s.accepted.len() > stats.accepted.len() && s.submits > submits
    })
    .await
    .unwrap();
    let stats = pool.stats();
    assert_eq!(stats.connections, 1);
    assert!(stats.rejected.is_empty(), "{:?}", stats.rejected);
    assert!(!miner.status().paused);
    miner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_with_exponential_backoff() {
    // The pool hangs up on the first three connections at once.
    let pool = TestPool::start(PoolOptions {
        close_first: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&pool);
    cfg.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
        factor: 4.0,
        jitter: false,
    };
    let miner = BuiltinMiner::start(cfg).unwrap();
    let stats = pool
        .wait_until("a share on the 4th connection", T, |s| {
            s.accepted.iter().any(|a| a.conn == 3)
        })
        .await
        .unwrap();
    let gaps: Vec<Duration> = stats
        .connect_times
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    // Backoff 100 ms, 400 ms, 1600 ms (no jitter): each gap at least its delay.
    for (gap, min) in gaps.iter().zip([100u64, 400, 1600]) {
        assert!(
            *gap >= Duration::from_millis(min),
            "gaps {gaps:?} (expected at least 100/400/1600 ms)"
        );
    }

    // A session that got authorized resets the backoff; the pool dropping it is survived.
    pool.close_connections();
    let stats = pool
        .wait_until("a share on the 5th connection", T, |s| {
            s.accepted.iter().any(|a| a.conn == 4)
        })
        .await
        .unwrap();
    // The next delay without the reset would be 6.4 s.
    let gap = stats.connect_times[4] - stats.connect_times[3];
    assert!(
        gap < Duration::from_secs(3),
        "backoff was not reset: {gap:?}"
    );
    let s = miner.stats();
    assert_eq!(s.connects, 5);
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("closed"),
        "{s:?}"
    );
    miner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_extranonce_is_honoured() {
    let pool = TestPool::start(PoolOptions::default()).await.unwrap();
    let mut cfg = config(&pool);
    cfg.extranonce_subscribe = true;
    let miner = BuiltinMiner::start(cfg).unwrap();
    pool.wait_until("a share", T, |s| !s.accepted.is_empty())
        .await
        .unwrap();
    let new_en1 = vec![0xde, 0xad, 0xbe, 0xef, 0x01];
    pool.set_extranonce(new_en1.clone(), 3);
    let stats = pool
        .wait_until("a share with the new extranonces", T, |s| {
            s.accepted
                .iter()
                .any(|a| a.extranonce1 == new_en1 && a.extranonce2.len() == 3)
        })
        .await
        .unwrap();
    // Only a share already on the wire when the change arrived may be refused, as stale.
    assert!(
        stats.rejected.iter().all(|r| r.contains("stale")),
        "{:?}",
        stats.rejected
    );
    assert_eq!(miner.stats().extranonce1.as_deref(), Some("deadbeef01"));
    miner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_lines_are_skipped_and_reported() {
    let pool = TestPool::start(PoolOptions::default()).await.unwrap();
    let miner = BuiltinMiner::start(config(&pool)).unwrap();
    pool.wait_until("a share", T, |s| !s.accepted.is_empty())
        .await
        .unwrap();
    let before = pool.stats().accepted.len();

    pool.send_raw("this is not json");
    pool.send_raw(format!(
        "{{\"id\":null,\"method\":\"client.show_message\",\"params\":[\"{}\"]}}",
        "x".repeat(20_000)
    ));
    pool.send_raw(r#"{"id":null,"method":"mining.notify","params":["j","zz","","",[],"20000000","1a44b9f2","4dd7f5c7",true]}"#);
    pool.send_raw(r#"{"id":null,"method":"mining.set_difficulty","params":["a lot"]}"#);
    pool.send_raw(r#"{"id":99999,"result":true,"error":null}"#);
    pool.send_raw(r#"{"id":77,"method":"mining.unheard_of","params":[]}"#);
    // Lines are handled in order: once this is answered, all of the above were seen.
    pool.ask_version();
    let stats = pool
        .wait_until("get_version answer", T, |s| s.versions.len() == 1)
        .await
        .unwrap();
    assert_eq!(
        stats.client_errors, 1,
        "unknown request answered with an error"
    );
    let s = miner.stats();
    assert_eq!(s.oversized_lines, 1);
    assert_eq!(s.malformed_lines, 4, "{s:?}");
    assert!(s.last_error.is_some());
    assert_eq!(stats.disconnects, 0, "garbage does not drop the connection");

    // And it keeps mining on the valid job it had.
    pool.wait_until("more shares", T, |s| s.accepted.len() > before)
        .await
        .unwrap();
    assert_eq!(pool.stats().connections, 1);
    miner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_authorization_is_retried_and_reported() {
    let pool = TestPool::start(PoolOptions {
        require_user: Some("someone.else".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let miner = BuiltinMiner::start(config(&pool)).unwrap();
    pool.wait_until("a retry", T, |s| s.connections >= 2)
        .await
        .unwrap();
    let s = miner.stats();
    assert!(!s.authorized);
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("authorize"),
        "{s:?}"
    );
    assert_eq!(pool.stats().submits, 0);
    miner.shutdown().await;
}

#[tokio::test]
async fn unsupported_pools_are_refused_up_front() {
    for url in [
        "stratum+ssl://pool.example:443",
        "stratum2+tcp://pool.example:3336",
    ] {
        let err = BuiltinMiner::start(StratumConfig::new(url, "w")).unwrap_err();
        assert!(matches!(err, hearth_mining::Error::Unsupported(_)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_hangs_up_on_configure_is_retried_without_it() {
    let pool = TestPool::start(PoolOptions {
        drop_on_configure: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&pool);
    cfg.version_rolling = true;
    let miner = BuiltinMiner::start(cfg).unwrap();
    let stats = pool
        .wait_until("a share", T, |s| !s.accepted.is_empty())
        .await
        .unwrap();
    assert_eq!(stats.methods[0], ["mining.configure"]);
    assert_eq!(
        &stats.methods[1][..2],
        ["mining.subscribe", "mining.authorize"]
    );
    assert_eq!(
        stats.accepted[0].version, 0x2000_0000,
        "no rolling without BIP310"
    );
    assert_eq!(miner.stats().version_rolling_mask, None);
    miner.shutdown().await;
}
