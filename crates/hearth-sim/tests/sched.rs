//! Scheduler invariants, FIFO order, preemption costs, and completion of every job.

use hearth_sim::jobs::Job;
use hearth_sim::sched::{SchedPolicy, Scheduler};
use proptest::prelude::*;

fn job(id: u32, arrival_s: f64, gpus: u32, work_s: f64) -> Job {
    Job {
        id,
        arrival_s,
        gpus,
        work_s,
        deadline_s: None,
    }
}

const CKPT: f64 = 60.0;
const RESTART: f64 = 120.0;

fn all_available(s: &mut Scheduler) {
    for g in 0..s.gpus.len() {
        s.set_available(g, true);
    }
}

#[test]
fn preemption_charges_checkpoint_and_restart() {
    // One GPU. A (1,000 s) starts at 0; B (10 s) arrives at 100 and preempts it under SRF.
    let jobs = [job(0, 0.0, 1, 1000.0), job(1, 100.0, 1, 10.0)];
    let mut s = Scheduler::new(SchedPolicy::Srf, &jobs, &[(0, 1.0)], CKPT, RESTART);
    all_available(&mut s);
    s.advance_to(1e6);
    let o = s.outcomes();
    // B: arrives 100, loads (restart) and runs 10 s.
    assert_eq!(o[1].finish_s, Some(100.0 + RESTART + 10.0));
    // A: loaded for RESTART, worked 100 − RESTART s, preempted; resumes after B with
    // checkpoint + restart overhead, then the rest of its work.
    let a_done = 100.0 + RESTART + 10.0 + CKPT + RESTART + (1000.0 - (100.0 - RESTART).max(0.0));
    let got = o[0].finish_s.unwrap();
    assert!((got - a_done).abs() < 1e-6, "{got} vs {a_done}");
    assert_eq!(o[0].preemptions, 1);
    assert_eq!(s.preemptions, 1);
    // Under FIFO nothing is preempted: B waits for A.
    let mut f = Scheduler::new(SchedPolicy::Fifo, &jobs, &[(0, 1.0)], CKPT, RESTART);
    all_available(&mut f);
    f.advance_to(1e6);
    let o = f.outcomes();
    assert_eq!(o[0].finish_s, Some(RESTART + 1000.0));
    assert_eq!(o[1].finish_s, Some(RESTART + 1000.0 + RESTART + 10.0));
    assert_eq!(f.preemptions, 0);
}

#[test]
fn hearth_does_not_preempt_when_the_overhead_would_not_pay() {
    // A has 150 s left when B (100 s) arrives: preempting would cost 180 s of overhead.
    let jobs = [job(0, 0.0, 1, 400.0), job(1, 370.0, 1, 100.0)];
    let mut s = Scheduler::new(SchedPolicy::Hearth, &jobs, &[(0, 1.0)], CKPT, RESTART);
    all_available(&mut s);
    s.advance_to(1e6);
    assert_eq!(s.preemptions, 0);
    let mut srf = Scheduler::new(SchedPolicy::Srf, &jobs, &[(0, 1.0)], CKPT, RESTART);
    all_available(&mut srf);
    srf.advance_to(1e6);
    assert_eq!(srf.preemptions, 1);
}

#[test]
fn las_demotes_long_jobs_below_new_ones() {
    // A 1-GPU job past 1 GPU-hour is demoted; a new job preempts it under LAS.
    let jobs = [job(0, 0.0, 1, 20_000.0), job(1, 5000.0, 1, 100.0)];
    let mut s = Scheduler::new(SchedPolicy::Las, &jobs, &[(0, 1.0)], CKPT, RESTART);
    all_available(&mut s);
    s.advance_to(1e6);
    let o = s.outcomes();
    assert_eq!(o[1].first_start_s, Some(5000.0));
    assert_eq!(o[0].preemptions, 1);
}

#[test]
fn withdrawn_gpus_preempt_their_job_and_jobs_wait_for_capacity() {
    let jobs = [job(0, 0.0, 2, 1000.0)];
    let mut s = Scheduler::new(
        SchedPolicy::Las,
        &jobs,
        &[(0, 1.0), (0, 1.0)],
        CKPT,
        RESTART,
    );
    all_available(&mut s);
    s.advance_to(500.0);
    assert_eq!(s.running_len(), 1);
    s.set_available(1, false);
    s.check().unwrap();
    assert_eq!((s.running_len(), s.waiting_len()), (0, 1));
    s.advance_to(5000.0);
    assert_eq!(s.running_len(), 0, "a 2-GPU job cannot run on one GPU");
    s.set_available(1, true);
    s.advance_to(1e6);
    assert!(s.all_done());
    assert_eq!(s.outcomes()[0].preemptions, 1);
}

fn arb_jobs() -> impl Strategy<Value = Vec<Job>> {
    prop::collection::vec((0.0f64..5000.0, 1u32..=4, 1.0f64..2000.0), 1..40).prop_map(|mut v| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.into_iter()
            .enumerate()
            .map(|(i, (a, g, w))| job(i as u32, a, g, w))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn invariants_hold_and_every_job_completes(
        jobs in arb_jobs(),
        toggles in prop::collection::vec((0usize..6, any::<bool>()), 0..30),
        pol in 0usize..4,
    ) {
        let policy = SchedPolicy::ALL[pol];
        // Two sites: 4 GPUs and 2 GPUs of mixed speed.
        let gpus = [(0, 1.0), (0, 1.0), (0, 0.5), (0, 1.0), (1, 2.0), (1, 1.0)];
        let mut s = Scheduler::new(policy, &jobs, &gpus, CKPT, RESTART);
        all_available(&mut s);
        let mut t = 0.0;
        for (g, on) in toggles {
            t += 250.0;
            s.set_available(g, on);
            s.check().map_err(TestCaseError::fail)?;
            s.advance_to(t);
            s.check().map_err(TestCaseError::fail)?;
            let busy = (0..gpus.len()).filter(|&g| s.is_busy(g)).count();
            prop_assert!(busy <= gpus.len());
            for g in 0..gpus.len() {
                prop_assert!(!s.is_busy(g) || s.gpus[g].available);
            }
        }
        all_available(&mut s);
        s.advance_to(1e8);
        s.check().map_err(TestCaseError::fail)?;
        prop_assert!(s.all_done());
        for (o, j) in s.outcomes().iter().zip(&jobs) {
            let finish = o.finish_s.unwrap();
            // At least its work at the fastest speed after arrival, plus the first load.
            prop_assert!(finish >= j.arrival_s + j.work_s / 2.0 + RESTART - 1e-6);
            prop_assert!(o.queue_delay_s.unwrap() >= -1e-9);
        }
        if policy == SchedPolicy::Fifo {
            // FIFO starts jobs in arrival order (check() also counts violations).
            let starts: Vec<f64> = s.outcomes().iter().map(|o| o.first_start_s.unwrap()).collect();
            prop_assert!(starts.windows(2).all(|w| w[0] <= w[1] + 1e-9));
        }
    }
}
