//! A node facing a hostile peer: garbage, oversized frames, wrong shapes, unknown sessions,
//! session floods. Each gets an error or a closed stream; the node keeps serving everyone else.

use futures::AsyncWriteExt;
use hearth_core::{BlockRange, ContentHash};
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::DType;
use hearth_swarm::node::{Node, NodeConfig};
use hearth_swarm::{ClientConfig, Net, NetConfig, NodeIdentity, SwarmClient};
use hearth_wire::{
    read_frame, write_frame, ErrorCode, HiddenDType, HiddenStates, Limits, OpenSession, Request,
    Response, Step, INFERENCE_PROTOCOL,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use std::time::Duration;

fn loopback() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        ..NetConfig::default()
    }
}

async fn start_node(dir: &std::path::Path) -> Node {
    start_node_with(dir, |_| {}).await
}

async fn start_node_with(dir: &std::path::Path, tweak: impl FnOnce(&mut NodeConfig)) -> Node {
    let model = dir.join("model");
    SynthModel::new(shape("tiny").unwrap(), 1)
        .unwrap()
        .write_hf(&model, DType::F32, &SynthOptions::default())
        .unwrap();
    let mut cfg = NodeConfig::new(model, dir.join("node"));
    cfg.blocks = Some(BlockRange::new(0, 6).unwrap());
    cfg.net = loopback();
    cfg.max_sessions_per_peer = 2;
    cfg.announce_ttl = Duration::from_secs(3);
    tweak(&mut cfg);
    Node::start(cfg).await.unwrap()
}

async fn attacker(node: &Node) -> (Net, PeerId) {
    let net = Net::start(&NodeIdentity::generate(), loopback())
        .await
        .unwrap();
    let addrs = loop {
        let a = node.net.status().await.listen_addrs;
        if !a.is_empty() {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    net.dial(node.peer_id, addrs).await;
    for _ in 0..500 {
        if net.status().await.connected.contains(&node.peer_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (net, node.peer_id)
}

async fn stream(net: &Net, peer: PeerId) -> Stream {
    net.control()
        .open_stream(peer, StreamProtocol::new(INFERENCE_PROTOCOL))
        .await
        .unwrap()
}

async fn exchange(s: &mut Stream, body: &[u8]) -> Option<Response> {
    write_frame(s, body).await.ok()?;
    let frame = read_frame(s, 1 << 26).await.ok()??;
    Some(Response::decode(&frame, &Limits::default()).unwrap())
}

fn open(node: &Node, model: ContentHash) -> Vec<u8> {
    Request::Open(OpenSession {
        session: [1; 16],
        model_id: model,
        span: node.span(),
        max_len: 32,
        dtype: HiddenDType::F16,
    })
    .encode()
}

fn step(cols: u32, start: u32) -> Vec<u8> {
    Request::Step(Step {
        step: 0,
        hidden: HiddenStates::from_f32(HiddenDType::F16, start, 1, cols, &vec![0.5; cols as usize]),
    })
    .encode()
}

fn code(r: Option<Response>) -> Option<ErrorCode> {
    match r {
        Some(Response::Error(e)) => Some(e.code),
        _ => None,
    }
}

/// The peer closed the stream (or reset it): no further frame arrives.
async fn closed(s: &mut Stream) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), read_frame(s, 1 << 20)).await,
        Ok(Ok(None)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_gets_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let hidden = 256u32; // the tiny shape's width
    let (net, peer) = attacker(&node).await;

    // Garbage: an error, then the stream is closed.
    let mut s = stream(&net, peer).await;
    assert_eq!(
        code(exchange(&mut s, b"\x07garbage that is no message").await),
        Some(ErrorCode::BadRequest)
    );
    assert!(closed(&mut s).await);

    // A frame that declares 4 GiB: refused from the length alone, stream closed.
    let mut s = stream(&net, peer).await;
    s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let reply = read_frame(&mut s, 1 << 20).await.unwrap().unwrap();
    assert!(matches!(
        Response::decode(&reply, &Limits::default()).unwrap(),
        Response::Error(e) if e.code == ErrorCode::BadRequest && e.message.contains("exceeds")
    ));
    assert!(closed(&mut s).await);

    // A step for a session that was never opened.
    let mut s = stream(&net, peer).await;
    assert_eq!(
        code(exchange(&mut s, &step(hidden, 0)).await),
        Some(ErrorCode::NotOpen)
    );

    // Another model's id.
    let mut s = stream(&net, peer).await;
    assert_eq!(
        code(exchange(&mut s, &open(&node, ContentHash::of(b"other model"))).await),
        Some(ErrorCode::NotServed)
    );

    // Wrong width and a position gap: errors, but the session survives and serves a good step.
    let mut s1 = stream(&net, peer).await;
    assert!(matches!(
        exchange(&mut s1, &open(&node, node.model_id)).await,
        Some(Response::Opened(_))
    ));
    assert_eq!(
        code(exchange(&mut s1, &step(hidden + 1, 0)).await),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        code(exchange(&mut s1, &step(hidden, 5)).await),
        Some(ErrorCode::BadRequest)
    );
    match exchange(&mut s1, &step(hidden, 0)).await {
        Some(Response::StepDone(d)) => {
            assert_eq!((d.hidden.rows, d.hidden.cols), (1, hidden));
            d.receipt.verify().unwrap();
        }
        other => panic!("good step after bad ones: {other:?}"),
    }

    // Flood: the per-peer session limit (2) holds; the third is refused as busy.
    let mut s2 = stream(&net, peer).await;
    assert!(matches!(
        exchange(&mut s2, &open(&node, node.model_id)).await,
        Some(Response::Opened(_))
    ));
    let mut s3 = stream(&net, peer).await;
    assert_eq!(
        code(exchange(&mut s3, &open(&node, node.model_id)).await),
        Some(ErrorCode::Busy)
    );
    assert_eq!(node.sessions_open(), 2);
    // Closing a stream frees its session and the slot.
    drop(s2);
    let mut freed = false;
    for _ in 0..100 {
        if node.sessions_open() == 1 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "closing a stream did not free its session");

    // Once open, a frame may be as large as the biggest step this session can take, no larger:
    // its 32 positions × 256 wide × 2 bytes (f16) + 64 bytes of header, not the model's largest
    // step (2048 rows of f32, 2 MiB).
    let mut s4 = stream(&net, peer).await;
    assert!(matches!(
        exchange(&mut s4, &open(&node, node.model_id)).await,
        Some(Response::Opened(_))
    ));
    s4.write_all(&16_449u32.to_le_bytes()).await.unwrap();
    s4.flush().await.unwrap();
    let reply = read_frame(&mut s4, 1 << 20).await.unwrap().unwrap();
    assert!(matches!(
        Response::decode(&reply, &Limits::default()).unwrap(),
        Response::Error(e) if e.message.contains("exceeds the limit of 16448")
    ));
    assert!(closed(&mut s4).await);

    // Meanwhile an honest client is served normally.
    let client = SwarmClient::start(ClientConfig {
        net: NetConfig {
            bootstrap: vec![format!(
                "{}/p2p/{}",
                node.net.status().await.listen_addrs[0],
                node.peer_id
            )
            .parse()
            .unwrap()],
            dht_server: false,
            ..loopback()
        },
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    client
        .wait_for_coverage(&node.model_id, node.n_blocks)
        .await
        .unwrap();
    let mut chain = client.chain(node.model_id, node.n_blocks, 8);
    let x = HiddenStates::from_f32(
        HiddenDType::F16,
        0,
        2,
        hidden,
        &vec![0.25; 2 * hidden as usize],
    );
    let out = chain.forward_hidden(x).await.unwrap();
    assert_eq!((out.rows, out.cols), (2, hidden));
    assert!(out.first_non_finite().is_none());
    let log = chain.log();
    let log = log.lock().unwrap();
    assert_eq!(log.receipts.len(), 1);
    assert!(log.failovers.is_empty());
}

/// A peer may not hold stream slots it does not use: beyond its session cap plus two spare
/// streams, a new stream is dropped at once (the ones it holds keep working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_hold_more_streams_than_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node_with(dir.path(), |c| c.open_timeout = Duration::from_secs(60)).await;
    let (net, peer) = attacker(&node).await;
    // The session cap is 2, so 4 silent streams are allowed...
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(stream(&net, peer).await);
        // One at a time: libp2p-stream drops a stream that arrives while its accept queue is full.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and a fifth is closed without a word.
    let mut extra = stream(&net, peer).await;
    assert!(closed(&mut extra).await, "a fifth silent stream was kept");
    // The held ones still work.
    assert!(matches!(
        exchange(&mut held[0], &open(&node, node.model_id)).await,
        Some(Response::Opened(_))
    ));
    // Releasing one makes room for another.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = stream(&net, peer).await;
    assert!(matches!(
        exchange(&mut again, &open(&node, node.model_id)).await,
        Some(Response::Opened(_))
    ));
}

/// One identity cannot reserve more than its share of the KV cache, however many sessions it
/// opens; another still gets the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_reserve_more_than_its_share_of_the_cache() {
    // The tiny shape's 6 blocks cache 6 x (k,v) x 2 kv heads x 64 dims x f32 per position.
    const PER_POSITION: u64 = 6 * 2 * 2 * 64 * 4;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node_with(dir.path(), |c| {
        c.max_sessions_per_peer = 8;
        c.sessions.cache_budget_bytes = PER_POSITION * 256;
        c.cache_percent_per_peer = 50;
    })
    .await;
    let open_64 = |session: u8| {
        Request::Open(OpenSession {
            session: [session; 16],
            model_id: node.model_id,
            span: node.span(),
            max_len: 64,
            dtype: HiddenDType::F16,
        })
        .encode()
    };
    let (squatter, peer) = attacker(&node).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = stream(&squatter, peer).await;
        let r = exchange(&mut s, &open_64(i)).await;
        assert!(matches!(r, Some(Response::Opened(_))), "{r:?}");
        held.push(s);
    }
    // Two sessions of 64 positions are its 50 %: a third is refused though the node has room.
    let mut third = stream(&squatter, peer).await;
    assert_eq!(
        code(exchange(&mut third, &open_64(3)).await),
        Some(ErrorCode::Busy)
    );
    let (honest, peer) = attacker(&node).await;
    for i in 0..2 {
        let mut s = stream(&honest, peer).await;
        let r = exchange(&mut s, &open_64(10 + i)).await;
        assert!(matches!(r, Some(Response::Opened(_))), "{r:?}");
        held.push(s);
    }
}

/// A stream that never opens a session is closed after `open_timeout`, not after the (much
/// longer) idle timeout of an open session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_opens_a_session_is_closed_soon() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node_with(dir.path(), |c| {
        c.open_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(120);
    })
    .await;
    let (net, peer) = attacker(&node).await;
    let mut silent = stream(&net, peer).await;
    assert!(
        closed(&mut silent).await,
        "a silent stream outlived the open deadline"
    );
    // An opened session is not held to that deadline.
    let mut s = stream(&net, peer).await;
    assert!(matches!(
        exchange(&mut s, &open(&node, node.model_id)).await,
        Some(Response::Opened(_))
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(matches!(
        exchange(&mut s, &step(256, 0)).await,
        Some(Response::StepDone(_))
    ));
}

/// Connections are capped (identities are free, so a flood of peers must not exhaust the node):
/// past `max_incoming` established connections a new peer is refused; when one leaves, room
/// opens again. Judged by the node's own view: a dialer may see its connection for a moment
/// before the node closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node_with(dir.path(), |c| c.net.max_incoming = 2).await;
    let node_sees = |peer: PeerId| {
        let net = node.net.clone();
        async move { net.status().await.connected.contains(&peer) }
    };
    let wait_for = |peer: PeerId, want: bool| async move {
        for _ in 0..100 {
            if node_sees(peer).await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    let (first, _) = attacker(&node).await;
    let (second, _) = attacker(&node).await;
    assert!(wait_for(first.peer_id(), true).await && wait_for(second.peer_id(), true).await);
    let (third, _) = attacker(&node).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !node_sees(third.peer_id()).await,
        "a third peer got past a cap of 2"
    );
    let first_id = first.peer_id();
    drop(first);
    assert!(wait_for(first_id, false).await, "the first peer never left");
    let mut admitted = false;
    for _ in 0..50 {
        let addrs = node.net.status().await.listen_addrs;
        third.dial(node.peer_id, addrs).await;
        if wait_for(third.peer_id(), true).await {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "room did not open when a peer left");
}

/// A signed announcement by `who` about `node`'s model, with lifetime `ttl_secs`.
fn announcement_by(who: &NodeIdentity, node: &Node, ttl_secs: u32) -> Vec<u8> {
    hearth_wire::Announcement {
        model_id: node.model_id,
        n_blocks: node.n_blocks,
        span: BlockRange::new(0, node.n_blocks).unwrap(),
        block_ms: 0.0,
        throughput: 1e9,
        cache_free_tokens: 1 << 40,
        active_sessions: 0,
        price: 0,
        build_class: 0,
        rtts: Vec::new(),
        addrs: Vec::new(),
        issued_unix_ms: hearth_swarm::dht::now_unix_ms(),
        ttl_secs,
        node: [0; 32],
    }
    .sign(&who.signing_key())
    .encode()
}

/// Storing peers validate DHT records: junk, another node's announcement or one claiming a
/// lifetime past the cap, stored under a victim's key, cannot shadow the victim's own record,
/// and an announcement that claims too long a life is not stored under its own key either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_junk_cannot_shadow_a_nodes_announcement() {
    use hearth_swarm::dht::{announcement_key, MAX_ANNOUNCEMENT_TTL_SECS};
    use libp2p::kad::Record;
    let dir = tempfile::tempdir().unwrap();
    // Re-announcing every 20 s: the victim does not repair its record during the test.
    let victim = start_node_with(dir.path(), |c| c.announce_ttl = Duration::from_secs(60)).await;
    let addrs = victim.net.status().await.listen_addrs;
    let boot: libp2p::Multiaddr = format!("{}/p2p/{}", addrs[0], victim.peer_id)
        .parse()
        .unwrap();
    let client_net = |dht_server| NetConfig {
        bootstrap: vec![boot.clone()],
        dht_server,
        ..loopback()
    };
    let client = SwarmClient::start(ClientConfig {
        net: client_net(false),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    client
        .wait_for_coverage(&victim.model_id, victim.n_blocks)
        .await
        .unwrap();
    // The attacker is a DHT client: what lookups find is what the victim stored, not the
    // attacker's own copies.
    let identity = NodeIdentity::generate();
    let net = Net::start(&identity, client_net(false)).await.unwrap();
    net.dial(victim.peer_id, addrs.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let victims_key = announcement_key(&victim.model_id, &victim.peer_id);
    for value in [
        b"junk".to_vec(),
        announcement_by(&identity, &victim, 60),
        announcement_by(&identity, &victim, MAX_ANNOUNCEMENT_TTL_SECS + 1),
    ] {
        net.put_record(Record::new(victims_key.clone(), value))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The attacker's own record, claiming a day's life: refused where it would be stored.
    let own_key = announcement_key(&victim.model_id, &net.peer_id());
    net.put_record(Record::new(
        own_key.clone(),
        announcement_by(&identity, &victim, 86_400),
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stored = victim.net.get_records(victims_key).await;
    assert!(!stored.is_empty(), "the victim's record is gone");
    for value in &stored {
        let a = hearth_wire::SignedAnnouncement::decode(value, &Limits::default())
            .expect("only valid announcements are stored");
        assert_eq!(
            hearth_swarm::identity::peer_of_key(&a.announcement.node),
            Some(victim.peer_id)
        );
    }
    assert!(victim.net.get_records(own_key).await.is_empty());
    let servers = client.servers(&victim.model_id, victim.n_blocks).await;
    assert_eq!(
        servers.iter().map(|s| s.peer).collect::<Vec<_>>(),
        vec![victim.peer_id]
    );
}

/// A peer that declares a frame and then trickles it is dropped after the frame deadline (not
/// the 120 s idle timeout), and while it holds its frame's room in the node-wide budget, steps
/// that fit in the rest still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_trickles_a_frame_is_dropped_and_others_still_step() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node_with(dir.path(), |c| {
        c.frame_timeout = Duration::from_millis(500);
        // A session of 32 positions may send frames of up to 64 + 32 × 256 × 2 bytes.
        c.frame_budget_bytes = 20 << 10;
        c.idle_timeout = Duration::from_secs(120);
    })
    .await;
    let (net, peer) = attacker(&node).await;
    let mut trickler = stream(&net, peer).await;
    assert!(matches!(
        exchange(&mut trickler, &open(&node, node.model_id)).await,
        Some(Response::Opened(_))
    ));
    trickler.write_all(&16_000u32.to_le_bytes()).await.unwrap();
    trickler.write_all(&[0u8; 100]).await.unwrap();
    trickler.flush().await.unwrap();

    let mut honest = stream(&net, peer).await;
    assert!(matches!(
        exchange(&mut honest, &open(&node, node.model_id)).await,
        Some(Response::Opened(_))
    ));
    let answered =
        tokio::time::timeout(Duration::from_secs(5), exchange(&mut honest, &step(256, 0))).await;
    assert!(
        matches!(answered, Ok(Some(Response::StepDone(_)))),
        "a step that fits in the budget waited on the trickler"
    );
    assert!(
        closed(&mut trickler).await,
        "a peer trickling a frame outlived the frame deadline"
    );
}
