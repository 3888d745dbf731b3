//! Bit-exact determinism on the CPU (issue #11): a position's hidden state after a slice is a pure
//! function of the weights and the inputs up to it. It does not depend on whether the position was
//! computed alone (decode), in a prefill of any length, split in any way, batched with other
//! sessions, or on 1, 2 or 3 threads. This is what makes a failover replay rebuild the KV cache bit
//! for bit and lets a verifier compare a re-executed step exactly.

use candle_core::quantized::GgmlDType;
use hearth_core::{BlockRange, SplitMix64};
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{
    Architecture, DType, LoadOptions, ModelConfig, ModelSlice, ModelSource, RopeLayout, Tensor,
};
use proptest::prelude::*;
use std::path::Path;

/// Every weight type hearth runs on the CPU: hearth's own kernels (F32, F16, BF16, Q4_0, Q8_0)
/// and candle's (Q4_1, Q5_0, Q5_1, K-quants).
const GGUF_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Random hidden states (what an upstream node would send) for `n` positions.
fn inputs(seed: u64, n: usize, hidden: usize) -> Vec<Vec<f32>> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| (0..hidden).map(|_| rng.unit() as f32 * 2.0 - 1.0).collect())
        .collect()
}

fn rows_tensor(rows: &[Vec<f32>]) -> Tensor {
    let hidden = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (1, rows.len(), hidden), &hearth_engine::Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<Vec<u32>> {
    let (_, n, h) = t.dims3().unwrap();
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (0..n)
        .map(|i| v[i * h..(i + 1) * h].iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// Runs `xs` through `slice` in consecutive steps of the given sizes; the output rows in order.
fn run_split(slice: &ModelSlice, xs: &[Vec<f32>], steps: &[usize]) -> Vec<Vec<u32>> {
    let mut cache = slice.new_cache();
    let mut out = Vec::new();
    let mut at = 0;
    for &t in steps {
        let y = slice
            .forward(&rows_tensor(&xs[at..at + t]), &mut cache)
            .unwrap();
        out.extend(bits(&y));
        at += t;
    }
    assert_eq!(at, xs.len());
    out
}

/// Decode-only, whole prefill and `splits` agree bitwise; so do steps batched with other sessions
/// and runs on 1, 2 and 3 threads. Panics naming `what` and the first disagreement.
fn assert_invariant(slice: &ModelSlice, xs: &[Vec<f32>], splits: &[Vec<usize>], what: &str) {
    let n = xs.len();
    let decode = run_split(slice, xs, &vec![1; n]);
    let check = |got: Vec<Vec<u32>>, how: &str| {
        for (i, (g, d)) in got.iter().zip(&decode).enumerate() {
            assert!(
                g == d,
                "{what}: position {i} differs between decode-only and {how}"
            );
        }
    };
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        check(
            pool.install(|| run_split(slice, xs, &[n])),
            &format!("one prefill on {threads} threads"),
        );
    }
    for split in splits {
        check(run_split(slice, xs, split), &format!("steps {split:?}"));
    }

    // Batched: this session's prefill then decode steps, each step sharing its pass over the
    // weights with two other sessions at other positions.
    let others = inputs(99, n + 8, xs[0].len());
    let mut caches = [slice.new_cache(), slice.new_cache(), slice.new_cache()];
    let mut got = Vec::new();
    let prefix = n / 2;
    let mut at = 0;
    let mut other_at = 0;
    for step in std::iter::once(prefix).chain(std::iter::repeat_n(1, n - prefix)) {
        let mine = rows_tensor(&xs[at..at + step]);
        let a = rows_tensor(&others[other_at..other_at + 3]);
        let b = rows_tensor(&others[other_at + 3..other_at + 4]);
        let [c0, c1, c2] = &mut caches;
        let outs = slice
            .forward_batch(&mut [(&a, c1), (&mine, c0), (&b, c2)])
            .unwrap();
        got.extend(bits(&outs[1]));
        at += step;
        other_at = (other_at + 1) % 4;
    }
    check(got, "batched steps");
}

fn load(path: &Path) -> (ModelSource, ModelSlice) {
    let src = ModelSource::open(path).unwrap();
    let n = src.config().num_layers as u32;
    let slice = src
        .load_slice(
            BlockRange::new(0, n).unwrap(),
            &LoadOptions::default(),
            None,
        )
        .unwrap();
    (src, slice)
}

#[test]
fn every_cpu_weight_type_is_batch_split_and_thread_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let model = SynthModel::new(shape("tiny").unwrap(), 21).unwrap();
    let hidden = model.config.hidden_size;
    let xs = inputs(1, 19, hidden);
    let splits = vec![vec![5, 1, 1, 12], vec![18, 1], vec![2, 9, 8]];
    for &quant in GGUF_TYPES {
        let path = dir.path().join(format!("m-{quant:?}.gguf"));
        model.write_gguf(&path, quant).unwrap();
        let (_, slice) = load(&path);
        assert_invariant(&slice, &xs, &splits, &format!("GGUF {quant:?}"));
    }
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let hf = dir.path().join(format!("hf-{dtype:?}"));
        model
            .write_hf(&hf, dtype, &SynthOptions::default())
            .unwrap();
        let (_, slice) = load(&hf);
        assert_invariant(&slice, &xs, &splits, &format!("HF {dtype:?}"));
    }
}

/// The synthesized Qwen3 and Phi-3 shapes (q/k norms, wide heads, fused projections, a sliding
/// window) on hearth's kernels and candle's, in GGUF and HF.
#[test]
fn new_family_shapes_are_batch_split_and_thread_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let splits = vec![vec![5, 1, 1, 12], vec![2, 9, 8]];
    for name in ["tiny-qwen3", "tiny-phi3"] {
        let model = SynthModel::new(shape(name).unwrap(), 21).unwrap();
        let xs = inputs(1, 19, model.config.hidden_size);
        for quant in [
            GgmlDType::F32,
            GgmlDType::Q8_0,
            GgmlDType::Q4_1,
            GgmlDType::Q6K,
        ] {
            let path = dir.path().join(format!("{name}-{quant:?}.gguf"));
            model.write_gguf(&path, quant).unwrap();
            let (_, slice) = load(&path);
            assert_invariant(&slice, &xs, &splits, &format!("{name} GGUF {quant:?}"));
        }
        let hf = dir.path().join(format!("{name}-hf"));
        model
            .write_hf(&hf, DType::BF16, &SynthOptions::default())
            .unwrap();
        let (_, slice) = load(&hf);
        assert_invariant(&slice, &xs, &splits, &format!("{name} HF BF16"));
    }
}

/// A random small shape of a random family: head counts and width (Qwen3's heads need not
/// divide the hidden size), GQA ratio, RoPE layout, sliding window.
fn random_config(seed: u64) -> ModelConfig {
    let mut rng = SplitMix64::new(seed);
    let kv_heads = 1 + rng.below(3) as usize;
    let heads = kv_heads * (1 + rng.below(3) as usize);
    // `heads * head_dim` (the output projection's input) in whole pairs of 32-value blocks.
    let head_dim = if heads.is_multiple_of(2) && rng.below(2) == 0 {
        32
    } else {
        64
    };
    let mut cfg = shape("tiny").unwrap();
    cfg.architecture = [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Phi3,
    ][rng.below(4) as usize];
    cfg.attention_bias = cfg.architecture == Architecture::Qwen2;
    cfg.num_layers = 1 + rng.below(3) as usize;
    cfg.num_heads = heads;
    cfg.num_kv_heads = kv_heads;
    cfg.head_dim = head_dim;
    cfg.hidden_size = 64 * (1 + rng.below(3) as usize);
    // Whole pairs of 32-value blocks: candle's Q4_1/Q5_x dot products assert an even block count
    // in debug builds.
    cfg.intermediate_size = 64 * (1 + rng.below(4) as usize);
    cfg.rope_layout = if rng.below(2) == 0 {
        RopeLayout::Half
    } else {
        RopeLayout::Interleaved
    };
    cfg.sliding_window = (rng.below(2) == 0).then(|| 2 + rng.below(6) as usize);
    cfg.vocab_size = 300;
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// For random shapes, weight types and step splits: prefill followed by decode equals
    /// decode-only and any split of the prefill, and batched equals single, bitwise.
    #[test]
    fn random_shapes_and_splits_are_bit_exact(
        seed in any::<u64>(),
        quant in prop::sample::select(vec![
            GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16, GgmlDType::Q4_0,
            GgmlDType::Q4_1, GgmlDType::Q5_1, GgmlDType::Q8_0,
        ]),
        n in 2usize..24,
        cuts in prop::collection::vec(1usize..24, 1..5),
    ) {
        let cfg = random_config(seed);
        let model = SynthModel::new(cfg, seed).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        model.write_gguf(&path, quant).unwrap();
        let (_, slice) = load(&path);
        // One split from `cuts`: consecutive step sizes covering 0..n.
        let mut split = Vec::new();
        let mut left = n;
        for c in cuts.iter().cycle() {
            if left == 0 {
                break;
            }
            let t = (*c).min(left);
            split.push(t);
            left -= t;
        }
        let xs = inputs(seed ^ 7, n, model.config.hidden_size);
        assert_invariant(&slice, &xs, &[split], &format!("{quant:?} {:?}", model.config));
    }
}
