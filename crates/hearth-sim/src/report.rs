//! Reports of a set of runs: a Markdown table, JSON, and SVG plots (profit over time, device
//! modes over time, queue length over time), plus the targets computed from the runs.
//!
//! Plots are drawn with plotters' SVG backend: text is written as SVG `<text>` and laid out with
//! plotters' built-in size estimate, so no font files or system libraries are needed.

use crate::sim::{Metrics, RunResult};
use plotters::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// The targets, computed from whichever runs are present.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Targets {
    /// (hearth − always-mine) / (oracle − always-mine), on `mining_net_usd`.
    pub gain_fraction: Option<f64>,
    /// Oracle's `mining_net_usd` minus always-mine's, dollars.
    pub oracle_gain_usd: Option<f64>,
    /// Hearth's `mining_net_usd` minus always-mine's, dollars.
    pub hearth_gain_usd: Option<f64>,
    /// Hybrid's net $/kWh over the best single mode's (mine-only, ai-only), minus 1.
    pub hybrid_vs_best_single_usd_per_kwh: Option<f64>,
    /// Policy name of the best single mode by net $/kWh (`mine-only` or `ai-only`).
    pub best_single_mode: Option<String>,
    /// The same as `hybrid_vs_best_single_usd_per_kwh`, on GPUs' energy only.
    pub hybrid_vs_best_single_gpu_usd_per_kwh: Option<f64>,
    /// The same per kWh of site capacity.
    pub hybrid_vs_best_single_usd_per_cap_kwh: Option<f64>,
    /// Hybrid's net profit over the best single mode's, minus 1.
    pub hybrid_vs_best_single_profit: Option<f64>,
    /// Hybrid's p95 queue delay, seconds (`None` if it finished no job).
    pub hybrid_p95_queue_s: Option<f64>,
    /// The p95 queue-delay target, seconds.
    pub latency_target_p95_queue_s: f64,
    /// Hybrid meets the p95 target and finished every job.
    pub hybrid_meets_latency: Option<bool>,
    /// FIFO's mean queue delay / each scheduler's (higher is better), per "scheduler (policy)".
    pub queue_ratio_vs_fifo: Vec<(String, f64)>,
    /// The same ratio for mean job completion time.
    pub jct_ratio_vs_fifo: Vec<(String, f64)>,
}

fn find<'a>(runs: &'a [RunResult], policy: &str, sched: Option<&str>) -> Option<&'a Metrics> {
    runs.iter()
        .map(|r| &r.metrics)
        .find(|m| m.policy == policy && sched.is_none_or(|s| m.scheduler == s))
}

/// Computes the targets. `fifo_baseline`: the (policy, "fifo") run the ratios divide by.
pub fn targets(runs: &[RunResult], latency_target_p95_queue_s: f64) -> Targets {
    let mut t = Targets {
        latency_target_p95_queue_s,
        ..Targets::default()
    };
    if let (Some(a), Some(o), Some(h)) = (
        find(runs, "always-mine", None),
        find(runs, "oracle", None),
        find(runs, "hearth", None),
    ) {
        let og = o.mining_net_usd - a.mining_net_usd;
        let hg = h.mining_net_usd - a.mining_net_usd;
        t.oracle_gain_usd = Some(og);
        t.hearth_gain_usd = Some(hg);
        if og.abs() > 1e-9 {
            t.gain_fraction = Some(hg / og);
        }
    }
    if let Some(hy) = find(runs, "hybrid", None) {
        let singles: Vec<&Metrics> = ["mine-only", "ai-only"]
            .iter()
            .filter_map(|p| find(runs, p, None))
            .collect();
        if let Some(best) = singles
            .iter()
            .max_by(|a, b| a.net_usd_per_kwh.total_cmp(&b.net_usd_per_kwh))
        {
            t.best_single_mode = Some(best.policy.clone());
            t.hybrid_vs_best_single_usd_per_kwh =
                Some(hy.net_usd_per_kwh / best.net_usd_per_kwh - 1.0);
            let best_gpu = singles
                .iter()
                .map(|m| m.gpu_net_usd_per_kwh)
                .fold(f64::NEG_INFINITY, f64::max);
            t.hybrid_vs_best_single_gpu_usd_per_kwh = Some(hy.gpu_net_usd_per_kwh / best_gpu - 1.0);
            let best_cap = singles
                .iter()
                .map(|m| m.net_usd_per_cap_kwh)
                .fold(f64::NEG_INFINITY, f64::max);
            t.hybrid_vs_best_single_usd_per_cap_kwh = Some(hy.net_usd_per_cap_kwh / best_cap - 1.0);
            let best_profit = singles
                .iter()
                .map(|m| m.net_profit_usd)
                .fold(f64::NEG_INFINITY, f64::max);
            t.hybrid_vs_best_single_profit = Some(hy.net_profit_usd / best_profit - 1.0);
        }
        if hy.jobs_done > 0 {
            t.hybrid_p95_queue_s = Some(hy.p95_queue_s);
            t.hybrid_meets_latency =
                Some(hy.p95_queue_s <= latency_target_p95_queue_s && hy.jobs_done == hy.jobs_total);
        }
    }
    if let Some(f) = runs
        .iter()
        .map(|r| &r.metrics)
        .find(|m| m.scheduler == "fifo")
    {
        let mut seen: Vec<(f64, f64)> = Vec::new();
        for m in runs.iter().map(|r| &r.metrics) {
            // Skip FIFO itself, runs without jobs, and runs whose AI side repeats an earlier
            // one (same scheduler and capacity under another mining policy).
            if std::ptr::eq(m, f)
                || m.jobs_done == 0
                || seen.contains(&(m.mean_queue_s, m.mean_jct_s))
            {
                continue;
            }
            seen.push((m.mean_queue_s, m.mean_jct_s));
            let name = format!("{} ({})", m.scheduler, m.policy);
            t.queue_ratio_vs_fifo
                .push((name.clone(), f.mean_queue_s / m.mean_queue_s.max(1e-9)));
            t.jct_ratio_vs_fifo
                .push((name, f.mean_jct_s / m.mean_jct_s.max(1e-9)));
        }
    }
    t
}

fn h(s: f64) -> String {
    if s.is_finite() {
        format!("{:.2}", s / 3600.0)
    } else {
        "–".into()
    }
}

/// The Markdown report.
pub fn markdown(runs: &[RunResult], t: &Targets, header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# hearth simulate\n\n{header}\n");
    let _ = writeln!(s, "## Money and energy\n");
    let _ = writeln!(
        s,
        "| policy | scheduler | energy MWh | energy $ | mining $ | AI $ | heat $ | switching $ | net $ | net $/kWh | GPU net $/kWh | switches | DR compliance | thermal violations |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in runs.iter().map(|r| &r.metrics) {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.4} | {:.4} | {} | {:.1} % | {} |",
            m.policy,
            m.scheduler,
            m.energy_kwh / 1000.0,
            m.energy_cost_usd,
            m.mining_revenue_usd,
            m.ai_revenue_usd,
            m.heat_value_usd,
            m.switching_cost_usd,
            m.net_profit_usd,
            m.net_usd_per_kwh,
            m.gpu_net_usd_per_kwh,
            m.mode_switches,
            m.dr_compliance * 100.0,
            m.thermal_violations
        );
    }
    let _ = writeln!(s, "\n## AI jobs\n");
    let _ = writeln!(
        s,
        "| policy | scheduler | jobs done | mean JCT h | p95 JCT h | mean queue h | p95 queue h | preemptions |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for m in runs.iter().map(|r| &r.metrics) {
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} | {} | {} | {} | {} | {} |",
            m.policy,
            m.scheduler,
            m.jobs_done,
            m.jobs_total,
            h(m.mean_jct_s),
            h(m.p95_jct_s),
            h(m.mean_queue_s),
            h(m.p95_queue_s),
            m.preemptions
        );
    }
    let _ = writeln!(s, "\n## Targets\n");
    if let (Some(f), Some(og), Some(hg)) = (t.gain_fraction, t.oracle_gain_usd, t.hearth_gain_usd) {
        let _ = writeln!(
            s,
            "- No-foresight capture of the oracle's gain over always-mine (mining devices, switching costs counted): **{:.1} %** (hearth +${hg:.0}, oracle +${og:.0}); target ≥ 95 %: {}",
            f * 100.0,
            if f >= 0.95 { "met" } else { "not met" }
        );
    }
    if let (Some(r), Some(b)) = (t.hybrid_vs_best_single_usd_per_kwh, &t.best_single_mode) {
        let _ = writeln!(
            s,
            "- Hybrid vs best single mode ({b}) in net $/kWh: **{:+.1} %** (GPUs only {:+.1} %, per kWh of site capacity {:+.1} %, net profit {:+.1} %); target ≥ +10 %: {}",
            r * 100.0,
            t.hybrid_vs_best_single_gpu_usd_per_kwh.unwrap_or(f64::NAN) * 100.0,
            t.hybrid_vs_best_single_usd_per_cap_kwh.unwrap_or(f64::NAN) * 100.0,
            t.hybrid_vs_best_single_profit.unwrap_or(f64::NAN) * 100.0,
            if r >= 0.10 { "met" } else { "not met" }
        );
    }
    if let Some(q) = t.hybrid_p95_queue_s {
        let _ = writeln!(
            s,
            "- Hybrid p95 queue delay {} h; AI latency target p95 ≤ {} h with every job done: {}",
            h(q),
            h(t.latency_target_p95_queue_s),
            if t.hybrid_meets_latency == Some(true) {
                "met"
            } else {
                "not met"
            }
        );
    }
    let fifo = runs
        .iter()
        .map(|r| &r.metrics)
        .find(|m| m.scheduler == "fifo")
        .map_or(String::new(), |m| format!("fifo ({})", m.policy));
    for ((name, q), (_, j)) in t.queue_ratio_vs_fifo.iter().zip(&t.jct_ratio_vs_fifo) {
        let _ = writeln!(
            s,
            "- {name} vs {fifo}: mean queue delay **{q:.2}×** lower (target ≥ 2×), mean JCT **{j:.2}×** lower (target ≥ 1.6×)"
        );
    }
    s
}

/// JSON document of the runs and targets.
#[derive(Serialize)]
struct JsonReport<'a> {
    header: &'a str,
    runs: Vec<&'a Metrics>,
    targets: &'a Targets,
}

/// Writes report.md, report.json, profit.svg, profit-vs-always-mine.svg (when that run is
/// present), modes.svg and queue.svg into `dir`.
pub fn write_all(dir: &Path, runs: &[RunResult], t: &Targets, header: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.md"), markdown(runs, t, header))?;
    let json = serde_json::to_string_pretty(&JsonReport {
        header,
        runs: runs.iter().map(|r| &r.metrics).collect(),
        targets: t,
    })
    .map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    let io = |e: String| std::io::Error::other(e);
    plot_profit(&dir.join("profit.svg"), runs, None).map_err(io)?;
    if let Some(base) = runs.iter().find(|r| r.metrics.policy == "always-mine") {
        plot_profit(&dir.join("profit-vs-always-mine.svg"), runs, Some(base)).map_err(io)?;
    }
    let modes_run = runs
        .iter()
        .find(|r| r.metrics.policy == "hybrid")
        .or_else(|| runs.first());
    if let Some(r) = modes_run {
        plot_modes(&dir.join("modes.svg"), r).map_err(io)?;
    }
    plot_queue(&dir.join("queue.svg"), runs).map_err(io)?;
    Ok(())
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn label(m: &Metrics) -> String {
    format!("{} / {}", m.policy, m.scheduler)
}

/// Cumulative net profit over time, one line per run; with a baseline, each run's profit minus
/// the baseline's (same samples).
pub fn plot_profit(
    path: &Path,
    runs: &[RunResult],
    baseline: Option<&RunResult>,
) -> Result<(), String> {
    let minus = |r: &RunResult, i: usize| -> f64 {
        let v = r.series.profit_usd[i];
        match baseline {
            Some(b) => v - b.series.profit_usd.get(i).copied().unwrap_or(0.0),
            None => v,
        }
    };
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let t_max = runs
        .iter()
        .filter_map(|r| r.series.t_days.last().copied())
        .fold(1.0, f64::max);
    let (lo, hi) = runs
        .iter()
        .flat_map(|r| (0..r.series.profit_usd.len()).map(move |i| minus(r, i)))
        .fold((0.0f64, 1.0f64), |(l, h), v| (l.min(v), h.max(v)));
    let caption = match baseline {
        Some(b) => format!("Cumulative net profit minus {}'s", label(&b.metrics)),
        None => "Cumulative net profit".to_string(),
    };
    let pad = (hi - lo) * 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, (lo - pad)..(hi + pad))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("day")
        .y_desc("net profit, $")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, r) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                r.series
                    .t_days
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| (t, minus(r, i))),
                c.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(label(&r.metrics))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

/// Modes over time: one band per device group, stacked by the share of device-time per mode.
pub fn plot_modes(path: &Path, run: &RunResult) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let groups = &run.series.groups;
    let height = 140 + 70 * groups.len() as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let t = &run.series.t_days;
    let t_max = t.last().copied().unwrap_or(1.0);
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Device modes over time ({})", label(&run.metrics)),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(160)
        .build_cartesian_2d(0.0..t_max, 0.0..n)
        .map_err(|x| e(&x))?;
    let names: Vec<String> = groups
        .iter()
        .map(|g| format!("{}/{} ×{}", g.site, g.group, g.count))
        .collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("day")
        .y_labels(groups.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let i = (*y - 0.5).round();
            if (y - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[names.len() - 1 - i as usize].clone()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(|x| e(&x))?;
    let mode_colors = [
        RGBColor(230, 159, 0),   // mine
        RGBColor(0, 114, 178),   // serve AI
        RGBColor(213, 94, 0),    // heat
        RGBColor(200, 200, 200), // idle
    ];
    for (gi, g) in groups.iter().enumerate() {
        let base = (groups.len() - 1 - gi) as f64 + 0.1;
        let mut rects = Vec::new();
        for (s, frac) in g.frac.iter().enumerate() {
            let x0 = if s == 0 { 0.0 } else { t[s - 1] };
            let x1 = t[s];
            let mut y = base;
            for (mi, &f) in frac.iter().enumerate() {
                let hgt = f as f64 * 0.8;
                if hgt > 0.0 {
                    rects.push(Rectangle::new(
                        [(x0, y), (x1, y + hgt)],
                        mode_colors[mi].filled(),
                    ));
                }
                y += hgt;
            }
        }
        chart.draw_series(rects).map_err(|x| e(&x))?;
    }
    for (mi, name) in ["mine", "serve AI", "heat", "idle"].iter().enumerate() {
        let c = mode_colors[mi];
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(|x| e(&x))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

/// Mean number of waiting jobs per sample, one line per run that served jobs.
pub fn plot_queue(path: &Path, runs: &[RunResult]) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    // Runs that served jobs; a run whose queue is identical to an earlier one's (same scheduler
    // and AI capacity, different mining policy) is drawn once.
    let mut with_jobs: Vec<&RunResult> = Vec::new();
    for r in runs.iter().filter(|r| r.metrics.jobs_done > 0) {
        if !with_jobs
            .iter()
            .any(|w| w.series.queue_len == r.series.queue_len)
        {
            with_jobs.push(r);
        }
    }
    let t_max = with_jobs
        .iter()
        .filter_map(|r| r.series.t_days.last().copied())
        .fold(1.0, f64::max);
    let hi = with_jobs
        .iter()
        .flat_map(|r| r.series.queue_len.iter().copied())
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("AI queue length (jobs waiting)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..hi * 1.05)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("day")
        .y_desc("jobs waiting")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, r) in with_jobs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                r.series
                    .t_days
                    .iter()
                    .copied()
                    .zip(r.series.queue_len.iter().copied()),
                c.stroke_width(1),
            ))
            .map_err(|x| e(&x))?
            .label(label(&r.metrics))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}
