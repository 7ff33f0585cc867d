//! The request path, top to bottom.
//!
//! ```text
//!  client ──▶ 1. admit ──▶ 2. route ──▶ 3. prepare ──▶ 4. plugins on-request ──┐
//!            (limits, one authority,                   (in order; one may respond)
//!             one normalised path)                                             ▼
//!  client ◀── 8. log ◀── 7. finish ◀── 6. plugins on-response ◀── 5. upstream
//!                                      (reverse order; may replace)   (skipped if a
//!                                                                      plugin responded)
//! ```
//!
//! What step 1 decides — the authority and the normalised path — is what
//! routes match, what plugins see and what the upstream receives.
//!
//! Each request reads the current [`Snapshot`] once (the caller passes it) and
//! is served wholly by it. Every failure becomes a [`ProxyError`] with one
//! status and one JSON body; `on-response` still runs after an upstream
//! failure so plugins can replace the gateway's error reply.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::body::Body;
use crate::chain;
use crate::error::{ErrorCode, ProxyError};
use crate::plugin::{OutcomeResult, RequestInfo, UpstreamOutcome};
use crate::request::{self, Authority, Conn, RequestBody, RequestId};
use crate::router::Lookup;
use crate::snapshot::Snapshot;

/// Serve one request with `snapshot`.
pub async fn handle(snapshot: Arc<Snapshot>, req: Request<Incoming>, conn: Conn) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let begun = Begun::new(&snapshot, &parts, &conn);
    let listener = snapshot.listener(conn.listener);
    let grpc = grpc_kind(&parts);

    // 1. Admit: head within limits, one authority (covered by the TLS
    //    certificate, if any), one normalised path.
    let authority = match request::admit(listener, &mut parts)
        .and_then(|a| request::check_tls(&conn, &a).map(|()| a))
    {
        Ok(a) => a,
        Err(e) => return finish_early(&snapshot, e.into(), &parts, body, "", &begun),
    };
    if let Some(trace) = &begun.trace {
        trace.request(authority.as_str(), parts.uri.path(), parts.version, &conn);
    }
    if let Some(port) = listener.redirect_https {
        return redirect_https(&snapshot, &authority, port, &parts, body, &begun);
    }
    // 2. Route: host, path, method → route and path parameters.
    let (route, params) = match route(&snapshot, &authority, &parts) {
        Ok(found) => found,
        Err(e) => return finish_early(&snapshot, e, &parts, body, authority.as_str(), &begun),
    };
    // 3. Prepare: the body bounded, hop-by-hop headers out, forwarding headers in.
    let max_body = route.max_body_bytes.unwrap_or(listener.max_body_bytes);
    let mut body = match RequestBody::new(body, &parts.headers, max_body, listener.body_idle) {
        Ok(b) => b,
        Err(e) => {
            return finish_early(
                &snapshot,
                e.into(),
                &parts,
                None,
                authority.as_str(),
                &begun,
            )
        }
    };
    if let Some(trace) = &begun.trace {
        trace.routed(&route.name, &begun.id);
    }
    let bytes_in = snapshot.access_log.as_ref().and_then(|_| body.count_read());
    // A WebSocket upgrade the route allows keeps the client's side of the
    // connection (or HTTP/2 stream) for the tunnel; any other upgrade is
    // stripped below.
    let upgrade = match websocket_upgrade(route, &mut parts) {
        Ok(u) => u,
        Err(e) => {
            let at = authority.as_str();
            return finish_early(&snapshot, e.into(), &parts, None, at, &begun);
        }
    };
    let authority = authority.into_string();
    prepare_request(&mut parts, &conn, &authority);
    parts
        .headers
        .insert(snapshot.request_id_header.clone(), begun.id_value.clone());
    if upgrade.is_some() {
        keep_upgrade_headers(&mut parts.headers);
    }
    let exchange = Exchange::new(grpc.as_ref(), &mut parts.headers);
    let info = Arc::new(RequestInfo {
        scheme: conn.scheme,
        authority,
        client: conn.client,
        route: route.name.clone(),
        path: parts.uri.path().to_string(),
        params,
        request_id: begun.id.clone(),
        tls: conn.tls.clone(),
    });
    // 4. Plugins, on-request, in chain order.
    let trace = begun.trace.as_ref();
    let mut pass = chain::on_request(&snapshot, route, &mut parts, &info, trace).await;
    // 5. Upstream, unless a plugin already answered.
    let (outcome, resp) = match pass.short_circuit.take() {
        Some(resp) => (skipped(), resp),
        None => {
            // The head is moved, not copied, into the upstream request unless
            // an `on-response` hook will still read it.
            let headers = if pass.runs_on_response(route) {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            let mut headers = headers;
            let exchange = Exchange {
                upgrade: upgrade.is_some() && pass.upstream.is_http1(),
                ..exchange
            };
            if !exchange.upgrade {
                // A plugin chose an upstream that cannot upgrade: a plain request.
                headers.remove(header::UPGRADE);
                headers.remove(header::CONNECTION);
            }
            let span = trace.map(|t| t.upstream(pass.upstream.name(), &mut headers));
            let called =
                call_upstream(&pass.upstream, &parts, headers, body, &info, exchange).await;
            if let Some(span) = span {
                span.end(&called.0);
            }
            called
        }
    };
    // 6. Plugins, on-response, in reverse order.
    let mut resp =
        chain::on_response(route, &mut pass, &mut parts, &info, &outcome, resp, trace).await;
    // 7. Finish: plugins' response headers, hop-by-hop headers out; on the
    //    upstream's 101, the tunnel opens.
    finish_response(&snapshot, &mut resp, pass.response_headers);
    if let Some(ws) = upgrade {
        open_tunnel(&snapshot, &mut resp, ws, route, &conn, &info);
    }
    let error = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    let resp = finish_grpc(grpc.as_ref(), resp);
    // 8. Log and count.
    let steps = pass.steps.take();
    let served = Served {
        route: Some(route),
        upstream: Some(pass.upstream.name()),
        authority: &info.authority,
        path: &info.path,
        outcome: &outcome,
        error,
        steps,
        bytes_in,
    };
    record(&snapshot, &parts, served, resp, &begun)
}

/// The request's gRPC kind. A CONNECT is never gRPC, whatever its
/// `content-type`: its answer must keep its status (a 2xx to CONNECT opens
/// a tunnel), and gRPC answers are always 200.
fn grpc_kind(parts: &http::request::Parts) -> Option<crate::grpc::Kind> {
    if parts.method == http::Method::CONNECT {
        return None;
    }
    crate::grpc::kind(&parts.headers)
}

fn route<'s>(
    snapshot: &'s Snapshot,
    authority: &Authority,
    parts: &http::request::Parts,
) -> Result<(&'s crate::snapshot::Route, crate::router::Params), ProxyError> {
    // A CONNECT that got here is an HTTP/2 WebSocket (`admit` refused the
    // rest): it is routed as the GET it becomes, so `methods: [GET]` routes
    // take WebSocket over either HTTP version alike.
    let method = if parts.method == http::Method::CONNECT {
        &http::Method::GET
    } else {
        &parts.method
    };
    snapshot
        .lookup(authority.host(), method, parts.uri.path())
        .map_err(|lookup| match lookup {
            Lookup::MethodNotAllowed(allow) => ProxyError::MethodNotAllowed {
                method: parts.method.to_string(),
                allow: allow
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            _ => ProxyError::NoRoute {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
            },
        })
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the `Connection` header nominates are hop-by-hop too (most
    // messages have none: no list is built for them).
    if headers.contains_key(header::CONNECTION) {
        let nominated: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in &nominated {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn prepare_request(parts: &mut http::request::Parts, conn: &Conn, authority: &str) {
    strip_hop_by_hop(&mut parts.headers);
    // Upstreams speak HTTP/1.1 whatever the client used; the path and query
    // are all the upstream URI keeps (the endpoint is chosen later).
    parts.version = Version::HTTP_11;
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = http::Uri::from(pq);
    }
    // The authority routed is the authority forwarded, in `Host` and
    // `X-Forwarded-Host` alike.
    if let Ok(v) = HeaderValue::from_str(authority) {
        parts.headers.insert(X_FORWARDED_HOST, v.clone());
        parts.headers.insert(header::HOST, v);
    }
    // Append to X-Forwarded-For (as nginx's $proxy_add_x_forwarded_for does);
    // set Proto to what this hop saw. Written once into one buffer that
    // becomes the header value uncopied.
    let mut xff = bytes::BytesMut::with_capacity(64);
    if let Some(prev) = parts.headers.get(X_FORWARDED_FOR) {
        xff.extend_from_slice(prev.as_bytes());
        xff.extend_from_slice(b", ");
    }
    {
        use std::fmt::Write;
        let _ = write!(xff, "{}", conn.client.ip());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(xff.freeze()) {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));
}

/// The client's side of a WebSocket handshake its route allows.
struct WebSocket {
    client: hyper::upgrade::OnUpgrade,
    /// The route's tunnel idle timeout.
    idle: std::time::Duration,
    /// Over HTTP/2 (RFC 8441): the `Sec-WebSocket-Key` the gateway sent
    /// upstream in the client's stead, whose accept it checks before
    /// answering the client's CONNECT with 200.
    key: Option<HeaderValue>,
}

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// A WebSocket handshake on a route that allows it: an HTTP/1.1 GET with
/// `Upgrade: websocket` and `Connection: upgrade`, or an HTTP/2 CONNECT
/// with `:protocol: websocket` (RFC 8441), which becomes that GET upstream
/// (a fresh key; version, subprotocols and extensions as the client sent
/// them) — so plugins and upstreams see one kind of handshake. Any other
/// CONNECT is refused (405): answered 2xx, it would open a tunnel.
fn websocket_upgrade(
    route: &crate::snapshot::Route,
    parts: &mut http::request::Parts,
) -> Result<Option<WebSocket>, request::Refusal> {
    if parts.method == http::Method::CONNECT {
        let websocket = parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == "websocket");
        let (Some(idle), true) = (route.websocket, websocket) else {
            return Err(request::Refusal::Connect);
        };
        let client = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(request::Refusal::Connect)?;
        parts.extensions.remove::<hyper::ext::Protocol>();
        parts.method = http::Method::GET;
        let key = websocket_key();
        parts.headers.insert(SEC_WEBSOCKET_KEY, key.clone());
        return Ok(Some(WebSocket {
            client,
            idle,
            key: Some(key),
        }));
    }
    let Some(idle) = route.websocket else {
        return Ok(None);
    };
    let h = &parts.headers;
    let is_websocket = parts.version == Version::HTTP_11
        && parts.method == http::Method::GET
        && h.get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !is_websocket {
        return Ok(None);
    }
    Ok(parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .map(|client| WebSocket {
            client,
            idle,
            key: None,
        }))
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
fn websocket_key() -> HeaderValue {
    use base64::Engine;
    let nonce: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

/// Whether `headers` carry the `Sec-WebSocket-Accept` that answers `key`
/// (RFC 6455 §4.2.2): proof the upstream is a WebSocket server that read
/// this handshake, not something that answers 101 to anything.
fn accepts(headers: &HeaderMap, key: &HeaderValue) -> bool {
    use base64::Engine;
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let expected = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    headers
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

fn keep_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// After `on-response`: a 101 that came from the upstream (its upgraded
/// connection is in the response) opens the tunnel. Anything else that
/// would leave the client holding a tunnel to nothing is 502 instead: a 101
/// without the upstream's connection (no plugin can produce one), and over
/// HTTP/2 any 2xx — there a 2xx *is* the tunnel opening — or a 101 whose
/// accept key is wrong.
fn open_tunnel(
    snapshot: &Snapshot,
    resp: &mut Response<Body>,
    ws: WebSocket,
    route: &crate::snapshot::Route,
    conn: &Conn,
    info: &RequestInfo,
) {
    let no_tunnel = |resp: &mut Response<Body>| {
        let e = ProxyError::Upstream {
            upstream: String::new(),
            kind: crate::upstream::UpstreamErrorKind::Protocol,
        };
        *resp = e.to_response(&info.request_id);
    };
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        if ws.key.is_some() && resp.status().is_success() {
            tracing::warn!(request_id = %info.request_id, route = &*route.name, status = resp.status().as_u16(), "HTTP/2 WebSocket answered 2xx without the upstream's 101; refused");
            no_tunnel(resp);
        }
        return;
    }
    let Some(upstream) = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        no_tunnel(resp);
        return;
    };
    match &ws.key {
        Some(key) => {
            if !accepts(resp.headers(), key) {
                tracing::warn!(request_id = %info.request_id, route = &*route.name, "upstream's 101 carries a wrong Sec-WebSocket-Accept; no tunnel");
                no_tunnel(resp);
                return;
            }
            // RFC 8441 §5: the CONNECT succeeds with 200; the accept key was
            // the gateway's business. Upgrade and Connection are already
            // gone (hop-by-hop).
            *resp.status_mut() = http::StatusCode::OK;
            resp.headers_mut().remove(SEC_WEBSOCKET_ACCEPT);
            // A 2xx to CONNECT carries no body (hyper resets one that says so).
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        None => keep_upgrade_headers(resp.headers_mut()),
    }
    crate::tunnel::spawn(
        ws.client,
        upstream,
        ws.idle,
        conn.hold.as_ref().map(|h| h.tunnel()),
        snapshot.metrics_arc(),
        route.name.clone(),
        info.request_id.clone(),
    );
}

fn skipped() -> UpstreamOutcome {
    UpstreamOutcome {
        result: OutcomeResult::Skipped,
        latency_us: 0,
        endpoint: None,
        attempts: 0,
    }
}

/// How a request is sent upstream besides the plain exchange.
#[derive(Debug, Clone, Copy, Default)]
struct Exchange {
    /// A WebSocket upgrade, on a connection of its own.
    upgrade: bool,
    /// gRPC: the body streams (never buffered first), `te: trailers` kept.
    stream_body: bool,
    /// gRPC-Web text: the body is base64 to decode.
    decode_base64: bool,
    /// gRPC: the call's own deadline (`grpc-timeout`).
    deadline: Option<std::time::Duration>,
}

impl Exchange {
    /// From the request's gRPC kind, with its head made ready for the
    /// upstream (gRPC-Web becomes gRPC; `te: trailers` for either).
    fn new(grpc: Option<&crate::grpc::Kind>, headers: &mut HeaderMap) -> Exchange {
        let Some(kind) = grpc else {
            return Exchange::default();
        };
        let mut exchange = Exchange {
            stream_body: true,
            deadline: crate::grpc::timeout(headers),
            ..Exchange::default()
        };
        match kind {
            crate::grpc::Kind::Grpc => {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
            crate::grpc::Kind::Web { text, suffix } => {
                crate::grpc::web_head(headers, *text, suffix);
                exchange.decode_base64 = *text;
            }
        }
        exchange
    }
}

/// A gRPC request gets a gRPC answer, whoever gave it (gRPC-Web: encoded
/// back for the browser).
fn finish_grpc(grpc: Option<&crate::grpc::Kind>, resp: Response<Body>) -> Response<Body> {
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // A tunnel opened on this answer: it must reach the client as is.
        return resp;
    }
    match grpc {
        None => resp,
        Some(crate::grpc::Kind::Grpc) => crate::grpc::reframe(resp),
        Some(crate::grpc::Kind::Web { text, suffix }) => {
            crate::grpc::web_response(crate::grpc::reframe(resp), *text, suffix)
        }
    }
}

/// Step 5: the body made ready, then the upstream's one call (pick, send,
/// classify, retry), and its answer turned into the response and outcome.
async fn call_upstream(
    upstream: &crate::upstream::Upstream,
    parts: &http::request::Parts,
    headers: HeaderMap,
    body: RequestBody,
    info: &RequestInfo,
    exchange: Exchange,
) -> (UpstreamOutcome, Response<Body>) {
    let keep = upstream.keeps_body(&parts.method);
    let prepared = match body.into_upstream(exchange.stream_body, keep).await {
        Ok(b) => b,
        Err(refusal) => {
            let e = body_refused(info, refusal);
            return (skipped(), e.to_response(&info.request_id));
        }
    };
    let body = if exchange.decode_base64 {
        crate::grpc::decode_base64(prepared.body)
    } else {
        prepared.body
    };
    let key = upstream.key(&headers, parts.uri.path(), info.client.ip());
    // Read only for a call with a deadline of its own (gRPC): a clock read
    // is not free on every machine.
    let sent = exchange.deadline.map(|_| Instant::now());
    // Boxed: the call's state (every try's) would otherwise be copied into
    // this future, and this one into the connection's, on every request.
    let answer = Box::pin(upstream.call(crate::upstream::Outgoing {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers,
        body,
        replay: prepared.replay,
        key,
        deadline: exchange.deadline,
        upgrade: exchange.upgrade,
        client_fault: prepared.verdict.clone(),
    }))
    .await;
    let outcome = |result| UpstreamOutcome {
        result,
        latency_us: answer.elapsed.as_micros() as u64,
        endpoint: answer.endpoint.map(|a| a.to_string()),
        attempts: answer.attempts,
    };
    match answer.result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            strip_hop_by_hop(resp.headers_mut());
            if let (Some(limit), Some(sent)) = (exchange.deadline, sent) {
                // The deadline covers the whole call, streamed body and all.
                let at = tokio::time::Instant::from_std(sent) + limit;
                resp = resp.map(|b| crate::body::boxed(crate::grpc::Deadline::new(b, at)));
            }
            if !exchange.upgrade && status == 101 {
                // An upstream that switches protocols unasked gets no tunnel.
                tracing::warn!(request_id = %info.request_id, upstream = upstream.name(), "upstream answered 101 to a request that did not ask to upgrade");
                let kind = crate::upstream::UpstreamErrorKind::Protocol;
                let e = ProxyError::Upstream {
                    upstream: upstream.name().to_string(),
                    kind,
                };
                return (
                    outcome(OutcomeResult::Error(kind)),
                    e.to_response(&info.request_id),
                );
            }
            (outcome(OutcomeResult::Status(status)), resp)
        }
        Err(kind) => {
            // A body the client overran or let stall is the client's fault,
            // whatever the upstream made of the cut.
            let e = match prepared.verdict.and_then(|v| v.get().copied()) {
                Some(refusal) => body_refused(info, refusal),
                None => {
                    tracing::warn!(request_id = %info.request_id, upstream = upstream.name(), endpoint = ?answer.endpoint, attempts = answer.attempts, error = %kind, "upstream call failed");
                    ProxyError::Upstream {
                        upstream: upstream.name().to_string(),
                        kind,
                    }
                }
            };
            (
                outcome(OutcomeResult::Error(kind)),
                e.to_response(&info.request_id),
            )
        }
    }
}

fn body_refused(info: &RequestInfo, refusal: request::Refusal) -> ProxyError {
    tracing::info!(request_id = %info.request_id, client = %info.client, reason = %refusal, "request body refused");
    ProxyError::Refused(refusal)
}

fn finish_response(snapshot: &Snapshot, resp: &mut Response<Body>, extra: HeaderMap) {
    // Hop-by-hop headers a plugin may have added must not reach the client.
    strip_hop_by_hop(resp.headers_mut());
    for (name, value) in extra {
        if let Some(name) = name {
            resp.headers_mut().append(name, value);
        }
    }
    stamp_generation(snapshot, resp);
}

fn stamp_generation(snapshot: &Snapshot, resp: &mut Response<Body>) {
    if snapshot.expose_generation {
        resp.headers_mut().insert(
            "x-wicket-generation",
            HeaderValue::from(snapshot.generation),
        );
    }
}

/// A redirect listener's one answer: the same host and target over HTTPS.
fn redirect_https(
    snapshot: &Snapshot,
    authority: &Authority,
    port: u16,
    parts: &http::request::Parts,
    body: Incoming,
    begun: &Begun,
) -> Response<Body> {
    request::linger(body);
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = match port {
        443 => format!("https://{}{target}", authority.host()),
        port => format!("https://{}:{port}{target}", authority.host()),
    };
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    finish_unrouted(snapshot, resp, parts, authority.as_str(), None, begun)
}

/// An answer given before routing: stamped, logged and counted under no route.
fn finish_unrouted(
    snapshot: &Snapshot,
    mut resp: Response<Body>,
    parts: &http::request::Parts,
    authority: &str,
    error: Option<&'static str>,
    begun: &Begun,
) -> Response<Body> {
    stamp_generation(snapshot, &mut resp);
    let served = Served {
        route: None,
        upstream: None,
        authority,
        path: parts.uri.path(),
        outcome: &skipped(),
        error,
        steps: None,
        bytes_in: None,
    };
    record(snapshot, parts, served, resp, begun)
}

fn finish_early(
    snapshot: &Snapshot,
    e: ProxyError,
    parts: &http::request::Parts,
    body: impl Into<Option<Incoming>>,
    authority: &str,
    begun: &Begun,
) -> Response<Body> {
    if let ProxyError::Refused(reason) = &e {
        tracing::info!(request_id = %begun.id, client = %begun.client, code = e.code(), reason = %reason, "request refused");
    }
    if let Some(body) = body.into() {
        request::linger(body);
    }
    let resp = finish_grpc(grpc_kind(parts).as_ref(), e.to_response(&begun.id));
    finish_unrouted(snapshot, resp, parts, authority, Some(e.code()), begun)
}

/// What a request's answer came from, for its log line and metrics.
struct Served<'a> {
    route: Option<&'a crate::snapshot::Route>,
    upstream: Option<&'a str>,
    authority: &'a str,
    path: &'a str,
    outcome: &'a UpstreamOutcome,
    error: Option<&'static str>,
    steps: Option<Vec<crate::telemetry::access_log::Step>>,
    bytes_in: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// Step 8: the request id stamped on the answer, the request counted, and
/// its access log line armed to be written when the body has been sent.
fn record(
    snapshot: &Snapshot,
    parts: &http::request::Parts,
    served: Served<'_>,
    mut resp: Response<Body>,
    begun: &Begun,
) -> Response<Body> {
    resp.headers_mut()
        .insert(snapshot.request_id_header.clone(), begun.id_value.clone());
    let head = begun.started.elapsed();
    let status = resp.status().as_u16();
    match served.route {
        Some(r) => r.metrics.request(status, head.as_secs_f64()),
        None => snapshot.metrics().request("", status, head.as_secs_f64()),
    }
    if let Some(code) = served.error.filter(|_| status >= 500) {
        snapshot
            .metrics()
            .recent_errors
            .push(crate::telemetry::recent::RecentError {
                time: crate::telemetry::access_log::rfc3339(begun.time),
                source: "request",
                request_id: Some(begun.id.as_str().to_string()),
                route: served.route.map(|r| r.name.to_string()),
                status: Some(status),
                code: code.to_string(),
                message: resp
                    .extensions()
                    .get::<crate::grpc::ErrorMessage>()
                    .map(|m| m.0.clone())
                    .unwrap_or_default(),
            });
    }
    if let Some(trace) = begun.trace.as_ref().filter(|t| t.recording()) {
        trace.answered(status, served.upstream, served.outcome, served.error);
        let (head, body) = resp.into_parts();
        resp = Response::from_parts(
            head,
            crate::telemetry::trace::Traced::wrap(body, trace.clone()),
        );
    }
    let Some(log) = snapshot.access_log.as_ref().filter(|l| l.wants(status)) else {
        return resp;
    };
    let outcome = served.outcome;
    let record = crate::telemetry::access_log::Record {
        time: begun.time,
        started: begun.started,
        head_us: head.as_micros() as u64,
        request_id: begun.id.clone(),
        trace_id: begun.trace_id,
        client: begun.client,
        method: parts.method.clone(),
        scheme: begun.scheme,
        authority: served.authority.to_string(),
        path: served.path.to_string(),
        version: begun.version,
        status,
        route: served.route.map(|r| r.name.clone()),
        upstream: served.upstream.map(str::to_string),
        endpoint: outcome.endpoint.clone(),
        attempts: outcome.attempts,
        upstream_us: outcome.latency_us,
        upstream_error: match outcome.result {
            OutcomeResult::Error(kind) => Some(kind.label()),
            _ => None,
        },
        error: served.error,
        plugins: served.steps.unwrap_or_default(),
        bytes_in: served.bytes_in,
        generation: snapshot.generation,
    };
    let (head, body) = resp.into_parts();
    let body = crate::telemetry::access_log::Logged::wrap(body, record, log.clone());
    Response::from_parts(head, body)
}

/// What is known of a request from its first moment: its id, when it
/// came, who sent it.
struct Begun {
    id: RequestId,
    /// `id` as a header value, made once for the upstream and the answer.
    id_value: HeaderValue,
    started: Instant,
    time: std::time::SystemTime,
    /// Its server span, when tracing is on.
    trace: Option<crate::telemetry::trace::RequestTrace>,
    /// For the access log: the trace's id, or the caller's when the
    /// request is not traced.
    trace_id: Option<[u8; 32]>,
    client: std::net::SocketAddr,
    scheme: &'static str,
    version: Version,
}

impl Begun {
    fn new(snapshot: &Snapshot, parts: &http::request::Parts, conn: &Conn) -> Begun {
        let headers = &parts.headers;
        let id = RequestId::for_request(
            headers,
            &snapshot.request_id_header,
            snapshot.accept_request_id,
        );
        let time = std::time::SystemTime::now();
        let trace = snapshot
            .tracing
            .as_ref()
            .map(|t| t.start(headers, &parts.method, time));
        let trace_id = snapshot.access_log.as_ref().and_then(|_| match &trace {
            Some(t) => Some(t.trace_id()),
            None => crate::telemetry::trace_id(headers),
        });
        Begun {
            id_value: id.header_value(),
            id,
            started: Instant::now(),
            time,
            trace,
            trace_id,
            client: conn.client,
            scheme: conn.scheme,
            // Read before `prepare` sets the upstream's version.
            version: parts.version,
        }
    }
}
