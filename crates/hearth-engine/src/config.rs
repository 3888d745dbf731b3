//! The model's shape, normalised from Hugging Face `config.json` (transformers 4.x and 5.x) or
//! GGUF metadata into one [`ModelConfig`].
//!
//! Every difference between the supported families lives here, as data: which tensors a block
//! has ([`Architecture::block_tensors`], with shapes from [`ModelConfig::block_tensor_shape`]),
//! whether queries and keys are normalised per head, and how each format names and lays out
//! things. The block itself ([`crate::layers`]) only follows these flags.

use crate::error::{EngineError, Result};
use crate::weights::BlockTensor;
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Supported model families. All are pre-norm decoder-only transformers with RMSNorm, RoPE,
/// grouped-query attention and a SwiGLU MLP; they differ in biases, tying, RoPE details, q/k
/// norms and whether projections are stored fused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Meta's Llama 2/3 (HF `LlamaForCausalLM`): no biases.
    Llama,
    /// Mistral (HF `MistralForCausalLM`): Llama's shape, optionally with sliding-window attention.
    Mistral,
    /// Qwen2 (HF `Qwen2ForCausalLM`): biases on the q, k and v projections.
    Qwen2,
    /// Qwen3 (HF `Qwen3ForCausalLM`): a per-head RMSNorm on queries and keys before RoPE; the
    /// head width need not be `hidden / heads`.
    Qwen3,
    /// Phi-3 (HF `Phi3ForCausalLM`): q, k, v in one fused projection and gate, up in another.
    Phi3,
}

/// Every architecture, for help texts and errors.
const ALL_ARCHITECTURES: [Architecture; 5] = [
    Architecture::Llama,
    Architecture::Mistral,
    Architecture::Qwen2,
    Architecture::Qwen3,
    Architecture::Phi3,
];

impl Architecture {
    /// The `model_type` string of HF `config.json`.
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
        }
    }

    /// The HF `architectures[0]` class name.
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// The `general.architecture` value of GGUF, as llama.cpp's `llama-arch.cpp` spells it
    /// (llama.cpp writes Mistral as `llama`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama | Self::Mistral => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
        }
    }

    /// The RoPE layout of q/k weights in llama.cpp's GGUF files: its converter permutes the
    /// Llama family's rows into the interleaved layout and leaves NEOX-style families as HF has
    /// them.
    pub fn gguf_rope_layout(self) -> RopeLayout {
        match self {
            Self::Llama | Self::Mistral => RopeLayout::Interleaved,
            Self::Qwen2 | Self::Qwen3 | Self::Phi3 => RopeLayout::Half,
        }
    }

    /// Queries and keys get a per-head RMSNorm (weights of `head_dim`) after the projections and
    /// before RoPE.
    pub fn qk_norm(self) -> bool {
        self == Self::Qwen3
    }

    /// q, k and v are stored as one `[q_dim + 2 kv_dim, hidden]` matrix, and gate and up as one
    /// `[2 intermediate, hidden]` matrix (gate rows first).
    pub fn fused_projections(self) -> bool {
        self == Self::Phi3
    }

    /// Every tensor a block of this family may have, in [`BlockTensor::ALL`] order. The q/k/v
    /// biases are present only where [`ModelConfig::attention_bias`] is set.
    pub fn block_tensors(self) -> Vec<BlockTensor> {
        BlockTensor::ALL
            .into_iter()
            .filter(|t| match t {
                BlockTensor::Q
                | BlockTensor::K
                | BlockTensor::V
                | BlockTensor::QBias
                | BlockTensor::KBias
                | BlockTensor::VBias
                | BlockTensor::Gate
                | BlockTensor::Up => !self.fused_projections(),
                BlockTensor::Qkv | BlockTensor::GateUp => self.fused_projections(),
                BlockTensor::QNorm | BlockTensor::KNorm => self.qk_norm(),
                BlockTensor::AttnNorm
                | BlockTensor::O
                | BlockTensor::FfnNorm
                | BlockTensor::Down => true,
            })
            .collect()
    }

    fn from_name(name: &str) -> Option<Self> {
        ALL_ARCHITECTURES
            .into_iter()
            .find(|a| name == a.hf_model_type() || name == a.hf_class())
    }

    fn from_gguf_name(name: &str) -> Option<Self> {
        // Mistral shares `llama` and is read as Llama (the two compute the same function).
        ALL_ARCHITECTURES
            .into_iter()
            .find(|a| *a != Self::Mistral && name == a.gguf_name())
    }

    /// The architectures hearth runs under one naming scheme, for error messages.
    fn supported_list(name: fn(Self) -> &'static str) -> String {
        let mut names: Vec<&str> = ALL_ARCHITECTURES.into_iter().map(name).collect();
        names.dedup();
        names.join(", ")
    }
}

/// How the rotary embedding pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeLayout {
    /// Dimension `i` rotates with `i + d/2` (HF `rotate_half`, llama.cpp NEOX).
    Half,
    /// Dimension `2i` rotates with `2i + 1` (Meta's original layout; llama.cpp permutes the
    /// q/k weights of Llama-family GGUF files into it).
    Interleaved,
}

/// Frequency scaling applied to RoPE for long contexts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Llama 3.1's piecewise scaling (`rope_type: "llama3"`).
    Llama3 {
        /// Divisor of the low frequencies (wavelengths above `original / low_freq_factor`).
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are fully
        /// scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are left
        /// unscaled; those in between are interpolated.
        high_freq_factor: f64,
        /// Context length (positions) the model was pre-trained with, before scaling.
        original_max_position_embeddings: usize,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Divisor applied to every RoPE frequency (the context stretch).
        factor: f64,
    },
    /// Explicit per-frequency divisors, as GGUF files carry them in `rope_freqs.weight`.
    Factors(Vec<f32>),
}

/// A normalised model shape: everything needed to allocate and run blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Model family, which fixes biases, tying and RoPE details.
    pub architecture: Architecture,
    /// Width of the hidden states (the residual stream), in values per token.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP's gate and up projections.
    pub intermediate_size: usize,
    /// Number of transformer blocks; fits in `u32`.
    pub num_layers: usize,
    /// Query heads per block; a multiple of `num_kv_heads`.
    pub num_heads: usize,
    /// Key/value heads per block (grouped-query attention); divides `num_heads`.
    pub num_kv_heads: usize,
    /// Values per attention head; even (RoPE rotates pairs).
    pub head_dim: usize,
    /// Number of tokens in the vocabulary (rows of the embedding and head).
    pub vocab_size: usize,
    /// Epsilon added to the mean square in RMSNorm; in `(0, 1)`.
    pub rms_norm_eps: f64,
    /// RoPE base: frequency `i` of a head is `rope_theta^(-2i / head_dim)`; positive.
    pub rope_theta: f64,
    /// Long-context scaling of the RoPE frequencies, if the model uses any.
    pub rope_scaling: Option<RopeScaling>,
    /// Which dimensions of a head RoPE rotates together.
    pub rope_layout: RopeLayout,
    /// Longest context (positions) the model was trained for.
    pub max_position_embeddings: usize,
    /// The output head reuses the token embedding matrix instead of a tensor of its own.
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub attention_bias: bool,
    /// Attention only looks back this many positions (Mistral 7B v0.1).
    pub sliding_window: Option<usize>,
    /// Token the model expects at the start of a sequence, if it declares one.
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation (may be empty when the model declares none).
    pub eos_token_ids: Vec<u32>,
}

/// Reads typed fields from a JSON object and names the field and file in every error.
struct Fields<'a> {
    file: &'a Path,
    obj: &'a serde_json::Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| EngineError::config(self.file, key, "missing"))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    EngineError::config(
                        self.file,
                        key,
                        format!("expected an unsigned integer, got {v}"),
                    )
                }),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                EngineError::config(self.file, key, format!("expected a number, got {v}"))
            }),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                EngineError::config(self.file, key, format!("expected true/false, got {v}"))
            }),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                EngineError::config(self.file, key, format!("expected a string, got {v}"))
            }),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Value| {
            EngineError::config(
                self.file,
                key,
                format!("expected a token id or a list of ids, got {v}"),
            )
        };
        let as_id = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(v))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(as_id).collect(),
            Some(v) => Ok(vec![as_id(v)?]),
        }
    }
}

impl ModelConfig {
    /// Parses an HF `config.json`, as transformers 4.x (`rope_theta`, `rope_scaling`,
    /// `torch_dtype`) or 5.x (`rope_parameters`, `dtype`) writes it.
    pub fn from_hf_json(file: &Path, text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text).map_err(|e| EngineError::Format {
            path: file.to_path_buf(),
            format: "JSON",
            detail: e.to_string(),
        })?;
        let obj = root
            .as_object()
            .ok_or_else(|| EngineError::config(file, "<root>", "expected a JSON object"))?;
        let f = Fields { file, obj };

        let model_type = f.opt_str("model_type")?;
        let class = f
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str);
        let architecture = model_type
            .and_then(Architecture::from_name)
            .or_else(|| class.and_then(Architecture::from_name))
            .ok_or_else(|| EngineError::Unsupported {
                what: "architecture",
                detail: format!(
                    "{}: model_type {:?} / architectures {:?}; hearth runs {}",
                    file.display(),
                    model_type.unwrap_or("<none>"),
                    class.unwrap_or("<none>"),
                    Architecture::supported_list(Architecture::hf_model_type)
                ),
            })?;

        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };

        // transformers 5.x moves rope settings under `rope_parameters`; 4.x keeps `rope_theta`
        // top-level and the scaling under `rope_scaling`.
        let rope_params = f.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = match rope_params {
            Some(p) => Fields { file, obj: p }.opt_f64("rope_theta")?,
            None => None,
        };
        let rope_theta = match rope_theta {
            Some(t) => t,
            None => f.opt_f64("rope_theta")?.unwrap_or(10_000.0),
        };
        let scaling_obj = rope_params.or_else(|| f.get("rope_scaling").and_then(Value::as_object));
        let scaling_field = if rope_params.is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        let rope_scaling = match scaling_obj {
            None => None,
            Some(obj) => parse_hf_rope_scaling(file, scaling_field, obj)?,
        };
        // Phi-4-mini (a Phi3ForCausalLM) rotates 3/4 of each head (transformers 4.x keeps the
        // factor top-level, 5.x under `rope_parameters`).
        for (holder, field) in [
            (Some(obj), "partial_rotary_factor"),
            (rope_params, "rope_parameters.partial_rotary_factor"),
        ] {
            let Some(holder) = holder else { continue };
            let factor = Fields { file, obj: holder }.opt_f64("partial_rotary_factor")?;
            if let Some(factor) = factor.filter(|&x| x != 1.0) {
                return Err(EngineError::Unsupported {
                    what: "RoPE",
                    detail: format!(
                        "{}: {field} = {factor}: hearth rotates whole heads only",
                        file.display()
                    ),
                });
            }
        }

        let attention_bias = match architecture {
            Architecture::Qwen2 => true,
            // Phi-3's fused projection has no bias (its config has no such field).
            Architecture::Phi3 => false,
            _ => f.opt_bool("attention_bias")?.unwrap_or(false),
        };
        let sliding_window = match architecture {
            Architecture::Qwen2 | Architecture::Qwen3
                if !f.opt_bool("use_sliding_window")?.unwrap_or(false) =>
            {
                None
            }
            _ => f.opt_usize("sliding_window")?,
        };
        let tie_default = architecture == Architecture::Qwen2 && hidden_size <= 2048;
        let cfg = Self {
            architecture,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_layers: f.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: f.usize("vocab_size")?,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            rope_layout: RopeLayout::Half,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(tie_default),
            attention_bias,
            sliding_window,
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Reads the shape from GGUF metadata (`general.architecture` and `<arch>.*` keys).
    /// `tensor_names` tells whether biases, an untied head or RoPE factors are present.
    pub fn from_gguf(file: &Path, content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let arch_name = match md.get("general.architecture") {
            Some(gguf_file::Value::String(s)) => s.clone(),
            Some(v) => {
                return Err(EngineError::config(
                    file,
                    "general.architecture",
                    format!("expected a string, got {v:?}"),
                ))
            }
            None => return Err(EngineError::config(file, "general.architecture", "missing")),
        };
        let architecture =
            Architecture::from_gguf_name(&arch_name).ok_or_else(|| EngineError::Unsupported {
                what: "architecture",
                detail: format!(
                    "{}: general.architecture = {arch_name:?}; hearth runs {}",
                    file.display(),
                    Architecture::supported_list(Architecture::gguf_name)
                ),
            })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_u = |k: &str| -> Result<Option<usize>> {
            let full = key(k);
            match md.get(&full) {
                None => Ok(None),
                Some(v) => gguf_uint(v).map(Some).ok_or_else(|| {
                    EngineError::config(
                        file,
                        &full,
                        format!("expected an unsigned integer, got {v:?}"),
                    )
                }),
            }
        };
        let get_f = |k: &str| -> Result<Option<f64>> {
            let full = key(k);
            match md.get(&full) {
                None => Ok(None),
                Some(gguf_file::Value::F32(x)) => Ok(Some(*x as f64)),
                Some(gguf_file::Value::F64(x)) => Ok(Some(*x)),
                Some(v) => Err(EngineError::config(
                    file,
                    &full,
                    format!("expected a float, got {v:?}"),
                )),
            }
        };
        let need = |k: &str| -> Result<usize> {
            get_u(k)?.ok_or_else(|| EngineError::config(file, key(k), "missing"))
        };
        let hidden_size = need("embedding_length")?;
        let num_heads = need("attention.head_count")?;
        let num_kv_heads = get_u("attention.head_count_kv")?.unwrap_or(num_heads);
        let head_dim = match get_u("attention.key_length")? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        // hearth's heads have one width for keys and values, and RoPE turns all of it.
        for k in ["attention.value_length", "rope.dimension_count"] {
            if let Some(d) = get_u(k)?.filter(|&d| d != head_dim) {
                return Err(EngineError::Unsupported {
                    what: "head layout",
                    detail: format!(
                        "{}: {} = {d}, but the heads are {head_dim} wide",
                        file.display(),
                        key(k)
                    ),
                });
            }
        }
        // Phi-3's long-context RoPE ("longrope"/"su") travels as these two tensors.
        for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
            if content.tensor_infos.contains_key(name) {
                return Err(EngineError::Unsupported {
                    what: "RoPE scaling",
                    detail: format!(
                        "{}: tensor `{name}` holds Phi-3 long-context (longrope) RoPE factors, \
                         which hearth does not implement",
                        file.display()
                    ),
                });
            }
        }
        let vocab_size = match get_u("vocab_size")? {
            Some(v) => v,
            None => match content.tensor_infos.get("token_embd.weight") {
                Some(info) => info
                    .shape
                    .dims()
                    .iter()
                    .copied()
                    .find(|&d| d != hidden_size)
                    .unwrap_or(hidden_size),
                None => {
                    return Err(EngineError::MissingTensor {
                        file: file.to_path_buf(),
                        name: "token_embd.weight".into(),
                    })
                }
            },
        };
        let rope_scaling = match md.get(&key("rope.scaling.type")) {
            Some(gguf_file::Value::String(t)) if t == "linear" => {
                let factor = get_f("rope.scaling.factor")?.unwrap_or(1.0);
                Some(RopeScaling::Linear { factor })
            }
            Some(gguf_file::Value::String(t)) if t == "none" => None,
            Some(v) => {
                return Err(EngineError::Unsupported {
                    what: "RoPE scaling",
                    detail: format!("{}: {} = {v:?}", file.display(), key("rope.scaling.type")),
                })
            }
            // Llama 3.1-style scaling travels as the `rope_freqs.weight` tensor; the loader reads it.
            None => None,
        };
        let eos = match md.get("tokenizer.ggml.eos_token_id") {
            Some(v) => gguf_uint(v)
                .and_then(|n| u32::try_from(n).ok())
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        let bos = md
            .get("tokenizer.ggml.bos_token_id")
            .and_then(gguf_uint)
            .and_then(|n| u32::try_from(n).ok());
        let cfg = Self {
            architecture,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_layers: need("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            rope_theta: get_f("rope.freq_base")?.unwrap_or(10_000.0),
            rope_scaling,
            rope_layout: architecture.gguf_rope_layout(),
            max_position_embeddings: get_u("context_length")?.unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            sliding_window: get_u("attention.sliding_window")?.filter(|&w| w > 0),
            bos_token_id: bos,
            eos_token_ids: eos,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Checks the internal consistency of the shape.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(EngineError::config(file, field, "must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(EngineError::config(
                file,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads = {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(EngineError::config(
                file,
                "head_dim",
                "must be even for RoPE",
            ));
        }
        if self.num_layers > u32::MAX as usize {
            return Err(EngineError::config(file, "num_hidden_layers", "too large"));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(EngineError::config(
                file,
                "rms_norm_eps",
                "must be in (0, 1)",
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(EngineError::config(file, "rope_theta", "must be positive"));
        }
        if self.attention_bias && self.architecture.fused_projections() {
            return Err(EngineError::config(
                file,
                "attention_bias",
                format!(
                    "{:?} stores q, k and v fused, without biases",
                    self.architecture
                ),
            ));
        }
        Ok(())
    }

    /// [`Self::num_layers`] as a block count (validated to fit in `u32`).
    pub fn num_blocks(&self) -> u32 {
        self.num_layers as u32
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Parameters of one transformer block (weights and norms, no biases).
    pub fn block_params(&self) -> usize {
        self.architecture
            .block_tensors()
            .into_iter()
            .filter(|t| !t.is_bias())
            .map(|t| self.block_tensor_shape(t).iter().product::<usize>())
            .sum()
    }

    /// Row-major shape of block tensor `t` (`[out, in]` for a matrix).
    pub fn block_tensor_shape(&self, t: BlockTensor) -> Vec<usize> {
        let (h, q, kv, ff) = (
            self.hidden_size,
            self.q_dim(),
            self.kv_dim(),
            self.intermediate_size,
        );
        match t {
            BlockTensor::AttnNorm | BlockTensor::FfnNorm => vec![h],
            BlockTensor::Q => vec![q, h],
            BlockTensor::K | BlockTensor::V => vec![kv, h],
            BlockTensor::Qkv => vec![q + 2 * kv, h],
            BlockTensor::O => vec![h, q],
            BlockTensor::QBias => vec![q],
            BlockTensor::KBias | BlockTensor::VBias => vec![kv],
            BlockTensor::QNorm | BlockTensor::KNorm => vec![self.head_dim],
            BlockTensor::Gate | BlockTensor::Up => vec![ff, h],
            BlockTensor::GateUp => vec![2 * ff, h],
            BlockTensor::Down => vec![h, ff],
        }
    }

    /// The tensors each block of this model has, with their shapes, in [`BlockTensor::ALL`]
    /// order: its architecture's, less the biases unless [`Self::attention_bias`] is set.
    pub fn block_tensors(&self) -> Vec<(BlockTensor, Vec<usize>)> {
        self.architecture
            .block_tensors()
            .into_iter()
            .filter(|t| self.attention_bias || !t.is_bias())
            .map(|t| (t, self.block_tensor_shape(t)))
            .collect()
    }

    /// Writes an HF `config.json` (transformers 4.x layout) for this shape.
    pub fn to_hf_json(&self, dtype: &str) -> Value {
        let mut obj = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.hf_model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
        });
        match self.architecture {
            Architecture::Llama | Architecture::Mistral | Architecture::Qwen3 => {
                obj["attention_bias"] = Value::Bool(self.attention_bias);
            }
            Architecture::Qwen2 => {}
            Architecture::Phi3 => {
                obj["original_max_position_embeddings"] = self.max_position_embeddings.into();
            }
        }
        if let Some(w) = self.sliding_window {
            obj["sliding_window"] = w.into();
            if matches!(self.architecture, Architecture::Qwen2 | Architecture::Qwen3) {
                obj["use_sliding_window"] = Value::Bool(true);
            }
        }
        if let Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) = &self.rope_scaling
        {
            obj["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            });
        }
        obj
    }
}

fn parse_hf_rope_scaling(
    file: &Path,
    field: &str,
    obj: &serde_json::Map<String, Value>,
) -> Result<Option<RopeScaling>> {
    let f = Fields { file, obj };
    let (kind_key, kind) = match f.opt_str("rope_type")? {
        Some(t) => ("rope_type", t),
        None => ("type", f.opt_str("type")?.unwrap_or("default")),
    };
    let need_f = |k: &str| -> Result<f64> {
        f.opt_f64(k)?
            .ok_or_else(|| EngineError::config(file, format!("{field}.{k}"), "missing"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: need_f("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: need_f("factor")?,
            low_freq_factor: need_f("low_freq_factor")?,
            high_freq_factor: need_f("high_freq_factor")?,
            original_max_position_embeddings: f
                .opt_usize("original_max_position_embeddings")?
                .ok_or_else(|| {
                    EngineError::config(
                        file,
                        format!("{field}.original_max_position_embeddings"),
                        "missing",
                    )
                })?,
        })),
        "longrope" | "su" => Err(EngineError::Unsupported {
            what: "RoPE scaling",
            detail: format!(
                "{}: {field}.{kind_key} = {kind:?}: Phi-3's long-context RoPE (long_factor / \
                 short_factor) is not implemented; use a model with `{field}: null` (Phi-3 4k)",
                file.display()
            ),
        }),
        other => Err(EngineError::Unsupported {
            what: "RoPE scaling",
            detail: format!(
                "{}: {field}.{kind_key} = {other:?} (supported: default, linear, llama3)",
                file.display()
            ),
        }),
    }
}

/// Any unsigned or non-negative integer GGUF value.
pub(crate) fn gguf_uint(v: &gguf_file::Value) -> Option<usize> {
    use gguf_file::Value as V;
    let n: u64 = match *v {
        V::U8(x) => x.into(),
        V::U16(x) => x.into(),
        V::U32(x) => x.into(),
        V::U64(x) => x,
        V::I8(x) => u64::try_from(x).ok()?,
        V::I16(x) => u64::try_from(x).ok()?,
        V::I32(x) => u64::try_from(x).ok()?,
        V::I64(x) => u64::try_from(x).ok()?,
        _ => return None,
    };
    usize::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA31_V4: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
      "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
      "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]
    }"#;

    const LLAMA31_V5: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
      "rms_norm_eps": 1e-05, "max_position_embeddings": 131072,
      "rope_parameters": {"rope_theta": 500000.0, "factor": 8.0, "high_freq_factor": 4.0,
                          "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
                          "rope_type": "llama3"},
      "tie_word_embeddings": false, "dtype": "bfloat16",
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]
    }"#;

    #[test]
    fn transformers_4_and_5_layouts_agree() {
        let p = Path::new("config.json");
        let v4 = ModelConfig::from_hf_json(p, LLAMA31_V4).unwrap();
        let v5 = ModelConfig::from_hf_json(p, LLAMA31_V5).unwrap();
        assert_eq!(v4, v5);
        assert_eq!(v4.head_dim, 128);
        assert_eq!(v4.rope_theta, 500000.0);
        assert_eq!(v4.eos_token_ids, vec![128001, 128008, 128009]);
        assert!(
            matches!(v4.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
    }

    #[test]
    fn qwen2_has_bias_and_ignores_disabled_sliding_window() {
        let text = r#"{"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "vocab_size": 151936, "rope_theta": 1000000.0, "sliding_window": 32768,
            "use_sliding_window": false, "tie_word_embeddings": true, "eos_token_id": 151643}"#;
        let c = ModelConfig::from_hf_json(Path::new("c.json"), text).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert!(c.attention_bias && c.tie_word_embeddings);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.eos_token_ids, vec![151643]);
    }

    #[test]
    fn errors_name_the_field() {
        let p = Path::new("/m/config.json");
        let err = ModelConfig::from_hf_json(p, r#"{"model_type": "llama", "hidden_size": 64}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_attention_heads") && err.contains("/m/config.json"),
            "{err}"
        );

        let err = ModelConfig::from_hf_json(p, r#"{"model_type": "gpt_neox"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gpt_neox") && err.contains("unsupported"),
            "{err}"
        );

        let bad_type = LLAMA31_V4.replace("\"hidden_size\": 4096", "\"hidden_size\": \"big\"");
        let err = ModelConfig::from_hf_json(p, &bad_type)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_size"), "{err}");

        let yarn = LLAMA31_V4.replace("\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"");
        let err = ModelConfig::from_hf_json(p, &yarn).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");

        let kv = LLAMA31_V4.replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 7");
        let err = ModelConfig::from_hf_json(p, &kv).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");

        assert!(ModelConfig::from_hf_json(p, "{ not json").is_err());
    }

    /// Qwen/Qwen3-0.6B's config.json (transformers 4.51).
    const QWEN3_06B: &str = r#"{
      "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
      "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
      "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
      "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
      "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
      "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
      "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
      "vocab_size": 151936
    }"#;

    /// microsoft/Phi-3-mini-4k-instruct's config.json.
    const PHI3_MINI_4K: &str = r#"{
      "architectures": ["Phi3ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
      "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072,
      "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 4096,
      "model_type": "phi3", "num_attention_heads": 32, "num_hidden_layers": 32,
      "num_key_value_heads": 32, "original_max_position_embeddings": 4096, "pad_token_id": 32000,
      "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
      "sliding_window": 2047, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "transformers_version": "4.40.2", "use_cache": true, "vocab_size": 32064
    }"#;

    #[test]
    fn qwen3_has_wide_heads_and_qk_norms() {
        let c = ModelConfig::from_hf_json(Path::new("c.json"), QWEN3_06B).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!((c.head_dim, c.q_dim(), c.hidden_size), (128, 2048, 1024));
        assert!(c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.rope_layout, RopeLayout::Half);
        let tensors: Vec<BlockTensor> = c.block_tensors().into_iter().map(|(t, _)| t).collect();
        assert!(tensors.contains(&BlockTensor::QNorm) && tensors.contains(&BlockTensor::KNorm));
        assert!(!tensors.contains(&BlockTensor::QBias));
        assert_eq!(c.block_tensor_shape(BlockTensor::KNorm), vec![128]);
        assert_eq!(c.block_tensor_shape(BlockTensor::O), vec![1024, 2048]);
    }

    #[test]
    fn phi3_is_fused_with_a_sliding_window() {
        let c = ModelConfig::from_hf_json(Path::new("c.json"), PHI3_MINI_4K).unwrap();
        assert_eq!(c.architecture, Architecture::Phi3);
        assert_eq!((c.head_dim, c.num_kv_heads), (96, 32));
        assert_eq!(c.sliding_window, Some(2047));
        assert!(!c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![32000]);
        let tensors: Vec<BlockTensor> = c.block_tensors().into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            tensors,
            [
                BlockTensor::AttnNorm,
                BlockTensor::O,
                BlockTensor::FfnNorm,
                BlockTensor::Down,
                BlockTensor::Qkv,
                BlockTensor::GateUp
            ]
        );
        assert_eq!(c.block_tensor_shape(BlockTensor::Qkv), vec![3 * 3072, 3072]);
        assert_eq!(
            c.block_tensor_shape(BlockTensor::GateUp),
            vec![2 * 8192, 3072]
        );
        // Same parameter count as the unfused layout.
        let unfused = ModelConfig {
            architecture: Architecture::Llama,
            ..c.clone()
        };
        assert_eq!(c.block_params(), unfused.block_params());
    }

    #[test]
    fn phi3_long_context_rope_is_refused_naming_the_field() {
        let p = Path::new("/m/config.json");
        let longrope = PHI3_MINI_4K.replace(
            "\"rope_scaling\": null",
            r#""rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}"#,
        );
        let err = ModelConfig::from_hf_json(p, &longrope)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rope_scaling.type") && err.contains("longrope"),
            "{err}"
        );
        let su = longrope.replace("longrope", "su");
        let err = ModelConfig::from_hf_json(p, &su).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.type = \"su\""), "{err}");

        let partial = PHI3_MINI_4K.replace(
            "\"rope_theta\": 10000.0",
            "\"rope_theta\": 10000.0, \"partial_rotary_factor\": 0.75",
        );
        let err = ModelConfig::from_hf_json(p, &partial)
            .unwrap_err()
            .to_string();
        assert!(err.contains("partial_rotary_factor"), "{err}");
    }

    #[test]
    fn fused_projections_have_no_biases() {
        let mut c = ModelConfig::from_hf_json(Path::new("c.json"), PHI3_MINI_4K).unwrap();
        c.attention_bias = true;
        let err = c.validate(Path::new("c.json")).unwrap_err().to_string();
        assert!(err.contains("attention_bias"), "{err}");
    }

    /// GGUF metadata of a small Phi-3 plus the given tensors (for the config reader only).
    fn phi3_gguf(extra_md: &[(&str, u32)], tensors: &[&str]) -> gguf_file::Content {
        use candle_core::quantized::GgmlDType;
        use gguf_file::Value as V;
        let mut metadata: std::collections::HashMap<String, V> = [
            ("general.architecture", V::String("phi3".into())),
            ("phi3.embedding_length", V::U32(256)),
            ("phi3.feed_forward_length", V::U32(512)),
            ("phi3.block_count", V::U32(2)),
            ("phi3.attention.head_count", V::U32(4)),
            ("phi3.attention.head_count_kv", V::U32(4)),
            ("phi3.attention.sliding_window", V::U32(2047)),
            ("phi3.vocab_size", V::U32(512)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra_md {
            metadata.insert(k.to_string(), V::U32(*v));
        }
        let tensor_infos = tensors
            .iter()
            .map(|name| {
                let info = gguf_file::TensorInfo {
                    ggml_dtype: GgmlDType::F32,
                    shape: candle_core::Shape::from(vec![32]),
                    offset: 0,
                };
                (name.to_string(), info)
            })
            .collect();
        gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos,
            tensor_data_offset: 0,
        }
    }

    #[test]
    fn phi3_gguf_reads_its_window_and_refuses_long_context_rope() {
        let p = Path::new("/m/phi3.gguf");
        let c = ModelConfig::from_gguf(p, &phi3_gguf(&[], &["output.weight"])).unwrap();
        assert_eq!(c.architecture, Architecture::Phi3);
        assert_eq!(
            (c.sliding_window, c.rope_layout),
            (Some(2047), RopeLayout::Half)
        );
        assert!(!c.tie_word_embeddings);

        let longrope = phi3_gguf(
            &[],
            &["rope_factors_long.weight", "rope_factors_short.weight"],
        );
        let err = ModelConfig::from_gguf(p, &longrope)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rope_factors_long.weight") && err.contains("phi3.gguf"),
            "{err}"
        );

        let partial = phi3_gguf(&[("phi3.rope.dimension_count", 48)], &[]);
        let err = ModelConfig::from_gguf(p, &partial).unwrap_err().to_string();
        assert!(err.contains("phi3.rope.dimension_count"), "{err}");
    }

    #[test]
    fn architecture_names_round_trip() {
        for a in ALL_ARCHITECTURES {
            assert_eq!(Architecture::from_name(a.hf_model_type()), Some(a));
            assert_eq!(Architecture::from_name(a.hf_class()), Some(a));
            let from_gguf = Architecture::from_gguf_name(a.gguf_name());
            let expected = if a == Architecture::Mistral {
                Architecture::Llama
            } else {
                a
            };
            assert_eq!(from_gguf, Some(expected));
        }
        assert_eq!(Architecture::from_gguf_name("gemma2"), None);
    }

    #[test]
    fn hf_json_round_trips() {
        for source in [LLAMA31_V4, QWEN3_06B, PHI3_MINI_4K] {
            let c = ModelConfig::from_hf_json(Path::new("c"), source).unwrap();
            let text = c.to_hf_json("bfloat16").to_string();
            assert_eq!(ModelConfig::from_hf_json(Path::new("c"), &text).unwrap(), c);
        }
    }
}
