//! LuxOS miners: curtail (sleep/wakeup) through the cgminer-style API on port 4028.
//!
//! LuxOS guards write commands with a session: `logon` answers a `SESSION` block with a
//! `SessionID`; `curtail` takes the parameter `"<session_id>,sleep"` or
//! `"<session_id>,wakeup"`; `logoff` takes the session id. A sleeping LuxOS miner stops hashing
//! but keeps its configuration and comes back on `wakeup`, which is why the agent prefers it to
//! disabling pools on these machines.
//!
//! Invariant: every action opens its own session and closes it again, even when the action
//! failed, so that a crashed agent does not leave a session that blocks the next one longer
//! than the miner's own session timeout.

use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::Value;

use crate::cgminer::{api_request, num, parse_summary, ApiConfig};
use crate::error::{Error, Result};
use crate::{MinerKind, MinerStatus};

/// The two curtail actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curtail {
    /// Stop hashing (low power).
    Sleep,
    /// Resume hashing.
    Wakeup,
}

impl Curtail {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Curtail::Sleep => "sleep",
            Curtail::Wakeup => "wakeup",
        }
    }
}

const UNKNOWN: u8 = 0;
const AWAKE: u8 = 1;
const ASLEEP: u8 = 2;

/// A LuxOS API client for one miner.
#[derive(Debug)]
pub struct LuxosClient {
    addr: String,
    cfg: ApiConfig,
    /// The last state this client put the miner in (LuxOS' summary does not say).
    state: AtomicU8,
}

/// Reads the session id out of a `logon` reply.
pub fn parse_session_id(v: &Value) -> Result<String> {
    let id = v
        .get("SESSION")
        .and_then(|s| s.as_array())
        .and_then(|a| a.first())
        .and_then(|s| s.get("SessionID"))
        .and_then(|s| s.as_str())
        .ok_or_else(|| Error::malformed("reply to `logon`", "no SESSION[0].SessionID"))?;
    // The id goes back into a comma-separated parameter: refuse anything that would change it.
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::malformed(
            "reply to `logon`",
            format!("implausible SessionID {id:?}"),
        ));
    }
    Ok(id.to_string())
}

impl LuxosClient {
    /// A client for `host:port` with default limits.
    pub fn new(addr: impl Into<String>) -> Self {
        Self::with_config(addr, ApiConfig::default())
    }

    /// A client with explicit limits.
    pub fn with_config(addr: impl Into<String>, cfg: ApiConfig) -> Self {
        LuxosClient {
            addr: addr.into(),
            cfg,
            state: AtomicU8::new(UNKNOWN),
        }
    }

    /// The miner's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends any command, returns the reply after checking its STATUS.
    pub async fn command(&self, command: &str, parameter: Option<&str>) -> Result<Value> {
        api_request(&self.addr, &self.cfg, command, parameter).await
    }

    /// `logon` → session id.
    pub async fn logon(&self) -> Result<String> {
        parse_session_id(&self.command("logon", None).await?)
    }

    /// `logoff|<session_id>`.
    pub async fn logoff(&self, session_id: &str) -> Result<()> {
        self.command("logoff", Some(session_id)).await.map(drop)
    }

    /// `curtail|<session_id>,<sleep|wakeup>` within an existing session.
    pub async fn curtail_in_session(&self, session_id: &str, action: Curtail) -> Result<()> {
        self.command(
            "curtail",
            Some(&format!("{session_id},{}", action.as_str())),
        )
        .await
        .map(drop)
    }

    /// logon, curtail, logoff (logoff also after a failed curtail; its own failure is only
    /// logged when the curtail already failed).
    pub async fn curtail(&self, action: Curtail) -> Result<()> {
        let sid = self.logon().await?;
        let res = self.curtail_in_session(&sid, action).await;
        let off = self.logoff(&sid).await;
        res?;
        if let Err(e) = off {
            tracing::warn!(miner = %self.addr, error = %e, "LuxOS logoff failed after curtail");
        }
        self.state.store(
            if action == Curtail::Sleep {
                ASLEEP
            } else {
                AWAKE
            },
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Curtail to sleep.
    pub async fn pause(&self) -> Result<()> {
        self.curtail(Curtail::Sleep).await
    }

    /// Wake up.
    pub async fn resume(&self) -> Result<()> {
        self.curtail(Curtail::Wakeup).await
    }

    /// `power` (LuxOS reports the PSU's watts); `None` when the miner does not say.
    pub async fn power_w(&self) -> Result<Option<f64>> {
        let v = self.command("power", None).await?;
        Ok(v.get("POWER")
            .and_then(|p| p.as_array())
            .and_then(|a| a.first())
            .and_then(|p| num(p, "Watts")))
    }

    /// Summary (+ power when available) as the agent's view. `paused` is what this client last
    /// commanded, or a zero hashrate when it has not commanded anything yet.
    pub async fn status(&self) -> Result<MinerStatus> {
        let summary = parse_summary(&self.command("summary", None).await?)?;
        let power_w = match self.power_w().await {
            Ok(p) => p,
            Err(e) if e.is_transient() => return Err(e),
            Err(_) => None,
        };
        let hashrate_hs = summary
            .hashrate_5s_hs
            .or(summary.hashrate_avg_hs)
            .unwrap_or(0.0);
        let paused = match self.state.load(Ordering::Relaxed) {
            ASLEEP => true,
            AWAKE => false,
            _ => hashrate_hs == 0.0,
        };
        Ok(MinerStatus {
            kind: MinerKind::Luxos,
            hashrate_hs,
            power_w,
            temperature_c: None,
            paused,
            connected: true,
            accepted: summary.accepted,
            rejected: summary.rejected,
            difficulty: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_parsing() {
        let v: Value = serde_json::from_str(
            r#"{"STATUS":[{"STATUS":"S","Code":300,"Msg":"ok"}],"SESSION":[{"SessionID":"AbC123"}]}"#,
        )
        .unwrap();
        assert_eq!(parse_session_id(&v).unwrap(), "AbC123");
        let bad: Value = serde_json::from_str(r#"{"SESSION":[{"SessionID":"a,b"}]}"#).unwrap();
        assert!(parse_session_id(&bad).is_err());
        let none: Value = serde_json::from_str(r#"{"SESSION":[]}"#).unwrap();
        assert!(parse_session_id(&none).is_err());
    }
}
