//! Generated protobuf and gRPC types for the wire protocols Ambit shares with Istio ambient.
//!
//! The `.proto` files under `proto/` are our own text with Istio's (and Envoy's) package names,
//! message names and field numbers, so each side can talk to Istio's. This crate owns only the
//! generated types and the type URLs; conversion and the xDS logic live in `ambit-xds`.
//!
//! Modules nest like the protobuf packages because the generated code names other packages by
//! relative `super::` paths.

/// Includes the code generated for one protobuf package; generated code is not held to our lints.
macro_rules! generated {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}

/// Type URL of `istio.workload.Address`, the workload and service resources of workload xDS.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// Type URL of `istio.security.Authorization`, the L4 policy resources of workload xDS.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Istio's APIs.
pub mod istio {
    /// `istio.v1.*`
    pub mod v1 {
        /// `istio.v1.auth`: the CA service ztunnel asks for workload certificates.
        #[allow(clippy::all, clippy::pedantic, missing_docs)]
        pub mod auth {
            generated!("istio.v1.auth");
        }
    }

    /// `istio.workload`: workloads and services (the `Address` resource).
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod workload {
        generated!("istio.workload");

        /// `istio.workload.zds`: node agent to ztunnel pod hand-over.
        #[allow(clippy::all, clippy::pedantic, missing_docs)]
        pub mod zds {
            generated!("istio.workload.zds");
        }
    }

    /// `istio.security`: L4 authorization (the `Authorization` resource).
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod security {
        generated!("istio.security");
    }
}

/// Envoy's xDS transport.
pub mod envoy {
    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core.*`
        pub mod core {
            /// `envoy.config.core.v3`: the client's `Node`.
            #[allow(clippy::all, clippy::pedantic, missing_docs)]
            pub mod v3 {
                generated!("envoy.config.core.v3");
            }
        }
    }

    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.discovery.*`
        pub mod discovery {
            /// `envoy.service.discovery.v3`: delta ADS messages and service.
            #[allow(clippy::all, clippy::pedantic, missing_docs)]
            pub mod v3 {
                generated!("envoy.service.discovery.v3");
            }
        }
    }
}

/// Google's common API types.
pub mod google {
    /// `google.rpc`: `Status`, the NACK error detail.
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod rpc {
        generated!("google.rpc");
    }
}

#[cfg(test)]
mod tests {
    use prost::{Message, Name};

    use super::istio::security::Authorization;
    use super::istio::workload::Address;

    #[test]
    fn type_urls_match_the_generated_names() {
        assert_eq!(Address::type_url(), super::ADDRESS_TYPE_URL);
        assert_eq!(Authorization::type_url(), super::AUTHORIZATION_TYPE_URL);
        assert!(Address::default().encode_to_vec().is_empty());
    }
}
