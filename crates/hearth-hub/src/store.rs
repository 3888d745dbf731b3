//! The models folder, `$HEARTH_HOME/models`: one folder per model name, and how a name or a path
//! given on the command line becomes a file to load.
//!
//! **Invariant:** files in a model's folder are complete (downloads and extractions are renamed
//! into place when done); names ending in `.part` and hidden names are work in progress and are
//! never a model.

use crate::{catalogue, HubError, KnownModel, ModelName};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The models folder under a hearth home.
#[derive(Clone, Debug)]
pub struct Store {
    models: PathBuf,
}

/// A model in the store.
#[derive(Clone, Debug)]
pub struct StoredModel {
    /// The model's name (its folder under `models`).
    pub name: ModelName,
    /// What to load: a `.gguf` file or an HF folder (see [`Store::stored`]).
    pub path: PathBuf,
    /// Bytes of its complete files.
    pub bytes: u64,
}

/// What a name or path given by a user refers to.
#[derive(Debug)]
pub enum Resolved {
    /// A file or folder to load.
    Path(PathBuf),
    /// A known model that is not pulled yet; [`crate::Hub::pull_known`] fetches it.
    NotPulled(&'static KnownModel),
}

impl Store {
    /// The store of the hearth home `home` (its `models` folder).
    pub fn new(home: &Path) -> Self {
        Self {
            models: home.join("models"),
        }
    }

    /// The folder all models are stored under (`<home>/models`).
    pub fn models_dir(&self) -> &Path {
        &self.models
    }

    /// The folder of the model `name`.
    pub fn dir(&self, name: &ModelName) -> PathBuf {
        self.models.join(name)
    }

    /// Where the known model `model` is kept once pulled.
    pub fn known_path(&self, model: &KnownModel) -> PathBuf {
        self.models.join(model.name).join(model.file_name())
    }

    /// Whether the known model's file is in the store.
    pub fn is_pulled(&self, model: &KnownModel) -> bool {
        self.known_path(model).is_file()
    }

    /// What to load for the stored model `name`: its folder when it holds `config.json` (an HF
    /// model), else its only `.gguf` file, else its folder when it holds any complete file.
    /// `None` when there is no such folder or nothing complete in it.
    pub fn stored(&self, name: &ModelName) -> Option<PathBuf> {
        let dir = self.dir(name);
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
        let files = complete_files(&dir);
        let mut ggufs = files
            .iter()
            .filter(|(p, _)| p.extension() == Some(OsStr::new("gguf")));
        match (ggufs.next(), ggufs.next()) {
            (Some((gguf, _)), None) => Some(gguf.clone()),
            _ if !files.is_empty() => Some(dir),
            _ => None,
        }
    }

    /// Every stored model, by name.
    pub fn list(&self) -> Result<Vec<StoredModel>, HubError> {
        let entries = match std::fs::read_dir(&self.models) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HubError::io(&self.models)(e)),
        };
        let mut models = Vec::new();
        for entry in entries {
            let entry = entry.map_err(HubError::io(&self.models))?;
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| ModelName::new(n).ok())
            else {
                continue;
            };
            if let Some(path) = self.stored(&name) {
                let bytes = complete_files(&self.dir(&name))
                    .iter()
                    .map(|(_, n)| n)
                    .sum();
                models.push(StoredModel { name, path, bytes });
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(models)
    }

    /// Resolves what a user typed: an existing file or folder, else a stored model's name, else
    /// a known model's name (pulled or not). Anything else is [`HubError::UnknownModel`].
    pub fn resolve(&self, name_or_path: &str) -> Result<Resolved, HubError> {
        let path = Path::new(name_or_path);
        if path.exists() {
            return Ok(Resolved::Path(path.to_path_buf()));
        }
        if let Ok(name) = ModelName::new(name_or_path) {
            if let Some(stored) = self.stored(&name) {
                return Ok(Resolved::Path(stored));
            }
        }
        match catalogue::known(name_or_path) {
            Some(model) => Ok(Resolved::NotPulled(model)),
            None => Err(HubError::UnknownModel {
                name: name_or_path.to_owned(),
                known: catalogue::known_names(),
            }),
        }
    }
}

/// [`Store::resolve`] in the store of the hearth home `home`.
pub fn resolve_model(name_or_path: &str, home: &Path) -> Result<Resolved, HubError> {
    Store::new(home).resolve(name_or_path)
}

/// The complete files directly in `dir` (not `.part`, not hidden) and their sizes; empty when
/// `dir` cannot be read.
fn complete_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && !name.ends_with(".part")
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| (e.path(), meta.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CATALOGUE;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn resolves_paths_then_stored_names_then_known_names() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path());
        let smollm = &CATALOGUE[0];

        // An existing path wins.
        let file = home.path().join("x.gguf");
        write(&file, b"GGUF");
        assert!(
            matches!(store.resolve(file.to_str().unwrap()), Ok(Resolved::Path(p)) if p == file)
        );

        // A known model, not yet pulled; a half-downloaded one is still not pulled.
        assert!(
            matches!(store.resolve(smollm.name), Ok(Resolved::NotPulled(m)) if m.name == smollm.name)
        );
        write(&part(&store.known_path(smollm)), b"GG");
        assert!(!store.is_pulled(smollm));
        assert!(matches!(
            store.resolve(smollm.name),
            Ok(Resolved::NotPulled(_))
        ));

        // Once pulled, its file.
        write(&store.known_path(smollm), b"GGUF");
        assert!(store.is_pulled(smollm));
        assert!(
            matches!(store.resolve(smollm.name), Ok(Resolved::Path(p)) if p == store.known_path(smollm))
        );

        // A model pulled from a URL: an HF folder resolves to the folder.
        let hf = store.models_dir().join("qwen");
        write(&hf.join("config.json"), b"{}");
        write(&hf.join("model.safetensors"), b"..");
        assert!(matches!(store.resolve("qwen"), Ok(Resolved::Path(p)) if p == hf));

        let err = store.resolve("no-such-model").unwrap_err();
        assert!(err.to_string().contains(smollm.name), "{err}");
        assert!(matches!(
            store.resolve("../etc"),
            Err(HubError::UnknownModel { .. })
        ));
    }

    #[test]
    fn lists_complete_models_only() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path());
        assert!(store.list().unwrap().is_empty());
        write(&store.models_dir().join("b/one.gguf"), b"12345");
        write(&store.models_dir().join("b/notes.txt"), b"1");
        write(&store.models_dir().join("a/x.gguf.part"), b"123");
        write(&store.models_dir().join("c/p.gguf"), b"1");
        write(&store.models_dir().join("c/q.gguf"), b"1");
        let listed = store.list().unwrap();
        let names: Vec<_> = listed.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(listed[0].path, store.models_dir().join("b/one.gguf"));
        assert_eq!(listed[0].bytes, 6);
        // Two GGUF files: the folder, for the loader to judge.
        assert_eq!(listed[1].path, store.models_dir().join("c"));
    }

    fn part(path: &Path) -> PathBuf {
        crate::download::part_path(path)
    }
}
