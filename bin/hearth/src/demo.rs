//! `hearth demo`: start a local swarm of node processes on loopback, generate through it, and
//! optionally keep serving the OpenAI-compatible API over it. Depends only on `common`,
//! `local_swarm`, `swarm_generate` and `serve`.

use crate::common::{model_path, runtime, DEFAULT_SHAPE};
use crate::local_swarm::{loopback_client, spawn_nodes};
use crate::serve::{default_model_name, serve_blocking, swarm_backend, API_KEYS_ENV};
use crate::swarm_generate::generate_through_swarm;
use anyhow::{bail, Result};
use clap::Args;
use hearth_core::{ApiKeys, BlockRange};
use hearth_engine::ModelSource;
use hearth_gateway::GatewayConfig;
use hearth_sampling::SamplingParams;
use hearth_swarm::SwarmClient;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Shape of the synthesized model the swarm serves.
    #[arg(long, default_value = DEFAULT_SHAPE)]
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

pub(crate) fn run(args: DemoArgs, threads: Option<usize>) -> Result<()> {
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
    // Greedy, so the demo's text is the same every time.
    let params = SamplingParams {
        max_tokens: args.max_tokens,
        ..SamplingParams::default()
    };
    let client = loopback_client(&bootstrap)?;
    let started = Instant::now();
    generate_through_swarm(
        &src,
        head,
        &tokenizer,
        &prompt,
        &params,
        client.clone(),
        Some(spans.len()),
        &args.prompt,
    )?;
    eprintln!("demo finished in {:.1} s", started.elapsed().as_secs_f64(),);
    if let Some(addr) = args.gateway {
        let cfg = GatewayConfig {
            model_name: default_model_name(&model),
            api_keys: ApiKeys::keys_from_flags_and_env(&[], API_KEYS_ENV),
            ..GatewayConfig::default()
        };
        let rt = runtime()?;
        let client = rt.block_on(SwarmClient::start(client))?;
        let backend = swarm_backend(&rt, client, &src, true)?;
        serve_blocking(&rt, backend, cfg, addr, args.gateway_ready_file.as_deref())?;
    }
    eprintln!("stopping {} nodes", children.0.len());
    Ok(())
}
