//! Everything a [`crate::Network`] must undo: the processes it started and the namespaces it
//! created. Each network registers its resources here so that a Ctrl-C handler
//! ([`cleanup_on_interrupt`]) can tear down every live network, and so that a new network can
//! remove namespaces left behind by a process that was killed outright.

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{command, process::ProcessHandle};

/// First component of every namespace name this crate creates: `amb-SHORT-PID-N-...`.
pub(crate) const NAME_MARKER: &str = "amb";

/// How long processes get between SIGTERM and SIGKILL at teardown.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(crate) struct Resources {
    pub(crate) namespaces: Vec<String>,
    pub(crate) processes: Vec<ProcessHandle>,
    /// Reported (and kept) when an interrupt tears the network down.
    pub(crate) log_dir: std::path::PathBuf,
    pub(crate) done: bool,
}

impl Resources {
    /// Stops every process, deletes every namespace. Idempotent. Returns what went wrong.
    pub(crate) fn cleanup(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut errors = stop_all(&self.processes);
        for name in self.namespaces.iter().rev() {
            if let Err(e) = delete_namespace(name) {
                errors.push(format!("{e:#}"));
            }
        }
        errors
    }
}

fn stop_all(processes: &[ProcessHandle]) -> Vec<String> {
    let mut errors = Vec::new();
    for p in processes {
        if p.is_running()
            && let Err(e) = p.signal(Signal::SIGTERM)
        {
            errors.push(format!("{e:#}"));
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && processes.iter().any(ProcessHandle::is_running) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in processes {
        if let Err(e) = p.stop(Duration::ZERO) {
            errors.push(format!("{e:#}"));
        }
    }
    errors
}

/// Kills whatever still runs inside namespace `name`, then deletes it. A missing namespace is fine.
pub(crate) fn delete_namespace(name: &str) -> anyhow::Result<()> {
    if !crate::netns::Netns::from_name(name).path().exists() {
        return Ok(());
    }
    let own = std::process::id();
    if let Ok(pids) = command::ip(&["netns", "pids", name]) {
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if pid as u32 != own {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    command::ip(&["netns", "delete", name]).map(drop)
}

/// Deletes namespaces named by this crate whose creating process no longer exists (a test run
/// that was SIGKILLed, say). Namespaces of live processes, and everyone else's, are untouched.
pub(crate) fn remove_stale_namespaces() {
    let Ok(list) = command::ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let mut parts = name.split('-');
        let (Some(NAME_MARKER), Some(_), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("ambit-testkit: removing netns {name} left behind by dead process {pid}");
            if let Err(e) = delete_namespace(name) {
                eprintln!("ambit-testkit: {e:#}");
            }
        }
    }
}

static REGISTRY: Mutex<Vec<Weak<Mutex<Resources>>>> = Mutex::new(Vec::new());
static INTERRUPT_EXIT_CODE: AtomicI32 = AtomicI32::new(130);

pub(crate) fn register(resources: &Arc<Mutex<Resources>>) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    registry.retain(|w| w.strong_count() > 0);
    registry.push(Arc::downgrade(resources));
}

fn cleanup_registered() {
    let live: Vec<_> = {
        let registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        registry.iter().filter_map(Weak::upgrade).collect()
    };
    for resources in live {
        let mut r = resources.lock().unwrap_or_else(|p| p.into_inner());
        for e in r.cleanup() {
            eprintln!("ambit-testkit: cleanup: {e}");
        }
        if r.log_dir.exists() {
            eprintln!("logs kept in {}", r.log_dir.display());
        }
    }
}

/// On SIGINT or SIGTERM, tears down every live [`crate::Network`] of this process and exits
/// (with 130 unless [`set_interrupt_exit_code`] says otherwise). Call once, early in `main`;
/// binaries that build networks (bench, demo) need it because Rust does not unwind on a signal.
pub fn cleanup_on_interrupt() -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("ambit-testkit-interrupt".into())
        .spawn(|| {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ambit-testkit: no signal handling, cannot build runtime: {e}");
                    return;
                }
            };
            let received = runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
                else {
                    eprintln!("ambit-testkit: cannot install SIGINT/SIGTERM handlers");
                    return false;
                };
                tokio::select! {
                    _ = int.recv() => true,
                    _ = term.recv() => true,
                }
            });
            if received {
                eprintln!("\ninterrupted: tearing down network namespaces and processes");
                cleanup_registered();
                std::process::exit(INTERRUPT_EXIT_CODE.load(Ordering::SeqCst));
            }
        })
        .map(drop)
        .map_err(|e| anyhow::anyhow!("cannot start the signal-handling thread: {e}"))
}

/// The exit code used after an interrupt-triggered teardown (e.g. 0 once a demo has finished
/// and only waits for Ctrl-C).
pub fn set_interrupt_exit_code(code: i32) {
    INTERRUPT_EXIT_CODE.store(code, Ordering::SeqCst);
}
