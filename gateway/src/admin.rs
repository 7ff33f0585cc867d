//! The admin listener: `GET /metrics` (Prometheus), `GET /status` (the applied
//! generation and the last reload error), `POST /reload`.
//!
//! It shares nothing with client listeners but the snapshot pointer, so a
//! flood of client traffic cannot starve it of connections.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, Body};
use crate::error::json_response;
use crate::gateway::Shared;

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stop.changed() => break,
        }
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(body::full(shared.runtime().metrics().encode()));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/status") => {
            let snap = shared.current();
            let status = shared.status();
            let json = serde_json::json!({
                "generation": snap.generation,
                "applied_at_ms": status.applied_at_ms,
                "last_apply_us": status.last_apply_us,
                "config_digest": snap.digest,
                "routes": snap.route_count(),
                "last_reload_error": status.last_error,
                "reloads_ok": shared.runtime().metrics().reload_count("ok"),
                "reloads_failed": shared.runtime().metrics().reload_count("error"),
            });
            json_response(StatusCode::OK, json.to_string())
        }
        (&Method::POST, "/reload") => match shared.reload().await {
            Ok(generation) => json_response(
                StatusCode::OK,
                serde_json::json!({ "applied": true, "generation": generation }).to_string(),
            ),
            Err(errors) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "applied": false,
                    "generation": shared.current().generation,
                    "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                })
                .to_string(),
            ),
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found","message":"admin endpoints: GET /metrics, GET /status, POST /reload"}"#.into(),
        ),
    }
}
