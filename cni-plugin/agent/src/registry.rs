//! The pods the CNI plugin reported on this node: which sandbox, which network namespace, which
//! addresses. Kept as one small JSON file per pod under the state directory, so an agent
//! restart still knows every pod's namespace (the cluster API does not carry it).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One pod's network attachment, from its CNI ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attachment {
    pub namespace: String,
    pub name: String,
    /// The uid the pod goes by on ZDS (its Kubernetes uid when known).
    pub uid: String,
    /// Empty for a pod found by [`crate::discover`] (its sandbox id is not known).
    pub container_id: String,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
}

impl Attachment {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether sandbox `container_id` is this attachment's (any is, when it was discovered).
    pub fn is_sandbox(&self, container_id: &str) -> bool {
        self.container_id.is_empty() || self.container_id == container_id
    }
}

#[derive(Debug, thiserror::Error)]
#[error("pod registry {path}: {source}")]
pub struct RegistryError {
    path: PathBuf,
    source: std::io::Error,
}

/// The attachments, in memory and on disk.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    pods: BTreeMap<String, Attachment>,
}

impl Registry {
    /// Loads `dir` (created if missing). An unreadable record is logged and dropped: the pod is
    /// then treated as unknown, as if it predated the agent.
    pub fn load(dir: &Path) -> Result<Registry, RegistryError> {
        let error = |source| RegistryError {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(error)?;
        let mut pods = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(error)? {
            let path = entry.map_err(error)?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<Attachment>(&bytes).map_err(|e| e.to_string()));
            match parsed {
                Ok(a) => {
                    pods.insert(a.key(), a);
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "unreadable pod record; removing it");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Registry {
            dir: dir.to_path_buf(),
            pods,
        })
    }

    fn file(&self, key: &str) -> PathBuf {
        // Pod and namespace names are DNS names (the plugin checks): no '/' or '_' in them.
        self.dir.join(format!("{}.json", key.replace('/', "_")))
    }

    pub fn get(&self, key: &str) -> Option<&Attachment> {
        self.pods.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Attachment> {
        self.pods.values()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pods.len()
    }

    /// Records `attachment`, replacing an earlier sandbox of the same pod.
    pub fn upsert(&mut self, attachment: Attachment) -> Result<(), RegistryError> {
        let path = self.file(&attachment.key());
        let temp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&attachment).map_err(|e| RegistryError {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|source| RegistryError { path, source })?;
        self.pods.insert(attachment.key(), attachment);
        Ok(())
    }

    /// Forgets pod `key`, unless `container_id` names another sandbox than the recorded one (a
    /// late DEL of a sandbox the pod already replaced).
    pub fn remove(&mut self, key: &str, container_id: Option<&str>) -> Result<Option<Attachment>, RegistryError> {
        let Some(current) = self.pods.get(key) else {
            return Ok(None);
        };
        if container_id.is_some_and(|id| id != current.container_id) {
            return Ok(None);
        }
        let path = self.file(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RegistryError { path, source }),
        }
        Ok(self.pods.remove(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(name: &str, container: &str) -> Attachment {
        Attachment {
            namespace: "demo".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            container_id: container.into(),
            netns: "/run/netns/x".into(),
            ips: vec!["10.0.0.2".parse().expect("ip")],
        }
    }

    #[test]
    fn survives_a_reload_and_ignores_a_stale_del() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut registry = Registry::load(dir.path()).expect("load");
        registry.upsert(attachment("a", "c1")).expect("upsert");
        registry.upsert(attachment("b", "c2")).expect("upsert");
        registry.upsert(attachment("a", "c3")).expect("new sandbox");
        std::fs::write(dir.path().join("broken.json"), "{").expect("write");

        let mut registry = Registry::load(dir.path()).expect("reload");
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.get("demo/a").map(|a| a.container_id.as_str()), Some("c3"));
        assert!(!dir.path().join("broken.json").exists());

        assert_eq!(
            registry.remove("demo/a", Some("c1")).expect("remove"),
            None,
            "stale DEL"
        );
        assert!(registry.remove("demo/a", Some("c3")).expect("remove").is_some());
        assert!(registry.remove("demo/a", None).expect("remove twice").is_none());
        assert_eq!(Registry::load(dir.path()).expect("reload").len(), 1);
    }
}
