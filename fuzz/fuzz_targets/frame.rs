//! `read_frame` over an arbitrary byte stream, delivered in chunks of an arbitrary size, against
//! a reference model of the framing: every frame comes out exactly as the model says, a declared
//! length above the limit is `InvalidData`, a cut frame or length prefix is `UnexpectedEof`, a
//! clean end is `Ok(None)`, and the frames read re-encode (`write_frame`) to the bytes consumed.
//! Each body is also fed to the request and response decoders under tight limits.
#![no_main]

use futures::executor::block_on;
use futures::AsyncRead;
use hearth_wire::{read_frame, write_frame, Request, Response};
use hearth_wire_fuzz::{round_trip, tight};
use libfuzzer_sys::fuzz_target;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

const MAXES: [usize; 8] = [0, 1, 2, 16, 64, 255, 4096, 1 << 20];

struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        let pos = self.pos;
        buf[..n].copy_from_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

/// What `read_frame` must return at `pos`: a body, a clean end, or an error kind.
enum Expect<'a> {
    Frame(&'a [u8]),
    End,
    Fail(io::ErrorKind),
}

fn expect(stream: &[u8], pos: usize, max: usize) -> Expect<'_> {
    let rest = &stream[pos..];
    if rest.is_empty() {
        return Expect::End;
    }
    if rest.len() < 4 {
        return Expect::Fail(io::ErrorKind::UnexpectedEof);
    }
    let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
    if len > max {
        return Expect::Fail(io::ErrorKind::InvalidData);
    }
    if rest.len() - 4 < len {
        return Expect::Fail(io::ErrorKind::UnexpectedEof);
    }
    Expect::Frame(&rest[4..4 + len])
}

fuzz_target!(|data: &[u8]| {
    let [max_sel, chunk_sel, stream @ ..] = data else {
        return;
    };
    let max = MAXES[*max_sel as usize % MAXES.len()];
    let chunk = match chunk_sel % 9 {
        0 => usize::MAX,
        n => n as usize,
    };
    let mut r = Trickle {
        data: stream,
        pos: 0,
        chunk,
    };
    let mut consumed = Vec::new();
    let mut pos = 0;
    loop {
        let got = block_on(read_frame(&mut r, max));
        match (expect(stream, pos, max), got) {
            (Expect::Frame(want), Ok(Some(body))) => {
                assert_eq!(body, want);
                pos += 4 + body.len();
                block_on(write_frame(&mut consumed, &body)).unwrap();
                let _ = round_trip(&body, &tight(), Request::decode, Request::encode);
                let _ = round_trip(&body, &tight(), Response::decode, Response::encode);
            }
            (Expect::End, Ok(None)) => break,
            (Expect::Fail(kind), Err(e)) if e.kind() == kind => {
                if kind == io::ErrorKind::InvalidData {
                    // Refused on the length alone: nothing of the body was read.
                    assert_eq!(r.pos, pos + 4);
                }
                break;
            }
            (_, got) => panic!("at {pos} with max {max}: got {got:?}"),
        }
    }
    assert_eq!(consumed, stream[..pos]);
});
