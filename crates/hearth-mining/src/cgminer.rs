//! Client for the cgminer/bmminer JSON API (TCP 4028), the control port of most ASIC miners.
//!
//! The protocol, as implemented: open a TCP connection, write one JSON object
//! `{"command":"<cmd>"}` or `{"command":"<cmd>","parameter":"<p>"}`, read the reply until the
//! miner closes the connection or sends a NUL byte (cgminer terminates JSON replies with `\0`),
//! parse it. Every reply has a `STATUS` array whose first entry has `STATUS` (`S` success, `I`
//! info, `W` warning, `E` error, `F` fatal), `Code`, `Msg`, `When`. `E`/`F` become
//! [`Error::Refused`] carrying `Msg`. Write commands (`enablepool`, `disablepool`) need the miner
//! to run with `--api-allow W:<addr>`; otherwise it answers `E`, code 45 "Access denied".
//!
//! Invariants: one connection per request; connect and the whole exchange are bounded by
//! timeouts; a reply larger than [`ApiConfig::max_reply`] is refused before it is parsed;
//! numbers are read leniently (bmminer sends some as strings) and missing fields are `None`.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::{MinerKind, MinerStatus};

/// Limits of one API exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiConfig {
    /// Limit for the TCP connect.
    pub connect_timeout: Duration,
    /// Limit for writing the request and reading the whole reply.
    pub io_timeout: Duration,
    /// Largest accepted reply in bytes.
    pub max_reply: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(5),
            max_reply: 1 << 20,
        }
    }
}

/// The first entry of a reply's `STATUS` array.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiStatus {
    /// `S`, `I`, `W`, `E` or `F`.
    pub status: String,
    /// Message code.
    pub code: i64,
    /// Message text.
    pub msg: String,
    /// Miner's clock, Unix seconds.
    pub when: Option<i64>,
    /// Software description (e.g. `cgminer 4.11.1`).
    pub description: Option<String>,
}

/// One request/reply exchange; returns the parsed reply after checking its STATUS.
pub(crate) async fn api_request(
    addr: &str,
    cfg: &ApiConfig,
    command: &str,
    parameter: Option<&str>,
) -> Result<Value> {
    let mut req = serde_json::Map::new();
    req.insert("command".into(), Value::String(command.into()));
    if let Some(p) = parameter {
        req.insert("parameter".into(), Value::String(p.into()));
    }
    let req = Value::Object(req).to_string();

    let mut stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("connect {addr}"),
            limit: cfg.connect_timeout,
        })?
        .map_err(|e| Error::io(format!("connect {addr}"), e))?;

    let exchange = async {
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| Error::io(format!("send `{command}` to {addr}"), e))?;
        read_reply(&mut stream, cfg.max_reply, addr, command).await
    };
    let raw = tokio::time::timeout(cfg.io_timeout, exchange)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("reply to `{command}` from {addr}"),
            limit: cfg.io_timeout,
        })??;
    let value = parse_reply(&raw, command)?;
    check_status(&value, command)?;
    Ok(value)
}

/// Reads until EOF, the first NUL byte, or a complete JSON value (for firmwares that neither
/// close nor terminate), refusing more than `max` bytes.
async fn read_reply(
    stream: &mut TcpStream,
    max: usize,
    addr: &str,
    command: &str,
) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Error::io(format!("read reply to `{command}` from {addr}"), e))?;
        if n == 0 {
            break;
        }
        let data = &chunk[..n];
        let (data, done) = match data.iter().position(|&b| b == 0) {
            Some(p) => (&data[..p], true),
            None => (data, false),
        };
        if buf.len() + data.len() > max {
            return Err(Error::TooLarge {
                what: format!("reply to `{command}` from {addr}"),
                limit: max,
            });
        }
        buf.extend_from_slice(data);
        if done || is_complete_json(&buf) {
            break;
        }
    }
    Ok(buf)
}

fn is_complete_json(buf: &[u8]) -> bool {
    buf.iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b'}')
        && serde_json::from_slice::<serde::de::IgnoredAny>(buf).is_ok()
}

/// Parses a reply body (without its terminator).
pub fn parse_reply(raw: &[u8], command: &str) -> Result<Value> {
    let text = std::str::from_utf8(raw)
        .map_err(|e| Error::malformed(format!("reply to `{command}`"), e.to_string()))?;
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if text.is_empty() {
        return Err(Error::malformed(
            format!("reply to `{command}`"),
            "empty reply",
        ));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::malformed(format!("reply to `{command}`"), e.to_string()))?;
    if !v.is_object() {
        return Err(Error::malformed(
            format!("reply to `{command}`"),
            "not a JSON object",
        ));
    }
    Ok(v)
}

/// Reads the first `STATUS` entry.
pub fn api_status(v: &Value, command: &str) -> Result<ApiStatus> {
    let st = v
        .get("STATUS")
        .and_then(|s| s.as_array())
        .and_then(|a| a.first())
        .ok_or_else(|| Error::malformed(format!("reply to `{command}`"), "no STATUS array"))?;
    let status = st
        .get("STATUS")
        .and_then(|s| s.as_str())
        .ok_or_else(|| {
            Error::malformed(
                format!("reply to `{command}`"),
                "STATUS has no STATUS field",
            )
        })?
        .to_string();
    Ok(ApiStatus {
        status,
        code: num(st, "Code").map(|c| c as i64).unwrap_or(-1),
        msg: st
            .get("Msg")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string(),
        when: num(st, "When").map(|w| w as i64),
        description: st
            .get("Description")
            .and_then(|d| d.as_str())
            .map(str::to_string),
    })
}

fn check_status(v: &Value, command: &str) -> Result<()> {
    let st = api_status(v, command)?;
    match st.status.as_str() {
        "S" | "I" | "W" => Ok(()),
        "E" | "F" => Err(Error::Refused {
            command: command.to_string(),
            status: st.status,
            code: st.code,
            msg: st.msg,
        }),
        other => Err(Error::malformed(
            format!("reply to `{command}`"),
            format!("unknown STATUS {other:?}"),
        )),
    }
}

/// A number field that may be sent as a JSON number or a numeric string.
pub(crate) fn num(v: &Value, key: &str) -> Option<f64> {
    match v.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(|s| s.as_str()).map(str::to_string)
}

/// Hashrate in H/s from whichever unit the firmware uses (`MHS`, `GHS`, `THS`, `KHS`).
fn hashrate(v: &Value, suffix: &str) -> Option<f64> {
    [("KHS", 1e3), ("MHS", 1e6), ("GHS", 1e9), ("THS", 1e12)]
        .iter()
        .find_map(|(unit, scale)| num(v, &format!("{unit} {suffix}")).map(|x| x * scale))
}

/// The entries of a reply's section (`SUMMARY`, `DEVS`, `POOLS`), bounded in count.
fn section<'a>(v: &'a Value, name: &str, command: &str) -> Result<&'a [Value]> {
    const MAX_ENTRIES: usize = 4096;
    let a = v.get(name).and_then(|s| s.as_array()).ok_or_else(|| {
        Error::malformed(format!("reply to `{command}`"), format!("no {name} array"))
    })?;
    if a.len() > MAX_ENTRIES {
        return Err(Error::malformed(
            format!("reply to `{command}`"),
            format!("{} {name} entries (limit {MAX_ENTRIES})", a.len()),
        ));
    }
    Ok(a)
}

/// The `summary` command's totals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// Seconds since the miner started.
    pub elapsed_s: Option<f64>,
    /// Average hashrate since start, H/s.
    pub hashrate_avg_hs: Option<f64>,
    /// Hashrate over the last 5 s, H/s.
    pub hashrate_5s_hs: Option<f64>,
    /// Accepted shares.
    pub accepted: u64,
    /// Rejected shares.
    pub rejected: u64,
    /// Hardware errors.
    pub hardware_errors: u64,
}

/// One device (`devs` command).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Device {
    /// Index (`ASC`, `GPU`, `PGA` or `ID`).
    pub id: Option<u64>,
    /// Driver or chip name.
    pub name: Option<String>,
    /// `Enabled` == "Y".
    pub enabled: bool,
    /// `Status` (e.g. "Alive", "Sick", "Dead").
    pub status: Option<String>,
    /// Temperature, °C.
    pub temperature_c: Option<f64>,
    /// Average hashrate, H/s.
    pub hashrate_avg_hs: Option<f64>,
    /// 5-second hashrate, H/s.
    pub hashrate_5s_hs: Option<f64>,
    /// Accepted shares.
    pub accepted: u64,
    /// Rejected shares.
    pub rejected: u64,
}

/// One configured pool (`pools` command).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolInfo {
    /// The pool index the write commands take.
    pub id: u32,
    /// Pool URL.
    pub url: String,
    /// `Status`: "Alive", "Dead", "Disabled", "Rejecting".
    pub status: String,
    /// Priority (0 is first).
    pub priority: Option<i64>,
    /// Worker name.
    pub user: Option<String>,
    /// Accepted shares.
    pub accepted: u64,
    /// Rejected shares.
    pub rejected: u64,
    /// Whether the miner's stratum connection to it is active.
    pub stratum_active: Option<bool>,
}

impl PoolInfo {
    /// True unless the pool is disabled.
    pub fn is_enabled(&self) -> bool {
        !self.status.eq_ignore_ascii_case("disabled")
    }
}

fn count(v: &Value, key: &str) -> u64 {
    num(v, key).map(|x| x.max(0.0) as u64).unwrap_or(0)
}

/// Decodes a `summary` reply.
pub fn parse_summary(v: &Value) -> Result<Summary> {
    let s = section(v, "SUMMARY", "summary")?
        .first()
        .ok_or_else(|| Error::malformed("reply to `summary`", "empty SUMMARY"))?;
    Ok(Summary {
        elapsed_s: num(s, "Elapsed"),
        hashrate_avg_hs: hashrate(s, "av"),
        hashrate_5s_hs: hashrate(s, "5s"),
        accepted: count(s, "Accepted"),
        rejected: count(s, "Rejected"),
        hardware_errors: count(s, "Hardware Errors"),
    })
}

/// Decodes a `devs` reply (an empty or missing `DEVS` array is "no devices").
pub fn parse_devs(v: &Value) -> Result<Vec<Device>> {
    let Some(_) = v.get("DEVS") else {
        return Ok(Vec::new());
    };
    Ok(section(v, "DEVS", "devs")?
        .iter()
        .map(|d| Device {
            id: ["ASC", "GPU", "PGA", "ID"]
                .iter()
                .find_map(|k| num(d, k))
                .map(|x| x as u64),
            name: text(d, "Name"),
            enabled: d.get("Enabled").and_then(|e| e.as_str()) == Some("Y"),
            status: text(d, "Status"),
            temperature_c: num(d, "Temperature"),
            hashrate_avg_hs: hashrate(d, "av"),
            hashrate_5s_hs: hashrate(d, "5s"),
            accepted: count(d, "Accepted"),
            rejected: count(d, "Rejected"),
        })
        .collect())
}

/// Decodes a `pools` reply.
pub fn parse_pools(v: &Value) -> Result<Vec<PoolInfo>> {
    let Some(_) = v.get("POOLS") else {
        return Ok(Vec::new());
    };
    section(v, "POOLS", "pools")?
        .iter()
        .map(|p| {
            let id = num(p, "POOL")
                .filter(|x| *x >= 0.0 && *x <= f64::from(u32::MAX))
                .ok_or_else(|| Error::malformed("reply to `pools`", "a pool without POOL index"))?;
            Ok(PoolInfo {
                id: id as u32,
                url: text(p, "URL").unwrap_or_default(),
                status: text(p, "Status").unwrap_or_default(),
                priority: num(p, "Priority").map(|x| x as i64),
                user: text(p, "User"),
                accepted: count(p, "Accepted"),
                rejected: count(p, "Rejected"),
                stratum_active: p.get("Stratum Active").and_then(|b| b.as_bool()),
            })
        })
        .collect()
}

/// A cgminer/bmminer API client for one miner.
#[derive(Debug)]
pub struct CgminerClient {
    addr: String,
    cfg: ApiConfig,
    /// Pools this client disabled in `pause`, re-enabled by `resume`.
    paused_pools: Mutex<Option<Vec<u32>>>,
}

impl CgminerClient {
    /// A client for `host:port` (usually port 4028) with default limits.
    pub fn new(addr: impl Into<String>) -> Self {
        Self::with_config(addr, ApiConfig::default())
    }

    /// A client with explicit limits.
    pub fn with_config(addr: impl Into<String>, cfg: ApiConfig) -> Self {
        CgminerClient {
            addr: addr.into(),
            cfg,
            paused_pools: Mutex::new(None),
        }
    }

    /// The miner's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The limits in use.
    pub fn config(&self) -> &ApiConfig {
        &self.cfg
    }

    /// Sends any command; returns the whole reply after checking its STATUS.
    pub async fn command(&self, command: &str, parameter: Option<&str>) -> Result<Value> {
        api_request(&self.addr, &self.cfg, command, parameter).await
    }

    /// `summary`.
    pub async fn summary(&self) -> Result<Summary> {
        parse_summary(&self.command("summary", None).await?)
    }

    /// `devs`.
    pub async fn devs(&self) -> Result<Vec<Device>> {
        parse_devs(&self.command("devs", None).await?)
    }

    /// `pools`.
    pub async fn pools(&self) -> Result<Vec<PoolInfo>> {
        parse_pools(&self.command("pools", None).await?)
    }

    /// `enablepool|<id>` (an "already enabled" info reply is success).
    pub async fn enable_pool(&self, id: u32) -> Result<()> {
        self.command("enablepool", Some(&id.to_string()))
            .await
            .map(drop)
    }

    /// `disablepool|<id>`. Stock cgminer refuses to disable the last enabled pool (code 51,
    /// "Cannot disable last active pool"); that comes back as [`Error::Refused`].
    pub async fn disable_pool(&self, id: u32) -> Result<()> {
        self.command("disablepool", Some(&id.to_string()))
            .await
            .map(drop)
    }

    /// Stops mining by disabling every enabled pool; remembers which, for [`Self::resume`].
    pub async fn pause(&self) -> Result<()> {
        let pools = self.pools().await?;
        let mut disabled = Vec::new();
        let mut result = Ok(());
        for p in pools.iter().filter(|p| p.is_enabled()) {
            match self.disable_pool(p.id).await {
                Ok(()) => disabled.push(p.id),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Remember even a partial pause so that resume undoes it.
        let mut guard = self.paused_pools.lock().unwrap_or_else(|e| e.into_inner());
        let entry = guard.get_or_insert_with(Vec::new);
        for id in disabled {
            if !entry.contains(&id) {
                entry.push(id);
            }
        }
        result
    }

    /// Re-enables the pools [`Self::pause`] disabled (none if it found them all disabled
    /// already), or every disabled pool when this client has not paused the miner (e.g. the
    /// agent restarted).
    pub async fn resume(&self) -> Result<()> {
        let remembered = self
            .paused_pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let ids = match remembered {
            Some(ids) => ids,
            None => self
                .pools()
                .await?
                .into_iter()
                .filter(|p| !p.is_enabled())
                .map(|p| p.id)
                .collect(),
        };
        for id in &ids {
            self.enable_pool(*id).await?;
        }
        *self.paused_pools.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Summary + pools + devs folded into the agent's view. Paused means every pool is
    /// disabled.
    pub async fn status(&self) -> Result<MinerStatus> {
        let summary = self.summary().await?;
        let pools = self.pools().await?;
        // Temperatures are optional: some firmwares have no `devs` or no Temperature there.
        let temperature_c = match self.devs().await {
            Ok(devs) => devs
                .iter()
                .filter_map(|d| d.temperature_c)
                .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t)))),
            Err(Error::Refused { .. }) | Err(Error::Malformed { .. }) => None,
            Err(e) => return Err(e),
        };
        let paused = !pools.is_empty() && pools.iter().all(|p| !p.is_enabled());
        Ok(MinerStatus {
            kind: MinerKind::Cgminer,
            hashrate_hs: summary
                .hashrate_5s_hs
                .or(summary.hashrate_avg_hs)
                .unwrap_or(0.0),
            power_w: None,
            temperature_c,
            paused,
            connected: pools
                .iter()
                .any(|p| p.is_enabled() && p.status.eq_ignore_ascii_case("alive")),
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
    fn parses_bmminer_style_strings_and_ghs() {
        let v = parse_reply(
            br#"{"STATUS":[{"STATUS":"S","When":1,"Code":11,"Msg":"Summary","Description":"bmminer 1.0.0"}],"SUMMARY":[{"Elapsed":100,"GHS 5s":"13500.50","GHS av":13400.0,"Accepted":7,"Rejected":1,"Hardware Errors":2}],"id":1}"#,
            "summary",
        )
        .unwrap();
        let s = parse_summary(&v).unwrap();
        assert_eq!(s.hashrate_5s_hs, Some(13500.5e9));
        assert_eq!(s.hashrate_avg_hs, Some(13400e9));
        assert_eq!((s.accepted, s.rejected, s.hardware_errors), (7, 1, 2));
    }

    #[test]
    fn status_e_is_an_error_with_msg() {
        let v = parse_reply(
            b"{\"STATUS\":[{\"STATUS\":\"E\",\"When\":1,\"Code\":45,\"Msg\":\"Access denied to 'enablepool' command\",\"Description\":\"cgminer\"}],\"id\":1}\0",
            "enablepool",
        )
        .unwrap();
        match check_status(&v, "enablepool") {
            Err(Error::Refused { code, msg, .. }) => {
                assert_eq!(code, 45);
                assert!(msg.contains("Access denied"));
            }
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    #[test]
    fn malformed_replies_are_clear_errors() {
        assert!(matches!(
            parse_reply(b"", "x"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            parse_reply(b"{\"STATUS\":", "x"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            parse_reply(b"[1,2]", "x"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            parse_reply(&[0xff, 0xfe], "x"),
            Err(Error::Malformed { .. })
        ));
        let v = parse_reply(b"{\"id\":1}", "x").unwrap();
        assert!(matches!(
            check_status(&v, "x"),
            Err(Error::Malformed { .. })
        ));
        let v = parse_reply(
            br#"{"STATUS":[{"STATUS":"S"}],"POOLS":[{"URL":"x"}]}"#,
            "pools",
        )
        .unwrap();
        assert!(matches!(parse_pools(&v), Err(Error::Malformed { .. })));
    }
}
