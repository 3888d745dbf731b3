//! Slices run in sequence give the same logits as the whole model; KV-cached decode gives the
//! same logits as recomputing from scratch; the HF and GGUF copies of a model agree.

use candle_core::quantized::GgmlDType;
use hearth_core::BlockRange;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{max_abs_diff, DType, LoadOptions, ModelSource, Pipeline, Tensor};
use std::path::Path;

fn synth_hf(dir: &Path, shape_name: &str, dtype: DType, shard_bytes: Option<u64>) -> ModelSource {
    let m = SynthModel::new(shape(shape_name).unwrap(), 7).unwrap();
    m.write_hf(
        dir,
        dtype,
        &SynthOptions {
            seed: 7,
            shard_bytes,
        },
    )
    .unwrap();
    ModelSource::open(dir).unwrap()
}

fn synth_gguf(path: &Path, shape_name: &str, quant: GgmlDType) -> ModelSource {
    SynthModel::new(shape(shape_name).unwrap(), 7)
        .unwrap()
        .write_gguf(path, quant)
        .unwrap();
    ModelSource::open(path).unwrap()
}

/// A pipeline of in-process slices cut at `cuts`, with hearth's kernels.
fn pipeline(src: &ModelSource, cuts: &[u32]) -> Pipeline {
    pipeline_with(src, cuts, false)
}

const PROMPT: [u32; 11] = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114];

/// Logits of a 11-token prefill followed by `decode` greedy single-token steps.
fn run(p: &mut Pipeline, decode: usize) -> (Vec<Tensor>, Vec<u32>) {
    let mut logits = vec![p.logits_all(0, &PROMPT).unwrap()];
    let mut tokens = Vec::new();
    for pos in PROMPT.len()..PROMPT.len() + decode {
        let last = logits.last().unwrap();
        let t = last.dim(0).unwrap();
        let next = last
            .get(t - 1)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        tokens.push(next);
        logits.push(p.logits_all(pos, &[next]).unwrap());
    }
    (logits, tokens)
}

fn assert_same_run(a: &(Vec<Tensor>, Vec<u32>), b: &(Vec<Tensor>, Vec<u32>), tol: f32, what: &str) {
    assert_eq!(a.1, b.1, "{what}: greedy tokens differ");
    for (i, (x, y)) in a.0.iter().zip(&b.0).enumerate() {
        let d = max_abs_diff(x, y).unwrap();
        assert!(d <= tol, "{what}: step {i} max |Δlogit| = {d} > {tol}");
    }
}

#[test]
fn f32_splits_match_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    let src = synth_hf(dir.path(), "tiny", DType::F32, None);
    let whole = run(&mut pipeline(&src, &[]), 8);
    for cuts in [&[3][..], &[1, 4], &[2, 3, 5], &[1, 2, 3, 4, 5], &[5]] {
        let split = run(&mut pipeline(&src, cuts), 8);
        assert_same_run(&whole, &split, 1e-5, &format!("cuts {cuts:?}"));
    }
}

#[test]
fn kv_cached_decode_matches_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let src = synth_hf(dir.path(), "tiny", DType::F32, None);
    let (cached, tokens) = run(&mut pipeline(&src, &[2]), 10);
    let full: Vec<u32> = PROMPT
        .iter()
        .copied()
        .chain(tokens.iter().copied())
        .collect();
    // One prefill over the whole sequence, no cache reuse.
    let recomputed = pipeline(&src, &[4]).logits_all(0, &full).unwrap();
    let n = PROMPT.len();
    assert!(max_abs_diff(&cached[0], &recomputed.narrow(0, 0, n).unwrap()).unwrap() <= 1e-5);
    for (i, step) in cached[1..].iter().enumerate() {
        let row = recomputed.narrow(0, n + i, 1).unwrap();
        let d = max_abs_diff(step, &row).unwrap();
        assert!(d <= 1e-4, "decode step {i}: max |Δlogit| = {d}");
    }
}

#[test]
fn replaying_a_step_rewinds_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let src = synth_hf(dir.path(), "tiny", DType::F32, None);
    let mut p = pipeline(&src, &[3]);
    let first = p.logits_all(0, &PROMPT).unwrap();
    p.logits_all(PROMPT.len(), &[5]).unwrap();
    // Rewind to 0 and run the prompt again: same logits as the first time.
    let again = p.logits_all(0, &PROMPT).unwrap();
    assert_eq!(max_abs_diff(&first, &again).unwrap(), 0.0);
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let single = synth_hf(a.path(), "tiny", DType::F32, None);
    let sharded = synth_hf(b.path(), "tiny", DType::F32, Some(600_000));
    assert!(b.path().join("model.safetensors.index.json").exists());
    assert!(
        b.path().join("model-00001-of-00007.safetensors").exists()
            || std::fs::read_dir(b.path()).unwrap().count() > 5
    );
    let x = run(&mut pipeline(&single, &[]), 3);
    let y = run(&mut pipeline(&sharded, &[2, 4]), 3);
    assert_same_run(&x, &y, 1e-5, "sharded");
}

#[test]
fn gguf_f32_matches_hf_f32_for_every_family() {
    for name in ["tiny", "tiny-qwen2", "tiny-qwen3", "tiny-phi3"] {
        let dir = tempfile::tempdir().unwrap();
        let hf = synth_hf(&dir.path().join("hf"), name, DType::F32, None);
        let gguf = synth_gguf(&dir.path().join("m.gguf"), name, GgmlDType::F32);
        assert_eq!(hf.config().rope_layout, hearth_engine::RopeLayout::Half);
        let a = run(&mut pipeline(&hf, &[]), 6);
        let b = run(&mut pipeline(&gguf, &[1]), 6);
        // Interleaved vs half-split RoPE sums in a different order: allow f32 rounding noise.
        assert_same_run(&a, &b, 1e-4, name);
    }
}

/// Qwen3 (q/k norms, wide heads) and Phi-3 (fused projections): cut at every block boundary, in
/// f32 HF and in quantized GGUF, the pipeline gives the whole model's greedy tokens and logits.
#[test]
fn new_families_split_at_every_boundary_like_the_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-qwen3", "tiny-phi3"] {
        let hf = synth_hf(&dir.path().join(name), name, DType::F32, None);
        let q8 = synth_gguf(
            &dir.path().join(format!("{name}.gguf")),
            name,
            GgmlDType::Q8_0,
        );
        for (src, tol) in [(&hf, 1e-5), (&q8, 1e-4)] {
            let n = src.config().num_blocks();
            let whole = run(&mut pipeline(src, &[]), 16);
            let every: Vec<u32> = (1..n).collect();
            let mut cut_sets: Vec<Vec<u32>> = every.iter().map(|&c| vec![c]).collect();
            cut_sets.push(every);
            for cuts in cut_sets {
                let split = run(&mut pipeline(src, &cuts), 16);
                assert_same_run(&whole, &split, tol, &format!("{name} cuts {cuts:?}"));
            }
        }
    }
}

#[test]
fn half_precision_splits_give_same_greedy_tokens() {
    for dtype in [DType::F16, DType::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let src = synth_hf(dir.path(), "tiny", dtype, None);
        let whole = run(&mut pipeline(&src, &[]), 64);
        for cuts in [&[3][..], &[1, 2, 4]] {
            let split = run(&mut pipeline(&src, cuts), 64);
            assert_same_run(&whole, &split, 1e-5, &format!("{dtype:?} cuts {cuts:?}"));
        }
    }
}

#[test]
fn quantized_gguf_splits_give_same_greedy_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for quant in [
        GgmlDType::F16,
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4K,
    ] {
        let path = dir.path().join(format!("{quant:?}.gguf"));
        let src = synth_gguf(&path, "tiny", quant);
        let whole = run(&mut pipeline(&src, &[]), 64);
        for cuts in [&[2][..], &[1, 3, 5]] {
            let split = run(&mut pipeline(&src, cuts), 64);
            assert_same_run(&whole, &split, 1e-4, &format!("{quant:?} cuts {cuts:?}"));
        }
    }
}

/// Runs `src` through `cuts` with the given kernel choice.
fn pipeline_with(src: &ModelSource, cuts: &[u32], candle_kernels: bool) -> Pipeline {
    let opts = LoadOptions {
        candle_kernels,
        ..LoadOptions::default()
    };
    let ranges = BlockRange::split_at(src.config().num_blocks(), cuts).unwrap();
    Pipeline::load_local(src, &ranges, &opts, 256).unwrap()
}

/// hearth's CPU kernels compute the same function as candle's: on the same quantized file, the
/// prompt logits of each stay as close to the f32 model's as candle's do. (Random-weight logits are
/// flat, so quantization noise legitimately flips greedy choices; errors are the fair measure.)
/// Measured on `tiny`: F16 both 3.1e-3; Q8_0 hearth 0.11, candle 0.14.
#[test]
fn hearth_kernels_match_candle_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let f32src = synth_gguf(&dir.path().join("ref.gguf"), "tiny", GgmlDType::F32);
    let reference = pipeline_with(&f32src, &[3], false)
        .logits_all(0, &PROMPT)
        .unwrap();
    for quant in [GgmlDType::F16, GgmlDType::Q8_0, GgmlDType::Q4_0] {
        let src = synth_gguf(&dir.path().join(format!("{quant:?}.gguf")), "tiny", quant);
        let ours = pipeline_with(&src, &[3], false)
            .logits_all(0, &PROMPT)
            .unwrap();
        let candle = pipeline_with(&src, &[3], true)
            .logits_all(0, &PROMPT)
            .unwrap();
        let err_ours = max_abs_diff(&ours, &reference).unwrap();
        let err_candle = max_abs_diff(&candle, &reference).unwrap();
        eprintln!("{quant:?}: max |logit - f32| hearth {err_ours}, candle {err_candle}");
        assert!(
            err_ours <= 1.5 * err_candle + 1e-3,
            "{quant:?}: hearth {err_ours} vs candle {err_candle}"
        );
        if quant == GgmlDType::F16 {
            assert!(err_ours < 1e-2, "F16 weights in f32 arithmetic: {err_ours}");
        }
    }
}

/// Mistral-style sliding-window attention: cached decode equals recompute, splits equal the whole
/// model, and the window really limits what a position sees.
#[test]
fn sliding_window_attention_is_exact_and_effective() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shape("tiny").unwrap();
    cfg.architecture = hearth_engine::Architecture::Mistral;
    cfg.rope_scaling = None;
    let full_attention = SynthModel::new(cfg.clone(), 7).unwrap();
    full_attention
        .write_hf(
            &dir.path().join("full"),
            DType::F32,
            &SynthOptions::default(),
        )
        .unwrap();
    cfg.sliding_window = Some(5);
    let windowed = SynthModel::new(cfg, 7).unwrap();
    windowed
        .write_hf(
            &dir.path().join("win"),
            DType::F32,
            &SynthOptions::default(),
        )
        .unwrap();
    let win = ModelSource::open(&dir.path().join("win")).unwrap();
    assert_eq!(win.config().sliding_window, Some(5));

    let whole = run(&mut pipeline(&win, &[]), 8);
    let split = run(&mut pipeline(&win, &[2, 5]), 8);
    assert_same_run(&whole, &split, 1e-5, "windowed split");
    let (cached, tokens) = whole;
    let seq: Vec<u32> = PROMPT
        .iter()
        .copied()
        .chain(tokens.iter().copied())
        .collect();
    let recomputed = pipeline(&win, &[]).logits_all(0, &seq).unwrap();
    let n = PROMPT.len();
    for (i, step) in cached[1..].iter().enumerate() {
        let d = max_abs_diff(step, &recomputed.narrow(0, n + i, 1).unwrap()).unwrap();
        assert!(d <= 1e-4, "windowed decode step {i}: {d}");
    }
    // Same weights without the window: the first 5 positions agree, later ones do not.
    let full = ModelSource::open(&dir.path().join("full")).unwrap();
    let unwindowed = pipeline(&full, &[]).logits_all(0, &seq).unwrap();
    assert!(
        max_abs_diff(
            &unwindowed.narrow(0, 0, 5).unwrap(),
            &recomputed.narrow(0, 0, 5).unwrap()
        )
        .unwrap()
            <= 1e-5
    );
    assert!(
        max_abs_diff(
            &unwindowed.narrow(0, 5, 1).unwrap(),
            &recomputed.narrow(0, 5, 1).unwrap()
        )
        .unwrap()
            > 1e-3
    );
}

/// BF16 checkpoints run on hearth's kernels without widening weights: the result equals candle's
/// f32 computation on the widened weights up to summation order.
#[test]
fn bf16_weights_on_hearth_kernels_match_widened_f32() {
    let dir = tempfile::tempdir().unwrap();
    let src = synth_hf(dir.path(), "tiny", DType::BF16, None);
    let ours = pipeline_with(&src, &[2], false)
        .logits_all(0, &PROMPT)
        .unwrap();
    let widened = pipeline_with(&src, &[2], true)
        .logits_all(0, &PROMPT)
        .unwrap();
    let d = max_abs_diff(&ours, &widened).unwrap();
    assert!(d <= 1e-3, "bf16 kernels vs widened f32: {d}");
}

/// A cancelled generation stops sending work to its stages at the next token and says why.
#[test]
fn generation_stops_at_the_next_token_once_cancelled() {
    use hearth_engine::{generate_cancellable, FinishReason};
    use hearth_sampling::SamplingParams;
    use std::cell::Cell;
    let dir = tempfile::tempdir().unwrap();
    let src = synth_gguf(&dir.path().join("m.gguf"), "tiny", GgmlDType::Q8_0);
    let tokenizer = src.tokenizer().unwrap();
    let params = SamplingParams {
        max_tokens: 24,
        ..SamplingParams::default()
    };
    let prompt = tokenizer.encode("Hello", true).unwrap();
    let mut p = pipeline(&src, &[]);
    let full =
        generate_cancellable(&mut p, &tokenizer, &prompt, &params, &mut |_| {}, &|| false).unwrap();
    assert_eq!(full.tokens.len(), 24);
    assert_eq!(full.finish, FinishReason::Length);

    let calls = Cell::new(0);
    let mut p = pipeline(&src, &[]);
    let cut = generate_cancellable(&mut p, &tokenizer, &prompt, &params, &mut |_| {}, &|| {
        calls.set(calls.get() + 1);
        calls.get() > 3
    })
    .unwrap();
    assert_eq!(cut.finish, FinishReason::Cancelled);
    assert_eq!(
        cut.tokens.len(),
        3,
        "stopped at the first check that said so"
    );
    assert_eq!(cut.tokens[..], full.tokens[..3]);
}

/// Generations that share one batched head give the same tokens as generations run alone, and
/// the head really computes several of them per product.
#[test]
fn a_shared_batched_head_gives_the_same_generations() {
    use hearth_engine::{generate, HeadBatcher};
    use hearth_sampling::SamplingParams;
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let src = synth_gguf(&dir.path().join("m.gguf"), "tiny", GgmlDType::Q8_0);
    let tokenizer = src.tokenizer().unwrap();
    let params = SamplingParams {
        max_tokens: 16,
        ..SamplingParams::default()
    };
    let prompts: Vec<Vec<u32>> = ["Hello", "Once upon", "The swarm", "Zz"]
        .iter()
        .map(|p| tokenizer.encode(p, true).unwrap())
        .collect();
    let solo: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            generate(
                &mut pipeline(&src, &[]),
                &tokenizer,
                p,
                &params,
                &mut |_| {},
            )
            .unwrap()
            .tokens
        })
        .collect();
    let head = Arc::new(src.load_head(&LoadOptions::default(), None).unwrap());
    let batcher = HeadBatcher::start(head, Duration::from_millis(50), 8);
    let registrations: Vec<_> = prompts.iter().map(|_| batcher.register()).collect();
    let shared: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .zip(registrations)
            .map(|(p, reg)| {
                let (src, tokenizer, params, batcher) = (&src, &tokenizer, &params, &batcher);
                scope.spawn(move || {
                    let mut pipe = pipeline(src, &[]);
                    pipe.head_batch = Some(batcher.clone());
                    let out = generate(&mut pipe, tokenizer, p, params, &mut |_| {}).unwrap();
                    drop(reg);
                    out.tokens
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(shared, solo);
    let stats = batcher.stats();
    assert_eq!(stats.rows, solo.iter().map(|t| t.len() as u64).sum::<u64>());
    assert!(
        stats.products * 2 <= stats.rows,
        "rows were batched: {stats:?}"
    );
}
