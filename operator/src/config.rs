//! The operator's typed configuration, parsed once from flags and `AMBIT_OPERATOR_*` environment
//! variables. Nothing else in the crate reads the environment; tests build [`Config`] directly.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// Command-line flags (each also settable as `AMBIT_OPERATOR_<FLAG>`).
#[derive(Debug, Parser)]
#[command(
    name = "ambit-operator",
    version,
    about = "Ambit's control plane: cluster index, mesh CA and workload xDS server"
)]
pub struct Args {
    /// Local mode: a directory of Kubernetes YAML (Namespaces, Pods, Services, Ambit CRDs…),
    /// watched for changes, instead of a Kubernetes API server.
    #[arg(long, env = "AMBIT_OPERATOR_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Kubernetes mode: a kubeconfig file to use instead of the in-cluster config or
    /// `KUBECONFIG`.
    #[arg(long, env = "AMBIT_OPERATOR_KUBECONFIG", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// How often the manifest directory is rescanned.
    #[arg(long, env = "AMBIT_OPERATOR_MANIFEST_POLL", default_value = "500ms", value_parser = parse_duration)]
    pub manifest_poll: Duration,
    /// Local mode: where the CA key pair is generated once and kept, and `root-cert.pem` published.
    #[arg(long, env = "AMBIT_OPERATOR_STATE_DIR", default_value = "/var/lib/ambit")]
    pub state_dir: PathBuf,
    /// Local mode: the bootstrap token file that authenticates ztunnels (one `token namespace/sa
    /// node` entry per line; see the CA docs).
    #[arg(long, env = "AMBIT_OPERATOR_BOOTSTRAP_TOKENS")]
    pub bootstrap_tokens: Option<PathBuf>,
    /// A user-supplied CA certificate (root or intermediate) instead of the generated root.
    #[arg(long, env = "AMBIT_OPERATOR_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key of `--ca-cert`.
    #[arg(long, env = "AMBIT_OPERATOR_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// For an intermediate `--ca-cert`: the chain above it, up to and including the root.
    #[arg(long, env = "AMBIT_OPERATOR_CA_CHAIN", requires = "ca_cert")]
    pub ca_chain: Option<PathBuf>,
    /// gRPC (TLS): workload xDS and the CA.
    #[arg(long, env = "AMBIT_OPERATOR_GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Monitoring: `/metrics`, `/healthz`, `/readyz`, `/debug/status`.
    #[arg(long, env = "AMBIT_OPERATOR_MONITORING_ADDR", default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,
    /// DNS names in the operator's serving certificate; clients verify one of them.
    #[arg(
        long,
        env = "AMBIT_OPERATOR_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "ambit-operator.ambit-system.svc,ambit-operator.ambit-system.svc.cluster.local"
    )]
    pub server_names: Vec<String>,
    #[arg(long, env = "AMBIT_OPERATOR_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The cluster DNS suffix of service hostnames (`<svc>.<ns>.svc.<suffix>`).
    #[arg(long, env = "AMBIT_OPERATOR_DOMAIN_SUFFIX", default_value = "cluster.local")]
    pub domain_suffix: String,
    /// The cluster's id in workload resource names, as Istio's `CLUSTER_ID`.
    #[arg(long, env = "AMBIT_OPERATOR_CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Lifetime of workload certificates when the request asks for none.
    #[arg(long, env = "AMBIT_OPERATOR_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// Longest workload certificate lifetime handed out.
    #[arg(long, env = "AMBIT_OPERATOR_MAX_CERT_TTL", default_value = "2160h", value_parser = parse_duration)]
    pub max_cert_ttl: Duration,
    /// Service account (`namespace/name`) of the ztunnels, which may request certificates for
    /// the pods of their node.
    #[arg(long, env = "AMBIT_OPERATOR_ZTUNNEL_SERVICE_ACCOUNT", default_value = "ambit-system/ztunnel", value_parser = parse_service_account)]
    pub ztunnel_service_account: (String, String),
    /// The operator's own namespace: its Lease and CA Secret live there.
    #[arg(long, env = "AMBIT_OPERATOR_NAMESPACE", default_value = "ambit-system")]
    pub namespace: String,
    /// This replica's name in the leader Lease (the pod name in Kubernetes).
    #[arg(long, env = "AMBIT_OPERATOR_POD_NAME", default_value_t = default_identity())]
    pub pod_name: String,
    /// How long a leader's lease lasts without renewal.
    #[arg(long, env = "AMBIT_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews and the others retry.
    #[arg(long, env = "AMBIT_OPERATOR_LEASE_RETRY", default_value = "2s", value_parser = parse_duration)]
    pub lease_retry: Duration,
    /// xDS pushes wait for this much quiet after a change, to batch bursts...
    #[arg(long, env = "AMBIT_OPERATOR_DEBOUNCE", default_value = "10ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// ...but never longer than this after the first change.
    #[arg(long, env = "AMBIT_OPERATOR_MAX_DEBOUNCE", default_value = "100ms", value_parser = parse_duration)]
    pub max_debounce: Duration,
    /// Tokio worker threads; 0 means one per CPU.
    #[arg(long, env = "AMBIT_OPERATOR_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 500ms, 5s or 24h: {e}"))
}

fn parse_service_account(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{s:?} is not a service account like ambit-system/ztunnel")),
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "ambit-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Where the cluster state comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The Kubernetes API: from this kubeconfig file, else in-cluster config or `KUBECONFIG`.
    Kubernetes { kubeconfig: Option<PathBuf> },
    /// A local directory of manifests, rescanned every `poll`; ztunnels authenticate with the
    /// bootstrap tokens of the `bootstrap_tokens` file.
    Directory {
        path: PathBuf,
        poll: Duration,
        bootstrap_tokens: PathBuf,
    },
}

/// The user-supplied CA, when there is one.
#[derive(Clone, Debug)]
pub struct SuppliedCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: Option<PathBuf>,
}

/// The configuration the operator runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: Source,
    pub state_dir: PathBuf,
    pub supplied_ca: Option<SuppliedCa>,
    pub grpc_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub server_names: Vec<String>,
    pub trust_domain: String,
    pub domain_suffix: String,
    pub cluster_id: String,
    pub cert_ttl: Duration,
    pub max_cert_ttl: Duration,
    pub ztunnel_service_account: (String, String),
    pub namespace: String,
    pub pod_name: String,
    pub lease_duration: Duration,
    pub lease_retry: Duration,
    pub debounce: Duration,
    pub max_debounce: Duration,
    pub worker_threads: usize,
}

/// Flags that do not describe a way to run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let source = match a.manifests {
            Some(path) => {
                let Some(bootstrap_tokens) = a.bootstrap_tokens else {
                    return Err(ConfigError(
                        "--bootstrap-tokens is required with --manifests: without a Kubernetes API there is no other way to authenticate ztunnels".into(),
                    ));
                };
                Source::Directory {
                    path,
                    poll: a.manifest_poll,
                    bootstrap_tokens,
                }
            }
            None => Source::Kubernetes {
                kubeconfig: a.kubeconfig,
            },
        };
        ambit_identity::spiffe::validate_trust_domain(&a.trust_domain)
            .map_err(|e| ConfigError(format!("--trust-domain {:?}: {e}", a.trust_domain)))?;
        if a.lease_retry >= a.lease_duration {
            return Err(ConfigError(format!(
                "--lease-retry ({}) must be shorter than --lease-duration ({})",
                humantime::format_duration(a.lease_retry),
                humantime::format_duration(a.lease_duration)
            )));
        }
        if a.cert_ttl > a.max_cert_ttl {
            return Err(ConfigError(format!(
                "--cert-ttl ({}) is longer than --max-cert-ttl ({})",
                humantime::format_duration(a.cert_ttl),
                humantime::format_duration(a.max_cert_ttl)
            )));
        }
        Ok(Config {
            source,
            state_dir: a.state_dir,
            supplied_ca: a.ca_cert.zip(a.ca_key).map(|(cert, key)| SuppliedCa {
                cert,
                key,
                chain: a.ca_chain,
            }),
            grpc_addr: a.grpc_addr,
            monitoring_addr: a.monitoring_addr,
            server_names: a.server_names,
            trust_domain: a.trust_domain,
            domain_suffix: a.domain_suffix,
            cluster_id: a.cluster_id,
            cert_ttl: a.cert_ttl,
            max_cert_ttl: a.max_cert_ttl,
            ztunnel_service_account: a.ztunnel_service_account,
            namespace: a.namespace,
            pod_name: a.pod_name,
            lease_duration: a.lease_duration,
            lease_retry: a.lease_retry,
            debounce: a.debounce,
            max_debounce: a.max_debounce,
            worker_threads: a.worker_threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("ambit-operator").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn kubernetes_is_the_default_source() {
        let config = parse(&[]).expect("defaults");
        assert!(matches!(config.source, Source::Kubernetes { kubeconfig: None }));
        assert_eq!(config.grpc_addr.port(), 15012);
        assert_eq!(config.cert_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(
            config.ztunnel_service_account,
            ("ambit-system".to_owned(), "ztunnel".to_owned())
        );
    }

    #[test]
    fn local_mode_needs_bootstrap_tokens() {
        let error = parse(&["--manifests", "/tmp/m"]).expect_err("no tokens");
        assert!(error.starts_with("--bootstrap-tokens is required"), "{error}");
        let config = parse(&["--manifests", "/tmp/m", "--bootstrap-tokens", "/tmp/t"]).expect("local");
        assert!(matches!(config.source, Source::Directory { .. }));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let bad_sa = parse(&["--ztunnel-service-account", "ztunnel"]).expect_err("sa");
        assert!(bad_sa.contains("\"ztunnel\" is not a service account"), "{bad_sa}");
        let bad_ttl = parse(&["--cert-ttl", "forever"]).expect_err("ttl");
        assert!(bad_ttl.contains("\"forever\" is not a duration"), "{bad_ttl}");
        let lease = parse(&["--lease-retry", "20s"]).expect_err("lease");
        assert_eq!(lease, "--lease-retry (20s) must be shorter than --lease-duration (15s)");
        let domain = parse(&["--trust-domain", "Bad Domain"]).expect_err("td");
        assert!(domain.starts_with("--trust-domain \"Bad Domain\""), "{domain}");
    }
}
