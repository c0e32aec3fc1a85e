//! Per-connection accounting in one place: the `istio_tcp_*` counters and the access-log line
//! written when a proxied connection closes.

use std::{net::SocketAddr, sync::Arc};

use ambit_model::{Service, Workload};
use tokio::time::Instant;

use crate::metrics::{Metrics, Reporter, TcpLabels};

/// One side of a connection as the metrics and the log name it.
#[derive(Default)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
}

impl Peer {
    pub fn of(w: &Workload) -> Self {
        Peer {
            workload: w.workload_name.clone(),
            namespace: w.namespace.clone(),
            principal: w.principal(),
        }
    }

    /// A peer we only know by its verified identity (inbound HBONE from another node).
    pub fn principal_only(principal: String, namespace: String) -> Self {
        Peer {
            workload: String::new(),
            namespace,
            principal,
        }
    }
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() { "unknown".into() } else { s.into() }
}

pub struct Record {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    direction: &'static str,
    source: SocketAddr,
    destination: SocketAddr,
    start: Instant,
}

impl Record {
    /// Counts the connection as opened.
    pub fn open(
        metrics: &Arc<Metrics>,
        reporter: Reporter,
        direction: &'static str,
        (source, src): (SocketAddr, Peer),
        (destination, dst): (SocketAddr, Peer),
        service: Option<&Service>,
        mtls: bool,
    ) -> Self {
        let labels = TcpLabels {
            reporter,
            source_workload: or_unknown(&src.workload),
            source_workload_namespace: or_unknown(&src.namespace),
            source_principal: if src.principal.is_empty() {
                "unknown".into()
            } else {
                format!("spiffe://{}", src.principal)
            },
            destination_workload: or_unknown(&dst.workload),
            destination_workload_namespace: or_unknown(&dst.namespace),
            destination_principal: if dst.principal.is_empty() {
                "unknown".into()
            } else {
                format!("spiffe://{}", dst.principal)
            },
            destination_service: service.map(|s| s.hostname.clone()).unwrap_or_else(|| "unknown".into()),
            connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
        };
        metrics.connections_opened.get_or_create(&labels).inc();
        metrics.active_connections.inc();
        Record {
            metrics: metrics.clone(),
            labels,
            direction,
            source,
            destination,
            start: Instant::now(),
        }
    }

    /// Counts the connection as closed and writes its access-log line. `sent` is bytes from the
    /// source towards the destination, `received` the reverse.
    pub fn close(self, sent: u64, received: u64, error: Option<&dyn std::fmt::Display>) {
        let m = &self.metrics;
        m.connections_closed.get_or_create(&self.labels).inc();
        m.sent_bytes.get_or_create(&self.labels).inc_by(sent);
        m.received_bytes.get_or_create(&self.labels).inc_by(received);
        m.active_connections.dec();
        let l = &self.labels;
        let duration_ms = self.start.elapsed().as_millis() as u64;
        let outcome = if error.is_some() {
            "connection failed"
        } else {
            "connection complete"
        };
        tracing::info!(
            target: "access",
            direction = self.direction,
            src.addr = %self.source,
            src.workload = %l.source_workload,
            src.identity = %l.source_principal,
            dst.addr = %self.destination,
            dst.workload = %l.destination_workload,
            dst.identity = %l.destination_principal,
            dst.service = %l.destination_service,
            security = %l.connection_security_policy,
            bytes_sent = sent,
            bytes_recv = received,
            duration_ms,
            error = error.map(tracing::field::display),
            "{outcome}"
        );
    }
}
