//! The honest processes of a soak run: `hearth node`s, a gateway and an energy agent on
//! loopback, started from the `hearth` executable, watched for crashes and peak memory.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a process has to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// One honest node: its settings and its current process.
pub(crate) struct NodeProc {
    pub(crate) name: String,
    pub(crate) span: String,
    dir: PathBuf,
    /// Lives with a fresh identity so far (its key lives in `dir/data<identity>`).
    identity: usize,
    /// Its running process (killed when dropped).
    child: Option<Guarded>,
    /// Its multiaddr with `/p2p/<id>` (the port changes when it restarts; the id does not).
    pub(crate) addr: String,
    /// Highest resident memory seen over all its lives, KiB.
    pub(crate) peak_rss_kib: u64,
    /// Exits nobody asked for.
    pub(crate) crashes: usize,
}

/// What [`NodeProc::watch`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Running,
    /// Exited without being killed on purpose (counted in `crashes`).
    Crashed,
    /// Killed on purpose and not restarted yet.
    Down,
}

/// Memory settings of every node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeBudget {
    pub(crate) cache_mib: u64,
    pub(crate) frame_mib: u64,
    /// The memory the node is meant to stay within (weights + cache + frames + runtime).
    pub(crate) total_mib: u64,
}

/// What starts the processes.
pub(crate) struct Launcher {
    pub(crate) exe: PathBuf,
    pub(crate) model: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) budget: NodeBudget,
    /// Seconds a node waits for a frame's bytes and a step's answer (short, so attacks show
    /// within a short run).
    pub(crate) frame_timeout_secs: u64,
}

impl Launcher {
    fn hearth(&self, home: &Path) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.env("HEARTH_HOME", home).args(["--threads", "1"]);
        // The processes log what `HEARTH_SOAK_RUST_LOG` asks for (their logs are in the work
        // folder), not what the harness itself was given.
        match std::env::var_os("HEARTH_SOAK_RUST_LOG") {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        cmd
    }

    /// Starts node `name` serving `span`, joining through `bootstrap` (none for the first).
    pub(crate) fn node(&self, name: &str, span: &str, bootstrap: Option<&str>) -> Result<NodeProc> {
        let mut node = NodeProc {
            name: name.to_string(),
            span: span.to_string(),
            dir: self.work.join(name),
            identity: 0,
            child: None,
            addr: String::new(),
            peak_rss_kib: 0,
            crashes: 0,
        };
        self.start(&mut node, bootstrap, false)?;
        Ok(node)
    }

    /// (Re)starts `node`'s process with its blocks, and its identity unless `fresh` (then it
    /// joins as a new node would).
    pub(crate) fn start(
        &self,
        node: &mut NodeProc,
        bootstrap: Option<&str>,
        fresh: bool,
    ) -> Result<()> {
        if fresh {
            node.identity += 1;
        }
        std::fs::create_dir_all(&node.dir)?;
        let ready = node.dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("log"))?;
        let b = self.budget;
        let mut cmd = self.hearth(&node.dir);
        cmd.arg("node")
            .arg("--model")
            .arg(&self.model)
            .args(["--blocks", &node.span])
            .arg("--data-dir")
            .arg(node.dir.join(format!("data{}", node.identity)))
            .arg("--ready-file")
            .arg(&ready)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .args(["--record-ttl", "15", "--rebalance-secs", "0"])
            .args(["--cache-mib", &b.cache_mib.to_string()])
            .args(["--frame-budget-mib", &b.frame_mib.to_string()])
            .args(["--max-memory-mib", &b.total_mib.to_string()])
            .args(["--frame-timeout", &self.frame_timeout_secs.to_string()])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(addr) = bootstrap {
            cmd.args(["--bootstrap", addr]);
        }
        node.child = Some(Guarded(cmd.spawn().context("starting a node")?));
        node.addr = wait_for_line(&ready, READY_TIMEOUT)
            .with_context(|| format!("{} did not start", node.name))?;
        Ok(())
    }

    /// Starts the gateway over the swarm joined through `bootstrap`; returns it and its URL.
    pub(crate) fn gateway(
        &self,
        bootstrap: &str,
        write_timeout_secs: u64,
    ) -> Result<(Child, String)> {
        let dir = self.work.join("gateway");
        std::fs::create_dir_all(&dir)?;
        let ready = dir.join("ready");
        let child = self
            .hearth(&dir)
            .arg("gateway")
            .arg("--model")
            .arg(&self.model)
            .args(["--model-name", "soak", "--http", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready)
            .args(["--bootstrap", bootstrap, "--no-mdns"])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--record-ttl", "15"])
            .args(["--max-running", "16", "--max-queue", "64"])
            .args(["--write-timeout", &write_timeout_secs.to_string()])
            .args(["--step-timeout", "10", "--check-probability", "0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log"))?)
            .spawn()
            .context("starting the gateway")?;
        let url = wait_for_line(&ready, READY_TIMEOUT).context("the gateway did not start")?;
        Ok((child, url.trim_end_matches('/').to_string()))
    }

    /// Starts an energy agent with its simulated fleet on `port`; returns it and its write
    /// token.
    pub(crate) fn agent(&self, port: u16) -> Result<(Child, String)> {
        let dir = self.work.join("agent");
        std::fs::create_dir_all(&dir)?;
        let child = self
            .hearth(&dir)
            .args([
                "agent",
                "--simulated",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log"))?)
            .spawn()
            .context("starting the agent")?;
        let token = wait_for_line(&dir.join("agent-token"), READY_TIMEOUT)
            .context("the agent wrote no token")?;
        Ok((child, token))
    }
}

impl NodeProc {
    /// Whether its process runs (as last seen; killed or crashed nodes are not up).
    pub(crate) fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process with SIGKILL (on purpose: not a crash).
    pub(crate) fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            self.note_rss(c.0.id());
            // Dropping it kills it.
        }
    }

    /// Notes its memory, and a crash if it exited on its own since the last look.
    pub(crate) fn watch(&mut self) -> Health {
        let Some(c) = &mut self.child else {
            return Health::Down;
        };
        if c.alive() {
            let pid = c.0.id();
            self.note_rss(pid);
            Health::Running
        } else {
            self.crashes += 1;
            self.child = None;
            Health::Crashed
        }
    }

    fn note_rss(&mut self, pid: u32) {
        self.peak_rss_kib = self.peak_rss_kib.max(peak_rss_kib(pid).unwrap_or(0));
    }

    /// The tail of its log, for a report on why it stopped.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A child process killed when dropped, however the run ends.
pub(crate) struct Guarded(pub Child);

impl Guarded {
    /// Whether it is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process's high-water mark of resident memory (Linux `VmHWM`), KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds (user + system) this process has used so far; 0 where `/proc` is missing.
pub(crate) fn own_cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    const TICKS_PER_SECOND: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ")" the first field is field 3 (state), so field 14 is at index 11.
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}

/// The first line of `path` once it has one.
fn wait_for_line(path: &Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Some(line) = s.lines().next().filter(|l| !l.trim().is_empty()) {
                return Ok(line.trim().to_string());
            }
        }
        if Instant::now() > deadline {
            bail!("nothing in {} after {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port on loopback that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
