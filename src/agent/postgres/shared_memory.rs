//! The System V shared memory segment a postmaster leaves behind when it is killed.
//!
//! PostgreSQL keeps a small System V segment (besides its main shared memory) as an interlock:
//! a postmaster starting on a data directory finds the segment its predecessor named in
//! `postmaster.pid` and refuses to start while old backends still attach to it. A clean or
//! immediate shutdown removes the segment; a SIGKILLed postmaster (a crash, a node's death)
//! leaves it, and the next start on the same directory reclaims it. When the directory itself
//! is removed instead, nothing ever will: the kernel keeps the segment until it holds
//! `kernel.shmmni` of them (4,096) and every new postmaster fails with "could not create shared
//! memory segment: No space left on device". So whoever removes a data directory releases its
//! segment first — and only when no process attaches to it, which is what keeps the interlock
//! intact.

use std::path::Path;

/// Removes the System V segment named in `data_dir/postmaster.pid` if it still exists, still
/// carries the key the file names, and no process attaches to it. Returns whether it removed
/// one. Best-effort: a missing or unreadable file, or a segment in use, leaves everything as
/// it is.
pub fn release_orphaned_segment(data_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let Some((key, id)) = segment_named_in(&text) else {
        return false;
    };
    // SAFETY: `shmid_ds` is plain data; `shmctl` fills it (IPC_STAT) or ignores it (IPC_RMID).
    unsafe {
        let mut info: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(id, libc::IPC_STAT, &mut info) != 0
            || info.shm_perm.__key != key
            || info.shm_nattch != 0
        {
            return false;
        }
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) == 0
    }
}

/// The key and id of the segment on the seventh line of `postmaster.pid`
/// (`"  10739229    327680"`; PostgreSQL writes `0 0` when it has none).
fn segment_named_in(postmaster_pid: &str) -> Option<(libc::key_t, libc::c_int)> {
    let mut fields = postmaster_pid.lines().nth(6)?.split_whitespace();
    let key = fields.next()?.parse().ok()?;
    let id = fields.next()?.parse().ok()?;
    (key != 0).then_some((key, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_is_read_from_the_seventh_line_and_none_when_zero() {
        let file =
            "4242\n/data\n1733400000\n5432\n/tmp\n127.0.0.1\n  10739229    327680\nready   \n";
        assert_eq!(segment_named_in(file), Some((10_739_229, 327_680)));
        let none = "4242\n/data\n1733400000\n5432\n/tmp\n127.0.0.1\n     0     0\nready   \n";
        assert_eq!(segment_named_in(none), None);
        assert_eq!(segment_named_in("4242\n/data\n"), None);
    }

    #[test]
    fn a_segment_in_use_is_kept_and_an_orphaned_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        let key: libc::key_t = 0x5a5a_0000 + (std::process::id() as libc::key_t & 0xffff);
        // SAFETY: creating, attaching and detaching a private segment of 56 bytes.
        let id = unsafe { libc::shmget(key, 56, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
        let pid_file = format!("1\n/data\n0\n5432\n/tmp\n*\n{key} {id}\nready\n");
        std::fs::write(dir.path().join("postmaster.pid"), pid_file).unwrap();

        let attached = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        assert_ne!(attached as isize, -1);
        assert!(
            !release_orphaned_segment(dir.path()),
            "an attached segment was removed"
        );
        assert_eq!(unsafe { libc::shmdt(attached) }, 0);

        assert!(release_orphaned_segment(dir.path()));
        let mut info: libc::shmid_ds = unsafe { std::mem::zeroed() };
        assert_ne!(
            unsafe { libc::shmctl(id, libc::IPC_STAT, &mut info) },
            0,
            "still there"
        );
        assert!(!release_orphaned_segment(dir.path()), "removed twice");
    }
}
