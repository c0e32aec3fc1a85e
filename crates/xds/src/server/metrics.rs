//! Counters the operator exports: connected streams, pushes and resources sent per type,
//! NACKs per type, and streams reset for falling behind the change log.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type TypeLabels = Vec<(String, String)>;

/// The xDS server's metrics; register them with [`ServerMetrics::register`].
#[derive(Debug, Default)]
pub struct ServerMetrics {
    pub(crate) connected: Gauge,
    pushes: Family<TypeLabels, Counter>,
    resources: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    pub(crate) resets: Counter,
}

impl ServerMetrics {
    /// Adds the metrics to `registry` under the `xds_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("xds");
        registry.register("connected_clients", "Open delta ADS streams", self.connected.clone());
        registry.register("pushes", "Responses sent, by type URL", self.pushes.clone());
        registry.register(
            "resources_sent",
            "Resources and removals sent, by type URL",
            self.resources.clone(),
        );
        registry.register("nacks", "Responses clients rejected, by type URL", self.nacks.clone());
        registry.register(
            "stream_resets",
            "Streams reset because they fell behind the change log",
            self.resets.clone(),
        );
    }

    /// Open streams now.
    pub fn connected_clients(&self) -> i64 {
        self.connected.get()
    }

    /// Responses sent for `type_url` so far.
    pub fn pushes(&self, type_url: &str) -> u64 {
        self.pushes.get_or_create(&labels(type_url)).get()
    }

    /// Resources and removals sent for `type_url` so far.
    pub fn resources_sent(&self, type_url: &str) -> u64 {
        self.resources.get_or_create(&labels(type_url)).get()
    }

    /// NACKs received for `type_url` so far.
    pub fn nacks(&self, type_url: &str) -> u64 {
        self.nacks.get_or_create(&labels(type_url)).get()
    }

    pub(crate) fn push(&self, type_url: &str, items: usize) {
        let labels = labels(type_url);
        self.pushes.get_or_create(&labels).inc();
        self.resources.get_or_create(&labels).inc_by(items as u64);
    }

    pub(crate) fn nack(&self, type_url: &str) {
        self.nacks.get_or_create(&labels(type_url)).inc();
    }
}

fn labels(type_url: &str) -> TypeLabels {
    vec![("type_url".to_owned(), type_url.to_owned())]
}
