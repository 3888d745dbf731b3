//! A cheating node is caught, proven wrong, replaced, and the generation's text is the honest one
//! (issue #12).
//!
//! Per adversary mode: honest nodes A (blocks 0..15), B and C (15..30), and a cheater X (15..30)
//! that announces itself as the fastest server, so the client's route goes through it. The
//! client checks the prefill before using it (`--check-prefill`) and every later window
//! (`--check-probability 1`): the verifiers B and C both disagree with X, X is banned and
//! replaced (a cheat that starts after the prefill is caught when its decode window closes, and
//! the tokens drawn from its output meanwhile, held back from the text, are sampled again), a
//! fraud proof is written, `hearth verify fraud-proof` re-checks it with the model,
//! `hearth verify` checks the trail offline, and the token ids equal those of a run without X.
//! The verdict persists: a later client process on the same `$HEARTH_HOME` never routes to X.
//! And it spreads: B and C re-check the proof and host it, and a client with its own, empty
//! reputation file finds it in the DHT, re-checks it and never routes to X either.
//!
//! Runs on SmolLM2-135M-Instruct (`HEARTH_SMOLLM2_GGUF`, as `failover.rs` does), converted to F16
//! so that "lower precision" can be a Q4_0 of the same weights. Needs the `adversary` feature,
//! which hearth's test builds turn on (the dev-dependency on hearth-swarm).

mod common;

use common::{hearth, smollm2, token_ids, NodeProc};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const PROMPT: &str = "The three most useful things to pack for a week of hiking are";
const MAX_TOKENS: usize = 40;

fn convert(home: &Path, model: &Path, quant: &str, name: &str) -> PathBuf {
    let out = home.join(name);
    let status = hearth(home)
        .args(["model", "convert"])
        .arg(model)
        .args(["--quant", quant, "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run convert");
    assert!(status.success(), "convert to {quant} failed");
    out
}

fn model_id(home: &Path, model: &Path) -> String {
    let out = hearth(home)
        .args(["model", "info"])
        .arg(model)
        .output()
        .expect("model info");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("model id:"))
        .expect("model info prints the id")
        .trim()
        .to_string()
}

fn node(
    home: &Path,
    name: &str,
    model: &Path,
    blocks: &str,
    boot: Option<&str>,
    extra: &[&str],
) -> NodeProc {
    let m = [OsStr::new("--model"), model.as_os_str()];
    NodeProc::start(home, name, &m, blocks, boot, extra)
}

/// Runs a client to the end; returns its token ids and log.
fn generate(home: &Path, model: &Path, boot: &str, extra: &[&str]) -> (Vec<u32>, String) {
    let output = hearth(home)
        .args(["--threads", "1", "generate", "--swarm", "--model"])
        .arg(model)
        .args(["--prompt", PROMPT, "--token-ids"])
        .args(["--max-tokens", &MAX_TOKENS.to_string()])
        .args(["--bootstrap", boot, "--no-mdns"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--step-timeout", "30"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run client");
    token_ids(output)
}

/// Lets a new node's DHT records reach the others before a client looks for servers.
fn settle() {
    std::thread::sleep(std::time::Duration::from_secs(2));
}

#[test]
fn every_adversary_is_caught_proven_and_replaced_and_the_text_is_the_honest_one() {
    let Some(original) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let model = convert(home, &original, "f16", "smollm2-f16.gguf");
    let lower = convert(home, &model, "q4_0", "smollm2-q4_0.gguf");
    let id = model_id(home, &model);

    let a = node(home, "a", &model, "0..15", None, &[]);
    let b = node(home, "b", &model, "15..30", Some(&a.addr), &[]);
    settle();
    let (honest, _) = generate(home, &model, &a.addr, &["--check-probability", "0"]);
    // Past position 32: a decode window closes (and is checked) in every run.
    assert!(
        honest.len() > 24,
        "the honest run stopped early: {honest:?}"
    );
    let _c = node(home, "c", &model, "15..30", Some(&a.addr), &[]);

    let claim = format!("claim-model:{id}");
    let modes: Vec<(&str, &Path, String)> = vec![
        ("noise 1e-3", &model, "noise:1e-3".into()),
        ("noise 1e-2", &model, "noise:1e-2".into()),
        ("stale output", &model, "stale".into()),
        ("random output", &model, "random".into()),
        ("input copied to output", &model, "copy-input".into()),
        ("one block skipped", &model, "skip-block".into()),
        ("lower precision (Q4_0) claiming the F16 id", &lower, claim),
        // An honest prefill, then random output: caught when a decode window closes, with the window's
        // tokens already sampled; they are held back, taken back and sampled again.
        (
            "random output from position 20",
            &model,
            "random@from:20".into(),
        ),
    ];
    for (i, (what, served, mode)) in modes.iter().enumerate() {
        let name = format!("x{i}");
        let x = node(
            home,
            &name,
            served,
            "15..30",
            Some(&b.addr),
            &["--adversary", mode],
        );
        settle();
        let trail = home.join(format!("trail-{i}.json"));
        let proofs = home.join(format!("proofs-{i}"));
        let (ids, catching_log) = generate(
            home,
            &model,
            &a.addr,
            &[
                "--check-prefill",
                "--check-probability",
                "1",
                "--trail",
                trail.to_str().expect("utf-8 path"),
                "--fraud-dir",
                proofs.to_str().expect("utf-8 path"),
            ],
        );
        let log = &catching_log;
        assert_eq!(
            ids, honest,
            "{what}: the text differs from the honest run\n{log}"
        );
        assert!(
            log.contains("fraud proof against"),
            "{what}: the cheater was not caught\n{log}"
        );
        let proof = std::fs::read_dir(&proofs)
            .expect("proof dir")
            .next()
            .expect("a proof file")
            .expect("dir entry")
            .path();
        let out = hearth(home)
            .args(["verify", "fraud-proof"])
            .arg(&proof)
            .arg("--model")
            .arg(&model)
            .output()
            .expect("verify fraud-proof");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("the proof holds"),
            "{what}: the fraud proof does not re-check: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = hearth(home)
            .arg("verify")
            .arg(&trail)
            .output()
            .expect("verify trail");
        assert!(
            out.status.success(),
            "{what}: the trail does not verify: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // With the model: every hop re-executed (the cheater's are the wrong ones the trail
        // records as caught) and every token choice replayed from the logits and the seed.
        let out = hearth(home)
            .arg("verify")
            .arg(&trail)
            .arg("--model")
            .arg(&model)
            .output()
            .expect("verify trail --model");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("every hop and every token choice re-checks"),
            "{what}: the trail does not re-execute: {said}"
        );
        let trail_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&trail).expect("trail")).expect("json");
        let checks = trail_json["spot_checks"]["checks"]
            .as_array()
            .expect("checks");
        assert!(
            checks.iter().any(|c| c["outcome"] == "failed"),
            "{what}: no failed check in the trail"
        );
        let rewinds = trail_json["tokens"]["rewinds"]
            .as_array()
            .map_or(0, Vec::len);
        if mode.contains("@from:") {
            // Caught after tokens were drawn from its output: they were taken back, and the
            // re-execution saw that they were.
            assert_eq!(rewinds, 1, "{what}: {}", trail_json["tokens"]);
            assert!(
                !said.contains("(0 drawn from a caught node"),
                "{what}: {said}"
            );
        } else {
            assert_eq!(
                rewinds, 0,
                "{what}: caught at the prefill, nothing to take back"
            );
        }
        if i == 0 {
            // A light client notices any edit: change one receipt's claimed output.
            let mut tampered = trail_json.clone();
            let r = &mut tampered["receipts"][1]["bytes"];
            let mut bytes = r.as_str().expect("hex").to_string();
            let flip = if bytes.ends_with('0') { "1" } else { "0" };
            bytes.replace_range(bytes.len() - 1.., flip);
            *r = serde_json::Value::String(bytes);
            let bad = home.join("tampered.json");
            std::fs::write(&bad, serde_json::to_vec(&tampered).expect("json")).expect("write");
            let out = hearth(home)
                .arg("verify")
                .arg(&bad)
                .output()
                .expect("verify");
            assert!(!out.status.success(), "a tampered trail verified");
            // A generated token that the sampler would not have picked: found by the replay.
            let mut lying = trail_json.clone();
            let first = lying["tokens"]["generated"][0].as_u64().expect("a token");
            lying["tokens"]["generated"][0] = serde_json::Value::from(first + 1);
            let bad = home.join("lying.json");
            std::fs::write(&bad, serde_json::to_vec(&lying).expect("json")).expect("write");
            let out = hearth(home)
                .arg("verify")
                .arg(&bad)
                .arg("--model")
                .arg(&model)
                .output()
                .expect("verify");
            assert!(
                !out.status.success(),
                "a trail with a forged token re-executed"
            );
            // The verdict persists ($HEARTH_HOME/reputation.json): a new client process, checking
            // nothing, never routes to the cheater although it still claims to be the fastest.
            let sessions = |x: &NodeProc| x.log().matches("session opened").count();
            let before = sessions(&x);
            let (ids, log) = generate(home, &model, &a.addr, &["--check-probability", "0"]);
            assert_eq!(ids, honest, "{log}");
            assert_eq!(
                sessions(&x),
                before,
                "a caught cheater got a session again: {log}"
            );
            // The proof spreads: B and C re-checked and host it, and a client with a reputation
            // file of its own (it never dealt with X) finds it in the DHT, re-checks it on one
            // of them and never routes to X either.
            assert!(
                catching_log.contains("hosted for the swarm by 2 nodes"),
                "the fraud proof was not hosted by B and C: {catching_log}"
            );
            let own = home.join("other-client-reputation.json");
            let (ids, log) = generate(
                home,
                &model,
                &a.addr,
                &[
                    "--check-probability",
                    "0",
                    "--reputation-file",
                    own.to_str().expect("utf-8 path"),
                ],
            );
            assert_eq!(ids, honest, "{log}");
            assert_eq!(
                sessions(&x),
                before,
                "a client that only heard of the proof routed to the cheater: {log}"
            );
            let scores: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&own).expect("reputation file"))
                    .expect("json");
            let excluded: Vec<&String> = scores
                .as_object()
                .expect("a map")
                .iter()
                .filter(|(_, r)| r["failed"].as_u64() > Some(0))
                .map(|(peer, _)| peer)
                .collect();
            assert_eq!(excluded.len(), 1, "{scores}");
        }
        drop(x);
    }
}
