//! Pods to workloads: which pods are workloads, whether they are meshed, their identity and
//! owner name, their services, and the waypoint binding of workloads and services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ambit_model::{Protocol, Waypoint, WaypointAddress, Workload};
use k8s_openapi::api::core::v1::{Pod, Service};

use crate::index::{Index, Key, key};
use crate::{
    DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, FOR_SERVICE_ACCOUNT_ANNOTATION, GATEWAY_NAME_LABEL, OPT_OUT,
    USE_WAYPOINT_LABEL, WAYPOINT_HBONE_PORT,
};

/// Label Kubernetes puts on the pods (and the name) of a ReplicaSet made by a Deployment.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The pod's service account, `default` when unset.
pub(crate) fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default")
}

/// Whether the pod is finished: its containers will not run again.
fn is_terminal(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

fn is_host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// Whether the pod may hold a workload identity: not finished, not on the host network.
pub(crate) fn may_hold_identity(pod: &Pod) -> bool {
    !is_terminal(pod) && !is_host_network(pod)
}

fn label<'p>(pod: &'p Pod, name: &str) -> Option<&'p str> {
    pod.metadata.labels.as_ref()?.get(name).map(String::as_str)
}

/// The pod's IPs, from `status.podIPs` (or the older `status.podIP`), unparseable ones skipped.
fn addresses(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let texts: Vec<&str> = if status.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty()) {
        listed.collect()
    } else {
        status.pod_ip.as_deref().into_iter().collect()
    };
    let mut addresses: Vec<IpAddr> = texts.into_iter().filter_map(|ip| ip.parse().ok()).collect();
    addresses.dedup();
    addresses
}

/// The name of what made the pod, as Istio derives it: a ReplicaSet's name minus the pod
/// template hash (the Deployment), a Job's name minus a CronJob's numeric suffix, another
/// controller's name, or the pod's own name for a bare pod.
pub(crate) fn workload_name(pod: &Pod) -> String {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| pod.metadata.owner_references.as_ref().and_then(|o| o.first()))
    else {
        return pod_name;
    };
    match owner.kind.as_str() {
        "ReplicaSet" => label(pod, POD_TEMPLATE_HASH_LABEL)
            .and_then(|hash| owner.name.strip_suffix(hash)?.strip_suffix('-'))
            .unwrap_or(&owner.name)
            .to_owned(),
        "Job" => match owner.name.rsplit_once('-') {
            Some((cron_job, suffix)) if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) => {
                cron_job.to_owned()
            }
            _ => owner.name.clone(),
        },
        _ => owner.name.clone(),
    }
}

impl Index {
    /// The workload for `pod_key` and the services it lists, or `None` when the pod is no
    /// workload: absent, without an IP yet, finished, or on the host network.
    pub(crate) fn workload(&self, pod_key: &Key) -> Option<(Workload, BTreeSet<Key>)> {
        let pod = self.pods.get(pod_key)?;
        if !may_hold_identity(pod) {
            return None;
        }
        let addresses = addresses(pod);
        if addresses.is_empty() {
            return None;
        }
        let (namespace, name) = pod_key.split_once('/')?;
        let namespace_labels = self
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.metadata.labels.as_ref());
        let namespace_label = |name: &str| namespace_labels.and_then(|l| l.get(name)).map(String::as_str);
        let meshed = namespace_label(DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_AMBIENT)
            && label(pod, DATAPLANE_MODE_LABEL) != Some(OPT_OUT);
        let mut memberships = BTreeSet::new();
        let mut services = BTreeMap::new();
        for (service_key, endpoint_key, ports) in self.services_of(pod_key, namespace, pod) {
            memberships.insert(service_key);
            services.insert(endpoint_key, ports);
        }
        let workload = Workload {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account(pod).to_owned(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
            addresses,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            protocol: if meshed { Protocol::Hbone } else { Protocol::Tcp },
            workload_name: workload_name(pod),
            netns: None,
            trust_domain: self.config.trust_domain.clone(),
            services,
            waypoint: self.workload_waypoint(namespace, pod),
        };
        Some((workload, memberships))
    }

    /// The waypoint of a pod: its own label (`none` opts out), else a waypoint serving its
    /// service account, else its namespace's label. A waypoint's own pods have none.
    fn workload_waypoint(&self, namespace: &str, pod: &Pod) -> Option<Waypoint> {
        if label(pod, GATEWAY_NAME_LABEL).is_some() {
            return None;
        }
        if let Some(name) = label(pod, USE_WAYPOINT_LABEL) {
            return self.waypoint(namespace, name);
        }
        let service_account = service_account(pod);
        let for_account = self
            .gateways_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|gateway_key| self.gateways.get(gateway_key))
            .find(|gateway| {
                let annotation = gateway.metadata.annotations.as_ref();
                annotation
                    .and_then(|a| a.get(FOR_SERVICE_ACCOUNT_ANNOTATION))
                    .map(String::as_str)
                    == Some(service_account)
            })
            .and_then(|gateway| self.waypoint(namespace, gateway.metadata.name.as_deref()?));
        for_account.or_else(|| self.namespace_waypoint(namespace))
    }

    /// The waypoint of a service: its own label (`none` opts out), else its namespace's label.
    pub(crate) fn service_waypoint(&self, namespace: &str, service: &Service) -> Option<Waypoint> {
        match service.metadata.labels.as_ref().and_then(|l| l.get(USE_WAYPOINT_LABEL)) {
            Some(name) => self.waypoint(namespace, name),
            None => self.namespace_waypoint(namespace),
        }
    }

    fn namespace_waypoint(&self, namespace: &str) -> Option<Waypoint> {
        let labels = self.namespaces.get(namespace)?.metadata.labels.as_ref()?;
        self.waypoint(namespace, labels.get(USE_WAYPOINT_LABEL)?)
    }

    /// The waypoint Gateway `namespace/name`, when it exists and is one (`none` is no waypoint).
    fn waypoint(&self, namespace: &str, name: &str) -> Option<Waypoint> {
        if name == OPT_OUT {
            return None;
        }
        let gateway = self.gateways.get(&key(namespace, name))?;
        if gateway.spec.gateway_class_name != ambit_crds::gateway_api::WAYPOINT_GATEWAY_CLASS {
            return None;
        }
        Some(Waypoint {
            address: WaypointAddress::Hostname {
                namespace: namespace.to_owned(),
                hostname: format!("{name}.{namespace}.svc.{}", self.config.cluster_domain),
            },
            hbone_port: WAYPOINT_HBONE_PORT,
        })
    }
}
