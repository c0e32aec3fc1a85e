//! Installing the plugin on the node: `ambit-cni` copied into the CNI plugin directory, and an
//! entry of ours appended to the node's conflist (the first `*.conflist` by name, the one the
//! runtime uses). Uninstalling removes both and leaves the conflist as it was: the original
//! bytes are kept beside the agent's state and restored when nothing else changed the file.
//!
//! Files are replaced by rename, so a runtime reading the conflist never sees half of it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use crate::config::Install;

/// The `type` of our conflist entry (and the plugin binary's name).
pub const PLUGIN_TYPE: &str = "ambit-cni";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no *.conflist in {dir} yet: the node's primary CNI plugin has not written its configuration")]
    NoConflist { dir: PathBuf },
    #[error("conflist {path}: {reason}")]
    Conflist { path: PathBuf, reason: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { what, path, source }
}

/// The conflist the runtime uses: the first `*.conflist` in `dir` by name.
pub fn find_conflist(dir: &Path) -> Result<PathBuf, InstallError> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io("cannot read the CNI configuration directory", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conflist") && p.is_file())
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConflist { dir: dir.to_path_buf() })
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn replace_file(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.ambit-tmp"));
    fs::write(&temp, bytes).map_err(io("cannot write", &temp))?;
    if let Some(mode) = mode {
        fs::set_permissions(&temp, fs::Permissions::from_mode(mode)).map_err(io("cannot chmod", &temp))?;
    }
    fs::rename(&temp, path).map_err(io("cannot replace", path))
}

fn read_conflist(path: &Path) -> Result<(Vec<u8>, Value), InstallError> {
    let bytes = fs::read(path).map_err(io("cannot read conflist", path))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| InstallError::Conflist {
        path: path.to_path_buf(),
        reason: format!("not JSON: {e}"),
    })?;
    if !value.get("plugins").is_some_and(Value::is_array) {
        return Err(InstallError::Conflist {
            path: path.to_path_buf(),
            reason: "no \"plugins\" list".into(),
        });
    }
    Ok((bytes, value))
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// `conflist` without our entries.
fn without_ours(mut conflist: Value) -> Value {
    if let Some(plugins) = conflist.get_mut("plugins").and_then(Value::as_array_mut) {
        plugins.retain(|p| !is_ours(p));
    }
    conflist
}

/// `conflist` with exactly one entry of ours, last in the chain.
pub fn with_ours(conflist: Value, agent_socket: &Path) -> Value {
    let mut conflist = without_ours(conflist);
    if let Some(plugins) = conflist.get_mut("plugins").and_then(Value::as_array_mut) {
        plugins.push(json!({ "type": PLUGIN_TYPE, "agentSocket": agent_socket }));
    }
    conflist
}

/// Where the conflist's bytes from before our edit are kept.
fn original_copy(state_dir: &Path) -> PathBuf {
    state_dir.join("conflist.orig")
}

/// Copies the plugin and adds our entry to the conflist. Idempotent: a conflist that already
/// has our entry, as we would write it, is left untouched. Returns the conflist's path.
pub fn install(install: &Install, agent_socket: &Path, state_dir: &Path) -> Result<PathBuf, InstallError> {
    let binary =
        fs::read(&install.plugin_binary).map_err(io("cannot read the plugin binary", &install.plugin_binary))?;
    let target = install.bin_dir.join(PLUGIN_TYPE);
    if fs::read(&target).ok().as_deref() != Some(binary.as_slice()) {
        fs::create_dir_all(&install.bin_dir).map_err(io("cannot create", &install.bin_dir))?;
        replace_file(&target, &binary, Some(0o755))?;
        tracing::info!(path = %target.display(), "plugin binary installed");
    }
    let path = find_conflist(&install.conf_dir)?;
    let (bytes, value) = read_conflist(&path)?;
    let wanted = with_ours(value.clone(), agent_socket);
    if wanted == value {
        return Ok(path);
    }
    if !value["plugins"].as_array().is_some_and(|p| p.iter().any(is_ours)) {
        fs::create_dir_all(state_dir).map_err(io("cannot create", state_dir))?;
        replace_file(&original_copy(state_dir), &bytes, None)?;
    }
    let mut text = serde_json::to_vec_pretty(&wanted).map_err(|e| InstallError::Conflist {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    replace_file(&path, &text, None)?;
    tracing::info!(conflist = %path.display(), "added to the CNI chain");
    Ok(path)
}

/// Removes our entry from every conflist in the directory and the plugin binary. Where the
/// conflist is otherwise unchanged since we edited it, its original bytes come back.
pub fn uninstall(install: &Install, state_dir: &Path) -> Result<(), InstallError> {
    let entries = fs::read_dir(&install.conf_dir).map_err(io("cannot read", &install.conf_dir))?;
    let original = fs::read(original_copy(state_dir)).ok();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().is_none_or(|e| e != "conflist") {
            continue;
        }
        let Ok((_, value)) = read_conflist(&path) else { continue };
        if !value["plugins"].as_array().is_some_and(|p| p.iter().any(is_ours)) {
            continue;
        }
        let stripped = without_ours(value);
        let restored = original
            .as_deref()
            .filter(|bytes| serde_json::from_slice::<Value>(bytes).ok().as_ref() == Some(&stripped));
        let text = match restored {
            Some(bytes) => bytes.to_vec(),
            None => {
                let mut text = serde_json::to_vec_pretty(&stripped).map_err(|e| InstallError::Conflist {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                text.push(b'\n');
                text
            }
        };
        replace_file(&path, &text, None)?;
        tracing::info!(conflist = %path.display(), "removed from the CNI chain");
    }
    let _ = fs::remove_file(original_copy(state_dir));
    let target = install.bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot remove", &target)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

    fn setup() -> (tempfile::TempDir, Install, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf_dir = dir.path().join("net.d");
        let bin_dir = dir.path().join("bin");
        fs::create_dir_all(&conf_dir).expect("mkdir");
        fs::write(conf_dir.join("10-podnet.conflist"), BRIDGE).expect("write");
        fs::write(conf_dir.join("99-other.conflist"), BRIDGE).expect("write");
        let plugin_binary = dir.path().join("ambit-cni-build");
        fs::write(&plugin_binary, b"#!/bin/true\n").expect("write");
        let state = dir.path().join("state");
        let install = Install {
            conf_dir,
            bin_dir,
            plugin_binary,
        };
        (dir, install, state)
    }

    #[test]
    fn install_appends_once_and_uninstall_restores_the_original_bytes() {
        let (_dir, install_cfg, state) = setup();
        let socket = Path::new("/run/ambit/agent.sock");
        let conflist = install(&install_cfg, socket, &state).expect("install");
        assert!(conflist.ends_with("10-podnet.conflist"));
        install(&install_cfg, socket, &state).expect("install again");
        let value: Value = serde_json::from_slice(&fs::read(&conflist).expect("read")).expect("json");
        let plugins = value["plugins"].as_array().expect("plugins");
        assert_eq!(plugins.len(), 3);
        assert_eq!(
            plugins[2],
            json!({"type": "ambit-cni", "agentSocket": "/run/ambit/agent.sock"})
        );
        assert_eq!(plugins[0]["type"], "bridge", "order kept");
        assert!(install_cfg.bin_dir.join(PLUGIN_TYPE).exists());
        let other = fs::read_to_string(install_cfg.conf_dir.join("99-other.conflist")).expect("read");
        assert_eq!(other, BRIDGE, "only the first conflist is edited");

        uninstall(&install_cfg, &state).expect("uninstall");
        assert_eq!(fs::read_to_string(&conflist).expect("read"), BRIDGE);
        assert!(!install_cfg.bin_dir.join(PLUGIN_TYPE).exists());
        uninstall(&install_cfg, &state).expect("uninstall twice");
    }

    #[test]
    fn uninstall_keeps_edits_made_by_others_since() {
        let (_dir, install_cfg, state) = setup();
        let conflist = install(&install_cfg, Path::new("/s"), &state).expect("install");
        let mut value: Value = serde_json::from_slice(&fs::read(&conflist).expect("read")).expect("json");
        value["name"] = json!("renamed");
        fs::write(&conflist, serde_json::to_vec(&value).expect("json")).expect("write");
        uninstall(&install_cfg, &state).expect("uninstall");
        let after: Value = serde_json::from_slice(&fs::read(&conflist).expect("read")).expect("json");
        assert_eq!(after["name"], "renamed");
        assert_eq!(after["plugins"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn a_missing_or_broken_conflist_is_named() {
        let (_dir, install_cfg, state) = setup();
        for entry in fs::read_dir(&install_cfg.conf_dir).expect("read") {
            fs::remove_file(entry.expect("entry").path()).expect("rm");
        }
        let err = install(&install_cfg, Path::new("/s"), &state).expect_err("no conflist");
        assert!(matches!(err, InstallError::NoConflist { .. }), "{err}");
        fs::write(install_cfg.conf_dir.join("10-x.conflist"), "{\"plugins\": 3}").expect("write");
        let err = install(&install_cfg, Path::new("/s"), &state).expect_err("bad conflist");
        assert!(err.to_string().contains("10-x.conflist: no \"plugins\" list"), "{err}");
    }
}
