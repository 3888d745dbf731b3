//! `hearth gateway`: the OpenAI-compatible HTTP API over the swarm (or over in-process blocks
//! with `--local`).

use crate::common::hearth_home;
use crate::swarm::{runtime, NetArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use hearth_engine::identity::identity_cached;
use hearth_engine::{LoadOptions, ModelSource};
use hearth_gateway::{Backend, Gateway, GatewayConfig, LocalBackend, SwarmBackend};
use hearth_swarm::SwarmClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub model: crate::common::ModelArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Run every block in this process instead of through the swarm (one machine, no network).
    #[arg(long)]
    pub local: bool,
    /// Benchmarking only: compute each generation's head separately instead of batching.
    #[arg(long, hide = true)]
    pub no_head_batch: bool,
}

/// The HTTP side of a gateway (also used by `hearth demo --gateway`).
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Address to serve HTTP on. Without an API key only loopback addresses are allowed.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Accepted bearer token (repeatable). Also read from HEARTH_API_KEYS (comma-separated).
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// File with one accepted bearer token per line.
    #[arg(long)]
    pub api_keys_file: Option<PathBuf>,
    /// Name clients use in `model` (default: the model folder's or file's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Completion tokens when a request does not say.
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Longest prompt + completion in tokens (default: the model's context length).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Generations running at once.
    #[arg(long, default_value_t = 8)]
    pub max_running: usize,
    /// Generations waiting beyond those running; more get 429.
    #[arg(long, default_value_t = 32)]
    pub max_queue: usize,
    /// Write the gateway's base URL to this file once it listens (for scripts and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

impl HttpArgs {
    /// The flags' defaults, for commands that embed a gateway.
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            http: HttpArgs,
        }
        <Only as clap::Parser>::parse_from(["hearth"]).http
    }

    fn config(&self, model: &Path) -> Result<GatewayConfig> {
        let mut keys = self.api_keys.clone();
        if let Ok(env) = std::env::var("HEARTH_API_KEYS") {
            keys.extend(env.split(',').map(|k| k.trim().to_string()));
        }
        if let Some(file) = &self.api_keys_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading API keys from {}", file.display()))?;
            keys.extend(text.lines().map(|l| l.trim().to_string()));
        }
        keys.retain(|k| !k.is_empty());
        let default_name = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "hearth".into());
        Ok(GatewayConfig {
            model_name: self.model_name.clone().unwrap_or(default_name),
            api_keys: keys,
            max_body_bytes: self.max_body_bytes,
            max_tokens: self.max_tokens,
            default_max_tokens: self.default_max_tokens,
            max_context: self.max_context,
            max_running: self.max_running.max(1),
            max_queue: self.max_queue,
            ..GatewayConfig::default()
        })
    }
}

/// Without an API key only loopback addresses are allowed.
fn check_bind(cfg: &GatewayConfig, addr: SocketAddr) -> Result<()> {
    if cfg.api_keys.is_empty() && !addr.ip().is_loopback() {
        bail!(
            "refusing to serve on {addr} without an API key: pass --api-key (or HEARTH_API_KEYS), or listen on a loopback address such as 127.0.0.1"
        );
    }
    Ok(())
}

pub fn run(args: GatewayArgs) -> Result<()> {
    // Refuse an unsafe address before spending time loading the model.
    check_bind(&args.http.config(Path::new(""))?, args.http.http)?;
    let path = args.model.path()?;
    let src =
        ModelSource::open(&path).with_context(|| format!("opening model {}", path.display()))?;
    let rt = runtime()?;
    let backend: Arc<dyn Backend> = if args.local {
        let ident = identity_cached(&src, &hearth_home().join("model-ids"))?;
        Arc::new(LocalBackend::new(src, ident.model_id)?)
    } else {
        let client = rt.block_on(SwarmClient::start(args.net.client_config()))?;
        swarm_backend(&rt, client, &src, !args.no_head_batch)?
    };
    serve_blocking(&rt, backend, &args.http, &path)
}

/// A backend over the swarm; waits (bounded) for the model's blocks to be covered and says so.
pub fn swarm_backend(
    rt: &tokio::runtime::Runtime,
    client: SwarmClient,
    src: &ModelSource,
    head_batch: bool,
) -> Result<Arc<dyn Backend>> {
    let ident = identity_cached(src, &hearth_home().join("model-ids"))?;
    let n_blocks = src.config().num_layers as u32;
    eprintln!(
        "looking for servers of model {} ...",
        ident.model_id.short()
    );
    match rt.block_on(client.wait_for_coverage(&ident.model_id, n_blocks)) {
        Ok(servers) => eprintln!("{} servers cover all {n_blocks} blocks", servers.len()),
        // Serve anyway: requests get 503 until nodes arrive.
        Err(e) => eprintln!("warning: {e:#}; serving anyway"),
    }
    let head = Arc::new(src.load_head(&LoadOptions::default(), None)?);
    let backend = SwarmBackend::new(client, head, src.tokenizer()?, ident.model_id);
    Ok(if head_batch {
        Arc::new(backend)
    } else {
        Arc::new(backend.without_head_batching())
    })
}

/// Serves the gateway until Ctrl-C.
pub fn serve_blocking(
    rt: &tokio::runtime::Runtime,
    backend: Arc<dyn Backend>,
    http: &HttpArgs,
    model: &Path,
) -> Result<()> {
    let cfg = http.config(model)?;
    check_bind(&cfg, http.http)?;
    let model_name = cfg.model_name.clone();
    let no_keys = cfg.api_keys.is_empty();
    let gateway = Gateway::new(backend, cfg);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(http.http)
            .await
            .with_context(|| format!("binding {}", http.http))?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        if no_keys {
            eprintln!("no API key configured: listening on loopback only ({addr})");
        }
        eprintln!(
            "OpenAI-compatible API at {url}/v1 (model \"{model_name}\"); metrics at {url}/metrics"
        );
        if let Some(ready) = &http.ready_file {
            std::fs::write(ready, &url).with_context(|| format!("writing {}", ready.display()))?;
        }
        hearth_gateway::serve(listener, gateway, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
    })
}
