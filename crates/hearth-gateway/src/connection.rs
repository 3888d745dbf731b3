//! The HTTP/1.1 accept loop: what a hostile or broken client can hold, and for how long.
//!
//! `axum::serve` puts no bound on connections or on how slowly a client may talk, so this loop
//! serves the router itself over hyper with:
//! - a cap on open connections: one beyond it is closed right after `accept` (taking it off the
//!   kernel's backlog), so a flood of idle connections costs a bounded number of descriptors;
//! - a deadline for each request head ([`Limits::header_timeout`], hyper's
//!   `header_read_timeout`): a client sending its headers byte by byte (slowloris), or an idle
//!   keep-alive connection, is closed when it passes;
//! - a write deadline ([`WriteDeadline`]): a write that stays blocked because the client does
//!   not read fails, which ends the connection and drops the response body — for a stream, its
//!   events channel and [`crate::server`]'s cancel guard, so the generation stops and its node
//!   sessions close.
//!
//! The body deadline is per request and lives in the handlers that read bodies.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;

/// The connection limits of one server.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Connections open at once; more are closed at accept.
    pub(crate) max_connections: usize,
    /// Time to receive a complete request head.
    pub(crate) header_timeout: Duration,
    /// Longest time a write may stay blocked on a client that does not read.
    pub(crate) write_timeout: Duration,
}

/// Handles into the gateway's metrics that the accept loop updates.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionMetrics {
    /// Connections open now.
    pub(crate) open: Gauge,
    /// Connections closed at accept because `max_connections` were open.
    pub(crate) refused: Counter,
    /// Connections closed because a write stayed blocked for `write_timeout`.
    pub(crate) slow_clients: Counter,
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves; then stops accepting,
/// lets every open connection finish its current response, and returns once all have closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Whole permits are waited for at shutdown with a u32 count.
    let cap = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(cap));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let (closing_tx, closing_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            tracing::debug!(%peer, cap, "connection closed at accept: too many open");
            drop(stream);
            continue;
        };
        // Streams send small chunks that should leave at once.
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteDeadline::new(
            stream,
            limits.write_timeout,
            metrics.slow_clients.clone(),
        ));
        let conn = http.serve_connection(io, TowerToHyperService::new(app.clone()));
        let mut closing = closing_rx.clone();
        let open = metrics.open.clone();
        open.inc();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing_tx.send(());
    // Every connection holds a permit until it closes: all permits back = all closed. The
    // semaphore is never closed, so this only ends that way.
    let _ = slots.acquire_many(cap as u32).await;
    Ok(())
}

/// Waits after an accept error: at once for errors of one connection, a moment for running out
/// of descriptors (which retrying at once would only spin on).
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!("accept failed: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A stream whose writes fail once one has made no progress for `timeout` (the client stopped
/// reading and the kernel buffers are full). Any progress restarts the clock; TCP only reopens
/// a full send buffer once a good part of it drained, so a client cannot keep a connection alive
/// by reading a byte now and then.
pub(crate) struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// Running while writes are blocked.
    stalled: Option<Pin<Box<Sleep>>>,
    slow_clients: Counter,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner`; a timeout is counted in `slow_clients`.
    pub(crate) fn new(inner: T, timeout: Duration, slow_clients: Counter) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            slow_clients,
        }
    }

    /// Passes a ready result through (and stops the clock); turns a pending one into an error
    /// once the clock has run for `timeout`.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        // Polling the timer also schedules a wake-up for when it passes.
        if stalled.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        self.slow_clients.inc();
        tracing::debug!(
            ?timeout,
            "closing a connection whose client stopped reading"
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read the response within the write timeout",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that never accepts a byte.
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_blocked_write_fails_after_the_timeout_and_is_counted() {
        let slow = Counter::default();
        let timeout = Duration::from_millis(50);
        let mut w = WriteDeadline::new(Stuck, timeout, slow.clone());
        let started = std::time::Instant::now();
        let err = w
            .write_all(b"data: x\n\n")
            .await
            .expect_err("a stuck write fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout);
        assert_eq!(slow.get(), 1);
        // A writer that accepts bytes never trips it.
        let mut ok = WriteDeadline::new(Vec::new(), Duration::from_secs(30), slow.clone());
        ok.write_all(b"data: x\n\n")
            .await
            .expect("writes pass through");
        assert_eq!(slow.get(), 1);
    }
}
