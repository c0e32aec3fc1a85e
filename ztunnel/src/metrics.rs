//! Prometheus metrics: Istio-compatible `istio_tcp_*` connection and byte counters, plus
//! Ambit's own counters of refused connections and config reloads. Served off the data path by
//! [`crate::admin`].

use std::sync::Mutex;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Which side of the connection reports: the source pod's ztunnel or the destination's.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    source,
    destination,
}

/// Labels of the `istio_tcp_*` families (names as Istio's, so dashboards work unchanged).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub connection_security_policy: String,
}

/// Labels of refused connections and streams.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub struct Metrics {
    pub connections_opened: Family<TcpLabels, Counter>,
    pub connections_closed: Family<TcpLabels, Counter>,
    pub sent_bytes: Family<TcpLabels, Counter>,
    pub received_bytes: Family<TcpLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub hbone_connections: Gauge,
    pub active_connections: Gauge,
    registry: Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            refused: Family::default(),
            config_reloads: Family::default(),
            hbone_connections: Gauge::default(),
            active_connections: Gauge::default(),
            registry: Mutex::new(Registry::default()),
        };
        {
            let mut r = m.lock();
            r.register(
                "istio_tcp_connections_opened",
                "TCP connections opened",
                m.connections_opened.clone(),
            );
            r.register(
                "istio_tcp_connections_closed",
                "TCP connections closed",
                m.connections_closed.clone(),
            );
            r.register(
                "istio_tcp_sent_bytes",
                "Bytes sent from source to destination",
                m.sent_bytes.clone(),
            );
            r.register(
                "istio_tcp_received_bytes",
                "Bytes received by the source from the destination",
                m.received_bytes.clone(),
            );
            r.register(
                "ambit_connections_refused",
                "Connections or HBONE streams refused, by listener and reason",
                m.refused.clone(),
            );
            r.register(
                "ambit_config_reloads",
                "Config file reloads by result",
                m.config_reloads.clone(),
            );
            r.register(
                "ambit_hbone_client_connections",
                "Open pooled HBONE client connections",
                m.hbone_connections.clone(),
            );
            r.register(
                "ambit_active_connections",
                "Proxied connections currently open",
                m.active_connections.clone(),
            );
        }
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn refuse(&self, listener: &'static str, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { listener, reason }).inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.lock());
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
