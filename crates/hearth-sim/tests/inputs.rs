//! Trace readers and the workload generator: accepted forms, errors with line numbers, and the
//! generator's statistics.

use hearth_sim::jobs::{generate_jobs, is_business_hour, parse_jobs, GenParams, JobError};
use hearth_sim::prices::{parse_prices, GapPolicy, TraceError};
use hearth_sim::time::year_start_unix;

fn shipped(year: u32) -> String {
    let p = format!(
        "{}/../../data/prices/Price_{year}.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(p).expect("shipped trace")
}

fn line_of(e: TraceError) -> usize {
    match e {
        TraceError::Line { line, .. } => line,
        other => panic!("expected a line error, got {other:?}"),
    }
}

#[test]
fn shipped_traces_parse_as_hourly_years() {
    for y in [2018, 2019, 2020] {
        let t = parse_prices(&shipped(y), GapPolicy::Error, year_start_unix(y as i64)).unwrap();
        assert_eq!(t.len(), 8760);
        assert_eq!(t.step_s, 3600);
        assert_eq!(t.start_unix, year_start_unix(y as i64));
        assert_eq!(t.filled, 0);
        assert!(t.prices.iter().any(|&p| p < 0.0), "negative hours in {y}");
        assert!(t.prices.iter().any(|&p| p > 400.0), "spikes in {y}");
    }
}

#[test]
fn timestamp_forms_and_resampling() {
    let rfc = "timestamp,price\n2019-01-01T00:00:00Z,10\n2019-01-01T00:05:00Z,20\n2019-01-01T00:10:00+00:00,30\n";
    let t = parse_prices(rfc, GapPolicy::Error, 0).unwrap();
    assert_eq!(
        (t.start_unix, t.step_s, t.prices.clone()),
        (1_546_300_800, 300, vec![10.0, 20.0, 30.0])
    );
    let unix = "1546300800,1.5\n1546304400,2.5\n";
    let t = parse_prices(unix, GapPolicy::Error, 0).unwrap();
    assert_eq!((t.step_s, t.prices.len()), (3600, 2));
    let five = t.resample(300).unwrap();
    assert_eq!(five.len(), 24);
    assert!(five.prices[..12].iter().all(|&p| p == 1.5));
    assert_eq!(five.resample(3600).unwrap().prices, vec![1.5, 2.5]);
}

#[test]
fn malformed_traces_name_their_line() {
    let base = "hour,price\n1,10\n2,11\n";
    let cases = [
        (format!("{base}3,abc\n"), 4),
        (format!("{base}3,NaN\n"), 4),
        (format!("{base}3,inf\n"), 4),
        (format!("{base}2,12\n"), 4),  // duplicate
        (format!("{base}1,12\n"), 4),  // unsorted
        (format!("{base}5,12\n"), 4),  // gap of two hours
        (format!("{base}3,1,2\n"), 4), // extra field
        (format!("{base}x,1\n"), 4),
        (
            "timestamp,price\n2019-01-01T00:00:00Z,1\n2019-01-01T00:07:00Z,2\n".into(),
            3,
        ), // 7 min
        ("timestamp,price\n2019-13-01T00:00:00Z,1\n".into(), 2),
        ("when,price\n".into(), 1),
        (format!("{base}3,{}\n", "9".repeat(300)), 4),
    ];
    for (text, line) in cases {
        let e = parse_prices(&text, GapPolicy::Error, 0).unwrap_err();
        let msg = e.to_string();
        assert_eq!(line_of(e), line, "{text:?}: {msg}");
        assert!(msg.starts_with(&format!("line {line}: ")), "{msg}");
    }
    assert_eq!(
        parse_prices("hour,price\n", GapPolicy::Error, 0),
        Err(TraceError::Empty)
    );
}

#[test]
fn gaps_are_errors_or_forward_filled_and_counted() {
    let text = "hour,price\n1,10\n2,11\n5,14\n6,15\n";
    assert!(parse_prices(text, GapPolicy::Error, 0)
        .unwrap_err()
        .to_string()
        .contains("gap: 2 missing"));
    let t = parse_prices(text, GapPolicy::ForwardFill, 0).unwrap();
    assert_eq!(t.prices, vec![10.0, 11.0, 11.0, 11.0, 14.0, 15.0]);
    assert_eq!(t.filled, 2);
    // Unsorted rows stay errors even when filling gaps.
    assert!(parse_prices("hour,price\n2,1\n1,1\n", GapPolicy::ForwardFill, 0).is_err());
}

fn job_line(e: JobError) -> usize {
    match e {
        JobError::Line { line, .. } => line,
        other => panic!("expected a line error, got {other:?}"),
    }
}

#[test]
fn job_csv_forms_and_errors() {
    let text =
        "arrival,gpus,duration,deadline\n0,1,60,\n30,4,3600,7200\n2019-01-01T01:00:00Z,2,10,\n";
    let jobs = parse_jobs(text, year_start_unix(2019), 2000.0).unwrap();
    assert_eq!(jobs.len(), 3);
    assert_eq!(
        (jobs[1].gpus, jobs[1].work_s, jobs[1].deadline_s),
        (4, 3600.0, Some(7200.0))
    );
    assert_eq!(jobs[2].arrival_s, 3600.0);
    let tok = parse_jobs("gpus,tokens,arrival\n2,8000000,5\n", 0, 2000.0).unwrap();
    assert_eq!(tok[0].work_s, 2000.0); // 8 M tokens on 2 GPUs of 2,000 tok/s
    let bad = [
        ("arrival,gpus,duration\n0,1,-5\n", 2),
        ("arrival,gpus,duration\n0,1,0\n", 2),
        ("arrival,gpus,duration\n10,1,5\n5,1,5\n", 3),
        ("arrival,gpus,duration\n0,0,5\n", 2),
        ("arrival,gpus,duration,deadline\n100,1,5,50\n", 2),
        ("arrival,gpus,duration\n0,1\n", 2),
        ("arrival,gpus\n0,1\n", 1),
        ("arrival,gpus,duration,tokens\n", 1),
        ("arrival,gpus,duration\n0,1,abc\n", 2),
        ("arrival,gpus,duration\nyesterday,1,5\n", 2),
    ];
    for (text, line) in bad {
        let e = parse_jobs(text, 0, 2000.0).unwrap_err();
        let msg = e.to_string();
        assert_eq!(job_line(e), line, "{text:?}: {msg}");
    }
    assert_eq!(parse_jobs("", 0, 2000.0), Err(JobError::NoHeader));
}

fn params(seed: u64) -> GenParams {
    GenParams {
        n_jobs: Some(20_000),
        seed,
        max_gpus: 16,
        load: 0.6,
        capacity_gpus: 16,
        start_unix: year_start_unix(2019),
        max_horizon_s: 366.0 * 86_400.0,
    }
}

#[test]
fn generator_is_seeded_and_shaped_like_cluster_traces() {
    let a = generate_jobs(&params(7)).unwrap();
    assert_eq!(a, generate_jobs(&params(7)).unwrap());
    assert_ne!(a, generate_jobs(&params(8)).unwrap());
    assert_eq!(a.len(), 20_000);
    assert!(a.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
    // Durations within [1 min, 2 days], spanning orders of magnitude.
    assert!(a.iter().all(|j| (60.0..=172_800.0).contains(&j.work_s)));
    assert!(a.iter().any(|j| j.work_s < 300.0) && a.iter().any(|j| j.work_s > 86_400.0));
    // Sizes: P(k) ∝ k^-2.5, so P(1)/P(2) = P(2)/P(4) = 2^2.5 ≈ 5.66.
    let count = |k: u32| a.iter().filter(|j| j.gpus == k).count() as f64;
    let r12 = count(1) / count(2);
    let r24 = count(2) / count(4);
    assert!((4.9..6.5).contains(&r12), "P(1)/P(2) = {r12}");
    assert!((4.0..7.5).contains(&r24), "P(2)/P(4) = {r24}");
    assert!(a.iter().all(|j| (1..=16).contains(&j.gpus)));
    // Business hours hold 45/168 of the week but 3x the rate: about 52 % of arrivals.
    let start = year_start_unix(2019);
    let share = a
        .iter()
        .filter(|j| is_business_hour(start + j.arrival_s as i64))
        .count() as f64
        / a.len() as f64;
    assert!((0.47..0.57).contains(&share), "business-hour share {share}");
    // Offered load as asked: GPU-seconds / (capacity × horizon).
    let horizon = a.last().unwrap().arrival_s;
    let gpu_s: f64 = a.iter().map(|j| j.gpus as f64 * j.work_s).sum();
    let load = gpu_s / (16.0 * horizon);
    assert!((0.55..0.66).contains(&load), "load {load}");
}

#[test]
fn generator_fills_a_horizon_when_no_count_is_given() {
    let mut p = params(3);
    p.n_jobs = None;
    p.max_horizon_s = 30.0 * 86_400.0;
    let jobs = generate_jobs(&p).unwrap();
    let gpu_s: f64 = jobs.iter().map(|j| j.gpus as f64 * j.work_s).sum();
    let load = gpu_s / (16.0 * p.max_horizon_s);
    assert!((0.6..0.7).contains(&load), "load {load}");
    assert!(jobs.last().unwrap().arrival_s <= p.max_horizon_s);
}

mod never_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary text (including CSV-looking text) gives a trace or an error, never a panic,
        /// and an accepted trace keeps its invariants.
        #[test]
        fn price_reader_is_total(
            rows in prop::collection::vec(("[-0-9:TZ. e+]{0,24}", "[-0-9.naifNI]{0,12}"), 0..20),
            header in prop::bool::ANY,
            fill in prop::bool::ANY,
        ) {
            let mut text = if header { "timestamp,price\n".to_string() } else { String::new() };
            for (a, b) in &rows {
                text.push_str(&format!("{a},{b}\n"));
            }
            let gaps = if fill { GapPolicy::ForwardFill } else { GapPolicy::Error };
            if let Ok(t) = parse_prices(&text, gaps, 0) {
                prop_assert!(!t.prices.is_empty());
                prop_assert!(t.step_s == 300 || t.step_s == 3600);
                prop_assert!(t.prices.iter().all(|p| p.is_finite()));
            }
        }

        #[test]
        fn job_reader_is_total(text in "(arrival,gpus,duration\n)?([-0-9.e,T:Z]{0,30}\n){0,10}") {
            if let Ok(jobs) = parse_jobs(&text, 0, 2000.0) {
                prop_assert!(jobs.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
                prop_assert!(jobs.iter().all(|j| j.gpus >= 1 && j.work_s > 0.0));
            }
        }

        #[test]
        fn timestamp_parser_is_total(s in "\\PC{0,40}") {
            let _ = hearth_sim::time::parse_rfc3339(&s);
        }
    }

    #[test]
    fn extreme_unix_times_are_errors_not_overflows() {
        let text = "0,1\n-9223372036854775808,2\n";
        assert!(parse_prices(text, GapPolicy::Error, 0).is_err());
        let text = "9223372036854775807,1\n0,2\n";
        assert!(parse_prices(text, GapPolicy::Error, 0).is_err());
    }
}
