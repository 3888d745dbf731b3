use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A half-open, non-empty range `[start, end)` of transformer blocks (layers).
///
/// A node serves one `BlockRange`; a client chains ranges that tile `[0, num_blocks)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "(u32, u32)", into = "(u32, u32)")]
pub struct BlockRange {
    start: u32,
    end: u32,
}

/// Why a block range is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockRangeError {
    /// `start >= end`: the range would hold no blocks.
    #[error("block range {start}..{end} is empty or reversed")]
    Empty {
        /// First block asked for (inclusive).
        start: u32,
        /// Block asked to stop before (exclusive).
        end: u32,
    },
    /// The range reaches past the last block of the model.
    #[error("block range {start}..{end} is out of bounds for a model with {num_blocks} blocks")]
    OutOfBounds {
        /// First block of the range (inclusive).
        start: u32,
        /// End of the range (exclusive); greater than `num_blocks`.
        end: u32,
        /// Number of blocks the model has.
        num_blocks: u32,
    },
    /// The text (carried here as given) is not of the form `A..B` with `A < B`.
    #[error("cannot parse block range {0:?}: expected `A..B` with A < B")]
    Parse(String),
    /// `parts` is zero or larger than `num_blocks`, so no split into non-empty slices exists.
    #[error("cannot split {num_blocks} blocks into {parts} non-empty slices")]
    BadSplit {
        /// Number of blocks to split.
        num_blocks: u32,
        /// Number of slices asked for.
        parts: u32,
    },
}

impl BlockRange {
    /// A range `[start, end)`; fails when it is empty.
    pub fn new(start: u32, end: u32) -> Result<Self, BlockRangeError> {
        if start >= end {
            return Err(BlockRangeError::Empty { start, end });
        }
        Ok(Self { start, end })
    }

    /// Every block of a model with `num_blocks` blocks.
    pub fn full(num_blocks: u32) -> Result<Self, BlockRangeError> {
        Self::new(0, num_blocks)
    }

    /// First block of the range (inclusive).
    pub fn start(&self) -> u32 {
        self.start
    }

    /// Block the range stops before (exclusive); always greater than [`Self::start`].
    pub fn end(&self) -> u32 {
        self.end
    }

    /// Number of blocks in the range (always at least 1).
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Always false: ranges are non-empty by construction. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when block index `block` lies in `[start, end)`.
    pub fn contains(&self, block: u32) -> bool {
        (self.start..self.end).contains(&block)
    }

    /// The blocks as a `Range<usize>` for indexing.
    pub fn as_usize_range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Checks that the range fits in a model of `num_blocks` blocks.
    pub fn check_within(&self, num_blocks: u32) -> Result<(), BlockRangeError> {
        if self.end > num_blocks {
            return Err(BlockRangeError::OutOfBounds {
                start: self.start,
                end: self.end,
                num_blocks,
            });
        }
        Ok(())
    }

    /// Splits `[0, num_blocks)` into `parts` contiguous slices whose sizes differ by at most one
    /// (the first slices get the extra blocks).
    pub fn split_even(num_blocks: u32, parts: u32) -> Result<Vec<Self>, BlockRangeError> {
        if parts == 0 || parts > num_blocks {
            return Err(BlockRangeError::BadSplit { num_blocks, parts });
        }
        let base = num_blocks / parts;
        let extra = num_blocks % parts;
        let mut start = 0;
        (0..parts)
            .map(|i| {
                let len = base + u32::from(i < extra);
                let range = Self::new(start, start + len);
                start += len;
                range
            })
            .collect()
    }

    /// Splits `[0, num_blocks)` at the given interior boundaries (strictly increasing, each in
    /// `1..num_blocks`). `split_at(10, &[3, 4])` gives `0..3, 3..4, 4..10`.
    pub fn split_at(num_blocks: u32, cuts: &[u32]) -> Result<Vec<Self>, BlockRangeError> {
        let mut bounds = Vec::with_capacity(cuts.len() + 2);
        bounds.push(0);
        bounds.extend_from_slice(cuts);
        bounds.push(num_blocks);
        bounds
            .windows(2)
            .map(|w| {
                let range = Self::new(w[0], w[1])?;
                range.check_within(num_blocks)?;
                Ok(range)
            })
            .collect()
    }

    /// True when `ranges` tile `[0, num_blocks)` exactly, in order.
    pub fn tiles(ranges: &[Self], num_blocks: u32) -> bool {
        let mut next = 0;
        for range in ranges {
            if range.start != next {
                return false;
            }
            next = range.end;
        }
        next == num_blocks && !ranges.is_empty()
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl FromStr for BlockRange {
    type Err = BlockRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_err = || BlockRangeError::Parse(s.to_string());
        let (a, b) = s.trim().split_once("..").ok_or_else(parse_err)?;
        let start = a.trim().parse().map_err(|_| parse_err())?;
        let end = b.trim().parse().map_err(|_| parse_err())?;
        Self::new(start, end)
    }
}

impl TryFrom<(u32, u32)> for BlockRange {
    type Error = BlockRangeError;

    fn try_from((start, end): (u32, u32)) -> Result<Self, Self::Error> {
        Self::new(start, end)
    }
}

impl From<BlockRange> for (u32, u32) {
    fn from(r: BlockRange) -> Self {
        (r.start, r.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_reversed() {
        assert!(BlockRange::new(3, 3).is_err());
        assert!(BlockRange::new(4, 3).is_err());
        assert_eq!(BlockRange::new(2, 5).unwrap().len(), 3);
    }

    #[test]
    fn parses_and_displays() {
        let r: BlockRange = " 4..12 ".parse().unwrap();
        assert_eq!((r.start(), r.end()), (4, 12));
        assert_eq!(r.to_string(), "4..12");
        for bad in ["", "4", "4..", "..4", "a..b", "5..2", "-1..3"] {
            assert!(bad.parse::<BlockRange>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn out_of_bounds_is_reported() {
        let r = BlockRange::new(10, 17).unwrap();
        assert!(r.check_within(17).is_ok());
        assert_eq!(
            r.check_within(16),
            Err(BlockRangeError::OutOfBounds {
                start: 10,
                end: 17,
                num_blocks: 16
            })
        );
    }

    #[test]
    fn even_split_tiles_and_balances() {
        for n in 1..20u32 {
            for parts in 1..=n {
                let ranges = BlockRange::split_even(n, parts).unwrap();
                assert_eq!(ranges.len() as u32, parts);
                assert!(BlockRange::tiles(&ranges, n));
                let min = ranges.iter().map(|r| r.len()).min().unwrap();
                let max = ranges.iter().map(|r| r.len()).max().unwrap();
                assert!(max - min <= 1);
            }
        }
        assert!(BlockRange::split_even(3, 4).is_err());
        assert!(BlockRange::split_even(3, 0).is_err());
    }

    #[test]
    fn split_at_cuts() {
        let ranges = BlockRange::split_at(10, &[3, 4]).unwrap();
        assert_eq!(
            ranges.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["0..3", "3..4", "4..10"]
        );
        assert!(BlockRange::split_at(10, &[4, 4]).is_err());
        assert!(BlockRange::split_at(10, &[11]).is_err());
        assert!(!BlockRange::tiles(&ranges[1..], 10));
    }

    #[test]
    fn serde_rejects_empty_range() {
        let ok: BlockRange = serde_json::from_str("[1,2]").unwrap();
        assert_eq!(ok, BlockRange::new(1, 2).unwrap());
        assert!(serde_json::from_str::<BlockRange>("[2,2]").is_err());
    }
}
