//! Swarms of `hearth node` processes on loopback, started by `hearth demo` and `hearth
//! swarm-bench`, and the client settings that join them. Depends only on `common`.

use crate::common::hearth_home;
use anyhow::{bail, Context, Result};
use hearth_core::BlockRange;
use hearth_swarm::{ClientConfig, NetConfig};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// DHT record lifetime on loopback: short, so that a departed node is forgotten quickly.
const LOOPBACK_RECORD_TTL: Duration = Duration::from_secs(30);

/// A client that joins a loopback swarm through `bootstrap` (no mDNS); otherwise the library's
/// client defaults.
pub(crate) fn loopback_client(bootstrap: &str) -> Result<ClientConfig> {
    let base = ClientConfig::default();
    Ok(ClientConfig {
        net: NetConfig {
            bootstrap: vec![bootstrap.parse()?],
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            mdns: false,
            record_ttl: LOOPBACK_RECORD_TTL,
            ..base.net
        },
        ..base
    })
}

/// Child processes that are killed when the demo ends, however it ends; with the peer id each
/// reported.
pub(crate) struct Children(pub Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts one `hearth node` process per span on loopback, the first as everyone's bootstrap
/// peer; returns once every node serves. With `echo`, prints each node's first line.
pub(crate) fn spawn_nodes(
    model: &std::path::Path,
    spans: &[BlockRange],
    threads: usize,
    work: &std::path::Path,
    timeout: Duration,
    echo: bool,
) -> Result<(Children, String)> {
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    let mut bootstrap: Option<String> = None;
    for (i, span) in spans.iter().enumerate() {
        let ready = work.join(format!("node{i}.addr"));
        let mut cmd = Command::new(&exe);
        cmd.args(["--threads", &threads.to_string(), "node", "--model"])
            .arg(model)
            .arg("--blocks")
            .arg(span.to_string())
            .arg("--data-dir")
            .arg(work.join(format!("node{i}")))
            .arg("--ready-file")
            .arg(&ready)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .args(["--record-ttl", &LOOPBACK_RECORD_TTL.as_secs().to_string()])
            .env("HEARTH_HOME", hearth_home())
            .stdout(Stdio::piped())
            .stderr(node_log(i)?);
        if let Some(b) = &bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd.spawn().context("starting a node process")?;
        let stdout = child.stdout.take();
        children.0.push((String::new(), child));
        let addr = wait_for_file(&ready, timeout)?;
        if let Some(out) = stdout {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            if echo {
                print!("{line}");
            }
        }
        if let Some(last) = children.0.last_mut() {
            last.0 = addr.rsplit('/').next().unwrap_or_default().to_string();
        }
        bootstrap.get_or_insert(addr);
    }
    let bootstrap = bootstrap.context("no node started")?;
    Ok((children, bootstrap))
}

/// Where node `i`'s stderr goes: `$HEARTH_NODE_LOGS/node<i>.log` when that is set (for
/// debugging a demo or benchmark), else nowhere.
fn node_log(i: usize) -> Result<Stdio> {
    match std::env::var_os("HEARTH_NODE_LOGS") {
        Some(dir) => {
            let path = PathBuf::from(dir).join(format!("node{i}.log"));
            Ok(std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?
                .into())
        }
        None => Ok(Stdio::null()),
    }
}

fn wait_for_file(path: &std::path::Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Some(line) = s.lines().next() {
                return Ok(line.trim().to_string());
            }
        }
        if Instant::now() > deadline {
            bail!("node did not report ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
