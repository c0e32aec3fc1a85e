//! The Ambit operator: sources, index, CA and xDS server wired together.
