//! A handle on one named network namespace (`/run/netns/NAME`): run Rust code inside it on a
//! thread, or run a command inside it with `ip netns exec`. Creating and deleting namespaces is
//! [`crate::Network`]'s job, not this module's.

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
    thread::JoinHandle,
};

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

/// Directory where `ip netns add` creates its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace. Cheap to clone; it does not own the namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A handle on an existing namespace called `name` (no check that it exists).
    pub fn from_name(name: impl Into<String>) -> Netns {
        Netns { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the path ztunnel's config takes.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `f` on a scoped thread that has entered this namespace; sockets `f` creates stay in
    /// it. Threads `f` spawns inherit the namespace too. Panics (with the namespace named) if the
    /// namespace cannot be entered; see [`Netns::try_run`] for the fallible form.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self.try_run(f) {
            Ok(r) => r,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Like [`Netns::run`], but an unenterable namespace is an error, not a panic. A panic in `f`
    /// is propagated to the caller.
    pub fn try_run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        let file = self.open()?;
        let joined = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || {
                    self.enter(&file)?;
                    Ok(f())
                })
                .map(|handle| handle.join())
        });
        match joined.context("cannot spawn a thread to enter the network namespace")? {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Spawns a long-lived thread inside this namespace (a server, say). The thread keeps the
    /// namespace alive while it runs, but it does not stop [`crate::Network`] from deleting the
    /// namespace's name.
    pub fn spawn_thread<R: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> anyhow::Result<JoinHandle<R>> {
        let file = self.open()?;
        let netns = self.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Err(e) = netns.enter(&file) {
                    panic!("{e:#}");
                }
                f()
            })
            .with_context(|| format!("cannot spawn thread {name} for netns {}", self.name))
    }

    /// Runs `ip netns exec NAME args...` and returns its stdout; a failure carries the command
    /// line, exit status and stderr.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        crate::command::output(&mut cmd)
    }

    fn open(&self) -> anyhow::Result<File> {
        let path = self.path();
        File::open(&path).with_context(|| {
            format!(
                "cannot open network namespace {} (was it deleted? is this process root?)",
                path.display()
            )
        })
    }

    fn enter(&self, file: &File) -> anyhow::Result<()> {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| {
            format!(
                "cannot enter network namespace {} (setns needs CAP_SYS_ADMIN)",
                self.path().display()
            )
        })
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}
