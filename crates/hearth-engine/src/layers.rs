//! The transformer block and its parts, written for slices: a block knows its index in the model
//! and nothing about its neighbours.

use crate::config::{ModelConfig, RopeLayout, RopeScaling};
use crate::error::{EngineError, Result};
use crate::kernels;
use crate::weights::{BlockTensor, PackedWeight, TensorRole, Weight};
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Storage, Tensor, D};
use std::sync::Arc;

/// A projection `y = x Wᵀ (+ b)`.
#[derive(Debug)]
pub(crate) struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

#[derive(Debug)]
enum LinearWeight {
    /// Plain weights in the activation dtype.
    Dense(Tensor),
    /// ggml blocks, multiplied by candle's quantized kernels (Q4_1, Q5_x, K-quants, CUDA), at
    /// most `rows_per_call` rows at a time (see [`candle_rows_per_call`]).
    Quantized {
        matmul: QMatMul,
        rows_per_call: Option<usize>,
    },
    /// F16 / Q4_0 / Q8_0 weights repacked for hearth's own CPU kernels (same size as the file).
    Packed(Arc<PackedWeight>),
}

impl Linear {
    pub(crate) fn new(weight: Weight, bias: Option<Tensor>, act_dtype: DType) -> Result<Self> {
        let weight = match weight {
            Weight::Packed(p) => LinearWeight::Packed(p),
            Weight::Dense(t) => LinearWeight::Dense(t.to_dtype(act_dtype)?),
            Weight::Quantized(q) => LinearWeight::Quantized {
                rows_per_call: candle_rows_per_call(q.dtype(), &q.device()),
                matmul: QMatMul::from_arc(q)?,
            },
        };
        Ok(Self { weight, bias })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => {
                let (b, t, k) = x.dims3()?;
                x.reshape((b * t, k))?
                    .matmul(&w.t()?)?
                    .reshape((b, t, ()))?
            }
            LinearWeight::Quantized {
                matmul,
                rows_per_call,
            } => {
                let in_dtype = x.dtype();
                let x = x.to_dtype(DType::F32)?;
                let (b, t, k) = x.dims3()?;
                let y = match rows_per_call {
                    Some(chunk) if b * t > *chunk => {
                        let rows = x.reshape((b * t, k))?;
                        let parts = (0..b * t)
                            .step_by(*chunk)
                            .map(|r| matmul.forward(&rows.narrow(0, r, (*chunk).min(b * t - r))?))
                            .collect::<candle_core::Result<Vec<_>>>()?;
                        Tensor::cat(&parts, 0)?.reshape((b, t, ()))?
                    }
                    _ => matmul.forward(&x)?,
                };
                y.to_dtype(in_dtype)?
            }
            LinearWeight::Packed(p) => {
                let (b, t, _) = x.dims3()?;
                let xs = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let n = p.n();
                let mut ys = vec![0f32; b * t * n];
                p.matmul(&xs, b * t, &mut ys)
                    .map_err(|e| EngineError::Unsupported {
                        what: "matmul arguments",
                        detail: e.to_string(),
                    })?;
                Tensor::from_vec(ys, (b, t, n), x.device())?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// How many rows candle's CPU kernels for `dtype` may take per call for a row's result to be the
/// same in any batch. candle 0.11 computes each output of a row with one fixed dot product, except
/// that it switches kernels on the row count: Q6_K takes a compact GEMV for one row and repacked
/// tiles for more (which round differently), and Q4_K takes AMX tiles from 32 rows where the CPU
/// has AMX. Calling with one row (Q6_K) or at most 31 (Q4_K) keeps every row on one kernel.
/// `None`: any number (also on CUDA, whose results are not batch-invariant anyway).
fn candle_rows_per_call(dtype: GgmlDType, device: &Device) -> Option<usize> {
    match dtype {
        _ if !device.is_cpu() => None,
        GgmlDType::Q6K => Some(1),
        GgmlDType::Q4K => Some(31),
        _ => None,
    }
}

/// Root-mean-square norm with a learned scale.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(weight: Weight, eps: f64, act_dtype: DType) -> Result<Self> {
        Ok(Self {
            weight: weight.to_dense(act_dtype)?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }

    /// Normalises each `head_dim`-wide head of `x: [b, t, heads * head_dim]` on its own (Qwen3's
    /// q/k norm). Row-wise like [`Self::forward`], so a position's result does not depend on
    /// the other rows.
    fn forward_heads(&self, x: &Tensor, head_dim: usize) -> Result<Tensor> {
        let (b, t, width) = x.dims3()?;
        let heads = x.reshape((b, t, width / head_dim, head_dim))?;
        Ok(self.forward(&heads)?.reshape((b, t, width))?)
    }
}

/// RoPE frequencies for one model; angles are computed per step for the positions in use, which
/// costs less than a table sized for `max_position_embeddings` (131k positions for Llama 3.1).
#[derive(Clone, Debug)]
pub(crate) struct Rope {
    inv_freq: Vec<f64>,
    layout: RopeLayout,
}

impl Rope {
    pub(crate) fn new(cfg: &ModelConfig, freq_factors: Option<Vec<f32>>) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / cfg.head_dim as f64))
            .collect();
        let scaling = match freq_factors {
            Some(f) => Some(RopeScaling::Factors(f)),
            None => cfg.rope_scaling.clone(),
        };
        match scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::Factors(factors)) => {
                if factors.len() != half {
                    return Err(EngineError::TensorShape {
                        file: Default::default(),
                        name: "rope_freqs.weight".into(),
                        expected: vec![half],
                        got: vec![factors.len()],
                    });
                }
                inv_freq
                    .iter_mut()
                    .zip(&factors)
                    .for_each(|(f, &d)| *f /= d as f64);
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let orig = original_max_position_embeddings as f64;
                let low_wavelen = orig / low_freq_factor;
                let high_wavelen = orig / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    *f = if wavelen < high_wavelen {
                        *f
                    } else if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        let smooth = (orig / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * *f / factor + smooth * *f
                    };
                }
            }
        }
        Ok(Self {
            inv_freq,
            layout: cfg.rope_layout,
        })
    }

    /// The per-frequency divisors this RoPE applies relative to plain `rope_theta`, as GGUF's
    /// `rope_freqs.weight` stores them.
    pub(crate) fn freq_factors(cfg: &ModelConfig) -> Result<Vec<f32>> {
        let plain = Rope::new(
            &ModelConfig {
                rope_scaling: None,
                ..cfg.clone()
            },
            None,
        )?;
        let scaled = Rope::new(cfg, None)?;
        Ok(plain
            .inv_freq
            .iter()
            .zip(&scaled.inv_freq)
            .map(|(p, s)| (p / s) as f32)
            .collect())
    }

    /// cos and sin of shape `[t, head_dim/2]` for positions `start..start+t`.
    pub(crate) fn angles(
        &self,
        start: usize,
        t: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in start..start + t {
            for f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (t, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (t, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(match self.layout {
            RopeLayout::Half => candle_nn::rotary_emb::rope(x, cos, sin)?,
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin)?,
        })
    }
}

/// Whether attention runs on [`kernels::attention`] (bit-exact, skips masked positions itself)
/// rather than candle's matmul + softmax (which needs the additive mask).
fn uses_cpu_attention(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32
}

/// Per-step inputs of one session, shared by every block of a slice.
pub(crate) struct StepContext {
    /// Rows (tokens) this session contributes to the step.
    pub(crate) t: usize,
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    /// The model's sliding window (a position sees at most this many positions).
    pub(crate) window: Option<usize>,
    /// Additive mask `[n_rep * t, past + t]` (0 or -inf) for candle's attention, absent for a
    /// plain single-token step and for the CPU kernel (which skips masked positions itself).
    pub(crate) mask: Option<Tensor>,
}

impl StepContext {
    pub(crate) fn new(
        cfg: &ModelConfig,
        rope: &Rope,
        past: usize,
        t: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let (cos, sin) = rope.angles(past, t, device, dtype)?;
        let total = past + t;
        let window = cfg.sliding_window.filter(|&w| w < total);
        let mask = if !uses_cpu_attention(device, dtype) && (t > 1 || window.is_some()) {
            let n_rep = cfg.num_heads / cfg.num_kv_heads;
            let mut m = Vec::with_capacity(n_rep * t * total);
            // Query rows are grouped per KV head as [n_rep, t]; row r is query position past + r % t.
            for r in 0..n_rep * t {
                let pos = past + r % t;
                for j in 0..total {
                    let visible = j <= pos && window.is_none_or(|w| pos - j < w);
                    m.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
            Some(Tensor::from_vec(m, (n_rep * t, total), device)?.to_dtype(dtype)?)
        } else {
            None
        };
        Ok(Self {
            t,
            cos,
            sin,
            window: cfg.sliding_window,
            mask,
        })
    }
}

/// Keys and values of one block for one session, in a buffer that grows by doubling.
#[derive(Debug)]
pub(crate) struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl LayerCache {
    pub(crate) fn new() -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
        }
    }

    /// Forgets positions `len..`, so that a step can be replayed.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `k`, `v` of shape `[1, kv_heads, t, head_dim]` and returns all cached keys and values.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let needed = self.len + t;
        let capacity = self.k.as_ref().map_or(0, |k| k.dim(2).unwrap_or(0));
        if needed > capacity {
            let new_cap = needed.max(capacity * 2).max(64);
            let (b, h, _, d) = k.dims4()?;
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, h, new_cap, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    }
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        let (kb, vb) = match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => unreachable!("buffers were allocated above"),
        };
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((kb.narrow(2, 0, needed)?, vb.narrow(2, 0, needed)?))
    }
}

/// `N` projections of the same input, stored either as one matrix each or as one fused matrix
/// that stacks the parts' rows in order (Phi-3's `qkv_proj`, `gate_up_proj`).
#[derive(Debug)]
enum Projections<const N: usize> {
    Separate([Linear; N]),
    /// One matrix whose output splits into parts of these widths.
    Fused(Linear, [usize; N]),
}

impl<const N: usize> Projections<N> {
    /// The parts' outputs for `x: [b, t, hidden]`, in order (views of one product when fused).
    fn forward(&self, x: &Tensor) -> Result<[Tensor; N]> {
        let mut out = Vec::with_capacity(N);
        match self {
            Self::Separate(parts) => {
                for p in parts {
                    out.push(p.forward(x)?);
                }
            }
            Self::Fused(linear, widths) => {
                let y = linear.forward(x)?;
                let mut at = 0;
                for &w in widths {
                    out.push(y.narrow(D::Minus1, at, w)?);
                    at += w;
                }
            }
        }
        Ok(out
            .try_into()
            .unwrap_or_else(|_| unreachable!("one output per part")))
    }
}

/// One pre-norm transformer block: attention with grouped-query heads, then a SwiGLU MLP.
///
/// The families differ only in how the block's weights are stored (separate or fused q/k/v and
/// gate/up, optional q/k/v biases) and in Qwen3's per-head q/k norm; see
/// [`crate::Architecture::block_tensors`].
#[derive(Debug)]
pub(crate) struct Block {
    attn_norm: RmsNorm,
    /// Queries, keys, values.
    qkv: Projections<3>,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3).
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    o: Linear,
    ffn_norm: RmsNorm,
    /// SwiGLU gate, then up.
    gate_up: Projections<2>,
    down: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Block {
    /// Loads block `index` through `load(role, expected_shape)`: the tensors
    /// [`ModelConfig::block_tensors`] lists, with its shapes.
    pub(crate) fn load(
        cfg: &ModelConfig,
        index: u32,
        act_dtype: DType,
        load: &mut dyn FnMut(TensorRole, &[usize]) -> Result<Weight>,
    ) -> Result<Self> {
        let mut tensor =
            |t: BlockTensor| load(TensorRole::Block(index, t), &cfg.block_tensor_shape(t));
        let mut linear = |t: BlockTensor, bias: Option<BlockTensor>| -> Result<Linear> {
            let w = tensor(t)?;
            let b = match bias.filter(|_| cfg.attention_bias) {
                Some(bt) => Some(tensor(bt)?.to_dense(act_dtype)?),
                None => None,
            };
            Linear::new(w, b, act_dtype)
        };
        let (qkv, gate_up) = if cfg.architecture.fused_projections() {
            (
                Projections::Fused(
                    linear(BlockTensor::Qkv, None)?,
                    [cfg.q_dim(), cfg.kv_dim(), cfg.kv_dim()],
                ),
                Projections::Fused(
                    linear(BlockTensor::GateUp, None)?,
                    [cfg.intermediate_size; 2],
                ),
            )
        } else {
            (
                Projections::Separate([
                    linear(BlockTensor::Q, Some(BlockTensor::QBias))?,
                    linear(BlockTensor::K, Some(BlockTensor::KBias))?,
                    linear(BlockTensor::V, Some(BlockTensor::VBias))?,
                ]),
                Projections::Separate([
                    linear(BlockTensor::Gate, None)?,
                    linear(BlockTensor::Up, None)?,
                ]),
            )
        };
        let o = linear(BlockTensor::O, None)?;
        let down = linear(BlockTensor::Down, None)?;
        let mut norm = |t: BlockTensor| RmsNorm::new(tensor(t)?, cfg.rms_norm_eps, act_dtype);
        let qk_norm = match cfg.architecture.qk_norm() {
            true => Some((norm(BlockTensor::QNorm)?, norm(BlockTensor::KNorm)?)),
            false => None,
        };
        Ok(Self {
            attn_norm: norm(BlockTensor::AttnNorm)?,
            qkv,
            qk_norm,
            o,
            ffn_norm: norm(BlockTensor::FfnNorm)?,
            gate_up,
            down,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// Runs the block on the rows of one or more sessions stacked as `x: [1, Σ t_i, hidden]`:
    /// session `i` owns the `ctxs[i].t` rows after those of sessions `0..i` and appends its keys
    /// and values to `caches[i]`.
    ///
    /// The norms, projections and MLP run once over all rows (one pass over the weights for the
    /// whole batch); only attention runs per session, on its own cache and positions. Every
    /// per-row operation is independent of the other rows, so a session's rows come out the same
    /// as in a step of its own wherever the matmul kernels are (the quantized ones are bitwise).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctxs: &[StepContext],
        rope: &Rope,
        caches: &mut [&mut LayerCache],
    ) -> Result<Tensor> {
        debug_assert_eq!(ctxs.len(), caches.len());
        let xn = self.attn_norm.forward(x)?;
        let [q, k, v] = self.qkv.forward(&xn)?;
        let (q, k) = match &self.qk_norm {
            Some((q_norm, k_norm)) => (
                q_norm.forward_heads(&q, self.head_dim)?,
                k_norm.forward_heads(&k, self.head_dim)?,
            ),
            None => (q, k),
        };
        let attn = if let ([ctx], [cache]) = (ctxs, &mut *caches) {
            self.attend(&q, &k, &v, ctx, rope, cache)?
        } else {
            let mut parts = Vec::with_capacity(ctxs.len());
            let mut row = 0;
            for (ctx, cache) in ctxs.iter().zip(caches.iter_mut()) {
                let rows = |a: &Tensor| a.narrow(1, row, ctx.t);
                parts.push(self.attend(&rows(&q)?, &rows(&k)?, &rows(&v)?, ctx, rope, cache)?);
                row += ctx.t;
            }
            Tensor::cat(&parts, 1)?
        };
        let x = (x + self.o.forward(&attn)?)?;

        let xn = self.ffn_norm.forward(&x)?;
        let [gate, up] = self.gate_up.forward(&xn)?;
        let gated = (candle_nn::ops::silu(&gate)? * up)?;
        Ok((x + self.down.forward(&gated)?)?)
    }

    /// Attention of one session: projected `q`, `k`, `v` of its `t` rows (`[1, t, heads·dim]`),
    /// RoPE at its positions, its cache extended; returns `[1, t, heads·dim]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ctx: &StepContext,
        rope: &Rope,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let n_rep = nh / nkv;

        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let q = rope.apply(&q, &ctx.cos, &ctx.sin)?;
        let k = rope.apply(&k, &ctx.cos, &ctx.sin)?;
        let past = cache.len;
        let (k_all, v_all) = cache.append(&k, &v)?;
        let scale = 1.0 / (hd as f64).sqrt();
        if uses_cpu_attention(q.device(), q.dtype()) {
            return self.attend_cpu(&q, &k_all, &v_all, past, ctx, scale as f32);
        }

        // Grouped-query attention without copying keys per query head: the n_rep query heads that
        // share a KV head are folded into the row dimension.
        let q = q.reshape((b, nkv, n_rep * t, hd))?;
        let scores = (q.matmul(&k_all.contiguous()?.t()?)? * scale)?;
        let scores = match &ctx.mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let attn = probs.matmul(&v_all.contiguous()?)?;
        Ok(attn
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?)
    }

    /// [`Self::attend`] on the CPU in f32 with [`kernels::attention`]: a position's output is
    /// bitwise the same in a prefill, a decode step or a replay (see that kernel). `q` is
    /// `[1, heads, t, dim]`; `k_all`, `v_all` are views of the cache buffers (`[1, kv_heads,
    /// past + t, dim]`, narrowed from contiguous buffers of a larger capacity).
    fn attend_cpu(
        &self,
        q: &Tensor,
        k_all: &Tensor,
        v_all: &Tensor,
        past: usize,
        ctx: &StepContext,
        scale: f32,
    ) -> Result<Tensor> {
        let (nh, hd, t) = (self.num_heads, self.head_dim, ctx.t);
        let qv = q.flatten_all()?.to_vec1::<f32>()?;
        let kernel_err = |e: kernels::KernelError| EngineError::Unsupported {
            what: "attention arguments",
            detail: e.to_string(),
        };
        let (k_store, k_layout) = k_all.storage_and_layout();
        let (v_store, v_layout) = v_all.storage_and_layout();
        let (Storage::Cpu(k_cpu), Storage::Cpu(v_cpu)) = (&*k_store, &*v_store) else {
            return Err(EngineError::Unsupported {
                what: "attention",
                detail: "the CPU kernel needs the cache on the CPU".into(),
            });
        };
        // The cache views are narrowed along positions: the stride of a KV head is the buffer's
        // capacity, and the data of head 0 starts at the view's offset.
        let kv_stride = k_layout.stride()[1] / hd;
        let len = self.num_kv_heads * kv_stride * hd;
        let k = &k_cpu.as_slice::<f32>()?[k_layout.start_offset()..][..len];
        let v = &v_cpu.as_slice::<f32>()?[v_layout.start_offset()..][..len];
        let shape = kernels::AttentionShape {
            heads: nh,
            kv_heads: self.num_kv_heads,
            head_dim: hd,
            past,
            rows: t,
            kv_stride,
            window: ctx.window,
            scale,
        };
        let mut out = vec![0f32; t * nh * hd];
        kernels::attention(&shape, &qv, k, v, &mut out).map_err(kernel_err)?;
        Ok(Tensor::from_vec(out, (1, t, nh * hd), q.device())?)
    }
}

/// Checks that `x` is `[1, t, hidden]` with t >= 1, naming the shape in the error.
pub(crate) fn check_hidden(x: &Tensor, hidden: usize) -> Result<usize> {
    match *x.dims() {
        [1, t, h] if t >= 1 && h == hidden => Ok(t),
        _ => Err(EngineError::HiddenShape {
            got: x.dims().to_vec(),
            hidden,
        }),
    }
}

/// Largest absolute difference between two tensors of the same shape (for tests and checks).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok(a.to_dtype(DType::F32)?
        .sub(&b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(D::Minus1)?
        .to_scalar::<f32>()?)
}
