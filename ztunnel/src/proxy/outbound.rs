//! Outbound (15001): a pod's redirected connection. The original destination is a pod address
//! or a service VIP (balanced across the service's endpoints); meshed destinations are reached
//! over HBONE on their 15008, anything outside the mesh is passed through unchanged.

use std::{net::SocketAddr, sync::Arc};

use ambit_hbone::ConnectRequest;
use ambit_model::{Protocol, Service, State, Workload};
use rand::Rng;
use tokio::net::TcpStream;

use super::{
    HBONE_PORT, Pod, PoolKey, ProxyInputs,
    accounting::{Peer, Record},
    identity_of,
};
use crate::{metrics::Reporter, netns};

const LISTENER: &str = "outbound";

/// Where a connection goes once the original destination is resolved.
enum Route {
    /// A meshed workload: HBONE to its 15008.
    Hbone {
        workload: Arc<Workload>,
        target: SocketAddr,
        service: Option<Arc<Service>>,
    },
    /// Outside the mesh (or a workload that is not meshed): plain TCP.
    Passthrough {
        target: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// A service VIP with no endpoint to send to.
    NoEndpoints { service: Arc<Service> },
}

fn resolve(state: &State, original: SocketAddr) -> Route {
    let (workload, target, service) = if let Some((svc, _)) = state.service_by_vip(original) {
        let endpoints = state.endpoints(svc);
        let chosen = endpoints
            .iter()
            .filter_map(|w| {
                let ip = *w.addresses.first()?;
                let port = w.target_port(svc, original.port())?;
                Some((*w, SocketAddr::new(ip, port)))
            })
            .collect::<Vec<_>>();
        if chosen.is_empty() {
            return Route::NoEndpoints { service: svc.clone() };
        }
        let (w, target) = chosen[rand::rng().random_range(0..chosen.len())];
        (Some(w.clone()), target, Some(svc.clone()))
    } else {
        (state.workload_by_ip(original.ip()).cloned(), original, None)
    };
    match workload {
        Some(w) if matches!(w.protocol, Protocol::Hbone) => Route::Hbone {
            workload: w,
            target,
            service,
        },
        workload => Route::Passthrough {
            target,
            workload,
            service,
        },
    }
}

/// Istio-style baggage describing the source workload (the keys Istio's ztunnel sends; cluster,
/// version and locality are not modelled yet, so they carry Istio's defaults).
fn baggage(w: &Workload) -> String {
    format!(
        "k8s.cluster.name=Kubernetes,k8s.namespace.name={},k8s.deployment.name={},service.name={},service.version=latest",
        w.namespace, w.workload_name, w.workload_name
    )
}

/// A fresh W3C `traceparent` (not sampled) so the far side can correlate its log line.
fn traceparent() -> String {
    let mut rng = rand::rng();
    format!("00-{:032x}-{:016x}-00", rng.random::<u128>(), rng.random::<u64>())
}

pub async fn handle(inputs: Arc<ProxyInputs>, pod: Arc<Pod>, mut client: TcpStream, peer: SocketAddr) {
    let original = match netns::original_destination(&client) {
        Ok(a) => a,
        Err(e) => {
            inputs.metrics.refuse(LISTENER, "no_original_destination");
            tracing::warn!(pod = %pod.key, %peer, error = %e, "outbound connection without an original destination; closing");
            return;
        }
    };
    let state = inputs.state();
    let Some(source) = pod.workload(&state) else {
        inputs.metrics.refuse(LISTENER, "unknown_source");
        tracing::warn!(pod = %pod.key, "captured pod is not in the config (yet); closing");
        return;
    };
    // `meshed` is the destination workload when the connection goes over HBONE.
    let (target, destination, service, meshed) = match resolve(&state, original) {
        Route::NoEndpoints { service } => {
            inputs.metrics.refuse(LISTENER, "no_endpoints");
            tracing::warn!(service = %service.hostname, %original, "service has no endpoints; closing");
            return;
        }
        Route::Passthrough {
            target,
            workload,
            service,
        } => (
            target,
            workload.as_deref().map(Peer::of).unwrap_or_default(),
            service,
            None,
        ),
        Route::Hbone {
            workload,
            target,
            service,
        } => (target, Peer::of(&workload), service, Some(workload)),
    };
    let record = Record::open(
        &inputs.metrics,
        Reporter::source,
        "outbound",
        (peer, Peer::of(&source)),
        (target, destination),
        service.as_deref(),
        meshed.is_some(),
    );
    match meshed {
        None => match pod.netns.connect(target).await {
            Ok(mut upstream) => match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((sent, received)) => record.close(sent, received, None),
                Err(e) => record.close(0, 0, Some(&e)),
            },
            Err(e) => record.close(0, 0, Some(&format!("connect {target}: {e}"))),
        },
        Some(workload) => match tunnel(&inputs, &pod, &source, &workload, target, peer).await {
            Ok(stream) => match ambit_hbone::copy_bidirectional(&mut client, stream).await {
                Ok((sent, received)) => record.close(sent, received, None),
                Err(e) => record.close(e.socket_to_stream, e.stream_to_socket, Some(&e.source)),
            },
            Err((reason, e)) => {
                inputs.metrics.refuse(LISTENER, reason);
                record.close(0, 0, Some(&e));
            }
        },
    }
}

/// Opens (or reuses) the HBONE connection to `workload` and sends CONNECT for `target`.
async fn tunnel(
    inputs: &Arc<ProxyInputs>,
    pod: &Arc<Pod>,
    source: &Workload,
    workload: &Workload,
    target: SocketAddr,
    peer: SocketAddr,
) -> Result<ambit_hbone::H2Stream, (&'static str, String)> {
    let source_id = identity_of(source).map_err(|e| ("bad_source_identity", e.to_string()))?;
    let destination_id = identity_of(workload).map_err(|e| ("bad_destination_identity", e.to_string()))?;
    let hbone_addr = SocketAddr::new(target.ip(), HBONE_PORT);
    let source_ip = source
        .addresses
        .first()
        .copied()
        .ok_or(("no_source_address", format!("workload {} has no address", source.key())))?;
    let key = PoolKey {
        source: source_id.clone(),
        source_ip,
        destination_identities: vec![destination_id.clone()],
        destination: hbone_addr,
    };
    let request = ConnectRequest {
        target,
        forwarded_for: Some(peer.ip()),
        baggage: Some(baggage(source)),
        traceparent: Some(traceparent()),
    };
    let tls = inputs
        .certs
        .client_config(&source_id, std::slice::from_ref(&destination_id))
        .await
        .map_err(|e| ("certificate", e.to_string()))?;
    let pod = pod.clone();
    inputs
        .pool
        .connect(key, &request, move || async move {
            let tcp = pod
                .netns
                .connect(hbone_addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("connect {hbone_addr}: {e}")))?;
            let mut tls = tokio_rustls::TlsConnector::from(tls)
                .connect(ambit_identity::tls::server_name(), tcp)
                .await
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("TLS to {hbone_addr} expecting {destination_id}: {e}"))
                })?;
            tls.get_mut().1.set_buffer_limit(Some(super::TLS_SEND_BUFFER));
            Ok::<_, ambit_hbone::Error>(tls)
        })
        .await
        .map_err(|e| {
            let reason = match e.status().map(|s| s.as_u16()) {
                Some(401) => "hbone_denied",
                Some(503) => "hbone_upstream_unavailable",
                Some(_) => "hbone_refused",
                None => "hbone_connect_failed",
            };
            (reason, e.to_string())
        })
}
