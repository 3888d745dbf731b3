//! Behavioural tests of the public sampling API.

use hearth_sampling::{sample_token, Sampler, SamplingError, SamplingParams};

fn temp(t: f32) -> SamplingParams {
    SamplingParams {
        temperature: t,
        ..SamplingParams::greedy()
    }
}

fn ln(ps: &[f64]) -> Vec<f32> {
    ps.iter().map(|p| p.ln() as f32).collect()
}

/// Empirical token frequencies over `steps` consecutive steps.
fn frequencies(params: &SamplingParams, logits: &[f32], steps: u64) -> Vec<f64> {
    let sampler = Sampler::new(params.clone()).unwrap();
    let mut counts = vec![0u64; logits.len()];
    for step in 0..steps {
        counts[sampler.sample(logits, &[], step).unwrap() as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / steps as f64).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "token {i}: got {g}, want {w} (±{tol}); all: {got:?}"
        );
    }
}

// ---------------------------------------------------------------- greedy ---

#[test]
fn greedy_picks_argmax() {
    let s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&[0.1, 3.0, -2.0, 2.9], &[], 0).unwrap(), 1);
    assert_eq!(s.sample(&[-5.0, -4.0, -6.0], &[], 0).unwrap(), 1);
    assert_eq!(s.sample(&[7.0], &[], 0).unwrap(), 0);
}

#[test]
fn greedy_ties_go_to_lowest_id() {
    let s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&[1.0, 5.0, 2.0, 5.0, 5.0], &[], 0).unwrap(), 1);
    // -0.0 and +0.0 are a tie too.
    assert_eq!(s.sample(&[-1.0, -0.0, 0.0], &[], 0).unwrap(), 1);
    assert_eq!(s.sample(&[-1.0, 0.0, -0.0], &[], 0).unwrap(), 1);
}

#[test]
fn greedy_ignores_seed_and_step() {
    let logits = [0.3, 0.1, 0.9, 0.2];
    for seed in 0..5 {
        for step in 0..5 {
            let p = SamplingParams {
                seed,
                ..SamplingParams::greedy()
            };
            assert_eq!(sample_token(&p, &logits, &[], step).unwrap(), 2);
        }
    }
}

#[test]
fn masked_tokens_are_never_chosen() {
    let logits = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 1.0];
    assert_eq!(
        sample_token(&SamplingParams::greedy(), &logits, &[], 0).unwrap(),
        1
    );
    let p = temp(1.0);
    for step in 0..200 {
        let t = sample_token(&p, &logits, &[], step).unwrap();
        assert!(t == 1 || t == 3);
    }
}

// ----------------------------------------------------------- determinism ---

fn rich_params(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_k: Some(40),
        top_p: Some(0.95),
        min_p: Some(0.01),
        repetition_penalty: 1.1,
        repeat_last_n: 16,
        frequency_penalty: 0.1,
        presence_penalty: 0.05,
        seed,
        ..SamplingParams::default()
    }
}

fn test_logits(n: usize) -> Vec<f32> {
    // Deterministic, moderately peaked, no ties.
    (0..n)
        .map(|i| {
            let x = (i as f32 * 0.618_034).fract();
            4.0 * x * x - 1.0 + i as f32 * 1e-4
        })
        .collect()
}

#[test]
fn same_inputs_same_token_across_calls_and_instances() {
    let logits = test_logits(1000);
    let history: Vec<u32> = (0..50).map(|i| (i * 37 % 1000) as u32).collect();
    let params = rich_params(99);
    let a = Sampler::new(params.clone()).unwrap();
    let first: Vec<u32> = (0..100)
        .map(|s| a.sample(&logits, &history, s).unwrap())
        .collect();
    // Repeated calls, in a different order, on a fresh instance, and through
    // the pure function all agree.
    let b = Sampler::new(params.clone()).unwrap();
    for s in (0..100).rev() {
        assert_eq!(a.sample(&logits, &history, s).unwrap(), first[s as usize]);
        assert_eq!(b.sample(&logits, &history, s).unwrap(), first[s as usize]);
        assert_eq!(
            sample_token(&params, &logits, &history, s).unwrap(),
            first[s as usize]
        );
    }
}

#[test]
fn different_steps_and_seeds_give_different_draws() {
    let logits = ln(&[0.25, 0.25, 0.25, 0.25]);
    let s = Sampler::new(temp(1.0)).unwrap();
    let by_step: Vec<u32> = (0..200)
        .map(|st| s.sample(&logits, &[], st).unwrap())
        .collect();
    assert!(
        by_step.iter().any(|&t| t != by_step[0]),
        "all 200 steps drew the same token"
    );

    let by_seed: Vec<u32> = (0..200)
        .map(|seed| {
            let p = SamplingParams { seed, ..temp(1.0) };
            sample_token(&p, &logits, &[], 0).unwrap()
        })
        .collect();
    assert!(
        by_seed.iter().any(|&t| t != by_seed[0]),
        "all 200 seeds drew the same token"
    );
    // And seeds are not just shifted steps.
    let other = Sampler::new(SamplingParams {
        seed: 1,
        ..temp(1.0)
    })
    .unwrap();
    let seed1: Vec<u32> = (0..200)
        .map(|st| other.sample(&logits, &[], st).unwrap())
        .collect();
    assert_ne!(by_step, seed1);
}

// ---------------------------------------------------------------- golden ---

/// Regression constants computed once by this implementation. A change here
/// means old traces no longer replay: bump a protocol version if intended.
#[test]
fn golden_vectors() {
    let logits = test_logits(5000);
    let history: Vec<u32> = (0..100).map(|i| (i * 53 % 5000) as u32).collect();
    let cases: Vec<(SamplingParams, u64)> = vec![
        (temp(1.0), 0),
        (temp(1.0), 1),
        (
            SamplingParams {
                seed: 7,
                ..temp(0.7)
            },
            3,
        ),
        (
            SamplingParams {
                top_k: Some(50),
                seed: 42,
                ..temp(1.0)
            },
            10,
        ),
        (
            SamplingParams {
                top_p: Some(0.9),
                seed: 42,
                ..temp(1.0)
            },
            10,
        ),
        (
            SamplingParams {
                min_p: Some(0.05),
                seed: 1234,
                ..temp(1.5)
            },
            5,
        ),
        (rich_params(2024), 0),
        (rich_params(2024), 17),
        (rich_params(u64::MAX), u64::MAX),
        (SamplingParams::greedy(), 0),
    ];
    let got: Vec<u32> = cases
        .iter()
        .map(|(p, step)| sample_token(p, &logits, &history, *step).unwrap())
        .collect();
    assert_eq!(got, GOLDEN_TOKENS);

    // Small hand-checkable case: p = [0.5, 0.3, 0.2], u(seed 0, step 0) =
    // 0.8199… lands in the last bucket (> 0.8), u(seed 0, step 1) = 0.8937…
    // likewise, u(seed 1, step 0) = 0.1583… in the first.
    let small = ln(&[0.5, 0.3, 0.2]);
    assert_eq!(sample_token(&temp(1.0), &small, &[], 0).unwrap(), 2);
    assert_eq!(sample_token(&temp(1.0), &small, &[], 1).unwrap(), 2);
    let p1 = SamplingParams {
        seed: 1,
        ..temp(1.0)
    };
    assert_eq!(sample_token(&p1, &small, &[], 0).unwrap(), 0);
}

const GOLDEN_TOKENS: [u32; 10] = [4266, 4574, 3016, 3770, 1885, 995, 4812, 3859, 4812, 4935];

// ---------------------------------------------------------- distribution ---

#[test]
fn temperature_one_matches_softmax_distribution() {
    let f = frequencies(&temp(1.0), &ln(&[0.5, 0.3, 0.2]), 20_000);
    assert_close(&f, &[0.5, 0.3, 0.2], 0.02);
}

#[test]
fn temperature_two_flattens_distribution() {
    // p^(1/2), renormalised.
    let raw = [0.5f64.sqrt(), 0.3f64.sqrt(), 0.2f64.sqrt()];
    let z: f64 = raw.iter().sum();
    let want: Vec<f64> = raw.iter().map(|r| r / z).collect();
    let f = frequencies(&temp(2.0), &ln(&[0.5, 0.3, 0.2]), 20_000);
    assert_close(&f, &want, 0.02);
}

#[test]
fn truncation_renormalises_survivors() {
    let logits = ln(&[0.5, 0.3, 0.2]);
    let want = [0.625, 0.375, 0.0];
    // top-k 2, top-p 0.7 (0.5 < 0.7 <= 0.8) and min-p 0.5 (keeps p >= 0.25)
    // all keep tokens {0, 1}.
    for p in [
        SamplingParams {
            top_k: Some(2),
            ..temp(1.0)
        },
        SamplingParams {
            top_p: Some(0.7),
            ..temp(1.0)
        },
        SamplingParams {
            min_p: Some(0.5),
            ..temp(1.0)
        },
    ] {
        let f = frequencies(&p, &logits, 20_000);
        assert_close(&f, &want, 0.02);
        assert_eq!(f[2], 0.0, "{p:?} sampled a truncated token");
    }
    // top-p exactly at a boundary keeps that prefix: 0.5 reaches 0.5.
    let f = frequencies(
        &SamplingParams {
            top_p: Some(0.5),
            ..temp(1.0)
        },
        &logits,
        2_000,
    );
    assert_eq!(f, vec![1.0, 0.0, 0.0]);
}

/// Pins the documented summation order of the top-p total `Z` (ascending id),
/// which decides boundary cases bit-exactly.
#[test]
fn top_p_total_is_summed_in_id_order() {
    // Ten tiny tokens (w ≈ 1e-16 each, below half an ulp of 2) at ids 0..10,
    // two tied top tokens (w = 1) at ids 10 and 11, one token cut by top-k.
    // In id order Z = ((10e-16 + 1) + 1) > 2, so top-p 0.5 needs both tied
    // tokens; in rank order Z would be (1 + 1) + tiny = 2 exactly and only
    // token 10 would be kept.
    let mut logits = vec![(1e-16f64).ln() as f32; 10];
    logits.extend([0.0, 0.0, -100.0]);
    for top_k in [None, Some(12)] {
        let p = SamplingParams {
            top_k,
            top_p: Some(0.5),
            ..temp(1.0)
        };
        let f = frequencies(&p, &logits, 2_000);
        assert!(f[10] > 0.4 && f[11] > 0.4, "top_k {top_k:?}: {f:?}");
    }
}

// ------------------------------------------------ limits equal to greedy ---

#[test]
fn top_k_one_equals_greedy() {
    let logits = test_logits(3000);
    let g = sample_token(&SamplingParams::greedy(), &logits, &[], 0).unwrap();
    let p = SamplingParams {
        top_k: Some(1),
        ..temp(1.0)
    };
    for step in 0..200 {
        assert_eq!(sample_token(&p, &logits, &[], step).unwrap(), g);
    }
    // Including ties: the lowest id wins.
    let tied = [1.0, 3.0, 3.0, 0.0];
    for step in 0..50 {
        assert_eq!(sample_token(&p, &tied, &[], step).unwrap(), 1);
    }
}

#[test]
fn tiny_top_p_equals_greedy() {
    let logits = test_logits(3000);
    let g = sample_token(&SamplingParams::greedy(), &logits, &[], 0).unwrap();
    let p = SamplingParams {
        top_p: Some(1e-6),
        ..temp(1.0)
    };
    for step in 0..200 {
        assert_eq!(sample_token(&p, &logits, &[], step).unwrap(), g);
    }
}

#[test]
fn temperature_near_zero_approaches_greedy() {
    let logits = ln(&[0.3, 0.35, 0.2, 0.15]);
    let g = sample_token(&SamplingParams::greedy(), &logits, &[], 0).unwrap();
    assert_eq!(g, 1);
    // At T = 1 the argmax is drawn only ~35% of the time ...
    let f1 = frequencies(&temp(1.0), &logits, 2_000);
    assert!(f1[1] < 0.5, "{f1:?}");
    // ... at T = 0.05 it dominates, and at T = 1e-4 it is always chosen.
    let f_small = frequencies(&temp(0.05), &logits, 2_000);
    assert!(f_small[1] > 0.9, "{f_small:?}");
    let f_tiny = frequencies(&temp(1e-4), &logits, 2_000);
    assert_eq!(f_tiny, vec![0.0, 1.0, 0.0, 0.0]);
    // Even the smallest positive temperature is finite and well-defined.
    let f_min = frequencies(&temp(f32::from_bits(1)), &logits, 100);
    assert_eq!(f_min, vec![0.0, 1.0, 0.0, 0.0]);
}

// ------------------------------------------------------------- penalties ---

#[test]
fn repetition_penalty_changes_greedy_choice() {
    let s = Sampler::new(SamplingParams {
        repetition_penalty: 1.3,
        ..SamplingParams::greedy()
    })
    .unwrap();
    // Positive logit divided: 2.0 / 1.3 = 1.54 < 1.9.
    let logits = [2.0, 1.9, 0.5];
    assert_eq!(s.sample(&logits, &[], 0).unwrap(), 0);
    assert_eq!(s.sample(&logits, &[0], 0).unwrap(), 1);
    // Repeats count once for the repetition penalty.
    assert_eq!(s.sample(&logits, &[0, 0, 0, 0], 0).unwrap(), 1);
    // Negative logit multiplied: -1.0 * 1.3 = -1.3 < -1.1.
    let neg = [-1.0, -1.1, -5.0];
    assert_eq!(s.sample(&neg, &[], 0).unwrap(), 0);
    assert_eq!(s.sample(&neg, &[0], 0).unwrap(), 1);
}

#[test]
fn repetition_penalty_lowers_sampling_probability() {
    let logits = ln(&[0.5, 0.3, 0.2]);
    let history = [0u32];
    let count0 = |params: &SamplingParams| {
        (0..5_000u64)
            .filter(|&st| sample_token(params, &logits, &history, st).unwrap() == 0)
            .count()
    };
    let base = count0(&temp(1.0));
    let penalised = count0(&SamplingParams {
        repetition_penalty: 2.0,
        ..temp(1.0)
    });
    // ln 0.5 < 0, so it is multiplied: p0 ∝ 0.25 → 0.25/0.75 = 1/3.
    assert!((base as f64 / 5_000.0 - 0.5).abs() < 0.03, "{base}");
    assert!(
        (penalised as f64 / 5_000.0 - 1.0 / 3.0).abs() < 0.03,
        "{penalised}"
    );
}

#[test]
fn penalty_window_limits_history() {
    let base = SamplingParams {
        repetition_penalty: 1.3,
        repeat_last_n: 2,
        ..SamplingParams::greedy()
    };
    let logits = [2.0, 1.9, 0.5];
    // Token 0 is outside the last-2 window.
    assert_eq!(sample_token(&base, &logits, &[0, 2, 2], 0).unwrap(), 0);
    assert_eq!(sample_token(&base, &logits, &[2, 2, 0], 0).unwrap(), 1);
    // repeat_last_n = 0 means the whole history.
    let all = SamplingParams {
        repeat_last_n: 0,
        ..base
    };
    assert_eq!(sample_token(&all, &logits, &[0, 2, 2], 0).unwrap(), 1);
}

#[test]
fn frequency_and_presence_penalties() {
    let logits = [2.0, 1.0, 0.0];
    let freq = SamplingParams {
        frequency_penalty: 0.4,
        ..SamplingParams::greedy()
    };
    // 2.0 - 2*0.4 = 1.2 > 1.0; 2.0 - 3*0.4 = 0.8 < 1.0.
    assert_eq!(sample_token(&freq, &logits, &[0, 0], 0).unwrap(), 0);
    assert_eq!(sample_token(&freq, &logits, &[0, 0, 0], 0).unwrap(), 1);
    let presence = SamplingParams {
        presence_penalty: 1.5,
        ..SamplingParams::greedy()
    };
    // Presence does not scale with count: 2.0 - 1.5 = 0.5 < 1.0.
    assert_eq!(sample_token(&presence, &logits, &[0], 0).unwrap(), 1);
    // Both tokens present: 0.5 vs -0.5.
    assert_eq!(
        sample_token(&presence, &logits, &[0, 1, 1, 1], 0).unwrap(),
        0
    );
}

#[test]
fn history_is_ignored_without_penalties() {
    // Out-of-range history is harmless when no penalty reads it ...
    let logits = [1.0, 2.0];
    assert_eq!(
        sample_token(&SamplingParams::greedy(), &logits, &[77], 0).unwrap(),
        1
    );
    // ... and an error when one does.
    let p = SamplingParams {
        presence_penalty: 0.5,
        ..SamplingParams::greedy()
    };
    assert_eq!(
        sample_token(&p, &logits, &[1, 77], 0),
        Err(SamplingError::TokenOutOfRange {
            token: 77,
            vocab_size: 2
        })
    );
}

// ---------------------------------------------------------------- errors ---

#[test]
fn bad_logits_are_errors() {
    for p in [SamplingParams::greedy(), temp(1.0)] {
        assert_eq!(
            sample_token(&p, &[], &[], 0),
            Err(SamplingError::EmptyLogits)
        );
        assert_eq!(
            sample_token(&p, &[1.0, f32::NAN, f32::INFINITY], &[], 0),
            Err(SamplingError::NonFinite { index: 1 })
        );
        assert_eq!(
            sample_token(&p, &[1.0, 2.0, f32::INFINITY], &[], 0),
            Err(SamplingError::NonFinite { index: 2 })
        );
        assert_eq!(
            sample_token(&p, &[f32::NEG_INFINITY; 3], &[], 0),
            Err(SamplingError::AllMasked { vocab_size: 3 })
        );
    }
}

fn invalid_name(p: SamplingParams) -> &'static str {
    match p.validate() {
        Err(SamplingError::InvalidParam { name, .. }) => {
            // Both constructors and the pure function reject it too.
            assert!(Sampler::new(p.clone()).is_err());
            assert!(sample_token(&p, &[1.0], &[], 0).is_err());
            name
        }
        other => panic!("expected InvalidParam for {p:?}, got {other:?}"),
    }
}

#[test]
fn invalid_params_name_the_param() {
    let d = SamplingParams::default;
    assert_eq!(
        invalid_name(SamplingParams {
            temperature: -0.5,
            ..d()
        }),
        "temperature"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            temperature: f32::NAN,
            ..d()
        }),
        "temperature"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            temperature: f32::INFINITY,
            ..d()
        }),
        "temperature"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            top_k: Some(0),
            ..d()
        }),
        "top_k"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            top_p: Some(0.0),
            ..d()
        }),
        "top_p"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            top_p: Some(1.01),
            ..d()
        }),
        "top_p"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            top_p: Some(-0.1),
            ..d()
        }),
        "top_p"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            top_p: Some(f32::NAN),
            ..d()
        }),
        "top_p"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            min_p: Some(1.5),
            ..d()
        }),
        "min_p"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            min_p: Some(f32::NAN),
            ..d()
        }),
        "min_p"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            repetition_penalty: 0.0,
            ..d()
        }),
        "repetition_penalty"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            frequency_penalty: f32::NAN,
            ..d()
        }),
        "frequency_penalty"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            presence_penalty: f32::INFINITY,
            ..d()
        }),
        "presence_penalty"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            stop: vec![String::new()],
            ..d()
        }),
        "stop"
    );
    assert_eq!(
        invalid_name(SamplingParams {
            max_tokens: 0,
            ..d()
        }),
        "max_tokens"
    );

    // Boundary values that are valid.
    for ok in [
        SamplingParams {
            top_p: Some(1.0),
            ..d()
        },
        SamplingParams {
            min_p: Some(0.0),
            ..d()
        },
        SamplingParams {
            min_p: Some(1.0),
            ..d()
        },
        SamplingParams {
            top_k: Some(1),
            ..d()
        },
        SamplingParams {
            frequency_penalty: -2.0,
            ..d()
        },
    ] {
        assert_eq!(ok.validate(), Ok(()), "{ok:?}");
    }
    // The error message names the parameter too.
    let msg = SamplingParams {
        top_k: Some(0),
        ..d()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(msg.contains("top_k"), "{msg}");
}

#[test]
fn default_is_greedy_and_valid() {
    assert_eq!(SamplingParams::default(), SamplingParams::greedy());
    assert!(SamplingParams::default().is_greedy());
    assert_eq!(SamplingParams::default().validate(), Ok(()));
}
