//! Length-prefixed framing over any async byte stream (a libp2p stream in practice).

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io;

/// Reads one frame: u32 LE length, then that many bytes. A declared length above `max` is refused
/// before anything is allocated; `Ok(None)` means the peer closed the stream cleanly between
/// frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    match read_frame_len(r, max).await? {
        Some(len) => read_frame_body(r, len).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's length prefix and checks it against `max` (nothing else is read or
/// allocated): for a reader that reserves memory for the body before reading it. `Ok(None)`
/// means the peer closed the stream cleanly between frames.
pub async fn read_frame_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    Ok(Some(len))
}

/// Reads the `len` bytes of a frame body whose length [`read_frame_len`] returned.
pub async fn read_frame_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> io::Result<Vec<u8>> {
    // Grow with the bytes that actually arrive, so a peer that declares a large frame and then
    // stalls holds only what it sent.
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    r.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame larger than 4 GiB"))?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}
