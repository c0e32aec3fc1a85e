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
    /// Local workload/service/policy YAML file, watched for changes.
    #[arg(long, env = "AMBIT_ZTUNNEL_CONFIG")]
    pub config: PathBuf,
    /// Name of the node this ztunnel serves; it captures traffic for workloads on this node.
    #[arg(long, env = "AMBIT_ZTUNNEL_NODE")]
    pub node: String,
    /// PEM certificate of the CA that signs workload certificates (root or intermediate).
    #[arg(long, env = "AMBIT_ZTUNNEL_CA_CERT")]
    pub ca_cert: PathBuf,
    /// PEM private key of that CA.
    #[arg(long, env = "AMBIT_ZTUNNEL_CA_KEY")]
    pub ca_key: PathBuf,
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
    /// Tokio worker threads. One avoids the cross-thread wakeups that dominate a small node's
    /// per-request cost; raise it where one core cannot carry the node's traffic.
    #[arg(long, env = "AMBIT_ZTUNNEL_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 500ms, 5s or 24h: {e}"))
}

/// The configuration the app runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub config_file: PathBuf,
    pub node: String,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub trust_bundle: Option<PathBuf>,
    pub cert_ttl: Duration,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub drain_timeout: Duration,
    pub config_poll: Duration,
    pub pool_idle_timeout: Duration,
    pub worker_threads: usize,
}

impl From<Args> for Config {
    fn from(a: Args) -> Self {
        Config {
            config_file: a.config,
            node: a.node,
            ca_cert: a.ca_cert,
            ca_key: a.ca_key,
            trust_bundle: a.trust_bundle,
            cert_ttl: a.cert_ttl,
            admin_addr: a.admin_addr,
            metrics_addr: a.metrics_addr,
            readiness_addr: a.readiness_addr,
            drain_timeout: a.drain_timeout,
            config_poll: a.config_poll,
            pool_idle_timeout: a.pool_idle_timeout,
            worker_threads: a.worker_threads.max(1),
        }
    }
}
