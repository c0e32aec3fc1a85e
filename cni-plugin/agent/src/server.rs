//! The unix socket the plugin talks to: one JSON request line in, one JSON reply line out per
//! connection (see `ambit_cni::protocol`). A request that does not parse gets an error reply
//! naming the problem; the socket is only reachable by root (mode 0600).

use std::{path::Path, sync::Arc, time::Duration};

use ambit_cni::protocol::{PodReply, PodRequest};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the plugin socket, replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, agent: Arc<Agent>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, agent.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "plugin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, agent: Arc<Agent>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let reply = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => return tracing::warn!("plugin request not received in time; closing"),
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read the plugin request"),
        // The plugin's STATUS only checks that the socket accepts connections.
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => match serde_json::from_str::<PodRequest>(&line) {
            Ok(request) => agent.handle(request).await,
            Err(e) => PodReply::Error {
                code: 6,
                msg: "the agent cannot decode the plugin's request".into(),
                details: e.to_string(),
            },
        },
    };
    let mut text = serde_json::to_string(&reply)
        .unwrap_or_else(|e| format!(r#"{{"error":{{"code":999,"msg":"cannot encode the reply","details":"{e}"}}}}"#));
    text.push('\n');
    if let Err(e) = write.write_all(text.as_bytes()).await {
        tracing::warn!(error = %e, "cannot answer the plugin");
    }
}
