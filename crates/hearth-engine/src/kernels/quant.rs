//! ggml Q4_0 / Q8_0 weights, the llama.cpp way: the activations are quantized
//! once per call to int8 with one f32 scale per 32 values; each block's dot
//! product is an exact integer sum, scaled by `d_w · d_x` into f32.
//!
//! Weight values are handled *biased* so they are unsigned bytes for the
//! `u8 × s8` dot-product instruction (`vpdpbusd`): a Q4_0 nibble `q` is the
//! value `q - 8`; a Q8_0 byte `v` is stored as `v + 128`. The bias is removed
//! by starting each block's integer sum at `-bias · Σ q_x`, precomputed with
//! the activations, so it costs nothing in the inner loop.
//!
//! The SIMD kernel works on panels of 16 output features (one i32/f32 lane per
//! feature): for each 4-value step `t` of a block, one 64-byte vector holds the
//! 4 biased weight bytes of all 16 features, and `vpdpbusd` with the 4
//! activation bytes broadcast adds that step to all 16 features at once. A
//! 32-value block is 8 such steps, after which each lane holds a finished
//! block sum, scaled with one FMA. Row-major ggml weights are repacked into
//! that layout per call (one panel at a time, in L1/L2); [`PackedQ4_0`] and
//! [`PackedQ8_0`] do it once at load time.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use rayon::prelude::*;

use super::{
    check_len, chunk_size, mul, par_chunks, with_scratch, AlignedBuf, Isa, KernelError, OutPtr,
};

/// Values per quantization block.
pub const QK: usize = 32;
/// Bytes of a ggml Q4_0 block: f16 scale, then 16 bytes of nibbles.
pub const Q4_0_BLOCK_BYTES: usize = 18;
/// Bytes of a ggml Q8_0 block: f16 scale, then 32 signed bytes.
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// Output features per panel of [`PackedQ4_0`] / [`PackedQ8_0`] (16 lanes).
pub const QUANT_PANEL_WIDTH: usize = 16;
const NR: usize = QUANT_PANEL_WIDTH;
/// Activation rows per register tile: `MR` f32 accumulators + 8 unpacked
/// weight vectors + scales fit in the 32 zmm registers.
const MR: usize = 8;

/// A quantized weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Q4_0,
    Q8_0,
}

impl Kind {
    fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => Q4_0_BLOCK_BYTES,
            Kind::Q8_0 => Q8_0_BLOCK_BYTES,
        }
    }

    /// Bytes of the values of one block of a whole panel (scales excluded).
    fn panel_qs(self) -> usize {
        NR * (self.block_bytes() - 2)
    }

    /// Byte offsets in a panel of block `b`'s 16 scales and of its values.
    /// Blocks come in pairs `[scales b, scales b+1, values b, values b+1]`
    /// (a whole number of cache lines; the last block of an odd `nb` is
    /// alone), so a panel is read as one sequential stream.
    fn offsets(self, nb: usize, b: usize) -> (usize, usize) {
        let pq = self.panel_qs();
        let base = (b / 2) * 2 * (2 * NR + pq);
        let scales = if b / 2 < nb / 2 { 2 } else { 1 };
        (
            base + (b % 2) * 2 * NR,
            base + scales * 2 * NR + (b % 2) * pq,
        )
    }

    /// What the stored unsigned weight value exceeds the real one by.
    fn bias(self) -> i32 {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q8_0 => 128,
        }
    }

    /// Biased value `e` (0..32) of a raw ggml block.
    fn raw_value(self, blk: &[u8], e: usize) -> i32 {
        match self {
            Kind::Q4_0 => {
                let q = blk[2 + e % 16];
                i32::from(if e < 16 { q & 15 } else { q >> 4 })
            }
            Kind::Q8_0 => i32::from(blk[2 + e] as i8) + 128,
        }
    }

    /// Biased value `e` of feature `f` in one block (`qs`) of a panel.
    ///
    /// Q4_0: byte `c * 64 + f * 4 + r` (c < 4, r < 4) holds the nibbles of the
    /// raw byte `qs[4c + r]`: value `4c + r` low, value `16 + 4c + r` high —
    /// so the four 4-byte groups of a raw block are copied as they are.
    /// Q8_0: byte `t * 64 + f * 4 + r` holds value `4t + r`, plus 128.
    #[cfg(test)]
    fn panel_value(self, qs: &[u8], f: usize, e: usize) -> i32 {
        let t = e / 4;
        match self {
            Kind::Q4_0 => {
                let q = qs[(t % 4) * 64 + f * 4 + e % 4];
                i32::from(if t < 4 { q & 15 } else { q >> 4 })
            }
            Kind::Q8_0 => i32::from(qs[t * 64 + f * 4 + e % 4]),
        }
    }
}

/// f16 bits to f32.
fn f16_bits(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Checks a quantized call and returns the number of blocks per row.
fn check(
    kind: Kind,
    x: &[f32],
    m: usize,
    k: usize,
    w_len: usize,
    n: usize,
    y: &[f32],
) -> Result<usize, KernelError> {
    if !k.is_multiple_of(QK) {
        return Err(KernelError::KNotBlockMultiple { k });
    }
    let nb = k / QK;
    check_len("x", mul(m, k)?, x.len())?;
    check_len("w", mul(mul(n, nb)?, kind.block_bytes())?, w_len)?;
    check_len("y", mul(m, n)?, y.len())?;
    Ok(nb)
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` with `w` as raw ggml Q4_0 blocks: each row
/// of `k` values is `k / 32` blocks of 18 bytes (f16 scale `d` little-endian,
/// then 16 bytes: low nibbles are values 0..16, high nibbles 16..32,
/// value = `(nibble - 8) · d`).
///
/// The activations are quantized to int8 per block of 32 (as llama.cpp does),
/// so the result differs from [`matmul_q4_0_reference`] by at most
/// `Σ_blocks (d_x / 2) · Σ|w|` per output, where `d_x = max|x_block| / 127`
/// (plus f32 rounding). Errors if `k % 32 != 0` or a length does not match.
pub fn matmul_q4_0(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let nb = check(Kind::Q4_0, x, m, k, w.len(), n, y)?;
    matmul_quant(Isa::detect(), Kind::Q4_0, x, m, nb, Weights::Rows(w), n, y);
    Ok(())
}

/// Like [`matmul_q4_0`] with raw ggml Q8_0 blocks (34 bytes: f16 `d`, then
/// 32 signed bytes; value = `q · d`).
pub fn matmul_q8_0(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let nb = check(Kind::Q8_0, x, m, k, w.len(), n, y)?;
    matmul_quant(Isa::detect(), Kind::Q8_0, x, m, nb, Weights::Rows(w), n, y);
    Ok(())
}

/// Scalar reference for [`matmul_q4_0`]: dequantizes `w` exactly to f32 and
/// accumulates each dot product with the unquantized `x` in f64.
pub fn matmul_q4_0_reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    reference(Kind::Q4_0, x, m, k, w, n, y)
}

/// Scalar reference for [`matmul_q8_0`], as [`matmul_q4_0_reference`].
pub fn matmul_q8_0_reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    reference(Kind::Q8_0, x, m, k, w, n, y)
}

fn reference(
    kind: Kind,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let nb = check(kind, x, m, k, w.len(), n, y)?;
    let bb = kind.block_bytes();
    let mut wf = vec![0.0f32; k];
    for j in 0..n {
        for (b, blk) in w[j * nb * bb..(j + 1) * nb * bb]
            .chunks_exact(bb)
            .enumerate()
        {
            let d = f16_bits(blk[0], blk[1]);
            for e in 0..QK {
                wf[b * QK + e] = (kind.raw_value(blk, e) - kind.bias()) as f32 * d;
            }
        }
        for i in 0..m {
            let s: f64 = x[i * k..(i + 1) * k]
                .iter()
                .zip(&wf)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            y[i * n + j] = s as f32;
        }
    }
    Ok(())
}

/// Where the weights come from.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// Raw ggml blocks, row-major.
    Rows(&'a [u8]),
    /// The panel layout of [`PackedQuant`].
    Panels(&'a [u8]),
}

/// A quantized matmul at a given instruction-set level (lengths checked).
#[allow(clippy::too_many_arguments)]
fn matmul_quant(
    isa: Isa,
    kind: Kind,
    x: &[f32],
    m: usize,
    nb: usize,
    w: Weights<'_>,
    n: usize,
    y: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let xq = QuantX::new(isa, x, m, nb, kind.bias());
    let out = OutPtr::new(y, m, n);
    match isa.supported() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` confirmed the AVX-512 features.
        Isa::Avx512 => unsafe { avx512::gemm(kind, &xq, w, out) },
        _ => scalar(kind, &xq, w, out),
    }
}

/// Activations quantized to int8 per block of 32, in groups of `MR` rows laid
/// out for the micro-kernel: in group `g` (rows `g*MR..g*MR + r`), the 4 values
/// of step `t` of block `b` of row `i` are the bytes at
/// `g*MR*k + ((b*8 + t) * r + i) * 4`; the scale and bias correction of block
/// `b` of row `i` are at `g*MR*nb + b*r + i`.
struct QuantX {
    m: usize,
    nb: usize,
    /// int8 values (as bytes).
    q: Vec<u8>,
    /// Per-block scales `d_x = max|x| / 127`.
    d: Vec<f32>,
    /// Per-block `-bias · Σ q`: the starting value of each integer block sum.
    corr: Vec<i32>,
}

impl QuantX {
    /// Quantizes the `m` rows of `x` (`nb` blocks each). Every row is quantized on its own,
    /// with the same result on every instruction-set level and whatever the other rows are.
    fn new(isa: Isa, x: &[f32], m: usize, nb: usize, bias: i32) -> Self {
        let k = nb * QK;
        let mut q = vec![0u8; m * k];
        let mut d = vec![0.0f32; m * nb];
        let mut corr = vec![0i32; m * nb];
        let isa = isa.supported();
        let group = |g: usize, qg: &mut [u8], dg: &mut [f32], cg: &mut [i32]| {
            let rows = dg.len() / nb;
            for i in 0..rows {
                let xr = &x[(g * MR + i) * k..(g * MR + i + 1) * k];
                let row = QuantRow {
                    rows,
                    i,
                    bias,
                    q: &mut *qg,
                    d: &mut *dg,
                    corr: &mut *cg,
                };
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `supported()` confirmed the AVX-512 features.
                    Isa::Avx512 => unsafe { avx512::quantize_row(xr, row) },
                    _ => quantize_row(xr, row),
                }
            }
        };
        if m <= MR {
            // Decode: not worth a trip through the pool.
            group(0, &mut q, &mut d, &mut corr);
        } else {
            q.par_chunks_mut(MR * k)
                .zip(d.par_chunks_mut(MR * nb))
                .zip(corr.par_chunks_mut(MR * nb))
                .enumerate()
                .for_each(|(g, ((qg, dg), cg))| group(g, qg, dg, cg));
        }
        QuantX { m, nb, q, d, corr }
    }

    /// First row and row count of the group holding row `i`.
    fn group(&self, i: usize) -> (usize, usize) {
        let r0 = i / MR * MR;
        (r0, MR.min(self.m - r0))
    }

    /// Row `i` as plain int8 values and its scales.
    fn row(&self, i: usize, q: &mut [i8], d: &mut [f32]) {
        let (r0, rows) = self.group(i);
        let (k, nb) = (self.nb * QK, self.nb);
        for b in 0..nb {
            for e in 0..QK {
                q[b * QK + e] =
                    self.q[r0 * k + ((b * 8 + e / 4) * rows + i - r0) * 4 + e % 4] as i8;
            }
            d[b] = self.d[r0 * nb + b * rows + i - r0];
        }
    }
}

/// Where one activation row's quantized blocks go in its group of `rows` rows
/// (layout in [`QuantX`]).
struct QuantRow<'a> {
    rows: usize,
    i: usize,
    bias: i32,
    q: &'a mut [u8],
    d: &'a mut [f32],
    corr: &'a mut [i32],
}

/// Per block of 32: `d_x = max|x| / 127`, values `round_ties_even(x / d_x)`
/// saturated to int8 (NaN gives 0), and the bias correction `-bias · Σ q`.
fn quantize_row(xr: &[f32], out: QuantRow<'_>) {
    let QuantRow {
        rows,
        i,
        bias,
        q,
        d,
        corr,
    } = out;
    for (b, xb) in xr.chunks_exact(QK).enumerate() {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let dx = amax / 127.0;
        let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
        let mut sum = 0i32;
        for (t, x4) in xb.chunks_exact(4).enumerate() {
            let at = ((b * 8 + t) * rows + i) * 4;
            for (r, &v) in x4.iter().enumerate() {
                // |v · inv| <= 127 (+ rounding); `as` saturates.
                let qv = (v * inv).round_ties_even() as i8;
                sum += i32::from(qv);
                q[at + r] = qv as u8;
            }
        }
        d[b * rows + i] = dx;
        corr[b * rows + i] = -bias * sum;
    }
}

/// Portable path: per job of weight rows, unpack the rows' values (signed,
/// unbiased) and scales once, then exact integer block sums against every
/// activation row — the same integers as the SIMD path (there the bias is
/// added and removed), accumulated in the same block order. Fixed-size
/// 32-value blocks let the compiler vectorize the integer dot products.
fn scalar(kind: Kind, xq: &QuantX, w: Weights<'_>, out: OutPtr) {
    let (m, n, nb) = (xq.m, out.n, xq.nb);
    let k = nb * QK;
    let bb = kind.block_bytes();
    let rows = chunk_size(n, nb * bb);
    par_chunks(n.div_ceil(rows), |c| {
        let (j0, j1) = (c * rows, n.min((c + 1) * rows));
        let mut wv = vec![[0i8; QK]; (j1 - j0) * nb];
        let mut wd = vec![0.0f32; (j1 - j0) * nb];
        for j in j0..j1 {
            for b in 0..nb {
                let (v, d) = (&mut wv[(j - j0) * nb + b], &mut wd[(j - j0) * nb + b]);
                match w {
                    Weights::Rows(w) => {
                        let blk = &w[(j * nb + b) * bb..(j * nb + b + 1) * bb];
                        *d = f16_bits(blk[0], blk[1]);
                        match kind {
                            Kind::Q4_0 => {
                                for e in 0..QK / 2 {
                                    v[e] = (blk[2 + e] & 15) as i8 - 8;
                                    v[e + QK / 2] = (blk[2 + e] >> 4) as i8 - 8;
                                }
                            }
                            Kind::Q8_0 => {
                                for (v, &q) in v.iter_mut().zip(&blk[2..]) {
                                    *v = q as i8;
                                }
                            }
                        }
                    }
                    Weights::Panels(p) => {
                        let (pi, f) = (j / NR, j % NR);
                        let panel = &p[pi * nb * NR * bb..(pi + 1) * nb * NR * bb];
                        let (so, qo) = kind.offsets(nb, b);
                        *d = f16_bits(panel[so + 2 * f], panel[so + 2 * f + 1]);
                        // The 4-value groups of feature `f` (see `panel_value`).
                        for t in 0..kind.panel_qs() / 64 {
                            let g = &panel[qo + t * 64 + f * 4..][..4];
                            for (r, &q) in g.iter().enumerate() {
                                match kind {
                                    Kind::Q4_0 => {
                                        v[4 * t + r] = (q & 15) as i8 - 8;
                                        v[16 + 4 * t + r] = (q >> 4) as i8 - 8;
                                    }
                                    Kind::Q8_0 => v[4 * t + r] = (q ^ 0x80) as i8,
                                }
                            }
                        }
                    }
                }
            }
        }
        let (mut xr, mut xd) = (vec![0i8; k], vec![0.0f32; nb]);
        for i in 0..m {
            xq.row(i, &mut xr, &mut xd);
            // SAFETY: columns `j0..j1` belong to this job only.
            let yr = unsafe { out.row_mut(i, j0, j1 - j0) };
            dot_rows(yr, &xr, &xd, &wv, &wd);
        }
    });
}

/// `y[j] = Σ_b fma(Σ x_q·w_q, d_w · d_x, ·)` over the blocks in order, for every weight row `j`:
/// the AVX-512 kernel's operations in its order, so both paths give the same bits. Dispatched
/// as [`super::fp16`]'s `accumulate` is, for FMA instructions where the CPU has them.
fn dot_rows(y: &mut [f32], xr: &[i8], xd: &[f32], wv: &[[i8; QK]], wd: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::has_fma() {
        // SAFETY: the CPU has FMA.
        return unsafe { dot_rows_fma(y, xr, xd, wv, wd) };
    }
    dot_rows_body(y, xr, xd, wv, wd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn dot_rows_fma(y: &mut [f32], xr: &[i8], xd: &[f32], wv: &[[i8; QK]], wd: &[f32]) {
    dot_rows_body(y, xr, xd, wv, wd)
}

#[inline(always)]
fn dot_rows_body(y: &mut [f32], xr: &[i8], xd: &[f32], wv: &[[i8; QK]], wd: &[f32]) {
    let nb = xd.len();
    for (jj, yv) in y.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (b, xb) in xr.chunks_exact(QK).enumerate() {
            let wb = &wv[jj * nb + b];
            let s: i32 = wb
                .iter()
                .zip(xb)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            acc = (s as f32).mul_add(wd[jj * nb + b] * xd[b], acc);
        }
        *yv = acc;
    }
}

/// Writes panel `pi` (features `pi*16..pi*16+16`, zero past `n`) of the
/// row-major ggml weights `w` into `out`: per block the 16 f16 scales and the
/// biased values (`kind.panel_qs()` bytes, layout in [`Kind::panel_value`]),
/// placed as [`Kind::offsets`] says.
fn pack_panel(kind: Kind, w: &[u8], nb: usize, n: usize, pi: usize, out: &mut [u8]) {
    let (bb, pq) = (kind.block_bytes(), kind.panel_qs());
    let out = &mut out[..nb * NR * bb];
    for f in 0..NR {
        let j = pi * NR + f;
        if j >= n {
            // Padding feature: scale 0, value 0.
            let zero = match kind {
                Kind::Q4_0 => 0x88,
                Kind::Q8_0 => 0x80,
            };
            for b in 0..nb {
                let (so, qo) = kind.offsets(nb, b);
                out[so + 2 * f..][..2].fill(0);
                for t in 0..pq / 64 {
                    out[qo + t * 64 + f * 4..][..4].fill(zero);
                }
            }
            continue;
        }
        for (b, blk) in w[j * nb * bb..(j + 1) * nb * bb]
            .chunks_exact(bb)
            .enumerate()
        {
            let (so, qo) = kind.offsets(nb, b);
            out[so + 2 * f..][..2].copy_from_slice(&blk[..2]);
            let q = &mut out[qo..][..pq];
            for t in 0..pq / 64 {
                let dst = &mut q[t * 64 + f * 4..][..4];
                dst.copy_from_slice(&blk[2 + 4 * t..][..4]);
                if kind == Kind::Q8_0 {
                    for v in dst {
                        *v ^= 0x80;
                    }
                }
            }
        }
    }
}

/// Quantized weights re-ordered at load time into panels of 16 features (see
/// [`Kind::panel_value`]). Same bytes as the ggml blocks, plus padding of the
/// last panel to a multiple of 16 features.
#[derive(Clone)]
struct PackedQuant {
    kind: Kind,
    n: usize,
    nb: usize,
    data: AlignedBuf,
}

impl PackedQuant {
    fn pack(kind: Kind, w: &[u8], n: usize, k: usize) -> Result<Self, KernelError> {
        if !k.is_multiple_of(QK) {
            return Err(KernelError::KNotBlockMultiple { k });
        }
        let nb = k / QK;
        let bb = kind.block_bytes();
        check_len("w", mul(mul(n, nb)?, bb)?, w.len())?;
        let panel = mul(mul(nb, NR)?, bb)?;
        let mut data = AlignedBuf::zeroed(mul(n.div_ceil(NR), panel)?);
        if panel > 0 {
            data.bytes_mut()
                .par_chunks_mut(panel)
                .enumerate()
                .for_each(|(pi, dst)| pack_panel(kind, w, nb, n, pi, dst));
        }
        Ok(PackedQuant { kind, n, nb, data })
    }

    fn matmul(&self, isa: Isa, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
        check_len("x", mul(m, self.nb * QK)?, x.len())?;
        check_len("y", mul(m, self.n)?, y.len())?;
        let w = Weights::Panels(self.data.bytes());
        matmul_quant(isa, self.kind, x, m, self.nb, w, self.n, y);
        Ok(())
    }
}

macro_rules! packed_type {
    ($name:ident, $kind:expr, $fmt:literal, $raw:ident) => {
        #[doc = concat!("ggml ", $fmt, " weights re-ordered once at load time into panels of")]
        #[doc = "16 output features, so the kernel streams them without per-call repacking."]
        #[doc = concat!("Same bytes as the raw blocks plus padding of the last panel; results are")]
        #[doc = concat!("identical to [`", stringify!($raw), "`] on the same weights.")]
        #[derive(Clone)]
        pub struct $name(PackedQuant);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("n", &self.0.n)
                    .field("k", &self.k())
                    .finish()
            }
        }

        impl $name {
            #[doc = concat!("Re-orders raw row-major ", $fmt, " blocks of an `[n, k]` matrix.")]
            /// Errors if `k % 32 != 0` or `w` has the wrong length.
            pub fn pack(w: &[u8], n: usize, k: usize) -> Result<Self, KernelError> {
                PackedQuant::pack($kind, w, n, k).map($name)
            }

            /// Output features (rows of the original matrix).
            pub fn n(&self) -> usize {
                self.0.n
            }

            /// Inner dimension.
            pub fn k(&self) -> usize {
                self.0.nb * QK
            }

            /// Bytes of packed storage.
            pub fn size_bytes(&self) -> usize {
                self.0.data.bytes().len()
            }

            /// `y[m, n] = x[m, k] · wᵀ`. Errors if `x.len() != m * k` or
            /// `y.len() != m * n`.
            pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
                self.0.matmul(Isa::detect(), x, m, y)
            }

            /// [`Self::matmul`] at a given instruction-set level.
            #[allow(dead_code)]
            pub(super) fn matmul_isa(
                &self,
                isa: Isa,
                x: &[f32],
                m: usize,
                y: &mut [f32],
            ) -> Result<(), KernelError> {
                self.0.matmul(isa, x, m, y)
            }
        }
    };
}

packed_type!(PackedQ4_0, Kind::Q4_0, "Q4_0", matmul_q4_0);
packed_type!(PackedQ8_0, Kind::Q8_0, "Q8_0", matmul_q8_0);

/// [`matmul_q4_0`] / [`matmul_q8_0`] at a given instruction-set level
/// (for tests comparing the paths).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_raw_isa(
    isa: Isa,
    q8: bool,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let kind = if q8 { Kind::Q8_0 } else { Kind::Q4_0 };
    let nb = check(kind, x, m, k, w.len(), n, y)?;
    matmul_quant(isa, kind, x, m, nb, Weights::Rows(w), n, y);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! AVX-512 VNNI path. Every function here requires the features of
    //! [`Isa::Avx512`](super::Isa::Avx512); callers check `Isa::supported()`.
    use std::arch::x86_64::*;

    use super::{
        chunk_size, par_chunks, with_scratch, Kind, OutPtr, QuantRow, QuantX, Weights, MR, NR, QK,
    };

    /// Software prefetch distance (bytes) when streaming a packed panel.
    const PF: usize = 4096;
    /// Bytes of packed panels that every activation tile runs over before the
    /// next group (kept within a core's L2 next to the activations).
    const GROUP_BYTES: usize = 512 << 10;

    /// Jobs of weight panels; for each panel, every `MR`-row tile of
    /// activations runs over the whole depth with accumulators in registers.
    /// Raw weights are first transposed into the packed layout in per-thread
    /// scratch (one panel, L1/L2), which costs a few SIMD shuffles per byte.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL/VNNI; the weights and `out` have
    /// the sizes implied by `xq` and `out.n`.
    pub(super) unsafe fn gemm(kind: Kind, xq: &QuantX, w: Weights<'_>, out: OutPtr) {
        let n = out.n;
        let np = n.div_ceil(NR);
        let nb = xq.nb;
        let panel = nb * NR * kind.block_bytes();
        let stride = nb * kind.block_bytes();
        let per = chunk_size(np, panel);
        let scratch = match w {
            Weights::Rows(_) => panel,
            Weights::Panels(_) => 0,
        };
        // Packed panels are taken in groups that stay in L2 while every
        // activation tile passes over them, so many rows (batched sessions,
        // long prompts) fetch their activations once per group rather than
        // once per panel. One tile of rows (decode) sees no difference.
        let group = (GROUP_BYTES / panel.max(1)).max(1);
        par_chunks(np.div_ceil(per), |c| {
            let (p0, p1) = (c * per, np.min((c + 1) * per));
            with_scratch(scratch, |buf| match w {
                Weights::Panels(p) => {
                    for g0 in (p0..p1).step_by(group) {
                        let g1 = p1.min(g0 + group);
                        let wp = p[g0 * panel..g1 * panel].as_ptr();
                        // SAFETY: features checked by the caller; `wp` is
                        // panels `g0..g1`, whose columns belong to this job.
                        unsafe { panel_job(kind, xq, wp, panel, g0..g1, out) }
                    }
                }
                Weights::Rows(w) => {
                    for pi in p0..p1 {
                        let rows = NR.min(n - pi * NR);
                        let src = &w[pi * NR * stride..(pi * NR + rows) * stride];
                        // SAFETY: features checked by the caller; `src` is
                        // `rows` whole rows and the scratch one panel.
                        unsafe {
                            repack(
                                kind,
                                src.as_ptr(),
                                stride,
                                rows,
                                nb,
                                buf.bytes_mut().as_mut_ptr(),
                            )
                        };
                        let wp = buf.bytes().as_ptr();
                        // SAFETY: as above; `wp` is panel `pi`, repacked.
                        unsafe { panel_job(kind, xq, wp, panel, pi..pi + 1, out) }
                    }
                }
            });
        });
    }

    /// [`super::quantize_row`], 32 values at a time, with bitwise the same
    /// results: the maximum skips NaN as `f32::max` does, the product is the
    /// same IEEE multiplication, and clamping to `[-128, 127]` (NaN to 0)
    /// before rounding to nearest-even gives what rounding and then the
    /// saturating `as i8` give.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL; `xr` is whole blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize_row(xr: &[f32], out: QuantRow<'_>) {
        // SAFETY: the features are the caller's obligation; every load reads
        // within one whole 32-value block `xb`, the stores write the 32 bytes
        // of `qb`, and `q`, `d`, `corr` are written through checked indexing.
        unsafe {
            let QuantRow {
                rows,
                i,
                bias,
                q,
                d,
                corr,
            } = out;
            let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
            for (b, xb) in xr.chunks_exact(QK).enumerate() {
                let x0 = _mm512_loadu_ps(xb.as_ptr());
                let x1 = _mm512_loadu_ps(xb.as_ptr().add(16));
                // `max(a, b)` returns `b` when either is NaN: NaN lanes keep the maximum so far.
                let m = _mm512_max_ps(_mm512_abs_ps(x0), _mm512_setzero_ps());
                let m = _mm512_max_ps(_mm512_abs_ps(x1), m);
                let amax = _mm512_reduce_max_ps(m);
                let dx = amax / 127.0;
                let inv = _mm512_set1_ps(if dx > 0.0 { 1.0 / dx } else { 0.0 });
                let conv = |x: __m512| {
                    let y = _mm512_mul_ps(x, inv);
                    let y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y), y);
                    let y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
                    _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y)
                };
                let (q0, q1) = (conv(x0), conv(x1));
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                let mut qb = [0u32; QK / 4];
                _mm_storeu_si128(qb.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128(qb.as_mut_ptr().add(4).cast(), _mm512_cvtepi32_epi8(q1));
                for (t, &v) in qb.iter().enumerate() {
                    let at = ((b * 8 + t) * rows + i) * 4;
                    q[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                d[b * rows + i] = dx;
                corr[b * rows + i] = -bias * sum;
            }
        }
    }

    /// Every activation tile against panels `pis` (consecutive, `panel`
    /// bytes each, starting at `wp`): tiles outside, so a tile's activations
    /// are read once for all the panels.
    ///
    /// # Safety
    /// The CPU must support the features enabled here; `wp` is valid for
    /// reading `pis.len() * panel` bytes of packed panels of `kind` with
    /// `xq.nb` blocks; `pis.end <= ceil(out.n / 16)`; `out` is `xq.m * out.n`
    /// and no one else accesses the columns of panels `pis` meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn panel_job(
        kind: Kind,
        xq: &QuantX,
        wp: *const u8,
        panel: usize,
        pis: std::ops::Range<usize>,
        out: OutPtr,
    ) {
        // SAFETY: by the contract above; each tile reads the `mr` rows of
        // group `r0` of `xq` (laid out as `QuantX` says), one whole panel at
        // `wp + (pi - pis.start) * panel`, and writes the in-bounds `cols`
        // columns of panel `pi` in rows `r0..r0 + mr`.
        unsafe {
            let (m, n, nb) = (xq.m, out.n, xq.nb);
            let k = nb * QK;
            for r0 in (0..m).step_by(MR) {
                let mr = MR.min(m - r0);
                let aq = xq.q.as_ptr().add(r0 * k);
                let ad = xq.d.as_ptr().add(r0 * nb);
                let ac = xq.corr.as_ptr().add(r0 * nb);
                for pi in pis.clone() {
                    let cols = NR.min(n - pi * NR);
                    let wp = wp.add((pi - pis.start) * panel);
                    let c = out.ptr.add(r0 * n + pi * NR);
                    macro_rules! go {
                    ($($r:literal)*) => {
                        match (mr, kind) {
                            $(($r, Kind::Q4_0) => tile::<$r, true>(nb, aq, ad, ac, wp, c, n, cols),
                              ($r, Kind::Q8_0) => tile::<$r, false>(nb, aq, ad, ac, wp, c, n, cols),)*
                            _ => unreachable!(),
                        }
                    };
                }
                    go!(1 2 3 4 5 6 7 8);
                }
            }
        }
    }

    /// Transposes `rows <= 16` raw rows (`stride` bytes apart) into the packed
    /// panel layout at `out` (see `Kind::panel_value`), 4 rows at a time:
    /// a 4 × 4 dword transpose turns the rows' 4-byte groups into the panel's
    /// 16-byte runs. Rows past `rows` become padding (scale 0, value 0).
    ///
    /// # Safety
    /// The CPU must support the features enabled here; `src + r * stride` is
    /// valid for reading `nb` raw blocks of `kind` for each `r < rows <= 16`,
    /// and `out` for writing one packed panel (`nb * 16 * block_bytes` bytes).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn repack(
        kind: Kind,
        src: *const u8,
        stride: usize,
        rows: usize,
        nb: usize,
        out: *mut u8,
    ) {
        // SAFETY: by the contract above: only live rows (`< rows`) are read,
        // each within its block `b < nb` (2 scale bytes, then 16 or 32 value
        // bytes); the writes land at the offsets `Kind::offsets` gives inside
        // the panel; prefetches never fault.
        unsafe {
            let bb = kind.block_bytes();
            let flip = _mm256_set1_epi8(-128);
            // The 16 rows are one contiguous region read as 16 interleaved
            // streams, too many for the hardware prefetchers: prefetch the next
            // panel's region sequentially, a block's worth per block.
            let next = src.wrapping_add(NR * stride);
            for b in 0..nb {
                for l in 0..(NR * bb).div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(b * NR * bb + 64 * l).cast());
                }
                let (so, qo) = kind.offsets(nb, b);
                let (qo, dout) = (out.add(qo), out.add(so));
                for g in 0..NR / 4 {
                    let row = |i: usize| src.wrapping_add((4 * g + i) * stride + b * bb);
                    let live = |i: usize| 4 * g + i < rows;
                    for i in 0..4 {
                        let d = if live(i) {
                            row(i).cast::<u16>().read_unaligned()
                        } else {
                            0
                        };
                        dout.add(2 * (4 * g + i)).cast::<u16>().write_unaligned(d);
                    }
                    match kind {
                        Kind::Q4_0 => {
                            let v: [__m128i; 4] = std::array::from_fn(|i| {
                                if live(i) {
                                    _mm_loadu_si128(row(i).add(2).cast())
                                } else {
                                    _mm_set1_epi8(-120) // nibbles 8 = value 0
                                }
                            });
                            let t0 = _mm_unpacklo_epi32(v[0], v[1]);
                            let t1 = _mm_unpackhi_epi32(v[0], v[1]);
                            let t2 = _mm_unpacklo_epi32(v[2], v[3]);
                            let t3 = _mm_unpackhi_epi32(v[2], v[3]);
                            let o = [
                                _mm_unpacklo_epi64(t0, t2),
                                _mm_unpackhi_epi64(t0, t2),
                                _mm_unpacklo_epi64(t1, t3),
                                _mm_unpackhi_epi64(t1, t3),
                            ];
                            for (c, v) in o.iter().enumerate() {
                                _mm_storeu_si128(qo.add(c * 64 + 16 * g).cast(), *v);
                            }
                        }
                        Kind::Q8_0 => {
                            // Same per 128-bit half: the low half gives groups
                            // 0..4, the high half groups 4..8; bias by 128.
                            let v: [__m256i; 4] = std::array::from_fn(|i| {
                                let raw = if live(i) {
                                    _mm256_loadu_si256(row(i).add(2).cast())
                                } else {
                                    _mm256_setzero_si256()
                                };
                                _mm256_xor_si256(raw, flip)
                            });
                            let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
                            let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
                            let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
                            let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
                            let o = [
                                _mm256_unpacklo_epi64(t0, t2),
                                _mm256_unpackhi_epi64(t0, t2),
                                _mm256_unpacklo_epi64(t1, t3),
                                _mm256_unpackhi_epi64(t1, t3),
                            ];
                            for (c, v) in o.iter().enumerate() {
                                _mm_storeu_si128(
                                    qo.add(c * 64 + 16 * g).cast(),
                                    _mm256_castsi256_si128(*v),
                                );
                                _mm_storeu_si128(
                                    qo.add((c + 4) * 64 + 16 * g).cast(),
                                    _mm256_extracti128_si256::<1>(*v),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The micro-kernel: `R` activation rows × 16 features over `nb` blocks.
    /// Per block: load and unpack the panel's 8 weight vectors once, then per
    /// row 8 `vpdpbusd` (activation bytes broadcast) starting from the bias
    /// correction, and one FMA by `d_w · d_x`.
    ///
    /// # Safety
    /// The CPU must support the features enabled here; `aq`, `ad`, `ac` point
    /// to one group of `R` rows of a `QuantX` with `nb` blocks (`nb * 32 * R`
    /// bytes, `nb * R` scales and corrections); `wp` to one packed panel
    /// (Q4_0 if `Q4`, else Q8_0); `c + i * ldc` is valid for writing
    /// `cols <= 16` f32s for each `i < R`, with no other access meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const Q4: bool>(
        nb: usize,
        aq: *const u8,
        ad: *const f32,
        ac: *const i32,
        wp: *const u8,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        // SAFETY: by the contract above: block `b < nb` reads its 32 scale
        // bytes and `panel_qs` value bytes at `Kind::offsets` in the panel and
        // the group's bytes, scales and corrections of block `b`; the stores
        // are masked to the first `cols` columns; prefetches never fault.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            let low = _mm512_set1_epi8(0x0F);
            let kind = if Q4 { Kind::Q4_0 } else { Kind::Q8_0 };
            let pq = kind.panel_qs();
            for b in 0..nb {
                let (so, qo) = kind.offsets(nb, b);
                let base = wp.add(qo);
                // Stream ahead: a panel is read exactly once per tile.
                for l in 0..pq / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PF + 64 * l).cast());
                }
                let mut wv = [_mm512_setzero_si512(); 8];
                for (t, v) in wv.iter_mut().enumerate().take(pq / 64) {
                    *v = _mm512_loadu_si512(base.add(t * 64).cast());
                }
                if Q4 {
                    for t in 0..4 {
                        let v = wv[t];
                        wv[t] = _mm512_and_si512(v, low);
                        wv[t + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    }
                }
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(so).cast()));
                let aqb = aq.add(b * QK * R);
                for (i, a) in acc.iter_mut().enumerate() {
                    // Two chains of 4 `vpdpbusd` instead of one of 8: with few
                    // rows there is little other work to hide the latency behind.
                    let mut s = [
                        _mm512_set1_epi32(*ac.add(b * R + i)),
                        _mm512_setzero_si512(),
                    ];
                    for (t, v) in wv.iter().enumerate() {
                        let x4 = aqb.add((t * R + i) * 4).cast::<i32>().read_unaligned();
                        s[t % 2] = _mm512_dpbusd_epi32(s[t % 2], *v, _mm512_set1_epi32(x4));
                    }
                    let s = _mm512_add_epi32(s[0], s[1]);
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*ad.add(b * R + i)));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *a);
                }
            }
            let mask = if cols >= 16 {
                u16::MAX
            } else {
                (1u16 << cols) - 1
            };
            for (i, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(i * ldc), mask, *a);
            }
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// The SIMD activation quantization gives bitwise the scalar one, special values included,
    /// and a row's quantization does not depend on the other rows.
    #[test]
    fn activation_quantization_is_exact_and_per_row() {
        let specials = [
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            1e-45,
            -1e-40,
            f32::MAX,
            f32::MIN,
            0.5,
            -1.5,
            2.5,
            127.0,
            -127.0,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let (m, nb) = (21, 5);
        let k = nb * QK;
        let x: Vec<f32> = (0..m * k)
            .map(|j| match (j / QK) % 4 {
                // Blocks of random values, of small integers (ties), with specials, and of zeros.
                0 => (next() as f32 / u32::MAX as f32 - 0.5) * 8.0,
                1 => (next() % 255) as f32 * 0.5 - 63.5,
                2 => specials[next() as usize % specials.len()],
                _ => 0.0,
            })
            .collect();
        let bits = |xq: &QuantX| {
            (
                xq.q.clone(),
                xq.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                xq.corr.clone(),
            )
        };
        for bias in [8, 128] {
            let scalar = QuantX::new(Isa::Scalar, &x, m, nb, bias);
            let simd = QuantX::new(Isa::detect(), &x, m, nb, bias);
            assert!(bits(&scalar) == bits(&simd), "bias {bias}");
            // Row by row, each row alone gives what it gave among the others.
            let (mut qa, mut da) = (vec![0i8; k], vec![0f32; nb]);
            let (mut qb, mut db) = (vec![0i8; k], vec![0f32; nb]);
            for i in 0..m {
                let alone = QuantX::new(Isa::detect(), &x[i * k..(i + 1) * k], 1, nb, bias);
                alone.row(0, &mut qa, &mut da);
                simd.row(i, &mut qb, &mut db);
                assert_eq!(qa, qb, "row {i}");
                assert!(da.iter().zip(&db).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    /// Every value and scale of the raw blocks lands where the kernels read
    /// it, and padding features read as scale 0, value 0.
    #[test]
    fn panels_hold_the_raw_values() {
        for kind in [Kind::Q4_0, Kind::Q8_0] {
            for (n, nb) in [(16, 2), (21, 3), (5, 1), (40, 4)] {
                let bb = kind.block_bytes();
                let w: Vec<u8> = (0..n * nb * bb).map(|i| (i * 37 + 11) as u8).collect();
                let mut out = vec![0u8; nb * NR * bb];
                for pi in 0..n.div_ceil(NR) {
                    pack_panel(kind, &w, nb, n, pi, &mut out);
                    for f in 0..NR {
                        let j = pi * NR + f;
                        for b in 0..nb {
                            let (so, qo) = kind.offsets(nb, b);
                            let d = [out[so + 2 * f], out[so + 2 * f + 1]];
                            for e in 0..QK {
                                let got = kind.panel_value(&out[qo..], f, e);
                                if j < n {
                                    let blk = &w[(j * nb + b) * bb..(j * nb + b + 1) * bb];
                                    assert_eq!(d, [blk[0], blk[1]]);
                                    assert_eq!(
                                        got,
                                        kind.raw_value(blk, e),
                                        "{kind:?} j {j} b {b} e {e}"
                                    );
                                } else {
                                    assert_eq!(d, [0, 0]);
                                    assert_eq!(got, kind.bias());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
