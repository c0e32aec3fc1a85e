//! `ambit-bench`: throughput, round-trip latency, connection rate and proxy memory of Ambit's L4
//! path (client → ztunnel → HBONE → ztunnel → server) against the direct path and a one-hop
//! haproxy reference, measured in one batch in network namespaces (needs root). Progress goes to
//! stderr, the Markdown report to stdout.

mod batch;
mod load;
mod report;
mod scenario;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;

use crate::scenario::PathKind;

#[derive(Debug, Parser)]
#[command(
    name = "ambit-bench",
    about = "Benchmark Ambit's L4 data path against direct TCP and haproxy (root)"
)]
pub(crate) struct Args {
    /// Runs per path; figures are medians over runs with min–max.
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// ztunnel binary (default: next to this binary, else target/release or target/debug).
    #[arg(long)]
    pub(crate) ztunnel: Option<PathBuf>,
    /// Length of each measurement (throughput, latency, each connection-rate test).
    #[arg(long, default_value_t = 3)]
    pub(crate) seconds: u64,
    /// Paths to measure (haproxy is skipped with a note when not installed).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["direct", "haproxy", "ambit"])]
    pub(crate) paths: Vec<PathKind>,
    /// Connections held open for the memory-under-load figure.
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = ambit_testkit::cleanup_on_interrupt() {
        eprintln!("ambit-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = raise_fd_limit(args.connections) {
        eprintln!("ambit-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    match batch::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Clients, servers and proxies each hold one descriptor per held connection (and inherit this).
fn raise_fd_limit(connections: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    let want = (connections as u64 * 4 + 1024).min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).context("setrlimit(NOFILE)")?;
    }
    Ok(())
}
