//! `hearth peers`: list the servers the swarm's DHT knows for a model. Depends only on `common`
//! and `net_args`.

use crate::common::{hearth_home, runtime, ModelArgs};
use crate::net_args::NetArgs;
use anyhow::Result;
use clap::Args;
use hearth_engine::identity::identity_cached;
use hearth_engine::ModelSource;
use hearth_swarm::SwarmClient;
use std::time::Duration;

#[derive(Args)]
pub(crate) struct PeersArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// Seconds to spend joining the network before looking.
    #[arg(long, default_value_t = 2)]
    pub wait: u64,
}

/// Lists the servers the DHT currently knows for a model, with their announcements.
pub(crate) fn run(args: PeersArgs) -> Result<()> {
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
