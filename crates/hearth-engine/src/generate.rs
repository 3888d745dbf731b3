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
    /// The first position whose output the stage may still take back: a swarm chain returns
    /// the start of an open window that it will spot-check when the window closes. Tokens
    /// sampled from outputs at or after it are held back from the text until then. `None`
    /// (the default): every output so far is final.
    fn pending_from(&mut self) -> Option<usize> {
        None
    }
    /// After a [`forward`](Self::forward): the first position whose earlier output the stage
    /// found wrong and corrected (a caught cheater, replaced). The generation re-samples every
    /// token drawn from outputs at or after it that it has not shown yet.
    fn take_rewind(&mut self) -> Option<usize> {
        None
    }
    /// No more tokens are wanted: last checks of what the stage returned (a swarm chain
    /// spot-checks its last, unfinished window). Returns a rewind as
    /// [`take_rewind`](Self::take_rewind) does, after which the generation goes on.
    fn finish(&mut self) -> Option<usize> {
        None
    }
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

    /// The earliest position any stage may still take back ([`HiddenStage::pending_from`]).
    pub fn pending_from(&mut self) -> Option<usize> {
        self.stages
            .iter_mut()
            .filter_map(|s| s.pending_from())
            .min()
    }

    /// The earliest position any stage corrected ([`HiddenStage::take_rewind`]).
    pub fn take_rewind(&mut self) -> Option<usize> {
        self.stages.iter_mut().filter_map(|s| s.take_rewind()).min()
    }

    /// Every stage's last checks ([`HiddenStage::finish`]); the earliest rewind they ask for.
    pub fn finish(&mut self) -> Option<usize> {
        self.stages.iter_mut().filter_map(|s| s.finish()).min()
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
    /// Every token sampled, in order, including those taken back by [`Self::rewinds`] (equal
    /// to `tokens`, or longer, when there were none): what a verifier replays.
    pub sampled: Vec<u32>,
    /// When stages corrected earlier outputs and tokens were sampled again.
    pub rewinds: Vec<Rewind>,
}

/// A rewind of a generation: after `sampled` tokens had been sampled, every token drawn from
/// outputs at or after `position` was taken back, and sampling went on from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewind {
    /// How many tokens had been sampled (taken-back ones included) when it happened.
    pub sampled: usize,
    /// The first position whose output was recomputed (the token at it stays).
    pub position: usize,
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

/// At most this many rewinds per generation: each follows a caught cheater, banned and replaced,
/// so a longer series means something else is wrong, and the generation goes on without more.
const MAX_REWINDS: usize = 16;

/// [`generate`] that polls `cancelled` before the prefill and before every further token, and
/// ends with [`FinishReason::Cancelled`] as soon as it returns true (no more work is sent to the
/// pipeline's stages after that).
///
/// Tokens drawn from outputs a stage may still take back ([`HiddenStage::pending_from`]) are
/// held back from `on_text` until the stage settles them; when a stage corrects earlier outputs
/// ([`HiddenStage::take_rewind`], [`HiddenStage::finish`]), every token not yet shown from
/// there on is sampled again. Sampling is a pure function of logits, history and step, so the
/// text is the one honest stages give.
pub fn generate_cancellable(
    pipeline: &mut Pipeline,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    on_text: &mut dyn FnMut(&str),
    cancelled: &dyn Fn() -> bool,
) -> Result<Generation> {
    let sampler = Sampler::new(params.clone())?;
    let eos = tokenizer.eos_token_ids();
    let mut text = TextOut {
        stream: tokenizer.stream(),
        stops: sampler.stop_matcher(),
        shown: 0,
        on_text,
    };
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        prompt_tokens: prompt.len(),
        prefill: Duration::ZERO,
        decode: Duration::ZERO,
        finish: FinishReason::Length,
        sampled: Vec::new(),
        rewinds: Vec::new(),
    };
    let started = Instant::now();
    if cancelled() {
        out.finish = FinishReason::Cancelled;
        return Ok(out);
    }
    let mut logits = pipeline.logits_last(0, prompt)?;
    let mut decode_started = None;
    let mut rewinds = 0;
    loop {
        let token = sampler.sample(&logits, &history, out.tokens.len() as u64)?;
        if decode_started.is_none() {
            out.prefill = started.elapsed();
            decode_started = Some(Instant::now());
        }
        out.tokens.push(token);
        out.sampled.push(token);
        history.push(token);
        let is_eos = eos.contains(&token);
        if is_eos || out.tokens.len() >= params.max_tokens {
            // The last token: the stages' last checks may still take some back.
            let again = match pipeline.finish().filter(|_| rewinds < MAX_REWINDS) {
                Some(at) => rewind(pipeline, &mut history, &mut out, &text, prompt.len(), at)?,
                None => None,
            };
            match again {
                Some(again) => {
                    rewinds += 1;
                    logits = again;
                    continue;
                }
                None => {
                    out.finish = if is_eos {
                        FinishReason::Eos
                    } else {
                        FinishReason::Length
                    };
                    if text.show(&out.tokens, out.tokens.len(), &mut out.text, eos)? {
                        out.finish = FinishReason::Stop;
                        out.tokens.truncate(text.shown);
                    } else {
                        if text.finish(&mut out.text)? {
                            out.finish = FinishReason::Stop;
                        }
                    }
                    break;
                }
            }
        }
        // Show what no stage can take back: tokens drawn from outputs before `pending_from`.
        let settled = pipeline
            .pending_from()
            .map_or(out.tokens.len(), |p| (p + 1).saturating_sub(prompt.len()));
        if text.show(
            &out.tokens,
            settled.min(out.tokens.len()),
            &mut out.text,
            eos,
        )? {
            out.finish = FinishReason::Stop;
            out.tokens.truncate(text.shown);
            pipeline.finish();
            break;
        }
        if cancelled() {
            out.finish = FinishReason::Cancelled;
            out.tokens.truncate(text.shown);
            break;
        }
        logits = pipeline.logits_last(history.len() - 1, &[token])?;
        if let Some(at) = pipeline.take_rewind().filter(|_| rewinds < MAX_REWINDS) {
            if let Some(again) = rewind(pipeline, &mut history, &mut out, &text, prompt.len(), at)?
            {
                rewinds += 1;
                logits = again;
            }
        }
    }
    out.decode = decode_started.map_or(Duration::ZERO, |t| t.elapsed());
    Ok(out)
}

/// Takes back every token drawn from outputs at or after position `at` that is not shown yet,
/// and returns the logits to sample the first of them again (computed from position `at` on,
/// below the stages' cached length, so they replay from there). `None` when there is nothing
/// to take back: every such token is shown, or `at` is the last position (whose output the
/// stage has just corrected itself).
fn rewind(
    pipeline: &mut Pipeline,
    history: &mut Vec<u32>,
    out: &mut Generation,
    text: &TextOut<'_>,
    prompt_len: usize,
    at: usize,
) -> Result<Option<Vec<f32>>> {
    // Shown text stays: the earliest output to recompute is the one the first unshown token
    // was drawn from.
    let at = at.max((prompt_len + text.shown).saturating_sub(1));
    if at + 1 >= history.len() {
        return Ok(None);
    }
    out.rewinds.push(Rewind {
        sampled: out.sampled.len(),
        position: at,
    });
    history.truncate(at + 1);
    out.tokens.truncate(at + 1 - prompt_len);
    pipeline.logits_last(at, &[history[at]]).map(Some)
}

/// The text side of a generation: detokenizes the tokens it is allowed to show, in order, and
/// cuts at stop sequences.
struct TextOut<'a> {
    stream: hearth_tokenizer::TextStream<'a>,
    stops: hearth_sampling::StopMatcher,
    /// Tokens of the generation already passed through (shown, or held as a stop prefix).
    shown: usize,
    on_text: &'a mut dyn FnMut(&str),
}

impl TextOut<'_> {
    /// Shows `tokens[self.shown..upto]`; true when a stop sequence ended the text (`shown` is
    /// then just past the token that completed it). EOS tokens have no text.
    fn show(&mut self, tokens: &[u32], upto: usize, out: &mut String, eos: &[u32]) -> Result<bool> {
        while self.shown < upto {
            let token = tokens[self.shown];
            self.shown += 1;
            if eos.contains(&token) {
                continue;
            }
            if let Some(piece) = self.stream.push(token)? {
                let outcome = self.stops.push(&piece);
                emit(self.on_text, &outcome.emit, out);
                if outcome.stopped {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The end of the text: what the detokenizer and the stop matcher still hold. True when a
    /// stop sequence ended it.
    fn finish(self, out: &mut String) -> Result<bool> {
        let TextOut {
            stream,
            mut stops,
            on_text,
            ..
        } = self;
        let outcome = stops.push(&stream.finish()?);
        emit(on_text, &outcome.emit, out);
        if !outcome.stopped {
            emit(on_text, &stops.flush(), out);
        }
        Ok(outcome.stopped)
    }
}

/// Passes a non-empty `piece` to `on_text` and appends it to the generation's text.
fn emit(on_text: &mut dyn FnMut(&str), piece: &str, out: &mut String) {
    if !piece.is_empty() {
        on_text(piece);
        out.push_str(piece);
    }
}
