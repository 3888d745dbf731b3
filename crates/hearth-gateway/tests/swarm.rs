//! The gateway over a real (in-process, loopback) swarm: answers equal local generation, every
//! hop receipt in the trail verifies against its node's key, a client that hangs up frees the
//! sessions on the nodes, and swarm failures get the status of their kind and are counted.

use hearth_core::BlockRange;
use hearth_engine::identity::identity_cached;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{DType, LoadOptions, ModelSource};
use hearth_gateway::openai::UNAVAILABLE_RETRY_AFTER_SECS;
use hearth_gateway::{Backend, Gateway, GatewayConfig, LocalBackend, SwarmBackend};
use hearth_swarm::node::{Fault, Node, NodeConfig};
use hearth_swarm::{ClientConfig, NetConfig, SwarmClient};
use hearth_wire::Receipt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn loopback() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        ..NetConfig::default()
    }
}

async fn node(model: &Path, dir: &Path, blocks: (u32, u32), bootstrap: Option<String>) -> Node {
    faulty_node(model, dir, blocks, bootstrap, None).await
}

async fn faulty_node(
    model: &Path,
    dir: &Path,
    blocks: (u32, u32),
    bootstrap: Option<String>,
    fault: Option<Fault>,
) -> Node {
    let mut cfg = NodeConfig::new(model.to_path_buf(), dir.to_path_buf());
    cfg.fault = fault;
    cfg.blocks = Some(BlockRange::new(blocks.0, blocks.1).unwrap());
    cfg.net = loopback();
    if let Some(b) = bootstrap {
        cfg.net.bootstrap = vec![b.parse().unwrap()];
    }
    cfg.announce_ttl = Duration::from_secs(5);
    // Slow enough that a long generation outlives the test unless it is cancelled.
    cfg.step_delay = Duration::from_millis(20);
    Node::start(cfg).await.unwrap()
}

async fn addr_of(n: &Node) -> String {
    loop {
        let addrs = n.net.status().await.listen_addrs;
        if let Some(a) = addrs.first() {
            return format!("{a}/p2p/{}", n.peer_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tiny synthesized model both tests serve, written as an HF folder under `dir`.
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("m");
    SynthModel::new(shape("tiny").unwrap(), 5)
        .unwrap()
        .write_hf(&model, DType::F32, &SynthOptions::default())
        .unwrap();
    model
}

/// A swarm client (not a DHT server) that bootstraps from `boot`, with `cover_timeout`.
async fn client_of(boot: &str, cover_timeout: Duration) -> SwarmClient {
    SwarmClient::start(ClientConfig {
        net: NetConfig {
            bootstrap: vec![boot.parse().unwrap()],
            dht_server: false,
            ..loopback()
        },
        cover_timeout,
        ..ClientConfig::default()
    })
    .await
    .unwrap()
}

/// Serves `backend` as model "m" on a loopback port until the test ends; returns its base URL.
async fn serve(backend: Arc<dyn Backend>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = GatewayConfig {
        model_name: "m".into(),
        ..GatewayConfig::default()
    };
    tokio::spawn(hearth_gateway::serve(
        listener,
        Gateway::new(backend, cfg),
        std::future::pending(),
    ));
    url
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_answers_carry_verifiable_receipts_and_hangups_free_node_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let a = node(&model, &dir.path().join("a"), (0, 3), None).await;
    let boot = addr_of(&a).await;
    let b = node(&model, &dir.path().join("b"), (3, 6), Some(boot.clone())).await;

    let client = client_of(&boot, ClientConfig::default().cover_timeout).await;
    let src = ModelSource::open(&model).unwrap();
    let ident = identity_cached(&src, &dir.path().join("ids")).unwrap();
    assert_eq!(ident.model_id, a.model_id);
    client
        .wait_for_coverage(&a.model_id, a.n_blocks)
        .await
        .unwrap();
    let head = Arc::new(src.load_head(&LoadOptions::default(), None).unwrap());
    let swarm = SwarmBackend::new(client, head, src.tokenizer().unwrap(), ident.model_id);
    let local = LocalBackend::new(ModelSource::open(&model).unwrap(), ident.model_id).unwrap();

    let urls = [serve(Arc::new(swarm)).await, serve(Arc::new(local)).await];
    let http = reqwest::Client::new();
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "hello swarm"}],
        "max_tokens": 6, "temperature": 0});
    let mut answers = Vec::new();
    for url in &urls {
        let body: Value = http
            .post(format!("{url}/v1/chat/completions"))
            .json(&req)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answers.push(body);
    }
    let (through_swarm, local) = (&answers[0], &answers[1]);
    assert_eq!(
        through_swarm["choices"][0]["message"]["content"],
        local["choices"][0]["message"]["content"]
    );
    assert_eq!(through_swarm["usage"], local["usage"]);

    // The trail: route over both nodes, and one receipt per hop per step, each verifiable.
    let trail = &through_swarm["hearth"];
    assert_eq!(trail["model_id"], ident.model_id.to_hex());
    let route: Vec<(String, String)> = trail["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["node"].as_str().unwrap().to_string(),
                h["blocks"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        route,
        vec![
            (a.peer_id.to_string(), "0..3".to_string()),
            (b.peer_id.to_string(), "3..6".to_string())
        ]
    );
    let receipts = trail["receipts"].as_array().unwrap();
    let steps = through_swarm["usage"]["completion_tokens"]
        .as_u64()
        .unwrap() as usize;
    // A prefill step plus one per further token, on each of the two hops.
    assert_eq!(receipts.len(), 2 * steps.min(6), "{trail}");
    for r in receipts {
        let bytes: Vec<u8> = (0..r["bytes"].as_str().unwrap().len() / 2)
            .map(|i| {
                u8::from_str_radix(&r["bytes"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
            })
            .collect();
        let receipt = Receipt::from_bytes(&bytes).unwrap();
        receipt.verify().unwrap();
        let peer: libp2p::PeerId = r["node"].as_str().unwrap().parse().unwrap();
        let key = hearth_swarm::identity::public_key_of(&peer).unwrap();
        assert_eq!(receipt.node, key, "signed by the node on the route");
        assert_eq!(receipt.body.model_id, ident.model_id);
        assert_eq!(receipt.body.span.to_string(), r["blocks"]);
        // A tampered receipt does not verify.
        let mut forged = receipt.clone();
        forged.body.step += 1;
        assert!(forged.verify().is_err());
    }
    assert_eq!(trail["all_verified"], true);
    // The trail as a light client reads it: every check passes, every pass links, and it carries
    // what a re-execution needs.
    let parsed: hearth_gateway::Trail = serde_json::from_value(trail.clone()).unwrap();
    let report = hearth_gateway::verify_trail(&parsed);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.receipts, receipts.len());
    assert_eq!(
        2 * report.steps,
        receipts.len(),
        "one linked pass of two hops per step"
    );
    let tokens = parsed.tokens.clone().expect("token ids in the trail");
    assert_eq!(tokens.generated.len(), steps);
    assert!(parsed.sampling.is_some());
    // Dropping a receipt from a pass breaks its linkage, and the light client says so.
    let mut cut = parsed.clone();
    cut.tokens = None;
    cut.steps[0].receipts.remove(0);
    assert!(!hearth_gateway::verify_trail(&cut).problems.is_empty());

    // A finished generation frees its sessions on the nodes.
    wait_until(
        "the finished generation's sessions to close",
        Duration::from_secs(20),
        || a.sessions_open() == 0 && b.sessions_open() == 0,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: ({}, {})", a.sessions_open(), b.sessions_open()));

    // A long streamed generation whose client hangs up: both nodes free the session. Greedy:
    // sampled with the gateway's time-based seed, this model says EOS after 36 to 1,022 tokens
    // (seeds 0..12), which ended some runs before the hang-up; greedily it runs all 1,500.
    let long = json!({"model": "m", "prompt": "a", "max_tokens": 1500, "stream": true,
        "temperature": 0});
    let mut r = http
        .post(format!("{}/v1/completions", urls[0]))
        .json(&long)
        .send()
        .await
        .unwrap();
    let mut streamed = Vec::new();
    for _ in 0..3 {
        let chunk = r.chunk().await.unwrap();
        let chunk = chunk.unwrap_or_else(|| {
            panic!(
                "the stream ended early: {}",
                String::from_utf8_lossy(&streamed)
            )
        });
        streamed.extend_from_slice(&chunk);
    }
    let mut seen = Vec::new();
    wait_until(
        "sessions to open on both nodes",
        Duration::from_secs(20),
        || {
            let now = (a.sessions_open(), b.sessions_open());
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            now == (1, 1)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; sessions open on (a, b) went {seen:?}; streamed: {}",
            String::from_utf8_lossy(&streamed)
        )
    });
    drop(r);
    // 1500 steps at 20 ms per hop would take a minute; the hang-up ends it within seconds.
    wait_until(
        "both nodes to free the session",
        Duration::from_secs(10),
        || a.sessions_open() == 0 && b.sessions_open() == 0,
    )
    .await
    .unwrap();
}

/// Waits until `client` sees `n` servers of `node`'s model in the DHT.
async fn wait_for_servers(client: &SwarmClient, node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.servers(&node.model_id, node.n_blocks).await.len() < n {
        assert!(
            Instant::now() < deadline,
            "the client never saw {n} servers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series in a `/metrics` text (0 when absent).
fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn errors_of(metrics: &str, kind: &str) -> u64 {
    series(
        metrics,
        &format!("hearth_gateway_generation_errors_total{{kind=\"{kind}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_failures_get_the_status_of_their_kind_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // Blocks 3..6 have no server.
    let a = node(&model, &dir.path().join("a"), (0, 3), None).await;
    let boot = addr_of(&a).await;
    // How long a chain waits for a route before giving up: short, so each failure is quick.
    let client = client_of(&boot, Duration::from_secs(1)).await;
    wait_for_servers(&client, &a, 1).await;
    let src = ModelSource::open(&model).unwrap();
    let head = Arc::new(src.load_head(&LoadOptions::default(), None).unwrap());
    let swarm = SwarmBackend::new(client.clone(), head, src.tokenizer().unwrap(), a.model_id);
    let url = serve(Arc::new(swarm)).await;
    let http = reqwest::Client::new();
    let metrics = || async {
        http.get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics().await;
    assert_eq!(errors_of(&before, "no_coverage"), 0, "{before}");
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4, "temperature": 0});

    // A gap in coverage: 503 with Retry-After, naming the missing blocks.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry_after = r.headers()["retry-after"].to_str().unwrap().to_string();
    assert_eq!(retry_after, UNAVAILABLE_RETRY_AFTER_SECS.to_string());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "service_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("blocks 3..6"), "{message}");
    let after = metrics().await;
    assert_eq!(errors_of(&after, "no_coverage"), 1, "{after}");
    assert_eq!(
        series(
            &after,
            "hearth_gateway_requests_total{endpoint=\"chat\",status=\"503\"}"
        ),
        1,
        "{after}"
    );

    // The same failure in a stream: the error event carries the same body.
    let streamed = json!({"model": "m", "prompt": "a", "max_tokens": 4, "stream": true});
    let text = http
        .post(format!("{url}/v1/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("service_unavailable") && text.contains("blocks 3..6"),
        "{text}"
    );
    assert_eq!(errors_of(&metrics().await, "no_coverage"), 2);

    // The gap filled by a node that answers with NaNs: the route returned bad data, and nothing
    // else covers its blocks, so 502.
    let _bad = faulty_node(
        &model,
        &dir.path().join("bad"),
        (3, 6),
        Some(boot),
        Some(Fault::NonFinite),
    )
    .await;
    wait_for_servers(&client, &a, 2).await;
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers().get("retry-after").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_gateway");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("non-finite"), "{message}");
    let after = metrics().await;
    assert_eq!(errors_of(&after, "peer_misbehaved"), 1, "{after}");
    assert_eq!(errors_of(&after, "no_coverage"), 2, "{after}");
}

/// `--private-edges 1`: the gateway runs blocks 0 and 5 itself; nodes serving only 1..5 are
/// enough, no node ever sees the states next to the tokens, and the answer is the local one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_edges_run_in_the_gateway_and_change_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let a = node(&model, &dir.path().join("a"), (1, 3), None).await;
    let boot = addr_of(&a).await;
    let b = node(&model, &dir.path().join("b"), (3, 5), Some(boot.clone())).await;
    let client = client_of(&boot, ClientConfig::default().cover_timeout).await;
    let src = ModelSource::open(&model).unwrap();
    let head = || Arc::new(src.load_head(&LoadOptions::default(), None).unwrap());
    let tokenizer = || src.tokenizer().unwrap();
    // Two edges of 3 blocks each would leave the swarm nothing.
    let err = SwarmBackend::new(client.clone(), head(), tokenizer(), a.model_id)
        .with_private_edges(&src, 3)
        .err()
        .expect("6 blocks cannot have 3 private at each end");
    assert!(err.to_string().contains("leaves no blocks"), "{err}");
    let swarm = SwarmBackend::new(client.clone(), head(), tokenizer(), a.model_id)
        .with_private_edges(&src, 1)
        .unwrap();
    assert_eq!(swarm.remote_blocks(), BlockRange::new(1, 5).unwrap());
    client
        .wait_for_range(&a.model_id, a.n_blocks, swarm.remote_blocks())
        .await
        .unwrap();
    let local = LocalBackend::new(ModelSource::open(&model).unwrap(), a.model_id).unwrap();
    let req = json!({"model": "m", "prompt": "private edges", "max_tokens": 5, "temperature": 0});
    let mut answers = Vec::new();
    for backend in [Arc::new(swarm) as Arc<dyn Backend>, Arc::new(local)] {
        let url = serve(backend).await;
        let body: Value = reqwest::Client::new()
            .post(format!("{url}/v1/completions"))
            .json(&req)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answers.push(body);
    }
    assert_eq!(
        answers[0]["choices"][0]["text"],
        answers[1]["choices"][0]["text"]
    );
    let trail: hearth_gateway::Trail =
        serde_json::from_value(answers[0]["hearth"].clone()).unwrap();
    let route: Vec<(String, String)> = trail
        .route
        .iter()
        .map(|h| (h.node.clone(), h.blocks.clone()))
        .collect();
    assert_eq!(
        route,
        vec![
            (a.peer_id.to_string(), "1..3".to_string()),
            (b.peer_id.to_string(), "3..5".to_string())
        ]
    );
    let report = hearth_gateway::verify_trail(&trail);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.steps > 0);
    for step in &trail.steps {
        assert_eq!(step.blocks, "1..5", "the swarm only ever ran blocks 1..5");
    }
}
