//! `hearth soak`: the honest swarm on loopback under every hostile peer and client at once
//! (see `hearth_soak`), measured against the same run without them. Depends on `demo` for the
//! model it runs.

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
    /// Seconds of the attacked phase.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Seconds of the attack-free phase (default: a third of --seconds, at least 30).
    #[arg(long)]
    pub baseline_seconds: Option<u64>,
    /// Honest client streams through the gateway.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Completion tokens per honest request.
    #[arg(long, default_value_t = 24)]
    pub max_tokens: usize,
    /// Kill a random node with SIGKILL (and restart it) this often in the attacked phase,
    /// seconds; 0: never.
    #[arg(long, default_value_t = 60)]
    pub kill_every: u64,
    /// The attacks to run (comma-separated; default all): stream-flood, kv-squatting,
    /// oversized-frames, slow-frames, session-churn, dht-junk, sybil-burst, slow-http-readers,
    /// cross-origin.
    #[arg(long, value_delimiter = ',')]
    pub attacks: Vec<Attack>,
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
        attacked: Duration::from_secs(args.seconds.max(1)),
        streams: args.streams.max(1),
        max_tokens: args.max_tokens.max(1),
        kill_every: (args.kill_every > 0).then(|| Duration::from_secs(args.kill_every)),
        attacks: if args.attacks.is_empty() {
            Attack::ALL.to_vec()
        } else {
            args.attacks.clone()
        },
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
            "honest throughput under attack is {:.2} of the attack-free run (target {})",
            report.throughput_ratio,
            hearth_soak::report::TARGET_THROUGHPUT_RATIO
        ));
    }
    if !problems.is_empty() {
        bail!("the soak found problems:\n- {}", problems.join("\n- "));
    }
    Ok(())
}
