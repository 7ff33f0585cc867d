//! What the gateway makes of a request before routing it: one normalised
//! path and one authority, and the client-facing limits. The values decided
//! here are the values routes match, plugins see and the upstream receives,
//! so the gateway and the origin never disagree about what was asked for.
//!
//! Everything that cannot be made safe is refused (a [`Refusal`], always a
//! 4xx): when unsure, refuse.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_body::Body as _;
use hyper::body::Incoming;

/// What the server knows of the connection a request came on.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The client's address.
    pub client: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Which configured listener accepted it (its index in `listeners`).
    pub listener: usize,
    /// What its TLS handshake negotiated, on a TLS listener.
    pub tls: Option<Arc<crate::server::tls::TlsInfo>>,
    /// Its place in the listener, which a tunnel keeps while it runs.
    pub hold: Option<crate::server::Hold>,
}

/// A request's id: in its log lines, in every error reply, upstream and back
/// to the client, so a client's report can be matched to the log and a
/// request followed across systems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Repr);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    /// Made here: 16 hex digits.
    Made([u8; 16]),
    /// The client's, checked by [`RequestId::inbound`].
    Given(Box<str>),
}

/// Longest inbound id kept.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

impl RequestId {
    /// A new id: 16 hex digits, unique within the process and different
    /// across restarts (a per-process random seed, mixed with a counter). It
    /// names a request; it is not a secret.
    pub fn next() -> RequestId {
        use std::hash::{BuildHasher, Hasher};
        static SEED: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        // splitmix64: a bijection, so distinct counters give distinct ids.
        let mut z = seed.wrapping_add(
            COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = HEX[((z >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestId(Repr::Made(out))
    }

    /// The id in `name` of `headers`, when there is exactly one and it is
    /// well-formed: 1–128 bytes of letters, digits and `-_.:+/=@` (UUIDs,
    /// ULIDs, base64, other gateways' ids), nothing that could break a log
    /// line or a header.
    pub fn inbound(headers: &HeaderMap, name: &HeaderName) -> Option<RequestId> {
        let mut values = headers.get_all(name).iter();
        let v = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let b = v.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_REQUEST_ID_BYTES
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=@".contains(c));
        // Checked ASCII above, so this cannot fail.
        ok.then(|| std::str::from_utf8(b).ok())
            .flatten()
            .map(|s| RequestId(Repr::Given(s.into())))
    }

    /// The client's id when `accept` and it is well-formed, else a new one.
    pub fn for_request(headers: &HeaderMap, name: &HeaderName, accept: bool) -> RequestId {
        accept
            .then(|| RequestId::inbound(headers, name))
            .flatten()
            .unwrap_or_else(RequestId::next)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Made(b) => std::str::from_utf8(b).unwrap_or("-"),
            Repr::Given(s) => s,
        }
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        // Both forms are visible ASCII, which is always a valid value.
        HeaderValue::from_str(self.as_str()).unwrap_or(HeaderValue::from_static("-"))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listener's request rules, as the request path applies them.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Path normalisation.
    pub paths: PathRules,
    /// Head size limits.
    pub limits: SizeLimits,
    /// Body size limit, unless the route has its own.
    pub max_body_bytes: u64,
    /// Longest gap between two pieces of a body.
    pub body_idle: Duration,
    /// Redirect every request to HTTPS on this port instead of routing.
    pub redirect_https: Option<u16>,
}

impl Rules {
    /// Rules from a listener's configuration.
    pub fn from_config(l: &crate::config::Listener) -> Rules {
        Rules {
            paths: PathRules {
                merge_slashes: l.paths.merge_slashes,
            },
            limits: SizeLimits {
                max_uri_bytes: l.limits.max_uri_bytes,
                max_header_bytes: l.limits.max_header_bytes,
                max_headers: l.limits.max_headers,
                max_headers_bytes: l.limits.max_headers_bytes,
            },
            max_body_bytes: l.limits.max_body_bytes,
            body_idle: Duration::from_millis(l.timeouts.body_idle_ms),
            redirect_https: l.redirect_https.as_ref().map(|r| r.port),
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::from_config(&crate::config::Listener {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            redirect_https: None,
            limits: Default::default(),
            timeouts: Default::default(),
            paths: Default::default(),
        })
    }
}

/// Step 1 of the request path: check the head against the limits, settle
/// the one authority, and replace the target with its normalised path when
/// that differs (the query is kept as sent).
pub fn admit(rules: &Rules, parts: &mut http::request::Parts) -> Result<Authority, Refusal> {
    check_head(parts, &rules.limits)?;
    // A plain CONNECT asks for a tunnel to anywhere (nginx: 405). An
    // extended one (RFC 8441, HTTP/2 only) names its protocol and is
    // routed like any request; the route decides.
    if parts.method == http::Method::CONNECT
        && parts.extensions.get::<hyper::ext::Protocol>().is_none()
    {
        return Err(Refusal::Connect);
    }
    let authority = authority(&parts.uri, &parts.headers)?;
    if let Cow::Owned(path) = normalize_path(parts.uri.path(), &rules.paths)? {
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let pq = http::uri::PathAndQuery::try_from(pq)
            .map_err(|_| Refusal::Path(PathError::BadEscape))?;
        parts.uri = http::Uri::from(pq);
    }
    Ok(authority)
}

/// Also step 1, on a TLS connection: the host must be one the negotiated
/// certificate covers (421 otherwise), so one virtual host's handshake
/// cannot front another's requests.
pub fn check_tls(conn: &Conn, authority: &Authority) -> Result<(), Refusal> {
    match &conn.tls {
        Some(tls) if !tls.served.covers(authority.host()) => Err(Refusal::Misdirected),
        _ => Ok(()),
    }
}

/// A request body on its way upstream, bounded in size and in the time
/// between pieces. When it refuses to go on, it records why, so the request
/// path answers 413 or 408 rather than blame the upstream.
pub struct RequestBody {
    /// `None` only once dropped (see `Drop`).
    inner: Option<Incoming>,
    left: u64,
    limit: u64,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    verdict: Option<Arc<OnceLock<Refusal>>>,
    /// Bytes read so far, for the access log; only when asked for.
    read: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    /// Bound `inner` by `limit` bytes; a declared `Content-Length` over it is
    /// refused before anything is read.
    pub fn new(
        inner: Incoming,
        headers: &HeaderMap,
        limit: u64,
        idle: Duration,
    ) -> Result<RequestBody, Refusal> {
        if let Err(refusal) = check_content_length(headers, limit) {
            linger(inner);
            return Err(refusal);
        }
        // A body that is already complete (most GETs) needs no watching.
        let verdict = (!inner.is_end_stream()).then(|| Arc::new(OnceLock::new()));
        Ok(RequestBody {
            inner: Some(inner),
            left: limit,
            limit,
            idle,
            timer: None,
            verdict,
            read: None,
        })
    }

    /// A counter of the bytes this body yields, for a body that has any
    /// left to read (`None` for one already complete: 0 bytes).
    pub fn count_read(&mut self) -> Option<Arc<AtomicU64>> {
        if self.is_end_stream() {
            return None;
        }
        Some(self.read.get_or_insert_with(Default::default).clone())
    }

    /// The body to send upstream. A body of declared length streams; one of
    /// unknown length (chunked, or HTTP/2 without `Content-Length`) is read
    /// whole first, up to the limit, as nginx does: otherwise the upstream
    /// would already hold the start of a request the gateway refuses. With
    /// `stream` (gRPC, whose calls stream both ways and frame their own
    /// messages) it streams regardless, still bounded.
    ///
    /// A body of at most `keep` bytes is read whole and kept, so the
    /// request can be sent again (retries): the second value.
    pub async fn into_upstream(self, stream: bool, keep: u64) -> Result<UpstreamBody, Refusal> {
        use http_body_util::BodyExt;
        let verdict = self.verdict.clone();
        if self.is_end_stream() {
            return Ok(UpstreamBody {
                body: crate::body::empty(),
                replay: (!stream).then(Bytes::new),
                verdict,
            });
        }
        let exact = self.size_hint().exact();
        if stream || exact.is_some_and(|n| n > keep) {
            return Ok(UpstreamBody {
                body: crate::body::boxed(self),
                replay: None,
                verdict,
            });
        }
        match self.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let replay = (bytes.len() as u64 <= keep).then(|| bytes.clone());
                Ok(UpstreamBody {
                    body: crate::body::full(bytes),
                    replay,
                    verdict: None,
                })
            }
            Err(e) => Err(match verdict.and_then(|v| v.get().copied()) {
                Some(refusal) => refusal,
                None => {
                    tracing::debug!(error = %e, "request body broke off");
                    Refusal::BodyIncomplete
                }
            }),
        }
    }

    /// Where the body records why it stopped, if it may.
    pub fn verdict(&self) -> Option<Arc<OnceLock<Refusal>>> {
        self.verdict.clone()
    }

    fn refuse(
        &mut self,
        why: Refusal,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, crate::body::BodyError>>> {
        if let Some(v) = &self.verdict {
            let _ = v.set(why);
        }
        Poll::Ready(Some(Err(Box::new(why))))
    }
}

/// A request body made ready for the upstream.
pub struct UpstreamBody {
    /// What is sent.
    pub body: crate::body::Body,
    /// The whole body, kept to send again.
    pub replay: Option<Bytes>,
    /// Where a streaming body records why it stopped.
    pub verdict: Option<Arc<OnceLock<Refusal>>>,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.left {
                        let limit = this.limit;
                        return this.refuse(Refusal::BodyTooLarge(limit));
                    }
                    this.left -= n;
                    if let Some(read) = &this.read {
                        read.fetch_add(n, Ordering::Relaxed);
                    }
                }
                // Progress: the idle clock starts again.
                if let Some(t) = &mut this.timer {
                    t.as_mut().reset(tokio::time::Instant::now() + this.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.refuse(Refusal::BodyTimeout(idle.as_millis() as u64)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for RequestBody {
    /// A body the gateway did not read to its end (a plugin answered, the
    /// body was refused, the upstream failed) lingers: see [`linger`].
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            linger(inner);
        }
    }
}

/// Most of an unwanted body read and discarded after the gateway answered.
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Longest the gateway keeps reading an unwanted body.
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Read and discard what is left of a body the gateway will not use, for at
/// most [`LINGER_BYTES`] and [`LINGER_TIME`], so a client still sending it
/// reads the answer (a 413, a 401) instead of a connection reset — nginx's
/// lingering close. Past either bound the body is dropped and the
/// connection with it.
pub fn linger(body: Incoming) {
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut left = LINGER_BYTES;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len());
                if n >= left {
                    break;
                }
                left -= n;
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

/// How paths are normalised, per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Collapse runs of `/` into one (`//a///b` → `/a/b`), as nginx does by
    /// default: an origin that merges them itself would otherwise see a path
    /// the gateway routed differently.
    pub merge_slashes: bool,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
        }
    }
}

/// Why a request path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path (`*`, empty, authority-form).
    #[error("the request target must be a path starting with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("the path has a malformed percent-encoding")]
    BadEscape,
    /// `%2F` or `%5C`: a separator the origin may decode and the router did not see.
    #[error("the path has an encoded '/' or '\\'")]
    EncodedSeparator,
    /// A literal backslash, which some origins treat as a separator.
    #[error("the path has a backslash")]
    Backslash,
    /// A control character, raw or encoded (`%00`...`%1F`, `%7F`).
    #[error("the path has a control character")]
    Control,
    /// `%25` hiding an encoded dot, separator or another escape.
    #[error("the path has a double-encoded dot, separator or escape")]
    DoubleEncoded,
    /// A `..;` or `.;` segment (path parameters on a dot segment).
    #[error("the path has a dot segment with parameters")]
    DotParameters,
    /// The decoded path is not UTF-8 (overlong encodings among them).
    #[error("the path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    /// More `..` segments than there are segments to remove.
    #[error("the path climbs above the root")]
    AboveRoot,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    match (bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(&h), Some(&l)) => match (hex_value(h), hex_value(l)) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(PathError::BadEscape),
        },
        _ => Err(PathError::BadEscape),
    }
}

/// Normalise `raw` (the path of the request target, without the query):
/// percent-encoded unreserved characters decoded, other escapes upper-cased,
/// dot segments removed (RFC 3986 §5.2.4), slashes merged when `rules` say
/// so. Anything that could mean a different path to an origin is refused.
///
/// The result is idempotent (normalising it again changes nothing), has no
/// `.` or `..` segments, and never climbs above `/`. A path that needs no
/// change is returned borrowed.
pub fn normalize_path<'a>(raw: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode, no dot segment, no empty segment.
    let mut clean = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => clean = false,
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            b'/' if matches!(bytes.get(i + 1), Some(b'.')) => clean = false,
            b'/' if rules.merge_slashes && matches!(bytes.get(i + 1), Some(b'/')) => clean = false,
            0x80.. => clean = false,
            _ => {}
        }
    }
    if clean {
        return Ok(Cow::Borrowed(raw));
    }

    // 1. Decode what is safe to decode; refuse what is not. `decoded` holds
    //    every byte fully decoded, only to check that the path is UTF-8.
    let mut text = String::with_capacity(raw.len());
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let d = decode_at(bytes, i)?;
                match d {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::Control),
                    b'%' => {
                        // `%25` followed by an escape of a dot, a separator or
                        // another `%` decodes, a second time, into a path trick.
                        // `%25%32%65` hides its dot one level deeper still.
                        if bytes.get(i + 3) == Some(&b'%') {
                            return Err(PathError::DoubleEncoded);
                        }
                        if let (Some(&h), Some(&l)) = (bytes.get(i + 3), bytes.get(i + 4)) {
                            let inner = hex_value(h).zip(hex_value(l)).map(|(h, l)| h << 4 | l);
                            if matches!(inner, Some(b'.' | b'/' | b'\\' | b'%')) {
                                return Err(PathError::DoubleEncoded);
                            }
                        }
                        text.push_str("%25");
                    }
                    d if unreserved(d) => text.push(d as char),
                    d => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        text.push('%');
                        text.push(HEX[(d >> 4) as usize] as char);
                        text.push(HEX[(d & 0xf) as usize] as char);
                    }
                }
                decoded.push(d);
                i += 3;
            }
            0x80.. => {
                // A raw non-ASCII byte; the UTF-8 check below decides. The
                // text keeps it escaped, as RFC 3986 requires of a URI.
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                text.push('%');
                text.push(HEX[(b >> 4) as usize] as char);
                text.push(HEX[(b & 0xf) as usize] as char);
                decoded.push(b);
                i += 1;
            }
            _ => {
                text.push(b as char);
                decoded.push(b);
                i += 1;
            }
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }

    // 2. Remove dot segments and, if asked, empty ones.
    let mut out: Vec<&str> = Vec::new();
    let mut segments = text[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.starts_with("..;") || seg.starts_with(".;") {
            return Err(PathError::DotParameters);
        }
        match seg {
            "." => trailing_slash = last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            "" if rules.merge_slashes || last => trailing_slash = last,
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(text.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// The one authority of a request, normalised: host lower-cased without a
/// trailing dot, the port separate. Held as the one string it is forwarded
/// as, so a request pays for one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// `host` or `host:port`.
    text: String,
    host_len: usize,
    port: Option<u16>,
}

impl Authority {
    /// Host name, IPv4 address or bracketed IPv6 address.
    pub fn host(&self) -> &str {
        &self.text[..self.host_len]
    }

    /// The port, when the client named one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// `host` or `host:port`, as forwarded in `Host`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// [`Authority::as_str`], owned.
    pub fn into_string(self) -> String {
        self.text
    }
}

/// Why a request's authority is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// No `Host`, `:authority` or absolute-form target.
    #[error("the request names no host")]
    Missing,
    /// More than one `Host` header.
    #[error("the request has more than one Host header")]
    Duplicate,
    /// The request-target's or `:authority`'s host and `Host` differ.
    #[error("the request's host and its Host header disagree")]
    Disagree,
    /// Not a valid `host[:port]`.
    #[error("the request's host is malformed")]
    Malformed,
}

/// Parse and normalise one `host[:port]`.
pub fn parse_authority(raw: &str) -> Result<Authority, AuthorityError> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(AuthorityError::Malformed)?;
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(AuthorityError::Malformed);
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(AuthorityError::Malformed)?),
        };
        let mut text = String::with_capacity(raw.len());
        text.push('[');
        text.push_str(v6);
        text.push(']');
        (text, port)
    } else {
        let (host, port) = match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let valid = !host.is_empty()
            && host.len() <= 253
            && !host.starts_with('.')
            && !host.ends_with('.')
            && !host.contains("..")
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(AuthorityError::Malformed);
        }
        let mut text = String::with_capacity(raw.len());
        text.push_str(host);
        (text, port)
    };
    let mut text = host;
    text.make_ascii_lowercase();
    let host_len = text.len();
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(AuthorityError::Malformed),
                Ok(n) => {
                    use std::fmt::Write;
                    let _ = write!(text, ":{n}");
                    Some(n)
                }
            }
        }
        Some(_) => return Err(AuthorityError::Malformed),
    };
    Ok(Authority {
        text,
        host_len,
        port,
    })
}

/// The request's one authority: the absolute-form target's or `:authority`
/// (which a `Host` header, if any, must agree with), else the one `Host`
/// header. HTTP/1.x without one is refused, as nginx does for HTTP/1.1.
pub fn authority(uri: &http::Uri, headers: &HeaderMap) -> Result<Authority, AuthorityError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::Duplicate);
    }
    let host = match host {
        Some(v) => Some(parse_authority(
            v.to_str().map_err(|_| AuthorityError::Malformed)?,
        )?),
        None => None,
    };
    let target = match uri.authority() {
        Some(a) if a.as_str().contains('@') => return Err(AuthorityError::Malformed),
        Some(a) => Some(parse_authority(a.as_str())?),
        None => None,
    };
    match (target, host) {
        (Some(t), Some(h)) if t != h => Err(AuthorityError::Disagree),
        (Some(t), _) => Ok(t),
        (None, Some(h)) => Ok(h),
        (None, None) => Err(AuthorityError::Missing),
    }
}

/// Client-facing size limits of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// Longest request target (path and query), in bytes (414).
    pub max_uri_bytes: usize,
    /// Longest single header, name and value, in bytes (431).
    pub max_header_bytes: usize,
    /// Most header fields (431).
    pub max_headers: usize,
    /// All header fields together, in bytes (431).
    pub max_headers_bytes: usize,
}

/// Why a request is refused before it is routed or while its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The path cannot be normalised safely.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The authority is missing, duplicated, disagreeing or malformed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The request target is too long.
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(usize),
    /// One header is too long.
    #[error("a header is longer than {0} bytes")]
    HeaderTooLarge(usize),
    /// Too many header fields.
    #[error("the request has more than {0} headers")]
    TooManyHeaders(usize),
    /// The header fields together are too large.
    #[error("the request's headers total more than {0} bytes")]
    HeadersTooLarge(usize),
    /// `Content-Length` or the body read so far is over the limit.
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    /// `Content-Length` is not one non-negative integer.
    #[error("the request's Content-Length is invalid")]
    BadContentLength,
    /// The client stopped sending its body.
    #[error("the request body stalled for more than {0} ms")]
    BodyTimeout(u64),
    /// The body broke off before its end.
    #[error("the request body ended before it was complete")]
    BodyIncomplete,
    /// The host is not one the connection's TLS certificate covers: the
    /// client must open a connection for it (no fronting one virtual host
    /// through another's handshake).
    #[error("the certificate this connection negotiated does not cover the requested host")]
    Misdirected,
    /// CONNECT: the gateway is no forward proxy. Only a WebSocket over
    /// HTTP/2 (RFC 8441's CONNECT with `:protocol: websocket`) on a route
    /// that allows WebSocket is taken.
    #[error("CONNECT is accepted only to open a WebSocket over HTTP/2 on a route that allows it")]
    Connect,
}

impl Refusal {
    /// The one status each refusal maps to.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Path(_)
            | Refusal::Authority(_)
            | Refusal::BadContentLength
            | Refusal::BodyIncomplete => StatusCode::BAD_REQUEST,
            Refusal::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Refusal::HeaderTooLarge(_)
            | Refusal::TooManyHeaders(_)
            | Refusal::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Connect => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A stable code for the JSON body and the log.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Path(_) => "bad_path",
            Refusal::Authority(_) => "bad_host",
            Refusal::UriTooLong(_) => "uri_too_long",
            Refusal::HeaderTooLarge(_)
            | Refusal::TooManyHeaders(_)
            | Refusal::HeadersTooLarge(_) => "headers_too_large",
            Refusal::BodyTooLarge(_) => "body_too_large",
            Refusal::BadContentLength => "bad_content_length",
            Refusal::BodyTimeout(_) => "body_timeout",
            Refusal::BodyIncomplete => "body_incomplete",
            Refusal::Misdirected => "misdirected_request",
            Refusal::Connect => "connect_not_allowed",
        }
    }
}

/// Check the request head against `limits`.
pub fn check_head(parts: &http::request::Parts, limits: &SizeLimits) -> Result<(), Refusal> {
    let target = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong(limits.max_uri_bytes));
    }
    if parts.headers.len() > limits.max_headers {
        return Err(Refusal::TooManyHeaders(limits.max_headers));
    }
    let mut total = 0;
    for (name, value) in &parts.headers {
        // Name, ": ", value and CRLF, as on the wire in HTTP/1.1.
        let size = name.as_str().len() + value.len() + 4;
        if size > limits.max_header_bytes {
            return Err(Refusal::HeaderTooLarge(limits.max_header_bytes));
        }
        total += size;
    }
    if total > limits.max_headers_bytes {
        return Err(Refusal::HeadersTooLarge(limits.max_headers_bytes));
    }
    Ok(())
}

/// The declared body length, if any; refused when over `max` or malformed.
/// (hyper has already refused conflicting lengths on HTTP/1.1.)
pub fn check_content_length(headers: &HeaderMap, max: u64) -> Result<Option<u64>, Refusal> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let parse = |v: &http::HeaderValue| -> Result<u64, Refusal> {
        let s = v.to_str().map_err(|_| Refusal::BadContentLength)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refusal::BadContentLength);
        }
        s.parse().map_err(|_| Refusal::BadContentLength)
    };
    let n = parse(first)?;
    for v in values {
        if parse(v)? != n {
            return Err(Refusal::BadContentLength);
        }
    }
    if n > max {
        return Err(Refusal::BodyTooLarge(max));
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p, &PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn clean_paths_are_borrowed() {
        let rules = PathRules::default();
        assert!(matches!(
            normalize_path("/a/b", &rules),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize_path("/", &rules), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            normalize_path("/a/b/", &rules),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/public/../admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/./admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/public/%2e%2e/admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/public/.%2E/admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(norm("/a/.../b").unwrap(), "/a/.../b");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(norm("/%7Euser/%61b").unwrap(), "/~user/ab");
        assert_eq!(norm("/a%3fb%20c").unwrap(), "/a%3Fb%20c");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/%25").unwrap(), "/%25");
    }

    #[test]
    fn slashes_merge_unless_told_not_to() {
        assert_eq!(norm("//admin//x").unwrap(), "/admin/x");
        assert_eq!(norm("/public//../admin/x").unwrap(), "/admin/x");
        let keep = PathRules {
            merge_slashes: false,
        };
        assert_eq!(normalize_path("/a//b", &keep).unwrap(), "/a//b");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        use PathError::*;
        for (p, e) in [
            ("/public/..%2fadmin/x", EncodedSeparator),
            ("/public/%2e%2e%2Fadmin", EncodedSeparator),
            ("/public/%5c..%5cadmin", EncodedSeparator),
            ("/public/..\\admin", Backslash),
            ("/public/..;/admin/x", DotParameters),
            ("/public/.;/admin/x", DotParameters),
            ("/public/%252e%252e/admin", DoubleEncoded),
            ("/public/%252F", DoubleEncoded),
            ("/public/%2525", DoubleEncoded),
            ("/public/%25%32%65%25%32%65/admin", DoubleEncoded),
            ("/public/%00/x", Control),
            ("/public/%1f", Control),
            ("/public/%zz", BadEscape),
            ("/public/%2", BadEscape),
            ("/public/%c0%ae%c0%ae/admin", InvalidUtf8),
            ("/../admin/x", AboveRoot),
            ("/public/x/../../../admin", AboveRoot),
            ("*", NotAbsolute),
        ] {
            assert_eq!(norm(p), Err(e), "{p}");
        }
    }

    /// A small deterministic generator: no dependency, reproducible failures.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn normalisation_is_idempotent_has_no_dot_segments_and_stays_under_its_prefix() {
        const PIECES: &[&str] = &[
            "a",
            "b",
            "..",
            ".",
            "",
            "%2e",
            "%2E%2e",
            "%41",
            "~",
            "%20",
            "x.y",
            "...",
            "%7e",
            ".%2e",
            "%C3%A9",
            "admin",
            "%25",
            "%252e",
            "%25%32%65",
            "%2541",
        ];
        let mut rng = Lcg(0x5eed);
        for merge in [true, false] {
            let rules = PathRules {
                merge_slashes: merge,
            };
            for _ in 0..20_000 {
                let n = 1 + rng.next() as usize % 8;
                let mut p = String::from("/public");
                for _ in 0..n {
                    p.push('/');
                    p.push_str(PIECES[rng.next() as usize % PIECES.len()]);
                }
                let Ok(once) = normalize_path(&p, &rules) else {
                    continue;
                };
                let twice = normalize_path(&once, &rules).expect("normalised paths stay valid");
                assert_eq!(once, twice, "not idempotent for {p}");
                for seg in once.split('/') {
                    assert!(seg != "." && seg != "..", "{p} → {once}");
                    assert!(!seg.eq_ignore_ascii_case("%2e"), "{p} → {once}");
                }
                // Climbing out of `/public` is only possible with `..`
                // segments that outnumber what precedes them; the result
                // must then be what a plain resolution gives, never above `/`.
                assert!(once.starts_with('/'));
                let climbs = p
                    .split('/')
                    .filter(|s| {
                        *s == ".."
                            || s.eq_ignore_ascii_case("%2e%2e")
                            || s.eq_ignore_ascii_case(".%2e")
                    })
                    .count();
                if climbs == 0 {
                    assert!(
                        once.starts_with("/public"),
                        "{p} escaped its prefix: {once}"
                    );
                }
            }
        }
    }

    #[test]
    fn authorities_normalise() {
        let a = parse_authority("Secure.Example.:8080").unwrap();
        assert_eq!(a.host(), "secure.example");
        assert_eq!(a.port(), Some(8080));
        assert_eq!(a.as_str(), "secure.example:8080");
        assert_eq!(parse_authority("[::1]:80").unwrap().host(), "[::1]");
        assert_eq!(parse_authority("127.0.0.1").unwrap().port(), None);
        for bad in [
            "", ":80", "a b", "a@b", "a:", "a:0", "a:99999", "a..b", ".a", "a..", "[::1", "a%2eb",
            "a:80:80",
        ] {
            assert_eq!(
                parse_authority(bad),
                Err(AuthorityError::Malformed),
                "{bad:?}"
            );
        }
    }

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn one_authority_per_request() {
        let p = parts(
            http::Request::get("/x")
                .header("host", "A.example")
                .body(())
                .unwrap(),
        );
        assert_eq!(authority(&p.uri, &p.headers).unwrap().host(), "a.example");

        let p = parts(http::Request::get("/x").body(()).unwrap());
        assert_eq!(authority(&p.uri, &p.headers), Err(AuthorityError::Missing));

        let p = parts(
            http::Request::get("/x")
                .header("host", "a.example")
                .header("host", "b.example")
                .body(())
                .unwrap(),
        );
        assert_eq!(
            authority(&p.uri, &p.headers),
            Err(AuthorityError::Duplicate)
        );

        let p = parts(
            http::Request::get("http://a.example/x")
                .header("host", "b.example")
                .body(())
                .unwrap(),
        );
        assert_eq!(authority(&p.uri, &p.headers), Err(AuthorityError::Disagree));

        let p = parts(
            http::Request::get("http://a.example/x")
                .header("host", "A.EXAMPLE.")
                .body(())
                .unwrap(),
        );
        assert_eq!(authority(&p.uri, &p.headers).unwrap().host(), "a.example");

        let p = parts(http::Request::get("http://u@a.example/x").body(()).unwrap());
        assert_eq!(
            authority(&p.uri, &p.headers),
            Err(AuthorityError::Malformed)
        );
    }

    #[test]
    fn limits_bound_the_head() {
        let limits = SizeLimits {
            max_uri_bytes: 16,
            max_header_bytes: 32,
            max_headers: 3,
            max_headers_bytes: 64,
        };
        let ok = parts(
            http::Request::get("/short")
                .header("a", "b")
                .body(())
                .unwrap(),
        );
        assert_eq!(check_head(&ok, &limits), Ok(()));
        let long = parts(http::Request::get("/a-rather-long-path").body(()).unwrap());
        assert_eq!(check_head(&long, &limits), Err(Refusal::UriTooLong(16)));
        let big = parts(
            http::Request::get("/")
                .header("a", "x".repeat(40))
                .body(())
                .unwrap(),
        );
        assert_eq!(check_head(&big, &limits), Err(Refusal::HeaderTooLarge(32)));
        let mut many = http::Request::get("/");
        for i in 0..4 {
            many = many.header(format!("h{i}"), "v");
        }
        assert_eq!(
            check_head(&parts(many.body(()).unwrap()), &limits),
            Err(Refusal::TooManyHeaders(3))
        );
        let mut bulky = http::Request::get("/");
        for i in 0..3 {
            bulky = bulky.header(format!("h{i}"), "v".repeat(20));
        }
        assert_eq!(
            check_head(&parts(bulky.body(()).unwrap()), &limits),
            Err(Refusal::HeadersTooLarge(64))
        );
    }

    #[test]
    fn content_length_is_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(check_content_length(&h, 10), Ok(None));
        h.insert(header::CONTENT_LENGTH, "10".parse().unwrap());
        assert_eq!(check_content_length(&h, 10), Ok(Some(10)));
        h.insert(header::CONTENT_LENGTH, "1000000000000".parse().unwrap());
        assert_eq!(check_content_length(&h, 10), Err(Refusal::BodyTooLarge(10)));
        h.insert(header::CONTENT_LENGTH, "+5".parse().unwrap());
        assert_eq!(check_content_length(&h, 10), Err(Refusal::BadContentLength));
        h.insert(
            header::CONTENT_LENGTH,
            "99999999999999999999999".parse().unwrap(),
        );
        assert_eq!(check_content_length(&h, 10), Err(Refusal::BadContentLength));
    }
}
