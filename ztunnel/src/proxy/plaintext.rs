//! Inbound plaintext (15006): a connection to this pod that did not arrive over HBONE (a client
//! outside the mesh). PeerAuthentication STRICT refuses it; PERMISSIVE lets it through subject to
//! L4 authorization, with no source identity.

use std::{net::SocketAddr, sync::Arc};

use ambit_model::{ConnectionInfo, MtlsMode};
use tokio::net::TcpStream;

use super::{
    Pod, ProxyInputs,
    accounting::{Peer, Record},
};
use crate::{metrics::Reporter, netns};

const LISTENER: &str = "inbound_plaintext";

pub async fn handle(inputs: Arc<ProxyInputs>, pod: Arc<Pod>, mut client: TcpStream, peer: SocketAddr) {
    let target = match netns::original_destination(&client) {
        Ok(a) => a,
        Err(e) => {
            inputs.metrics.refuse(LISTENER, "no_original_destination");
            tracing::warn!(pod = %pod.key, %peer, error = %e, "inbound connection without an original destination");
            return;
        }
    };
    let state = inputs.state();
    let Some(destination) = pod.workload(&state) else {
        inputs.metrics.refuse(LISTENER, "unknown_destination");
        return;
    };
    if matches!(state.mtls_mode(&destination, target.port()), MtlsMode::Strict) {
        inputs.metrics.refuse(LISTENER, "strict_mtls");
        tracing::warn!(%peer, %target, workload = %destination.key(), "plaintext refused: PeerAuthentication STRICT");
        return;
    }
    let source = state.workload_by_ip(peer.ip()).map(|w| Peer::of(w)).unwrap_or_default();
    let decision = state.authorize(
        &destination,
        &ConnectionInfo {
            source_principal: None,
            source_namespace: None,
            source_ip: peer.ip(),
            destination_ip: target.ip(),
            destination_port: target.port(),
        },
    );
    let record = Record::open(
        &inputs.metrics,
        Reporter::destination,
        "inbound_plaintext",
        (peer, source),
        (target, Peer::of(&destination)),
        None,
        false,
    );
    if !decision.allowed {
        inputs.metrics.refuse(LISTENER, "policy_denied");
        let policy = decision
            .policy
            .unwrap_or_else(|| "default deny (an ALLOW policy applies)".into());
        record.close(0, 0, Some(&format!("denied by {policy}")));
        return;
    }
    match pod.netns.connect(target).await {
        Ok(mut upstream) => match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((sent, received)) => record.close(sent, received, None),
            Err(e) => record.close(0, 0, Some(&e)),
        },
        Err(e) => {
            inputs.metrics.refuse(LISTENER, "upstream_unavailable");
            record.close(0, 0, Some(&format!("connect {target}: {e}")));
        }
    }
}
