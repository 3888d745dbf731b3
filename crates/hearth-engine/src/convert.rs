//! Re-encoding a GGUF model in another weight type (`hearth model convert`): requantizing, or
//! widening a quantized file to F16/F32 so that the same weights run on other kernels.
//!
//! Invariants of the output file:
//! * It holds every metadata key of the input with its value unchanged (tokenizer, chat
//!   template, architecture keys), except `general.file_type`, which states the new type (and is
//!   added if the input lacked it), and `general.alignment`, which states the writer's layout.
//!   Keys are written sorted by name: candle's reader does not keep their order in the input.
//! * It holds the same tensors, with the same names and shapes, in the input's order (the order
//!   of their data, which is the order of the tensor table in every file llama.cpp writes).
//! * Matrices (every tensor of two or more dimensions, the token embedding included) are
//!   dequantized to f32 by candle and re-encoded in the requested type, or in the type
//!   [`synth`](crate::synth)'s writer falls back to (Q8_0, then F16) when their rows do not divide
//!   into its blocks; each such tensor is listed in [`Converted::fallbacks`]. Vectors (norms,
//!   biases) are stored F32, which every type widens to exactly.
//! * The output path is either untouched or holds the complete file: the file is written beside
//!   it under a temporary name and renamed into place only when whole.

use crate::error::{EngineError, Result};
use crate::synth::{encode_ggml, file_type, gguf_dtype_for};
use crate::weights::WeightIndex;
use crate::writer::{write_gguf, TensorSpec, GGUF_ALIGNMENT};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Seek, Write};
use std::path::Path;

/// The metadata key that names a GGUF file's predominant weight type (llama.cpp's `llama_ftype`).
const FILE_TYPE_KEY: &str = "general.file_type";
/// The metadata key that sets a GGUF file's data alignment.
const ALIGNMENT_KEY: &str = "general.alignment";

/// What [`convert_gguf`] converts to.
#[derive(Clone, Copy, Debug)]
pub struct ConvertOptions {
    /// The weight type of the output's matrices; [`crate::synth::parse_quant`] reads llama.cpp's
    /// names for it (`q8_0`, `q4_0`, `q4_k`, `f16`, `bf16`, `f32`, ...).
    pub quant: GgmlDType,
}

/// A matrix stored in another type than the one asked for, because its rows do not divide into
/// that type's blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// The tensor's name.
    pub name: String,
    /// Values per row (the innermost dimension).
    pub row_len: usize,
    /// The type it was stored in instead.
    pub dtype: GgmlDType,
}

/// What [`convert_gguf`] wrote.
#[derive(Clone, Debug)]
pub struct Converted {
    /// Tensors written (all of the input's).
    pub tensors: usize,
    /// The matrices not stored in the requested type, in file order.
    pub fallbacks: Vec<Fallback>,
    /// Size of the output file in bytes.
    pub bytes: u64,
}

/// Writes the GGUF model `input` to `output` with its matrices re-encoded in `opts.quant` (see
/// the module docs for what is kept). Fails, leaving `output` untouched, if `input` is missing,
/// truncated or not GGUF, if `output` is `input`, or if `opts.quant` is not a weight type.
pub fn convert_gguf(input: &Path, output: &Path, opts: &ConvertOptions) -> Result<Converted> {
    let quant = opts.quant;
    if matches!(quant, GgmlDType::Q8_1 | GgmlDType::Q8K) {
        return Err(EngineError::Unsupported {
            what: "quantization",
            detail: format!("{quant:?} is an activation format, not a weight type"),
        });
    }
    // Checks the header and that every tensor lies inside the file (naming any that does not).
    let WeightIndex::Gguf { content, .. } = WeightIndex::open_gguf(input)? else {
        unreachable!("open_gguf returns a GGUF index")
    };
    refuse_same_file(input, output)?;

    let mut order: Vec<_> = content.tensor_infos.iter().collect();
    order.sort_by_key(|(name, info)| (info.offset, name.as_str()));
    let specs: Vec<TensorSpec> = order
        .iter()
        .map(|(name, info)| TensorSpec {
            name: name.to_string(),
            dims: info.shape.dims().to_vec(),
            dtype: gguf_dtype_for(info.shape.dims(), quant),
        })
        .collect();
    let fallbacks = specs
        .iter()
        .filter(|s| s.dims.len() >= 2 && s.dtype != quant)
        .map(|s| Fallback {
            name: s.name.clone(),
            row_len: s.dims.last().copied().unwrap_or(0),
            dtype: s.dtype,
        })
        .collect();

    let input_error = |name: &str, e: candle_core::Error| EngineError::Format {
        path: input.to_path_buf(),
        format: "GGUF",
        detail: format!("tensor `{name}`: {e}"),
    };
    let mut reader = BufReader::new(File::open(input).map_err(|e| EngineError::io(input, e))?);
    // The writer's callback can only return io errors; a failure to read the input is kept here
    // so that it is reported against the input, not the output.
    let mut read_failure = None;
    let mut tmp = temp_file_beside(output)?;
    let written = {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write_gguf(&mut w, &converted_metadata(&content, quant), &specs, |i| {
            let (name, info) = order[i];
            let values = info
                .read(&mut reader, content.tensor_data_offset, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| {
                    read_failure = Some(input_error(name, e));
                    io::Error::other("reading the input failed")
                })?;
            encode_ggml(values, &specs[i].dims, specs[i].dtype)
        })
        .and_then(|()| w.flush())
        .and_then(|()| w.stream_position())
    };
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => return Err(read_failure.unwrap_or_else(|| EngineError::io(tmp.path(), e))),
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| EngineError::io(tmp.path(), e))?;
    tmp.persist(output)
        .map_err(|e| EngineError::io(output, e.error))?;
    Ok(Converted {
        tensors: specs.len(),
        fallbacks,
        bytes,
    })
}

/// The input's metadata with `general.file_type` set to `quant`'s and the alignment the writer
/// uses, sorted by key.
fn converted_metadata(content: &Content, quant: GgmlDType) -> Vec<(String, Value)> {
    let mut md: Vec<(String, Value)> = content
        .metadata
        .iter()
        .filter(|(key, _)| key.as_str() != FILE_TYPE_KEY)
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    md.push((FILE_TYPE_KEY.into(), Value::U32(file_type(quant))));
    for (key, value) in &mut md {
        let ours = matches!(value, Value::U32(a) if *a as usize == GGUF_ALIGNMENT);
        if key == ALIGNMENT_KEY && !ours {
            *value = Value::U32(GGUF_ALIGNMENT as u32);
        }
    }
    md.sort_by(|a, b| a.0.cmp(&b.0));
    md
}

/// Refuses an output that is the input itself (the same path, or a link to it): the rename would
/// replace the model being converted, which is never what was meant.
fn refuse_same_file(input: &Path, output: &Path) -> Result<()> {
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(EngineError::io(
            output,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "is the input file; write the converted model to another path",
            ),
        ));
    }
    Ok(())
}

/// A hidden temporary file in `output`'s folder, so that renaming it onto `output` is atomic.
fn temp_file_beside(output: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".hearth-convert-").suffix(".gguf.part");
    // Readable like any file this user creates (the umask applies), not private like a
    // temporary file.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder
        .tempfile_in(dir)
        .map_err(|e| EngineError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;

    #[test]
    fn metadata_states_the_new_type_and_the_writers_alignment_and_keeps_the_rest() {
        let content = Content {
            magic: VersionedMagic::GgufV3,
            metadata: [
                ("llama.block_count", Value::U32(30)),
                (FILE_TYPE_KEY, Value::U32(3)),
                (ALIGNMENT_KEY, Value::U32(64)),
                ("general.name", Value::String("m".into())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        };
        let md: Vec<(String, String)> = converted_metadata(&content, GgmlDType::Q8_0)
            .into_iter()
            .map(|(k, v)| (k, format!("{v:?}")))
            .collect();
        let expected = [
            (ALIGNMENT_KEY, "U32(32)"),
            (FILE_TYPE_KEY, "U32(7)"),
            ("general.name", "String(\"m\")"),
            ("llama.block_count", "U32(30)"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(md, expected);

        // A file without the key gets one.
        let mut bare = content;
        bare.metadata.remove(FILE_TYPE_KEY);
        let md = converted_metadata(&bare, GgmlDType::F16);
        assert!(md
            .iter()
            .any(|(k, v)| k == FILE_TYPE_KEY && matches!(v, Value::U32(1))));
    }
}
