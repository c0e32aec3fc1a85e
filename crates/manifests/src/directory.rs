//! The local source: a directory of Kubernetes YAML, rescanned on an interval. Each scan reads
//! the files whose contents changed and turns the difference into upserts and removals.
//!
//! A bad document is reported (file, line, reason) and skipped; the rest of its file and of the
//! directory still apply. A file with errors never removes objects: an object whose document
//! broke keeps its last good version until the file is fixed. Two files defining the same object
//! is an error on the later file (in name order); the first definition wins.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use crate::document::{self as manifest, Document, DocumentError};

/// Identifies an object across scans: API group (without version), kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    fn of(document: &Document) -> Self {
        let group = document.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        ObjectKey {
            group: group.to_owned(),
            kind: document.kind.clone(),
            namespace: document.namespace.clone(),
            name: document.name.clone(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        if self.namespace.is_empty() {
            write!(f, "{kind} {}", self.name)
        } else {
            write!(f, "{kind} {}/{}", self.namespace, self.name)
        }
    }
}

/// What one scan found changed.
#[derive(Debug)]
pub enum Change<T> {
    Upsert(ObjectKey, T),
    Remove(ObjectKey),
}

/// Turns a document into the caller's object: `Ok(None)` for kinds the caller ignores (a
/// Deployment in an application's manifests), `Err(reason)` for a document of a known kind that
/// does not decode.
pub type Decode<T> = dyn Fn(&Document) -> Result<Option<T>, String> + Send + Sync;

/// An object with the document it came from, which is what "changed" is judged on.
type Entry<T> = (serde_json::Value, T);

struct FileState<T> {
    hash: u64,
    objects: BTreeMap<ObjectKey, Entry<T>>,
}

/// The directory as last scanned.
pub struct Directory<T> {
    dir: PathBuf,
    decode: Box<Decode<T>>,
    files: BTreeMap<PathBuf, FileState<T>>,
}

/// The result of a scan.
#[derive(Debug)]
pub struct Scan<T> {
    pub changes: Vec<Change<T>>,
    /// Documents that were skipped, new this scan (an unchanged bad file is not reported again).
    pub errors: Vec<DocumentError>,
}

impl<T: Clone> Directory<T> {
    pub fn new(dir: PathBuf, decode: Box<Decode<T>>) -> Self {
        Directory {
            dir,
            decode,
            files: BTreeMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Rescans the directory. An unreadable directory is an error and changes nothing.
    pub fn scan(&mut self) -> std::io::Result<Scan<T>> {
        let paths = manifest::files_in(&self.dir)?;
        let before = self.current();
        let mut errors = Vec::new();
        let present: BTreeSet<&PathBuf> = paths.iter().collect();
        self.files.retain(|path, _| present.contains(path));
        for path in &paths {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    // Keep what the file held; it may be mid-write or briefly unreadable.
                    errors.push(DocumentError {
                        file: path.clone(),
                        line: 0,
                        reason: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            let mut hasher = DefaultHasher::new();
            text.hash(&mut hasher);
            let hash = hasher.finish();
            if self.files.get(path).is_some_and(|f| f.hash == hash) {
                continue;
            }
            let (documents, mut bad) = manifest::parse_file(path, &text);
            let mut objects = BTreeMap::new();
            for document in documents {
                let key = ObjectKey::of(&document);
                match (self.decode)(&document) {
                    Ok(Some(object)) => {
                        if objects.insert(key.clone(), (document.value.clone(), object)).is_some() {
                            bad.push(DocumentError {
                                file: path.clone(),
                                line: document.line,
                                reason: format!("{key} is defined twice in this file; the later one wins"),
                            });
                        }
                    }
                    Ok(None) => {}
                    Err(reason) => bad.push(DocumentError {
                        file: path.clone(),
                        line: document.line,
                        reason: format!("{key}: {reason}"),
                    }),
                }
            }
            if !bad.is_empty()
                && let Some(old) = self.files.get(path)
            {
                // Nothing is lost to a broken edit: keep the previous objects the file no longer
                // yields.
                for (key, object) in &old.objects {
                    objects.entry(key.clone()).or_insert_with(|| object.clone());
                }
            }
            errors.extend(bad);
            self.files.insert(path.clone(), FileState { hash, objects });
        }
        let (after, duplicates) = self.current_checked();
        errors.extend(duplicates);
        let mut changes = Vec::new();
        for (key, (value, object)) in &after {
            if before.get(key).map(|(v, _)| v) != Some(value) {
                changes.push(Change::Upsert(key.clone(), object.clone()));
            }
        }
        for key in before.keys() {
            if !after.contains_key(key) {
                changes.push(Change::Remove(key.clone()));
            }
        }
        Ok(Scan { changes, errors })
    }

    fn current(&self) -> BTreeMap<ObjectKey, Entry<T>> {
        self.current_checked().0
    }

    /// Every object, the first file (in name order) winning a key defined by several files.
    fn current_checked(&self) -> (BTreeMap<ObjectKey, Entry<T>>, Vec<DocumentError>) {
        let mut merged: BTreeMap<ObjectKey, (Entry<T>, &PathBuf)> = BTreeMap::new();
        let mut duplicates = Vec::new();
        for (path, file) in &self.files {
            for (key, object) in &file.objects {
                match merged.get(key) {
                    Some((_, first)) => duplicates.push(DocumentError {
                        file: path.clone(),
                        line: 0,
                        reason: format!("{key} is already defined in {}; ignored here", first.display()),
                    }),
                    None => {
                        merged.insert(key.clone(), (object.clone(), path));
                    }
                }
            }
        }
        (merged.into_iter().map(|(k, (o, _))| (k, o)).collect(), duplicates)
    }
}

#[cfg(test)]
mod tests;
