//! TLS termination: certificates read from PEM files and chosen by SNI, a
//! listener's rustls configuration, and what a finished handshake tells the
//! requests on its connection.
//!
//! A listener's TLS is part of the snapshot: a changed certificate or key
//! file reloads the configuration through the one loader, so a bad file is
//! refused with its location and the running certificates stay. New
//! connections take the current snapshot's configuration; open ones keep the
//! session they negotiated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnection, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::{ClientAuthMode, ConfigError, TlsConfig, TlsVersion};

/// The one crypto provider: ring, chosen explicitly (no process default, so
/// a second provider linked in by a dependency can never be picked).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A certificate is warned about this long before it expires.
pub const EXPIRY_WARNING_SECS: i64 = 14 * 24 * 3600;

/// One served certificate: the names it covers and when it expires.
#[derive(Debug)]
pub struct Certificate {
    /// Exact host names (lower case) and IP addresses it covers.
    exact: Vec<String>,
    /// Parents of its `*.` names: `example.com` for `*.example.com`.
    wildcard: Vec<String>,
    /// Its end of validity, Unix seconds.
    pub not_after: i64,
    /// The certificate file, as configured.
    pub file: String,
    /// The first name it covers, for metrics and logs.
    pub label: String,
}

impl Certificate {
    /// A certificate covering exactly `host`, for a conformance case: what a
    /// plugin sees does not depend on a real key.
    pub fn covering(host: &str) -> Certificate {
        Certificate {
            exact: vec![host.to_ascii_lowercase()],
            wildcard: Vec::new(),
            not_after: i64::MAX,
            file: "(spec)".into(),
            label: host.to_ascii_lowercase(),
        }
    }

    /// Whether a request for `host` (lower case, no port; IPv6 in brackets)
    /// may be served on a connection that negotiated this certificate.
    pub fn covers(&self, host: &str) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if self.exact.iter().any(|n| n == host) {
            return true;
        }
        match host.split_once('.') {
            Some((first, parent)) if !first.is_empty() => self.wildcard.iter().any(|w| w == parent),
            _ => false,
        }
    }
}

/// A listener's TLS, as one snapshot serves it.
#[derive(Debug)]
pub struct ListenerTls {
    /// What new connections handshake with.
    pub config: Arc<ServerConfig>,
    resolver: Arc<SniResolver>,
    /// Every file read, with the SHA-256 of the bytes used: a reload is a
    /// no-op only when all of them are unchanged.
    pub files: Vec<(PathBuf, [u8; 32])>,
    /// The settings it was built from.
    pub source: TlsConfig,
}

/// Read `path`, noting it in `files` with the SHA-256 of what was read (for
/// [`files_unchanged`], and so the watcher watches it).
pub fn read_noted(path: PathBuf, files: &mut Vec<(PathBuf, [u8; 32])>) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(&path)?;
    files.push((path, <[u8; 32]>::from(Sha256::digest(&bytes))));
    Ok(bytes)
}

/// Whether every file still holds the bytes it held when read.
pub fn files_unchanged<'a>(files: impl IntoIterator<Item = &'a (PathBuf, [u8; 32])>) -> bool {
    files.into_iter().all(|(path, digest)| {
        std::fs::read(path).is_ok_and(|bytes| <[u8; 32]>::from(Sha256::digest(&bytes)) == *digest)
    })
}

impl ListenerTls {
    /// The served certificates, in configured order.
    pub fn certificates(&self) -> &[Arc<Certificate>] {
        &self.resolver.certs
    }

    /// What a finished handshake tells the requests on its connection.
    pub fn info(&self, conn: &ServerConnection) -> TlsInfo {
        let sni = conn.server_name().map(str::to_ascii_lowercase);
        let served = self.resolver.certs[self.resolver.index(sni.as_deref())].clone();
        let client = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| ClientCert::from_der(leaf));
        TlsInfo {
            sni,
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
            served,
            client,
        }
    }
}

/// What the handshake of a request's connection negotiated.
#[derive(Debug)]
pub struct TlsInfo {
    /// The server name the client asked for (lower case), if it sent one.
    pub sni: Option<String>,
    /// The protocol negotiated with ALPN, if any.
    pub alpn: Option<String>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The certificate the connection was served.
    pub served: Arc<Certificate>,
    /// The client's verified certificate, when it presented one.
    pub client: Option<ClientCert>,
}

/// Facts of a verified client certificate.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The subject's distinguished name as RFC 4514 writes it
    /// (`O=Example,CN=svc-a`: the last RDN first, values escaped).
    pub subject: String,
    /// Its subjectAltName entries: DNS names, IP addresses, URIs, emails.
    pub sans: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
}

impl ClientCert {
    fn from_der(der: &CertificateDer<'_>) -> ClientCert {
        let sha256 = crate::snapshot::hex(&Sha256::digest(der.as_ref()));
        // The verifier has already parsed and accepted it; a parse failure
        // here leaves only the fingerprint.
        match x509_parser::parse_x509_certificate(der.as_ref()) {
            Ok((_, cert)) => ClientCert {
                subject: rfc4514(cert.subject()),
                sans: alt_names(&cert)
                    .into_iter()
                    .map(|n| n.to_string())
                    .collect(),
                sha256,
            },
            Err(_) => ClientCert {
                subject: String::new(),
                sans: Vec::new(),
                sha256,
            },
        }
    }
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, values
/// escaped (`,` `+` `"` `\` `<` `>` `;`, a leading `#` or space, a trailing
/// space), so no value can pass for another attribute. A value that is not
/// a string is written `#` and its DER in hex, as the RFC says.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = match attr.as_str() {
                        Ok(v) => escape_dn_value(v),
                        Err(_) => format!("#{}", crate::snapshot::hex(attr.as_slice())),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            for b in c.to_string().bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

enum AltName {
    Dns(String),
    Ip(IpAddr),
    Other(String),
}

impl std::fmt::Display for AltName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AltName::Dns(n) | AltName::Other(n) => f.write_str(n),
            AltName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

fn alt_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<AltName> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(AltName::Dns(d.to_ascii_lowercase())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(AltName::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?))),
                16 => Some(AltName::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?))),
                _ => None,
            },
            GeneralName::URI(u) => Some(AltName::Other(u.to_string())),
            GeneralName::RFC822Name(e) => Some(AltName::Other(e.to_string())),
            _ => None,
        })
        .collect()
}

/// Picks the certificate for a handshake from its SNI: an exact name, else
/// a `*.` name one label up, else the default.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    certs: Vec<Arc<Certificate>>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl SniResolver {
    fn index(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else {
            return self.default;
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        if let Some((first, parent)) = name.split_once('.') {
            if !first.is_empty() {
                if let Some(&i) = self.wildcard.get(parent) {
                    return i;
                }
            }
        }
        self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls has already lower-cased and validated the SNI.
        Some(self.keys[self.index(hello.server_name())].clone())
    }
}

/// Read what a listener's `tls` names and build its configuration. Errors
/// name `at` (e.g. `listeners[0].tls`) and the field; a certificate that is
/// unreadable, does not match its key, is expired or not yet valid, or
/// claims a name another certificate claims is refused.
pub fn load(cfg: &TlsConfig, base: &Path, at: &str) -> Result<ListenerTls, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let provider = provider();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut read = |field: String, file: &str, errors: &mut Vec<ConfigError>| {
        let path = base.join(file);
        match read_noted(path.clone(), &mut files) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                errors.push(ConfigError::at(
                    field,
                    format!("cannot read {}: {e}", path.display()),
                ));
                None
            }
        }
    };

    if cfg.certificates.is_empty() {
        return Err(vec![ConfigError::at(
            format!("{at}.certificates"),
            "at least one certificate is required",
        )]);
    }
    let mut loaded = Vec::new();
    let mut bad = Vec::new();
    for (i, c) in cfg.certificates.iter().enumerate() {
        let cat = format!("{at}.certificates[{i}]");
        let cert = read(format!("{cat}.cert"), &c.cert, &mut errors);
        let key = read(format!("{cat}.key"), &c.key, &mut errors);
        let (Some(cert), Some(key)) = (cert, key) else {
            continue;
        };
        match certificate(c, &cert, &key, &provider, now) {
            Ok(pair) => loaded.push((i, pair)),
            Err((field, msg)) => bad.push(ConfigError::at(format!("{cat}.{field}"), msg)),
        }
    }
    errors.extend(bad);

    let defaults: Vec<usize> = cfg
        .certificates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.default)
        .map(|(i, _)| i)
        .collect();
    if defaults.len() > 1 {
        errors.push(ConfigError::at(
            format!("{at}.certificates[{}].default", defaults[1]),
            "only one certificate can be the default",
        ));
    }
    for (i, alpn) in cfg.alpn.iter().enumerate() {
        if alpn != "h2" && alpn != "http/1.1" {
            errors.push(ConfigError::at(
                format!("{at}.alpn[{i}]"),
                format!("unknown protocol {alpn:?}: use h2 or http/1.1"),
            ));
        }
    }

    let mut resolver = SniResolver {
        keys: Vec::new(),
        certs: Vec::new(),
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: 0,
    };
    // Position in the resolver → index in the configuration.
    let mut configured = Vec::new();
    for (i, (key, cert, names)) in loaded {
        let index = resolver.keys.len();
        configured.push(i);
        if defaults.first() == Some(&i) {
            resolver.default = index;
        }
        for name in &names {
            let (map, key_name) = match name.strip_prefix("*.") {
                Some(parent) => (&mut resolver.wildcard, parent.to_string()),
                None => (&mut resolver.exact, name.clone()),
            };
            // The same name twice in one certificate is no conflict.
            if let Some(&other) = map.get(&key_name).filter(|&&other| other != index) {
                errors.push(ConfigError::at(
                    format!("{at}.certificates[{i}]"),
                    format!(
                        "{name} is already served by certificates[{}]",
                        configured[other]
                    ),
                ));
            }
            map.insert(key_name, index);
        }
        resolver.keys.push(Arc::new(key));
        resolver.certs.push(Arc::new(cert));
    }

    let client_verifier = match &cfg.client_auth {
        None => None,
        Some(ca) => {
            let field = format!("{at}.client_auth.ca");
            match read(field.clone(), &ca.ca, &mut errors) {
                None => None,
                Some(pem) => match client_verifier(&pem, ca.mode, &provider) {
                    Ok(v) => Some(v),
                    Err(msg) => {
                        errors.push(ConfigError::at(field, msg));
                        None
                    }
                },
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }

    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| vec![ConfigError::at(format!("{at}.min_version"), e.to_string())])?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let resolver = Arc::new(resolver);
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Stateless resumption: a returning client skips the full handshake.
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(ListenerTls {
        config: Arc::new(config),
        resolver,
        files,
        source: cfg.clone(),
    })
}

type Loaded = (CertifiedKey, Certificate, Vec<String>);

fn certificate(
    c: &crate::config::CertificateConfig,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    now: i64,
) -> Result<Loaded, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert", format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(("cert", "holds no certificate".into()));
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| ("key", format!("not a PEM private key: {e}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| ("cert", format!("not an X.509 certificate: {e}")))?;
    let validity = parsed.validity();
    let not_after = validity.not_after.timestamp();
    if not_after <= now {
        return Err(("cert", format!("expired on {}", validity.not_after)));
    }
    if validity.not_before.timestamp() > now {
        return Err(("cert", format!("not valid before {}", validity.not_before)));
    }
    let names: Vec<String> = match &c.names {
        Some(names) => {
            for n in names {
                check_name(n).map_err(|m| ("names", m))?;
            }
            names.iter().map(|n| n.to_ascii_lowercase()).collect()
        }
        None => alt_names(&parsed)
            .into_iter()
            .filter(|n| !matches!(n, AltName::Other(_)))
            .map(|n| n.to_string())
            .collect(),
    };
    if names.is_empty() {
        return Err((
            "names",
            "the certificate has no DNS names or IP addresses in its subjectAltName: list its names"
                .into(),
        ));
    }
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ("key", "does not match the certificate".to_string()),
        other => ("key", format!("cannot be used: {other}")),
    })?;
    let mut exact = Vec::new();
    let mut wildcard = Vec::new();
    for n in &names {
        match n.strip_prefix("*.") {
            Some(parent) => wildcard.push(parent.to_string()),
            None => exact.push(n.clone()),
        }
    }
    let days_left = (not_after - now) / 86_400;
    if not_after - now < EXPIRY_WARNING_SECS {
        tracing::warn!(cert = %c.cert, name = %names[0], days_left, "certificate expires soon");
    }
    let cert = Certificate {
        exact,
        wildcard,
        not_after,
        file: c.cert.clone(),
        label: names[0].clone(),
    };
    Ok((key, cert, names))
}

fn check_name(n: &str) -> Result<(), String> {
    let host = n.strip_prefix("*.").unwrap_or(n);
    let ok = !host.is_empty()
        && !host.contains('*')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{n:?} is not a host name (a `*.` prefix is the only wildcard)"
        ))
    }
}

fn client_verifier(
    pem: &[u8],
    mode: ClientAuthMode,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no certificate".into());
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match mode {
        ClientAuthMode::Required => builder,
        ClientAuthMode::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::escape_dn_value;

    #[test]
    fn dn_values_cannot_pass_for_other_attributes() {
        assert_eq!(escape_dn_value("mallory, O=Admins"), "mallory\\, O=Admins");
        assert_eq!(
            escape_dn_value("a+b;c\"d\\e<f>"),
            "a\\+b\\;c\\\"d\\\\e\\<f\\>"
        );
        assert_eq!(escape_dn_value("#lead and trail "), "\\#lead and trail\\ ");
        assert_eq!(escape_dn_value("plain"), "plain");
    }
}
