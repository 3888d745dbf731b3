//! `hearth gateway`: the OpenAI-compatible HTTP API over the swarm (or over in-process blocks
//! with `--local`). Depends only on `common`, `net_args` and `serve`.

use crate::common::{hearth_home, runtime, ModelArgs};
use crate::net_args::NetArgs;
use crate::serve::{check_bind, default_model_name, serve_blocking, swarm_backend, API_KEYS_ENV};
use anyhow::{Context, Result};
use clap::Args;
use hearth_core::ApiKeys;
use hearth_engine::identity::identity_cached;
use hearth_engine::ModelSource;
use hearth_gateway::{Backend, GatewayConfig, LocalBackend};
use hearth_swarm::SwarmClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The library's gateway defaults, which the flags show.
fn defaults() -> GatewayConfig {
    GatewayConfig::default()
}

#[derive(Args, Debug)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub net: NetArgs,
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
    #[arg(long, default_value_t = defaults().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = defaults().max_tokens)]
    pub max_tokens: usize,
    /// Completion tokens when a request does not say.
    #[arg(long, default_value_t = defaults().default_max_tokens)]
    pub default_max_tokens: usize,
    /// Longest prompt + completion in tokens (default: the model's context length).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Generations running at once.
    #[arg(long, default_value_t = defaults().max_running)]
    pub max_running: usize,
    /// Generations waiting beyond those running; more get 429.
    #[arg(long, default_value_t = defaults().max_queue)]
    pub max_queue: usize,
    /// Also accept requests for this host name (repeatable; IP addresses and localhost always
    /// pass): the name clients or a reverse proxy use. Other names are refused (DNS rebinding).
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Also accept browser requests from this origin, e.g. https://dash.example.org
    /// (repeatable). Other cross-origin requests are refused.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// HTTP connections open at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = defaults().max_connections)]
    pub max_connections: usize,
    /// Seconds a connection has to send a request head (idle keep-alive connections too).
    #[arg(long, value_name = "SECS", default_value_t = defaults().header_timeout.as_secs())]
    pub header_timeout: u64,
    /// Seconds a request has to send its whole body (408 after).
    #[arg(long, value_name = "SECS", default_value_t = defaults().body_timeout.as_secs())]
    pub body_timeout: u64,
    /// Seconds a response write may stay blocked on a client that does not read; the
    /// connection is then closed and its generation cancelled.
    #[arg(long, value_name = "SECS", default_value_t = defaults().write_timeout.as_secs())]
    pub write_timeout: u64,
    /// Write the gateway's base URL to this file once it listens (for scripts and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Run every block in this process instead of through the swarm (one machine, no network).
    #[arg(long)]
    pub local: bool,
    /// Run the first and the last N blocks in this process, so that no node sees the hidden
    /// states right after the embeddings or right before the head.
    #[arg(long, default_value_t = 0, conflicts_with = "local")]
    pub private_edges: u32,
    /// Benchmarking only: compute each generation's head separately instead of batching.
    #[arg(long, hide = true)]
    pub no_head_batch: bool,
}

impl GatewayArgs {
    /// The accepted keys: `--api-key`, then HEARTH_API_KEYS, then `--api-keys-file`.
    fn api_keys(&self) -> Result<Vec<String>> {
        let mut keys = ApiKeys::keys_from_flags_and_env(&self.api_keys, API_KEYS_ENV);
        if let Some(file) = &self.api_keys_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading API keys from {}", file.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string),
            );
        }
        Ok(keys)
    }

    fn config(&self, model: &Path, api_keys: Vec<String>) -> GatewayConfig {
        GatewayConfig {
            model_name: self
                .model_name
                .clone()
                .unwrap_or_else(|| default_model_name(model)),
            api_keys,
            max_body_bytes: self.max_body_bytes,
            max_tokens: self.max_tokens,
            default_max_tokens: self.default_max_tokens,
            max_context: self.max_context,
            max_running: self.max_running.max(1),
            max_queue: self.max_queue,
            allowed_hosts: self.allowed_hosts.clone(),
            allowed_origins: self.allowed_origins.clone(),
            max_connections: self.max_connections.max(1),
            header_timeout: Duration::from_secs(self.header_timeout.max(1)),
            body_timeout: Duration::from_secs(self.body_timeout.max(1)),
            write_timeout: Duration::from_secs(self.write_timeout.max(1)),
            ..GatewayConfig::default()
        }
    }
}

pub(crate) fn run(args: GatewayArgs) -> Result<()> {
    let api_keys = args.api_keys()?;
    // Refuse an unsafe address before spending time loading the model.
    check_bind(&api_keys, args.http)?;
    let path = args.model.path()?;
    let cfg = args.config(&path, api_keys);
    let src =
        ModelSource::open(&path).with_context(|| format!("opening model {}", path.display()))?;
    let rt = runtime()?;
    let backend: Arc<dyn Backend> = if args.local {
        let ident = identity_cached(&src, &hearth_home().join("model-ids"))?;
        Arc::new(LocalBackend::new(src, ident.model_id)?)
    } else {
        let client = rt.block_on(SwarmClient::start(args.net.client_config()))?;
        swarm_backend(&rt, client, &src, !args.no_head_batch, args.private_edges)?
    };
    serve_blocking(&rt, backend, cfg, args.http, args.ready_file.as_deref())
}
