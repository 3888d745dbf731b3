//! The fleet simulation: per interval, decide every device's mode, run the AI scheduler over the
//! interval, then account energy, money, heat, temperature and demand response.
//!
//! Device policies ([`DevicePolicy`]):
//! - `always-mine`: every mining-capable device mines (the AI partition serves AI);
//! - `oracle`: mining devices follow the exact perfect-foresight schedule ([`crate::oracle`]);
//! - `hearth`: mining devices follow `hearth_policy::decide_into` (the code `hearth agent` runs)
//!   seeing only the current price (and optionally a day-ahead vector), no AI demand, no heat;
//! - `hybrid`: the same policy with every signal: AI demand (it lends mining GPUs to the AI
//!   queue and takes them back), heat value, demand response, site cap;
//! - `mine-only` / `ai-only`: single-mode baselines (every device mines; every GPU serves AI).
//!
//! GPUs of groups marked `ai_dedicated` form a fixed AI partition in every policy except
//! `mine-only`; they serve AI whenever thermally safe.
//!
//! Accounting (the same for every policy): energy at the drawn power (an AI GPU draws its AI
//! power while it holds a job, its idle power otherwise); electricity at the interval's price;
//! mining revenue at `hashrate × hashprice`; AI revenue per token produced (preemption overhead
//! is unpaid); heat valued up to the site's heat demand; every mode change costs the group's
//! `wear_usd`, and starting to mine also loses `restart_s` of mining revenue. Thermal state is
//! stepped with the exact RC solution; a violation is any interval ending above a device's limit.
//!
//! Invariants: one pass over the trace, no allocation per step in the hot loop apart from the
//! scheduler's job bookkeeping; results are a pure function of (fleet, prices, jobs, run, config).

use crate::fleet::Fleet;
use crate::jobs::Job;
use crate::oracle::{self, OnOff};
use crate::prices::PriceTrace;
use crate::sched::{JobOutcome, SchedPolicy, Scheduler};
use hearth_policy::{
    decide_into, AiDemand, Decision, DeviceSpec, DeviceState, DrEvent, DrTarget, Mode,
    PolicyConfig, PolicyInput, PolicyState, PriceForecast, Prices, Reading, Scratch,
};
use serde::Serialize;

/// Per-device policy of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DevicePolicy {
    /// Every mining-capable device mines; the AI partition serves AI.
    AlwaysMine,
    /// Mining devices follow the perfect-foresight on/off schedule.
    Oracle,
    /// Mining devices follow hearth's policy seeing prices only.
    Hearth,
    /// hearth's policy with every signal: AI demand, heat value, demand response, site cap.
    Hybrid,
    /// Every device mines (no AI partition).
    MineOnly,
    /// Every GPU serves AI.
    AiOnly,
}

impl DevicePolicy {
    /// Every policy, in the order reports list them.
    pub const ALL: [DevicePolicy; 6] = [
        DevicePolicy::AlwaysMine,
        DevicePolicy::Oracle,
        DevicePolicy::Hearth,
        DevicePolicy::Hybrid,
        DevicePolicy::MineOnly,
        DevicePolicy::AiOnly,
    ];
    /// Kebab-case name used in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DevicePolicy::AlwaysMine => "always-mine",
            DevicePolicy::Oracle => "oracle",
            DevicePolicy::Hearth => "hearth",
            DevicePolicy::Hybrid => "hybrid",
            DevicePolicy::MineOnly => "mine-only",
            DevicePolicy::AiOnly => "ai-only",
        }
    }
    /// The policy named `s` (as [`DevicePolicy::as_str`] writes it), if any.
    pub fn parse(s: &str) -> Option<DevicePolicy> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Knobs of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The hearth policy's tunables (its `interval_s` is set to the trace step).
    pub policy: PolicyConfig,
    /// Give the hearth policy the current day's prices as a day-ahead vector.
    pub day_ahead: bool,
    /// Time-series resolution, seconds.
    pub sample_s: f64,
    /// After the trace, keep scheduling (with the last availability) until every job is done,
    /// at most this many seconds.
    pub drain_s: f64,
    /// Evaluate the policy once per group of identical devices in identical state when that is
    /// exact (see [`simulate`]); off: every device every interval.
    pub compress: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            policy: hearth_policy_config(),
            day_ahead: false,
            sample_s: 86_400.0,
            drain_s: 180.0 * 86_400.0,
            compress: true,
        }
    }
}

/// The tunables hearth's policy runs with in the simulator (chosen on the 2018 trace; see
/// docs/simulator.md).
pub fn hearth_policy_config() -> PolicyConfig {
    PolicyConfig {
        interval_s: 300.0,
        min_dwell_s: 3600.0,
        hysteresis_frac: 0.02,
        temp_margin_c: 5.0,
        stale_after_s: 7200.0,
    }
}

/// A demand-response window in simulated seconds with the site limit, watts.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DrWindow {
    /// Index of the site in [`Fleet::sites`].
    pub site: usize,
    /// Start of the event, simulation seconds (inclusive).
    pub start_s: f64,
    /// End of the event, simulation seconds (exclusive).
    pub end_s: f64,
    /// Most power the site may draw during the event, watts.
    pub limit_w: f64,
}

/// Demand-response windows of every site with a programme: the most expensive days (`events`
/// per year, pro rata for shorter traces, at least one), `hours` long from that day's most
/// expensive interval.
pub fn dr_windows(fleet: &Fleet, trace: &PriceTrace) -> Vec<DrWindow> {
    let step = trace.step_s as f64;
    let per_day = (86_400 / trace.step_s) as usize;
    let mut out = Vec::new();
    for (si, site) in fleet.sites.iter().enumerate() {
        let Some(dr) = &site.dr else { continue };
        let mut days: Vec<(f64, usize)> = trace
            .prices
            .chunks(per_day)
            .enumerate()
            .map(|(d, c)| {
                let (imax, pmax) =
                    c.iter()
                        .enumerate()
                        .fold(
                            (0, f64::NEG_INFINITY),
                            |b, (i, &p)| if p > b.1 { (i, p) } else { b },
                        );
                (pmax, d * per_day + imax)
            })
            .collect();
        days.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // `events` is a yearly count: a shorter trace gets its share (at least one).
        let n = ((dr.events as f64 * trace.duration_s() / (365.0 * 86_400.0)).round() as usize)
            .clamp(1, dr.events.max(1) as usize);
        for &(_, idx) in days.iter().take(n) {
            let start_s = idx as f64 * step;
            let end_s = (start_s + dr.hours as f64 * 3600.0).min(trace.duration_s());
            out.push(DrWindow {
                site: si,
                start_s,
                end_s,
                limit_w: dr.limit_kw * 1000.0,
            });
        }
    }
    out.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    out
}

/// Totals of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    /// Device policy name ([`DevicePolicy::as_str`]).
    pub policy: String,
    /// Job scheduler name ([`SchedPolicy::as_str`]).
    pub scheduler: String,
    /// Devices simulated.
    pub devices: usize,
    /// Price intervals simulated.
    pub intervals: usize,
    /// Length of one interval, seconds.
    pub interval_s: u32,
    /// Energy drawn by all devices, kWh.
    pub energy_kwh: f64,
    /// Electricity cost of `energy_kwh` at the trace's prices, $.
    pub energy_cost_usd: f64,
    /// Mining revenue at the fleet's hashprice, $.
    pub mining_revenue_usd: f64,
    /// Revenue from tokens produced for AI jobs, $ (preemption overhead is unpaid).
    pub ai_revenue_usd: f64,
    /// Value of useful heat, capped by each site's heat demand, $.
    pub heat_value_usd: f64,
    /// Wear and lost mining revenue of mode changes, $.
    pub switching_cost_usd: f64,
    /// Mining + AI + heat value − electricity − switching, $.
    pub net_profit_usd: f64,
    /// `net_profit_usd` per kWh drawn, $/kWh.
    pub net_usd_per_kwh: f64,
    /// Net profit per kWh of the sites' capacity over the run.
    pub net_usd_per_cap_kwh: f64,
    /// Energy drawn by GPUs only (the devices that have a choice between mining and AI), kWh.
    pub gpu_energy_kwh: f64,
    /// GPUs' revenue + their share of heat value − their electricity − switching, $.
    pub gpu_net_usd: f64,
    /// `gpu_net_usd` per kWh the GPUs drew, $/kWh.
    pub gpu_net_usd_per_kwh: f64,
    /// Devices the device policy controls (not the AI partition): mining revenue − their
    /// electricity − their switching costs. The oracle maximises exactly this.
    pub mining_net_usd: f64,
    /// Device mode changes, summed over devices and intervals.
    pub mode_switches: u64,
    /// Jobs in the trace.
    pub jobs_total: usize,
    /// Jobs finished by the end of the drain.
    pub jobs_done: usize,
    /// Mean job completion time of finished jobs, seconds (NaN if none finished).
    pub mean_jct_s: f64,
    /// 95th-percentile job completion time of finished jobs, seconds.
    pub p95_jct_s: f64,
    /// Mean queue delay of finished jobs, seconds (NaN if none finished).
    pub mean_queue_s: f64,
    /// 95th-percentile queue delay of finished jobs, seconds.
    pub p95_queue_s: f64,
    /// Job preemptions, including GPUs taken away from running jobs.
    pub preemptions: u64,
    /// Site-intervals inside a demand-response event.
    pub dr_intervals: u64,
    /// Of `dr_intervals`, those where the site stayed within the event's limit.
    pub dr_compliant: u64,
    /// `dr_compliant / dr_intervals`, 1 when there were no events.
    pub dr_compliance: f64,
    /// Device-intervals ending above the device's temperature limit.
    pub thermal_violations: u64,
    /// Hottest device temperature seen at an interval end, °C.
    pub max_temp_c: f64,
    /// Wall-clock time the simulation took, seconds.
    pub wall_s: f64,
}

/// Per-group share of each mode over one sample.
#[derive(Clone, Debug, Serialize)]
pub struct GroupSeries {
    /// Name of the group's site.
    pub site: String,
    /// Name of the group.
    pub group: String,
    /// Devices in the group.
    pub count: u32,
    /// Per sample: fraction of device-time in [mine, serve_ai, heat, idle].
    pub frac: Vec<[f32; 4]>,
}

/// Time series of a run (one point per sample).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// End of each sample, days since the start of the trace.
    pub t_days: Vec<f64>,
    /// Cumulative net profit at the end of each sample, $.
    pub profit_usd: Vec<f64>,
    /// Mean number of waiting jobs over each sample (taken at interval ends).
    pub queue_len: Vec<f64>,
    /// Mode shares of every device group, in fleet order.
    pub groups: Vec<GroupSeries>,
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Totals of the run.
    pub metrics: Metrics,
    /// Time series for the plots.
    pub series: Series,
    /// Outcome of every job, in trace order.
    pub jobs: Vec<JobOutcome>,
}

fn mode_idx(m: Mode) -> usize {
    match m {
        Mode::Mine => 0,
        Mode::ServeAi => 1,
        Mode::Heat => 2,
        Mode::Idle => 3,
    }
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Dev {
    site: u16,
    group: u16,
    gpu: bool,
    dedicated: bool,
    sched: u32,
    pol: u32,
    temp: f64,
    mode: Mode,
    /// Mode in the previous interval (for switching costs).
    prev: Mode,
    power_w: f64,
}

struct SiteRt {
    specs: Vec<DeviceSpec>,
    readings: Vec<Reading>,
    state: PolicyState,
    prev: Vec<DeviceState>,
    out: Vec<Decision>,
    scratch: Scratch,
    pol_devs: Vec<u32>,
    events: Vec<DrEvent>,
    cap_w: f64,
    /// Policy indices of each group's devices (contiguous).
    members: Vec<std::ops::Range<u32>>,
    idle_floor_w: f64,
    max_extra_w: f64,
    // Compact input: one representative per group in lockstep, else every member.
    c_specs: Vec<DeviceSpec>,
    c_readings: Vec<Reading>,
    c_state: PolicyState,
    c_out: Vec<Decision>,
    /// Per compact entry: the policy indices it stands for.
    c_map: Vec<std::ops::Range<u32>>,
}

/// Percentile (nearest rank) of an unsorted slice; NaN when empty.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Runs one simulation. `trace` must already be at the simulation interval.
pub fn simulate(
    fleet: &Fleet,
    trace: &PriceTrace,
    jobs: &[Job],
    policy: DevicePolicy,
    scheduler: SchedPolicy,
    cfg: &SimConfig,
) -> RunResult {
    let wall = std::time::Instant::now();
    let econ = &fleet.economics;
    let hashprice = econ.hashprice_usd_per_th_day;
    let dt = trace.step_s as f64;
    let dt_h = dt / 3600.0;
    let n_steps = trace.len();
    let mut pcfg = cfg.policy.clone();
    pcfg.interval_s = dt;
    pcfg.stale_after_s = pcfg.stale_after_s.max(2.0 * dt);
    let windows = dr_windows(fleet, trace);

    // Flatten devices; collect scheduler GPUs.
    let mut devs: Vec<Dev> = Vec::with_capacity(fleet.device_count());
    let mut sched_gpus: Vec<(u16, f64)> = Vec::new();
    let mut sites: Vec<SiteRt> = Vec::new();
    for (si, site) in fleet.sites.iter().enumerate() {
        let amb0 = site.climate.outdoor_c(trace.start_unix) + site.climate.intake_offset_c;
        let mut rt = SiteRt {
            specs: Vec::new(),
            readings: Vec::new(),
            state: PolicyState::default(),
            prev: Vec::new(),
            out: Vec::new(),
            scratch: Scratch::default(),
            pol_devs: Vec::new(),
            events: Vec::new(),
            cap_w: site.power_cap_kw * 1000.0,
            members: Vec::new(),
            idle_floor_w: 0.0,
            max_extra_w: 0.0,
            c_specs: Vec::new(),
            c_readings: Vec::new(),
            c_state: PolicyState::default(),
            c_out: Vec::new(),
            c_map: Vec::new(),
        };
        let mut dedicated_w = 0.0;
        for (gi, g) in site.groups.iter().enumerate() {
            let group_start = rt.specs.len() as u32;
            let ai_capable = g.ai.is_some_and(|a| a.tokens_per_s > 0.0);
            for k in 0..g.count {
                let dedicated = g.ai_dedicated && policy != DevicePolicy::MineOnly;
                let in_pool = ai_capable
                    && (dedicated
                        || policy == DevicePolicy::Hybrid
                        || (policy == DevicePolicy::AiOnly
                            && g.kind == hearth_policy::DeviceKind::Gpu));
                let sched = if in_pool {
                    sched_gpus.push((si as u16, g.ai_speed(econ.reference_tokens_per_s)));
                    (sched_gpus.len() - 1) as u32
                } else {
                    NONE
                };
                let pol = if !dedicated
                    && matches!(policy, DevicePolicy::Hearth | DevicePolicy::Hybrid)
                {
                    // Empty ids: the policy does not read them, and cloning stays allocation-free.
                    rt.specs.push(g.spec(String::new(), amb0, hashprice));
                    let idle = g.idle_w;
                    let top = [
                        g.mine.map(|m| m.power_w),
                        g.ai.map(|a| a.power_w),
                        g.heat.map(|h| h.power_w),
                    ]
                    .into_iter()
                    .flatten()
                    .fold(idle, f64::max);
                    rt.idle_floor_w += idle.max(0.0);
                    rt.max_extra_w += (top - idle).max(0.0);
                    rt.readings.push(Reading::default());
                    rt.pol_devs.push(devs.len() as u32);
                    (rt.specs.len() - 1) as u32
                } else {
                    NONE
                };
                if dedicated {
                    dedicated_w += g.ai.map_or(0.0, |a| a.power_w);
                }
                let _ = k;
                devs.push(Dev {
                    site: si as u16,
                    group: gi as u16,
                    gpu: g.kind == hearth_policy::DeviceKind::Gpu,
                    dedicated,
                    sched,
                    pol,
                    temp: amb0,
                    mode: Mode::Idle,
                    prev: Mode::Idle,
                    power_w: g.idle_w,
                });
            }
            let end = rt.specs.len() as u32;
            if end > group_start {
                rt.members.push(group_start..end);
            }
        }
        rt.state.devices = vec![DeviceState::default(); rt.specs.len()];
        rt.prev = rt.state.devices.clone();
        rt.cap_w = (rt.cap_w - dedicated_w).max(0.0);
        for (i, w) in windows.iter().enumerate().filter(|(_, w)| w.site == si) {
            let lim = w.limit_w - dedicated_w;
            rt.events.push(DrEvent {
                id: format!("dr-{i}"),
                start_s: w.start_s,
                end_s: w.end_s,
                target: if lim <= 0.0 {
                    DrTarget::Curtail
                } else {
                    DrTarget::LimitW(lim)
                },
            });
        }
        sites.push(rt);
    }
    let mut sched = Scheduler::new(
        scheduler,
        jobs,
        &sched_gpus,
        econ.checkpoint_s,
        econ.job_restart_s,
    );

    // Oracle schedules, one per (site, group) of mining devices.
    let mut oracle_sched: Vec<Vec<Vec<bool>>> = Vec::new();
    if policy == DevicePolicy::Oracle {
        for site in &fleet.sites {
            let mut per_group = Vec::new();
            for g in &site.groups {
                let mut s = Vec::new();
                if let Some(m) = g.mine {
                    let c = OnOff {
                        rev_usd_per_h: g.mine_usd_per_h(hashprice),
                        on_w: m.power_w,
                        off_w: g.idle_w,
                        start_usd: g.start_mining_cost_usd(hashprice),
                        stop_usd: g.wear_usd,
                    };
                    oracle::optimal(&trace.prices, dt, &c, &mut s);
                }
                per_group.push(s);
            }
            oracle_sched.push(per_group);
        }
    }

    let mut m = Metrics {
        policy: policy.as_str().into(),
        scheduler: scheduler.as_str().into(),
        devices: devs.len(),
        intervals: n_steps,
        interval_s: trace.step_s,
        max_temp_c: f64::NEG_INFINITY,
        ..Metrics::default()
    };
    let sample_steps = ((cfg.sample_s / dt).round() as usize).max(1);
    let mut series = Series::default();
    let mut group_counts: Vec<Vec<[u64; 4]>> = fleet
        .sites
        .iter()
        .map(|s| vec![[0u64; 4]; s.groups.len()])
        .collect();
    for (s, site) in fleet.sites.iter().enumerate() {
        for g in &site.groups {
            series.groups.push(GroupSeries {
                site: site.name.clone(),
                group: g.name.clone(),
                count: g.count,
                frac: Vec::new(),
            });
        }
        let _ = s;
    }
    let mut queue_acc = 0.0;
    // exp(−dt/τ) per group, as ThermalModel computes it.
    let decay: Vec<Vec<f64>> = fleet
        .sites
        .iter()
        .map(|s| {
            s.groups
                .iter()
                .map(|g| {
                    if g.tau_s <= 0.0 {
                        0.0
                    } else {
                        (-dt / g.tau_s).exp()
                    }
                })
                .collect()
        })
        .collect();
    let mut site_power = vec![0.0f64; fleet.sites.len()];
    let mut site_outdoor = vec![0.0f64; fleet.sites.len()];
    let mut site_gpu_power = vec![0.0f64; fleet.sites.len()];
    let mut forecast_buf: Vec<f64> = Vec::new();
    let cap_total_kw: f64 = fleet.sites.iter().map(|s| s.power_cap_kw).sum();

    for k in 0..n_steps {
        let t0 = k as f64 * dt;
        let t_unix = trace.start_unix + t0 as i64;
        let price = trace.prices[k];
        let price_kwh = price / 1000.0;

        // Demand for lending: GPUs wanted beyond the free capacity already serving AI.
        let mut lend_need: u64 = 0;
        if policy == DevicePolicy::Hybrid {
            let free_ai = (0..sched.gpus.len())
                .filter(|&g| sched.gpus[g].available && !sched.is_busy(g))
                .count() as u64;
            lend_need = sched.waiting_gpus().saturating_sub(free_ai);
        }

        for (o, site) in site_outdoor.iter_mut().zip(&fleet.sites) {
            *o = site.climate.outdoor_c(t_unix);
        }

        // 1. Modes.
        for (si, site) in fleet.sites.iter().enumerate() {
            let outdoor = site_outdoor[si];
            let ambient = outdoor + site.climate.intake_offset_c;
            let heat_value = match &site.heat {
                Some(h) if outdoor < h.setpoint_c && policy == DevicePolicy::Hybrid => {
                    h.value_usd_per_mwh
                }
                _ => 0.0,
            };
            let rt = &mut sites[si];
            if !rt.specs.is_empty() {
                // Busy lent GPUs must stay in AI: count them into this site's demand.
                let mut busy_lent = 0u64;
                let mut lendable = 0u64;
                for (pi, &d) in rt.pol_devs.iter().enumerate() {
                    let dv = &devs[d as usize];
                    if let Some(th) = rt.specs[pi].thermal.as_mut() {
                        th.ambient_c = ambient;
                    }
                    let r = &mut rt.readings[pi];
                    r.at_s = t0;
                    r.temp_c = Some(dv.temp);
                    r.power_w = Some(dv.power_w);
                    if dv.sched != NONE {
                        lendable += 1;
                        if sched.is_busy(dv.sched as usize) {
                            busy_lent += 1;
                        }
                    }
                }
                let take = lend_need.min(lendable.saturating_sub(busy_lent));
                lend_need -= take;
                let ai = if policy == DevicePolicy::Hybrid {
                    AiDemand {
                        jobs_waiting: (busy_lent + take).min(u32::MAX as u64) as u32,
                        usd_per_mtok: econ.ai_usd_per_mtok,
                    }
                } else {
                    AiDemand::default()
                };
                let forecast = if cfg.day_ahead {
                    let per_day = (86_400.0 / dt) as usize;
                    let day0 = (k / per_day) * per_day;
                    forecast_buf.clear();
                    forecast_buf
                        .extend_from_slice(&trace.prices[day0..(day0 + per_day).min(n_steps)]);
                    Some(PriceForecast {
                        start_s: day0 as f64 * dt,
                        step_s: dt,
                        usd_per_mwh: &forecast_buf,
                    })
                } else {
                    None
                };
                rt.prev.copy_from_slice(&rt.state.devices);
                // Exact compression: with no AI demand and a cap that cannot bind, each device's
                // decision depends only on its own spec, reading and state, so identical devices
                // in identical state get identical decisions.
                let mut cap_eff = rt.cap_w;
                for ev in rt.events.iter().filter(|e| e.active_at(t0)) {
                    if let DrTarget::LimitW(w) = ev.target {
                        cap_eff = cap_eff.min(w);
                    }
                }
                let compact = cfg.compress
                    && ai.jobs_waiting == 0
                    && rt.out.len() == rt.specs.len()
                    && cap_eff - rt.idle_floor_w >= rt.max_extra_w
                    && build_compact(rt, t0, pcfg.min_dwell_s);
                let prices = Prices {
                    electricity_usd_per_mwh: price,
                    hashprice_usd_per_th_day: hashprice,
                    heat_value_usd_per_mwh: heat_value,
                };
                if compact {
                    let input = PolicyInput {
                        now_s: t0,
                        devices: &rt.c_specs,
                        readings: &rt.c_readings,
                        prices,
                        forecast,
                        ai,
                        events: &rt.events,
                        site_cap_w: Some(rt.cap_w),
                        config: &pcfg,
                    };
                    decide_into(&input, &mut rt.c_state, &mut rt.c_out, &mut rt.scratch);
                    expand_compact(rt, t0);
                } else {
                    let input = PolicyInput {
                        now_s: t0,
                        devices: &rt.specs,
                        readings: &rt.readings,
                        prices,
                        forecast,
                        ai,
                        events: &rt.events,
                        site_cap_w: Some(rt.cap_w),
                        config: &pcfg,
                    };
                    decide_into(&input, &mut rt.state, &mut rt.out, &mut rt.scratch);
                }
                if policy == DevicePolicy::Hybrid {
                    keep_busy_in_ai(rt, &devs, &sched, &pcfg, t0);
                }
                for (pi, dec) in rt.out.iter().enumerate() {
                    let d = &mut devs[rt.pol_devs[pi] as usize];
                    d.mode = dec.mode;
                    d.power_w = dec.power_w;
                }
            }
            // Devices outside the hearth policy.
            for d in devs
                .iter_mut()
                .filter(|d| d.site as usize == si && d.pol == NONE)
            {
                let g = &site.groups[d.group as usize];
                let want = if d.dedicated {
                    Mode::ServeAi
                } else {
                    match policy {
                        DevicePolicy::AiOnly if d.sched != NONE => Mode::ServeAi,
                        DevicePolicy::Oracle => {
                            if oracle_sched[si][d.group as usize].get(k) == Some(&true) {
                                Mode::Mine
                            } else {
                                Mode::Idle
                            }
                        }
                        _ if g.mine.is_some() => Mode::Mine,
                        _ => Mode::Idle,
                    }
                };
                let p = match want {
                    Mode::Mine => g.mine.map_or(g.idle_w, |x| x.power_w),
                    Mode::ServeAi => g.ai.map_or(g.idle_w, |x| x.power_w),
                    _ => g.idle_w,
                };
                // Thermal guard (the same margin the policy keeps).
                let limit = g.temp_limit_c - pcfg.temp_margin_c;
                let ok = max_power_w(
                    ambient,
                    g.r_c_per_w,
                    decay[si][d.group as usize],
                    d.temp,
                    limit,
                ) >= p;
                if ok {
                    d.mode = want;
                    d.power_w = p;
                } else {
                    d.mode = Mode::Idle;
                    d.power_w = g.idle_w;
                }
            }
        }

        // 2. AI availability and the scheduler over this interval.
        for d in &devs {
            if d.sched != NONE {
                sched.set_available(d.sched as usize, d.mode == Mode::ServeAi);
            }
        }
        sched.advance_to(t0 + dt);
        queue_acc += sched.waiting_len() as f64;

        // 3. Accounting.
        site_power.iter_mut().for_each(|p| *p = 0.0);
        site_gpu_power.iter_mut().for_each(|p| *p = 0.0);
        let mut prev_modes_changed = 0u64;
        for d in devs.iter_mut() {
            let site = &fleet.sites[d.site as usize];
            let g = &site.groups[d.group as usize];
            let mut p = d.power_w;
            let mut revenue = 0.0;
            match d.mode {
                Mode::ServeAi => {
                    let (held, work) = if d.sched != NONE {
                        sched.take_usage(d.sched as usize)
                    } else {
                        (0.0, 0.0)
                    };
                    let ai_w = g.ai.map_or(g.idle_w, |a| a.power_w);
                    p = g.idle_w + (ai_w - g.idle_w) * (held / dt).min(1.0);
                    let tokens = work * econ.reference_tokens_per_s;
                    let r = tokens * econ.ai_usd_per_mtok / 1e6;
                    m.ai_revenue_usd += r;
                    revenue += r;
                }
                Mode::Mine => {
                    let nominal = g.mine.map_or(g.idle_w, |x| x.power_w);
                    let scale = ((p - g.idle_w) / (nominal - g.idle_w).max(1e-9)).clamp(0.0, 1.0);
                    let r = g.mine_usd_per_h(hashprice) * dt_h * scale;
                    m.mining_revenue_usd += r;
                    revenue += r;
                }
                _ => {}
            }
            let kwh = p * dt / 3.6e6;
            let cost = kwh * price_kwh;
            m.energy_kwh += kwh;
            m.energy_cost_usd += cost;
            // Switching.
            let ds = &mut group_counts[d.site as usize][d.group as usize];
            ds[mode_idx(d.mode)] += 1;
            let prev = d.prev;
            let mut sw = 0.0;
            if d.mode != prev {
                sw += g.wear_usd;
                if d.mode == Mode::Mine {
                    sw += g.restart_s / 3600.0 * g.mine_usd_per_h(hashprice);
                }
                prev_modes_changed += 1;
            }
            m.switching_cost_usd += sw;
            if !d.dedicated {
                m.mining_net_usd += if d.mode == Mode::Mine { revenue } else { 0.0 } - cost - sw;
            }
            if d.gpu {
                m.gpu_energy_kwh += kwh;
                m.gpu_net_usd += revenue - cost - sw;
                site_gpu_power[d.site as usize] += p;
            }
            site_power[d.site as usize] += p;
            // Thermal.
            // ThermalModel::step with the group's decay computed once.
            let steady =
                site_outdoor[d.site as usize] + site.climate.intake_offset_c + g.r_c_per_w * p;
            d.temp = steady + (d.temp - steady) * decay[d.site as usize][d.group as usize];
            if d.temp > g.temp_limit_c + 1e-9 {
                m.thermal_violations += 1;
            }
            m.max_temp_c = m.max_temp_c.max(d.temp);
            d.power_w = p;
            d.prev = d.mode;
        }
        m.mode_switches += prev_modes_changed;
        for (si, site) in fleet.sites.iter().enumerate() {
            if let Some(h) = &site.heat {
                let outdoor = site_outdoor[si];
                if outdoor < h.setpoint_c {
                    let demand_w = h.ua_kw_per_c * (h.setpoint_c - outdoor) * 1000.0;
                    let useful_w = site_power[si].min(demand_w);
                    let v = useful_w * dt / 3.6e9 * h.value_usd_per_mwh;
                    m.heat_value_usd += v;
                    if site_power[si] > 0.0 {
                        m.gpu_net_usd += v * site_gpu_power[si] / site_power[si];
                    }
                }
            }
            for w in windows.iter().filter(|w| w.site == si) {
                if w.start_s <= t0 && t0 < w.end_s {
                    m.dr_intervals += 1;
                    if site_power[si] <= w.limit_w + 1e-6 {
                        m.dr_compliant += 1;
                    }
                }
            }
        }

        // 4. Time series.
        if (k + 1) % sample_steps == 0 || k + 1 == n_steps {
            let steps_in = ((k % sample_steps) + 1) as f64;
            series.t_days.push((t0 + dt) / 86_400.0);
            series.profit_usd.push(
                m.mining_revenue_usd + m.ai_revenue_usd + m.heat_value_usd
                    - m.energy_cost_usd
                    - m.switching_cost_usd,
            );
            series.queue_len.push(queue_acc / steps_in);
            queue_acc = 0.0;
            let mut gi = 0;
            for (si, site) in fleet.sites.iter().enumerate() {
                for (g, grp) in site.groups.iter().enumerate() {
                    let c = &mut group_counts[si][g];
                    let denom = (grp.count as f64 * steps_in).max(1.0);
                    series.groups[gi]
                        .frac
                        .push(c.map(|x| (x as f64 / denom) as f32));
                    *c = [0; 4];
                    gi += 1;
                }
            }
        }
    }

    // Drain the queue after the trace with the last availability.
    let end = trace.duration_s();
    let mut t = end;
    while !sched.all_done() && t < end + cfg.drain_s {
        t += 3600.0;
        sched.advance_to(t);
    }

    let outcomes = sched.outcomes();
    m.preemptions = sched.preemptions;
    m.jobs_total = outcomes.len();
    let mut jct: Vec<f64> = outcomes.iter().filter_map(|o| o.jct_s).collect();
    let mut qd: Vec<f64> = outcomes.iter().filter_map(|o| o.queue_delay_s).collect();
    m.jobs_done = jct.len();
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    m.mean_jct_s = mean(&jct);
    m.mean_queue_s = mean(&qd);
    m.p95_jct_s = percentile(&mut jct, 0.95);
    m.p95_queue_s = percentile(&mut qd, 0.95);
    m.net_profit_usd = m.mining_revenue_usd + m.ai_revenue_usd + m.heat_value_usd
        - m.energy_cost_usd
        - m.switching_cost_usd;
    m.net_usd_per_kwh = m.net_profit_usd / m.energy_kwh.max(1e-12);
    m.net_usd_per_cap_kwh = m.net_profit_usd / (cap_total_kw * end / 3600.0).max(1e-12);
    m.gpu_net_usd_per_kwh = m.gpu_net_usd / m.gpu_energy_kwh.max(1e-12);
    m.dr_compliance = if m.dr_intervals == 0 {
        1.0
    } else {
        m.dr_compliant as f64 / m.dr_intervals as f64
    };
    m.wall_s = wall.elapsed().as_secs_f64();
    RunResult {
        metrics: m,
        series,
        jobs: outcomes,
    }
}

/// After the policy: a GPU running a job keeps serving AI if an idle device of the same group
/// was picked for AI instead (the policy counts devices, not which ones hold jobs); the two
/// swap decisions so no job is preempted for nothing.
fn keep_busy_in_ai(rt: &mut SiteRt, devs: &[Dev], sched: &Scheduler, cfg: &PolicyConfig, now: f64) {
    let n = rt.out.len();
    for b in 0..n {
        let db = &devs[rt.pol_devs[b] as usize];
        if db.sched == NONE || !sched.is_busy(db.sched as usize) || rt.out[b].mode == Mode::ServeAi
        {
            continue;
        }
        let Some(f) = (0..n).find(|&f| {
            let df = &devs[rt.pol_devs[f] as usize];
            rt.out[f].mode == Mode::ServeAi
                && df.group == db.group
                && df.sched != NONE
                && !sched.is_busy(df.sched as usize)
        }) else {
            continue;
        };
        // The busy device must be thermally able to keep its AI load.
        let spec = &rt.specs[b];
        let ok = match (spec.thermal, spec.temp_limit_c) {
            (Some(th), Some(l)) => {
                th.max_power_w(db.temp, l - cfg.temp_margin_c, cfg.interval_s) >= rt.out[f].power_w
            }
            _ => true,
        };
        if !ok {
            continue;
        }
        let (mb, pb) = (rt.out[b].mode, rt.out[b].power_w);
        rt.out[b].mode = rt.out[f].mode;
        rt.out[b].power_w = rt.out[f].power_w;
        rt.out[f].mode = mb;
        rt.out[f].power_w = pb;
        for i in [b, f] {
            let prev = rt.prev[i];
            rt.state.devices[i] = if rt.out[i].mode != prev.mode {
                DeviceState {
                    mode: rt.out[i].mode,
                    since_s: now,
                    switches: prev.switches + 1,
                }
            } else {
                prev
            };
        }
    }
}

/// Builds the compact policy input: one representative per group whose devices are in lockstep
/// (same mode, same reading, and the same switch time unless both are past the dwell), every
/// member otherwise. Returns false when nothing would be saved.
fn build_compact(rt: &mut SiteRt, now: f64, dwell: f64) -> bool {
    rt.c_specs.clear();
    rt.c_readings.clear();
    rt.c_state.devices.clear();
    rt.c_map.clear();
    for r in &rt.members {
        let first = r.start as usize;
        let a = rt.state.devices[first];
        let ra = &rt.readings[first];
        let same = (r.start + 1..r.end).all(|m| {
            let m = m as usize;
            let b = rt.state.devices[m];
            let rb = &rt.readings[m];
            a.mode == b.mode
                && (a.since_s == b.since_s
                    || (now - a.since_s >= dwell && now - b.since_s >= dwell))
                && ra.temp_c.map(f64::to_bits) == rb.temp_c.map(f64::to_bits)
                && ra.power_w.map(f64::to_bits) == rb.power_w.map(f64::to_bits)
        });
        if same {
            rt.c_specs.push(rt.specs[first].clone());
            rt.c_readings.push(ra.clone());
            rt.c_state.devices.push(a);
            rt.c_map.push(r.clone());
        } else {
            for m in r.clone() {
                rt.c_specs.push(rt.specs[m as usize].clone());
                rt.c_readings.push(rt.readings[m as usize].clone());
                rt.c_state.devices.push(rt.state.devices[m as usize]);
                rt.c_map.push(m..m + 1);
            }
        }
    }
    rt.c_specs.len() < rt.specs.len()
}

/// Copies the compact decisions back to every device they stand for; each device keeps its own
/// switch time and count unless its mode changed.
fn expand_compact(rt: &mut SiteRt, now: f64) {
    for (i, r) in rt.c_map.iter().enumerate() {
        let dec = &rt.c_out[i];
        for m in r.clone() {
            let m = m as usize;
            let own = rt.state.devices[m];
            let out = &mut rt.out[m];
            out.mode = dec.mode;
            out.power_w = dec.power_w;
            out.power_limit_w = dec.power_limit_w;
            out.derated = dec.derated;
            out.changed = dec.mode != own.mode;
            out.reason.clone_from(&dec.reason);
            if out.changed {
                rt.state.devices[m] = DeviceState {
                    mode: dec.mode,
                    since_s: now,
                    switches: own.switches + 1,
                };
            }
        }
    }
}

/// `ThermalModel::max_power_w` with a precomputed decay: the largest constant power that keeps
/// the temperature at or below `limit_c` over the interval.
fn max_power_w(ambient_c: f64, r_c_per_w: f64, decay: f64, temp_c: f64, limit_c: f64) -> f64 {
    if temp_c > limit_c {
        return f64::NEG_INFINITY;
    }
    let gain = r_c_per_w * (1.0 - decay);
    if gain <= 0.0 {
        return f64::INFINITY;
    }
    (limit_c - ambient_c - (temp_c - ambient_c) * decay) / gain
}
