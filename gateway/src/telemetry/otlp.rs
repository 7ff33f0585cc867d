//! OTLP/HTTP export: finished spans written straight into one protobuf
//! `ExportTraceServiceRequest` per batch (the OTLP schema, v1) and POSTed to
//! the collector.
//!
//! The encoding is written here rather than through generated message types:
//! those want an owned vector or string for every id, name, attribute key and
//! value, built and dropped for each span — measured with `cargo bench -p
//! wicket-tests --bench trace`, converting and encoding that way was half of
//! what a traced request cost. This writes the same bytes with no allocation
//! per span; the tests decode them with the generated types.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

/// Why an export did not land.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    /// The collector could not be reached, or the exchange broke.
    #[error("sending to the collector failed: {0}")]
    Send(String),
    /// It answered, but not with a success.
    #[error("the collector answered {0}")]
    Status(http::StatusCode),
    /// No answer within the export timeout.
    #[error("the collector did not answer within {0:?}")]
    Timeout(Duration),
}

/// Sends encoded batches to one collector.
#[derive(Debug)]
pub(crate) struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: Uri,
    headers: HeaderMap,
    timeout: Duration,
}

impl Sender {
    /// A sender to `endpoint` (an `http://` URL, already checked), each
    /// export request carrying `headers` and cut after `timeout`.
    pub(crate) fn new(endpoint: Uri, mut headers: HeaderMap, timeout: Duration) -> Sender {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Sender {
            client,
            endpoint,
            headers,
            timeout,
        }
    }

    /// POST one encoded request.
    pub(crate) async fn send(&self, body: Bytes) -> Result<(), ExportError> {
        let mut req = http::Request::post(self.endpoint.clone())
            .body(Full::new(body))
            .map_err(|e| ExportError::Send(e.to_string()))?;
        *req.headers_mut() = self.headers.clone();
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ExportError::Send(format!("{e:#}")))?;
            let status = resp.status();
            // Read the answer whole, so the connection is kept for the next batch.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(ExportError::Status(status))
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::Timeout(self.timeout)),
        }
    }
}

/// `ResourceSpans.resource` (field 1, key included) with `attributes`:
/// written once, sent with every batch.
pub(crate) fn resource<'a>(attributes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut buf = Vec::new();
    nested(&mut buf, 1, |r| {
        let mut a = Fields { b: r, field: 1 };
        for (k, v) in attributes {
            a.str(k, v);
        }
    });
    buf
}

/// One export request being written: a `ResourceSpans` with `resource` and
/// one `ScopeSpans` (the gateway's) that [`Batch::span`] adds to.
pub(crate) struct Batch {
    /// Room for the `ResourceSpans` key and length, the resource, room for
    /// the `ScopeSpans` key and length, then the `ScopeSpans` body: its
    /// scope and its spans. The lengths are written into the room when the
    /// batch is finished, so the body is never copied.
    out: Vec<u8>,
    resource_len: usize,
    spans: usize,
}

/// Room for a key of field 1 or 2 and a length of up to 2^35 bytes.
const ROOM: usize = 6;

/// The instrumentation scope every span is reported under.
const SCOPE: &str = "wicket";

impl Batch {
    /// Start a request for the gateway's resource, in `spare` (an empty
    /// buffer a sent batch left) when there is one.
    pub(crate) fn new(resource: &[u8], capacity: usize, spare: Option<Vec<u8>>) -> Batch {
        let mut out = spare.unwrap_or_default();
        out.clear();
        out.reserve(2 * ROOM + resource.len() + 16 + capacity * 300);
        out.extend_from_slice(&[0; ROOM]);
        out.extend_from_slice(resource);
        out.extend_from_slice(&[0; ROOM]);
        let resource_len = resource.len();
        // ScopeSpans.scope: InstrumentationScope { name }.
        nested(&mut out, 1, |s| string(s, 1, SCOPE));
        Batch {
            out,
            resource_len,
            spans: 0,
        }
    }

    /// Spans written so far.
    pub(crate) fn spans(&self) -> usize {
        self.spans
    }

    /// Add a span: its fixed fields, then the attributes and events
    /// `extra` writes.
    pub(crate) fn span(&mut self, s: &Span<'_>, extra: impl FnOnce(&mut Fields<'_>)) {
        self.spans += 1;
        nested(&mut self.out, 2, |b| {
            bytes(b, 1, &s.trace_id);
            bytes(b, 2, &s.span_id);
            string(b, 3, s.trace_state);
            if let Some(parent) = s.parent {
                bytes(b, 4, &parent);
            }
            nested(b, 5, |n| {
                for piece in s.name {
                    n.extend_from_slice(piece.as_bytes());
                }
            });
            uint(b, 6, s.kind as u64);
            fixed64(b, 7, s.start);
            fixed64(b, 8, s.end);
            // Attributes (9) and events (11) are repeated fields: their
            // elements may come in any order.
            extra(&mut Fields { b, field: 9 });
            nested(b, 15, |st| {
                if let Some(message) = s.error {
                    string(st, 2, message);
                    uint(st, 3, 2);
                }
            });
            fixed32(b, 16, flags(s.parent_remote, s.sampled));
        });
    }

    /// The encoded request; empty when no span was added.
    pub(crate) fn finish(self) -> Bytes {
        if self.spans == 0 {
            return Bytes::new();
        }
        let Batch {
            mut out,
            resource_len,
            ..
        } = self;
        // ExportTraceServiceRequest.resource_spans(1) { resource,
        // scope_spans(2) { scope, spans } }: the scope spans' key and length
        // go just before their body, the resource moves up to meet them, and
        // the resource spans' key and length go just before it.
        let body_at = 2 * ROOM + resource_len;
        let mut head = Vec::with_capacity(ROOM);
        tag(&mut head, 2, LEN);
        varint(&mut head, (out.len() - body_at) as u64);
        let scope_at = body_at - head.len();
        out[scope_at..body_at].copy_from_slice(&head);
        let resource_at = scope_at - resource_len;
        out.copy_within(ROOM..ROOM + resource_len, resource_at);
        head.clear();
        tag(&mut head, 1, LEN);
        varint(&mut head, (out.len() - resource_at) as u64);
        let start = resource_at - head.len();
        out[start..resource_at].copy_from_slice(&head);
        Bytes::from(out).slice(start..)
    }
}

/// The buffer a sent batch was written in, emptied, for the next batch —
/// when nothing else holds it any more. A batch is large (about 300 bytes a
/// span, ≈ 150 KB for 512): reusing its buffer spares the allocator a large
/// allocation and free per batch, in the heap the requests allocate from.
pub(crate) fn reclaim(mut sent: Bytes) -> Option<Vec<u8>> {
    if !sent.is_unique() {
        return None;
    }
    // Nothing to keep: cut short first, so taking the buffer back copies a
    // byte rather than the batch (cutting to nothing would let it go).
    sent.truncate(1);
    let mut v = Vec::from(sent);
    v.clear();
    (v.capacity() > 0).then_some(v)
}

/// A span's fixed fields.
pub(crate) struct Span<'a> {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent: Option<[u8; 8]>,
    /// Whether the parent came from another process.
    pub(crate) parent_remote: bool,
    pub(crate) trace_state: &'a str,
    pub(crate) sampled: bool,
    /// The name, as pieces written one after the other.
    pub(crate) name: &'a [&'a str],
    pub(crate) kind: Kind,
    /// Unix time in nanoseconds.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// An error status, with its message.
    pub(crate) error: Option<&'a str>,
}

/// `Span.SpanKind`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// The OTLP flag bits of a span: the W3C sampled flag, and whether its
/// parent came from another process.
fn flags(remote: bool, sampled: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(sampled) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// Writes `KeyValue`s into a repeated field of the message being written
/// (and, for a span, its events).
pub(crate) struct Fields<'b> {
    b: &'b mut Vec<u8>,
    field: u32,
}

impl Fields<'_> {
    /// A string attribute.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        // Most attributes are short: their lengths are known up front, so
        // they are written straight, without room kept for a length.
        let any_value = 2 + value.len();
        let key_value = 2 + key.len() + 2 + any_value;
        if key_value < 0x80 {
            let b = &mut *self.b;
            tag(b, self.field, LEN);
            b.push(key_value as u8);
            b.push(0x0a); // KeyValue.key
            b.push(key.len() as u8);
            b.extend_from_slice(key.as_bytes());
            b.push(0x12); // KeyValue.value
            b.push(any_value as u8);
            b.push(0x0a); // AnyValue.string_value
            b.push(value.len() as u8);
            b.extend_from_slice(value.as_bytes());
            return;
        }
        self.value(key, |v| always_bytes(v, 1, value.as_bytes()));
    }

    /// A string attribute written with `Display`.
    pub(crate) fn display(&mut self, key: &str, value: impl std::fmt::Display) {
        self.value(key, |v| {
            nested(v, 1, |s| {
                let mut w = Utf8(s);
                let _ = write!(w, "{value}");
            })
        });
    }

    /// An integer attribute.
    pub(crate) fn int(&mut self, key: &str, value: i64) {
        self.value(key, |v| {
            tag(v, 3, VARINT);
            varint(v, value as u64);
        });
    }

    /// A boolean attribute.
    pub(crate) fn bool(&mut self, key: &str, value: bool) {
        self.value(key, |v| {
            tag(v, 2, VARINT);
            varint(v, u64::from(value));
        });
    }

    /// A span's event at `time` (Unix nanoseconds) with string attributes.
    pub(crate) fn event<'a>(
        &mut self,
        name: &str,
        time: u64,
        attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        nested(self.b, 11, |e| {
            fixed64(e, 1, time);
            string(e, 2, name);
            let mut a = Fields { b: e, field: 3 };
            for (k, v) in attributes {
                a.str(k, v);
            }
        });
    }

    fn value(&mut self, key: &str, any_value: impl FnOnce(&mut Vec<u8>)) {
        nested(self.b, self.field, |kv| {
            string(kv, 1, key);
            nested(kv, 2, any_value);
        });
    }
}

/// `fmt::Write` into a byte buffer (what `Display` writes is UTF-8).
struct Utf8<'b>(&'b mut Vec<u8>);

impl std::fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

// The protobuf wire format: what the fields above are written with.

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn tag(b: &mut Vec<u8>, field: u32, wire: u32) {
    varint(b, u64::from(field << 3 | wire));
}

fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// A length-delimited field whose bytes `body` writes. The length is not
/// known until the body is written: one byte is kept for it, and a body of
/// 128 bytes or more moves up to make room for the rest.
fn nested(b: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(b, field, LEN);
    let at = b.len();
    b.push(0);
    body(b);
    let len = b.len() - at - 1;
    if len < 0x80 {
        b[at] = len as u8;
        return;
    }
    let mut prefix = Vec::with_capacity(10);
    varint(&mut prefix, len as u64);
    b[at] = prefix[0];
    b.splice(at + 1..at + 1, prefix[1..].iter().copied());
}

/// A `bytes` or `string` field, left out when empty (proto3's default).
fn bytes(b: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        always_bytes(b, field, data);
    }
}

fn string(b: &mut Vec<u8>, field: u32, s: &str) {
    bytes(b, field, s.as_bytes());
}

fn always_bytes(b: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(b, field, LEN);
    varint(b, data.len() as u64);
    b.extend_from_slice(data);
}

fn uint(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, VARINT);
        varint(b, v);
    }
}

fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, FIXED64);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32(b: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(b, field, FIXED32);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;

    use super::*;

    fn attr(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<Value> {
        kvs.iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    }

    #[test]
    fn a_batch_decodes_as_the_generated_messages_with_every_field() {
        let resource = resource([
            ("service.name", "wicket"),
            ("deployment.environment", "test"),
        ]);
        let mut batch = Batch::new(&resource, 2, None);
        let long = "x".repeat(300);
        batch.span(
            &Span {
                trace_id: [7; 16],
                span_id: [1; 8],
                parent: Some([2; 8]),
                parent_remote: true,
                trace_state: "vendor=1",
                sampled: true,
                name: &["GET", " ", "api"],
                kind: Kind::Server,
                start: 1_700_000_000_123_456_789,
                end: 1_700_000_000_123_556_789,
                error: Some("upstream_timeout"),
            },
            |a| {
                a.str("http.route", "api");
                a.int("http.response.status_code", 504);
                a.int("negative", -2);
                a.bool("wicket.aborted", true);
                a.display("client.address", std::net::Ipv6Addr::LOCALHOST);
                a.str("empty", "");
                a.str("long", &long);
                a.event(
                    "api key refused",
                    1_700_000_000_123_500_000,
                    [("reason", "no key")],
                );
            },
        );
        batch.span(
            &Span {
                trace_id: [7; 16],
                span_id: [3; 8],
                parent: None,
                parent_remote: false,
                trace_state: "",
                sampled: false,
                name: &["upstream b"],
                kind: Kind::Client,
                start: 5,
                end: 6,
                error: None,
            },
            |_| {},
        );
        let bytes = batch.finish();
        let req = ExportTraceServiceRequest::decode(&bytes[..]).expect("valid protobuf");
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(
            attr(&res.attributes, "deployment.environment"),
            Some(Value::StringValue("test".into()))
        );
        assert_eq!(rs.scope_spans.len(), 1);
        assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "wicket");
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        let s = &spans[0];
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.span_id, vec![1; 8]);
        assert_eq!(s.parent_span_id, vec![2; 8]);
        assert_eq!(s.trace_state, "vendor=1");
        assert_eq!(s.name, "GET api");
        assert_eq!(s.kind, 2);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(s.end_time_unix_nano, 1_700_000_000_123_556_789);
        assert_eq!(s.flags, 0x301);
        assert_eq!(
            attr(&s.attributes, "http.route"),
            Some(Value::StringValue("api".into()))
        );
        assert_eq!(
            attr(&s.attributes, "http.response.status_code"),
            Some(Value::IntValue(504))
        );
        assert_eq!(attr(&s.attributes, "negative"), Some(Value::IntValue(-2)));
        assert_eq!(
            attr(&s.attributes, "wicket.aborted"),
            Some(Value::BoolValue(true))
        );
        assert_eq!(
            attr(&s.attributes, "client.address"),
            Some(Value::StringValue("::1".into()))
        );
        assert_eq!(
            attr(&s.attributes, "empty"),
            Some(Value::StringValue(String::new()))
        );
        assert_eq!(
            attr(&s.attributes, "long"),
            Some(Value::StringValue(long.clone()))
        );
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].name, "api key refused");
        assert_eq!(s.events[0].time_unix_nano, 1_700_000_000_123_500_000);
        assert_eq!(
            attr(&s.events[0].attributes, "reason"),
            Some(Value::StringValue("no key".into()))
        );
        let status = s.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "upstream_timeout")
        );
        let c = &spans[1];
        assert!(c.parent_span_id.is_empty());
        assert_eq!(c.kind, 3);
        assert_eq!(c.flags, 0x100);
        assert_eq!(c.status.as_ref().unwrap().code, 0);
        // Canonical: prost writes the decoded message in as many bytes.
        assert_eq!(req.encoded_len(), bytes.len());
    }

    /// A root internal span named `s`, its ids filled with `i`.
    fn internal(i: u8) -> Span<'static> {
        Span {
            trace_id: [i; 16],
            span_id: [i; 8],
            parent: None,
            parent_remote: false,
            trace_state: "",
            sampled: true,
            name: &["s"],
            kind: Kind::Internal,
            start: 1,
            end: 2,
            error: None,
        }
    }

    #[test]
    fn a_large_batch_has_its_lengths_in_more_bytes() {
        let resource = resource([("service.name", "wicket")]);
        let mut batch = Batch::new(&resource, 1, None);
        let value = "v".repeat(200);
        for i in 0..200u8 {
            batch.span(&internal(i), |a| a.str("k", &value));
        }
        let bytes = batch.finish();
        assert!(bytes.len() > 1 << 14);
        let req = ExportTraceServiceRequest::decode(&bytes[..]).expect("valid protobuf");
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 200);
        assert_eq!(spans[199].span_id, vec![199; 8]);
        assert_eq!(req.encoded_len(), bytes.len());
    }

    #[test]
    fn a_sent_batch_buffer_is_reused_only_when_nothing_else_holds_it() {
        let resource = resource([("service.name", "wicket")]);
        let one = |spare| {
            let mut batch = Batch::new(&resource, 4, spare);
            batch.span(&internal(3), |a| a.str("k", "v"));
            batch.finish()
        };
        let first = one(None);
        let held = first.clone();
        assert!(reclaim(first).is_none(), "a buffer still held elsewhere");
        let buffer = reclaim(held).expect("the last holder gives it back");
        assert!(buffer.is_empty());
        let (at, capacity) = (buffer.as_ptr(), buffer.capacity());
        let second = one(Some(buffer));
        // The same allocation, and the same bytes as a fresh buffer gives.
        assert_eq!(second, one(None));
        let again = reclaim(second).expect("unique");
        assert_eq!((again.as_ptr(), again.capacity()), (at, capacity));
    }

    #[test]
    fn an_empty_batch_is_no_request() {
        assert!(Batch::new(&resource([]), 0, None).finish().is_empty());
    }

    #[test]
    fn lengths_of_128_bytes_and_more_take_more_than_one_byte() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let mut b = Vec::new();
            nested(&mut b, 3, |inner| inner.extend(std::iter::repeat_n(7u8, n)));
            let mut expected = Vec::new();
            always_bytes(&mut expected, 3, &vec![7u8; n]);
            assert_eq!(b, expected, "body of {n} bytes");
        }
    }
}
