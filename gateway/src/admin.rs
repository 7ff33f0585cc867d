//! The admin listener: `GET /metrics` (Prometheus), `GET /status` (the applied
//! generation and the last reload error), `POST /reload`, and
//! `GET`/`PUT`/`DELETE /plugins/{plugin}/state/{key}` (a plugin's shared
//! state, e.g. the manual switch of `degradation`).
//!
//! It shares nothing with client listeners but the snapshot pointer, so a
//! flood of client traffic cannot starve it of connections. It has no
//! authentication: bind it to loopback or a management network only.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, Body};
use crate::error::{json_error, json_response};
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

const ENDPOINTS: &str =
    "GET /metrics, GET /status, POST /reload, GET|PUT|DELETE /plugins/{plugin}/state/{key}";

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    if let Some(rest) = req.uri().path().strip_prefix("/plugins/") {
        let rest = rest.to_string();
        return plugin_state(shared, req, &rest).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(body::full(shared.runtime().metrics().encode()));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
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
        _ => not_found(&format!("admin endpoints: {ENDPOINTS}")),
    }
}

fn not_found(message: &str) -> Response<Body> {
    json_error(StatusCode::NOT_FOUND, "not_found", message)
}

/// `/plugins/{plugin}/state/{key}`: read, write or delete one key of a
/// plugin's shared state, exactly as the plugin's own `state` calls would.
/// `PUT` takes the raw value as the body and an optional `?ttl_ms=N`; `GET`
/// answers with the raw value and its version in `x-wicket-state-version`.
async fn plugin_state(shared: &Shared, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let Some((plugin, key)) = rest.split_once("/state/") else {
        return not_found(&format!("admin endpoints: {ENDPOINTS}"));
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
    };
    let (Ok(plugin), Ok(key)) = (decode(plugin), decode(key)) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "plugin and key must be percent-encoded UTF-8",
        );
    };
    if !shared.current().has_plugin(&plugin) {
        return not_found(&format!(
            "no plugin `{plugin}` in the applied configuration"
        ));
    }
    let state = shared.runtime().state();
    let ns: Arc<str> = Arc::from(plugin.as_str());
    let result = match req.method().clone() {
        Method::GET => match state.get(&ns, &key).await {
            Ok(Some(entry)) => {
                let mut resp = Response::new(body::full(Bytes::from(entry.value)));
                resp.headers_mut().insert(
                    "x-wicket-state-version",
                    http::HeaderValue::from(entry.version),
                );
                return resp;
            }
            Ok(None) => return not_found(&format!("no key `{key}` in `{plugin}`'s state")),
            Err(e) => Err(e),
        },
        Method::PUT => {
            let ttl_ms = match ttl_param(req.uri().query()) {
                Ok(ttl) => ttl,
                Err(message) => {
                    return json_error(StatusCode::BAD_REQUEST, "bad_request", &message)
                }
            };
            let value = match Limited::new(req.into_body(), crate::state::MAX_VALUE_BYTES + 1)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes().to_vec(),
                Err(_) => {
                    return json_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        &format!(
                            "a state value is at most {} bytes",
                            crate::state::MAX_VALUE_BYTES
                        ),
                    )
                }
            };
            state
                .set(&ns, &key, value, ttl_ms)
                .await
                .map(|version| serde_json::json!({ "version": version }))
        }
        Method::DELETE => state
            .delete(&ns, &key)
            .await
            .map(|existed| serde_json::json!({ "deleted": existed })),
        _ => {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "plugin state takes GET, PUT or DELETE",
            )
        }
    };
    match result {
        Ok(json) => {
            tracing::info!(
                plugin = &*ns,
                key,
                "plugin state changed through the admin API"
            );
            json_response(StatusCode::OK, json.to_string())
        }
        Err(crate::state::StateError::TooLarge) => json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the key or value is larger than the state store allows",
        ),
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_unavailable",
            &e.to_string(),
        ),
    }
}

/// `ttl_ms=N` from the query, if present.
fn ttl_param(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("ttl_ms", v)) => {
                return v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("ttl_ms: expected milliseconds, got {v:?}"))
            }
            _ if pair.is_empty() => {}
            _ => return Err(format!("unknown query parameter {pair:?} (only ttl_ms)")),
        }
    }
    Ok(None)
}
