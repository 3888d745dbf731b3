//! `hearth bench`: prefill/decode tokens per second, 1 slice vs N slices, and RSS per slice; or
//! (`--batch`) aggregate decode speed of many sessions batched on one server.

use anyhow::{Context, Result};
use clap::Args;
use hearth_core::BlockRange;
use hearth_engine::bench::{
    build_pipeline, load_whole, median, rss_bytes, run_once, BatchSessions,
};
use hearth_engine::synth::{self, SynthModel};
use hearth_engine::{parse_device, LoadOptions, ModelSource};
use std::path::PathBuf;
use std::process::Command;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// An existing model; otherwise a synthesized GGUF of --shape/--quant is written to --cache.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "llama-3.2-1b")]
    pub shape: String,
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
    /// Where synthesized benchmark models are kept.
    #[arg(long, default_value = "target/bench-models")]
    pub cache: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 32)]
    pub gen_tokens: usize,
    /// Compare 1 slice with this many slices.
    #[arg(long, default_value_t = 4)]
    pub split: u32,
    /// Measured runs per configuration (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Also measure peak RSS of a process that loads only one slice (and of the client head).
    #[arg(long)]
    pub rss: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Use candle's CPU matmul kernels instead of hearth's (baseline comparison).
    #[arg(long)]
    pub candle_kernels: bool,
    /// Instead of the slice comparison: for each N given (e.g. `1,4,8,32`), run N concurrent
    /// sessions on one whole-model server, decoding one token each per round in one batched step,
    /// and report the aggregate decode tokens/s.
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
}

#[derive(Args)]
pub(crate) struct RssProbeArgs {
    #[arg(long)]
    model: PathBuf,
    /// Blocks to load; absent = the client head.
    #[arg(long)]
    blocks: Option<BlockRange>,
}

fn model_path(args: &BenchArgs) -> Result<PathBuf> {
    if let Some(p) = &args.model {
        return Ok(p.clone());
    }
    let path = args.cache.join(format!(
        "{}-{}.gguf",
        args.shape,
        args.quant.to_ascii_lowercase()
    ));
    if !path.exists() {
        std::fs::create_dir_all(&args.cache)?;
        eprintln!("synthesizing {} ...", path.display());
        let model = SynthModel::new(synth::shape(&args.shape)?, 0)?;
        model.write_gguf(&path, synth::parse_quant(&args.quant)?)?;
    }
    Ok(path)
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    let path = model_path(&args)?;
    let src = ModelSource::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let opts = LoadOptions {
        device: parse_device(&args.device)?,
        dtype: None,
        candle_kernels: args.candle_kernels,
    };
    let vocab = src.config().vocab_size;
    let file_bytes =
        src.head_file_bytes() + src.slice_file_bytes(BlockRange::full(src.config().num_blocks())?);
    println!(
        "model {} ({} blocks, {:.2} GB), pp{} / tg{}, {} threads, median of {}",
        path.display(),
        src.config().num_layers,
        file_bytes as f64 / 1e9,
        args.prompt_tokens,
        args.gen_tokens,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into()),
        args.repeat
    );
    let max_len = args.prompt_tokens + args.gen_tokens;
    if !args.batch.is_empty() {
        return run_batches(&args, &src, &opts, max_len);
    }
    let configs: Vec<u32> = if args.split > 1 {
        vec![1, args.split]
    } else {
        vec![1]
    };
    let mut pipelines = configs
        .iter()
        .map(|&n| build_pipeline(&src, n, &opts, max_len))
        .collect::<Result<Vec<_>, _>>()?;
    for p in &mut pipelines {
        run_once(p, vocab, args.prompt_tokens, 2)?; // warm-up: first-call costs excluded
    }
    // Runs alternate between configurations so that drift in the machine's speed (shared hosts
    // vary by tens of percent) hits both alike.
    let mut samples = vec![(Vec::new(), Vec::new()); configs.len()];
    for _ in 0..args.repeat {
        for (p, (pp, tg)) in pipelines.iter_mut().zip(samples.iter_mut()) {
            let r = run_once(p, vocab, args.prompt_tokens, args.gen_tokens)?;
            pp.push(r.prefill_tokens_per_sec);
            tg.push(r.decode_tokens_per_sec);
        }
    }
    let mut rows = Vec::new();
    for (slices, (pp, tg)) in configs.iter().zip(samples) {
        let (pp, tg) = (median(pp), median(tg));
        println!("slices {slices:>2}: prefill {pp:8.2} tok/s   decode {tg:7.2} tok/s");
        rows.push((pp, tg));
    }
    drop(pipelines);
    if let [(pp1, tg1), (ppn, tgn)] = rows[..] {
        println!(
            "split cost: prefill {:+.2} %, decode {:+.2} %",
            (pp1 / ppn - 1.0) * 100.0,
            (tg1 / tgn - 1.0) * 100.0
        );
    }
    if let Some((rss, hwm)) = rss_bytes() {
        println!(
            "this process: RSS {:.0} MiB, peak {:.0} MiB",
            mib(rss),
            mib(hwm)
        );
    }
    if args.rss {
        rss_table(&path, &src, args.split)?;
    }
    Ok(())
}

/// `--batch`: aggregate decode speed of N sessions stepped together, for each N.
fn run_batches(
    args: &BenchArgs,
    src: &ModelSource,
    opts: &LoadOptions,
    max_len: usize,
) -> Result<()> {
    anyhow::ensure!(
        args.batch.iter().all(|&n| n > 0),
        "--batch sizes must be at least 1"
    );
    let (head, server) = load_whole(src, opts)?;
    println!(
        "batched decode: N sessions on one server, one step_batch + one head pass per round \
         (each session prefilled with its own {}-token prompt, in one batch)",
        args.prompt_tokens
    );
    for &n in &args.batch {
        let (sessions, prefill) =
            BatchSessions::open(head.clone(), server.clone(), n, args.prompt_tokens, max_len)?;
        sessions.decode(2)?; // warm-up: first-call costs excluded
        let runs = (0..args.repeat)
            .map(|_| sessions.decode(args.gen_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        let tg = median(runs.iter().map(|r| r.tokens_per_sec()).collect());
        let cpu = runs
            .iter()
            .map(|r| r.tokens_per_cpu_sec())
            .collect::<Option<Vec<_>>>()
            .map(median);
        println!(
            "batch {n:>3}: decode {tg:8.2} tok/s aggregate ({:6.2} tok/s per session, {:7.1} ms \
             per round; {} tok per CPU-second)   prefill {prefill:8.2} tok/s (one cold batch)",
            tg / n as f64,
            1e3 * n as f64 / tg,
            cpu.map_or("?".into(), |c| format!("{c:.2}")),
        );
    }
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Loads each slice (and the head) in a fresh child process and reports its peak RSS.
fn rss_table(path: &PathBuf, src: &ModelSource, split: u32) -> Result<()> {
    let exe = std::env::current_exe()?;
    let probe = |blocks: Option<BlockRange>| -> Result<String> {
        let mut cmd = Command::new(&exe);
        cmd.arg("rss-probe").arg("--model").arg(path);
        if let Some(b) = blocks {
            cmd.arg("--blocks").arg(b.to_string());
        }
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "rss-probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    println!("peak RSS of a process loading only:");
    println!("  client head: {}", probe(None)?);
    let n = src.config().num_blocks();
    for parts in [1, 2, split] {
        let r = BlockRange::split_even(n, parts)?[0];
        println!(
            "  blocks {r} ({} of {n}): {}  [weights in file: {:.0} MiB]",
            r.len(),
            probe(Some(r))?,
            mib(src.slice_file_bytes(r))
        );
    }
    Ok(())
}

pub(crate) fn rss_probe(args: RssProbeArgs) -> Result<()> {
    let before = rss_bytes().map(|r| r.0).unwrap_or(0);
    let src = ModelSource::open(&args.model)?;
    let opts = LoadOptions::default();
    // Keep what was loaded alive while measuring: steady-state RSS is what a node pays.
    let (slice, head) = match args.blocks {
        Some(r) => (Some(src.load_slice(r, &opts, None)?), None),
        None => (None, Some(src.load_head(&opts, None)?)),
    };
    let (rss, hwm) = rss_bytes().unwrap_or((0, 0));
    std::hint::black_box((&slice, &head));
    println!(
        "{:.0} MiB resident, {:.0} MiB peak while loading (empty process: {:.0} MiB)",
        mib(rss),
        mib(hwm),
        mib(before)
    );
    Ok(())
}
