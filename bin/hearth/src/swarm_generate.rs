//! Generating through the swarm with the head kept in this process: the swarm half of `hearth
//! generate --swarm` and of `hearth demo`. Depends only on `common`.

use crate::common::{hearth_home, runtime};
use anyhow::Result;
use hearth_core::BlockRange;
use hearth_engine::identity::identity_cached;
use hearth_engine::{
    generate, ClientHead, Generation, HiddenStage, LoadOptions, LocalStage, ModelSource, Pipeline,
};
use hearth_sampling::SamplingParams;
use hearth_swarm::client::short_peer;
use hearth_swarm::{CheckOutcome, ClientConfig, SwarmClient};
use hearth_tokenizer::Tokenizer;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How a generation runs through the swarm (private edges) and what is reported besides its text.
#[derive(Clone, Debug, Default)]
pub(crate) struct SwarmOptions {
    /// Print the last this many receipts.
    pub print_receipts: Option<usize>,
    /// Write the trail (JSON) here.
    pub trail: Option<PathBuf>,
    /// Write fraud proofs here (default `$HEARTH_HOME/fraud-proofs`).
    pub fraud_dir: Option<PathBuf>,
    /// Blocks run in this process at each end of the model (0: the swarm runs them all).
    pub private_edges: u32,
}

/// Generates through the swarm with `head` kept in this process; returns what was generated.
#[allow(clippy::too_many_arguments)]
pub(crate) fn generate_through_swarm(
    src: &ModelSource,
    head: Arc<ClientHead>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    client: ClientConfig,
    outputs: &SwarmOptions,
    prompt_text: &str,
) -> Result<Generation> {
    let print_receipts = outputs.print_receipts;
    let ident = identity_cached(src, &hearth_home().join("model-ids"))?;
    let n_blocks = src.config().num_layers as u32;
    let max_len = (prompt.len() + params.max_tokens).min(src.config().max_position_embeddings);
    let rt = runtime()?;
    let client = rt.block_on(SwarmClient::start(client))?;
    eprintln!(
        "looking for servers of model {} ...",
        ident.model_id.short()
    );
    let edges = outputs.private_edges;
    anyhow::ensure!(
        2 * edges < n_blocks,
        "--private-edges {edges} leaves no blocks to the swarm ({n_blocks} blocks)"
    );
    let remote = BlockRange::new(edges, n_blocks - edges)?;
    let servers = rt.block_on(client.wait_for_range(&ident.model_id, n_blocks, remote))?;
    if edges > 0 {
        eprintln!("{} servers cover blocks {remote}", servers.len());
    } else {
        eprintln!("{} servers cover all {n_blocks} blocks", servers.len());
    }
    let chain = client.chain_range(ident.model_id, n_blocks, remote, max_len);
    let log = chain.log();
    let mut stages: Vec<Box<dyn HiddenStage>> = Vec::new();
    if edges > 0 {
        // The first and last blocks run here: nodes never see the states next to the tokens.
        let opts = LoadOptions::default();
        let first = BlockRange::new(0, edges)?;
        let last = BlockRange::new(n_blocks - edges, n_blocks)?;
        stages.push(Box::new(LocalStage::load(
            src, first, &opts, max_len, None,
        )?));
        stages.push(Box::new(chain));
        stages.push(Box::new(LocalStage::load(src, last, &opts, max_len, None)?));
    } else {
        stages.push(Box::new(chain));
    }
    let mut pipeline = Pipeline {
        head,
        stages,
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
    if edges > 0 {
        eprintln!(
            "route: client [0..{edges}] -> {} -> client [{}..{n_blocks}]",
            route.join(" -> "),
            n_blocks - edges
        );
    } else {
        eprintln!("route: client -> {} -> client", route.join(" -> "));
    }
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
    let linked = log.steps.iter().filter(|s| s.linkage.is_ok()).count();
    eprintln!(
        "{linked} of {} passes through the chain linked (each hop's input = the previous output)",
        log.steps.len()
    );
    let unverifiable = log
        .checks
        .iter()
        .filter(|c| c.outcome == CheckOutcome::NoVerifier)
        .count();
    if unverifiable > 0 {
        eprintln!(
            "{unverifiable} windows drawn for a spot check had no second server of their blocks \
             to re-execute them"
        );
    }
    for c in log
        .checks
        .iter()
        .filter(|c| c.outcome != CheckOutcome::NoVerifier)
    {
        eprintln!(
            "spot check: {} [{}] positions {}..{}: {:?}, worst row {:.2e} off ({} verifiers)",
            short_peer(&c.peer),
            c.blocks,
            c.positions.start,
            c.positions.end,
            c.outcome,
            c.max_error,
            c.verifiers.len()
        );
    }
    if !log.fraud_proofs.is_empty() {
        let dir = outputs
            .fraud_dir
            .clone()
            .unwrap_or_else(|| hearth_home().join("fraud-proofs"));
        std::fs::create_dir_all(&dir)?;
        for (peer, proof) in &log.fraud_proofs {
            let file = dir.join(format!(
                "{peer}-{}-{}.proof",
                proof.window_start,
                std::process::id()
            ));
            std::fs::write(&file, proof.to_bytes())?;
            let hosts = log
                .fraud_hosts
                .iter()
                .find(|(p, _)| p == peer)
                .map_or(0, |(_, h)| h.len());
            eprintln!(
                "fraud proof against {}: {} (re-checked and hosted for the swarm by {hosts} \
                 nodes)",
                short_peer(peer),
                file.display()
            );
        }
    }
    if let Some(path) = &outputs.trail {
        let mut trail =
            hearth_gateway::trail::trail_of(&ident.model_id, &log, client.config().dtype);
        trail.tokens = Some(hearth_gateway::trail::TokensOut::of(prompt, &out));
        trail.sampling = Some(params.clone());
        std::fs::write(path, serde_json::to_vec_pretty(&trail)?)?;
        eprintln!("trail: {}", path.display());
    }
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
                hex::encode(&r.signature[..8])
            );
        }
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(out)
}
