//! Kernels against scalar references, and SIMD against the portable path.

use half::{bf16, f16};
use hearth_core::SplitMix64;

use super::fp16;
use super::quant::{self, QK};
use super::*;

/// Deterministic test data (hearth's SplitMix64).
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.f32()).collect()
    }
}

/// Random ggml blocks: scales in ±[0.001, 0.05], random values.
fn random_blocks(rng: &mut Rng, n: usize, k: usize, block_bytes: usize) -> Vec<u8> {
    let mut w = vec![0u8; n * k / QK * block_bytes];
    for blk in w.chunks_exact_mut(block_bytes) {
        let d = f16::from_f32(rng.f32().signum() * (0.001 + 0.049 * rng.f32().abs()));
        blk[..2].copy_from_slice(&d.to_bits().to_le_bytes());
        for b in &mut blk[2..] {
            *b = rng.next_u64() as u8;
        }
    }
    w
}

/// Σ|x||w| for every output: the scale the rounding errors are relative to.
fn magnitudes(x: &[f32], m: usize, k: usize, wf: &[f32], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|p| f64::from(x[i * k + p].abs()) * f64::from(wf[j * k + p].abs()))
                .sum();
        }
    }
    out
}

fn assert_close(what: &str, got: &[f32], want: &[f32], bound: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len());
    for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - f64::from(w)).abs();
        assert!(
            err <= bound(idx),
            "{what}: element {idx}: got {g}, want {w}, err {err} > {}",
            bound(idx)
        );
    }
}

/// The ISAs to compare: the portable path, and the detected one when it differs.
fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if Isa::detect() != Isa::Scalar {
        v.push(Isa::detect());
    }
    v
}

const F16_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 32, 1),
    (1, 2048, 67),
    (1, 4096, 33),
    (2, 4096, 9),
    (3, 100, 70),
    (4, 7, 3),
    (5, 33, 31),
    (13, 257, 65),
    (64, 4096, 40),
    (25, 520, 97),
];

#[test]
fn f16_matches_f64_reference() {
    let mut rng = Rng::new(1);
    for &(m, k, n) in F16_SHAPES {
        let x = rng.vec(m * k);
        let w: Vec<f16> = rng.vec(n * k).into_iter().map(f16::from_f32).collect();
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let mag = magnitudes(&x, m, k, &wf, n);
        let mut want = vec![0.0; m * n];
        matmul_f16_reference(&x, m, k, &w, n, &mut want).unwrap();
        let packed = PackedF16::pack(&w, n, k).unwrap();
        for isa in isas() {
            let mut got = vec![f32::NAN; m * n];
            fp16::matmul_raw(isa, &x, m, k, &w, n, &mut got);
            assert_close(&format!("f16 {isa:?} {m}x{k}x{n}"), &got, &want, |i| {
                1e-5 * mag[i] + 1e-30
            });
            let mut got = vec![f32::NAN; m * n];
            packed.matmul_isa(isa, &x, m, &mut got).unwrap();
            assert_close(
                &format!("packed f16 {isa:?} {m}x{k}x{n}"),
                &got,
                &want,
                |i| 1e-5 * mag[i] + 1e-30,
            );
        }
    }
}

#[test]
fn f16_simd_agrees_with_scalar() {
    let mut rng = Rng::new(2);
    for &(m, k, n) in F16_SHAPES {
        let x = rng.vec(m * k);
        let w: Vec<f16> = rng.vec(n * k).into_iter().map(f16::from_f32).collect();
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let mag = magnitudes(&x, m, k, &wf, n);
        let mut scalar = vec![0.0; m * n];
        fp16::matmul_raw(Isa::Scalar, &x, m, k, &w, n, &mut scalar);
        let mut simd = vec![0.0; m * n];
        matmul_f16(&x, m, k, &w, n, &mut simd).unwrap();
        assert_close("f16 simd vs scalar", &simd, &scalar, |i| {
            2e-6 * mag[i] + 1e-30
        });
    }
}

#[test]
fn f16_edge_dimensions() {
    let w = vec![f16::ONE; 6];
    let mut y = vec![1.0; 0];
    matmul_f16(&[], 0, 2, &w, 3, &mut y).unwrap();
    let mut y = vec![7.0; 2 * 3];
    matmul_f16(&[], 2, 0, &[], 3, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    let packed = PackedF16::pack(&[], 3, 0).unwrap();
    let mut y = vec![7.0; 3];
    packed.matmul(&[], 1, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
}

#[test]
fn f16_rejects_bad_lengths() {
    let w = vec![f16::ZERO; 6];
    let mut y = vec![0.0; 3];
    let err = matmul_f16(&[0.0; 3], 1, 2, &w, 3, &mut y).unwrap_err();
    assert_eq!(
        err,
        KernelError::Length {
            what: "x",
            expected: 2,
            actual: 3
        }
    );
    let err = matmul_f16(&[0.0; 2], 1, 2, &w[..5], 3, &mut y).unwrap_err();
    assert!(matches!(err, KernelError::Length { what: "w", .. }));
    let err = matmul_f16(&[0.0; 2], 1, 2, &w, 3, &mut y[..2]).unwrap_err();
    assert!(matches!(err, KernelError::Length { what: "y", .. }));
    assert_eq!(
        matmul_f16(&[], usize::MAX, 2, &w, 3, &mut y).unwrap_err(),
        KernelError::Overflow
    );
    assert!(PackedF16::pack(&w, 4, 2).is_err());
    let packed = PackedF16::pack(&w, 3, 2).unwrap();
    assert!(packed.matmul(&[0.0; 3], 1, &mut y).is_err());
    assert!(packed.matmul(&[0.0; 2], 1, &mut y[..1]).is_err());
}

/// Random bf16 weights spanning a wide exponent range (bf16 keeps f32's):
/// uniform in [-1, 1) times 2^e, e in [-40, 40].
fn random_bf16(rng: &mut Rng, len: usize) -> Vec<bf16> {
    (0..len)
        .map(|_| {
            let e = (rng.next_u64() % 81) as i32 - 40;
            bf16::from_f32(rng.f32() * 2f32.powi(e))
        })
        .collect()
}

/// Every combination of m in {1, 3, 13, 64}, k in {32, 96, 2048} and
/// n in {1, 31, 33, 100}, plus odd `k` for the row-major tails.
fn bf16_shapes() -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for m in [1, 3, 13, 64] {
        for k in [32, 96, 2048] {
            for n in [1, 31, 33, 100] {
                v.push((m, k, n));
            }
        }
    }
    v.extend([
        (1, 7, 3),
        (2, 4097, 9),
        (4, 33, 5),
        (5, 300, 70),
        (25, 520, 97),
    ]);
    v
}

#[test]
fn bf16_widening_is_exact() {
    let mut rng = Rng::new(5);
    let w = random_bf16(&mut rng, 1000);
    for v in &w {
        assert_eq!(f32::from_bits(u32::from(v.to_bits()) << 16), v.to_f32());
    }
}

#[test]
fn bf16_matches_f64_reference() {
    let mut rng = Rng::new(3);
    for (m, k, n) in bf16_shapes() {
        let x = rng.vec(m * k);
        let w = random_bf16(&mut rng, n * k);
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let mag = magnitudes(&x, m, k, &wf, n);
        let mut want = vec![0.0; m * n];
        matmul_bf16_reference(&x, m, k, &w, n, &mut want).unwrap();
        let packed = PackedBF16::pack(&w, n, k).unwrap();
        assert_eq!((packed.n(), packed.k()), (n, k));
        for isa in isas() {
            let mut got = vec![f32::NAN; m * n];
            fp16::matmul_raw(isa, &x, m, k, &w, n, &mut got);
            assert_close(&format!("bf16 {isa:?} {m}x{k}x{n}"), &got, &want, |i| {
                1e-5 * mag[i] + 1e-30
            });
            let mut got = vec![f32::NAN; m * n];
            packed.matmul_isa(isa, &x, m, &mut got).unwrap();
            assert_close(
                &format!("packed bf16 {isa:?} {m}x{k}x{n}"),
                &got,
                &want,
                |i| 1e-5 * mag[i] + 1e-30,
            );
        }
    }
}

#[test]
fn bf16_simd_agrees_with_scalar() {
    let mut rng = Rng::new(4);
    for (m, k, n) in bf16_shapes() {
        let x = rng.vec(m * k);
        let w = random_bf16(&mut rng, n * k);
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let mag = magnitudes(&x, m, k, &wf, n);
        let packed = PackedBF16::pack(&w, n, k).unwrap();
        let mut scalar = vec![0.0; m * n];
        packed.matmul_isa(Isa::Scalar, &x, m, &mut scalar).unwrap();
        let mut simd = vec![0.0; m * n];
        packed.matmul(&x, m, &mut simd).unwrap();
        assert_close("packed bf16 simd vs scalar", &simd, &scalar, |i| {
            2e-6 * mag[i] + 1e-30
        });
        let mut scalar = vec![0.0; m * n];
        fp16::matmul_raw(Isa::Scalar, &x, m, k, &w, n, &mut scalar);
        let mut simd = vec![0.0; m * n];
        matmul_bf16(&x, m, k, &w, n, &mut simd).unwrap();
        assert_close("bf16 simd vs scalar", &simd, &scalar, |i| {
            2e-6 * mag[i] + 1e-30
        });
    }
}

/// Packed half-precision weights (what models use) give the same bits on every instruction-set
/// level: one fused multiply-add chain per output, in depth order, on both paths.
#[test]
fn packed_half_paths_agree_bitwise() {
    let mut rng = Rng::new(7);
    for &(m, k, n) in F16_SHAPES {
        let x = rng.vec(m * k);
        let w16: Vec<f16> = rng.vec(n * k).into_iter().map(f16::from_f32).collect();
        let wb = random_bf16(&mut rng, n * k);
        let p16 = PackedF16::pack(&w16, n, k).unwrap();
        let pb = PackedBF16::pack(&wb, n, k).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let run = |f: &dyn Fn(Isa, &mut [f32])| {
            isas()
                .into_iter()
                .map(|isa| {
                    let mut y = vec![f32::NAN; m * n];
                    f(isa, &mut y);
                    bits(&y)
                })
                .collect::<Vec<_>>()
        };
        for (name, results) in [
            ("f16", run(&|isa, y| p16.matmul_isa(isa, &x, m, y).unwrap())),
            ("bf16", run(&|isa, y| pb.matmul_isa(isa, &x, m, y).unwrap())),
        ] {
            assert!(
                results.windows(2).all(|w| w[0] == w[1]),
                "packed {name} {m}x{k}x{n}: the paths differ"
            );
        }
    }
}

#[test]
fn bf16_exact_on_exact_products() {
    // Small integers: every product and partial sum is exact in f32, so every
    // path must give the exact answer whatever its summation order.
    let mut rng = Rng::new(6);
    let (m, k, n) = (13, 96, 33);
    let x: Vec<f32> = (0..m * k)
        .map(|_| (rng.next_u64() % 9) as f32 - 4.0)
        .collect();
    let w: Vec<bf16> = (0..n * k)
        .map(|_| bf16::from_f32((rng.next_u64() % 9) as f32 - 4.0))
        .collect();
    let mut want = vec![0.0; m * n];
    matmul_bf16_reference(&x, m, k, &w, n, &mut want).unwrap();
    let packed = PackedBF16::pack(&w, n, k).unwrap();
    for isa in isas() {
        let mut got = vec![f32::NAN; m * n];
        packed.matmul_isa(isa, &x, m, &mut got).unwrap();
        assert_eq!(got, want, "packed bf16 {isa:?}");
        let mut got = vec![f32::NAN; m * n];
        fp16::matmul_raw(isa, &x, m, k, &w, n, &mut got);
        assert_eq!(got, want, "bf16 {isa:?}");
    }
}

#[test]
fn bf16_edge_dimensions() {
    let w = vec![bf16::ONE; 6];
    let mut y = vec![1.0; 0];
    matmul_bf16(&[], 0, 2, &w, 3, &mut y).unwrap();
    let mut y = vec![7.0; 2 * 3];
    matmul_bf16(&[], 2, 0, &[], 3, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    for isa in isas() {
        let packed = PackedBF16::pack(&[], 3, 0).unwrap();
        let mut y = vec![7.0; 3];
        packed.matmul_isa(isa, &[], 1, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0));
        let packed = PackedBF16::pack(&[], 0, 5).unwrap();
        assert_eq!(packed.size_bytes(), 0);
        packed.matmul_isa(isa, &[0.0; 10], 2, &mut []).unwrap();
    }
}

#[test]
fn bf16_rejects_bad_lengths() {
    let w = vec![bf16::ZERO; 6];
    let mut y = vec![0.0; 3];
    let err = matmul_bf16(&[0.0; 3], 1, 2, &w, 3, &mut y).unwrap_err();
    assert_eq!(
        err,
        KernelError::Length {
            what: "x",
            expected: 2,
            actual: 3
        }
    );
    let err = matmul_bf16(&[0.0; 2], 1, 2, &w[..5], 3, &mut y).unwrap_err();
    assert!(matches!(err, KernelError::Length { what: "w", .. }));
    let err = matmul_bf16(&[0.0; 2], 1, 2, &w, 3, &mut y[..2]).unwrap_err();
    assert!(matches!(err, KernelError::Length { what: "y", .. }));
    assert_eq!(
        matmul_bf16(&[], usize::MAX, 2, &w, 3, &mut y).unwrap_err(),
        KernelError::Overflow
    );
    assert!(matches!(
        PackedBF16::pack(&w, 4, 2).unwrap_err(),
        KernelError::Length { what: "w", .. }
    ));
    assert!(PackedBF16::pack(&w[..5], 3, 2).is_err());
    assert_eq!(
        PackedBF16::pack(&w, usize::MAX, 2).unwrap_err(),
        KernelError::Overflow
    );
    let packed = PackedBF16::pack(&w, 3, 2).unwrap();
    for isa in isas() {
        assert!(matches!(
            packed.matmul_isa(isa, &[0.0; 3], 1, &mut y).unwrap_err(),
            KernelError::Length { what: "x", .. }
        ));
        assert!(matches!(
            packed
                .matmul_isa(isa, &[0.0; 2], 1, &mut y[..1])
                .unwrap_err(),
            KernelError::Length { what: "y", .. }
        ));
        assert_eq!(
            packed.matmul_isa(isa, &[], usize::MAX, &mut y).unwrap_err(),
            KernelError::Overflow
        );
    }
}

const Q_SHAPES: &[(usize, usize, usize)] = &[
    (1, 32, 1),
    (1, 2048, 67),
    (1, 4096, 33),
    (2, 64, 16),
    (3, 64, 70),
    (9, 4096, 17),
    (13, 256, 65),
    (64, 4096, 40),
    (20, 96, 31),
];

/// Dequantized weights as f32.
fn dequantize(q8: bool, w: &[u8], n: usize, k: usize) -> Vec<f32> {
    // An identity activation row per value would be slow; dequantize via the
    // reference with one-hot rows instead of duplicating the decoding here.
    let mut out = vec![0.0; n * k];
    let mut y = vec![0.0; n];
    for p in 0..k {
        let mut x = vec![0.0; k];
        x[p] = 1.0;
        if q8 {
            matmul_q8_0_reference(&x, 1, k, w, n, &mut y).unwrap();
        } else {
            matmul_q4_0_reference(&x, 1, k, w, n, &mut y).unwrap();
        }
        for j in 0..n {
            out[j * k + p] = y[j];
        }
    }
    out
}

/// The exact bound of the activation quantization: per block, each value moves
/// by at most `d_x / 2` with `d_x = max|x_block| / 127`.
fn quantization_bound(x: &[f32], m: usize, k: usize, wf: &[f32], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k / QK)
                .map(|b| {
                    let xb = &x[i * k + b * QK..][..QK];
                    let dx = f64::from(xb.iter().fold(0.0f32, |a, v| a.max(v.abs()))) / 127.0;
                    let wsum: f64 = wf[j * k + b * QK..][..QK]
                        .iter()
                        .map(|v| f64::from(v.abs()))
                        .sum();
                    dx / 2.0 * wsum
                })
                .sum();
        }
    }
    out
}

fn quant_case(q8: bool, seed: u64, integer_x: bool) {
    let mut rng = Rng::new(seed);
    let bb = if q8 {
        Q8_0_BLOCK_BYTES
    } else {
        Q4_0_BLOCK_BYTES
    };
    for &(m, k, n) in Q_SHAPES {
        let x: Vec<f32> = if integer_x {
            // Integers with 127 in every block: quantization is exact.
            (0..m * k)
                .map(|p| {
                    if p % QK == 5 {
                        127.0
                    } else {
                        (rng.f32() * 127.0).round()
                    }
                })
                .collect()
        } else {
            rng.vec(m * k)
        };
        let w = random_blocks(&mut rng, n, k, bb);
        let wf = dequantize(q8, &w, n, k);
        let mag = magnitudes(&x, m, k, &wf, n);
        let qbound = quantization_bound(&x, m, k, &wf, n);
        let mut want = vec![0.0; m * n];
        if q8 {
            matmul_q8_0_reference(&x, m, k, &w, n, &mut want).unwrap();
        } else {
            matmul_q4_0_reference(&x, m, k, &w, n, &mut want).unwrap();
        }
        let packed_q4 = PackedQ4_0::pack(&w, n, k);
        let packed_q8 = PackedQ8_0::pack(&w, n, k);
        let mut first: Option<Vec<f32>> = None;
        for isa in isas() {
            let name = format!("{} {isa:?} {m}x{k}x{n}", if q8 { "q8_0" } else { "q4_0" });
            let mut got = vec![f32::NAN; m * n];
            quant::matmul_raw_isa(isa, q8, &x, m, k, &w, n, &mut got).unwrap();
            if integer_x {
                assert_close(&name, &got, &want, |i| 1e-5 * mag[i] + 1e-30);
            } else {
                assert_close(&name, &got, &want, |i| qbound[i] + 1e-5 * mag[i] + 1e-30);
                // The bound llama.cpp's tests are stated in: far looser.
                let xmax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let wmax = wf.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let loose = 0.01 * (k as f64).sqrt() * f64::from(xmax) * f64::from(wmax);
                assert_close(&name, &got, &want, |_| loose);
            }
            // Packed weights run the same integer sums in the same order.
            let mut packed = vec![f32::NAN; m * n];
            if q8 {
                packed_q8
                    .as_ref()
                    .unwrap()
                    .matmul_isa(isa, &x, m, &mut packed)
                    .unwrap();
            } else {
                packed_q4
                    .as_ref()
                    .unwrap()
                    .matmul_isa(isa, &x, m, &mut packed)
                    .unwrap();
            }
            assert_eq!(packed, got, "{name}: packed vs raw");
            match &first {
                None => first = Some(got),
                // SIMD vs scalar: the same integers, scaled and accumulated with the same fused
                // multiply-adds in the same order — the same bits.
                Some(s) => assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{name} vs scalar"
                ),
            }
        }
    }
}

#[test]
fn q4_0_within_activation_quantization_bound() {
    quant_case(false, 3, false);
}

#[test]
fn q4_0_exact_when_activations_are_exact_int8() {
    quant_case(false, 4, true);
}

#[test]
fn q8_0_within_activation_quantization_bound() {
    quant_case(true, 5, false);
}

#[test]
fn q8_0_exact_when_activations_are_exact_int8() {
    quant_case(true, 6, true);
}

#[test]
fn q4_0_zero_activations_and_scales() {
    let (m, k, n) = (3, 64, 5);
    let mut rng = Rng::new(7);
    let w = random_blocks(&mut rng, n, k, Q4_0_BLOCK_BYTES);
    let x = vec![0.0; m * k];
    let mut y = vec![f32::NAN; m * n];
    matmul_q4_0(&x, m, k, &w, n, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    let mut y = vec![7.0; m * 2];
    matmul_q4_0(&[], m, 0, &[], 2, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
}

#[test]
fn quant_rejects_bad_arguments() {
    let w = vec![0u8; 2 * Q4_0_BLOCK_BYTES];
    let mut y = vec![0.0; 2];
    assert_eq!(
        matmul_q4_0(&[0.0; 33], 1, 33, &w, 2, &mut y).unwrap_err(),
        KernelError::KNotBlockMultiple { k: 33 }
    );
    assert!(matches!(
        matmul_q4_0(&[0.0; 32], 1, 32, &w[..35], 2, &mut y).unwrap_err(),
        KernelError::Length { what: "w", .. }
    ));
    assert!(matches!(
        matmul_q4_0(&[0.0; 31], 1, 32, &w, 2, &mut y).unwrap_err(),
        KernelError::Length { what: "x", .. }
    ));
    assert!(matches!(
        matmul_q8_0(&[0.0; 32], 1, 32, &w, 2, &mut y).unwrap_err(),
        KernelError::Length { what: "w", .. }
    ));
    assert!(PackedQ4_0::pack(&w, 2, 33).is_err());
    assert!(PackedQ8_0::pack(&w, 2, 32).is_err());
    let p = PackedQ4_0::pack(&w, 2, 32).unwrap();
    assert_eq!((p.n(), p.k()), (2, 32));
    assert!(p.matmul(&[0.0; 32], 1, &mut y[..1]).is_err());
    assert_eq!(
        matmul_q4_0_reference(&[0.0; 33], 1, 33, &w, 2, &mut y).unwrap_err(),
        KernelError::KNotBlockMultiple { k: 33 }
    );
}

#[test]
fn packed_sizes_match_the_file_format() {
    let (n, k) = (64, 256);
    let q4 = vec![0u8; n * k / QK * Q4_0_BLOCK_BYTES];
    assert_eq!(PackedQ4_0::pack(&q4, n, k).unwrap().size_bytes(), q4.len());
    let q8 = vec![0u8; n * k / QK * Q8_0_BLOCK_BYTES];
    assert_eq!(PackedQ8_0::pack(&q8, n, k).unwrap().size_bytes(), q8.len());
    let h = vec![f16::ZERO; n * k];
    assert_eq!(PackedF16::pack(&h, n, k).unwrap().size_bytes(), h.len() * 2);
    let b = vec![bf16::ZERO; n * k];
    assert_eq!(
        PackedBF16::pack(&b, n, k).unwrap().size_bytes(),
        b.len() * 2
    );
    // The last panel is padded to 32 features.
    let b = vec![bf16::ZERO; 33 * 96];
    assert_eq!(
        PackedBF16::pack(&b, 33, 96).unwrap().size_bytes(),
        64 * 96 * 2
    );
}

/// A row's result from the quantized kernels is bitwise the same whatever other rows share the
/// call (how many, and where the row falls in the `MR`-row tiles): activations are quantized per
/// row and each row's integer block sums are scaled and accumulated in the same order. This is
/// what lets a node batch many sessions' steps without changing any session's output.
#[test]
fn quant_rows_do_not_depend_on_the_batch() {
    let mut rng = Rng::new(77);
    let (k, n) = (256, 37);
    for q8 in [false, true] {
        let bb = if q8 {
            Q8_0_BLOCK_BYTES
        } else {
            Q4_0_BLOCK_BYTES
        };
        let w = random_blocks(&mut rng, n, k, bb);
        let (p4, p8) = if q8 {
            (None, Some(PackedQ8_0::pack(&w, n, k).unwrap()))
        } else {
            (Some(PackedQ4_0::pack(&w, n, k).unwrap()), None)
        };
        for isa in isas() {
            let run = |x: &[f32], m: usize| {
                let mut y = vec![f32::NAN; m * n];
                match (&p4, &p8) {
                    (Some(p), _) => p.matmul_isa(isa, x, m, &mut y).unwrap(),
                    (_, Some(p)) => p.matmul_isa(isa, x, m, &mut y).unwrap(),
                    _ => unreachable!(),
                }
                y
            };
            for m in [2, 5, 8, 9, 17, 33] {
                let x = rng.vec(m * k);
                let all = run(&x, m);
                for i in 0..m {
                    let alone = run(&x[i * k..(i + 1) * k], 1);
                    assert!(
                        alone
                            .iter()
                            .zip(&all[i * n..(i + 1) * n])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "q8 {q8} {isa:?}: row {i} of {m} differs from the row alone"
                    );
                }
            }
        }
    }
}

/// F16 and BF16 rows are bitwise the same in any batch (alone, in tiles of any height, across
/// depth blocks) and on any number of threads, on every ISA: one multiply-add chain per output in
/// order of depth.
#[test]
fn half_rows_do_not_depend_on_the_batch_or_threads() {
    let mut rng = Rng::new(78);
    // k > KC exercises the depth blocks of the tiled path; n not a multiple of the panel width.
    let (k, n) = (600, 45);
    let w16: Vec<f16> = (0..n * k).map(|_| f16::from_f32(rng.f32())).collect();
    let wb16 = random_bf16(&mut rng, n * k);
    let p16 = PackedF16::pack(&w16, n, k).unwrap();
    let pb16 = PackedBF16::pack(&wb16, n, k).unwrap();
    for isa in isas() {
        for bf in [false, true] {
            let run = |x: &[f32], m: usize| {
                let mut y = vec![f32::NAN; m * n];
                match bf {
                    false => p16.matmul_isa(isa, x, m, &mut y).unwrap(),
                    true => pb16.matmul_isa(isa, x, m, &mut y).unwrap(),
                }
                y
            };
            for m in [2, 3, 5, 12, 13, 25] {
                let x = rng.vec(m * k);
                let all = run(&x, m);
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for i in 0..m {
                        let alone = pool.install(|| run(&x[i * k..(i + 1) * k], 1));
                        assert!(
                            alone
                                .iter()
                                .zip(&all[i * n..(i + 1) * n])
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "bf16 {bf} {isa:?} {threads} threads: row {i} of {m} differs alone"
                        );
                    }
                }
            }
        }
    }
}
