//! Serving the OpenAI-compatible API until Ctrl-C: shared by `hearth gateway` and `hearth demo
//! --gateway`. Depends only on `common`.

use crate::common::hearth_home;
use anyhow::{Context, Result};
use hearth_core::ApiKeys;
use hearth_engine::identity::identity_cached;
use hearth_engine::{LoadOptions, ModelSource};
use hearth_gateway::{Backend, Gateway, GatewayConfig, SwarmBackend};
use hearth_swarm::SwarmClient;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The environment variable with the gateway's accepted keys (comma-separated).
pub(crate) const API_KEYS_ENV: &str = "HEARTH_API_KEYS";

/// The name clients use in `model` unless told otherwise: the model folder's or file's name.
pub(crate) fn default_model_name(model: &Path) -> String {
    model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| GatewayConfig::default().model_name)
}

/// Without an API key only loopback addresses are allowed.
pub(crate) fn check_bind(api_keys: &[String], addr: SocketAddr) -> Result<()> {
    ApiKeys::new(api_keys).check_bind(addr, None, API_KEYS_ENV)?;
    Ok(())
}

/// A backend over the swarm, running the first and last `private_edges` blocks in this process;
/// waits (bounded) for the swarm's blocks to be covered and says so.
pub(crate) fn swarm_backend(
    rt: &tokio::runtime::Runtime,
    client: SwarmClient,
    src: &ModelSource,
    head_batch: bool,
    private_edges: u32,
) -> Result<Arc<dyn Backend>> {
    let ident = identity_cached(src, &hearth_home().join("model-ids"))?;
    let n_blocks = src.config().num_layers as u32;
    let head = Arc::new(src.load_head(&LoadOptions::default(), None)?);
    let backend = SwarmBackend::new(client.clone(), head, src.tokenizer()?, ident.model_id)
        .with_private_edges(src, private_edges)?;
    let remote = backend.remote_blocks();
    eprintln!(
        "looking for servers of model {} ...",
        ident.model_id.short()
    );
    match rt.block_on(client.wait_for_range(&ident.model_id, n_blocks, remote)) {
        Ok(servers) if private_edges > 0 => eprintln!(
            "{} servers cover blocks {remote}; blocks 0..{private_edges} and {}..{n_blocks} run \
             here",
            servers.len(),
            remote.end()
        ),
        Ok(servers) => eprintln!("{} servers cover all {n_blocks} blocks", servers.len()),
        // Serve anyway: requests get 503 until nodes arrive.
        Err(e) => eprintln!("warning: {e:#}; serving anyway"),
    }
    Ok(if head_batch {
        Arc::new(backend)
    } else {
        Arc::new(backend.without_head_batching())
    })
}

/// Serves the gateway on `addr` until Ctrl-C; writes its base URL to `ready_file` once it
/// listens (for scripts and tests).
pub(crate) fn serve_blocking(
    rt: &tokio::runtime::Runtime,
    backend: Arc<dyn Backend>,
    cfg: GatewayConfig,
    addr: SocketAddr,
    ready_file: Option<&Path>,
) -> Result<()> {
    check_bind(&cfg.api_keys, addr)?;
    let model_name = cfg.model_name.clone();
    let no_keys = cfg.api_keys.is_empty();
    let gateway = Gateway::new(backend, cfg);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        if no_keys {
            eprintln!("no API key configured: listening on loopback only ({addr})");
        }
        eprintln!(
            "OpenAI-compatible API at {url}/v1 (model \"{model_name}\"); metrics at {url}/metrics"
        );
        if let Some(ready) = ready_file {
            std::fs::write(ready, &url).with_context(|| format!("writing {}", ready.display()))?;
        }
        hearth_gateway::serve(listener, gateway, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
    })
}
