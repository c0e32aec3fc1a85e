use std::path::PathBuf;

use super::*;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ambit-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("mkdir");
        Scratch(path)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Decodes Namespaces and ConfigMaps (as their `data.value`), ignores other kinds, and refuses a
/// ConfigMap without data.
fn directory(scratch: &Scratch) -> Directory<String> {
    Directory::new(
        scratch.0.clone(),
        Box::new(|d: &Document| match d.kind.as_str() {
            "Namespace" => Ok(Some(String::new())),
            "ConfigMap" => d
                .value
                .pointer("/data/value")
                .and_then(|v| v.as_str())
                .map(|v| Some(v.to_owned()))
                .ok_or_else(|| "data.value is required".to_owned()),
            _ => Ok(None),
        }),
    )
}

fn names<T>(changes: &[Change<T>]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Upsert(k, _) => format!("+{}", k.name),
            Change::Remove(k) => format!("-{}", k.name),
        })
        .collect()
}

const NS_A: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n";

fn config_map(name: &str, value: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: a\ndata:\n  value: \"{value}\"\n"
    )
}

#[test]
fn changes_are_reported_once() {
    let scratch = Scratch::new("once");
    scratch.write("a.yaml", &format!("{NS_A}{}", config_map("one", "1")));
    scratch.write(
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
    );
    let mut dir = directory(&scratch);
    let first = dir.scan().expect("scan");
    assert_eq!(names(&first.changes), ["+one", "+a"]);
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert!(dir.scan().expect("rescan").changes.is_empty());

    scratch.write("a.yaml", &format!("{NS_A}{}", config_map("one", "2")));
    let edit = dir.scan().expect("edit");
    assert_eq!(names(&edit.changes), ["+one"]);
    assert!(matches!(&edit.changes[0], Change::Upsert(_, v) if v == "2"));

    scratch.write("a.yaml", NS_A);
    assert_eq!(names(&dir.scan().expect("removal").changes), ["-one"]);
    std::fs::remove_file(scratch.0.join("a.yaml")).expect("rm");
    assert_eq!(names(&dir.scan().expect("file gone").changes), ["-a"]);
}

#[test]
fn a_broken_edit_keeps_the_last_good_objects_and_names_the_problem() {
    let scratch = Scratch::new("broken");
    scratch.write(
        "a.yaml",
        &format!("{NS_A}{}{}", config_map("one", "1"), config_map("two", "2")),
    );
    let mut dir = directory(&scratch);
    dir.scan().expect("scan");

    // `two` loses its data and `one` changes: the good edit applies, `two` stays as it was.
    let broken = format!(
        "{NS_A}{}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: two\n  namespace: a\n",
        config_map("one", "9")
    );
    scratch.write("a.yaml", &broken);
    let scan = dir.scan().expect("scan");
    assert_eq!(names(&scan.changes), ["+one"]);
    let errors: Vec<String> = scan.errors.iter().map(ToString::to_string).collect();
    let file = scratch.0.join("a.yaml");
    assert_eq!(
        errors,
        [format!(
            "{}: line 14: ConfigMap a/two: data.value is required",
            file.display()
        )]
    );

    // Fixed: the removal of `two` now applies.
    scratch.write("a.yaml", &format!("{NS_A}{}", config_map("one", "9")));
    assert_eq!(names(&dir.scan().expect("fixed").changes), ["-two"]);
}

#[test]
fn the_first_file_wins_a_duplicate() {
    let scratch = Scratch::new("dup");
    scratch.write("a.yaml", &config_map("one", "from-a"));
    scratch.write("b.yaml", &config_map("one", "from-b"));
    let mut dir = directory(&scratch);
    let scan = dir.scan().expect("scan");
    assert!(matches!(&scan.changes[..], [Change::Upsert(_, v)] if v == "from-a"));
    assert_eq!(scan.errors.len(), 1);
    assert!(
        scan.errors[0].reason.contains("already defined in"),
        "{}",
        scan.errors[0]
    );
}
