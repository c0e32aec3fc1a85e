//! Services: Kubernetes Services to model Services, and which pods are their endpoints
//! (EndpointSlices when the service has any, its selector otherwise), with each endpoint's ports.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ambit_model::{Service as ModelService, ServicePort};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::index::{Index, Key, key};

/// Label on an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the index keeps of one EndpointSlice: its service and the pods of its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SliceEntry {
    /// `namespace/name` of the service.
    pub(crate) service: Key,
    /// `namespace/name` of the pods behind ready endpoints.
    pub(crate) pods: BTreeSet<Key>,
}

impl SliceEntry {
    /// `None` for a slice without a service label; it belongs to no service.
    pub(crate) fn from_slice(namespace: &str, slice: &EndpointSlice) -> Option<Self> {
        let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        let pods = slice
            .endpoints
            .iter()
            // Kubernetes: an unset `ready` means unknown, to be read as ready.
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .filter_map(|e| e.target_ref.as_ref())
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .filter_map(|r| {
                let pod_namespace = r.namespace.as_deref().unwrap_or(namespace);
                Some(key(pod_namespace, r.name.as_deref()?))
            })
            .collect();
        Some(Self {
            service: key(namespace, service),
            pods,
        })
    }
}

impl Index {
    /// The model service for `service_key`; `None` when it is absent or an `ExternalName`
    /// service (a DNS alias, nothing the mesh carries).
    pub(crate) fn model_service(&self, service_key: &Key) -> Option<ModelService> {
        let service = self.kube_services.get(service_key)?;
        let spec = service.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let name = service.metadata.name.clone()?;
        let namespace = service_key.split_once('/').map_or("default", |(ns, _)| ns).to_owned();
        let cluster_ips = spec
            .cluster_ips
            .clone()
            .filter(|ips| !ips.is_empty())
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default();
        // Headless services say `None`; anything else unparseable is left out the same way.
        let vips = cluster_ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()).collect();
        let ports = tcp_ports(service)
            .map(|port| ServicePort {
                port: port.port,
                target_port: match &port.target {
                    TargetPort::Number(number) => *number,
                    // Resolved per endpoint (Workload.services); 0 reaches nothing, as Istio.
                    TargetPort::Name(_) => 0,
                },
            })
            .collect();
        let waypoint = self.service_waypoint(&namespace, service);
        Some(ModelService {
            hostname: format!("{name}.{namespace}.svc.{}", self.config.cluster_domain),
            name,
            namespace,
            vips,
            ports,
            selector: Default::default(),
            waypoint,
        })
    }

    /// Whether `service`'s endpoints come from EndpointSlices (it has any) rather than its selector.
    fn has_slices(&self, service_key: &Key) -> bool {
        self.slices_by_service.get(service_key).is_some_and(|s| !s.is_empty())
    }

    /// The pods that should be endpoints of `service_key` as things stand.
    pub(crate) fn endpoint_candidates(&self, service_key: &Key) -> BTreeSet<Key> {
        if self.has_slices(service_key) {
            return self
                .slices_by_service
                .get(service_key)
                .into_iter()
                .flatten()
                .filter_map(|slice| self.slices.get(slice))
                .flat_map(|slice| slice.pods.iter().cloned())
                .collect();
        }
        let Some(service) = self.kube_services.get(service_key) else {
            return BTreeSet::new();
        };
        let namespace = service_key.split_once('/').map_or("", |(ns, _)| ns);
        self.pods_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|pod_key| self.pods.get(*pod_key).is_some_and(|pod| selects(service, pod)))
            .cloned()
            .collect()
    }

    /// The services `pod` is an endpoint of, each with the pod's port mapping.
    pub(crate) fn services_of(
        &self,
        pod_key: &Key,
        namespace: &str,
        pod: &Pod,
    ) -> Vec<(Key, String, Vec<ServicePort>)> {
        let by_slice = self.slice_services_by_pod.get(pod_key);
        self.services_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|service_key| {
                let service = self.kube_services.get(service_key)?;
                let member = if self.has_slices(service_key) {
                    by_slice.is_some_and(|s| s.contains_key(service_key))
                } else {
                    selects(service, pod)
                };
                if !member || service.spec.as_ref()?.type_.as_deref() == Some("ExternalName") {
                    return None;
                }
                let name = service.metadata.name.as_deref()?;
                let hostname = format!("{name}.{namespace}.svc.{}", self.config.cluster_domain);
                Some((
                    service_key.clone(),
                    format!("{namespace}/{hostname}"),
                    pod_ports(service, pod),
                ))
            })
            .collect()
    }
}

/// Whether the service's selector picks `pod`: a non-empty selector all of whose labels the pod
/// carries. As in Kubernetes, an empty or absent selector selects nothing.
fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let labels = pod.metadata.labels.as_ref();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

enum TargetPort {
    Number(u16),
    Name(String),
}

struct TcpPort {
    port: u16,
    target: TargetPort,
}

/// The service's TCP ports (the mesh carries TCP only) with valid numbers.
fn tcp_ports(service: &Service) -> impl Iterator<Item = TcpPort> + '_ {
    service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|port| *port != 0)?;
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(number)) => TargetPort::Number(u16::try_from(*number).ok().filter(|n| *n != 0)?),
                Some(IntOrString::String(name)) => match name.parse::<u16>() {
                    // kubectl and YAML sources sometimes quote numbers.
                    Ok(number) if number != 0 => TargetPort::Number(number),
                    _ => TargetPort::Name(name.clone()),
                },
            };
            Some(TcpPort { port, target })
        })
}

/// The service's ports on this pod; a named target port the pod's containers do not declare is
/// left out, as the Kubernetes endpoints controller does.
fn pod_ports(service: &Service, pod: &Pod) -> Vec<ServicePort> {
    tcp_ports(service)
        .filter_map(|port| {
            let target_port = match port.target {
                TargetPort::Number(number) => number,
                TargetPort::Name(name) => named_container_port(pod, &name)?,
            };
            Some(ServicePort {
                port: port.port,
                target_port,
            })
        })
        .collect()
}

fn named_container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .and_then(|p| u16::try_from(p.container_port).ok())
}
