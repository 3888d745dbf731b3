//! Exponential backoff with a cap and optional jitter, and a retry helper built on it.
//!
//! Used wherever a peer may be away for a while: the Stratum client reconnecting to its pool,
//! and the agent retrying a miner's API that does not answer. Retrying never panics and never
//! spins: every attempt waits at least `initial`.

use std::future::Future;
use std::time::Duration;

#[cfg(test)]
use crate::error::Error;
use crate::error::Result;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth per attempt (2.0 doubles).
    pub factor: f64,
    /// When true, each delay is drawn uniformly from `[delay/2, delay]` so that many clients do
    /// not reconnect in lockstep.
    pub jitter: bool,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            factor: 2.0,
            jitter: true,
        }
    }
}

/// The state of one backoff sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    next: Duration,
    rng: u64,
}

impl Backoff {
    /// A fresh sequence.
    pub fn new(cfg: BackoffConfig) -> Self {
        // Jitter only needs to differ between processes, not to be unpredictable.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            ^ u64::from(std::process::id()).rotate_left(32);
        Backoff {
            cfg,
            next: cfg.initial,
            rng: seed | 1,
        }
    }

    /// The next delay to wait; grows geometrically up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next.min(self.cfg.max);
        let grown = base.as_secs_f64() * self.cfg.factor.max(1.0);
        self.next = Duration::from_secs_f64(grown.min(self.cfg.max.as_secs_f64()));
        if self.cfg.jitter {
            // xorshift64
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            base.mul_f64(0.5 + 0.5 * frac)
        } else {
            base
        }
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.cfg.initial;
    }
}

/// Runs `op` up to `attempts` times, sleeping with backoff between tries, as long as the error
/// is transient ([`crate::Error::is_transient`]). Returns the last error otherwise.
pub async fn retry<T, F, Fut>(cfg: BackoffConfig, attempts: u32, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::new(cfg);
    let mut tried = 0;
    loop {
        tried += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && tried < attempts.max(1) => {
                let d = backoff.next_delay();
                tracing::debug!(error = %e, attempt = tried, delay_ms = d.as_millis() as u64, "retrying");
                tokio::time::sleep(d).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_without_jitter() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            factor: 2.0,
            jitter: false,
        });
        let seq: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, vec![100, 200, 350, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(1000),
            max: Duration::from_millis(1000),
            factor: 2.0,
            jitter: true,
        });
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(500) && *d <= Duration::from_millis(1000)));
        // Not all equal: jitter actually varies.
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[tokio::test]
    async fn retry_stops_on_permanent_error_and_retries_transient() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            factor: 2.0,
            jitter: false,
        };
        let mut calls = 0;
        let r: Result<()> = retry(cfg, 5, || {
            calls += 1;
            async { Err(Error::malformed("x", "y")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1, "a malformed reply is not retried");

        let mut calls = 0;
        let r: Result<u32> = retry(cfg, 5, || {
            calls += 1;
            let c = calls;
            async move {
                if c < 3 {
                    Err(Error::Timeout {
                        what: "t".into(),
                        limit: Duration::from_millis(1),
                    })
                } else {
                    Ok(c)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }
}
