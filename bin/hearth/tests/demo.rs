//! `hearth demo` end to end on loopback: a model given by path, the synthesized model on
//! request, and the fallback when the default model cannot be pulled. No test reaches the
//! network: the hub is pointed at an address nothing listens on.

use std::path::Path;
use std::process::{Command, Output};

/// Port 9 (discard) on loopback: connections are refused at once.
const UNREACHABLE_PYPI: &str = "http://127.0.0.1:9";

fn demo(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("demo")
        .args(args)
        .env("HEARTH_HOME", home)
        .env("HEARTH_PYPI_URL", UNREACHABLE_PYPI)
        .output()
        .expect("hearth runs")
}

/// The generated text: the line of stdout that starts with the prompt (node lines come first).
fn generated<'a>(stdout: &'a str, prompt: &str) -> Option<&'a str> {
    stdout.lines().find(|l| l.starts_with(prompt))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_runs_a_model_given_by_path() {
    let home = tempfile::tempdir().unwrap();
    let gguf = home.path().join("tiny.gguf");
    let synth = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["model", "synth", "--format", "gguf", "--out"])
        .arg(&gguf)
        .env("HEARTH_HOME", home.path())
        .output()
        .expect("hearth runs");
    assert!(synth.status.success(), "{}", text(&synth).1);

    let path = gguf.to_str().unwrap();
    let out = demo(
        home.path(),
        &[
            "--model",
            path,
            "--nodes",
            "2",
            "--max-tokens",
            "4",
            "-p",
            "Hi",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(generated(&stdout, "Hi").is_some(), "{stdout}");
    assert!(stderr.contains("2 servers cover all"), "{stderr}");
    assert!(stderr.contains("4 generated"), "{stderr}");
    // A path is used as it is: nothing pulled, nothing synthesized.
    assert!(!stderr.contains("pulling"), "{stderr}");
    assert!(!stderr.contains("synthesizing"), "{stderr}");
}

#[test]
fn demo_falls_back_to_the_synthesized_model_when_the_pull_fails() {
    let home = tempfile::tempdir().unwrap();
    let out = demo(home.path(), &["--nodes", "1", "--max-tokens", "3"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("could not get smollm2-135m-instruct ("))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("127.0.0.1:9"),
        "the error names the address: {}",
        said[0]
    );
    assert!(
        said[0].ends_with("running the synthesized tiny model instead"),
        "{}",
        said[0]
    );
    assert!(
        generated(&stdout, "The capital of France is").is_some(),
        "{stdout}"
    );
    assert!(stderr.contains("1 servers cover all"), "{stderr}");
    assert!(stderr.contains("3 generated"), "{stderr}");
}

#[test]
fn demo_synth_never_tries_to_pull() {
    let home = tempfile::tempdir().unwrap();
    let out = demo(
        home.path(),
        &["--synth", "tiny", "--nodes", "1", "--max-tokens", "2"],
    );
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("could not get"), "{stderr}");
    assert!(
        stderr.contains("synthesizing a tiny-shaped model"),
        "{stderr}"
    );
}

#[test]
fn demo_refuses_an_unknown_model_without_falling_back() {
    let home = tempfile::tempdir().unwrap();
    let out = demo(home.path(), &["--model", "no-such-model"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("no-such-model"), "{stderr}");
    assert!(
        stderr.contains("smollm2-135m-instruct"),
        "names the known models: {stderr}"
    );
    assert!(!stderr.contains("synthesized"), "{stderr}");
}
