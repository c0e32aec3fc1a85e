//! The real `kubectl` binary against the emulator: client-side and server-side apply of CRDs and
//! custom resources, namespaces and labels, `get` with server-side tables, delete. Assertions
//! are on kubectl's exit status and output and on what the API then holds. Each test has its
//! own emulator, kubeconfig, HOME and discovery cache. Fails loudly if kubectl is missing.

use std::path::PathBuf;
use std::process::{Command, Output};

use ambit_kube_emulator::{Emulator, EmulatorConfig};
use serde_json::Value;

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.ambit.dev
spec:
  group: test.ambit.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Mode, type: string, jsonPath: .spec.mode}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [mode]
            properties:
              mode: {type: string, enum: [ambient, sidecar]}
              replicas: {type: integer, minimum: 1}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.test.ambit.dev
spec:
  group: test.ambit.dev
  scope: Cluster
  names: {plural: gadgets, kind: Gadget}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// An emulator plus a scratch directory with a kubeconfig pointing at it.
struct Cluster {
    _emulator: Emulator,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let emulator = Emulator::start(EmulatorConfig::default()).expect("emulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        emulator
            .write_kubeconfig(dir.path().join("kubeconfig"))
            .expect("kubeconfig written");
        Cluster {
            _emulator: emulator,
            dir,
        }
    }

    fn write(&self, relative: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, content).expect("write manifest");
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        let kubeconfig = self.dir.path().join("kubeconfig");
        let cache = self.dir.path().join("cache");
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl must be installed and on PATH for these tests")
    }

    /// Runs kubectl, asserts success and returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Runs kubectl, asserts failure and returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(!output.status.success(), "kubectl {args:?} unexpectedly succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).expect("kubectl printed JSON")
    }
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn apply_crds_then_custom_resources_client_and_server_side() {
    let cluster = Cluster::start();
    cluster.write("crds/widgets.yaml", WIDGET_CRD);
    let crds = cluster.write("crds/gadgets.yaml", GADGET_CRD);
    let crd_dir = crds.parent().expect("dir").to_owned();
    let crd_dir = path_str(&crd_dir);

    let created = cluster.ok(&["apply", "-f", crd_dir]);
    assert!(created.contains("widgets.test.ambit.dev created") && created.contains("gadgets.test.ambit.dev created"));
    let unchanged = cluster.ok(&["apply", "-f", crd_dir]);
    assert!(unchanged.contains("widgets.test.ambit.dev unchanged"), "{unchanged}");
    cluster.write(
        "crds/widgets.yaml",
        &WIDGET_CRD.replace("shortNames: [wd]", "shortNames: [wd, wdg]"),
    );
    let configured = cluster.ok(&["apply", "-f", crd_dir]);
    assert!(configured.contains("widgets.test.ambit.dev configured"), "{configured}");
    let crd = cluster.json(&["get", "crd", "widgets.test.ambit.dev"]);
    assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["wd", "wdg"]));

    cluster.ok(&["create", "namespace", "mesh"]);
    let widget = "apiVersion: test.ambit.dev/v1\nkind: Widget\nmetadata: {name: w1, namespace: mesh}\nspec: {mode: ambient, replicas: 2}\n";
    let manifest = cluster.write("w1.yaml", widget);
    let manifest = path_str(&manifest);
    assert!(
        cluster
            .ok(&["apply", "-f", manifest])
            .contains("widget.test.ambit.dev/w1 created")
    );
    let table = cluster.ok(&["get", "widgets", "-A"]);
    let header: Vec<&str> = table.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "NAME", "MODE", "AGE"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(3).eq(["mesh", "w1", "ambient"])),
        "{table}"
    );
    assert!(
        cluster.ok(&["get", "wdg", "-n", "mesh"]).contains("w1"),
        "new short name is discoverable"
    );

    cluster.write("w1.yaml", &widget.replace("replicas: 2", "replicas: 3"));
    assert!(cluster.ok(&["apply", "-f", manifest]).contains("w1 configured"));
    let stored = cluster.json(&["get", "widget", "w1", "-n", "mesh"]);
    assert_eq!(
        (
            stored["spec"]["replicas"].as_i64(),
            stored["metadata"]["generation"].as_i64()
        ),
        (Some(3), Some(2))
    );

    cluster.write("w1.yaml", &widget.replace("mode: ambient", "mode: sidecar"));
    assert!(
        cluster
            .ok(&["apply", "--server-side", "-f", manifest])
            .contains("w1 serverside-applied")
    );
    assert_eq!(
        cluster.json(&["get", "widget", "w1", "-n", "mesh"])["spec"]["mode"],
        "sidecar"
    );

    cluster.write(
        "bad.yaml",
        &widget.replace("mode: ambient", "mode: bogus").replace("w1", "w2"),
    );
    let rejected = cluster.fails(&["apply", "-f", path_str(&cluster.dir.path().join("bad.yaml"))]);
    assert!(rejected.contains("Unsupported value"), "{rejected}");

    let gadget = cluster.write(
        "g.yaml",
        "apiVersion: test.ambit.dev/v1alpha1\nkind: Gadget\nmetadata: {name: g1}\nspec: {anything: [1, 2]}\n",
    );
    cluster.ok(&["apply", "--server-side", "-f", path_str(&gadget)]);
    assert_eq!(
        cluster.json(&["get", "gadget", "g1"])["spec"]["anything"],
        serde_json::json!([1, 2])
    );

    assert!(cluster.ok(&["delete", "-f", manifest]).contains("\"w1\" deleted"));
    assert!(
        cluster
            .fails(&["get", "widget", "w1", "-n", "mesh"])
            .contains("NotFound")
    );
    cluster.ok(&["delete", "crd", "gadgets.test.ambit.dev"]);
    let gone = cluster.fails(&["get", "gadgets"]);
    assert!(
        gone.contains("doesn't have a resource type") || gone.contains("NotFound"),
        "{gone}"
    );
}

#[test]
fn namespaces_and_labels() {
    let cluster = Cluster::start();
    assert!(
        cluster
            .ok(&["create", "namespace", "foo"])
            .contains("namespace/foo created")
    );
    assert!(cluster.fails(&["create", "namespace", "foo"]).contains("AlreadyExists"));
    cluster.ok(&["label", "namespace", "foo", "ambit.dev/dataplane-mode=ambient"]);
    let labels = |cluster: &Cluster| cluster.json(&["get", "namespace", "foo"])["metadata"]["labels"].clone();
    assert_eq!(labels(&cluster)["ambit.dev/dataplane-mode"], "ambient");

    let refused = cluster.fails(&["label", "namespace", "foo", "ambit.dev/dataplane-mode=none"]);
    assert!(refused.contains("--overwrite is false"), "{refused}");
    cluster.ok(&[
        "label",
        "namespace",
        "foo",
        "ambit.dev/dataplane-mode=none",
        "--overwrite",
    ]);
    assert_eq!(labels(&cluster)["ambit.dev/dataplane-mode"], "none");

    let shown = cluster.ok(&["get", "ns", "--show-labels"]);
    let foo = shown.lines().find(|l| l.starts_with("foo ")).expect("foo listed");
    assert!(
        foo.contains("Active") && foo.contains("ambit.dev/dataplane-mode=none"),
        "{shown}"
    );
    assert!(shown.lines().next().expect("header").contains("LABELS"));

    cluster.ok(&["label", "namespace", "foo", "ambit.dev/dataplane-mode-"]);
    assert!(labels(&cluster).get("ambit.dev/dataplane-mode").is_none());
    assert_eq!(labels(&cluster)["kubernetes.io/metadata.name"], "foo");

    cluster.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "foo",
        "--from-literal=mode=ambient",
    ]);
    assert_eq!(
        cluster.json(&["get", "configmap", "settings", "-n", "foo"])["data"]["mode"],
        "ambient"
    );
    assert!(
        cluster
            .ok(&["delete", "namespace", "foo"])
            .contains("namespace \"foo\" deleted")
    );
    assert!(cluster.fails(&["get", "namespace", "foo"]).contains("NotFound"));
    assert!(
        cluster
            .fails(&["get", "configmap", "settings", "-n", "foo"])
            .contains("NotFound")
    );
}

#[test]
fn apply_builtin_objects_client_and_server_side() {
    let cluster = Cluster::start();
    let manifest = cluster.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: default, labels: {a: '1'}}\ndata: {x: '1', y: '2'}\n",
    );
    let manifest = path_str(&manifest);
    assert!(cluster.ok(&["apply", "-f", manifest]).contains("configmap/cfg created"));
    cluster.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: default}\ndata: {x: '9'}\n",
    );
    assert!(cluster.ok(&["apply", "-f", manifest]).contains("configured"));
    let stored = cluster.json(&["get", "configmap", "cfg"]);
    assert_eq!(
        stored["data"],
        serde_json::json!({"x": "9"}),
        "client-side apply prunes removed keys"
    );
    assert!(stored["metadata"]["labels"].get("a").is_none());

    cluster.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: default}\ndata: {z: '3'}\n",
    );
    assert!(
        cluster
            .ok(&["apply", "--server-side", "--force-conflicts", "-f", manifest])
            .contains("serverside-applied")
    );
    assert_eq!(cluster.json(&["get", "configmap", "cfg"])["data"]["z"], "3");
    let names = cluster.ok(&["get", "configmaps", "-o", "name"]);
    assert_eq!(names.trim(), "configmap/cfg");
}

#[test]
fn apply_the_ambit_crds() {
    let cluster = Cluster::start();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the workspace crds/ directory exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    assert!(
        !manifests.is_empty(),
        "crds/*.yaml are generated by crdgen and checked in"
    );
    let dir = path_str(&dir);
    let created = cluster.ok(&["apply", "-f", dir]);
    assert_eq!(created.matches(" created").count(), manifests.len(), "{created}");
    let again = cluster.ok(&["apply", "-f", dir]);
    assert_eq!(again.matches(" unchanged").count(), manifests.len(), "{again}");
    assert!(
        cluster
            .ok(&["apply", "--server-side", "-f", dir])
            .contains("serverside-applied")
    );
    for crd in cluster.json(&["get", "crds"])["items"].as_array().expect("items") {
        let plural = crd["spec"]["names"]["plural"].as_str().expect("plural");
        let group = crd["spec"]["group"].as_str().expect("group");
        cluster.ok(&["get", &format!("{plural}.{group}"), "-A"]);
    }
}
