//! What the multi-process tests share: `hearth` commands with their own home, node processes that
//! are killed on drop, and polling.
#![allow(dead_code)] // each test file uses a different part

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `hearth` with `HEARTH_HOME=home` and the swarm's info logs on stderr.
pub(crate) fn hearth(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.env("HEARTH_HOME", home)
        .env("RUST_LOG", "hearth_swarm=info");
    cmd
}

/// [`hearth`] run in network namespace `netns` (`ip netns exec`, which execs it: the child is
/// the `hearth` process itself, so killing it kills `hearth`).
pub(crate) fn hearth_in(netns: &str, home: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_hearth")])
        .env("HEARTH_HOME", home)
        .env("RUST_LOG", "hearth_swarm=info");
    cmd
}

/// A `hearth node` process on loopback (no mDNS, 3 s DHT records); killed (SIGKILL) on drop.
/// [`NodeProc::start_in`] runs one in a network namespace instead.
pub(crate) struct NodeProc {
    pub(crate) child: Child,
    /// Its multiaddr with `/p2p/<peer id>`, as a bootstrap address for others.
    pub(crate) addr: String,
    log: Arc<Mutex<String>>,
}

impl NodeProc {
    /// Starts a node of the model named by `model` (e.g. `["--synth", "tiny"]` or
    /// `["--model", path]`) on `blocks` (`A..B`, or `auto` to let it choose up to 3), joining
    /// through `bootstrap`, with `extra` flags; returns once it serves.
    pub(crate) fn start<S: AsRef<OsStr>>(
        home: &Path,
        name: &str,
        model: &[S],
        blocks: &str,
        bootstrap: Option<&str>,
        extra: &[&str],
    ) -> Self {
        Self::start_in(home, name, model, blocks, bootstrap, extra, None)
    }

    /// [`NodeProc::start`] in network namespace `netns`, listening on `ip` there (`at` =
    /// `Some((netns, ip))`; `None`: on loopback, as `start`).
    pub(crate) fn start_in<S: AsRef<OsStr>>(
        home: &Path,
        name: &str,
        model: &[S],
        blocks: &str,
        bootstrap: Option<&str>,
        extra: &[&str],
        at: Option<(&str, &str)>,
    ) -> Self {
        let ready = home.join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&ready);
        let (mut cmd, listen) = match at {
            Some((netns, ip)) => (hearth_in(netns, home), format!("/ip4/{ip}/tcp/0")),
            None => (hearth(home), "/ip4/127.0.0.1/tcp/0".to_string()),
        };
        cmd.args(["--threads", "1", "node"]).args(model);
        if blocks == "auto" {
            cmd.args(["--max-blocks", "3", "--discovery-secs", "1"]);
        } else {
            cmd.args(["--blocks", blocks]);
        }
        cmd.arg("--data-dir")
            .arg(home.join(name))
            .arg("--ready-file")
            .arg(&ready)
            .args(["--listen", &listen, "--no-mdns"])
            .args(["--record-ttl", "3"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd.spawn().expect("start node");
        let log = capture(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                break s.trim().to_string();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("node {name} exited with {status}: {}", log.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "node {name} not ready");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, addr, log }
    }

    /// Its stderr so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its stderr as it grows (readable after the node is gone, e.g. to print on a failure).
    pub(crate) fn log_handle(&self) -> Arc<Mutex<String>> {
        self.log.clone()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects a pipe's text in the background.
pub(crate) fn capture(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut b = out.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

/// Polls `cond` until it holds; the timeouts are generous because CI runs these tests in
/// parallel on 2 cores, several node processes each.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SmolLM2-135M-Instruct's GGUF from `HEARTH_SMOLLM2_GGUF`; without it `None` (the test says
/// SKIPPED), except under CI (`CI=true`), where that is a failure.
pub(crate) fn smollm2() -> Option<std::path::PathBuf> {
    match std::env::var_os("HEARTH_SMOLLM2_GGUF") {
        Some(p) => Some(std::path::PathBuf::from(p)),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("HEARTH_SMOLLM2_GGUF must be set under CI")
        }
        None => {
            eprintln!("SKIPPED: set HEARTH_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
            None
        }
    }
}

/// A finished `hearth generate --token-ids` run: its token ids and its log (panics if it failed).
pub(crate) fn token_ids(output: std::process::Output) -> (Vec<u32>, String) {
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "client failed: {log}");
    (parse_token_ids(&log), log)
}

/// The ids of the `token ids: ...` line of a `hearth generate --token-ids` log (panics if none).
pub(crate) fn parse_token_ids(log: &str) -> Vec<u32> {
    log.lines()
        .find_map(|l| l.strip_prefix("token ids: "))
        .unwrap_or_else(|| panic!("no token ids printed: {log}"))
        .split_whitespace()
        .map(|t| t.parse().expect("token id"))
        .collect()
}
