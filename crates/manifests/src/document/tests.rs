use std::path::Path;

use super::*;

fn parse(text: &str) -> (Vec<Document>, Vec<DocumentError>) {
    parse_file(Path::new("dir/app.yaml"), text)
}

#[test]
fn documents_keep_their_starting_line() {
    let (docs, errors) = parse(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n# comment\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: a\n",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(docs.len(), 2);
    assert_eq!(
        (docs[0].line, docs[0].kind.as_str(), docs[0].name.as_str()),
        (1, "Namespace", "a")
    );
    assert_eq!(docs[0].namespace, "");
    assert_eq!(
        (docs[1].line, docs[1].kind.as_str(), docs[1].namespace.as_str()),
        (6, "Pod", "a")
    );
}

#[test]
fn a_bad_document_is_reported_and_the_others_kept() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n";
    let (docs, errors) = parse(text);
    assert_eq!(docs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 6);
    let message = errors[0].to_string();
    assert!(
        message.starts_with("dir/app.yaml: line 6: invalid YAML at line 10"),
        "{message}"
    );
}

#[test]
fn missing_identity_fields_are_named() {
    let (_, errors) =
        parse("apiVersion: v1\nmetadata:\n  name: a\n---\nkind: Pod\napiVersion: v1\nmetadata: {}\n---\n- 1\n");
    let reasons: Vec<_> = errors.iter().map(|e| (e.line, e.reason.as_str())).collect();
    assert_eq!(
        reasons,
        [
            (1, "kind is required"),
            (5, "metadata.name is required"),
            (9, "a manifest must be a mapping, found a list")
        ]
    );
}

#[test]
fn lists_are_flattened() {
    let (docs, errors) = parse(
        r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}]}"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(docs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["x", "y"]);
}

#[test]
fn empty_documents_and_separators_with_comments_are_ignored() {
    let (docs, errors) =
        parse("---\n# only a comment\n--- # next\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\n");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].line, 4);
}

#[test]
fn only_manifest_files_are_listed() {
    let dir = std::env::temp_dir().join(format!("ambit-manifest-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    for name in ["b.yaml", "a.yml", "c.json", ".hidden.yaml", "notes.txt", "sub/d.yaml"] {
        std::fs::write(dir.join(name), "").expect("write");
    }
    let names: Vec<String> = files_in(&dir)
        .expect("list")
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert_eq!(names, ["a.yml", "b.yaml", "c.json"]);
}
