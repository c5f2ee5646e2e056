//! HTTPS: which certificates to trust ([`Trust`]), the rustls client configuration built from
//! that once per run (`Tls`), and the `Stream` a connection reads and writes, plain TCP or
//! TLS over it.
//!
//! **rustls with the `ring` provider**, like `lb -s`: pure Rust plus ring's assembly, no OpenSSL
//! and no aws-lc (which needs cmake and a C toolchain to build). ALPN offers `http/1.1` only,
//! since loadgen speaks nothing else.
//!
//! **Which roots by default.** Mozilla's root program, compiled in (`webpki-roots`), rather than
//! the operating system's store (`rustls-native-certs`): a run then trusts the same certificates
//! on every machine and in every container, whether or not it has a `ca-certificates` package,
//! and a CI job does not depend on the image it runs on. A private CA (the usual case for a
//! balancer under test) is given with `--cacert FILE` instead, which replaces the default roots.
//!
//! **Every new connection is a full handshake.** Session resumption is off: with
//! `--no-keepalive` each request then measures what a new client costs the server (the
//! certificate signature and the key exchange), not an abbreviated handshake whose share depends
//! on how many tickets the server hands out. The handshake's duration is reported on its own
//! ([`crate::Report::tls_handshake`]) and is also part of the latency of the request that
//! opened the connection.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Which server certificates an `https://` run accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// Certificates that chain to a root of Mozilla's program (`webpki-roots`).
    #[default]
    WebPkiRoots,
    /// Certificates that chain to one of the PEM certificates in this file (`--cacert`).
    CaFile(PathBuf),
    /// Any certificate, unverified (`--insecure`). The handshake's signatures are still checked,
    /// so the connection is encrypted, but to whoever answered.
    Insecure,
}

/// Why HTTPS cannot be set up. Each message names the file or the host and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read --cacert {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--cacert {0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate(PathBuf),
    #[error("--cacert {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("`{0}` cannot be checked against a certificate (not a DNS name or an IP address)")]
    ServerName(String),
    #[error("rustls: {0}")]
    Config(#[from] rustls::Error),
}

/// What connecting over TLS needs, built once per run and shared by every connection.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    /// The name the certificate must carry: the URL's host.
    server_name: ServerName<'static>,
}

impl Tls {
    /// The client configuration for `host` (the URL's host, a DNS name or an IP address).
    pub fn new(host: &str, trust: &Trust) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = match trust {
            Trust::WebPkiRoots => {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                builder.with_root_certificates(roots)
            }
            Trust::CaFile(path) => builder.with_root_certificates(read_roots(path)?),
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
        }
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::ServerName(host.to_owned()))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake over a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// The certificates of a `--cacert` file, as the roots to trust.
fn read_roots(path: &PathBuf) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCaFile {
        path: path.clone(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError::BadCertificate {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate(path.clone()));
    }
    Ok(roots)
}

/// One line for a failed handshake, with the fix when the certificate was the problem.
pub(crate) fn describe_handshake_error(e: &io::Error) -> String {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(reason)) => format!(
            "the server's certificate was rejected ({reason}); trust its issuer with \
             --cacert FILE, or skip verification with --insecure"
        ),
        // What a plain HTTP server sends back to a ClientHello is not a TLS record.
        Some(rustls::Error::InvalidMessage(_)) => format!(
            "TLS handshake failed: {}; if the server speaks plain HTTP, use an http:// URL",
            e.get_ref()
                .map_or_else(|| e.to_string(), ToString::to_string)
        ),
        Some(other) => format!("TLS handshake failed: {other}"),
        None => format!("TLS handshake failed: {e}"),
    }
}

/// `--insecure`: accepts any certificate for any name, but still checks that the server holds
/// the certificate's key (the handshake signatures), using the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection's byte stream: plain TCP, or TLS over TCP (boxed: a TLS session holds its
/// buffers inline, and the plain case should not carry that size around).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations() {
        for trust in [Trust::WebPkiRoots, Trust::Insecure] {
            assert!(Tls::new("localhost", &trust).is_ok());
            assert!(Tls::new("127.0.0.1", &trust).is_ok());
            assert!(Tls::new("[::1]", &trust).is_ok());
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = Tls::new("localhost", &Trust::CaFile(missing))
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("cannot read --cacert"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Tls::new("localhost", &Trust::CaFile(empty)).err().unwrap();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }
}
