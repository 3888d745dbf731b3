//! F16 and BF16 weights: `y = x · wᵀ` with `w` in IEEE half precision or
//! bfloat16, accumulated in f32 with FMA.
//!
//! * Row-major weights ([`matmul_f16`]): for `m <= DOT_MAX_M` each weight row
//!   is streamed once and dotted with every activation row; for larger `m` a
//!   `KC`-deep slice of 32 weight rows is transposed into the panel layout in
//!   per-thread scratch (L2), then reused by every `MR`-row tile.
//! * [`PackedF16`] stores the same halves re-ordered into 32-feature panels
//!   (`panel[p][f]`) once at load time, so nothing is repacked per call.
//!
//! Either way the micro-kernel widens each 64-byte panel step to two f32
//! vectors on the fly (`vcvtph2ps`) and broadcasts `MR` activations against
//! them: `2 * MR` FMAs per 64 bytes of weights.
//!
//! BF16 ([`PackedBF16`], [`matmul_bf16`]) shares all of this: the kernels are
//! generic over [`Half16`], whose only per-format parts are the (exact)
//! widening to f32 — `vcvtph2ps` for f16, a zero-extension and a 16-bit left
//! shift (`vpmovzxwd` + `vpslld`) for bf16 — and its exact inverse for the
//! per-call repack of row-major weights.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::borrow::Cow;

use std::marker::PhantomData;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::{
    check_len, chunk_size, mul, par_chunks, with_scratch, AlignedBuf, Isa, KernelError, OutPtr,
};

/// Output features per panel of [`PackedF16`] and [`PackedBF16`] (two
/// 16-lane f32 vectors).
pub const F16_PANEL_WIDTH: usize = 32;
const NR: usize = F16_PANEL_WIDTH;
/// Depth of one cache block: an `MR × KC` activation tile (12 KiB) stays in L1
/// while the weight panels stream from L2.
const KC: usize = 256;
/// Activation rows per register tile: `2 * MR` accumulators + 2 weight vectors
/// + 1 broadcast fit in the 32 zmm registers.
const MR: usize = 12;
/// Up to this many activation rows, row-major weights are dotted directly
/// (memory bound) instead of being transposed per call.
const DOT_MAX_M: usize = 4;
/// Weight panels per parallel job of the GEMM path (4 × 32 features).
const JOB_PANELS: usize = 4;
/// Software prefetch distance (bytes) when streaming weights: the hardware
/// prefetchers alone leave about a third of the bandwidth unused here.
const PF: usize = 4096;

/// A 16-bit weight format that the kernels widen to f32 on the fly. Only the
/// conversions differ between formats; tiling, threading and prefetching are
/// shared and monomorphised per format.
///
/// Both conversions are exact for every value of the format (`bf16 → f32` is
/// a 16-bit shift; `f16 → f32` widens exactly).
pub(super) trait Half16: Copy + Send + Sync + 'static {
    /// Widens `src` into `dst` (same length), portable path.
    fn widen(src: &[Self], dst: &mut [f32]);

    /// The exact value as f64 (for the references).
    fn to_f64(self) -> f64;

    /// 16 consecutive weights at `p`, widened.
    ///
    /// # Safety
    /// The CPU must support the features of [`Isa::Avx512`]; `p` is valid
    /// for reading 16 values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const u16) -> std::arch::x86_64::__m512;

    /// The lanes of `mask` of the 16 weights at `p`, widened (other lanes 0,
    /// and neither read nor faulted on).
    ///
    /// # Safety
    /// As [`Half16::load16`], for the lanes in `mask`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_maskz(mask: u16, p: *const u16) -> std::arch::x86_64::__m512;

    /// Narrows 16 f32 that are values of this format (exactly) and stores
    /// them at `p`.
    ///
    /// # Safety
    /// As [`Half16::load16`], for writing.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store16(p: *mut u16, v: std::arch::x86_64::__m512);
}

impl Half16 for f16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }

    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn load16(p: *const u16) -> std::arch::x86_64::__m512 {
        // SAFETY: per `Half16::load16`'s contract the CPU has the features enabled on this fn
        // and `p` is valid for reading 16 values (the 32 bytes of the unaligned load).
        unsafe {
            use std::arch::x86_64::*;
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn load16_maskz(mask: u16, p: *const u16) -> std::arch::x86_64::__m512 {
        // SAFETY: per `Half16::load16_maskz`'s contract the CPU has the features enabled on this
        // fn and the lanes in `mask` are readable at `p`; masked-off lanes are not accessed.
        unsafe {
            use std::arch::x86_64::*;
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast()))
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn store16(p: *mut u16, v: std::arch::x86_64::__m512) {
        // SAFETY: per `Half16::store16`'s contract the CPU has the features enabled on this fn
        // and `p` is valid for writing 16 values (the 32 bytes of the unaligned store).
        unsafe {
            use std::arch::x86_64::*;
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_si256(p.cast(), h);
        }
    }
}

impl Half16 for bf16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        // Bit shift, no rounding: vectorizes on every target.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }

    fn to_f64(self) -> f64 {
        f64::from(f32::from_bits(u32::from(self.to_bits()) << 16))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn load16(p: *const u16) -> std::arch::x86_64::__m512 {
        // SAFETY: per `Half16::load16`'s contract the CPU has the features enabled on this fn
        // and `p` is valid for reading 16 values (the 32 bytes of the unaligned load).
        unsafe {
            use std::arch::x86_64::*;
            let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn load16_maskz(mask: u16, p: *const u16) -> std::arch::x86_64::__m512 {
        // SAFETY: per `Half16::load16_maskz`'s contract the CPU has the features enabled on this
        // fn and the lanes in `mask` are readable at `p`; masked-off lanes are not accessed.
        unsafe {
            use std::arch::x86_64::*;
            let v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn store16(p: *mut u16, v: std::arch::x86_64::__m512) {
        // SAFETY: per `Half16::store16`'s contract the CPU has the features enabled on this fn
        // and `p` is valid for writing 16 values (the 32 bytes of the unaligned store).
        unsafe {
            use std::arch::x86_64::*;
            let h = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(v)));
            _mm256_storeu_si256(p.cast(), h);
        }
    }
}

/// Checks the lengths of a call with `w_len` weights.
fn check(
    x: &[f32],
    m: usize,
    k: usize,
    w_len: usize,
    n: usize,
    y: &[f32],
) -> Result<(), KernelError> {
    check_len("x", mul(m, k)?, x.len())?;
    check_len("w", mul(n, k)?, w_len)?;
    check_len("y", mul(m, n)?, y.len())
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ`, where `w` is row-major f16 (each output
/// feature is a row of `k` halves) and `x`, `y` are row-major f32.
///
/// Accumulates in f32 (with FMA on the SIMD path). Any `k` is accepted.
/// Errors if a length does not match the dimensions.
pub fn matmul_f16(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f16],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check(x, m, k, w.len(), n, y)?;
    matmul_raw(Isa::detect(), x, m, k, w, n, y);
    Ok(())
}

/// Scalar reference for [`matmul_f16`]: widens `w` to f64 and accumulates
/// every dot product in f64 before rounding once to f32.
pub fn matmul_f16_reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f16],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    reference(x, m, k, w, n, y)
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ`, where `w` is row-major bf16 (each output
/// feature is a row of `k` values) and `x`, `y` are row-major f32.
///
/// The same kernels as [`matmul_f16`]; bf16 widens to f32 exactly, so the
/// result is the f32 matmul of the widened weights up to summation order.
/// Errors if a length does not match the dimensions.
pub fn matmul_bf16(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check(x, m, k, w.len(), n, y)?;
    matmul_raw(Isa::detect(), x, m, k, w, n, y);
    Ok(())
}

/// Scalar reference for [`matmul_bf16`] and [`PackedBF16`]: widens `w` to
/// f64 and accumulates every dot product in f64 before rounding once to f32.
pub fn matmul_bf16_reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    reference(x, m, k, w, n, y)
}

fn reference<T: Half16>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[T],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check(x, m, k, w.len(), n, y)?;
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let s: f64 = xr
                .iter()
                .zip(wr)
                .map(|(&a, &b)| f64::from(a) * b.to_f64())
                .sum();
            y[i * n + j] = s as f32;
        }
    }
    Ok(())
}

/// [`matmul_f16`] / [`matmul_bf16`] at a given instruction-set level
/// (lengths already checked).
pub(super) fn matmul_raw<T: Half16>(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[T],
    n: usize,
    y: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let out = OutPtr::new(y, m, n);
    match isa.supported() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` confirmed the AVX-512 features.
        Isa::Avx512 => unsafe {
            if m <= DOT_MAX_M {
                avx512::dot(x, m, k, w, n, out);
            } else {
                avx512::gemm(&pack_a(x, m, k), m, k, Weights::Rows(w), n, out);
            }
        },
        _ => scalar_rows(x, m, k, w, n, out),
    }
}

/// 16-bit weights re-ordered at load time into panels of [`F16_PANEL_WIDTH`]
/// output features (the storage of [`PackedF16`] and [`PackedBF16`]).
#[derive(Clone)]
struct Panels<T> {
    n: usize,
    k: usize,
    data: AlignedBuf,
    _format: PhantomData<T>,
}

impl<T: Half16> Panels<T> {
    fn pack(w: &[T], n: usize, k: usize) -> Result<Self, KernelError> {
        check_len("w", mul(n, k)?, w.len())?;
        let panel = mul(NR, k)?;
        let bytes = mul(mul(n.div_ceil(NR), panel)?, 2)?;
        let mut data = AlignedBuf::zeroed(bytes);
        if panel > 0 {
            let dst = halves_mut::<T>(&mut data);
            dst.par_chunks_mut(panel).enumerate().for_each(|(pi, dst)| {
                let rows = NR.min(n - pi * NR);
                let src = &w[pi * NR * k..(pi * NR + rows) * k];
                // Sequential writes, 32 strided read streams.
                for (p, d) in dst.chunks_exact_mut(NR).enumerate() {
                    for (f, v) in d[..rows].iter_mut().enumerate() {
                        *v = src[f * k + p];
                    }
                }
            });
        }
        Ok(Panels {
            n,
            k,
            data,
            _format: PhantomData,
        })
    }

    fn matmul_isa(&self, isa: Isa, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
        let (n, k) = (self.n, self.k);
        check_len("x", mul(m, k)?, x.len())?;
        check_len("y", mul(m, n)?, y.len())?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            y.fill(0.0);
            return Ok(());
        }
        let out = OutPtr::new(y, m, n);
        let panels = halves::<T>(&self.data);
        match isa.supported() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `supported()` confirmed the AVX-512 features.
            Isa::Avx512 => unsafe {
                avx512::gemm(&pack_a(x, m, k), m, k, Weights::Panels(panels), n, out)
            },
            _ => scalar_panels(x, m, k, panels, n, out),
        }
        Ok(())
    }
}

macro_rules! packed_type {
    ($(#[$doc:meta])* $name:ident, $t:ty) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Panels<$t>);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("n", &self.0.n)
                    .field("k", &self.0.k)
                    .finish()
            }
        }

        impl $name {
            /// Re-orders the row-major `w[n, k]`. Errors if `w.len() != n * k`.
            pub fn pack(w: &[$t], n: usize, k: usize) -> Result<Self, KernelError> {
                Panels::pack(w, n, k).map($name)
            }

            /// Output features (rows of the original matrix).
            pub fn n(&self) -> usize {
                self.0.n
            }

            /// Inner dimension.
            pub fn k(&self) -> usize {
                self.0.k
            }

            /// Bytes of packed storage.
            pub fn size_bytes(&self) -> usize {
                self.0.data.bytes().len()
            }

            /// `y[m, n] = x[m, k] · wᵀ`. Errors if `x.len() != m * k` or
            /// `y.len() != m * n`.
            pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
                self.matmul_isa(Isa::detect(), x, m, y)
            }

            /// [`Self::matmul`] at a given instruction-set level.
            pub(super) fn matmul_isa(
                &self,
                isa: Isa,
                x: &[f32],
                m: usize,
                y: &mut [f32],
            ) -> Result<(), KernelError> {
                self.0.matmul_isa(isa, x, m, y)
            }
        }
    };
}

packed_type!(
    /// F16 weights re-ordered at load time into panels of [`F16_PANEL_WIDTH`]
    /// output features: panel `P` holds `w[P * 32 + f][p]` at `p * 32 + f`
    /// (k-major), so one 64-byte load gives one `k` step of 32 features.
    ///
    /// Same bytes as the row-major matrix, plus zero padding of the last panel
    /// up to a multiple of 32 features.
    PackedF16,
    f16
);

packed_type!(
    /// BF16 weights (e.g. Hugging Face bf16 checkpoints) in the panel layout
    /// of [`PackedF16`]: panel `P` holds `w[P * 32 + f][p]` at `p * 32 + f`.
    /// Widened to f32 on the fly (exactly), never stored as f32.
    ///
    /// Same bytes as the row-major matrix, plus zero padding of the last panel
    /// up to a multiple of 32 features.
    PackedBF16,
    bf16
);

/// The packed 16-bit values of `buf`.
fn halves<T: Half16>(buf: &AlignedBuf) -> &[T] {
    const { assert!(std::mem::size_of::<T>() == 2 && std::mem::align_of::<T>() <= 2) };
    let b = buf.bytes();
    // SAFETY: `T` is `f16` or `bf16`, a transparent u16 (any bit pattern
    // valid), and the buffer is 64-byte aligned; the length is rounded down to
    // whole values.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<T>(), b.len() / 2) }
}

fn halves_mut<T: Half16>(buf: &mut AlignedBuf) -> &mut [T] {
    const { assert!(std::mem::size_of::<T>() == 2 && std::mem::align_of::<T>() <= 2) };
    let b = buf.bytes_mut();
    // SAFETY: as in `halves`.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<T>(), b.len() / 2) }
}

/// Activation rows interleaved in groups of `MR`: group `g` (rows
/// `g*MR..g*MR+r`, `r <= MR`) holds `x[g*MR + i][p]` at `g*MR*k + p*r + i`, so a
/// tile broadcasts its `r` values of step `p` from consecutive addresses.
fn pack_a(x: &[f32], m: usize, k: usize) -> Cow<'_, [f32]> {
    if m == 1 {
        return Cow::Borrowed(x);
    }
    let mut a = vec![0.0f32; m * k];
    let group = |(g, dst): (usize, &mut [f32])| {
        let rows = dst.len() / k;
        let src = &x[g * MR * k..(g * MR + rows) * k];
        for (p, d) in dst.chunks_exact_mut(rows).enumerate() {
            for (i, v) in d.iter_mut().enumerate() {
                *v = src[i * k + p];
            }
        }
    };
    if m <= MR {
        group((0, &mut a[..]));
    } else {
        a.par_chunks_mut(MR * k).enumerate().for_each(group);
    }
    Cow::Owned(a)
}

/// Where the weights of the GEMM path come from.
enum Weights<'a, T> {
    /// Row-major `[n, k]`, transposed per call into scratch.
    Rows(&'a [T]),
    /// The layout of [`PackedF16`] / [`PackedBF16`].
    Panels(&'a [T]),
}

// Not derived: that would require `T: Copy`.
impl<T> Clone for Weights<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Weights<'_, T> {}

/// For every step `p` in order and every row `r`: `a[r] = fma(x[r][p], b[p], a[r])`, lane by
/// lane. Fused, in the AVX-512 tile's order, so the portable path gives the same bits as the
/// SIMD one (docs/protocol.md, "Determinism"). With FMA in the CPU (every AVX2 machine) the
/// fused multiply-adds are instructions; without, `mul_add` is the C library's `fmaf`.
fn accumulate(a: &mut [[f32; NR]], x: &[&[f32]; 4], b: &[[f32; NR]]) {
    #[cfg(target_arch = "x86_64")]
    if super::has_fma() {
        // SAFETY: the CPU has FMA.
        return unsafe { accumulate_fma(a, x, b) };
    }
    accumulate_body(a, x, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn accumulate_fma(a: &mut [[f32; NR]], x: &[&[f32]; 4], b: &[[f32; NR]]) {
    accumulate_body(a, x, b)
}

#[inline(always)]
fn accumulate_body(a: &mut [[f32; NR]], x: &[&[f32]; 4], b: &[[f32; NR]]) {
    for (p, b) in b.iter().enumerate() {
        for (r, a) in a.iter_mut().enumerate() {
            let xp = x[r][p];
            for (a, b) in a.iter_mut().zip(b) {
                *a = xp.mul_add(*b, *a);
            }
        }
    }
}

/// Portable path for row-major weights: each thread widens one weight row at a
/// time and dots it with every activation row.
fn scalar_rows<T: Half16>(x: &[f32], m: usize, k: usize, w: &[T], n: usize, out: OutPtr) {
    let rows = chunk_size(n, 2 * k);
    par_chunks(n.div_ceil(rows), |c| {
        let (j0, j1) = (c * rows, n.min((c + 1) * rows));
        with_scratch(k * 4, |buf| {
            let wf = buf.f32s_mut(k);
            for j in j0..j1 {
                T::widen(&w[j * k..(j + 1) * k], wf);
                for i in 0..m {
                    // SAFETY: column `j` belongs to this job only.
                    let yij = unsafe { out.row_mut(i, j, 1) };
                    yij[0] = super::dot(&x[i * k..(i + 1) * k], wf);
                }
            }
        });
    });
}

/// Portable path for [`PackedF16`] / [`PackedBF16`]: widens `KC` steps of a panel at a time and
/// accumulates 32 features per activation row.
fn scalar_panels<T: Half16>(x: &[f32], m: usize, k: usize, panels: &[T], n: usize, out: OutPtr) {
    let np = n.div_ceil(NR);
    let per = chunk_size(np, 2 * NR * k);
    par_chunks(np.div_ceil(per), |c| {
        with_scratch((KC * NR + m * NR) * 4, |buf| {
            let (bf, acc) = buf.f32s_mut(KC * NR + m * NR).split_at_mut(KC * NR);
            for pi in c * per..np.min((c + 1) * per) {
                let panel = &panels[pi * NR * k..(pi + 1) * NR * k];
                acc.fill(0.0);
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    T::widen(&panel[k0 * NR..(k0 + kc) * NR], &mut bf[..kc * NR]);
                    // Four activation rows per pass over the widened slice, so
                    // each weight vector is loaded once per four rows.
                    let bf = bf[..kc * NR].as_chunks::<NR>().0;
                    for (i4, a4) in acc.as_chunks_mut::<NR>().0.chunks_mut(4).enumerate() {
                        let x4: [&[f32]; 4] = std::array::from_fn(|r| {
                            let i = (4 * i4 + r).min(m - 1);
                            &x[i * k + k0..i * k + k0 + kc]
                        });
                        accumulate(a4, &x4, bf);
                    }
                }
                let cols = NR.min(n - pi * NR);
                for (i, a) in acc.chunks_exact(NR).enumerate() {
                    // SAFETY: panel `pi`'s columns belong to this job only.
                    unsafe { out.row_mut(i, pi * NR, cols) }.copy_from_slice(&a[..cols]);
                }
            }
        });
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! AVX-512 paths. Every function here requires the features of
    //! [`Isa::Avx512`](super::Isa::Avx512); callers check `Isa::supported()`.
    use std::arch::x86_64::*;

    use super::{
        chunk_size, par_chunks, with_scratch, Half16, OutPtr, Weights, DOT_MAX_M, JOB_PANELS, KC,
        MR, NR, PF,
    };

    /// Row-major weights, few activation rows: jobs of weight rows, each row
    /// read once from memory and dotted with all `m <= 4` activation rows.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL, FMA and F16C; `x` is `m * k`, `w`
    /// is `n * k` and `out` is `m * n`.
    pub(super) unsafe fn dot<T: Half16>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[T],
        n: usize,
        out: OutPtr,
    ) {
        debug_assert!(m <= DOT_MAX_M && x.len() == m * k && w.len() == n * k);
        let rows = chunk_size(n, 2 * k);
        par_chunks(n.div_ceil(rows), |c| {
            let (j0, j1) = (c * rows, n.min((c + 1) * rows));
            // SAFETY: features checked by the caller; rows `j0..j1` are in
            // bounds and their output columns belong to this job only.
            unsafe { dot_job::<T>(x.as_ptr(), m, k, w.as_ptr().cast(), j0, j1, out) }
        });
    }

    /// Weight rows `j0..j1`, each dotted with all `m` activation rows into
    /// column `j` of the output.
    ///
    /// # Safety
    /// The CPU must support the features enabled here; `x` points to `m * k`
    /// f32s with `1 <= m <= DOT_MAX_M`, `w` to at least `j1 * k` values,
    /// `j1 <= out.n`, and no one else accesses columns `j0..j1` of `out`
    /// meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    unsafe fn dot_job<T: Half16>(
        x: *const f32,
        m: usize,
        k: usize,
        w: *const u16,
        j0: usize,
        j1: usize,
        out: OutPtr,
    ) {
        // SAFETY: by the contract above, row `j < j1` of `w` (`k` values from
        // `w + j * k`) is in bounds, and `out.ptr + j` with stride `out.n`
        // addresses column `j` of rows `0..m`, which only this job writes.
        unsafe {
            // One weight row at a time: the job's rows are contiguous, so this is
            // a single sequential stream for the prefetchers.
            for j in j0..j1 {
                let (wj, yj) = (w.add(j * k), out.ptr.add(j));
                match m {
                    1 => dot_row::<T, 1>(x, k, wj, yj, out.n),
                    2 => dot_row::<T, 2>(x, k, wj, yj, out.n),
                    3 => dot_row::<T, 3>(x, k, wj, yj, out.n),
                    4 => dot_row::<T, 4>(x, k, wj, yj, out.n),
                    _ => unreachable!(),
                }
            }
        }
    }

    /// `y[i * ldy] = x[i] · w` for `RM` activation rows and one weight row of
    /// length `k`. Four accumulators per activation row (steps of 64) keep
    /// the FMA latency chains off the critical path; reduced once at the end.
    ///
    /// # Safety
    /// The CPU must support the features enabled here; `x` is valid for
    /// reading `RM * k` f32s, `w` for `k` values, and `y + i * ldy` for
    /// writing one f32 for each `i < RM`, with no other access meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn dot_row<T: Half16, const RM: usize>(
        x: *const f32,
        k: usize,
        w: *const u16,
        y: *mut f32,
        ldy: usize,
    ) {
        // SAFETY: features by the contract above. Full steps read `x` and `w`
        // at offsets below `p + 64 <= k`; the tail loads only the lanes below
        // `k` (masked-off lanes are not accessed); prefetches never fault.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 4]; RM];
            let mut p = 0;
            while p + 64 <= k {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(p + PF / 2).cast());
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(p + PF / 2 + 32).cast());
                let wv: [__m512; 4] = std::array::from_fn(|u| T::load16(w.add(p + 16 * u)));
                for (i, a) in acc.iter_mut().enumerate() {
                    for u in 0..4 {
                        a[u] = _mm512_fmadd_ps(
                            _mm512_loadu_ps(x.add(i * k + p + 16 * u)),
                            wv[u],
                            a[u],
                        );
                    }
                }
                p += 64;
            }
            while p < k {
                // Masked-off lanes are neither read nor faulted on.
                let mask = if p + 16 <= k {
                    u16::MAX
                } else {
                    (1u16 << (k - p)) - 1
                };
                let wv = T::load16_maskz(mask, w.add(p));
                for (i, a) in acc.iter_mut().enumerate() {
                    a[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x.add(i * k + p)), wv, a[0]);
                }
                p += 16;
            }
            for (i, a) in acc.iter().enumerate() {
                let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
                *y.add(i * ldy) = _mm512_reduce_add_ps(s);
            }
        }
    }

    /// GEMM over packed activations `a` (see `pack_a`): jobs of `JOB_PANELS`
    /// weight panels; inside a job, for each `KC` slice, every `MR`-row tile of
    /// `a` runs against every panel of the job, so a panel slice is fetched
    /// from memory once and then reused from L2.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL, FMA and F16C; `a` is `m * k`,
    /// the weights hold `n * k` values (`ceil(n / 32) * 32 * k` for panels),
    /// `out` is `m * n`.
    pub(super) unsafe fn gemm<T: Half16>(
        a: &[f32],
        m: usize,
        k: usize,
        w: Weights<'_, T>,
        n: usize,
        out: OutPtr,
    ) {
        let np = n.div_ceil(NR);
        let per = chunk_size(np, 2 * NR * k).min(JOB_PANELS);
        let scratch = match w {
            Weights::Rows(_) => per * KC * NR * 2,
            Weights::Panels(_) => 0,
        };
        par_chunks(np.div_ceil(per), |c| {
            let (p0, p1) = (c * per, np.min((c + 1) * per));
            with_scratch(scratch, |buf| {
                let bbuf = buf.bytes_mut().as_mut_ptr().cast::<u16>();
                // SAFETY: features checked by the caller; panels `p0..p1`
                // are in bounds and their columns belong to this job only;
                // the scratch holds `per * KC * NR >= (p1 - p0) * KC * NR` halves.
                unsafe { gemm_job(a.as_ptr(), m, k, w, n, p0, p1, out, bbuf) }
            });
        });
    }

    /// Panels `p0..p1` of the GEMM: for each depth block, (for row-major
    /// weights) transposes the panels into `bbuf`, then runs every `MR`-row
    /// tile of `a` against them.
    ///
    /// # Safety
    /// The CPU must support the features enabled here; `a` is `m * k` f32s
    /// laid out by `pack_a`; `w` holds `n * k` values (`ceil(n / 32) * 32 * k`
    /// for panels); `p1 <= ceil(n / 32)`; `out` is `m * n` and no one else
    /// accesses the columns of panels `p0..p1` meanwhile; for row-major
    /// weights `bbuf` is valid for writing `(p1 - p0) * KC * NR` halves.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_job<T: Half16>(
        a: *const f32,
        m: usize,
        k: usize,
        w: Weights<'_, T>,
        n: usize,
        p0: usize,
        p1: usize,
        out: OutPtr,
        bbuf: *mut u16,
    ) {
        // SAFETY: by the contract above. `pack_b` reads `rows <= 32` rows of
        // panel `pi` at depth `k0..k0 + kc <= k` and writes `kc * NR <= KC * NR`
        // halves into slot `pi - p0` of `bbuf`; the tiles read `mr` rows of `a`
        // at depth `k0..k0 + kc`, `kc` steps of a panel slice, and write the
        // `cols` in-bounds columns of panel `pi` in rows `r0..r0 + mr`.
        unsafe {
            // One tile of rows (decode): no reuse to block for, so stream each
            // panel front to back (one sequential stream per thread).
            let block = match w {
                Weights::Panels(_) if m <= MR => k,
                _ => KC,
            };
            for k0 in (0..k).step_by(block) {
                let kc = block.min(k - k0);
                if let Weights::Rows(w) = w {
                    for pi in p0..p1 {
                        let rows = NR.min(n - pi * NR);
                        pack_b::<T>(
                            w.as_ptr().add(pi * NR * k + k0).cast(),
                            k,
                            rows,
                            kc,
                            bbuf.add((pi - p0) * KC * NR),
                        );
                    }
                }
                for r0 in (0..m).step_by(MR) {
                    let mr = MR.min(m - r0);
                    let ap = a.add(r0 * k + k0 * mr);
                    let cols = |pi: usize| NR.min(n - pi * NR);
                    let cp = |pi: usize| out.ptr.add(r0 * n + pi * NR);
                    let bp = |pi: usize| match w {
                        Weights::Rows(_) => bbuf.add((pi - p0) * KC * NR).cast_const(),
                        Weights::Panels(panels) => panels.as_ptr().add((pi * k + k0) * NR).cast(),
                    };
                    let acc = k0 > 0;
                    let mut pi = p0;
                    while pi < p1 {
                        if mr <= 2 && pi + 1 < p1 {
                            // Few rows (decode): two panels at once, so four or eight independent
                            // FMA chains hide the latency. Chains run across output features,
                            // never across depth: each output's order stays that of `tile`.
                            let (b2, c2, n2) = (
                                [bp(pi), bp(pi + 1)],
                                [cp(pi), cp(pi + 1)],
                                [cols(pi), cols(pi + 1)],
                            );
                            match mr {
                                1 => tile_pair::<T, 1>(kc, ap, b2, c2, n, n2, acc),
                                _ => tile_pair::<T, 2>(kc, ap, b2, c2, n, n2, acc),
                            }
                            pi += 2;
                        } else {
                            tile_any::<T>(mr, kc, ap, bp(pi), cp(pi), n, cols(pi), acc);
                            pi += 1;
                        }
                    }
                }
            }
        }
    }

    /// [`tile`] for a run-time row count `mr <= MR`.
    ///
    /// # Safety
    /// As [`tile`] with `R = mr`; `1 <= mr <= MR`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_any<T: Half16>(
        mr: usize,
        kc: usize,
        a: *const f32,
        b: *const u16,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: forwards this fn's contract to `tile` with `R = mr`.
        unsafe {
            macro_rules! go {
            ($($r:literal)*) => {
                match mr {
                    $($r => tile::<T, $r>(kc, a, b, c, ldc, cols, accumulate),)*
                    _ => unreachable!(),
                }
            };
        }
            go!(1 2 3 4 5 6 7 8 9 10 11 12);
        }
    }

    /// The micro-kernel: `c[i][0..cols] (+)= Σ_p a[p * R + i] · b[p][0..cols]`
    /// for `R` rows and one 32-wide panel slice of `kc` steps, with all
    /// `2 * R` accumulators in registers. `b` is `T`, widened on the fly.
    ///
    /// # Safety
    /// The CPU must support the features enabled here; `a` is valid for
    /// reading `kc * R` f32s, `b` for `kc * 32` values, and `c + i * ldc` for
    /// reading and writing `cols <= 32` f32s for each `i < R`, with no other
    /// access to those meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn tile<T: Half16, const R: usize>(
        kc: usize,
        a: *const f32,
        b: *const u16,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: by the contract above: step `p < kc` reads `a[R * p..R * p + R]`
        // and `b[32 * p..32 * p + 32]`; the loads and stores of `c` are masked
        // to the first `cols` columns (masked-off lanes are not accessed), and
        // prefetches never fault.
        unsafe {
            let mask = if cols >= 32 {
                u32::MAX
            } else {
                (1u32 << cols) - 1
            };
            let (m0, m1) = (mask as u16, (mask >> 16) as u16);
            // One FMA chain per output, continued from the previous depth block's stored sum:
            // the result is the same sequence of roundings for any blocking and any `R`, which
            // is what makes a row's output independent of the batch it is computed in.
            let mut c0 = [_mm512_setzero_ps(); R];
            let mut c1 = [_mm512_setzero_ps(); R];
            if accumulate {
                for i in 0..R {
                    let cp = c.add(i * ldc);
                    c0[i] = _mm512_maskz_loadu_ps(m0, cp);
                    c1[i] = _mm512_maskz_loadu_ps(m1, cp.add(16));
                }
            }
            for p in 0..kc {
                let bp = b.add(NR * p);
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF / 2).cast());
                let b0 = T::load16(bp);
                let b1 = T::load16(bp.add(16));
                let ap = a.add(R * p);
                for i in 0..R {
                    let av = _mm512_set1_ps(*ap.add(i));
                    c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                    c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
                }
            }
            for i in 0..R {
                let cp = c.add(i * ldc);
                _mm512_mask_storeu_ps(cp, m0, c0[i]);
                if m1 != 0 {
                    _mm512_mask_storeu_ps(cp.add(16), m1, c1[i]);
                }
            }
        }
    }

    /// [`tile`] for two panels at once (`R <= 2` rows): the same sequence of roundings per
    /// output, with twice the independent accumulator chains.
    ///
    /// # Safety
    /// As [`tile`], for each panel `q` with `b[q]`, `c[q]` and `cols[q]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn tile_pair<T: Half16, const R: usize>(
        kc: usize,
        a: *const f32,
        b: [*const u16; 2],
        c: [*mut f32; 2],
        ldc: usize,
        cols: [usize; 2],
        accumulate: bool,
    ) {
        // SAFETY: by the contract above, as in `tile` for each panel.
        unsafe {
            let masks = cols.map(|cols| {
                let mask = if cols >= 32 {
                    u32::MAX
                } else {
                    (1u32 << cols) - 1
                };
                (mask as u16, (mask >> 16) as u16)
            });
            // acc[q][i] = the two 16-lane halves of panel q, row i.
            let mut acc = [[[_mm512_setzero_ps(); 2]; R]; 2];
            if accumulate {
                for (q, panel) in acc.iter_mut().enumerate() {
                    for (i, halves) in panel.iter_mut().enumerate() {
                        let cp = c[q].add(i * ldc);
                        halves[0] = _mm512_maskz_loadu_ps(masks[q].0, cp);
                        halves[1] = _mm512_maskz_loadu_ps(masks[q].1, cp.add(16));
                    }
                }
            }
            for p in 0..kc {
                let av: [__m512; R] = std::array::from_fn(|i| _mm512_set1_ps(*a.add(R * p + i)));
                for q in 0..2 {
                    let bp = b[q].add(NR * p);
                    _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF / 2).cast());
                    let b0 = T::load16(bp);
                    let b1 = T::load16(bp.add(16));
                    for i in 0..R {
                        acc[q][i][0] = _mm512_fmadd_ps(av[i], b0, acc[q][i][0]);
                        acc[q][i][1] = _mm512_fmadd_ps(av[i], b1, acc[q][i][1]);
                    }
                }
            }
            for (q, panel) in acc.iter().enumerate() {
                for (i, halves) in panel.iter().enumerate() {
                    let cp = c[q].add(i * ldc);
                    _mm512_mask_storeu_ps(cp, masks[q].0, halves[0]);
                    if masks[q].1 != 0 {
                        _mm512_mask_storeu_ps(cp.add(16), masks[q].1, halves[1]);
                    }
                }
            }
        }
    }

    /// Transposes `rows <= 32` weight rows (stride `ldw` halves) × `kc` steps
    /// into a panel `out[p * 32 + f]` of `T` (the layout of `PackedF16`);
    /// rows past `rows` are 0. Goes through f32, which is exact both ways.
    ///
    /// # Safety
    /// The CPU must support the features enabled here; `w + r * ldw` is valid
    /// for reading `kc` values for each `r < rows <= 32`, and `out` for writing
    /// `kc * 32` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    unsafe fn pack_b<T: Half16>(w: *const u16, ldw: usize, rows: usize, kc: usize, out: *mut u16) {
        // SAFETY: by the contract above: only rows `< rows` are loaded, masked
        // to the `len` steps left below `kc`; the stores cover steps `< kc` of
        // the 32-wide panel; prefetches never fault.
        unsafe {
            for f0 in [0, 16] {
                let mut p0 = 0;
                while p0 < kc {
                    let len = 16.min(kc - p0);
                    let mask = if len == 16 {
                        u16::MAX
                    } else {
                        (1u16 << len) - 1
                    };
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (q, v) in r.iter_mut().enumerate() {
                        if f0 + q < rows {
                            let row = w.add((f0 + q) * ldw + p0);
                            *v = T::load16_maskz(mask, row);
                            // The next `KC` slice of this row, into L2 while the
                            // tiles of this slice compute: 32 rows at a time is too
                            // many streams for the hardware prefetchers.
                            if p0 % 32 == 0 {
                                _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(KC).cast());
                            }
                        }
                    }
                    let t = transpose16(r);
                    for (q, v) in t.iter().enumerate().take(len) {
                        T::store16(out.add((p0 + q) * NR + f0), *v);
                    }
                    p0 += 16;
                }
            }
        }
    }

    /// 16 × 16 f32 transpose: `out[c][r] = r_in[r][c]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Stage 1: interleave pairs of rows.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // Stage 2: u[4g + c] holds, in 128-bit lane L, column 4L + c of rows
        // 4g..4g+4.
        let mut u = [_mm512_setzero_ps(); 16];
        let pd = _mm512_castps_pd;
        for g in 0..4 {
            let (lo01, hi01, lo23, hi23) = (
                pd(t[4 * g]),
                pd(t[4 * g + 1]),
                pd(t[4 * g + 2]),
                pd(t[4 * g + 3]),
            );
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo01, lo23));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo01, lo23));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi01, hi23));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi01, hi23));
        }
        // Stages 3 and 4: gather the four 128-bit lanes of each column.
        let mut v = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            v[c] = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            v[4 + c] = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
            v[8 + c] = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            v[12 + c] = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        }
        let mut o = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            o[c] = _mm512_shuffle_f32x4::<0x88>(v[c], v[8 + c]);
            o[8 + c] = _mm512_shuffle_f32x4::<0xdd>(v[c], v[8 + c]);
            o[4 + c] = _mm512_shuffle_f32x4::<0x88>(v[4 + c], v[12 + c]);
            o[12 + c] = _mm512_shuffle_f32x4::<0xdd>(v[4 + c], v[12 + c]);
        }
        o
    }
}
