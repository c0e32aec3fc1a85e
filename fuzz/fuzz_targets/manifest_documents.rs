//! Local mode reads a directory of Kubernetes YAML that anyone with write access to it controls.
//! Splitting a file into documents must never panic; every document found names its object, and
//! every bad one is reported with a line of the file and a reason.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let file = Path::new("/manifests/fuzz.yaml");
    let (documents, errors) = ambit_manifests::document::parse_file(file, text);
    let lines = text.split_inclusive('\n').count().max(1);
    for document in &documents {
        assert_eq!(document.file, file);
        assert!(
            (1..=lines).contains(&document.line),
            "document at line {} of {lines}",
            document.line
        );
        assert!(
            !document.api_version.is_empty() && !document.kind.is_empty() && !document.name.is_empty(),
            "{document:?}"
        );
        assert!(document.value.is_object(), "{document:?}");
    }
    for error in &errors {
        assert_eq!(error.file, file);
        assert!(
            (1..=lines).contains(&error.line),
            "error at line {} of {lines}: {error}",
            error.line
        );
        assert!(!error.reason.is_empty(), "{error:?}");
    }
});
