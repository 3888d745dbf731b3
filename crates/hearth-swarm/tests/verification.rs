//! Verification across the swarm (issue #12), in process on a synthesized model.
//!
//! Fraud proofs spread through the swarm: a node hosts a submitted proof only after
//! re-checking it on its own weights, and a client that never caught the accused fetches the
//! proof, re-checks it on another server and excludes the accused. A proof against honest work
//! is refused, and so are malformed requests.
//!
//! Four nodes serve every block of a synthesized model: the "accused" A, the hosts H1 and H2, and
//! a node that announces another build class (which must not judge A).
//! The test signs proofs with A's own key (loaded from A's data directory), so it can make both
//! an honest record of A's work and a lying one.

use hearth_core::BlockRange;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{DType, LoadOptions, ModelSource, SessionLimits, SliceServer};
use hearth_swarm::gossip::recompute;
use hearth_swarm::node::{Node, NodeConfig};
use hearth_swarm::{CheckOutcome, ClientConfig, NetConfig, NodeIdentity, SwarmClient};
use hearth_verify::{SpotCheckPolicy, Standing};
use hearth_wire::{
    read_frame, write_frame, ActivationCommitment, FraudProof, FraudReply, FraudRequest,
    HiddenDType, HiddenStates, Limits, ProvenStep, ReceiptBody, SigningKey, FRAUD_PROTOCOL,
};
use libp2p::StreamProtocol;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WIDTH: u32 = 256; // the tiny shape's hidden size

fn loopback(bootstrap: Option<&str>) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        bootstrap: bootstrap.map(|b| b.parse().unwrap()).into_iter().collect(),
        ..NetConfig::default()
    }
}

/// The synthesized model every node serves, as an HF folder under `dir`.
fn tiny_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model");
    SynthModel::new(shape("tiny").unwrap(), 1)
        .unwrap()
        .write_hf(&model, DType::F32, &SynthOptions::default())
        .unwrap();
    model
}

async fn start_node(model: &Path, data: &Path, bootstrap: Option<&str>) -> (Node, String) {
    start_node_of_class(model, data, bootstrap, None).await
}

async fn start_node_of_class(
    model: &Path,
    data: &Path,
    bootstrap: Option<&str>,
    class: Option<u64>,
) -> (Node, String) {
    start_node_serving(model, data, bootstrap, class, (0, 6)).await
}

async fn start_node_serving(
    model: &Path,
    data: &Path,
    bootstrap: Option<&str>,
    class: Option<u64>,
    (start, end): (u32, u32),
) -> (Node, String) {
    let mut cfg = NodeConfig::new(model.to_path_buf(), data.to_path_buf());
    cfg.build_class = class;
    cfg.blocks = Some(BlockRange::new(start, end).unwrap());
    cfg.net = loopback(bootstrap);
    cfg.announce_ttl = Duration::from_secs(6);
    let node = Node::start(cfg).await.unwrap();
    let addr = loop {
        if let Some(a) = node.net.status().await.listen_addrs.first() {
            break format!("{a}/p2p/{}", node.peer_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (node, addr)
}

/// A client (not a DHT server) bootstrapping from `boot`, checking windows by `spot_checks`.
fn client_config(boot: &str, spot_checks: Option<SpotCheckPolicy>) -> ClientConfig {
    ClientConfig {
        net: NetConfig {
            dht_server: false,
            ..loopback(Some(boot))
        },
        cover_timeout: Duration::from_secs(20),
        spot_checks,
        ..ClientConfig::default()
    }
}

/// One step of positions 0..8 "served" by `key`: its honest output, times `1 + skew`.
fn proof(server: &SliceServer, node: &Node, key: &SigningKey, skew: f32) -> FraudProof {
    let rows = 8;
    let x: Vec<f32> = (0..rows * WIDTH).map(|i| (i as f32 * 0.37).sin()).collect();
    let input = HiddenStates::from_f32(HiddenDType::F16, 0, rows, WIDTH, &x);
    let span = BlockRange::new(0, 6).unwrap();
    let y: Vec<f32> = recompute(server, span, &input)
        .unwrap()
        .iter()
        .map(|v| v * (1.0 + skew))
        .collect();
    let output = HiddenStates::from_f32(HiddenDType::F16, 0, rows, WIDTH, &y);
    let receipt = ReceiptBody {
        session: [7; 16],
        step: 0,
        model_id: node.model_id,
        span,
        input: input.digest(),
        output: output.digest(),
        start: 0,
        commitment: ActivationCommitment::of(&output),
    }
    .sign(key);
    FraudProof {
        window_start: 0,
        window_rows: rows,
        steps: vec![ProvenStep {
            input,
            output,
            receipt,
        }],
    }
}

async fn exchange(client: &SwarmClient, node: &Node, body: &[u8]) -> FraudReply {
    let mut s = client
        .net()
        .control()
        .open_stream(node.peer_id, StreamProtocol::new(FRAUD_PROTOCOL))
        .await
        .unwrap();
    write_frame(&mut s, body).await.unwrap();
    let frame = read_frame(&mut s, 1 << 26).await.unwrap().unwrap();
    FraudReply::decode(&frame, &Limits::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_is_hosted_only_if_it_holds_and_other_clients_exclude_the_accused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (accused, boot) = start_node(&model, &dir.path().join("a"), None).await;
    let (h1, _) = start_node(&model, &dir.path().join("h1"), Some(&boot)).await;
    let (h2, _) = start_node(&model, &dir.path().join("h2"), Some(&boot)).await;
    // A node of another build class: it cannot tell A's honest bits from wrong ones.
    let (other_build, _) =
        start_node_of_class(&model, &dir.path().join("o"), Some(&boot), Some(7)).await;
    let key = NodeIdentity::load_or_create(&dir.path().join("a"))
        .unwrap()
        .signing_key();
    let src = ModelSource::open(&model).unwrap();
    let slice = src
        .load_slice(
            BlockRange::new(0, 6).unwrap(),
            &LoadOptions::default(),
            None,
        )
        .unwrap();
    let server = SliceServer::new(Arc::new(slice), SessionLimits::default());

    let client_cfg = || client_config(&boot, ClientConfig::default().spot_checks);
    let submitter = SwarmClient::start(client_cfg()).await.unwrap();
    let servers = submitter
        .wait_for_coverage(&accused.model_id, accused.n_blocks)
        .await
        .unwrap();
    assert_eq!(servers.len(), 4, "every node announces");

    // Honest work is never hosted as fraud: H1 recomputes it and agrees with A.
    let honest = FraudRequest::Submit(proof(&server, &accused, &key, 0.0)).encode();
    match exchange(&submitter, &h1, &honest).await {
        FraudReply::Refused(why) => assert!(why.contains("agrees"), "{why}"),
        other => panic!("an honest record was not refused: {other:?}"),
    }
    // Malformed requests get a refusal, not a crash, and the node keeps answering.
    match exchange(&submitter, &h1, b"\x02\x0bnot a proof").await {
        FraudReply::Refused(why) => assert!(why.contains("malformed"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A tampered record (the signature no longer covers the output) is refused unchecked.
    let mut forged = proof(&server, &accused, &key, 0.05);
    forged.steps[0].receipt.body.output = forged.steps[0].input.digest();
    match exchange(&submitter, &h1, &FraudRequest::Submit(forged).encode()).await {
        FraudReply::Refused(why) => assert!(why.contains("not a valid signed record"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Nothing is hosted yet.
    let fetch = FraudRequest::Fetch {
        model_id: accused.model_id,
        accused: key.verifying_key().to_bytes(),
    }
    .encode();
    assert_eq!(
        exchange(&submitter, &h1, &fetch).await,
        FraudReply::NotFound
    );

    // A's signed outputs 5 % off what its blocks compute: a node of another build class refuses
    // to judge them, H1 re-checks and hosts the proof.
    let lying = proof(&server, &accused, &key, 0.05);
    match exchange(
        &submitter,
        &other_build,
        &FraudRequest::Submit(lying.clone()).encode(),
    )
    .await
    {
        FraudReply::Refused(why) => assert!(why.contains("another build class"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        exchange(
            &submitter,
            &h1,
            &FraudRequest::Submit(lying.clone()).encode()
        )
        .await,
        FraudReply::Accepted
    );
    assert_eq!(
        exchange(&submitter, &h1, &fetch).await,
        FraudReply::Proof(lying)
    );

    // A client that never dealt with A finds the proof while looking for servers, re-checks it
    // on H2 (neither the accused nor the host) and excludes A; the hosts stay in good standing.
    // (A client looks each server up at most once a minute: the provider record may take a
    // moment to reach the DHT, so fresh clients try until one sees it.)
    let mut found = None;
    for _ in 0..30 {
        let c = SwarmClient::start(client_cfg()).await.unwrap();
        c.servers(&accused.model_id, accused.n_blocks).await;
        if c.reputation(&accused.peer_id).standing() == Standing::Excluded {
            found = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let other = found.expect("no client excluded the accused");
    for host in [&h1, &h2, &other_build] {
        assert_ne!(
            other.reputation(&host.peer_id).standing(),
            Standing::Excluded
        );
    }
    // Its routes avoid A from now on.
    let mut chain = other.chain(accused.model_id, accused.n_blocks, 4);
    let x = HiddenStates::from_f32(HiddenDType::F16, 0, 1, WIDTH, &[0.5; WIDTH as usize]);
    chain.forward_hidden(x).await.unwrap();
    let route = chain.log().lock().unwrap().route.clone();
    assert!(
        route.iter().all(|(p, _)| *p != accused.peer_id),
        "{route:?}"
    );
}

/// A spot check only ever re-executes on servers of the checked node's build class: with no such
/// server the window is recorded as unverifiable (nobody blamed); with one, it is checked there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifiers_are_of_the_checked_nodes_build_class() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (n1, boot) = start_node(&model, &dir.path().join("n1"), None).await;
    let (n2, _) = start_node_of_class(&model, &dir.path().join("n2"), Some(&boot), Some(7)).await;
    let class_of = |peer: &libp2p::PeerId, servers: &[hearth_swarm::client::ServerEntry]| {
        servers
            .iter()
            .find(|s| s.peer == *peer)
            .map(|s| s.announcement.build_class)
            .unwrap()
    };
    let policy = SpotCheckPolicy {
        always_check_prefill: true,
        ..SpotCheckPolicy::default()
    };
    let client = SwarmClient::start(client_config(&boot, Some(policy)))
        .await
        .unwrap();
    let x = || HiddenStates::from_f32(HiddenDType::F16, 0, 4, WIDTH, &[0.25; 4 * WIDTH as usize]);
    let servers = client
        .wait_for_coverage(&n1.model_id, n1.n_blocks)
        .await
        .unwrap();
    assert_eq!(servers.len(), 2);
    assert_ne!(
        class_of(&n1.peer_id, &servers),
        class_of(&n2.peer_id, &servers)
    );
    let mut chain = client.chain(n1.model_id, n1.n_blocks, 8);
    chain.forward_hidden(x()).await.unwrap();
    let checks = chain.log().lock().unwrap().checks.clone();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0].outcome, CheckOutcome::NoVerifier, "{checks:?}");

    // One more server of each class: every check now has a verifier, of the node's own class.
    let (_n3, _) = start_node(&model, &dir.path().join("n3"), Some(&boot)).await;
    let (_n4, _) = start_node_of_class(&model, &dir.path().join("n4"), Some(&boot), Some(7)).await;
    let mut servers = Vec::new();
    for _ in 0..100 {
        servers = client.servers(&n1.model_id, n1.n_blocks).await;
        if servers.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(servers.len(), 4);
    for _ in 0..3 {
        let mut chain = client.chain(n1.model_id, n1.n_blocks, 8);
        chain.forward_hidden(x()).await.unwrap();
        let checks = chain.log().lock().unwrap().checks.clone();
        assert_eq!(checks.len(), 1, "{checks:?}");
        let c = &checks[0];
        assert_eq!(c.outcome, CheckOutcome::Passed, "{checks:?}");
        for v in &c.verifiers {
            assert_eq!(class_of(v, &servers), class_of(&c.peer, &servers));
        }
    }
}

/// A node no other server can check (a build class of its own) is routed through only when
/// nothing else covers its blocks, and never with `require_verifiable`: otherwise a cheater
/// would announce a class of its own and never be checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_nobody_can_check_are_a_last_resort() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = |name: &str| dir.path().join(name);
    // U serves every block in one hop (the fastest route) in a class of its own; A1 and A2
    // serve the first half in the common class, which for now only U covers the rest of.
    let (u, boot) = start_node_serving(&model, &data("u"), None, Some(99), (0, 6)).await;
    let (a1, _) = start_node_serving(&model, &data("a1"), Some(&boot), None, (0, 3)).await;
    let (a2, _) = start_node_serving(&model, &data("a2"), Some(&boot), None, (0, 3)).await;
    let x = || HiddenStates::from_f32(HiddenDType::F16, 0, 4, WIDTH, &[0.25; 4 * WIDTH as usize]);
    let wait_for = |client: SwarmClient, n: usize| async move {
        for _ in 0..200 {
            if client.servers(&u.model_id, u.n_blocks).await.len() == n {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the client never saw {n} servers");
    };
    let route_of = |client: &SwarmClient| {
        let client = client.clone();
        async move {
            let mut chain = client.chain(u.model_id, u.n_blocks, 8);
            let result = chain.forward_hidden(x()).await;
            let route: Vec<libp2p::PeerId> = chain
                .log()
                .lock()
                .unwrap()
                .route
                .iter()
                .map(|(p, _)| *p)
                .collect();
            result.map(|_| route)
        }
    };
    let checking = wait_for(
        SwarmClient::start(client_config(&boot, Some(SpotCheckPolicy::default())))
            .await
            .unwrap(),
        3,
    )
    .await;
    // Only U covers blocks 3..6: a generation still runs, through U.
    assert!(route_of(&checking).await.unwrap().contains(&u.peer_id));
    // Unless the client refuses unverifiable nodes.
    let strict = SwarmClient::start(ClientConfig {
        require_verifiable: true,
        cover_timeout: Duration::from_secs(2),
        ..client_config(&boot, Some(SpotCheckPolicy::default()))
    })
    .await
    .unwrap();
    let strict = wait_for(strict, 3).await;
    let refused = route_of(&strict).await;
    assert!(refused.is_err(), "{refused:?}");

    // Two common-class servers of 3..6 join: every checking client now routes around U (whose
    // one hop would save a hop's round trip).
    let (a3, _) = start_node_serving(&model, &data("a3"), Some(&boot), None, (3, 6)).await;
    let (a4, _) = start_node_serving(&model, &data("a4"), Some(&boot), None, (3, 6)).await;
    let checking = wait_for(checking, 5).await;
    let strict = wait_for(strict, 5).await;
    let honest = [a1.peer_id, a2.peer_id, a3.peer_id, a4.peer_id];
    for client in [&checking, &strict] {
        for _ in 0..3 {
            let route = route_of(client).await.unwrap();
            assert_eq!(route.len(), 2, "{route:?}");
            assert!(route.iter().all(|p| honest.contains(p)), "{route:?}");
        }
    }
}

/// The generation's last window, which ends between two window boundaries, is checked when the
/// generation ends: a node cannot cheat on every generation's tail unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_unfinished_window_is_checked_when_the_generation_ends() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (n1, boot) = start_node(&model, &dir.path().join("n1"), None).await;
    let (_n2, _) = start_node(&model, &dir.path().join("n2"), Some(&boot)).await;
    let policy = SpotCheckPolicy {
        window: 4,
        probability: 1.0,
        probation_probability: 1.0,
        always_check_prefill: true,
    };
    let client = SwarmClient::start(client_config(&boot, Some(policy)))
        .await
        .unwrap();
    client
        .wait_for_coverage(&n1.model_id, n1.n_blocks)
        .await
        .unwrap();
    let rows = |start: u32, n: u32| {
        let v: Vec<f32> = (0..n * WIDTH).map(|i| (i as f32 * 0.01).cos()).collect();
        HiddenStates::from_f32(HiddenDType::F16, start, n, WIDTH, &v)
    };
    let mut chain = client.chain(n1.model_id, n1.n_blocks, 16);
    // A prefill of 3, then steps at positions 3..7: window 0..4 closes at 4, 4..8 never does.
    chain.forward_hidden(rows(0, 3)).await.unwrap();
    for pos in 3..7 {
        chain.forward_hidden(rows(pos, 1)).await.unwrap();
    }
    let checked = |chain: &hearth_swarm::SwarmChain| -> Vec<std::ops::Range<u32>> {
        let log = chain.log();
        let log = log.lock().unwrap();
        log.checks.iter().map(|c| c.positions.clone()).collect()
    };
    assert_eq!(checked(&chain), vec![0..3, 0..4]);
    chain.check_last_window().await;
    let log = chain.log();
    let log = log.lock().unwrap();
    let last = log.checks.last().unwrap();
    assert_eq!(last.positions, 4..7);
    assert_eq!(last.window, 1);
    assert_eq!(last.outcome, CheckOutcome::Passed);
}
