//! `-s FILE`: the listener speaks HTTPS (TLS 1.2 and 1.3, rustls), as the original's SSL builds did.
//!
//! The certificate chain and its private key come from one PEM file, as the original's `-s cert`
//! (or the key from `--tls-key FILE`). Everything is checked before lb listens, and each problem is
//! one line naming the file: missing, no certificate in it, no key, or a key that does not belong
//! to the certificate. The handshake happens in step 1, inside `--header-timeout`, so a client
//! that stalls in it is dropped like a slowloris. ALPN offers `http/1.1` only: lb speaks HTTP/1.1.
//! Behind TLS, `X-Forwarded-Proto` says `https` (see `forward.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `-s FILE`: the certificate chain (leaf first), and the key too unless `key` is given.
    pub cert: PathBuf,
    /// `--tls-key FILE`.
    pub key: Option<PathBuf>,
}

/// Why the certificate or key cannot be used: one line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {reason}")]
    Read {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error(
        "no certificate in {path} (-s): expected a PEM file with a \"BEGIN CERTIFICATE\" block"
    )]
    NoCertificate { path: String },
    #[error("no private key in {path}: expected a \"BEGIN PRIVATE KEY\" (or RSA/EC) PEM block there, or give it with --tls-key FILE")]
    NoKey { path: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    Mismatch { cert: String, key: String },
    #[error("cannot use the certificate in {path}: {reason}")]
    Unusable { path: String, reason: String },
}

/// Read and check the files, and make the acceptor that does the handshakes.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let cert_path = files.cert.display().to_string();
    let (key_flag, key_file) = match &files.key {
        Some(key) => ("--tls-key", key.as_path()),
        None => ("-s", files.cert.as_path()),
    };
    let key_path = key_file.display().to_string();
    let certs = read_certs(&files.cert)?;
    let key = read_key(key_file, key_flag)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unusable {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    let mut config = builder
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                cert: cert_path.clone(),
                key: key_path.clone(),
            },
            other => TlsError::Unusable {
                path: key_path.clone(),
                reason: other.to_string(),
            },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_error(flag: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Read {
        flag,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    std::fs::metadata(path).map_err(|e| read_error("-s", path, e))?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error("-s", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error("-s", path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path, flag: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    std::fs::metadata(path).map_err(|e| read_error(flag, path, e))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.display().to_string(),
        },
        other => read_error(flag, path, other),
    })
}
