//! The `ztunnel` binary: parse flags, start the app, drain on SIGTERM/SIGINT.

use ambit_ztunnel::{
    app::Ztunnel,
    config::{Args, Config},
};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    let config = Config::from(Args::parse());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMBIT_ZTUNNEL_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let ztunnel = match Ztunnel::start(config).await {
            Ok(z) => z,
            Err(e) => {
                tracing::error!(error = %e, "ztunnel cannot start");
                anyhow::bail!("{e}");
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        ztunnel.drain().await;
        anyhow::Ok(())
    })
}
