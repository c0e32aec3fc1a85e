//! A test-only in-memory Kubernetes API server.
