//! Multi-process swarm tests on loopback: real `hearth node` processes, a real client process.

mod common;

use common::{capture, hearth, wait_for, NodeProc};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PROMPT: &str = "Hello, hearth";

/// A node of the synthesized `tiny` model (see [`NodeProc::start`]).
fn node(
    home: &Path,
    name: &str,
    blocks: &str,
    bootstrap: Option<&str>,
    extra: &[&str],
) -> NodeProc {
    NodeProc::start(home, name, &["--synth", "tiny"], blocks, bootstrap, extra)
}

fn local_text(home: &Path, max_tokens: usize) -> String {
    let out = hearth(home)
        .args([
            "generate", "--synth", "tiny", "--split", "3", "--prompt", PROMPT,
        ])
        .args(["--max-tokens", &max_tokens.to_string()])
        .output()
        .expect("run local generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn swarm_client(home: &Path, bootstrap: &str, max_tokens: usize) -> Child {
    swarm_client_with(home, bootstrap, max_tokens, &[])
}

fn swarm_client_with(home: &Path, bootstrap: &str, max_tokens: usize, extra: &[&str]) -> Child {
    hearth(home)
        .args(["generate", "--swarm", "--synth", "tiny", "--prompt", PROMPT])
        .args(["--max-tokens", &max_tokens.to_string()])
        .args([
            "--bootstrap",
            bootstrap,
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--step-timeout", "10"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start client")
}

fn finish(child: Child) -> (String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("client output");
    let stderr = String::from_utf8_lossy(&stderr).to_string();
    assert!(status.success(), "client failed: {stderr}");
    (String::from_utf8(stdout).expect("utf-8"), stderr)
}

fn home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[test]
fn three_node_swarm_generates_the_same_tokens_as_local_generation() {
    let (_d, home) = home();
    let expected = local_text(&home, 24);
    let a = node(&home, "a", "0..2", None, &[]);
    let _b = node(&home, "b", "2..4", Some(&a.addr), &[]);
    let _c = node(&home, "c", "4..6", Some(&a.addr), &[]);
    let (text, log) = finish(swarm_client(&home, &a.addr, 24));
    assert_eq!(text, expected);
    // 3 hops × (1 prefill + 23 decode steps), every one verified.
    assert!(log.contains("72 hop receipts, 72 verified"), "{log}");
    assert!(log.contains("[0..2] -> "), "{log}");
}

#[test]
fn killing_a_middle_node_mid_generation_fails_over_without_changing_the_output() {
    let (_d, home) = home();
    let expected = local_text(&home, 48);
    let slow = ["--step-delay-ms", "40"];
    let a = node(&home, "a", "0..2", None, &[]);
    let mut b1 = node(&home, "b1", "2..4", Some(&a.addr), &slow);
    let mut b2 = node(&home, "b2", "2..4", Some(&a.addr), &slow);
    let _c = node(&home, "c", "4..6", Some(&a.addr), &[]);
    // No spot checks: a check would open a session on the other middle node (as the verifier),
    // and the test tells the serving node by its "session opened".
    let client = swarm_client_with(&home, &a.addr, 48, &["--check-probability", "0"]);
    wait_for(
        "a middle node to get the session",
        Duration::from_secs(60),
        || b1.log().contains("session opened") || b2.log().contains("session opened"),
    );
    // Let a few tokens pass, then kill -9 whichever middle node holds the session.
    std::thread::sleep(Duration::from_millis(500));
    let victim = if b1.log().contains("session opened") {
        &mut b1
    } else {
        &mut b2
    };
    victim.child.kill().expect("SIGKILL");
    let (text, log) = finish(client);
    assert_eq!(text, expected, "{log}");
    assert!(log.contains("failover:"), "no failover reported: {log}");
    let survivor = if b1.child.try_wait().ok().flatten().is_some() {
        &b2
    } else {
        &b1
    };
    assert!(survivor.log().contains("session opened"), "{log}");
}

/// A node that misbehaves in the given way is detected, banned and replaced by a good node that
/// joins only after the failure (so the bad node is certainly tried first).
fn misbehaving_node_is_routed_around(fault: &str, expected_reason: &str) {
    let (_d, home) = home();
    let expected = local_text(&home, 16);
    let a = node(&home, "a", "0..2", None, &[]);
    let _bad = node(&home, "bad", "2..4", Some(&a.addr), &["--fault", fault]);
    let _c = node(&home, "c", "4..6", Some(&a.addr), &[]);
    let mut client = swarm_client(&home, &a.addr, 16);
    let err = capture(client.stderr.take().expect("stderr"));
    wait_for(
        "the client to detect the bad node",
        Duration::from_secs(60),
        || err.lock().unwrap().contains("hop failed"),
    );
    let _good = node(&home, "good", "2..4", Some(&a.addr), &[]);
    let status = client.wait().expect("client");
    let log = err.lock().unwrap().clone();
    assert!(status.success(), "{log}");
    let mut text = String::new();
    client
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read stdout");
    assert_eq!(text, expected, "{log}");
    assert!(log.contains(expected_reason), "{fault}: {log}");
    assert!(log.contains("failover:"), "{log}");
}

#[test]
fn node_with_bad_signatures_is_routed_around() {
    misbehaving_node_is_routed_around("bad-signature", "bad signature");
}

#[test]
fn node_with_non_finite_hidden_states_is_routed_around() {
    misbehaving_node_is_routed_around("non-finite", "non-finite hidden state");
}

#[test]
fn node_with_wrong_shapes_is_routed_around() {
    misbehaving_node_is_routed_around("wrong-shape", "malformed answer");
}

#[test]
fn overlapping_uneven_spans_route_through_part_of_a_node() {
    let (_d, home) = home();
    let expected = local_text(&home, 12);
    let a = node(&home, "a", "0..4", None, &[]);
    let b = node(&home, "b", "1..6", Some(&a.addr), &[]);
    let (text, log) = finish(swarm_client(&home, &a.addr, 12));
    assert_eq!(text, expected, "{log}");
    // Two hops, at least one of them using only part of its node's blocks.
    let route = log
        .lines()
        .find(|l| l.starts_with("route:"))
        .expect("route line");
    assert_eq!(route.matches(" -> ").count(), 3, "{route}");
    assert!(
        route.contains("[0..4]") && route.contains("[4..6]")
            || route.contains("[0..1]") && route.contains("[1..6]"),
        "{route}"
    );
    let part_used = |n: &NodeProc, span: &str| {
        n.log()
            .lines()
            .any(|l| l.contains("session opened") && l.contains(&format!("span={span}")))
    };
    wait_for(
        "a node to log a session over part of its span",
        Duration::from_secs(10),
        || part_used(&a, "0..1") || part_used(&b, "4..6"),
    );
}

#[test]
fn automatic_placement_covers_the_model_and_serves_it() {
    let (_d, home) = home();
    let expected = local_text(&home, 8);
    let a = node(&home, "a", "auto", None, &[]);
    // Wait until a's announcement is in the DHT, so b sees what is missing.
    wait_for("a's announcement", Duration::from_secs(60), || {
        peers(&home, &a.addr).contains("1 servers")
    });
    let _b = node(&home, "b", "auto", Some(&a.addr), &[]);
    let listed = peers(&home, &a.addr);
    assert!(listed.contains("blocks 0..3"), "{listed}");
    assert!(listed.contains("blocks 3..6"), "{listed}");
    let (text, _) = finish(swarm_client(&home, &a.addr, 8));
    assert_eq!(text, expected);
}

/// When a node leaves and its blocks are no longer served, a node that shares blocks with
/// another moves to the uncovered ones (periodic rebalancing), and generation works again.
#[test]
fn rebalancing_covers_blocks_left_by_a_departed_node() {
    let (_d, home) = home();
    let expected = local_text(&home, 8);
    let fast = ["--rebalance-secs", "2"];
    let a = node(&home, "a", "auto", None, &fast);
    wait_for("a's announcement", Duration::from_secs(60), || {
        peers(&home, &a.addr).contains("1 servers")
    });
    let b = node(&home, "b", "auto", Some(&a.addr), &fast);
    wait_for("b's announcement", Duration::from_secs(60), || {
        peers(&home, &a.addr).contains("2 servers")
    });
    let c = node(&home, "c", "auto", Some(&a.addr), &fast);
    wait_for("c's announcement", Duration::from_secs(60), || {
        peers(&home, &a.addr).contains("3 servers")
    });
    let span_of = |listing: &str, node: &NodeProc| -> String {
        let id = node.addr.rsplit('/').next().expect("peer id").to_string();
        listing
            .lines()
            .find(|l| l.starts_with(&id))
            .and_then(|l| l.split_whitespace().nth(2))
            .expect("node listed")
            .to_string()
    };
    let listing = peers(&home, &a.addr);
    let (sa, sb, sc) = (
        span_of(&listing, &a),
        span_of(&listing, &b),
        span_of(&listing, &c),
    );
    assert_ne!(sa, sb, "{listing}");
    // Kill the node whose blocks c does not share; a must keep serving as bootstrap.
    let shares_a = sc == sa;
    let (victim, lost, keeper) = if shares_a { (b, sb, a) } else { (a, sa, b) };
    let bootstrap = if shares_a {
        keeper.addr.clone()
    } else {
        c.addr.clone()
    };
    drop(victim);
    // The two survivors serve the same blocks; either may be the one that moves (both
    // plan, and the first to act changes what the other sees), but not both.
    wait_for(
        "a survivor to move to the uncovered blocks",
        Duration::from_secs(40),
        || c.log().contains("rebalancing") || keeper.log().contains("rebalancing"),
    );
    wait_for(
        "the lost blocks to be served again",
        Duration::from_secs(30),
        || {
            let listing = peers(&home, &bootstrap);
            let spans = [span_of(&listing, &c), span_of(&listing, &keeper)];
            spans.contains(&lost) && spans[0] != spans[1]
        },
    );
    let (text, log) = finish(swarm_client(&home, &bootstrap, 8));
    assert_eq!(text, expected, "{log}");
    drop(keeper);
}

fn peers(home: &Path, bootstrap: &str) -> String {
    let out = hearth(home)
        .args(["peers", "--synth", "tiny", "--wait", "1", "--no-mdns"])
        .args(["--bootstrap", bootstrap, "--listen", "/ip4/127.0.0.1/tcp/0"])
        .output()
        .expect("run peers");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn dht_records_expire_when_a_node_leaves() {
    let (_d, home) = home();
    let a = node(&home, "a", "0..3", None, &[]);
    let b = node(&home, "b", "3..6", Some(&a.addr), &[]);
    let b_id = b.addr.rsplit('/').next().expect("peer id").to_string();
    wait_for("both announcements", Duration::from_secs(30), || {
        peers(&home, &a.addr).contains("2 servers")
    });
    let listed = peers(&home, &a.addr);
    assert!(listed.contains(&format!("{b_id} blocks 3..6")), "{listed}");
    drop(b); // SIGKILL: no goodbye, the records must age out (TTL 3 s)
    let gone = Instant::now();
    wait_for("b's records to expire", Duration::from_secs(20), || {
        let listed = peers(&home, &a.addr);
        listed.contains("1 servers") && !listed.contains(&b_id)
    });
    // Not before its lifetime: the record was refreshed at most a TTL ago.
    assert!(gone.elapsed() >= Duration::from_millis(500));
    assert!(peers(&home, &a.addr).contains("blocks 0..3"));
}

/// mDNS never announces loopback addresses, so this test builds a private network namespace
/// (unprivileged: `unshare -rn`) with a veth pair and runs two nodes and a client in it, with no
/// bootstrap peers at all.
#[test]
fn nodes_and_client_find_each_other_by_mdns_without_bootstrap() {
    let probe = Command::new("unshare")
        .args([
            "-rn", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: cannot create a network namespace with a veth pair here (needs `unshare -rn` and `ip`)"
        );
        return;
    }
    let (_d, home) = home();
    let expected = local_text(&home, 8);
    let script = r#"
set -e
ip link set lo up
ip link add v0 type veth peer name v1
ip link set v0 multicast on
ip addr add 10.77.0.1/24 dev v0
ip link set v0 up
ip link set v1 up
"$HEARTH" --threads 1 node --synth tiny --blocks 0..3 --data-dir "$HEARTH_HOME/m1" --listen /ip4/10.77.0.1/tcp/0 >/dev/null 2>"$HEARTH_HOME/m1.log" &
P1=$!
"$HEARTH" --threads 1 node --synth tiny --blocks 3..6 --data-dir "$HEARTH_HOME/m2" --listen /ip4/10.77.0.1/tcp/0 >/dev/null 2>"$HEARTH_HOME/m2.log" &
P2=$!
trap 'kill -9 $P1 $P2' EXIT
"$HEARTH" generate --swarm --synth tiny --listen /ip4/10.77.0.1/tcp/0 --prompt "$PROMPT" --max-tokens 8
"#;
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", script])
        .env("HEARTH", env!("CARGO_BIN_EXE_hearth"))
        .env("HEARTH_HOME", &home)
        .env("PROMPT", PROMPT)
        .output()
        .expect("run in namespace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{stderr}");
    assert!(stderr.contains("2 servers cover all 6 blocks"), "{stderr}");
}

/// One HTTP/1.1 request to a local server; the status code and body (for the agent's API).
fn http(method: &str, port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    http_as(method, port, path, body, "")
}

/// [`http`] with extra header lines (each ending in `\r\n`).
fn http_as(
    method: &str,
    port: u16,
    path: &str,
    body: &str,
    headers: &str,
) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A node tied to an energy agent's device serves while the agent says "serve AI" and leaves
/// the swarm when a demand-response event curtails the device; it returns when the event is
/// cancelled.
#[test]
fn a_node_follows_its_energy_agent() {
    let (_d, home) = home();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut agent = hearth(&home)
        .args(["agent", "--simulated", "--interval-secs", "1", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");
    wait_for("the agent's API", Duration::from_secs(60), || {
        http("GET", port, "/api/state", "").is_some_and(|(s, b)| s == 200 && b.contains("sim-gpu2"))
    });
    let agent_url = format!("http://127.0.0.1:{port}");
    let node = node(
        &home,
        "a",
        "0..6",
        None,
        &[
            "--agent-url",
            &agent_url,
            "--agent-device",
            "sim-gpu2",
            "--agent-poll-secs",
            "1",
        ],
    );
    // The simulated site has paid AI work for sim-gpu2: the node serves.
    wait_for("the node's announcement", Duration::from_secs(60), || {
        peers(&home, &node.addr).contains("1 servers")
    });
    // Writes need the token the agent generated in $HEARTH_HOME (no key was configured).
    let event = r#"{"id": "curtail-all", "duration": "PT1H", "target": {"limit_kw": 0}}"#;
    let (status, _) = http("POST", port, "/api/dr/events", event).expect("post event");
    assert_eq!(status, 401, "a write without the agent's token");
    let token = std::fs::read_to_string(home.join("agent-token")).expect("the agent's token");
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());
    let (status, body) = http_as("POST", port, "/api/dr/events", event, &auth).expect("post event");
    assert!((200..300).contains(&status), "{status} {body}");
    wait_for("the node to pause", Duration::from_secs(30), || {
        node.log().contains("pause serving")
    });
    wait_for("the node to leave the DHT", Duration::from_secs(30), || {
        peers(&home, &node.addr).contains("0 servers")
    });
    let (status, _) =
        http_as("DELETE", port, "/api/dr/events/curtail-all", "", &auth).expect("cancel");
    assert!((200..300).contains(&status));
    wait_for("the node to serve again", Duration::from_secs(60), || {
        peers(&home, &node.addr).contains("1 servers")
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

/// `--private-edges 2`: the client runs blocks 0..2 and 4..6 itself and the swarm only 2..4, so
/// the node serving 0..2 gets no session; the text is the local one, and the trail re-executes
/// (the first pass's input is the output of the client's own first blocks).
#[test]
fn private_edges_keep_the_first_and_last_blocks_in_the_client() {
    let (_d, home) = home();
    let expected = local_text(&home, 16);
    let a = node(&home, "a", "0..2", None, &[]);
    let _b = node(&home, "b", "2..4", Some(&a.addr), &[]);
    let trail = home.join("trail.json");
    let extra = [
        "--private-edges",
        "2",
        "--trail",
        trail.to_str().expect("utf-8"),
    ];
    let (text, log) = finish(swarm_client_with(&home, &a.addr, 16, &extra));
    assert_eq!(text, expected, "{log}");
    assert!(log.contains("route: client [0..2] -> "), "{log}");
    assert!(log.contains("[2..4] -> client [4..6]"), "{log}");
    assert!(!a.log().contains("session opened"), "{}", a.log());
    let model = home.join("models").join("synth-tiny");
    let out = hearth(&home)
        .arg("verify")
        .arg(&trail)
        .arg("--model")
        .arg(&model)
        .output()
        .expect("verify");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("every hop and every token choice re-checks"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // More private blocks than the model has: a clear refusal.
    let out = hearth(&home)
        .args(["generate", "--swarm", "--synth", "tiny", "--prompt", PROMPT])
        .args(["--private-edges", "3", "--bootstrap", &a.addr, "--no-mdns"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaves no blocks to the swarm"));
}
