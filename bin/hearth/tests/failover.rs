//! Failover is exact on real weights (issue #11): a node killed at any step, in the prefill or in
//! decode, is replaced by another whose replayed cache is bit for bit the original's, so the
//! generation's token ids equal those of the uninterrupted run.
//!
//! Runs on SmolLM2-135M-Instruct (`hearth model pull smollm2-135m-instruct`), whose path is taken
//! from `HEARTH_SMOLLM2_GGUF`: its Q4_1 file as shipped (candle's kernels for the blocks) and Q8_0
//! and F16 conversions of it (hearth's kernels). `HEARTH_FAILOVER_KILLS` kill points per format
//! (default 2; `scripts/failover_exactness.sh` runs 34 per format, 102 in all). Without the
//! variable the test says SKIPPED, except under CI (`CI=true`), where that is a failure.

mod common;

use common::{hearth, smollm2, token_ids, wait_for, NodeProc};
use hearth_core::SplitMix64;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

const PROMPT: &str = "The three most useful things to pack for a week of hiking are";
/// Generated tokens per run: long enough that a changed rounding early on shows as a changed
/// token later (on SmolLM2 the old replay diverged 50–60 tokens after the failover point).
const MAX_TOKENS: usize = 64;
/// The blocks of the node that stays up; the victim and its replacement serve the rest.
const FIRST: &str = "0..15";
const SECOND: &str = "15..30";

/// A node of `model` (see [`NodeProc::start`]).
fn node(
    home: &Path,
    name: &str,
    model: &Path,
    blocks: &str,
    bootstrap: Option<&str>,
    extra: &[&str],
) -> NodeProc {
    let model = [OsStr::new("--model"), model.as_os_str()];
    NodeProc::start(home, name, &model, blocks, bootstrap, extra)
}

fn client(home: &Path, model: &Path, bootstrap: &str) -> Child {
    client_with(home, model, bootstrap, &[])
}

fn client_with(home: &Path, model: &Path, bootstrap: &str, extra: &[&str]) -> Child {
    hearth(home)
        .args(["--threads", "1", "generate", "--swarm", "--model"])
        .arg(model)
        .args(extra)
        .args(["--prompt", PROMPT, "--token-ids"])
        .args(["--max-tokens", &MAX_TOKENS.to_string()])
        .args(["--bootstrap", bootstrap, "--no-mdns"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--step-timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start client")
}

/// The client's token ids and its log.
fn finish(child: Child) -> (Vec<u32>, String) {
    token_ids(child.wait_with_output().expect("client output"))
}

/// `model` converted to `quant` in `dir` (the file as is for `None`).
fn model_file(home: &Path, model: &Path, quant: Option<&str>) -> PathBuf {
    let Some(quant) = quant else {
        return model.to_path_buf();
    };
    let out = home.join(format!("smollm2-{quant}.gguf"));
    let status = hearth(home)
        .args(["model", "convert"])
        .arg(model)
        .args(["--quant", quant, "--out"])
        .arg(&out)
        .status()
        .expect("run convert");
    assert!(status.success(), "convert to {quant} failed");
    out
}

/// One format: the uninterrupted run, then `kills` runs whose second-span node aborts on a
/// random step (its first step is the prefill), each required to give the same token ids.
fn failover_is_exact(quant: Option<&str>, kills: usize, seed: u64) {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let model = model_file(home, &model, quant);
    let expected = {
        let first = node(home, "first", &model, FIRST, None, &[]);
        let _second = node(home, "second", &model, SECOND, Some(&first.addr), &[]);
        finish(client(home, &model, &first.addr)).0
    };
    assert!(expected.len() >= 32, "the reference run stopped early");
    let mut rng = SplitMix64::new(seed);
    for kill in 0..kills {
        // Steps on the victim: 1 prefill, then one per generated token but the last (or, when
        // the run ended on an end-of-text token, but none).
        let step = 1 + rng.below(expected.len() as u64);
        let fault = format!("crash-at-step:{step}");
        // A fresh swarm per kill point: dead peers from earlier rounds would otherwise pile up
        // in the DHT's routing tables and slow every lookup.
        let first = node(home, &format!("first{kill}"), &model, FIRST, None, &[]);
        let victim = node(
            home,
            &format!("victim{kill}"),
            &model,
            SECOND,
            Some(&first.addr),
            &["--fault", &fault],
        );
        let run = client(home, &model, &first.addr);
        wait_for(
            "the victim to get the session",
            Duration::from_secs(120),
            || victim.log().contains("session opened"),
        );
        // Joins only now, so the victim is certainly on the route; the client waits for it.
        let _replacement = node(
            home,
            &format!("replacement{kill}"),
            &model,
            SECOND,
            Some(&first.addr),
            &[],
        );
        let (ids, log) = finish(run);
        assert!(
            log.contains("failover:"),
            "{quant:?}: no failover at step {step}: {log}"
        );
        assert_eq!(
            ids, expected,
            "{quant:?}: killing the node at step {step} changed the tokens: {log}"
        );
        eprintln!(
            "{quant:?}: killed at step {step}: the same {} tokens",
            expected.len()
        );
    }
}

fn kills() -> usize {
    std::env::var("HEARTH_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

#[test]
fn failover_is_exact_on_smollm2_q4_1() {
    failover_is_exact(None, kills(), 1);
}

#[test]
fn failover_is_exact_on_smollm2_q8_0() {
    failover_is_exact(Some("q8_0"), kills(), 2);
}

#[test]
fn failover_is_exact_on_smollm2_f16() {
    failover_is_exact(Some("f16"), kills(), 3);
}

/// With f32 on the wire nothing is rounded at span boundaries: the swarm gives the token ids of a
/// local run, and a replacement that splits the failed span at another boundary is exact too.
#[test]
fn f32_wire_matches_local_and_survives_a_differently_split_replacement() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let local = hearth(home)
        .args(["--threads", "1", "generate", "--model"])
        .arg(&model)
        .args(["--prompt", PROMPT, "--token-ids"])
        .args(["--max-tokens", &MAX_TOKENS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("local generate");
    let (expected, _) = finish(local);
    let f32_wire = ["--wire-dtype", "f32"];
    let first = node(home, "first", &model, FIRST, None, &[]);
    let victim = node(
        home,
        "victim",
        &model,
        SECOND,
        Some(&first.addr),
        &["--fault", "crash-at-step:20"],
    );
    let run = client_with(home, &model, &first.addr, &f32_wire);
    wait_for(
        "the victim to get the session",
        Duration::from_secs(120),
        || victim.log().contains("session opened"),
    );
    let _a = node(home, "a", &model, "15..22", Some(&first.addr), &[]);
    let _b = node(home, "b", &model, "22..30", Some(&first.addr), &[]);
    let (ids, log) = finish(run);
    assert!(log.contains("failover:"), "no failover: {log}");
    assert!(
        log.contains("[15..22]"),
        "the replacement did not split the span: {log}"
    );
    assert_eq!(
        ids, expected,
        "f32 wire: swarm with failover differs from local: {log}"
    );
}
