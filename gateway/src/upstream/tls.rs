//! TLS to upstream endpoints: the client configuration (CA bundle or the
//! system's roots, an optional client certificate, ALPN for the protocol),
//! the stream a connection runs on, and what a failed handshake means.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::UpstreamErrorKind;
use crate::config::{UpstreamProtocol, UpstreamTls};
use crate::server::tls::provider;

/// How connections to one upstream's endpoints handshake.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// The files it was built from, with their SHA-256: a change to one
    /// rebuilds the upstream at the next reload (and the watcher reloads).
    files: Vec<(PathBuf, [u8; 32])>,
}

/// Read `path` for `field`, noting its digest in `files`.
fn read_file(
    path: PathBuf,
    field: &str,
    files: &mut Vec<(PathBuf, [u8; 32])>,
) -> Result<Vec<u8>, (String, String)> {
    let shown = path.display().to_string();
    crate::server::tls::read_noted(path, files)
        .map_err(|e| (field.to_string(), format!("cannot read {shown}: {e}")))
}

impl Connector {
    /// Build from config; `Err` is `(field, message)` under `tls`.
    pub(crate) fn new(
        tls: &UpstreamTls,
        protocol: UpstreamProtocol,
        base: &Path,
    ) -> Result<Connector, (String, String)> {
        let server_name = match &tls.server_name {
            None => None,
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| ("tls.server_name".to_string(), e.to_string()))?,
            ),
        };
        let mut files = Vec::new();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls".to_string(), e.to_string()))?;
        let builder = if tls.verify {
            let mut roots = RootCertStore::empty();
            match &tls.ca {
                Some(ca) => {
                    let pem = read_file(base.join(ca), "tls.ca", &mut files)?;
                    for cert in CertificateDer::pem_slice_iter(&pem) {
                        let cert = cert.map_err(|e| {
                            ("tls.ca".to_string(), format!("not a PEM bundle: {e}"))
                        })?;
                        roots
                            .add(cert)
                            .map_err(|e| ("tls.ca".to_string(), e.to_string()))?;
                    }
                    if roots.is_empty() {
                        return Err(("tls.ca".into(), "holds no certificate".into()));
                    }
                }
                None => {
                    roots = system_roots().clone();
                    if roots.is_empty() {
                        return Err((
                            "tls.ca".into(),
                            "the system has no trusted roots: give a CA bundle".into(),
                        ));
                    }
                }
            }
            builder.with_root_certificates(roots)
        } else {
            tracing::warn!("upstream TLS verification is off: any certificate is accepted");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        };
        let mut config = match &tls.client_certificate {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let (cert_field, key_field) =
                    ("tls.client_certificate.cert", "tls.client_certificate.key");
                let cert_pem = read_file(base.join(&c.cert), cert_field, &mut files)?;
                let key_pem = read_file(base.join(&c.key), key_field, &mut files)?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        (
                            cert_field.to_string(),
                            format!("not a PEM certificate chain: {e}"),
                        )
                    })?;
                if chain.is_empty() {
                    return Err((cert_field.into(), "holds no certificate".into()));
                }
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| (key_field.to_string(), format!("not a PEM private key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ("tls.client_certificate".to_string(), e.to_string()))?
            }
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        Ok(Connector {
            config: Arc::new(config),
            server_name,
            files,
        })
    }

    /// The files it was built from, with their SHA-256.
    pub(crate) fn files(&self) -> &[(PathBuf, [u8; 32])] {
        &self.files
    }

    /// Handshake on `tcp` to the endpoint at `addr`.
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<Stream, UpstreamErrorKind> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        match tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
        {
            Ok(s) => Ok(Stream::Tls(Box::new(s))),
            Err(e) => {
                let kind = classify(&e);
                tracing::warn!(endpoint = %addr, error = %e, "upstream TLS handshake failed");
                Err(kind)
            }
        }
    }
}

fn classify(e: &io::Error) -> UpstreamErrorKind {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType,
        ) => UpstreamErrorKind::Certificate,
        Some(_) => UpstreamErrorKind::Protocol,
        None => UpstreamErrorKind::Reset,
    }
}

fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading the system's trusted roots");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system roots loaded");
        roots
    })
}

/// `verify: false`: any certificate, but signatures still checked so the
/// handshake itself is sound.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connection to an endpoint, in cleartext or over TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The protocol ALPN chose, over TLS.
    pub(crate) fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
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
