//! HTTP/2 PING keepalive shared by server and client: finds peers that vanished without closing
//! (node died, netns deleted, NAT entry expired). It only measures; the connection owner decides
//! what to do when it fires.

use std::time::Duration;

use h2::{Ping, PingPong};

/// Resolves when a PING sent every `interval` goes unanswered for `timeout`; never resolves
/// while the peer answers, when `interval` is zero (keepalive off) or when there is no
/// `PingPong` handle. A PING error means the connection itself failed, which its owner sees
/// through the connection, so that also never resolves.
pub(crate) async fn expired(ping_pong: Option<PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    if interval.is_zero() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => tracing::trace!("keepalive pong"),
            Ok(Err(_)) => return std::future::pending().await,
            Err(_elapsed) => return,
        }
    }
}
