//! The agent's Prometheus metrics: plugin requests by command and outcome, enrolled pods and
//! connected ztunnels.

use std::sync::Mutex;

use ambit_cni::protocol::PodCommand;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub command: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub enrolled: Gauge,
    pub ztunnels: Gauge,
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ambit_cni_agent");
        let requests = Family::<RequestLabels, Counter>::default();
        let enrolled = Gauge::default();
        let ztunnels = Gauge::default();
        registry.register(
            "requests",
            "CNI plugin requests by command and outcome",
            requests.clone(),
        );
        registry.register(
            "enrolled_pods",
            "Pods of this node captured into ztunnel",
            enrolled.clone(),
        );
        registry.register("ztunnel_connections", "ztunnels connected over ZDS", ztunnels.clone());
        Metrics {
            requests,
            enrolled,
            ztunnels,
            registry: Mutex::new(registry),
        }
    }

    pub fn cni_request(&self, command: PodCommand, outcome: &'static str) {
        let command = match command {
            PodCommand::Add => "ADD",
            PodCommand::Del => "DEL",
            PodCommand::Check => "CHECK",
        };
        self.requests.get_or_create(&RequestLabels { command, outcome }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}
