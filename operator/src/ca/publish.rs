//! Publishing the mesh root so workloads and tools can verify mesh certificates: a ConfigMap
//! `ambit-root-cert` (key `root-cert.pem`) in every namespace, applied server-side, or the
//! `root-cert.pem` file in local mode. When to publish (leader only, namespace events) is the
//! caller's decision.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};

use super::root::{RootError, write_file};

/// The ConfigMap holding the root in every namespace (Istio's is `istio-ca-root-cert`).
pub const ROOT_CONFIGMAP: &str = "ambit-root-cert";
/// Its data key, and the file name in the local state directory.
pub const ROOT_CONFIGMAP_KEY: &str = "root-cert.pem";
pub const ROOT_FILE: &str = ROOT_CONFIGMAP_KEY;
/// The server-side apply field manager of the root ConfigMaps.
const FIELD_MANAGER: &str = "ambit-operator-ca";

/// Why the root could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("cannot apply ConfigMap {namespace}/{ROOT_CONFIGMAP}")]
    Apply {
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cannot list namespaces to publish the root to")]
    List(#[source] Box<kube::Error>),
    #[error(transparent)]
    File(#[from] RootError),
}

/// The ConfigMap publishing `root_pem` in `namespace`.
pub fn root_config_map(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "ambit-operator".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(ROOT_CONFIGMAP_KEY.to_owned(), root_pem.to_owned())])),
        ..ConfigMap::default()
    }
}

/// Ensures `namespace` holds the root ConfigMap with `root_pem` (server-side apply, forced: the
/// root is ours to set).
pub async fn publish_root_to_namespace(
    client: &kube::Client,
    namespace: &str,
    root_pem: &str,
) -> Result<(), PublishError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(
        ROOT_CONFIGMAP,
        &params,
        &Patch::Apply(root_config_map(namespace, root_pem)),
    )
    .await
    .map_err(|source| PublishError::Apply {
        namespace: namespace.to_owned(),
        source: Box::new(source),
    })?;
    Ok(())
}

/// Publishes the root to every namespace; returns how many. Stops at the first failure so the
/// caller retries the whole pass (it is idempotent).
pub async fn publish_root_everywhere(client: &kube::Client, root_pem: &str) -> Result<usize, PublishError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let list = namespaces
        .list_metadata(&ListParams::default())
        .await
        .map_err(|source| PublishError::List(Box::new(source)))?;
    let mut published = 0;
    for namespace in list.items.iter().filter_map(|ns| ns.metadata.name.as_deref()) {
        publish_root_to_namespace(client, namespace, root_pem).await?;
        published += 1;
    }
    Ok(published)
}

/// Local mode: writes `root-cert.pem` into `state_dir`, readable by everyone.
pub fn write_root_file(state_dir: &Path, root_pem: &str) -> Result<(), PublishError> {
    Ok(write_file(&state_dir.join(ROOT_FILE), root_pem, 0o644)?)
}
