//! gRPC through the gateway with a real gRPC server and client (tonic, with
//! messages written by hand): unary and bidirectional streaming over h2c and
//! TLS upstreams, trailers passed through, `grpc-timeout` honoured, the
//! gateway's own answers as gRPC statuses the client library reads, and
//! gRPC-Web (binary and text) translated to gRPC and back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::{BoxFuture, Service};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;
use wicket_tests::pki::{Ca, Validity};
use wicket_tests::{fill, scratch_dir, TestGateway};

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
    /// The server waits this long before answering.
    #[prost(uint32, tag = "2")]
    delay_ms: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Pong {
    #[prost(string, tag = "1")]
    text: String,
    /// The `:authority` the server saw.
    #[prost(string, tag = "2")]
    authority: String,
    /// The `te` header the server saw.
    #[prost(string, tag = "3")]
    te: String,
}

#[derive(Clone)]
struct Unary {
    authority: String,
    te: String,
}

impl Service<Request<Ping>> for Unary {
    type Response = Response<Pong>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Ping>) -> Self::Future {
        let (authority, te) = (self.authority.clone(), self.te.clone());
        Box::pin(async move {
            let ping = req.into_inner();
            tokio::time::sleep(Duration::from_millis(ping.delay_ms as u64)).await;
            if ping.text == "not-found" {
                return Err(Status::not_found("no such thing"));
            }
            Ok(Response::new(Pong {
                text: ping.text,
                authority,
                te,
            }))
        })
    }
}

type PongStream = Pin<Box<dyn Stream<Item = Result<Pong, Status>> + Send>>;

#[derive(Clone)]
struct Chat;

impl Service<Request<Streaming<Ping>>> for Chat {
    type Response = Response<PongStream>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<Ping>>) -> Self::Future {
        Box::pin(async move {
            let mut inbound = req.into_inner();
            let out = async_stream(move |tx| async move {
                while let Some(Ok(ping)) = inbound.next().await {
                    let pong = Pong {
                        text: format!("re: {}", ping.text),
                        ..Pong::default()
                    };
                    if tx.send(Ok(pong)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(out))
        })
    }
}

/// A stream fed by a task.
fn async_stream<F, Fut>(f: F) -> PongStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Pong, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn dispatch(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let te = req
        .headers()
        .get("te")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Pong, Ping>::default());
    Ok(match req.uri().path() {
        "/test.Echo/Unary" => grpc.unary(Unary { authority, te }, req).await,
        "/test.Echo/Chat" => grpc.streaming(Chat, req).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// A gRPC server on HTTP/2: cleartext, or over TLS with `tls`.
async fn grpc_server(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(dispatch);
                let builder =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .await;
                    }
                    Some(config) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

fn server_tls(ca: &Ca) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let issued = ca.server(&["grpc.internal"], Validity::Current);
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(issued.cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

/// A gateway with routes to an h2c upstream, a TLS (h2) upstream, a dead
/// one and a plugin-guarded one.
async fn gateway() -> TestGateway {
    let h2c = grpc_server(None).await;
    let ca = Ca::new("Upstream CA");
    let tls = grpc_server(Some(server_tls(&ca))).await;
    let dir = scratch_dir("grpc");
    std::fs::write(dir.join("upstream-ca.pem"), &ca.pem).unwrap();
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let yaml = fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
plugins:
  key-auth: {{ module: "{{plugin:key-auth}}" }}
  cors: {{ module: "{{plugin:cors}}" }}
upstreams:
  h2c: {{ protocol: h2c, endpoints: [{{ address: "{h2c}" }}] }}
  tls:
    protocol: h2
    tls: {{ server_name: grpc.internal, ca: upstream-ca.pem }}
    endpoints: [{{ address: "{tls}" }}]
  wrong-name:
    protocol: h2
    tls: {{ server_name: other.internal, ca: upstream-ca.pem }}
    endpoints: [{{ address: "{tls}" }}]
  dead: {{ protocol: h2c, endpoints: [{{ address: "{dead_addr}" }}] }}
routes:
  - {{ name: h2c, match: {{ host: h2c.test, path: "/test.Echo/{{m}}" }}, upstream: h2c }}
  - {{ name: tls, match: {{ host: tls.test, path: "/test.Echo/{{m}}" }}, upstream: tls }}
  - {{ name: wrong-name, match: {{ host: wrong.test, path: "/test.Echo/{{m}}" }}, upstream: wrong-name }}
  - {{ name: dead, match: {{ host: dead.test, path: "/test.Echo/{{m}}" }}, upstream: dead }}
  - name: guarded
    match: {{ host: guarded.test, path: "/test.Echo/{{m}}" }}
    upstream: h2c
    plugins: [{{ name: key-auth, config: {{ keys: {{ "k-1": one }} }} }}]
  - name: browser
    match: {{ host: web.test, path: "/test.Echo/{{m}}" }}
    upstream: h2c
    plugins: [{{ name: cors, config: {{ allow_origins: ["https://app.example"] }} }}]
  - name: browser-dead
    match: {{ host: web-dead.test, path: "/test.Echo/{{m}}" }}
    upstream: dead
    plugins: [{{ name: cors, config: {{ allow_origins: ["https://app.example"] }} }}]
"#
        ),
        &[],
    );
    let config_path = dir.join("wicket.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    TestGateway::start_file(config_path, wicket::Clock::system(), false).await
}

/// A tonic client to the gateway, sending `:authority` `host`.
async fn client(gw: &TestGateway, host: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", gw.gateway.addrs()[0]))
            .unwrap()
            .origin(format!("http://{host}").parse().unwrap())
            .connect()
            .await
            .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn unary(
    c: &mut tonic::client::Grpc<tonic::transport::Channel>,
    req: Request<Ping>,
) -> Result<Pong, Status> {
    c.ready().await.unwrap();
    c.unary(
        req,
        http::uri::PathAndQuery::from_static("/test.Echo/Unary"),
        ProstCodec::<Ping, Pong>::default(),
    )
    .await
    .map(Response::into_inner)
}

fn ping(text: &str) -> Request<Ping> {
    Request::new(Ping {
        text: text.into(),
        delay_ms: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_pass_over_h2c_and_tls_upstreams_with_trailers() {
    let gw = gateway().await;
    for host in ["h2c.test", "tls.test"] {
        let mut c = client(&gw, host).await;
        let pong = unary(&mut c, ping("hello")).await.unwrap();
        assert_eq!(pong.text, "hello", "{host}");
        assert_eq!(pong.authority, host, "the client's authority goes upstream");
        assert_eq!(pong.te, "trailers", "te: trailers is kept");
        // An error status travels in the upstream's trailers.
        let err = unary(&mut c, ping("not-found")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{host}");
        assert_eq!(err.message(), "no such thing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_flows_both_ways_through_the_gateway() {
    let gw = gateway().await;
    for host in ["h2c.test", "tls.test"] {
        let mut c = client(&gw, host).await;
        c.ready().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Ping>(4);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let resp = c
            .streaming(
                Request::new(outbound),
                http::uri::PathAndQuery::from_static("/test.Echo/Chat"),
                ProstCodec::<Ping, Pong>::default(),
            )
            .await
            .unwrap();
        let mut inbound = resp.into_inner();
        // Each answer arrives before the next message is sent: the gateway
        // streams the request body instead of waiting for its end.
        for i in 0..5 {
            tx.send(Ping {
                text: format!("m{i}"),
                delay_ms: 0,
            })
            .await
            .unwrap();
            let pong = tokio::time::timeout(Duration::from_secs(5), inbound.next())
                .await
                .expect("an answer per message")
                .unwrap()
                .unwrap();
            assert_eq!(pong.text, format!("re: m{i}"));
        }
        drop(tx);
        assert!(inbound.next().await.is_none(), "ends with OK trailers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_answers_are_grpc_statuses() {
    let gw = gateway().await;
    // No route.
    let mut c = client(&gw, "nowhere.test").await;
    assert_eq!(
        unary(&mut c, ping("x")).await.unwrap_err().code(),
        Code::Unimplemented
    );
    // Upstream down.
    let mut c = client(&gw, "dead.test").await;
    assert_eq!(
        unary(&mut c, ping("x")).await.unwrap_err().code(),
        Code::Unavailable
    );
    // Upstream's certificate not for its name.
    let mut c = client(&gw, "wrong.test").await;
    assert_eq!(
        unary(&mut c, ping("x")).await.unwrap_err().code(),
        Code::Unavailable
    );
    // A plugin's refusal.
    let mut c = client(&gw, "guarded.test").await;
    let err = unary(&mut c, ping("x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut req = ping("x");
    req.metadata_mut()
        .insert("x-api-key", "k-1".parse().unwrap());
    assert_eq!(unary(&mut c, req).await.unwrap().text, "x");
}

/// One gRPC call framed by hand over HTTP/2 (so no client library enforces
/// the deadline itself): the response head, its trailers, and the time.
async fn raw_call(
    gw: &TestGateway,
    host: &str,
    ping: &Ping,
    timeout: &str,
) -> (http::HeaderMap, http::HeaderMap, Duration) {
    use prost::Message;
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(ping.encoded_len() as u32);
    ping.encode(&mut frame).unwrap();
    // The gateway's address, with `host` as the `:authority`.
    let mut send = wicket_tests::h2c(gw.gateway.addrs()[0]).await;
    let req = http::Request::post(format!("http://{host}/test.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Full::new(frame.freeze()))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = send.send_request(req).await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut trailers = http::HeaderMap::new();
    while let Some(frame) = body.frame().await {
        if let Ok(t) = frame.unwrap().into_trailers() {
            trailers = t;
        }
    }
    (parts.headers, trailers, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_honoured_as_deadline_exceeded() {
    let gw = gateway().await;
    let slow = Ping {
        text: "slow".into(),
        delay_ms: 3_000,
    };
    let (head, trailers, took) = raw_call(&gw, "h2c.test", &slow, "300m").await;
    let status = head.get("grpc-status").or(trailers.get("grpc-status"));
    assert_eq!(
        status.map(|v| v.to_str().unwrap()),
        Some("4"),
        "{head:?} {trailers:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A call within its deadline is served.
    let quick = Ping {
        text: "quick".into(),
        delay_ms: 0,
    };
    let (_, trailers, _) = raw_call(&gw, "h2c.test", &quick, "5S").await;
    assert_eq!(trailers["grpc-status"], "0");
    // And through tonic, whose own deadline agrees.
    let mut c = client(&gw, "h2c.test").await;
    let mut req = ping("quick");
    req.set_timeout(Duration::from_secs(5));
    assert_eq!(unary(&mut c, req).await.unwrap().text, "quick");
}

/// A gRPC-Web call as a browser library sends it, over HTTP/1.1.
async fn grpc_web(
    gw: &TestGateway,
    host: &str,
    text: bool,
    ping: &Ping,
) -> (u16, http::HeaderMap, Bytes) {
    grpc_web_from(gw, host, text, ping, None).await
}

/// A gRPC-Web call, from a page on `origin` when one is given.
async fn grpc_web_from(
    gw: &TestGateway,
    host: &str,
    text: bool,
    ping: &Ping,
    origin: Option<&str>,
) -> (u16, http::HeaderMap, Bytes) {
    use prost::Message;
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(ping.encoded_len() as u32);
    ping.encode(&mut frame).unwrap();
    let (ct, body) = if text {
        use base64::Engine;
        (
            "application/grpc-web-text",
            Bytes::from(base64::engine::general_purpose::STANDARD.encode(&frame)),
        )
    } else {
        ("application/grpc-web+proto", frame.freeze())
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = http::Request::post(format!("http://{}/test.Echo/Unary", gw.gateway.addrs()[0]))
        .header("host", host)
        .header("content-type", ct)
        .header("x-grpc-web", "1");
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    let req = req.body(Full::new(body)).unwrap();
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let mut body = body.collect().await.unwrap().to_bytes();
    if text {
        use base64::Engine;
        body = Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(&body)
                .unwrap(),
        );
    }
    (parts.status.as_u16(), parts.headers, body)
}

/// Split a gRPC-Web body into its message and its trailer block.
fn web_frames(mut body: Bytes) -> (Vec<Bytes>, String) {
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        let payload = body.split_to(len);
        if flags & 0x80 != 0 {
            trailers = String::from_utf8(payload.to_vec()).unwrap();
        } else {
            messages.push(payload);
        }
    }
    (messages, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_binary_and_text_are_translated_to_grpc_and_back() {
    use prost::Message;
    let gw = gateway().await;
    for text in [false, true] {
        let (status, headers, body) = grpc_web(
            &gw,
            "h2c.test",
            text,
            &Ping {
                text: "from a browser".into(),
                delay_ms: 0,
            },
        )
        .await;
        assert_eq!(status, 200);
        let ct = headers["content-type"].to_str().unwrap();
        assert_eq!(
            ct,
            if text {
                "application/grpc-web-text"
            } else {
                "application/grpc-web+proto"
            }
        );
        let (messages, trailers) = web_frames(body);
        assert_eq!(messages.len(), 1, "text={text}");
        assert_eq!(
            Pong::decode(messages[0].clone()).unwrap().text,
            "from a browser"
        );
        assert!(
            trailers.contains("grpc-status:0\r\n"),
            "text={text}: {trailers:?}"
        );
    }
    // An error status reaches the browser: in the trailer frame, or in the
    // head of a trailers-only answer (as tonic sends errors).
    let (_, headers, body) = grpc_web(
        &gw,
        "h2c.test",
        false,
        &Ping {
            text: "not-found".into(),
            delay_ms: 0,
        },
    )
    .await;
    let (_, trailers) = web_frames(body);
    assert!(
        trailers.contains("grpc-status:5\r\n")
            || headers.get("grpc-status").is_some_and(|v| v == "5"),
        "{headers:?} {trailers:?}"
    );
    // The gateway's own refusal is a gRPC-Web status in the head.
    let ping = Ping {
        text: "x".into(),
        delay_ms: 0,
    };
    let (status, headers, _) = grpc_web(&gw, "guarded.test", false, &ping).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "16");
}

/// A browser's CORS preflight for a gRPC-Web call from `origin`.
async fn preflight(gw: &TestGateway, host: &str, origin: &str) -> (u16, http::HeaderMap, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method("OPTIONS")
        .uri(format!("http://{}/test.Echo/Unary", gw.gateway.addrs()[0]))
        .header("host", host)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-user-agent",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_page_on_an_allowed_origin_passes_its_preflight_and_reads_every_answer() {
    use prost::Message;
    let gw = gateway().await;
    let page = "https://app.example";
    // The preflight is answered by the cors policy, never by the upstream.
    let (status, headers, _) = preflight(&gw, "web.test", page).await;
    assert_eq!(status, 204, "{headers:?}");
    assert_eq!(headers["access-control-allow-origin"], page);
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    for h in ["content-type", "x-grpc-web", "x-user-agent"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    // The call itself, binary and text: answered, and readable by the page.
    let ping = Ping {
        text: "from a page".into(),
        delay_ms: 0,
    };
    for text in [false, true] {
        let (status, headers, body) = grpc_web_from(&gw, "web.test", text, &ping, Some(page)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["access-control-allow-origin"], page);
        let exposed = headers["access-control-expose-headers"].to_str().unwrap();
        assert!(exposed.contains("grpc-status") && exposed.contains("grpc-message"));
        let (messages, trailers) = web_frames(body);
        assert_eq!(
            Pong::decode(messages[0].clone()).unwrap().text,
            "from a page"
        );
        assert!(trailers.contains("grpc-status:0\r\n"), "{trailers:?}");
    }
    // A dead upstream: the gateway's own gRPC-Web status, still readable.
    let (status, headers, _) = grpc_web_from(&gw, "web-dead.test", false, &ping, Some(page)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "14");
    assert_eq!(headers["access-control-allow-origin"], page);
    // Another origin: its preflight is refused, and a call made anyway
    // (not from a browser) carries no grant.
    let (status, headers, body) = preflight(&gw, "web.test", "https://evil.example").await;
    assert_eq!(status, 403);
    assert!(headers.get("access-control-allow-origin").is_none());
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "cors_origin_not_allowed");
    let (status, headers, _) =
        grpc_web_from(&gw, "web.test", false, &ping, Some("https://evil.example")).await;
    assert_eq!(status, 200);
    assert!(headers.get("access-control-allow-origin").is_none());
    // Without the policy, a preflight is the upstream's (a gRPC server does
    // not answer OPTIONS with a grant).
    let (_, headers, _) = preflight(&gw, "h2c.test", page).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_still_open_at_its_grpc_timeout_ends_with_deadline_exceeded() {
    let gw = gateway().await;
    let mut send = wicket_tests::h2c(gw.gateway.addrs()[0]).await;
    // A request body that never ends: the stream stays open.
    let (_keep, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = http::Request::post("http://h2c.test/test.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "400m")
        .body(body)
        .unwrap();
    let started = std::time::Instant::now();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "the head arrives at once");
    let mut body = resp.into_body();
    let mut trailers = http::HeaderMap::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the gateway ends the stream")
    {
        if let Ok(t) = frame.unwrap().into_trailers() {
            trailers = t;
        }
    }
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    assert!(started.elapsed() >= Duration::from_millis(350));
}
