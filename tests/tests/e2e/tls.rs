//! TLS termination with real clients (curl and a rustls client) and
//! certificates made by the test: SNI choosing among certificates, 421 for a
//! host the handshake did not cover, hot swaps of certificate files, broken
//! and expired files refused, mutual TLS, version floors, the handshake
//! timeout, the HTTPS redirect listener, and what plugins see.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use wicket_tests::pki::{self, Ca, Validity};
use wicket_tests::{backend, curl, fill, scratch_dir, Backend, HttpClient, TestGateway, TlsConn};

/// A scratch directory holding a CA, `a.test` and `*.b.test` certificates,
/// and a config that serves them.
struct Site {
    dir: PathBuf,
    ca: Ca,
    ca_file: PathBuf,
    gw: TestGateway,
    _backend: Backend,
}

impl Site {
    async fn start(tls_extra: &str, watch: bool) -> Site {
        let b = backend("echo").await;
        let dir = scratch_dir("tls");
        let ca = Ca::new("Wicket Test CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        ca.server(&["a.test"], Validity::Current).write(&dir, "a");
        ca.server(&["*.b.test"], Validity::Current).write(&dir, "b");
        let yaml = fill(
            &format!(
                r#"
listeners:
  - address: "127.0.0.1:0"
    timeouts: {{ handshake_ms: 500 }}
    tls:
      certificates:
        - {{ cert: a.crt, key: a.key }}
        - {{ cert: b.crt, key: b.key }}
{tls_extra}
admin: {{ address: "127.0.0.1:0" }}
watch_debounce_ms: 50
plugins:
  inspect: {{ module: "{{plugin:inspect}}" }}
  mtls-auth: {{ module: "{{plugin:mtls-auth}}" }}
upstreams: {{ echo: {{ endpoints: [{{ address: "{{backend:echo}}" }}] }} }}
routes:
  - {{ name: a, match: {{ host: a.test, path: "/{{*p}}" }}, upstream: echo, plugins: [{{ name: inspect }}] }}
  - {{ name: b, match: {{ host: x.b.test, path: "/{{*p}}" }}, upstream: echo }}
  - name: m
    match: {{ host: m.b.test, path: "/{{*p}}" }}
    upstream: echo
    plugins:
      - name: mtls-auth
        config:
          consumers: [{{ consumer: svc-a, san: svc-a.internal }}]
          forward: {{ subject: x-client-subject }}
"#
            ),
            &[("echo", &b)],
        );
        let config_path = dir.join("wicket.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let gw = TestGateway::start_file(config_path, wicket::Clock::system(), watch).await;
        Site {
            dir,
            ca,
            ca_file,
            gw,
            _backend: b,
        }
    }

    fn port(&self) -> u16 {
        self.gw.gateway.addrs()[0].port()
    }

    /// curl to `https://{name}:{port}{path}`, `name` resolved to loopback.
    fn curl(&self, name: &str, path: &str, extra: &[&str]) -> (i32, String, String) {
        let resolve = format!("{name}:{}:127.0.0.1", self.port());
        let url = format!("https://{name}:{}{path}", self.port());
        let ca = self.ca_file.to_string_lossy().to_string();
        let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    /// `GET /r` for `host` on a new HTTP/2 connection (SNI `host`) that
    /// presents `cert`, if any.
    async fn get_as(&self, cert: Option<&pki::Issued>, host: &str) -> wicket_tests::Reply {
        let config = pki::client_config(&self.ca.pem, &["h2"], cert);
        let mut c = TlsConn::connect(self.gw.gateway.addrs()[0], host, config)
            .await
            .unwrap();
        c.get(host, "/r").await.unwrap()
    }

    async fn connect(&self, sni: &str) -> std::io::Result<TlsConn> {
        TlsConn::connect(
            self.gw.gateway.addrs()[0],
            sni,
            pki::client_config(&self.ca.pem, &["h2", "http/1.1"], None),
        )
        .await
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_gets_the_certificate_for_each_sni_name() {
    let site = Site::start("", false).await;
    for (name, route) in [("a.test", "a"), ("x.b.test", "b")] {
        let (code, out, err) = site.curl(
            name,
            "/hello",
            &["--http2", "-w", "\n%{http_version} %{ssl_verify_result}"],
        );
        assert_eq!(code, 0, "curl to {name} failed: {err}");
        let (body, meta) = out.rsplit_once('\n').unwrap();
        assert_eq!(meta, "2 0", "HTTP/2 and a verified certificate for {name}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["headers"]["x-forwarded-proto"][0], "https");
        assert_eq!(json["path"], "/hello", "route {route}");
    }
    // HTTP/1.1 over TLS as well.
    let (code, out, err) = site.curl("a.test", "/r", &["--http1.1", "-w", "\n%{http_version}"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n1.1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_the_sni_alpn_and_version_of_the_connection() {
    let site = Site::start("", false).await;
    let mut c = site.connect("a.test").await.unwrap();
    assert_eq!(c.alpn.as_deref(), Some("h2"));
    let r = c.get("a.test", "/r").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed_header("x-seen-tls").as_deref(),
        Some("sni=a.test;alpn=h2;version=TLSv1.3")
    );
    assert_eq!(r.echoed_header("x-seen-scheme").as_deref(), Some("https"));
    assert_eq!(r.echoed_header("x-seen-client-subject"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_negotiated_certificate_does_not_cover_gets_421() {
    let site = Site::start("", false).await;
    // The a.test handshake, then a request for x.b.test: domain fronting.
    let mut c = site.connect("a.test").await.unwrap();
    let r = c.get("x.b.test", "/r").await.unwrap();
    assert_eq!(r.status, 421);
    assert_eq!(r.json()["error"], "misdirected_request");
    // curl, HTTP/1.1, with a Host header that disagrees with its SNI.
    let (code, out, err) = site.curl(
        "a.test",
        "/r",
        &["--http1.1", "-H", "Host: x.b.test", "-w", "\n%{http_code}"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n421"), "{out}");
    // The host the handshake named is served on the same connection.
    let mut c = site.connect("x.b.test").await.unwrap();
    assert_eq!(c.get("x.b.test", "/r").await.unwrap().status, 200);
    assert_eq!(c.get("a.test", "/r").await.unwrap().status, 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_server_name_is_served_the_default_certificate() {
    let site = Site::start("", false).await;
    // curl checks the name: the default certificate (a.test) does not
    // cover other.test, so verification fails.
    let (code, _, err) = site.curl("other.test", "/r", &[]);
    assert_eq!(code, 60, "certificate name mismatch expected: {err}");
    // With verification off the connection works and the host is refused.
    let (code, out, _) = site.curl("other.test", "/r", &["-k", "-w", "\n%{http_code}"]);
    assert_eq!(code, 0);
    assert!(out.ends_with("\n421"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_is_served_to_new_connections_while_open_ones_keep_working() {
    let site = Site::start("", true).await;
    let mut open = site.connect("a.test").await.unwrap();
    assert_eq!(open.get("a.test", "/r").await.unwrap().status, 200);
    let old = open.peer_cert.clone();

    let renewed = site.ca.server(&["a.test"], Validity::Current);
    renewed.write(&site.dir, "a");
    site.gw.wait_for_generation(2).await;
    let fresh = site.connect("a.test").await.unwrap();
    assert_eq!(fresh.peer_cert, der(&renewed.cert), "the new certificate");
    assert_ne!(fresh.peer_cert, old);
    // The connection opened before the swap is still served.
    assert_eq!(open.get("a.test", "/r").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_file_keeps_the_old_certificate_and_is_reported() {
    let site = Site::start("", true).await;
    let before = site.connect("a.test").await.unwrap().peer_cert;
    let admin = HttpClient::new();

    // Garbage in the certificate file.
    pki::write_atomically(&site.dir.join("a.crt"), "not a certificate\n");
    site.gw.wait_for_failed_reloads(1).await;
    let status = admin.get(&site.gw.admin_url("/status"), &[]).await.json();
    let error = status["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("listeners[0].tls.certificates[0].cert"),
        "{error}"
    );
    let mut c = site.connect("a.test").await.unwrap();
    assert_eq!(c.peer_cert, before, "the old certificate is still served");
    assert_eq!(c.get("a.test", "/r").await.unwrap().status, 200);

    // A certificate whose key is another's.
    let other = site.ca.server(&["a.test"], Validity::Current);
    pki::write_atomically(&site.dir.join("a.crt"), &other.cert);
    site.gw.wait_for_failed_reloads(2).await;
    let status = admin.get(&site.gw.admin_url("/status"), &[]).await.json();
    let error = status["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("listeners[0].tls.certificates[0].key") && error.contains("does not match"),
        "{error}"
    );

    // An expired certificate with its own key.
    let expired = site.ca.server(&["a.test"], Validity::Expired);
    expired.write(&site.dir, "a");
    site.gw.wait_for_failed_reloads(3).await;
    let status = admin.get(&site.gw.admin_url("/status"), &[]).await.json();
    assert!(
        status["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{status}"
    );
    assert_eq!(site.connect("a.test").await.unwrap().peer_cert, before);
    assert_eq!(status["generation"], 1);

    // Certificate expiry is exported.
    let metrics = admin.get(&site.gw.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("wicket_tls_certificate_expiry_timestamp_seconds{")
            && text.contains("certificate=\"a.test\"")
            && text.contains("certificate=\"*.b.test\""),
        "{text}"
    );
    assert_eq!(status["tls"][0]["certificates"][0]["name"], "a.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_are_refused_at_start_with_their_location() {
    let dir = scratch_dir("tls-bad");
    let ca = Ca::new("CA");
    ca.server(&["a.test"], Validity::Expired).write(&dir, "old");
    ca.server(&["a.test"], Validity::Current).write(&dir, "a");
    ca.server(&["a.test"], Validity::Current).write(&dir, "dup");
    let cases = [
        (
            "[{ cert: old.crt, key: old.key }]",
            "listeners[0].tls.certificates[0].cert",
            "expired",
        ),
        (
            "[{ cert: missing.crt, key: a.key }]",
            "listeners[0].tls.certificates[0].cert",
            "cannot read",
        ),
        (
            "[{ cert: a.crt, key: dup.key }]",
            "listeners[0].tls.certificates[0].key",
            "does not match",
        ),
        (
            "[{ cert: a.crt, key: a.key }, { cert: dup.crt, key: dup.key }]",
            "listeners[0].tls.certificates[1]",
            "already served",
        ),
        ("[]", "listeners[0].tls.certificates", "at least one"),
    ];
    for (certs, at, what) in cases {
        let path = dir.join("wicket.yaml");
        std::fs::write(
            &path,
            format!(
                "listeners:\n  - address: \"127.0.0.1:0\"\n    tls: {{ certificates: {certs} }}\nupstreams: {{}}\nroutes: []\n"
            ),
        )
        .unwrap();
        let err = wicket::gateway::validate(&path)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(at) && err.contains(what), "{certs}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_required_refuses_clients_without_a_valid_certificate() {
    let site = Site::start("      client_auth: { ca: ca.pem }", false).await;
    let addr = site.gw.gateway.addrs()[0];
    // No certificate: the handshake fails.
    let none = pki::client_config(&site.ca.pem, &["h2"], None);
    let refused = match TlsConn::connect(addr, "a.test", none).await {
        Err(_) => true,
        // TLS 1.3: the server's alert arrives with the first read.
        Ok(mut c) => c.get("a.test", "/r").await.is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
    // A certificate from another CA: refused too.
    let stranger = Ca::new("Other CA").client("intruder", "intruder.test");
    let config = pki::client_config(&site.ca.pem, &["h2"], Some(&stranger));
    let refused = match TlsConn::connect(addr, "a.test", config).await {
        Err(_) => true,
        Ok(mut c) => c.get("a.test", "/r").await.is_err(),
    };
    assert!(refused, "a certificate from an unknown CA is refused");
    // A certificate from the CA: served, and plugins see it.
    let client = site.ca.client("svc-a", "svc-a.internal");
    let config = pki::client_config(&site.ca.pem, &["h2"], Some(&client));
    let mut c = TlsConn::connect(addr, "a.test", config).await.unwrap();
    let r = c.get("a.test", "/r").await.unwrap();
    assert_eq!(r.status, 200);
    let subject = r.echoed_header("x-seen-client-subject").unwrap();
    assert_eq!(subject, "O=Wicket Tests,CN=svc-a", "RFC 4514 order");
    assert_eq!(
        r.echoed_header("x-seen-client-sans").as_deref(),
        Some("svc-a.internal")
    );
    use sha2::Digest;
    let fingerprint = wicket::snapshot::hex(&sha2::Sha256::digest(der(&client.cert)));
    assert_eq!(
        r.echoed_header("x-seen-client-sha256").as_deref(),
        Some(fingerprint.as_str())
    );
    // curl with the client certificate.
    let (cert, key) = client.write(&site.dir, "client");
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let (code, out, err) = site.curl(
        "a.test",
        "/r",
        &["--cert", &cert, "--key", &key, "-w", "\n%{http_code}"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n200"), "{out}");
    let (code, _, _) = site.curl("a.test", "/r", &[]);
    assert_ne!(code, 0, "curl without a certificate is refused");
    // Refused handshakes are counted apart from completed ones.
    let text = site.gw.gateway.shared().runtime().metrics().encode();
    let handshakes = |result| {
        let labels = [("role", "proxy"), ("result", result)];
        wicket_tests::metric(&text, "wicket_tls_handshakes_total", &labels).unwrap()
    };
    assert!(handshakes("ok") >= 2.0, "{text}");
    assert!(handshakes("failed") >= 3.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_optional_serves_clients_without_a_certificate() {
    let site = Site::start("      client_auth: { ca: ca.pem, mode: optional }", false).await;
    let mut c = site.connect("a.test").await.unwrap();
    let r = c.get("a.test", "/r").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-seen-client-subject"), None);
    let stranger = Ca::new("Other CA").client("intruder", "intruder.test");
    let config = pki::client_config(&site.ca.pem, &["h2"], Some(&stranger));
    let refused = match TlsConn::connect(site.gw.gateway.addrs()[0], "a.test", config).await {
        Err(_) => true,
        Ok(mut c) => c.get("a.test", "/r").await.is_err(),
    };
    assert!(refused, "a certificate that is presented must verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mtls_auth_policy_admits_only_listed_client_certificates_on_its_route() {
    // The listener verifies any certificate from the CA but does not require
    // one; the mtls-auth plugin on route `m` decides who passes there.
    let site = Site::start("      client_auth: { ca: ca.pem, mode: optional }", false).await;
    // The listed certificate: through, as its consumer.
    let svc_a = site.ca.client("svc-a", "svc-a.internal");
    let r = site.get_as(Some(&svc_a), "m.b.test").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed_header("x-wicket-consumer").as_deref(),
        Some("svc-a")
    );
    assert_eq!(
        r.echoed_header("x-client-subject").as_deref(),
        Some("O=Wicket Tests,CN=svc-a")
    );
    // curl with that certificate and a forged consumer header: the header the
    // upstream receives is the policy's.
    let (cert, key) = svc_a.write(&site.dir, "svc-a");
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let (code, out, err) = site.curl(
        "m.b.test",
        "/r",
        &[
            "--http2",
            "--cert",
            &cert,
            "--key",
            &key,
            "-H",
            "x-wicket-consumer: admin",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["headers"]["x-wicket-consumer"],
        serde_json::json!(["svc-a"])
    );
    // Another certificate from the same CA: verified by the listener, but not
    // listed on this route.
    let svc_b = site.ca.client("svc-b", "svc-b.internal");
    let r = site.get_as(Some(&svc_b), "m.b.test").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "client_certificate_not_allowed");
    // No certificate at all: 401 with the challenge.
    let r = site.get_as(None, "m.b.test").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "client_certificate_required");
    assert_eq!(r.headers["www-authenticate"], r#"MutualTLS realm="wicket""#);
    // A route without the policy still serves that client.
    let r = site.get_as(None, "x.b.test").await;
    assert_eq!(r.status, 200);
    // Decisions are counted under the plugin's metric.
    let text = site.gw.gateway.shared().runtime().metrics().encode();
    for (outcome, at_least) in [
        ("allowed", 2.0),
        ("certificate_not_allowed", 1.0),
        ("missing_certificate", 1.0),
    ] {
        let n = wicket_tests::metric(
            &text,
            "wicket_plugin_auth_decisions_total",
            &[("outcome", outcome)],
        );
        assert!(n.is_some_and(|n| n >= at_least), "{outcome}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_floor_refuses_tls12_clients() {
    let site = Site::start("      min_version: 1.3", false).await;
    let (code, _, err) = site.curl("a.test", "/r", &["--tls-max", "1.2"]);
    assert_ne!(code, 0, "TLS 1.2 refused: {err}");
    let (code, out, err) = site.curl("a.test", "/r", &["-w", "\n%{http_code}"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n200"));
    // The default floor is 1.2.
    let site = Site::start("", false).await;
    let (code, out, err) = site.curl(
        "a.test",
        "/r",
        &["--tls-max", "1.2", "-w", "\n%{http_code}"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_stalled_tls_handshake_is_closed_at_the_handshake_timeout() {
    let site = Site::start("", false).await;
    let addr = site.gw.gateway.addrs()[0];
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x00, 0xff, 0x01][..]] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        s.write_all(first).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the gateway, not by the test's timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    let text = site.gw.gateway.shared().runtime().metrics().encode();
    let timeout = [("role", "proxy"), ("result", "timeout")];
    let timeouts = wicket_tests::metric(&text, "wicket_tls_handshakes_total", &timeout);
    assert_eq!(timeouts, Some(2.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_listener_sends_clients_to_https() {
    let dir = scratch_dir("redirect");
    let path = dir.join("wicket.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: \"127.0.0.1:0\"\n    redirect_https: { port: 8443 }\n  - address: \"127.0.0.1:0\"\n    redirect_https: {}\nupstreams: {}\nroutes: []\n",
    )
    .unwrap();
    let gw = TestGateway::start_file(path, wicket::Clock::system(), false).await;
    let c = HttpClient::new();
    let url = format!("http://{}/a/../b?x=1", gw.gateway.addrs()[0]);
    let r = c.get(&url, &[("host", "Shop.Example")]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://shop.example:8443/b?x=1")
    );
    let url = format!("http://{}/", gw.gateway.addrs()[1]);
    let r = c.get(&url, &[("host", "shop.example:8080")]).await;
    assert_eq!(r.header("location"), Some("https://shop.example/"));
    // The trust-boundary checks still come first.
    let r = c.get(&url, &[("host", "bad host")]).await;
    assert_eq!(r.status, 400);
}

/// An HTTPS echo origin: hyper's auto server (HTTP/1.1 and h2 by ALPN)
/// over TLS with `cert`, asking for a client certificate from `client_ca`
/// when given. Answers `{"alpn", "version", "client"}`.
async fn https_origin(cert: &pki::Issued, client_ca: Option<&Ca>) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
                .unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
    };
    let mut config = builder
        .with_single_cert(
            rustls_pki_types::CertificateDer::pem_slice_iter(cert.cert.as_bytes())
                .map(|c| c.unwrap())
                .collect(),
            rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let alpn = session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                let client = session.peer_certificates().is_some();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let json = serde_json::json!({
                            "alpn": alpn,
                            "version": format!("{:?}", req.version()),
                            "client_cert": client,
                            "path": req.uri().path(),
                        });
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(json.to_string())),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_over_tls_verify_their_certificate_and_speak_http1_or_h2() {
    let ca = Ca::new("Upstream CA");
    let client_ca = Ca::new("Gateway client CA");
    let origin = https_origin(&ca.server(&["origin.internal"], Validity::Current), None).await;
    let mtls_origin = https_origin(
        &ca.server(&["origin.internal"], Validity::Current),
        Some(&client_ca),
    )
    .await;
    let dir = scratch_dir("upstream-tls");
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    client_ca
        .client("wicket", "wicket.internal")
        .write(&dir, "gateway-client");
    let yaml = format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
upstreams:
  h1: {{ tls: {{ server_name: origin.internal, ca: ca.pem }}, endpoints: [{{ address: "{origin}" }}] }}
  h2: {{ protocol: h2, tls: {{ server_name: origin.internal, ca: ca.pem }}, endpoints: [{{ address: "{origin}" }}] }}
  wrong-name: {{ tls: {{ server_name: other.internal, ca: ca.pem }}, endpoints: [{{ address: "{origin}" }}] }}
  system-roots: {{ tls: {{ server_name: origin.internal }}, endpoints: [{{ address: "{origin}" }}] }}
  unverified: {{ tls: {{ verify: false }}, endpoints: [{{ address: "{origin}" }}] }}
  mtls:
    tls:
      server_name: origin.internal
      ca: ca.pem
      client_certificate: {{ cert: gateway-client.crt, key: gateway-client.key }}
    endpoints: [{{ address: "{mtls_origin}" }}]
  mtls-without: {{ tls: {{ server_name: origin.internal, ca: ca.pem }}, endpoints: [{{ address: "{mtls_origin}" }}] }}
routes:
  - {{ name: h1, match: {{ path: "/h1" }}, upstream: h1 }}
  - {{ name: h2, match: {{ path: "/h2" }}, upstream: h2 }}
  - {{ name: wrong-name, match: {{ path: "/wrong-name" }}, upstream: wrong-name }}
  - {{ name: system-roots, match: {{ path: "/system-roots" }}, upstream: system-roots }}
  - {{ name: unverified, match: {{ path: "/unverified" }}, upstream: unverified }}
  - {{ name: mtls, match: {{ path: "/mtls" }}, upstream: mtls }}
  - {{ name: mtls-without, match: {{ path: "/mtls-without" }}, upstream: mtls-without }}
"#
    );
    let config_path = dir.join("wicket.yaml");
    std::fs::write(&config_path, fill(&yaml, &[])).unwrap();
    let gw = TestGateway::start_file(config_path, wicket::Clock::system(), false).await;
    let c = HttpClient::new();

    let r = c.get(&gw.url("/h1"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["alpn"], "http/1.1");
    assert_eq!(r.json()["version"], "HTTP/1.1");
    for _ in 0..3 {
        let r = c.get(&gw.url("/h2"), &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["alpn"], "h2");
        assert_eq!(r.json()["version"], "HTTP/2.0");
    }
    // Verification is on by default: a wrong name, or a CA only the test
    // knows (not among the system's roots), is refused as a certificate
    // failure.
    for path in ["/wrong-name", "/system-roots"] {
        let r = c.get(&gw.url(path), &[]).await;
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.json()["error"], "upstream_certificate_invalid", "{path}");
    }
    let r = c.get(&gw.url("/unverified"), &[]).await;
    assert_eq!(r.status, 200);
    // Mutual TLS to the upstream.
    let r = c.get(&gw.url("/mtls"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["client_cert"], true);
    let r = c.get(&gw.url("/mtls-without"), &[]).await;
    assert_eq!(r.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_protocol_settings_that_cannot_work_are_refused() {
    let dir = scratch_dir("upstream-bad");
    for (upstream, at, what) in [
        ("{ protocol: h2, endpoints: [{ address: \"127.0.0.1:1\" }] }", "upstreams.u.protocol", "set tls"),
        (
            "{ protocol: h2c, tls: {}, endpoints: [{ address: \"127.0.0.1:1\" }] }",
            "upstreams.u.protocol",
            "cleartext",
        ),
        (
            "{ tls: { ca: missing.pem }, endpoints: [{ address: \"127.0.0.1:1\" }] }",
            "upstreams.u.tls.ca",
            "cannot read",
        ),
        (
            "{ protocol: h2c, endpoints: [{ address: \"127.0.0.1:1\" }] }\nroutes: [{ name: r, match: { path: \"/\" }, upstream: u, websocket: {} }]",
            "routes[0].websocket",
            "http1",
        ),
    ] {
        let path = dir.join("wicket.yaml");
        let routes = if upstream.contains("routes:") { "" } else { "\nroutes: []" };
        std::fs::write(
            &path,
            format!("listeners: [{{ address: \"127.0.0.1:0\" }}]\nupstreams:\n  u: {upstream}{routes}\n"),
        )
        .unwrap();
        let err = wicket::gateway::validate(&path).await.unwrap_err().to_string();
        assert!(err.contains(at) && err.contains(what), "{upstream}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_ca_changed_on_disk_is_applied_and_a_broken_one_keeps_the_last() {
    let (ca, other) = (Ca::new("Upstream CA"), Ca::new("Another CA"));
    let origin = https_origin(&ca.server(&["origin.internal"], Validity::Current), None).await;
    let dir = scratch_dir("upstream-tls-watch");
    // Written aside and renamed in, as an operator (or a secret mount) does.
    let put = |pem: &str| {
        std::fs::write(dir.join("ca.pem.new"), pem).unwrap();
        std::fs::rename(dir.join("ca.pem.new"), dir.join("ca.pem")).unwrap();
    };
    put(&ca.pem);
    let yaml = format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
watch_debounce_ms: 50
upstreams:
  o: {{ tls: {{ server_name: origin.internal, ca: ca.pem }}, endpoints: [{{ address: "{origin}" }}] }}
routes: [{{ name: o, match: {{ path: "/{{*p}}" }}, upstream: o }}]
"#
    );
    let config_path = dir.join("wicket.yaml");
    std::fs::write(&config_path, fill(&yaml, &[])).unwrap();
    let gw = TestGateway::start_file(config_path, wicket::Clock::system(), true).await;
    let c = HttpClient::new();
    assert_eq!(c.get(&gw.url("/x"), &[]).await.status, 200);
    let metrics = gw.gateway.shared().runtime().metrics().clone();

    // A broken bundle is refused at its field; the last one keeps serving.
    put("not a certificate\n");
    until("the broken bundle is refused", || {
        metrics.reload_count("error") >= 1
    })
    .await;
    assert_eq!(c.get(&gw.url("/x"), &[]).await.status, 200);
    let error = gw.gateway.shared().status().last_error.unwrap_or_default();
    assert!(error.contains("upstreams.o.tls.ca"), "{error}");

    // A bundle without the origin's CA: applied, and new connections refuse
    // the origin's certificate.
    put(&other.pem);
    until("the new bundle is applied", || {
        metrics.reload_count("ok") >= 1
    })
    .await;
    let r = c.get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.json()["error"], "upstream_certificate_invalid");

    // And back.
    put(&ca.pem);
    until("the first bundle is applied again", || {
        metrics.reload_count("ok") >= 2
    })
    .await;
    assert_eq!(c.get(&gw.url("/x"), &[]).await.status, 200);
}

/// Wait (up to 10 s) until `ok` holds.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
