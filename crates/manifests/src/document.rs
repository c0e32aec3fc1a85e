//! Reading a local directory of ordinary Kubernetes YAML: files split into documents, each
//! document checked for `apiVersion`, `kind` and `metadata.name`, `List`s flattened. A bad
//! document is reported with its file, line and reason and skipped; the rest of the file and
//! of the directory still count. What a document means is the index's business, not this module's.

use std::path::{Path, PathBuf};

/// One object read from a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub file: PathBuf,
    /// 1-based line of the document's first line in `file`.
    pub line: usize,
    pub api_version: String,
    pub kind: String,
    /// Empty for cluster-scoped objects and for namespaced ones that omit it (the caller
    /// applies `default`).
    pub namespace: String,
    pub name: String,
    pub value: serde_json::Value,
}

/// A document that could not be read, with where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: line {line}: {reason}", file.display())]
pub struct DocumentError {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

/// The manifest files of `dir`: `*.yaml`, `*.yml` and `*.json`, not hidden, not in
/// subdirectories (as `kubectl apply -f dir`), sorted by name.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_manifest = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
        if is_manifest && !name.starts_with('.') && entry.file_type()?.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Splits `text` (the contents of `file`) into documents. Returns the good documents and one
/// error per bad one.
pub fn parse_file(file: &Path, text: &str) -> (Vec<Document>, Vec<DocumentError>) {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (line, source) in split_documents(text) {
        let error = |reason: String| DocumentError {
            file: file.to_path_buf(),
            line,
            reason,
        };
        let value: serde_json::Value = match serde_norway::from_str::<serde_norway::Value>(source) {
            Ok(serde_norway::Value::Null) => continue,
            Ok(yaml) => match serde_json::to_value(yaml) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(error(format!("not representable as JSON: {e}")));
                    continue;
                }
            },
            Err(e) => {
                errors.push(error(yaml_reason(&e, line)));
                continue;
            }
        };
        flatten(value, &mut |value| match document(file, line, value) {
            Ok(d) => documents.push(d),
            Err(reason) => errors.push(error(reason)),
        });
    }
    (documents, errors)
}

/// A YAML error message with the file's line number rather than the document's.
fn yaml_reason(error: &serde_norway::Error, document_line: usize) -> String {
    match error.location() {
        Some(at) => {
            let message = error.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            format!(
                "invalid YAML at line {} column {}: {message}",
                document_line + at.line() - 1,
                at.column()
            )
        }
        None => format!("invalid YAML: {error}"),
    }
}

/// Calls `each` with every object of `value`: the items of a `List`, or `value` itself.
fn flatten(value: serde_json::Value, each: &mut dyn FnMut(serde_json::Value)) {
    let is_list = value
        .get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(|i| i.is_array());
    if !is_list {
        return each(value);
    }
    if let Some(serde_json::Value::Array(items)) = value.get("items").cloned() {
        for item in items {
            each(item);
        }
    }
}

fn document(file: &Path, line: usize, value: serde_json::Value) -> Result<Document, String> {
    if !value.is_object() {
        return Err(format!("a manifest must be a mapping, found {}", kind_of(&value)));
    }
    let text = |pointer: &str, field: &str, required: bool| -> Result<String, String> {
        match value.pointer(pointer) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            None | Some(serde_json::Value::Null) if !required => Ok(String::new()),
            None | Some(serde_json::Value::Null) => Err(format!("{field} is required")),
            Some(other) => Err(format!("{field}: {other} is not a non-empty string")),
        }
    };
    let api_version = text("/apiVersion", "apiVersion", true)?;
    let kind = text("/kind", "kind", true)?;
    let name = text("/metadata/name", "metadata.name", true)?;
    let namespace = text("/metadata/namespace", "metadata.namespace", false)?;
    Ok(Document {
        file: file.to_path_buf(),
        line,
        api_version,
        kind,
        namespace,
        name,
        value,
    })
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// The YAML documents of `text` with the 1-based line each starts on. Documents are separated by
/// lines that start with `---`; a leading separator and empty documents are dropped.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let is_separator =
            line.starts_with("---") && line[3..].chars().next().is_none_or(|c| c.is_whitespace() || c == '#');
        if is_separator {
            documents.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start_byte..]));
    documents.retain(|(_, doc)| {
        doc.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    documents
}

#[cfg(test)]
mod tests;
