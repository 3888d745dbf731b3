//! hearth's soak harness: 4 honest node processes and a gateway on loopback serve 16 streams of
//! greedy completions, first alone (the attack-free reference), then while hostile peers and
//! clients run every attack of issue #13 at once and a random node is killed with SIGKILL every
//! so often. It reports honest throughput under attack as a share of the reference, p95 TTFT,
//! peak memory per node against its budget, crashes, generations whose text changed, failed
//! requests by cause, and what each attack got. `hearth soak` runs it; docs/reliability.md
//! records its figures.
//!
//! Loopback only: it starts every process it attacks, and nothing else is reached.

mod attacks;
pub use attacks::Attack;
mod load;
mod procs;
pub mod report;

use anyhow::{bail, Context, Result};
use attacks::{NodeTarget, Tallies, Targets};
use hearth_core::BlockRange;
use hearth_engine::ModelSource;
use procs::{Guarded, Launcher, NodeBudget, NodeProc};
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
    /// Length of the attack-free phase.
    pub baseline: Duration,
    /// Length of the attacked phase.
    pub attacked: Duration,
    /// Honest client streams.
    pub streams: usize,
    /// Completion tokens per honest request.
    pub max_tokens: usize,
    /// A random node is killed (and restarted) this often in the attacked phase; `None`: never.
    pub kill_every: Option<Duration>,
    /// The attacks of the attacked phase (all: [`Attack::ALL`]).
    pub attacks: Vec<Attack>,
}

/// KV cache, frame budget and runtime allowance of each node, MiB (the weights come on top).
const NODE_CACHE_MIB: u64 = 256;
const NODE_FRAME_MIB: u64 = 64;
const NODE_RUNTIME_MIB: u64 = 512;
/// How long the nodes give a declared frame and the gateway a blocked write (short, so the
/// attacks they answer show within a one-minute run).
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
const GATEWAY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the soak and reports; fails only when it cannot set the run up.
pub async fn run(cfg: SoakConfig) -> Result<Report> {
    let src = ModelSource::open(&cfg.model)
        .with_context(|| format!("opening {}", cfg.model.display()))?;
    let config = src.config().clone();
    let n_blocks = u32::try_from(config.num_layers).context("block count")?;
    if n_blocks < 2 {
        bail!("the soak splits the model in two; it has {n_blocks} block(s)");
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

    eprintln!(
        "soak: starting 4 nodes ({} and {} twice each)",
        spans[0], spans[1]
    );
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 0..4 {
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
        "soak: gateway {url} serves; attack-free phase ({:?})",
        cfg.baseline
    );

    let reference = phase(&cfg, &url, cfg.baseline, &mut nodes, None, &launcher).await;
    let targets = Arc::new(Targets {
        nodes: RwLock::new(node_targets(&nodes, &spans)),
        model_id,
        n_blocks,
        hidden_size: u32::try_from(config.hidden_size).context("hidden size")?,
        gateway: url.clone(),
        agent: agent_url,
        agent_token,
        frame_timeout: FRAME_TIMEOUT,
        gateway_write_timeout: GATEWAY_WRITE_TIMEOUT,
    });
    eprintln!("soak: attacked phase ({:?})", cfg.attacked);
    let tallies = Tallies::default();
    let attacked = phase(
        &cfg,
        &url,
        cfg.attacked,
        &mut nodes,
        Some((targets, tallies.clone(), spans)),
        &launcher,
    )
    .await;

    let mut crashes: Vec<String> = nodes
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
    let under_attack = PhaseSummary {
        harness_cpu_per_second: attacked.harness_cpu_per_second,
        ..summarize(&attacked.gens, attacked.seconds)
    };
    let (texts_compared, texts_differing) = differing_texts(&reference.gens, &attacked.gens);
    let budget = launcher.budget.total_mib as f64;
    Ok(Report {
        throughput_ratio: if baseline.tokens_per_second > 0.0 {
            under_attack.tokens_per_second / baseline.tokens_per_second
        } else {
            0.0
        },
        baseline,
        attacked: under_attack,
        texts_compared,
        texts_differing,
        crashes,
        kills: attacked.kills,
        memory: nodes
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

struct PhaseResult {
    gens: Vec<report::Generation>,
    seconds: f64,
    kills: usize,
    harness_cpu_per_second: f64,
}

/// Runs the honest load for `length`; with `attack`, also every attack and the kills.
async fn phase(
    cfg: &SoakConfig,
    url: &str,
    length: Duration,
    nodes: &mut [NodeProc],
    attack: Option<(Arc<Targets>, Tallies, [BlockRange; 2])>,
    launcher: &Launcher,
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
    let attackers = attack
        .as_ref()
        .map(|(targets, tallies, _)| {
            attacks::spawn(&cfg.attacks, targets.clone(), tallies.clone(), stop.clone())
        })
        .unwrap_or_default();
    let mut kills = 0;
    let mut next_kill = cfg.kill_every.map(|d| start + d);
    while start.elapsed() < length {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut restarted = false;
        for i in 0..nodes.len() {
            if !nodes[i].watch() {
                // Crashed (counted in `watch`): bring it back so the run goes on.
                restart(nodes, i, launcher);
                restarted = true;
            }
        }
        if let (Some(at), Some(_)) = (next_kill, &attack) {
            if Instant::now() >= at {
                let victim = random_index(nodes.len());
                eprintln!("soak: kill -9 {}", nodes[victim].name);
                nodes[victim].kill();
                kills += 1;
                // Its replicas serve while it is down; it comes back as a node would after a
                // reboot (same identity, new port).
                tokio::time::sleep(Duration::from_secs(2)).await;
                restart(nodes, victim, launcher);
                restarted = true;
                next_kill = cfg.kill_every.map(|d| Instant::now() + d);
            }
        }
        if restarted {
            if let Some((targets, _, spans)) = &attack {
                *targets.nodes.write().unwrap_or_else(|p| p.into_inner()) =
                    node_targets(nodes, spans);
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
    PhaseResult {
        gens,
        seconds,
        kills,
        harness_cpu_per_second,
    }
}

fn restart(nodes: &mut [NodeProc], i: usize, launcher: &Launcher) {
    let bootstrap = nodes
        .iter()
        .enumerate()
        .find(|(j, n)| *j != i && !n.addr.is_empty())
        .map(|(_, n)| n.addr.clone());
    let node = &mut nodes[i];
    node.kill();
    if let Err(e) = tokio::task::block_in_place(|| launcher.start(node, bootstrap.as_deref())) {
        eprintln!("soak: {} did not restart: {e:#}", node.name);
        node.crashes += 1;
    }
}

fn node_targets(nodes: &[NodeProc], spans: &[BlockRange; 2]) -> Vec<NodeTarget> {
    nodes
        .iter()
        .enumerate()
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

fn random_index(n: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) % n.max(1) as u64) as usize
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
