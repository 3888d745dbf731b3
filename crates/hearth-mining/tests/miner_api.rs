//! cgminer/bmminer and LuxOS clients against the local API servers.

use std::time::{Duration, Instant};

use hearth_mining::backoff::{retry, BackoffConfig};
use hearth_mining::cgminer::{ApiConfig, CgminerClient};
use hearth_mining::luxos::{Curtail, LuxosClient};
use hearth_mining::testing::{MinerApiOptions, TestMinerApi};
use hearth_mining::{Error, Miner, MinerKind};

fn fast() -> ApiConfig {
    ApiConfig {
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_millis(500),
        max_reply: 1 << 20,
    }
}

#[tokio::test]
async fn summary_devs_pools_are_typed() {
    let api = TestMinerApi::start(MinerApiOptions::default())
        .await
        .unwrap();
    let c = CgminerClient::with_config(api.addr(), fast());
    let s = c.summary().await.unwrap();
    assert_eq!(s.hashrate_5s_hs, Some(13.5e12));
    assert_eq!(s.hashrate_avg_hs, Some(13.5e12));
    assert_eq!((s.accepted, s.rejected, s.hardware_errors), (1520, 3, 7));
    let devs = c.devs().await.unwrap();
    assert_eq!(devs.len(), 3);
    assert_eq!(devs[2].temperature_c, Some(65.0));
    assert_eq!(devs[1].id, Some(1));
    assert!(devs.iter().all(|d| d.enabled));
    let pools = c.pools().await.unwrap();
    assert_eq!(pools.len(), 3);
    assert_eq!(pools[1].url, "stratum+tcp://pool1.example:3333");
    assert_eq!(pools[1].priority, Some(1));
    assert_eq!(pools[0].status, "Alive");
    assert_eq!(pools[0].stratum_active, Some(true));
    assert_eq!(pools[2].user.as_deref(), Some("hearth.rig2"));

    let st = Miner::Cgminer(c).status().await.unwrap();
    assert_eq!(st.kind, MinerKind::Cgminer);
    assert_eq!(st.hashrate_hs, 13.5e12);
    assert_eq!(st.temperature_c, Some(65.0));
    assert!(st.connected && !st.paused);
}

#[tokio::test]
async fn pause_disables_every_pool_and_resume_enables_them() {
    let api = TestMinerApi::start(MinerApiOptions::default())
        .await
        .unwrap();
    let miner = Miner::Cgminer(CgminerClient::with_config(api.addr(), fast()));
    miner.pause().await.unwrap();
    assert_eq!(api.state().pools_enabled, vec![false, false, false]);
    let st = miner.status().await.unwrap();
    assert!(st.paused && !st.connected);
    assert_eq!(st.hashrate_hs, 0.0);
    let writes: Vec<_> = api
        .state()
        .commands
        .into_iter()
        .filter(|(c, _)| c == "disablepool")
        .map(|(_, p)| p.unwrap_or_default())
        .collect();
    assert_eq!(writes, vec!["0", "1", "2"]);

    miner.resume().await.unwrap();
    assert_eq!(api.state().pools_enabled, vec![true, true, true]);
    assert!(!miner.status().await.unwrap().paused);
}

#[tokio::test]
async fn resume_restores_only_what_pause_disabled() {
    let api = TestMinerApi::start(MinerApiOptions::default())
        .await
        .unwrap();
    let c = CgminerClient::with_config(api.addr(), fast());
    c.disable_pool(2).await.unwrap(); // the operator's choice, before we pause
    c.pause().await.unwrap();
    assert_eq!(api.state().pools_enabled, vec![false, false, false]);
    c.resume().await.unwrap();
    assert_eq!(api.state().pools_enabled, vec![true, true, false]);
    // Already-enabled is an info reply, not an error.
    c.enable_pool(0).await.unwrap();

    // A miner the operator switched off entirely stays off across pause/resume.
    c.disable_pool(0).await.unwrap();
    c.disable_pool(1).await.unwrap();
    c.pause().await.unwrap();
    c.resume().await.unwrap();
    assert_eq!(api.state().pools_enabled, vec![false, false, false]);
}

#[tokio::test]
async fn stock_cgminer_refusing_the_last_pool_is_a_clear_error() {
    let api = TestMinerApi::start(MinerApiOptions {
        refuse_last_pool: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = CgminerClient::with_config(api.addr(), fast());
    match c.pause().await {
        Err(Error::Refused { code, msg, .. }) => {
            assert_eq!(code, 51);
            assert!(msg.contains("Cannot disable last active pool"), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(api.state().pools_enabled, vec![false, false, true]);
    // The partial pause is undone by resume.
    c.resume().await.unwrap();
    assert_eq!(api.state().pools_enabled, vec![true, true, true]);
}

#[tokio::test]
async fn status_e_becomes_an_error_carrying_msg() {
    let api = TestMinerApi::start(MinerApiOptions {
        allow_write: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = CgminerClient::with_config(api.addr(), fast());
    match c.disable_pool(0).await {
        Err(Error::Refused {
            status, code, msg, ..
        }) => {
            assert_eq!((status.as_str(), code), ("E", 45));
            assert_eq!(msg, "Access denied to 'disablepool' command");
        }
        other => panic!("{other:?}"),
    }
    match c.command("frobnicate", None).await {
        Err(Error::Refused { code, msg, .. }) => {
            assert_eq!((code, msg.as_str()), (14, "Invalid command"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(api.state().pools_enabled, vec![true, true, true]);
}

#[tokio::test]
async fn a_miner_that_never_answers_times_out_and_is_retried() {
    let api = TestMinerApi::start(MinerApiOptions {
        silent: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = CgminerClient::with_config(api.addr(), fast());
    let t0 = Instant::now();
    let err = c.summary().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.is_transient());
    assert!(t0.elapsed() < Duration::from_secs(10));

    let cfg = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
        factor: 2.0,
        jitter: true,
    };
    let err = retry(cfg, 3, || c.summary()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    assert_eq!(api.state().connections, 4, "one try, then three with retry");
}

#[tokio::test]
async fn a_closed_port_is_a_transient_io_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = CgminerClient::with_config(format!("127.0.0.1:{port}"), fast());
    let err = c.pools().await.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn replies_over_the_limit_are_refused() {
    let api = TestMinerApi::start(MinerApiOptions::default())
        .await
        .unwrap();
    let c = CgminerClient::with_config(
        api.addr(),
        ApiConfig {
            max_reply: 1024,
            ..fast()
        },
    );
    // `pools` is about 3 KiB here.
    let err = c.pools().await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 1024, .. }), "{err}");
}

#[tokio::test]
async fn luxos_curtail_sleep_and_wakeup() {
    let api = TestMinerApi::start(MinerApiOptions {
        luxos: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let miner = Miner::Luxos(LuxosClient::with_config(api.addr(), fast()));
    miner.pause().await.unwrap();
    let st = api.state();
    assert!(st.sleeping);
    assert_eq!(st.session, None, "the session is closed again");
    let cmds: Vec<&str> = st.commands.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cmds, ["logon", "curtail", "logoff"]);
    let sid = st.commands[2].1.clone().unwrap();
    assert_eq!(
        st.commands[1].1.as_deref(),
        Some(format!("{sid},sleep").as_str())
    );

    let status = miner.status().await.unwrap();
    assert!(status.paused);
    assert_eq!(status.power_w, Some(45.0));
    assert_eq!(status.hashrate_hs, 0.0);

    miner.resume().await.unwrap();
    assert!(!api.state().sleeping);
    let status = miner.status().await.unwrap();
    assert!(!status.paused);
    assert_eq!(status.power_w, Some(3250.0));
    assert_eq!(status.hashrate_hs, 13.5e12);
}

#[tokio::test]
async fn luxos_rejects_a_wrong_session() {
    let api = TestMinerApi::start(MinerApiOptions {
        luxos: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = LuxosClient::with_config(api.addr(), fast());
    let sid = c.logon().await.unwrap();
    let wrong = if sid == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    match c.curtail_in_session(wrong, Curtail::Sleep).await {
        Err(Error::Refused { msg, .. }) => assert_eq!(msg, "Invalid session id"),
        other => panic!("{other:?}"),
    }
    assert!(!api.state().sleeping);
    // While our session is open, a second logon is refused; the whole action then fails
    // cleanly instead of curtailing without a session.
    assert!(matches!(c.pause().await, Err(Error::Refused { .. })));
    assert!(!api.state().sleeping);
    c.curtail_in_session(&sid, Curtail::Sleep).await.unwrap();
    assert!(api.state().sleeping);
    c.logoff(&sid).await.unwrap();
    assert!(matches!(c.logoff(&sid).await, Err(Error::Refused { .. })));
}

/// The agent keeps miners in `Arc`s and drives them from spawned tasks: a compile-time check.
#[test]
fn miner_and_its_futures_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<F: std::future::Future + Send>(_: F) {}
    send_sync::<Miner>();
    let m = Miner::Cgminer(CgminerClient::new("127.0.0.1:1"));
    send(m.pause());
    send(m.resume());
    send(m.status());
}

#[tokio::test]
async fn a_reply_without_terminator_or_close_is_read_when_complete() {
    // Some firmwares answer and leave the connection open without a NUL.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(br#"{"STATUS":[{"STATUS":"S","When":1,"Code":11,"Msg":"Summary","Description":"x"}],"SUMMARY":[{"MHS 5s":"12.5","Accepted":4,"Rejected":0}],"id":1}"#)
            .await
            .unwrap();
        // Keep the socket open until the client hangs up.
        let _ = s.read(&mut buf).await;
    });
    let c = CgminerClient::with_config(
        addr,
        ApiConfig {
            io_timeout: Duration::from_secs(20),
            ..fast()
        },
    );
    let t0 = Instant::now();
    let s = c.summary().await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "did not wait for the timeout"
    );
    assert_eq!((s.hashrate_5s_hs, s.accepted), (Some(12.5e6), 4));
    server.await.unwrap();
}

#[tokio::test]
async fn miners_from_specs() {
    let spec: hearth_mining::MinerSpec =
        serde_json::from_str(r#"{"kind":"luxos","addr":"127.0.0.1:4028"}"#).unwrap();
    assert_eq!(Miner::from_spec(&spec).unwrap().kind(), MinerKind::Luxos);
    let spec: hearth_mining::MinerSpec = serde_json::from_str(
        r#"{"kind":"builtin","url":"stratum+ssl://pool.example:443","user":"w"}"#,
    )
    .unwrap();
    assert!(matches!(
        Miner::from_spec(&spec),
        Err(Error::Unsupported(_))
    ));
    assert!(
        serde_json::from_str::<hearth_mining::MinerSpec>(r#"{"kind":"asic","addr":"x"}"#).is_err()
    );
}
