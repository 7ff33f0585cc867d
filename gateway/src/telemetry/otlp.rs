//! OTLP/HTTP export of finished spans: each batch is written straight from
//! the SDK's span data into one protobuf `ExportTraceServiceRequest` and
//! POSTed to the collector.
//!
//! Why not the `opentelemetry-otlp` exporter: it first converts every span
//! into the generated message types — a hash-map lookup of its scope, an
//! owned vector or string for every id, name, attribute key and value — then
//! encodes those and drops them. Measured with `cargo bench -p wicket-tests
//! --bench trace`, that was half of what tracing a request cost the gateway
//! core it runs on. This writes the same wire format (the OTLP protobuf
//! schema, v1) with no allocation per span; the tests decode what it writes
//! with the generated types and compare it with the SDK's own conversion.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

/// Sends batches to one collector.
#[derive(Debug)]
pub(crate) struct OtlpExporter {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: Uri,
    headers: HeaderMap,
    timeout: Duration,
    /// `ResourceSpans.resource` (field 1, key included) and
    /// `ResourceSpans.schema_url`, written once when the SDK hands over the
    /// resource: every batch carries the same.
    resource: Vec<u8>,
    schema_url: String,
}

impl OtlpExporter {
    /// An exporter to `endpoint` (an `http://` URL, already checked), each
    /// export request sending `headers` and cut after `timeout`.
    pub(crate) fn new(endpoint: Uri, headers: HeaderMap, timeout: Duration) -> OtlpExporter {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        OtlpExporter {
            client,
            endpoint,
            headers,
            timeout,
            resource: Vec::new(),
            schema_url: String::new(),
        }
    }

    async fn send(&self, body: Vec<u8>) -> OTelSdkResult {
        let mut req = http::Request::post(self.endpoint.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        *req.headers_mut() = self.headers.clone();
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| OTelSdkError::InternalFailure(format!("{e:#}")))?;
            let status = resp.status();
            // Read the answer whole, so the connection is kept for the next batch.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(OTelSdkError::InternalFailure(format!(
                    "the collector answered {status}"
                )))
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(OTelSdkError::Timeout(self.timeout)),
        }
    }
}

impl SpanExporter for OtlpExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let body = encode_request(&batch, &self.resource, &self.schema_url);
        drop(batch);
        self.send(body)
    }

    fn set_resource(&mut self, resource: &Resource) {
        let mut buf = Vec::new();
        nested(&mut buf, 1, |r| {
            for (key, value) in resource.iter() {
                nested(r, 1, |kv| key_value(kv, key.as_str(), value));
            }
        });
        self.resource = buf;
        self.schema_url = resource.schema_url().unwrap_or_default().to_string();
    }
}

/// `ExportTraceServiceRequest` of `spans`: one `ResourceSpans` (the
/// already-encoded `resource`), and a `ScopeSpans` for each run of spans
/// from one instrumentation scope.
pub(crate) fn encode_request(spans: &[SpanData], resource: &[u8], schema_url: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + resource.len() + spans.len() * 320);
    if spans.is_empty() {
        return out;
    }
    nested(&mut out, 1, |rs| {
        rs.extend_from_slice(resource);
        let mut rest = spans;
        while let Some(first) = rest.first() {
            let scope = &first.instrumentation_scope;
            let n = rest
                .iter()
                .take_while(|s| s.instrumentation_scope == *scope)
                .count();
            let (run, tail) = rest.split_at(n);
            nested(rs, 2, |ss| {
                nested(ss, 1, |b| instrumentation_scope(b, scope));
                for span in run {
                    nested(ss, 2, |b| encode_span(b, span));
                }
                string(ss, 3, scope.schema_url().unwrap_or_default());
            });
            rest = tail;
        }
        string(rs, 3, schema_url);
    });
    out
}

/// The OTLP flag bits of a span: the W3C trace flags, and whether its
/// parent came from another process.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn encode_span(b: &mut Vec<u8>, s: &SpanData) {
    let cx = &s.span_context;
    bytes(b, 1, &cx.trace_id().to_bytes());
    bytes(b, 2, &cx.span_id().to_bytes());
    string(b, 3, &cx.trace_state().header());
    if s.parent_span_id != SpanId::INVALID {
        bytes(b, 4, &s.parent_span_id.to_bytes());
    }
    string(b, 5, &s.name);
    uint(b, 6, span_kind(&s.span_kind));
    fixed64(b, 7, nanos(s.start_time));
    fixed64(b, 8, nanos(s.end_time));
    for kv in &s.attributes {
        nested(b, 9, |a| key_value(a, kv.key.as_str(), &kv.value));
    }
    uint(b, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        nested(b, 11, |ev| {
            fixed64(ev, 1, nanos(e.timestamp));
            string(ev, 2, &e.name);
            for kv in &e.attributes {
                nested(ev, 3, |a| key_value(a, kv.key.as_str(), &kv.value));
            }
            uint(ev, 4, u64::from(e.dropped_attributes_count));
        });
    }
    uint(b, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        nested(b, 13, |lk| {
            let cx = &l.span_context;
            bytes(lk, 1, &cx.trace_id().to_bytes());
            bytes(lk, 2, &cx.span_id().to_bytes());
            string(lk, 3, &cx.trace_state().header());
            for kv in &l.attributes {
                nested(lk, 4, |a| key_value(a, kv.key.as_str(), &kv.value));
            }
            uint(lk, 5, u64::from(l.dropped_attributes_count));
            fixed32(lk, 6, flags(cx.is_remote(), cx.trace_flags().to_u8()));
        });
    }
    uint(b, 14, u64::from(s.links.dropped_count));
    nested(b, 15, |st| {
        let code = match &s.status {
            Status::Unset => 0,
            Status::Ok => 1,
            Status::Error { description } => {
                string(st, 2, description);
                2
            }
        };
        uint(st, 3, code);
    });
    fixed32(
        b,
        16,
        flags(s.parent_span_is_remote, cx.trace_flags().to_u8()),
    );
}

fn flags(remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn instrumentation_scope(b: &mut Vec<u8>, scope: &InstrumentationScope) {
    string(b, 1, scope.name());
    string(b, 2, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        nested(b, 3, |a| key_value(a, kv.key.as_str(), &kv.value));
    }
}

/// A `KeyValue` message's fields.
fn key_value(b: &mut Vec<u8>, key: &str, value: &Value) {
    string(b, 1, key);
    nested(b, 2, |v| any_value(v, value));
}

/// An `AnyValue` message's one field (a oneof: written even when it holds
/// its type's default).
fn any_value(b: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(x) => {
            tag(b, 2, VARINT);
            varint(b, u64::from(*x));
        }
        Value::I64(x) => {
            tag(b, 3, VARINT);
            varint(b, *x as u64);
        }
        Value::F64(x) => {
            tag(b, 4, FIXED64);
            b.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::String(s) => always_bytes(b, 1, s.as_str().as_bytes()),
        Value::Array(array) => nested(b, 5, |list| {
            let mut item = |v: Value| nested(list, 1, |i| any_value(i, &v));
            match array {
                Array::Bool(xs) => xs.iter().for_each(|x| item(Value::Bool(*x))),
                Array::I64(xs) => xs.iter().for_each(|x| item(Value::I64(*x))),
                Array::F64(xs) => xs.iter().for_each(|x| item(Value::F64(*x))),
                Array::String(xs) => xs.iter().for_each(|x| item(Value::String(x.clone()))),
                // A kind of array a later API may add: its text.
                other => item(Value::String(other.to_string().into())),
            }
        }),
        // A kind of value a later API may add: its text.
        other => always_bytes(b, 1, other.as_str().as_bytes()),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use super::*;

    fn span(name: &'static str, parent: u64, scope: &InstrumentationScope) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let state = TraceState::from_key_value([("vendor", "opaque")]).unwrap();
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "refused",
            start + Duration::from_micros(3),
            vec![KeyValue::new("reason", "no key")],
            1,
        ));
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            SpanContext::new(
                TraceId::from(7),
                SpanId::from(9),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ),
            vec![KeyValue::new("why", "follows")],
            0,
        ));
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
                SpanId::from(0xb7ad_6b71_6920_3331 + parent),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: parent == 1,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: start + Duration::from_micros(250),
            attributes: vec![
                KeyValue::new("http.route", "users"),
                KeyValue::new("http.response.status_code", 503_i64),
                KeyValue::new("wicket.retries", -2_i64),
                KeyValue::new("wicket.aborted", true),
                KeyValue::new("wicket.ratio", 0.25),
                KeyValue::new("empty", ""),
                KeyValue::new(
                    "list",
                    opentelemetry::Value::Array(opentelemetry::Array::String(vec![
                        "a".into(),
                        "b".into(),
                    ])),
                ),
                KeyValue::new("long", "x".repeat(300)),
            ],
            dropped_attributes_count: 2,
            events,
            links,
            status: Status::error("upstream answered 5xx"),
            instrumentation_scope: scope.clone(),
        }
    }

    #[test]
    fn encoding_matches_the_generated_messages_and_the_sdks_conversion() {
        let wicket = InstrumentationScope::builder("wicket")
            .with_version("0.1.0")
            .build();
        let other = InstrumentationScope::builder("other").build();
        let spans = vec![
            span("GET users", 1, &wicket),
            span("key-auth on-request", 0, &wicket),
            span("other", 5, &other),
            span("GET users again", 1, &wicket),
        ];
        let resource = Resource::builder()
            .with_service_name("wicket")
            .with_attribute(KeyValue::new("deployment.environment", "test"))
            .build();
        let mut exporter = OtlpExporter::new(
            "http://127.0.0.1:9/v1/traces".parse().unwrap(),
            HeaderMap::new(),
            Duration::from_secs(1),
        );
        exporter.set_resource(&resource);

        let ours = encode_request(&spans, &exporter.resource, &exporter.schema_url);
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).expect("valid protobuf");
        // The SDK groups spans by scope; this writes one run per scope. Each
        // span's message, the resource and the scopes must be the same.
        let theirs = group_spans_by_resource_and_scope(
            spans.clone(),
            &ResourceAttributesWithSchema::from(&resource),
        );
        assert_eq!(decoded.resource_spans.len(), 1);
        let ours_rs = &decoded.resource_spans[0];
        assert_eq!(ours_rs.resource, theirs[0].resource);
        assert_eq!(ours_rs.schema_url, theirs[0].schema_url);
        let flatten = |rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans| {
            let mut all: Vec<_> = rs
                .scope_spans
                .iter()
                .flat_map(|ss| ss.spans.iter().map(move |s| (ss.scope.clone(), s.clone())))
                .collect();
            all.sort_by(|a, b| a.1.name.cmp(&b.1.name));
            all
        };
        let expected = flatten(&theirs[0]);
        assert_eq!(expected.len(), 4);
        assert_eq!(flatten(ours_rs), expected);
        // Runs: wicket, other, wicket.
        assert_eq!(ours_rs.scope_spans.len(), 3);
        // The same bytes prost writes for the decoded message (canonical
        // encoding, fields in order, up to field order within a span).
        assert_eq!(decoded.encoded_len(), ours.len());
    }

    #[test]
    fn an_empty_batch_is_an_empty_request() {
        assert!(encode_request(&[], b"", "").is_empty());
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
