//! Workload xDS over delta ADS: the server the operator runs and the client ztunnel runs.
