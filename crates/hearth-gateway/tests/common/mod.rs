//! Helpers shared by the gateway's HTTP test binaries.

#![allow(dead_code)] // each binary uses its own subset

use hearth_engine::identity::identity_cached;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{DType, ModelSource};
use hearth_gateway::LocalBackend;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The model name the test gateways serve.
pub(crate) const MODEL: &str = "tiny-test";

/// One synthesized model for the whole test binary.
pub(crate) fn model_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        SynthModel::new(shape("tiny").unwrap(), 3)
            .unwrap()
            .write_hf(&dir.path().join("m"), DType::F32, &SynthOptions::default())
            .unwrap();
        dir
    })
    .path()
}

/// Every block of [`model_dir`]'s model in this process.
pub(crate) fn local_backend() -> LocalBackend {
    let src = ModelSource::open(&model_dir().join("m")).unwrap();
    let id = identity_cached(&src, &model_dir().join("ids")).unwrap();
    LocalBackend::new(src, id.model_id).unwrap()
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after `timeout`.
pub(crate) async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
