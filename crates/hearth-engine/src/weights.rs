//! Reading individual tensors from HF safetensors folders and GGUF files.
//!
//! Files are memory-mapped only while a slice is being loaded and only the requested tensors are
//! touched, so a node that serves blocks `[a, b)` never pages in the rest of the model. Every
//! offset read from a file header is checked against the file's real length before use.

use crate::error::{EngineError, Result};
use crate::kernels;
use candle_core::quantized::{gguf_file, GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A tensor's role in the model, independent of the file format's naming scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorRole {
    /// Token embedding table `[vocab, hidden]`.
    Embed,
    /// RMSNorm weight applied after the last block, before the output head.
    FinalNorm,
    /// Output projection `[vocab, hidden]` to logits (absent when tied to the embeddings).
    LmHead,
    /// Per-frequency RoPE divisors (GGUF `rope_freqs.weight`, Llama 3.1 scaling).
    RopeFreqs,
    /// Tensor `.1` of block (layer) `.0`, counting blocks from 0.
    Block(u32, BlockTensor),
}

/// The tensors of one transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockTensor {
    /// RMSNorm weight before attention (HF `input_layernorm`).
    AttnNorm,
    /// Query projection `[heads * head_dim, hidden]`.
    Q,
    /// Key projection `[kv_heads * head_dim, hidden]`.
    K,
    /// Value projection `[kv_heads * head_dim, hidden]`.
    V,
    /// Attention output projection `[hidden, heads * head_dim]`.
    O,
    /// Bias of the query projection (Qwen2 only).
    QBias,
    /// Bias of the key projection (Qwen2 only).
    KBias,
    /// Bias of the value projection (Qwen2 only).
    VBias,
    /// RMSNorm weight before the MLP (HF `post_attention_layernorm`).
    FfnNorm,
    /// MLP gate projection `[intermediate, hidden]` (SwiGLU: `silu(gate) * up`).
    Gate,
    /// MLP up projection `[intermediate, hidden]`.
    Up,
    /// MLP down projection `[hidden, intermediate]`.
    Down,
    /// Per-head RMSNorm weight applied to queries before RoPE `[head_dim]` (Qwen3).
    QNorm,
    /// Per-head RMSNorm weight applied to keys before RoPE `[head_dim]` (Qwen3).
    KNorm,
    /// Fused q, k, v projection `[(heads + 2 kv_heads) * head_dim, hidden]`, rows in that order
    /// (Phi-3).
    Qkv,
    /// Fused MLP gate and up projection `[2 * intermediate, hidden]`, gate rows first (Phi-3).
    GateUp,
}

impl BlockTensor {
    /// Every tensor a block may have, in the order of [`crate::identity::BLOCK_TENSORS`]; which
    /// ones a model has is [`crate::Architecture::block_tensors`] (and the biases exist only
    /// where `attention_bias` is set).
    pub const ALL: [BlockTensor; 16] = [
        Self::AttnNorm,
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::QBias,
        Self::KBias,
        Self::VBias,
        Self::FfnNorm,
        Self::Gate,
        Self::Up,
        Self::Down,
        Self::QNorm,
        Self::KNorm,
        Self::Qkv,
        Self::GateUp,
    ];

    /// Whether this is one of the optional q/k/v projection biases.
    pub fn is_bias(self) -> bool {
        matches!(self, Self::QBias | Self::KBias | Self::VBias)
    }

    fn hf_suffix(self) -> &'static str {
        match self {
            Self::AttnNorm => "input_layernorm.weight",
            Self::Q => "self_attn.q_proj.weight",
            Self::K => "self_attn.k_proj.weight",
            Self::V => "self_attn.v_proj.weight",
            Self::O => "self_attn.o_proj.weight",
            Self::QBias => "self_attn.q_proj.bias",
            Self::KBias => "self_attn.k_proj.bias",
            Self::VBias => "self_attn.v_proj.bias",
            Self::FfnNorm => "post_attention_layernorm.weight",
            Self::Gate => "mlp.gate_proj.weight",
            Self::Up => "mlp.up_proj.weight",
            Self::Down => "mlp.down_proj.weight",
            Self::QNorm => "self_attn.q_norm.weight",
            Self::KNorm => "self_attn.k_norm.weight",
            Self::Qkv => "self_attn.qkv_proj.weight",
            Self::GateUp => "mlp.gate_up_proj.weight",
        }
    }

    fn gguf_suffix(self) -> &'static str {
        match self {
            Self::AttnNorm => "attn_norm.weight",
            Self::Q => "attn_q.weight",
            Self::K => "attn_k.weight",
            Self::V => "attn_v.weight",
            Self::O => "attn_output.weight",
            Self::QBias => "attn_q.bias",
            Self::KBias => "attn_k.bias",
            Self::VBias => "attn_v.bias",
            Self::FfnNorm => "ffn_norm.weight",
            Self::Gate => "ffn_gate.weight",
            Self::Up => "ffn_up.weight",
            Self::Down => "ffn_down.weight",
            Self::QNorm => "attn_q_norm.weight",
            Self::KNorm => "attn_k_norm.weight",
            Self::Qkv => "attn_qkv.weight",
            // llama.cpp keeps the separate name for the fused matrix: a model has one or the
            // other ([`crate::Architecture::block_tensors`]).
            Self::GateUp => "ffn_up.weight",
        }
    }
}

impl TensorRole {
    /// The tensor's name in an HF safetensors checkpoint.
    pub fn hf_name(self) -> String {
        match self {
            Self::Embed => "model.embed_tokens.weight".into(),
            Self::FinalNorm => "model.norm.weight".into(),
            Self::LmHead => "lm_head.weight".into(),
            Self::RopeFreqs => "rope_freqs.weight".into(),
            Self::Block(i, t) => format!("model.layers.{i}.{}", t.hf_suffix()),
        }
    }

    /// The tensor's name in a llama.cpp GGUF file.
    pub fn gguf_name(self) -> String {
        match self {
            Self::Embed => "token_embd.weight".into(),
            Self::FinalNorm => "output_norm.weight".into(),
            Self::LmHead => "output.weight".into(),
            Self::RopeFreqs => "rope_freqs.weight".into(),
            Self::Block(i, t) => format!("blk.{i}.{}", t.gguf_suffix()),
        }
    }
}

/// A loaded weight: a plain tensor, ggml-quantized blocks, or a matrix repacked for hearth's CPU
/// kernels.
#[derive(Clone, Debug)]
pub enum Weight {
    /// A plain (unquantized) tensor, in its stored dtype, on the load device.
    Dense(Tensor),
    /// A GGUF quantized tensor kept in ggml blocks, multiplied by candle's kernels.
    Quantized(Arc<QTensor>),
    /// A matrix in hearth's own CPU kernel layout.
    Packed(Arc<PackedWeight>),
}

/// An F32, F16, BF16, Q4_0 or Q8_0 matrix in hearth's CPU kernel layout: same size as in the file.
/// Every one of these kernels gives a row bitwise the same result in any batch and on any number
/// of threads (see `kernels`).
#[derive(Debug)]
pub enum PackedWeight {
    /// Single-precision weights.
    F32(kernels::PackedF32),
    /// IEEE half-precision weights.
    F16(kernels::PackedF16),
    /// bfloat16 weights (widened exactly to f32 on the fly).
    BF16(kernels::PackedBF16),
    /// ggml Q4_0 blocks (4-bit values, one f16 scale per 32).
    Q4_0(kernels::PackedQ4_0),
    /// ggml Q8_0 blocks (8-bit values, one f16 scale per 32).
    Q8_0(kernels::PackedQ8_0),
}

impl PackedWeight {
    /// Packs a row-major `[n, k]` matrix stored as `bytes` in `format`, if hearth has a kernel
    /// for it.
    fn pack(format: StoredFormat, bytes: &[u8], n: usize, k: usize) -> Result<Option<Self>> {
        let err = |e: kernels::KernelError| EngineError::Unsupported {
            what: "weight layout",
            detail: e.to_string(),
        };
        Ok(Some(match format {
            StoredFormat::Dense(DType::F32) | StoredFormat::Ggml(GgmlDType::F32) => {
                // Copy out of the file: its bytes need not be 4-byte aligned.
                let w: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Self::F32(kernels::PackedF32::pack(w, n, k).map_err(err)?)
            }
            StoredFormat::Dense(DType::F16) => {
                // Copy out of the file: its bytes need not be 2-byte aligned.
                let w: Vec<half::f16> = bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Self::F16(kernels::PackedF16::pack(&w, n, k).map_err(err)?)
            }
            StoredFormat::Dense(DType::BF16) => {
                let w: Vec<half::bf16> = bytes
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Self::BF16(kernels::PackedBF16::pack(&w, n, k).map_err(err)?)
            }
            StoredFormat::Ggml(GgmlDType::BF16) => {
                return Self::pack(StoredFormat::Dense(DType::BF16), bytes, n, k)
            }
            StoredFormat::Ggml(GgmlDType::F16) => {
                return Self::pack(StoredFormat::Dense(DType::F16), bytes, n, k)
            }
            StoredFormat::Ggml(GgmlDType::Q4_0) => {
                Self::Q4_0(kernels::PackedQ4_0::pack(bytes, n, k).map_err(err)?)
            }
            StoredFormat::Ggml(GgmlDType::Q8_0) => {
                Self::Q8_0(kernels::PackedQ8_0::pack(bytes, n, k).map_err(err)?)
            }
            _ => return Ok(None),
        }))
    }

    pub(crate) fn n(&self) -> usize {
        match self {
            Self::F32(p) => p.n(),
            Self::F16(p) => p.n(),
            Self::BF16(p) => p.n(),
            Self::Q4_0(p) => p.n(),
            Self::Q8_0(p) => p.n(),
        }
    }

    pub(crate) fn matmul(
        &self,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), kernels::KernelError> {
        match self {
            Self::F32(p) => p.matmul(x, m, y),
            Self::F16(p) => p.matmul(x, m, y),
            Self::BF16(p) => p.matmul(x, m, y),
            Self::Q4_0(p) => p.matmul(x, m, y),
            Self::Q8_0(p) => p.matmul(x, m, y),
        }
    }
}

/// How a tensor's elements are stored in its file.
#[derive(Clone, Copy, Debug)]
enum StoredFormat {
    Dense(DType),
    Ggml(GgmlDType),
}

impl Weight {
    /// The weight as a plain tensor of `dtype` (dequantizing if needed).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(t) => t.to_dtype(dtype)?,
            Self::Quantized(q) => q.dequantize(&q.device())?.to_dtype(dtype)?,
            Self::Packed(_) => {
                return Err(EngineError::Unsupported {
                    what: "conversion",
                    detail: "a packed matrix cannot be used as a plain tensor".into(),
                })
            }
        })
    }
}

/// Where a tensor lives in an HF checkpoint.
#[derive(Clone, Debug)]
pub(crate) struct HfTensor {
    shard: usize,
    bytes: u64,
}

/// The tensors on offer in a model's files, parsed from their headers only.
#[derive(Debug)]
pub(crate) enum WeightIndex {
    Hf {
        shards: Vec<PathBuf>,
        tensors: HashMap<String, HfTensor>,
    },
    Gguf {
        path: PathBuf,
        content: Box<gguf_file::Content>,
    },
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    // SAFETY: the mapping is read-only and lives only while tensors are copied out of it. A file
    // truncated underneath us could fault; every offset is still bounds-checked against the length
    // we map, and model files are not expected to change while a node loads them.
    unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))
}

fn safetensors_error(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Format {
        path: path.to_path_buf(),
        format: "safetensors",
        detail: e.to_string(),
    }
}

impl WeightIndex {
    /// Indexes an HF folder: `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`.
    pub(crate) fn open_hf(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| EngineError::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| EngineError::Format {
                    path: index_path.clone(),
                    format: "JSON",
                    detail: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    EngineError::config(&index_path, "weight_map", "missing or not an object")
                })?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    EngineError::config(
                        &index_path,
                        format!("weight_map.{tensor}"),
                        "expected a file name",
                    )
                })?;
                // The index may only point at files inside the model folder.
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(EngineError::config(
                        &index_path,
                        format!("weight_map.{tensor}"),
                        format!("{file:?} is not a plain file name in the model folder"),
                    ));
                }
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
            }
            names.sort();
            names
        } else if single.exists() {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(EngineError::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model folder",
                ),
            ));
        };

        let mut shards = Vec::with_capacity(shard_names.len());
        let mut tensors = HashMap::new();
        for (shard, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let mmap = map_file(&path)?;
            // Parses and validates the header only: offsets must lie inside the file.
            let st = SafeTensors::deserialize(&mmap).map_err(|e| safetensors_error(&path, e))?;
            for (tensor, view) in st.tensors() {
                let bytes = view.data().len() as u64;
                tensors.insert(tensor, HfTensor { shard, bytes });
            }
            shards.push(path);
        }
        Ok(Self::Hf { shards, tensors })
    }

    /// Indexes a GGUF file (header, metadata and tensor table).
    pub(crate) fn open_gguf(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let len = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
        let content = gguf_file::Content::read(&mut file).map_err(|e| EngineError::Format {
            path: path.to_path_buf(),
            format: "GGUF",
            detail: e.to_string(),
        })?;
        // A file cut short must be reported now, naming the tensor, not when it is used.
        for (name, info) in &content.tensor_infos {
            let (start, end) = gguf_span(&content, info).ok_or_else(|| EngineError::Format {
                path: path.to_path_buf(),
                format: "GGUF",
                detail: format!("tensor `{name}` has an impossible size"),
            })?;
            if end > len || start > end {
                return Err(EngineError::Format {
                    path: path.to_path_buf(),
                    format: "GGUF",
                    detail: format!(
                        "tensor `{name}` spans bytes {start}..{end} but the file has {len} bytes (truncated?)"
                    ),
                });
            }
        }
        Ok(Self::Gguf {
            path: path.to_path_buf(),
            content: Box::new(content),
        })
    }

    fn name_of(&self, role: TensorRole) -> String {
        match self {
            Self::Hf { .. } => role.hf_name(),
            Self::Gguf { .. } => role.gguf_name(),
        }
    }

    /// The file a diagnostic about `role` should name.
    fn file_of(&self, role: TensorRole) -> PathBuf {
        match self {
            Self::Hf { shards, tensors } => tensors
                .get(&role.hf_name())
                .map(|t| shards[t.shard].clone())
                .or_else(|| {
                    shards
                        .first()
                        .and_then(|p| p.parent().map(Path::to_path_buf))
                })
                .unwrap_or_default(),
            Self::Gguf { path, .. } => path.clone(),
        }
    }

    pub(crate) fn contains(&self, role: TensorRole) -> bool {
        let name = self.name_of(role);
        match self {
            Self::Hf { tensors, .. } => tensors.contains_key(&name),
            Self::Gguf { content, .. } => content.tensor_infos.contains_key(&name),
        }
    }

    /// The file's own idea of the tensor's shape (row-major), without loading it.
    pub(crate) fn dims(&self, role: TensorRole) -> Option<Vec<usize>> {
        let name = self.name_of(role);
        match self {
            Self::Hf { .. } => None,
            Self::Gguf { content, .. } => content
                .tensor_infos
                .get(&name)
                .map(|i| i.shape.dims().to_vec()),
        }
    }

    /// Bytes the tensor occupies in its file (0 when absent).
    pub(crate) fn stored_bytes(&self, role: TensorRole) -> u64 {
        let name = self.name_of(role);
        match self {
            Self::Hf { tensors, .. } => tensors.get(&name).map_or(0, |t| t.bytes),
            Self::Gguf { content, .. } => content
                .tensor_infos
                .get(&name)
                .and_then(|info| gguf_span(content, info))
                .map(|(s, e)| e - s)
                .unwrap_or(0),
        }
    }

    /// Maps the model's files for the duration of one load.
    pub(crate) fn map(&self) -> Result<MappedFiles> {
        let maps = match self {
            Self::Hf { shards, .. } => shards
                .iter()
                .map(|p| map_file(p))
                .collect::<Result<Vec<_>>>()?,
            Self::Gguf { path, .. } => vec![map_file(path)?],
        };
        Ok(MappedFiles { maps })
    }

    /// Loads one tensor and checks its shape; `expected` is row-major (`[out, in]` for matrices).
    pub(crate) fn load(
        &self,
        maps: &MappedFiles,
        role: TensorRole,
        expected: &[usize],
        device: &Device,
        pack: bool,
    ) -> Result<Weight> {
        let pack = pack && device.is_cpu() && expected.len() == 2;
        let name = self.name_of(role);
        let file = self.file_of(role);
        let weight = match self {
            Self::Hf { shards, tensors } => {
                let entry = tensors
                    .get(&name)
                    .ok_or_else(|| EngineError::MissingTensor {
                        file: file.clone(),
                        name: name.clone(),
                    })?;
                let path = &shards[entry.shard];
                let mmap = &maps.maps[entry.shard];
                let st = SafeTensors::deserialize(mmap).map_err(|e| safetensors_error(path, e))?;
                let view = st.tensor(&name).map_err(|e| safetensors_error(path, e))?;
                let dtype = safetensors_dtype(path, &name, view.dtype())?;
                check_shape(path, &name, expected, view.shape())?;
                let packed = match pack {
                    true => PackedWeight::pack(
                        StoredFormat::Dense(dtype),
                        view.data(),
                        expected[0],
                        expected[1],
                    )?,
                    false => None,
                };
                let w = match packed {
                    Some(p) => Weight::Packed(Arc::new(p)),
                    None => {
                        let t = Tensor::from_raw_buffer(
                            view.data(),
                            dtype,
                            view.shape(),
                            &Device::Cpu,
                        )?;
                        Weight::Dense(t.to_device(device)?)
                    }
                };
                maps.release(entry.shard, view.data());
                w
            }
            Self::Gguf { path, content } => {
                let info =
                    content
                        .tensor_infos
                        .get(&name)
                        .ok_or_else(|| EngineError::MissingTensor {
                            file: file.clone(),
                            name: name.clone(),
                        })?;
                check_shape(path, &name, expected, info.shape.dims())?;
                let (start, end) = gguf_span(content, info).ok_or_else(|| EngineError::Format {
                    path: path.clone(),
                    format: "GGUF",
                    detail: format!("tensor `{name}` has an impossible size"),
                })?;
                let bytes = maps.maps[0]
                    .get(start as usize..end as usize)
                    .ok_or_else(|| EngineError::Format {
                        path: path.clone(),
                        format: "GGUF",
                        detail: format!("tensor `{name}` lies beyond the end of the file"),
                    })?;
                let packed = match pack {
                    true => PackedWeight::pack(
                        StoredFormat::Ggml(info.ggml_dtype),
                        bytes,
                        expected[0],
                        expected[1],
                    )?,
                    false => None,
                };
                if let Some(p) = packed {
                    maps.release(0, bytes);
                    return Ok(Weight::Packed(Arc::new(p)));
                }
                let dense = |dtype: DType| -> Result<Weight> {
                    let t = Tensor::from_raw_buffer(bytes, dtype, info.shape.dims(), &Device::Cpu)?;
                    Ok(Weight::Dense(t.to_device(device)?))
                };
                let w = match info.ggml_dtype {
                    GgmlDType::F32 => dense(DType::F32)?,
                    GgmlDType::F16 => dense(DType::F16)?,
                    GgmlDType::BF16 => dense(DType::BF16)?,
                    dtype => {
                        let block = dtype.block_size();
                        if info
                            .shape
                            .dims()
                            .last()
                            .is_some_and(|&k| !k.is_multiple_of(block))
                        {
                            return Err(EngineError::Format {
                                path: path.clone(),
                                format: "GGUF",
                                detail: format!("tensor `{name}`: rows are not a whole number of {dtype:?} blocks"),
                            });
                        }
                        let storage = QStorage::from_data(Cow::Borrowed(bytes), device, dtype)?;
                        Weight::Quantized(Arc::new(QTensor::new(storage, info.shape.clone())?))
                    }
                };
                maps.release(0, bytes);
                w
            }
        };
        Ok(weight)
    }
}

/// The rows of one 2-D tensor (an embedding table), read from the mapped file on demand.
///
/// Looking up a token touches only that row's pages, so a client holds its embeddings without
/// loading the table, and a tied output head is not duplicated.
pub(crate) struct MappedRows {
    mmap: Mmap,
    start: usize,
    rows: usize,
    cols: usize,
    format: RowFormat,
}

#[derive(Clone, Copy, Debug)]
enum RowFormat {
    Dense(DType),
    Ggml(GgmlDType),
}

impl std::fmt::Debug for MappedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRows")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("format", &self.format)
            .finish()
    }
}

impl MappedRows {
    fn row_bytes(&self) -> usize {
        match self.format {
            RowFormat::Dense(dt) => self.cols * dt.size_in_bytes(),
            RowFormat::Ggml(dt) => self.cols / dt.block_size() * dt.type_size(),
        }
    }

    /// The rows `ids` as f32, concatenated. Ids must be below `rows`.
    pub(crate) fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let rb = self.row_bytes();
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let at = self.start + id as usize * rb;
            let bytes = self
                .mmap
                .get(at..at + rb)
                .ok_or(EngineError::TokenOutOfRange {
                    id,
                    vocab: self.rows,
                })?;
            match self.format {
                RowFormat::Dense(DType::F32) => out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                RowFormat::Dense(DType::F16) => out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                RowFormat::Dense(_) => out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                RowFormat::Ggml(dt) => {
                    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dt)?;
                    let row = QTensor::new(storage, (1, self.cols))?.dequantize(&Device::Cpu)?;
                    out.extend(row.flatten_all()?.to_vec1::<f32>()?);
                }
            }
        }
        Ok(out)
    }
}

impl WeightIndex {
    /// Maps the rows of a `[rows, cols]` tensor for on-demand lookup.
    pub(crate) fn map_rows(
        &self,
        role: TensorRole,
        rows: usize,
        cols: usize,
    ) -> Result<MappedRows> {
        let name = self.name_of(role);
        let missing = || EngineError::MissingTensor {
            file: self.file_of(role),
            name: name.clone(),
        };
        match self {
            Self::Hf { shards, tensors } => {
                let entry = tensors.get(&name).ok_or_else(missing)?;
                let path = &shards[entry.shard];
                let mmap = map_file(path)?;
                let (start, dtype) = {
                    let st =
                        SafeTensors::deserialize(&mmap).map_err(|e| safetensors_error(path, e))?;
                    let view = st.tensor(&name).map_err(|e| safetensors_error(path, e))?;
                    check_shape(path, &name, &[rows, cols], view.shape())?;
                    let dtype = safetensors_dtype(path, &name, view.dtype())?;
                    (
                        view.data().as_ptr() as usize - mmap.as_ptr() as usize,
                        dtype,
                    )
                };
                Ok(MappedRows {
                    mmap,
                    start,
                    rows,
                    cols,
                    format: RowFormat::Dense(dtype),
                })
            }
            Self::Gguf { path, content } => {
                let info = content.tensor_infos.get(&name).ok_or_else(missing)?;
                check_shape(path, &name, &[rows, cols], info.shape.dims())?;
                let (start, _) = gguf_span(content, info).ok_or_else(missing)?;
                let format = match info.ggml_dtype {
                    GgmlDType::F32 => RowFormat::Dense(DType::F32),
                    GgmlDType::F16 => RowFormat::Dense(DType::F16),
                    GgmlDType::BF16 => RowFormat::Dense(DType::BF16),
                    dt if cols.is_multiple_of(dt.block_size()) => RowFormat::Ggml(dt),
                    dt => {
                        return Err(EngineError::Format {
                            path: path.clone(),
                            format: "GGUF",
                            detail: format!(
                                "tensor `{name}`: rows are not a whole number of {dt:?} blocks"
                            ),
                        })
                    }
                };
                Ok(MappedRows {
                    mmap: map_file(path)?,
                    start: start as usize,
                    rows,
                    cols,
                    format,
                })
            }
        }
    }
}

/// The model's files, mapped for one load; dropping it unmaps them.
pub(crate) struct MappedFiles {
    maps: Vec<Mmap>,
}

impl MappedFiles {
    /// Tells the kernel we are done with `bytes` (a sub-slice of map `map`): their pages leave
    /// this process's resident set now rather than when the whole load ends, so peak memory is
    /// the loaded weights plus one tensor, not twice the slice.
    fn release(&self, map: usize, bytes: &[u8]) {
        let Some(mmap) = self.maps.get(map) else {
            return;
        };
        let page = 4096;
        let base = mmap.as_ptr() as usize;
        let start = (bytes.as_ptr() as usize - base).div_ceil(page) * page;
        let end = (bytes.as_ptr() as usize - base + bytes.len()) / page * page;
        if end > start {
            // SAFETY: the mapping is private and read-only, and no borrow of these pages outlives
            // this call (the tensor was copied out); dropped pages are re-read from the file if
            // touched again.
            let _ = unsafe {
                mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// One tensor exactly as its file stores it, for content hashing ([`crate::identity`]).
pub(crate) struct RawTensor<'a> {
    /// The stored bytes, untouched (little-endian elements or ggml blocks).
    pub(crate) bytes: &'a [u8],
    /// The storage type's name: safetensors' header name (`F32`, `BF16`, ...) or llama.cpp's
    /// ggml type name (`F16`, `Q8_0`, `Q4_K`, ...). The same encoding has the same name in both.
    pub(crate) dtype: String,
    /// Row-major shape as the file declares it.
    pub(crate) shape: Vec<usize>,
}

impl WeightIndex {
    /// The stored bytes, storage type and shape of one tensor, or `None` if the files lack it.
    /// The bytes borrow `maps`; call [`MappedFiles::release_bytes`] once they have been read.
    pub(crate) fn raw_bytes<'a>(
        &self,
        maps: &'a MappedFiles,
        role: TensorRole,
    ) -> Result<Option<RawTensor<'a>>> {
        let name = self.name_of(role);
        match self {
            Self::Hf { shards, tensors } => {
                let Some(entry) = tensors.get(&name) else {
                    return Ok(None);
                };
                let path = &shards[entry.shard];
                let mmap = maps
                    .maps
                    .get(entry.shard)
                    .ok_or_else(|| EngineError::Format {
                        path: path.clone(),
                        format: "safetensors",
                        detail: "shard not mapped".into(),
                    })?;
                let st = SafeTensors::deserialize(mmap).map_err(|e| safetensors_error(path, e))?;
                let view = st.tensor(&name).map_err(|e| safetensors_error(path, e))?;
                // The view borrows `st`; re-derive the slice from the mapping itself so that it
                // lives as long as `maps`.
                let start = (view.data().as_ptr() as usize).wrapping_sub(mmap.as_ptr() as usize);
                let bytes = mmap
                    .get(start..start.saturating_add(view.data().len()))
                    .ok_or_else(|| {
                        safetensors_error(path, format!("tensor `{name}` out of range"))
                    })?;
                Ok(Some(RawTensor {
                    bytes,
                    dtype: format!("{:?}", view.dtype()),
                    shape: view.shape().to_vec(),
                }))
            }
            Self::Gguf { path, content } => {
                let Some(info) = content.tensor_infos.get(&name) else {
                    return Ok(None);
                };
                let (start, end) = gguf_span(content, info).ok_or_else(|| EngineError::Format {
                    path: path.clone(),
                    format: "GGUF",
                    detail: format!("tensor `{name}` has an impossible size"),
                })?;
                let bytes = maps
                    .maps
                    .first()
                    .and_then(|m| m.get(start as usize..end as usize))
                    .ok_or_else(|| EngineError::Format {
                        path: path.clone(),
                        format: "GGUF",
                        detail: format!("tensor `{name}` lies beyond the end of the file"),
                    })?;
                Ok(Some(RawTensor {
                    bytes,
                    dtype: ggml_type_name(info.ggml_dtype).to_string(),
                    shape: info.shape.dims().to_vec(),
                }))
            }
        }
    }

    /// Every file the weights are read from (the GGUF file, or the safetensors shards).
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        match self {
            Self::Hf { shards, .. } => shards.clone(),
            Self::Gguf { path, .. } => vec![path.clone()],
        }
    }
}

impl MappedFiles {
    /// Asks for aggressive read-ahead: the caller is about to read every byte once, in order
    /// within each tensor (hashing).
    pub(crate) fn advise_sequential(&self) {
        for mmap in &self.maps {
            let _ = mmap.advise(memmap2::Advice::Sequential);
        }
    }

    /// [`MappedFiles::release`] for bytes from [`WeightIndex::raw_bytes`], whichever map holds
    /// them; does nothing for bytes from elsewhere.
    pub(crate) fn release_bytes(&self, bytes: &[u8]) {
        let at = bytes.as_ptr() as usize;
        let found = self.maps.iter().position(|m| {
            let base = m.as_ptr() as usize;
            at >= base && at + bytes.len() <= base + m.len()
        });
        if let Some(map) = found {
            self.release(map, bytes);
        }
    }
}

/// llama.cpp's name for a ggml storage type (`ggml_type_name`).
fn ggml_type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// The candle dtype of a safetensors tensor; hearth reads F32, F16 and BF16.
fn safetensors_dtype(path: &Path, name: &str, dtype: safetensors::Dtype) -> Result<DType> {
    match dtype {
        safetensors::Dtype::F32 => Ok(DType::F32),
        safetensors::Dtype::F16 => Ok(DType::F16),
        safetensors::Dtype::BF16 => Ok(DType::BF16),
        other => Err(EngineError::Unsupported {
            what: "tensor dtype",
            detail: format!(
                "{}: tensor `{name}` is {other:?}; hearth reads F32, F16 and BF16 safetensors",
                path.display()
            ),
        }),
    }
}

fn check_shape(path: &Path, name: &str, expected: &[usize], got: &[usize]) -> Result<()> {
    if expected != got {
        return Err(EngineError::TensorShape {
            file: path.to_path_buf(),
            name: name.to_string(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        });
    }
    Ok(())
}

/// Absolute byte range of a GGUF tensor's data, or None if its size overflows.
fn gguf_span(content: &gguf_file::Content, info: &gguf_file::TensorInfo) -> Option<(u64, u64)> {
    let elems = info
        .shape
        .dims()
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))?;
    let block = info.ggml_dtype.block_size() as u64;
    let size = (elems / block).checked_mul(info.ggml_dtype.type_size() as u64)?;
    let start = content.tensor_data_offset.checked_add(info.offset)?;
    Some((start, start.checked_add(size)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_each_format() {
        let r = TensorRole::Block(7, BlockTensor::Down);
        assert_eq!(r.hf_name(), "model.layers.7.mlp.down_proj.weight");
        assert_eq!(r.gguf_name(), "blk.7.ffn_down.weight");
        assert_eq!(TensorRole::Embed.gguf_name(), "token_embd.weight");
        assert_eq!(
            TensorRole::Block(0, BlockTensor::QBias).hf_name(),
            "model.layers.0.self_attn.q_proj.bias"
        );
        let r = TensorRole::Block(3, BlockTensor::KNorm);
        assert_eq!(r.hf_name(), "model.layers.3.self_attn.k_norm.weight");
        assert_eq!(r.gguf_name(), "blk.3.attn_k_norm.weight");
        let r = TensorRole::Block(1, BlockTensor::Qkv);
        assert_eq!(r.hf_name(), "model.layers.1.self_attn.qkv_proj.weight");
        assert_eq!(r.gguf_name(), "blk.1.attn_qkv.weight");
        assert_eq!(
            TensorRole::Block(0, BlockTensor::GateUp).hf_name(),
            "model.layers.0.mlp.gate_up_proj.weight"
        );
    }
}
