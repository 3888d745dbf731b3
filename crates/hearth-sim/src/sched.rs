//! The site scheduler: an event-driven simulation of AI jobs on GPUs across sites.
//!
//! Jobs are gang-scheduled: a job runs on exactly `gpus` GPUs of one site at once, at the speed
//! of the slowest of them. Which GPUs may take AI work is decided from outside at interval
//! boundaries ([`Scheduler::set_available`]): a fixed AI partition, or whatever the energy policy
//! puts in `ServeAi` (hearth lends mining GPUs to the queue that way, Lyra-style).
//!
//! Orders:
//! - **FIFO**: strict arrival order, no backfilling, no preemption (the baseline).
//! - **SRF**: shortest remaining time first, preemptive, with backfilling.
//! - **LAS**: Tiresias-like discretised two-dimensional least-attained-service: a job's attained
//!   service is GPUs × time held; queues split at [`LAS_THRESHOLDS_GPU_S`]; FIFO within a queue;
//!   a job crossing a threshold is demoted and may be preempted by jobs in higher queues.
//! - **Hearth**: shortest remaining time first where a running job is credited the checkpoint
//!   and restart its preemption would cost (so a preemption must pay for itself), preemptive,
//!   with backfilling; combined with lending of mining GPUs by the energy policy.
//!
//! Preemption is charged honestly: a preempted job, when it resumes, holds its GPUs for
//! `checkpoint_s + restart_s` without progress (saving and reloading its state); a job's first
//! start costs `restart_s` (loading). A GPU taken away from a running job (reclaimed or forced
//! idle) preempts it the same way.
//!
//! Queue delay is all the time a job spends not holding GPUs between arrival and completion
//! (waiting after preemption counts); job completion time (JCT) is completion − arrival.
//!
//! **Invariants** (checked by [`Scheduler::check`] in tests): a GPU runs at most one job; a
//! running job holds exactly `gpus` available GPUs of one site; FIFO starts jobs in arrival
//! order; every job's remaining work never increases.

use crate::jobs::Job;
use serde::Serialize;

/// Attained-service thresholds of the LAS queues, GPU-seconds (1 GPU-hour, 10 GPU-hours).
pub const LAS_THRESHOLDS_GPU_S: [f64; 2] = [3600.0, 36_000.0];
const NONE: u32 = u32::MAX;
const EPS: f64 = 1e-6;

/// Job order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedPolicy {
    /// Strict arrival order, no backfilling, no preemption (the baseline).
    Fifo,
    /// Shortest remaining time first, preemptive, with backfilling.
    Srf,
    /// Tiresias-like discretised least-attained-service queues.
    Las,
    /// SRF crediting running jobs their preemption cost, plus lending of mining GPUs.
    Hearth,
}

impl SchedPolicy {
    /// Every policy, in the order reports list them.
    pub const ALL: [SchedPolicy; 4] = [
        SchedPolicy::Fifo,
        SchedPolicy::Srf,
        SchedPolicy::Las,
        SchedPolicy::Hearth,
    ];
    /// Lower-case name used in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedPolicy::Fifo => "fifo",
            SchedPolicy::Srf => "srf",
            SchedPolicy::Las => "las",
            SchedPolicy::Hearth => "hearth",
        }
    }
}

/// One GPU as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct SchedGpu {
    /// Index of the site the GPU sits at; jobs only gang GPUs of one site.
    pub site: u16,
    /// Speed relative to the reference GPU.
    pub speed: f64,
    /// May take AI work now.
    pub available: bool,
    job: u32,
    /// Seconds held by a job since the last [`Scheduler::take_usage`].
    pub held_s: f64,
    /// Reference-GPU seconds of useful work done since the last take.
    pub work_s: f64,
}

#[derive(Clone, Debug)]
struct JobState {
    arrival: f64,
    gpus: u32,
    remaining: f64,
    attained: f64,
    level: u8,
    first_start: Option<f64>,
    finish: Option<f64>,
    held_total: f64,
    preemptions: u32,
    running: bool,
    overhead_left: f64,
    rate: f64,
    site: u16,
    alloc: Vec<u32>,
    /// Pending overhead to pay at the next start.
    pending_overhead: f64,
}

/// Per-job outcome.
#[derive(Clone, Debug, Serialize)]
pub struct JobOutcome {
    /// Index of the job in the trace given to [`Scheduler::new`].
    pub id: u32,
    /// Arrival time, simulation seconds.
    pub arrival_s: f64,
    /// When the job first got its GPUs, simulation seconds; `None` if it never started.
    pub first_start_s: Option<f64>,
    /// Completion time, simulation seconds; `None` if unfinished at the end.
    pub finish_s: Option<f64>,
    /// Seconds between arrival and completion spent not holding GPUs; `None` if unfinished.
    pub queue_delay_s: Option<f64>,
    /// Job completion time (completion − arrival), seconds; `None` if unfinished.
    pub jct_s: Option<f64>,
    /// Times the job was preempted.
    pub preemptions: u32,
}

/// The event-driven scheduler.
#[derive(Clone, Debug)]
pub struct Scheduler {
    policy: SchedPolicy,
    checkpoint_s: f64,
    restart_s: f64,
    /// Every GPU that may take AI work, indexed as in [`Scheduler::new`]'s `gpus`.
    pub gpus: Vec<SchedGpu>,
    n_sites: usize,
    jobs: Vec<JobState>,
    next_arrival: usize,
    running: Vec<u32>,
    waiting: Vec<u32>,
    now: f64,
    dirty: bool,
    /// Arrival order of starts under FIFO (for the invariant check).
    pub fifo_last_started: Option<u32>,
    /// Preemptions of all jobs so far (including GPUs taken away from running jobs).
    pub preemptions: u64,
    /// Times FIFO started a job before an earlier-arrived one; must stay 0.
    pub fifo_order_violations: u64,
    // Scratch for rescheduling.
    order: Vec<u32>,
    cap: Vec<u32>,
    chosen_site: Vec<u16>,
}

impl Scheduler {
    /// `gpus`: (site, speed) of every GPU that may ever take AI work; all start unavailable.
    pub fn new(
        policy: SchedPolicy,
        jobs: &[Job],
        gpus: &[(u16, f64)],
        checkpoint_s: f64,
        restart_s: f64,
    ) -> Scheduler {
        let n_sites = gpus.iter().map(|g| g.0 as usize + 1).max().unwrap_or(0);
        Scheduler {
            policy,
            checkpoint_s,
            restart_s,
            gpus: gpus
                .iter()
                .map(|&(site, speed)| SchedGpu {
                    site,
                    speed,
                    available: false,
                    job: NONE,
                    held_s: 0.0,
                    work_s: 0.0,
                })
                .collect(),
            n_sites,
            jobs: jobs
                .iter()
                .map(|j| JobState {
                    arrival: j.arrival_s,
                    gpus: j.gpus,
                    remaining: j.work_s,
                    attained: 0.0,
                    level: 0,
                    first_start: None,
                    finish: None,
                    held_total: 0.0,
                    preemptions: 0,
                    running: false,
                    overhead_left: 0.0,
                    rate: 0.0,
                    site: 0,
                    alloc: Vec::new(),
                    pending_overhead: restart_s,
                })
                .collect(),
            next_arrival: 0,
            running: Vec::new(),
            waiting: Vec::new(),
            now: 0.0,
            dirty: true,
            fifo_last_started: None,
            preemptions: 0,
            fifo_order_violations: 0,
            order: Vec::new(),
            cap: vec![0; n_sites],
            chosen_site: Vec::new(),
        }
    }

    /// Simulation time the scheduler has advanced to, seconds.
    pub fn now(&self) -> f64 {
        self.now
    }

    /// Jobs waiting (arrived, not holding GPUs).
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Jobs running.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// GPUs asked for by all waiting jobs (the AI demand signal for lending).
    pub fn waiting_gpus(&self) -> u64 {
        self.waiting
            .iter()
            .map(|&j| self.jobs[j as usize].gpus as u64)
            .sum()
    }

    /// Whether GPU `g` is running a job.
    pub fn is_busy(&self, g: usize) -> bool {
        self.gpus[g].job != NONE
    }

    /// All jobs finished (and none left to arrive).
    pub fn all_done(&self) -> bool {
        self.next_arrival == self.jobs.len() && self.running.is_empty() && self.waiting.is_empty()
    }

    /// Sets whether GPU `g` may take AI work. Taking it away from a running job preempts the job.
    pub fn set_available(&mut self, g: usize, available: bool) {
        let gpu = &mut self.gpus[g];
        if gpu.available == available {
            return;
        }
        gpu.available = available;
        self.dirty = true;
        if !available && gpu.job != NONE {
            let j = gpu.job;
            self.preempt(j);
        }
    }

    /// Returns and resets per-GPU usage since the last call: (held seconds, reference work seconds).
    pub fn take_usage(&mut self, g: usize) -> (f64, f64) {
        let gpu = &mut self.gpus[g];
        let r = (gpu.held_s, gpu.work_s);
        gpu.held_s = 0.0;
        gpu.work_s = 0.0;
        r
    }

    /// Runs events up to `t_end`.
    pub fn advance_to(&mut self, t_end: f64) {
        // Safety net against float stalls: a bounded number of events per call.
        let mut guard = 0u64;
        loop {
            if self.dirty {
                self.reschedule();
                self.dirty = false;
            }
            let mut t_next = t_end;
            if let Some(j) = self.jobs.get(self.next_arrival) {
                t_next = t_next.min(j.arrival.max(self.now));
            }
            for &j in &self.running {
                t_next = t_next.min(self.next_event_of(j));
            }
            self.progress_to(t_next);
            // Completions and demotions.
            let mut k = 0;
            while k < self.running.len() {
                let j = self.running[k] as usize;
                let js = &mut self.jobs[j];
                if js.remaining <= EPS {
                    js.remaining = 0.0;
                    js.finish = Some(self.now);
                    js.running = false;
                    for &g in &js.alloc {
                        self.gpus[g as usize].job = NONE;
                    }
                    js.alloc.clear();
                    self.running.swap_remove(k);
                    self.dirty = true;
                    continue;
                }
                if let Some(&thr) = LAS_THRESHOLDS_GPU_S.get(js.level as usize) {
                    if js.attained >= thr - EPS {
                        js.level += 1;
                        if self.policy == SchedPolicy::Las {
                            self.dirty = true;
                        }
                    }
                }
                k += 1;
            }
            while let Some(j) = self.jobs.get(self.next_arrival) {
                if j.arrival > self.now + EPS {
                    break;
                }
                self.waiting.push(self.next_arrival as u32);
                self.next_arrival += 1;
                self.dirty = true;
            }
            guard += 1;
            if self.now >= t_end - EPS && !self.dirty {
                self.now = self.now.max(t_end);
                break;
            }
            if guard > 10_000_000 {
                break;
            }
        }
    }

    fn next_event_of(&self, j: u32) -> f64 {
        let js = &self.jobs[j as usize];
        let done = self.now + js.overhead_left + js.remaining / js.rate.max(1e-12);
        let demote = match LAS_THRESHOLDS_GPU_S.get(js.level as usize) {
            Some(&thr) if self.policy == SchedPolicy::Las => {
                self.now + ((thr - js.attained) / js.gpus as f64).max(0.0)
            }
            _ => f64::INFINITY,
        };
        done.min(demote)
    }

    fn progress_to(&mut self, t: f64) {
        let dt = t - self.now;
        if dt <= 0.0 {
            return;
        }
        for &j in &self.running {
            let js = &mut self.jobs[j as usize];
            let ov = js.overhead_left.min(dt);
            js.overhead_left -= ov;
            let work_time = dt - ov;
            let work = (work_time * js.rate).min(js.remaining);
            js.remaining -= work;
            js.attained += dt * js.gpus as f64;
            js.held_total += dt;
            for &g in &js.alloc {
                let gpu = &mut self.gpus[g as usize];
                gpu.held_s += dt;
                gpu.work_s += work;
            }
        }
        self.now = t;
    }

    fn preempt(&mut self, j: u32) {
        let js = &mut self.jobs[j as usize];
        if !js.running {
            return;
        }
        js.running = false;
        js.preemptions += 1;
        js.pending_overhead = self.checkpoint_s + self.restart_s;
        for &g in &js.alloc {
            self.gpus[g as usize].job = NONE;
        }
        js.alloc.clear();
        self.preemptions += 1;
        if let Some(pos) = self.running.iter().position(|&r| r == j) {
            self.running.swap_remove(pos);
        }
        // Keep the waiting list in arrival order (FIFO relies on it).
        let pos = self.waiting.partition_point(|&w| w < j);
        self.waiting.insert(pos, j);
        self.dirty = true;
    }

    fn start(&mut self, j: u32, site: u16) {
        let need = self.jobs[j as usize].gpus as usize;
        let mut alloc = std::mem::take(&mut self.jobs[j as usize].alloc);
        alloc.clear();
        let mut rate = f64::INFINITY;
        for (g, gpu) in self.gpus.iter_mut().enumerate() {
            if alloc.len() == need {
                break;
            }
            if gpu.site == site && gpu.available && gpu.job == NONE {
                gpu.job = j;
                rate = rate.min(gpu.speed);
                alloc.push(g as u32);
            }
        }
        debug_assert_eq!(alloc.len(), need, "capacity was counted");
        let js = &mut self.jobs[j as usize];
        js.alloc = alloc;
        js.running = true;
        js.site = site;
        js.rate = if rate.is_finite() { rate } else { 0.0 };
        js.overhead_left = js.pending_overhead;
        js.pending_overhead = 0.0;
        let first = js.first_start.is_none();
        if first {
            js.first_start = Some(self.now);
        }
        self.running.push(j);
        if let Some(pos) = self.waiting.iter().position(|&w| w == j) {
            self.waiting.remove(pos);
        }
        // FIFO order is about first starts (a job resumed after a forced preemption is not a
        // new start).
        if self.policy == SchedPolicy::Fifo && first {
            if let Some(prev) = self.fifo_last_started {
                if j < prev {
                    self.fifo_order_violations += 1;
                }
            }
            self.fifo_last_started = Some(self.fifo_last_started.map_or(j, |p| p.max(j)));
        }
    }

    fn free_capacity(&self, cap: &mut [u32]) {
        cap.iter_mut().for_each(|c| *c = 0);
        for gpu in &self.gpus {
            if gpu.available && gpu.job == NONE {
                cap[gpu.site as usize] += 1;
            }
        }
    }

    fn best_site(cap: &[u32], need: u32) -> Option<u16> {
        let mut best: Option<(u16, u32)> = None;
        for (s, &c) in cap.iter().enumerate() {
            if c >= need && best.is_none_or(|b| c > b.1) {
                best = Some((s as u16, c));
            }
        }
        best.map(|b| b.0)
    }

    fn reschedule(&mut self) {
        let mut cap = std::mem::take(&mut self.cap);
        cap.resize(self.n_sites, 0);
        if self.policy == SchedPolicy::Fifo {
            self.free_capacity(&mut cap);
            while let Some(&j) = self.waiting.first() {
                let need = self.jobs[j as usize].gpus;
                let Some(site) = Self::best_site(&cap, need) else {
                    break;
                };
                cap[site as usize] -= need;
                self.start(j, site);
            }
            self.cap = cap;
            return;
        }
        // Nothing can run: leave the queue as it is (avoids sorting a queue nobody serves).
        if !self.gpus.iter().any(|g| g.available) {
            self.cap = cap;
            return;
        }
        // Preemptive orders: pick the set to run greedily in priority order.
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend_from_slice(&self.running);
        order.extend_from_slice(&self.waiting);
        let jobs = &self.jobs;
        let overhead = self.checkpoint_s + self.restart_s;
        let key = |j: u32| -> (f64, f64) {
            let js = &jobs[j as usize];
            match self.policy {
                SchedPolicy::Srf => (js.remaining, js.arrival),
                SchedPolicy::Las => (js.level as f64, js.arrival),
                // Shortest remaining time, where a running job is credited the checkpoint and
                // restart its preemption would cost (no preemption that does not pay for itself).
                _ => (
                    js.remaining - if js.running { overhead } else { 0.0 },
                    js.arrival,
                ),
            }
        };
        order.sort_by(|&a, &b| {
            let (ka, kb) = (key(a), key(b));
            ka.0.total_cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(a.cmp(&b))
        });
        // Capacity: every available GPU (running jobs' GPUs included).
        cap.iter_mut().for_each(|c| *c = 0);
        for gpu in &self.gpus {
            if gpu.available {
                cap[gpu.site as usize] += 1;
            }
        }
        let mut chosen = std::mem::take(&mut self.chosen_site);
        chosen.clear();
        chosen.resize(order.len(), u16::MAX);
        for (i, &j) in order.iter().enumerate() {
            let js = &self.jobs[j as usize];
            if js.running {
                let s = js.site as usize;
                if cap[s] >= js.gpus {
                    cap[s] -= js.gpus;
                    chosen[i] = js.site;
                }
            } else if let Some(s) = Self::best_site(&cap, js.gpus) {
                cap[s as usize] -= js.gpus;
                chosen[i] = s;
            }
        }
        // Preempt running jobs left out, then start the chosen waiting ones.
        for (i, &j) in order.iter().enumerate() {
            if chosen[i] == u16::MAX && self.jobs[j as usize].running {
                self.preempt(j);
            }
        }
        for (i, &j) in order.iter().enumerate() {
            if chosen[i] != u16::MAX && !self.jobs[j as usize].running {
                self.start(j, chosen[i]);
            }
        }
        self.order = order;
        self.chosen_site = chosen;
        self.cap = cap;
    }

    /// Checks the invariants from the module docs; returns a description of the first breach.
    pub fn check(&self) -> Result<(), String> {
        let mut held = vec![0u32; self.gpus.len()];
        for &j in &self.running {
            let js = &self.jobs[j as usize];
            if js.alloc.len() != js.gpus as usize {
                return Err(format!(
                    "job {j} holds {} of {} GPUs",
                    js.alloc.len(),
                    js.gpus
                ));
            }
            for &g in &js.alloc {
                let gpu = &self.gpus[g as usize];
                if !gpu.available || gpu.site != js.site || gpu.job != j {
                    return Err(format!("job {j} holds GPU {g} wrongly"));
                }
                held[g as usize] += 1;
            }
        }
        if let Some(g) = held.iter().position(|&h| h > 1) {
            return Err(format!("GPU {g} runs {} jobs", held[g]));
        }
        if self.fifo_order_violations > 0 {
            return Err("FIFO started a job before an earlier one".into());
        }
        Ok(())
    }

    /// Per-job outcomes.
    pub fn outcomes(&self) -> Vec<JobOutcome> {
        self.jobs
            .iter()
            .enumerate()
            .map(|(i, js)| {
                let jct = js.finish.map(|f| f - js.arrival);
                JobOutcome {
                    id: i as u32,
                    arrival_s: js.arrival,
                    first_start_s: js.first_start,
                    finish_s: js.finish,
                    queue_delay_s: jct.map(|t| (t - js.held_total).max(0.0)),
                    jct_s: jct,
                    preemptions: js.preemptions,
                }
            })
            .collect()
    }
}
