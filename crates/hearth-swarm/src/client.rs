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
//!   one at once), so those two reach the caller only this way. A node that cannot be dialled
//!   at all is dropped for the rest of the chain: its DHT record may outlive it for a whole TTL,
//!   and retrying it would only burn failover attempts.
//!
//! Membership is read again while a chain runs (issue #19): its server list is refreshed from
//! the DHT in the background between steps once it is `SERVER_LIST_MAX_AGE` old, and by a
//! failover that finds no route in it, so a node that joined after the chain was built can
//! replace a failed hop or check one.

use crate::dht::{find_servers, fraud_key};
use crate::error::{Result, SwarmError};
use crate::identity::{public_key_of, NodeIdentity};
use crate::net::{Net, NetConfig};
use crate::routing::{find_route, Hop, RouteError, RouteMode, RouteRequest, ServerView};
use hearth_core::{BlockRange, ContentHash};
use hearth_engine::{EngineError, HiddenStage, Tensor};
use hearth_verify::compare::compare_rows;
use hearth_verify::{
    check_chain, LinkError, Replay, Reputation, SpotCheckPolicy, SpotSeed, Standing, Verdict,
};
use hearth_wire::{
    read_frame, write_frame, ActivationCommitment, Announcement, FraudProof, FraudReply,
    FraudRequest, HiddenDType, HiddenStates, Limits, OpenSession, ProvenStep, Receipt, ReceiptBody,
    Request, Response, SessionKey, Step, FRAUD_PROTOCOL, INFERENCE_PROTOCOL,
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
    /// Spot checks: how often each node's windows are re-executed on another server of the same
    /// blocks (`None`: never). Checks need a second server for the blocks; without one a window
    /// is recorded as unchecked.
    pub spot_checks: Option<SpotCheckPolicy>,
    /// Largest worst-row relative error a re-execution may show before the node is suspected.
    pub tolerance: f64,
    /// Where node reputations persist between runs (JSON; `None`: this process only). A node
    /// caught cheating stays excluded for every later chain that reads the file.
    pub reputation_file: Option<std::path::PathBuf>,
    /// With spot checks on, never route through a node no other server can check (no server
    /// of its build class covers its blocks): a generation waits or fails instead. Without it
    /// such nodes are used only when no route avoids them.
    pub require_verifiable: bool,
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
            spot_checks: Some(SpotCheckPolicy::default()),
            tolerance: hearth_verify::HONEST_TOLERANCE,
            reputation_file: None,
            require_verifiable: false,
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
    /// What this client observed of each node, shared by all its chains.
    reputations: Arc<Mutex<HashMap<PeerId, Reputation>>>,
    /// Which servers were last looked up for gossiped fraud proofs, and proofs that did not hold.
    fraud_watch: Arc<Mutex<FraudWatch>>,
    /// The latest server list of each (model, block count) and when its lookup started: chains
    /// that follow membership take it instead of each looking up the same list.
    latest_servers: Arc<Mutex<LatestServers>>,
    /// Nodes no stream could be opened to, with the issue time of the newest announcement seen
    /// from them then: left out of every lookup until they announce again, so each of the
    /// client's chains does not pay its own failed dial for a record that outlives its node.
    departed: Arc<Mutex<HashMap<PeerId, u64>>>,
}

/// Per (model, block count): when the latest lookup of its servers started, and what it found.
type LatestServers = HashMap<(ContentHash, u32), (Instant, Vec<ServerEntry>)>;

/// A client's memory of gossiped fraud proofs ([`crate::gossip`]).
#[derive(Default)]
struct FraudWatch {
    /// When each server was last looked up.
    looked: HashMap<PeerId, Instant>,
    /// Digests of fetched proofs whose re-check agreed with the accused: never re-checked.
    rejected: HashSet<ContentHash>,
}

/// How often one server is looked up again for a fraud proof against it.
const FRAUD_LOOKUP_INTERVAL: Duration = Duration::from_secs(60);
/// Most hosts a caught node's proof is submitted to (each re-checks it).
const FRAUD_SPREAD: usize = 3;
/// Most hosts asked for one gossiped proof.
const FRAUD_FETCH_TRIES: usize = 3;

impl SwarmClient {
    /// Joins the network with a fresh identity (clients need no persistent name).
    pub async fn start(cfg: ClientConfig) -> Result<Self> {
        let net = Net::start(&NodeIdentity::generate(), cfg.net.clone()).await?;
        let reputations = cfg
            .reputation_file
            .as_deref()
            .map(load_reputations)
            .unwrap_or_default();
        Ok(Self {
            net,
            cfg: Arc::new(cfg),
            runtime: tokio::runtime::Handle::current(),
            reputations: Arc::new(Mutex::new(reputations)),
            fraud_watch: Arc::default(),
            latest_servers: Arc::default(),
            departed: Arc::default(),
        })
    }

    /// Writes the reputations to [`ClientConfig::reputation_file`], if any (atomically: a
    /// temporary file renamed over the old one). Chains call it when they end.
    pub fn save_reputations(&self) {
        let Some(path) = &self.cfg.reputation_file else {
            return;
        };
        let map: std::collections::BTreeMap<String, Reputation> = self
            .reputations()
            .iter()
            .map(|(p, r)| (p.to_string(), *r))
            .collect();
        let result = serde_json::to_vec_pretty(&map)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, path)
            });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), "cannot save node reputations: {e}");
        }
    }

    /// What this client has observed of `peer` (checked windows, measured latency).
    pub fn reputation(&self, peer: &PeerId) -> Reputation {
        self.reputations().get(peer).copied().unwrap_or_default()
    }

    fn reputations(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Reputation>> {
        self.reputations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client's handle on the network.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The settings it was started with.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Every server that currently announces `model` with a valid, unexpired record.
    pub async fn servers(&self, model: &ContentHash, n_blocks: u32) -> Vec<ServerEntry> {
        let started = Instant::now();
        let mut found = find_servers(&self.net, model, n_blocks, &self.cfg.limits).await;
        {
            let mut departed = self.departed();
            found.retain(|(peer, a)| match departed.get(peer) {
                Some(&seen) if a.issued_unix_ms <= seen => false,
                Some(_) => {
                    // Announced again since: back (a restart keeps its identity).
                    departed.remove(peer);
                    true
                }
                None => true,
            });
        }
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
        self.absorb_fraud_proofs(model, n_blocks, &out).await;
        let mut latest = self.latest_servers();
        let entry = latest
            .entry((*model, n_blocks))
            .or_insert_with(|| (started, Vec::new()));
        if entry.0 <= started {
            *entry = (started, out.clone());
        }
        out
    }

    fn departed(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, u64>> {
        self.departed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that no stream could be opened to `peer`, whose newest announcement seen was
    /// issued at `issued_unix_ms`: lookups leave it out until it announces again.
    fn note_departed(&self, peer: PeerId, issued_unix_ms: u64) {
        let mut departed = self.departed();
        // No record lives longer than the TTL cap: older entries can no longer match one.
        let oldest = crate::dht::now_unix_ms()
            .saturating_sub(u64::from(crate::dht::MAX_ANNOUNCEMENT_TTL_SECS) * 1000);
        departed.retain(|_, seen| *seen >= oldest);
        let seen = departed.entry(peer).or_insert(issued_unix_ms);
        *seen = (*seen).max(issued_unix_ms);
    }

    fn latest_servers(&self) -> std::sync::MutexGuard<'_, LatestServers> {
        self.latest_servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Looks up gossiped fraud proofs against `servers` (each at most every
    /// `FRAUD_LOOKUP_INTERVAL`); re-checks each one found by re-executing its positions on other
    /// servers, and excludes the accused when it holds.
    async fn absorb_fraud_proofs(
        &self,
        model: &ContentHash,
        n_blocks: u32,
        servers: &[ServerEntry],
    ) {
        let due: Vec<PeerId> = {
            let reputations = self.reputations();
            let mut watch = self.fraud_watch();
            let now = Instant::now();
            servers
                .iter()
                .map(|s| s.peer)
                .filter(|p| {
                    reputations
                        .get(p)
                        .is_none_or(|r| r.standing() != Standing::Excluded)
                })
                .filter(|p| {
                    let due = watch
                        .looked
                        .get(p)
                        .is_none_or(|at| at.elapsed() >= FRAUD_LOOKUP_INTERVAL);
                    if due {
                        watch.looked.insert(*p, now);
                    }
                    due
                })
                .collect()
        };
        let lookups = due.into_iter().map(|peer| async move {
            let hosts = self.net.get_providers(fraud_key(model, &peer)).await;
            (peer, hosts)
        });
        for (accused, hosts) in futures::future::join_all(lookups).await {
            for host in hosts
                .into_iter()
                .filter(|h| *h != accused)
                .take(FRAUD_FETCH_TRIES)
            {
                if self
                    .recheck_gossiped(model, n_blocks, servers, accused, host)
                    .await
                {
                    break;
                }
            }
        }
    }

    /// Fetches the proof `host` holds against `accused` and re-checks it; true when it held
    /// and `accused` is now excluded.
    async fn recheck_gossiped(
        &self,
        model: &ContentHash,
        n_blocks: u32,
        servers: &[ServerEntry],
        accused: PeerId,
        host: PeerId,
    ) -> bool {
        let Some(key) = public_key_of(&accused) else {
            return false;
        };
        let request = FraudRequest::Fetch {
            model_id: *model,
            accused: key,
        };
        let proof = match self.fraud_exchange(host, &request).await {
            Ok(FraudReply::Proof(p)) => p,
            Ok(other) => {
                tracing::debug!(%host, %accused, "fraud proof lookup answered {other:?}");
                return false;
            }
            Err(e) => {
                tracing::debug!(%host, %accused, "cannot fetch a fraud proof: {e}");
                return false;
            }
        };
        let digest = ContentHash::of(&proof.to_bytes());
        if self.fraud_watch().rejected.contains(&digest) {
            return false;
        }
        let replay = match Replay::of(&proof) {
            Ok(r) if r.node == key && r.model_id == *model => r,
            Ok(_) => {
                tracing::warn!(%host, %accused, "host sent a proof about another node or model");
                return false;
            }
            Err(e) => {
                tracing::warn!(%host, %accused, "host sent an invalid fraud proof: {e}");
                return false;
            }
        };
        // Re-executed on servers other than the accused and the host, of the accused's build
        // class (only they compute the bits it should have sent), as a spot check would.
        let Some(class) = class_of(servers, &accused) else {
            return false;
        };
        let excluded: HashSet<PeerId> = [accused, host].into_iter().collect();
        let verifiers = of_class(servers, Some(class));
        let request = RouteRequest {
            range: replay.span,
            need_tokens: u64::from(replay.input.rows),
            banned: &excluded,
            mode: self.cfg.mode,
        };
        // Only start when a route exists: a chain would wait `cover_timeout` for one.
        if find_route(&views(&verifiers, &self.cfg, &self.reputations()), &request).is_err() {
            tracing::info!(%accused, "no server can re-check a gossiped fraud proof now");
            return false;
        }
        let mut chain = self.chain_over(
            *model,
            n_blocks,
            replay.span,
            replay.input.rows as usize,
            excluded,
        );
        chain.servers = servers.to_vec();
        chain.servers_at = Some(Instant::now());
        chain.only_class = Some(class);
        chain.cover_timeout = Duration::ZERO;
        let recomputed = match Box::pin(chain.forward_hidden(replay.input.clone())).await {
            Ok(out) => out.to_f32(),
            Err(e) => {
                tracing::info!(%accused, "cannot re-check a gossiped fraud proof now: {e}");
                return false;
            }
        };
        let c = replay.judge(&recomputed);
        if c.verdict(self.cfg.tolerance) == Verdict::Agrees {
            tracing::warn!(%host, %accused, error = c.max_error, "a gossiped fraud proof does not hold");
            self.fraud_watch().rejected.insert(digest);
            return false;
        }
        tracing::warn!(%host, %accused, error = c.max_error, "excluding a node: a gossiped fraud proof re-checked");
        self.reputations()
            .entry(accused)
            .or_default()
            .record_check(false);
        self.save_reputations();
        true
    }

    /// Submits `proof` (against `accused`, for `blocks`) to up to `FRAUD_SPREAD` other servers
    /// of those blocks; returns those that re-checked and now host it.
    async fn spread_fraud_proof(
        &self,
        proof: &FraudProof,
        accused: PeerId,
        blocks: BlockRange,
        servers: &[ServerEntry],
    ) -> Vec<PeerId> {
        let request = FraudRequest::Submit(proof.clone());
        let mut hosts = Vec::new();
        for s in servers.iter().filter(|s| {
            s.peer != accused
                && s.announcement.span.start() <= blocks.start()
                && s.announcement.span.end() >= blocks.end()
        }) {
            match self.fraud_exchange(s.peer, &request).await {
                Ok(FraudReply::Accepted) => hosts.push(s.peer),
                Ok(reply) => tracing::info!(host = %s.peer, "fraud proof not hosted: {reply:?}"),
                Err(e) => tracing::info!(host = %s.peer, "cannot submit a fraud proof: {e}"),
            }
            if hosts.len() >= FRAUD_SPREAD {
                break;
            }
        }
        hosts
    }

    /// One request and its reply on a fresh fraud-proof stream to `peer`.
    async fn fraud_exchange(
        &self,
        peer: PeerId,
        request: &FraudRequest,
    ) -> std::result::Result<FraudReply, String> {
        let exchange = async {
            let mut stream = self
                .net
                .control()
                .open_stream(peer, StreamProtocol::new(FRAUD_PROTOCOL))
                .await
                .map_err(|e| format!("cannot open a stream: {e}"))?;
            write_frame(&mut stream, &request.encode())
                .await
                .map_err(|e| e.to_string())?;
            let frame = read_frame(&mut stream, self.cfg.limits.max_frame_bytes)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("closed without a reply")?;
            FraudReply::decode(&frame, &self.cfg.limits).map_err(|e| e.to_string())
        };
        // A node re-checks a submitted proof before answering: one prefill of its positions.
        tokio::time::timeout(self.cfg.step_timeout * 2, exchange)
            .await
            .map_err(|_| "no reply in time".to_string())?
    }

    fn fraud_watch(&self) -> std::sync::MutexGuard<'_, FraudWatch> {
        self.fraud_watch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the servers of `model` cover every block. After `cover_timeout` fails with
    /// [`SwarmError::NoCoverage`] naming the first gap; `n_blocks == 0` is
    /// [`SwarmError::InvalidInput`].
    pub async fn wait_for_coverage(
        &self,
        model: &ContentHash,
        n_blocks: u32,
    ) -> Result<Vec<ServerEntry>> {
        let full = BlockRange::full(n_blocks)?;
        self.wait_for_range(model, n_blocks, full).await
    }

    /// As [`SwarmClient::wait_for_coverage`], for blocks `full` of the model only.
    pub async fn wait_for_range(
        &self,
        model: &ContentHash,
        n_blocks: u32,
        full: BlockRange,
    ) -> Result<Vec<ServerEntry>> {
        let deadline = Instant::now() + self.cfg.cover_timeout;
        loop {
            let servers = self.servers(model, n_blocks).await;
            let views = views(&servers, &self.cfg, &self.reputations());
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
        let range = BlockRange::full(n_blocks.max(1)).expect("n_blocks >= 1");
        self.chain_range(model, n_blocks, range, max_len)
    }

    /// A chain over blocks `range` of the model only, with spot checks: the swarm part of a
    /// client that runs the first and last blocks itself (`--private-edges`).
    pub fn chain_range(
        &self,
        model: ContentHash,
        n_blocks: u32,
        range: BlockRange,
        max_len: usize,
    ) -> SwarmChain {
        let mut chain = self
            .chain_over(model, n_blocks, range, max_len, HashSet::new())
            .with_spot_checks(self.cfg.spot_checks);
        chain.follow_membership = true;
        chain
    }

    /// A chain over `range` only, never routed through `excluded`, without spot checks of its
    /// own: what re-executes a window for a check.
    fn chain_over(
        &self,
        model: ContentHash,
        n_blocks: u32,
        range: BlockRange,
        max_len: usize,
        excluded: HashSet<PeerId>,
    ) -> SwarmChain {
        let session: SessionKey = random_bytes();
        let spot_seed = SpotSeed(random_bytes());
        SwarmChain {
            client: self.clone(),
            model,
            n_blocks,
            range,
            max_len,
            session,
            hops: Vec::new(),
            servers: Vec::new(),
            servers_at: None,
            refreshing: None,
            follow_membership: false,
            cover_timeout: self.cfg.cover_timeout,
            banned: excluded,
            unreachable: HashMap::new(),
            dead: HashSet::new(),
            spot_checks: None,
            spot_seed,
            only_class: None,
            prefill_end: 0,
            last_end: 0,
            draws: HashMap::new(),
            rewind: None,
            log: Arc::new(Mutex::new(ChainLog {
                spot_commitment: Some(spot_seed.commitment()),
                ..ChainLog::default()
            })),
        }
    }
}

/// Largest reputation file read (a few hundred bytes per node).
const MAX_REPUTATION_FILE: u64 = 16 << 20;

/// The reputations in `path`; an absent, oversized or unreadable file is an empty start (with a
/// warning for the last two): losing scores costs checks, never correctness.
fn load_reputations(path: &std::path::Path) -> HashMap<PeerId, Reputation> {
    let read = || -> std::result::Result<HashMap<PeerId, Reputation>, String> {
        let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        if len > MAX_REPUTATION_FILE {
            return Err(format!("{len} bytes, more than {MAX_REPUTATION_FILE}"));
        }
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let map: HashMap<String, Reputation> =
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok(map
            .into_iter()
            .filter_map(|(p, r)| Some((p.parse().ok()?, r)))
            .collect())
    };
    if !path.exists() {
        return HashMap::new();
    }
    read().unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), "ignoring the reputation file: {e}");
        HashMap::new()
    })
}

/// Unpredictable bytes (session keys, spot-check seeds) from the operating system.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() {
        // No OS randomness (never seen on supported targets): fall back to a fresh ed25519 key,
        // itself drawn from libp2p's generator.
        for (o, k) in out
            .iter_mut()
            .zip(NodeIdentity::generate().public_key().iter().cycle())
        {
            *o = *k;
        }
    }
    out
}

fn views(
    servers: &[ServerEntry],
    cfg: &ClientConfig,
    reputations: &HashMap<PeerId, Reputation>,
) -> Vec<ServerView> {
    servers
        .iter()
        .filter(|s| {
            reputations
                .get(&s.peer)
                .is_none_or(|r| r.standing() != Standing::Excluded)
        })
        .map(|s| ServerView {
            peer: s.peer,
            span: s.announcement.span,
            // Measured beats announced; a node still in probation must be clearly faster.
            block_ms: reputations.get(&s.peer).map_or(
                f64::from(s.announcement.block_ms) * Reputation::default().route_penalty(),
                |r| r.effective_block_ms(f64::from(s.announcement.block_ms)) * r.route_penalty(),
            ),
            rtt_ms: s.rtt.unwrap_or(cfg.default_rtt).as_secs_f64() * 1000.0,
            cache_free_tokens: s.announcement.cache_free_tokens,
            load: s.announcement.active_sessions,
        })
        .collect()
}

/// The announced build class of `peer` among `servers` (`None`: not among them).
fn class_of(servers: &[ServerEntry], peer: &PeerId) -> Option<u64> {
    servers
        .iter()
        .find(|s| s.peer == *peer)
        .map(|s| s.announcement.build_class)
}

/// The servers no other server can check: no route over the others of the same build class
/// (excluded nodes left out) covers their blocks.
fn unverifiable(servers: &[ServerEntry], client: &SwarmClient) -> HashSet<PeerId> {
    let reputations = client.reputations();
    let none = HashSet::new();
    servers
        .iter()
        .filter(|s| {
            let others: Vec<ServerEntry> = of_class(servers, Some(s.announcement.build_class))
                .into_iter()
                .filter(|o| o.peer != s.peer)
                .collect();
            let request = RouteRequest {
                range: s.announcement.span,
                need_tokens: 1,
                banned: &none,
                mode: RouteMode::Latency,
            };
            find_route(&views(&others, &client.cfg, &reputations), &request).is_err()
        })
        .map(|s| s.peer)
        .collect()
}

/// `servers` of build class `class` (all of them for `None`). A verifier must be of the checked
/// node's class: another build computes other bits and could blame an honest node.
fn of_class(servers: &[ServerEntry], class: Option<u64>) -> Vec<ServerEntry> {
    servers
        .iter()
        .filter(|s| class.is_none_or(|c| s.announcement.build_class == c))
        .cloned()
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

/// One pass of hidden states through hops: a generation step over every block, or a failover's
/// replay over the failed hop's blocks.
#[derive(Clone, Debug)]
pub struct ChainStep {
    /// A failover's replay (its input is the failed hop's merged history) rather than a step.
    pub replay: bool,
    /// Blocks the pass covered.
    pub blocks: BlockRange,
    /// Digest of what the client fed the first hop (for a step: its own embedding output).
    pub input: ContentHash,
    /// Indices into [`ChainLog::receipts`] of the pass's hops, in block order.
    pub receipts: Vec<usize>,
    /// The linkage check ([`check_chain`]): the final output digest, or why the hops do not link.
    pub linkage: Result<ContentHash, LinkError>,
}

/// How a spot check of one window on one node ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The re-execution agreed within the tolerance.
    Passed,
    /// Two verifiers disagreed with the node: it is banned and a fraud proof was recorded.
    Failed,
    /// The first verifier disagreed, the second agreed with the node: nobody is blamed.
    Disputed,
    /// No other server covers the node's blocks.
    NoVerifier,
}

/// A window re-executed on other servers.
#[derive(Clone, Debug)]
pub struct SpotCheck {
    /// The checked node.
    pub peer: PeerId,
    /// Its blocks.
    pub blocks: BlockRange,
    /// The checked positions.
    pub positions: std::ops::Range<u32>,
    /// The window index drawn ([`SpotSeed::checks`]; `u64::MAX` for the prefill).
    pub window: u64,
    /// The probability it was drawn at (from the node's standing), or `None` when forced.
    pub probability: Option<f64>,
    /// The servers that re-executed it, first verifier first.
    pub verifiers: Vec<PeerId>,
    /// Worst-row relative error of the node's rows against the first re-execution.
    pub max_error: f64,
    /// The verdict.
    pub outcome: CheckOutcome,
}

/// What a chain did: its current route, every verified receipt, every failover.
#[derive(Clone, Debug, Default)]
pub struct ChainLog {
    /// The hops in block order, as they are now (after any failovers); empty before routing.
    pub route: Vec<(PeerId, BlockRange)>,
    /// Each verified receipt with the node that signed it, in the order received.
    pub receipts: Vec<(PeerId, Receipt)>,
    /// Every pass through hops (steps and replays) with its linkage check.
    pub steps: Vec<ChainStep>,
    /// Commitment to the chain's spot-check seed, fixed before any node answered.
    pub spot_commitment: Option<ContentHash>,
    /// The seed itself, revealed when the chain is dropped (the generation is over): a node that
    /// learned it earlier could predict the chain's remaining checks.
    pub spot_seed: Option<SpotSeed>,
    /// Every window re-executed, in order.
    pub checks: Vec<SpotCheck>,
    /// Proofs against nodes caught returning wrong hidden states.
    pub fraud_proofs: Vec<(PeerId, FraudProof)>,
    /// For each caught node, the servers that re-checked its proof and now host it for the swarm
    /// (so that other clients exclude it too).
    pub fraud_hosts: Vec<(PeerId, Vec<PeerId>)>,
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
    /// The node's answer to each of `history`: what a spot check compares and a fraud proof
    /// quotes.
    answers: Vec<(HiddenStates, Receipt)>,
}

/// The swarm as one [`HiddenStage`] covering every block: the generation loop drives it exactly
/// as it drives local slices.
pub struct SwarmChain {
    client: SwarmClient,
    model: ContentHash,
    n_blocks: u32,
    /// The blocks this chain runs (every block, except for a check's re-execution).
    range: BlockRange,
    max_len: usize,
    session: SessionKey,
    hops: Vec<HopState>,
    /// The servers this chain routes and checks over (never a `dead` one); set through
    /// `set_servers`.
    servers: Vec<ServerEntry>,
    /// When the lookup that gave `servers` started (`None`: never looked up by this chain).
    servers_at: Option<Instant>,
    /// A lookup running in the background between steps, and when it started.
    refreshing: Option<(Instant, tokio::task::JoinHandle<Vec<ServerEntry>>)>,
    /// Whether `servers` is read again while the chain runs (a generation's chain; a check's
    /// re-execution lives one step on its parent's list).
    follow_membership: bool,
    /// How long routing waits for the swarm to cover its blocks (zero for a check's
    /// re-execution: a check that cannot be made now is recorded as such, not waited for).
    cover_timeout: Duration,
    /// Nodes caught misbehaving: never used again by this chain.
    banned: HashSet<PeerId>,
    /// Nodes that failed to answer: avoided while anything else covers their blocks.
    /// When each was last found unreachable.
    unreachable: HashMap<PeerId, Instant>,
    /// Nodes no stream could be opened to (no connection, or the protocol refused): gone, even
    /// while their DHT records live on. Never retried by this chain.
    dead: HashSet<PeerId>,
    /// When windows are re-executed (`None`: never).
    spot_checks: Option<SpotCheckPolicy>,
    /// Secret until the chain is dropped; its commitment is in the log from the start.
    spot_seed: SpotSeed,
    /// Route only over servers of this build class (a check's re-execution: another class
    /// computes other bits).
    only_class: Option<u64>,
    /// End of the prefill and of the latest step (positions), for the last window's check.
    prefill_end: u32,
    last_end: u32,
    /// Whether the seed drew each (node, window) for a check, fixed at the first look: the
    /// generation holds back the text of a drawn window before it closes, and the check when
    /// it closes must be the one it waited for (a node's check probability may change between).
    draws: HashMap<(PeerId, u64), (bool, f64)>,
    /// The start of the earliest window a spot check caught and corrected since the generation
    /// last asked ([`HiddenStage::take_rewind`]).
    rewind: Option<u32>,
    log: Arc<Mutex<ChainLog>>,
}

/// How long a node that failed to answer is skipped before it may be retried as a last resort.
const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(2);

/// How long a node that failed this chain (timed out, dropped a stream) is not asked to verify
/// another: unlike routing, a check has no need to fall back on it, and asking a silent node
/// stalls the generation for a step timeout per try.
const FAILED_VERIFIER_BACKOFF: Duration = Duration::from_secs(60);

/// Age at which a generation's server list is read again from the DHT, in the background
/// (between steps, or when a failover routes with it). Nodes join and leave during
/// long generations; a list read at the first step misses every node that joined since.
const SERVER_LIST_MAX_AGE: Duration = Duration::from_secs(10);

/// Failovers one step may go through before the generation gives up.
const MAX_FAILOVERS_PER_STEP: usize = 8;

impl SwarmChain {
    fn with_spot_checks(mut self, policy: Option<SpotCheckPolicy>) -> Self {
        self.spot_checks = policy;
        self
    }

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
    /// Routing uses the list the chain has; a stale list starts a background lookup, and a route
    /// that the list cannot give waits for a fresh one, so a failover sees the nodes that joined
    /// since when it needs them.
    async fn route(&mut self, range: BlockRange) -> Result<Vec<Hop>> {
        let deadline = Instant::now() + self.cover_timeout;
        let mut refreshed = false;
        if self.servers_at.is_none() && !(self.follow_membership && self.adopt_latest()) {
            // Never looked up: nothing to route with yet.
            self.refresh_servers().await;
            refreshed = true;
        } else {
            // A failover routes with the list it has (a lookup can take seconds on a busy DHT)
            // and reads it again only when that list has no route (below); a stale list starts
            // a lookup in the background meanwhile.
            self.poll_membership();
        }
        let none = HashSet::new();
        loop {
            let servers = of_class(&self.servers, self.only_class);
            let views = views(&servers, &self.client.cfg, &self.client.reputations());
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
            // Nodes nobody can check come last (or never, with `require_verifiable`): a cheater
            // could otherwise announce a build class of its own and never be checked.
            let unverifiable = match (self.spot_checks, self.only_class) {
                (Some(_), None) => unverifiable(&self.servers, &self.client),
                _ => HashSet::new(),
            };
            let without = |set: &HashSet<PeerId>| -> HashSet<PeerId> {
                set.union(&unverifiable).copied().collect()
            };
            let mut tries = vec![without(&failed)];
            if !self.client.cfg.require_verifiable {
                tries.push(failed.clone());
            }
            tries.push(without(&recently_failed));
            if !self.client.cfg.require_verifiable {
                tries.push(recently_failed.clone());
            }
            let mut result = Err(RouteError::Uncovered { blocks: range });
            for banned in &tries {
                result = find_route(&views, &request(banned));
                if result.is_ok() {
                    break;
                }
            }
            match result {
                Ok(route) => return Ok(route.hops),
                // A check's re-execution (no cover timeout) gives up at once: a lookup can take
                // seconds, and a check that cannot be made now is recorded as such.
                Err(RouteError::Uncovered { blocks })
                    if (refreshed || self.cover_timeout.is_zero())
                        && Instant::now() >= deadline =>
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
                    self.refresh_servers().await;
                    refreshed = true;
                }
            }
        }
    }

    /// Whether the server list should be read again: never read, older than
    /// `SERVER_LIST_MAX_AGE`, or a background read is under way (it began when the list was).
    fn servers_stale(&self) -> bool {
        self.refreshing.is_some()
            || self
                .servers_at
                .is_none_or(|at| at.elapsed() >= SERVER_LIST_MAX_AGE)
    }

    /// Reads the server list from the DHT now: the background read under way if any (it is
    /// the freshest there will be soon), else a new one.
    async fn refresh_servers(&mut self) {
        let (at, servers) = match self.refreshing.take() {
            Some((at, task)) => match task.await {
                Ok(servers) => (at, servers),
                // Only cancelled or panicked: look up afresh.
                Err(e) => {
                    tracing::debug!("background server lookup failed: {e}");
                    let at = Instant::now();
                    (at, self.client.servers(&self.model, self.n_blocks).await)
                }
            },
            None => {
                let at = Instant::now();
                (at, self.client.servers(&self.model, self.n_blocks).await)
            }
        };
        self.set_servers(servers, at);
    }

    /// Between steps, without waiting: takes the result of a background lookup that finished,
    /// or starts one when the list is `SERVER_LIST_MAX_AGE` old. A step never waits on the DHT;
    /// only a failover does (`route`).
    fn poll_membership(&mut self) {
        if !self.follow_membership {
            return;
        }
        if let Some((at, task)) = self.refreshing.take() {
            if !task.is_finished() {
                self.refreshing = Some((at, task));
            } else if let Some(Ok(servers)) = futures::FutureExt::now_or_never(task) {
                self.set_servers(servers, at);
            }
            return;
        }
        if self.servers_stale() && !self.adopt_latest() {
            let client = self.client.clone();
            let (model, n_blocks) = (self.model, self.n_blocks);
            let task = self
                .client
                .runtime
                .spawn(async move { client.servers(&model, n_blocks).await });
            self.refreshing = Some((Instant::now(), task));
        }
    }

    /// Takes the client's latest list of this model's servers if another lookup (another chain's,
    /// or the client's own) made one newer than this chain's and younger than
    /// `SERVER_LIST_MAX_AGE`; true when it did.
    fn adopt_latest(&mut self) -> bool {
        let latest = self
            .client
            .latest_servers()
            .get(&(self.model, self.n_blocks))
            .filter(|(at, _)| {
                at.elapsed() < SERVER_LIST_MAX_AGE && self.servers_at.is_none_or(|mine| *at > mine)
            })
            .cloned();
        match latest {
            Some((at, servers)) => {
                self.set_servers(servers, at);
                true
            }
            None => false,
        }
    }

    /// Takes `servers` (looked up at `at`) as the chain's list. Dead nodes stay out; a node on
    /// the route keeps its old entry if the lookup missed it (its build class is what its spot
    /// checks need, and a lookup can miss a live node).
    fn set_servers(&mut self, servers: Vec<ServerEntry>, at: Instant) {
        let departed = self.client.departed().clone();
        let mut servers: Vec<ServerEntry> = servers
            .into_iter()
            .filter(|s| {
                // Dead for this chain, or known gone to the client since the list was made (an
                // adopted list may predate the failed dial of another chain).
                !self.dead.contains(&s.peer)
                    && departed
                        .get(&s.peer)
                        .is_none_or(|&seen| s.announcement.issued_unix_ms > seen)
            })
            .collect();
        let kept: Vec<ServerEntry> = self
            .servers
            .iter()
            .filter(|old| {
                self.hops.iter().any(|h| h.peer == old.peer)
                    && !servers.iter().any(|s| s.peer == old.peer)
            })
            .cloned()
            .collect();
        servers.extend(kept);
        servers.sort_by_key(|s| (s.announcement.span.start(), s.peer));
        self.servers = servers;
        self.servers_at = Some(at);
    }

    /// Drops `peer` for the rest of the chain: no stream could be opened to it.
    fn mark_dead(&mut self, peer: PeerId) {
        if self.dead.insert(peer) {
            tracing::info!(%peer, "cannot reach the node: not retried by this chain");
        }
        if let Some(s) = self.servers.iter().find(|s| s.peer == peer) {
            self.client
                .note_departed(peer, s.announcement.issued_unix_ms);
        }
        self.unreachable.remove(&peer);
        self.servers.retain(|s| s.peer != peer);
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
            answers: Vec::new(),
        })
    }

    fn step_context(&self) -> StepContext {
        StepContext {
            net: self.client.net.clone(),
            cfg: self.client.cfg.clone(),
            model: self.model,
            session: self.session,
            max_len: self.max_len,
            reputations: self.client.reputations.clone(),
        }
    }

    /// Runs one step on `hop` and records its receipt and timing; returns the output and the
    /// receipt's index in [`ChainLog::receipts`].
    async fn step_hop(
        ctx: &StepContext,
        log: &Mutex<ChainLog>,
        hop: &mut HopState,
        input: &HiddenStates,
    ) -> Result<(HiddenStates, usize), HopFailure> {
        let started = Instant::now();
        let (out, receipt) = step_on(hop, ctx, input).await?;
        let took = started.elapsed();
        if input.rows == 1 {
            // Only one-token steps measure a node's speed (a prefill's time grows with its rows).
            let mut reputations = ctx.reputations.lock().unwrap_or_else(|p| p.into_inner());
            reputations
                .entry(hop.peer)
                .or_default()
                .record_step(took.as_secs_f64() * 1000.0, hop.range.len());
        }
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.hop_time += took;
        let timing = log.per_node.entry(hop.peer).or_default();
        timing.steps += 1;
        timing.total += took;
        log.receipts.push((hop.peer, receipt));
        Ok((out, log.receipts.len() - 1))
    }

    /// Records a pass through hops with its linkage check.
    fn record_pass(
        &self,
        replay: bool,
        blocks: BlockRange,
        input: ContentHash,
        receipts: Vec<usize>,
    ) {
        let mut log = self.log_mut();
        let bodies: Vec<&ReceiptBody> = receipts
            .iter()
            .filter_map(|i| log.receipts.get(*i).map(|(_, r)| &r.body))
            .collect();
        let linkage = check_chain(input, blocks, self.model, &bodies);
        if let Err(e) = &linkage {
            // Every hop's receipt was checked against what the client sent it, so a break here
            // is a bug in the client, not a node's doing.
            tracing::error!(%blocks, "receipts do not link: {e}");
        }
        log.steps.push(ChainStep {
            replay,
            blocks,
            input,
            receipts,
            linkage,
        });
    }

    /// Replaces hop `i` after `failure`: bans its node, routes its blocks over other nodes,
    /// replays its input history into them so their caches match, and splices them in only once
    /// they are ready. A replacement that fails during replay is banned in turn and another is
    /// tried. The module docs say which error ends the generation when this fails. Returns how
    /// many hops replaced hop `i` and their output for the replayed positions.
    async fn fail_over(
        &mut self,
        i: usize,
        failure: HopFailure,
    ) -> Result<(usize, Option<HiddenStates>)> {
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
            let mut replayed = None;
            let ctx = self.step_context();
            if let Some(mut x) = merge(&history) {
                let input = x.digest();
                let mut receipts = Vec::new();
                for hop in new.iter_mut() {
                    match Self::step_hop(&ctx, &self.log, hop, &x).await {
                        Ok((out, r)) => {
                            x = out;
                            receipts.push(r);
                        }
                        Err(f) => {
                            replay_failed = Some((hop.peer, f));
                            break;
                        }
                    }
                }
                if replay_failed.is_none() {
                    self.record_pass(true, range, input, receipts);
                    replayed = Some(x);
                }
            }
            if let Some((bad, f)) = replay_failed {
                tracing::warn!(peer = %bad, "replacement failed during replay: {f}");
                self.ban(bad, &f);
                last = f.into_error(bad);
                continue;
            }
            // Each replacement's history now holds the (merged) inputs the replay sent it.
            let count = new.len();
            self.hops.splice(i..=i, new);
            self.publish_route();
            self.log_mut().failovers.push(Failover {
                peer,
                range,
                reason,
                recovery: started.elapsed(),
                replayed_tokens,
            });
            return Ok((count, replayed));
        }
        self.hops[i].history = history;
        Err(SwarmError::HopsExhausted {
            blocks: range,
            failovers: MAX_FAILOVERS_PER_STEP,
            last: Box::new(last),
        })
    }

    fn ban(&mut self, peer: PeerId, failure: &HopFailure) {
        match failure {
            HopFailure::Misbehaved(_) => {
                self.banned.insert(peer);
            }
            HopFailure::NoConnection(_) => self.mark_dead(peer),
            HopFailure::Unreachable(_) | HopFailure::TimedOut(_) => {
                self.unreachable.insert(peer, Instant::now());
            }
        }
    }

    /// Runs `x` through hops `i..`, failing over as needed; `receipts` (one index per hop before
    /// `i`) gets one per hop after. Returns the last hop's output.
    async fn run_from(
        &mut self,
        mut i: usize,
        mut x: HiddenStates,
        receipts: &mut Vec<usize>,
    ) -> Result<HiddenStates> {
        receipts.truncate(i);
        let mut failovers = 0;
        let ctx = self.step_context();
        while i < self.hops.len() {
            let result = Self::step_hop(&ctx, &self.log, &mut self.hops[i], &x).await;
            match result {
                Ok((out, r)) => {
                    x = out;
                    receipts.push(r);
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

    /// Runs `input` through every block (routing at the first call, failing over as needed),
    /// then spot-checks the hops whose window this step closed. A hop caught cheating is
    /// replaced and the hops after it recompute from the replacement's output, so the output
    /// returned is honest; tokens already sampled earlier in a caught window are not revisited.
    /// The async form of [`HiddenStage::forward`], for callers that drive many chains at once.
    /// The module docs say which [`SwarmError`] a chain gives up with.
    pub async fn forward_hidden(&mut self, input: HiddenStates) -> Result<HiddenStates> {
        self.poll_membership();
        if self.hops.is_empty() {
            let hops = self.route(self.range).await?;
            self.hops = hops
                .into_iter()
                .map(|h| self.new_hop(h))
                .collect::<Result<_>>()?;
            self.publish_route();
        }
        let (start, rows) = (input.start, input.rows);
        let first_step = !self.log_mut().steps.iter().any(|s| !s.replay);
        let digest = input.digest();
        let mut receipts = Vec::new();
        let out = self.run_from(0, input, &mut receipts).await?;
        self.record_pass(false, self.range, digest, receipts);
        let Some(caught) = self.spot_check(start, rows, first_step).await? else {
            return Ok(out);
        };
        self.rewind = Some(self.rewind.map_or(caught.from, |r| r.min(caught.from)));
        let out = self.replace_caught(caught).await?;
        Ok(last_rows(&out, rows))
    }

    /// Replaces a hop caught cheating: its replacement's replay recomputes every cached
    /// position, and every later hop recomputes them too (their caches hold positions computed
    /// from the cheater's output). Returns the chain's honest output for those positions.
    async fn replace_caught(&mut self, caught: Caught) -> Result<HiddenStates> {
        let (count, replayed) = self.fail_over(caught.hop, caught.failure).await?;
        let replayed = replayed
            .ok_or_else(|| SwarmError::Internal("a caught hop had no history to replay".into()))?;
        let next = caught.hop + count;
        if next >= self.hops.len() {
            return Ok(replayed);
        }
        let blocks = BlockRange::new(self.hops[next].range.start(), self.range.end())?;
        let digest = replayed.digest();
        let mut receipts = Vec::new();
        // `run_from` indexes receipts by hop; only the hops from `next` on are recorded.
        receipts.resize(next, usize::MAX);
        let out = self.run_from(next, replayed, &mut receipts).await?;
        self.record_pass(true, blocks, digest, receipts.split_off(next));
        Ok(out)
    }

    /// Spot-checks every hop whose window the step at `start..start + rows` closed (the prefill
    /// is its own window). Returns the first hop caught cheating, already banned, with its fraud
    /// proof in the log.
    async fn spot_check(
        &mut self,
        start: u32,
        rows: u32,
        first_step: bool,
    ) -> Result<Option<Caught>> {
        let Some(policy) = self.spot_checks else {
            return Ok(None);
        };
        let end = start + rows;
        self.last_end = end;
        let window = policy.window.max(1);
        let (window_index, positions) = if first_step {
            self.prefill_end = end;
            (u64::MAX, 0..end)
        } else if end.is_multiple_of(window) {
            (policy.window_of(end - 1), end.saturating_sub(window)..end)
        } else {
            return Ok(None);
        };
        Ok(self
            .check_drawn(&policy, window_index, positions, first_step)
            .await)
    }

    /// The open window (positions computed but not yet judged): its index and positions;
    /// `None` when the last step closed a window or nothing follows the prefill (its own
    /// window, checked when it ran).
    fn open_window(&self, policy: &SpotCheckPolicy) -> Option<(u64, std::ops::Range<u32>)> {
        let end = self.last_end;
        let boundary = end - end % policy.window.max(1);
        if end == boundary || end <= self.prefill_end || self.hops.is_empty() {
            return None;
        }
        Some((
            policy.window_of(end - 1),
            boundary.max(self.prefill_end)..end,
        ))
    }

    /// The start of the open window when the seed drew it for a check on any hop: outputs
    /// from there on may still be taken back.
    pub fn pending_from(&mut self) -> Option<u32> {
        let policy = self.spot_checks?;
        let (window, positions) = self.open_window(&policy)?;
        let drawn = (0..self.hops.len()).any(|i| self.drawn(&policy, i, window).0);
        drawn.then_some(positions.start)
    }

    /// Checks the generation's last window, which no step closed (it ends before a multiple of
    /// the window length): without this, a node could cheat on the tail of every generation
    /// unseen. A cheater caught here is banned, proven, gossiped and replaced like any other;
    /// returns the caught window's start, from which the generation samples again.
    pub async fn check_last_window(&mut self) -> Option<u32> {
        let policy = self.spot_checks?;
        let (window, positions) = self.open_window(&policy)?;
        let caught = self.check_drawn(&policy, window, positions, false).await?;
        // Replace the cheater so the generation can go on from the window's start.
        let from = caught.from;
        match self.replace_caught(caught).await {
            Ok(_) => Some(from),
            Err(e) => {
                tracing::warn!("no replacement for a node caught on the last window: {e}");
                None
            }
        }
    }

    /// Whether the seed draws hop `i`'s node for a check of `window`, with the probability it
    /// was drawn at; fixed at the first ask.
    fn drawn(&mut self, policy: &SpotCheckPolicy, i: usize, window: u64) -> (bool, f64) {
        let hop = &self.hops[i];
        let (peer, key) = (hop.peer, hop.node_key);
        *self.draws.entry((peer, window)).or_insert_with(|| {
            let p = self.client.reputation(&peer).check_probability(policy);
            (self.spot_seed.checks(&key, window, p), p)
        })
    }

    /// Re-executes `positions` of every hop the seed draws for `window_index` (every hop for a
    /// forced prefill check); returns the first hop caught.
    async fn check_drawn(
        &mut self,
        policy: &SpotCheckPolicy,
        window_index: u64,
        positions: std::ops::Range<u32>,
        first_step: bool,
    ) -> Option<Caught> {
        for i in 0..self.hops.len() {
            let forced = first_step && policy.always_check_prefill;
            let (checked, p) = self.drawn(policy, i, window_index);
            if !forced && !checked {
                continue;
            }
            let drawn = (window_index, (!forced).then_some(p));
            if let Some(caught) = self.check_window(i, positions.clone(), drawn).await {
                return Some(caught);
            }
        }
        None
    }

    /// Re-executes `positions` of hop `i` on other servers and judges its answers. A
    /// disagreement goes to a second verifier; only when both disagree is the node blamed.
    async fn check_window(
        &mut self,
        i: usize,
        positions: std::ops::Range<u32>,
        (window, probability): (u64, Option<f64>),
    ) -> Option<Caught> {
        let hop = &self.hops[i];
        let (peer, blocks) = (hop.peer, hop.range);
        let class = class_of(&self.servers, &peer);
        let inputs = merge(&hop.history)?;
        let claimed = rows_of(
            &merge(hop.answers.iter().map(|(o, _)| o))?,
            positions.clone(),
        );
        let cols = inputs.cols as usize;
        // Nor a node that failed this chain lately: it would likely fail the check too, and a
        // silent verifier costs the generation a step timeout per try.
        let mut excluded: HashSet<PeerId> = self
            .banned
            .iter()
            .chain(&self.dead)
            .chain(
                self.unreachable
                    .iter()
                    .filter(|(_, at)| at.elapsed() < FAILED_VERIFIER_BACKOFF)
                    .map(|(p, _)| p),
            )
            .copied()
            .collect();
        excluded.insert(peer);
        let mut record = SpotCheck {
            peer,
            blocks,
            positions: positions.clone(),
            window,
            probability,
            verifiers: Vec::new(),
            max_error: 0.0,
            outcome: CheckOutcome::NoVerifier,
        };
        let mut caught = None;
        if let Some((verifiers, first)) = self.reexecute(blocks, class, &inputs, &excluded).await {
            let c = compare_rows(&claimed, &rows_of(&first, positions.clone()), cols);
            record.max_error = c.max_error;
            excluded.extend(verifiers.iter().copied());
            record.verifiers = verifiers;
            record.outcome = CheckOutcome::Passed;
            if c.verdict(self.client.cfg.tolerance) == Verdict::Disagrees {
                tracing::warn!(%peer, %blocks, ?positions, error = c.max_error, "spot check disagrees; asking a second verifier");
                record.outcome = CheckOutcome::Disputed;
                if let Some((second_verifiers, second)) =
                    self.reexecute(blocks, class, &inputs, &excluded).await
                {
                    record.verifiers.extend(second_verifiers);
                    let c2 = compare_rows(&claimed, &rows_of(&second, positions.clone()), cols);
                    if c2.verdict(self.client.cfg.tolerance) == Verdict::Disagrees {
                        record.outcome = CheckOutcome::Failed;
                    }
                }
            }
        }
        let passed = match record.outcome {
            CheckOutcome::Passed => Some(true),
            CheckOutcome::Failed => Some(false),
            _ => None,
        };
        if let Some(passed) = passed {
            self.client
                .reputations()
                .entry(peer)
                .or_default()
                .record_check(passed);
        }
        if record.outcome == CheckOutcome::Failed {
            let hop = &self.hops[i];
            let proof = FraudProof {
                window_start: positions.start,
                window_rows: positions.end - positions.start,
                steps: hop
                    .history
                    .iter()
                    .zip(&hop.answers)
                    .map(|(input, (output, receipt))| ProvenStep {
                        input: input.clone(),
                        output: output.clone(),
                        receipt: receipt.clone(),
                    })
                    .collect(),
            };
            tracing::warn!(%peer, %blocks, ?positions, error = record.max_error, "caught returning wrong hidden states");
            let hosts = self
                .client
                .spread_fraud_proof(&proof, peer, blocks, &self.servers)
                .await;
            let mut log = self.log_mut();
            log.fraud_proofs.push((peer, proof));
            log.fraud_hosts.push((peer, hosts));
            drop(log);
            caught = Some(Caught {
                hop: i,
                from: positions.start,
                failure: HopFailure::misbehaved(format!(
                    "spot check: positions {}..{} are {:.2e} off (relative) on two verifiers",
                    positions.start, positions.end, record.max_error
                )),
            });
        }
        self.log_mut().checks.push(record);
        caught
    }

    /// Runs `inputs` through `blocks` on servers outside `excluded`; `None` when no such route
    /// exists now or the re-execution failed (a check that cannot be made blames nobody).
    async fn reexecute(
        &mut self,
        blocks: BlockRange,
        class: Option<u64>,
        inputs: &HiddenStates,
        excluded: &HashSet<PeerId>,
    ) -> Option<(Vec<PeerId>, HiddenStates)> {
        // A node whose announcement is gone has no known class: nothing can check it now.
        let servers = of_class(&self.servers, Some(class?));
        let views = views(&servers, &self.client.cfg, &self.client.reputations());
        let request = RouteRequest {
            range: blocks,
            need_tokens: u64::from(inputs.rows),
            banned: excluded,
            mode: self.client.cfg.mode,
        };
        // Only start a re-execution when a route exists: a chain would wait `cover_timeout`.
        find_route(&views, &request).ok()?;
        let mut chain = self.client.chain_over(
            self.model,
            self.n_blocks,
            blocks,
            inputs.rows as usize,
            excluded.clone(),
        );
        chain.servers = self.servers.clone();
        chain.servers_at = self.servers_at;
        chain.only_class = class;
        chain.cover_timeout = Duration::ZERO;
        // Boxed: a check's chain has no checks of its own, but the future type is recursive.
        let result = Box::pin(chain.forward_hidden(inputs.clone())).await;
        // A verifier it could not reach is gone for this chain too (one failed dial is enough),
        // and one that did not answer is not asked again by later checks (below).
        for peer in std::mem::take(&mut chain.dead) {
            self.mark_dead(peer);
        }
        for (peer, at) in std::mem::take(&mut chain.unreachable) {
            let seen = self.unreachable.entry(peer).or_insert(at);
            *seen = (*seen).max(at);
        }
        match result {
            Ok(out) => {
                let verifiers = chain.hops.iter().map(|h| h.peer).collect();
                Some((verifiers, out))
            }
            Err(e) => {
                tracing::warn!(%blocks, "re-execution for a spot check failed: {e}");
                None
            }
        }
    }
}

/// A hop a spot check caught, to be replaced.
struct Caught {
    hop: usize,
    /// The caught window's first position.
    from: u32,
    failure: HopFailure,
}

/// Rows of `states` at `positions` (clamped to what it holds), row-major f32.
fn rows_of(states: &HiddenStates, positions: std::ops::Range<u32>) -> Vec<f32> {
    let cols = states.cols as usize;
    let from = positions
        .start
        .saturating_sub(states.start)
        .min(states.rows) as usize;
    let to = positions.end.saturating_sub(states.start).min(states.rows) as usize;
    let values = states.to_f32();
    values[from * cols..to * cols].to_vec()
}

/// The last `rows` rows of `states`.
fn last_rows(states: &HiddenStates, rows: u32) -> HiddenStates {
    let rows = rows.min(states.rows);
    let skip =
        (states.rows - rows) as usize * states.cols as usize * states.dtype.bytes_per_value();
    HiddenStates {
        dtype: states.dtype,
        start: states.start + states.rows - rows,
        rows,
        cols: states.cols,
        data: states.data[skip..].to_vec(),
    }
}

/// Why a hop failed, before it is tied to its peer: whether the node broke the protocol
/// (banned for good), could not be reached at all (dropped for the chain) or was only
/// unreachable or slow (may be retried when nothing else covers its blocks). The reason is kept
/// bare for [`Failover::reason`].
#[derive(Debug)]
enum HopFailure {
    Misbehaved(String),
    Unreachable(String),
    /// No stream could be opened at all: the node is gone (or no longer speaks the protocol).
    NoConnection(String),
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
            Self::Unreachable(reason) | Self::NoConnection(reason) => {
                SwarmError::Unreachable { peer, reason }
            }
            Self::TimedOut(after) => SwarmError::Timeout { peer, after },
        }
    }
}

impl std::fmt::Display for HopFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Misbehaved(reason) | Self::Unreachable(reason) | Self::NoConnection(reason) => {
                f.write_str(reason)
            }
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
    reputations: Arc<Mutex<HashMap<PeerId, Reputation>>>,
}

/// Attempts at opening a session stream before the node counts as unreachable. libp2p-stream
/// drops inbound streams that arrive while its one-slot accept queue is full, which happens when
/// many sessions open at once; nothing reached the node then, so trying again is safe.
const OPEN_ATTEMPTS: u32 = 4;

/// Opens a stream to `peer` and a session over `span` on it. Takes no `&HopState`: its stream
/// is not `Sync`, and chains also run in spawned tasks (background server lookups re-check
/// gossiped fraud proofs).
async fn open_session(
    peer: PeerId,
    span: BlockRange,
    ctx: &StepContext,
) -> Result<libp2p::Stream, HopFailure> {
    let cfg = &ctx.cfg;
    let open = Request::Open(OpenSession {
        session: ctx.session,
        model_id: ctx.model,
        span,
        max_len: ctx.max_len as u32,
        dtype: cfg.dtype,
    })
    .encode();
    let mut last = HopFailure::unreachable("");
    for attempt in 0..OPEN_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(2 << attempt)).await;
        }
        let mut control = ctx.net.control();
        let mut stream = match control
            .open_stream(peer, StreamProtocol::new(INFERENCE_PROTOCOL))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // Dialling failed (or the node refused the protocol): nothing to talk to.
                last = HopFailure::NoConnection(format!("cannot open a stream: {e}"));
                continue;
            }
        };
        if let Err(e) = write_frame(&mut stream, &open).await {
            last = HopFailure::unreachable(e.to_string());
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
            Err(f) => last = f,
        }
    }
    Err(last)
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
            hop.stream = Some(open_session(hop.peer, hop.range, ctx).await?);
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
            start: input.start,
            commitment: ActivationCommitment::of(&out),
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
    hop.answers.push((out.clone(), receipt.clone()));
    Ok((out, receipt))
}

/// Concatenates consecutive steps into one (positions must follow on).
fn merge<'a>(history: impl IntoIterator<Item = &'a HiddenStates>) -> Option<HiddenStates> {
    let mut history = history.into_iter();
    let mut out = history.next()?.clone();
    for h in history {
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

    fn pending_from(&mut self) -> Option<usize> {
        SwarmChain::pending_from(self).map(|p| p as usize)
    }

    fn take_rewind(&mut self) -> Option<usize> {
        self.rewind.take().map(|p| p as usize)
    }

    fn finish(&mut self) -> Option<usize> {
        let runtime = self.client.runtime.clone();
        runtime
            .block_on(self.check_last_window())
            .map(|p| p as usize)
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
        if let Some((_, task)) = self.refreshing.take() {
            task.abort();
        }
        self.log_mut().spot_seed = Some(self.spot_seed);
        if self.spot_checks.is_some() {
            // Only a generation's chain (a check's re-execution has no checks of its own).
            self.client.save_reputations();
        }
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

    fn loopback_net(bootstrap: Vec<Multiaddr>) -> NetConfig {
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap,
            mdns: false,
            ..NetConfig::default()
        }
    }

    /// Publishes `ghost_id`'s announcement of `model` (all blocks) from `ghost` until `client`
    /// lists it.
    async fn announce_until_listed(
        client: &SwarmClient,
        ghost: &Net,
        ghost_id: &NodeIdentity,
        model: ContentHash,
        n_blocks: u32,
    ) {
        let ghost_peer = ghost.peer_id();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a = Announcement {
                model_id: model,
                n_blocks,
                span: BlockRange::full(n_blocks).unwrap(),
                block_ms: 1.0,
                throughput: 1.0,
                cache_free_tokens: 1 << 20,
                active_sessions: 0,
                price: 0,
                build_class: 0,
                rtts: Vec::new(),
                addrs: ghost
                    .status()
                    .await
                    .listen_addrs
                    .iter()
                    .map(|a| a.to_vec())
                    .collect(),
                issued_unix_ms: crate::dht::now_unix_ms(),
                ttl_secs: 600,
                node: [0; 32],
            }
            .sign(&ghost_id.signing_key());
            let record = libp2p::kad::Record::new(
                crate::dht::announcement_key(&model, &ghost_peer),
                a.encode(),
            );
            ghost.put_record(record).await;
            ghost.provide(crate::dht::model_key(&model)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !client.servers(&model, n_blocks).await.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the ghost's records never arrived"
            );
        }
    }

    /// A server that died while its DHT records live on is dialled once, then dropped for the
    /// chain: every later lookup still returns its record, and the chain waits for coverage
    /// instead of dialling it again after `UNREACHABLE_BACKOFF` (which used to end in
    /// `HopsExhausted`, each failover burnt on the dead address).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_servers_live_record_is_not_dialled_twice() {
        // The client stores DHT records itself, so the ghost's records outlive the ghost.
        let mut cfg = lone_client_config();
        cfg.net = loopback_net(Vec::new());
        cfg.cover_timeout = UNREACHABLE_BACKOFF + Duration::from_secs(1);
        let client = SwarmClient::start(cfg).await.unwrap();
        let mut client_addrs = client.net.status().await.listen_addrs;
        while client_addrs.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client_addrs = client.net.status().await.listen_addrs;
        }
        let boot = format!("{}/p2p/{}", client_addrs[0], client.net.peer_id());
        let ghost_id = NodeIdentity::generate();
        let ghost = Net::start(&ghost_id, loopback_net(vec![boot.parse().unwrap()]))
            .await
            .unwrap();
        let model = ContentHash::of(b"a model served by a ghost");
        let n_blocks = 4;
        let ghost_peer = ghost.peer_id();
        announce_until_listed(&client, &ghost, &ghost_id, model, n_blocks).await;
        drop(ghost);
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.net.status().await.connected.contains(&ghost_peer) {
            assert!(
                Instant::now() < deadline,
                "the ghost's connection stayed up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !client.servers(&model, n_blocks).await.is_empty(),
            "the ghost's record should outlive it"
        );

        let mut chain = client.chain(model, n_blocks, 8);
        let x = HiddenStates::from_f32(HiddenDType::F16, 0, 1, 4, &[0.5; 4]);
        let err = chain.forward_hidden(x).await.unwrap_err();
        assert_eq!(err.kind(), SwarmErrorKind::NoCoverage, "{err}");
        assert!(chain.dead.contains(&ghost_peer));
        assert!(chain.servers.is_empty(), "a refresh brought the ghost back");
        assert!(
            chain.servers_at.is_some(),
            "the chain looked the servers up"
        );
        // The client remembers it: its other chains do not see the record at all...
        assert!(client.servers(&model, n_blocks).await.is_empty());
        // ...until the node announces again (a restart keeps its identity).
        let back = Net::start(&ghost_id, loopback_net(vec![boot.parse().unwrap()]))
            .await
            .unwrap();
        announce_until_listed(&client, &back, &ghost_id, model, n_blocks).await;
        assert!(client.departed().is_empty());
    }
}
