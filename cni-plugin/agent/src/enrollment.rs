//! Which pods belong in the mesh, decided from labels alone: a namespace labelled
//! `ambit.dev/dataplane-mode=ambient` enrolls its pods; a pod labelled `…=none` opts out; a pod
//! labelled `…=ambient` joins even when its namespace does not. Host-network pods never do
//! (they share the node's namespace). The view here is the few fields that matter, whichever
//! source (Kubernetes or manifests) they came from.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Namespace, Pod};

/// The enrollment label, on namespaces and pods.
pub const DATAPLANE_MODE: &str = "ambit.dev/dataplane-mode";

/// What the agent needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub host_network: bool,
    pub ips: Vec<IpAddr>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod, default_namespace: &str) -> PodInfo {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect())
            .unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        PodInfo {
            namespace: meta.namespace.clone().unwrap_or_else(|| default_namespace.to_owned()),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            node: spec.and_then(|s| s.node_name.clone()),
            labels: meta.labels.clone().unwrap_or_default(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The labels of each namespace and the pods of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// By `namespace/name`.
    pub pods: BTreeMap<String, PodInfo>,
}

impl Cluster {
    pub fn insert_namespace(&mut self, namespace: &Namespace) {
        if let Some(name) = &namespace.metadata.name {
            let labels = namespace.metadata.labels.clone().unwrap_or_default();
            self.namespaces.insert(name.clone(), labels);
        }
    }

    pub fn insert_pod(&mut self, pod: PodInfo) {
        self.pods.insert(pod.key(), pod);
    }

    /// Whether pod `namespace/name` belongs in the mesh, and why (for logs and CNI errors).
    pub fn decide(&self, namespace: &str, name: &str) -> Decision {
        let namespace_mode = self
            .namespaces
            .get(namespace)
            .and_then(|labels| labels.get(DATAPLANE_MODE))
            .map(String::as_str);
        let Some(pod) = self.pods.get(&format!("{namespace}/{name}")) else {
            return if namespace_mode == Some("ambient") {
                Decision::Unknown
            } else {
                Decision::Skip("namespace not enrolled")
            };
        };
        if pod.host_network {
            return Decision::Skip("host network");
        }
        match (pod.labels.get(DATAPLANE_MODE).map(String::as_str), namespace_mode) {
            (Some("none"), _) => Decision::Skip("opted out by pod label"),
            (Some("ambient"), _) | (_, Some("ambient")) => Decision::Enroll(pod.clone()),
            _ => Decision::Skip("namespace not enrolled"),
        }
    }
}

/// What [`Cluster::decide`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Enroll(PodInfo),
    Skip(&'static str),
    /// The namespace is enrolled but the pod is not known (yet): neither enroll nor let it run
    /// unmeshed.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(namespace: &str, name: &str, pod_labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            node: Some("node-1".into()),
            labels: labels(pod_labels),
            service_account: "default".into(),
            host_network: false,
            ips: vec![],
        }
    }

    #[test]
    fn namespace_label_enrolls_and_pod_label_overrides() {
        let mut cluster = Cluster::default();
        cluster
            .namespaces
            .insert("mesh".into(), labels(&[(DATAPLANE_MODE, "ambient")]));
        cluster.namespaces.insert("plain".into(), labels(&[]));
        cluster.insert_pod(pod("mesh", "a", &[]));
        cluster.insert_pod(pod("mesh", "out", &[(DATAPLANE_MODE, "none")]));
        cluster.insert_pod(pod("plain", "b", &[]));
        cluster.insert_pod(pod("plain", "in", &[(DATAPLANE_MODE, "ambient")]));
        let mut host = pod("mesh", "host", &[]);
        host.host_network = true;
        cluster.insert_pod(host);

        assert!(matches!(cluster.decide("mesh", "a"), Decision::Enroll(_)));
        assert_eq!(cluster.decide("mesh", "out"), Decision::Skip("opted out by pod label"));
        assert_eq!(cluster.decide("plain", "b"), Decision::Skip("namespace not enrolled"));
        assert!(matches!(cluster.decide("plain", "in"), Decision::Enroll(_)));
        assert_eq!(cluster.decide("mesh", "host"), Decision::Skip("host network"));
        assert_eq!(cluster.decide("mesh", "unknown"), Decision::Unknown);
        assert_eq!(
            cluster.decide("plain", "unknown"),
            Decision::Skip("namespace not enrolled")
        );
        assert_eq!(cluster.decide("nowhere", "x"), Decision::Skip("namespace not enrolled"));
    }

    #[test]
    fn pod_fields_come_from_spec_and_status() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web-sa", "containers": []},
            "status": {"podIP": "10.0.0.5"}
        }))
        .expect("pod");
        let info = PodInfo::from_pod(&pod, "default");
        assert_eq!(info.key(), "default/web");
        assert_eq!(info.service_account, "web-sa");
        assert_eq!(info.ips, vec!["10.0.0.5".parse::<IpAddr>().expect("ip")]);
        assert_eq!(info.node.as_deref(), Some("node-1"));
    }
}
