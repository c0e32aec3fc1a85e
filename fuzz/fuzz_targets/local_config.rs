//! The local YAML config: parsing must never panic, a rejected file must say why, and an
//! accepted one must index into a `State` without panicking.
#![no_main]

use ambit_model::State;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|yaml: &str| {
    match ambit_model::config::parse(yaml) {
        Ok(config) => {
            let state = State::from_config(config);
            for workload in state.workloads() {
                for ip in &workload.addresses {
                    assert!(state.workload_by_ip(*ip).is_some(), "workload address {ip} not indexed");
                }
            }
        }
        Err(error) => assert!(!error.to_string().is_empty(), "empty message for {error:?}"),
    }
});
