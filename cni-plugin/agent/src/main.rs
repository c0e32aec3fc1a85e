//! The `ambit-cni-agent` binary: parse flags, start the agent (or uninstall it), stop on
//! SIGTERM/SIGINT.

use ambit_cni_agent::{
    app::{self, CniAgent},
    config::{Args, Config},
};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uninstall = args.uninstall;
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ambit-cni-agent: {e}");
            std::process::exit(2);
        }
    };
    ambit_telemetry::init_logging("AMBIT_CNI_AGENT_LOG");
    if uninstall {
        if let Err(e) = app::uninstall(&config) {
            tracing::error!(error = %e, "uninstall failed");
            std::process::exit(1);
        }
        tracing::info!("uninstalled");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async move {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let agent = match CniAgent::start(config).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "ambit-cni-agent cannot start");
                    std::process::exit(1);
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            agent.stop();
            anyhow::Ok(())
        })
}
