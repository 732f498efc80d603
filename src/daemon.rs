//! `seawall run --daemon`: the gateway leaves the terminal as a classic Unix daemon.
//!
//! The command does not return until the gateway serves: the parent forks, and waits for the
//! child to say it is listening (exit 0, the child's pid on stdout) or to exit (the child's own
//! exit code, its error already printed on the terminal's stderr). So a script, an init system
//! or a person sees a port in use or a bad certificate at once, with the usual exit codes.
//!
//! The child starts a new session, keeps the working directory (relative paths in the config
//! are taken from it, at start and on SIGHUP), logs to the log file (stdout, and stderr once it
//! serves), and writes its pid file, removed again when it exits.
//!
//! Forking is only sound before any thread starts: [`detach`] is called right after the config
//! is read, before logging, the gateway or Pingora start theirs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, setsid, ForkResult, Pid};

/// What the child writes to the parent once its listeners accept connections.
const READY: &[u8] = b"ready\n";

/// The pid file of this process, when it runs as a daemon: removed on exit, and locked for the
/// daemon's life (a second daemon started at the same moment finds it locked; the check before
/// the fork only sees one that already wrote its pid).
static PID_FILE: OnceLock<(PathBuf, Flock<File>)> = OnceLock::new();

/// Where a daemon writes its pid and its log.
pub struct DaemonFiles {
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
}

/// The side of the fork this process is on.
pub enum Detached {
    /// The command's process: exit with this code (the child serves, or failed to start).
    Parent(ExitCode),
    /// The daemon: go on starting the gateway, then call [`Daemon::serving`].
    Child(Daemon),
}

/// The daemon's line to the waiting parent, and its log file for stderr.
pub struct Daemon {
    parent: File,
    log: File,
}

impl Daemon {
    /// Tells the parent the gateway serves (it exits 0) and sends stderr to the log file from now
    /// on: the terminal may be gone.
    pub fn serving(self) {
        let Daemon { mut parent, log } = self;
        if let Err(e) = nix::unistd::dup2_stderr(&log) {
            eprintln!("seawall: cannot send stderr to the log file: {e}");
        }
        // The parent may have been killed meanwhile; the daemon serves either way.
        let _ = parent.write_all(READY);
    }
}

/// Why the daemon could not be started, and the exit code that says so.
#[derive(Debug)]
pub struct StartError {
    /// 1: a file named on the command line is unusable; 2: a runtime fault.
    pub exit_code: u8,
    pub message: String,
}

fn fault(message: String) -> StartError {
    StartError { exit_code: 2, message }
}

/// Forks the daemon off this process. Errors (a pid file naming a live process, a log or pid
/// file that cannot be written, no fork) come before anything is started, or from the daemon
/// before it serves.
pub fn detach(files: &DaemonFiles) -> Result<Detached, StartError> {
    if let Some(pid) = running_pid(&files.pid_file) {
        return Err(fault(format!("already running as pid {pid} (pid file {})", files.pid_file.display())));
    }
    let log = OpenOptions::new().create(true).append(true).open(&files.log_file).map_err(|e| StartError {
        exit_code: 1,
        message: format!("cannot open the log file {}: {e}", files.log_file.display()),
    })?;
    // The rule above, checked: a fork with other threads running would copy their locks held.
    if let Ok(threads) = std::fs::read_dir("/proc/self/task").map(Iterator::count) {
        if threads > 1 {
            return Err(fault(format!("cannot fork: {threads} threads already run (this is a bug)")));
        }
    }
    // Close-on-exec: nothing the daemon may start inherits the parent's line.
    let (from_child, to_parent) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fault(format!("cannot make a pipe: {e}")))?;
    // SAFETY: called before any thread starts (see the module's docs), so the child is a whole
    // copy of this process, free to allocate, lock and start threads of its own.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked.map_err(|e| fault(format!("cannot fork: {e}")))? {
        ForkResult::Parent { child } => {
            drop(to_parent);
            Ok(Detached::Parent(wait_for(child, from_child)))
        }
        ForkResult::Child => {
            drop(from_child);
            setsid().map_err(|e| fault(format!("cannot start a session: {e}")))?;
            let null = File::open("/dev/null").map_err(|e| fault(format!("cannot open /dev/null: {e}")))?;
            nix::unistd::dup2_stdin(&null).map_err(|e| fault(format!("cannot redirect stdin: {e}")))?;
            nix::unistd::dup2_stdout(&log).map_err(|e| fault(format!("cannot send stdout to the log file: {e}")))?;
            write_pid_file(&files.pid_file)?;
            Ok(Detached::Child(Daemon { parent: File::from(to_parent), log }))
        }
    }
}

/// Removes the pid file, if this process wrote one. Called on every way out of a daemon.
pub fn remove_pid_file() {
    if let Some((path, _lock)) = PID_FILE.get() {
        let _ = std::fs::remove_file(path);
    }
}

/// The parent's wait: the child's word, or its exit.
fn wait_for(child: Pid, from_child: OwnedFd) -> ExitCode {
    let mut word = Vec::new();
    // EOF comes when the child says it serves (it keeps the pipe open no longer) or exits.
    let _ = File::from(from_child).take(READY.len() as u64).read_to_end(&mut word);
    if word == READY {
        println!("{child}");
        return ExitCode::SUCCESS;
    }
    match waitpid(child, None) {
        Ok(WaitStatus::Exited(_, 0)) => {
            eprintln!("seawall: the daemon exited before it served");
            ExitCode::from(2)
        }
        Ok(WaitStatus::Exited(_, code)) => ExitCode::from(u8::try_from(code).unwrap_or(2)),
        Ok(status) => {
            eprintln!("seawall: the daemon ended before it served: {status:?}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("seawall: cannot wait for the daemon: {e}");
            ExitCode::from(2)
        }
    }
}

/// The pid in `path`, if that process is alive.
fn running_pid(path: &Path) -> Option<i32> {
    // 0 and negative pids name process groups to `kill`, never one process.
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|pid| *pid > 0)?;
    // Signal 0 checks existence only; a pid file left by a crash names no process (or one of
    // another user, which EPERM reports, and which is taken as running: never overwrite it).
    match nix::sys::signal::kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

fn write_pid_file(path: &Path) -> Result<(), StartError> {
    let unusable = |e: std::io::Error| StartError {
        exit_code: 1,
        message: format!("cannot write the pid file {}: {e}", path.display()),
    };
    // Not truncated before the lock is ours: the file may be a running daemon's.
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(unusable)?;
    let locked = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| fault(format!("already running (pid file {} is locked)", path.display())))?;
    locked.set_len(0).map_err(unusable)?;
    (&*locked).write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(unusable)?;
    let _ = PID_FILE.set((path.to_path_buf(), locked));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_counts_only_when_its_process_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seawall.pid");
        assert_eq!(running_pid(&path), None, "no file");
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(running_pid(&path), Some(std::process::id() as i32), "this process");
        // A process that has exited (reaped): its pid names nothing now.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        assert_eq!(running_pid(&path), None, "stale pid {pid}");
        for garbage in ["not a pid\n", "0\n", "-1\n"] {
            std::fs::write(&path, garbage).unwrap();
            assert_eq!(running_pid(&path), None, "{garbage:?}");
        }
    }
}
