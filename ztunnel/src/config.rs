//! ztunnel's typed configuration, parsed once from flags and `AMBIT_ZTUNNEL_*` environment
//! variables. Nothing else in the crate reads the environment; tests build [`Config`] directly.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// Command-line flags (each also settable as `AMBIT_ZTUNNEL_<FLAG>`).
#[derive(Debug, Parser)]
#[command(
    name = "ztunnel",
    version,
    about = "Ambit's per-node L4 proxy: HBONE mTLS tunnels between nodes"
)]
pub struct Args {
    /// Development mode: a local workload/service/policy YAML file, watched for changes, instead
    /// of the operator's xDS.
    #[arg(
        long,
        env = "AMBIT_ZTUNNEL_CONFIG",
        conflicts_with = "xds_address",
        required_unless_present = "xds_address"
    )]
    pub config: Option<PathBuf>,
    /// The operator's xDS endpoint, e.g. `https://ambit-operator.ambit-system.svc:15012`.
    #[arg(long, env = "AMBIT_ZTUNNEL_XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// The operator's CA endpoint; defaults to the xDS address.
    #[arg(long, env = "AMBIT_ZTUNNEL_CA_ADDRESS", conflicts_with_all = ["ca_cert", "ca_key"])]
    pub ca_address: Option<String>,
    /// File holding the bearer token ztunnel presents to the operator (a service-account token
    /// in Kubernetes, a bootstrap token locally); read again on every request, as tokens rotate.
    #[arg(long, env = "AMBIT_ZTUNNEL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM root of the mesh: verifies the operator's certificate and, with a remote CA, peers.
    #[arg(long, env = "AMBIT_ZTUNNEL_ROOT_CERT")]
    pub root_cert: Option<PathBuf>,
    /// The DNS name the operator's certificate must carry.
    #[arg(
        long,
        env = "AMBIT_ZTUNNEL_OPERATOR_SERVER_NAME",
        default_value = "ambit-operator.ambit-system.svc"
    )]
    pub operator_server_name: String,
    /// Name of the node this ztunnel serves; it captures traffic for workloads on this node.
    #[arg(long, env = "AMBIT_ZTUNNEL_NODE")]
    pub node: String,
    /// Development mode: PEM certificate of a local CA that signs workload certificates (root or
    /// intermediate), instead of the operator's CA.
    #[arg(long, env = "AMBIT_ZTUNNEL_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// PEM private key of that CA.
    #[arg(long, env = "AMBIT_ZTUNNEL_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Extra PEM roots to trust besides the CA (e.g. during a root rotation).
    #[arg(long, env = "AMBIT_ZTUNNEL_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// Lifetime of issued workload certificates; they are renewed at half-life.
    #[arg(long, env = "AMBIT_ZTUNNEL_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// Admin endpoint (`/config_dump`); keep it on localhost.
    #[arg(long, env = "AMBIT_ZTUNNEL_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics endpoint (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "AMBIT_ZTUNNEL_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "AMBIT_ZTUNNEL_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// How long SIGTERM waits for open connections before closing them.
    #[arg(long, env = "AMBIT_ZTUNNEL_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How often the config file is checked for changes.
    #[arg(long, env = "AMBIT_ZTUNNEL_CONFIG_POLL", default_value = "500ms", value_parser = parse_duration)]
    pub config_poll: Duration,
    /// HBONE connections with no open stream for this long are closed.
    #[arg(long, env = "AMBIT_ZTUNNEL_POOL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub pool_idle_timeout: Duration,
    /// In-pod mode: the node agent's ZDS socket. The agent hands each enrolled pod's network
    /// namespace over it and ztunnel opens the pod's listeners there. Without it, pods are
    /// captured from the network namespace paths in the `--config` file (development mode).
    #[arg(long, env = "AMBIT_ZTUNNEL_ZDS_SOCKET")]
    pub zds_socket: Option<PathBuf>,
    /// Tokio worker threads. One avoids the cross-thread wakeups that dominate a small node's
    /// per-request cost; raise it where one core cannot carry the node's traffic.
    #[arg(long, env = "AMBIT_ZTUNNEL_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 500ms, 5s or 24h: {e}"))
}

/// Where workloads, services and policies come from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A local YAML file, polled every `poll`.
    File { path: PathBuf, poll: Duration },
    /// The operator's workload xDS.
    Xds(OperatorEndpoint),
}

/// Where workload certificates come from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// A CA key pair on disk: ztunnel signs its own workload certificates (development mode).
    LocalCa { cert: PathBuf, key: PathBuf },
    /// The operator's `CreateCertificate` service.
    Operator(OperatorEndpoint),
}

/// How to reach the operator: address, credentials and how to verify it.
#[derive(Clone, Debug)]
pub struct OperatorEndpoint {
    /// `https://host:port`, or `http://` for tests on loopback.
    pub address: String,
    pub token_file: PathBuf,
    /// The mesh root that signed the operator's certificate.
    pub root_cert: PathBuf,
    pub server_name: String,
}

/// The configuration the app runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: ConfigSource,
    pub certs: CertSource,
    pub node: String,
    pub trust_bundle: Option<PathBuf>,
    pub cert_ttl: Duration,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub drain_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// `--zds-socket`: pods come from the node agent (in-pod mode), not from the config file.
    pub zds_socket: Option<PathBuf>,
    pub worker_threads: usize,
}

/// A combination of flags that does not describe a way to run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let operator = |address: String| -> Result<OperatorEndpoint, ConfigError> {
            let missing =
                |flag: &str| ConfigError(format!("--{flag} is required to talk to the operator at {address}"));
            Ok(OperatorEndpoint {
                token_file: a.token_file.clone().ok_or_else(|| missing("token-file"))?,
                root_cert: a.root_cert.clone().ok_or_else(|| missing("root-cert"))?,
                server_name: a.operator_server_name.clone(),
                address,
            })
        };
        let source = match (&a.config, &a.xds_address) {
            (Some(path), None) => ConfigSource::File {
                path: path.clone(),
                poll: a.config_poll,
            },
            (None, Some(address)) => ConfigSource::Xds(operator(address.clone())?),
            _ => {
                return Err(ConfigError(
                    "give either --config (a local file) or --xds-address".into(),
                ));
            }
        };
        let certs = match (&a.ca_cert, &a.ca_key, a.ca_address.as_ref().or(a.xds_address.as_ref())) {
            (Some(cert), Some(key), _) => CertSource::LocalCa {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None, Some(address)) => CertSource::Operator(operator(address.clone())?),
            _ => {
                return Err(ConfigError(
                    "give either --ca-cert and --ca-key (a local CA) or the operator's address (--ca-address or --xds-address)".into(),
                ));
            }
        };
        Ok(Config {
            source,
            certs,
            node: a.node,
            trust_bundle: a.trust_bundle,
            cert_ttl: a.cert_ttl,
            admin_addr: a.admin_addr,
            metrics_addr: a.metrics_addr,
            readiness_addr: a.readiness_addr,
            drain_timeout: a.drain_timeout,
            pool_idle_timeout: a.pool_idle_timeout,
            zds_socket: a.zds_socket,
            worker_threads: a.worker_threads.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("ztunnel").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        Config::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn local_mode_needs_the_file_and_the_ca() {
        let config = parse(&[
            "--node",
            "n1",
            "--config",
            "c.yaml",
            "--ca-cert",
            "ca.pem",
            "--ca-key",
            "k.pem",
        ])
        .expect("local mode");
        assert!(matches!(config.source, ConfigSource::File { .. }));
        assert!(matches!(config.certs, CertSource::LocalCa { .. }));
        let missing_key = parse(&["--node", "n1", "--config", "c.yaml", "--ca-cert", "ca.pem"]).expect_err("no key");
        assert!(missing_key.contains("--ca-key"), "{missing_key}");
    }

    #[test]
    fn operator_mode_needs_a_token_and_the_root() {
        let config = parse(&[
            "--node",
            "n1",
            "--xds-address",
            "https://10.0.0.1:15012",
            "--token-file",
            "t",
            "--root-cert",
            "root.pem",
        ])
        .expect("operator mode");
        match (&config.source, &config.certs) {
            (ConfigSource::Xds(xds), CertSource::Operator(ca)) => {
                assert_eq!(xds.address, "https://10.0.0.1:15012");
                assert_eq!(ca.address, xds.address);
                assert_eq!(ca.server_name, "ambit-operator.ambit-system.svc");
            }
            other => panic!("unexpected {other:?}"),
        }
        let no_token =
            parse(&["--node", "n1", "--xds-address", "https://o:15012", "--root-cert", "r"]).expect_err("token");
        assert_eq!(
            no_token,
            "--token-file is required to talk to the operator at https://o:15012"
        );
    }

    #[test]
    fn the_two_config_sources_exclude_each_other() {
        let both = parse(&[
            "--node",
            "n",
            "--config",
            "c",
            "--xds-address",
            "https://o",
            "--token-file",
            "t",
            "--root-cert",
            "r",
        ])
        .expect_err("both");
        assert!(both.contains("cannot be used with"), "{both}");
        let neither = parse(&["--node", "n"]).expect_err("neither");
        assert!(neither.contains("--config"), "{neither}");
    }

    #[test]
    fn xds_with_a_local_ca_is_allowed() {
        let config = parse(&[
            "--node",
            "n",
            "--xds-address",
            "http://127.0.0.1:1",
            "--token-file",
            "t",
            "--root-cert",
            "r",
            "--ca-cert",
            "c",
            "--ca-key",
            "k",
        ])
        .expect("mixed");
        assert!(matches!(config.certs, CertSource::LocalCa { .. }));
    }
}
