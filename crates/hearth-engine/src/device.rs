//! Choosing where tensors live.

use crate::error::{EngineError, Result};
use candle_core::Device;

/// Parses `cpu` or `cuda:N` (also `cuda` for `cuda:0`). CUDA needs the `cuda` feature.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| EngineError::Device(spec.to_string()))?,
        None => return Err(EngineError::Device(spec.to_string())),
    };
    Device::new_cuda(ordinal).map_err(|e| EngineError::Unsupported {
        what: "device",
        detail: format!(
            "{spec}: {e} (build with `--features cuda` on a machine with an NVIDIA GPU)"
        ),
    })
}

/// Which machines compute the same bits as this one from the same weights and inputs: a hash of
/// the device, the target architecture, the SIMD features compiled in (candle picks code paths at
/// compile time, and hearth builds with `target-cpu=native`) and those detected at run time (the
/// `gemm` crate behind candle's f32 matmuls picks its kernels then). hearth's own kernels give the
/// same bits on every path, candle's do not, so spot checks compare a node only with verifiers of
/// its class. Conservative: two classes may in fact agree.
pub fn build_class(device: &Device) -> u64 {
    /// SIMD features some code path branches on at compile time.
    const COMPILED: &[(&str, bool)] = &[
        ("sse3", cfg!(target_feature = "sse3")),
        ("ssse3", cfg!(target_feature = "ssse3")),
        ("sse4.1", cfg!(target_feature = "sse4.1")),
        ("avx", cfg!(target_feature = "avx")),
        ("avx2", cfg!(target_feature = "avx2")),
        ("fma", cfg!(target_feature = "fma")),
        ("f16c", cfg!(target_feature = "f16c")),
        ("avx512f", cfg!(target_feature = "avx512f")),
        ("avx512bw", cfg!(target_feature = "avx512bw")),
        ("avx512vl", cfg!(target_feature = "avx512vl")),
        ("avx512vnni", cfg!(target_feature = "avx512vnni")),
        ("neon", cfg!(target_feature = "neon")),
        ("fp16", cfg!(target_feature = "fp16")),
        ("simd128", cfg!(target_feature = "simd128")),
    ];
    let mut h = hearth_core::ContentHasher::new("build-class");
    h.field(std::env::consts::ARCH.as_bytes())
        .field(if device.is_cpu() { b"cpu" } else { b"cuda" });
    for (name, on) in COMPILED {
        h.field(name.as_bytes()).field(&[u8::from(*on)]);
    }
    #[cfg(target_arch = "x86_64")]
    for (name, on) in [
        ("run:avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("run:fma", std::arch::is_x86_feature_detected!("fma")),
        (
            "run:avx512f",
            std::arch::is_x86_feature_detected!("avx512f"),
        ),
    ] {
        h.field(name.as_bytes()).field(&[u8::from(on)]);
    }
    let digest = h.finish().0;
    u64::from_le_bytes(digest[..8].try_into().expect("a digest has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_class_is_stable() {
        let cpu = build_class(&Device::Cpu);
        assert_eq!(cpu, build_class(&Device::Cpu));
        assert_ne!(cpu, 0);
    }

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cuda-1", ""] {
            assert!(
                matches!(parse_device(bad), Err(EngineError::Device(_))),
                "{bad}"
            );
        }
    }
}
