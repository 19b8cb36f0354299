//! Where PostgreSQL's programs are and as whom they run. PostgreSQL refuses to run as root,
//! so when the agent (or a test) runs as root every program runs as the `postgres` user; the
//! postmaster additionally gets a parent-death signal so it never outlives its owner.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::PostgresError;

/// Environment variable naming PostgreSQL's bin folder, overriding the search.
pub const PG_BIN_ENV: &str = "SHARDPLANE_PG_BIN";

/// Folders searched for PostgreSQL's programs, newest major version first.
const SEARCHED: [&str; 3] = [
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];

/// The operating system user PostgreSQL runs as when this process is root.
const DEFAULT_OS_USER: &str = "postgres";

/// PostgreSQL's programs and the identity they run under.
#[derive(Clone, Debug)]
pub struct Toolchain {
    bin_dir: PathBuf,
    run_as: Option<OsUser>,
}

/// A numeric user and group to switch to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OsUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl Toolchain {
    /// Finds PostgreSQL (`SHARDPLANE_PG_BIN`, else the newest Debian install of 15 or later)
    /// and, when this process is root, the `postgres` user to run it as.
    pub fn detect() -> Result<Self, PostgresError> {
        let bin_dir = match std::env::var_os(PG_BIN_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => SEARCHED
                .iter()
                .map(PathBuf::from)
                .find(|dir| dir.join("postgres").is_file())
                .ok_or_else(|| PostgresError::BinariesMissing {
                    looked_in: PathBuf::from(SEARCHED[SEARCHED.len() - 1]),
                })?,
        };
        if !bin_dir.join("postgres").is_file() {
            return Err(PostgresError::BinariesMissing { looked_in: bin_dir });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user(DEFAULT_OS_USER)?)
        } else {
            None
        };
        Ok(Toolchain { bin_dir, run_as })
    }

    /// The folder holding `postgres`, `initdb`, `pg_basebackup` and `pg_rewind`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The user programs run as, when it differs from this process's.
    pub fn run_as(&self) -> Option<OsUser> {
        self.run_as
    }

    /// Gives a file or folder this process created to the user PostgreSQL runs as (nothing
    /// to do when that is this process's own user).
    pub fn hand_over(&self, path: &Path) -> Result<(), PostgresError> {
        match self.run_as {
            Some(user) => {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|source| {
                    PostgresError::Io {
                        path: path.to_path_buf(),
                        source,
                    }
                })
            }
            None => Ok(()),
        }
    }

    /// A one-shot PostgreSQL program (`initdb`, `pg_basebackup`, `pg_rewind`) as the
    /// PostgreSQL user, working in `cwd`, with its output captured.
    pub(crate) fn command(&self, program: &str, cwd: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin_dir.join(program));
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
            .current_dir(cwd)
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// The postmaster command for `data_dir`: started through `setpriv`, which switches to
    /// the PostgreSQL user and sets a parent-death SIGKILL after the switch (a credential
    /// change clears one set before it), so the server dies with the thread that started it.
    pub(crate) fn postmaster(&self, data_dir: &Path) -> std::process::Command {
        let mut command = std::process::Command::new("setpriv");
        if let Some(user) = self.run_as {
            command
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--init-groups");
        }
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(self.bin_dir.join("postgres"))
            .arg("-D")
            .arg(data_dir)
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null());
        command
    }
}

/// Looks a user up in the system's user database.
fn lookup_user(name: &str) -> Result<OsUser, PostgresError> {
    let missing = || PostgresError::NoSuchUser {
        user: name.to_owned(),
    };
    let c_name = CString::new(name).map_err(|_| missing())?;
    // SAFETY: passwd is a plain C struct for which all-zero is a valid value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call's duration and the buffer length is its
    // real length; getpwnam_r is the thread-safe variant.
    let status = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() {
        return Err(missing());
    }
    Ok(OsUser {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}
