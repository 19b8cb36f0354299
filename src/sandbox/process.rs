//! Child processes of the local control plane. Each one is killed when its handle drops,
//! and also when this process exits without dropping it (a control plane kept in a `static`
//! is never dropped): children get `PR_SET_PDEATHSIG=SIGKILL`, and because Linux sends that
//! signal when the *thread* that forked them exits, they are all forked by one spawner thread
//! that lives as long as the process. Spawning does not touch any async runtime.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError, mpsc};

use super::SandboxError;

/// How many lines of a log an error message quotes.
const TAIL_LINES: usize = 40;

/// A running control plane component whose output goes to a log file.
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    name: &'static str,
    binary: PathBuf,
    child: Child,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `binary` with `args`, output to `log`, tied to this process's lifetime.
    pub(crate) fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self, SandboxError> {
        let spawn_error = |source| SandboxError::Spawn {
            process: name,
            binary: binary.to_path_buf(),
            source,
        };
        let file = File::create(&log).map_err(|source| SandboxError::WorkDir {
            path: log.clone(),
            source,
        })?;
        let stderr = file.try_clone().map_err(spawn_error)?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr);
        let child = spawn_tied_to_this_process(command).map_err(spawn_error)?;
        Ok(ManagedProcess {
            name,
            binary: binary.to_path_buf(),
            child,
            log,
        })
    }

    /// The component's name, which is also its binary's name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The operating system's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has exited.
    pub(crate) fn ensure_running(&mut self) -> Result<(), SandboxError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(SandboxError::ExitedEarly {
                process: self.name,
                status,
                log: self.log.clone(),
                tail: log_tail(&self.log),
            }),
            Err(source) => Err(SandboxError::Spawn {
                process: self.name,
                binary: self.binary.clone(),
                source,
            }),
        }
    }

    /// Kills the process (SIGKILL: its state lives in a throwaway work directory) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // An error here means it exited meanwhile; `wait` below reaps it either way.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last [`TAIL_LINES`] lines of a log file, or a note saying why there are none.
pub(crate) fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(log unreadable: {error})"),
    }
}

/// A command for the spawner thread and where to send the spawned child.
struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Spawns `command` from the process-lifetime spawner thread with a parent-death signal.
fn spawn_tied_to_this_process(mut command: Command) -> io::Result<Child> {
    // SAFETY: getpid is async-signal-safe; the variable is a plain integer.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid) and builds an io::Error without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect; then no signal will come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply, child) = mpsc::channel();
    spawner()?
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the sandbox spawner thread has stopped"))?;
    child
        .recv()
        .map_err(|_| io::Error::other("the sandbox spawner thread has stopped"))?
}

/// The sender to the spawner thread, starting the thread on first use. The thread is never
/// asked to stop, so it lives exactly as long as this process.
fn spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let mut spawner = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(sender) = spawner.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("shardplane-sandbox-spawner".into())
        .spawn(move || {
            for mut request in requests {
                // The requester waits for the reply, so a failed send means it is gone.
                let _ = request.reply.send(request.command.spawn());
            }
        })?;
    *spawner = Some(sender.clone());
    Ok(sender)
}
