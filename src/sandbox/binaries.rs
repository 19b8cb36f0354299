//! Where the Go-built control plane binaries live: the folder that `tools/testenv/build.sh`
//! fills, or the one `SHARDPLANE_TESTENV_BIN` names. Finds them; does not build them.

use std::path::{Path, PathBuf};

use super::SandboxError;

/// The binaries a local control plane needs, all built by `tools/testenv/build.sh`.
const REQUIRED: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "helm",
];

/// A folder known to hold every binary in [`REQUIRED`].
#[derive(Debug, Clone)]
pub(crate) struct TestenvBinaries {
    dir: PathBuf,
}

impl TestenvBinaries {
    /// Finds the folder: `SHARDPLANE_TESTENV_BIN` if set, else
    /// `${SHARDPLANE_CACHE:-$HOME/.cache/shardplane}/testenv/bin`.
    pub(crate) fn locate() -> Result<Self, SandboxError> {
        let dir = match std::env::var_os("SHARDPLANE_TESTENV_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let cache = match std::env::var_os("SHARDPLANE_CACHE") {
                    Some(cache) => PathBuf::from(cache),
                    None => std::env::var_os("HOME")
                        .map(|home| Path::new(&home).join(".cache/shardplane"))
                        .ok_or(SandboxError::NoBinaryFolder)?,
                };
                cache.join("testenv/bin")
            }
        };
        Self::in_dir(dir)
    }

    /// Checks that `dir` holds every required binary.
    pub(crate) fn in_dir(dir: PathBuf) -> Result<Self, SandboxError> {
        let missing: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|name| !dir.join(name).is_file())
            .collect();
        if missing.is_empty() {
            Ok(TestenvBinaries { dir })
        } else {
            Err(SandboxError::BinariesMissing {
                dir,
                missing: missing.join(", "),
            })
        }
    }

    /// The path of one binary, e.g. `kubectl`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_the_binaries_is_refused_with_the_way_to_build_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etcd"), "").unwrap();
        let error = TestenvBinaries::in_dir(dir.path().to_path_buf())
            .unwrap_err()
            .to_string();
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
        assert!(error.contains("tools/testenv/build.sh"), "{error}");
        assert!(
            error.contains("kube-apiserver, kube-controller-manager, kubectl, helm"),
            "{error}"
        );
        assert!(!error.contains("etcd,"), "{error}");
    }
}
