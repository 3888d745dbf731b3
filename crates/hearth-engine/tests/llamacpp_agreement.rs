//! hearth agrees with llama.cpp on real weights (SmolLM2-135M-Instruct, Q4_1).
//!
//! `tests/data/llamacpp_smollm2.json` holds llama.cpp's greedy continuations of 24 prompts, 64
//! tokens each, with its top-5 logits at every step (made by `scripts/llama_reference.sh`). For
//! each prompt hearth must:
//! - tokenize the prompt to llama.cpp's ids;
//! - decoding greedily on its own (prefill, then one token at a time through the KV cache), pick
//!   llama.cpp's tokens at every step before the first one where llama.cpp's top-1 minus top-2
//!   logit is below [`TOLERANCE`] (past such a near tie either pick is right, and the texts may
//!   then part);
//! - fed llama.cpp's continuation (teacher forcing: one prefill gives every step's logits, the
//!   fair comparison after a divergence), pick llama.cpp's token at every step whose llama.cpp gap
//!   is at least [`TOLERANCE`], keep each of llama.cpp's top-5 logits within [`MAX_LOGIT_DIFF`],
//!   and agree on the top-1 token at [`MIN_TOP1_AGREEMENT`] of all steps, near ties included.
//!
//! It prints the figures (top-1 agreement, largest logit and gap differences, the steps checked)
//! on stderr. The model comes from `HEARTH_SMOLLM2_GGUF` and must be the file the fixture was
//! made from (same sha256); without the variable the test says SKIPPED, except in CI
//! (`CI=true`), where it fails.

use hearth_core::BlockRange;
use hearth_engine::{LoadOptions, ModelSource, Pipeline};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The smallest llama.cpp top-1 minus top-2 gap at which hearth must pick llama.cpp's token.
/// Both read the same Q4_1/Q8_0 weights and quantize activations to 8 bits, but sum in other
/// orders and round elsewhere, and 30 layers carry that on: over the fixture's 1536 steps hearth
/// picked another token 44 times, always where llama.cpp's gap was at most 0.33, so 0.5 keeps
/// half as much again as margin. (The largest change of a gap, 1.32, was of one of 2.41. llama.cpp
/// itself, run batched instead of one token at a time, moves its top logits by up to 0.79 and
/// picks another token 19 times; docs/benchmarks.md has the measurements.)
const TOLERANCE: f32 = 0.5;

/// How far hearth's logit for one of llama.cpp's top-5 tokens may be from llama.cpp's. Measured:
/// at most 2.03 (median over steps 0.24), on logits up to 47: hearth agrees with llama.cpp's
/// choices, but not to the last digit. A broken kernel or position encoding is off by far more.
const MAX_LOGIT_DIFF: f32 = 3.0;

/// The fraction of teacher-forced steps, near ties included, where hearth's top-1 token must be
/// llama.cpp's. Measured: 97.1 %.
const MIN_TOP1_AGREEMENT: f64 = 0.95;

const FIXTURE: &str = "tests/data/llamacpp_smollm2.json";

#[derive(Deserialize)]
struct Fixture {
    model: FixtureModel,
    steps: usize,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct FixtureModel {
    file: String,
    sha256: String,
}

#[derive(Deserialize)]
struct Prompt {
    text: String,
    prompt_tokens: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    /// The token llama.cpp picked (its top-1).
    token: u32,
    /// llama.cpp's highest logits, highest first: (token id, logit).
    top: Vec<(u32, f32)>,
}

impl Step {
    /// llama.cpp's top-1 minus top-2 logit.
    fn gap(&self) -> f32 {
        self.top[0].1 - self.top[1].1
    }
}

/// Greedy choice: the highest logit, the lower id on a tie (as llama_reference does).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

/// The model file named by `HEARTH_SMOLLM2_GGUF`, or `None` (outside CI) to skip.
fn model_path() -> Option<PathBuf> {
    match std::env::var_os("HEARTH_SMOLLM2_GGUF") {
        Some(path) => Some(path.into()),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but HEARTH_SMOLLM2_GGUF is unset: .ci/run pulls SmolLM2 and sets it")
        }
        None => None,
    }
}

fn load_fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let fixture: Fixture =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    assert!(fixture.prompts.len() >= 20 && fixture.steps >= 64);
    for (i, p) in fixture.prompts.iter().enumerate() {
        assert_eq!(
            p.steps.len(),
            fixture.steps,
            "fixture prompt {i}: step count"
        );
        assert!(
            p.steps
                .iter()
                .all(|s| s.top.len() >= 2 && s.top[0].0 == s.token),
            "fixture prompt {i}: every step needs its token first in a top-2 or longer"
        );
    }
    fixture
}

/// hearth's greedy tokens on its own: a prefill, then cached single-token steps.
fn hearth_greedy(pipeline: &mut Pipeline, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut tokens = Vec::with_capacity(steps);
    if steps == 0 {
        return tokens;
    }
    let mut logits = pipeline.logits_last(0, prompt).unwrap();
    loop {
        let token = argmax(&logits);
        tokens.push(token);
        if tokens.len() == steps {
            return tokens;
        }
        logits = pipeline
            .logits_last(prompt.len() + tokens.len() - 1, &[token])
            .unwrap();
    }
}

/// What teacher forcing one prompt showed.
#[derive(Default)]
struct Forced {
    /// Steps where hearth's top-1 is llama.cpp's token.
    agreed: usize,
    /// Largest |hearth − llama.cpp| over llama.cpp's top-5 logits.
    max_logit_diff: f32,
    /// Largest change of llama.cpp's top-1 minus top-2 gap in hearth's logits.
    max_gap_diff: f32,
}

/// Runs llama.cpp's continuation of prompt `i` through hearth in one prefill and checks every
/// step's logits against llama.cpp's.
fn teacher_forced(pipeline: &mut Pipeline, i: usize, p: &Prompt) -> Forced {
    let mut input = p.prompt_tokens.clone();
    input.extend(p.steps[..p.steps.len() - 1].iter().map(|s| s.token));
    let logits = pipeline.logits_all(0, &input).unwrap();
    let mut out = Forced::default();
    for (s, step) in p.steps.iter().enumerate() {
        let row = logits
            .get(p.prompt_tokens.len() - 1 + s)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let top1 = argmax(&row);
        if top1 == step.token {
            out.agreed += 1;
        } else {
            assert!(
                step.gap() < TOLERANCE,
                "prompt {i} {:?} step {s}: hearth picks {top1}, llama.cpp {} with a gap of {}",
                p.text,
                step.token,
                step.gap()
            );
        }
        for &(id, logit) in &step.top {
            let diff = (row[id as usize] - logit).abs();
            assert!(
                diff <= MAX_LOGIT_DIFF,
                "prompt {i} {:?} step {s}: logit of token {id}: hearth {}, llama.cpp {logit}",
                p.text,
                row[id as usize]
            );
            out.max_logit_diff = out.max_logit_diff.max(diff);
        }
        let hearth_gap = row[step.top[0].0 as usize] - row[step.top[1].0 as usize];
        out.max_gap_diff = out.max_gap_diff.max((hearth_gap - step.gap()).abs());
    }
    out
}

#[test]
fn smollm2_greedy_and_logits_match_llama_cpp() {
    let Some(model) = model_path() else {
        println!("SKIPPED: set HEARTH_SMOLLM2_GGUF");
        return;
    };
    let fixture = load_fixture();
    assert_eq!(
        sha256_hex(&model),
        fixture.model.sha256,
        "{} is not the {} the fixture was made from",
        model.display(),
        fixture.model.file
    );

    let src = ModelSource::open(&model).unwrap();
    let tokenizer = src.tokenizer().unwrap();
    let blocks = BlockRange::full(src.config().num_blocks()).unwrap();
    let longest = fixture
        .prompts
        .iter()
        .map(|p| p.prompt_tokens.len() + p.steps.len())
        .max()
        .unwrap();
    let mut pipeline =
        Pipeline::load_local(&src, &[blocks], &LoadOptions::default(), longest).unwrap();

    let mut report = String::new();
    let (mut agreed, mut total, mut greedy_checked) = (0, 0, 0);
    let (mut max_logit_diff, mut max_gap_diff) = (0f32, 0f32);
    for (i, p) in fixture.prompts.iter().enumerate() {
        let ids = tokenizer.encode(&p.text, true).unwrap();
        assert_eq!(ids, p.prompt_tokens, "prompt {i} {:?}: token ids", p.text);

        // Free-running greedy decoding up to llama.cpp's first near tie.
        let horizon = p
            .steps
            .iter()
            .position(|s| s.gap() < TOLERANCE)
            .unwrap_or(p.steps.len());
        let expected: Vec<u32> = p.steps[..horizon].iter().map(|s| s.token).collect();
        let greedy = hearth_greedy(&mut pipeline, &p.prompt_tokens, horizon);
        assert_eq!(
            greedy, expected,
            "prompt {i} {:?}: greedy tokens before step {horizon}, llama.cpp's first gap below \
             {TOLERANCE}",
            p.text
        );
        greedy_checked += horizon;

        let forced = teacher_forced(&mut pipeline, i, p);
        agreed += forced.agreed;
        total += p.steps.len();
        max_logit_diff = max_logit_diff.max(forced.max_logit_diff);
        max_gap_diff = max_gap_diff.max(forced.max_gap_diff);
        report.push_str(&format!(
            "  prompt {i:2}: greedy equal for {horizon:2} steps (up to llama.cpp's first gap < \
             {TOLERANCE}); teacher-forced top-1 {:2}/{}, max |logit diff| {:.3}\n",
            forced.agreed,
            p.steps.len(),
            forced.max_logit_diff,
        ));
    }
    let agreement = agreed as f64 / total as f64;
    report.push_str(&format!(
        "llama.cpp agreement on {}: teacher-forced top-1 {agreed}/{total} ({:.2} %), max |logit \
         diff| over the top-5 {max_logit_diff:.3}, max top-2 gap change {max_gap_diff:.3}, \
         {greedy_checked} free-running greedy steps equal\n",
        fixture.model.file,
        100.0 * agreement
    ));
    // Past the test harness's capture, so CI's log shows the figures on success too.
    std::io::stderr().write_all(report.as_bytes()).unwrap();
    assert!(
        agreement >= MIN_TOP1_AGREEMENT,
        "teacher-forced top-1 agreement {agreement:.4} is below {MIN_TOP1_AGREEMENT}"
    );
}
