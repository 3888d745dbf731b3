//! Streaming writers for safetensors and GGUF.
//!
//! Written here rather than taken from `safetensors::serialize` or candle's `gguf_file::write`
//! because both need every tensor in memory at once; a synthesized 8B model does not fit. These
//! write the header from shapes alone, then stream each tensor's bytes as it is produced.

use candle_core::quantized::{gguf_file::Value, GgmlDType};
use std::io::{self, Write};

/// Bytes one tensor of `elems` values takes in `dtype`.
pub(crate) fn ggml_bytes(dtype: GgmlDType, elems: usize) -> usize {
    elems / dtype.block_size() * dtype.type_size()
}

/// The on-disk type code of a ggml dtype (GGUF spec, `ggml_type`).
pub(crate) fn ggml_type_code(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// A tensor to be written: name, row-major shape, stored type.
pub(crate) struct TensorSpec {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorSpec {
    pub(crate) fn bytes(&self) -> usize {
        ggml_bytes(self.dtype, self.dims.iter().product())
    }
}

/// The data alignment of every GGUF file written here (GGUF's default, so no
/// `general.alignment` key is needed).
pub(crate) const GGUF_ALIGNMENT: usize = 32;

fn pad_to(n: usize, align: usize) -> usize {
    n.div_ceil(align) * align
}

/// Writes a GGUF v3 file: header and tensor table first, then `data(i)` for each tensor in order.
pub(crate) fn write_gguf<W: Write>(
    w: &mut W,
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    mut data: impl FnMut(usize) -> io::Result<Vec<u8>>,
) -> io::Result<()> {
    let mut header = Vec::new();
    header.extend_from_slice(&0x4655_4747u32.to_le_bytes());
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut header, key);
        header.extend_from_slice(&value_type(value).to_le_bytes());
        put_value(&mut header, value)?;
    }
    let mut offset = 0usize;
    for t in tensors {
        put_string(&mut header, &t.name);
        header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        // GGUF lists dimensions innermost first.
        for &d in t.dims.iter().rev() {
            header.extend_from_slice(&(d as u64).to_le_bytes());
        }
        header.extend_from_slice(&ggml_type_code(t.dtype).to_le_bytes());
        header.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = pad_to(offset + t.bytes(), GGUF_ALIGNMENT);
    }
    header.resize(pad_to(header.len(), GGUF_ALIGNMENT), 0);
    w.write_all(&header)?;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() != t.bytes() {
            return Err(io::Error::other(format!(
                "tensor {} produced {} bytes, expected {}",
                t.name,
                bytes.len(),
                t.bytes()
            )));
        }
        w.write_all(&bytes)?;
        let padding = pad_to(bytes.len(), GGUF_ALIGNMENT) - bytes.len();
        w.write_all(&vec![0u8; padding])?;
    }
    Ok(())
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(buf: &mut Vec<u8>, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => put_string(buf, s),
        Value::Array(items) => {
            // GGUF arrays are homogeneous; the element type comes from the first element.
            let elem_type = items.first().map_or(4, value_type);
            if items.iter().any(|i| value_type(i) != elem_type) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "GGUF arrays must be homogeneous",
                ));
            }
            buf.extend_from_slice(&elem_type.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item)?;
            }
        }
    }
    Ok(())
}

/// A safetensors tensor: name, row-major shape, dtype string (`F32`, `F16`, `BF16`), byte size.
pub(crate) struct SafetensorsSpec {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: &'static str,
    pub bytes: usize,
}

/// Writes a safetensors file: JSON header with offsets from the specs, then `data(i)` in order.
pub(crate) fn write_safetensors<W: Write>(
    w: &mut W,
    tensors: &[SafetensorsSpec],
    mut data: impl FnMut(usize) -> io::Result<Vec<u8>>,
) -> io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.dims, "data_offsets": [offset, offset + t.bytes]}),
        );
        offset += t.bytes;
    }
    let mut json = serde_json::to_vec(&header).map_err(io::Error::other)?;
    // The data section starts 8-byte aligned; pad the header with spaces as the spec allows.
    json.resize(pad_to(json.len(), 8), b' ');
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() != t.bytes {
            return Err(io::Error::other(format!(
                "tensor {} has {} bytes, expected {}",
                t.name,
                bytes.len(),
                t.bytes
            )));
        }
        w.write_all(&bytes)?;
    }
    Ok(())
}
