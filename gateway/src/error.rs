//! The one error type of the request path, and its mapping to an HTTP reply.
//!
//! Every failure a request can meet is a [`ProxyError`]: it knows where it came
//! from (the client, routing, a plugin, the upstream) and maps to exactly one
//! status code and one JSON body. Display text is for people, not matching.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::body::{self, Body};

/// Why a request could not be served normally.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the host and path.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// A route matches the path but not the method.
    #[error("method {method} not allowed")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Methods the matching routes accept, for the `Allow` header.
        allow: String,
    },
    /// The client's request is refused before or while it is read.
    #[error(transparent)]
    Refused(#[from] crate::request::Refusal),
    /// A fail-closed plugin failed.
    #[error("plugin `{plugin}` failed: {source}")]
    Plugin {
        /// The plugin's configured name.
        plugin: String,
        /// What went wrong inside it.
        source: crate::plugin::PluginError,
    },
    /// A plugin chose an upstream the configuration does not define.
    #[error("plugin `{plugin}` chose unknown upstream `{upstream}`")]
    UnknownUpstream {
        /// The plugin that chose it.
        plugin: String,
        /// The name it chose.
        upstream: String,
    },
    /// The upstream could not produce a response.
    #[error("upstream `{upstream}` failed: {kind}")]
    Upstream {
        /// The upstream's name.
        upstream: String,
        /// How it failed.
        kind: crate::upstream::UpstreamErrorKind,
    },
}

impl ProxyError {
    /// The status code sent to the client.
    pub fn status(&self) -> StatusCode {
        use crate::upstream::UpstreamErrorKind as K;
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Refused(r) => r.status(),
            // Overload, not a fault: the client may retry.
            ProxyError::Plugin {
                source: crate::plugin::PluginError::Busy(..),
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Plugin { .. } | ProxyError::UnknownUpstream { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProxyError::Upstream { kind, .. } => match kind {
                K::Timeout => StatusCode::GATEWAY_TIMEOUT,
                K::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
                K::ConnectFailed | K::Reset | K::Refused | K::Protocol | K::Certificate => {
                    StatusCode::BAD_GATEWAY
                }
            },
        }
    }

    /// A stable machine-readable code for the JSON body and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::Refused(r) => r.code(),
            ProxyError::Plugin {
                source: crate::plugin::PluginError::Busy(..),
                ..
            } => "plugin_busy",
            ProxyError::Plugin { .. } => "plugin_failed",
            ProxyError::UnknownUpstream { .. } => "unknown_upstream",
            ProxyError::Upstream { kind, .. } => kind.code(),
        }
    }

    /// What the client is told: the error's kind and where it happened in
    /// the gateway's terms, never a guest's message, a trap's backtrace or a
    /// module path — those go to the log, under the same request id.
    pub fn client_message(&self) -> String {
        match self {
            ProxyError::Plugin { plugin, source } => {
                format!("plugin `{plugin}` failed ({})", source.kind())
            }
            ProxyError::UnknownUpstream { plugin, .. } => {
                format!("plugin `{plugin}` chose an unknown upstream")
            }
            other => other.to_string(),
        }
    }

    /// The reply the client gets (the request path adds the request id
    /// header to every answer, this one included).
    pub fn to_response(&self, request_id: &crate::request::RequestId) -> http::Response<Body> {
        let json = serde_json::json!({
            "error": self.code(),
            "message": self.client_message(),
            "request_id": request_id.as_str(),
        });
        let mut resp = json_response(self.status(), json.to_string());
        resp.extensions_mut()
            .insert(crate::grpc::ErrorMessage(self.client_message()));
        resp.extensions_mut().insert(ErrorCode(self.code()));
        if let ProxyError::MethodNotAllowed { allow, .. } = self {
            if let Ok(v) = HeaderValue::from_str(allow) {
                resp.headers_mut().insert(http::header::ALLOW, v);
            }
        }
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ProxyError::Refused(_)) {
            // The connection may hold the rest of a refused message.
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The gateway's error reply: `{"error": code, "message": message}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> http::Response<Body> {
    let json = serde_json::json!({ "error": code, "message": message });
    json_response(status, json.to_string())
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, json: String) -> http::Response<Body> {
    let mut resp = http::Response::new(body::full(Bytes::from(json)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The code of the gateway's own error reply, kept with the response for the
/// access log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);
