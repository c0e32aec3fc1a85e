//! The crate's error: which namespace, which command, what it printed. Messages name the thing
//! at hand and what to check; an underlying I/O error is the [`std::error::Error::source`], not
//! repeated in the message.

use std::{io, path::PathBuf, process::ExitStatus};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why capture rules could not be written, removed or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace path does not exist: the pod (or its sandbox) is already gone.
    #[error("network namespace {} does not exist (is the pod already gone?)", .netns.display())]
    NetnsGone { netns: PathBuf },
    /// The namespace path exists but cannot be opened.
    #[error("cannot open network namespace {} (does this process run as root?)", .netns.display())]
    OpenNetns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The command could not be started (missing program, or `setns` into the namespace failed).
    #[error(
        "cannot run `{command}` in {netns} (is it installed and on PATH? entering a namespace \
         needs CAP_SYS_ADMIN)"
    )]
    Spawn {
        /// `network namespace PATH` or `the current network namespace`.
        netns: String,
        command: String,
        #[source]
        source: io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` in {netns} failed ({status}): {stderr}")]
    Command {
        netns: String,
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// The command's output is not what this crate expects (an incompatible tool version?).
    #[error("cannot understand the output of `{command}` in {netns}: {reason}")]
    Output {
        netns: String,
        command: String,
        reason: String,
    },
    /// Neither nftables nor iptables is usable on this machine.
    #[error(
        "no tool to program capture rules with: install nftables (`nft` with JSON support, \
         Debian/Ubuntu package `nftables`) or iptables (`iptables-restore`, package `iptables`); \
         nft could not be used: {nft}; iptables-restore could not be used: {iptables}"
    )]
    NoBackend { nft: String, iptables: String },
    /// A configuration value that names no backend.
    #[error("unknown capture backend {value:?}: expected \"nftables\", \"iptables\" or \"auto\"")]
    UnknownBackend { value: String },
}

impl Error {
    /// The pod's namespace no longer exists; for removal that means there is nothing left to do.
    pub fn is_netns_gone(&self) -> bool {
        matches!(self, Error::NetnsGone { .. })
    }

    /// The program itself is not installed (as opposed to failing or being refused a namespace).
    pub(crate) fn is_program_missing(&self) -> bool {
        matches!(self, Error::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// The message with every source appended, for errors folded into another one's message.
    pub(crate) fn with_sources(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }
}
