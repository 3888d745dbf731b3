//! `hearth verify`: check a gateway trail as a light client would (no model, no network), re-check
//! a fraud proof with the model, or calibrate the tolerance that separates honest floating-point
//! noise from cheating (docs/verification.md).

use crate::common::ModelArgs;
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use hearth_core::ContentHash;
use hearth_core::{BlockRange, SplitMix64};
use hearth_engine::SessionId;
use hearth_engine::{
    ClientHead, DType, Device, LoadOptions, ModelSource, SessionLimits, SliceServer, Tensor,
};
use hearth_gateway::trail::{RewindOut, TokensOut};
use hearth_gateway::{verify_trail, Trail};
use hearth_sampling::Sampler;
use hearth_verify::compare::{compare_rows, compare_sketches, Comparison};
use hearth_verify::{Replay, Verdict, HONEST_TOLERANCE};
use hearth_wire::Receipt;
use hearth_wire::{FraudProof, HiddenDType, HiddenStates, Limits};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Largest trail or proof file read (a 2048-token trail is a few MiB).
const MAX_FILE_BYTES: u64 = 256 << 20;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct VerifyArgs {
    /// A trail saved from `GET /v1/hearth/trails/{id}` or `hearth generate --swarm --trail`
    /// (JSON): checked with no model and no network (signatures, keys ↔ peer ids, linkage, model
    /// id, commitments, spot-check draws).
    pub trail: Option<PathBuf>,
    /// With a trail: also re-execute every hop with this model (GGUF file or HF folder) and
    /// replay every token choice from the logits and the seed.
    #[arg(long, requires = "trail")]
    pub model: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<VerifyCommand>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum VerifyCommand {
    /// Re-execute a fraud proof's window with the model: exit 0 when the proof holds (the node
    /// signed outputs its blocks do not compute), 1 when it does not.
    FraudProof {
        /// The proof file (written by `hearth generate --swarm` into --fraud-dir).
        file: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Largest worst-row relative error still counted as honest.
        #[arg(long, default_value_t = HONEST_TOLERANCE)]
        tolerance: f64,
    },
    /// Measure how far honest recomputations and cheating nodes land from a verifier's
    /// recomputation, per window, on one model.
    Calibrate(Box<CalibrateArgs>),
}

pub(crate) fn run(args: VerifyArgs) -> Result<()> {
    match (args.trail, args.command) {
        (
            _,
            Some(VerifyCommand::FraudProof {
                file,
                model,
                tolerance,
            }),
        ) => fraud_proof(&file, &model.path()?, tolerance),
        (_, Some(VerifyCommand::Calibrate(c))) => calibrate(&c),
        (Some(trail), None) => trail_command(&trail, args.model.as_deref()),
        (None, None) => bail!("give a trail file, or a subcommand (fraud-proof, calibrate)"),
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    ensure!(
        len <= MAX_FILE_BYTES,
        "{} is {len} bytes, more than the {MAX_FILE_BYTES} this command reads",
        path.display()
    );
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn trail_command(path: &Path, model: Option<&Path>) -> Result<()> {
    let bytes = read_bounded(path)?;
    let started = Instant::now();
    let trail: Trail = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a hearth trail", path.display()))?;
    let report = verify_trail(&trail);
    let took = started.elapsed();
    println!(
        "{} receipts, {} passes linked, {} spot-check draws re-derived, {} checks recorded, {} \
         fraud proofs; {:.1} ms",
        report.receipts,
        report.steps,
        report.draws_checked,
        trail.spot_checks.checks.len(),
        trail.spot_checks.fraud_proofs.len(),
        took.as_secs_f64() * 1000.0
    );
    if !report.problems.is_empty() {
        for p in &report.problems {
            println!("problem: {p}");
        }
        bail!(
            "the trail does not verify ({} problems)",
            report.problems.len()
        )
    }
    println!("trail verifies");
    if let Some(model) = model {
        let started = Instant::now();
        let r = reexecute_trail(&trail, model)?;
        println!(
            "re-executed {} hops with {}: {} bit-exact, {} within tolerance, {} wrong (each one a \
             node the trail records as caught); replayed {} of {} token choices ({} drawn from \
             a caught node and taken back); {:.0} ms",
            r.exact + r.close + r.wrong,
            model.display(),
            r.exact,
            r.close,
            r.wrong,
            r.tokens_replayed,
            trail.tokens.as_ref().map_or(0, |t| t.sampled().len()),
            r.tokens_taken_back,
            started.elapsed().as_secs_f64() * 1000.0
        );
        if !r.problems.is_empty() {
            for p in &r.problems {
                println!("problem: {p}");
            }
            bail!(
                "re-execution disagrees with the trail ({} problems)",
                r.problems.len()
            );
        }
        println!("every hop and every token choice re-checks");
    }
    Ok(())
}

/// What re-executing a trail found.
#[derive(Default)]
struct Reexecution {
    exact: usize,
    close: usize,
    wrong: usize,
    tokens_replayed: usize,
    /// Tokens drawn from a caught node's wrong output (then taken back, unless a problem says
    /// otherwise).
    tokens_taken_back: usize,
    problems: Vec<String>,
}

/// The model's blocks run as the trail's hops ran them: one session per span, fed the inputs
/// each hop received (recomputed here, rounded to the wire dtype), so every digest can be
/// compared with the signed one.
struct Shadow {
    server: Arc<SliceServer>,
    dtype: HiddenDType,
    cols: usize,
    max_len: usize,
    /// Session and cached positions per span.
    sessions: HashMap<(u32, u32), (SessionId, usize)>,
    /// The wire-rounded states entering block `b`, positions 0.., row-major.
    boundary: HashMap<u32, Vec<f32>>,
}

impl Shadow {
    fn record(&mut self, block: u32, start: usize, rows: &[f32]) -> Result<()> {
        let v = self.boundary.entry(block).or_default();
        let at = start * self.cols;
        ensure!(
            at <= v.len(),
            "positions before {start} never entered block {block}"
        );
        v.truncate(at);
        v.extend_from_slice(rows);
        Ok(())
    }

    /// Runs `span` on `x` (positions `start..`), catching its session up from the recorded
    /// inputs of its first block; returns the wire-rounded output.
    fn run(&mut self, span: BlockRange, start: usize, x: &[f32]) -> Result<Vec<f32>> {
        self.run_with(span, start, x, true)
    }

    /// As [`Shadow::run`]; `round` says whether the output goes on the wire (rounded to its
    /// dtype) or stays in the client (the last blocks under `--private-edges`).
    fn run_with(
        &mut self,
        span: BlockRange,
        start: usize,
        x: &[f32],
        round: bool,
    ) -> Result<Vec<f32>> {
        let key = (span.start(), span.end());
        let (id, cached) = match self.sessions.get(&key) {
            Some(s) => *s,
            None => (self.server.open_span(self.max_len, span)?, 0),
        };
        if cached < start {
            let inputs = self
                .boundary
                .get(&span.start())
                .and_then(|v| v.get(cached * self.cols..start * self.cols))
                .with_context(|| format!("no inputs to catch blocks {span} up to {start}"))?
                .to_vec();
            self.step(id, cached, &inputs, true)?;
        }
        let out = self.step(id, start, x, round)?;
        self.sessions.insert(key, (id, start + x.len() / self.cols));
        self.record(span.end(), start, &out)?;
        Ok(out)
    }

    fn step(&self, id: SessionId, start: usize, x: &[f32], round: bool) -> Result<Vec<f32>> {
        let rows = x.len() / self.cols;
        let t = Tensor::from_vec(x.to_vec(), (1, rows, self.cols), &Device::Cpu)?;
        let y = self.server.step(id, start, &t)?;
        let y = f32_values(&y)?;
        Ok(if round {
            wire_round(self.dtype, self.cols as u32, &y)
        } else {
            y
        })
    }

    fn digest(&self, start: usize, x: &[f32]) -> ContentHash {
        let rows = (x.len() / self.cols) as u32;
        HiddenStates::from_f32(self.dtype, start as u32, rows, self.cols as u32, x).digest()
    }
}

/// Re-executes every pass of `trail` with the model and replays the sampler: checks that each
/// step's first input is the embedding of the trail's tokens, that every hop's signed input and
/// output digests are what the model computes (bit-exact) or its commitment is within the
/// tolerance, and that every generated token is what the sampler picks from the logits.
fn reexecute_trail(trail: &Trail, model: &Path) -> Result<Reexecution> {
    let tokens = trail
        .tokens
        .as_ref()
        .context("the trail has no token ids (written by an older hearth?)")?;
    let params = trail
        .sampling
        .clone()
        .context("the trail has no sampling parameters")?;
    let dtype: HiddenDType = trail
        .wire_dtype
        .parse()
        .map_err(|e: String| anyhow::anyhow!("trail wire dtype: {e}"))?;
    let src = ModelSource::open(model).with_context(|| format!("opening {}", model.display()))?;
    let ident = src.identity()?;
    ensure!(
        ident.model_id.to_hex() == trail.model_id,
        "the trail is about model {}, {} is {}",
        trail.model_id,
        model.display(),
        ident.model_id
    );
    let cfg = src.config().clone();
    let opts = LoadOptions::default();
    let head = src.load_head(&opts, None)?;
    let all = BlockRange::full(cfg.num_blocks())?;
    let server = Arc::new(SliceServer::new(
        Arc::new(src.load_slice(all, &opts, None)?),
        SessionLimits::default(),
    ));
    let mut timeline = Timeline::new(tokens);
    let mut shadow = Shadow {
        server,
        dtype,
        cols: cfg.hidden_size,
        max_len: (tokens.prompt.len() + tokens.sampled().len()).max(1),
        sessions: HashMap::new(),
        boundary: HashMap::new(),
    };
    let caught: HashSet<&str> = trail
        .spot_checks
        .checks
        .iter()
        .filter(|c| c.outcome == "failed")
        .map(|c| c.node.as_str())
        .collect();
    let sampler = Sampler::new(params)?;
    let mut r = Reexecution::default();
    // Whether some hop's output differed from the recomputation: from then on the recomputed
    // states are not the ones the nodes received, and only commitments can be compared.
    let mut diverged = false;
    let receipts: Vec<Receipt> = trail
        .receipts
        .iter()
        .map(|o| Ok(Receipt::from_bytes(&hex::decode(&o.bytes)?)?))
        .collect::<Result<_>>()?;
    for (i, step) in trail.steps.iter().enumerate() {
        let Some(first) = step.receipts.first().and_then(|k| receipts.get(*k)) else {
            continue;
        };
        let (start, rows) = (first.body.start as usize, first.body.rows() as usize);
        let blocks: BlockRange = step.blocks.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut x = if step.replay {
            shadow
                .boundary
                .get(&blocks.start())
                .and_then(|v| v.get(start * shadow.cols..(start + rows) * shadow.cols))
                .with_context(|| format!("pass {i}: replayed positions never computed"))?
                .to_vec()
        } else {
            let ids = timeline
                .at_pass(start, rows)
                .with_context(|| format!("pass {i}: positions beyond the trail's tokens"))?;
            let e = f32_values(&head.embed(ids)?)?;
            if blocks.start() > 0 {
                // `--private-edges`: the client ran the first blocks itself, on the embedding as
                // is, and sent their output.
                shadow.record(0, start, &e)?;
                shadow.run(BlockRange::new(0, blocks.start())?, start, &e)?
            } else {
                let e = wire_round(dtype, cfg.hidden_size as u32, &e);
                shadow.record(0, start, &e)?;
                e
            }
        };
        if (!step.replay || !diverged) && shadow.digest(start, &x).to_hex() != step.input {
            r.problems.push(format!(
                "pass {i}: its input is not {} of the trail's tokens",
                if step.replay {
                    "the recomputed history"
                } else {
                    "the embedding"
                }
            ));
        }
        let wrong_before = r.wrong;
        for k in &step.receipts {
            let (body, node) = (&receipts[*k].body, &trail.receipts[*k].node);
            if !diverged && shadow.digest(start, &x) != body.input {
                r.problems
                    .push(format!("pass {i}: node {node} signed for another input"));
            }
            let out = shadow.run(body.span, start, &x)?;
            if shadow.digest(start, &out) == body.output {
                r.exact += 1;
            } else {
                diverged = true;
                let c = compare_sketches(&body.commitment.rows, &out, shadow.cols);
                if c.verdict(HONEST_TOLERANCE) == Verdict::Agrees {
                    r.close += 1;
                } else {
                    r.wrong += 1;
                    if !caught.contains(node.as_str()) {
                        r.problems.push(format!(
                            "pass {i}: node {node} (blocks {}) positions {start}..{}: {:.2e} off, \
                             and the trail records no failed check of it",
                            body.span,
                            start + rows,
                            c.max_error
                        ));
                    }
                }
            }
            x = out;
        }
        if !step.replay && blocks.end() < all.end() {
            // `--private-edges`: the client ran the last blocks itself, on what the swarm sent.
            let tail = BlockRange::new(blocks.end(), all.end())?;
            x = shadow.run_with(tail, start, &x, false)?;
        }
        if !step.replay {
            // The token sampled from this step's last row (none when the generation took the
            // step back at once).
            // A wrong pass followed by replays was caught and corrected within its step: the
            // client sampled from the corrected output, which is what the shadow computed.
            let corrected = trail.steps.get(i + 1).is_some_and(|s| s.replay);
            if timeline.sampled_next().is_some() && r.wrong > wrong_before && !corrected {
                // Drawn from a caught node's wrong output: not the model's choice, so it must
                // have been taken back (checked at the end).
                timeline.taint_next();
            } else if let Some(want) = timeline.sampled_next() {
                let last = Tensor::from_vec(
                    x[(rows - 1) * shadow.cols..].to_vec(),
                    (1, 1, shadow.cols),
                    &Device::Cpu,
                )?
                .to_dtype(head.dtype())?;
                let logits = head.logits_last(&last)?;
                let s = timeline.generated_len();
                let got = sampler.sample(&logits, &timeline.history, s as u64)?;
                if got == want {
                    r.tokens_replayed += 1;
                } else {
                    r.problems.push(format!(
                        "token {s}: the sampler picks {got}, the trail says {want}"
                    ));
                }
            }
        }
    }
    r.tokens_taken_back = timeline.tainted.len();
    match timeline.end() {
        None => r
            .problems
            .push("the trail's generated tokens are not the ones it says were sampled".into()),
        Some(tainted) if tainted > 0 => r.problems.push(format!(
            "{tainted} tokens of the text were drawn from a caught node's wrong output and not \
             taken back"
        )),
        Some(_) => {}
    }
    Ok(r)
}

/// The token history as the generation saw it, pass by pass: sampled tokens join it in order
/// and rewinds cut it back (`TokensOut::rewinds`).
struct Timeline<'a> {
    tokens: &'a TokensOut,
    history: Vec<u32>,
    /// The next sampled token to join.
    next: usize,
    /// The next rewind to apply.
    next_rewind: usize,
    /// Whether the next sampled token was drawn from a wrong output.
    taint_next: bool,
    /// Positions of tokens drawn from wrong outputs, ever (taken back or not).
    tainted: Vec<usize>,
    /// Those still in the history.
    tainted_now: HashSet<usize>,
}

impl<'a> Timeline<'a> {
    fn new(tokens: &'a TokensOut) -> Self {
        Self {
            tokens,
            history: tokens.prompt.clone(),
            next: 0,
            next_rewind: 0,
            taint_next: false,
            tainted: Vec::new(),
            tainted_now: HashSet::new(),
        }
    }

    /// The ids of a pass over `start..start + rows`: every pass ends at the history's end (the
    /// prompt, a newly sampled token, or the position a rewind cut back to).
    fn at_pass(&mut self, start: usize, rows: usize) -> Option<&[u32]> {
        while self.history.len() != start + rows {
            self.advance()?;
        }
        self.history.get(start..)
    }

    /// Applies the next event (a rewind or a sampled token); `None` when there is none.
    fn advance(&mut self) -> Option<()> {
        if let Some(r) = self.pending_rewind() {
            self.history.truncate(r.position + 1);
            self.tainted_now.retain(|&p| p <= r.position);
            self.next_rewind += 1;
            return Some(());
        }
        let token = *self.tokens.sampled().get(self.next)?;
        if std::mem::take(&mut self.taint_next) {
            self.tainted.push(self.history.len());
            self.tainted_now.insert(self.history.len());
        }
        self.history.push(token);
        self.next += 1;
        Some(())
    }

    /// Marks the next sampled token as drawn from a wrong output.
    fn taint_next(&mut self) {
        self.taint_next = true;
    }

    fn pending_rewind(&self) -> Option<RewindOut> {
        self.tokens
            .rewinds
            .get(self.next_rewind)
            .filter(|r| r.sampled == self.next)
            .copied()
    }

    /// The token sampled from the pass just run: the next event when it is a token.
    fn sampled_next(&self) -> Option<u32> {
        if self.pending_rewind().is_some() {
            return None;
        }
        self.tokens.sampled().get(self.next).copied()
    }

    /// Tokens generated so far in the history (the sampler's step index).
    fn generated_len(&self) -> usize {
        self.history.len() - self.tokens.prompt.len()
    }

    /// Applies every event left. `None` when the trail's generated tokens do not begin the
    /// history then (a stop sequence may end them before the last token sampled); otherwise
    /// how many of them were drawn from wrong outputs.
    fn end(mut self) -> Option<usize> {
        while self.advance().is_some() {}
        let prompt = self.tokens.prompt.len();
        let generated = self.tokens.generated.len();
        let begins = self
            .history
            .get(prompt..)
            .is_some_and(|h| h.starts_with(&self.tokens.generated));
        begins.then(|| {
            self.tainted_now
                .iter()
                .filter(|&&p| p < prompt + generated)
                .count()
        })
    }
}

/// What the whole of `slice` computes from `input` in one prefill, wire-rounded as a node sends
/// it (the same recomputation a node does before hosting a fraud proof).
fn recompute(slice: &Arc<SliceServer>, input: &HiddenStates) -> Result<Vec<f32>> {
    Ok(hearth_swarm::gossip::recompute(
        slice,
        slice.slice().range(),
        input,
    )?)
}

/// A tensor's values as f32, row-major.
fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn wire_round(dtype: HiddenDType, cols: u32, values: &[f32]) -> Vec<f32> {
    let rows = (values.len() / cols.max(1) as usize) as u32;
    HiddenStates::from_f32(dtype, 0, rows, cols, values).to_f32()
}

fn fraud_proof(file: &Path, model: &Path, tolerance: f64) -> Result<()> {
    let bytes = read_bounded(file)?;
    let proof = FraudProof::from_bytes(&bytes, &Limits::default())
        .with_context(|| format!("{} is not a fraud proof", file.display()))?;
    let replay = Replay::of(&proof).context("the proof is not a valid signed record")?;
    let src = ModelSource::open(model).with_context(|| format!("opening {}", model.display()))?;
    let ident = src.identity()?;
    ensure!(
        ident.model_id == replay.model_id,
        "the proof is about model {}, {} is {}",
        replay.model_id,
        model.display(),
        ident.model_id
    );
    let slice = src.load_slice(replay.span, &LoadOptions::default(), None)?;
    let server = Arc::new(SliceServer::new(Arc::new(slice), SessionLimits::default()));
    let started = Instant::now();
    let recomputed = recompute(&server, &replay.input)?;
    let c = replay.judge(&recomputed);
    println!(
        "node {}: blocks {}, positions {}..{} of {} re-executed in {:.0} ms: worst row {:.3e} \
         relative, mean {:.3e} (tolerance {tolerance:.1e})",
        hex::encode(replay.node),
        replay.span,
        replay.window_start,
        replay.window_start + replay.window_rows,
        replay.input.rows,
        started.elapsed().as_secs_f64() * 1000.0,
        c.max_error,
        c.mean_error
    );
    match c.verdict(tolerance) {
        Verdict::Disagrees => {
            println!("the proof holds: the node signed outputs its blocks do not compute");
            Ok(())
        }
        Verdict::Agrees => {
            bail!("the proof does not hold: the node's outputs are within tolerance")
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Blocks the simulated node serves (default: the first half of the model).
    #[arg(long)]
    pub span: Option<BlockRange>,
    /// Positions per trial (a prefill of 32 then one-token steps, as a generation runs).
    #[arg(long, default_value_t = 96)]
    pub positions: u32,
    /// Trials (each with its own random tokens).
    #[arg(long, default_value_t = 4)]
    pub trials: u32,
    /// Wire dtype of the hidden states.
    #[arg(long, default_value = "f16")]
    pub wire_dtype: HiddenDType,
    /// Write the verifier's recomputations here (run once with HEARTH_KERNELS_SCALAR=1 to
    /// compare the scalar path with AVX-512 in a second run's --reference).
    #[arg(long)]
    pub write_reference: Option<PathBuf>,
    /// Recomputations written by another run's --write-reference, compared as an honest path.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Other files to run as the node while the verifier runs --model (e.g. a Q4_0 of the same
    /// weights: "lower precision"; other weights: "wrong weights"), `LABEL=FILE`.
    #[arg(long)]
    pub node_model: Vec<String>,
    /// Also run each output cheat (needs the `adversary` feature).
    #[arg(long)]
    pub cheats: bool,
}

/// One way of producing a node's answers, and whether an honest node could produce them.
struct Variant {
    label: String,
    honest: bool,
    windows: Vec<Comparison>,
}

fn calibrate(args: &CalibrateArgs) -> Result<()> {
    let path = args.model.path()?;
    let src = ModelSource::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let cfg = src.config().clone();
    let n_blocks = cfg.num_blocks();
    let span = match args.span {
        Some(s) => s,
        None => BlockRange::new(0, (n_blocks / 2).max(1))?,
    };
    span.check_within(n_blocks)?;
    let opts = LoadOptions::default();
    let head: ClientHead = src.load_head(&opts, None)?;
    let load = |src: &ModelSource, candle: bool| -> Result<Arc<SliceServer>> {
        let o = LoadOptions {
            candle_kernels: candle,
            ..LoadOptions::default()
        };
        Ok(Arc::new(SliceServer::new(
            Arc::new(src.load_slice(span, &o, None)?),
            SessionLimits::default(),
        )))
    };
    let server = load(&src, false)?;
    let candle = load(&src, true)?;
    let mut node_models = Vec::new();
    for spec in &args.node_model {
        let (label, file) = spec
            .split_once('=')
            .with_context(|| format!("--node-model {spec:?}: expected LABEL=FILE"))?;
        let other = ModelSource::open(Path::new(file))?;
        node_models.push((label.to_string(), load(&other, false)?));
    }
    let window = 32u32;
    let positions = args.positions.max(window);
    let dtype = args.wire_dtype;
    let cols = cfg.hidden_size as u32;
    let mut variants: Vec<Variant> = Vec::new();
    let mut add = |label: &str, honest: bool, node: &[f32], verifier: &[f32]| {
        let v = match variants.iter_mut().position(|v| v.label == label) {
            Some(i) => &mut variants[i],
            None => {
                variants.push(Variant {
                    label: label.into(),
                    honest,
                    windows: Vec::new(),
                });
                variants.last_mut().expect("just pushed")
            }
        };
        let w = (window * cols) as usize;
        for (a, b) in node.chunks(w).zip(verifier.chunks(w)) {
            v.windows.push(compare_rows(a, b, cols as usize));
        }
    };
    let mut references: Vec<Vec<f32>> = Vec::new();
    let (mut verifier_ms, mut node_ms, mut commit_ms) = (Vec::new(), Vec::new(), Vec::new());
    let reference_in: Option<Vec<Vec<f32>>> = match &args.reference {
        Some(p) => Some(serde_json::from_slice(&read_bounded(p)?)?),
        None => None,
    };
    for trial in 0..args.trials {
        let mut rng = SplitMix64::new(0x5eed ^ u64::from(trial));
        let ids: Vec<u32> = (0..positions)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect();
        let embedded = f32_values(&head.embed(&ids)?)?;
        let input = HiddenStates::from_f32(dtype, 0, positions, cols, &embedded);
        let started = Instant::now();
        let verifier = recompute(&server, &input)?;
        verifier_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        references.push(verifier.clone());
        let started = Instant::now();
        let node = run_as_node(&server, &input, window)?;
        node_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let rows = HiddenStates::from_f32(dtype, 0, positions, cols, &node);
        let started = Instant::now();
        let commitment = hearth_wire::ActivationCommitment::of(&rows);
        commit_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            commitment.rows.len() == positions as usize,
            "one sketch per row"
        );
        add(
            "same path, decode steps vs one prefill",
            true,
            &node,
            &verifier,
        );
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()?
            .install(|| run_as_node(&server, &input, window))?;
        add("1 thread vs 2", true, &one_thread, &verifier);
        let batched = run_batched(&server, &input, window)?;
        add("batched with another session", true, &batched, &verifier);
        let with_candle = run_as_node(&candle, &input, window)?;
        add(
            "candle's kernels (another implementation) vs hearth's",
            true,
            &with_candle,
            &verifier,
        );
        if let Some(r) = reference_in.as_ref().and_then(|r| r.get(trial as usize)) {
            add("--reference run (e.g. scalar ISA)", true, r, &verifier);
        }
        for (label, other) in &node_models {
            let out = run_as_node(other, &input, window)?;
            add(label, false, &out, &verifier);
        }
        if n_blocks > 1 && span.len() > 1 {
            let skip = BlockRange::new(span.start(), span.end() - 1)?;
            let id = server.open_span(positions as usize, skip)?;
            let out = step_all(&server, id, &input, window)?;
            add("skip one block", false, &out, &verifier);
        }
        if args.cheats {
            cheats(&mut add, &node, &input, cols, trial)?;
        }
    }
    if let Some(p) = &args.write_reference {
        std::fs::write(p, serde_json::to_vec(&references)?)?;
    }
    print_table(&variants, dtype, span, positions, args.trials);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "node: {:.1} ms for {positions} positions (prefill {window}, then one-token steps); \
         commitments: {:.3} ms for all rows ({:.2} % of the node's time); verifier: {:.1} ms for \
         one prefill of all {positions} positions (medians of {} trials)",
        median(&mut node_ms),
        median(&mut commit_ms),
        100.0 * median(&mut commit_ms) / median(&mut node_ms),
        median(&mut verifier_ms),
        args.trials
    );
    Ok(())
}

/// Each output cheat applied to the honest node's rows (needs hearth-swarm's `adversary`
/// feature: test builds have it, release builds only with `--features adversary`).
fn cheats(
    add: &mut impl FnMut(&str, bool, &[f32], &[f32]),
    node: &[f32],
    input: &HiddenStates,
    cols: u32,
    trial: u32,
) -> Result<()> {
    use hearth_swarm::adversary::Adversary;
    let x = input.to_f32();
    for mode in ["noise:1e-3", "noise:1e-2", "stale", "random", "copy-input"] {
        let a: Adversary = mode.parse().map_err(anyhow::Error::msg)?;
        let mut out = node.to_vec();
        a.corrupt(u64::from(trial), cols as usize, &x, &mut out, None);
        let out = wire_round(input.dtype, cols, &out);
        add(mode, false, &out, node);
    }
    Ok(())
}

/// Answers as a node serving a generation would: a prefill of one window, then one-token steps.
fn run_as_node(server: &Arc<SliceServer>, input: &HiddenStates, prefill: u32) -> Result<Vec<f32>> {
    let id = server.open(input.rows as usize)?;
    step_all(server, id, input, prefill)
}

fn step_all(
    server: &Arc<SliceServer>,
    id: SessionId,
    input: &HiddenStates,
    prefill: u32,
) -> Result<Vec<f32>> {
    let out = as_generation(input, prefill, |start, t, _| Ok(server.step(id, start, t)?));
    let _ = server.close(id);
    out
}

/// As [`run_as_node`], every step batched with a step of an unrelated session.
fn run_batched(server: &Arc<SliceServer>, input: &HiddenStates, prefill: u32) -> Result<Vec<f32>> {
    let id = server.open(input.rows as usize)?;
    let other = server.open(input.rows as usize)?;
    let out = as_generation(input, prefill, |start, t, x| {
        let noise: Vec<f32> = x.iter().map(|v| v * 0.5 + 0.01).collect();
        let u = Tensor::from_vec(noise, t.dims(), &Device::Cpu)?;
        let mut results = server.step_batch(vec![(id, start, t.clone()), (other, start, u)]);
        Ok(results.remove(0)?)
    });
    let _ = server.close(id);
    let _ = server.close(other);
    out
}

/// Feeds `input` to `step(start, tensor, values)` as a generation does (a prefill of `prefill`
/// rows, then one row at a time) and returns the wire-rounded outputs, row-major.
fn as_generation(
    input: &HiddenStates,
    prefill: u32,
    mut step: impl FnMut(usize, &Tensor, &[f32]) -> Result<Tensor>,
) -> Result<Vec<f32>> {
    let cols = input.cols as usize;
    let x = input.to_f32();
    let mut out = Vec::with_capacity(x.len());
    let mut start = 0usize;
    while start < input.rows as usize {
        let rows = if start == 0 {
            (prefill as usize).min(input.rows as usize)
        } else {
            1
        };
        let values = &x[start * cols..(start + rows) * cols];
        let t = Tensor::from_vec(values.to_vec(), (1, rows, cols), &Device::Cpu)?;
        let y = step(start, &t, values)?;
        out.extend(f32_values(&y)?);
        start += rows;
    }
    Ok(wire_round(input.dtype, input.cols, &out))
}

fn print_table(
    variants: &[Variant],
    dtype: HiddenDType,
    span: BlockRange,
    positions: u32,
    trials: u32,
) {
    println!(
        "blocks {span}, {trials} trials × {positions} positions (windows of 32), {dtype} on the \
         wire, tolerance {HONEST_TOLERANCE:.1e} on the worst row of a window"
    );
    println!(
        "| node's answers | honest | windows | worst-row error: min | median | max | flagged |"
    );
    println!("|---|---|---|---|---|---|---|");
    for v in variants {
        let mut errors: Vec<f64> = v.windows.iter().map(|c| c.max_error).collect();
        errors.sort_by(f64::total_cmp);
        let flagged = v
            .windows
            .iter()
            .filter(|c| c.verdict(HONEST_TOLERANCE) == Verdict::Disagrees)
            .count();
        let pick = |q: f64| errors[((errors.len() - 1) as f64 * q) as usize];
        println!(
            "| {} | {} | {} | {:.2e} | {:.2e} | {:.2e} | {} / {} |",
            v.label,
            if v.honest { "yes" } else { "no" },
            errors.len(),
            pick(0.0),
            pick(0.5),
            pick(1.0),
            flagged,
            errors.len()
        );
    }
}
