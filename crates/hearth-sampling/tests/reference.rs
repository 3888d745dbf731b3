//! Property-style tests: the optimised sampler against a naive, literal
//! implementation of the documented pipeline, over thousands of random cases
//! drawn from a seeded generator (no proptest dependency).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use hearth_core::SplitMix64;
use hearth_sampling::{sample_token, step_uniform, SamplingError, SamplingParams};

/// Test-case generator (hearth's SplitMix64).
struct Gen(SplitMix64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        self.0.unit()
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Penalised logits, `None` for masked tokens. Mirrors the crate docs.
fn penalised(p: &SamplingParams, logits: &[f32], history: &[u32]) -> Vec<Option<f64>> {
    let mut l: Vec<Option<f64>> = logits
        .iter()
        .map(|&x| (x != f32::NEG_INFINITY).then_some(f64::from(x)))
        .collect();
    let active =
        p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
    if !active {
        return l;
    }
    let window = if p.repeat_last_n == 0 || p.repeat_last_n >= history.len() {
        history
    } else {
        &history[history.len() - p.repeat_last_n..]
    };
    let mut counts = BTreeMap::new();
    for &t in window {
        *counts.entry(t).or_insert(0usize) += 1;
    }
    for (&t, &c) in &counts {
        if let Some(v) = l[t as usize].as_mut() {
            let rep = f64::from(p.repetition_penalty);
            *v = if *v <= 0.0 { *v * rep } else { *v / rep };
            *v -= c as f64 * f64::from(p.frequency_penalty) + f64::from(p.presence_penalty);
        }
    }
    l
}

fn rank(a: &(u32, f64), b: &(u32, f64)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// All unmasked tokens in rank order.
fn ranked(l: &[Option<f64>]) -> Vec<(u32, f64)> {
    let mut v: Vec<(u32, f64)> = l
        .iter()
        .enumerate()
        .filter_map(|(i, x)| x.map(|x| (i as u32, x)))
        .collect();
    v.sort_by(rank);
    v
}

/// Literal, unoptimised implementation of the documented pipeline. Assumes
/// valid params and logits.
fn reference(p: &SamplingParams, logits: &[f32], history: &[u32], step: u64) -> u32 {
    let all = ranked(&penalised(p, logits, history));
    if p.temperature == 0.0 {
        return all[0].0;
    }
    let t = f64::from(p.temperature);
    let k = p.top_k.unwrap_or(usize::MAX).min(all.len());
    let l_max = all[0].1;
    // (id, weight) in rank order
    let mut kept: Vec<(u32, f64)> = all[..k]
        .iter()
        .map(|&(id, l)| (id, libm::exp((l - l_max) / t)))
        .collect();
    let by_id_sum = |v: &[(u32, f64)]| {
        let mut s = v.to_vec();
        s.sort_by_key(|x| x.0);
        s.iter().fold(0.0f64, |a, x| a + x.1)
    };
    if let Some(top_p) = p.top_p.filter(|&x| x < 1.0) {
        let target = f64::from(top_p) * by_id_sum(&kept);
        let mut acc = 0.0;
        let mut n = kept.len();
        for (i, x) in kept.iter().enumerate() {
            acc += x.1;
            if acc >= target {
                n = i + 1;
                break;
            }
        }
        kept.truncate(n);
    }
    if let Some(m) = p.min_p.filter(|&m| m > 0.0) {
        kept.retain(|x| x.1 >= f64::from(m));
    }
    kept.sort_by_key(|x| x.0);
    let target = step_uniform(p.seed, step) * by_id_sum(&kept);
    let mut acc = 0.0;
    for x in &kept {
        acc += x.1;
        if acc > target {
            return x.0;
        }
    }
    panic!("reference draw fell off the end");
}

fn random_logits(g: &mut Gen, n: usize) -> Vec<f32> {
    let style = g.below(4);
    (0..n)
        .map(|_| {
            if g.chance(0.05) {
                return f32::NEG_INFINITY;
            }
            match style {
                // Many exact ties (including ±0).
                0 => [-1.0, -0.0, 0.0, 0.5, 2.0][g.below(5) as usize],
                // Peaked: a few large logits.
                1 => {
                    if g.chance(0.02) {
                        8.0 + g.unit() as f32
                    } else {
                        (g.unit() * 4.0 - 2.0) as f32
                    }
                }
                // Wide range.
                2 => (g.unit() * 200.0 - 100.0) as f32,
                // Flat-ish.
                _ => (g.unit() * 0.5) as f32,
            }
        })
        .collect()
}

fn random_params(g: &mut Gen) -> SamplingParams {
    let pick = |g: &mut Gen, p: f64| g.chance(p);
    SamplingParams {
        temperature: if pick(g, 0.1) {
            0.0
        } else {
            [1e-3, 0.3, 0.7, 1.0, 1.5, 5.0][g.below(6) as usize]
        },
        top_k: pick(g, 0.5).then(|| 1 + g.below(300) as usize),
        top_p: pick(g, 0.5).then(|| [1e-6, 0.1, 0.5, 0.9, 0.99, 1.0][g.below(6) as usize]),
        min_p: pick(g, 0.3).then(|| [0.0, 0.01, 0.1, 0.5, 1.0][g.below(5) as usize]),
        repetition_penalty: if pick(g, 0.4) {
            [0.8, 1.1, 1.5][g.below(3) as usize]
        } else {
            1.0
        },
        repeat_last_n: g.below(20) as usize,
        frequency_penalty: if pick(g, 0.3) {
            (g.unit() * 2.0 - 1.0) as f32
        } else {
            0.0
        },
        presence_penalty: if pick(g, 0.3) {
            (g.unit() * 2.0 - 1.0) as f32
        } else {
            0.0
        },
        seed: g.next(),
        ..SamplingParams::default()
    }
}

#[test]
fn optimised_matches_reference_and_respects_filters() {
    let mut g = Gen(SplitMix64::new(0x5EED));
    for case in 0..3000 {
        let n = match g.below(10) {
            0 => 1 + g.below(3) as usize,
            // Large vocabularies exercise the multi-round nucleus search.
            1 => 2000 + g.below(3000) as usize,
            _ => 1 + g.below(400) as usize,
        };
        let mut logits = random_logits(&mut g, n);
        if logits.iter().all(|&x| x == f32::NEG_INFINITY) {
            logits[0] = 0.0;
        }
        let history: Vec<u32> = (0..g.below(40)).map(|_| g.below(n as u64) as u32).collect();
        let params = random_params(&mut g);
        let step = g.below(1 << 20);

        let got = sample_token(&params, &logits, &history, step)
            .unwrap_or_else(|e| panic!("case {case}: {e} for {params:?}"));
        let want = reference(&params, &logits, &history, step);
        assert_eq!(got, want, "case {case}: n={n} {params:?}");

        // Independent invariants.
        let id = got as usize;
        assert!(id < n, "case {case}");
        assert!(
            logits[id].is_finite(),
            "case {case}: sampled a masked token"
        );
        let all = ranked(&penalised(&params, &logits, &history));
        if let Some(k) = params.top_k {
            let top: Vec<u32> = all.iter().take(k).map(|x| x.0).collect();
            assert!(top.contains(&got), "case {case}: {got} not in top-{k}");
        }
        if params.temperature == 0.0 {
            assert_eq!(got, all[0].0, "case {case}: greedy is not argmax");
        }
        if let Some(m) = params.min_p.filter(|_| params.temperature > 0.0) {
            let l = all
                .iter()
                .find(|x| x.0 == got)
                .map(|x| x.1)
                .unwrap_or(f64::NAN);
            let w = libm::exp((l - all[0].1) / f64::from(params.temperature));
            assert!(w >= f64::from(m), "case {case}: weight {w} below min_p {m}");
        }
        if params.temperature > 0.0 {
            let l = all.iter().find(|x| x.0 == got).map_or(f64::NAN, |x| x.1);
            let w = libm::exp((l - all[0].1) / f64::from(params.temperature));
            assert!(w > 0.0, "case {case}: sampled a zero-probability token");
        }
    }
}

#[test]
fn invariants_hold_on_a_large_vocabulary() {
    // Llama-3-sized vocabulary, a few steps, every filter path.
    let mut g = Gen(SplitMix64::new(7));
    let n = 128_256;
    let logits = random_logits(&mut g, n);
    let history: Vec<u32> = (0..200).map(|_| g.below(n as u64) as u32).collect();
    for (i, params) in [
        SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 0.8,
            top_k: Some(40),
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 0.8,
            top_p: Some(0.95),
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 0.6,
            top_k: Some(1000),
            top_p: Some(0.9),
            min_p: Some(0.05),
            repetition_penalty: 1.2,
            repeat_last_n: 0,
            ..SamplingParams::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        for step in 0..3 {
            let got = sample_token(&params, &logits, &history, step).unwrap();
            assert_eq!(
                got,
                reference(&params, &logits, &history, step),
                "params #{i}"
            );
            assert!(logits[got as usize].is_finite());
        }
    }
}

#[test]
fn errors_are_checked_before_sampling() {
    // The first bad index is reported, regardless of params or step.
    let mut g = Gen(SplitMix64::new(99));
    for _ in 0..200 {
        let n = 2 + g.below(50) as usize;
        let mut logits = random_logits(&mut g, n);
        let bad = g.below(n as u64) as usize;
        logits[bad] = if g.chance(0.5) {
            f32::NAN
        } else {
            f32::INFINITY
        };
        let params = random_params(&mut g);
        let first_bad = logits
            .iter()
            .position(|x| x.is_nan() || *x == f32::INFINITY);
        assert_eq!(
            sample_token(&params, &logits, &[], 0),
            Err(SamplingError::NonFinite {
                index: first_bad.unwrap_or(bad)
            })
        );
    }
}
