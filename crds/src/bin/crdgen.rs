//! Writes the CRD YAML generated from the Rust types.
fn main() {}
