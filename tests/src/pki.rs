//! Certificates made on the spot: a test CA, server and client certificates
//! it signs (current, expired, or for other names), written as PEM files, and
//! rustls client configurations that trust the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// How long an issued certificate is valid, relative to now.
#[derive(Clone, Copy)]
pub enum Validity {
    /// From a day ago for a year.
    Current,
    /// Ended yesterday.
    Expired,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names, `*.` wildcards or IPs).
    pub fn server(&self, names: &[&str], validity: Validity) -> Issued {
        self.issue(
            names,
            names.first().copied().unwrap_or("server"),
            validity,
            false,
        )
    }

    /// A client certificate with common name `cn` and the DNS SAN `san`.
    pub fn client(&self, cn: &str, san: &str) -> Issued {
        self.issue(&[san], cn, Validity::Current, true)
    }

    fn issue(&self, names: &[&str], cn: &str, validity: Validity, client: bool) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Wicket Tests");
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (now - day, now + day * 365),
            Validity::Expired => (now - day * 30, now - day),
        };
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Issued {
    /// Write `<stem>.crt` and `<stem>.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write_atomically(&cert, &self.cert);
        write_atomically(&key, &self.key);
        (cert, key)
    }
}

/// Replace a file in one step (write a sibling, rename over), as a
/// certificate manager does.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A rustls client that trusts `ca_pem`, offers `alpn`, and presents
/// `client` when given.
pub fn client_config(
    ca_pem: &str,
    alpn: &[&str],
    client: Option<&Issued>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert.as_bytes())
                    .map(|c| c.expect("cert PEM"))
                    .collect(),
                PrivateKeyDer::from_pem_slice(c.key.as_bytes()).expect("key PEM"),
            )
            .expect("client certificate"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}
