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
            // The request and response handles, and the request context,
            // trap when used outside a hook.
            "wicket:plugin/types": trappable,
            "wicket:plugin/context": trappable,
            "wicket:plugin/span": trappable,
        },
        exports: { default: async },
        with: {
            "wicket:plugin/types.request": crate::plugin::host::RequestHandle,
            "wicket:plugin/types.response-head": crate::plugin::host::ResponseHandle,
        },
    });
}

pub(crate) use generated::wicket::plugin::{
    clock, context, gateway, log, metrics, span, state, types,
};

use wasmtime::component::{
    Component, ComponentExportIndex, Func, Instance, Linker, Resource, TypedFunc,
};

use super::host::{HostState, RequestHandle, ResponseHandle};

/// Link every host import of the contract into `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    generated::Policy::add_to_linker::<_, wasmtime::component::HasSelf<HostState>>(linker, |s| s)
}

/// Where a component's exports are, found once per component. `init` is
/// required; each hook is optional (the `request-policy` and
/// `response-policy` worlds export only one), but a component must export at
/// least one.
#[derive(Clone)]
pub(crate) struct Exports {
    init: ComponentExportIndex,
    on_request: Option<ComponentExportIndex>,
    on_response: Option<ComponentExportIndex>,
}

impl Exports {
    /// Find the exports, or say what is missing.
    pub(crate) fn new(component: &Component) -> Result<Exports, String> {
        let find = |name: &str| component.get_export_index(None, name);
        let init = find("init").ok_or("it exports no `init` function")?;
        let (on_request, on_response) = (find("on-request"), find("on-response"));
        if on_request.is_none() && on_response.is_none() {
            return Err("it exports neither `on-request` nor `on-response`".into());
        }
        Ok(Exports {
            init,
            on_request,
            on_response,
        })
    }

    /// The typed functions of one instance; fails when an export's type does
    /// not match the contract.
    pub(crate) fn funcs(
        &self,
        store: &mut wasmtime::Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Funcs> {
        let func = |store: &mut wasmtime::Store<HostState>, index: &ComponentExportIndex, name| {
            instance
                .get_func(&mut *store, index)
                .ok_or_else(|| wasmtime::Error::msg(format!("export `{name}` is not a function")))
        };
        let init = func(store, &self.init, "init")?;
        init.typed::<(&str,), (Result<types::Hooks, String>,)>(&*store)?;
        let on_request = match &self.on_request {
            Some(i) => Some(func(store, i, "on-request")?.typed(&*store)?),
            None => None,
        };
        let on_response = match &self.on_response {
            Some(i) => Some(func(store, i, "on-response")?.typed(&*store)?),
            None => None,
        };
        Ok(Funcs {
            init,
            on_request,
            on_response,
        })
    }
}

type OnRequest = TypedFunc<(Resource<RequestHandle>,), (types::RequestAction,)>;
type OnResponse = TypedFunc<
    (
        Resource<RequestHandle>,
        types::UpstreamOutcome,
        Resource<ResponseHandle>,
    ),
    (types::ResponseAction,),
>;

/// The exported functions of one instance, type-checked.
pub(crate) struct Funcs {
    /// `(&str,) -> (result<hooks, string>,)`, checked in [`Exports::funcs`];
    /// kept untyped because the parameter borrows.
    init: Func,
    on_request: Option<OnRequest>,
    on_response: Option<OnResponse>,
}

impl Funcs {
    /// Call `init`.
    pub(crate) async fn init(
        &self,
        store: &mut wasmtime::Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<Hooks, String>> {
        let init = self
            .init
            .typed::<(&str,), (Result<types::Hooks, String>,)>(&*store)?;
        let (result,) = init.call_async(&mut *store, (config,)).await?;
        Ok(result.map(hooks))
    }

    /// Whether the component exports the hooks `declared` names.
    pub(crate) fn exports(&self, declared: Hooks) -> Result<(), String> {
        let missing = |flag: bool, export: bool, name: &str| {
            (flag && !export)
                .then(|| format!("init declares `{name}`, which the component does not export"))
        };
        match missing(declared.on_request, self.on_request.is_some(), "on-request").or_else(|| {
            missing(
                declared.on_response,
                self.on_response.is_some(),
                "on-response",
            )
        }) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Call `on-request` with the borrowed request.
    pub(crate) async fn on_request(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<types::RequestAction> {
        let f = self
            .on_request
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("on-request is not exported"))?;
        Ok(f.call_async(store, (Resource::new_borrow(0),)).await?.0)
    }

    /// Call `on-response` with the borrowed request and response head.
    pub(crate) async fn on_response(
        &self,
        store: &mut wasmtime::Store<HostState>,
        outcome: types::UpstreamOutcome,
    ) -> wasmtime::Result<types::ResponseAction> {
        let f = self
            .on_response
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("on-response is not exported"))?;
        let args = (Resource::new_borrow(0), outcome, Resource::new_borrow(0));
        Ok(f.call_async(store, args).await?.0)
    }
}

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
                // Refused unprocessed, again on a new connection.
                UpstreamErrorKind::Refused => E::Reset,
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
