//! The local config source: a YAML file of workloads, services and policies, polled for changes.
//! A good edit is applied live through a `watch` channel; a bad one is logged and counted, and the
//! last good state stays in force. (The operator's xDS client of a later issue feeds the same
//! channel.)

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ambit_model::State;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ResultLabels};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

fn parse(path: &Path, text: &str) -> Result<State, SourceError> {
    let config = ambit_model::config::parse(text).map_err(|e| SourceError::Parse {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(State::from_config(config))
}

/// Reads and parses the file once (start-up: a bad file is fatal).
pub fn load(path: &Path) -> Result<(State, String), SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.into(),
        source,
    })?;
    Ok((parse(path, &text)?, text))
}

/// Polls `path` every `interval` and publishes each good change on `tx`.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    mut last: String,
    tx: watch::Sender<Arc<State>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                if last != "\0unreadable" {
                    tracing::warn!(path = %path.display(), error = %e, "config file unreadable; keeping the last good config");
                    metrics
                        .config_reloads
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    last = "\0unreadable".into();
                }
                continue;
            }
        };
        if text == last {
            continue;
        }
        match parse(&path, &text) {
            Ok(state) => {
                tracing::info!(path = %path.display(), "config reloaded");
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                tx.send_replace(Arc::new(state));
            }
            Err(e) => {
                tracing::warn!(error = %e, "bad config edit rejected; keeping the last good config");
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
            }
        }
        last = text;
    }
}
