//! Batches the output head across concurrent generations.
//!
//! The head (final norm + a `vocab × hidden` matrix, 128k × 2048 for Llama 3.2 1B) is read from
//! memory once per call; with one call per generation per token, a client running many
//! generations at once (the gateway) spends its time re-reading the same matrix. A
//! [`HeadBatcher`] owns the head on one thread, gathers the last hidden rows of the generations
//! that are ready, and computes all their logits in one product. Results are per row, so they
//! are the same as separate calls up to floating-point summation order of the kernels.
//!
//! Gathering waits for at most `max_wait` after the first row, and stops early once every
//! registered generation has sent one, so a lone generation pays nothing.

use crate::error::{EngineError, Result};
use crate::model::ClientHead;
use candle_core::{Device, Tensor};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Request {
    row: Vec<f32>,
    reply: SyncSender<Result<Vec<f32>>>,
}

/// A handle on the batching thread. Cheap to clone; the thread ends when every handle is gone.
#[derive(Clone)]
pub struct HeadBatcher {
    tx: SyncSender<Request>,
    registered: Arc<AtomicUsize>,
    hidden: usize,
    stats: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    products: AtomicU64,
    rows: AtomicU64,
}

/// How much batching happened: head products computed and rows they covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadBatchStats {
    /// Head matrix products computed since the batcher started.
    pub products: u64,
    /// Last-position rows those products covered (`rows / products` is the mean batch size).
    pub rows: u64,
}

/// Counts a generation as one the batcher may wait for; dropped when the generation ends.
pub struct Registration {
    registered: Arc<AtomicUsize>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registered.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HeadBatcher {
    /// Starts the batching thread over `head`; at most `max_batch` rows per product.
    pub fn start(head: Arc<ClientHead>, max_wait: Duration, max_batch: usize) -> Self {
        let max_batch = max_batch.max(1);
        let (tx, rx) = sync_channel::<Request>(max_batch * 2);
        let registered = Arc::new(AtomicUsize::new(0));
        let hidden = head.config().hidden_size;
        let waiting_for = registered.clone();
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        std::thread::Builder::new()
            .name("head-batch".into())
            .spawn(move || run(&head, &rx, &waiting_for, &counters, max_wait, max_batch))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the head batcher: {e}"));
        Self {
            tx,
            registered,
            hidden,
            stats,
        }
    }

    /// Batching counters so far.
    pub fn stats(&self) -> HeadBatchStats {
        HeadBatchStats {
            products: self.stats.products.load(Ordering::Relaxed),
            rows: self.stats.rows.load(Ordering::Relaxed),
        }
    }

    /// Registers one generation (hold the guard while it runs).
    pub fn register(&self) -> Registration {
        self.registered.fetch_add(1, Ordering::AcqRel);
        Registration {
            registered: self.registered.clone(),
        }
    }

    /// Logits of the last position of `hidden` (`[1, t, hidden]` or `[t, hidden]`).
    pub fn logits_last(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let dims = hidden.dims().to_vec();
        let (t, h) = match dims.as_slice() {
            [1, t, h] | [t, h] => (*t, *h),
            _ => {
                return Err(EngineError::HiddenShape {
                    got: dims,
                    hidden: self.hidden,
                })
            }
        };
        if h != self.hidden || t == 0 {
            return Err(EngineError::HiddenShape {
                got: dims,
                hidden: self.hidden,
            });
        }
        let row = hidden
            .reshape((t, h))?
            .narrow(0, t - 1, 1)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (reply, answer) = sync_channel(1);
        self.tx
            .send(Request { row, reply })
            .map_err(|_| EngineError::Remote("the head batcher stopped".into()))?;
        answer
            .recv()
            .map_err(|_| EngineError::Remote("the head batcher stopped".into()))?
    }
}

fn run(
    head: &ClientHead,
    rx: &Receiver<Request>,
    registered: &AtomicUsize,
    stats: &Counters,
    max_wait: Duration,
    max_batch: usize,
) {
    let hidden = head.config().hidden_size;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + max_wait;
        while batch.len() < max_batch && batch.len() < registered.load(Ordering::Acquire) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(r) => batch.push(r),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let n = batch.len();
        stats.products.fetch_add(1, Ordering::Relaxed);
        stats.rows.fetch_add(n as u64, Ordering::Relaxed);
        let rows: Vec<f32> = batch.iter().flat_map(|r| r.row.iter().copied()).collect();
        let logits = Tensor::from_vec(rows, (1, n, hidden), &Device::Cpu)
            .map_err(EngineError::from)
            .and_then(|x| head.logits_all(&x))
            .and_then(|l| Ok(l.reshape((n, ()))?.to_vec2::<f32>()?));
        match logits {
            Ok(rows) => {
                for (req, row) in batch.into_iter().zip(rows) {
                    let _ = req.reply.send(Ok(row));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for req in batch {
                    let _ = req
                        .reply
                        .send(Err(EngineError::Remote(message.clone().into())));
                }
            }
        }
    }
}
