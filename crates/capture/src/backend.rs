//! Which firewall tool programs the rules: nftables (preferred, through its JSON API) or
//! iptables (`iptables-restore`, for nodes without nft), chosen by config or detected.

use std::{fmt, str::FromStr};

use crate::{
    Error, Result,
    command::{self, Netns},
};

/// The firewall tool the rules are written with. One node uses one backend for every pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// `nft -j`: one `inet` table per namespace, replaced in one transaction.
    Nftables,
    /// `iptables-restore --noflush` (and `ip6tables-restore`): chains of our own in `nat`.
    Iptables,
}

impl Backend {
    /// nftables when `nft -j list tables` works (nft is installed, built with JSON support, and
    /// the kernel has nf_tables), else iptables when `iptables-restore` runs, else an error saying
    /// what to install. Only reads, in the calling thread's namespace.
    pub fn detect() -> Result<Backend> {
        let nft = match command::run(Netns::Current, "nft", &["-j", "list", "tables"], None) {
            Ok(out) if serde_json::from_str::<serde_json::Value>(&out).is_ok() => {
                return Ok(Backend::Nftables);
            }
            Ok(out) => format!("`nft -j list tables` printed no JSON: {:?}", out.trim()),
            Err(e) => e.with_sources(),
        };
        let iptables = match command::run(Netns::Current, "iptables-restore", &["--version"], None) {
            Ok(_) => {
                tracing::info!(reason = %nft, "nftables unusable, capturing with iptables");
                return Ok(Backend::Iptables);
            }
            Err(e) => e.with_sources(),
        };
        Err(Error::NoBackend { nft, iptables })
    }

    /// The config spelling: `nftables` or `iptables`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a config value: `nftables`, `iptables`, or `auto`, which runs [`Backend::detect`]
/// (so a config parsed at start-up resolves to the tool this node actually has).
impl FromStr for Backend {
    type Err = Error;

    fn from_str(value: &str) -> Result<Backend> {
        match value {
            "nftables" => Ok(Backend::Nftables),
            "iptables" => Ok(Backend::Iptables),
            "auto" => Backend::detect(),
            _ => Err(Error::UnknownBackend {
                value: value.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_parse() {
        assert_eq!("nftables".parse::<Backend>().ok(), Some(Backend::Nftables));
        assert_eq!("iptables".parse::<Backend>().ok(), Some(Backend::Iptables));
        for backend in [Backend::Nftables, Backend::Iptables] {
            assert_eq!(backend.to_string().parse::<Backend>().ok(), Some(backend));
        }
    }

    #[test]
    fn an_unknown_value_is_named_in_the_error() {
        let err = "nft".parse::<Backend>().expect_err("not a backend");
        assert!(matches!(&err, Error::UnknownBackend { value } if value == "nft"));
        let text = err.to_string();
        assert!(text.contains("\"nft\"") && text.contains("auto"), "{text}");
    }
}
