//! Qwen3 and Phi-3 compute what their definitions say, checked against models whose answer is
//! known without trusting the code under test:
//! - Phi-3 is Llama with q/k/v and gate/up stored fused: fusing a Llama checkpoint's matrices
//!   (q, k, v rows in that order; gate rows before up) gives a Phi-3 with the same logits.
//! - Qwen3 normalises each query and key head on its own before RoPE: scaling one head's rows of
//!   `q_proj` or `k_proj` leaves the logits unchanged, while the same weights without the norm
//!   (read as Llama) change a lot.

use hearth_core::BlockRange;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{
    max_abs_diff, Architecture, DType, LoadOptions, ModelConfig, ModelSource, Pipeline, Tensor,
};
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;
use std::path::Path;

const PROMPT: [u32; 9] = [1, 72, 101, 108, 108, 111, 44, 32, 119];

/// Every tensor of an F32 `model.safetensors`, by name: (shape, values).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn read_tensors(dir: &Path) -> Tensors {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Writes `tensors` and `cfg`'s config.json as an HF folder (tokenizer files copied from `like`).
fn write_folder(dir: &Path, cfg: &ModelConfig, tensors: &Tensors, like: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, v))| {
            let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name.clone(), shape.clone(), data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.to_hf_json("float32").to_string(),
    )
    .unwrap();
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(like.join(name), dir.join(name)).unwrap();
    }
}

/// Prompt logits of the model in `dir`, cut into two slices.
fn logits(dir: &Path) -> Tensor {
    let src = ModelSource::open(dir).unwrap();
    let n = src.config().num_blocks();
    let ranges = BlockRange::split_at(n, &[n / 2]).unwrap();
    Pipeline::load_local(&src, &ranges, &LoadOptions::default(), 64)
        .unwrap()
        .logits_all(0, &PROMPT)
        .unwrap()
}

/// Synthesizes `cfg` as an F32 HF folder in `dir`.
fn synth(dir: &Path, cfg: ModelConfig) -> ModelConfig {
    let model = SynthModel::new(cfg, 11).unwrap();
    model
        .write_hf(dir, DType::F32, &SynthOptions::default())
        .unwrap();
    model.config
}

#[test]
fn phi3_is_llama_with_fused_projections() {
    let dir = tempfile::tempdir().unwrap();
    let llama_dir = dir.path().join("llama");
    let mut cfg = shape("tiny").unwrap();
    cfg.rope_scaling = None;
    let llama = synth(&llama_dir, cfg);
    let mut tensors = read_tensors(&llama_dir);
    for i in 0..llama.num_layers {
        let mut fuse = |parts: &[&str], fused: &str| {
            let mut rows = 0;
            let mut values = Vec::new();
            for part in parts {
                let (shape, v) = tensors
                    .remove(&format!("model.layers.{i}.{part}.weight"))
                    .unwrap();
                rows += shape[0];
                values.extend(v);
            }
            let shape = vec![rows, llama.hidden_size];
            tensors.insert(format!("model.layers.{i}.{fused}.weight"), (shape, values));
        };
        fuse(
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            "self_attn.qkv_proj",
        );
        fuse(&["mlp.gate_proj", "mlp.up_proj"], "mlp.gate_up_proj");
    }
    let phi3 = ModelConfig {
        architecture: Architecture::Phi3,
        ..llama.clone()
    };
    let phi3_dir = dir.path().join("phi3");
    write_folder(&phi3_dir, &phi3, &tensors, &llama_dir);
    assert_eq!(
        ModelSource::open(&phi3_dir).unwrap().config().architecture,
        Architecture::Phi3
    );

    let d = max_abs_diff(&logits(&llama_dir), &logits(&phi3_dir)).unwrap();
    assert!(
        d <= 1e-5,
        "fused Phi-3 vs separate Llama: max |Δlogit| = {d}"
    );

    // The split order matters: v before k is another model.
    let mut swapped = tensors.clone();
    let (kv, q) = (llama.kv_dim(), llama.q_dim());
    let h = llama.hidden_size;
    let (_, qkv) = swapped
        .get_mut("model.layers.0.self_attn.qkv_proj.weight")
        .unwrap();
    let k: Vec<f32> = qkv[q * h..(q + kv) * h].to_vec();
    qkv.copy_within((q + kv) * h..(q + 2 * kv) * h, q * h);
    qkv[(q + kv) * h..].copy_from_slice(&k);
    let swapped_dir = dir.path().join("swapped");
    write_folder(&swapped_dir, &phi3, &swapped, &llama_dir);
    let d = max_abs_diff(&logits(&llama_dir), &logits(&swapped_dir)).unwrap();
    assert!(d > 1e-2, "k and v swapped should change the logits: {d}");
}

#[test]
fn qwen3_normalises_each_query_and_key_head() {
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    let qwen3 = synth(&base_dir, shape("tiny-qwen3").unwrap());
    let hd = qwen3.head_dim;
    let h = qwen3.hidden_size;
    let tensors = read_tensors(&base_dir);
    // Scale query head 1 by 4 and key head 0 by 0.5 in every block (powers of two: exact).
    let mut scaled = tensors.clone();
    for i in 0..qwen3.num_layers {
        for (proj, head, factor) in [("q_proj", 1, 4.0f32), ("k_proj", 0, 0.5)] {
            let (_, w) = scaled
                .get_mut(&format!("model.layers.{i}.self_attn.{proj}.weight"))
                .unwrap();
            w[head * hd * h..(head + 1) * hd * h]
                .iter_mut()
                .for_each(|x| *x *= factor);
        }
    }
    let scaled_dir = dir.path().join("scaled");
    write_folder(&scaled_dir, &qwen3, &scaled, &base_dir);
    let d = max_abs_diff(&logits(&base_dir), &logits(&scaled_dir)).unwrap();
    assert!(
        d <= 1e-3,
        "per-head q/k norm should cancel head scaling: {d}"
    );

    // The same two checkpoints read as Llama (no q/k norm): the scaling shows.
    let llama = ModelConfig {
        architecture: Architecture::Llama,
        ..qwen3.clone()
    };
    let llama_base = dir.path().join("llama-base");
    let llama_scaled = dir.path().join("llama-scaled");
    write_folder(&llama_base, &llama, &tensors, &base_dir);
    write_folder(&llama_scaled, &llama, &scaled, &base_dir);
    let d = max_abs_diff(&logits(&llama_base), &logits(&llama_scaled)).unwrap();
    assert!(d > 1e-2, "without the norm, scaling a head matters: {d}");

    // And the norm weights are used: doubling those of block 0's q_norm changes the output.
    let mut reweighted = tensors.clone();
    let (_, w) = reweighted
        .get_mut("model.layers.0.self_attn.q_norm.weight")
        .unwrap();
    w.iter_mut().for_each(|x| *x *= 2.0);
    let reweighted_dir = dir.path().join("reweighted");
    write_folder(&reweighted_dir, &qwen3, &reweighted, &base_dir);
    let d = max_abs_diff(&logits(&base_dir), &logits(&reweighted_dir)).unwrap();
    assert!(d > 1e-2, "q_norm weights should matter: {d}");
}
