//! Bootstrap tokens for the local mesh, where there is no API server to run a TokenReview: a
//! YAML file the operator reads, one entry per ztunnel (or workload) naming its token, service
//! account and node. The file is re-read on every request so entries can be added live.
//!
//! ```yaml
//! tokens:
//!   - token: 3f6c0e…            # opaque secret, compared in constant time
//!     namespace: ambit-system
//!     serviceAccount: ztunnel
//!     node: node-a              # optional: the node a ztunnel may impersonate pods of
//!     expiresAt: 2030-01-01T00:00:00Z   # optional, RFC 3339
//! ```

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{AuthError, Authenticator, Caller};

/// Why the bootstrap token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    #[error("cannot read the bootstrap token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bootstrap token file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    token: String,
    namespace: String,
    service_account: String,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

impl std::fmt::Debug for Entry {
    // Hand-written so tokens never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("namespace", &self.namespace)
            .field("service_account", &self.service_account)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A parsed entry: the expiry already turned into a time.
#[derive(Debug)]
struct Token {
    entry: Entry,
    expires_at: Option<SystemTime>,
}

/// The bootstrap-token [`Authenticator`] of local mode.
#[derive(Debug)]
pub struct BootstrapTokens {
    path: PathBuf,
}

impl BootstrapTokens {
    /// Uses the token file at `path`, checking now that it reads and parses so a typo stops
    /// the operator at start rather than refusing every ztunnel later.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, BootstrapError> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|source| BootstrapError::Read {
            path: path.clone(),
            source,
        })?;
        parse(&path, &text)?;
        Ok(Self { path })
    }

    async fn lookup(&self, token: &str) -> Result<Caller, AuthError> {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|err| {
            AuthError::unavailable(format!(
                "cannot read the bootstrap token file {}: {err}",
                self.path.display()
            ))
        })?;
        let tokens = parse(&self.path, &text).map_err(|err| AuthError::unavailable(err.to_string()))?;
        // Every entry is compared, matched or not, so timing says nothing about which one is close.
        let mut found = None;
        for candidate in &tokens {
            if constant_time_eq(candidate.entry.token.as_bytes(), token.as_bytes()) {
                found = Some(candidate);
            }
        }
        let Some(found) = found else {
            return Err(AuthError::unauthenticated(format!(
                "unknown bootstrap token: it is not in {}",
                self.path.display()
            )));
        };
        let entry = &found.entry;
        if let Some(expires_at) = found.expires_at
            && SystemTime::now() >= expires_at
        {
            return Err(AuthError::unauthenticated(format!(
                "the bootstrap token of {}/{} expired at {}",
                entry.namespace,
                entry.service_account,
                humantime::format_rfc3339_seconds(expires_at)
            )));
        }
        Ok(Caller {
            namespace: entry.namespace.clone(),
            service_account: entry.service_account.clone(),
            node: entry.node.clone(),
        })
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(self.lookup(token))
    }
}

fn parse(path: &Path, text: &str) -> Result<Vec<Token>, BootstrapError> {
    let invalid = |reason: String| BootstrapError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let file: TokenFile = serde_norway::from_str(text).map_err(|err| invalid(err.to_string()))?;
    let mut tokens: Vec<Token> = Vec::with_capacity(file.tokens.len());
    for (index, entry) in file.tokens.into_iter().enumerate() {
        if entry.token.trim().is_empty() {
            return Err(invalid(format!("tokens[{index}].token is empty")));
        }
        if entry.namespace.is_empty() || entry.service_account.is_empty() {
            return Err(invalid(format!(
                "tokens[{index}] needs a namespace and a serviceAccount"
            )));
        }
        if tokens.iter().any(|t| t.entry.token == entry.token) {
            return Err(invalid(format!("tokens[{index}].token repeats an earlier token")));
        }
        let expires_at = entry
            .expires_at
            .as_deref()
            .map(|value| {
                humantime::parse_rfc3339_weak(value)
                    .map_err(|err| invalid(format!("tokens[{index}].expiresAt {value:?} is not RFC 3339: {err}")))
            })
            .transpose()?;
        tokens.push(Token { entry, expires_at });
    }
    Ok(tokens)
}

/// Equality whose time depends only on the lengths, never on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    const FILE: &str = "tokens:
  - token: node-a-secret
    namespace: ambit-system
    serviceAccount: ztunnel
    node: node-a
  - token: old-secret
    namespace: ambit-system
    serviceAccount: ztunnel
    node: node-b
    expiresAt: 2001-01-01T00:00:00Z
";

    #[tokio::test]
    async fn tokens_authenticate_their_entry_and_refuse_unknown_or_expired() {
        let (_dir, path) = write(FILE);
        let tokens = BootstrapTokens::from_file(&path).expect("tokens");
        let caller = tokens.authenticate("node-a-secret").await.expect("known");
        assert_eq!(caller.node.as_deref(), Some("node-a"));
        assert_eq!(caller.service_account, "ztunnel");
        let err = tokens.authenticate("node-a-secreT").await.expect_err("unknown");
        assert!(matches!(err, AuthError::Unauthenticated { .. }), "{err}");
        assert!(err.to_string().contains("unknown bootstrap token"), "{err}");
        let err = tokens.authenticate("old-secret").await.expect_err("expired");
        assert!(err.to_string().contains("expired at 2001-01-01"), "{err}");
    }

    #[test]
    fn bad_files_are_refused_naming_the_entry() {
        let (_dir, path) = write("tokens:\n  - token: ''\n    namespace: a\n    serviceAccount: b\n");
        let err = BootstrapTokens::from_file(&path).expect_err("empty token");
        assert!(err.to_string().contains("tokens[0].token is empty"), "{err}");
        let (_dir, path) =
            write("tokens:\n  - token: x\n    namespace: a\n    serviceAccount: b\n    expiresAt: soon\n");
        let err = BootstrapTokens::from_file(&path).expect_err("bad expiry");
        assert!(err.to_string().contains("\"soon\""), "{err}");
        let (_dir, path) = write("tokens:\n  - token: x\n    namespace: a\n    serviceAcount: b\n");
        assert!(BootstrapTokens::from_file(&path).is_err());
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
