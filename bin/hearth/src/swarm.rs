//! `hearth node`, `hearth demo` and the swarm half of `hearth generate`.

use crate::common::{hearth_home, model_path};
use anyhow::{bail, Context, Result};
use clap::Args;
use hearth_core::BlockRange;
use hearth_engine::identity::identity_cached;
use hearth_engine::{generate, ClientHead, ModelSource, Pipeline};
use hearth_policy::agent_state::Snapshot;
use hearth_sampling::SamplingParams;
use hearth_swarm::client::short_peer;
use hearth_swarm::node::{Fault, Node, NodeConfig};
use hearth_swarm::routing::RouteMode;
use hearth_swarm::{ClientConfig, NetConfig, SwarmClient};
use hearth_tokenizer::Tokenizer;
use libp2p::Multiaddr;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a process joins the network.
#[derive(Args, Clone, Debug)]
pub struct NetArgs {
    /// Peer to join through (multiaddr ending in /p2p/<peer id>); repeatable.
    #[arg(long)]
    pub bootstrap: Vec<Multiaddr>,
    /// Address to listen on; repeatable (default: TCP and QUIC on all interfaces, any port).
    #[arg(long)]
    pub listen: Vec<Multiaddr>,
    /// Do not discover peers on the local network by mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Lifetime of DHT records, seconds (nodes refresh theirs at a third of it).
    #[arg(long, default_value_t = 60)]
    pub record_ttl: u64,
    /// Route for throughput (spread parallel streams over replicas) instead of latency.
    #[arg(long)]
    pub throughput: bool,
    /// Seconds to wait for one hop's answer before failing over.
    #[arg(long, default_value_t = 30)]
    pub step_timeout: u64,
}

impl NetArgs {
    fn net_config(&self, dht_server: bool) -> NetConfig {
        let mut cfg = NetConfig {
            bootstrap: self.bootstrap.clone(),
            mdns: !self.no_mdns,
            dht_server,
            record_ttl: Duration::from_secs(self.record_ttl.max(1)),
            ..NetConfig::default()
        };
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
        }
        cfg
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::default();
        cfg.net = NetConfig {
            listen: cfg.net.listen.clone(),
            ..self.net_config(false)
        };
        if !self.listen.is_empty() {
            cfg.net.listen = self.listen.clone();
        }
        cfg.mode = if self.throughput {
            RouteMode::Throughput
        } else {
            RouteMode::Latency
        };
        cfg.step_timeout = Duration::from_secs(self.step_timeout.max(1));
        cfg
    }
}

#[derive(Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub model: crate::common::ModelArgs,
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
    #[arg(long, default_value_t = 60)]
    pub rebalance_secs: u64,
    /// Seconds to look at the swarm before choosing blocks automatically.
    #[arg(long, default_value_t = 3)]
    pub discovery_secs: u64,
    /// Asking price, micro-credits per 1000 block-tokens (announced; charged by the market).
    #[arg(long, default_value_t = 0)]
    pub price: u64,
    /// KV-cache budget for all sessions together, MiB.
    #[arg(long, default_value_t = 2048)]
    pub cache_mib: u64,
    #[command(flatten)]
    pub net: NetArgs,
    /// Testing only: misbehave in the given way (bad-signature, non-finite, wrong-shape).
    #[arg(long, hide = true)]
    pub fault: Option<Fault>,
    /// Testing only: delay every answer by this many milliseconds.
    #[arg(long, hide = true, default_value_t = 0)]
    pub step_delay_ms: u64,
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

/// The async runtime of the swarm commands: networking needs little, kernels run on rayon.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run_node(args: NodeArgs) -> Result<()> {
    let model = args.model.path()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| hearth_home().join("node"));
    let mut cfg = NodeConfig::new(model.clone(), data_dir);
    cfg.blocks = args.blocks;
    cfg.max_blocks = args.max_blocks;
    cfg.net = args.net.net_config(true);
    cfg.announce_ttl = Duration::from_secs(args.net.record_ttl.max(3));
    cfg.price = args.price;
    cfg.sessions.cache_budget_bytes = args.cache_mib << 20;
    cfg.fault = args.fault;
    cfg.step_delay = Duration::from_millis(args.step_delay_ms);
    cfg.rebalance_interval =
        (args.rebalance_secs > 0).then(|| Duration::from_secs(args.rebalance_secs));
    cfg.discovery_wait = Duration::from_secs(args.discovery_secs);
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

/// Generates through the swarm with `head` kept in this process.
#[allow(clippy::too_many_arguments)]
pub fn generate_through_swarm(
    src: &ModelSource,
    head: Arc<ClientHead>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    net: &NetArgs,
    print_receipts: Option<usize>,
    prompt_text: &str,
) -> Result<()> {
    let ident = identity_cached(src, &hearth_home().join("model-ids"))?;
    let n_blocks = src.config().num_layers as u32;
    let max_len = (prompt.len() + params.max_tokens).min(src.config().max_position_embeddings);
    let rt = runtime()?;
    let client = rt.block_on(SwarmClient::start(net.client_config()))?;
    eprintln!(
        "looking for servers of model {} ...",
        ident.model_id.short()
    );
    let servers = rt.block_on(client.wait_for_coverage(&ident.model_id, n_blocks))?;
    eprintln!("{} servers cover all {n_blocks} blocks", servers.len());
    let chain = client.chain(ident.model_id, n_blocks, max_len);
    let log = chain.log();
    let mut pipeline = Pipeline {
        head,
        stages: vec![Box::new(chain)],
        head_batch: None,
    };
    let mut stdout = std::io::stdout();
    print!("{prompt_text}");
    let out = generate(&mut pipeline, tokenizer, prompt, params, &mut |text| {
        print!("{text}");
        let _ = stdout.flush();
    })?;
    println!();
    drop(pipeline);
    let log = log.lock().map_err(|_| anyhow::anyhow!("log poisoned"))?;
    let route: Vec<String> = log
        .route
        .iter()
        .map(|(p, r)| format!("{} [{r}]", short_peer(p)))
        .collect();
    eprintln!("route: client -> {} -> client", route.join(" -> "));
    for f in &log.failovers {
        eprintln!(
            "failover: {} [{}] dropped ({}); replaced in {:.0} ms replaying {} positions",
            short_peer(&f.peer),
            f.range,
            f.reason,
            f.recovery.as_secs_f64() * 1000.0,
            f.replayed_tokens
        );
    }
    let verified = log
        .receipts
        .iter()
        .filter(|(_, r)| r.verify().is_ok())
        .count();
    eprintln!(
        "{} prompt tokens, {} generated ({:?}); prefill {:.1} tok/s, decode {:.1} tok/s; {} hop receipts, {} verified",
        out.prompt_tokens,
        out.tokens.len(),
        out.finish,
        out.prefill_tokens_per_sec(),
        out.decode_tokens_per_sec(),
        log.receipts.len(),
        verified
    );
    if let Some(last) = print_receipts {
        let skip = log.receipts.len().saturating_sub(last);
        if skip > 0 {
            eprintln!(
                "(the last {last} receipts; `hearth generate --swarm --receipts` prints all)"
            );
        }
        for (peer, r) in log.receipts.iter().skip(skip) {
            eprintln!(
                "receipt: node {} step {} blocks {} in {} out {} sig {}..",
                short_peer(peer),
                r.body.step,
                r.body.span,
                r.body.input.short(),
                r.body.output.short(),
                &hex(&r.signature)[..16]
            );
        }
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Args)]
pub struct DemoArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Shape of the synthesized model the swarm serves.
    #[arg(long, default_value = "tiny")]
    pub synth: String,
    #[arg(long, short, default_value = "Hello, hearth")]
    pub prompt: String,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Seconds to wait for the swarm to cover every block.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// After the demo generation, keep the swarm running and serve the OpenAI-compatible API on
    /// this address (e.g. 127.0.0.1:8080) until Ctrl-C.
    #[arg(long)]
    pub gateway: Option<std::net::SocketAddr>,
    /// With --gateway: write the API's base URL to this file once it listens.
    #[arg(long, requires = "gateway")]
    pub gateway_ready_file: Option<PathBuf>,
}

/// Child processes that are killed when the demo ends, however it ends; with the peer id each
/// reported.
pub struct Children(pub Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run_demo(args: DemoArgs, threads: Option<usize>) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let model = model_path(None, Some(&args.synth))?;
    let src = ModelSource::open(&model)?;
    let n_blocks = src.config().num_layers as u32;
    let spans = BlockRange::split_even(n_blocks, args.nodes.min(n_blocks))?;
    let work = tempfile::tempdir()?;
    let node_threads = threads.unwrap_or(1);
    let (children, bootstrap) = spawn_nodes(
        &model,
        &spans,
        node_threads,
        work.path(),
        Duration::from_secs(args.timeout),
        true,
    )?;
    let tokenizer = src.tokenizer()?;
    let head = Arc::new(src.load_head(&Default::default(), None)?);
    let prompt = tokenizer.encode(&args.prompt, true)?;
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: args.max_tokens,
        ..SamplingParams::default()
    };
    let net = NetArgs {
        bootstrap: vec![bootstrap.parse()?],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        no_mdns: true,
        record_ttl: 30,
        throughput: false,
        step_timeout: 30,
    };
    let started = Instant::now();
    generate_through_swarm(
        &src,
        head,
        &tokenizer,
        &prompt,
        &params,
        &net,
        Some(spans.len()),
        &args.prompt,
    )?;
    eprintln!("demo finished in {:.1} s", started.elapsed().as_secs_f64(),);
    if let Some(addr) = args.gateway {
        let http = crate::gateway::HttpArgs {
            http: addr,
            ready_file: args.gateway_ready_file.clone(),
            ..crate::gateway::HttpArgs::defaults()
        };
        let rt = runtime()?;
        let client = rt.block_on(SwarmClient::start(net.client_config()))?;
        let backend = crate::gateway::swarm_backend(&rt, client, &src, true)?;
        crate::gateway::serve_blocking(&rt, backend, &http, &model)?;
    }
    eprintln!("stopping {} nodes", children.0.len());
    Ok(())
}

/// Starts one `hearth node` process per span on loopback, the first as everyone's bootstrap
/// peer; returns once every node serves. With `echo`, prints each node's first line.
pub fn spawn_nodes(
    model: &std::path::Path,
    spans: &[BlockRange],
    threads: usize,
    work: &std::path::Path,
    timeout: Duration,
    echo: bool,
) -> Result<(Children, String)> {
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    let mut bootstrap: Option<String> = None;
    for (i, span) in spans.iter().enumerate() {
        let ready = work.join(format!("node{i}.addr"));
        let mut cmd = Command::new(&exe);
        cmd.args(["--threads", &threads.to_string(), "node", "--model"])
            .arg(model)
            .arg("--blocks")
            .arg(span.to_string())
            .arg("--data-dir")
            .arg(work.join(format!("node{i}")))
            .arg("--ready-file")
            .arg(&ready)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .args(["--record-ttl", "30"])
            .env("HEARTH_HOME", hearth_home())
            .stdout(Stdio::piped())
            .stderr(node_log(i)?);
        if let Some(b) = &bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd.spawn().context("starting a node process")?;
        let stdout = child.stdout.take();
        children.0.push((String::new(), child));
        let addr = wait_for_file(&ready, timeout)?;
        if let Some(out) = stdout {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            if echo {
                print!("{line}");
            }
        }
        if let Some(last) = children.0.last_mut() {
            last.0 = addr.rsplit('/').next().unwrap_or_default().to_string();
        }
        bootstrap.get_or_insert(addr);
    }
    let bootstrap = bootstrap.context("no node started")?;
    Ok((children, bootstrap))
}

/// Where node `i`'s stderr goes: `$HEARTH_NODE_LOGS/node<i>.log` when that is set (for
/// debugging a demo or benchmark), else nowhere.
fn node_log(i: usize) -> Result<Stdio> {
    match std::env::var_os("HEARTH_NODE_LOGS") {
        Some(dir) => {
            let path = PathBuf::from(dir).join(format!("node{i}.log"));
            Ok(std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?
                .into())
        }
        None => Ok(Stdio::null()),
    }
}

fn wait_for_file(path: &std::path::Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Some(line) = s.lines().next() {
                return Ok(line.trim().to_string());
            }
        }
        if Instant::now() > deadline {
            bail!("node did not report ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Args)]
pub struct PeersArgs {
    #[command(flatten)]
    pub model: crate::common::ModelArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// Seconds to spend joining the network before looking.
    #[arg(long, default_value_t = 2)]
    pub wait: u64,
}

/// Lists the servers the DHT currently knows for a model, with their announcements.
pub fn run_peers(args: PeersArgs) -> Result<()> {
    let model = args.model.path()?;
    let src = ModelSource::open(&model)?;
    let ident = identity_cached(&src, &hearth_home().join("model-ids"))?;
    let n_blocks = src.config().num_layers as u32;
    let rt = runtime()?;
    rt.block_on(async {
        let client = SwarmClient::start(args.net.client_config()).await?;
        tokio::time::sleep(Duration::from_secs(args.wait)).await;
        let servers = client.servers(&ident.model_id, n_blocks).await;
        println!(
            "model {} ({n_blocks} blocks): {} servers",
            ident.model_id.short(),
            servers.len()
        );
        for s in servers {
            let a = &s.announcement;
            println!(
                "{} blocks {} block_ms {:.3} throughput {:.1} tok/s cache_free {} sessions {} price {} rtt {}",
                s.peer,
                a.span,
                a.block_ms,
                a.throughput,
                a.cache_free_tokens,
                a.active_sessions,
                a.price,
                s.rtt.map_or("?".to_string(), |r| format!("{:.2}ms", r.as_secs_f64() * 1000.0))
            );
        }
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}
