//! Which identities an authenticated caller may obtain: its own, always; any other only when
//! the caller is a ztunnel and the identity has a pod on that ztunnel's node. Pod placement is
//! the lead's cluster index, reached through [`NodeDirectory`].

use ambit_identity::SpiffeId;

use super::{CaConfig, Caller};

/// Where identities run: implemented from the cluster index (or the local manifests).
pub trait NodeDirectory: Send + Sync + 'static {
    /// Whether a pod using service account `namespace/service_account` is scheduled on `node`.
    fn has_identity_on_node(&self, node: &str, namespace: &str, service_account: &str) -> bool;
}

/// Why a caller may not have the identity it asked for; each maps to `PermissionDenied`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("{caller} may not request {requested}: a workload may only request its own identity")]
    NotOwnIdentity { caller: Caller, requested: SpiffeId },
    #[error("{caller} may not request {requested}: its token does not say which node it runs on")]
    NodeUnknown { caller: Caller, requested: SpiffeId },
    #[error("{caller} may not request {requested}: no pod with that identity runs on node {node:?}")]
    NotOnNode {
        caller: Caller,
        requested: SpiffeId,
        node: String,
    },
    #[error("{requested} is outside trust domain {trust_domain:?}, the only one this CA signs for")]
    ForeignTrustDomain { requested: SpiffeId, trust_domain: String },
}

impl Refusal {
    /// The metric label of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotOwnIdentity { .. } => "not_own_identity",
            Refusal::NodeUnknown { .. } => "node_unknown",
            Refusal::NotOnNode { .. } => "not_on_node",
            Refusal::ForeignTrustDomain { .. } => "foreign_trust_domain",
        }
    }
}

/// Decides whether `caller` may obtain a certificate for `requested`. The refusal is boxed: it
/// is the rare path and carries whole identities.
pub fn authorize(
    config: &CaConfig,
    nodes: &dyn NodeDirectory,
    caller: &Caller,
    requested: &SpiffeId,
) -> Result<(), Box<Refusal>> {
    if requested.trust_domain() != config.trust_domain {
        return Err(Box::new(Refusal::ForeignTrustDomain {
            requested: requested.clone(),
            trust_domain: config.trust_domain.clone(),
        }));
    }
    if requested.namespace() == caller.namespace && requested.service_account() == caller.service_account {
        return Ok(());
    }
    let is_ztunnel = config
        .ztunnel_service_accounts
        .iter()
        .any(|(ns, sa)| *ns == caller.namespace && *sa == caller.service_account);
    if !is_ztunnel {
        return Err(Box::new(Refusal::NotOwnIdentity {
            caller: caller.clone(),
            requested: requested.clone(),
        }));
    }
    let Some(node) = &caller.node else {
        return Err(Box::new(Refusal::NodeUnknown {
            caller: caller.clone(),
            requested: requested.clone(),
        }));
    };
    if nodes.has_identity_on_node(node, requested.namespace(), requested.service_account()) {
        Ok(())
    } else {
        Err(Box::new(Refusal::NotOnNode {
            caller: caller.clone(),
            requested: requested.clone(),
            node: node.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OnePod;

    impl NodeDirectory for OnePod {
        fn has_identity_on_node(&self, node: &str, namespace: &str, service_account: &str) -> bool {
            (node, namespace, service_account) == ("node-a", "shop", "cart")
        }
    }

    fn caller(ns: &str, sa: &str, node: Option<&str>) -> Caller {
        Caller {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
            node: node.map(str::to_owned),
        }
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa).expect("id")
    }

    #[test]
    fn own_identity_always_and_others_only_for_ztunnel_on_the_node() {
        let config = CaConfig::new("cluster.local");
        let ztunnel_a = caller("ambit-system", "ztunnel", Some("node-a"));
        let ztunnel_b = caller("ambit-system", "ztunnel", Some("node-b"));
        let cart = caller("shop", "cart", None);
        assert!(authorize(&config, &OnePod, &cart, &id("shop", "cart")).is_ok());
        assert!(authorize(&config, &OnePod, &ztunnel_a, &id("shop", "cart")).is_ok());
        assert!(authorize(&config, &OnePod, &ztunnel_b, &id("ambit-system", "ztunnel")).is_ok());

        let err = authorize(&config, &OnePod, &ztunnel_b, &id("shop", "cart")).expect_err("other node");
        assert_eq!(err.reason(), "not_on_node");
        let msg = err.to_string();
        assert!(
            msg.contains("spiffe://cluster.local/ns/shop/sa/cart") && msg.contains("node-b"),
            "{msg}"
        );

        let err = authorize(&config, &OnePod, &cart, &id("shop", "admin")).expect_err("not own");
        assert_eq!(err.reason(), "not_own_identity");
        let nodeless = caller("ambit-system", "ztunnel", None);
        let err = authorize(&config, &OnePod, &nodeless, &id("shop", "cart")).expect_err("no node");
        assert_eq!(err.reason(), "node_unknown");
        let foreign = SpiffeId::new("other.td", "shop", "cart").expect("id");
        let err = authorize(&config, &OnePod, &ztunnel_a, &foreign).expect_err("foreign");
        assert_eq!(err.reason(), "foreign_trust_domain");
    }

    #[test]
    fn ttl_defaults_and_is_capped() {
        let mut config = CaConfig::new("cluster.local");
        config.max_ttl = std::time::Duration::from_secs(3600);
        assert_eq!(config.ttl_for(0).as_secs(), 3600);
        assert_eq!(config.ttl_for(-5).as_secs(), 3600);
        assert_eq!(config.ttl_for(60).as_secs(), 60);
        assert_eq!(config.ttl_for(86_400).as_secs(), 3600);
        assert_eq!(CaConfig::new("td").ttl_for(0), super::super::DEFAULT_TTL);
    }
}
