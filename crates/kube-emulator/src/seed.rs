//! The objects a fresh cluster has: the `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` namespaces. No service accounts, config maps or nodes are pre-created.

use serde_json::json;

use crate::server::Shared;
use crate::write::{self, FieldValidation, namespaces};

pub(crate) fn default_namespaces(shared: &Shared) {
    let mut state = shared.state();
    let Some(def) = state.registry.find_group_resource(&namespaces()) else {
        return;
    };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        if let Err(error) = write::create(
            &mut state,
            &shared.clock,
            &def,
            "v1",
            "",
            namespace,
            FieldValidation::Strict,
        ) {
            tracing::error!(%error, name, "cannot create a default namespace");
        }
    }
}
