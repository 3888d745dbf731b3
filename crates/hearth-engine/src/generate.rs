//! Generation through a chain of slices: the client embeds, each stage transforms hidden states,
//! the client computes logits and samples. The chain is abstract ([`HiddenStage`]), so the same
//! loop drives in-process slices here and remote nodes in the swarm.

use crate::error::Result;
use crate::model::{ClientHead, LoadOptions, ModelSource, ProgressFn};
use crate::session::{SessionId, SessionLimits, SliceServer};
use candle_core::Tensor;
use hearth_core::BlockRange;
use hearth_sampling::{Sampler, SamplingParams};
use hearth_tokenizer::Tokenizer;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One link of the chain: transforms hidden states at positions `start..start+t`.
pub trait HiddenStage: Send {
    /// Runs the stage. `start` below the stage's cached length replays from there.
    fn forward(&mut self, start: usize, hidden: &Tensor) -> Result<Tensor>;
    /// The generation is over: last checks of what the stage returned (a swarm chain
    /// spot-checks its last, unfinished window). What they find is the stage's to report; the
    /// generation's result stands.
    fn finish(&mut self) {}
    /// A short human-readable description (e.g. `local 0..8`).
    fn describe(&self) -> String;
}

/// A stage backed by a session on an in-process [`SliceServer`]; closes its session on drop.
pub struct LocalStage {
    server: Arc<SliceServer>,
    session: SessionId,
}

impl LocalStage {
    /// Opens a session of up to `max_len` positions on `server`.
    pub fn open(server: Arc<SliceServer>, max_len: usize) -> Result<Self> {
        let session = server.open(max_len)?;
        Ok(Self { server, session })
    }

    /// Loads blocks `range` of `src` onto a server of its own (default session limits) and opens
    /// a session of up to `max_len` positions on it.
    pub fn load(
        src: &ModelSource,
        range: BlockRange,
        opts: &LoadOptions,
        max_len: usize,
        progress: Option<ProgressFn>,
    ) -> Result<Self> {
        let slice = Arc::new(src.load_slice(range, opts, progress)?);
        Self::open(
            Arc::new(SliceServer::new(slice, SessionLimits::default())),
            max_len,
        )
    }
}

impl HiddenStage for LocalStage {
    fn forward(&mut self, start: usize, hidden: &Tensor) -> Result<Tensor> {
        self.server.step(self.session, start, hidden)
    }

    fn describe(&self) -> String {
        format!("local {}", self.server.slice().range())
    }
}

impl Drop for LocalStage {
    fn drop(&mut self) {
        // The session may already have expired; nothing else to release.
        let _ = self.server.close(self.session);
    }
}

/// The client head plus a chain of stages covering every block in order.
pub struct Pipeline {
    /// The client's part: embeddings, final norm and output head.
    pub head: Arc<ClientHead>,
    /// The stages that run the blocks, in block order; together they cover every block once.
    pub stages: Vec<Box<dyn HiddenStage>>,
    /// When set, the last-position logits go through this shared batcher (many concurrent
    /// generations, one head product) instead of `head`.
    pub head_batch: Option<crate::head_batch::HeadBatcher>,
}

impl Pipeline {
    /// The client head plus one in-process [`LocalStage`] per range (ranges in block order).
    pub fn load_local(
        src: &ModelSource,
        ranges: &[BlockRange],
        opts: &LoadOptions,
        max_len: usize,
    ) -> Result<Self> {
        let head = Arc::new(src.load_head(opts, None)?);
        let stages = ranges
            .iter()
            .map(|&r| {
                Ok(Box::new(LocalStage::load(src, r, opts, max_len, None)?)
                    as Box<dyn HiddenStage>)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            head,
            stages,
            head_batch: None,
        })
    }

    /// Embeds `ids` (positions `start..`) and runs them through every stage.
    pub fn hidden(&mut self, start: usize, ids: &[u32]) -> Result<Tensor> {
        let mut x = self.head.embed(ids)?;
        for stage in &mut self.stages {
            x = stage.forward(start, &x)?;
        }
        Ok(x)
    }

    /// Logits `[t, vocab]` for every position of `ids`.
    pub fn logits_all(&mut self, start: usize, ids: &[u32]) -> Result<Tensor> {
        let x = self.hidden(start, ids)?;
        self.head.logits_all(&x)
    }

    /// Logits of the last of `ids`.
    pub fn logits_last(&mut self, start: usize, ids: &[u32]) -> Result<Vec<f32>> {
        let x = self.hidden(start, ids)?;
        match &self.head_batch {
            Some(batcher) => batcher.logits_last(&x),
            None => self.head.logits_last(&x),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop sequence appeared in the text.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller asked to stop (e.g. its HTTP client went away).
    Cancelled,
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (excluding the prompt; including a final EOS token if one was drawn).
    pub tokens: Vec<u32>,
    /// The text emitted (stop sequences excluded).
    pub text: String,
    /// Number of prompt tokens fed to the model.
    pub prompt_tokens: usize,
    /// Time to the first sampled token.
    pub prefill: Duration,
    /// Time for the remaining tokens.
    pub decode: Duration,
    /// Why generation stopped.
    pub finish: FinishReason,
}

impl Generation {
    /// Prompt tokens per second of [`Self::prefill`].
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Tokens after the first per second of [`Self::decode`].
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Generates from `prompt` through `pipeline`, calling `on_text` with each piece of text as soon as
/// it is final (never a partial UTF-8 character, never part of a stop sequence).
pub fn generate(
    pipeline: &mut Pipeline,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    generate_cancellable(pipeline, tokenizer, prompt, params, on_text, &|| false)
}

/// [`generate`] that polls `cancelled` before the prefill and before every further token, and
/// ends with [`FinishReason::Cancelled`] as soon as it returns true (no more work is sent to the
/// pipeline's stages after that).
pub fn generate_cancellable(
    pipeline: &mut Pipeline,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    on_text: &mut dyn FnMut(&str),
    cancelled: &dyn Fn() -> bool,
) -> Result<Generation> {
    let sampler = Sampler::new(params.clone())?;
    let mut stops = sampler.stop_matcher();
    let mut stream = tokenizer.stream();
    let eos = tokenizer.eos_token_ids();
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        prompt_tokens: prompt.len(),
        prefill: Duration::ZERO,
        decode: Duration::ZERO,
        finish: FinishReason::Length,
    };
    let mut emit = |text: &str, out: &mut Generation| {
        if !text.is_empty() {
            on_text(text);
            out.text.push_str(text);
        }
    };
    let started = Instant::now();
    if cancelled() {
        out.finish = FinishReason::Cancelled;
        return Ok(out);
    }
    let mut logits = pipeline.logits_last(0, prompt)?;
    let mut decode_started = None;
    for step in 0..params.max_tokens {
        let token = sampler.sample(&logits, &history, step as u64)?;
        if decode_started.is_none() {
            out.prefill = started.elapsed();
            decode_started = Some(Instant::now());
        }
        out.tokens.push(token);
        history.push(token);
        if eos.contains(&token) {
            out.finish = FinishReason::Eos;
            break;
        }
        if let Some(piece) = stream.push(token)? {
            let outcome = stops.push(&piece);
            emit(&outcome.emit, &mut out);
            if outcome.stopped {
                out.finish = FinishReason::Stop;
                break;
            }
        }
        if step + 1 == params.max_tokens {
            break;
        }
        if cancelled() {
            out.finish = FinishReason::Cancelled;
            break;
        }
        logits = pipeline.logits_last(history.len() - 1, &[token])?;
    }
    if out.finish != FinishReason::Stop && out.finish != FinishReason::Cancelled {
        let tail = stream.finish()?;
        let outcome = stops.push(&tail);
        emit(&outcome.emit, &mut out);
        if outcome.stopped {
            out.finish = FinishReason::Stop;
        } else {
            emit(&stops.flush(), &mut out);
        }
    }
    out.decode = decode_started.map_or(Duration::ZERO, |t| t.elapsed());
    if out.finish != FinishReason::Cancelled {
        for stage in &mut pipeline.stages {
            stage.finish();
        }
    }
    Ok(out)
}
