//! `hearth swarm-bench`: decode throughput through node processes on loopback, for 1..N
//! concurrent streams, and the time a failover takes.
//!
//! Streams advance in lockstep, like a gateway batching its requests: each round embeds one token
//! per stream, sends every stream's hidden state through its chain concurrently (so nodes see
//! concurrent steps and batch them), then computes all heads in one matrix product.
//!
//! Depends only on `common` and `local_swarm`.

use crate::common::{hearth_home, runtime, ModelArgs};
use crate::local_swarm::{loopback_client, spawn_nodes};
use anyhow::{Context, Result};
use clap::Args;
use futures::future::join_all;
use hearth_core::BlockRange;
use hearth_engine::bench::median;
use hearth_engine::identity::identity_cached;
use hearth_engine::{ClientHead, ModelSource, Tensor};
use hearth_swarm::client::short_peer;
use hearth_swarm::{ClientConfig, SwarmChain, SwarmClient};
use hearth_wire::{HiddenDType, HiddenStates};
use std::time::{Duration, Instant};

#[derive(Args)]
pub(crate) struct SwarmBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Node processes, each serving an even share of the blocks.
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Kernel threads per node process.
    #[arg(long, default_value_t = 1)]
    pub node_threads: usize,
    /// Concurrent stream counts to measure, comma-separated.
    #[arg(long, default_value = "1,4,8,32", value_delimiter = ',')]
    pub streams: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    /// Decode steps timed per stream.
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Independent groups of lockstep streams (each with its own client thread), so that one
    /// group's head runs while another's hidden states are on the nodes (pipelining).
    #[arg(long, default_value_t = 2)]
    pub groups: usize,
    /// Context length at which to measure a failover (0: skip). Starts one spare node for the
    /// last span and kills whichever copy serves the session.
    #[arg(long, default_value_t = 256)]
    pub failover_context: usize,
}

fn hidden_of(t: &Tensor, start: usize) -> Result<HiddenStates> {
    let (_, rows, cols) = t.dims3()?;
    let values = t
        .to_dtype(hearth_engine::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(HiddenStates::from_f32(
        HiddenDType::F16,
        start as u32,
        rows as u32,
        cols as u32,
        &values,
    ))
}

/// Runs `streams` lockstep generations: prefill, then `tokens` greedy decode rounds.
/// Returns decode seconds.
fn run_streams(
    rt: &tokio::runtime::Runtime,
    head: &ClientHead,
    chains: &mut [SwarmChain],
    prompt: &[u32],
    tokens: usize,
) -> Result<f64> {
    let prefill: Vec<HiddenStates> = (0..chains.len())
        .map(|_| hidden_of(&head.embed(prompt)?, 0))
        .collect::<Result<_>>()?;
    let outs = rt.block_on(join_all(
        chains
            .iter_mut()
            .zip(prefill)
            .map(|(c, x)| c.forward_hidden(x)),
    ));
    let mut last: Vec<HiddenStates> = outs.into_iter().collect::<Result<_, _>>()?;
    let started = Instant::now();
    for step in 0..tokens {
        // One head product for every stream's last row.
        let cols = last[0].cols as usize;
        let mut rows = Vec::with_capacity(last.len() * cols);
        for h in &last {
            let v = h.to_f32();
            rows.extend_from_slice(&v[v.len() - cols..]);
        }
        let x = Tensor::from_vec(rows, (1, last.len(), cols), &hearth_engine::Device::Cpu)?;
        let logits = head.logits_all(&x)?.to_vec2::<f32>()?;
        let next: Vec<u32> = logits
            .iter()
            .map(|l| {
                l.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i as u32)
            })
            .collect();
        let pos = prompt.len() + step;
        let inputs: Vec<HiddenStates> = next
            .iter()
            .map(|&t| hidden_of(&head.embed(&[t])?, pos))
            .collect::<Result<_>>()?;
        let outs = rt.block_on(join_all(
            chains
                .iter_mut()
                .zip(inputs)
                .map(|(c, x)| c.forward_hidden(x)),
        ));
        last = outs.into_iter().collect::<Result<_, _>>()?;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) fn run(args: SwarmBenchArgs) -> Result<()> {
    let model = args.model.path()?;
    let src = ModelSource::open(&model)?;
    let n_blocks = src.config().num_layers as u32;
    let ident = identity_cached(&src, &hearth_home().join("model-ids"))?;
    let mut spans = BlockRange::split_even(n_blocks, args.nodes.min(n_blocks))?;
    let spare = args.failover_context > 0;
    if spare {
        spans.push(*spans.last().context("no spans")?);
    }
    let work = tempfile::tempdir()?;
    let (mut children, bootstrap) = spawn_nodes(
        &model,
        &spans,
        args.node_threads,
        work.path(),
        Duration::from_secs(600),
        false,
    )?;
    let head = src.load_head(&Default::default(), None)?;
    // Generous: a loaded node may take long over a large batch.
    let client_config = ClientConfig {
        step_timeout: Duration::from_secs(120),
        ..loopback_client(&bootstrap)?
    };
    let rt = runtime()?;
    let client = rt.block_on(SwarmClient::start(client_config))?;
    rt.block_on(client.wait_for_coverage(&ident.model_id, n_blocks))?;
    let prompt: Vec<u32> = (0..args.prompt_len as u32)
        .map(|i| 1 + i * 7 % 200)
        .collect();
    let max_len = args.prompt_len + args.tokens + 1;
    println!(
        "model {} ({} blocks), {} node processes × {} thread(s){}; up to {} client groups; prompt {}, {} decode tokens per stream, median of {}",
        model.display(),
        n_blocks,
        args.nodes,
        args.node_threads,
        if spare { " + 1 spare" } else { "" },
        args.groups,
        args.prompt_len,
        args.tokens,
        args.repeat
    );
    let mut one_stream = None;
    let mut hop_samples = Vec::new();
    for &n in &args.streams {
        let mut rates = Vec::new();
        for _ in 0..args.repeat.max(1) {
            let groups = args.groups.clamp(1, n);
            let mut sets: Vec<Vec<SwarmChain>> = (0..groups).map(|_| Vec::new()).collect();
            for i in 0..n {
                sets[i % groups].push(client.chain(ident.model_id, n_blocks, max_len));
            }
            let logs: Vec<_> = sets.iter().flatten().map(|c| c.log()).collect();
            let secs = std::thread::scope(|scope| {
                let handles: Vec<_> = sets
                    .iter_mut()
                    .map(|chains| {
                        let (rt, head, prompt) = (&rt, &head, &prompt);
                        scope.spawn(move || run_streams(rt, head, chains, prompt, args.tokens))
                    })
                    .collect();
                let mut slowest = 0f64;
                for h in handles {
                    let secs = h
                        .join()
                        .map_err(|_| anyhow::anyhow!("a stream group panicked"))??;
                    slowest = slowest.max(secs);
                }
                anyhow::Ok(slowest)
            })?;
            rates.push((n * args.tokens) as f64 / secs);
            drop(sets);
            if n == 1 {
                hop_samples.extend(logs.iter().filter_map(|l| {
                    let l = l.lock().ok()?;
                    Some(l.hop_time.as_secs_f64() * 1000.0 / l.receipts.len().max(1) as f64)
                }));
            }
        }
        let rate = median(rates);
        let base = *one_stream.get_or_insert(rate);
        println!(
            "streams {n:>3}: aggregate decode {rate:>8.2} tok/s ({:.2} per stream, {:.2}× one stream)",
            rate / n as f64,
            rate / base
        );
    }
    if !hop_samples.is_empty() {
        let servers = rt.block_on(client.servers(&ident.model_id, n_blocks));
        let compute: Vec<f64> = servers
            .iter()
            .map(|s| f64::from(s.announcement.block_ms) * f64::from(s.announcement.span.len()))
            .collect();
        println!(
            "one stream: mean hop round trip {:.2} ms as the client sees it (prefill included); nodes' own measured decode compute per hop {:?} ms",
            median(hop_samples),
            compute.iter().map(|c| (c * 100.0).round() / 100.0).collect::<Vec<_>>()
        );
    }
    if spare {
        let ctx = args.failover_context;
        let mut chain = client.chain(ident.model_id, n_blocks, ctx + 2);
        let log = chain.log();
        let long: Vec<u32> = (0..ctx as u32).map(|i| 1 + i * 13 % 250).collect();
        let x = hidden_of(&head.embed(&long)?, 0)?;
        rt.block_on(chain.forward_hidden(x))?;
        let victim = log
            .lock()
            .map_err(|_| anyhow::anyhow!("log poisoned"))?
            .route
            .last()
            .map(|(p, _)| p.to_string())
            .context("no route")?;
        if let Some((_, child)) = children.0.iter_mut().find(|(p, _)| *p == victim) {
            child.kill()?;
            child.wait()?;
        }
        let x = hidden_of(&head.embed(&[5])?, ctx)?;
        let started = Instant::now();
        rt.block_on(chain.forward_hidden(x))?;
        let total = started.elapsed();
        let log = log.lock().map_err(|_| anyhow::anyhow!("log poisoned"))?;
        let f = log.failovers.first().context("no failover happened")?;
        println!(
            "failover at context {ctx}: killed {} [{}]; detection + reroute + replay of {} positions {:.1} ms; the step that hit it took {:.1} ms",
            short_peer(&f.peer),
            f.range,
            f.replayed_tokens,
            f.recovery.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0
        );
    }
    drop(children);
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}
