//! `kube-emulator`: runs the in-memory Kubernetes API server on loopback for poking at it by
//! hand (`kubectl --kubeconfig <file>`). Logs go to stderr; Ctrl-C stops it.

use std::net::SocketAddr;
use std::path::PathBuf;

use ambit_kube_emulator::{Emulator, EmulatorConfig};
use clap::Parser;

/// In-memory Kubernetes API server for tests (plain HTTP, no auth).
#[derive(Debug, Parser)]
#[command(name = "kube-emulator", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the emulator to this file.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let emulator = Emulator::start(EmulatorConfig {
        listen: args.listen,
        ..EmulatorConfig::default()
    })?;
    if let Some(path) = &args.kubeconfig_out {
        emulator.write_kubeconfig(path)?;
        tracing::info!(path = %path.display(), "wrote kubeconfig");
    }
    tracing::info!(url = %emulator.url(), "serving; Ctrl-C to stop");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    drop(emulator);
    Ok(())
}
