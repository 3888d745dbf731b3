//! hearth-mining: control of Bitcoin miners for the energy-aware node agent (issue #5).
//!
//! Three kinds of miner sit behind one control surface, [`Miner`]:
//! - [`cgminer`]: external ASIC miners through the cgminer/bmminer JSON API (TCP 4028); pause
//!   and resume disable and re-enable the miner's pools;
//! - [`luxos`]: LuxOS miners, paused with `curtail sleep` and resumed with `curtail wakeup`;
//! - [`stratum`]: a built-in CPU miner, a Stratum V1 client whose pause stops hashing but keeps
//!   the pool connection.
//!
//! [`sha256d`] holds the proof-of-work arithmetic (checked against real Bitcoin headers), and
//! `testing` (behind the `test-utils` feature, which only dev-dependencies enable) local servers
//! that speak each protocol byte for byte, for this crate's tests and the agent's.
//!
//! Invariants: nothing here panics on what a miner or pool sends; every read is bounded in size
//! and time; a miner that does not answer is an [`Error`] (timeout or IO), which
//! [`backoff::retry`] can retry, never a hang.

pub mod backoff;
pub mod cgminer;
mod error;
pub mod luxos;
pub mod sha256d;
pub mod stratum;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use error::{Error, Result};

/// Which kind of miner a [`Miner`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MinerKind {
    /// cgminer/bmminer API.
    Cgminer,
    /// LuxOS API (curtail).
    Luxos,
    /// The built-in Stratum CPU miner.
    Builtin,
}

/// What the agent needs to know about a miner at one moment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MinerStatus {
    /// The kind of miner.
    pub kind: MinerKind,
    /// Current hashrate, H/s (the miner's 5 s figure when it has one).
    pub hashrate_hs: f64,
    /// Power draw in watts when the miner reports it.
    pub power_w: Option<f64>,
    /// Highest reported temperature, °C.
    pub temperature_c: Option<f64>,
    /// True when mining is paused (pools disabled, curtailed, or the built-in miner paused).
    pub paused: bool,
    /// True when the miner has a live pool connection (built-in: TCP up and authorized;
    /// cgminer: some enabled pool is "Alive"; LuxOS: the API answered).
    pub connected: bool,
    /// Accepted shares.
    pub accepted: u64,
    /// Rejected shares.
    pub rejected: u64,
    /// Current pool difficulty when known (built-in miner).
    pub difficulty: Option<f64>,
}

/// How to reach a miner, as the agent's configuration names it, e.g.
/// `{"kind":"cgminer","addr":"10.0.0.21:4028"}` or
/// `{"kind":"builtin","url":"stratum+tcp://pool.example:3333","user":"bc1q….rig1"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum MinerSpec {
    /// cgminer/bmminer API at `host:port`.
    Cgminer {
        /// `host:port`, usually port 4028.
        addr: String,
    },
    /// LuxOS API at `host:port`.
    Luxos {
        /// `host:port`, usually port 4028.
        addr: String,
    },
    /// The built-in CPU miner on a Stratum V1 pool.
    Builtin {
        /// `stratum+tcp://host:port`.
        url: String,
        /// Worker name.
        user: String,
        /// Worker password (pools mostly ignore it; default "x").
        #[serde(default)]
        password: Option<String>,
        /// Start paused.
        #[serde(default)]
        start_paused: bool,
    },
}

/// One controllable miner. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub enum Miner {
    /// An external miner with the cgminer/bmminer API.
    Cgminer(cgminer::CgminerClient),
    /// An external LuxOS miner.
    Luxos(luxos::LuxosClient),
    /// The built-in Stratum CPU miner.
    Builtin(stratum::BuiltinMiner),
}

impl Miner {
    /// Builds the client a spec names, with default limits. A built-in miner starts its pool
    /// connection in the background (needs a tokio runtime); external miners are not contacted
    /// until the first call.
    pub fn from_spec(spec: &MinerSpec) -> Result<Miner> {
        Ok(match spec {
            MinerSpec::Cgminer { addr } => Miner::Cgminer(cgminer::CgminerClient::new(addr)),
            MinerSpec::Luxos { addr } => Miner::Luxos(luxos::LuxosClient::new(addr)),
            MinerSpec::Builtin {
                url,
                user,
                password,
                start_paused,
            } => {
                let mut cfg = stratum::StratumConfig::new(url, user);
                if let Some(p) = password {
                    cfg.password = p.clone();
                }
                cfg.start_paused = *start_paused;
                Miner::Builtin(stratum::BuiltinMiner::start(cfg)?)
            }
        })
    }

    /// The kind of miner.
    pub fn kind(&self) -> MinerKind {
        match self {
            Miner::Cgminer(_) => MinerKind::Cgminer,
            Miner::Luxos(_) => MinerKind::Luxos,
            Miner::Builtin(_) => MinerKind::Builtin,
        }
    }

    /// Stops hashing. External miners: one attempt, the error says why it failed; to retry a
    /// miner that does not answer, `backoff::retry(cfg, attempts, || miner.pause())` (retries
    /// only timeouts and IO errors). Built-in: immediate; the pool connection stays up.
    pub async fn pause(&self) -> Result<()> {
        match self {
            Miner::Cgminer(c) => c.pause().await,
            Miner::Luxos(l) => l.pause().await,
            Miner::Builtin(b) => {
                b.pause().await;
                Ok(())
            }
        }
    }

    /// Resumes hashing.
    pub async fn resume(&self) -> Result<()> {
        match self {
            Miner::Cgminer(c) => c.resume().await,
            Miner::Luxos(l) => l.resume().await,
            Miner::Builtin(b) => {
                b.resume().await;
                Ok(())
            }
        }
    }

    /// The current status. External miners are asked over their API (an error when they do
    /// not answer); the built-in miner answers from memory.
    pub async fn status(&self) -> Result<MinerStatus> {
        match self {
            Miner::Cgminer(c) => c.status().await,
            Miner::Luxos(l) => l.status().await,
            Miner::Builtin(b) => Ok(b.status()),
        }
    }
}
