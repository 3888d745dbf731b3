//! Pulling a URL from a local server: resumption with `Range`, servers that ignore it, digests
//! given or stated by the server, and every refusal leaving nothing behind.

mod common;

use common::{noise, sha256_hex, tree, Recorder, Served, Server};
use hearth_hub::{part_path, Hub, HubError, Limits, ModelName, Resolved, Sha256Digest, Silent};

const PATH: &str = "/org/repo/resolve/main/tiny.gguf";

fn ranged(body: &[u8]) -> Served {
    Served {
        body: body.to_vec(),
        honour_range: true,
        ..Served::default()
    }
}

#[test]
fn a_cut_download_resumes_from_its_part_file() {
    let server = Server::start();
    let body = noise(300_000, 2);
    let cut = 100_000;
    let url = server.put(
        PATH,
        Served {
            cut_first_after: Some(cut),
            ..ranged(&body)
        },
    );
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    let digest: Sha256Digest = sha256_hex(&body).parse().unwrap();
    let sha = Some(digest);

    // One attempt: the cut fails the pull and keeps what arrived.
    let err = hub.pull(&url, None, sha, &mut Silent).unwrap_err();
    assert!(err.is_transient(), "{err}");
    let dest = home.path().join("models/tiny/tiny.gguf");
    let part = part_path(&dest);
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cut as u64);
    assert!(!dest.exists());

    // The next pull asks for the rest only, and the whole file checks out.
    let mut progress = Recorder::default();
    let pulled = hub.pull(&url, None, sha, &mut progress).unwrap();
    let gets = server.gets(PATH);
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(pulled.path, dest);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(pulled.sha256, sha);
    assert_eq!(pulled.verified.unwrap().digest, digest);
    assert!(!part.exists());
    let total = body.len() as u64;
    assert_eq!(
        progress.transfers,
        [(
            "tiny.gguf".to_owned(),
            Some(total),
            cut as u64,
            total - cut as u64,
            true
        )]
    );
    assert!(matches!(hub.store().resolve("tiny").unwrap(), Resolved::Path(p) if p == dest));
}

#[test]
fn a_cut_download_is_retried_within_one_pull() {
    let server = Server::start();
    let body = noise(200_000, 3);
    let url = server.put(
        PATH,
        Served {
            cut_first_after: Some(50_000),
            ..ranged(&body)
        },
    );
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(2)).unwrap();
    let sha = Some(sha256_hex(&body).parse().unwrap());
    let pulled = hub.pull(&url, None, sha, &mut Silent).unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), body);
    let ranges: Vec<_> = server.gets(PATH).into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [None, Some("bytes=50000-".to_owned())]);
}

#[test]
fn a_server_that_ignores_range_restarts_the_file() {
    let server = Server::start();
    let body = noise(100_000, 4);
    let url = server.put(
        PATH,
        Served {
            body: body.clone(),
            ..Served::default()
        },
    );
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    // A stale part of other bytes: kept, it would spoil the digest.
    let dest = home.path().join("models/tiny/tiny.gguf");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(part_path(&dest), noise(1000, 99)).unwrap();

    let sha = Some(sha256_hex(&body).parse().unwrap());
    let pulled = hub.pull(&url, None, sha, &mut Silent).unwrap();
    assert_eq!(server.gets(PATH)[0].range.as_deref(), Some("bytes=1000-"));
    assert_eq!(std::fs::read(&pulled.path).unwrap(), body);
}

#[test]
fn a_part_as_long_as_the_file_starts_over() {
    // A 416 answer: the part cannot be continued (here: it is complete but was never renamed).
    let server = Server::start();
    let body = noise(10_000, 5);
    let url = server.put(PATH, ranged(&body));
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    let dest = home.path().join("models/tiny/tiny.gguf");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(part_path(&dest), &body).unwrap();

    let pulled = hub.pull(&url, None, None, &mut Silent).unwrap();
    let ranges: Vec<_> = server.gets(PATH).into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [Some("bytes=10000-".to_owned()), None]);
    assert_eq!(std::fs::read(&pulled.path).unwrap(), body);
}

#[test]
fn a_wrong_digest_deletes_the_download_and_names_both() {
    let server = Server::start();
    let body = noise(50_000, 6);
    let url = server.put(PATH, ranged(&body));
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    let wrong = "12".repeat(32);
    let err = hub
        .pull(&url, None, Some(wrong.parse().unwrap()), &mut Silent)
        .unwrap_err();
    assert!(matches!(err, HubError::HashMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&wrong), "{message}");
    assert!(message.contains(&sha256_hex(&body)), "{message}");
    assert!(message.contains("deleted"), "{message}");
    assert!(tree(&home.path().join("models")).is_empty());
}

#[test]
fn the_servers_stated_digest_is_checked() {
    let server = Server::start();
    let body = noise(40_000, 7);
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();

    // Hugging Face style: the sha256 in X-Linked-ETag, found by a HEAD request.
    let good = server.put(
        "/good/tiny.gguf",
        Served {
            linked_etag: Some(sha256_hex(&body)),
            etag: Some("5f1a-3c".to_owned()),
            ..ranged(&body)
        },
    );
    let pulled = hub.pull(&good, None, None, &mut Silent).unwrap();
    let verified = pulled.verified.unwrap();
    assert_eq!(verified.digest.to_string(), sha256_hex(&body));
    assert!(
        verified.origin.contains("X-Linked-ETag"),
        "{}",
        verified.origin
    );
    assert_eq!(server.seen("/good/tiny.gguf")[0].method, "HEAD");

    // A stated digest that does not match.
    let bad = server.put(
        "/bad/other.gguf",
        Served {
            etag: Some("34".repeat(32)),
            ..ranged(&body)
        },
    );
    let err = hub.pull(&bad, None, None, &mut Silent).unwrap_err();
    assert!(
        matches!(&err, HubError::HashMismatch { origin, .. } if origin.contains("ETag")),
        "{err}"
    );
    assert!(!home.path().join("models/other").exists());

    // No usable tag: stored unverified, its digest reported.
    let plain = server.put("/plain/x.gguf", ranged(&body));
    let pulled = hub.pull(&plain, None, None, &mut Silent).unwrap();
    assert!(pulled.verified.is_none());
    assert_eq!(pulled.sha256.unwrap().to_string(), sha256_hex(&body));
}

#[test]
fn files_of_one_name_share_a_folder_and_are_not_fetched_twice() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    let name: ModelName = "my-model".parse().unwrap();
    let config = server.put("/r/config.json", ranged(b"{}"));
    let weights = server.put("/r/model.safetensors", ranged(&noise(1000, 8)));
    hub.pull(&config, Some(name.clone()), None, &mut Silent)
        .unwrap();
    hub.pull(&weights, Some(name.clone()), None, &mut Silent)
        .unwrap();
    let dir = home.path().join("models/my-model");
    assert!(matches!(hub.store().resolve("my-model").unwrap(), Resolved::Path(p) if p == dir));

    let again = hub
        .pull(&weights, Some(name.clone()), None, &mut Silent)
        .unwrap();
    assert!(!again.fetched);
    assert_eq!(server.gets("/r/model.safetensors").len(), 1);
    // Checked against a given digest even when already there.
    let wrong = Some("56".repeat(32).parse().unwrap());
    assert!(matches!(
        hub.pull(&weights, Some(name), wrong, &mut Silent),
        Err(HubError::StoredMismatch { .. })
    ));
}

#[test]
fn missing_files_and_error_statuses_leave_nothing() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    let url = format!("{}/missing.gguf", server.base);
    let err = hub.pull(&url, None, None, &mut Silent).unwrap_err();
    assert!(matches!(err, HubError::Status { status: 404, .. }), "{err}");
    assert!(err.to_string().contains("missing.gguf"), "{err}");
    assert!(tree(&home.path().join("models")).is_empty());
}

#[test]
fn oversized_files_are_refused() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let mut options = server.options(1);
    options.limits = Limits {
        max_bytes: 4096,
        ..options.limits
    };
    let hub = Hub::with_options(home.path(), options).unwrap();
    let body = noise(5000, 9);

    // Refused on its Content-Length, before any byte is written.
    let stated = server.put("/big/stated.gguf", ranged(&body));
    let err = hub.pull(&stated, None, None, &mut Silent).unwrap_err();
    assert!(
        matches!(
            err,
            HubError::TooLarge {
                bytes: 5000,
                limit: 4096,
                ..
            }
        ),
        "{err}"
    );

    // Chunked, without a length: refused once it grows past the limit.
    let chunked = server.put(
        "/big/chunked.gguf",
        Served {
            chunked: true,
            ..ranged(&body)
        },
    );
    let err = hub.pull(&chunked, None, None, &mut Silent).unwrap_err();
    assert!(
        matches!(err, HubError::TooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert!(tree(&home.path().join("models")).is_empty());
}

#[test]
fn a_part_locked_by_another_download_is_left_alone() {
    let server = Server::start();
    let url = server.put(PATH, ranged(&noise(1000, 10)));
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    let dest = home.path().join("models/tiny/tiny.gguf");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let other = std::fs::File::create(part_path(&dest)).unwrap();
    other.lock().unwrap();
    let err = hub.pull(&url, None, None, &mut Silent).unwrap_err();
    assert!(matches!(err, HubError::Busy { .. }), "{err}");
    assert!(server.gets(PATH).is_empty());
}

#[test]
fn bad_urls_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::new(home.path()).unwrap();
    for bad in ["http://", "https://host/", "http://host/..%2F.hidden"] {
        assert!(hub.pull(bad, None, None, &mut Silent).is_err(), "{bad}");
    }
}
