//! The hostile peers and clients of a soak run, each a loop until told to stop. Every attack
//! uses the public protocol the way an attacker with fresh identities would, and tallies how
//! the target answered: refused, closed or bounded (as it should) or accepted.

use crate::report::AttackTally;
use futures::{AsyncReadExt, AsyncWriteExt};
use hearth_core::{BlockRange, ContentHash};
use hearth_swarm::dht::{announcement_key, block_key};
use hearth_swarm::{Net, NetConfig, NodeIdentity};
use hearth_wire::{
    read_frame, write_frame, HiddenDType, HiddenStates, Limits, OpenSession, Request, Response,
    Step, INFERENCE_PROTOCOL,
};
use libp2p::{kad, Multiaddr, PeerId, Stream, StreamProtocol};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

/// A node under attack, as the attackers know it (addresses change when it restarts).
#[derive(Clone, Debug)]
pub(crate) struct NodeTarget {
    pub(crate) peer: PeerId,
    pub(crate) addrs: Vec<Multiaddr>,
    pub(crate) span: BlockRange,
}

/// Everything the attackers aim at.
pub(crate) struct Targets {
    pub(crate) nodes: RwLock<Vec<NodeTarget>>,
    pub(crate) model_id: ContentHash,
    pub(crate) n_blocks: u32,
    pub(crate) hidden_size: u32,
    pub(crate) gateway: String,
    pub(crate) agent: String,
    pub(crate) agent_token: String,
    /// Seconds nodes give a declared frame to arrive.
    pub(crate) frame_timeout: Duration,
    /// Seconds the gateway lets a response write stay blocked.
    pub(crate) gateway_write_timeout: Duration,
}

/// The attacks of a soak run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attack {
    /// Hundreds of silent streams from one identity.
    StreamFlood,
    /// Long sessions kept alive with one-row steps.
    KvSquatting,
    /// Frames declaring a gigabyte; steps wider than the session.
    OversizedFrames,
    /// A frame's length declared, its bytes trickled.
    SlowFrames,
    /// Sessions opened, stepped once and dropped, nonstop.
    SessionChurn,
    /// Random bytes stored under nodes' DHT keys.
    DhtJunk,
    /// 200 fresh identities at once, each opening a session.
    SybilBurst,
    /// Streaming HTTP clients that never read.
    SlowHttpReaders,
    /// What a web page could post to the energy agent.
    CrossOrigin,
}

impl Attack {
    /// Every attack, in the order the report lists them.
    pub const ALL: [Attack; 9] = [
        Attack::StreamFlood,
        Attack::KvSquatting,
        Attack::OversizedFrames,
        Attack::SlowFrames,
        Attack::SessionChurn,
        Attack::DhtJunk,
        Attack::SybilBurst,
        Attack::SlowHttpReaders,
        Attack::CrossOrigin,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Attack::StreamFlood => "stream-flood",
            Attack::KvSquatting => "kv-squatting",
            Attack::OversizedFrames => "oversized-frames",
            Attack::SlowFrames => "slow-frames",
            Attack::SessionChurn => "session-churn",
            Attack::DhtJunk => "dht-junk",
            Attack::SybilBurst => "sybil-burst",
            Attack::SlowHttpReaders => "slow-http-readers",
            Attack::CrossOrigin => "cross-origin",
        }
    }

    /// Whether the target must refuse every attempt (the others use resources within limits:
    /// a squatter may hold its share, a churner may open sessions).
    fn must_refuse(self) -> bool {
        matches!(
            self,
            Attack::StreamFlood
                | Attack::OversizedFrames
                | Attack::SlowFrames
                | Attack::DhtJunk
                | Attack::SlowHttpReaders
                | Attack::CrossOrigin
        )
    }

    fn run(
        self,
        t: Arc<Targets>,
        tally: Tallies,
        stop: watch::Receiver<bool>,
    ) -> futures::future::BoxFuture<'static, ()> {
        match self {
            Attack::StreamFlood => Box::pin(stream_flood(t, tally, stop)),
            Attack::KvSquatting => Box::pin(kv_squatting(t, tally, stop)),
            Attack::OversizedFrames => Box::pin(oversized_frames(t, tally, stop)),
            Attack::SlowFrames => Box::pin(slow_frames(t, tally, stop)),
            Attack::SessionChurn => Box::pin(session_churn(t, tally, stop)),
            Attack::DhtJunk => Box::pin(dht_junk(t, tally, stop)),
            Attack::SybilBurst => Box::pin(sybil_burst(t, tally, stop)),
            Attack::SlowHttpReaders => Box::pin(slow_http_readers(t, tally, stop)),
            Attack::CrossOrigin => Box::pin(cross_origin_agent_writes(t, tally, stop)),
        }
    }
}

impl std::str::FromStr for Attack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Attack::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
                format!("unknown attack {s:?}; one of {}", names.join(", "))
            })
    }
}

impl std::fmt::Display for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tallies per attack, shared by the attack loops.
#[derive(Clone, Default)]
pub(crate) struct Tallies(Arc<Mutex<BTreeMap<String, AttackTally>>>);

impl Tallies {
    fn add(&self, attack: Attack, refused: u64, accepted: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = map.entry(attack.name().to_string()).or_default();
        t.must_refuse = attack.must_refuse();
        t.attempts += refused + accepted;
        t.refused += refused;
        t.accepted += accepted;
    }

    /// The tallies so far.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, AttackTally> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Starts `attacks`; they run until `stop` turns true.
pub(crate) fn spawn(
    attacks: &[Attack],
    targets: Arc<Targets>,
    tallies: Tallies,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    attacks
        .iter()
        .map(|a| tokio::spawn(a.run(targets.clone(), tallies.clone(), stop.clone())))
        .collect()
}

/// Sleeps `d` or until `stop`; returns whether to go on.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    let _ = tokio::time::timeout(d, stop.changed()).await;
    !*stop.borrow()
}

fn pick(targets: &Targets) -> Option<NodeTarget> {
    let nodes = targets.nodes.read().unwrap_or_else(|p| p.into_inner());
    if nodes.is_empty() {
        return None;
    }
    Some(nodes[crate::random_index(nodes.len())].clone())
}

/// A fresh identity on loopback (a DHT client joined through `bootstrap`, if any).
async fn fresh(bootstrap: Vec<Multiaddr>) -> Option<Net> {
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().ok()?],
        mdns: false,
        dht_server: false,
        bootstrap,
        ..NetConfig::default()
    };
    Net::start(&NodeIdentity::generate(), cfg).await.ok()
}

async fn connect(net: &Net, node: &NodeTarget) -> bool {
    net.dial(node.peer, node.addrs.clone()).await;
    for _ in 0..100 {
        if net.status().await.connected.contains(&node.peer) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn stream(net: &Net, peer: PeerId) -> Option<Stream> {
    let mut control = net.control();
    let open = control.open_stream(peer, StreamProtocol::new(INFERENCE_PROTOCOL));
    tokio::time::timeout(Duration::from_secs(5), open)
        .await
        .ok()?
        .ok()
}

async fn exchange(s: &mut Stream, body: &[u8]) -> Option<Response> {
    write_frame(s, body).await.ok()?;
    let frame = tokio::time::timeout(Duration::from_secs(20), read_frame(s, 1 << 26))
        .await
        .ok()?
        .ok()??;
    Response::decode(&frame, &Limits::default()).ok()
}

fn open_request(t: &Targets, node: &NodeTarget, max_len: u32) -> Vec<u8> {
    let mut session = [0u8; 16];
    let _ = getrandom::fill(&mut session);
    Request::Open(OpenSession {
        session,
        model_id: t.model_id,
        span: node.span,
        max_len,
        dtype: HiddenDType::F16,
    })
    .encode()
}

fn step_request(t: &Targets, start: u32, rows: u32) -> Vec<u8> {
    let values = vec![0.01f32; (rows * t.hidden_size) as usize];
    Request::Step(Step {
        step: 0,
        hidden: HiddenStates::from_f32(HiddenDType::F16, start, rows, t.hidden_size, &values),
    })
    .encode()
}

/// Whether the peer closed `s` within `within` (nothing more to read, or a reset).
async fn closed_within(s: &mut Stream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Hundreds of silent streams from one fresh identity: the node keeps a peer's share and
/// closes the rest, and closes the share too once it has not opened a session in time.
async fn stream_flood(t: Arc<Targets>, tally: Tallies, mut stop: watch::Receiver<bool>) {
    const STREAMS: usize = 300;
    while pause(&mut stop, Duration::from_secs(2)).await {
        let (Some(node), Some(net)) = (pick(&t), fresh(Vec::new()).await) else {
            continue;
        };
        if !connect(&net, &node).await {
            continue;
        }
        let mut held = Vec::new();
        for _ in 0..STREAMS {
            match stream(&net, node.peer).await {
                Some(s) => held.push(s),
                None => break,
            }
        }
        // The node's open deadline (10 s) closes every stream that never opened a session.
        let mut all_closed = true;
        for s in &mut held {
            all_closed &= closed_within(s, Duration::from_secs(15)).await;
            if *stop.borrow() {
                break;
            }
        }
        tally.add(Attack::StreamFlood, all_closed as u64, !all_closed as u64);
    }
}

/// Sessions asking for the longest length, kept alive by one-row steps: each holds only what
/// it used, and one identity's sessions together at most its share of the cache.
async fn kv_squatting(t: Arc<Targets>, tally: Tallies, mut stop: watch::Receiver<bool>) {
    const SESSIONS: usize = 32;
    while !*stop.borrow() {
        let (Some(node), Some(net)) = (pick(&t), fresh(Vec::new()).await) else {
            let _ = pause(&mut stop, Duration::from_secs(1)).await;
            continue;
        };
        if !connect(&net, &node).await {
            continue;
        }
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS {
            let Some(mut s) = stream(&net, node.peer).await else {
                break;
            };
            match exchange(&mut s, &open_request(&t, &node, 32_768)).await {
                Some(Response::Opened(_)) => {
                    tally.add(Attack::KvSquatting, 0, 1);
                    sessions.push((s, 0u32));
                }
                _ => tally.add(Attack::KvSquatting, 1, 0),
            }
        }
        // 20 s of one-row steps (growth keeps a session alive; replays would not).
        for _ in 0..10 {
            if !pause(&mut stop, Duration::from_secs(2)).await {
                break;
            }
            let mut kept = Vec::new();
            for (mut s, len) in sessions {
                match exchange(&mut s, &step_request(&t, len, 1)).await {
                    Some(Response::StepDone(_)) => kept.push((s, len + 1)),
                    _ => tally.add(Attack::KvSquatting, 1, 0),
                }
            }
            sessions = kept;
        }
    }
}

/// Frames declaring a gigabyte, and steps wider than the session can ever need: closed or
/// refused, never buffered.
async fn oversized_frames(t: Arc<Targets>, tally: Tallies, mut stop: watch::Receiver<bool>) {
    while pause(&mut stop, Duration::from_millis(500)).await {
        let (Some(node), Some(net)) = (pick(&t), fresh(Vec::new()).await) else {
            continue;
        };
        if !connect(&net, &node).await {
            continue;
        }
        if let Some(mut s) = stream(&net, node.peer).await {
            let mut head = (1u32 << 30).to_le_bytes().to_vec();
            head.extend_from_slice(&[0u8; 1024]);
            let _ = s.write_all(&head).await;
            let refused = closed_within(&mut s, Duration::from_secs(10)).await;
            tally.add(Attack::OversizedFrames, refused as u64, !refused as u64);
        }
        // A session of 8 positions, then a 64-row step: beyond what it may ever hold.
        if let Some(mut s) = stream(&net, node.peer).await {
            if let Some(Response::Opened(_)) = exchange(&mut s, &open_request(&t, &node, 8)).await {
                let refused = match exchange(&mut s, &step_request(&t, 0, 64)).await {
                    Some(Response::Error(_)) | None => true,
                    Some(_) => false,
                };
                tally.add(Attack::OversizedFrames, refused as u64, !refused as u64);
            }
        }
    }
}

/// A frame's length declared, then its bytes trickled: dropped after the frame deadline.
async fn slow_frames(t: Arc<Targets>, tally: Tallies, mut stop: watch::Receiver<bool>) {
    while pause(&mut stop, Duration::from_secs(1)).await {
        let (Some(node), Some(net)) = (pick(&t), fresh(Vec::new()).await) else {
            continue;
        };
        if !connect(&net, &node).await {
            continue;
        }
        let Some(mut s) = stream(&net, node.peer).await else {
            continue;
        };
        if !matches!(
            exchange(&mut s, &open_request(&t, &node, 64)).await,
            Some(Response::Opened(_))
        ) {
            continue;
        }
        let _ = s.write_all(&100_000u32.to_le_bytes()).await;
        let deadline = tokio::time::Instant::now() + t.frame_timeout + Duration::from_secs(10);
        let mut dropped = false;
        while tokio::time::Instant::now() < deadline && !*stop.borrow() {
            if s.write_all(&[0u8]).await.is_err() || s.flush().await.is_err() {
                dropped = true;
                break;
            }
            if closed_within(&mut s, Duration::from_millis(500)).await {
                dropped = true;
                break;
            }
        }
        if !*stop.borrow() {
            tally.add(Attack::SlowFrames, dropped as u64, !dropped as u64);
        }
    }
}

/// Sessions opened, stepped once (one row) and dropped, as fast as the node answers: the
/// session lifecycle, not compute, is what it churns.
async fn session_churn(t: Arc<Targets>, tally: Tallies, mut stop: watch::Receiver<bool>) {
    let mut current: Option<(Net, NodeTarget)> = None;
    while pause(&mut stop, Duration::from_millis(20)).await {
        if current.is_none() {
            let (Some(node), Some(net)) = (pick(&t), fresh(Vec::new()).await) else {
                continue;
            };
            if connect(&net, &node).await {
                current = Some((net, node));
            }
            continue;
        }
        let Some((net, node)) = &current else {
            continue;
        };
        let Some(mut s) = stream(net, node.peer).await else {
            current = None;
            continue;
        };
        let opened = matches!(
            exchange(&mut s, &open_request(&t, node, 64)).await,
            Some(Response::Opened(_))
        );
        if opened {
            let _ = exchange(&mut s, &step_request(&t, 0, 1)).await;
            tally.add(Attack::SessionChurn, 0, 1);
        } else {
            tally.add(Attack::SessionChurn, 1, 0);
            current = None;
        }
    }
}

/// Random bytes stored under every node's announcement key and the block keys: validating
/// peers refuse them, so an observer finds only valid announcements.
async fn dht_junk(t: Arc<Targets>, tally: Tallies, mut stop: watch::Receiver<bool>) {
    let Some(first) = pick(&t) else { return };
    let (Some(attacker), Some(observer)) = (
        fresh(first.addrs.clone()).await,
        fresh(first.addrs.clone()).await,
    ) else {
        return;
    };
    let limits = Limits::default();
    while pause(&mut stop, Duration::from_secs(2)).await {
        let Some(victim) = pick(&t) else { continue };
        let key = announcement_key(&t.model_id, &victim.peer);
        let mut junk = vec![0u8; 512];
        let _ = getrandom::fill(&mut junk);
        attacker
            .put_record(kad::Record::new(key.clone(), junk.clone()))
            .await;
        let block = crate::random_index(t.n_blocks as usize) as u32;
        attacker
            .put_record(kad::Record::new(block_key(&t.model_id, block), junk))
            .await;
        if !pause(&mut stop, Duration::from_secs(1)).await {
            break;
        }
        let now = hearth_swarm::dht::now_unix_ms();
        let found = observer.get_records(key.clone()).await;
        let stored_junk = found
            .iter()
            .filter(|v| hearth_swarm::dht::check_record(&key, v, now, &limits).is_err())
            .count();
        tally.add(
            Attack::DhtJunk,
            (stored_junk == 0) as u64,
            (stored_junk > 0) as u64,
        );
    }
}

/// 200 fresh identities at once, each opening a session on a node and holding it a while.
async fn sybil_burst(t: Arc<Targets>, tally: Tallies, mut stop: watch::Receiver<bool>) {
    const IDENTITIES: usize = 200;
    const AT_ONCE: usize = 25;
    while pause(&mut stop, Duration::from_secs(5)).await {
        let mut held = Vec::new();
        for _ in 0..IDENTITIES / AT_ONCE {
            let batch = (0..AT_ONCE).map(|_| {
                let t = t.clone();
                async move {
                    let node = pick(&t)?;
                    let net = fresh(Vec::new()).await?;
                    if !connect(&net, &node).await {
                        return Some((None, false));
                    }
                    let mut s = stream(&net, node.peer).await?;
                    let opened = matches!(
                        exchange(&mut s, &open_request(&t, &node, 64)).await,
                        Some(Response::Opened(_))
                    );
                    Some((Some((net, s)), opened))
                }
            });
            for r in futures::future::join_all(batch).await {
                match r {
                    Some((kept, opened)) => {
                        tally.add(Attack::SybilBurst, !opened as u64, opened as u64);
                        held.extend(kept);
                    }
                    None => tally.add(Attack::SybilBurst, 1, 0),
                }
            }
            if *stop.borrow() {
                break;
            }
        }
        let _ = pause(&mut stop, Duration::from_secs(10)).await;
        drop(held);
    }
}

/// Streaming requests for long completions whose client never reads: the gateway's write
/// deadline closes them (and cancels their generations).
async fn slow_http_readers(t: Arc<Targets>, tally: Tallies, mut stop: watch::Receiver<bool>) {
    const AT_ONCE: usize = 4;
    let Some(addr) = t
        .gateway
        .strip_prefix("http://")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
    else {
        return;
    };
    while !*stop.borrow() {
        let hold = t.gateway_write_timeout * 3 + Duration::from_secs(10);
        let readers = (0..AT_ONCE).map(|_| async move {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            // A small receive window, so the gateway's writes block soon.
            let _ = socket.set_recv_buffer_size(4096);
            let mut conn = socket.connect(addr).await.ok()?;
            let body = serde_json::json!({
                "model": "soak", "prompt": "Tell me a very long story.",
                "max_tokens": 4000, "temperature": 0, "stream": true,
            })
            .to_string();
            let head = format!(
                "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(head.as_bytes()).await.ok()?;
            tokio::time::sleep(hold).await;
            // Now drain: a connection the gateway gave up on ends soon; one it still feeds
            // does not.
            let mut buf = vec![0u8; 1 << 16];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                use tokio::io::AsyncReadExt as _;
                match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                    Err(_) => return Some(false),
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(true),
                    Ok(Ok(_)) => {}
                }
            }
        });
        let results = tokio::select! {
            r = futures::future::join_all(readers) => r,
            _ = stop.changed() => break,
        };
        for closed in results.into_iter().flatten() {
            tally.add(Attack::SlowHttpReaders, closed as u64, !closed as u64);
        }
    }
}

/// What a web page the operator visits could send to the agent: a cross-origin write (even
/// carrying the token), and a form-encoded one without it.
async fn cross_origin_agent_writes(
    t: Arc<Targets>,
    tally: Tallies,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::new();
    let url = format!("{}/api/price", t.agent);
    while pause(&mut stop, Duration::from_secs(1)).await {
        let cross_origin = http
            .post(&url)
            .header("Origin", "http://evil.example")
            .bearer_auth(&t.agent_token)
            .json(&serde_json::json!({"usd_per_mwh": 9999}))
            .send()
            .await;
        let simple = http
            .post(&url)
            .header("Origin", "http://evil.example")
            .header("Content-Type", "text/plain")
            .body(r#"{"usd_per_mwh": 9999}"#)
            .send()
            .await;
        for r in [cross_origin, simple].into_iter().flatten() {
            let accepted = r.status().is_success();
            tally.add(Attack::CrossOrigin, !accepted as u64, accepted as u64);
        }
    }
}
