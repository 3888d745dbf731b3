//! `hearth`: the command-line front end. Thin: parses arguments and wires library crates together.
//!
//! Module graph (a DAG; a subcommand never imports another subcommand):
//! - shared, importing no other module: `common` (hearth's home, model paths, the runtime) and
//!   `net_args` (network flags → `NetConfig` / `ClientConfig`);
//! - shared, importing only `common`: `local_swarm` (node processes on loopback),
//!   `swarm_generate` (generating through the swarm) and `serve` (serving the HTTP API);
//! - one subcommand per module: `model`, `generate`, `bench`, `node`, `peers`, `demo`,
//!   `swarm_bench`, `gateway`, `agent`, `simulate`, each importing only shared modules.
//!
//! Defaults live in the libraries' config types (`NetConfig`, `ClientConfig`, `NodeConfig`,
//! `GatewayConfig`, `AgentConfig`, `SamplingParams`, `hearth_sim::run::Options`); flags show
//! them and fall back to them.

mod agent;
mod bench;
mod common;
mod demo;
mod gateway;
mod generate;
mod local_swarm;
mod model;
mod net_args;
mod node;
mod peers;
mod serve;
mod simulate;
mod soak;
mod swarm_bench;
mod swarm_generate;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "Disaggregated, verifiable LLM inference on idle GPUs"
)]
struct Cli {
    /// Worker threads for tensor kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or inspect model files.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Start a local swarm of node processes on loopback and generate through it.
    Demo(demo::DemoArgs),
    /// List the servers the swarm's DHT knows for a model.
    Peers(peers::PeersArgs),
    /// Serve blocks of a model to the swarm.
    Node(Box<node::NodeArgs>),
    /// Generate text from a prompt: locally (optionally through a pipeline of slices) or through
    /// the swarm (`--swarm`).
    Generate(Box<generate::GenerateArgs>),
    /// Measure prefill/decode tokens per second and memory per slice.
    Bench(bench::BenchArgs),
    /// Measure decode throughput through node processes on loopback, and failover time.
    SwarmBench(swarm_bench::SwarmBenchArgs),
    /// Serve the OpenAI-compatible HTTP API over the swarm.
    Gateway(Box<gateway::GatewayArgs>),
    /// Run the energy agent: read telemetry and prices, decide per device whether to mine,
    /// serve AI, heat or curtail, and act on miners and GPUs.
    Agent(Box<agent::AgentArgs>),
    /// Check a gateway trail offline, re-check a fraud proof, or calibrate verification.
    Verify(Box<verify::VerifyArgs>),
    /// Replay a fleet over price and AI-job traces with the agent's policies and report.
    Simulate(Box<simulate::SimulateArgs>),
    /// Run an honest swarm on loopback under every hostile peer and client at once (or under
    /// churn, `--churn`), and compare it with the same run without them.
    Soak(soak::SoakArgs),
    /// Internal: load one slice in this process and report its memory (used by `bench --rss`).
    #[command(hide = true)]
    RssProbe(bench::RssProbeArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Without RUST_LOG: errors only, plus the gateway's per-request lines (the agent prints
        // its decisions itself).
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("error,hearth_gateway=info")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // candle's CPU kernels size their pools from RAYON_NUM_THREADS; set it before any pool exists.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon_pool(n)?;
    }
    match cli.command {
        Command::Model(cmd) => model::run(cmd),
        Command::Demo(args) => demo::run(args, cli.threads),
        Command::SwarmBench(args) => swarm_bench::run(args),
        Command::Peers(args) => peers::run(args),
        Command::Node(args) => node::run(*args),
        Command::Generate(args) => generate::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Gateway(args) => gateway::run(*args),
        Command::Agent(args) => agent::run(*args),
        Command::Simulate(args) => simulate::run(*args),
        Command::Verify(args) => verify::run(*args),
        Command::Soak(args) => soak::run(args),
        Command::RssProbe(args) => bench::rss_probe(args),
    }
}

fn rayon_pool(n: usize) -> anyhow::Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot size the thread pool: {e}"))
}
