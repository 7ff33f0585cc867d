//! gRPC at the edge: telling gRPC and gRPC-Web requests apart, the
//! `grpc-timeout` deadline, answering as gRPC when the gateway (or a plugin)
//! answers a gRPC request itself, and translating gRPC-Web to gRPC and back
//! as Envoy's `grpc_web` filter does.
//!
//! A gRPC client reads the outcome from `grpc-status`, not the HTTP status:
//! a JSON 503 means nothing to it. So any answer to a gRPC request that is
//! not already gRPC becomes a *trailers-only* response — HTTP 200 with
//! `content-type: application/grpc`, `grpc-status` and `grpc-message` in the
//! head and no body — with the code the HTTP status stands for.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BodyError};

/// `grpc-status` codes the gateway uses.
pub mod code {
    /// Unknown error.
    pub const UNKNOWN: u32 = 2;
    /// The client sent something the gateway refuses.
    pub const INVALID_ARGUMENT: u32 = 3;
    /// The deadline passed.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// The caller may not do this.
    pub const PERMISSION_DENIED: u32 = 7;
    /// A limit was reached (rate limit, size).
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// No such method (no route).
    pub const UNIMPLEMENTED: u32 = 12;
    /// A fault in the gateway or a plugin.
    pub const INTERNAL: u32 = 13;
    /// The service cannot be reached now; retrying may help.
    pub const UNAVAILABLE: u32 = 14;
    /// No or bad credentials.
    pub const UNAUTHENTICATED: u32 = 16;
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// What kind of gRPC a request speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// gRPC over HTTP/2.
    Grpc,
    /// gRPC-Web; `text` for the base64 `-text` variant. `suffix` is the
    /// message format after `+` (`proto` by default).
    Web {
        /// Base64 (`application/grpc-web-text`).
        text: bool,
        /// `+proto`, `+json`, or empty.
        suffix: String,
    },
}

/// The gRPC kind of a request, from its `content-type`.
pub fn kind(headers: &HeaderMap) -> Option<Kind> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next().unwrap_or(ct).trim();
    let ct = ct.to_ascii_lowercase();
    let (base, suffix) = match ct.split_once('+') {
        Some((b, s)) => (b.to_string(), format!("+{s}")),
        None => (ct.clone(), String::new()),
    };
    match base.as_str() {
        "application/grpc" => Some(Kind::Grpc),
        "application/grpc-web" => Some(Kind::Web {
            text: false,
            suffix,
        }),
        "application/grpc-web-text" => Some(Kind::Web { text: true, suffix }),
        _ => None,
    }
}

/// Whether a response is already gRPC (so it passes untouched).
fn is_grpc_response(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/grpc")
        })
}

/// The request's `grpc-timeout`, when it is well-formed (at most 8 digits
/// and a unit, per the gRPC protocol).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC code an HTTP status stands for (the gRPC spec's mapping, with
/// 429 read as the rate limit it is).
pub fn code_for_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 | 500 => code::INTERNAL,
        414 => code::INVALID_ARGUMENT,
        413 | 431 | 429 => code::RESOURCE_EXHAUSTED,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 | 405 => code::UNIMPLEMENTED,
        408 | 504 => code::DEADLINE_EXCEEDED,
        421 | 502 | 503 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// A trailers-only gRPC answer.
pub fn trailers_only(status: u32, message: &str) -> Response<Body> {
    let mut resp = Response::new(crate::body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(&encode_message(message)) {
        h.insert(GRPC_MESSAGE, v);
    }
    resp
}

/// `grpc-message` is percent-encoded UTF-8.
fn encode_message(message: &str) -> String {
    percent_encoding::utf8_percent_encode(message, &MESSAGE_SET).to_string()
}

const MESSAGE_SET: percent_encoding::AsciiSet = percent_encoding::CONTROLS.add(b'%');

/// The gateway's own message for an error reply, kept with the response so
/// a gRPC client is told the same.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

/// Make the answer to a gRPC request a gRPC answer: one that already is
/// passes; any other becomes trailers-only with the code its HTTP status
/// stands for, and the gateway's error message (or the status's reason).
pub fn reframe(resp: Response<Body>) -> Response<Body> {
    if is_grpc_response(resp.headers()) {
        return resp;
    }
    let message = resp
        .extensions()
        .get::<ErrorMessage>()
        .map(|m| m.0.as_str());
    let status = resp.status();
    let reason = format!(
        "{} (HTTP {})",
        status.canonical_reason().unwrap_or("error"),
        status.as_u16()
    );
    let mut out = trailers_only(code_for_http(status), message.unwrap_or(&reason));
    // What a client may act on survives: its request id, when to retry,
    // how to authenticate — and the CORS grant (`access-control-*`, `vary`)
    // a policy set, without which a browser page cannot read the status.
    for name in [
        HeaderName::from_static("x-request-id"),
        header::RETRY_AFTER,
        header::WWW_AUTHENTICATE,
        HeaderName::from_static("x-wicket-generation"),
    ] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    for (name, value) in resp.headers() {
        if name == header::VARY || name.as_str().starts_with("access-control-") {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

/// gRPC-Web → gRPC: the request head.
pub fn web_head(headers: &mut HeaderMap, text: bool, suffix: &str) {
    let ct = format!("application/grpc{suffix}");
    if let Ok(v) = HeaderValue::from_str(&ct) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    // Browsers send these for gRPC-Web; gRPC servers have no use for them.
    headers.remove(HeaderName::from_static("x-grpc-web"));
    headers.remove(HeaderName::from_static("x-user-agent"));
    if text {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// gRPC-Web text → gRPC: the body, base64-decoded as it streams.
pub fn decode_base64(body: Body) -> Body {
    crate::body::boxed(Base64Decode {
        inner: body,
        carry: BytesMut::new(),
    })
}

/// gRPC → gRPC-Web: the response head, and a body whose trailers become a
/// final frame (base64 for `-text`).
pub fn web_response(resp: Response<Body>, text: bool, suffix: &str) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let ct = if text {
        format!("application/grpc-web-text{suffix}")
    } else {
        format!("application/grpc-web{suffix}")
    };
    if let Ok(v) = HeaderValue::from_str(&ct) {
        parts.headers.insert(header::CONTENT_TYPE, v);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = crate::body::boxed(WebEncode {
        inner: body,
        text,
        carry: BytesMut::new(),
        done: false,
    });
    Response::from_parts(parts, body)
}

/// Base64 (gRPC-Web text) request body → binary.
struct Base64Decode {
    inner: Body,
    /// Characters short of a 4-character group.
    carry: BytesMut,
}

impl HttpBody for Base64Decode {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    if this.carry.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err("gRPC-Web text body is not whole base64".into())));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.carry
                        .extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
                    // Padding may end a segment anywhere: decode whole
                    // groups, and segments ended by `=` as they come.
                    let whole = this.carry.len() / 4 * 4;
                    if whole == 0 {
                        continue;
                    }
                    let chunk = this.carry.split_to(whole);
                    let mut out = Vec::with_capacity(whole / 4 * 3);
                    for segment in split_padded(&chunk) {
                        match base64::engine::general_purpose::STANDARD.decode(segment) {
                            Ok(bytes) => out.extend_from_slice(&bytes),
                            Err(_) => {
                                return Poll::Ready(Some(Err(
                                    "gRPC-Web text body is not base64".into()
                                )))
                            }
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }
}

/// Split concatenated base64 segments at their padding (each segment ends
/// at a group holding `=`).
fn split_padded(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, group) in data.chunks(4).enumerate() {
        if group.contains(&b'=') {
            out.push(&data[start..(i + 1) * 4]);
            start = (i + 1) * 4;
        }
    }
    if start < data.len() {
        out.push(&data[start..]);
    }
    out
}

/// gRPC response body → gRPC-Web: data as it comes, trailers as a frame
/// flagged 0x80; base64-encoded in whole groups for `-text`.
struct WebEncode {
    inner: Body,
    text: bool,
    /// `-text`: bytes short of a 3-byte group, encoded with the next data.
    carry: BytesMut,
    done: bool,
}

impl WebEncode {
    fn encode(&mut self, data: Bytes, last: bool) -> Bytes {
        if !self.text {
            return data;
        }
        self.carry.extend_from_slice(&data);
        let whole = if last {
            self.carry.len()
        } else {
            self.carry.len() / 3 * 3
        };
        let chunk = self.carry.split_to(whole);
        Bytes::from(base64::engine::general_purpose::STANDARD.encode(&chunk))
    }
}

fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = BytesMut::new();
    for (name, value) in trailers {
        block.put_slice(name.as_str().as_bytes());
        block.put_slice(b":");
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    frame.put_u32(block.len() as u32);
    frame.put(block);
    frame.freeze()
}

impl HttpBody for WebEncode {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    this.done = true;
                    let rest = this.encode(Bytes::new(), true);
                    if rest.has_remaining() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.encode(data, false);
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.done = true;
                            let out = this.encode(trailer_frame(&trailers), true);
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                },
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A gRPC response body with the call's deadline: when it passes before the
/// body ends, the stream ends with `grpc-status: 4` in its trailers.
pub struct Deadline {
    inner: Body,
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Deadline {
    /// `inner`, cut at `at`.
    pub fn new(inner: Body, at: tokio::time::Instant) -> Deadline {
        Deadline {
            inner,
            timer: Box::pin(tokio::time::sleep_until(at)),
            done: false,
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() {
                this.done = true;
            }
            return Poll::Ready(frame);
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.done = true;
                let mut trailers = HeaderMap::new();
                trailers.insert(GRPC_STATUS, HeaderValue::from(code::DEADLINE_EXCEEDED));
                trailers.insert(GRPC_MESSAGE, HeaderValue::from_static("deadline exceeded"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        // A trailers-only answer is already at its end: say so, or hyper
        // sends its head without END_STREAM and a gRPC client misses the
        // status it carries.
        self.done || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_and_bad_values() {
        let mut h = HeaderMap::new();
        for (v, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("123456789S", None),
            ("S", None),
            ("1x", None),
            ("-1S", None),
        ] {
            h.insert(GRPC_TIMEOUT, HeaderValue::from_static(v));
            assert_eq!(timeout(&h), want, "{v}");
        }
    }

    #[test]
    fn content_types_name_the_kind() {
        let mut h = HeaderMap::new();
        for (ct, want) in [
            ("application/grpc", Some(Kind::Grpc)),
            ("application/grpc+proto", Some(Kind::Grpc)),
            (
                "application/grpc-web+proto",
                Some(Kind::Web {
                    text: false,
                    suffix: "+proto".into(),
                }),
            ),
            (
                "application/grpc-web-text",
                Some(Kind::Web {
                    text: true,
                    suffix: String::new(),
                }),
            ),
            ("application/json", None),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(kind(&h), want, "{ct}");
        }
    }

    #[test]
    fn trailers_frame_and_padded_segments() {
        let mut t = HeaderMap::new();
        t.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        let f = trailer_frame(&t);
        assert_eq!(&f[..5], &[0x80, 0, 0, 0, 15]);
        assert_eq!(&f[5..], b"grpc-status:0\r\n");
        assert_eq!(split_padded(b"QQ==QkM="), vec![&b"QQ=="[..], &b"QkM="[..]]);
    }
}
