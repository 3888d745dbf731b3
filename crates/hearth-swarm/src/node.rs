//! A serving node: loads blocks of a model, announces them, and serves inference sessions on
//! libp2p streams. Steps from concurrent sessions are batched into one forward pass.

use crate::adversary::Adversary;
use crate::dht::{
    announcement_key, block_key, find_servers, fraud_key, model_key, now_unix_ms, pick_announcement,
};
use crate::error::{Result, SwarmError};
use crate::gossip::{recompute, FraudBoard};
use crate::identity::NodeIdentity;
use crate::net::{Net, NetConfig};
use crate::placement::{self, SpanInfo};
use futures::{AsyncRead, AsyncWrite};
use hearth_core::{BlockRange, ContentHash};
use hearth_engine::identity::identity_cached;
use hearth_engine::{
    CacheQuota, EngineError, LoadOptions, ModelSource, SessionId, SessionLimits, SliceServer,
    Tensor,
};
use hearth_verify::{Replay, Verdict, HONEST_TOLERANCE};
use hearth_wire::{
    read_frame, read_frame_body, read_frame_len, write_frame, ActivationCommitment, Announcement,
    ErrorCode, FraudProof, FraudReply, FraudRequest, HiddenStates, Limits, OpenSession, Opened,
    ReceiptBody, Request, Response, Step, StepDone, FRAUD_PROTOCOL, INFERENCE_PROTOCOL,
};
use libp2p::{kad, Multiaddr, PeerId, StreamProtocol};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Deliberate misbehaviour, for tests of the client's defences (hidden CLI flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Sign receipts with the wrong content.
    BadSignature,
    /// Return NaN hidden states.
    NonFinite,
    /// Return one row too few.
    WrongShape,
    /// Abort the process (as `kill -9` would, no reply, no cleanup) on receiving the node's
    /// `n`-th step, counting every session's: failover tests kill at an exact step this way.
    CrashAtStep(u64),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bad-signature" => Ok(Self::BadSignature),
            "non-finite" => Ok(Self::NonFinite),
            "wrong-shape" => Ok(Self::WrongShape),
            other => match other.strip_prefix("crash-at-step:").map(str::parse) {
                Some(Ok(n)) if n > 0 => Ok(Self::CrashAtStep(n)),
                _ => Err(format!(
                    "unknown fault {other:?} (bad-signature, non-finite, wrong-shape, crash-at-step:N with N >= 1)"
                )),
            },
        }
    }
}

/// Settings of a serving [`Node`]; [`NodeConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The model: a Hugging Face folder or a `.gguf` file.
    pub model: PathBuf,
    /// Holds `node.key` and cached model ids.
    pub data_dir: PathBuf,
    /// Blocks to serve; `None` chooses automatically from what the swarm lacks.
    pub blocks: Option<BlockRange>,
    /// With automatic placement: most blocks this node may hold.
    pub max_blocks: Option<u32>,
    /// With automatic placement: how long to look at the swarm before choosing.
    pub discovery_wait: Duration,
    /// Network settings (listen addresses, bootstrap peers, DHT).
    pub net: NetConfig,
    /// Limits of the slice server: sessions open at once and KV-cache budget.
    pub sessions: SessionLimits,
    /// Most sessions one peer may hold open at once.
    pub max_sessions_per_peer: usize,
    /// Percent of the KV-cache budget one peer's sessions may reserve together (1..=100).
    pub cache_percent_per_peer: u64,
    /// Lifetime of this node's DHT announcements (refreshed at a third of it).
    pub announce_ttl: Duration,
    /// Asking price, micro-credits per 1000 block-tokens (announced; the market wave charges it).
    pub price: u64,
    /// Close a session's stream after this long without a request.
    pub idle_timeout: Duration,
    /// Close a stream that has not opened a session this long after it arrived (a peer must not
    /// hold stream slots without using them).
    pub open_timeout: Duration,
    /// Drop a stream whose peer does not take a reply within this long (a client that stops
    /// reading must not hold its session).
    pub write_timeout: Duration,
    /// Drop a stream whose peer, once it has declared a frame's length, does not send the whole
    /// frame within this long (a peer must not hold frame memory by trickling bytes).
    pub frame_timeout: Duration,
    /// Bytes of request frames all streams together may hold at once, from the moment a frame's
    /// length is read until its reply is sent; a frame waits for room (a single frame larger
    /// than the budget waits for the whole of it).
    pub frame_budget_bytes: usize,
    /// Caps on what a peer's messages may make the node allocate.
    pub limits: Limits,
    /// Testing only: misbehave this way on purpose (`None` in production).
    pub fault: Option<Fault>,
    /// Testing only: cheat this way (acted on only when built with the `adversary` feature).
    pub adversary: Option<Adversary>,
    /// Testing only: sleep this long before answering each step (a slow or distant node).
    pub step_delay: Duration,
    /// With automatic placement: how often to reconsider the span (`None`: never).
    pub rebalance_interval: Option<Duration>,
    /// Hysteresis: move only if the swarm's bottleneck rises by this factor.
    pub rebalance_min_gain: f64,
    /// Announce this build class instead of the detected one (`hearth_engine::build_class`):
    /// for a build known to compute the same bits as another class, and for tests. A wrong
    /// value only hurts this node: verifiers of the claimed class would blame its honest work.
    pub build_class: Option<u64>,
}

impl NodeConfig {
    /// Defaults for serving `model` with its key and caches in `data_dir`: automatic
    /// placement, 60 s announcements, free of charge.
    pub fn new(model: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            model,
            data_dir,
            blocks: None,
            max_blocks: None,
            discovery_wait: Duration::from_secs(3),
            net: NetConfig::default(),
            sessions: SessionLimits::default(),
            max_sessions_per_peer: 64,
            cache_percent_per_peer: 50,
            announce_ttl: Duration::from_secs(60),
            price: 0,
            idle_timeout: Duration::from_secs(120),
            open_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(30),
            frame_budget_bytes: 512 << 20,
            limits: Limits::default(),
            fault: None,
            adversary: None,
            step_delay: Duration::ZERO,
            rebalance_interval: Some(Duration::from_secs(60)),
            rebalance_min_gain: 1.1,
            build_class: None,
        }
    }
}

/// A running node.
pub struct Node {
    /// The node's handle on the network.
    pub net: Net,
    /// The node's peer id (from its persistent identity).
    pub peer_id: PeerId,
    /// The served model's content-addressed id.
    pub model_id: ContentHash,
    /// Blocks in the whole model (not only those served).
    pub n_blocks: u32,
    /// Measured decode compute per block per token, milliseconds.
    pub block_ms: f64,
    state: Arc<NodeState>,
}

/// The blocks a node serves now. Replaced whole when the node rebalances; sessions keep the
/// `Arc` they opened on, so they finish on the old blocks while new sessions use the new ones.
struct Served {
    span: BlockRange,
    server: Arc<SliceServer>,
}

struct NodeState {
    identity: NodeIdentity,
    model_id: ContentHash,
    hidden_size: usize,
    served: std::sync::RwLock<Arc<Served>>,
    compute: mpsc::Sender<Job>,
    limits: Limits,
    max_per_peer: usize,
    /// Sessions open per peer (at most `max_per_peer`).
    sessions_per_peer: PeerCounts,
    /// Each peer's share of the KV-cache budget, held by its open sessions.
    cache_quotas: PeerQuotas,
    /// Inference streams open per peer, session or not (at most `max_per_peer` +
    /// `SPARE_STREAMS_PER_PEER`): without this one peer could hold every stream slot.
    streams_per_peer: PeerCounts,
    open_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    frame_timeout: Duration,
    /// Room for request frames in flight, in bytes (one permit per byte).
    frame_budget: Arc<tokio::sync::Semaphore>,
    frame_budget_bytes: usize,
    fault: Option<Fault>,
    #[cfg_attr(not(feature = "adversary"), allow(dead_code))]
    adversary: Option<Adversary>,
    /// Steps received so far (for [`Fault::CrashAtStep`]).
    steps_received: std::sync::atomic::AtomicU64,
    step_delay: Duration,
    /// Most inbound streams served at once.
    max_streams: usize,
    /// Largest step frame this model can need.
    step_frame_limit: usize,
    /// Whether new sessions are taken and the node is announced (an energy agent may pause it;
    /// open sessions finish either way).
    serving: std::sync::atomic::AtomicBool,
    /// Wakes the announcer when `serving` changes.
    serving_changed: tokio::sync::Notify,
    /// Fraud proofs this node re-checked and hosts for the swarm.
    fraud: FraudBoard,
    /// Which nodes compute the same bits as this one (announced; `hearth_engine::build_class`).
    build_class: u64,
}

struct Job {
    server: Arc<SliceServer>,
    session: SessionId,
    start: usize,
    hidden: Tensor,
    reply: oneshot::Sender<hearth_engine::Result<Tensor>>,
}

/// Most steps waiting for the compute thread; further senders wait (bounded memory).
const COMPUTE_QUEUE: usize = 256;
/// Largest frame accepted before a session is open (an Open is 66 bytes).
const OPEN_FRAME_LIMIT: usize = 1024;
/// Bytes of a step frame besides its values (version, kind, step index, the hidden states'
/// header), rounded up.
const STEP_HEADER_BYTES: usize = 64;
/// Streams a peer may hold beyond its session cap (one opening while another closes).
const SPARE_STREAMS_PER_PEER: usize = 2;
/// Most fraud-proof streams served at once (each may carry one large proof).
const FRAUD_STREAMS: usize = 4;
/// Longest a fraud-proof exchange may take to arrive or be sent.
const FRAUD_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Most steps fused into one forward pass.
const MAX_BATCH: usize = 64;
/// Longest wait for other sessions' steps before a batch starts.
const GATHER_WINDOW: Duration = Duration::from_micros(500);
/// Sessions that grew this recently count as the node's load in its announcements (idle ones
/// cost no compute, and counting them would let anyone divert traffic by opening sessions).
const ANNOUNCED_ACTIVITY_WINDOW: Duration = Duration::from_secs(10);
/// A session counts as stepping if its last step is this recent.
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

impl Node {
    /// Loads the model slice, joins the network and starts serving. Returns once serving.
    pub async fn start(cfg: NodeConfig) -> Result<Self> {
        let identity = NodeIdentity::load_or_create(&cfg.data_dir)?;
        let model_path = cfg.model.clone();
        let ids_dir = cfg.data_dir.join("model-ids");
        let (src, ident) = tokio::task::spawn_blocking(move || -> hearth_engine::Result<_> {
            let src = ModelSource::open(&model_path)?;
            let ident = identity_cached(&src, &ids_dir)?;
            Ok((src, ident))
        })
        .await
        .map_err(|e| SwarmError::join("opening the model", e))??;
        #[cfg(feature = "adversary")]
        let ident = match cfg.adversary.map(|a| a.cheat) {
            Some(crate::adversary::Cheat::ClaimModel(claimed)) => hearth_engine::ModelIdentity {
                model_id: claimed,
                ..ident
            },
            _ => ident,
        };
        let n_blocks = src.config().num_layers as u32;
        let net = Net::start(&identity, cfg.net.clone()).await?;
        let span = match cfg.blocks {
            Some(span) => {
                span.check_within(n_blocks)?;
                span
            }
            None => {
                tokio::time::sleep(cfg.discovery_wait).await;
                let others = discover_spans(&net, &ident.model_id, n_blocks, &cfg.limits).await;
                let fit = cfg.max_blocks.unwrap_or(n_blocks).clamp(1, n_blocks);
                let span = placement::choose_blocks(n_blocks as usize, &others, fit as usize, 1.0)
                    .map_err(|e| SwarmError::InvalidInput(format!("choosing blocks: {e}")))?;
                tracing::info!(%span, known = others.len(), "chose blocks");
                span
            }
        };
        let src = Arc::new(src);
        let load_src = src.clone();
        let slice = tokio::task::spawn_blocking(move || {
            load_src.load_slice(span, &LoadOptions::default(), None)
        })
        .await
        .map_err(|e| SwarmError::join("loading blocks", e))??;
        let hidden_size = slice.config().hidden_size;
        let server = Arc::new(SliceServer::new(Arc::new(slice), cfg.sessions.clone()));
        let build_class = cfg
            .build_class
            .unwrap_or_else(|| hearth_engine::build_class(server.slice().device()));
        let block_ms = {
            let server = server.clone();
            tokio::task::spawn_blocking(move || measure_block_ms(&server, hidden_size))
                .await
                .map_err(|e| SwarmError::join("measuring block speed", e))??
        };
        // A cheater claims to be the fastest server there is: the attack routing must survive.
        #[cfg(feature = "adversary")]
        let block_ms = if cfg.adversary.is_some() {
            0.0
        } else {
            block_ms
        };
        tracing::info!(%span, block_ms, "serving");
        let (tx, rx) = mpsc::channel(COMPUTE_QUEUE);
        std::thread::Builder::new()
            .name("hearth-compute".into())
            .spawn(move || compute_loop(rx))
            .map_err(|e| SwarmError::io("starting the compute thread", e))?;
        let state = Arc::new(NodeState {
            identity: identity.clone(),
            model_id: ident.model_id,
            hidden_size,
            served: std::sync::RwLock::new(Arc::new(Served { span, server })),
            compute: tx,
            limits: cfg.limits.clone(),
            max_per_peer: cfg.max_sessions_per_peer,
            sessions_per_peer: PeerCounts::default(),
            cache_quotas: PeerQuotas::new(
                (u128::from(cfg.sessions.cache_budget_bytes)
                    * u128::from(cfg.cache_percent_per_peer.clamp(1, 100))
                    / 100) as u64,
            ),
            streams_per_peer: PeerCounts::default(),
            open_timeout: cfg.open_timeout,
            write_timeout: cfg.write_timeout,
            idle_timeout: cfg.idle_timeout,
            frame_timeout: cfg.frame_timeout,
            frame_budget: Arc::new(tokio::sync::Semaphore::new(frame_budget_permits(
                cfg.frame_budget_bytes,
            ))),
            frame_budget_bytes: frame_budget_permits(cfg.frame_budget_bytes),
            fault: cfg.fault,
            adversary: cfg.adversary,
            steps_received: std::sync::atomic::AtomicU64::new(0),
            step_delay: cfg.step_delay,
            max_streams: cfg.sessions.max_sessions + 16,
            serving: std::sync::atomic::AtomicBool::new(true),
            serving_changed: tokio::sync::Notify::new(),
            fraud: FraudBoard::new(),
            build_class,
            // The widest wire dtype (f32) bounds a step's frame.
            step_frame_limit: (STEP_HEADER_BYTES + cfg.limits.max_rows as usize * hidden_size * 4)
                .min(cfg.limits.max_frame_bytes),
        });
        let mut control = net.control();
        let mut incoming = control
            .accept(StreamProtocol::new(INFERENCE_PROTOCOL))
            .map_err(|e| SwarmError::Internal(format!("cannot accept inference streams: {e}")))?;
        {
            let state = state.clone();
            tokio::spawn(async move {
                use futures::StreamExt;
                // Every open stream may buffer up to one frame: cap how many exist at once.
                let streams = Arc::new(tokio::sync::Semaphore::new(state.max_streams));
                while let Some((peer, stream)) = incoming.next().await {
                    let max = state.max_per_peer + SPARE_STREAMS_PER_PEER;
                    let Some(peer_slot) = state.streams_per_peer.try_take(peer, max) else {
                        tracing::debug!(%peer, "peer holds {max} streams; dropping a new one");
                        continue;
                    };
                    let Ok(permit) = streams.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "too many open streams; dropping a new one");
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        serve_stream(state, peer, stream).await;
                        drop((permit, peer_slot));
                    });
                }
            });
        }
        let mut fraud_streams = control
            .accept(StreamProtocol::new(FRAUD_PROTOCOL))
            .map_err(|e| SwarmError::Internal(format!("cannot accept fraud streams: {e}")))?;
        {
            let (state, net) = (state.clone(), net.clone());
            tokio::spawn(async move {
                use futures::StreamExt;
                // A submitted proof may be a large frame: few at once.
                let streams = Arc::new(tokio::sync::Semaphore::new(FRAUD_STREAMS));
                while let Some((peer, stream)) = fraud_streams.next().await {
                    let Ok(permit) = streams.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "too many fraud-proof streams; dropping a new one");
                        continue;
                    };
                    let (state, net) = (state.clone(), net.clone());
                    tokio::spawn(async move {
                        serve_fraud_stream(&state, &net, peer, stream).await;
                        drop(permit);
                    });
                }
            });
        }
        let node = Self {
            peer_id: net.peer_id(),
            net,
            model_id: ident.model_id,
            n_blocks,
            block_ms,
            state,
        };
        node.spawn_announcer(cfg.announce_ttl, cfg.price);
        if cfg.blocks.is_none() {
            if let Some(every) = cfg.rebalance_interval {
                node.spawn_rebalancer(
                    src,
                    every,
                    cfg.rebalance_min_gain,
                    cfg.max_blocks,
                    cfg.limits.clone(),
                    cfg.sessions.clone(),
                );
            }
        }
        Ok(node)
    }

    /// Publishes the announcement now and then every third of its lifetime, and expires idle
    /// sessions.
    fn spawn_announcer(&self, ttl: Duration, price: u64) {
        let net = self.net.clone();
        let state = self.state.clone();
        let n_blocks = self.n_blocks;
        let block_ms = self.block_ms;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            let mut provided: Option<BlockRange> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = state.serving_changed.notified() => {}
                }
                let served = state.current();
                if !state.serving.load(std::sync::atomic::Ordering::Acquire) {
                    // Paused: withdraw the provider records; the announcement expires by itself.
                    if let Some(old) = provided.take() {
                        net.stop_providing(model_key(&state.model_id)).await;
                        for b in old.start()..old.end() {
                            net.stop_providing(block_key(&state.model_id, b)).await;
                        }
                    }
                    served.server.expire_idle(Instant::now());
                    continue;
                }
                served.server.expire_idle(Instant::now());
                let status = net.status().await;
                let announcement = Announcement {
                    model_id: state.model_id,
                    n_blocks,
                    span: served.span,
                    block_ms: block_ms as f32,
                    throughput: offered_throughput(block_ms, served.span) as f32,
                    cache_free_tokens: free_cache_tokens(&served.server),
                    active_sessions: served
                        .server
                        .active_sessions(Instant::now(), ANNOUNCED_ACTIVITY_WINDOW)
                        as u32,
                    price,
                    build_class: state.build_class,
                    rtts: status
                        .rtts
                        .iter()
                        .filter_map(|(peer, rtt)| {
                            Some(hearth_wire::PeerRtt {
                                node: crate::identity::public_key_of(peer)?,
                                rtt_us: rtt.as_micros().min(u32::MAX as u128) as u32,
                            })
                        })
                        .take(hearth_wire::MAX_RTTS)
                        .collect(),
                    addrs: announceable(&status.listen_addrs),
                    issued_unix_ms: now_unix_ms(),
                    ttl_secs: ttl.as_secs().max(1) as u32,
                    node: [0; 32],
                }
                .sign(&state.identity.signing_key());
                let mut record = kad::Record::new(
                    announcement_key(&state.model_id, &net.peer_id()),
                    announcement.encode(),
                );
                record.expires = Some(Instant::now() + ttl);
                net.put_record(record).await;
                net.provide(model_key(&state.model_id)).await;
                if let Some(old) = provided.filter(|old| *old != served.span) {
                    for b in old.start()..old.end() {
                        if !served.span.contains(b) {
                            net.stop_providing(block_key(&state.model_id, b)).await;
                        }
                    }
                }
                for b in served.span.start()..served.span.end() {
                    net.provide(block_key(&state.model_id, b)).await;
                }
                for accused in state.fraud.accused_peers() {
                    net.provide(fraud_key(&state.model_id, &accused)).await;
                }
                provided = Some(served.span);
            }
        });
    }

    /// Periodically asks whether moving to other blocks would raise the swarm's bottleneck by
    /// `min_gain`, and if so loads the new blocks and switches new sessions to them.
    #[allow(clippy::too_many_arguments)]
    fn spawn_rebalancer(
        &self,
        src: Arc<ModelSource>,
        every: Duration,
        min_gain: f64,
        max_blocks: Option<u32>,
        limits: Limits,
        sessions: SessionLimits,
    ) {
        let net = self.net.clone();
        let state = self.state.clone();
        let n_blocks = self.n_blocks;
        let block_ms = self.block_ms;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let current = state.current();
                let mut all = discover_spans(&net, &state.model_id, n_blocks, &limits).await;
                let fit = max_blocks.unwrap_or(n_blocks).clamp(1, n_blocks) as usize;
                let mine = offered_throughput(block_ms, current.span);
                all.push(SpanInfo {
                    peer: net.peer_id(),
                    span: current.span,
                    throughput: mine,
                });
                let Some(new_span) = placement::planned_move(
                    n_blocks as usize,
                    &all,
                    net.peer_id(),
                    fit,
                    mine,
                    min_gain,
                ) else {
                    continue;
                };
                tracing::info!(from = %current.span, to = %new_span, "rebalancing");
                let load_src = src.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    load_src.load_slice(new_span, &LoadOptions::default(), None)
                })
                .await;
                match loaded {
                    Ok(Ok(slice)) => {
                        let server = Arc::new(SliceServer::new(Arc::new(slice), sessions.clone()));
                        *state.served.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(Served {
                                span: new_span,
                                server,
                            });
                    }
                    Ok(Err(e)) => tracing::warn!("cannot load blocks {new_span}: {e}"),
                    Err(e) => tracing::warn!("loading blocks {new_span} panicked: {e}"),
                }
            }
        });
    }

    /// Blocks served now (they change when the node rebalances).
    pub fn span(&self) -> BlockRange {
        self.state.current().span
    }

    /// Inference sessions open on this node now.
    pub fn sessions_open(&self) -> usize {
        self.state.current().server.stats().sessions
    }

    /// Pauses (`false`) or resumes (`true`) taking new sessions and announcing this node, e.g.
    /// when the energy agent gives the device to mining. Sessions already open finish.
    pub fn set_serving(&self, on: bool) {
        let was = self
            .state
            .serving
            .swap(on, std::sync::atomic::Ordering::AcqRel);
        if was != on {
            tracing::info!(
                serving = on,
                "serving {}",
                if on { "resumed" } else { "paused" }
            );
            self.state.serving_changed.notify_one();
        }
    }

    /// Whether the node takes new sessions and announces itself (see [`Node::set_serving`]).
    pub fn is_serving(&self) -> bool {
        self.state
            .serving
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

impl NodeState {
    fn current(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Tokens/s a node offers on each block of `span`: a token passes all of them in sequence.
fn offered_throughput(block_ms: f64, span: BlockRange) -> f64 {
    1000.0 / (block_ms * f64::from(span.len())).max(1e-3)
}

/// KV-cache room left on `server`, in tokens of sessions over all its blocks.
fn free_cache_tokens(server: &SliceServer) -> u64 {
    let stats = server.stats();
    stats.budget_bytes.saturating_sub(stats.reserved_bytes)
        / server.slice().cache_bytes_per_token().max(1)
}

/// Listen addresses worth telling others about (concrete ones, not `0.0.0.0`).
fn announceable(addrs: &[Multiaddr]) -> Vec<Vec<u8>> {
    addrs
        .iter()
        .filter(|a| {
            !a.iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified()))
        })
        .map(|a| a.to_vec())
        .collect()
}

/// Spans (and offered throughput) that other nodes announce for `model`.
pub(crate) async fn discover_spans(
    net: &Net,
    model: &ContentHash,
    n_blocks: u32,
    limits: &Limits,
) -> Vec<SpanInfo> {
    let me = net.peer_id();
    find_servers(net, model, n_blocks, limits)
        .await
        .into_iter()
        .filter(|(peer, _)| *peer != me)
        .map(|(peer, a)| SpanInfo {
            peer,
            span: a.span,
            throughput: f64::from(a.throughput),
        })
        .collect()
}

/// Times a few single-token steps on a scratch session: compute per block per token, in ms.
fn measure_block_ms(server: &SliceServer, hidden: usize) -> hearth_engine::Result<f64> {
    let session = server.open(16)?;
    let x = Tensor::zeros(
        (1, 1, hidden),
        hearth_engine::DType::F32,
        &hearth_engine::Device::Cpu,
    )?;
    let mut times = Vec::new();
    for pos in 0..5 {
        let t = Instant::now();
        server.step(session, pos, &x)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    server.close(session)?;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2] / f64::from(server.slice().range().len()))
}

/// The compute thread: takes every step that is waiting and runs those on the same blocks as one
/// batch.
fn compute_loop(mut rx: mpsc::Receiver<Job>) {
    let mut carry: Option<Job> = None;
    // Sessions that stepped recently (bounded by the node's session limit; pruned every round).
    let mut recent: HashMap<SessionId, Instant> = HashMap::new();
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.blocking_recv() {
                Some(j) => j,
                None => return,
            },
        };
        let server = first.server.clone();
        // Concurrent sessions' steps arrive microseconds apart; while several sessions are
        // stepping, wait a moment so they share one pass over the weights. A lone active session
        // never waits.
        let now = Instant::now();
        recent.retain(|_, t| now.duration_since(*t) < ACTIVE_WINDOW);
        recent.insert(first.session, now);
        let open = recent.len();
        let deadline = now + GATHER_WINDOW;
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) if Arc::ptr_eq(&j.server, &server) => jobs.push(j),
                Ok(j) => {
                    // Steps for other blocks (after a rebalance) go in the next batch.
                    carry = Some(j);
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty)
                    if jobs.len() < open && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_micros(20));
                }
                Err(_) => break,
            }
        }
        for j in &jobs {
            recent.insert(j.session, now);
        }
        let (steps, replies): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|j| ((j.session, j.start, j.hidden), j.reply))
            .unzip();
        let results = if steps.len() == 1 {
            steps
                .into_iter()
                .map(|(id, start, h)| server.step(id, start, &h))
                .collect()
        } else {
            server.step_batch(steps)
        };
        for (reply, result) in replies.into_iter().zip(results) {
            // The session's stream may have gone; its result is then dropped.
            let _ = reply.send(result);
        }
    }
}

/// How many of something (sessions, streams) each peer holds, with a per-peer cap.
#[derive(Clone, Default)]
struct PeerCounts(Arc<Mutex<HashMap<PeerId, usize>>>);

impl PeerCounts {
    /// One more for `peer` if it holds fewer than `max`; released when the slot drops.
    fn try_take(&self, peer: PeerId, max: usize) -> Option<PeerSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(peer).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            peer,
        })
    }
}

/// One of a peer's counted slots; released however the stream or session ends.
struct PeerSlot {
    counts: PeerCounts,
    peer: PeerId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// One [`CacheQuota`] per peer with sessions open: the sessions hold it, so it lives exactly as
/// long as the peer has any, and a peer's next session finds the same share.
struct PeerQuotas {
    limit: u64,
    shares: Mutex<HashMap<PeerId, std::sync::Weak<CacheQuota>>>,
}

impl PeerQuotas {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            shares: Mutex::new(HashMap::new()),
        }
    }

    /// `peer`'s share, the one its open sessions hold or a fresh one.
    fn of(&self, peer: PeerId) -> Arc<CacheQuota> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(share) = shares.get(&peer).and_then(std::sync::Weak::upgrade) {
            return share;
        }
        // Entries of peers whose sessions all closed are dead; drop them before the map could
        // outgrow the sessions that can be open.
        if shares.len() >= 1024 {
            shares.retain(|_, share| share.strong_count() > 0);
        }
        let share = CacheQuota::new(self.limit);
        shares.insert(peer, Arc::downgrade(&share));
        share
    }
}

struct OpenState {
    served: Arc<Served>,
    id: SessionId,
    /// Largest step frame this session can need: no more rows than its length, in its dtype.
    frame_limit: usize,
    open: OpenSession,
    _slot: PeerSlot,
    /// The last row this session returned (for the `stale` adversary).
    #[cfg(feature = "adversary")]
    last_row: LastRow,
}

/// Serves one session on one stream until the client closes it, goes idle, or breaks protocol.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    state: Arc<NodeState>,
    peer: PeerId,
    mut stream: S,
) {
    let mut session: Option<OpenState> = None;
    loop {
        // Before a session is open only a small Open fits; after, at most the largest step this
        // session can take (its length in rows × the hidden width, in its dtype).
        let max_frame = match &session {
            None => OPEN_FRAME_LIMIT,
            Some(s) => s.frame_limit,
        };
        let deadline = match &session {
            None => state.open_timeout,
            Some(_) => state.idle_timeout,
        };
        let len = match tokio::time::timeout(deadline, read_frame_len(&mut stream, max_frame)).await
        {
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "stream error: {e}");
                let reply = Response::error(ErrorCode::BadRequest, e.to_string());
                let _ = write_frame(&mut stream, &reply.encode()).await;
                break;
            }
            Err(_) => break,
        };
        // Room for the frame (and what it becomes) until its reply is sent; then the whole
        // frame within `frame_timeout`.
        let want = len.clamp(1, state.frame_budget_bytes) as u32;
        let room = state.frame_budget.clone().acquire_many_owned(want);
        let _room = match tokio::time::timeout(deadline, room).await {
            Ok(Ok(permit)) => permit,
            _ => break,
        };
        let body = read_frame_body(&mut stream, len);
        let frame = match tokio::time::timeout(state.frame_timeout, body).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "stream error: {e}");
                break;
            }
            Err(_) => {
                tracing::debug!(%peer, len, "a frame did not arrive in time");
                break;
            }
        };
        let request = match Request::decode(&frame, &state.limits) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, "malformed request: {e}");
                let reply = Response::error(ErrorCode::BadRequest, e.to_string());
                let _ = write_frame(&mut stream, &reply.encode()).await;
                break;
            }
        };
        let (reply, keep_going) = match request {
            Request::Open(open) if session.is_none() => match open_session(&state, peer, open) {
                Ok((opened, s)) => {
                    session = Some(s);
                    (Response::Opened(opened), true)
                }
                Err(reply) => (*reply, false),
            },
            Request::Open(_) => (
                Response::error(ErrorCode::BadRequest, "session already open on this stream"),
                false,
            ),
            Request::Step(step) => match &session {
                Some(s) => (run_step(&state, s, step).await, true),
                None => (
                    Response::error(ErrorCode::NotOpen, "step before open"),
                    false,
                ),
            },
            Request::Close => break,
        };
        let bytes = reply.encode();
        let write = write_frame(&mut stream, &bytes);
        let written = matches!(
            tokio::time::timeout(state.write_timeout, write).await,
            Ok(Ok(()))
        );
        if !written || !keep_going {
            break;
        }
    }
    if let Some(s) = session {
        let _ = s.served.server.close(s.id);
    }
}

/// The frame budget in semaphore permits (one per byte, at least 1, at most what a semaphore
/// holds and what one acquisition may take).
fn frame_budget_permits(bytes: usize) -> usize {
    bytes.clamp(
        1,
        (u32::MAX as usize).min(tokio::sync::Semaphore::MAX_PERMITS),
    )
}

/// Answers one fraud-proof request ([`crate::gossip`]) and closes the stream.
async fn serve_fraud_stream(
    state: &Arc<NodeState>,
    net: &Net,
    peer: PeerId,
    mut stream: libp2p::Stream,
) {
    let read = read_frame(&mut stream, state.limits.max_frame_bytes);
    let frame = match tokio::time::timeout(FRAUD_IO_TIMEOUT, read).await {
        Ok(Ok(Some(f))) => f,
        _ => return,
    };
    let reply = match FraudRequest::decode(&frame, &state.limits) {
        Err(e) => FraudReply::Refused(format!("malformed request: {e}")).encode(),
        Ok(FraudRequest::Fetch { model_id, accused }) => state
            .fraud
            .reply_for(&accused)
            .filter(|_| model_id == state.model_id)
            .map_or_else(|| FraudReply::NotFound.encode(), |r| r.to_vec()),
        Ok(FraudRequest::Submit(proof)) => match host_proof(state, net, proof).await {
            Ok(accused) => {
                tracing::warn!(%peer, %accused, "re-checked a submitted fraud proof: hosting it");
                FraudReply::Accepted.encode()
            }
            Err(why) => {
                tracing::info!(%peer, "refused a submitted fraud proof: {why}");
                FraudReply::Refused(why).encode()
            }
        },
    };
    let _ = tokio::time::timeout(FRAUD_IO_TIMEOUT, write_frame(&mut stream, &reply)).await;
}

/// Re-checks a submitted fraud proof on this node's own weights and, if it holds, hosts it and
/// provides its DHT key. Returns the accused peer, or why the proof is not hosted.
async fn host_proof(
    state: &Arc<NodeState>,
    net: &Net,
    proof: FraudProof,
) -> std::result::Result<PeerId, String> {
    let replay = Replay::of(&proof).map_err(|e| format!("not a valid signed record: {e}"))?;
    if replay.model_id != state.model_id {
        return Err(format!("about model {}, not this node's", replay.model_id));
    }
    let served = state.current();
    if replay.span.start() < served.span.start() || replay.span.end() > served.span.end() {
        return Err(format!(
            "about blocks {}; this node serves {}",
            replay.span, served.span
        ));
    }
    let accused = crate::identity::peer_of_key(&replay.node)
        .ok_or("the accused key is not an ed25519 peer id")?;
    if state.fraud.holds(&replay.node) {
        return Ok(accused);
    }
    // A proof against a key that announces nothing protects nobody and would only take room
    // here (anyone can make one against a throwaway key of their own).
    let records = net
        .get_records(announcement_key(&state.model_id, &accused))
        .await;
    let announced = pick_announcement(
        &records,
        &accused,
        &state.model_id,
        now_unix_ms(),
        &state.limits,
    )
    .ok_or("the accused announces no service of this model")?;
    // Another build computes other bits (candle's compile-time code paths): this node's
    // recomputation could blame an honest node of another class.
    if announced.announcement.build_class != state.build_class {
        return Err("the accused is of another build class; this node cannot re-check it".into());
    }
    let _permit = state
        .fraud
        .checking
        .try_acquire()
        .map_err(|_| "busy re-checking another proof")?;
    let (server, span, input) = (served.server.clone(), replay.span, replay.input.clone());
    let recomputed = tokio::task::spawn_blocking(move || recompute(&server, span, &input))
        .await
        .map_err(|e| format!("re-check stopped: {e}"))?
        .map_err(|e| format!("cannot re-check: {e}"))?;
    let c = replay.judge(&recomputed);
    if c.verdict(HONEST_TOLERANCE) == Verdict::Agrees {
        return Err(format!(
            "the recomputation agrees with the accused (worst row {:.2e} relative)",
            c.max_error
        ));
    }
    if !state.fraud.host(replay.node, accused, proof) {
        return Err("the proof is larger than this node hosts".into());
    }
    net.provide(fraud_key(&state.model_id, &accused)).await;
    Ok(accused)
}

fn open_session(
    state: &Arc<NodeState>,
    peer: PeerId,
    open: OpenSession,
) -> Result<(Opened, OpenState), Box<Response>> {
    if open.model_id != state.model_id {
        return Err(Box::new(Response::error(
            ErrorCode::NotServed,
            format!("model {} is not served here", open.model_id.short()),
        )));
    }
    if !state.serving.load(std::sync::atomic::Ordering::Acquire) {
        return Err(Box::new(Response::error(
            ErrorCode::NotServed,
            "this node is paused by its energy agent",
        )));
    }
    let served = state.current();
    // A session may use any contiguous part of the node's blocks (routes over uneven spans).
    if open.span.start() < served.span.start() || open.span.end() > served.span.end() {
        return Err(Box::new(Response::error(
            ErrorCode::NotServed,
            format!(
                "span {} requested, this node serves {}",
                open.span, served.span
            ),
        )));
    }
    let slot = state
        .sessions_per_peer
        .try_take(peer, state.max_per_peer)
        .ok_or_else(|| {
            Box::new(Response::error(
                ErrorCode::Busy,
                format!("at most {} sessions per peer", state.max_per_peer),
            ))
        })?;
    #[allow(unused_mut)]
    let mut run_span = open.span;
    #[cfg(feature = "adversary")]
    if let Some(crate::adversary::Cheat::SkipBlock) = state.adversary.map(|a| a.cheat) {
        if run_span.len() > 1 {
            run_span = BlockRange::new(run_span.start(), run_span.end() - 1)
                .map_err(|e| Box::new(Response::error(ErrorCode::Internal, e.to_string())))?;
        }
    }
    let id = served
        .server
        .open_span_in(
            open.max_len as usize,
            run_span,
            Some(state.cache_quotas.of(peer)),
        )
        .map_err(|e| Box::new(Response::error(ErrorCode::Busy, e.to_string())))?;
    tracing::info!(%peer, span = %open.span, max_len = open.max_len, "session opened");
    let free = free_cache_tokens(&served.server);
    Ok((
        Opened {
            cache_free_tokens: free,
        },
        OpenState {
            served,
            id,
            frame_limit: (STEP_HEADER_BYTES
                + (open.max_len.min(state.limits.max_rows) as usize)
                    * state.hidden_size
                    * open.dtype.bytes_per_value())
            .min(state.step_frame_limit),
            open,
            _slot: slot,
            #[cfg(feature = "adversary")]
            last_row: Arc::new(Mutex::new(None)),
        },
    ))
}

async fn run_step(state: &NodeState, s: &OpenState, step: Step) -> Response {
    if let Some(Fault::CrashAtStep(n)) = state.fault {
        let received = state
            .steps_received
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if received == n {
            eprintln!("fault injection: aborting on step {n}");
            std::process::abort();
        }
    }
    let h = step.hidden;
    if h.cols as usize != state.hidden_size || h.dtype != s.open.dtype {
        return Response::error(
            ErrorCode::BadRequest,
            format!(
                "hidden states {}×{} {} do not match this model ({} wide, session dtype {})",
                h.rows,
                h.cols,
                h.dtype.name(),
                state.hidden_size,
                s.open.dtype.name()
            ),
        );
    }
    // Scanning, widening and (below) hashing a step's states take time in proportion to the
    // frame: on the blocking pool, not on the runtime that also drives libp2p.
    let prepared = tokio::task::spawn_blocking(move || {
        if h.first_non_finite().is_some() {
            return Err(Box::new(Response::error(
                ErrorCode::BadRequest,
                "non-finite input hidden states",
            )));
        }
        let shape = (1, h.rows as usize, h.cols as usize);
        match Tensor::from_vec(h.to_f32(), shape, &hearth_engine::Device::Cpu) {
            Ok(t) => Ok((h, t)),
            Err(e) => Err(Box::new(Response::error(
                ErrorCode::Internal,
                e.to_string(),
            ))),
        }
    })
    .await;
    let (h, input) = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(reply)) => return *reply,
        Err(e) => return Response::error(ErrorCode::Internal, e.to_string()),
    };
    if !state.step_delay.is_zero() {
        tokio::time::sleep(state.step_delay).await;
    }
    let (tx, rx) = oneshot::channel();
    let job = Job {
        server: s.served.server.clone(),
        session: s.id,
        start: h.start as usize,
        hidden: input,
        reply: tx,
    };
    if state.compute.send(job).await.is_err() {
        return Response::error(ErrorCode::Internal, "compute thread stopped");
    }
    let out = match rx.await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return engine_error(e),
        Err(_) => return Response::error(ErrorCode::Internal, "compute thread stopped"),
    };
    let signer = Signer {
        key: state.identity.signing_key(),
        session: s.open.session,
        step: step.step,
        model_id: state.model_id,
        span: s.open.span,
        fault: state.fault,
        #[cfg(feature = "adversary")]
        adversary: state.adversary.map(|a| (a, s.last_row.clone())),
    };
    tokio::task::spawn_blocking(move || signer.reply(&h, &out))
        .await
        .unwrap_or_else(|e| Response::error(ErrorCode::Internal, e.to_string()))
}

/// A session's last honest output row, for the `stale` adversary.
#[cfg(feature = "adversary")]
type LastRow = Arc<Mutex<Option<Vec<f32>>>>;

/// What turns a step's computed output into the signed reply, owned so that it runs on the
/// blocking pool.
struct Signer {
    key: hearth_wire::SigningKey,
    session: hearth_wire::SessionKey,
    step: u64,
    model_id: ContentHash,
    span: BlockRange,
    fault: Option<Fault>,
    /// The way this node cheats, and the session's last honest row (for `stale`).
    #[cfg(feature = "adversary")]
    adversary: Option<(Adversary, LastRow)>,
}

impl Signer {
    /// The `StepDone` for output `out` of input `h`: states in the session's dtype, digests,
    /// commitment and signature (bent as the test fault or the adversary says).
    fn reply(self, h: &HiddenStates, out: &Tensor) -> Response {
        #[allow(unused_mut)]
        let mut values = match out
            .to_dtype(hearth_engine::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
        {
            Ok(v) => v,
            Err(e) => return Response::error(ErrorCode::Internal, e.to_string()),
        };
        #[cfg(feature = "adversary")]
        if let Some((a, last_row)) = &self.adversary {
            let mut last = last_row.lock().unwrap_or_else(|p| p.into_inner());
            let cols = h.cols as usize;
            a.apply(
                &self.session,
                h.start,
                cols,
                &h.to_f32(),
                &mut values,
                &mut last,
            );
        }
        let mut output = HiddenStates::from_f32(h.dtype, h.start, h.rows, h.cols, &values);
        let mut body = ReceiptBody {
            session: self.session,
            step: self.step,
            model_id: self.model_id,
            span: self.span,
            input: h.digest(),
            output: output.digest(),
            start: h.start,
            commitment: ActivationCommitment::of(&output),
        };
        match self.fault {
            Some(Fault::BadSignature) => body.output = ContentHash::of(b"not what was computed"),
            Some(Fault::NonFinite) => {
                output = HiddenStates::from_f32(
                    h.dtype,
                    h.start,
                    h.rows,
                    h.cols,
                    &vec![f32::NAN; values.len()],
                );
                // The commitment stays the honest rows' (a NaN sketch would not even decode):
                // the client must catch the states themselves.
                body.output = output.digest();
            }
            Some(Fault::WrongShape) if h.rows > 1 => {
                output.rows -= 1;
                output
                    .data
                    .truncate(output.data.len() - h.dtype.bytes_per_value() * h.cols as usize);
                body.output = output.digest();
            }
            Some(Fault::WrongShape) => {
                output.cols -= 1;
                output
                    .data
                    .truncate(output.data.len() - h.dtype.bytes_per_value());
                body.output = output.digest();
            }
            Some(Fault::CrashAtStep(_)) | None => {}
        }
        let receipt = body.sign(&self.key);
        Response::StepDone(StepDone {
            step: self.step,
            hidden: output,
            receipt,
        })
    }
}

fn engine_error(e: EngineError) -> Response {
    let code = match e {
        EngineError::UnknownSession(_) => ErrorCode::NotOpen,
        EngineError::HiddenShape { .. }
        | EngineError::PositionGap { .. }
        | EngineError::SessionFull { .. } => ErrorCode::BadRequest,
        // The session could not grow within the node's cache budget: try another server.
        EngineError::CacheBudget { .. } | EngineError::CacheQuota { .. } => ErrorCode::Busy,
        _ => ErrorCode::Internal,
    };
    Response::error(code, e.to_string())
}
