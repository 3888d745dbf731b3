//! Deterministic random-initialised models of real shapes, written as an HF folder and/or a GGUF
//! file, so that tests, benchmarks and the demo need no model hub.
//!
//! Every tensor is drawn from ChaCha8 seeded by `(seed, HF tensor name)`, so the HF folder and the
//! GGUF file of the same shape and seed hold the same values (GGUF's q/k rows permuted for
//! llama.cpp's interleaved RoPE, exactly as `convert_hf_to_gguf.py` does).

use crate::config::{Architecture, ModelConfig, RopeLayout, RopeScaling};
use crate::error::{EngineError, Result};
use crate::layers::Rope;
use crate::weights::{BlockTensor, TensorRole};
use crate::writer::{write_gguf, write_safetensors, SafetensorsSpec, TensorSpec};
use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use hearth_tokenizer::SyntheticVocab;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Named shapes `hearth model synth` can write.
pub const SHAPES: &[&str] = &[
    "tiny",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-phi3",
    "llama-3.2-1b",
    "qwen2.5-0.5b",
    "llama-3-8b",
    "mistral-7b",
];

/// The configuration of a named shape (real shapes copy their models' `config.json`).
pub fn shape(name: &str) -> Result<ModelConfig> {
    let llama = |hidden, inter, layers, heads, kv, vocab, theta: f64, tie| ModelConfig {
        architecture: Architecture::Llama,
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hidden / heads,
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: theta,
        rope_scaling: None,
        rope_layout: RopeLayout::Half,
        max_position_embeddings: 8192,
        tie_word_embeddings: tie,
        attention_bias: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    };
    let llama3_scaling = |factor| {
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        })
    };
    Ok(match name {
        // Small enough for tests; exercises GQA and Llama 3.1 RoPE scaling. Widths are multiples
        // of 256 so every GGUF quantization applies.
        "tiny" => ModelConfig {
            rope_scaling: llama3_scaling(8.0),
            max_position_embeddings: 4096,
            ..llama(256, 512, 6, 4, 2, 512, 500_000.0, false)
        },
        // Qwen2 features: q/k/v biases, tied embeddings, NEOX RoPE in GGUF.
        "tiny-qwen2" => ModelConfig {
            architecture: Architecture::Qwen2,
            attention_bias: true,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 4096,
            ..llama(256, 768, 5, 4, 1, 512, 1_000_000.0, true)
        },
        // Qwen3 features: per-head q/k norms, heads wider than hidden / heads (q_dim 512 over a
        // hidden size of 256, as Qwen3-0.6B has 2048 over 1024), tied embeddings.
        "tiny-qwen3" => ModelConfig {
            architecture: Architecture::Qwen3,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 4096,
            ..llama(256, 768, 5, 4, 2, 512, 1_000_000.0, true)
        },
        // Phi-3 features: fused qkv and gate/up projections, untied head, and Phi-3-mini-4k's
        // sliding window (2047 of a 4096 context).
        "tiny-phi3" => ModelConfig {
            architecture: Architecture::Phi3,
            sliding_window: Some(2047),
            max_position_embeddings: 4096,
            ..llama(256, 512, 4, 4, 2, 512, 10_000.0, false)
        },
        "llama-3.2-1b" => ModelConfig {
            rope_scaling: llama3_scaling(32.0),
            max_position_embeddings: 131_072,
            ..llama(2048, 8192, 16, 32, 8, 128_256, 500_000.0, true)
        },
        "qwen2.5-0.5b" => ModelConfig {
            architecture: Architecture::Qwen2,
            attention_bias: true,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 32_768,
            ..llama(896, 4864, 24, 14, 2, 151_936, 1_000_000.0, true)
        },
        "llama-3-8b" => llama(4096, 14336, 32, 32, 8, 128_256, 500_000.0, false),
        "mistral-7b" => ModelConfig {
            architecture: Architecture::Mistral,
            max_position_embeddings: 32_768,
            ..llama(4096, 14336, 32, 32, 8, 32_768, 1_000_000.0, false)
        },
        other => {
            return Err(EngineError::Unsupported {
                what: "shape",
                detail: format!("{other:?}; known shapes: {}", SHAPES.join(", ")),
            })
        }
    })
}

/// Knobs for synthesis.
#[derive(Clone, Debug, Default)]
pub struct SynthOptions {
    /// Seed of the tensor values: the same shape and seed give the same model in every format.
    pub seed: u64,
    /// Split HF weights into shards of at most this many bytes (`model-0000X-of-0000N`).
    pub shard_bytes: Option<u64>,
}

/// A shape with its synthetic byte-level vocabulary wired in (bos/eos ids).
pub struct SynthModel {
    /// The shape, with `bos_token_id` and `eos_token_ids` set to the synthetic vocabulary's.
    pub config: ModelConfig,
    vocab: SyntheticVocab,
    seed: u64,
}

impl SynthModel {
    /// Wires a synthetic vocabulary of `config.vocab_size` tokens into `config` and validates it;
    /// `seed` fixes every tensor's values.
    pub fn new(mut config: ModelConfig, seed: u64) -> Result<Self> {
        let vocab = SyntheticVocab::new(config.vocab_size)?;
        config.bos_token_id = Some(vocab.bos_id());
        config.eos_token_ids = vec![vocab.eos_id()];
        config.validate(Path::new("<synth>"))?;
        Ok(Self {
            config,
            vocab,
            seed,
        })
    }

    /// Tensors in checkpoint order with their row-major shapes.
    fn tensors(&self) -> Vec<(TensorRole, Vec<usize>)> {
        let c = &self.config;
        let h = c.hidden_size;
        let mut out = vec![(TensorRole::Embed, vec![c.vocab_size, h])];
        let block = c.block_tensors();
        for i in 0..c.num_blocks() {
            out.extend(
                block
                    .iter()
                    .map(|(t, dims)| (TensorRole::Block(i, *t), dims.clone())),
            );
        }
        out.push((TensorRole::FinalNorm, vec![h]));
        if !c.tie_word_embeddings {
            out.push((TensorRole::LmHead, vec![c.vocab_size, h]));
        }
        out
    }

    /// The values of one tensor, in HF layout.
    fn values(&self, role: TensorRole, dims: &[usize]) -> Vec<f32> {
        let name = role.hf_name();
        let mut seed = [0u8; 32];
        let digest = hearth_core::ContentHasher::new("synth-tensor")
            .field(&self.seed.to_le_bytes())
            .field(name.as_bytes())
            .finish();
        seed.copy_from_slice(&digest.0);
        let mut rng = ChaCha8Rng::from_seed(seed);
        let n: usize = dims.iter().product();
        // Uniform in [-1, 1) from the top 24 bits: exact in f32 and identical on every machine.
        let mut uniform = move || (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0;
        let (scale, offset) = match role {
            TensorRole::FinalNorm
            | TensorRole::Block(
                _,
                BlockTensor::AttnNorm
                | BlockTensor::FfnNorm
                | BlockTensor::QNorm
                | BlockTensor::KNorm,
            ) => (0.1, 1.0),
            TensorRole::Block(_, BlockTensor::QBias | BlockTensor::KBias | BlockTensor::VBias) => {
                (0.1, 0.0)
            }
            TensorRole::Embed => (1.0, 0.0),
            // Unit gain: sqrt(3 / fan_in) makes a uniform weight's output variance match its input's.
            _ => ((3.0 / *dims.last().unwrap_or(&1) as f32).sqrt(), 0.0),
        };
        (0..n).map(|_| offset + scale * uniform()).collect()
    }

    /// Writes an HF folder: config.json, safetensors (sharded if asked), tokenizer files.
    pub fn write_hf(
        &self,
        dir: &Path,
        dtype: candle_core::DType,
        opts: &SynthOptions,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        let (dtype_name, st_dtype, elem) = match dtype {
            candle_core::DType::F32 => ("float32", "F32", 4),
            candle_core::DType::F16 => ("float16", "F16", 2),
            candle_core::DType::BF16 => ("bfloat16", "BF16", 2),
            other => {
                return Err(EngineError::Unsupported {
                    what: "HF dtype",
                    detail: format!("{other:?}; choose f32, f16 or bf16"),
                })
            }
        };
        let write_text = |name: &str, text: String| -> Result<()> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| EngineError::io(&p, e))
        };
        let config_json =
            serde_json::to_string_pretty(&self.config.to_hf_json(dtype_name)).unwrap_or_default();
        write_text("config.json", config_json)?;
        write_text("tokenizer.json", self.vocab.tokenizer_json())?;
        write_text("tokenizer_config.json", self.vocab.tokenizer_config_json())?;

        let tensors = self.tensors();
        let specs: Vec<SafetensorsSpec> = tensors
            .iter()
            .map(|(role, dims)| SafetensorsSpec {
                name: role.hf_name(),
                dims: dims.clone(),
                dtype: st_dtype,
                bytes: dims.iter().product::<usize>() * elem,
            })
            .collect();
        // Greedy packing into shards, in checkpoint order.
        let limit = opts.shard_bytes.unwrap_or(u64::MAX);
        let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
        let mut size = 0u64;
        for (i, s) in specs.iter().enumerate() {
            let last = shards.last_mut().expect("at least one shard");
            if !last.is_empty() && size + s.bytes as u64 > limit {
                shards.push(vec![i]);
                size = s.bytes as u64;
            } else {
                last.push(i);
                size += s.bytes as u64;
            }
        }
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        for (k, members) in shards.iter().enumerate() {
            let file_name = if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", k + 1)
            };
            let path = dir.join(&file_name);
            let shard_specs: Vec<SafetensorsSpec> = members
                .iter()
                .map(|&i| SafetensorsSpec {
                    name: specs[i].name.clone(),
                    dims: specs[i].dims.clone(),
                    dtype: st_dtype,
                    bytes: specs[i].bytes,
                })
                .collect();
            for s in &shard_specs {
                weight_map.insert(s.name.clone(), serde_json::Value::String(file_name.clone()));
            }
            let mut w = BufWriter::new(File::create(&path).map_err(|e| EngineError::io(&path, e))?);
            write_safetensors(&mut w, &shard_specs, |j| {
                let (role, dims) = &tensors[members[j]];
                let v = self.values(*role, dims);
                Ok(encode_dense(&v, dtype))
            })
            .and_then(|_| w.flush())
            .map_err(|e| EngineError::io(&path, e))?;
        }
        if n > 1 {
            let total: usize = specs.iter().map(|s| s.bytes).sum();
            let index =
                serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            write_text(
                "model.safetensors.index.json",
                serde_json::to_string_pretty(&index).unwrap_or_default(),
            )?;
        }
        Ok(())
    }

    /// Writes a GGUF file with weights in `quant` (F32, F16, Q8_0, Q4_0, Q4_K, ...) and the
    /// tokenizer in its metadata. Norms stay F32, as llama.cpp keeps them; a matrix whose rows do
    /// not divide into `quant` blocks falls back to Q8_0, then F16, as llama.cpp's quantizer does.
    pub fn write_gguf(&self, path: &Path, quant: GgmlDType) -> Result<()> {
        let c = &self.config;
        let arch = c.architecture.gguf_name();
        let mut md: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            ("general.name".into(), Value::String("hearth-synth".into())),
            ("general.file_type".into(), Value::U32(file_type(quant))),
            ("general.quantization_version".into(), Value::U32(2)),
        ];
        let a = |k: &str| format!("{arch}.{k}");
        md.push((a("block_count"), Value::U32(c.num_layers as u32)));
        md.push((
            a("context_length"),
            Value::U32(c.max_position_embeddings as u32),
        ));
        md.push((a("embedding_length"), Value::U32(c.hidden_size as u32)));
        md.push((
            a("feed_forward_length"),
            Value::U32(c.intermediate_size as u32),
        ));
        md.push((a("attention.head_count"), Value::U32(c.num_heads as u32)));
        md.push((
            a("attention.head_count_kv"),
            Value::U32(c.num_kv_heads as u32),
        ));
        md.push((a("attention.key_length"), Value::U32(c.head_dim as u32)));
        md.push((a("attention.value_length"), Value::U32(c.head_dim as u32)));
        md.push((
            a("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ));
        md.push((a("rope.freq_base"), Value::F32(c.rope_theta as f32)));
        md.push((a("rope.dimension_count"), Value::U32(c.head_dim as u32)));
        md.push((a("vocab_size"), Value::U32(c.vocab_size as u32)));
        if let Some(w) = c.sliding_window {
            md.push((a("attention.sliding_window"), Value::U32(w as u32)));
        }
        md.extend(self.vocab.gguf_metadata());

        let interleave = c.architecture.gguf_rope_layout() == RopeLayout::Interleaved;
        let mut tensors: Vec<(TensorRole, Vec<usize>)> = self.tensors();
        if c.rope_scaling.is_some() {
            tensors.push((TensorRole::RopeFreqs, vec![c.head_dim / 2]));
        }
        let specs: Vec<TensorSpec> = tensors
            .iter()
            .map(|(role, dims)| TensorSpec {
                name: role.gguf_name(),
                dims: dims.clone(),
                dtype: gguf_dtype_for(dims, quant),
            })
            .collect();
        let rope_factors = Rope::freq_factors(c)?;
        let mut w = BufWriter::new(File::create(path).map_err(|e| EngineError::io(path, e))?);
        write_gguf(&mut w, &md, &specs, |i| {
            let (role, dims) = &tensors[i];
            let mut v = if *role == TensorRole::RopeFreqs {
                rope_factors.clone()
            } else {
                self.values(*role, dims)
            };
            if interleave {
                match role {
                    TensorRole::Block(_, BlockTensor::Q | BlockTensor::QBias) => {
                        v = permute_rows(&v, c.num_heads, dims)
                    }
                    TensorRole::Block(_, BlockTensor::K | BlockTensor::KBias) => {
                        v = permute_rows(&v, c.num_kv_heads, dims)
                    }
                    _ => {}
                }
            }
            encode_ggml(v, dims, specs[i].dtype)
        })
        .and_then(|_| w.flush())
        .map_err(|e| EngineError::io(path, e))
    }
}

/// llama.cpp's `llama_ftype` for a file mostly in `quant` (`general.file_type`).
pub(crate) fn file_type(quant: GgmlDType) -> u32 {
    match quant {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 12,
        GgmlDType::Q4K => 15,
        GgmlDType::Q5K => 17,
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        _ => 0,
    }
}

/// The type a tensor of row-major `dims` is stored in when a file is written in `quant`: vectors
/// stay F32; a matrix whose rows do not divide into `quant` blocks falls back to Q8_0, then F16.
pub(crate) fn gguf_dtype_for(dims: &[usize], quant: GgmlDType) -> GgmlDType {
    if dims.len() < 2 {
        return GgmlDType::F32;
    }
    let k = *dims.last().unwrap_or(&0);
    [quant, GgmlDType::Q8_0, GgmlDType::F16]
        .into_iter()
        .find(|d| k.is_multiple_of(d.block_size()))
        .unwrap_or(GgmlDType::F32)
}

/// Reorders each head's rows from HF's half-split RoPE layout to llama.cpp's interleaved one.
fn permute_rows(v: &[f32], n_head: usize, dims: &[usize]) -> Vec<f32> {
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let hd = rows / n_head;
    let mut out = vec![0f32; v.len()];
    for h in 0..n_head {
        for j in 0..hd / 2 {
            for s in 0..2 {
                let dst = h * hd + 2 * j + s;
                let src = h * hd + s * (hd / 2) + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn encode_dense(v: &[f32], dtype: candle_core::DType) -> Vec<u8> {
    match dtype {
        candle_core::DType::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        candle_core::DType::BF16 => v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The stored bytes of row-major values `v` of shape `dims` in `dtype`, quantized by candle.
pub(crate) fn encode_ggml(v: Vec<f32>, dims: &[usize], dtype: GgmlDType) -> io::Result<Vec<u8>> {
    match dtype {
        GgmlDType::F32 => Ok(encode_dense(&v, candle_core::DType::F32)),
        GgmlDType::F16 => Ok(encode_dense(&v, candle_core::DType::F16)),
        GgmlDType::BF16 => Ok(encode_dense(&v, candle_core::DType::BF16)),
        q => {
            let t = Tensor::from_vec(v, dims, &Device::Cpu).map_err(io::Error::other)?;
            let qt = QTensor::quantize(&t, q).map_err(io::Error::other)?;
            Ok(qt.data().map_err(io::Error::other)?.into_owned())
        }
    }
}

/// Parses a quantization name as llama.cpp spells it (`q4_0`, `Q8_0`, `q4_k`, `f16`...).
pub fn parse_quant(name: &str) -> Result<GgmlDType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q8_0" => GgmlDType::Q8_0,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" => GgmlDType::Q3K,
        "q4_k" | "q4_k_m" => GgmlDType::Q4K,
        "q5_k" | "q5_k_m" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        other => {
            return Err(EngineError::Unsupported {
                what: "quantization",
                detail: format!("{other:?}; choose f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k"),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp_convert() {
        // One head of dim 4 over 1 column: HF rows [a0 a1 b0 b1] -> GGUF [a0 b0 a1 b1].
        let v = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(permute_rows(&v, 1, &[4, 1]), vec![0.0, 2.0, 1.0, 3.0]);
    }

    #[test]
    fn every_named_shape_is_valid() {
        for name in SHAPES {
            let cfg = shape(name).unwrap();
            cfg.validate(Path::new(name)).unwrap();
        }
        assert!(shape("gpt-5").is_err());
    }

    #[test]
    fn fallback_quant_for_odd_widths() {
        assert_eq!(gguf_dtype_for(&[896, 896], GgmlDType::Q4K), GgmlDType::Q8_0);
        assert_eq!(gguf_dtype_for(&[512, 256], GgmlDType::Q4K), GgmlDType::Q4K);
        assert_eq!(gguf_dtype_for(&[256], GgmlDType::Q4_0), GgmlDType::F32);
    }
}
