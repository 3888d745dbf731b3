//! Chain linkage: the receipts of one step, hop by hop, must describe one computation.
//!
//! For the hops of a step (in block order) the checks are: the first hop's input is the digest
//! the caller fed the chain (the client's own embedding output, or the inputs a failover
//! replays); every later hop's input is the previous hop's output; the spans tile the expected
//! block range without gap or overlap; every hop ran the expected model on the same positions.
//! Signatures are checked separately (`Receipt::verify`); together they mean the chain's output is
//! what these nodes, in this order, claim to have computed from the client's input.

use hearth_core::{BlockRange, ContentHash};
use hearth_wire::ReceiptBody;
use thiserror::Error;

/// Why a step's receipts do not form one chain.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    /// No receipts for a step that ran.
    #[error("no receipts")]
    Empty,
    /// A hop's input is not what came before it.
    #[error("hop {hop}: input {got} is not the previous output {expected}")]
    Unlinked {
        /// Index of the hop in the step.
        hop: usize,
        /// What the previous hop (or the client) produced.
        expected: ContentHash,
        /// What the hop says it received.
        got: ContentHash,
    },
    /// A hop's span does not start where the previous one ended.
    #[error("hop {hop}: blocks {got} do not start at block {expected}")]
    Gap {
        /// Index of the hop in the step.
        hop: usize,
        /// The block the hop had to start at.
        expected: u32,
        /// The hop's span.
        got: BlockRange,
    },
    /// The hops end before or after the expected range does.
    #[error("the hops end at block {got}, not {expected}")]
    Incomplete {
        /// The expected range's end.
        expected: u32,
        /// Where the last hop ended.
        got: u32,
    },
    /// A hop ran another model.
    #[error("hop {hop}: model {got} is not {expected}")]
    Model {
        /// Index of the hop in the step.
        hop: usize,
        /// The chain's model.
        expected: ContentHash,
        /// The hop's.
        got: ContentHash,
    },
    /// A hop covered other positions than the first hop.
    #[error("hop {hop}: positions {got:?} differ from the step's {expected:?}")]
    Positions {
        /// Index of the hop in the step.
        hop: usize,
        /// The first hop's (start, rows).
        expected: (u32, u32),
        /// This hop's.
        got: (u32, u32),
    },
}

/// Checks that `hops` (in block order) ran `model` over exactly `range`, starting from `input`;
/// returns the chain's final output digest.
pub fn check_chain(
    input: ContentHash,
    range: BlockRange,
    model: ContentHash,
    hops: &[&ReceiptBody],
) -> Result<ContentHash, LinkError> {
    let first = hops.first().ok_or(LinkError::Empty)?;
    let positions = (first.start, first.rows());
    let mut expected_input = input;
    let mut next_block = range.start();
    for (i, hop) in hops.iter().enumerate() {
        if hop.model_id != model {
            return Err(LinkError::Model {
                hop: i,
                expected: model,
                got: hop.model_id,
            });
        }
        if (hop.start, hop.rows()) != positions {
            return Err(LinkError::Positions {
                hop: i,
                expected: positions,
                got: (hop.start, hop.rows()),
            });
        }
        if hop.span.start() != next_block {
            return Err(LinkError::Gap {
                hop: i,
                expected: next_block,
                got: hop.span,
            });
        }
        if hop.input != expected_input {
            return Err(LinkError::Unlinked {
                hop: i,
                expected: expected_input,
                got: hop.input,
            });
        }
        next_block = hop.span.end();
        expected_input = hop.output;
    }
    if next_block != range.end() {
        return Err(LinkError::Incomplete {
            expected: range.end(),
            got: next_block,
        });
    }
    Ok(expected_input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_wire::ActivationCommitment;

    fn hop(span: (u32, u32), input: &[u8], output: &[u8]) -> ReceiptBody {
        ReceiptBody {
            session: [1; 16],
            step: 0,
            model_id: ContentHash::of(b"m"),
            span: BlockRange::new(span.0, span.1).unwrap(),
            input: ContentHash::of(input),
            output: ContentHash::of(output),
            start: 3,
            commitment: ActivationCommitment {
                rows: vec![[0.0; 4]; 2],
            },
        }
    }

    fn chain() -> Vec<ReceiptBody> {
        vec![
            hop((0, 4), b"x", b"a"),
            hop((4, 9), b"a", b"b"),
            hop((9, 12), b"b", b"y"),
        ]
    }

    fn check(hops: &[ReceiptBody]) -> Result<ContentHash, LinkError> {
        let refs: Vec<&ReceiptBody> = hops.iter().collect();
        check_chain(
            ContentHash::of(b"x"),
            BlockRange::new(0, 12).unwrap(),
            ContentHash::of(b"m"),
            &refs,
        )
    }

    #[test]
    fn a_linked_tiling_chain_passes_and_yields_its_output() {
        assert_eq!(check(&chain()), Ok(ContentHash::of(b"y")));
    }

    #[test]
    fn every_break_is_named() {
        let mut c = chain();
        c[1].input = ContentHash::of(b"forged");
        assert!(matches!(check(&c), Err(LinkError::Unlinked { hop: 1, .. })));
        let mut c = chain();
        c[0].input = ContentHash::of(b"not the client's");
        assert!(matches!(check(&c), Err(LinkError::Unlinked { hop: 0, .. })));
        let mut c = chain();
        c[2].span = BlockRange::new(10, 12).unwrap();
        assert!(matches!(check(&c), Err(LinkError::Gap { hop: 2, .. })));
        let mut c = chain();
        c.pop();
        assert!(matches!(
            check(&c),
            Err(LinkError::Incomplete {
                expected: 12,
                got: 9
            })
        ));
        let mut c = chain();
        c[1].model_id = ContentHash::of(b"other");
        assert!(matches!(check(&c), Err(LinkError::Model { hop: 1, .. })));
        let mut c = chain();
        c[2].start = 4;
        assert!(matches!(
            check(&c),
            Err(LinkError::Positions { hop: 2, .. })
        ));
        assert_eq!(check(&[]), Err(LinkError::Empty));
    }
}
