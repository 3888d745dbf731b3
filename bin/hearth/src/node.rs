//! `hearth node`: serve blocks of a model to the swarm, optionally obeying an energy agent.
//! Depends only on `common` and `net_args`.

use crate::common::{hearth_home, runtime, ModelArgs};
use crate::net_args::NetArgs;
use anyhow::{Context, Result};
use clap::Args;
use hearth_core::BlockRange;
use hearth_engine::SessionLimits;
use hearth_policy::agent_state::Snapshot;
use hearth_swarm::adversary::Adversary;
use hearth_swarm::node::{Fault, Node, NodeConfig};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The library's node defaults, which the flags show and fall back to (the paths are
/// placeholders: only the tunables are read).
fn defaults() -> NodeConfig {
    NodeConfig::new(PathBuf::new(), PathBuf::new())
}

#[derive(Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Blocks to serve, `A..B`; default: chosen from what the swarm lacks.
    #[arg(long)]
    pub blocks: Option<BlockRange>,
    /// With automatic placement: the most blocks this node takes.
    #[arg(long)]
    pub max_blocks: Option<u32>,
    /// Holds node.key (the node's identity) and cached model ids (default: $HEARTH_HOME/node).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// With automatic placement: seconds between checks whether other blocks would serve the
    /// swarm better (0: never move).
    #[arg(long, default_value_t = defaults().rebalance_interval.map_or(0, |d| d.as_secs()))]
    pub rebalance_secs: u64,
    /// Seconds to look at the swarm before choosing blocks automatically.
    #[arg(long, default_value_t = defaults().discovery_wait.as_secs())]
    pub discovery_secs: u64,
    /// Asking price, micro-credits per 1000 block-tokens (announced; charged by the market).
    #[arg(long, default_value_t = defaults().price)]
    pub price: u64,
    /// KV-cache budget for all sessions together, MiB.
    #[arg(long, default_value_t = defaults().sessions.cache_budget_bytes >> 20)]
    pub cache_mib: u64,
    /// Percent of that budget one peer's sessions may hold together (1 to 100).
    #[arg(long, default_value_t = defaults().cache_percent_per_peer,
          value_parser = clap::value_parser!(u64).range(1..=100))]
    pub cache_percent_per_peer: u64,
    /// Memory for request frames in flight across all streams, MiB (a frame waits for room).
    #[arg(long, default_value_t = defaults().frame_budget_bytes >> 20)]
    pub frame_budget_mib: usize,
    /// Seconds a peer has to send the rest of a frame once it has sent its length.
    #[arg(long, default_value_t = defaults().frame_timeout.as_secs())]
    pub frame_timeout: u64,
    #[command(flatten)]
    pub net: NetArgs,
    /// Testing only: misbehave in the given way (bad-signature, non-finite, wrong-shape,
    /// crash-at-step:N).
    #[arg(long, hide = true)]
    pub fault: Option<Fault>,
    /// Testing only: cheat in the given way (noise:REL, stale, random, copy-input, skip-block,
    /// claim-model:HEX, each optionally @FRACTION or @from:POSITION); refused unless built with
    /// the `adversary` feature, as test builds are.
    #[arg(long, hide = true)]
    pub adversary: Option<Adversary>,
    /// Testing only: delay every answer by this many milliseconds.
    #[arg(long, hide = true)]
    pub step_delay_ms: Option<u64>,
    /// Write one line `<multiaddr>/p2p/<peer id>` here once serving (used by `hearth demo`).
    #[arg(long, hide = true)]
    pub ready_file: Option<PathBuf>,
    /// An energy agent (`hearth agent`) to obey: the node takes new sessions only while the
    /// agent's decision for `--agent-device` is to serve AI (e.g. http://127.0.0.1:9100).
    #[arg(long, requires = "agent_device")]
    pub agent_url: Option<String>,
    /// The agent's id of the device this node runs on.
    #[arg(long, requires = "agent_url")]
    pub agent_device: Option<String>,
    /// Seconds between polls of the agent.
    #[arg(long, default_value_t = 5)]
    pub agent_poll_secs: u64,
}

/// Follows the energy agent's decision for one device: serve AI → take sessions; anything
/// else → pause (open sessions finish). An unreachable agent leaves the last decision in force.
async fn follow_agent(node: Arc<Node>, url: String, device: String, every: Duration) {
    let state_url = format!("{}/api/state", url.trim_end_matches('/'));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let body = match hearth_energy::signals::http::get(&state_url, Duration::from_secs(5)).await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("energy agent unreachable ({e}); keeping the last decision");
                continue;
            }
        };
        let state: Snapshot = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("the agent's state does not parse ({e}); keeping the last decision");
                continue;
            }
        };
        match state.serves_ai(&device) {
            Some(on) => {
                if on != node.is_serving() {
                    eprintln!(
                        "energy agent: {} serving (device {device})",
                        if on { "resume" } else { "pause" }
                    );
                }
                node.set_serving(on);
            }
            None => tracing::warn!("the agent's state has no device {device:?}"),
        }
    }
}

pub(crate) fn run(args: NodeArgs) -> Result<()> {
    let model = args.model.path()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| hearth_home().join("node"));
    let base = NodeConfig::new(model, data_dir);
    let cfg = NodeConfig {
        blocks: args.blocks,
        max_blocks: args.max_blocks,
        net: args.net.node_net(),
        // The node's announcements live as long as the records it stores for others.
        announce_ttl: Duration::from_secs(args.net.record_ttl.max(3)),
        price: args.price,
        sessions: SessionLimits {
            cache_budget_bytes: args.cache_mib.saturating_mul(1 << 20),
            ..base.sessions
        },
        frame_budget_bytes: args.frame_budget_mib.saturating_mul(1 << 20),
        cache_percent_per_peer: args.cache_percent_per_peer,
        frame_timeout: Duration::from_secs(args.frame_timeout.max(1)),
        fault: args.fault,
        adversary: args.adversary,
        step_delay: args
            .step_delay_ms
            .map_or(base.step_delay, Duration::from_millis),
        rebalance_interval: (args.rebalance_secs > 0)
            .then(|| Duration::from_secs(args.rebalance_secs)),
        discovery_wait: Duration::from_secs(args.discovery_secs),
        ..base
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let node = Arc::new(Node::start(cfg).await?);
        if let (Some(url), Some(device)) = (args.agent_url.clone(), args.agent_device.clone()) {
            let every = Duration::from_secs(args.agent_poll_secs.max(1));
            tokio::spawn(follow_agent(node.clone(), url, device, every));
        }
        // Give the listeners a moment to report their addresses.
        let mut addrs = Vec::new();
        for _ in 0..50 {
            addrs = node.net.status().await.listen_addrs;
            if !addrs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let full: Vec<String> = addrs
            .iter()
            .map(|a| format!("{a}/p2p/{}", node.peer_id))
            .collect();
        println!(
            "node {} serving blocks {} of {} (model {}, {:.2} ms/block/token) at {}",
            node.peer_id,
            node.span(),
            node.n_blocks,
            node.model_id.short(),
            node.block_ms,
            full.join(" ")
        );
        let _ = std::io::stdout().flush();
        if let Some(path) = &args.ready_file {
            let tcp = full
                .iter()
                .find(|a| a.contains("/tcp/"))
                .or(full.first())
                .context("node has no listen address")?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{tcp}\n"))?;
            std::fs::rename(&tmp, path)?;
        }
        tokio::signal::ctrl_c().await?;
        eprintln!("shutting down");
        Ok(())
    })
}
