//! The `hearth` binary end to end: synthesize, inspect, generate locally with and without splits.

use std::path::Path;
use std::process::Command;

fn hearth(home: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_HOME", home)
        .output()
        .expect("hearth runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "hearth {args:?} failed:\n{stderr}");
    (stdout, stderr)
}

#[test]
fn generate_split_matches_unsplit_and_reports_speed() {
    let home = tempfile::tempdir().unwrap();
    let base = [
        "generate",
        "--synth",
        "tiny",
        "--prompt",
        "Hello",
        "--max-tokens",
        "24",
    ];
    let (whole, err1) = hearth(home.path(), &base);
    let (split, err3) = hearth(home.path(), &[&base[..], &["--split", "3"]].concat());
    assert_eq!(whole, split, "greedy text must not depend on the split");
    assert!(whole.starts_with("Hello") && whole.len() > "Hello\n".len());
    assert!(
        err1.contains("route: client -> local 0..6 -> client"),
        "{err1}"
    );
    assert!(
        err3.contains("local 0..2 -> local 2..4 -> local 4..6"),
        "{err3}"
    );
    assert!(err3.contains("decode") && err3.contains("tok/s"), "{err3}");
    assert!(home.path().join("models/synth-tiny/config.json").exists());
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let home = tempfile::tempdir().unwrap();
    let run = |seed: &str| {
        hearth(
            home.path(),
            &[
                "generate",
                "--synth",
                "tiny",
                "--prompt",
                "Hi",
                "--max-tokens",
                "32",
                "--temperature",
                "1.0",
                "--top-p",
                "0.95",
                "--seed",
                seed,
            ],
        )
        .0
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn synth_gguf_and_info() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("q.gguf");
    let file_str = file.to_str().unwrap();
    hearth(
        home.path(),
        &[
            "model",
            "synth",
            "--shape",
            "tiny-qwen2",
            "--format",
            "gguf",
            "--quant",
            "q4_0",
            "--out",
            file_str,
        ],
    );
    let (info, _) = hearth(home.path(), &["model", "info", file_str]);
    assert!(
        info.contains("Qwen2") && info.contains("blocks:        5"),
        "{info}"
    );
    assert!(info.contains("model id:"), "{info}");
    let (text, _) = hearth(
        home.path(),
        &[
            "generate",
            "--model",
            file_str,
            "--prompt",
            "Hi",
            "--max-tokens",
            "8",
            "--split",
            "2",
        ],
    );
    assert!(text.starts_with("Hi"));
}

#[test]
fn converted_model_generates() {
    let home = tempfile::tempdir().unwrap();
    let src = home.path().join("q4_0.gguf");
    let out = home.path().join("q8_0.gguf");
    let (src, out) = (src.to_str().unwrap(), out.to_str().unwrap());
    hearth(
        home.path(),
        &[
            "model", "synth", "--shape", "tiny", "--format", "gguf", "--quant", "q4_0", "--out",
            src,
        ],
    );
    let (_, err) = hearth(
        home.path(),
        &["model", "convert", src, "--quant", "q8_0", "--out", out],
    );
    assert!(err.contains("wrote") && err.contains("q8_0"), "{err}");
    let (text, _) = hearth(
        home.path(),
        &[
            "generate",
            "--model",
            out,
            "--prompt",
            "Hi",
            "--max-tokens",
            "8",
        ],
    );
    assert!(text.starts_with("Hi"));
}

#[test]
fn bad_arguments_fail_cleanly() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["generate", "--model", "/nonexistent/model", "--prompt", "x"][..],
        &["generate", "--synth", "no-such-shape"],
        &["generate", "--synth", "tiny", "--split", "7"],
        &["generate", "--synth", "tiny", "--device", "tpu"],
        &[
            "model",
            "convert",
            "/nonexistent/m.gguf",
            "--quant",
            "q8_0",
            "--out",
            "/nonexistent/o.gguf",
        ],
        &[
            "model",
            "convert",
            "/nonexistent/m.gguf",
            "--quant",
            "q9_9",
            "--out",
            "/nonexistent/o.gguf",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("HEARTH_HOME", home.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Error") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

/// Without an API key the gateway refuses a non-loopback address, before loading anything.
#[test]
fn gateway_refuses_a_public_address_without_a_key() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "gateway",
            "--synth",
            "tiny",
            "--local",
            "--http",
            "0.0.0.0:0",
        ])
        .env("HEARTH_HOME", home.path())
        .env_remove("HEARTH_API_KEYS")
        .output()
        .expect("hearth runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve on 0.0.0.0:0 without an API key"),
        "{stderr}"
    );
    // Nothing was loaded or synthesized on the way.
    assert!(!home.path().join("models").exists());
}

/// Without an API key the energy agent refuses a non-loopback address too, naming its variable.
#[test]
fn agent_refuses_a_public_address_without_a_key() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "agent",
            "--simulated",
            "--insecure-no-auth",
            "--listen",
            "0.0.0.0:0",
        ])
        .env("HEARTH_HOME", home.path())
        .env_remove("HEARTH_AGENT_KEYS")
        .output()
        .expect("hearth runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve the agent's API on 0.0.0.0:")
            && stderr.contains("pass --api-key (or HEARTH_AGENT_KEYS)"),
        "{stderr}"
    );
}

/// `hearth <command> --help`.
fn help(command: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([command, "--help"])
        .output()
        .expect("hearth runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The help text of `flag` in `help`: from the flag to the next flag.
fn flag_help<'a>(help: &'a str, flag: &str) -> &'a str {
    let start = help
        .find(&format!("{flag} "))
        .unwrap_or_else(|| panic!("{flag} missing from\n{help}"));
    let rest = &help[start + flag.len()..];
    // The next line that starts with a dash names the next flag.
    let mut end = 0;
    for line in rest.split_inclusive('\n') {
        if end > 0 && line.trim_start().starts_with('-') {
            break;
        }
        end += line.len();
    }
    &rest[..end]
}

/// The defaults users see (read from the libraries' config types) are the ones the CLI always
/// had; a changed library default shows up here.
#[test]
fn help_shows_the_defaults_users_run_with() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "node",
            &[
                ("--record-ttl", "60"),
                ("--step-timeout", "30"),
                ("--rebalance-secs", "60"),
                ("--discovery-secs", "3"),
                ("--price", "0"),
                ("--cache-mib", "2048"),
                ("--frame-budget-mib", "512"),
                ("--frame-timeout", "30"),
                ("--agent-poll-secs", "5"),
            ],
        ),
        (
            "gateway",
            &[
                ("--http", "127.0.0.1:8080"),
                ("--record-ttl", "60"),
                ("--max-body-bytes", "1048576"),
                ("--max-tokens", "4096"),
                ("--default-max-tokens", "256"),
                ("--max-running", "8"),
                ("--max-queue", "32"),
                ("--max-connections", "256"),
                ("--header-timeout", "10"),
                ("--body-timeout", "30"),
                ("--write-timeout", "30"),
            ],
        ),
        (
            "generate",
            &[
                ("--max-tokens", "64"),
                ("--temperature", "0"),
                ("--repeat-penalty", "1"),
                ("--repeat-last-n", "64"),
                ("--seed", "0"),
            ],
        ),
        (
            "simulate",
            &[
                ("--prices", "data/prices/Price_2019.csv"),
                ("--seed", "1"),
                ("--load", "0.6"),
                ("--policy", "all"),
                ("--scheduler", "all"),
                ("--interval", "300s"),
                ("--latency-target-min", "60"),
            ],
        ),
    ];
    for (command, flags) in cases {
        let help = help(command);
        for (flag, default) in *flags {
            let text = flag_help(&help, flag);
            assert!(
                text.contains(&format!("[default: {default}]")),
                "hearth {command} {flag}: expected default {default} in {text:?}"
            );
        }
    }
    let agent = help("agent");
    assert!(flag_help(&agent, "--listen").contains("else 127.0.0.1:9100"));
    assert!(flag_help(&agent, "--interval-secs").contains("else 60;"));
}

#[test]
fn calibration_finds_honest_paths_exact_and_every_cheat() {
    let home = tempfile::tempdir().unwrap();
    let args = [
        "verify",
        "calibrate",
        "--synth",
        "tiny",
        "--trials",
        "1",
        "--positions",
        "64",
        "--cheats",
    ];
    let (out, err) = hearth(home.path(), &args);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .collect();
    assert!(rows.len() >= 8, "{out}\n{err}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | label | honest | windows | min | median | max | flagged |
        let (label, honest, windows, flagged) = (cells[1], cells[2], cells[3], cells[7]);
        if label.starts_with("candle") {
            continue; // another implementation: reported, not held to the tolerance
        }
        let expect = if honest == "yes" {
            format!("0 / {windows}")
        } else {
            format!("{windows} / {windows}")
        };
        assert_eq!(flagged, expect, "{row}");
    }
    // Without the cheats, the trail and proof commands refuse clearly.
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["verify", "no-such-trail.json"])
        .env("HEARTH_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-trail.json"));
}

/// Started with no key, the agent generates a token, prints it once, stores it readable by the
/// operator only, and requires it (`swarm.rs` posts with and without it); a restart reuses it
/// without printing it again.
#[test]
fn agent_generates_its_token_once_and_keeps_it_private() {
    use std::io::BufRead;
    let home = tempfile::tempdir().unwrap();
    // The agent's stderr up to its "listening" line.
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["agent", "--simulated", "--listen", "127.0.0.1:0"])
            .env("HEARTH_HOME", home.path())
            .env_remove("HEARTH_AGENT_KEYS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("hearth runs");
        let mut said = String::new();
        let stderr = child.stderr.take().expect("stderr");
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.expect("utf-8");
            said.push_str(&line);
            said.push('\n');
            if line.starts_with("hearth agent:") {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        said
    };
    let first = start();
    let path = home.path().join("agent-token");
    let token = std::fs::read_to_string(&path).expect("a token file");
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    assert!(first.contains(token), "the token is printed once: {first}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let second = start();
    assert!(!second.contains(token), "printed again: {second}");
    assert!(second.contains("need the token in"), "{second}");
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token);
}
