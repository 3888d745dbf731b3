//! `hearth agent`: the energy-aware node agent (issue #5). Thin: parses flags, loads the config
//! and hands over to `hearth_energy::agent`.

use anyhow::Context;
use hearth_core::ApiKeys;
use hearth_energy::agent::{Agent, AgentConfig};
use std::path::{Path, PathBuf};

/// The environment variable with the agent's accepted keys (comma-separated).
const AGENT_KEYS_ENV: &str = "HEARTH_AGENT_KEYS";

/// Where the agent keeps the token it generates when no key is configured.
pub(crate) fn local_token_path() -> PathBuf {
    crate::common::hearth_home().join("agent-token")
}

#[derive(clap::Args, Debug)]
pub(crate) struct AgentArgs {
    /// Agent configuration (JSON; see docs/agent.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run the demo fleet of simulated devices (three GPUs and an ASIC); no hardware needed.
    #[arg(long)]
    simulated: bool,
    /// Also add every NVIDIA GPU (NVML) and the host CPU found at start.
    #[arg(long)]
    auto_detect: bool,
    #[arg(long, help = with_default(
        "HTTP address for /metrics and /api",
        AgentConfig::default().listen,
    ))]
    listen: Option<String>,
    #[arg(long, help = with_default(
        "Seconds between decisions",
        format!("{}; the demo uses 10", AgentConfig::default().interval_s),
    ))]
    interval_secs: Option<f64>,
    /// Electricity prices from a CSV (`hour,price` or `timestamp,price`, $/MWh).
    #[arg(long)]
    price_csv: Option<PathBuf>,
    /// Electricity price from an HTTP JSON endpoint (`{"usd_per_mwh": x}`), polled every interval.
    #[arg(long)]
    price_url: Option<String>,
    /// Site power cap, kW.
    #[arg(long)]
    site_cap_kw: Option<f64>,
    /// Bearer token accepted on the write endpoints (events, prices, demand); repeatable. Also
    /// read from HEARTH_AGENT_KEYS (comma-separated). Without one the agent generates a token
    /// in $HEARTH_HOME/agent-token (mode 0600) and requires it.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Accept writes without any token (tests only): then only loopback addresses.
    #[arg(long)]
    insecure_no_auth: bool,
    /// A host name (besides IP addresses and localhost) the API answers to; repeatable.
    /// Requests naming any other host are refused (DNS rebinding).
    #[arg(long = "allow-host")]
    allowed_hosts: Vec<String>,
    /// A web origin allowed to call the API from a browser; repeatable.
    #[arg(long = "allow-origin")]
    allowed_origins: Vec<String>,
    /// Read once, decide once, print the decisions and exit (nothing is applied).
    #[arg(long)]
    once: bool,
    /// With --once: print the full state as JSON.
    #[arg(long)]
    json: bool,
    /// Time one policy decision for N synthetic devices and exit.
    #[arg(long, value_name = "N")]
    bench_decide: Option<usize>,
    /// Runs for --bench-decide.
    #[arg(long, default_value_t = 21)]
    bench_runs: usize,
}

/// A flag's help that names the library's default; the config file, when given, overrides it.
fn with_default(what: &str, default: impl std::fmt::Display) -> String {
    format!("{what} (default: the config's, else {default})")
}

pub(crate) fn run(args: AgentArgs) -> anyhow::Result<()> {
    if let Some(n) = args.bench_decide {
        return bench(n, args.bench_runs);
    }
    let mut cfg = match (&args.config, args.simulated) {
        (Some(path), _) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            AgentConfig::from_json(&bytes, &path.display().to_string())?
        }
        (None, true) => AgentConfig::simulated_demo(),
        (None, false) => AgentConfig {
            auto_detect: true,
            ..AgentConfig::default()
        },
    };
    if args.simulated && args.config.is_some() {
        cfg.devices.extend(AgentConfig::simulated_demo().devices);
    }
    if args.auto_detect {
        cfg.auto_detect = true;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(i) = args.interval_secs {
        cfg.interval_s = i;
    }
    if let Some(p) = args.price_csv {
        cfg.price.csv = Some(p.display().to_string());
    }
    if let Some(u) = args.price_url {
        cfg.price.url = Some(u);
    }
    if let Some(kw) = args.site_cap_kw {
        cfg.site_cap_kw = Some(kw);
    }
    cfg.api_keys.extend(ApiKeys::keys_from_flags_and_env(
        &args.api_keys,
        AGENT_KEYS_ENV,
    ));
    cfg.api_keys.retain(|k| !k.is_empty());
    cfg.allowed_hosts.extend(args.allowed_hosts);
    cfg.allowed_origins.extend(args.allowed_origins);
    cfg.validate().map_err(|e| anyhow::anyhow!("config: {e}"))?;
    if cfg.api_keys.is_empty() && !args.insecure_no_auth && !args.once {
        // Anyone who can post an event can switch the site off: writes need a token even on
        // loopback, where any local process or web page could otherwise reach them.
        let path = local_token_path();
        let (token, new) = local_token(&path)?;
        if new {
            eprintln!(
                "generated the agent's API token (send `Authorization: Bearer <token>` to write): \
                 {token}\nstored in {} (readable by you only); it is not printed again",
                path.display()
            );
        } else {
            eprintln!(
                "writes to the agent's API need the token in {}",
                path.display()
            );
        }
        cfg.api_keys.push(token);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut agent = Agent::from_config(cfg)?;
        agent.echo = true;
        if args.once {
            agent.echo = false;
            let snap = agent.once().await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
            } else {
                print_snapshot(&snap);
            }
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(&agent.cfg.listen)
            .await
            .with_context(|| format!("binding {}", agent.cfg.listen))?;
        let addr = listener.local_addr()?;
        // Anyone who can post an event can switch the site off: without a key, keep that local.
        let keys = ApiKeys::new(&agent.cfg.api_keys);
        keys.check_bind(addr, Some("the agent's API"), AGENT_KEYS_ENV)?;
        if keys.is_empty() {
            eprintln!("no API key configured: the agent's API listens on loopback only ({addr})");
        }
        eprintln!(
            "hearth agent: {} devices, deciding every {} s; http://{addr}/metrics, http://{addr}/api/state, POST http://{addr}/api/dr/events",
            agent.devices.len(),
            agent.cfg.interval_s
        );
        agent
            .run(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}

/// The token in `path`, or a new one written there (mode 0600); true when new.
fn local_token(path: &Path) -> anyhow::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            anyhow::ensure!(
                !token.is_empty(),
                "{} is empty: delete it to get a new token",
                path.display()
            );
            return Ok((token, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let token = hex::encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((token, true))
}

fn print_snapshot(s: &hearth_energy::agent::Snapshot) {
    let sig = &s.signals;
    println!(
        "electricity {:.1} $/MWh ({}), hashprice {:.4} $/TH/day, heat {:.1} $/MWh, AI {} jobs at {:.2} $/Mtok",
        sig.electricity_usd_per_mwh,
        sig.price_source,
        sig.hashprice_usd_per_th_day,
        sig.heat_value_usd_per_mwh,
        sig.ai.jobs_waiting,
        sig.ai.usd_per_mtok
    );
    match s.effective_cap_w {
        Some(c) => println!("planned {:.0} W of cap {:.0} W", s.planned_w, c),
        None => println!("planned {:.0} W (no cap)", s.planned_w),
    }
    for d in &s.devices {
        let temp = d
            .reading
            .temp_c
            .map_or("-".to_string(), |t| format!("{t:.1} °C"));
        println!(
            "{:<14} {:<9} {:>7.0} W  {:>8}  {}",
            d.id,
            d.mode.as_str(),
            d.planned_w,
            temp,
            d.reason
        );
    }
    for n in &s.notes {
        println!("note: {n}");
    }
    println!(
        "(one decision in {:.1} µs; nothing was applied)",
        s.decide_us
    );
}

fn bench(n: usize, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        n > 0 && runs > 0,
        "--bench-decide and --bench-runs must be > 0"
    );
    let b = hearth_energy::bench::bench_decide(n, runs);
    println!(
        "decide for {} devices, {} runs: median {:.1} µs, p95 {:.1} µs, min {:.1} µs ({} devices running)",
        b.devices, b.runs, b.median_us, b.p95_us, b.min_us, b.running
    );
    Ok(())
}
