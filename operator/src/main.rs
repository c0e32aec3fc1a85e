//! The `ambit-operator` binary: parse flags, start the operator, stop on SIGTERM/SIGINT.

use ambit_operator::{
    app::Operator,
    config::{Args, Config},
};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    let config = match Config::try_from(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ambit-operator: {e}");
            std::process::exit(2);
        }
    };
    ambit_telemetry::init_logging("AMBIT_OPERATOR_LOG");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime.enable_all().build()?.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let operator = match Operator::start(config).await {
            Ok(o) => o,
            Err(e) => {
                // The message says what to fix; a backtrace would not.
                tracing::error!(error = %e, "ambit-operator cannot start");
                std::process::exit(1);
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        operator.stop().await;
        anyhow::Ok(())
    })
}
