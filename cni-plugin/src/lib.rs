//! `ambit-cni`, the chained CNI plugin (CNI spec 1.0/1.1), and the protocol it speaks with the
//! node agent. The plugin decides nothing itself: it passes `prevResult` through and asks the
//! agent (`ambit-cni-agent`), which fails the ADD of an enrolled pod unless ztunnel took it.
//! Blocking std I/O only: the runtime execs the plugin once per command.

pub mod agent;
pub mod args;
pub mod environment;
pub mod error;
pub mod log;
pub mod netconf;
pub mod plugin;
pub mod protocol;
