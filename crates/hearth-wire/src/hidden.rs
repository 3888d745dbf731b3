//! Hidden states on the wire: rows × cols of f16, bf16 or f32, little-endian, with the position of
//! the first row. Shapes are checked against limits before the payload is touched.

use crate::codec::{Reader, Writer};
use crate::error::{Result, WireError};
use crate::Limits;
use half::{bf16, f16};
use hearth_core::{ContentHash, ContentHasher};

/// Element type of hidden states in flight. Half precision halves the bytes per hop; f32 passes
/// the engine's values unrounded, so a chain gives bitwise what one process gives whatever the
/// span boundaries (docs/protocol.md, "Determinism"). The engine computes in its own dtype on
/// either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HiddenDType {
    /// IEEE 754 half precision (wire code 1).
    F16,
    /// bfloat16: f32's 8-bit exponent with a 7-bit mantissa (wire code 2).
    BF16,
    /// IEEE 754 single precision (wire code 3).
    F32,
}

impl HiddenDType {
    /// The dtype's byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::F16 => 1,
            Self::BF16 => 2,
            Self::F32 => 3,
        }
    }

    /// Bytes per value on the wire.
    pub fn bytes_per_value(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 2,
            Self::F32 => 4,
        }
    }

    /// The dtype with wire byte `code`; [`WireError::BadValue`] for an unknown one.
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            1 => Ok(Self::F16),
            2 => Ok(Self::BF16),
            3 => Ok(Self::F32),
            other => Err(WireError::BadValue {
                what: "hidden dtype",
                detail: format!("unknown code {other}"),
            }),
        }
    }

    /// Lower-case name (`f16`, `bf16`, `f32`), as [`FromStr`](std::str::FromStr) accepts it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::F32 => "f32",
        }
    }
}

impl std::fmt::Display for HiddenDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HiddenDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            "f32" => Ok(Self::F32),
            other => Err(format!(
                "unknown hidden dtype {other:?} (expected f16, bf16 or f32)"
            )),
        }
    }
}

/// `rows` hidden vectors of width `cols`, for positions `start..start + rows`.
#[derive(Clone, Debug, PartialEq)]
pub struct HiddenStates {
    /// Element type of `data`.
    pub dtype: HiddenDType,
    /// Position (token index in the session) of the first row.
    pub start: u32,
    /// Number of vectors, one per position; at least 1 on the wire.
    pub rows: u32,
    /// Width of each vector (the model's hidden size); at least 1 on the wire.
    pub cols: u32,
    /// `rows * cols` little-endian values of `dtype.bytes_per_value()` bytes.
    pub data: Vec<u8>,
}

impl HiddenStates {
    /// Rounds `values` (row-major `rows × cols`) to `dtype`.
    pub fn from_f32(dtype: HiddenDType, start: u32, rows: u32, cols: u32, values: &[f32]) -> Self {
        debug_assert_eq!(values.len(), rows as usize * cols as usize);
        let mut data = Vec::with_capacity(values.len() * dtype.bytes_per_value());
        match dtype {
            HiddenDType::F16 => {
                for v in values {
                    data.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
            HiddenDType::BF16 => {
                for v in values {
                    data.extend_from_slice(&bf16::from_f32(*v).to_le_bytes());
                }
            }
            HiddenDType::F32 => {
                for v in values {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        Self {
            dtype,
            start,
            rows,
            cols,
            data,
        }
    }

    /// Widens to f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let values = self.data.chunks_exact(self.dtype.bytes_per_value());
        match self.dtype {
            HiddenDType::F16 => values
                .map(|p| f16::from_le_bytes([p[0], p[1]]).to_f32())
                .collect(),
            HiddenDType::BF16 => values
                .map(|p| bf16::from_le_bytes([p[0], p[1]]).to_f32())
                .collect(),
            HiddenDType::F32 => values
                .map(|p| f32::from_le_bytes([p[0], p[1], p[2], p[3]]))
                .collect(),
        }
    }

    /// The first non-finite value, if any (NaN or ±Inf), as (row, col).
    pub fn first_non_finite(&self) -> Option<(u32, u32)> {
        let cols = self.cols.max(1) as usize;
        let size = self.dtype.bytes_per_value();
        self.data.chunks_exact(size).enumerate().find_map(|(i, p)| {
            let finite = match self.dtype {
                HiddenDType::F16 => f16::from_le_bytes([p[0], p[1]]).is_finite(),
                HiddenDType::BF16 => bf16::from_le_bytes([p[0], p[1]]).is_finite(),
                HiddenDType::F32 => f32::from_le_bytes([p[0], p[1], p[2], p[3]]).is_finite(),
            };
            (!finite).then_some(((i / cols) as u32, (i % cols) as u32))
        })
    }

    /// The digest receipts sign: binds dtype, shape, positions and every byte.
    pub fn digest(&self) -> ContentHash {
        ContentHasher::new("hidden-states")
            .field(&[self.dtype.code()])
            .field(&self.start.to_le_bytes())
            .field(&self.rows.to_le_bytes())
            .field(&self.cols.to_le_bytes())
            .field(&self.data)
            .finish()
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(self.dtype.code())
            .u32(self.start)
            .u32(self.rows)
            .u32(self.cols)
            .fixed(&self.data);
    }

    /// Decodes and validates the shape against `limits` before copying the payload.
    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self> {
        let dtype = HiddenDType::from_code(r.u8("hidden dtype")?)?;
        let start = r.u32("hidden start position")?;
        let rows = r.u32("hidden rows")?;
        let cols = r.u32("hidden cols")?;
        if rows == 0 || rows > limits.max_rows {
            return Err(WireError::TooLarge {
                what: "hidden rows (must be 1..=limit)",
                len: rows as usize,
                max: limits.max_rows as usize,
            });
        }
        if cols == 0 || cols > limits.max_hidden {
            return Err(WireError::TooLarge {
                what: "hidden cols (must be 1..=limit)",
                len: cols as usize,
                max: limits.max_hidden as usize,
            });
        }
        if start
            .checked_add(rows)
            .is_none_or(|end| end > limits.max_positions)
        {
            return Err(WireError::TooLarge {
                what: "hidden end position",
                len: start as usize + rows as usize,
                max: limits.max_positions as usize,
            });
        }
        // Saturating: with permissive limits (both near u32::MAX) the product overflows; a
        // saturated length then fails as truncated instead of panicking or wrapping.
        let n = (rows as usize)
            .saturating_mul(cols as usize)
            .saturating_mul(dtype.bytes_per_value());
        let data = r.take(n, "hidden payload")?.to_vec();
        Ok(Self {
            dtype,
            start,
            rows,
            cols,
            data,
        })
    }
}
