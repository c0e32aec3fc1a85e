//! Processes started inside a namespace: each in its own process group (so a signal reaches its
//! children too, and a terminal's Ctrl-C does not), output to a log file. [`crate::Network`]
//! keeps a clone of every handle and stops them all when it is dropped.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use crate::Netns;

/// A process started by [`crate::Network::spawn`]. Clones refer to the same process.
#[derive(Clone, Debug)]
pub struct ProcessHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    pid: u32,
    log: PathBuf,
    child: Mutex<Child>,
}

impl ProcessHandle {
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Program name and namespace, for messages.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The file that receives the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        match std::fs::read(&self.inner.log) {
            Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), lines),
            Err(e) => format!("(cannot read {}: {e})", self.inner.log.display()),
        }
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        self.child()
            .try_wait()
            .with_context(|| format!("cannot poll process {} ({})", self.inner.pid, self.inner.name))
    }

    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `signal` to the whole process group.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        match killpg(self.pgid(), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot send {signal} to {}", self.inner.name)),
        }
    }

    /// SIGTERM to the process group, then SIGKILL if the leader has not exited after `grace`.
    /// Returns the leader's exit status. Safe to call more than once.
    pub fn stop(&self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            // The leader is gone; make sure nothing it forked lingers.
            let _ = killpg(self.pgid(), Signal::SIGKILL);
            return Ok(status);
        }
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                let _ = killpg(self.pgid(), Signal::SIGKILL);
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal(Signal::SIGKILL)?;
        self.child()
            .wait()
            .with_context(|| format!("cannot wait for {}", self.inner.name))
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.inner.pid as i32)
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        // A poisoned lock only means another thread panicked while polling; the Child is fine.
        self.inner.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts `cmd` inside `netns`, in a new process group, stdout and stderr appended to `log`.
pub(crate) fn spawn_in(netns: &Netns, mut cmd: Command, log: &Path) -> anyhow::Result<ProcessHandle> {
    let line = crate::command::display(&cmd);
    let name = format!("`{line}` in netns {netns}");
    let out = File::create(log).with_context(|| format!("cannot create log file {}", log.display()))?;
    let err = out.try_clone().context("cannot duplicate the log file handle")?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = spawn_in_netns(netns, &mut cmd).with_context(|| format!("cannot start {name}"))?;
    Ok(ProcessHandle {
        inner: Arc::new(Inner {
            name,
            pid: child.id(),
            log: log.to_owned(),
            child: Mutex::new(child),
        }),
    })
}

/// Spawns `cmd` (stdio already set up) in `netns` and its own process group.
pub(crate) fn spawn_in_netns(netns: &Netns, cmd: &mut Command) -> anyhow::Result<Child> {
    let path = netns.path();
    let ns = File::open(&path).with_context(|| format!("cannot open network namespace {}", path.display()))?;
    let fd = ns.as_raw_fd();
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls setns(2), which is
    // async-signal-safe; `fd` stays open in the child because `ns` lives until after spawn().
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(ns);
    Ok(child)
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
