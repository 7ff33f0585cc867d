//! An OTLP/HTTP collector for the tests: it decodes every export request
//! the gateway POSTs (protobuf `ExportTraceServiceRequest`) and keeps the
//! spans; it can be told to stop answering, as a stuck collector would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
pub use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// A running collector.
#[derive(Clone)]
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    resources: Arc<Mutex<Vec<Vec<KeyValue>>>>,
    /// Export requests received (answered or not).
    pub requests: Arc<AtomicU64>,
    hang: Arc<AtomicBool>,
}

impl Collector {
    /// Start one on `127.0.0.1:0`.
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let c = Collector {
            addr: listener.local_addr().expect("collector address"),
            spans: Default::default(),
            resources: Default::default(),
            requests: Default::default(),
            hang: Default::default(),
        };
        let serving = c.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let c = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        async move { c.export(req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        c
    }

    async fn export(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let wrong = req.uri().path() != "/v1/traces"
            || req
                .headers()
                .get("content-type")
                .is_none_or(|v| v != "application/x-protobuf");
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        if self.hang.load(Ordering::SeqCst) {
            // Stuck: read the request, never answer.
            std::future::pending::<()>().await;
        }
        let decoded = body
            .ok()
            .filter(|_| !wrong)
            .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
        let Some(export) = decoded else {
            let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"bad export")));
            *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
            return Ok(resp);
        };
        for rs in export.resource_spans {
            if let Some(r) = rs.resource {
                self.resources.lock().unwrap().push(r.attributes);
            }
            for ss in rs.scope_spans {
                self.spans.lock().unwrap().extend(ss.spans);
            }
        }
        let mut resp = hyper::Response::new(Full::new(Bytes::from(
            ExportTraceServiceResponse::default().encode_to_vec(),
        )));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(resp)
    }

    /// `http://<addr>/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Stop answering export requests (`true`), or answer again.
    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The resource attributes of every export, as `key=value` strings.
    pub fn resource_attributes(&self) -> Vec<String> {
        self.resources
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|kv| format!("{}={}", kv.key, string(kv)))
            .collect()
    }

    /// The spans of trace `trace_id` (16 bytes), once there are at least
    /// `n` of them (waits up to 10 s).
    pub async fn trace(&self, trace_id: &[u8], n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} spans of the trace arrived: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A span attribute as text (`""` when absent).
pub fn attribute(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(string)
        .unwrap_or_default()
}

fn string(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}
