//! `hearth model pull URL` and `hearth model list` end to end, against a one-file HTTP server
//! on loopback (the library's own tests cover resumption, PyPI and the refusals in depth).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

/// Serves `body` at every path, to HEAD and GET, until the test process ends.
fn serve(body: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            if request_line.starts_with("GET") {
                stream.write_all(body).unwrap();
            }
        }
    });
    base
}

fn hearth(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_HOME", home)
        .output()
        .expect("hearth runs")
}

const BODY: &[u8] = b"GGUF not really a model, but bytes to fetch";
const WRONG_SHA256: &str = "d4a0b0e0d2d8a4f8c1a4d9f8b7e1c0f2a3b4c5d6e7f8091a2b3c4d5e6f708192";

#[test]
fn pull_checks_the_digest_and_list_shows_the_model() {
    let base = serve(BODY);
    let home = tempfile::tempdir().unwrap();
    let url = format!("{base}/files/tiny.gguf");

    // A wrong digest: refused, named, nothing stored.
    let out = hearth(
        home.path(),
        &["model", "pull", &url, "--sha256", WRONG_SHA256],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sha256 mismatch") && stderr.contains(WRONG_SHA256),
        "{stderr}"
    );
    assert!(!home.path().join("models/tiny").exists());

    // No digest: stored, reported unverified with its digest, path on stdout.
    let out = hearth(home.path(), &["model", "pull", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let path = home.path().join("models/tiny/tiny.gguf");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        path.display().to_string()
    );
    assert_eq!(std::fs::read(&path).unwrap(), BODY);
    assert!(stderr.contains("unverified"), "{stderr}");

    let out = hearth(home.path(), &["model", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("smollm2-135m-instruct"), "{stdout}");
    assert!(stdout.contains(&path.display().to_string()), "{stdout}");

    // Bad arguments are refused before anything is fetched.
    let out = hearth(home.path(), &["model", "pull", &url, "--name", "../x"]);
    assert!(!out.status.success());
    let out = hearth(home.path(), &["model", "pull", "no-such-model"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("known: smollm2-135m-instruct"),
        "{stderr}"
    );
}
