//! Measuring prefill and decode speed of a chain of in-process slices, of many sessions batched
//! on one server, and process memory.

use crate::error::Result;
use crate::generate::Pipeline;
use crate::model::{ClientHead, LoadOptions, ModelSource};
use crate::session::{SessionId, SessionLimits, SliceServer};
use candle_core::Tensor;
use hearth_core::BlockRange;
use std::sync::Arc;
use std::time::Instant;

/// One measurement: `prompt_tokens` of prefill, then `gen_tokens` single-token decode steps.
#[derive(Clone, Debug)]
pub struct BenchRun {
    /// Prompt tokens processed per wall-clock second in the single prefill step.
    pub prefill_tokens_per_sec: f64,
    /// Decode steps (one token each) per wall-clock second.
    pub decode_tokens_per_sec: f64,
}

/// Builds an in-process pipeline with `slices` even slices.
pub fn build_pipeline(
    src: &ModelSource,
    slices: u32,
    opts: &LoadOptions,
    max_len: usize,
) -> Result<Pipeline> {
    let ranges = BlockRange::split_even(src.config().num_blocks(), slices)?;
    Pipeline::load_local(src, &ranges, opts, max_len)
}

/// Runs prefill of `prompt_tokens` tokens then `gen_tokens` greedy decode steps. Token ids are
/// fixed (not sampled) so every run does identical work.
pub fn run_once(
    p: &mut Pipeline,
    vocab: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> Result<BenchRun> {
    let prompt: Vec<u32> = (0..prompt_tokens)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let t0 = Instant::now();
    p.logits_last(0, &prompt)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 0..gen_tokens {
        let token = ((i * 104_729 + 7) % vocab) as u32;
        p.logits_last(prompt_tokens + i, &[token])?;
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok(BenchRun {
        prefill_tokens_per_sec: prompt_tokens as f64 / prefill.max(1e-9),
        decode_tokens_per_sec: gen_tokens as f64 / decode.max(1e-9),
    })
}

/// The client head and one server holding every block of `src`, for [`BatchSessions`].
pub fn load_whole(
    src: &ModelSource,
    opts: &LoadOptions,
) -> Result<(Arc<ClientHead>, Arc<SliceServer>)> {
    let head = Arc::new(src.load_head(opts, None)?);
    let range = BlockRange::full(src.config().num_blocks())?;
    let slice = Arc::new(src.load_slice(range, opts, None)?);
    let server = Arc::new(SliceServer::new(slice, SessionLimits::default()));
    Ok((head, server))
}

/// `n` concurrent sessions on one server, prefilled, whose decode steps are batched into one
/// [`SliceServer::step_batch`] per round (and one head pass for all their logits). Closes its
/// sessions on drop.
pub struct BatchSessions {
    head: Arc<ClientHead>,
    server: Arc<SliceServer>,
    ids: Vec<SessionId>,
    prompt_tokens: usize,
    vocab: usize,
}

impl BatchSessions {
    /// Opens `n` sessions of up to `max_len` positions and prefills each with its own
    /// `prompt_tokens`-token prompt, all in one batch; returns the sessions and the aggregate
    /// prefill speed in tokens per second.
    pub fn open(
        head: Arc<ClientHead>,
        server: Arc<SliceServer>,
        n: usize,
        prompt_tokens: usize,
        max_len: usize,
    ) -> Result<(Self, f64)> {
        let vocab = head.config().vocab_size;
        let mut me = Self {
            head,
            server,
            ids: Vec::with_capacity(n),
            prompt_tokens,
            vocab,
        };
        for _ in 0..n {
            let id = me.server.open(max_len)?;
            me.ids.push(id);
        }
        let steps = me
            .ids
            .iter()
            .enumerate()
            .map(|(s, &id)| {
                let prompt: Vec<u32> = (0..prompt_tokens)
                    .map(|i| ((i * 7919 + s * 104_729 + 13) % vocab) as u32)
                    .collect();
                Ok((id, 0, me.head.embed(&prompt)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let t0 = Instant::now();
        let outs = me.server.step_batch(steps);
        let secs = t0.elapsed().as_secs_f64();
        outs.into_iter().collect::<Result<Vec<_>>>()?;
        let rate = (n * prompt_tokens) as f64 / secs.max(1e-9);
        Ok((me, rate))
    }

    /// `rounds` decode rounds, each one token for every session (embedding, one batched step
    /// through the blocks, logits of every session), starting right after the prompt (a repeat
    /// replays the same positions, so every call does identical work).
    pub fn decode(&self, rounds: usize) -> Result<DecodeTiming> {
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        for i in 0..rounds {
            let steps = self
                .ids
                .iter()
                .enumerate()
                .map(|(s, &id)| {
                    let token = ((i * 104_729 + s * 7919 + 7) % self.vocab) as u32;
                    Ok((id, self.prompt_tokens + i, self.head.embed(&[token])?))
                })
                .collect::<Result<Vec<_>>>()?;
            let outs = self
                .server
                .step_batch(steps)
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            let logits = self.head.logits_all(&Tensor::cat(&outs, 1)?)?;
            std::hint::black_box(logits);
        }
        let wall_secs = t0.elapsed().as_secs_f64();
        Ok(DecodeTiming {
            tokens: self.ids.len() * rounds,
            wall_secs,
            cpu_secs: cpu_seconds().zip(cpu0).map(|(b, a)| b - a),
        })
    }
}

/// Tokens decoded in a measured stretch, its wall-clock time and the CPU time this process
/// used meanwhile (all threads; on a shared machine the second is the steadier figure).
#[derive(Clone, Copy, Debug)]
pub struct DecodeTiming {
    /// Tokens decoded, over all sessions and rounds.
    pub tokens: usize,
    /// Wall-clock seconds the stretch took.
    pub wall_secs: f64,
    /// CPU seconds (user + system, all threads) this process used meanwhile; `None` where
    /// `/proc/self/stat` cannot be read.
    pub cpu_secs: Option<f64>,
}

impl DecodeTiming {
    /// Tokens per wall-clock second.
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens as f64 / self.wall_secs.max(1e-9)
    }

    /// Tokens per second of CPU time.
    pub fn tokens_per_cpu_sec(&self) -> Option<f64> {
        self.cpu_secs.map(|c| self.tokens as f64 / c.max(1e-9))
    }
}

/// User plus system CPU time of this process so far (Linux `/proc/self/stat`, 10 ms ticks).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture hearth runs on.
    Some((utime + stime) as f64 / 100.0)
}

impl Drop for BatchSessions {
    fn drop(&mut self) {
        for &id in &self.ids {
            // Nothing else to release if a session already expired.
            let _ = self.server.close(id);
        }
    }
}

/// Median of a non-empty list (mean of the middle two for even lengths).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Current and peak resident set size of this process in bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn cpu_time_is_read_and_grows() {
        let a = super::cpu_seconds();
        if let Some(a) = a {
            let mut x = 0u64;
            let t = std::time::Instant::now();
            while t.elapsed().as_millis() < 50 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let b = super::cpu_seconds().unwrap();
            assert!(b >= a && b - a < 10.0, "{a} {b}");
        }
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
