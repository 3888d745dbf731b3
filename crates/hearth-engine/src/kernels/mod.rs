//! Fast CPU matrix kernels for inference: `y[m, n] = x[m, k] · w[n, k]ᵀ`.
//!
//! The weights `w` stay in their file format (F16 stays F16, BF16 stays BF16,
//! Q4_0 stays Q4_0, Q8_0 stays Q8_0); the `Packed*` types re-order them once
//! at load time into a panel layout of the same size (plus padding of the last
//! panel) that the SIMD micro-kernels stream without gathers.
//!
//! * Decode (`m == 1`) is memory bound: every thread streams its share of the
//!   weight rows exactly once.
//! * Prefill (`m` in the tens to hundreds) is compute bound: tiles of
//!   `MR` activation rows × one weight panel keep all accumulators in registers,
//!   so each weight panel is loaded once per `MR` rows (and converted or
//!   unpacked once per `MR` rows, not once per row).
//! * Quantized formats follow llama.cpp: the activations are quantized once per
//!   call to int8 with one f32 scale per 32 values, the per-block dot products
//!   are exact integer sums (`vpdpbusd`), and each block's sum is scaled by
//!   `d_w · d_x` into an f32 accumulator.
//!
//! Work is split over the output features `n` on the global rayon pool.
//! Handing work to the pool from a thread outside it costs ~20 µs of wake-ups
//! per call (measured on a 2-core VM), which is a sizeable share of a decode
//! matmul: run the forward pass on a pool thread (e.g. inside
//! `rayon::scope`), where forking is nearly free. Calls from outside the pool
//! with under 512 KiB of weights run on the calling thread.
//!
//! The SIMD paths need AVX-512 (F, BW, VL, VNNI) with FMA and F16C, detected at
//! run time (Rust >= 1.89 for the intrinsics); every other CPU (and every
//! other architecture) takes a portable scalar path that computes the same
//! quantities. `HEARTH_KERNELS_SCALAR=1` forces the scalar path.
//!
//! Numerics: F16 and BF16 (widened exactly, sharing F16's kernels) accumulate
//! in f32 (error well within `1e-5 · Σ|x·w|`, tested against an f64
//! reference). Q4_0/Q8_0 differ from the exact
//! dequantized product only by the int8 quantization of the activations, at
//! most `Σ_blocks (d_x / 2) · Σ|w|` with `d_x = max|x_block| / 127`
//! (tested), as in llama.cpp; the integer block sums themselves are exact.
//!
//! Determinism: the matmuls of the packed types ([`PackedF32`], [`PackedF16`], [`PackedBF16`],
//! [`PackedQ4_0`], [`PackedQ8_0`]) and [`attention`] compute each output with one fixed sequence
//! of roundings, whatever the number of rows in the call (1 in decode, hundreds in a prefill,
//! several sessions batched), where a row falls in the register tiles, and the number of threads
//! (work is split over output features, never over a reduction). So a token's row is bitwise the
//! same computed alone or in any batch, which makes a replayed prefill rebuild a KV cache exactly.
//! The portable and AVX-512 paths differ from each other in the last bits (FMA vs separate
//! multiply and add); the row-major `matmul_*` functions are not batch-invariant (their few-row
//! path splits the reduction differently) and the engine does not use them.
//!
//! Every public function checks its lengths up front and returns
//! [`KernelError`] instead of panicking or reading out of bounds.

use std::fmt;
use std::sync::OnceLock;

use rayon::prelude::*;

mod attention;
mod f32;
mod fp16;
mod quant;
#[cfg(test)]
mod tests;

pub use attention::{attention, AttentionShape};
pub use f32::PackedF32;
pub use fp16::{
    matmul_bf16, matmul_bf16_reference, matmul_f16, matmul_f16_reference, PackedBF16, PackedF16,
    F16_PANEL_WIDTH,
};
pub use quant::{
    matmul_q4_0, matmul_q4_0_reference, matmul_q8_0, matmul_q8_0_reference, PackedQ4_0, PackedQ8_0,
    Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK, QUANT_PANEL_WIDTH,
};

/// Why a kernel refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// `k` is not a multiple of the 32-value block of a quantized format.
    KNotBlockMultiple {
        /// The offending inner dimension.
        k: usize,
    },
    /// A buffer's length is not the one implied by `m`, `k` and `n`.
    Length {
        /// Which argument (`"x"`, `"w"` or `"y"`).
        what: &'static str,
        /// The length implied by the dimensions.
        expected: usize,
        /// The length passed in.
        actual: usize,
    },
    /// The dimensions overflow `usize` when multiplied.
    Overflow,
    /// The query heads are not a positive multiple of the key/value heads.
    Heads {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::KNotBlockMultiple { k } => {
                write!(f, "k = {k} is not a multiple of the block size {QK}")
            }
            KernelError::Length {
                what,
                expected,
                actual,
            } => write!(f, "{what} has {actual} elements, expected {expected}"),
            KernelError::Overflow => write!(f, "matrix dimensions overflow usize"),
            KernelError::Heads { heads, kv_heads } => {
                write!(
                    f,
                    "{heads} query heads do not share {kv_heads} key/value heads evenly"
                )
            }
        }
    }
}

impl std::error::Error for KernelError {}

/// `a * b`, or [`KernelError::Overflow`].
fn mul(a: usize, b: usize) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or(KernelError::Overflow)
}

/// Errors unless `actual == expected`.
fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            actual,
        })
    }
}

/// The instruction-set level a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, correct on every target.
    Scalar,
    /// x86-64 with AVX-512 F/BW/VL/VNNI, FMA and F16C.
    Avx512,
}

impl Isa {
    /// The best level this CPU supports (detected once, then cached).
    /// Setting the environment variable `HEARTH_KERNELS_SCALAR=1` forces the
    /// portable path (for A/B comparisons and debugging).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if std::env::var_os("HEARTH_KERNELS_SCALAR").is_some_and(|v| v == "1") {
                return Isa::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    return Isa::Avx512;
                }
            }
            Isa::Scalar
        })
    }

    /// `self`, downgraded to what this CPU supports: the SIMD paths are only
    /// ever entered through this, which is what makes calling them sound.
    fn supported(self) -> Isa {
        match self {
            Isa::Avx512 if Isa::detect() == Isa::Avx512 => Isa::Avx512,
            _ => Isa::Scalar,
        }
    }
}

/// Whether the CPU has fused multiply-add instructions (detected once). The portable paths use
/// them through `#[target_feature]` copies of their inner loops; the results are the same bits
/// either way (`mul_add` is one rounding with or without the instruction).
#[cfg(target_arch = "x86_64")]
fn has_fma() -> bool {
    static FMA: OnceLock<bool> = OnceLock::new();
    *FMA.get_or_init(|| std::arch::is_x86_feature_detected!("fma"))
}

/// The output matrix shared by the parallel jobs, each of which writes only
/// its own columns.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    m: usize,
    n: usize,
}

// SAFETY: an `OutPtr` is built from a `&mut [f32]` of length `m * n` that
// outlives the parallel section, and jobs write disjoint column ranges.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: the jobs sharing an `OutPtr` each read and write
// only their own column range, and the ranges are disjoint.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn new(y: &mut [f32], m: usize, n: usize) -> Self {
        debug_assert_eq!(y.len(), m * n);
        OutPtr {
            ptr: y.as_mut_ptr(),
            m,
            n,
        }
    }

    /// Columns `j0..j0 + len` of row `i`.
    ///
    /// # Safety
    /// No other live reference may overlap those elements: callers only touch
    /// the columns of their own job.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_mut(&self, i: usize, j0: usize, len: usize) -> &mut [f32] {
        assert!(i < self.m && j0 + len <= self.n);
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.n + j0), len) }
    }
}

/// Runs `job(c)` for every chunk `c` in `0..chunks` on the rayon pool.
fn par_chunks(chunks: usize, job: impl Fn(usize) + Sync + Send) {
    if chunks <= 1 || rayon::current_num_threads() <= 1 {
        (0..chunks).for_each(job);
    } else {
        (0..chunks).into_par_iter().for_each(job);
    }
}

/// Splits `units` (weight panels or rows) of `unit_bytes` bytes of weights
/// each into chunks for the pool: about eight chunks per thread so a busy
/// machine still balances, but at least `MIN_CHUNK_BYTES` of weights per
/// chunk so scheduling stays small next to streaming them.
fn chunk_size(units: usize, unit_bytes: usize) -> usize {
    const MIN_CHUNK_BYTES: usize = 96 << 10;
    // Below this, a call from outside the pool runs on the calling thread:
    // handing work to the pool from outside costs ~20 us of wake-ups, more
    // than streaming this much alone. (From a worker, forking is cheap.)
    const INLINE_BYTES: usize = 512 << 10;
    if rayon::current_thread_index().is_none() && units.saturating_mul(unit_bytes) < INLINE_BYTES {
        return units.max(1);
    }
    let threads = rayon::current_num_threads().max(1);
    let min_units = MIN_CHUNK_BYTES.div_ceil(unit_bytes.max(1));
    units.div_ceil(threads * 8).max(min_units).max(1)
}

/// A 64-byte aligned unit of scratch or packed storage, so SIMD loads of a
/// panel never split a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Aligned storage for packed weights and scratch buffers.
#[derive(Clone, Default)]
struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    fn zeroed(len: usize) -> Self {
        AlignedBuf {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    /// Grows (zero-filling) to hold at least `len` bytes.
    fn ensure(&mut self, len: usize) {
        if self.lines.len() * 64 < len {
            self.lines.resize(len.div_ceil(64), Line([0; 64]));
        }
        self.len = self.len.max(len);
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes with no padding.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// The first `count` f32s (`count * 4 <= len`).
    fn f32s_mut(&mut self, count: usize) -> &mut [f32] {
        assert!(count * 4 <= self.len);
        // SAFETY: in bounds; 64-byte alignment satisfies f32's, and every bit
        // pattern is a valid f32.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), count) }
    }
}

thread_local! {
    /// Per-thread scratch (weight tiles converted or repacked per call), kept
    /// between calls so large buffers are not re-faulted on every matmul.
    static SCRATCH: std::cell::Cell<AlignedBuf> = std::cell::Cell::new(AlignedBuf::default());
}

/// Runs `f` with this thread's scratch buffer of at least `len` bytes.
/// (Taken out of the thread-local while in use, so nesting cannot alias it.)
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut AlignedBuf) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.take());
    buf.ensure(len);
    let r = f(&mut buf);
    SCRATCH.with(|s| s.set(buf));
    r
}

/// Runs `f` on a worker of the global rayon pool, blocking the caller until it is done.
///
/// The kernels fork onto the pool for every matmul; from a pool thread that costs almost nothing,
/// from any other thread each fork pays ~20 µs of wake-ups. A forward pass therefore runs whole on
/// the pool (`rayon::scope` moves its closure onto a worker when called from outside).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("rayon::scope runs its closure before returning")
}

/// f32 dot product in 16 independent lanes, summed lane by lane at the end: vectorizable, and a
/// fixed order of roundings for a given length, whatever the caller batches around it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
