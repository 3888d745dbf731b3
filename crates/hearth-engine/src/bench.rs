//! Measuring prefill and decode speed of a chain of in-process slices, and process memory.

use crate::error::Result;
use crate::generate::Pipeline;
use crate::model::{LoadOptions, ModelSource};
use hearth_core::BlockRange;
use std::time::Instant;

/// One measurement: `prompt_tokens` of prefill, then `gen_tokens` single-token decode steps.
#[derive(Clone, Debug)]
pub struct BenchRun {
    pub prefill_tokens_per_sec: f64,
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
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
