//! The built-in miner: a Stratum V1 client with a CPU SHA-256d hasher.
//!
//! Protocol as implemented (newline-delimited JSON-RPC over plain TCP; every message one line):
//! 1. optional `mining.configure(["version-rolling"], {"version-rolling.mask": "1fffe000",
//!    "version-rolling.min-bit-count": 2})` (BIP310); the pool's answer fixes the mask;
//! 2. `mining.subscribe([user_agent])` → `[subscriptions, extranonce1 hex, extranonce2_size]`;
//! 3. optional `mining.extranonce.subscribe([])`, after which `mining.set_extranonce(en1,
//!    size)` may replace the extranonces;
//! 4. `mining.authorize([user, password])` → `true`;
//! 5. the pool pushes `mining.set_difficulty([d])` and `mining.notify([job_id, prevhash, coinb1,
//!    coinb2, merkle_branch[], version, nbits, ntime, clean_jobs])`;
//! 6. shares go up as `mining.submit([user, job_id, extranonce2 hex, ntime hex, nonce hex
//!    (, version_bits hex)])` → `true` (accepted) or `false`/error (rejected).
//!
//! Hex conventions (see [`Job::from_notify`]): `prevhash` is the header's 32 bytes with each
//! 4-byte word byte-reversed; `version`, `nbits`, `ntime` and the submitted `nonce` are
//! big-endian hex of the integers (the header stores them little-endian); coinbase parts,
//! merkle branches and extranonces are raw bytes in order.
//!
//! Invariants: pause stops hashing and submitting but keeps the connection, reading and
//! answering the pool; a dropped connection is retried with capped exponential backoff; a line
//! longer than `max_line` or a malformed message is counted, logged and skipped, never a
//! crash; hashing runs in bounded batches on the blocking pool, so a new job or a pause takes
//! effect within one batch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::{Backoff, BackoffConfig};
use crate::error::{Error, Result};
use crate::sha256d::{
    build_coinbase, hex32, merkle_root, sha256d, BlockHeader, Hash256, HeaderHasher, Target,
};
use crate::{MinerKind, MinerStatus};

/// Largest job id accepted from a pool.
pub const MAX_JOB_ID: usize = 128;
/// Largest merkle branch (2^32 transactions would need 32 steps).
pub const MAX_MERKLE_BRANCH: usize = 32;
/// Largest extranonce1 / extranonce2, bytes.
pub const MAX_EXTRANONCE: usize = 32;
/// How many recent job ids still accept shares (cleared by `clean_jobs`).
const KEEP_JOBS: usize = 8;
/// Requests awaiting an answer; the oldest is forgotten beyond this.
const MAX_PENDING: usize = 1024;

/// Settings of the built-in miner.
#[derive(Debug, Clone)]
pub struct StratumConfig {
    /// `stratum+tcp://host:port` or `host:port`. TLS and Stratum V2 are refused.
    pub url: String,
    /// Worker name for `mining.authorize` and `mining.submit`.
    pub user: String,
    /// Password for `mining.authorize`.
    pub password: String,
    /// Sent in `mining.subscribe`.
    pub user_agent: String,
    /// Ask for BIP310 version rolling with `mining.configure`.
    pub version_rolling: bool,
    /// Send `mining.extranonce.subscribe` (then honour `mining.set_extranonce`).
    pub extranonce_subscribe: bool,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Limit of the TCP connect.
    pub connect_timeout: Duration,
    /// Subscribe + authorize must be answered within this.
    pub handshake_timeout: Duration,
    /// Limit of one write to the pool.
    pub write_timeout: Duration,
    /// Nonces hashed per batch (one blocking task); bounds the delay of a pause or new job.
    pub batch_size: u32,
    /// Nonces tried per (extranonce2, version) before moving on; `u32::MAX` (the default)
    /// means all 2^32; tests shrink it to exercise extranonce2 and version rolling.
    pub nonces_per_unit: u32,
    /// Longest accepted line from the pool, bytes.
    pub max_line: usize,
    /// Start paused (connected, not hashing).
    pub start_paused: bool,
}

impl StratumConfig {
    /// Defaults for a pool URL and worker.
    pub fn new(url: impl Into<String>, user: impl Into<String>) -> Self {
        StratumConfig {
            url: url.into(),
            user: user.into(),
            password: "x".into(),
            user_agent: concat!("hearth/", env!("CARGO_PKG_VERSION")).into(),
            version_rolling: false,
            extranonce_subscribe: false,
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            batch_size: 1 << 18,
            nonces_per_unit: u32::MAX,
            max_line: 16 * 1024,
            start_paused: false,
        }
    }
}

/// `host:port` from a pool URL.
pub fn parse_pool_url(url: &str) -> Result<String> {
    let url = url.trim();
    let rest = if let Some((scheme, rest)) = url.split_once("://") {
        match scheme.to_ascii_lowercase().as_str() {
            "stratum+tcp" | "tcp" | "stratum" => rest,
            other => {
                return Err(Error::Unsupported(format!(
                    "pool URL scheme {other:?} (only plain stratum+tcp; no TLS, no Stratum V2)"
                )))
            }
        }
    } else {
        url
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| Error::malformed("pool URL", format!("{url:?} has no :port")))?;
    if host.is_empty() || host.contains('/') {
        return Err(Error::malformed("pool URL", format!("{url:?} has no host")));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| Error::malformed("pool URL", format!("bad port in {url:?}")))?;
    Ok(format!("{host}:{port}"))
}

/// A mining job from `mining.notify`, decoded into header byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The pool's job id (echoed in submits).
    pub job_id: String,
    /// Previous block hash, header (internal) byte order.
    pub prev_blockhash: Hash256,
    /// Coinbase part before the extranonces.
    pub coinb1: Vec<u8>,
    /// Coinbase part after the extranonces.
    pub coinb2: Vec<u8>,
    /// Merkle branch hashes, internal order.
    pub merkle_branch: Vec<Hash256>,
    /// Block version.
    pub version: u32,
    /// Network target, compact.
    pub nbits: u32,
    /// Block time.
    pub ntime: u32,
    /// Drop all older jobs.
    pub clean_jobs: bool,
}

/// Stratum's `prevhash` hex (each 4-byte word reversed) → header bytes.
pub fn prevhash_from_stratum(hex: &str) -> Result<Hash256> {
    let mut b = hex32(hex, "notify prevhash")?;
    for word in b.chunks_exact_mut(4) {
        word.reverse();
    }
    Ok(b)
}

/// Header bytes → Stratum's `prevhash` hex.
pub fn prevhash_to_stratum(prev: &Hash256) -> String {
    let mut b = *prev;
    for word in b.chunks_exact_mut(4) {
        word.reverse();
    }
    hex::encode(b)
}

/// Big-endian 8-digit hex → u32.
pub fn parse_hex_u32(s: &str, what: &str) -> Result<u32> {
    if s.len() != 8 {
        return Err(Error::malformed(
            what,
            format!("expected 8 hex digits, got {s:?}"),
        ));
    }
    u32::from_str_radix(s, 16).map_err(|_| Error::malformed(what, format!("{s:?} is not hex")))
}

/// Hex → bytes with a length bound.
pub fn parse_hex_bytes(s: &str, max: usize, what: &str) -> Result<Vec<u8>> {
    if s.len() > 2 * max {
        return Err(Error::malformed(
            what,
            format!("{} hex digits, limit {}", s.len(), 2 * max),
        ));
    }
    hex::decode(s).map_err(|e| Error::malformed(what, e.to_string()))
}

fn str_param<'a>(p: &'a [Value], i: usize, what: &str) -> Result<&'a str> {
    p.get(i)
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::malformed(what, format!("param {i} is not a string")))
}

impl Job {
    /// Decodes the params of `mining.notify`. `max_coinbase` bounds each coinbase part.
    pub fn from_notify(params: &[Value], max_coinbase: usize) -> Result<Job> {
        const W: &str = "mining.notify";
        if params.len() < 9 {
            return Err(Error::malformed(
                W,
                format!("{} params, need 9", params.len()),
            ));
        }
        let job_id = str_param(params, 0, W)?;
        if job_id.is_empty() || job_id.len() > MAX_JOB_ID {
            return Err(Error::malformed(W, "job id empty or too long"));
        }
        let branch = params[4]
            .as_array()
            .ok_or_else(|| Error::malformed(W, "merkle branch is not an array"))?;
        if branch.len() > MAX_MERKLE_BRANCH {
            return Err(Error::malformed(
                W,
                format!("{} merkle branch entries", branch.len()),
            ));
        }
        let merkle_branch = branch
            .iter()
            .map(|b| {
                b.as_str()
                    .ok_or_else(|| Error::malformed(W, "merkle branch entry is not a string"))
                    .and_then(|s| hex32(s, "notify merkle branch"))
            })
            .collect::<Result<Vec<_>>>()?;
        let clean_jobs = params[8]
            .as_bool()
            .ok_or_else(|| Error::malformed(W, "clean_jobs is not a boolean"))?;
        Ok(Job {
            job_id: job_id.to_string(),
            prev_blockhash: prevhash_from_stratum(str_param(params, 1, W)?)?,
            coinb1: parse_hex_bytes(str_param(params, 2, W)?, max_coinbase, "notify coinb1")?,
            coinb2: parse_hex_bytes(str_param(params, 3, W)?, max_coinbase, "notify coinb2")?,
            merkle_branch,
            version: parse_hex_u32(str_param(params, 5, W)?, "notify version")?,
            nbits: parse_hex_u32(str_param(params, 6, W)?, "notify nbits")?,
            ntime: parse_hex_u32(str_param(params, 7, W)?, "notify ntime")?,
            clean_jobs,
        })
    }

    /// The params of `mining.notify` for this job (what a pool sends).
    pub fn to_notify_params(&self) -> Value {
        json!([
            self.job_id,
            prevhash_to_stratum(&self.prev_blockhash),
            hex::encode(&self.coinb1),
            hex::encode(&self.coinb2),
            self.merkle_branch
                .iter()
                .map(hex::encode)
                .collect::<Vec<_>>(),
            format!("{:08x}", self.version),
            format!("{:08x}", self.nbits),
            format!("{:08x}", self.ntime),
            self.clean_jobs,
        ])
    }

    /// The header for one extranonce pair and version, nonce 0.
    pub fn header(&self, extranonce1: &[u8], extranonce2: &[u8], version: u32) -> BlockHeader {
        let coinbase = build_coinbase(&self.coinb1, extranonce1, extranonce2, &self.coinb2);
        BlockHeader {
            version,
            prev_blockhash: self.prev_blockhash,
            merkle_root: merkle_root(&sha256d(&coinbase), &self.merkle_branch),
            time: self.ntime,
            bits: self.nbits,
            nonce: 0,
        }
    }
}

/// Formats a JSON-RPC `error` member (null, `[code, msg, data]`, object or string).
pub fn format_rpc_error(e: &Value) -> Option<String> {
    match e {
        Value::Null => None,
        Value::Array(a) => Some(format!(
            "{} {}",
            a.first().map(|c| c.to_string()).unwrap_or_default(),
            a.get(1).and_then(|m| m.as_str()).unwrap_or("")
        )),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// What one line from the pool means.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolMessage {
    /// An answer to one of our requests.
    Response {
        /// Our request id.
        id: u64,
        /// `result`.
        result: Value,
        /// `error`, formatted, when not null.
        error: Option<String>,
    },
    /// `mining.notify`.
    Notify(Job),
    /// `mining.set_difficulty`.
    SetDifficulty(f64),
    /// `mining.set_extranonce`.
    SetExtranonce {
        /// New extranonce1.
        extranonce1: Vec<u8>,
        /// New extranonce2 size.
        extranonce2_size: usize,
    },
    /// `client.reconnect` (we reconnect to the configured pool, never to a host it names).
    Reconnect,
    /// `client.get_version` (needs an answer).
    GetVersion {
        /// The pool's request id.
        id: Value,
    },
    /// `client.show_message`.
    ShowMessage(String),
    /// Another method; answered with an error when it has an id.
    Unknown {
        /// The method name (truncated).
        method: String,
        /// The id, null for notifications.
        id: Value,
    },
}

fn validate_extranonce2_size(n: &Value, what: &str) -> Result<usize> {
    n.as_u64()
        .filter(|n| (1..=MAX_EXTRANONCE as u64).contains(n))
        .map(|n| n as usize)
        .ok_or_else(|| Error::malformed(what, format!("extranonce2_size {n} not in 1..=32")))
}

/// Decodes one line from the pool.
pub fn parse_pool_line(line: &str, max_line: usize) -> Result<PoolMessage> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| Error::malformed("pool message", e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::malformed("pool message", "not a JSON object"))?;
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = obj.get("method").and_then(|m| m.as_str()) else {
        let id = id
            .as_u64()
            .ok_or_else(|| Error::malformed("pool response", "id is not a number we sent"))?;
        return Ok(PoolMessage::Response {
            id,
            result: obj.get("result").cloned().unwrap_or(Value::Null),
            error: obj.get("error").and_then(format_rpc_error),
        });
    };
    let empty = Vec::new();
    let params = obj
        .get("params")
        .and_then(|p| p.as_array())
        .unwrap_or(&empty);
    match method {
        "mining.notify" => Ok(PoolMessage::Notify(Job::from_notify(params, max_line / 2)?)),
        "mining.set_difficulty" => {
            let d = params
                .first()
                .and_then(|d| d.as_f64())
                .filter(|d| d.is_finite() && *d > 0.0)
                .ok_or_else(|| {
                    Error::malformed(
                        "mining.set_difficulty",
                        "difficulty is not a positive number",
                    )
                })?;
            Ok(PoolMessage::SetDifficulty(d))
        }
        "mining.set_extranonce" => {
            const W: &str = "mining.set_extranonce";
            let en1 = parse_hex_bytes(str_param(params, 0, W)?, MAX_EXTRANONCE, W)?;
            let size = validate_extranonce2_size(params.get(1).unwrap_or(&Value::Null), W)?;
            Ok(PoolMessage::SetExtranonce {
                extranonce1: en1,
                extranonce2_size: size,
            })
        }
        "client.reconnect" => Ok(PoolMessage::Reconnect),
        "client.get_version" => Ok(PoolMessage::GetVersion { id }),
        "client.show_message" => Ok(PoolMessage::ShowMessage(
            params
                .first()
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .chars()
                .take(512)
                .collect(),
        )),
        other => Ok(PoolMessage::Unknown {
            method: other.chars().take(64).collect(),
            id,
        }),
    }
}

/// One line event from [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineEvent {
    /// A complete line without its terminator.
    Line(String),
    /// A line longer than the limit; it was skipped up to its newline.
    TooLong,
    /// A line that is not UTF-8.
    NotUtf8,
    /// The peer closed the connection.
    Eof,
}

/// Newline-delimited reading with a bound on line length. Cancel-safe: the only await is one
/// `read` into an internal buffer, so it can sit in `select!` without losing data.
pub(crate) struct LineReader<R> {
    rd: R,
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(rd: R, max: usize) -> Self {
        LineReader {
            rd,
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    fn take_buffered(&mut self) -> Option<LineEvent> {
        let nl = self.buf.iter().position(|&b| b == b'\n');
        if self.discarding {
            match nl {
                Some(p) => {
                    self.buf.drain(..=p);
                    self.discarding = false;
                    return Some(LineEvent::TooLong);
                }
                None => {
                    self.buf.clear();
                    return None;
                }
            }
        }
        match nl {
            Some(p) if p > self.max => {
                self.buf.drain(..=p);
                Some(LineEvent::TooLong)
            }
            Some(p) => {
                let mut line: Vec<u8> = self.buf.drain(..=p).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Some(match String::from_utf8(line) {
                    Ok(s) => LineEvent::Line(s),
                    Err(_) => LineEvent::NotUtf8,
                })
            }
            None if self.buf.len() > self.max => {
                self.buf.clear();
                self.discarding = true;
                None
            }
            None => None,
        }
    }

    pub(crate) async fn next_line(&mut self) -> std::io::Result<LineEvent> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(ev) = self.take_buffered() {
                return Ok(ev);
            }
            let n = self.rd.read(&mut chunk).await?;
            if n == 0 {
                return Ok(LineEvent::Eof);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Writes one JSON line with a time limit.
pub(crate) async fn write_line<W: AsyncWrite + Unpin>(
    wr: &mut W,
    line: &str,
    limit: Duration,
) -> Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    match tokio::time::timeout(limit, wr.write_all(&bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::io("write to pool", e)),
        Err(_) => Err(Error::Timeout {
            what: "write to pool".into(),
            limit,
        }),
    }
}

/// A snapshot of the built-in miner's counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StratumStats {
    /// TCP connected to the pool.
    pub connected: bool,
    /// Authorized on the current connection.
    pub authorized: bool,
    /// Hashing paused.
    pub paused: bool,
    /// Current pool difficulty.
    pub difficulty: Option<f64>,
    /// Current job id.
    pub job_id: Option<String>,
    /// Current extranonce1, hex.
    pub extranonce1: Option<String>,
    /// Negotiated BIP310 mask.
    pub version_rolling_mask: Option<u32>,
    /// Hashes computed in total.
    pub hashes: u64,
    /// Recent hashrate, H/s (0 while paused or disconnected).
    pub hashrate_hs: f64,
    /// Shares found and submitted.
    pub submitted: u64,
    /// Shares the pool accepted.
    pub accepted: u64,
    /// Shares the pool rejected.
    pub rejected: u64,
    /// Successful TCP connections so far.
    pub connects: u64,
    /// Lines from the pool that were not valid messages.
    pub malformed_lines: u64,
    /// Lines longer than the limit.
    pub oversized_lines: u64,
    /// The latest problem (connection or protocol), for operators.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Control {
    paused: bool,
    shutdown: bool,
    epoch: u64,
}

struct Shared {
    stats: Mutex<StratumStats>,
    rate: Mutex<RateWindow>,
}

struct RateWindow {
    start: Instant,
    hashes: u64,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut StratumStats) -> T) -> T {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn problem(&self, msg: String) {
        tracing::warn!(problem = %msg, "stratum");
        self.with(|s| s.last_error = Some(msg));
    }

    fn add_hashes(&self, n: u64) {
        let mut w = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        w.hashes += n;
        let el = w.start.elapsed().as_secs_f64();
        let rate = if el > 0.0 { w.hashes as f64 / el } else { 0.0 };
        if el >= 2.0 {
            w.start = Instant::now();
            w.hashes = 0;
        }
        drop(w);
        self.with(|s| {
            s.hashes += n;
            s.hashrate_hs = rate;
        });
    }

    fn reset_rate(&self) {
        let mut w = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        w.start = Instant::now();
        w.hashes = 0;
        drop(w);
        self.with(|s| s.hashrate_hs = 0.0);
    }
}

/// The built-in Stratum CPU miner. Runs as a tokio task from [`BuiltinMiner::start`] until
/// [`BuiltinMiner::shutdown`] or drop.
pub struct BuiltinMiner {
    shared: Arc<Shared>,
    control: watch::Sender<Control>,
    ack: watch::Receiver<u64>,
    task: Mutex<Option<JoinHandle<()>>>,
    pool: String,
}

impl std::fmt::Debug for BuiltinMiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinMiner")
            .field("pool", &self.pool)
            .field("stats", &self.stats())
            .finish()
    }
}

impl BuiltinMiner {
    /// Validates the config and starts the client task (it connects in the background and
    /// keeps reconnecting). Must be called inside a tokio runtime.
    pub fn start(cfg: StratumConfig) -> Result<BuiltinMiner> {
        let addr = parse_pool_url(&cfg.url)?;
        if cfg.batch_size == 0 || cfg.nonces_per_unit == 0 {
            return Err(Error::Unsupported(
                "batch_size and nonces_per_unit must be positive".into(),
            ));
        }
        if cfg.max_line < 1024 {
            return Err(Error::Unsupported("max_line below 1024 bytes".into()));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Unsupported("BuiltinMiner::start outside a tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(StratumStats {
                paused: cfg.start_paused,
                ..Default::default()
            }),
            rate: Mutex::new(RateWindow {
                start: Instant::now(),
                hashes: 0,
            }),
        });
        let (control, control_rx) = watch::channel(Control {
            paused: cfg.start_paused,
            shutdown: false,
            epoch: 0,
        });
        let (ack_tx, ack) = watch::channel(0u64);
        let task = handle.spawn(run(addr.clone(), cfg, shared.clone(), control_rx, ack_tx));
        Ok(BuiltinMiner {
            shared,
            control,
            ack,
            task: Mutex::new(Some(task)),
            pool: addr,
        })
    }

    /// The pool's `host:port`.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    fn set(&self, f: impl FnOnce(&mut Control)) -> u64 {
        let mut epoch = 0;
        self.control.send_modify(|c| {
            f(c);
            c.epoch += 1;
            epoch = c.epoch;
        });
        epoch
    }

    /// Waits (at most 2 s) until the client task has seen control change `epoch`; it answers
    /// between two protocol steps. While it is connecting there is nothing to wait for: it
    /// reads the flag when the session starts.
    async fn acked(&self, epoch: u64) {
        let mut ack = self.ack.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), ack.wait_for(|seen| *seen >= epoch)).await;
    }

    /// Stops hashing and submitting; the pool connection stays up. When this returns, the
    /// client will submit nothing until [`Self::resume`].
    pub async fn pause(&self) {
        let epoch = self.set(|c| c.paused = true);
        self.shared.with(|s| s.paused = true);
        self.shared.reset_rate();
        self.acked(epoch).await;
    }

    /// Resumes hashing.
    pub async fn resume(&self) {
        let epoch = self.set(|c| c.paused = false);
        self.shared.with(|s| s.paused = false);
        self.shared.reset_rate();
        self.acked(epoch).await;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StratumStats {
        self.shared.with(|s| s.clone())
    }

    /// The agent's view.
    pub fn status(&self) -> MinerStatus {
        let s = self.stats();
        MinerStatus {
            kind: MinerKind::Builtin,
            hashrate_hs: if s.paused { 0.0 } else { s.hashrate_hs },
            power_w: None,
            temperature_c: None,
            paused: s.paused,
            connected: s.connected && s.authorized,
            accepted: s.accepted,
            rejected: s.rejected,
            difficulty: s.difficulty,
        }
    }

    /// Closes the connection and ends the task.
    pub async fn shutdown(&self) {
        self.set(|c| c.shutdown = true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for BuiltinMiner {
    fn drop(&mut self) {
        self.control.send_modify(|c| c.shutdown = true);
    }
}

async fn run(
    addr: String,
    cfg: StratumConfig,
    shared: Arc<Shared>,
    mut control: watch::Receiver<Control>,
    ack: watch::Sender<u64>,
) {
    let mut backoff = Backoff::new(cfg.backoff);
    let mut try_configure = cfg.version_rolling;
    loop {
        if control.borrow().shutdown {
            break;
        }
        let mut progress = Progress::default();
        let end = session(
            &addr,
            &cfg,
            try_configure,
            &shared,
            &mut control,
            &ack,
            &mut progress,
        )
        .await;
        shared.with(|s| {
            s.connected = false;
            s.authorized = false;
        });
        shared.reset_rate();
        match end {
            Ok(End::Shutdown) => break,
            Ok(End::Reconnect(why)) => shared.problem(format!("pool {addr}: {why}")),
            Err(e) => shared.problem(format!("pool {addr}: {e}")),
        }
        if progress.authorized {
            backoff.reset();
        }
        // Some pools drop clients that send a method they do not know: when the session died
        // before the subscribe answer, try the next one without `mining.configure`.
        if try_configure && !progress.subscribed && progress.connected {
            try_configure = false;
            tracing::info!(pool = %addr, "retrying without mining.configure");
        }
        let delay = backoff.next_delay();
        tracing::info!(pool = %addr, delay_ms = delay.as_millis() as u64, "reconnecting");
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                changed = control.changed() => {
                    let c = *control.borrow_and_update();
                    ack.send_replace(c.epoch);
                    if changed.is_err() || c.shutdown {
                        return;
                    }
                }
            }
        }
    }
    let epoch = control.borrow().epoch;
    ack.send_replace(epoch);
}

/// How far a session got.
#[derive(Debug, Default)]
struct Progress {
    connected: bool,
    subscribed: bool,
    authorized: bool,
}

enum End {
    Shutdown,
    Reconnect(String),
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Configure,
    Subscribe,
    ExtranonceSubscribe,
    Authorize,
    Submit,
}

/// One batch of nonces to hash.
struct WorkUnit {
    job: Arc<Job>,
    extranonce1: Vec<u8>,
    extranonce2: Vec<u8>,
    version: u32,
    version_bits: Option<u32>,
    nonce_start: u32,
    count: u32,
    target: Target,
}

struct Found {
    nonce: u32,
}

struct BatchResult {
    unit: WorkUnit,
    found: Vec<Found>,
    hashes: u64,
}

fn hash_batch(unit: WorkUnit) -> BatchResult {
    const MAX_FOUND: usize = 64;
    let header = unit
        .job
        .header(&unit.extranonce1, &unit.extranonce2, unit.version);
    let hasher = HeaderHasher::new(&header);
    let mut found = Vec::new();
    let mut hashes = 0u64;
    for i in 0..unit.count {
        let nonce = unit.nonce_start.wrapping_add(i);
        hashes += 1;
        if unit.target.is_met_by(&hasher.hash(nonce)) {
            found.push(Found { nonce });
            if found.len() >= MAX_FOUND {
                break;
            }
        }
    }
    BatchResult {
        unit,
        found,
        hashes,
    }
}

/// Spreads the low bits of `index` over the set bits of `mask`.
fn spread_bits(mut index: u32, mask: u32) -> u32 {
    let mut out = 0;
    let mut m = mask;
    while m != 0 && index != 0 {
        let low = m & m.wrapping_neg();
        if index & 1 == 1 {
            out |= low;
        }
        index >>= 1;
        m &= m - 1;
    }
    out
}

/// Per-connection protocol state.
struct Session {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    extranonce1: Option<Vec<u8>>,
    extranonce2_size: usize,
    difficulty: f64,
    job: Option<Arc<Job>>,
    live_jobs: VecDeque<String>,
    version_mask: Option<u32>,
    authorized: bool,
    /// Position in the search space: (extranonce2 counter, version roll index, nonce).
    en2_counter: u64,
    roll_index: u32,
    nonce_cursor: u64,
}

impl Session {
    fn request(&mut self, method: &str, params: Value, kind: Pending) -> String {
        let id = self.next_id;
        self.next_id += 1;
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_first();
        }
        self.pending.insert(id, kind);
        json!({"id": id, "method": method, "params": params}).to_string()
    }

    fn reset_search(&mut self) {
        self.en2_counter = 0;
        self.roll_index = 0;
        self.nonce_cursor = 0;
    }

    fn next_unit(&mut self, cfg: &StratumConfig) -> Option<WorkUnit> {
        let job = self.job.clone()?;
        let en1 = self.extranonce1.clone()?;
        let target = Target::from_difficulty(self.difficulty).ok()?;
        // u32::MAX stands for the whole 2^32 nonce range.
        let per_unit = match cfg.nonces_per_unit {
            u32::MAX => 1u64 << 32,
            n => u64::from(n),
        };
        let rolls = match self.version_mask {
            Some(m) if m != 0 => 1u32 << m.count_ones().min(8),
            _ => 1,
        };
        if self.nonce_cursor >= per_unit {
            self.nonce_cursor = 0;
            self.roll_index += 1;
            if self.roll_index >= rolls {
                self.roll_index = 0;
                self.en2_counter += 1;
            }
        }
        let count = (per_unit - self.nonce_cursor).min(u64::from(cfg.batch_size)) as u32;
        let nonce_start = self.nonce_cursor as u32;
        self.nonce_cursor += u64::from(count);
        let mut en2 = self.en2_counter.to_le_bytes().to_vec();
        en2.resize(self.extranonce2_size, 0);
        let (version, version_bits) = match self.version_mask {
            Some(mask) => {
                let rolled = (job.version & !mask) | spread_bits(self.roll_index, mask);
                (rolled, Some(rolled & mask))
            }
            None => (job.version, None),
        };
        Some(WorkUnit {
            job,
            extranonce1: en1,
            extranonce2: en2,
            version,
            version_bits,
            nonce_start,
            count,
            target,
        })
    }
}

async fn join_opt<T>(
    h: &mut Option<JoinHandle<T>>,
) -> std::result::Result<T, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn session(
    addr: &str,
    cfg: &StratumConfig,
    try_configure: bool,
    shared: &Shared,
    control: &mut watch::Receiver<Control>,
    ack: &watch::Sender<u64>,
    progress: &mut Progress,
) -> Result<End> {
    let stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("connect {addr}"),
            limit: cfg.connect_timeout,
        })?
        .map_err(|e| Error::io(format!("connect {addr}"), e))?;
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut lines = LineReader::new(rd, cfg.max_line);
    progress.connected = true;
    shared.with(|s| {
        s.connected = true;
        s.connects += 1;
    });
    tracing::info!(pool = %addr, "connected");

    let mut st = Session {
        next_id: 1,
        pending: BTreeMap::new(),
        extranonce1: None,
        extranonce2_size: 0,
        difficulty: 1.0,
        job: None,
        live_jobs: VecDeque::new(),
        version_mask: None,
        authorized: false,
        en2_counter: 0,
        roll_index: 0,
        nonce_cursor: 0,
    };
    if try_configure {
        let line = st.request(
            "mining.configure",
            json!([["version-rolling"], {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 2}]),
            Pending::Configure,
        );
        write_line(&mut wr, &line, cfg.write_timeout).await?;
    }
    let line = st.request(
        "mining.subscribe",
        json!([cfg.user_agent]),
        Pending::Subscribe,
    );
    write_line(&mut wr, &line, cfg.write_timeout).await?;

    let handshake_deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    let mut paused = control.borrow().paused;
    let mut batch: Option<JoinHandle<BatchResult>> = None;

    loop {
        if batch.is_none() && !paused && st.authorized {
            if let Some(unit) = st.next_unit(cfg) {
                batch = Some(tokio::task::spawn_blocking(move || hash_batch(unit)));
            }
        }
        tokio::select! {
            changed = control.changed() => {
                let c = *control.borrow_and_update();
                if changed.is_err() || c.shutdown {
                    ack.send_replace(c.epoch);
                    return Ok(End::Shutdown);
                }
                paused = c.paused;
                ack.send_replace(c.epoch);
            }
            ev = lines.next_line() => {
                let ev = ev.map_err(|e| Error::io(format!("read from {addr}"), e))?;
                match ev {
                    LineEvent::Eof => return Ok(End::Reconnect("pool closed the connection".into())),
                    LineEvent::TooLong => {
                        shared.with(|s| s.oversized_lines += 1);
                        shared.problem(format!("skipped a line longer than {} bytes", cfg.max_line));
                    }
                    LineEvent::NotUtf8 => {
                        shared.with(|s| s.malformed_lines += 1);
                        shared.problem("skipped a line that is not UTF-8".into());
                    }
                    LineEvent::Line(line) => {
                        if line.trim().is_empty() {
                            continue;
                        }
                        match parse_pool_line(&line, cfg.max_line) {
                            Ok(msg) => {
                                if let Some(end) = handle_message(msg, &mut st, cfg, shared, &mut wr, progress).await? {
                                    return Ok(end);
                                }
                            }
                            Err(e) => {
                                shared.with(|s| s.malformed_lines += 1);
                                shared.problem(format!("skipped a pool line: {e}"));
                            }
                        }
                    }
                }
            }
            res = join_opt(&mut batch) => {
                batch = None;
                let res = match res {
                    Ok(r) => r,
                    Err(e) => {
                        shared.problem(format!("hashing task failed: {e}"));
                        continue;
                    }
                };
                if paused {
                    continue; // nothing from before the pause is submitted
                }
                shared.add_hashes(res.hashes);
                let unit = &res.unit;
                let current_en1 = st.extranonce1.as_deref() == Some(&unit.extranonce1[..]);
                let live = st.live_jobs.iter().any(|j| *j == unit.job.job_id);
                if !current_en1 || !live {
                    continue; // stale: a clean job or a new extranonce1 arrived meanwhile
                }
                for f in &res.found {
                    if control.borrow().paused {
                        break; // a pause that arrived while we were writing
                    }
                    let mut params = vec![
                        json!(cfg.user),
                        json!(unit.job.job_id),
                        json!(hex::encode(&unit.extranonce2)),
                        json!(format!("{:08x}", unit.job.ntime)),
                        json!(format!("{:08x}", f.nonce)),
                    ];
                    if let Some(vb) = unit.version_bits {
                        params.push(json!(format!("{vb:08x}")));
                    }
                    let line = st.request("mining.submit", Value::Array(params), Pending::Submit);
                    write_line(&mut wr, &line, cfg.write_timeout).await?;
                    shared.with(|s| s.submitted += 1);
                }
            }
            _ = tokio::time::sleep_until(handshake_deadline), if !st.authorized => {
                return Err(Error::Timeout { what: format!("subscribe/authorize at {addr}"), limit: cfg.handshake_timeout });
            }
        }
    }
}

async fn handle_message<W: AsyncWrite + Unpin>(
    msg: PoolMessage,
    st: &mut Session,
    cfg: &StratumConfig,
    shared: &Shared,
    wr: &mut W,
    progress: &mut Progress,
) -> Result<Option<End>> {
    match msg {
        PoolMessage::Response { id, result, error } => {
            let Some(kind) = st.pending.remove(&id) else {
                shared.with(|s| s.malformed_lines += 1);
                shared.problem(format!("answer to unknown request id {id}"));
                return Ok(None);
            };
            match kind {
                Pending::Configure => {
                    let ok = result.get("version-rolling").and_then(|v| v.as_bool()) == Some(true);
                    let mask = result
                        .get("version-rolling.mask")
                        .and_then(|m| m.as_str())
                        .and_then(|m| parse_hex_u32(m, "version-rolling.mask").ok());
                    st.version_mask = match (ok, mask) {
                        (true, Some(m)) if m & 0x1fff_e000 != 0 => Some(m & 0x1fff_e000),
                        _ => None,
                    };
                    shared.with(|s| s.version_rolling_mask = st.version_mask);
                }
                Pending::Subscribe => {
                    if let Some(e) = error {
                        return Err(Error::Pool {
                            method: "mining.subscribe".into(),
                            detail: e,
                        });
                    }
                    let arr = result
                        .as_array()
                        .ok_or_else(|| Error::malformed("subscribe result", "not an array"))?;
                    let en1 = arr
                        .get(1)
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| Error::malformed("subscribe result", "no extranonce1"))
                        .and_then(|s| {
                            parse_hex_bytes(s, MAX_EXTRANONCE, "subscribe extranonce1")
                        })?;
                    let size = validate_extranonce2_size(
                        arr.get(2).unwrap_or(&Value::Null),
                        "subscribe result",
                    )?;
                    shared.with(|s| s.extranonce1 = Some(hex::encode(&en1)));
                    st.extranonce1 = Some(en1);
                    st.extranonce2_size = size;
                    progress.subscribed = true;
                    if cfg.extranonce_subscribe {
                        let line = st.request(
                            "mining.extranonce.subscribe",
                            json!([]),
                            Pending::ExtranonceSubscribe,
                        );
                        write_line(wr, &line, cfg.write_timeout).await?;
                    }
                    let line = st.request(
                        "mining.authorize",
                        json!([cfg.user, cfg.password]),
                        Pending::Authorize,
                    );
                    write_line(wr, &line, cfg.write_timeout).await?;
                }
                Pending::ExtranonceSubscribe => {
                    if let Some(e) = error {
                        tracing::info!(error = %e, "pool does not support mining.extranonce.subscribe");
                    }
                }
                Pending::Authorize => {
                    if result.as_bool() == Some(true) && error.is_none() {
                        st.authorized = true;
                        progress.authorized = true;
                        shared.with(|s| s.authorized = true);
                        tracing::info!(user = %cfg.user, "authorized");
                    } else {
                        return Err(Error::Pool {
                            method: "mining.authorize".into(),
                            detail: error.unwrap_or_else(|| format!("result {result}")),
                        });
                    }
                }
                Pending::Submit => {
                    if result.as_bool() == Some(true) && error.is_none() {
                        shared.with(|s| s.accepted += 1);
                    } else {
                        shared.with(|s| s.rejected += 1);
                        tracing::info!(error = ?error, "share rejected");
                    }
                }
            }
        }
        PoolMessage::Notify(job) => {
            if job.clean_jobs {
                st.live_jobs.clear();
            }
            st.live_jobs.push_back(job.job_id.clone());
            while st.live_jobs.len() > KEEP_JOBS {
                st.live_jobs.pop_front();
            }
            shared.with(|s| s.job_id = Some(job.job_id.clone()));
            st.job = Some(Arc::new(job));
            st.reset_search();
        }
        PoolMessage::SetDifficulty(d) => {
            st.difficulty = d;
            shared.with(|s| s.difficulty = Some(d));
        }
        PoolMessage::SetExtranonce {
            extranonce1,
            extranonce2_size,
        } => {
            shared.with(|s| s.extranonce1 = Some(hex::encode(&extranonce1)));
            st.extranonce1 = Some(extranonce1);
            st.extranonce2_size = extranonce2_size;
            st.reset_search();
        }
        PoolMessage::Reconnect => {
            return Ok(Some(End::Reconnect("pool asked to reconnect".into())))
        }
        PoolMessage::GetVersion { id } => {
            let line = json!({"id": id, "result": cfg.user_agent, "error": null}).to_string();
            write_line(wr, &line, cfg.write_timeout).await?;
        }
        PoolMessage::ShowMessage(m) => tracing::info!(message = %m, "pool message"),
        PoolMessage::Unknown { method, id } => {
            tracing::debug!(%method, "unsupported pool method");
            if !id.is_null() {
                let line =
                    json!({"id": id, "result": null, "error": [20, "Unsupported method", null]})
                        .to_string();
                write_line(wr, &line, cfg.write_timeout).await?;
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_urls() {
        assert_eq!(
            parse_pool_url("stratum+tcp://pool.example:3333").unwrap(),
            "pool.example:3333"
        );
        assert_eq!(parse_pool_url("127.0.0.1:1").unwrap(), "127.0.0.1:1");
        assert!(matches!(
            parse_pool_url("stratum+ssl://p:1"),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            parse_pool_url("stratum2+tcp://p:1"),
            Err(Error::Unsupported(_))
        ));
        assert!(parse_pool_url("stratum+tcp://p").is_err());
        assert!(parse_pool_url("p:99999").is_err());
    }

    #[test]
    fn prevhash_word_order_matches_a_real_notify() {
        // A notify from a public pool and the block explorer's form of the same hash.
        let prev = prevhash_from_stratum(
            "2054771533c6373887fb44c6081b230c58336592000189f80000000000000000",
        )
        .unwrap();
        assert_eq!(
            crate::sha256d::to_display_hex(&prev),
            "0000000000000000000189f858336592081b230c87fb44c633c6373820547715"
        );
        assert_eq!(
            prevhash_to_stratum(&prev),
            "2054771533c6373887fb44c6081b230c58336592000189f80000000000000000"
        );
    }

    #[test]
    fn notify_parsing_and_limits() {
        let line = r#"{"params":["6920bab400003e78","2054771533c6373887fb44c6081b230c58336592000189f80000000000000000","0100","0a00",[],"20000000","1701e2a0","6927b489",true],"id":null,"method":"mining.notify"}"#;
        match parse_pool_line(line, 16384).unwrap() {
            PoolMessage::Notify(j) => {
                assert_eq!(j.job_id, "6920bab400003e78");
                assert_eq!(j.version, 0x2000_0000);
                assert_eq!(j.nbits, 0x1701_e2a0);
                assert_eq!(j.ntime, 0x6927_b489);
                assert!(j.clean_jobs);
                assert_eq!(j.coinb1, vec![1, 0]);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "not json",
            "[1,2]",
            r#"{"id":null,"method":"mining.notify","params":[1,2]}"#,
            r#"{"id":null,"method":"mining.notify","params":["j","zz","","",[],"20000000","1701e2a0","6927b489",true]}"#,
            r#"{"id":null,"method":"mining.set_difficulty","params":[-1]}"#,
            r#"{"id":null,"method":"mining.set_extranonce","params":["abcd",0]}"#,
            r#"{"id":"x","result":true,"error":null}"#,
        ] {
            assert!(parse_pool_line(bad, 16384).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..33).map(|_| "00".repeat(32)).collect();
        let line = json!({"id":null,"method":"mining.notify","params":["j","00".repeat(32),"","",many,"20000000","1701e2a0","6927b489",true]}).to_string();
        assert!(parse_pool_line(&line, 1 << 20).is_err());
    }

    #[test]
    fn spread_bits_uses_only_mask_bits() {
        let mask = 0x1fff_e000;
        assert_eq!(spread_bits(0, mask), 0);
        assert_eq!(spread_bits(1, mask), 0x2000);
        assert_eq!(spread_bits(2, mask), 0x4000);
        assert_eq!(spread_bits(3, mask), 0x6000);
        for i in 0..300 {
            assert_eq!(spread_bits(i, mask) & !mask, 0);
        }
    }

    #[tokio::test]
    async fn line_reader_bounds_and_recovers() {
        let mut data = Vec::new();
        data.extend_from_slice(b"short\n");
        data.extend(std::iter::repeat_n(b'a', 5000));
        data.extend_from_slice(b"\nafter\r\n");
        data.extend_from_slice(&[0xff, 0xfe, b'\n']);
        data.extend_from_slice(b"tail");
        let mut r = LineReader::new(&data[..], 1024);
        assert_eq!(
            r.next_line().await.unwrap(),
            LineEvent::Line("short".into())
        );
        assert_eq!(r.next_line().await.unwrap(), LineEvent::TooLong);
        assert_eq!(
            r.next_line().await.unwrap(),
            LineEvent::Line("after".into())
        );
        assert_eq!(r.next_line().await.unwrap(), LineEvent::NotUtf8);
        assert_eq!(r.next_line().await.unwrap(), LineEvent::Eof);
    }
}
