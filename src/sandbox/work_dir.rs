//! The control plane's private folder under the system temp directory: certificates,
//! kubeconfig, etcd data, helm state and one log per process. Removed when the control plane
//! drops (kept after a failed start, for its logs); folders of processes that exited without
//! dropping theirs (a control plane in a `static`) are removed by the next start.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::SandboxError;

/// Name prefix of every work directory; the owning process id follows it.
const PREFIX: &str = "shardplane-sandbox-";

/// A work directory, removed with its contents on drop.
#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Creates a new private (mode 0700) work directory named after this process.
    pub(crate) fn create() -> Result<Self, SandboxError> {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "{PREFIX}{}-{}-{nanos}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| SandboxError::WorkDir {
                path: path.clone(),
                source,
            })?;
        Ok(WorkDir { path, keep: false })
    }

    /// The directory's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a subdirectory and returns its path.
    pub(crate) fn subdir(&self, name: &str) -> Result<PathBuf, SandboxError> {
        let path = self.path.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|source| SandboxError::WorkDir {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    /// Keeps the directory when this value drops, so that the logs of a failed start can be
    /// read; [`WorkDir::remove_stale`] removes it once this process has exited.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }

    /// Removes work directories whose owning process no longer runs. Best-effort: a folder
    /// that cannot be read or removed is left alone.
    pub(crate) fn remove_stale() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(owner) = name
                .to_str()
                .and_then(|name| name.strip_prefix(PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{owner}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
