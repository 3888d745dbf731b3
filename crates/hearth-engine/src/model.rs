//! Opening a model's files and loading parts of it: a slice of blocks for a node, or the client
//! head (embeddings, final norm, output projection).

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::layers::{check_hidden, Block, LayerCache, Linear, RmsNorm, Rope, StepContext};
use crate::weights::{BlockTensor, TensorRole, Weight, WeightIndex};
use candle_core::{DType, Device, Tensor};
use hearth_core::BlockRange;
use hearth_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// The on-disk format of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face folder: `config.json`, safetensors, `tokenizer.json`.
    HfFolder,
    /// A single llama.cpp GGUF file with the tokenizer in its metadata.
    Gguf,
}

/// How to place and run loaded weights.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the weights go and the blocks run (CPU or a CUDA device).
    pub device: Device,
    /// Dtype of hidden states and dense weights; `None` picks F32 on CPU and the checkpoint's
    /// 16-bit dtype on CUDA.
    pub dtype: Option<DType>,
    /// Multiply F16/Q4_0/Q8_0 weights on the CPU with candle's kernels instead of hearth's own
    /// (for comparison; hearth's are faster and do not duplicate weights).
    pub candle_kernels: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            candle_kernels: false,
        }
    }
}

/// Progress of a load, in bytes of the file read so far.
pub type ProgressFn<'a> = &'a mut dyn FnMut(u64);

/// A model on disk whose headers have been read; loading a slice maps the files only then.
#[derive(Debug)]
pub struct ModelSource {
    path: PathBuf,
    format: ModelFormat,
    config: ModelConfig,
    index: WeightIndex,
    checkpoint_dtype: DType,
}

impl ModelSource {
    /// Opens a Hugging Face folder or a `.gguf` file, reading only headers and metadata.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        if meta.is_dir() {
            let config_path = path.join("config.json");
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| EngineError::io(&config_path, e))?;
            let config = ModelConfig::from_hf_json(&config_path, &text)?;
            let index = WeightIndex::open_hf(path)?;
            let source = Self {
                path: path.to_path_buf(),
                format: ModelFormat::HfFolder,
                config,
                index,
                checkpoint_dtype: DType::F32,
            };
            let checkpoint_dtype = source.probe_dtype()?;
            Ok(Self {
                checkpoint_dtype,
                ..source
            })
        } else {
            let index = WeightIndex::open_gguf(path)?;
            let config = match &index {
                WeightIndex::Gguf { content, .. } => ModelConfig::from_gguf(path, content)?,
                WeightIndex::Hf { .. } => unreachable!("open_gguf returns a GGUF index"),
            };
            Ok(Self {
                path: path.to_path_buf(),
                format: ModelFormat::Gguf,
                config,
                index,
                checkpoint_dtype: DType::F32,
            })
        }
    }

    /// The dtype of the first block's q projection in an HF checkpoint.
    fn probe_dtype(&self) -> Result<DType> {
        let maps = self.index.map()?;
        let w = self.index.load(
            &maps,
            TensorRole::Block(0, BlockTensor::AttnNorm),
            &[self.config.hidden_size],
            &Device::Cpu,
            false,
        )?;
        Ok(match w {
            Weight::Dense(t) => t.dtype(),
            Weight::Quantized(_) | Weight::Packed(_) => DType::F32,
        })
    }

    /// The folder or `.gguf` file the model was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the model is a Hugging Face folder or a GGUF file.
    pub fn format(&self) -> ModelFormat {
        self.format
    }

    /// The model's normalised shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer: `tokenizer.json` for a folder, the embedded vocabulary for GGUF.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Ok(match &self.index {
            WeightIndex::Hf { .. } => Tokenizer::from_hf_dir(&self.path)?,
            WeightIndex::Gguf { content, .. } => Tokenizer::from_gguf(content)?,
        })
    }

    fn act_dtype(&self, opts: &LoadOptions) -> DType {
        opts.dtype
            .unwrap_or(match (&opts.device, self.checkpoint_dtype) {
                (Device::Cpu, _) => DType::F32,
                (_, dt @ (DType::F16 | DType::BF16)) => dt,
                _ => DType::F32,
            })
    }

    fn block_roles(&self, range: BlockRange) -> impl Iterator<Item = TensorRole> + '_ {
        let tensors = self.config.block_tensors();
        range.as_usize_range().flat_map(move |i| {
            tensors
                .clone()
                .into_iter()
                .map(move |(t, _)| TensorRole::Block(i as u32, t))
        })
    }

    fn head_roles(&self) -> [TensorRole; 3] {
        [TensorRole::Embed, TensorRole::FinalNorm, TensorRole::LmHead]
    }

    /// Bytes of weights the blocks `range` occupy in the files.
    pub fn slice_file_bytes(&self, range: BlockRange) -> u64 {
        self.block_roles(range)
            .map(|r| self.index.stored_bytes(r))
            .sum()
    }

    /// Bytes of weights the client head occupies in the files.
    pub fn head_file_bytes(&self) -> u64 {
        self.head_roles()
            .iter()
            .map(|&r| self.index.stored_bytes(r))
            .sum()
    }

    /// Per-frequency RoPE divisors stored in the file, if any.
    fn rope(&self, maps: &crate::weights::MappedFiles) -> Result<Rope> {
        let factors = if self.index.contains(TensorRole::RopeFreqs) {
            let dims = self.index.dims(TensorRole::RopeFreqs).unwrap_or_default();
            let w = self
                .index
                .load(maps, TensorRole::RopeFreqs, &dims, &Device::Cpu, false)?;
            Some(w.to_dense(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        Rope::new(&self.config, factors)
    }

    /// Loads blocks `range` and nothing else.
    pub fn load_slice(
        &self,
        range: BlockRange,
        opts: &LoadOptions,
        progress: Option<ProgressFn>,
    ) -> Result<ModelSlice> {
        range.check_within(self.config.num_blocks())?;
        let act_dtype = self.act_dtype(opts);
        let pack = act_dtype == DType::F32 && !opts.candle_kernels;
        let maps = self.index.map()?;
        let mut noop = |_: u64| {};
        let progress = progress.unwrap_or(&mut noop);
        let mut done = 0u64;
        let mut load = |role: TensorRole, shape: &[usize]| -> Result<Weight> {
            let w = self.index.load(&maps, role, shape, &opts.device, pack)?;
            done += self.index.stored_bytes(role);
            progress(done);
            Ok(w)
        };
        let blocks = range
            .as_usize_range()
            .map(|i| Block::load(&self.config, i as u32, act_dtype, &mut load))
            .collect::<Result<Vec<_>>>()?;
        let rope = self.rope(&maps)?;
        Ok(ModelSlice {
            config: self.config.clone(),
            range,
            blocks,
            rope,
            device: opts.device.clone(),
            dtype: act_dtype,
        })
    }

    /// Loads the client's part: token embeddings, final norm and output head.
    pub fn load_head(
        &self,
        opts: &LoadOptions,
        progress: Option<ProgressFn>,
    ) -> Result<ClientHead> {
        let cfg = &self.config;
        let act_dtype = self.act_dtype(opts);
        let maps = self.index.map()?;
        let mut noop = |_: u64| {};
        let progress = progress.unwrap_or(&mut noop);
        let embed_shape = [cfg.vocab_size, cfg.hidden_size];
        let embed = self
            .index
            .map_rows(TensorRole::Embed, cfg.vocab_size, cfg.hidden_size)?;
        let norm = RmsNorm::new(
            self.index.load(
                &maps,
                TensorRole::FinalNorm,
                &[cfg.hidden_size],
                &opts.device,
                false,
            )?,
            cfg.rms_norm_eps,
            act_dtype,
        )?;
        let head_role = if cfg.tie_word_embeddings && !self.index.contains(TensorRole::LmHead) {
            TensorRole::Embed
        } else {
            TensorRole::LmHead
        };
        let pack = act_dtype == DType::F32 && !opts.candle_kernels;
        let head_weight = self
            .index
            .load(&maps, head_role, &embed_shape, &opts.device, pack)?;
        progress(self.head_file_bytes());
        Ok(ClientHead {
            config: cfg.clone(),
            embed,
            norm,
            lm_head: Linear::new(head_weight, None, act_dtype)?,
            device: opts.device.clone(),
            dtype: act_dtype,
        })
    }
}

/// A contiguous range of transformer blocks, ready to run on hidden states.
///
/// Holds only its own blocks' weights. Stateless between calls: the caller owns the KV cache
/// ([`SliceCache`]), so one slice serves many sessions concurrently.
#[derive(Debug)]
pub struct ModelSlice {
    config: ModelConfig,
    range: BlockRange,
    blocks: Vec<Block>,
    rope: Rope,
    device: Device,
    dtype: DType,
}

/// The KV cache of one session on one slice: for all of the slice's blocks, or for a
/// contiguous part of them (a session that uses only some of a node's blocks).
#[derive(Debug)]
pub struct SliceCache {
    span: BlockRange,
    layers: Vec<LayerCache>,
    len: usize,
}

impl SliceCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The blocks this cache (and its session) runs.
    pub fn span(&self) -> BlockRange {
        self.span
    }

    /// Forgets positions `len..` (for replaying or rewinding a step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.layers.iter_mut().for_each(|l| l.truncate(len));
    }
}

impl ModelSlice {
    /// The blocks this slice holds and runs.
    pub fn range(&self) -> BlockRange {
        self.range
    }

    /// Shape of the whole model the slice was cut from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Device the slice's weights live and run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dtype of the hidden states this slice computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// An empty KV cache for a new session over all of the slice's blocks.
    pub fn new_cache(&self) -> SliceCache {
        SliceCache {
            span: self.range,
            layers: self.blocks.iter().map(|_| LayerCache::new()).collect(),
            len: 0,
        }
    }

    /// An empty KV cache for a session that runs only blocks `span` (within the slice's range).
    pub fn new_cache_for(&self, span: BlockRange) -> Result<SliceCache> {
        self.check_span(span)?;
        Ok(SliceCache {
            span,
            layers: (0..span.len()).map(|_| LayerCache::new()).collect(),
            len: 0,
        })
    }

    fn check_span(&self, span: BlockRange) -> Result<()> {
        if span.start() < self.range.start() || span.end() > self.range.end() {
            return Err(EngineError::Unsupported {
                what: "block span",
                detail: format!("{span} is not within this slice's blocks {}", self.range),
            });
        }
        Ok(())
    }

    /// Bytes of KV cache one position takes on this slice.
    pub fn cache_bytes_per_token(&self) -> u64 {
        self.cache_bytes_per_token_for(self.range)
    }

    /// Bytes of KV cache one position takes for a session over `span`.
    pub fn cache_bytes_per_token_for(&self, span: BlockRange) -> u64 {
        (span.len() as usize * 2 * self.config.kv_dim() * self.dtype.size_in_bytes()) as u64
    }

    /// Runs the blocks on `hidden: [1, t, hidden_size]` at positions `cache.len()..+t` and
    /// returns the hidden states after the last block, in this slice's dtype.
    ///
    /// On error the cache is left as it was.
    pub fn forward(&self, hidden: &Tensor, cache: &mut SliceCache) -> Result<Tensor> {
        let mut out = self.forward_batch(&mut [(hidden, cache)])?;
        Ok(out.pop().expect("one output per item"))
    }

    /// Runs one step of several sessions in one pass over the weights: item `i` is
    /// `hidden_i: [1, t_i, hidden_size]` at positions `cache_i.len()..+t_i` of its own cache.
    /// Returns each item's hidden states after the last block (`[1, t_i, hidden_size]`), in order.
    ///
    /// All rows go through the norms, projections and MLP together; attention and RoPE run per
    /// session on its own cache and positions. On the CPU in f32 a session's output is bitwise
    /// what it would be alone, and a position's output is the same whether it came in a prefill,
    /// a decode step or a replay, on any number of threads (every weight type; see
    /// `tests/determinism.rs`). On CUDA, or with a 16-bit activation dtype, only up to rounding.
    ///
    /// Every hidden shape is checked before any cache is touched; on error every cache is left as
    /// it was.
    pub fn forward_batch(&self, items: &mut [(&Tensor, &mut SliceCache)]) -> Result<Vec<Tensor>> {
        for (hidden, _) in items.iter() {
            check_hidden(hidden, self.config.hidden_size)?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for (_, cache) in items.iter() {
            self.check_span(cache.span)?;
        }
        let span = items[0].1.span;
        if items.iter().any(|(_, c)| c.span != span) {
            // Sessions over different parts of the slice: one pass per part, outputs in order.
            let mut outs: Vec<Option<Tensor>> = items.iter().map(|_| None).collect();
            let lens: Vec<usize> = items.iter().map(|(_, c)| c.len).collect();
            let mut spans: Vec<BlockRange> = items.iter().map(|(_, c)| c.span).collect();
            spans.sort_by_key(|s| (s.start(), s.end()));
            spans.dedup();
            for part in spans {
                let (idx, mut group): (Vec<usize>, Vec<(&Tensor, &mut SliceCache)>) = items
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, (_, c))| c.span == part)
                    .map(|(i, (h, c))| (i, (*h, &mut **c)))
                    .unzip();
                match self.forward_batch(&mut group) {
                    Ok(group_outs) => {
                        for (i, out) in idx.into_iter().zip(group_outs) {
                            outs[i] = Some(out);
                        }
                    }
                    Err(e) => {
                        drop(group);
                        for ((_, cache), len) in items.iter_mut().zip(lens) {
                            cache.truncate(len);
                        }
                        return Err(e);
                    }
                }
            }
            return Ok(outs.into_iter().flatten().collect());
        }
        let out = crate::kernels::on_pool(|| self.forward_batch_here(items));
        if out.is_err() {
            // Blocks before the failure appended keys and values: forget them.
            for (_, cache) in items.iter_mut() {
                let len = cache.len;
                cache.truncate(len);
            }
        }
        out
    }

    fn forward_batch_here(&self, items: &mut [(&Tensor, &mut SliceCache)]) -> Result<Vec<Tensor>> {
        let mut ctxs = Vec::with_capacity(items.len());
        let mut xs = Vec::with_capacity(items.len());
        for (hidden, cache) in items.iter() {
            let t = hidden.dim(1)?;
            ctxs.push(StepContext::new(
                &self.config,
                &self.rope,
                cache.len,
                t,
                &self.device,
                self.dtype,
            )?);
            xs.push(hidden.to_device(&self.device)?.to_dtype(self.dtype)?);
        }
        let mut x = match xs.len() {
            1 => xs.pop().expect("one item"),
            _ => Tensor::cat(&xs, 1)?,
        };
        let span = items[0].1.span;
        let first = (span.start() - self.range.start()) as usize;
        let blocks = &self.blocks[first..first + span.len() as usize];
        for (l, block) in blocks.iter().enumerate() {
            let mut layers: Vec<&mut LayerCache> = items
                .iter_mut()
                .map(|(_, cache)| &mut cache.layers[l])
                .collect();
            x = block.forward(&x, &ctxs, &self.rope, &mut layers)?;
        }
        let mut outs = Vec::with_capacity(items.len());
        let mut row = 0;
        for ctx in &ctxs {
            outs.push(if ctxs.len() == 1 {
                x.clone()
            } else {
                x.narrow(1, row, ctx.t)?
            });
            row += ctx.t;
        }
        for ((_, cache), ctx) in items.iter_mut().zip(&ctxs) {
            cache.len += ctx.t;
        }
        Ok(outs)
    }
}

/// What the client keeps: embeddings in, logits out. Prompt tokens never leave it.
#[derive(Debug)]
pub struct ClientHead {
    config: ModelConfig,
    /// Token embeddings stay in the file; rows are read as tokens are looked up.
    embed: crate::weights::MappedRows,
    norm: RmsNorm,
    lm_head: Linear,
    device: Device,
    dtype: DType,
}

impl ClientHead {
    /// Shape of the model this head belongs to.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Dtype of the hidden states the head produces ([`Self::embed`]) and consumes.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the head puts its hidden states on and runs its norm and output projection on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Hidden states `[1, t, hidden]` for token ids; ids outside the vocabulary are an error.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&id) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(EngineError::TokenOutOfRange {
                id,
                vocab: self.config.vocab_size,
            });
        }
        let rows = self.embed.gather(ids)?;
        let rows = Tensor::from_vec(rows, (1, ids.len(), self.config.hidden_size), &self.device)?;
        Ok(rows.to_dtype(self.dtype)?)
    }

    /// Logits `[t, vocab]` (f32) for every position of `hidden: [1, t, hidden]`.
    pub fn logits_all(&self, hidden: &Tensor) -> Result<Tensor> {
        check_hidden(hidden, self.config.hidden_size)?;
        crate::kernels::on_pool(|| {
            let x = hidden.to_device(&self.device)?.to_dtype(self.dtype)?;
            let x = self.norm.forward(&x)?;
            Ok(self.lm_head.forward(&x)?.squeeze(0)?.to_dtype(DType::F32)?)
        })
    }

    /// Logits of the last position only, as a plain vector for sampling.
    pub fn logits_last(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let t = check_hidden(hidden, self.config.hidden_size)?;
        let last = hidden.narrow(1, t - 1, 1)?;
        Ok(self.logits_all(&last)?.squeeze(0)?.to_vec1::<f32>()?)
    }
}
