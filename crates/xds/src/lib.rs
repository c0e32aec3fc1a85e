//! Workload xDS over delta ADS: the server the operator runs, the client ztunnel runs, and the
//! conversion between the model and Istio's `Address`/`Authorization` resources.
//!
//! Owns the xDS protocol logic (subscriptions, nonces, ACK/NACK, debounce, resync); not where
//! resources come from (the operator's watchers) nor what the data path does with the
//! published [`ambit_model::State`] (ztunnel).

pub mod client;
pub mod convert;
pub mod server;
