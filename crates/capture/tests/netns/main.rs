//! Capture rules in real network namespaces, as root: installing, replacing and removing them
//! with each backend, the traffic they redirect (and the traffic they must not), and the node's
//! probe SNAT. Every test builds its own namespaces and fails, never skips, without root.

mod harness;
mod probes;
mod rules;
mod traffic;
