//! The resource types the emulator serves: the built-in table and the registry that CRDs add to.
//! A [`ResourceDef`] carries everything discovery, routing and the write path need to know about a
//! type; it does not hold objects (see `store`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// `(group, plural)`: the storage identity of a resource. Objects are stored once per group
/// resource and served under every version of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupResource {
    pub(crate) group: String,
    pub(crate) resource: String,
}

/// Type-specific behaviour hooked into the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behavior {
    Plain,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    TokenReview,
    CustomResourceDefinition,
    CustomResource,
}

/// An additional printer column of a CRD (server-side `Table` printing).
#[derive(Debug, Clone)]
pub(crate) struct PrinterColumn {
    pub(crate) name: String,
    pub(crate) column_type: String,
    pub(crate) json_path: String,
    pub(crate) description: String,
    pub(crate) priority: i64,
}

/// Everything known about one served resource type.
#[derive(Debug, Clone)]
pub(crate) struct ResourceDef {
    pub(crate) group: String,
    /// Served versions, the preferred (storage) one first.
    pub(crate) versions: Vec<String>,
    pub(crate) plural: String,
    pub(crate) singular: String,
    pub(crate) kind: String,
    pub(crate) namespaced: bool,
    pub(crate) short_names: Vec<String>,
    pub(crate) categories: Vec<String>,
    pub(crate) status_subresource: bool,
    /// Whether `metadata.generation` is maintained (workloads, CRDs and custom resources).
    pub(crate) has_generation: bool,
    /// Whether DELETE answers with the deleted object rather than a success `Status`.
    pub(crate) returns_deleted_object: bool,
    pub(crate) behavior: Behavior,
    pub(crate) printer_columns: Vec<PrinterColumn>,
    /// `openAPIV3Schema` per version (custom resources only).
    pub(crate) schemas: BTreeMap<String, Value>,
}

impl ResourceDef {
    pub(crate) fn group_resource(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            resource: self.plural.clone(),
        }
    }

    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub(crate) fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    pub(crate) fn verbs(&self) -> Vec<&'static str> {
        match self.behavior {
            Behavior::TokenReview => vec!["create"],
            _ => vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        }
    }

    /// The subresources served under `<resource>/<name>/`.
    pub(crate) fn subresources(&self) -> Vec<&'static str> {
        let mut subresources = Vec::new();
        if self.status_subresource {
            subresources.push("status");
        }
        if self.behavior == Behavior::ServiceAccount {
            subresources.push("token");
        }
        subresources
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    behavior: Behavior,
}

const BUILTINS: &[Builtin] = &[
    b("", "namespaces", "Namespace", false, &["ns"], true, Behavior::Namespace),
    b("", "pods", "Pod", true, &["po"], true, Behavior::Pod),
    b("", "services", "Service", true, &["svc"], true, Behavior::Service),
    b("", "endpoints", "Endpoints", true, &["ep"], false, Behavior::Plain),
    b("", "configmaps", "ConfigMap", true, &["cm"], false, Behavior::Plain),
    b("", "secrets", "Secret", true, &[], false, Behavior::Plain),
    b(
        "",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
        Behavior::ServiceAccount,
    ),
    b("", "nodes", "Node", false, &["no"], true, Behavior::Plain),
    b("", "events", "Event", true, &["ev"], false, Behavior::Plain),
    b(
        "apps",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
        Behavior::Plain,
    ),
    b(
        "events.k8s.io",
        "events",
        "Event",
        true,
        &["ev"],
        false,
        Behavior::Plain,
    ),
    b(
        "authentication.k8s.io",
        "tokenreviews",
        "TokenReview",
        false,
        &[],
        false,
        Behavior::TokenReview,
    ),
    b(
        "coordination.k8s.io",
        "leases",
        "Lease",
        true,
        &[],
        false,
        Behavior::Plain,
    ),
    b(
        "discovery.k8s.io",
        "endpointslices",
        "EndpointSlice",
        true,
        &[],
        false,
        Behavior::Plain,
    ),
    b(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
        Behavior::CustomResourceDefinition,
    ),
];

const fn b(
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    behavior: Behavior,
) -> Builtin {
    Builtin {
        group,
        version: "v1",
        plural,
        kind,
        namespaced,
        short_names,
        status,
        behavior,
    }
}

impl Builtin {
    fn to_def(&self) -> ResourceDef {
        let has_generation =
            matches!(self.behavior, Behavior::CustomResourceDefinition) || self.plural == "deployments";
        ResourceDef {
            group: self.group.to_owned(),
            versions: vec![self.version.to_owned()],
            plural: self.plural.to_owned(),
            singular: self.kind.to_ascii_lowercase(),
            kind: self.kind.to_owned(),
            namespaced: self.namespaced,
            short_names: self.short_names.iter().map(|s| (*s).to_owned()).collect(),
            categories: if matches!(self.plural, "pods" | "services" | "deployments") {
                vec!["all".to_owned()]
            } else {
                Vec::new()
            },
            status_subresource: self.status,
            has_generation,
            returns_deleted_object: matches!(self.behavior, Behavior::Namespace | Behavior::Pod)
                || self.behavior == Behavior::CustomResourceDefinition,
            behavior: self.behavior,
            printer_columns: Vec::new(),
            schemas: BTreeMap::new(),
        }
    }
}

/// The served resource types: the built-ins plus one entry per established CRD.
#[derive(Debug)]
pub(crate) struct Registry {
    builtins: Vec<Arc<ResourceDef>>,
    /// Keyed by CRD name (`<plural>.<group>`).
    custom: BTreeMap<String, Arc<ResourceDef>>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            builtins: BUILTINS.iter().map(|b| Arc::new(b.to_def())).collect(),
            custom: BTreeMap::new(),
        }
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.builtins.iter().chain(self.custom.values())
    }

    /// The resource served at `/<group>/<version>/<plural>`.
    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.all()
            .find(|d| d.group == group && d.plural == plural && d.serves(version))
            .cloned()
    }

    pub(crate) fn find_group_resource(&self, gr: &GroupResource) -> Option<Arc<ResourceDef>> {
        self.all()
            .find(|d| d.group == gr.group && d.plural == gr.resource)
            .cloned()
    }

    /// Every group with its served versions (preferred first), the legacy core group first.
    pub(crate) fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for def in self.all() {
            match groups.iter_mut().find(|(g, _)| *g == def.group) {
                Some((_, versions)) => {
                    for v in &def.versions {
                        if !versions.contains(v) {
                            versions.push(v.clone());
                        }
                    }
                }
                None => groups.push((def.group.clone(), def.versions.clone())),
            }
        }
        groups
    }

    pub(crate) fn install_custom(&mut self, crd_name: &str, def: ResourceDef) {
        self.custom.insert(crd_name.to_owned(), Arc::new(def));
    }

    pub(crate) fn remove_custom(&mut self, crd_name: &str) -> Option<Arc<ResourceDef>> {
        self.custom.remove(crd_name)
    }
}
