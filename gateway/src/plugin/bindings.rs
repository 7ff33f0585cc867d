//! Generated bindings for `wit/plugin.wit` and the conversions at the boundary.
//!
//! Nothing outside this module names a generated type. Values coming out of a
//! guest are validated here — header names and values, counts, sizes, status
//! codes, paths — so a hostile plugin's output never reaches hyper unchecked.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use super::{
    Hooks, OutcomeResult, PluginError, PluginResponse, RequestDecision, RequestPatch,
    ResponseDecision, ResponsePatch, UpstreamOutcome,
};
use crate::config::Limits;
use crate::upstream::UpstreamErrorKind;

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        imports: {
            "wicket:plugin/state": async,
            // The request and response handles trap when used outside a hook.
            "wicket:plugin/types": trappable,
        },
        exports: { default: async },
        with: {
            "wicket:plugin/types.request": crate::plugin::host::RequestHandle,
            "wicket:plugin/types.response-head": crate::plugin::host::ResponseHandle,
        },
    });
}

pub(crate) use generated::wicket::plugin::{clock, gateway, log, metrics, state, types};
pub(crate) use generated::{Policy, PolicyPre};

/// Convert the hooks `init` declared.
pub(crate) fn hooks(h: types::Hooks) -> Hooks {
    Hooks {
        on_request: h.contains(types::Hooks::ON_REQUEST),
        on_response: h.contains(types::Hooks::ON_RESPONSE),
    }
}

/// A header as the guest's type.
pub(crate) fn header(name: &HeaderName, value: &HeaderValue) -> types::Header {
    types::Header {
        name: name.as_str().to_string(),
        value: value.as_bytes().to_vec(),
    }
}

/// A connection's TLS facts as the guest's type.
pub(crate) fn tls_info(t: &crate::server::tls::TlsInfo) -> types::TlsInfo {
    types::TlsInfo {
        server_name: t.sni.clone(),
        alpn: t.alpn.clone(),
        version: t.version.to_string(),
        client_certificate: t.client.as_ref().map(|c| types::ClientCertificate {
            subject: c.subject.clone(),
            sans: c.sans.clone(),
            sha256: c.sha256.clone(),
        }),
    }
}

/// Convert an upstream outcome to the guest's type.
pub(crate) fn outcome(o: &UpstreamOutcome) -> types::UpstreamOutcome {
    use types::UpstreamError as E;
    types::UpstreamOutcome {
        result: match o.result {
            OutcomeResult::Status(s) => types::UpstreamResult::Status(s),
            OutcomeResult::Skipped => types::UpstreamResult::Skipped,
            OutcomeResult::Error(kind) => types::UpstreamResult::Error(match kind {
                UpstreamErrorKind::ConnectFailed => E::ConnectFailed,
                UpstreamErrorKind::Timeout => E::Timeout,
                UpstreamErrorKind::Reset => E::Reset,
                UpstreamErrorKind::NoEndpoint => E::NoEndpoint,
                UpstreamErrorKind::Protocol => E::Protocol,
                // The 0.1 enum is closed: a refused certificate reads as
                // the connect failure it is to a plugin.
                UpstreamErrorKind::Certificate => E::ConnectFailed,
            }),
        },
        latency_us: o.latency_us,
        endpoint: o.endpoint.clone(),
    }
}

/// Validate and convert what `on-request` returned.
pub(crate) fn request_decision(
    action: types::RequestAction,
    limits: &Limits,
) -> Result<RequestDecision, PluginError> {
    match action {
        types::RequestAction::Continue(p) => {
            let mut budget = Budget::new(limits);
            let patch = RequestPatch {
                set_headers: headers(p.set_headers, &mut budget)?,
                remove_headers: names(p.remove_headers, &mut budget)?,
                path: p.path.map(path).transpose()?,
                query: p.query.map(query).transpose()?,
                upstream: p.upstream,
                response_headers: headers(p.response_headers, &mut budget)?,
            };
            Ok(RequestDecision::Continue(patch))
        }
        types::RequestAction::Respond(r) => Ok(RequestDecision::Respond(response(r, limits)?)),
    }
}

/// Validate and convert what `on-response` returned.
pub(crate) fn response_decision(
    action: types::ResponseAction,
    limits: &Limits,
) -> Result<ResponseDecision, PluginError> {
    match action {
        types::ResponseAction::Continue(p) => {
            let mut budget = Budget::new(limits);
            Ok(ResponseDecision::Continue(ResponsePatch {
                status: p.status.map(status).transpose()?,
                set_headers: headers(p.set_headers, &mut budget)?,
                remove_headers: names(p.remove_headers, &mut budget)?,
            }))
        }
        types::ResponseAction::Replace(r) => Ok(ResponseDecision::Replace(response(r, limits)?)),
    }
}

fn response(r: types::Response, limits: &Limits) -> Result<PluginResponse, PluginError> {
    if r.body.len() > limits.max_body_bytes as usize {
        return Err(PluginError::InvalidOutput(format!(
            "body of {} bytes exceeds the limit of {}",
            r.body.len(),
            limits.max_body_bytes
        )));
    }
    let mut budget = Budget::new(limits);
    Ok(PluginResponse {
        status: status(r.status)?,
        headers: headers(r.headers, &mut budget)?,
        body: Bytes::from(r.body),
    })
}

/// What one hook result may still copy into the host.
struct Budget {
    headers: u32,
    bytes: u32,
    max_headers: u32,
    max_bytes: u32,
}

impl Budget {
    fn new(limits: &Limits) -> Budget {
        Budget {
            headers: 0,
            bytes: 0,
            max_headers: limits.max_headers,
            max_bytes: limits.max_header_bytes,
        }
    }

    fn take(&mut self, bytes: usize) -> Result<(), PluginError> {
        self.headers += 1;
        self.bytes = self
            .bytes
            .saturating_add(bytes.min(u32::MAX as usize) as u32);
        if self.headers > self.max_headers {
            return Err(PluginError::InvalidOutput(format!(
                "more than {} headers",
                self.max_headers
            )));
        }
        if self.bytes > self.max_bytes {
            return Err(PluginError::InvalidOutput(format!(
                "headers exceed {} bytes",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

fn headers(
    list: Vec<types::Header>,
    budget: &mut Budget,
) -> Result<Vec<(HeaderName, HeaderValue)>, PluginError> {
    list.into_iter()
        .map(|h| {
            budget.take(h.name.len() + h.value.len())?;
            let name = header_name(&h.name)?;
            // Validated in place: the guest's bytes become the value uncopied.
            let value = HeaderValue::from_maybe_shared(Bytes::from(h.value)).map_err(|_| {
                PluginError::InvalidOutput(format!("invalid value for header `{}`", h.name))
            })?;
            Ok((name, value))
        })
        .collect()
}

fn names(list: Vec<String>, budget: &mut Budget) -> Result<Vec<HeaderName>, PluginError> {
    list.into_iter()
        .map(|n| {
            budget.take(n.len())?;
            header_name(&n)
        })
        .collect()
}

fn header_name(name: &str) -> Result<HeaderName, PluginError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| PluginError::InvalidOutput(format!("invalid header name {name:?}")))
}

fn status(code: u16) -> Result<StatusCode, PluginError> {
    match StatusCode::from_u16(code) {
        Ok(s) if (200..=599).contains(&code) => Ok(s),
        _ => Err(PluginError::InvalidOutput(format!(
            "status {code} is not a final status (200-599)"
        ))),
    }
}

fn query(q: String) -> Result<String, PluginError> {
    let valid = !q.contains('#')
        && (q.is_empty() || http::uri::PathAndQuery::try_from(format!("/?{q}").as_str()).is_ok());
    if valid {
        Ok(q)
    } else {
        Err(PluginError::InvalidOutput(format!("invalid query {q:?}")))
    }
}

fn path(p: String) -> Result<String, PluginError> {
    let valid = p.starts_with('/')
        && !p.contains(['?', '#'])
        && http::uri::PathAndQuery::try_from(p.as_str()).is_ok();
    if valid {
        Ok(p)
    } else {
        Err(PluginError::InvalidOutput(format!("invalid path {p:?}")))
    }
}
