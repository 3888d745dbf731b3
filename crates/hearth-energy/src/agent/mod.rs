//! The agent's runtime: every interval (and at once on a demand-response event) read telemetry,
//! refresh signals, run [`crate::policy::decide_into`], hand each device its command, log every
//! change with its reason, and serve `/metrics` and `/api/*`.
//!
//! Invariants: the loop never waits on hardware (telemetry reads have a time limit and control
//! runs in per-device workers that retry with backoff); a demand-response event POSTed to the
//! HTTP server wakes the loop, which decides on the last readings without reading again, so
//! curtailment is commanded within milliseconds; bad input (config, prices, events) is rejected
//! with a clear error and the last good values stay in force.

pub mod config;
mod http;
pub mod metrics;

pub use config::{AgentConfig, Backend, DeviceConfig};
/// What `/api/state` shows: one schema for the agent that writes it and the node that reads it.
pub use hearth_policy::agent_state::{DeviceView, SignalsView, Snapshot};
pub use http::router;

use crate::control::{
    spawn_worker, Actuator, Chain, Command, MinerActuator, NoopActuator, NvmlPowerLimit,
    SimActuator, WorkerConfig, WorkerHandle,
};
use crate::policy::{
    decide_into, AiDemand, Decision, DeviceKind, DeviceSpec, DrTarget, HeatSpec, Mode, PolicyInput,
    PolicyState, PriceForecast, Prices, Scratch,
};
use crate::reading::{validate, Health, Reading};
use crate::signals::dr::DrBook;
use crate::signals::price::{PriceSeries, PriceUpdate};
use crate::signals::{HashpriceSource, HeatDemand, Latest};
use crate::sim_device::SimulatedDevice;
use crate::telemetry::nvml::NvmlGpus;
use crate::telemetry::sysfs::detect_host_cpu;
use crate::telemetry::{MinerTelemetry, SimTelemetry, Telemetry};
use metrics::Metrics;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Seconds since the Unix epoch, the agent's clock.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The configured price CSV does not parse.
    #[error("price CSV {path}: {source}")]
    PriceCsv {
        /// The CSV file.
        path: String,
        /// What is wrong with it (names the line).
        source: crate::signals::price::PriceError,
    },
    /// A file could not be read (message names it).
    #[error("{0}")]
    Io(String),
    /// A configured device could not be set up.
    #[error("device {id}: {msg}")]
    Device {
        /// The device's id.
        id: String,
        /// What failed.
        msg: String,
    },
}

/// One device as the agent drives it.
pub struct AgentDevice {
    /// The device as the policy sees it.
    pub spec: DeviceSpec,
    /// Where its readings come from.
    pub telemetry: Arc<dyn Telemetry>,
    /// What carries out its commands (driven by its control worker).
    pub actuator: Arc<dyn Actuator>,
    /// What it is, for humans ("nvml:0", "cgminer 10.0.0.5:4028", "simulated").
    pub backend: String,
}

/// Signal inputs and their last good values.
#[derive(Debug, Default)]
pub struct SignalState {
    /// Fallback electricity price when no other source has one, $/MWh.
    pub fixed_price: f64,
    /// Prices from the configured CSV, if any.
    pub price_series: Option<PriceSeries>,
    /// Give the policy a forecast (from the pushed update, else the CSV).
    pub use_forecast: bool,
    /// From the price endpoint or `POST /api/price` (newer wins over the CSV).
    pub price_update: Latest<PriceUpdate>,
    /// Hashprice source; `None` (before start): hashprice 0, no mining.
    pub hashprice: Option<HashpriceSource>,
    /// Paid AI demand, from the config, the endpoint or `POST /api/ai`.
    pub ai: Latest<AiDemand>,
    /// Heat demand; `None` (before start): heat worth nothing.
    pub heat: Option<HeatDemand>,
}

/// State shared between the loop and the HTTP server.
#[derive(Debug, Default)]
pub struct Shared {
    /// What the last decision produced (`GET /api/state`).
    pub snapshot: Mutex<Snapshot>,
    /// Known demand-response events.
    pub dr: Mutex<DrBook>,
    /// Signal inputs and their last good values.
    pub signals: Mutex<SignalState>,
    /// Wakes the loop at once (demand-response events, price pushes).
    pub wake: Notify,
    /// The Prometheus series served at `/metrics`.
    pub metrics: Metrics,
    /// The control workers, one per device in order (empty until `run`).
    pub workers: Mutex<Vec<WorkerHandle>>,
    /// Who may post events, prices and demand (anyone when empty).
    pub keys: hearth_core::ApiKeys,
    /// What the API accepts from browsers (every request passes it first).
    pub guard: hearth_core::RequestGuard,
}

impl Shared {
    /// The last decision's state, with each device's control status as it is now (workers
    /// apply and retry between decisions).
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = self.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(w) = self.workers.lock() {
            if w.len() == snap.devices.len() {
                for (d, w) in snap.devices.iter_mut().zip(w.iter()) {
                    d.control = w.status();
                }
            }
        }
        snap
    }
}

/// The agent: devices, configuration, shared state.
pub struct Agent {
    /// The validated configuration (policy interval and staleness adjusted to `interval_s`).
    pub cfg: AgentConfig,
    /// The devices driven, in policy order.
    pub devices: Vec<AgentDevice>,
    /// State shared with the HTTP server.
    pub shared: Arc<Shared>,
    /// Timing of each device's control worker.
    pub worker: WorkerConfig,
    /// Time limit of one telemetry read.
    pub read_timeout: Duration,
    /// Also print every mode change with its reason on stdout (the CLI sets this, so decisions
    /// are visible whatever the log filter).
    pub echo: bool,
}

impl Agent {
    /// An agent over given devices (tests use fakes here).
    pub fn new(mut cfg: AgentConfig, devices: Vec<AgentDevice>) -> Result<Agent, AgentError> {
        cfg.validate().map_err(|msg| config::ConfigError::Invalid {
            path: "(agent)".into(),
            msg,
        })?;
        // The policy looks ahead one interval, and a reading is stale after a few intervals.
        cfg.policy.interval_s = cfg.interval_s;
        cfg.policy.stale_after_s = cfg.policy.stale_after_s.max(2.5 * cfg.interval_s);
        let price_series = match &cfg.price.csv {
            Some(path) => Some(load_price_csv(Path::new(path))?),
            None => None,
        };
        let shared = Arc::new(Shared {
            keys: hearth_core::ApiKeys::new(&cfg.api_keys),
            guard: hearth_core::RequestGuard::new(&cfg.allowed_hosts, &cfg.allowed_origins),
            ..Shared::default()
        });
        if let Ok(mut s) = shared.signals.lock() {
            s.fixed_price = cfg.price.fixed_usd_per_mwh;
            s.price_series = price_series;
            s.use_forecast = cfg.price.use_forecast;
            s.hashprice = Some(cfg.hashprice.clone());
            s.ai.update::<String>(Ok(cfg.ai.demand()), unix_now());
            s.heat = Some(cfg.heat.clone());
        }
        let read_timeout = Duration::from_secs_f64((cfg.interval_s / 2.0).clamp(0.05, 5.0));
        Ok(Agent {
            cfg,
            devices,
            shared,
            worker: WorkerConfig::default(),
            read_timeout,
            echo: false,
        })
    }

    /// Builds the devices a config names (and, with `auto_detect`, what the host has).
    /// Must run inside a tokio runtime (the built-in miner starts a task). Returns the agent and
    /// notes on what was not found.
    pub fn from_config(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let now = unix_now();
        let mut devices = Vec::new();
        let mut notes = Vec::new();
        let mut nvml: Option<Result<NvmlGpus, String>> = None;
        let mut get_nvml = || nvml.get_or_insert_with(NvmlGpus::detect).clone();
        for d in &cfg.devices {
            let id = d.spec.id.clone();
            let dev_err = |msg: String| AgentError::Device {
                id: id.clone(),
                msg,
            };
            let (telemetry, actuator, backend): (Arc<dyn Telemetry>, Arc<dyn Actuator>, String) =
                match &d.backend {
                    Backend::Simulated => {
                        let sim = Arc::new(Mutex::new(SimulatedDevice::new(d.spec.clone(), now)));
                        (
                            Arc::new(SimTelemetry(sim.clone())),
                            Arc::new(SimActuator(sim)),
                            "simulated".into(),
                        )
                    }
                    Backend::Nvml { index } => {
                        let gpus = get_nvml().map_err(dev_err)?;
                        if *index >= gpus.count {
                            return Err(dev_err(format!(
                                "NVML has {} GPUs, no index {index}",
                                gpus.count
                            )));
                        }
                        (
                            Arc::new(gpus.telemetry(*index)),
                            Arc::new(NvmlPowerLimit {
                                gpus: gpus.clone(),
                                index: *index,
                            }),
                            format!("nvml:{index}"),
                        )
                    }
                    Backend::HostCpu { builtin_miner } => {
                        let det =
                            detect_host_cpu(Path::new(&cfg.sys_root), Path::new(&cfg.proc_root));
                        notes.extend(det.notes.iter().map(|n| format!("{id}: {n}")));
                        let actuator: Arc<dyn Actuator> = match builtin_miner {
                            Some(m) => {
                                let mut sc = hearth_mining::stratum::StratumConfig::new(
                                    m.url.clone(),
                                    m.user.clone(),
                                );
                                if let Some(p) = &m.password {
                                    sc.password = p.clone();
                                }
                                // Paused until the policy says mine.
                                sc.start_paused = true;
                                let miner = hearth_mining::stratum::BuiltinMiner::start(sc)
                                    .map_err(|e| dev_err(format!("built-in miner: {e}")))?;
                                Arc::new(MinerActuator(Arc::new(hearth_mining::Miner::Builtin(
                                    miner,
                                ))))
                            }
                            None => Arc::new(NoopActuator),
                        };
                        (Arc::new(det.cpu), actuator, "host-cpu".into())
                    }
                    Backend::Cgminer { addr } => miner_backend(
                        hearth_mining::Miner::Cgminer(hearth_mining::cgminer::CgminerClient::new(
                            addr.clone(),
                        )),
                        format!("cgminer {addr}"),
                    ),
                    Backend::Luxos { addr } => miner_backend(
                        hearth_mining::Miner::Luxos(hearth_mining::luxos::LuxosClient::new(
                            addr.clone(),
                        )),
                        format!("luxos {addr}"),
                    ),
                };
            devices.push(AgentDevice {
                spec: d.spec.clone(),
                telemetry,
                actuator,
                backend,
            });
        }
        if cfg.auto_detect {
            match get_nvml() {
                Ok(gpus) => {
                    for i in 0..gpus.count {
                        let info = gpus.info(i).map_err(|e| AgentError::Device {
                            id: format!("gpu{i}"),
                            msg: e.to_string(),
                        })?;
                        let max = info.limit_range_w.map_or(250.0, |r| r.1);
                        devices.push(AgentDevice {
                            spec: DeviceSpec {
                                id: format!("gpu{i}"),
                                kind: DeviceKind::Gpu,
                                idle_w: 30.0,
                                mine: None,
                                ai: Some(crate::policy::AiSpec {
                                    power_w: max,
                                    tokens_per_s: 50.0,
                                }),
                                heat: Some(HeatSpec { power_w: max * 0.5 }),
                                temp_limit_c: Some(83.0),
                                thermal: None,
                                power_limit_range_w: info.limit_range_w,
                                switch_cost_usd: 0.0,
                            },
                            telemetry: Arc::new(gpus.telemetry(i)),
                            actuator: Arc::new(NvmlPowerLimit {
                                gpus: gpus.clone(),
                                index: i,
                            }),
                            backend: format!("nvml:{i} {}", info.name),
                        });
                    }
                }
                Err(why) => notes.push(why),
            }
            let det = detect_host_cpu(Path::new(&cfg.sys_root), Path::new(&cfg.proc_root));
            notes.extend(det.notes.iter().map(|n| format!("host-cpu: {n}")));
            if !devices.iter().any(|d| d.backend == "host-cpu") {
                devices.push(AgentDevice {
                    spec: DeviceSpec {
                        id: "host-cpu".into(),
                        kind: DeviceKind::Cpu,
                        idle_w: 0.0,
                        mine: None,
                        ai: None,
                        heat: None,
                        temp_limit_c: det.has_temp.then_some(95.0),
                        thermal: None,
                        power_limit_range_w: None,
                        switch_cost_usd: 0.0,
                    },
                    telemetry: Arc::new(det.cpu),
                    actuator: Arc::new(NoopActuator),
                    backend: "host-cpu (watched)".into(),
                });
            }
        }
        let agent = Agent::new(cfg, devices)?;
        for n in &notes {
            tracing::info!("{n}");
        }
        if let Ok(mut s) = agent.shared.snapshot.lock() {
            s.notes = notes;
        }
        Ok(agent)
    }

    /// Reads every device concurrently, each within the read time limit.
    pub async fn read_all(&self, now_s: f64) -> Vec<Reading> {
        let handles: Vec<_> = self
            .devices
            .iter()
            .map(|d| {
                let t = d.telemetry.clone();
                let limit = self.read_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(limit, t.read(now_s)).await {
                        Ok(r) => r,
                        Err(_) => Reading {
                            at_s: now_s,
                            fault: Some(format!("telemetry did not answer within {limit:?}")),
                            ..Reading::default()
                        },
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.unwrap_or_else(|e| Reading {
                at_s: now_s,
                fault: Some(format!("telemetry task failed: {e}")),
                ..Reading::default()
            }));
        }
        out
    }

    /// Runs until `shutdown` resolves: serves HTTP on `listener`, decides every interval and on
    /// every wake.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        let app = router(self.shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        });
        let pollers = spawn_pollers(&self.cfg, &self.shared);
        let workers: Vec<WorkerHandle> = self
            .devices
            .iter()
            .map(|d| spawn_worker(d.spec.id.clone(), d.actuator.clone(), self.worker))
            .collect();
        if let Ok(mut w) = self.shared.workers.lock() {
            *w = workers.clone();
        }
        let mut lp = Loop::new(&self);
        let interval = Duration::from_secs_f64(self.cfg.interval_s);
        let mut next = tokio::time::Instant::now();
        let mut full = true;
        tokio::pin!(shutdown);
        loop {
            let now = unix_now();
            if full {
                lp.readings = self.read_all(now).await;
            }
            lp.step(&self, now, Some(&workers));
            // Also wake when a known demand-response event starts or ends, so a scheduled event
            // takes effect on time rather than at the next interval.
            let boundary = self.next_event_boundary(now).map(|t| {
                tokio::time::Instant::now()
                    + Duration::from_secs_f64((t - now).clamp(0.0, 86_400.0))
            });
            let tick = next + interval;
            let (wake_at, is_tick) = match boundary {
                Some(b) if b < tick => (b, false),
                _ => (tick, true),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {
                    if is_tick {
                        next = tokio::time::Instant::now();
                    }
                    full = is_tick;
                }
                _ = self.shared.wake.notified() => { full = false; }
                _ = &mut shutdown => break,
            }
        }
        server.abort();
        for p in pollers {
            p.abort();
        }
        Ok(())
    }

    /// The next start or end of a known event after `now_s`.
    fn next_event_boundary(&self, now_s: f64) -> Option<f64> {
        let book = self.shared.dr.lock().ok()?;
        book.events()
            .iter()
            .flat_map(|e| [e.start_s, e.end_s])
            .filter(|&t| t > now_s)
            .min_by(f64::total_cmp)
    }

    /// One read and one decision, applied to nothing (`hearth agent --once`).
    pub async fn once(&self) -> Snapshot {
        let mut lp = Loop::new(self);
        let now = unix_now();
        lp.readings = self.read_all(now).await;
        lp.step(self, now, None);
        self.shared.snapshot()
    }
}

/// Telemetry and control of an external miner, both through its API.
fn miner_backend(
    miner: hearth_mining::Miner,
    label: String,
) -> (Arc<dyn Telemetry>, Arc<dyn Actuator>, String) {
    let miner = Arc::new(miner);
    (
        Arc::new(MinerTelemetry {
            miner: miner.clone(),
            timeout: Duration::from_secs(5),
        }),
        Arc::new(MinerActuator(miner)),
        label,
    )
}

fn load_price_csv(path: &Path) -> Result<PriceSeries, AgentError> {
    let bytes = crate::telemetry::read_bounded(path, 64 << 20)
        .map_err(|e| AgentError::Io(format!("price CSV {}: {e}", path.display())))?;
    crate::signals::price::parse_csv(&bytes).map_err(|source| AgentError::PriceCsv {
        path: path.display().to_string(),
        source,
    })
}

/// Polls the price and AI endpoints every interval; a failed poll keeps the last good value.
fn spawn_pollers(cfg: &AgentConfig, shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    let every = Duration::from_secs_f64(cfg.interval_s.max(1.0));
    let limit = Duration::from_secs_f64((cfg.interval_s / 2.0).clamp(1.0, 10.0));
    if let Some(url) = cfg.price.url.clone() {
        let sh = shared.clone();
        out.push(tokio::spawn(async move {
            loop {
                let r = crate::signals::http::get(&url, limit)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| crate::signals::price::parse_json(&b).map_err(|e| e.to_string()));
                if let Err(e) = &r {
                    tracing::warn!("price endpoint: {e}; keeping the last good price");
                }
                if let Ok(mut s) = sh.signals.lock() {
                    s.price_update.update(r, unix_now());
                }
                tokio::time::sleep(every).await;
            }
        }));
    }
    if let Some(url) = cfg.ai.url.clone() {
        let sh = shared.clone();
        out.push(tokio::spawn(async move {
            loop {
                let r = crate::signals::http::get(&url, limit)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| parse_ai(&b));
                if let Err(e) = &r {
                    tracing::warn!("AI demand endpoint: {e}; keeping the last good demand");
                }
                if let Ok(mut s) = sh.signals.lock() {
                    s.ai.update(r, unix_now());
                }
                tokio::time::sleep(every).await;
            }
        }));
    }
    out
}

/// Parses `{"jobs_waiting": n, "usd_per_mtok": x}`.
pub fn parse_ai(body: &[u8]) -> Result<AiDemand, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct J {
        jobs_waiting: u32,
        usd_per_mtok: f64,
    }
    let j: J = serde_json::from_slice(body).map_err(|e| format!("AI demand JSON: {e}"))?;
    if !(j.usd_per_mtok.is_finite() && (0.0..=1e6).contains(&j.usd_per_mtok)) {
        return Err(format!(
            "AI demand: usd_per_mtok {} is not a price",
            j.usd_per_mtok
        ));
    }
    Ok(AiDemand {
        jobs_waiting: j.jobs_waiting,
        usd_per_mtok: j.usd_per_mtok,
    })
}

/// The loop's own state between steps.
struct Loop {
    specs: Vec<DeviceSpec>,
    state: PolicyState,
    scratch: Scratch,
    out: Vec<Decision>,
    readings: Vec<Reading>,
    sent: Vec<Option<Command>>,
    decisions: u64,
}

impl Loop {
    fn new(agent: &Agent) -> Loop {
        let n = agent.devices.len();
        Loop {
            specs: agent.devices.iter().map(|d| d.spec.clone()).collect(),
            state: PolicyState::default(),
            scratch: Scratch::default(),
            out: Vec::with_capacity(n),
            readings: vec![Reading::default(); n],
            sent: vec![None; n],
            decisions: 0,
        }
    }

    /// Decides at `now` on the current readings and sends commands that changed.
    fn step(&mut self, agent: &Agent, now: f64, workers: Option<&[WorkerHandle]>) {
        let cfg = &agent.cfg;
        let events = {
            let mut book = agent.shared.dr.lock().unwrap_or_else(|e| e.into_inner());
            book.expire(now);
            book.events().to_vec()
        };
        let (prices, view, forecast) = current_signals(&agent.shared, now);
        let fc_vec: Option<(f64, f64, Vec<f64>)> = forecast;
        let input = PolicyInput {
            now_s: now,
            devices: &self.specs,
            readings: &self.readings,
            prices,
            forecast: fc_vec.as_ref().map(|(start_s, step_s, v)| PriceForecast {
                start_s: *start_s,
                step_s: *step_s,
                usd_per_mwh: v,
            }),
            ai: view.ai,
            events: &events,
            site_cap_w: cfg.site_cap_kw.map(|kw| kw * 1000.0),
            config: &cfg.policy,
        };
        let t = Instant::now();
        decide_into(&input, &mut self.state, &mut self.out, &mut self.scratch);
        let decide_s = t.elapsed().as_secs_f64();
        self.decisions += 1;

        let m = &agent.shared.metrics;
        let mut views = Vec::with_capacity(self.out.len());
        for d in &self.out {
            let dev = &agent.devices[d.device];
            let id = &dev.spec.id;
            let cmd = Command::from(d);
            if d.changed || self.decisions == 1 {
                tracing::info!(device = %id, mode = %d.mode, "{}", d.reason);
                if agent.echo {
                    println!(
                        "{} {id} → {}: {}",
                        crate::signals::time::format_timestamp(now),
                        d.mode,
                        d.reason
                    );
                }
            }
            if let Some(w) = workers {
                if self.sent[d.device] != Some(cmd) {
                    w[d.device].send(cmd);
                    self.sent[d.device] = Some(cmd);
                }
            }
            if d.changed {
                m.mode_changes
                    .get_or_create(&metrics::dev_mode(id, d.mode.as_str()))
                    .inc();
            }
            let reading = self.readings[d.device].clone();
            let health = validate(
                &reading,
                now,
                cfg.policy.stale_after_s,
                dev.spec.temp_limit_c.is_some(),
            );
            let control = workers.map(|w| w[d.device].status()).unwrap_or_default();
            let l = metrics::dev(id);
            m.device_planned_w.get_or_create(&l).set(d.power_w);
            // A value the sensor no longer gives is removed, not left at its last number.
            for (fam, v) in [
                (&m.device_power_w, reading.power_w),
                (&m.device_temp_c, reading.temp_c),
                (&m.device_utilization, reading.utilization),
            ] {
                match v {
                    Some(v) if reading.fault.is_none() => {
                        fam.get_or_create(&l).set(v);
                    }
                    _ => {
                        fam.remove(&l);
                    }
                }
            }
            m.device_healthy
                .get_or_create(&l)
                .set(if health == Health::Ok { 1.0 } else { 0.0 });
            m.control_failures
                .get_or_create(&l)
                .set(control.failures as f64);
            for mode in Mode::ALL {
                m.device_mode
                    .get_or_create(&metrics::dev_mode(id, mode.as_str()))
                    .set(if mode == d.mode { 1.0 } else { 0.0 });
            }
            let st = self.state.devices[d.device];
            views.push(DeviceView {
                id: id.clone(),
                kind: dev.spec.kind,
                backend: dev.backend.clone(),
                mode: d.mode,
                reason: d.reason.to_string(),
                reason_detail: d.reason.clone(),
                planned_w: d.power_w,
                power_limit_w: d.power_limit_w,
                derated: d.derated,
                serve_ai: d.mode == Mode::ServeAi,
                reading,
                health,
                mode_since_s: st.since_s,
                switches: st.switches,
                control,
            });
        }
        let active: Vec<&crate::policy::DrEvent> =
            events.iter().filter(|e| e.active_at(now)).collect();
        let mut eff_cap = cfg.site_cap_kw.map(|kw| kw * 1000.0);
        for e in &active {
            if let DrTarget::LimitW(w) = e.target {
                eff_cap = Some(eff_cap.map_or(w, |c| c.min(w)));
            }
        }
        let planned: f64 = self.out.iter().map(|d| d.power_w).sum();
        let measured: f64 = views.iter().filter_map(|v| v.reading.power_w).sum();
        m.decisions.inc();
        m.decide_seconds.set(decide_s);
        m.price.set(view.electricity_usd_per_mwh);
        m.hashprice.set(view.hashprice_usd_per_th_day);
        m.heat_value.set(view.heat_value_usd_per_mwh);
        m.ai_price.set(view.ai.usd_per_mtok);
        m.ai_jobs.set(view.ai.jobs_waiting as f64);
        m.dr_active.set(if active.is_empty() { 0.0 } else { 1.0 });
        m.cap_w.set(eff_cap.unwrap_or(-1.0));
        m.planned_w.set(planned);
        if let Ok(mut s) = agent.shared.snapshot.lock() {
            s.now_s = now;
            s.decisions = self.decisions;
            s.decide_us = decide_s * 1e6;
            s.interval_s = cfg.interval_s;
            s.site_cap_w = cfg.site_cap_kw.map(|kw| kw * 1000.0);
            s.effective_cap_w = eff_cap;
            s.planned_w = planned;
            s.measured_w = measured;
            s.dr_active = active.iter().map(|e| e.id.clone()).collect();
            s.dr_events = events.clone();
            s.signals = view;
            s.devices = views;
        }
    }
}

/// Prices for `now` from the signal state, the view of them, and the forecast if enabled.
#[allow(clippy::type_complexity)]
fn current_signals(
    shared: &Shared,
    now: f64,
) -> (Prices, SignalsView, Option<(f64, f64, Vec<f64>)>) {
    let s = shared.signals.lock().unwrap_or_else(|e| e.into_inner());
    let mut view = SignalsView::default();
    let mut forecast = None;
    let csv_price = s.price_series.as_ref().and_then(|p| p.at(now));
    let pushed = s.price_update.value.as_ref();
    // A pushed/polled price is newer than a file; the file is newer than the fixed fallback.
    let (price, source) = match (pushed, csv_price) {
        (Some(u), _) => (u.usd_per_mwh, "endpoint"),
        (None, Some(p)) => (p, "csv"),
        (None, None) => (s.fixed_price, "fixed"),
    };
    view.electricity_usd_per_mwh = price;
    view.price_source = source.into();
    view.price_error = s.price_update.last_error.clone();
    if s.use_forecast {
        let series = pushed
            .and_then(|u| u.forecast.as_ref())
            .or(s.price_series.as_ref());
        if let Some(series) = series {
            if let (Some(i), Some(start)) = (series.index_at(now), series.row_start(now)) {
                let end = (i + 48).min(series.usd_per_mwh.len());
                forecast = Some((start, series.step_s, series.usd_per_mwh[i..end].to_vec()));
            }
        }
    }
    view.hashprice_usd_per_th_day = s.hashprice.as_ref().map_or(0.0, |h| h.usd_per_th_day());
    view.heat_value_usd_per_mwh = s.heat.as_ref().map_or(0.0, |h| h.value_usd_per_mwh(now));
    view.ai = s.ai.value.unwrap_or_default();
    view.ai_error = s.ai.last_error.clone();
    let prices = Prices {
        electricity_usd_per_mwh: price,
        hashprice_usd_per_th_day: view.hashprice_usd_per_th_day,
        heat_value_usd_per_mwh: view.heat_value_usd_per_mwh,
    };
    (prices, view, forecast)
}

/// Makes a device whose control is a chain of actuators (exported for configs built in code).
pub fn chain(actuators: Vec<Arc<dyn Actuator>>) -> Arc<dyn Actuator> {
    Arc::new(Chain(actuators))
}
