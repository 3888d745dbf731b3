//! The client side: discover servers of a model, route a chain over them, and run hidden states
//! through it with signed, checked hops and failover that does not change the output.
//!
//! How a chain gives up (the [`SwarmError`] a generation ends with):
//! - routing (at the first step, or for a failed hop's blocks) finds a gap no known server
//!   covers → [`SwarmError::NoCoverage`]; only servers this chain banned cover some blocks →
//!   [`SwarmError::NoRoute`] (both after waiting `cover_timeout` for the swarm to change);
//! - a hop caught misbehaving that no other server can replace →
//!   [`SwarmError::PeerMisbehaved`], the cause rather than the missing route;
//! - replacements were found but each failed in turn, or one step needed more than
//!   `MAX_FAILOVERS_PER_STEP` failovers → [`SwarmError::HopsExhausted`], whose last failure is
//!   a hop's [`SwarmError::PeerMisbehaved`], [`SwarmError::Unreachable`] or
//!   [`SwarmError::Timeout`]. An unreachable or slow node stays a last-resort candidate (after
//!   `UNREACHABLE_BACKOFF`, so that a node that joins meanwhile is preferred to retrying a dead
//!   one at once), so those two reach the caller only this way.

use crate::dht::find_servers;
use crate::error::{Result, SwarmError};
use crate::identity::{public_key_of, NodeIdentity};
use crate::net::{Net, NetConfig};
use crate::routing::{find_route, Hop, RouteError, RouteMode, RouteRequest, ServerView};
use hearth_core::{BlockRange, ContentHash};
use hearth_engine::{EngineError, HiddenStage, Tensor};
use hearth_wire::{
    read_frame, write_frame, Announcement, HiddenDType, HiddenStates, Limits, OpenSession, Receipt,
    ReceiptBody, Request, Response, SessionKey, Step, INFERENCE_PROTOCOL,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of a [`SwarmClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Network settings; by default a loopback listener and no DHT serving.
    pub net: NetConfig,
    /// Longest wait for one step's answer before the node counts as failed.
    pub step_timeout: Duration,
    /// Longest wait for the swarm to cover every block (at start and during failover).
    pub cover_timeout: Duration,
    /// What routes optimise: one stream's latency or many streams' throughput.
    pub mode: RouteMode,
    /// Element type of the hidden states sent to nodes.
    pub dtype: HiddenDType,
    /// Caps on what a node's messages and DHT records may make the client allocate.
    pub limits: Limits,
    /// RTT assumed for a server not yet pinged.
    pub default_rtt: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            net: NetConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")],
                dht_server: false,
                ..NetConfig::default()
            },
            step_timeout: Duration::from_secs(30),
            cover_timeout: Duration::from_secs(30),
            mode: RouteMode::Latency,
            dtype: HiddenDType::F16,
            limits: Limits::default(),
            default_rtt: Duration::from_millis(2),
        }
    }
}

/// A server of the model as the client sees it.
#[derive(Clone, Debug)]
pub struct ServerEntry {
    /// The server's peer id.
    pub peer: PeerId,
    /// Its verified DHT record: blocks served, speed, cache room, load, addresses.
    pub announcement: Announcement,
    /// Round trip the client measured to it; `None` = not pinged yet.
    pub rtt: Option<Duration>,
}

/// A handle on the swarm for generating through it. Cheap to clone.
#[derive(Clone)]
pub struct SwarmClient {
    net: Net,
    cfg: Arc<ClientConfig>,
    runtime: tokio::runtime::Handle,
}

impl SwarmClient {
    /// Joins the network with a fresh identity (clients need no persistent name).
    pub async fn start(cfg: ClientConfig) -> Result<Self> {
        let net = Net::start(&NodeIdentity::generate(), cfg.net.clone()).await?;
        Ok(Self {
            net,
            cfg: Arc::new(cfg),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The client's handle on the network.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Every server that currently announces `model` with a valid, unexpired record.
    pub async fn servers(&self, model: &ContentHash, n_blocks: u32) -> Vec<ServerEntry> {
        let found = find_servers(&self.net, model, n_blocks, &self.cfg.limits).await;
        for (peer, a) in &found {
            let addrs: Vec<Multiaddr> = a
                .addrs
                .iter()
                .filter_map(|b| Multiaddr::try_from(b.clone()).ok())
                .collect();
            self.net.dial(*peer, addrs).await;
        }
        let status = self.net.status().await;
        let mut out: Vec<ServerEntry> = found
            .into_iter()
            .map(|(peer, announcement)| ServerEntry {
                peer,
                rtt: status.rtts.get(&peer).copied(),
                announcement,
            })
            .collect();
        out.sort_by_key(|s| (s.announcement.span.start(), s.peer));
        out
    }

    /// Waits until the servers of `model` cover every block. After `cover_timeout` fails with
    /// [`SwarmError::NoCoverage`] naming the first gap; `n_blocks == 0` is
    /// [`SwarmError::InvalidInput`].
    pub async fn wait_for_coverage(
        &self,
        model: &ContentHash,
        n_blocks: u32,
    ) -> Result<Vec<ServerEntry>> {
        let deadline = Instant::now() + self.cfg.cover_timeout;
        let full = BlockRange::full(n_blocks)?;
        loop {
            let servers = self.servers(model, n_blocks).await;
            let views = views(&servers, &self.cfg);
            let none = HashSet::new();
            let req = RouteRequest {
                range: full,
                need_tokens: 0,
                banned: &none,
                mode: self.cfg.mode,
            };
            match find_route(&views, &req) {
                Ok(_) => return Ok(servers),
                Err(RouteError::Uncovered { blocks }) if Instant::now() >= deadline => {
                    tracing::debug!(
                        model = %model.short(),
                        servers = servers.len(),
                        waited = ?self.cfg.cover_timeout,
                        "the swarm does not cover the model"
                    );
                    return Err(SwarmError::NoCoverage { blocks });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// A chain over the whole model for one generation of up to `max_len` positions. Routing
    /// happens at the first step.
    pub fn chain(&self, model: ContentHash, n_blocks: u32, max_len: usize) -> SwarmChain {
        let mut session = [0u8; 16];
        session.copy_from_slice(&NodeIdentity::generate().public_key()[..16]);
        SwarmChain {
            client: self.clone(),
            model,
            n_blocks,
            max_len,
            session,
            hops: Vec::new(),
            servers: Vec::new(),
            banned: HashSet::new(),
            unreachable: HashMap::new(),
            log: Arc::new(Mutex::new(ChainLog::default())),
        }
    }
}

fn views(servers: &[ServerEntry], cfg: &ClientConfig) -> Vec<ServerView> {
    servers
        .iter()
        .map(|s| ServerView {
            peer: s.peer,
            span: s.announcement.span,
            block_ms: f64::from(s.announcement.block_ms),
            rtt_ms: s.rtt.unwrap_or(cfg.default_rtt).as_secs_f64() * 1000.0,
            cache_free_tokens: s.announcement.cache_free_tokens,
            load: s.announcement.active_sessions,
        })
        .collect()
}

/// Why a hop was abandoned.
#[derive(Clone, Debug)]
pub struct Failover {
    /// The abandoned node (banned for the rest of the chain if it misbehaved).
    pub peer: PeerId,
    /// The blocks it was running.
    pub range: BlockRange,
    /// The hop failure that caused it.
    pub reason: String,
    /// Time from detection to the replacement being ready (replay included).
    pub recovery: Duration,
    /// Positions replayed into the replacement.
    pub replayed_tokens: usize,
}

/// What a chain did: its current route, every verified receipt, every failover.
#[derive(Clone, Debug, Default)]
pub struct ChainLog {
    /// The hops in block order, as they are now (after any failovers); empty before routing.
    pub route: Vec<(PeerId, BlockRange)>,
    /// Each verified receipt with the node that signed it, in the order received.
    pub receipts: Vec<(PeerId, Receipt)>,
    /// Every hop abandoned so far, oldest first.
    pub failovers: Vec<Failover>,
    /// Time spent waiting on hops (network + remote compute), summed over every step.
    pub hop_time: Duration,
    /// Answered steps and the time spent waiting on them, per node.
    pub per_node: HashMap<PeerId, NodeTiming>,
}

/// How long one node took to answer this chain's steps.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeTiming {
    /// Steps the node answered.
    pub steps: u64,
    /// Time spent waiting on those answers (network + remote compute), summed.
    pub total: Duration,
}

struct HopState {
    peer: PeerId,
    range: BlockRange,
    node_key: [u8; 32],
    stream: Option<libp2p::Stream>,
    next_step: u64,
    /// Every input sent and answered, in order: what a replacement must replay.
    history: Vec<HiddenStates>,
}

/// The swarm as one [`HiddenStage`] covering every block: the generation loop drives it exactly
/// as it drives local slices.
pub struct SwarmChain {
    client: SwarmClient,
    model: ContentHash,
    n_blocks: u32,
    max_len: usize,
    session: SessionKey,
    hops: Vec<HopState>,
    servers: Vec<ServerEntry>,
    /// Nodes caught misbehaving: never used again by this chain.
    banned: HashSet<PeerId>,
    /// Nodes that failed to answer: avoided while anything else covers their blocks.
    /// When each was last found unreachable.
    unreachable: HashMap<PeerId, Instant>,
    log: Arc<Mutex<ChainLog>>,
}

/// How long a node that failed to answer is skipped before it may be retried as a last resort.
const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(2);

/// Failovers one step may go through before the generation gives up.
const MAX_FAILOVERS_PER_STEP: usize = 8;

impl SwarmChain {
    /// Shared view of the route, receipts and failovers (readable while or after generating).
    pub fn log(&self) -> Arc<Mutex<ChainLog>> {
        self.log.clone()
    }

    fn log_mut(&self) -> std::sync::MutexGuard<'_, ChainLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_route(&self) {
        let route = self.hops.iter().map(|h| (h.peer, h.range)).collect();
        self.log_mut().route = route;
    }

    /// Routes `range` over known servers minus banned ones, refreshing the server list (and
    /// waiting for coverage) when needed. Nodes that were only unreachable (not caught
    /// misbehaving) are allowed again as a last resort once `UNREACHABLE_BACKOFF` has passed: a
    /// dropped connection may be transient, but a node that just died is better waited out.
    async fn route(&mut self, range: BlockRange) -> Result<Vec<Hop>> {
        let deadline = Instant::now() + self.client.cfg.cover_timeout;
        let mut refreshed = false;
        let none = HashSet::new();
        loop {
            let views = views(&self.servers, &self.client.cfg);
            let failed: HashSet<PeerId> = self
                .banned
                .iter()
                .chain(self.unreachable.keys())
                .copied()
                .collect();
            // Unreachable nodes again, but only once they have had time to come back: right
            // after a node dies, its record outlives it and retrying it would only burn the
            // failover attempts while a replacement may be joining.
            let recently_failed: HashSet<PeerId> = self
                .banned
                .iter()
                .chain(
                    self.unreachable
                        .iter()
                        .filter(|(_, at)| at.elapsed() < UNREACHABLE_BACKOFF)
                        .map(|(p, _)| p),
                )
                .copied()
                .collect();
            let request = |banned| RouteRequest {
                range,
                need_tokens: self.max_len as u64,
                banned,
                mode: self.client.cfg.mode,
            };
            let result = find_route(&views, &request(&failed))
                .or_else(|_| find_route(&views, &request(&recently_failed)));
            match result {
                Ok(route) => return Ok(route.hops),
                Err(RouteError::Uncovered { blocks })
                    if refreshed && Instant::now() >= deadline =>
                {
                    // A gap even with banned servers counted is missing coverage; otherwise the
                    // banned servers are all that cover `blocks`.
                    return Err(match find_route(&views, &request(&none)) {
                        Err(RouteError::Uncovered { blocks }) => SwarmError::NoCoverage { blocks },
                        Ok(_) => SwarmError::NoRoute { blocks },
                    });
                }
                Err(_) => {
                    if refreshed {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    self.servers = self.client.servers(&self.model, self.n_blocks).await;
                    refreshed = true;
                }
            }
        }
    }

    fn new_hop(&self, hop: Hop) -> Result<HopState> {
        // Announcements are accepted only from the peer their ed25519 key names (dht.rs).
        let node_key = public_key_of(&hop.peer).ok_or_else(|| {
            SwarmError::Internal(format!("peer {} has no inline ed25519 key", hop.peer))
        })?;
        Ok(HopState {
            peer: hop.peer,
            range: hop.range,
            node_key,
            stream: None,
            next_step: 0,
            history: Vec::new(),
        })
    }

    fn step_context(&self) -> StepContext {
        StepContext {
            net: self.client.net.clone(),
            cfg: self.client.cfg.clone(),
            model: self.model,
            session: self.session,
            max_len: self.max_len,
        }
    }

    /// Runs one step on `hop` and records its receipt and timing.
    async fn step_hop(
        ctx: &StepContext,
        log: &Mutex<ChainLog>,
        hop: &mut HopState,
        input: &HiddenStates,
    ) -> Result<HiddenStates, HopFailure> {
        let started = Instant::now();
        let (out, receipt) = step_on(hop, ctx, input).await?;
        let took = started.elapsed();
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.hop_time += took;
        let timing = log.per_node.entry(hop.peer).or_default();
        timing.steps += 1;
        timing.total += took;
        log.receipts.push((hop.peer, receipt));
        Ok(out)
    }

    /// Replaces hop `i` after `failure`: bans its node, routes its blocks over other nodes,
    /// replays its input history into them so their caches match, and splices them in only once
    /// they are ready. A replacement that fails during replay is banned in turn and another is
    /// tried. The module docs say which error ends the generation when this fails.
    async fn fail_over(&mut self, i: usize, failure: HopFailure) -> Result<()> {
        let started = Instant::now();
        let (peer, range) = (self.hops[i].peer, self.hops[i].range);
        tracing::warn!(%peer, %range, "hop failed: {failure}");
        self.ban(peer, &failure);
        let reason = failure.to_string();
        let history = std::mem::take(&mut self.hops[i].history);
        let replayed_tokens = history.iter().map(|h| h.rows as usize).sum();
        let mut last = failure.into_error(peer);
        for attempt in 0..MAX_FAILOVERS_PER_STEP {
            let hops = match self.route(range).await {
                Ok(h) => h,
                Err(e) => {
                    self.hops[i].history = history;
                    tracing::warn!(%range, "no replacement: {e}");
                    return Err(match last {
                        // Nothing replaced the misbehaving hop: its bad data is the cause.
                        SwarmError::PeerMisbehaved { .. } if attempt == 0 => last,
                        _ if attempt == 0 => e,
                        _ => SwarmError::HopsExhausted {
                            blocks: range,
                            failovers: attempt,
                            last: Box::new(last),
                        },
                    });
                }
            };
            let mut new: Vec<HopState> = hops
                .into_iter()
                .map(|h| self.new_hop(h))
                .collect::<Result<_>>()?;
            // Replay as one prefill per hop: the whole cached prefix in a single step.
            let mut replay_failed = None;
            let ctx = self.step_context();
            if let Some(mut x) = merge(&history) {
                for hop in new.iter_mut() {
                    match Self::step_hop(&ctx, &self.log, hop, &x).await {
                        Ok(out) => x = out,
                        Err(f) => {
                            replay_failed = Some((hop.peer, f));
                            break;
                        }
                    }
                }
            }
            if let Some((bad, f)) = replay_failed {
                tracing::warn!(peer = %bad, "replacement failed during replay: {f}");
                self.ban(bad, &f);
                last = f.into_error(bad);
                continue;
            }
            // Each replacement's history now holds the (merged) inputs the replay sent it.
            self.hops.splice(i..=i, new);
            self.publish_route();
            self.log_mut().failovers.push(Failover {
                peer,
                range,
                reason,
                recovery: started.elapsed(),
                replayed_tokens,
            });
            return Ok(());
        }
        self.hops[i].history = history;
        Err(SwarmError::HopsExhausted {
            blocks: range,
            failovers: MAX_FAILOVERS_PER_STEP,
            last: Box::new(last),
        })
    }

    fn ban(&mut self, peer: PeerId, failure: &HopFailure) {
        if failure.is_misbehaviour() {
            self.banned.insert(peer);
        } else {
            self.unreachable.insert(peer, Instant::now());
        }
    }

    /// Runs `input` through every block (routing at the first call, failing over as needed).
    /// The async form of [`HiddenStage::forward`], for callers that drive many chains at once.
    /// The module docs say which [`SwarmError`] a chain gives up with.
    pub async fn forward_hidden(&mut self, input: HiddenStates) -> Result<HiddenStates> {
        if self.hops.is_empty() {
            let hops = self.route(BlockRange::full(self.n_blocks)?).await?;
            self.hops = hops
                .into_iter()
                .map(|h| self.new_hop(h))
                .collect::<Result<_>>()?;
            self.publish_route();
        }
        let mut x = input;
        let mut i = 0;
        let mut failovers = 0;
        let ctx = self.step_context();
        while i < self.hops.len() {
            let result = Self::step_hop(&ctx, &self.log, &mut self.hops[i], &x).await;
            match result {
                Ok(out) => {
                    x = out;
                    i += 1;
                }
                Err(failure) => {
                    failovers += 1;
                    if failovers > MAX_FAILOVERS_PER_STEP {
                        let hop = &self.hops[i];
                        return Err(SwarmError::HopsExhausted {
                            blocks: hop.range,
                            failovers: MAX_FAILOVERS_PER_STEP,
                            last: Box::new(failure.into_error(hop.peer)),
                        });
                    }
                    // Hop i is replaced (possibly by several hops); retry from it.
                    self.fail_over(i, failure).await?;
                }
            }
        }
        Ok(x)
    }
}

/// Why a hop failed, before it is tied to its peer: whether the node broke the protocol
/// (banned for good) or was only unreachable or slow (may be retried when nothing else covers
/// its blocks). The reason is kept bare for [`Failover::reason`].
#[derive(Debug)]
enum HopFailure {
    Misbehaved(String),
    Unreachable(String),
    TimedOut(Duration),
}

impl HopFailure {
    fn misbehaved(reason: impl Into<String>) -> Self {
        Self::Misbehaved(reason.into())
    }

    fn unreachable(reason: impl Into<String>) -> Self {
        Self::Unreachable(reason.into())
    }

    fn is_misbehaviour(&self) -> bool {
        matches!(self, Self::Misbehaved(_))
    }

    fn into_error(self, peer: PeerId) -> SwarmError {
        match self {
            Self::Misbehaved(reason) => SwarmError::PeerMisbehaved { peer, reason },
            Self::Unreachable(reason) => SwarmError::Unreachable { peer, reason },
            Self::TimedOut(after) => SwarmError::Timeout { peer, after },
        }
    }
}

impl std::fmt::Display for HopFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Misbehaved(reason) | Self::Unreachable(reason) => f.write_str(reason),
            Self::TimedOut(after) => write!(f, "no answer within {after:?}"),
        }
    }
}

/// What one step needs besides the hop itself.
struct StepContext {
    net: Net,
    cfg: Arc<ClientConfig>,
    model: ContentHash,
    session: SessionKey,
    max_len: usize,
}

/// Attempts at opening a session stream before the node counts as unreachable. libp2p-stream
/// drops inbound streams that arrive while its one-slot accept queue is full, which happens when
/// many sessions open at once; nothing reached the node then, so trying again is safe.
const OPEN_ATTEMPTS: u32 = 4;

/// Opens a stream to the hop's node and a session on it.
async fn open_session(hop: &HopState, ctx: &StepContext) -> Result<libp2p::Stream, HopFailure> {
    let cfg = &ctx.cfg;
    let open = Request::Open(OpenSession {
        session: ctx.session,
        model_id: ctx.model,
        span: hop.range,
        max_len: ctx.max_len as u32,
        dtype: cfg.dtype,
    })
    .encode();
    let mut last = String::new();
    for attempt in 0..OPEN_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(2 << attempt)).await;
        }
        let mut control = ctx.net.control();
        let mut stream = match control
            .open_stream(hop.peer, StreamProtocol::new(INFERENCE_PROTOCOL))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                last = format!("cannot open a stream: {e}");
                continue;
            }
        };
        if let Err(e) = write_frame(&mut stream, &open).await {
            last = e.to_string();
            continue;
        }
        match read_response(&mut stream, &cfg.limits).await {
            Ok(Response::Opened(_)) => return Ok(stream),
            Ok(Response::Error(e)) => {
                return Err(HopFailure::unreachable(format!(
                    "refused the session: {:?}: {}",
                    e.code, e.message
                )))
            }
            Ok(other) => {
                return Err(HopFailure::misbehaved(format!(
                    "answered open with {other:?}"
                )))
            }
            Err(f) if f.is_misbehaviour() => return Err(f),
            Err(f) => last = f.to_string(),
        }
    }
    Err(HopFailure::unreachable(last))
}

/// One step on `hop`: open the session if needed, send, await, and check shape, finiteness and
/// the signed receipt.
async fn step_on(
    hop: &mut HopState,
    ctx: &StepContext,
    input: &HiddenStates,
) -> Result<(HiddenStates, Receipt), HopFailure> {
    let cfg = &ctx.cfg;
    let result = tokio::time::timeout(cfg.step_timeout, async {
        if hop.stream.is_none() {
            hop.stream = Some(open_session(hop, ctx).await?);
        }
        let Some(stream) = hop.stream.as_mut() else {
            return Err(HopFailure::unreachable("no stream"));
        };
        let step = hop.next_step;
        let request = Request::Step(Step {
            step,
            hidden: input.clone(),
        });
        write_frame(stream, &request.encode())
            .await
            .map_err(|e| HopFailure::unreachable(e.to_string()))?;
        let done = match read_response(stream, &cfg.limits).await? {
            Response::StepDone(d) => d,
            Response::Error(e) => {
                return Err(HopFailure::misbehaved(format!(
                    "step failed: {:?}: {}",
                    e.code, e.message
                )))
            }
            other => {
                return Err(HopFailure::misbehaved(format!(
                    "answered a step with {other:?}"
                )))
            }
        };
        let out = done.hidden;
        if done.step != step
            || out.rows != input.rows
            || out.cols != input.cols
            || out.start != input.start
            || out.dtype != input.dtype
        {
            return Err(HopFailure::misbehaved(format!(
                "malformed answer: step {} {}×{} at {} (sent step {step} {}×{} at {})",
                done.step, out.rows, out.cols, out.start, input.rows, input.cols, input.start
            )));
        }
        if let Some((r, c)) = out.first_non_finite() {
            return Err(HopFailure::misbehaved(format!(
                "non-finite hidden state at row {r}, column {c}"
            )));
        }
        let expected = ReceiptBody {
            session: ctx.session,
            step,
            model_id: ctx.model,
            span: hop.range,
            input: input.digest(),
            output: out.digest(),
        };
        done.receipt
            .verify_from(&hop.node_key, &expected)
            .map_err(|e| HopFailure::misbehaved(e.to_string()))?;
        Ok((out, done.receipt))
    })
    .await;
    let (out, receipt) = match result {
        Ok(r) => r?,
        Err(_) => {
            // The stream is in an unknown state; a retry must start a fresh session.
            hop.stream = None;
            return Err(HopFailure::TimedOut(cfg.step_timeout));
        }
    };
    hop.next_step += 1;
    hop.history.push(input.clone());
    Ok((out, receipt))
}

/// Concatenates consecutive steps into one (positions must follow on).
fn merge(history: &[HiddenStates]) -> Option<HiddenStates> {
    let first = history.first()?;
    let mut out = first.clone();
    for h in &history[1..] {
        if h.start == out.start + out.rows {
            out.rows += h.rows;
            out.data.extend_from_slice(&h.data);
        } else {
            // A rewind: the later step overwrote positions from h.start on.
            let keep = (h.start.saturating_sub(out.start)) as usize
                * out.cols as usize
                * out.dtype.bytes_per_value();
            out.data.truncate(keep);
            out.rows = h.start.saturating_sub(out.start);
            out.rows += h.rows;
            out.data.extend_from_slice(&h.data);
        }
    }
    Some(out)
}

async fn read_response(
    stream: &mut libp2p::Stream,
    limits: &Limits,
) -> Result<Response, HopFailure> {
    let frame = read_frame(stream, limits.max_frame_bytes)
        .await
        .map_err(|e| HopFailure::unreachable(e.to_string()))?
        .ok_or_else(|| HopFailure::unreachable("the node closed the stream"))?;
    Response::decode(&frame, limits).map_err(|e| HopFailure::misbehaved(e.to_string()))
}

impl HiddenStage for SwarmChain {
    fn forward(&mut self, start: usize, hidden: &Tensor) -> hearth_engine::Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let (rows, cols) = match dims.as_slice() {
            [1, t, h] => (*t, *h),
            [t, h] => (*t, *h),
            _ => {
                return Err(EngineError::HiddenShape {
                    got: dims,
                    hidden: 0,
                })
            }
        };
        let values = hidden
            .to_dtype(hearth_engine::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())?;
        let input = HiddenStates::from_f32(
            self.client.cfg.dtype,
            start as u32,
            rows as u32,
            cols as u32,
            &values,
        );
        let runtime = self.client.runtime.clone();
        let out = runtime
            .block_on(self.forward_hidden(input))
            .map_err(|e| EngineError::Remote(Box::new(e)))?;
        let t = Tensor::from_vec(out.to_f32(), (1, rows, cols), hidden.device())?;
        Ok(t.to_dtype(hidden.dtype())?)
    }

    fn describe(&self) -> String {
        let route: Vec<String> = self
            .hops
            .iter()
            .map(|h| format!("{} {}", short_peer(&h.peer), h.range))
            .collect();
        format!("swarm [{}]", route.join(" → "))
    }
}

/// The last 8 characters of a peer id: enough to tell nodes apart in output.
pub fn short_peer(peer: &PeerId) -> String {
    let s = peer.to_string();
    s[s.len().saturating_sub(8)..].to_string()
}

impl Drop for SwarmChain {
    fn drop(&mut self) {
        // Closing the streams lets nodes free the sessions at once instead of at idle expiry.
        for hop in &mut self.hops {
            if let Some(mut s) = hop.stream.take() {
                let runtime = self.client.runtime.clone();
                runtime.spawn(async move {
                    let _ = write_frame(&mut s, &Request::Close.encode()).await;
                    let _ = futures::AsyncWriteExt::close(&mut s).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SwarmErrorKind;

    fn lone_client_config() -> ClientConfig {
        let mut cfg = ClientConfig::default();
        cfg.net.mdns = false;
        cfg.cover_timeout = Duration::from_millis(200);
        cfg
    }

    #[tokio::test]
    async fn an_empty_swarm_is_no_coverage_of_every_block_and_zero_blocks_is_invalid() {
        let client = SwarmClient::start(lone_client_config()).await.unwrap();
        let model = ContentHash::of(b"no such model");
        let err = client.wait_for_coverage(&model, 0).await.unwrap_err();
        assert_eq!(err.kind(), SwarmErrorKind::InvalidInput, "{err}");
        let err = client.wait_for_coverage(&model, 4).await.unwrap_err();
        assert!(
            matches!(err, SwarmError::NoCoverage { blocks } if blocks == BlockRange::new(0, 4).unwrap()),
            "{err}"
        );
        // A chain over it gives up the same way at its first step.
        let mut chain = client.chain(model, 4, 8);
        let x = HiddenStates::from_f32(HiddenDType::F16, 0, 1, 4, &[0.5; 4]);
        let err = chain.forward_hidden(x).await.unwrap_err();
        assert_eq!(err.kind(), SwarmErrorKind::NoCoverage, "{err}");
    }
}
