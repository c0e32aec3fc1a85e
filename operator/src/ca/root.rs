//! The CA's root material: generated once and persisted (PEM files in local mode, the
//! `ambit-system/ambit-ca` Secret in Kubernetes mode), or supplied by the user as a root or an
//! intermediate with its chain. Loading only; rotating a root is a deliberate operator action.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ambit_identity::{CaError, CertificateAuthority};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

/// Namespace and name of the CA Secret, and its keys (Istio's `cacerts` layout).
pub const CA_SECRET_NAMESPACE: &str = "ambit-system";
pub const CA_SECRET_NAME: &str = "ambit-ca";
/// The signing certificate (root or intermediate); also the file name in the state directory.
pub const CA_CERT_KEY: &str = "ca-cert.pem";
/// Its private key; written 0600 in the state directory.
pub const CA_KEY_KEY: &str = "ca-key.pem";
/// Optional: the certificates above `ca-cert.pem`, up to the root.
pub const CA_CHAIN_KEY: &str = "cert-chain.pem";
/// Optional: the root, when `cert-chain.pem` does not end with it.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// Why the CA material could not be loaded, generated or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not a usable CA")]
    Ca {
        what: String,
        #[source]
        source: CaError,
    },
    #[error("{path} exists but {missing} does not: restore it or remove both to generate a new root")]
    HalfPresent { path: PathBuf, missing: PathBuf },
    #[error("Secret {CA_SECRET_NAMESPACE}/{CA_SECRET_NAME} has no {key:?} key or it is not UTF-8 PEM")]
    SecretKey { key: &'static str },
    #[error("cannot {action} Secret {CA_SECRET_NAMESPACE}/{CA_SECRET_NAME}")]
    Kube {
        action: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
}

/// A CA from PEM: `cert_pem` is the signing certificate, `chain_pem` the certificates above it
/// up to the root (empty for a root). The response chain then ends with the last of them.
pub fn ca_from_pem(
    what: &str,
    cert_pem: &str,
    key_pem: &str,
    chain_pem: &str,
) -> Result<CertificateAuthority, RootError> {
    let mut full = cert_pem.trim_end().to_owned();
    full.push('\n');
    full.push_str(chain_pem);
    CertificateAuthority::from_pem(&full, key_pem).map_err(|source| RootError::Ca {
        what: what.to_owned(),
        source,
    })
}

/// A user-supplied CA from files: certificate, key and optionally the chain up to the root.
pub fn load_ca_files(cert: &Path, key: &Path, chain: Option<&Path>) -> Result<CertificateAuthority, RootError> {
    let chain_pem = chain.map(read).transpose()?.unwrap_or_default();
    ca_from_pem(&format!("CA {}", cert.display()), &read(cert)?, &read(key)?, &chain_pem)
}

/// Local mode: the CA in `state_dir` (`ca-cert.pem`, `ca-key.pem`), generated for
/// `trust_domain` on first start and reused on every later one.
pub fn load_or_generate_in_dir(state_dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, RootError> {
    let cert_path = state_dir.join(CA_CERT_KEY);
    let key_path = state_dir.join(CA_KEY_KEY);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => return load_ca_files(&cert_path, &key_path, None),
        (true, false) => return Err(half_present(cert_path, key_path)),
        (false, true) => return Err(half_present(key_path, cert_path)),
        (false, false) => {}
    }
    let ca = CertificateAuthority::generate(trust_domain).map_err(|source| RootError::Ca {
        what: format!("a new root for trust domain {trust_domain:?}"),
        source,
    })?;
    std::fs::create_dir_all(state_dir).map_err(|source| RootError::Io {
        action: "create the state directory",
        path: state_dir.to_owned(),
        source,
    })?;
    // Key first: a crash in between leaves a key without a certificate, refused loudly above,
    // never a certificate whose key is lost.
    write_file(&key_path, &ca.key_pem(), 0o600)?;
    write_file(&cert_path, &ca.cert_pem(), 0o644)?;
    tracing::info!(dir = %state_dir.display(), trust_domain, "generated a new mesh root CA");
    Ok(ca)
}

/// Kubernetes mode: the CA of Secret `ambit-system/ambit-ca`, created with a new root when it
/// does not exist. When another replica creates it first, theirs is loaded, so every replica
/// signs with the same root.
pub async fn load_or_create_secret(
    client: kube::Client,
    trust_domain: &str,
) -> Result<CertificateAuthority, RootError> {
    let api: Api<Secret> = Api::namespaced(client, CA_SECRET_NAMESPACE);
    let kube_error = |action| {
        move |source| RootError::Kube {
            action,
            source: Box::new(source),
        }
    };
    if let Some(secret) = api.get_opt(CA_SECRET_NAME).await.map_err(kube_error("read"))? {
        return ca_from_secret(&secret);
    }
    let ca = CertificateAuthority::generate(trust_domain).map_err(|source| RootError::Ca {
        what: format!("a new root for trust domain {trust_domain:?}"),
        source,
    })?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET_NAME.to_owned()),
            namespace: Some(CA_SECRET_NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (CA_CERT_KEY.to_owned(), ByteString(ca.cert_pem().into_bytes())),
            (CA_KEY_KEY.to_owned(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                trust_domain,
                "generated a new mesh root CA in Secret {CA_SECRET_NAMESPACE}/{CA_SECRET_NAME}"
            );
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let theirs = api.get(CA_SECRET_NAME).await.map_err(kube_error("read"))?;
            ca_from_secret(&theirs)
        }
        Err(err) => Err(kube_error("create")(err)),
    }
}

/// The CA a Secret holds: `ca-cert.pem` + `ca-key.pem`, optionally `cert-chain.pem` and
/// `root-cert.pem` for a user-supplied intermediate.
pub(crate) fn ca_from_secret(secret: &Secret) -> Result<CertificateAuthority, RootError> {
    let value = |key: &'static str| -> Result<Option<String>, RootError> {
        match secret.data.as_ref().and_then(|data| data.get(key)) {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes.0.clone())
                .map(Some)
                .map_err(|_| RootError::SecretKey { key }),
        }
    };
    let cert = value(CA_CERT_KEY)?.ok_or(RootError::SecretKey { key: CA_CERT_KEY })?;
    let key = value(CA_KEY_KEY)?.ok_or(RootError::SecretKey { key: CA_KEY_KEY })?;
    let mut chain = value(CA_CHAIN_KEY)?.unwrap_or_default();
    if let Some(root) = value(ROOT_CERT_KEY)?
        && !chain.contains(root.trim())
        && !cert.contains(root.trim())
    {
        chain.push_str(&root);
    }
    ca_from_pem(
        &format!("Secret {CA_SECRET_NAMESPACE}/{CA_SECRET_NAME}"),
        &cert,
        &key,
        &chain,
    )
}

fn half_present(path: PathBuf, missing: PathBuf) -> RootError {
    RootError::HalfPresent { path, missing }
}

fn read(path: &Path) -> Result<String, RootError> {
    std::fs::read_to_string(path).map_err(|source| RootError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a reader never sees half a PEM; the mode is
/// set at creation, so a key is never readable by others even for a moment.
pub(crate) fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), RootError> {
    let tmp = path.with_extension("tmp");
    let io_error = |action| {
        move |source| RootError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error("create"))?;
    file.write_all(contents.as_bytes()).map_err(io_error("write"))?;
    file.sync_all().map_err(io_error("sync"))?;
    std::fs::rename(&tmp, path).map_err(io_error("rename into place"))
}
