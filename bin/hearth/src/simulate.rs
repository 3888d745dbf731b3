//! `hearth simulate`: replay a fleet over a price trace and an AI-job trace with the agent's
//! policy and the site schedulers, and write a report (Markdown, JSON, SVG plots).
//!
//! Thin: maps flags onto `hearth_sim::run::Options` (whose defaults the flags show); the
//! simulator lives in `hearth-sim`.

use anyhow::Context;
use hearth_sim::run::Options;
use std::path::PathBuf;

/// The simulator's defaults, which the flags show.
fn defaults() -> Options {
    Options::default()
}

#[derive(clap::Args, Debug)]
pub(crate) struct SimulateArgs {
    /// Price trace CSV: `hour,price` or `timestamp,price` ($/MWh; hourly or 5-minute).
    #[arg(long, default_value_os_t = defaults().prices)]
    prices: PathBuf,
    /// Fill gaps in the price trace with the previous price instead of failing (the number of
    /// filled intervals is reported).
    #[arg(long)]
    fill_gaps: bool,
    /// For `hour,price` traces: the year whose January 1st, 00:00 UTC is hour 1 (default: a
    /// four-digit year in the file name, else 2019).
    #[arg(long)]
    year: Option<i64>,
    /// AI job trace CSV: `arrival,gpus,duration[,deadline]` or `arrival,gpus,tokens[,deadline]`.
    #[arg(long, conflicts_with = "generate_jobs")]
    jobs: Option<PathBuf>,
    /// Generate this many jobs (default without --jobs: as many as fill the trace at --load).
    #[arg(long)]
    generate_jobs: Option<usize>,
    /// Seed of the job generator.
    #[arg(long, default_value_t = defaults().seed)]
    seed: u64,
    /// Offered load of generated jobs on the fixed AI partition (1.0 = its full capacity).
    #[arg(long, default_value_t = defaults().load)]
    load: f64,
    /// Fleet JSON (sites, device groups, economics); default: the built-in home + farm fleet.
    #[arg(long, conflicts_with = "devices")]
    fleet: Option<PathBuf>,
    /// Scale run: a built-in farm of about N devices (90 % ASICs, 10 % GPUs).
    #[arg(long)]
    devices: Option<usize>,
    /// Device policies: all, or a comma list of always-mine, oracle, hearth, hybrid, mine-only,
    /// ai-only.
    #[arg(long, default_value_t = defaults().policy)]
    policy: String,
    /// Schedulers: all, or a comma list of fifo, srf, las, hearth.
    #[arg(long, default_value_t = defaults().scheduler)]
    scheduler: String,
    /// Simulation interval: 5m (300s) or 1h (3600s).
    #[arg(long, default_value_t = format!("{}s", defaults().interval_s))]
    interval: String,
    /// Simulate only the first DAYS days of the trace.
    #[arg(long)]
    days: Option<f64>,
    /// Give hearth's policy the current day's prices as a day-ahead vector.
    #[arg(long)]
    day_ahead: bool,
    /// Ignore the fleet's demand-response programmes (a pure price comparison).
    #[arg(long)]
    no_dr: bool,
    /// hearth policy: minimum seconds between two voluntary mode switches of a device.
    #[arg(long)]
    min_dwell_s: Option<f64>,
    /// hearth policy: hysteresis band as a fraction of a mode's energy cost.
    #[arg(long)]
    hysteresis: Option<f64>,
    /// AI latency target for the hybrid policy: p95 queue delay, minutes.
    #[arg(long, default_value_t = defaults().latency_target_p95_queue_s / 60.0)]
    latency_target_min: f64,
    /// Print the fleet as JSON (the built-in one, or the --devices one) and exit: a starting
    /// point for --fleet.
    #[arg(long)]
    print_fleet: bool,
    /// Output folder for report.md, report.json and the SVG plots.
    #[arg(long, default_value = "target/sim")]
    out: PathBuf,
}

fn interval_s(s: &str) -> anyhow::Result<u32> {
    match s.trim() {
        "5m" | "5min" | "300" | "300s" => Ok(300),
        "1h" | "60m" | "3600" | "3600s" => Ok(3600),
        other => anyhow::bail!("--interval `{other}`: expected 5m or 1h"),
    }
}

pub(crate) fn run(a: SimulateArgs) -> anyhow::Result<()> {
    if a.print_fleet {
        let fleet = match a.devices {
            Some(n) => hearth_sim::fleet::Fleet::scaled_fleet(n),
            None => hearth_sim::fleet::Fleet::default_fleet(),
        };
        println!("{}", serde_json::to_string_pretty(&fleet)?);
        return Ok(());
    }
    let mut policy_config = hearth_sim::sim::hearth_policy_config();
    if let Some(d) = a.min_dwell_s {
        anyhow::ensure!(d.is_finite() && d >= 0.0, "--min-dwell-s must be ≥ 0");
        policy_config.min_dwell_s = d;
    }
    if let Some(h) = a.hysteresis {
        anyhow::ensure!(h.is_finite() && h >= 0.0, "--hysteresis must be ≥ 0");
        policy_config.hysteresis_frac = h;
    }
    anyhow::ensure!(
        a.latency_target_min.is_finite() && a.latency_target_min > 0.0,
        "--latency-target-min must be positive"
    );
    if !a.prices.exists() {
        anyhow::bail!(
            "price trace {} not found (the shipped traces are in data/prices/ of the repository: \
             run from its root or pass --prices)",
            a.prices.display()
        );
    }
    let o = Options {
        prices: a.prices,
        hour_base_unix: a.year.map(hearth_sim::time::year_start_unix),
        fill_gaps: a.fill_gaps,
        jobs: a.jobs,
        generate_jobs: a.generate_jobs,
        seed: a.seed,
        load: a.load,
        fleet: a.fleet,
        devices: a.devices,
        policy: a.policy,
        scheduler: a.scheduler,
        interval_s: interval_s(&a.interval)?,
        days: a.days,
        day_ahead: a.day_ahead,
        no_dr: a.no_dr,
        latency_target_p95_queue_s: a.latency_target_min * 60.0,
        policy_config,
        out: Some(a.out.clone()),
    };
    let out = hearth_sim::run::run(&o).context("simulation failed")?;
    println!("{}", out.markdown);
    println!("Wall time per run (simulation only):");
    for r in &out.runs {
        println!(
            "  {:<12} {:<7} {:>5} devices × {:>6} intervals: {:.2} s",
            r.metrics.policy,
            r.metrics.scheduler,
            r.metrics.devices,
            r.metrics.intervals,
            r.metrics.wall_s
        );
    }
    if out.filled > 0 {
        println!(
            "Note: {} price intervals were forward-filled over gaps.",
            out.filled
        );
    }
    println!(
        "Wrote {}/report.md, report.json, profit.svg, profit-vs-always-mine.svg, modes.svg, queue.svg",
        a.out.display()
    );
    Ok(())
}
