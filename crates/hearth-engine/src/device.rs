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

#[cfg(test)]
mod tests {
    use super::*;

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
