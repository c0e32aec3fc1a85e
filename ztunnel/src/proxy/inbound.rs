//! Inbound HBONE (15008): mTLS from a peer ztunnel, then one CONNECT per tunnelled connection.
//! The peer's SPIFFE identity is verified in the handshake (trust root and trust domain); each
//! CONNECT must target this pod and pass L4 authorization before ztunnel connects to the app.

use std::{net::SocketAddr, sync::Arc};

use ambit_hbone::{
    Refusal,
    server::{IncomingConnect, Rejection},
};
use ambit_identity::SpiffeId;
use ambit_model::ConnectionInfo;
use tokio::net::TcpStream;

use super::{
    Pod, ProxyInputs,
    accounting::{Peer, Record},
    identity_of,
};
use crate::metrics::Reporter;

const LISTENER: &str = "inbound_hbone";

pub async fn handle(inputs: Arc<ProxyInputs>, pod: Arc<Pod>, stream: TcpStream, peer: SocketAddr) {
    let state = inputs.state();
    let Some(me) = pod.workload(&state) else {
        inputs.metrics.refuse(LISTENER, "unknown_destination");
        return;
    };
    let config = match identity_of(&me) {
        Ok(id) => inputs.certs.server_config(&id).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            inputs.metrics.refuse(LISTENER, "certificate");
            tracing::error!(workload = %me.key(), error = %e, "no certificate to serve HBONE");
            return;
        }
    };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let mut tls = match tokio::time::timeout(inputs.tls_handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            inputs.metrics.refuse(LISTENER, "tls_handshake");
            tracing::warn!(%peer, workload = %me.key(), error = %e, "HBONE TLS handshake refused");
            return;
        }
        Err(_) => {
            inputs.metrics.refuse(LISTENER, "tls_handshake_timeout");
            tracing::warn!(%peer, "HBONE TLS handshake timed out");
            return;
        }
    };
    let peer_id = match ambit_identity::tls::peer_identity(tls.get_ref().1, &me.trust_domain) {
        Ok(id) => Arc::new(id),
        Err(e) => {
            inputs.metrics.refuse(LISTENER, "peer_identity");
            tracing::warn!(%peer, error = %e, "HBONE peer without a usable identity");
            return;
        }
    };
    tls.get_mut().1.set_buffer_limit(Some(super::TLS_SEND_BUFFER));
    let metrics = inputs.metrics.clone();
    let observer = Arc::new(move |r: Rejection| metrics.refuse(LISTENER, r.as_str()));
    let handler = {
        let inputs = inputs.clone();
        let pod = pod.clone();
        move |incoming: IncomingConnect| {
            let inputs = inputs.clone();
            let pod = pod.clone();
            let peer_id = peer_id.clone();
            let tracker = inputs.tracker.clone();
            // Tracked so a drain waits for tunnelled connections too.
            tracker.track_future(async move { handle_stream(&inputs, &pod, &peer_id, peer, incoming).await })
        }
    };
    let drain = inputs.drain.clone();
    if let Err(e) = ambit_hbone::server::serve_connection(tls, &inputs.hbone_server, handler, observer, async move {
        drain.cancelled().await
    })
    .await
    {
        tracing::debug!(%peer, error = %e, "HBONE connection ended with an error");
    }
}

async fn handle_stream(
    inputs: &Arc<ProxyInputs>,
    pod: &Arc<Pod>,
    peer_id: &SpiffeId,
    peer: SocketAddr,
    incoming: IncomingConnect,
) {
    let target = incoming.request().target;
    let state = inputs.state();
    // A CONNECT back into ztunnel's own ports would loop (Istio: SelfCall → 503).
    if super::RESERVED_PORTS.contains(&target.port()) {
        inputs.metrics.refuse(LISTENER, "reserved_port");
        tracing::warn!(%peer, %target, "CONNECT to one of ztunnel's own ports refused");
        incoming.refuse(Refusal::Unavailable);
        return;
    }
    // Any of this pod's addresses (dual-stack peers may pick either family).
    let destination = match pod.workload(&state) {
        Some(w) if w.addresses.contains(&target.ip()) => w,
        _ => {
            inputs.metrics.refuse(LISTENER, "target_not_local");
            tracing::warn!(%peer, %target, pod = %pod.key, "CONNECT target is not this pod");
            incoming.refuse(Refusal::BadRequest);
            return;
        }
    };
    let principal = peer_id.principal();
    let source_workload = state
        .workload_by_ip(peer.ip())
        .filter(|w| identity_of(w).ok().as_ref() == Some(peer_id));
    let source = match source_workload {
        Some(w) => Peer::of(w),
        None => Peer::principal_only(principal.clone(), peer_id.namespace().into()),
    };
    let decision = state.authorize(
        &destination,
        &ConnectionInfo {
            source_principal: Some(&principal),
            source_namespace: Some(peer_id.namespace()),
            source_ip: peer.ip(),
            destination_ip: target.ip(),
            destination_port: target.port(),
        },
    );
    if !decision.audited.is_empty() {
        tracing::info!(target: "audit", source = %peer_id, %target, policies = ?decision.audited, "audited connection");
    }
    let record = Record::open(
        &inputs.metrics,
        Reporter::destination,
        "inbound",
        (peer, source),
        (target, Peer::of(&destination)),
        None,
        true,
    );
    if !decision.allowed {
        inputs.metrics.refuse(LISTENER, "policy_denied");
        incoming.refuse(Refusal::Unauthorized);
        let policy = decision
            .policy
            .unwrap_or_else(|| "default deny (an ALLOW policy applies)".into());
        record.close(0, 0, Some(&format!("denied by {policy}")));
        return;
    }
    let mut upstream = match pod.netns.connect(target).await {
        Ok(u) => u,
        Err(e) => {
            inputs.metrics.refuse(LISTENER, "upstream_unavailable");
            incoming.refuse(Refusal::Unavailable);
            record.close(0, 0, Some(&format!("connect {target}: {e}")));
            return;
        }
    };
    let stream = match incoming.accept() {
        Ok(s) => s,
        Err(e) => {
            record.close(0, 0, Some(&e));
            return;
        }
    };
    match ambit_hbone::copy_bidirectional(&mut upstream, stream).await {
        // copy_bidirectional counts app→tunnel first; for the destination reporter "sent" is
        // source→destination, i.e. tunnel→app.
        Ok((to_source, from_source)) => record.close(from_source, to_source, None),
        Err(e) => record.close(e.stream_to_socket, e.socket_to_stream, Some(&e.source)),
    }
}
