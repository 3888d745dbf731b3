//! The generation loop takes back what a stage corrects (issue #12): tokens drawn from outputs
//! a stage may still take back are held from the text, and when a stage reports a corrected
//! window the tokens from there on are sampled again, so the text equals an honest run.
//!
//! The stage under test wraps the model's last blocks and "cheats" (distorts its output) from
//! a given position on, the way a dishonest node would; like a swarm chain with spot checks it
//! judges each window of `WINDOW` positions when it closes (or, for the last, unfinished window,
//! when the generation ends), and then answers honestly and asks for a rewind.

use candle_core::Tensor;
use hearth_core::BlockRange;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{
    generate_cancellable, DType, FinishReason, Generation, HiddenStage, LoadOptions, LocalStage,
    ModelSource, Pipeline, Result,
};
use hearth_sampling::SamplingParams;
use std::path::Path;

const WINDOW: usize = 4;

/// How the cheating stage behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Corrupts every output at this position or later until it is caught.
    cheat_from: usize,
    /// Holds back windows it will judge (`pending_from`); without it the text is shown at once.
    hold_back: bool,
    /// Judges windows at all (reports rewinds).
    judge: bool,
}

struct CheatingStage {
    inner: LocalStage,
    how: Behaviour,
    caught: bool,
    /// Positions computed so far (the cache length).
    end: usize,
    /// The prompt's end: its own window, judged when it ran.
    prefill_end: usize,
    rewind: Option<usize>,
    /// Rewinds asked for, by position.
    asked: Vec<usize>,
}

impl CheatingStage {
    fn cheats(&self, start: usize, rows: usize) -> bool {
        !self.caught && start + rows > self.how.cheat_from
    }

    /// The open window (computed, not yet judged): its first position.
    fn open_window(&self) -> Option<usize> {
        let boundary = self.end - self.end % WINDOW;
        (self.end != boundary && self.end > self.prefill_end)
            .then_some(boundary.max(self.prefill_end))
    }

    /// Judges positions `from..self.end`: caught when any was corrupted.
    fn judge(&mut self, from: usize) -> Option<usize> {
        if !self.how.judge || self.caught || self.end <= self.how.cheat_from {
            return None;
        }
        self.caught = true;
        self.asked.push(from);
        Some(from)
    }
}

impl HiddenStage for CheatingStage {
    fn forward(&mut self, start: usize, hidden: &Tensor) -> Result<Tensor> {
        let honest = self.inner.forward(start, hidden)?;
        let rows = hidden.dims()[hidden.dims().len() - 2];
        let cheated = self.cheats(start, rows);
        self.end = start + rows;
        if start == 0 {
            self.prefill_end = self.end;
        } else if self.end.is_multiple_of(WINDOW) {
            // The window closes: judged now; a caught cheat is answered honestly at once.
            if let Some(from) = self.judge(self.end - WINDOW) {
                self.rewind = Some(from.max(self.prefill_end.saturating_sub(1)));
                return Ok(honest);
            }
        }
        if cheated {
            // Wrong values of the same order (a scaled row would not do: the final norm undoes
            // any scale).
            return Ok(honest.sin()?);
        }
        Ok(honest)
    }

    fn pending_from(&mut self) -> Option<usize> {
        if !self.how.hold_back {
            return None;
        }
        self.open_window()
    }

    fn take_rewind(&mut self) -> Option<usize> {
        self.rewind.take()
    }

    fn finish(&mut self) -> Option<usize> {
        let from = self.open_window()?;
        self.judge(from)
    }

    fn describe(&self) -> String {
        "cheating".into()
    }
}

fn model(dir: &Path) -> ModelSource {
    let path = dir.join("m");
    SynthModel::new(shape("tiny").unwrap(), 5)
        .unwrap()
        .write_hf(&path, DType::F32, &SynthOptions::default())
        .unwrap();
    ModelSource::open(&path).unwrap()
}

const PROMPT: [u32; 6] = [1, 72, 101, 108, 108, 111];

fn params() -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        seed: 11,
        max_tokens: 30,
        ..SamplingParams::default()
    }
}

/// Generates with the last blocks behind a [`CheatingStage`] (`None`: honestly); returns the
/// generation, the text as `on_text` saw it, and the rewinds the stage asked for.
fn run(src: &ModelSource, how: Option<Behaviour>) -> (Generation, String, Vec<usize>) {
    let opts = LoadOptions::default();
    let n = src.config().num_blocks();
    let first = LocalStage::load(src, BlockRange::new(0, 3).unwrap(), &opts, 256, None).unwrap();
    let last = LocalStage::load(src, BlockRange::new(3, n).unwrap(), &opts, 256, None).unwrap();
    let mut pipeline = Pipeline {
        head: std::sync::Arc::new(src.load_head(&opts, None).unwrap()),
        stages: vec![Box::new(first)],
        head_batch: None,
    };
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    match how {
        None => pipeline.stages.push(Box::new(last)),
        Some(how) => pipeline.stages.push(Box::new(Recording {
            stage: CheatingStage {
                inner: last,
                how,
                caught: false,
                end: 0,
                prefill_end: 0,
                rewind: None,
                asked: Vec::new(),
            },
            asked: asked.clone(),
        })),
    }
    let tokenizer = src.tokenizer().unwrap();
    let mut shown = String::new();
    let generation = generate_cancellable(
        &mut pipeline,
        &tokenizer,
        &PROMPT,
        &params(),
        &mut |piece| shown.push_str(piece),
        &|| false,
    )
    .unwrap();
    drop(pipeline);
    let asked = asked.lock().unwrap().clone();
    (generation, shown, asked)
}

/// Copies the stage's rewinds out when it is dropped (the pipeline owns the stage).
struct Recording {
    stage: CheatingStage,
    asked: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl HiddenStage for Recording {
    fn forward(&mut self, start: usize, hidden: &Tensor) -> Result<Tensor> {
        self.stage.forward(start, hidden)
    }
    fn pending_from(&mut self) -> Option<usize> {
        self.stage.pending_from()
    }
    fn take_rewind(&mut self) -> Option<usize> {
        self.stage.take_rewind()
    }
    fn finish(&mut self) -> Option<usize> {
        self.stage.finish()
    }
    fn describe(&self) -> String {
        self.stage.describe()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        *self.asked.lock().unwrap() = self.stage.asked.clone();
    }
}

#[test]
fn a_cheat_caught_when_its_window_closes_is_rewound_and_the_text_is_the_honest_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path());
    let (honest, honest_shown, _) = run(&src, None);
    assert_eq!(honest.finish, FinishReason::Length, "{honest:?}");
    assert_eq!(honest_shown, honest.text);

    // The test can fail: a cheat nobody judges changes the tokens.
    let unjudged = Behaviour {
        cheat_from: 13,
        hold_back: false,
        judge: false,
    };
    let (cheated, _, asked) = run(&src, Some(unjudged));
    assert!(asked.is_empty());
    assert_ne!(cheated.tokens, honest.tokens, "the cheat changes nothing");

    // Caught when window 12..16 closes (mid-generation), and caught on the last, unfinished
    // window at the end (prompt 6 + 30 tokens: positions up to 35, window 32..36 never closes).
    for (cheat_from, rewound_at) in [(13, 12), (33, 32)] {
        let how = Behaviour {
            cheat_from,
            hold_back: true,
            judge: true,
        };
        let (g, shown, asked) = run(&src, Some(how));
        assert_eq!(asked, vec![rewound_at], "cheat from {cheat_from}");
        assert_eq!(g.tokens, honest.tokens, "cheat from {cheat_from}");
        assert_eq!(g.text, honest.text);
        assert_eq!(shown, honest.text, "text shown, then taken back");
        assert_eq!(g.finish, honest.finish);
    }
}

#[test]
fn text_already_shown_is_never_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path());
    let (honest, _, _) = run(&src, None);
    // The stage judges but does not say which windows it will judge: the cheated tokens were
    // shown before the window closed, so they stay, and the generation goes on from the first
    // token not shown. What `on_text` saw is still exactly the generation's text.
    let how = Behaviour {
        cheat_from: 13,
        hold_back: false,
        judge: true,
    };
    let (g, shown, asked) = run(&src, Some(how));
    assert_eq!(asked, vec![12]);
    assert_eq!(shown, g.text);
    assert_eq!(g.tokens.len(), honest.tokens.len());
    // Tokens drawn from outputs before the cheat are the honest ones.
    let clean = 13 + 1 - PROMPT.len();
    assert_eq!(g.tokens[..clean], honest.tokens[..clean]);
    assert_ne!(g.tokens, honest.tokens);
}
