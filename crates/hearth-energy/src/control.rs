//! Acting on devices: miners (pause/resume through hearth-mining), GPU power limits (NVML,
//! clamped), simulated devices — behind one small interface, [`Actuator`].
//!
//! The agent never waits on hardware: each device has a worker task ([`spawn_worker`]) that holds
//! the latest command, applies it with a time limit, and on failure retries with exponential
//! backoff until it succeeds or a newer command replaces it. A miner that does not answer is
//! logged and retried; it never stops the agent's loop.

pub use hearth_policy::agent_state::{ActuatorStatus, Command};

use crate::policy::Mode;
use crate::sim_device::SimulatedDevice;
use crate::telemetry::nvml::NvmlGpus;
use crate::telemetry::BoxFut;
use hearth_mining::backoff::{Backoff, BackoffConfig};
use hearth_mining::Miner;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Why one control attempt failed (the worker retries).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The miner refused or did not answer.
    #[error("miner: {0}")]
    Miner(#[from] hearth_mining::Error),
    /// NVML refused the power limit.
    #[error("{0}")]
    Nvml(#[from] crate::telemetry::nvml::NvmlError),
    /// The attempt exceeded the worker's time limit (the limit given).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Anything else (a poisoned lock, an injected failure).
    #[error("{0}")]
    Other(String),
}

/// One device's control surface.
pub trait Actuator: Send + Sync {
    /// Makes the device follow `cmd`. One attempt; the worker retries.
    fn apply(&self, cmd: Command) -> BoxFut<'_, Result<(), ControlError>>;
}

/// Does nothing (a device the agent only watches, or whose only output is the "serve AI" flag).
#[derive(Debug, Default)]
pub struct NoopActuator;

impl Actuator for NoopActuator {
    fn apply(&self, _cmd: Command) -> BoxFut<'_, Result<(), ControlError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A miner through hearth-mining: mine → resume, anything else → pause (the built-in miner keeps
/// its pool connection while paused).
#[derive(Debug, Clone)]
pub struct MinerActuator(pub Arc<Miner>);

impl Actuator for MinerActuator {
    fn apply(&self, cmd: Command) -> BoxFut<'_, Result<(), ControlError>> {
        Box::pin(async move {
            if cmd.mode == Mode::Mine {
                self.0.resume().await?;
            } else {
                self.0.pause().await?;
            }
            Ok(())
        })
    }
}

/// A GPU's power limit through NVML (clamped to its allowed range). Only commands that carry a
/// limit change it.
#[derive(Debug, Clone)]
pub struct NvmlPowerLimit {
    /// The shared NVML handle.
    pub gpus: NvmlGpus,
    /// NVML index of the GPU.
    pub index: u32,
}

impl Actuator for NvmlPowerLimit {
    fn apply(&self, cmd: Command) -> BoxFut<'_, Result<(), ControlError>> {
        let r = match cmd.power_limit_w {
            Some(w) => self.gpus.set_power_limit(self.index, w).map(|_| ()),
            None => Ok(()),
        };
        Box::pin(async move { Ok(r?) })
    }
}

/// A simulated device follows commands at once.
#[derive(Debug, Clone)]
pub struct SimActuator(pub Arc<Mutex<SimulatedDevice>>);

impl Actuator for SimActuator {
    fn apply(&self, cmd: Command) -> BoxFut<'_, Result<(), ControlError>> {
        let r = match self.0.lock() {
            Ok(mut d) => {
                d.mode = cmd.mode;
                d.power_limit_w = cmd.power_limit_w;
                Ok(())
            }
            Err(_) => Err(ControlError::Other("simulated device lock poisoned".into())),
        };
        Box::pin(async move { r })
    }
}

/// Several actuators for one device, applied in order (e.g. a GPU's power limit and its miner).
pub struct Chain(pub Vec<Arc<dyn Actuator>>);

impl Actuator for Chain {
    fn apply(&self, cmd: Command) -> BoxFut<'_, Result<(), ControlError>> {
        Box::pin(async move {
            for a in &self.0 {
                a.apply(cmd).await?;
            }
            Ok(())
        })
    }
}

/// Timing of a worker's attempts.
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// Limit of one attempt.
    pub attempt_timeout: Duration,
    /// Delays between failed attempts of one command (reset on success or a new command).
    pub backoff: BackoffConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            attempt_timeout: Duration::from_secs(10),
            backoff: BackoffConfig {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(60),
                factor: 2.0,
                jitter: true,
            },
        }
    }
}

/// The agent's end of a device worker: send the latest command, read the status.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    tx: Arc<watch::Sender<Option<Command>>>,
    /// The worker's progress, updated by the worker after each attempt.
    pub status: Arc<Mutex<ActuatorStatus>>,
}

impl WorkerHandle {
    /// Replaces the pending command (the worker picks it up at once, even mid-backoff).
    pub fn send(&self, cmd: Command) {
        self.tx.send_replace(Some(cmd));
    }

    /// A copy of the worker's current status (default if its lock is poisoned).
    pub fn status(&self) -> ActuatorStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Starts the worker task of one device (`name` for logs). The task ends when the handle is
/// dropped.
pub fn spawn_worker(name: String, actuator: Arc<dyn Actuator>, cfg: WorkerConfig) -> WorkerHandle {
    let (tx, mut rx) = watch::channel::<Option<Command>>(None);
    let status = Arc::new(Mutex::new(ActuatorStatus::default()));
    let st = status.clone();
    tokio::spawn(async move {
        let mut backoff = Backoff::new(cfg.backoff);
        loop {
            if rx.changed().await.is_err() {
                return; // handle dropped
            }
            // Apply the latest command until it sticks or a newer one arrives.
            loop {
                let Some(cmd) = *rx.borrow_and_update() else {
                    break;
                };
                set(&st, |s| s.pending = Some(cmd));
                let r = match tokio::time::timeout(cfg.attempt_timeout, actuator.apply(cmd)).await {
                    Ok(r) => r,
                    Err(_) => Err(ControlError::Timeout(cfg.attempt_timeout)),
                };
                match r {
                    Ok(()) => {
                        backoff.reset();
                        set(&st, |s| {
                            s.applied = Some(cmd);
                            s.pending = None;
                            s.last_error = None;
                            s.retrying = 0;
                        });
                        break;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(device = %name, mode = %cmd.mode, error = %e,
                            retry_in_ms = delay.as_millis() as u64, "control failed; will retry");
                        set(&st, |s| {
                            s.last_error = Some(e.to_string());
                            s.failures += 1;
                            s.retrying += 1;
                        });
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            changed = rx.changed() => {
                                if changed.is_err() {
                                    return;
                                }
                                backoff.reset();
                            }
                        }
                    }
                }
            }
        }
    });
    WorkerHandle {
        tx: Arc::new(tx),
        status,
    }
}

fn set(st: &Mutex<ActuatorStatus>, f: impl FnOnce(&mut ActuatorStatus)) {
    if let Ok(mut s) = st.lock() {
        f(&mut s);
    }
}

/// A recording actuator for tests: remembers commands, can fail or hang on demand.
#[derive(Clone, Debug, Default)]
pub struct FakeActuator {
    /// Commands applied successfully, in order.
    pub log: Arc<Mutex<Vec<Command>>>,
    /// Fail this many attempts before succeeding.
    pub fail_next: Arc<Mutex<u32>>,
    /// Never return (a miner that does not answer).
    pub hang: Arc<std::sync::atomic::AtomicBool>,
}

impl Actuator for FakeActuator {
    fn apply(&self, cmd: Command) -> BoxFut<'_, Result<(), ControlError>> {
        Box::pin(async move {
            if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if let Ok(mut n) = self.fail_next.lock() {
                if *n > 0 {
                    *n -= 1;
                    return Err(ControlError::Other("injected failure".into()));
                }
            }
            if let Ok(mut l) = self.log.lock() {
                l.push(cmd);
            }
            Ok(())
        })
    }
}
