//! `hearth soak`: the honest swarm on loopback under every hostile peer and client at once, or
//! under churn (see `hearth_soak`), measured against the same run without them. Depends on
//! `demo` for the model it runs.

use crate::demo::{named_or_path, synthesized, DEFAULT_DEMO_MODEL};
use anyhow::{bail, Result};
use clap::Args;
use hearth_soak::{Attack, SoakConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub(crate) struct SoakArgs {
    /// The model: a .gguf file or HF folder, or a known model's name (pulled on first use).
    #[arg(long, default_value = DEFAULT_DEMO_MODEL, conflicts_with = "synth")]
    pub model: String,
    /// Run a synthesized model of this shape instead (random weights, no download).
    #[arg(long)]
    pub synth: Option<String>,
    /// Seconds of the stressed phase.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Seconds of the reference phase (default: a third of --seconds, at least 30).
    #[arg(long)]
    pub baseline_seconds: Option<u64>,
    /// Honest client streams through the gateway.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Completion tokens per honest request.
    #[arg(long, default_value_t = 24)]
    pub max_tokens: usize,
    /// Kill a random node with SIGKILL (and restart it) this often in the stressed phase,
    /// seconds; 0: never (default: 60 when attacking, else never).
    #[arg(long)]
    pub kill_every: Option<u64>,
    /// The attacks to run (comma-separated): stream-flood, kv-squatting, oversized-frames,
    /// slow-frames, session-churn, dht-junk, sybil-burst, slow-http-readers, cross-origin.
    /// Default: all, unless --churn is given (then none).
    #[arg(long, value_delimiter = ',')]
    pub attacks: Vec<Attack>,
    /// Churn instead: nodes leave (SIGKILL) and new ones join at random, each living this many
    /// seconds on average (exponentially distributed), every block always covered.
    #[arg(long, value_name = "MEAN_LIFETIME_SECS")]
    pub churn: Option<u64>,
    /// Nodes serving each half of the model (default: 2, or 4 with --churn).
    #[arg(long)]
    pub nodes_per_span: Option<usize>,
    /// Keep the processes' homes and logs here (default: a temporary folder, removed after).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also fail when honest throughput under attack is below the target share.
    #[arg(long)]
    pub strict_throughput: bool,
}

pub(crate) fn run(args: SoakArgs) -> Result<()> {
    let (model, _) = match &args.synth {
        Some(shape) => synthesized(shape)?,
        None => named_or_path(&args.model)?,
    };
    let churn = args.churn.is_some();
    let attacks = match (args.attacks.is_empty(), churn) {
        (false, _) => args.attacks.clone(),
        (true, false) => Attack::ALL.to_vec(),
        (true, true) => Vec::new(),
    };
    let kill_every = args
        .kill_every
        .unwrap_or(if attacks.is_empty() { 0 } else { 60 });
    let temp = tempfile::tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let cfg = SoakConfig {
        exe: std::env::current_exe()?,
        model,
        work,
        baseline: Duration::from_secs(args.baseline_seconds.unwrap_or((args.seconds / 3).max(30))),
        stressed: Duration::from_secs(args.seconds.max(1)),
        streams: args.streams.max(1),
        max_tokens: args.max_tokens.max(1),
        nodes_per_span: args
            .nodes_per_span
            .unwrap_or(if churn { 4 } else { 2 })
            .max(1),
        kill_every: (kill_every > 0).then(|| Duration::from_secs(kill_every)),
        churn_mean_lifetime: args.churn.filter(|&s| s > 0).map(Duration::from_secs),
        attacks,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(hearth_soak::run(cfg))?;
    println!("{}", report.markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    let mut problems = report.problems();
    if args.strict_throughput && !report.meets_throughput_target() {
        problems.push(format!(
            "honest throughput under stress is {:.2} of the reference (target {})",
            report.throughput_ratio,
            hearth_soak::report::TARGET_THROUGHPUT_RATIO
        ));
    }
    if !problems.is_empty() {
        bail!("the soak found problems:\n- {}", problems.join("\n- "));
    }
    Ok(())
}
