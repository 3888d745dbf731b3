//! hearth's soak harness: honest node processes and a gateway on loopback serve streams of
//! greedy completions, first alone (the reference), then under stress, and the two are compared.
//! Two kinds of stress, which can be combined:
//!
//! - **attacks** (issue #13): hostile peers and clients run every attack at once while a random
//!   node is killed with SIGKILL every so often;
//! - **churn** (issue #19): nodes leave (SIGKILL) and new ones join at random, each living an
//!   exponentially distributed time, while every block stays covered.
//!
//! It reports honest throughput under stress as a share of the reference, p95 TTFT, failovers
//! and the latency each added, peak memory per node against its budget, crashes, generations
//! whose text changed, failed requests by cause, and what each attack got. `hearth soak` runs
//! it; docs/reliability.md records its figures.
//!
//! Loopback only: it starts every process it stresses, and nothing else is reached.

mod attacks;
pub use attacks::Attack;
mod load;
mod procs;
pub mod report;

use anyhow::{bail, Context, Result};
use attacks::{NodeTarget, Tallies, Targets};
use hearth_core::BlockRange;
use hearth_engine::ModelSource;
use procs::{Guarded, Health, Launcher, NodeBudget, NodeProc};
use report::{differing_texts, summarize, NodeMemory, PhaseSummary, Report};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What a soak run does.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// The `hearth` executable that runs the honest processes.
    pub exe: PathBuf,
    /// The model they serve (a GGUF file or HF folder).
    pub model: PathBuf,
    /// Where the processes keep their homes and logs.
    pub work: PathBuf,
    /// Length of the reference phase.
    pub baseline: Duration,
    /// Length of the stressed phase.
    pub stressed: Duration,
    /// Honest client streams.
    pub streams: usize,
    /// Completion tokens per honest request.
    pub max_tokens: usize,
    /// Nodes serving each half of the model.
    pub nodes_per_span: usize,
    /// The attacks of the stressed phase (none: an empty list).
    pub attacks: Vec<Attack>,
    /// A random node is killed (and restarted with its identity) this often in the stressed
    /// phase; `None`: never.
    pub kill_every: Option<Duration>,
    /// Churn in the stressed phase: nodes live this long on average (exponentially
    /// distributed), leave with SIGKILL and come back as new identities; `None`: no churn.
    pub churn_mean_lifetime: Option<Duration>,
}

/// KV cache, frame budget and runtime allowance of each node, MiB (the weights come on top).
const NODE_CACHE_MIB: u64 = 256;
const NODE_FRAME_MIB: u64 = 64;
const NODE_RUNTIME_MIB: u64 = 512;
/// How long the nodes give a declared frame and the gateway a blocked write (short, so the
/// attacks they answer show within a one-minute run).
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
const GATEWAY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// With churn: mean time a departed node stays away before a new one takes its place.
const CHURN_MEAN_DOWNTIME: Duration = Duration::from_secs(5);
/// A killed node comes back after this long (its replicas serve meanwhile).
const KILLED_DOWNTIME: Duration = Duration::from_secs(2);

/// Runs the soak and reports; fails only when it cannot set the run up.
pub async fn run(cfg: SoakConfig) -> Result<Report> {
    let src = ModelSource::open(&cfg.model)
        .with_context(|| format!("opening {}", cfg.model.display()))?;
    let config = src.config().clone();
    let n_blocks = u32::try_from(config.num_layers).context("block count")?;
    if n_blocks < 2 {
        bail!("the soak splits the model in two; it has {n_blocks} block(s)");
    }
    if cfg.nodes_per_span < 2 && (cfg.kill_every.is_some() || cfg.churn_mean_lifetime.is_some()) {
        bail!("killing nodes needs at least 2 nodes per span (a replica to fail over to)");
    }
    let model_id = hearth_engine::identity::identity_cached(&src, &cfg.work.join("ids"))?.model_id;
    let half = n_blocks / 2;
    let spans = [BlockRange::new(0, half)?, BlockRange::new(half, n_blocks)?];
    let launcher = Launcher {
        exe: cfg.exe.clone(),
        model: cfg.model.clone(),
        work: cfg.work.clone(),
        budget: NodeBudget {
            cache_mib: NODE_CACHE_MIB,
            frame_mib: NODE_FRAME_MIB,
            total_mib: weights_mib(&cfg.model) + NODE_CACHE_MIB + NODE_FRAME_MIB + NODE_RUNTIME_MIB,
        },
        frame_timeout_secs: FRAME_TIMEOUT.as_secs(),
    };

    let n_nodes = 2 * cfg.nodes_per_span;
    eprintln!(
        "soak: starting {n_nodes} nodes ({} and {}, {} each)",
        spans[0], spans[1], cfg.nodes_per_span
    );
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 0..n_nodes {
        let bootstrap = nodes.first().map(|n| n.addr.clone());
        let node = tokio::task::block_in_place(|| {
            launcher.node(
                &format!("node{i}"),
                &spans[i % 2].to_string(),
                bootstrap.as_deref(),
            )
        })?;
        nodes.push(node);
    }
    let (gateway, url) = tokio::task::block_in_place(|| {
        launcher.gateway(&nodes[0].addr, GATEWAY_WRITE_TIMEOUT.as_secs())
    })?;
    let mut gateway = Guarded(gateway);
    let agent_port = procs::free_port()?;
    let (agent, agent_token) = tokio::task::block_in_place(|| launcher.agent(agent_port))?;
    let mut agent = Guarded(agent);
    let agent_url = format!("http://127.0.0.1:{agent_port}");
    wait_until_serving(&url).await?;
    eprintln!(
        "soak: gateway {url} serves; reference phase ({:?})",
        cfg.baseline
    );

    let mut swarm = Swarm {
        nodes,
        spans,
        launcher,
    };
    let reference = phase(&cfg, &url, cfg.baseline, &mut swarm, None).await;
    let targets = Arc::new(Targets {
        nodes: RwLock::new(swarm.targets()),
        model_id,
        n_blocks,
        hidden_size: u32::try_from(config.hidden_size).context("hidden size")?,
        gateway: url.clone(),
        agent: agent_url,
        agent_token,
        frame_timeout: FRAME_TIMEOUT,
        gateway_write_timeout: GATEWAY_WRITE_TIMEOUT,
    });
    eprintln!("soak: {} ({:?})", describe(&cfg), cfg.stressed);
    let tallies = Tallies::default();
    let stressed = phase(
        &cfg,
        &url,
        cfg.stressed,
        &mut swarm,
        Some((targets, tallies.clone())),
    )
    .await;

    let mut crashes: Vec<String> = swarm
        .nodes
        .iter()
        .filter(|n| n.crashes > 0)
        .map(|n| format!("{} ({}×): {}", n.name, n.crashes, n.log_tail()))
        .collect();
    if !gateway.alive() {
        crashes.push("gateway".into());
    }
    if !agent.alive() {
        crashes.push("agent".into());
    }
    let baseline = PhaseSummary {
        harness_cpu_per_second: reference.harness_cpu_per_second,
        ..summarize(&reference.gens, reference.seconds)
    };
    let under_stress = PhaseSummary {
        harness_cpu_per_second: stressed.harness_cpu_per_second,
        ..summarize(&stressed.gens, stressed.seconds)
    };
    let (texts_compared, texts_differing) = differing_texts(&reference.gens, &stressed.gens);
    let budget = swarm.launcher.budget.total_mib as f64;
    Ok(Report {
        stress: describe(&cfg),
        throughput_ratio: if baseline.tokens_per_second > 0.0 {
            under_stress.tokens_per_second / baseline.tokens_per_second
        } else {
            0.0
        },
        baseline,
        stressed: under_stress,
        texts_compared,
        texts_differing,
        crashes,
        kills: stressed.kills,
        joins: stressed.joins,
        failures_are_problems: cfg.churn_mean_lifetime.is_some() && cfg.attacks.is_empty(),
        memory: swarm
            .nodes
            .iter()
            .map(|n| NodeMemory {
                node: n.name.clone(),
                peak_rss_mib: n.peak_rss_kib as f64 / 1024.0,
                budget_mib: budget,
            })
            .collect(),
        attacks: tallies.snapshot(),
    })
}

/// The stress of `cfg`'s second phase, in words.
fn describe(cfg: &SoakConfig) -> String {
    let mut parts = Vec::new();
    match cfg.attacks.len() {
        0 => {}
        n if n == Attack::ALL.len() => parts.push("every attack".to_string()),
        _ => parts.push(
            cfg.attacks
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
    if let Some(d) = cfg.kill_every {
        parts.push(format!("a node killed every {} s", d.as_secs()));
    }
    if let Some(d) = cfg.churn_mean_lifetime {
        parts.push(format!("churn (mean lifetime {} s)", d.as_secs()));
    }
    if parts.is_empty() {
        "no stress".into()
    } else {
        parts.join(" + ")
    }
}

/// The honest nodes and how to bring them back.
struct Swarm {
    nodes: Vec<NodeProc>,
    spans: [BlockRange; 2],
    launcher: Launcher,
}

impl Swarm {
    /// Restarts node `i` (a fresh identity with `fresh`), joining through another node.
    fn restart(&mut self, i: usize, fresh: bool) {
        let bootstrap = self
            .nodes
            .iter()
            .enumerate()
            .find(|(j, n)| *j != i && n.is_up())
            .map(|(_, n)| n.addr.clone());
        let node = &mut self.nodes[i];
        node.kill();
        if let Err(e) =
            tokio::task::block_in_place(|| self.launcher.start(node, bootstrap.as_deref(), fresh))
        {
            eprintln!("soak: {} did not restart: {e:#}", node.name);
            node.crashes += 1;
        }
    }

    /// Whether another running node serves node `i`'s span.
    fn replicated(&self, i: usize) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .any(|(j, n)| j != i && j % 2 == i % 2 && n.is_up())
    }

    fn targets(&self) -> Vec<NodeTarget> {
        node_targets(&self.nodes, &self.spans)
    }
}

struct PhaseResult {
    gens: Vec<report::Generation>,
    seconds: f64,
    kills: usize,
    joins: usize,
    harness_cpu_per_second: f64,
}

/// Runs the honest load for `length`; with `stress`, also the attacks and kills of `cfg`.
async fn phase(
    cfg: &SoakConfig,
    url: &str,
    length: Duration,
    swarm: &mut Swarm,
    stress: Option<(Arc<Targets>, Tallies)>,
) -> PhaseResult {
    let start = Instant::now();
    let cpu_at_start = procs::own_cpu_seconds();
    let (stop_tx, stop) = watch::channel(false);
    let load = tokio::spawn(load::run(
        url.to_string(),
        cfg.streams,
        cfg.max_tokens,
        start,
        stop.clone(),
    ));
    let attackers = stress
        .as_ref()
        .map(|(targets, tallies)| {
            attacks::spawn(&cfg.attacks, targets.clone(), tallies.clone(), stop.clone())
        })
        .unwrap_or_default();
    let stressed = stress.is_some();
    let (mut kills, mut joins) = (0, 0);
    let mut next_kill = cfg.kill_every.filter(|_| stressed).map(|d| start + d);
    // With churn: when each node leaves, and when each departed one is replaced.
    let churn = cfg.churn_mean_lifetime.filter(|_| stressed);
    let mut leaves: Vec<Option<Instant>> = (0..swarm.nodes.len())
        .map(|_| churn.map(|mean| start + exponential(mean)))
        .collect();
    let mut returns: Vec<Option<Instant>> = vec![None; swarm.nodes.len()];
    while start.elapsed() < length {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let mut changed = false;
        for i in 0..swarm.nodes.len() {
            if swarm.nodes[i].watch() == Health::Crashed {
                // Counted in `watch`: bring it back so the run goes on.
                swarm.restart(i, false);
                changed = true;
            }
            if returns[i].is_some_and(|at| now >= at) {
                returns[i] = None;
                swarm.restart(i, churn.is_some());
                joins += 1;
                leaves[i] = churn.map(|mean| Instant::now() + exponential(mean));
                changed = true;
            }
            if leaves[i].is_some_and(|at| now >= at) {
                if swarm.replicated(i) {
                    eprintln!("soak: {} leaves (kill -9)", swarm.nodes[i].name);
                    swarm.nodes[i].kill();
                    kills += 1;
                    leaves[i] = None;
                    returns[i] = Some(now + exponential(CHURN_MEAN_DOWNTIME));
                    changed = true;
                } else {
                    // The last server of its blocks stays until another is back.
                    leaves[i] = Some(now + Duration::from_secs(1));
                }
            }
        }
        if next_kill.is_some_and(|at| now >= at) {
            let victim = random_index(swarm.nodes.len());
            if swarm.replicated(victim) && returns[victim].is_none() {
                eprintln!("soak: kill -9 {}", swarm.nodes[victim].name);
                swarm.nodes[victim].kill();
                kills += 1;
                returns[victim] = Some(now + KILLED_DOWNTIME);
                changed = true;
            }
            next_kill = cfg.kill_every.map(|d| now + d);
        }
        if changed {
            if let Some((targets, _)) = &stress {
                *targets.nodes.write().unwrap_or_else(|p| p.into_inner()) = swarm.targets();
            }
        }
    }
    let _ = stop_tx.send(true);
    let seconds = start.elapsed().as_secs_f64();
    let harness_cpu_per_second = (procs::own_cpu_seconds() - cpu_at_start) / seconds;
    for a in attackers {
        a.abort();
    }
    // Requests still running finish: their text and failures count, their tokens do not.
    let mut gens = load.await.unwrap_or_default();
    gens.sort_by_key(|g| g.ended);
    // Departed nodes come back for the next phase or the end of the run.
    for (i, back) in returns.iter().enumerate() {
        if back.is_some() {
            swarm.restart(i, churn.is_some());
        }
    }
    PhaseResult {
        gens,
        seconds,
        kills,
        joins,
        harness_cpu_per_second,
    }
}

/// A sample of the exponential distribution with this mean.
fn exponential(mean: Duration) -> Duration {
    // Uniform in (0, 1]: never ln(0).
    let u = ((random_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    mean.mul_f64(-u.ln())
}

fn node_targets(nodes: &[NodeProc], spans: &[BlockRange; 2]) -> Vec<NodeTarget> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is_up())
        .filter_map(|(i, n)| {
            let addr: libp2p::Multiaddr = n.addr.parse().ok()?;
            let peer = hearth_swarm::net::peer_of(&addr)?;
            Some(NodeTarget {
                peer,
                addrs: vec![addr],
                span: spans[i % 2],
            })
        })
        .collect()
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// A random index below `n` (0 when `n` is 0; the modulo bias is immaterial here).
pub(crate) fn random_index(n: usize) -> usize {
    (random_u64() % n.max(1) as u64) as usize
}

/// Size of the model's files, MiB (rounded up).
fn weights_mib(model: &std::path::Path) -> u64 {
    let bytes: u64 = if model.is_dir() {
        std::fs::read_dir(model)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(model).map(|m| m.len()).unwrap_or(0)
    };
    bytes.div_ceil(1 << 20)
}

/// Waits until a completion through the gateway succeeds (the nodes' announcements have
/// reached it).
async fn wait_until_serving(url: &str) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = http
            .post(format!("{url}/v1/completions"))
            .json(&serde_json::json!({"model": "soak", "prompt": "Hello", "max_tokens": 2}))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gateway did not serve a completion within 180 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
