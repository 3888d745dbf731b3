//! Local servers that speak each control protocol byte for byte, for tests (this crate's and
//! the energy agent's). Nothing here is meant for production; everything binds 127.0.0.1 on an
//! ephemeral port.
//!
//! - [`TestPool`]: a Stratum V1 pool. Answers configure/subscribe/extranonce.subscribe/
//!   authorize, sends `set_difficulty` and a realistic `notify` (a real coinbase layout around
//!   the extranonces, a two-step merkle branch, block 125552's hash as prevhash), and verifies
//!   every `mining.submit` by rebuilding coinbase → merkle root → header and hashing it against
//!   the share target (errors 21 stale job, 22 duplicate, 23 low difficulty, 24 unauthorized).
//!   The test can push new jobs, `set_extranonce`, `client.get_version`, raw lines, or drop
//!   connections.
//! - [`TestMinerApi`]: a cgminer/bmminer API on one port (one JSON request per connection,
//!   NUL-terminated reply) that tracks pool enabled state; in LuxOS mode it adds
//!   `logon`/`logoff`/`curtail`/`power` with session checks. It can also accept and never
//!   answer, to test timeouts.
//!
//! Waiting is event driven: every state change bumps a watch channel, and `wait_until` checks a
//! predicate on each change, up to a deadline.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::sha256d::{from_display_hex, sha256d, Hash256, Target};
use crate::stratum::{parse_hex_u32, write_line, Job, LineEvent, LineReader};

/// Settings of a [`TestPool`].
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Share difficulty sent with `mining.set_difficulty` (tiny, so a CPU finds shares fast).
    pub difficulty: f64,
    /// extranonce2 size given in the subscribe result.
    pub extranonce2_size: usize,
    /// Mask granted to `mining.configure` version-rolling; `None` refuses version rolling.
    pub version_rolling_mask: Option<u32>,
    /// Close this many connections right after accepting them (reconnect tests).
    pub close_first: u32,
    /// Only this worker is authorized (`None`: anyone).
    pub require_user: Option<String>,
    /// Hang up on `mining.configure`, as some pools do with methods they do not know.
    pub drop_on_configure: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            // About 2^14 hashes per share on average.
            difficulty: 1.0 / 262_144.0,
            extranonce2_size: 4,
            version_rolling_mask: Some(0x1fff_e000),
            close_first: 0,
            require_user: None,
            drop_on_configure: false,
        }
    }
}

/// One accepted share, as the pool verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    /// Connection index (0-based).
    pub conn: u64,
    /// Job id.
    pub job_id: String,
    /// extranonce1 of the connection when the share was checked.
    pub extranonce1: Vec<u8>,
    /// extranonce2 submitted.
    pub extranonce2: Vec<u8>,
    /// Nonce submitted.
    pub nonce: u32,
    /// Block version used (after version rolling).
    pub version: u32,
    /// The header hash, internal order.
    pub hash: Hash256,
}

/// What the pool saw.
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections that ended (either side).
    pub disconnects: u64,
    /// When each connection was accepted.
    pub connect_times: Vec<Instant>,
    /// Methods received, in order, per connection.
    pub methods: Vec<Vec<String>>,
    /// `mining.submit` requests received.
    pub submits: u64,
    /// Shares accepted.
    pub accepted: Vec<ShareRecord>,
    /// Reasons of rejected shares.
    pub rejected: Vec<String>,
    /// Answers to `client.get_version`.
    pub versions: Vec<String>,
    /// Error answers the client sent to requests it does not support.
    pub client_errors: u64,
}

#[derive(Debug, Clone)]
enum PoolCommand {
    Raw(String),
    NewJob { clean: bool },
    SetExtranonce { extranonce1: Vec<u8>, size: usize },
    AskVersion,
    Close,
}

struct PoolShared {
    opts: PoolOptions,
    stats: Mutex<PoolStats>,
    changed: watch::Sender<u64>,
    cmds: broadcast::Sender<PoolCommand>,
}

impl PoolShared {
    fn update<T>(&self, f: impl FnOnce(&mut PoolStats) -> T) -> T {
        let r = f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_modify(|v| *v += 1);
        r
    }
}

/// A local Stratum V1 pool that verifies shares.
pub struct TestPool {
    addr: SocketAddr,
    shared: Arc<PoolShared>,
    task: JoinHandle<()>,
}

impl Drop for TestPool {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.shared.cmds.send(PoolCommand::Close);
    }
}

/// Waits on a watch-bumped predicate with a deadline.
async fn wait_on<S: Clone>(
    mut rx: watch::Receiver<u64>,
    snapshot: impl Fn() -> S,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&S) -> bool,
) -> std::result::Result<S, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        rx.borrow_and_update();
        let s = snapshot();
        if pred(&s) {
            return Ok(s);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                let s = snapshot();
                return if pred(&s) {
                    Ok(s)
                } else {
                    Err(format!("timed out after {timeout:?} waiting for {what}"))
                };
            }
        }
    }
}

/// The job a test pool sends: a real coinbase layout with the extranonces inside the scriptSig.
pub fn make_job(seq: u32, extranonce1_len: usize, extranonce2_len: usize, clean: bool) -> Job {
    let tag = format!("/hearth-test/{seq:08x}/");
    let script_len = 4 + extranonce1_len + extranonce2_len + tag.len();
    let mut coinb1 = Vec::new();
    coinb1.extend_from_slice(&1u32.to_le_bytes()); // tx version
    coinb1.push(1); // one input
    coinb1.extend_from_slice(&[0u8; 32]); // null outpoint
    coinb1.extend_from_slice(&[0xff; 4]);
    coinb1.push(script_len as u8); // < 0xfd: one-byte varint
    coinb1.extend_from_slice(&[0x03, 0x71, 0xea, 0x01]); // BIP34 height 125553
    let mut coinb2 = Vec::new();
    coinb2.extend_from_slice(tag.as_bytes());
    coinb2.extend_from_slice(&[0xff; 4]); // sequence
    coinb2.push(1); // one output
    coinb2.extend_from_slice(&5_000_000_000u64.to_le_bytes());
    coinb2.push(0x19);
    coinb2.extend_from_slice(&[0x76, 0xa9, 0x14]);
    coinb2.extend_from_slice(&sha256d(b"hearth test payout")[..20]);
    coinb2.extend_from_slice(&[0x88, 0xac]);
    coinb2.extend_from_slice(&0u32.to_le_bytes()); // lock time
    Job {
        job_id: format!("{seq:x}"),
        // Block 125552's hash: the next block's prevhash.
        prev_blockhash: from_display_hex(
            "00000000000000001e8d6829a8a21adc5d38d0a473b144b6765798e61f98bd1d",
        )
        .unwrap_or([0; 32]),
        coinb1,
        coinb2,
        merkle_branch: vec![
            sha256d(format!("tx-a-{seq}").as_bytes()),
            sha256d(format!("tx-b-{seq}").as_bytes()),
        ],
        version: 0x2000_0000,
        nbits: 440_711_666,
        ntime: 1_305_998_791 + seq,
        clean_jobs: clean,
    }
}

impl TestPool {
    /// Binds 127.0.0.1:0 and starts accepting.
    pub async fn start(opts: PoolOptions) -> std::io::Result<TestPool> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(0);
        let (cmds, _) = broadcast::channel(256);
        let shared = Arc::new(PoolShared {
            opts,
            stats: Mutex::new(PoolStats::default()),
            changed,
            cmds,
        });
        let s2 = shared.clone();
        let task = tokio::spawn(async move {
            let job_seq = Arc::new(std::sync::atomic::AtomicU32::new(1));
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let conn = s2.update(|s| {
                    s.connections += 1;
                    s.connect_times.push(Instant::now());
                    s.methods.push(Vec::new());
                    s.connections - 1
                });
                if conn < u64::from(s2.opts.close_first) {
                    drop(sock);
                    s2.update(|s| s.disconnects += 1);
                    continue;
                }
                let rx = s2.cmds.subscribe();
                tokio::spawn(pool_conn(s2.clone(), sock, conn, rx, job_seq.clone()));
            }
        });
        Ok(TestPool { addr, shared, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `stratum+tcp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("stratum+tcp://{}", self.addr)
    }

    /// A snapshot of what the pool saw.
    pub fn stats(&self) -> PoolStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `pred` holds (checked on every change), or fails after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&PoolStats) -> bool,
    ) -> std::result::Result<PoolStats, String> {
        wait_on(
            self.shared.changed.subscribe(),
            || self.stats(),
            what,
            timeout,
            pred,
        )
        .await
    }

    /// Sends a raw line (a newline is appended) to every live connection.
    pub fn send_raw(&self, line: impl Into<String>) {
        let _ = self.shared.cmds.send(PoolCommand::Raw(line.into()));
    }

    /// Sends a new job to every live connection.
    pub fn new_job(&self, clean: bool) {
        let _ = self.shared.cmds.send(PoolCommand::NewJob { clean });
    }

    /// Sends `mining.set_extranonce` and then a clean job built for the new sizes.
    pub fn set_extranonce(&self, extranonce1: Vec<u8>, size: usize) {
        let _ = self
            .shared
            .cmds
            .send(PoolCommand::SetExtranonce { extranonce1, size });
    }

    /// Sends `client.get_version` (the answer lands in [`PoolStats::versions`]).
    pub fn ask_version(&self) {
        let _ = self.shared.cmds.send(PoolCommand::AskVersion);
    }

    /// Closes every live connection.
    pub fn close_connections(&self) {
        let _ = self.shared.cmds.send(PoolCommand::Close);
    }
}

struct ConnState {
    conn: u64,
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    mask: Option<u32>,
    subscribed: bool,
    user: Option<String>,
    extranonce_subscribed: bool,
    jobs: HashMap<String, Job>,
    seen: HashSet<(String, Vec<u8>, u32, u32)>,
    next_id: u64,
    version_ids: HashSet<u64>,
}

fn ok_line(id: &Value, result: Value) -> String {
    format!("{{\"id\":{id},\"result\":{result},\"error\":null}}")
}

fn err_line(id: &Value, code: i32, msg: &str) -> String {
    format!(
        "{{\"id\":{id},\"result\":null,\"error\":[{code},{},null]}}",
        json!(msg)
    )
}

fn notify_line(job: &Job) -> String {
    format!(
        "{{\"id\":null,\"method\":\"mining.notify\",\"params\":{}}}",
        job.to_notify_params()
    )
}

impl ConnState {
    fn new_job(&mut self, seq: u32, clean: bool) -> String {
        let job = make_job(seq, self.extranonce1.len(), self.extranonce2_size, clean);
        if clean {
            self.jobs.clear();
        }
        let line = notify_line(&job);
        self.jobs.insert(job.job_id.clone(), job);
        line
    }

    /// Checks one submit; `Ok(record)` or `Err((code, reason))`.
    fn check_submit(
        &mut self,
        params: &[Value],
        difficulty: f64,
    ) -> std::result::Result<ShareRecord, (i32, String)> {
        let s = |i: usize| {
            params
                .get(i)
                .and_then(|v| v.as_str())
                .ok_or((20, format!("param {i} missing")))
        };
        let user = s(0)?;
        if self.user.as_deref() != Some(user) {
            return Err((24, "Unauthorized worker".into()));
        }
        let job = self
            .jobs
            .get(s(1)?)
            .ok_or((21, "Job not found (=stale)".to_string()))?
            .clone();
        let en2 = hex::decode(s(2)?).map_err(|_| (20, "extranonce2 not hex".to_string()))?;
        if en2.len() != self.extranonce2_size {
            return Err((20, format!("extranonce2 is {} bytes", en2.len())));
        }
        let ntime = parse_hex_u32(s(3)?, "ntime").map_err(|e| (20, e.to_string()))?;
        if ntime != job.ntime {
            return Err((20, "ntime out of range".into()));
        }
        let nonce = parse_hex_u32(s(4)?, "nonce").map_err(|e| (20, e.to_string()))?;
        let version = match params.get(5) {
            None => job.version,
            Some(v) => {
                let vb = v
                    .as_str()
                    .ok_or((20, "version_bits not a string".to_string()))
                    .and_then(|v| {
                        parse_hex_u32(v, "version_bits").map_err(|e| (20, e.to_string()))
                    })?;
                let mask = self
                    .mask
                    .ok_or((20, "version rolling not negotiated".to_string()))?;
                if vb & !mask != 0 {
                    return Err((20, "version_bits outside the mask".into()));
                }
                (job.version & !mask) | (vb & mask)
            }
        };
        let mut header = job.header(&self.extranonce1, &en2, version);
        header.nonce = nonce;
        let hash = header.hash();
        let target = Target::from_difficulty(difficulty).map_err(|e| (20, e.to_string()))?;
        if !target.is_met_by(&hash) {
            return Err((23, "Low difficulty share".into()));
        }
        if !self
            .seen
            .insert((job.job_id.clone(), en2.clone(), nonce, version))
        {
            return Err((22, "Duplicate share".into()));
        }
        Ok(ShareRecord {
            conn: self.conn,
            job_id: job.job_id,
            extranonce1: self.extranonce1.clone(),
            extranonce2: en2,
            nonce,
            version,
            hash,
        })
    }
}

async fn pool_conn(
    shared: Arc<PoolShared>,
    sock: TcpStream,
    conn: u64,
    mut cmds: broadcast::Receiver<PoolCommand>,
    job_seq: Arc<std::sync::atomic::AtomicU32>,
) {
    use std::sync::atomic::Ordering;
    let (rd, mut wr) = sock.into_split();
    let mut lines = LineReader::new(rd, 64 * 1024);
    let opts = shared.opts.clone();
    let mut st = ConnState {
        conn,
        extranonce1: (0xa000_0000u32 + conn as u32).to_be_bytes().to_vec(),
        extranonce2_size: opts.extranonce2_size,
        mask: None,
        subscribed: false,
        user: None,
        extranonce_subscribed: false,
        jobs: HashMap::new(),
        seen: HashSet::new(),
        next_id: 1000,
        version_ids: HashSet::new(),
    };
    let limit = Duration::from_secs(5);
    loop {
        let mut out: Vec<String> = Vec::new();
        let mut close = false;
        tokio::select! {
            ev = lines.next_line() => {
                let line = match ev {
                    Ok(LineEvent::Line(l)) => l,
                    // A real pool drops clients that send garbage or overlong lines.
                    _ => break,
                };
                let Ok(v) = serde_json::from_str::<Value>(&line) else { break };
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                let method = v.get("method").and_then(|m| m.as_str()).unwrap_or("").to_string();
                let params: Vec<Value> = v.get("params").and_then(|p| p.as_array()).cloned().unwrap_or_default();
                if method.is_empty() {
                    // An answer to one of our requests.
                    let n = id.as_u64().unwrap_or(0);
                    if st.version_ids.remove(&n) {
                        let ver = v.get("result").and_then(|r| r.as_str()).unwrap_or("").to_string();
                        shared.update(|s| s.versions.push(ver));
                    } else if !v.get("error").unwrap_or(&Value::Null).is_null() {
                        shared.update(|s| s.client_errors += 1);
                    }
                    continue;
                }
                shared.update(|s| {
                    if let Some(m) = s.methods.get_mut(conn as usize) {
                        m.push(method.clone());
                    }
                });
                match method.as_str() {
                    "mining.configure" => {
                        if opts.drop_on_configure {
                            break;
                        }
                        let wants = params.first().and_then(|e| e.as_array())
                            .is_some_and(|a| a.iter().any(|x| x == "version-rolling"));
                        let requested = params.get(1)
                            .and_then(|o| o.get("version-rolling.mask"))
                            .and_then(|m| m.as_str())
                            .and_then(|m| parse_hex_u32(m, "mask").ok())
                            .unwrap_or(0);
                        match (wants, opts.version_rolling_mask) {
                            (true, Some(m)) => {
                                let granted = m & requested;
                                st.mask = Some(granted);
                                out.push(ok_line(&id, json!({"version-rolling": true, "version-rolling.mask": format!("{granted:08x}")})));
                            }
                            _ => out.push(ok_line(&id, json!({"version-rolling": false}))),
                        }
                    }
                    "mining.subscribe" => {
                        st.subscribed = true;
                        out.push(ok_line(&id, json!([
                            [["mining.set_difficulty", format!("{conn:x}")], ["mining.notify", format!("{conn:x}")]],
                            hex::encode(&st.extranonce1),
                            st.extranonce2_size,
                        ])));
                    }
                    "mining.extranonce.subscribe" => {
                        st.extranonce_subscribed = true;
                        out.push(ok_line(&id, json!(true)));
                    }
                    "mining.authorize" => {
                        let user = params.first().and_then(|u| u.as_str()).unwrap_or("").to_string();
                        let allowed = st.subscribed && opts.require_user.as_ref().is_none_or(|u| *u == user);
                        if allowed {
                            st.user = Some(user);
                            out.push(ok_line(&id, json!(true)));
                            out.push(format!("{{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[{}]}}", json!(opts.difficulty)));
                            let seq = job_seq.fetch_add(1, Ordering::Relaxed);
                            out.push(st.new_job(seq, true));
                        } else {
                            out.push(err_line(&id, 24, "Unauthorized worker"));
                        }
                    }
                    "mining.submit" => {
                        shared.update(|s| s.submits += 1);
                        match st.check_submit(&params, opts.difficulty) {
                            Ok(rec) => {
                                shared.update(|s| s.accepted.push(rec));
                                out.push(ok_line(&id, json!(true)));
                            }
                            Err((code, why)) => {
                                shared.update(|s| s.rejected.push(why.clone()));
                                out.push(err_line(&id, code, &why));
                            }
                        }
                    }
                    _ => out.push(err_line(&id, 20, "Unknown method")),
                }
            }
            cmd = cmds.recv() => {
                match cmd {
                    Ok(PoolCommand::Raw(l)) => out.push(l),
                    Ok(PoolCommand::NewJob { clean }) => {
                        if st.user.is_some() {
                            let seq = job_seq.fetch_add(1, Ordering::Relaxed);
                            out.push(st.new_job(seq, clean));
                        }
                    }
                    Ok(PoolCommand::SetExtranonce { extranonce1, size }) => {
                        if st.extranonce_subscribed {
                            st.extranonce1 = extranonce1;
                            st.extranonce2_size = size;
                            out.push(format!(
                                "{{\"id\":null,\"method\":\"mining.set_extranonce\",\"params\":[\"{}\",{size}]}}",
                                hex::encode(&st.extranonce1)
                            ));
                            let seq = job_seq.fetch_add(1, Ordering::Relaxed);
                            out.push(st.new_job(seq, true));
                        }
                    }
                    Ok(PoolCommand::AskVersion) => {
                        let id = st.next_id;
                        st.next_id += 1;
                        st.version_ids.insert(id);
                        out.push(format!("{{\"id\":{id},\"method\":\"client.get_version\",\"params\":[]}}"));
                    }
                    Ok(PoolCommand::Close) | Err(broadcast::error::RecvError::Closed) => close = true,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                }
            }
        }
        for l in out {
            if write_line(&mut wr, &l, limit).await.is_err() {
                close = true;
                break;
            }
        }
        if close {
            break;
        }
    }
    drop(wr);
    shared.update(|s| s.disconnects += 1);
}

/// Settings of a [`TestMinerApi`].
#[derive(Debug, Clone)]
pub struct MinerApiOptions {
    /// Number of configured pools (all enabled at start).
    pub pools: usize,
    /// Write commands allowed (`--api-allow W:`); otherwise code 45 "Access denied".
    pub allow_write: bool,
    /// Refuse to disable the last enabled pool, as stock cgminer does (code 51).
    pub refuse_last_pool: bool,
    /// Speak LuxOS: logon/logoff/curtail/power, "LUXminer" description.
    pub luxos: bool,
    /// Accept connections and read the request, but never answer.
    pub silent: bool,
    /// Hashrate reported while mining, MH/s.
    pub mhs: f64,
}

impl Default for MinerApiOptions {
    fn default() -> Self {
        MinerApiOptions {
            pools: 3,
            allow_write: true,
            refuse_last_pool: false,
            luxos: false,
            silent: false,
            mhs: 13_500_000.0,
        }
    }
}

/// What the miner API server holds.
#[derive(Debug, Clone, Default)]
pub struct MinerApiState {
    /// Enabled flag per pool.
    pub pools_enabled: Vec<bool>,
    /// Commands received, with their parameter.
    pub commands: Vec<(String, Option<String>)>,
    /// LuxOS: curtailed to sleep.
    pub sleeping: bool,
    /// LuxOS: the open session.
    pub session: Option<String>,
    /// Connections accepted.
    pub connections: u64,
}

struct ApiShared {
    opts: MinerApiOptions,
    state: Mutex<MinerApiState>,
    changed: watch::Sender<u64>,
    sessions: std::sync::atomic::AtomicU64,
}

/// A local cgminer/bmminer (or LuxOS) API server.
pub struct TestMinerApi {
    addr: SocketAddr,
    shared: Arc<ApiShared>,
    task: JoinHandle<()>,
}

impl Drop for TestMinerApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const WHEN: u64 = 1_732_400_000;

fn status_obj(sev: &str, code: i32, msg: &str, desc: &str) -> String {
    format!(
        "{{\"STATUS\":\"{sev}\",\"When\":{WHEN},\"Code\":{code},\"Msg\":{},\"Description\":\"{desc}\"}}",
        json!(msg)
    )
}

impl TestMinerApi {
    /// Binds 127.0.0.1:0 and starts answering.
    pub async fn start(opts: MinerApiOptions) -> std::io::Result<TestMinerApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(ApiShared {
            state: Mutex::new(MinerApiState {
                pools_enabled: vec![true; opts.pools],
                ..Default::default()
            }),
            opts,
            changed,
            sessions: std::sync::atomic::AtomicU64::new(0),
        });
        let s2 = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(api_conn(s2.clone(), sock));
            }
        });
        Ok(TestMinerApi { addr, shared, task })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// A snapshot of the state.
    pub fn state(&self) -> MinerApiState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `pred` holds on the state.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&MinerApiState) -> bool,
    ) -> std::result::Result<MinerApiState, String> {
        wait_on(
            self.shared.changed.subscribe(),
            || self.state(),
            what,
            timeout,
            pred,
        )
        .await
    }
}

async fn api_conn(shared: Arc<ApiShared>, mut sock: TcpStream) {
    shared.changed.send_modify(|v| *v += 1);
    {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.connections += 1;
    }
    // Read one request: until it parses as JSON, EOF, 64 KiB or 5 s.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let request: Option<Value> = loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => break None,
        };
        if n == 0 {
            break serde_json::from_slice(&buf).ok();
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice(&buf) {
            break Some(v);
        }
        if buf.len() > 64 * 1024 {
            break None;
        }
    };
    if shared.opts.silent {
        // Hold the connection open and say nothing.
        let _ = sock.read(&mut chunk).await;
        std::future::pending::<()>().await;
    }
    let reply = match request {
        Some(v) => answer(&shared, &v),
        None => format!(
            "{{\"STATUS\":[{}],\"id\":1}}",
            status_obj("E", 23, "Invalid JSON", desc(&shared.opts))
        ),
    };
    let mut bytes = reply.into_bytes();
    bytes.push(0); // cgminer terminates JSON replies with NUL
    let _ = sock.write_all(&bytes).await;
    let _ = sock.shutdown().await;
    shared.changed.send_modify(|v| *v += 1);
}

fn desc(opts: &MinerApiOptions) -> &'static str {
    if opts.luxos {
        "LUXminer 2024.11.1"
    } else {
        "cgminer 4.11.1"
    }
}

fn answer(shared: &ApiShared, req: &Value) -> String {
    let opts = &shared.opts;
    let d = desc(opts);
    let cmd = req
        .get("command")
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_string();
    let param = req
        .get("parameter")
        .and_then(|p| p.as_str())
        .map(str::to_string);
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    st.commands.push((cmd.clone(), param.clone()));
    let reply = |status: String, body: &str| {
        if body.is_empty() {
            format!("{{\"STATUS\":[{status}],\"id\":1}}")
        } else {
            format!("{{\"STATUS\":[{status}],{body},\"id\":1}}")
        }
    };
    let mining = st.pools_enabled.iter().any(|e| *e) && !st.sleeping;
    let mhs = if mining { opts.mhs } else { 0.0 };
    let pool_id = |p: &Option<String>| -> Option<usize> {
        p.as_deref()
            .and_then(|p| p.trim().parse::<usize>().ok())
            .filter(|i| *i < opts.pools)
    };
    match cmd.as_str() {
        "summary" => reply(
            status_obj("S", 11, "Summary", d),
            &format!(
                "\"SUMMARY\":[{{\"Elapsed\":3600,\"MHS av\":{mhs:.2},\"MHS 5s\":{mhs:.2},\"MHS 1m\":{mhs:.2},\"MHS 5m\":{mhs:.2},\"MHS 15m\":{mhs:.2},\"Found Blocks\":0,\"Getworks\":120,\"Accepted\":1520,\"Rejected\":3,\"Hardware Errors\":7,\"Utility\":25.33,\"Discarded\":240,\"Stale\":0,\"Get Failures\":0,\"Local Work\":52000,\"Remote Failures\":0,\"Network Blocks\":6,\"Total MH\":48600000000.0000,\"Work Utility\":188000.12,\"Difficulty Accepted\":12451840.00000000,\"Difficulty Rejected\":24576.00000000,\"Difficulty Stale\":0.00000000,\"Best Share\":1234567,\"Device Hardware%\":0.0001,\"Device Rejected%\":0.1970,\"Pool Rejected%\":0.1970,\"Pool Stale%\":0.0000,\"Last getwork\":{WHEN}}}]"
            ),
        ),
        "devs" => {
            let devs: Vec<String> = (0..3)
                .map(|i| {
                    format!(
                        "{{\"ASC\":{i},\"Name\":\"BM1387\",\"ID\":{i},\"Enabled\":\"Y\",\"Status\":\"Alive\",\"Temperature\":{:.2},\"MHS av\":{:.2},\"MHS 5s\":{:.2},\"Accepted\":{},\"Rejected\":1,\"Hardware Errors\":2,\"Utility\":8.44,\"Last Share Pool\":0,\"Last Share Time\":{WHEN},\"Total MH\":16200000000.0000,\"Diff1 Work\":4150000,\"Difficulty Accepted\":4150613.00000000,\"Difficulty Rejected\":8192.00000000,\"Last Share Difficulty\":8192.00000000,\"Last Valid Work\":{WHEN},\"Device Hardware%\":0.0001,\"Device Rejected%\":0.1970,\"Device Elapsed\":3600}}",
                        60.0 + 2.5 * i as f64,
                        mhs / 3.0,
                        mhs / 3.0,
                        500 + i
                    )
                })
                .collect();
            reply(
                status_obj("S", 9, "3 ASC(s)", d),
                &format!("\"DEVS\":[{}]", devs.join(",")),
            )
        }
        "pools" => {
            let pools: Vec<String> = st
                .pools_enabled
                .iter()
                .enumerate()
                .map(|(i, en)| {
                    let status = if *en { "Alive" } else { "Disabled" };
                    format!(
                        "{{\"POOL\":{i},\"URL\":\"stratum+tcp://pool{i}.example:3333\",\"Status\":\"{status}\",\"Priority\":{i},\"Quota\":1,\"Long Poll\":\"N\",\"Getworks\":40,\"Accepted\":{},\"Rejected\":1,\"Works\":1000,\"Discarded\":80,\"Stale\":0,\"Get Failures\":0,\"Remote Failures\":0,\"User\":\"hearth.rig{i}\",\"Last Share Time\":{WHEN},\"Diff1 Shares\":4150000,\"Proxy Type\":\"\",\"Proxy\":\"\",\"Difficulty Accepted\":4150613.00000000,\"Difficulty Rejected\":8192.00000000,\"Difficulty Stale\":0.00000000,\"Last Share Difficulty\":8192.00000000,\"Work Difficulty\":8192.00000000,\"Has Stratum\":true,\"Stratum Active\":{},\"Stratum URL\":\"pool{i}.example\",\"Stratum Difficulty\":8192.00000000,\"Has GBT\":false,\"Best Share\":1234567,\"Pool Rejected%\":0.1970,\"Pool Stale%\":0.0000,\"Bad Work\":0,\"Current Block Height\":870000,\"Current Block Version\":536870912}}",
                        500 + i,
                        *en && i == 0
                    )
                })
                .collect();
            reply(
                status_obj("S", 7, &format!("{} Pool(s)", opts.pools), d),
                &format!("\"POOLS\":[{}]", pools.join(",")),
            )
        }
        "enablepool" | "disablepool" => {
            if !opts.allow_write {
                return reply(
                    status_obj("E", 45, &format!("Access denied to '{cmd}' command"), d),
                    "",
                );
            }
            let Some(i) = pool_id(&param) else {
                return reply(
                    status_obj("E", 26, &format!("Invalid pool id {}", param.unwrap_or_default()), d),
                    "",
                );
            };
            let url = format!("stratum+tcp://pool{i}.example:3333");
            let enable = cmd == "enablepool";
            if st.pools_enabled[i] == enable {
                let (code, what) = if enable { (49, "enabled") } else { (50, "disabled") };
                return reply(
                    status_obj("I", code, &format!("Pool {i}:'{url}' already {what}"), d),
                    "",
                );
            }
            if !enable
                && opts.refuse_last_pool
                && st.pools_enabled.iter().filter(|e| **e).count() <= 1
            {
                return reply(
                    status_obj("E", 51, &format!("Cannot disable last active pool {i}:'{url}'"), d),
                    "",
                );
            }
            st.pools_enabled[i] = enable;
            let (code, verb) = if enable { (47, "Enabling") } else { (48, "Disabling") };
            reply(status_obj("S", code, &format!("{verb} pool {i}:'{url}'"), d), "")
        }
        "logon" if opts.luxos => {
            if st.session.is_some() {
                return reply(status_obj("E", 301, "Another session is active", d), "");
            }
            let n = shared
                .sessions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sid = format!("{:08x}", 0x5eed_0000u32.wrapping_add(n as u32).wrapping_mul(2_654_435_761));
            st.session = Some(sid.clone());
            reply(
                status_obj("S", 300, "Session created", d),
                &format!("\"SESSION\":[{{\"SessionID\":\"{sid}\"}}]"),
            )
        }
        "logoff" if opts.luxos => {
            if param.is_some() && st.session == param {
                st.session = None;
                reply(status_obj("S", 302, "Session terminated", d), "")
            } else {
                reply(status_obj("E", 303, "Invalid session id", d), "")
            }
        }
        "curtail" if opts.luxos => {
            let p = param.unwrap_or_default();
            let (sid, action) = p.split_once(',').unwrap_or((&p, ""));
            if st.session.as_deref() != Some(sid) {
                return reply(status_obj("E", 303, "Invalid session id", d), "");
            }
            match action {
                "sleep" => {
                    st.sleeping = true;
                    reply(status_obj("S", 340, "Curtail sleep initiated", d), "")
                }
                "wakeup" => {
                    st.sleeping = false;
                    reply(status_obj("S", 341, "Curtail wakeup initiated", d), "")
                }
                other => reply(
                    status_obj("E", 342, &format!("Invalid curtail action '{other}'"), d),
                    "",
                ),
            }
        }
        "power" if opts.luxos => {
            let watts = if st.sleeping { 45 } else { 3250 };
            reply(
                status_obj("S", 320, "Power", d),
                &format!("\"POWER\":[{{\"PSU\":true,\"Watts\":{watts}}}]"),
            )
        }
        _ => reply(status_obj("E", 14, "Invalid command", d), ""),
    }
}
