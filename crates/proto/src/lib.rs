//! Generated protobuf and gRPC types for the wire protocols Ambit shares with Istio ambient.
