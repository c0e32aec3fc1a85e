//! The local mesh's source of truth: a directory of ordinary Kubernetes YAML, as `kubectl apply
//! -f dir` would read it. [`document`] splits files into documents with file and line;
//! [`directory`] rescans the directory and reports what changed. What an object means is the
//! caller's business (the operator's index, the CNI agent's enrollment).

pub mod directory;
pub mod document;

pub use directory::{Change, Decode, Directory, ObjectKey, Scan};
pub use document::{Document, DocumentError};
