//! The CA's counters: certificates issued, and requests refused by reason. Registered on the
//! registry the operator serves; the labels are the `reason()`s of the refusals.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct CaMetrics {
    issued: Counter,
    refused: Family<RefusalLabels, Counter>,
}

impl CaMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "ambit_ca_certificates_issued",
            "Workload certificates signed by the mesh CA",
            metrics.issued.clone(),
        );
        registry.register(
            "ambit_ca_requests_refused",
            "CreateCertificate requests refused, by reason",
            metrics.refused.clone(),
        );
        metrics
    }

    pub(crate) fn issued(&self) {
        self.issued.inc();
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }
}
