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
fn bad_arguments_fail_cleanly() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["generate", "--model", "/nonexistent/model", "--prompt", "x"][..],
        &["generate", "--synth", "no-such-shape"],
        &["generate", "--synth", "tiny", "--split", "7"],
        &["generate", "--synth", "tiny", "--device", "tpu"],
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
