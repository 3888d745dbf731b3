//! The agent's loop with fakes and with hearth-mining's local protocol servers: a DR event
//! POSTed over HTTP curtails devices within 1 s; /metrics is Prometheus text with the device
//! series; a miner that does not answer does not stop the loop; cgminer/LuxOS miners are paused
//! and resumed by the decision; malformed input is rejected and the last good values kept.

use hearth_energy::agent::{Agent, AgentConfig, AgentDevice, Backend, DeviceConfig};
use hearth_energy::control::{Actuator, Command, FakeActuator};
use hearth_energy::signals::http;
use hearth_energy::telemetry::FixedTelemetry;
use hearth_energy::*;
use hearth_mining::testing::{MinerApiOptions, TestMinerApi};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(20);

fn asic(id: &str) -> DeviceSpec {
    DeviceSpec {
        id: id.into(),
        kind: DeviceKind::Asic,
        idle_w: 10.0,
        mine: Some(MineSpec {
            power_w: 1000.0,
            hashrate_th_s: 50.0,
        }),
        ai: None,
        heat: None,
        temp_limit_c: None,
        thermal: None,
        power_limit_range_w: None,
        switch_cost_usd: 0.0,
    }
}

fn config(interval_s: f64) -> AgentConfig {
    let mut c = AgentConfig {
        interval_s,
        ..AgentConfig::default()
    };
    c.policy.min_dwell_s = 0.0;
    c.price.fixed_usd_per_mwh = 20.0; // break-even of `asic` is ~105 $/MWh: mine
    c
}

fn fake_device(id: &str) -> (AgentDevice, FakeActuator) {
    let fake = FakeActuator::default();
    let dev = AgentDevice {
        spec: asic(id),
        telemetry: Arc::new(FixedTelemetry(Arc::new(Mutex::new(Reading {
            power_w: Some(10.0),
            temp_c: Some(40.0),
            ..Reading::default()
        })))),
        actuator: Arc::new(fake.clone()) as Arc<dyn Actuator>,
        backend: "fake".into(),
    };
    (dev, fake)
}

/// Starts the agent on 127.0.0.1:0; returns its base URL and a shutdown trigger.
async fn start(
    agent: Agent,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    Arc<agent_shared::S>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shared = agent.shared.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(agent.run(listener, async move {
        let _ = rx.await;
    }));
    (url, tx, shared)
}

mod agent_shared {
    pub(crate) type S = hearth_energy::agent::Shared;
}

async fn post(url: &str, path: &str, body: &str) -> (u16, String) {
    let (hostport, _) = http::split_url(url).unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json");
    raw(url, &head, body).await
}

/// Sends `head` (a request head without the final blank line) and `body`; returns the status
/// and the whole answer.
async fn raw(url: &str, head: &str, body: &str) -> (u16, String) {
    let (hostport, _) = http::split_url(url).unwrap();
    let mut s = tokio::net::TcpStream::connect(&hostport).await.unwrap();
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

async fn wait_for(what: &str, mut pred: impl FnMut() -> bool) {
    let t = Instant::now();
    while !pred() {
        assert!(t.elapsed() < LONG, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn last_mode(f: &FakeActuator) -> Option<Mode> {
    f.log.lock().unwrap().last().map(|c: &Command| c.mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_event_over_http_curtails_within_one_second() {
    let mut devs = Vec::new();
    let mut fakes = Vec::new();
    for i in 0..3 {
        let (d, f) = fake_device(&format!("asic{i}"));
        devs.push(d);
        fakes.push(f);
    }
    // A long interval: only the event can cause the next decision.
    let agent = Agent::new(config(300.0), devs).unwrap();
    let (url, _stop, shared) = start(agent).await;
    wait_for("mining", || {
        fakes.iter().all(|f| last_mode(f) == Some(Mode::Mine))
    })
    .await;
    let t0 = Instant::now();
    let (code, text) = post(
        &url,
        "/api/dr/events",
        r#"{"id":"grid-1","intervalPeriod":{"duration":"PT10M"},"intervals":[{"payloads":[{"type":"SIMPLE","values":[1]}]}]}"#,
    )
    .await;
    assert_eq!(code, 201, "{text}");
    wait_for("curtailment", || {
        fakes.iter().all(|f| last_mode(f) == Some(Mode::Idle))
    })
    .await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "curtailed after {took:?}");
    let snap = shared.snapshot();
    assert_eq!(snap.dr_active, vec!["grid-1".to_string()]);
    assert!(
        snap.devices.iter().all(|d| d.reason.contains("grid-1")),
        "{:?}",
        snap.devices[0].reason
    );
    // Cancelling the event lets them mine again.
    let (hostport, _) = http::split_url(&url).unwrap();
    let mut s = tokio::net::TcpStream::connect(&hostport).await.unwrap();
    s.write_all(format!("DELETE /api/dr/events/grid-1 HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 204"));
    wait_for("mining again", || {
        fakes.iter().all(|f| last_mode(f) == Some(Mode::Mine))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_state_expose_devices_and_bad_input_is_rejected() {
    let (d0, _f0) = fake_device("asic0");
    let agent = Agent::new(config(300.0), vec![d0]).unwrap();
    let (url, _stop, shared) = start(agent).await;
    wait_for("a decision", || shared.snapshot().decisions >= 1).await;
    let body = http::get(&format!("{url}/metrics"), LONG).await.unwrap();
    let text = String::from_utf8(body).unwrap();
    // Every sample line is `name{labels} value` with a numeric value.
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(series.starts_with("hearth_"), "{line}");
        samples.insert(series.to_string(), v);
    }
    assert!(text.trim_end().ends_with("# EOF"));
    assert_eq!(
        samples.get(r#"hearth_device_mode{device="asic0",mode="mine"}"#),
        Some(&1.0)
    );
    assert_eq!(
        samples.get(r#"hearth_device_mode{device="asic0",mode="idle"}"#),
        Some(&0.0)
    );
    assert_eq!(
        samples.get(r#"hearth_device_temperature_celsius{device="asic0"}"#),
        Some(&40.0)
    );
    assert_eq!(
        samples.get("hearth_electricity_price_usd_per_mwh"),
        Some(&20.0)
    );
    assert!(samples.contains_key(r#"hearth_device_planned_watts{device="asic0"}"#));

    // Bad price: 400, the last good price stays; a good one is used at once.
    let (code, text) = post(&url, "/api/price", r#"{"usd_per_mwh": "lots"}"#).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("error"));
    let (code, _) = post(&url, "/api/price", r#"{"usd_per_mwh": 300}"#).await;
    assert_eq!(code, 200);
    wait_for("the new price", || {
        shared.snapshot().signals.electricity_usd_per_mwh == 300.0
    })
    .await;
    let (code, _) = post(&url, "/api/price", r#"{"usd_per_mwh": -1e12}"#).await;
    assert_eq!(code, 400);
    let snap = shared.snapshot();
    assert_eq!(snap.signals.electricity_usd_per_mwh, 300.0);
    // At 300 $/MWh mining stops, and says why.
    let d = &snap.devices[0];
    assert_eq!(d.mode, Mode::Idle);
    assert!(
        d.reason
            .contains(": price 300 $/MWh > break-even 105 $/MWh"),
        "{}",
        d.reason
    );
    // Bad events are refused with a reason.
    let (code, text) = post(&url, "/api/dr/events", r#"{"id":"x","target":"curtail"}"#).await;
    assert_eq!(code, 400);
    assert!(text.contains("duration"), "{text}");
    let big = format!(r#"{{"id":"{}"}}"#, "a".repeat(100_000));
    let (code, _) = post(&url, "/api/dr/events", &big).await;
    assert_eq!(code, 413);
    assert!(shared.dr.lock().unwrap().events().is_empty());
    // The JSON state carries devices, readings and reasons.
    let body = http::get(&format!("{url}/api/state"), LONG).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["devices"][0]["id"], "asic0");
    assert_eq!(v["devices"][0]["mode"], "idle");
    assert!(v["devices"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("break-even"));
}

/// The node (`hearth node --agent-url`) reads `/api/state` with the shared schema: the served
/// JSON must read back into it and serialize back to the same JSON (a field the type lacks, or
/// one renamed on one side only, fails here), including the `null`s serde_json writes for
/// non-finite floats, and `serves_ai` must give each device's decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_state_is_exactly_the_shared_schema() {
    let (asic0, _f0) = fake_device("asic0");
    let fixed = |temp_c| -> Arc<FixedTelemetry> {
        Arc::new(FixedTelemetry(Arc::new(Mutex::new(Reading {
            power_w: Some(10.0),
            temp_c: Some(temp_c),
            ..Reading::default()
        }))))
    };
    let gpu0 = AgentDevice {
        spec: DeviceSpec {
            id: "gpu0".into(),
            kind: DeviceKind::Gpu,
            mine: None,
            ai: Some(AiSpec {
                power_w: 300.0,
                tokens_per_s: 100.0,
            }),
            ..asic("gpu0")
        },
        telemetry: fixed(40.0),
        actuator: Arc::new(FakeActuator::default()),
        backend: "fake".into(),
    };
    // A NaN temperature: unsafe, idle since the start (`mode_since_s` is −∞, served as null).
    let broken = AgentDevice {
        telemetry: fixed(f64::NAN),
        ..fake_device("broken").0
    };
    let mut cfg = config(300.0);
    cfg.ai.jobs_waiting = 1;
    cfg.ai.usd_per_mtok = 5.0; // 1.8 $/h for gpu0: serve AI
    let agent = Agent::new(cfg, vec![asic0, gpu0, broken]).unwrap();
    let (url, _stop, shared) = start(agent).await;
    wait_for("a decision", || shared.snapshot().decisions >= 1).await;

    let body = http::get(&format!("{url}/api/state"), LONG).await.unwrap();
    let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(served["devices"][2]["mode_since_s"].is_null(), "{served}");
    assert!(
        served["devices"][2]["health"]["temp_c"].is_null(),
        "{served}"
    );
    let state: hearth_policy::agent_state::Snapshot = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("the served state does not fit the schema: {e}\n{served}"));
    assert_eq!(serde_json::to_value(&state).unwrap(), served);

    assert_eq!(state.serves_ai("gpu0"), Some(true), "{served}");
    assert_eq!(state.serves_ai("asic0"), Some(false), "{served}");
    assert_eq!(state.serves_ai("broken"), Some(false), "{served}");
    assert_eq!(state.serves_ai("gpu1"), None);
    assert_eq!(state.devices[0].mode, Mode::Mine);
    assert_eq!(state.devices[1].mode, Mode::ServeAi);
    assert!(matches!(
        state.devices[2].health,
        Health::Unhealthy(HealthIssue::BadTemperature { temp_c }) if temp_c.is_nan()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_that_does_not_answer_does_not_stop_the_loop() {
    let silent = TestMinerApi::start(MinerApiOptions {
        silent: true,
        ..MinerApiOptions::default()
    })
    .await
    .unwrap();
    let (d0, f0) = fake_device("good");
    let (d1, f1) = fake_device("hung");
    f1.hang.store(true, Ordering::SeqCst);
    let mut cfg = config(0.2);
    cfg.devices.push(DeviceConfig {
        spec: asic("silent"),
        backend: Backend::Cgminer {
            addr: silent.addr(),
        },
    });
    let mut agent = Agent::from_config(cfg).unwrap();
    agent.devices.insert(0, d0);
    agent.devices.insert(1, d1);
    agent.read_timeout = Duration::from_millis(100);
    agent.worker.attempt_timeout = Duration::from_millis(100);
    agent.worker.backoff.initial = Duration::from_millis(20);
    agent.worker.backoff.max = Duration::from_millis(100);
    let (_url, _stop, shared) = start(agent).await;
    wait_for("good device mining", || last_mode(&f0) == Some(Mode::Mine)).await;
    // Decisions keep coming while one actuator hangs and one miner never answers.
    let n0 = shared.snapshot().decisions;
    wait_for("more decisions", || shared.snapshot().decisions >= n0 + 5).await;
    let snap = shared.snapshot();
    let silent_view = snap.devices.iter().find(|d| d.id == "silent").unwrap();
    assert_eq!(silent_view.mode, Mode::Idle);
    assert!(
        silent_view.reason.contains("did not answer"),
        "{}",
        silent_view.reason
    );
    wait_for("retries of the silent miner", || {
        let s = shared.snapshot();
        let v = s.devices.iter().find(|d| d.id == "silent").unwrap();
        v.control.failures >= 2 && v.control.last_error.is_some()
    })
    .await;
    let hung = snap.devices.iter().find(|d| d.id == "hung").unwrap();
    assert!(hung.control.applied.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgminer_and_luxos_follow_the_decision() {
    let cg = TestMinerApi::start(MinerApiOptions::default())
        .await
        .unwrap();
    let lux = TestMinerApi::start(MinerApiOptions {
        luxos: true,
        ..MinerApiOptions::default()
    })
    .await
    .unwrap();
    let mut cfg = config(300.0);
    cfg.price.fixed_usd_per_mwh = 500.0; // too dear: pause
    cfg.devices.push(DeviceConfig {
        spec: asic("s19"),
        backend: Backend::Cgminer { addr: cg.addr() },
    });
    cfg.devices.push(DeviceConfig {
        spec: asic("lux"),
        backend: Backend::Luxos { addr: lux.addr() },
    });
    let agent = Agent::from_config(cfg).unwrap();
    let (url, _stop, _shared) = start(agent).await;
    cg.wait_until("pools disabled", LONG, |s| {
        s.pools_enabled.iter().all(|e| !e)
    })
    .await
    .unwrap();
    lux.wait_until("curtailed", LONG, |s| s.sleeping)
        .await
        .unwrap();
    // Cheap power: resume both.
    let (code, _) = post(&url, "/api/price", r#"{"usd_per_mwh": 10}"#).await;
    assert_eq!(code, 200);
    cg.wait_until("pools enabled", LONG, |s| {
        s.pools_enabled.iter().all(|e| *e)
    })
    .await
    .unwrap();
    lux.wait_until("woken", LONG, |s| !s.sleeping)
        .await
        .unwrap();
    // A curtail event pauses them again within a second.
    let t0 = Instant::now();
    let (code, _) = post(
        &url,
        "/api/dr/events",
        r#"{"id":"e","duration":"PT1M","target":"curtail"}"#,
    )
    .await;
    assert_eq!(code, 201);
    cg.wait_until("pools disabled", LONG, |s| {
        s.pools_enabled.iter().all(|e| !e)
    })
    .await
    .unwrap();
    lux.wait_until("curtailed", LONG, |s| s.sleeping)
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_demo_decides_once() {
    let agent = Agent::from_config(AgentConfig::simulated_demo()).unwrap();
    let snap = agent.once().await;
    assert_eq!(snap.devices.len(), 4);
    // At 50 $/MWh the ASIC mines (break-even ~130), the AI job goes to one GPU.
    let asic = snap.devices.iter().find(|d| d.id == "sim-asic0").unwrap();
    assert_eq!(asic.mode, Mode::Mine, "{}", asic.reason);
    assert_eq!(
        snap.devices
            .iter()
            .filter(|d| d.mode == Mode::ServeAi)
            .count(),
        1
    );
    assert!(snap.planned_w <= 4000.0 + 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_event_takes_effect_at_its_start_not_the_next_interval() {
    let (d0, f0) = fake_device("asic0");
    let agent = Agent::new(config(300.0), vec![d0]).unwrap();
    let (url, _stop, _shared) = start(agent).await;
    wait_for("mining", || last_mode(&f0) == Some(Mode::Mine)).await;
    let start = hearth_energy::agent::unix_now() + 1.5;
    let body = format!(r#"{{"id":"later","start":{start},"duration":"PT1S","target":"curtail"}}"#);
    let (code, _) = post(&url, "/api/dr/events", &body).await;
    assert_eq!(code, 201);
    // Not yet: the event has not started.
    assert_eq!(last_mode(&f0), Some(Mode::Mine));
    wait_for("curtailed at the start", || {
        last_mode(&f0) == Some(Mode::Idle)
    })
    .await;
    let late = hearth_energy::agent::unix_now() - start;
    assert!(
        (-0.05..1.0).contains(&late),
        "curtailed {late} s after the start"
    );
    // And back to mining when it ends (1 s later), long before the 300 s interval.
    wait_for("mining after the end", || {
        last_mode(&f0) == Some(Mode::Mine)
    })
    .await;
}

/// Serves bodies from a list, one per request (the last one repeats), as HTTP 200 JSON.
async fn endpoint(bodies: Vec<&'static str>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut i = 0;
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let body = bodies[i.min(bodies.len() - 1)];
            i += 1;
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    format!("http://{addr}/feed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_price_and_ai_endpoints_keep_the_last_good_value() {
    let price_url = endpoint(vec![r#"{"usd_per_mwh": 42}"#, r#"{"usd_per_mwh": NaN}"#]).await;
    let ai_url = endpoint(vec![
        r#"{"jobs_waiting": 2, "usd_per_mtok": 1.5}"#,
        "<html>oops</html>",
    ])
    .await;
    let mut cfg = config(1.0);
    cfg.price.url = Some(price_url);
    cfg.ai.url = Some(ai_url);
    let (d0, _f0) = fake_device("asic0");
    let agent = Agent::new(cfg, vec![d0]).unwrap();
    let (_url, _stop, shared) = start(agent).await;
    // The first poll gives good values; later polls are garbage and must be rejected.
    wait_for("errors from the second polls", || {
        let s = shared.snapshot();
        s.signals.price_error.is_some() && s.signals.ai_error.is_some()
    })
    .await;
    wait_for("a decision after the errors", || {
        let s = shared.snapshot();
        s.signals.price_error.is_some() && s.signals.electricity_usd_per_mwh == 42.0
    })
    .await;
    let s = shared.snapshot();
    assert_eq!(s.signals.price_source, "endpoint");
    assert_eq!(s.signals.ai.jobs_waiting, 2);
    assert_eq!(s.signals.ai.usd_per_mtok, 1.5);
    assert!(s
        .signals
        .ai_error
        .as_deref()
        .unwrap()
        .contains("AI demand JSON"));
}

#[test]
fn configs_are_validated_and_the_documented_example_parses() {
    // The example in docs/agent.md is a valid config.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/agent.md"));
    if let Ok(doc) = doc {
        let start = doc
            .find("```json\n{\n  \"listen\"")
            .expect("example config in docs/agent.md")
            + 8;
        let end = start + doc[start..].find("\n```").unwrap();
        let cfg = AgentConfig::from_json(&doc.as_bytes()[start..end], "docs/agent.md").unwrap();
        assert_eq!(cfg.devices.len(), 5);
        assert_eq!(cfg.site_cap_kw, Some(12.0));
    }
    let ok = r#"{"interval_s": 5, "devices": [{"backend": "simulated", "spec": {"id": "a", "kind": "gpu", "idle_w": 10}}]}"#;
    assert!(AgentConfig::from_json(ok.as_bytes(), "t").is_ok());
    for bad in [
        r#"{"interval_s": 0}"#,
        r#"{"interval_s": 5, "surprise": 1}"#,
        r#"{"site_cap_kw": -3}"#,
        r#"{"devices": [{"backend": "simulated", "spec": {"id": "a", "kind": "gpu", "idle_w": 10}},
                        {"backend": "simulated", "spec": {"id": "a", "kind": "gpu", "idle_w": 10}}]}"#,
        r#"{"devices": [{"backend": "simulated", "spec": {"id": "a", "kind": "gpu", "idle_w": -10}}]}"#,
        r#"{"devices": [{"backend": "simulated", "spec": {"id": "a", "kind": "gpu", "idle_w": 1, "temp_limit_c": 900}}]}"#,
        r#"{"devices": [{"backend": "warp_drive", "spec": {"id": "a", "kind": "gpu", "idle_w": 1}}]}"#,
        "not json",
    ] {
        let e = AgentConfig::from_json(bad.as_bytes(), "bad.json");
        assert!(e.is_err(), "{bad}");
        assert!(e.unwrap_err().to_string().starts_with("config bad.json:"));
    }
}

#[test]
fn ai_demand_bodies() {
    use hearth_energy::agent::parse_ai;
    assert_eq!(
        parse_ai(br#"{"jobs_waiting": 3, "usd_per_mtok": 0.8}"#).unwrap(),
        AiDemand {
            jobs_waiting: 3,
            usd_per_mtok: 0.8
        }
    );
    for bad in [
        &br#"{"jobs_waiting": -1, "usd_per_mtok": 1}"#[..],
        br#"{"jobs_waiting": 1}"#,
        br#"{"jobs_waiting": 1, "usd_per_mtok": 1e9}"#,
        b"[]",
    ] {
        assert!(parse_ai(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_stratum_miner_is_paused_and_resumed_keeping_its_pool_connection() {
    use hearth_energy::agent::config::BuiltinMinerConfig;
    use hearth_mining::testing::{PoolOptions, TestPool};
    let pool = TestPool::start(PoolOptions::default()).await.unwrap();
    let roots = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(roots.path().join("proc")).unwrap();
    std::fs::write(roots.path().join("proc/stat"), "cpu  1 0 0 9 0 0 0 0 0 0\n").unwrap();
    let mut cfg = config(300.0);
    cfg.sys_root = roots.path().join("sys").display().to_string();
    cfg.proc_root = roots.path().join("proc").display().to_string();
    cfg.price.fixed_usd_per_mwh = 1.0;
    cfg.hashprice = hearth_energy::signals::HashpriceSource::Given {
        usd_per_th_day: 1000.0,
    };
    cfg.devices.push(DeviceConfig {
        spec: DeviceSpec {
            id: "cpu".into(),
            kind: DeviceKind::Cpu,
            idle_w: 5.0,
            mine: Some(MineSpec {
                power_w: 30.0,
                hashrate_th_s: 1e-6,
            }),
            ..asic("cpu")
        },
        backend: Backend::HostCpu {
            builtin_miner: Some(BuiltinMinerConfig {
                url: pool.url(),
                user: "hearth.test".into(),
                password: None,
            }),
        },
    });
    let agent = Agent::from_config(cfg).unwrap();
    let (url, _stop, shared) = start(agent).await;
    let cpu_mode = |shared: &agent_shared::S| {
        let s = shared.snapshot();
        s.devices
            .first()
            .and_then(|d| d.control.applied)
            .map(|c| c.mode)
    };
    wait_for("mining", || cpu_mode(&shared) == Some(Mode::Mine)).await;
    pool.wait_until("shares", LONG, |s| s.accepted.len() >= 3)
        .await
        .unwrap();
    let (code, _) = post(
        &url,
        "/api/dr/events",
        r#"{"id":"e","duration":"PT1M","target":"curtail"}"#,
    )
    .await;
    assert_eq!(code, 201);
    wait_for("paused", || cpu_mode(&shared) == Some(Mode::Idle)).await;
    let before = pool.stats();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = pool.stats();
    assert_eq!(after.submits, before.submits, "no shares while paused");
    // The pool connection stays up while paused.
    assert_eq!((after.connections, after.disconnects), (1, 0));
    let (hostport, _) = http::split_url(&url).unwrap();
    let mut s = tokio::net::TcpStream::connect(&hostport).await.unwrap();
    s.write_all(
        format!(
            "DELETE /api/dr/events/e HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let n = after.accepted.len();
    pool.wait_until("shares again", LONG, |s| s.accepted.len() >= n + 3)
        .await
        .unwrap();
    assert_eq!(pool.stats().connections, 1);
}

/// With API keys configured, writes need `Authorization: Bearer <key>`; reads stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_a_key_when_keys_are_configured() {
    let (d0, f0) = fake_device("asic0");
    let mut cfg = config(300.0);
    cfg.api_keys = vec!["utility-secret".into()];
    let agent = Agent::new(cfg, vec![d0]).unwrap();
    let (url, _stop, shared) = start(agent).await;
    wait_for("mining", || last_mode(&f0) == Some(Mode::Mine)).await;
    let event = r#"{"id":"grid-2","duration":"PT10M","target":{"limit_kw":0}}"#;
    let (code, text) = post(&url, "/api/dr/events", event).await;
    assert_eq!(code, 401, "{text}");
    let (code, _) = post(&url, "/api/price", r#"{"usd_per_mwh": 900}"#).await;
    assert_eq!(code, 401);
    assert!(
        shared.snapshot().dr_events.is_empty(),
        "nothing was accepted"
    );

    let (hostport, _) = http::split_url(&url).unwrap();
    let send = |auth: &'static str| {
        let hostport = hostport.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&hostport).await.unwrap();
            s.write_all(format!(
                "POST /api/dr/events HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{event}",
                event.len()
            ).as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf).to_string()
        }
    };
    assert!(send("Bearer wrong").await.starts_with("HTTP/1.1 401"));
    let ok = send("Bearer utility-secret").await;
    assert!(ok.starts_with("HTTP/1.1 201"), "{ok}");
    wait_for("curtailment", || last_mode(&f0) == Some(Mode::Idle)).await;
    // Reading needs no key.
    let body = http::get(&format!("{url}/api/state"), LONG).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("grid-2"));
}

/// A web page the operator visits cannot curtail the site through a key-less loopback agent:
/// cross-origin posts (with or without a "simple" content type, which skips the browser's
/// preflight), DNS-rebinding hosts and bodies not declared JSON are refused, and nothing
/// changes. A tool's request (no Origin) and the API's own page still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_other_sites_cannot_reach_the_api() {
    let (dev, _fake) = fake_device("asic0");
    let agent = Agent::new(config(60.0), vec![dev]).unwrap();
    let (url, _stop, shared) = start(agent).await;
    let (hostport, _) = http::split_url(&url).unwrap();
    let event = r#"{"id": "page", "duration": "PT1H", "target": {"limit_kw": 0}}"#;
    let post =
        |host: &str, extra: &str| format!("POST /api/dr/events HTTP/1.1\r\nHost: {host}{extra}");
    for (what, head, want) in [
        (
            "cross-origin, text/plain",
            post(
                &hostport,
                "\r\nOrigin: https://evil.example\r\nContent-Type: text/plain",
            ),
            403,
        ),
        (
            "cross-origin, JSON",
            post(
                &hostport,
                "\r\nOrigin: https://evil.example\r\nContent-Type: application/json",
            ),
            403,
        ),
        (
            "DNS rebinding",
            post(
                "rebind.evil.example:9100",
                "\r\nOrigin: http://rebind.evil.example:9100\r\nContent-Type: application/json",
            ),
            403,
        ),
        ("no content type", post(&hostport, ""), 415),
        (
            "a form",
            post(
                &hostport,
                "\r\nContent-Type: application/x-www-form-urlencoded",
            ),
            415,
        ),
    ] {
        assert_eq!(raw(&url, &head, event).await.0, want, "{what}");
    }
    // A rebinding page cannot read the state either.
    let get = "GET /api/state HTTP/1.1\r\nHost: rebind.evil.example:9100";
    assert_eq!(raw(&url, get, "").await.0, 403);
    assert!(shared.dr.lock().unwrap().events().is_empty());

    // The API's own page and a tool pass.
    let own = format!("\r\nOrigin: http://{hostport}\r\nContent-Type: application/json");
    assert_eq!(raw(&url, &post(&hostport, &own), event).await.0, 201);
    let tool = post(
        &hostport,
        "\r\nContent-Type: application/json; charset=utf-8",
    );
    let second = r#"{"id": "tool", "duration": "PT1H", "target": {"limit_kw": 0}}"#;
    assert_eq!(raw(&url, &tool, second).await.0, 201);
    assert_eq!(shared.dr.lock().unwrap().events().len(), 2);
}
