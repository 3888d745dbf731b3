//! Inference session messages. One libp2p stream carries one session: the client sends `Open`,
//! then `Step`s, then `Close` (or just closes the stream); the node answers each `Open` and
//! `Step` with exactly one response, in order, and `Close` with none.
//!
//! Frame = u32 LE length of the rest, then `version: u8`, `kind: u8`, body. The length is checked
//! against [`Limits::max_frame_bytes`] before the frame is read.

use crate::codec::{Reader, Writer};
use crate::error::{Result, WireError};
use crate::hidden::{HiddenDType, HiddenStates};
use crate::receipt::{Receipt, SessionKey};
use crate::{Limits, VERSION};
use hearth_core::{BlockRange, ContentHash};

/// Longest error message a node may send (longer ones are cut by the sender, rejected here).
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Opens a session over `span` of model `model_id` for up to `max_len` positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSession {
    /// Client-chosen random id of the session; every receipt of the session carries it.
    pub session: SessionKey,
    /// Id of the model to run; the node refuses ids it does not serve.
    pub model_id: ContentHash,
    /// Blocks of the model this node is to run, within `0..Limits::max_blocks`.
    pub span: BlockRange,
    /// Most positions the session will reach, `1..=Limits::max_positions`; the node reserves KV
    /// cache as the session grows, up to this.
    pub max_len: u32,
    /// Element type of every `Step`'s hidden states and of the replies.
    pub dtype: HiddenDType,
}

/// Runs the session's blocks on `hidden` (positions `hidden.start..`). A start below the cached
/// length rewinds the cache there first (replay after failover, or a client retry).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The client's step counter for this hop (0 first); echoed in the reply and its receipt.
    pub step: u64,
    /// Input to the first block of the span, for positions `hidden.start..hidden.start + rows`.
    pub hidden: HiddenStates,
}

/// A client-to-node message on a session stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Start the session (kind 1); once per stream, before any `Step`.
    Open(OpenSession),
    /// Run one step of the open session (kind 2).
    Step(Step),
    /// End the session (kind 3): the node frees its cache and closes the stream, with no reply.
    Close,
}

/// The node accepted the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// KV-cache room left on the node after this session's reservation, in tokens of its span.
    pub cache_free_tokens: u64,
}

/// The node ran a step: its output and the signed receipt for it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDone {
    /// The `Step::step` this answers.
    pub step: u64,
    /// Output of the span's last block, same dtype, positions and shape as the input.
    pub hidden: HiddenStates,
    /// The node's signature binding the step's input and output digests.
    pub receipt: Receipt,
}

/// Machine-readable reason for a refusal; the message is for humans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or out-of-protocol request.
    BadRequest,
    /// Model or span not served here.
    NotServed,
    /// No room: cache budget, session count or per-peer limit.
    Busy,
    /// A step for a session that is not open.
    NotOpen,
    /// The request was well-formed but the computation failed.
    Internal,
}

impl ErrorCode {
    fn code(self) -> u8 {
        match self {
            Self::BadRequest => 1,
            Self::NotServed => 2,
            Self::Busy => 3,
            Self::NotOpen => 4,
            Self::Internal => 5,
        }
    }

    fn from_code(c: u8) -> Result<Self> {
        Ok(match c {
            1 => Self::BadRequest,
            2 => Self::NotServed,
            3 => Self::Busy,
            4 => Self::NotOpen,
            5 => Self::Internal,
            other => {
                return Err(WireError::BadValue {
                    what: "error code",
                    detail: format!("unknown code {other}"),
                })
            }
        })
    }
}

/// The node refused or failed a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// What kind of failure, for the client to act on.
    pub code: ErrorCode,
    /// Explanation for humans, at most [`MAX_ERROR_MESSAGE`] bytes of UTF-8 on the wire.
    pub message: String,
}

/// A node-to-client message: one per `Open` or `Step`, in request order.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one response per frame, moved rarely; boxing StepDone would cost an allocation per step"
)]
pub enum Response {
    /// The session is open (kind 101).
    Opened(Opened),
    /// A step's output and receipt (kind 102).
    StepDone(StepDone),
    /// The request was refused or failed (kind 103).
    Error(ErrorReply),
}

const KIND_OPEN: u8 = 1;
const KIND_STEP: u8 = 2;
const KIND_CLOSE: u8 = 3;
const KIND_OPENED: u8 = 101;
const KIND_STEP_DONE: u8 = 102;
const KIND_ERROR: u8 = 103;

/// A writer that starts a message body: version byte, then `kind`.
pub(crate) fn header(kind: u8, capacity: usize) -> Writer {
    let mut w = Writer::with_capacity(capacity + 2);
    w.u8(VERSION).u8(kind);
    w
}

/// Reads a message body's version byte (refusing any other version) and returns its kind.
pub(crate) fn read_header(r: &mut Reader<'_>) -> Result<u8> {
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(WireError::Version {
            got: version,
            supported: VERSION,
        });
    }
    r.u8("message kind")
}

fn decode_span(r: &mut Reader<'_>, what: &'static str, limits: &Limits) -> Result<BlockRange> {
    let start = r.u32(what)?;
    let end = r.u32(what)?;
    if end > limits.max_blocks {
        return Err(WireError::TooLarge {
            what,
            len: end as usize,
            max: limits.max_blocks as usize,
        });
    }
    BlockRange::new(start, end).map_err(|e| WireError::BadValue {
        what,
        detail: e.to_string(),
    })
}

impl Request {
    /// The frame body (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Open(o) => {
                let mut w = header(KIND_OPEN, 64);
                w.fixed(&o.session)
                    .fixed(&o.model_id.0)
                    .u32(o.span.start())
                    .u32(o.span.end())
                    .u32(o.max_len)
                    .u8(o.dtype.code());
                w.finish()
            }
            Self::Step(s) => {
                let mut w = header(KIND_STEP, 32 + s.hidden.data.len());
                w.u64(s.step);
                s.hidden.encode(&mut w);
                w.finish()
            }
            Self::Close => header(KIND_CLOSE, 0).finish(),
        }
    }

    /// Parses a frame body, checking every length against `limits`; trailing bytes are an error.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let out = match read_header(&mut r)? {
            KIND_OPEN => {
                let session = r.array("open session key")?;
                let model_id = ContentHash(r.array("open model id")?);
                let span = decode_span(&mut r, "open span", limits)?;
                let max_len = r.u32("open max_len")?;
                if max_len == 0 || max_len > limits.max_positions {
                    return Err(WireError::TooLarge {
                        what: "open max_len (must be 1..=limit)",
                        len: max_len as usize,
                        max: limits.max_positions as usize,
                    });
                }
                let dtype = HiddenDType::from_code(r.u8("open dtype")?)?;
                Self::Open(OpenSession {
                    session,
                    model_id,
                    span,
                    max_len,
                    dtype,
                })
            }
            KIND_STEP => Self::Step(Step {
                step: r.u64("step index")?,
                hidden: HiddenStates::decode(&mut r, limits)?,
            }),
            KIND_CLOSE => Self::Close,
            other => return Err(WireError::UnknownKind(other)),
        };
        r.end("request")?;
        Ok(out)
    }
}

impl Response {
    /// The frame body (without the length prefix); an error message is cut to
    /// [`MAX_ERROR_MESSAGE`] bytes at a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Opened(o) => {
                let mut w = header(KIND_OPENED, 8);
                w.u64(o.cache_free_tokens);
                w.finish()
            }
            Self::StepDone(s) => {
                let mut w = header(
                    KIND_STEP_DONE,
                    256 + s.hidden.data.len() + s.receipt.body.commitment.encoded_len(),
                );
                w.u64(s.step);
                s.hidden.encode(&mut w);
                s.receipt.encode(&mut w);
                w.finish()
            }
            Self::Error(e) => {
                let mut w = header(KIND_ERROR, 8 + e.message.len());
                let mut end = e.message.len().min(MAX_ERROR_MESSAGE);
                while !e.message.is_char_boundary(end) {
                    end -= 1;
                }
                w.u8(e.code.code()).bytes(&e.message.as_bytes()[..end]);
                w.finish()
            }
        }
    }

    /// Parses a frame body, checking every length against `limits`; trailing bytes are an error.
    /// Does not verify the receipt.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let out = match read_header(&mut r)? {
            KIND_OPENED => Self::Opened(Opened {
                cache_free_tokens: r.u64("opened cache_free_tokens")?,
            }),
            KIND_STEP_DONE => Self::StepDone(StepDone {
                step: r.u64("step index")?,
                hidden: HiddenStates::decode(&mut r, limits)?,
                receipt: Receipt::decode(&mut r, limits)?,
            }),
            KIND_ERROR => Self::Error(ErrorReply {
                code: ErrorCode::from_code(r.u8("error code")?)?,
                message: r.string("error message", MAX_ERROR_MESSAGE)?,
            }),
            other => return Err(WireError::UnknownKind(other)),
        };
        r.end("response")?;
        Ok(out)
    }
}

impl Response {
    /// An [`Response::Error`] with `code` and `message`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error(ErrorReply {
            code,
            message: message.into(),
        })
    }
}
