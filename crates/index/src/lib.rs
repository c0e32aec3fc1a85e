//! The cluster index: Kubernetes objects in, mesh model out. No kube client, no tonic, no I/O.
