//! WebSocket through the gateway with a real client and server
//! (tokio-tungstenite): auth runs before the upgrade, the tunnel opens only
//! on the upstream's 101, routes without `websocket` strip the upgrade, and
//! tunnels end at their idle timeout and at the drain deadline. Over
//! HTTP/2 too (RFC 8441: hyper's client sends the extended CONNECT,
//! tungstenite speaks WebSocket on the stream).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wicket_tests::{backend, fill, Backend, HttpClient, TestGateway};

/// A WebSocket echo server; counts the handshakes it accepted.
async fn echo_server() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                count.fetch_add(1, SeqCst);
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn gateway(ws: std::net::SocketAddr, plain: &Backend, extra: &str) -> TestGateway {
    let yaml = fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
drain_timeout_ms: 300
plugins:
  key-auth: {{ module: "{{plugin:key-auth}}" }}
upstreams:
  ws: {{ endpoints: [{{ address: "{ws}" }}] }}
  plain: {{ endpoints: [{{ address: "{{backend:plain}}" }}] }}
routes:
  - name: chat
    match: {{ path: "/chat" }}
    upstream: ws
    websocket: {{ {extra} }}
    plugins:
      - {{ name: key-auth, config: {{ keys: {{ "k-alice": alice }} }} }}
  - name: chat-get
    match: {{ path: "/chat-get", methods: [GET] }}
    upstream: ws
    websocket: {{}}
  - name: not-ws
    match: {{ path: "/plain" }}
    upstream: plain
    websocket: {{}}
  - name: no-upgrades
    match: {{ path: "/no-upgrades" }}
    upstream: plain
"#
        ),
        &[("plain", plain)],
    );
    TestGateway::start(&yaml).await
}

/// An HTTP/2 connection to the gateway (h2c, prior knowledge) that has
/// seen the gateway's SETTINGS, so it knows extended CONNECT is on.
async fn h2_connection(
    gw: &TestGateway,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let mut send = wicket_tests::h2c(gw.gateway.addrs()[0]).await;
    // As a browser does, wait for the server's SETTINGS: the answer to a
    // first request comes after them.
    h2_get(&mut send, gw, "/no-upgrades").await;
    send
}

/// A plain GET on `send`'s connection; its status.
async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    gw: &TestGateway,
    path: &str,
) -> u16 {
    let req = http::Request::get(format!("http://{}{path}", gw.gateway.addrs()[0]))
        .body(http_body_util::Empty::new())
        .unwrap();
    send.send_request(req).await.unwrap().status().as_u16()
}

type H2Socket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// A WebSocket over HTTP/2 (RFC 8441) on `send`'s connection, or the
/// status and body the gateway answered instead.
async fn h2_websocket(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
    key: Option<&str>,
) -> Result<H2Socket, (u16, serde_json::Value)> {
    use http_body_util::BodyExt;
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("http://chat.test{path}"))
        .header("sec-websocket-version", "13");
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let mut req = req.body(http_body_util::Empty::new()).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = send.send_request(req).await.unwrap();
    if resp.status() != 200 {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        return Err((status, serde_json::from_slice(&body).unwrap_or_default()));
    }
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await)
}

async fn echoes(ws: &mut H2Socket, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), text);
}

fn ws_request(gw: &TestGateway, path: &str, key: Option<&str>) -> http::Request<()> {
    let mut req = format!("ws://{}{path}", gw.gateway.addrs()[0])
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("x-api-key", k.parse().unwrap());
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_works_through_the_gateway_after_auth() {
    let (ws, accepted) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "").await;
    let (mut client, resp) =
        tokio_tungstenite::connect_async(ws_request(&gw, "/chat", Some("k-alice")))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let text = format!("hello {i}");
        client.send(Message::text(text.clone())).await.unwrap();
        let echoed = client.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    client
        .send(Message::binary(vec![7u8; 100_000]))
        .await
        .unwrap();
    assert_eq!(client.next().await.unwrap().unwrap().len(), 100_000);
    // The closing handshake: our Close, the server's, then the end.
    client.close(None).await.unwrap();
    while let Some(Ok(_)) = client.next().await {}
    drop(client);
    assert_eq!(accepted.load(SeqCst), 1);

    // The tunnel's bytes are counted once it has closed.
    let admin = HttpClient::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = admin.get(&gw.admin_url("/metrics"), &[]).await;
        let text = String::from_utf8_lossy(&m.body).to_string();
        if text.contains("wicket_websocket_tunnels_total{route=\"chat\",end=\"closed\"} 1") {
            let up = text
                .lines()
                .find(|l| {
                    l.starts_with("wicket_websocket_bytes_total{")
                        && l.contains("route=\"chat\"")
                        && l.contains("direction=\"upstream\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap();
            assert!(up > 100_000, "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_without_the_key_is_refused_before_any_upgrade() {
    let (ws, accepted) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "").await;
    let err = tokio_tungstenite::connect_async(ws_request(&gw, "/chat", None))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
    assert_eq!(accepted.load(SeqCst), 0, "the upstream never saw it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_answer_101_gets_no_tunnel() {
    let (ws, _) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "").await;
    // The echo backend answers 200 to the upgrade: the client gets that
    // answer as plain HTTP, and the connection stays HTTP.
    let err = tokio_tungstenite::connect_async(ws_request(&gw, "/plain", None))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 200);
            let body = resp.body().as_deref().unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(body).unwrap();
            // It was asked to upgrade, and refused by answering 200.
            assert_eq!(json["headers"]["upgrade"][0], "websocket");
        }
        other => panic!("expected an HTTP answer, got {other:?}"),
    }
    // A raw client: after the 200, the same connection serves HTTP.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.gateway.addrs()[0])
        .await
        .unwrap();
    s.write_all(
        b"GET /plain HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nGET /plain HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.windows(12).filter(|w| w == b"HTTP/1.1 200").count() < 2 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("two answers in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_websocket_forwards_the_request_without_upgrade() {
    let (ws, _) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "").await;
    let r = HttpClient::new()
        .get(
            &gw.url("/no-upgrades"),
            &[("upgrade", "websocket"), ("connection", "upgrade")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("upgrade"), None);
    assert_eq!(r.echoed_header("connection"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_at_its_idle_timeout() {
    let (ws, _) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "idle_timeout_ms: 300").await;
    let (mut client, _) =
        tokio_tungstenite::connect_async(ws_request(&gw, "/chat", Some("k-alice")))
            .await
            .unwrap();
    client.send(Message::text("ping")).await.unwrap();
    assert!(client.next().await.unwrap().is_ok());
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .expect("closed by the gateway");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "no data, just the end: {end:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_open_tunnels_at_its_deadline() {
    let (ws, _) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "").await;
    let (mut client, _) =
        tokio_tungstenite::connect_async(ws_request(&gw, "/chat", Some("k-alice")))
            .await
            .unwrap();
    client.send(Message::text("ping")).await.unwrap();
    assert!(client.next().await.unwrap().is_ok());
    let started = std::time::Instant::now();
    // drain_timeout_ms is 300: shutdown waits for the tunnel, then cuts it.
    tokio::time::timeout(Duration::from_secs(5), gw.gateway.shutdown())
        .await
        .expect("shutdown finished");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the tunnel was waited for"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .expect("the tunnel is closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_http2_echo_through_the_gateway_after_auth_two_on_one_connection() {
    let (ws, accepted) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "").await;
    let mut send = h2_connection(&gw).await;
    // Auth runs before anything goes upstream.
    let (status, body) = h2_websocket(&mut send, "/chat", None).await.err().unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["error"], "missing_api_key");
    assert_eq!(accepted.load(SeqCst), 0, "the upstream never saw it");
    // Two WebSockets as two streams of the one connection.
    let mut a = h2_websocket(&mut send, "/chat", Some("k-alice"))
        .await
        .unwrap();
    let mut b = h2_websocket(&mut send, "/chat", Some("k-alice"))
        .await
        .unwrap();
    for i in 0..20 {
        echoes(&mut a, &format!("a {i}")).await;
        echoes(&mut b, &format!("b {i}")).await;
    }
    a.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap().len(), 100_000);
    // The closing handshake on one leaves the other working.
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = a.next().await {}
    echoes(&mut b, "still here").await;
    assert_eq!(accepted.load(SeqCst), 2);
    // A route that takes only GET takes WebSocket over HTTP/2 too: the
    // CONNECT is routed as the GET it becomes.
    let mut c = h2_websocket(&mut send, "/chat-get", None).await.unwrap();
    echoes(&mut c, "routed as GET").await;
    // Plain requests share the connection meanwhile.
    assert_eq!(h2_get(&mut send, &gw, "/plain").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_websocket_opens_only_on_the_upstreams_101_and_connect_is_otherwise_refused() {
    let (ws, _) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "").await;
    let mut send = h2_connection(&gw).await;
    // The route allows WebSocket, but its upstream answers the upgrade with
    // 200: over HTTP/2 a 200 would open the client's tunnel, so it is 502.
    let (status, body) = h2_websocket(&mut send, "/plain", None).await.err().unwrap();
    assert_eq!(status, 502, "{body}");
    // A route without `websocket`: the CONNECT is refused, not forwarded.
    let (status, body) = h2_websocket(&mut send, "/no-upgrades", None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 405);
    assert_eq!(body["error"], "connect_not_allowed");
    // The connection is still good for plain requests.
    assert_eq!(h2_get(&mut send, &gw, "/plain").await, 200);
    // A gRPC content type does not turn the refusal into gRPC's HTTP 200,
    // which would read as a tunnel opening.
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri("http://chat.test/no-upgrades")
        .header("content-type", "application/grpc")
        .body(http_body_util::Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    assert_eq!(send.send_request(req).await.unwrap().status(), 405);
    // A plain CONNECT over HTTP/1.1 is refused too (the gateway is no
    // forward proxy), in both request-target forms.
    for target in ["127.0.0.1:9", "/chat"] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(gw.gateway.addrs()[0])
            .await
            .unwrap();
        let head = format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(
            text.starts_with("HTTP/1.1 405") || text.starts_with("HTTP/1.1 400"),
            "{target}: {text}"
        );
        assert!(!text.starts_with("HTTP/1.1 2"), "{target}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_every_http2_tunnel_on_a_connection_at_its_deadline() {
    let (ws, _) = echo_server().await;
    let plain = backend("plain").await;
    let gw = gateway(ws, &plain, "").await;
    let mut send = h2_connection(&gw).await;
    let mut a = h2_websocket(&mut send, "/chat", Some("k-alice"))
        .await
        .unwrap();
    let mut b = h2_websocket(&mut send, "/chat", Some("k-alice"))
        .await
        .unwrap();
    echoes(&mut a, "ping").await;
    echoes(&mut b, "ping").await;
    let started = std::time::Instant::now();
    // drain_timeout_ms is 300: shutdown waits for the tunnels, then cuts
    // both (not only the first one woken).
    tokio::time::timeout(Duration::from_secs(5), gw.gateway.shutdown())
        .await
        .expect("shutdown finished");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the tunnels were waited for"
    );
    for ws in [&mut a, &mut b] {
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the tunnel is closed");
        assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    }
}
