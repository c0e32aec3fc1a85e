//! Running the firewall tools (`nft`, `iptables-restore`, …) inside a network namespace given by
//! path — CNI hands us arbitrary ones (`/proc/PID/ns/net`, `/var/run/netns/cni-…`), so no
//! `ip netns exec` — and turning their failures into [`Error`]s that name the namespace, the
//! command line and its stderr.

use std::{
    fmt,
    fs::File,
    io::{self, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
};

use nix::sched::{CloneFlags, setns};

use crate::{Error, Result};

/// Where a tool runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Netns<'a> {
    /// The calling thread's own namespace (the node, for the agent).
    Current,
    /// The namespace bound at this path.
    At(&'a Path),
}

impl fmt::Display for Netns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Current => f.write_str("the current network namespace"),
            Netns::At(path) => write!(f, "network namespace {}", path.display()),
        }
    }
}

/// Runs `program args…` inside `netns` with `stdin` (if any) on its standard input, and returns
/// its stdout. Anything but exit status 0 is an error carrying the stderr.
pub(crate) fn run(netns: Netns<'_>, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Netns::At(path) = netns {
        enter_before_exec(&mut cmd, open_netns(path)?);
    }
    let spawn_error = |source| Error::Spawn {
        netns: netns.to_string(),
        command: line.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let pipe = child.stdin.take();
    // Written from a second thread so that a tool which prints while it reads cannot deadlock
    // against us waiting to write.
    let (written, output) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || match (stdin, pipe) {
            (Some(text), Some(mut pipe)) => pipe.write_all(text.as_bytes()),
            _ => Ok(()),
        });
        let output = child.wait_with_output();
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the stdin writer thread panicked")));
        (written, output)
    });
    let output = output.map_err(spawn_error)?;
    if !output.status.success() {
        return Err(Error::Command {
            netns: netns.to_string(),
            command: line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    // A tool that exits 0 without reading all of its script has not applied all of it.
    written.map_err(spawn_error)?;
    String::from_utf8(output.stdout).map_err(|_| Error::Output {
        netns: netns.to_string(),
        command: line,
        reason: "stdout is not UTF-8".to_owned(),
    })
}

fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            Error::NetnsGone { netns: path.to_owned() }
        } else {
            Error::OpenNetns {
                netns: path.to_owned(),
                source,
            }
        }
    })
}

/// Makes the child enter `netns` between fork and exec. The namespace is opened by the parent
/// (so a bad path is reported as such) and entered only by the child: the caller's own threads
/// never change namespace.
fn enter_before_exec(cmd: &mut Command, netns: File) {
    let hook =
        move || setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|errno| io::Error::from_raw_os_error(errno as i32));
    // SAFETY: `pre_exec` closures run in the forked child, where only async-signal-safe work is
    // allowed. This one makes a single setns(2) system call on a descriptor the child inherited
    // (the `File` lives in the closure, hence in `cmd`, until after `spawn`; O_CLOEXEC closes it
    // at exec) and builds an `io::Error` from an errno, which does not allocate. No locks, no
    // allocation, no shared state.
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_path_is_netns_gone() {
        let path = Path::new("/nonexistent/ambit-capture/netns");
        let err = run(Netns::At(path), "true", &[], None).expect_err("no such namespace");
        assert!(err.is_netns_gone(), "{err}");
        assert!(err.to_string().contains("/nonexistent/ambit-capture/netns"), "{err}");
    }

    #[test]
    fn a_failing_command_reports_its_line_and_stderr() {
        let err = run(Netns::Current, "sh", &["-c", "echo oops >&2; exit 3"], None).expect_err("exit 3");
        let text = err.to_string();
        assert!(text.contains("sh -c echo oops"), "{text}");
        assert!(text.contains("oops"), "{text}");
        assert!(text.contains("the current network namespace"), "{text}");
    }

    #[test]
    fn stdin_reaches_the_command() {
        let out = run(Netns::Current, "cat", &[], Some("hello\n")).expect("cat runs");
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn a_missing_program_is_recognised() {
        let err = run(Netns::Current, "ambit-capture-no-such-program", &[], None).expect_err("missing");
        assert!(err.is_program_missing(), "{err}");
    }
}
