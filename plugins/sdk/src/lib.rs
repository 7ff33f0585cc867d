//! The Rust SDK for Wicket policy plugins: implement [`Plugin`], then call
//! [`export_plugin!`] once.
//!
//! ```ignore
//! use wicket_plugin_sdk::{export_plugin, Hooks, Plugin, Request, RequestAction, RequestPatch};
//!
//! struct AddHeader { value: String }
//!
//! impl Plugin for AddHeader {
//!     fn init(config: &str) -> Result<Self, String> {
//!         Ok(AddHeader { value: config.to_string() })
//!     }
//!
//!     // Only `on-request`: the host then skips `on-response` for this plugin.
//!     fn hooks(&self) -> Hooks {
//!         Hooks::ON_REQUEST
//!     }
//!     fn on_request(&self, _req: &Request) -> RequestAction {
//!         RequestAction::Continue(RequestPatch::default().set_header("x-hello", &self.value))
//!     }
//! }
//!
//! export_plugin!(AddHeader);
//! ```
//!
//! The hooks' semantics (when they run, what each result means) are documented in
//! the contract, `wit/plugin.wit`. Instances are reused across requests, so a
//! plugin keeps no per-request state in `self`; shared counters live in
//! [`state`].
//!
//! A hook's [`Request`] and [`ResponseHead`] fetch from the host only what the
//! plugin reads, and cache it for the rest of the call; in native unit tests
//! build them from plain values with [`Request::from_head`] and
//! [`ResponseHead::new`].

#![forbid(unsafe_code)]

pub mod config;
pub mod transact;

/// Bindings generated from the contract. Plugin authors use the re-exports below.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // `on-response`'s export glue: two handles and a flattened record
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy",
        default_bindings_module: "wicket_plugin_sdk::bindings",
        generate_all,
    });
}

use std::cell::OnceCell;

use bindings::wicket::plugin::types as wit;
pub use bindings::wicket::plugin::types::{
    ClientCertificate, Header, Hooks, RequestAction, RequestHead, RequestPatch, Response,
    ResponseAction, ResponsePatch, RouteParam, TlsInfo, UpstreamError, UpstreamOutcome,
    UpstreamResult,
};
pub use bindings::wicket::plugin::{clock, context, gateway, log, metrics, span, state};

/// A policy plugin. Every hook has a default that lets traffic through unchanged.
pub trait Plugin: Sized + 'static {
    /// Build the plugin from its per-route configuration (JSON text, `{}` when the
    /// route gives none). Return a message naming the bad field on error; the
    /// gateway reports it at the configuration's location.
    fn init(config: &str) -> Result<Self, String>;

    /// The hooks this plugin implements, asked once right after `init`; the
    /// host never calls the others, which saves a guest call per request.
    /// Default: both. A plugin that only decides on the request returns
    /// `Hooks::ON_REQUEST`; the answer may depend on the configuration (a
    /// header injector with no response headers needs no `on-response`).
    fn hooks(&self) -> Hooks {
        Hooks::all()
    }

    /// Runs for each request, in chain order. Default: continue unchanged.
    fn on_request(&self, request: &Request) -> RequestAction {
        let _ = request;
        RequestAction::Continue(RequestPatch::default())
    }

    /// Runs when the response is known, in reverse chain order. Default: keep it.
    fn on_response(
        &self,
        request: &Request,
        outcome: &UpstreamOutcome,
        response: &ResponseHead,
    ) -> ResponseAction {
        let _ = (request, outcome, response);
        ResponseAction::Continue(ResponsePatch::default())
    }
}

// Wasm components run single-threaded, so a thread-local holds the one
// initialised plugin value of this instance.
thread_local! {
    static INSTANCE: OnceCell<Box<dyn std::any::Any>> = const { OnceCell::new() };
}

#[doc(hidden)]
pub fn __init<P: Plugin>(config: String) -> Result<Hooks, String> {
    let plugin = P::init(&config)?;
    let hooks = plugin.hooks();
    INSTANCE.with(|cell| {
        cell.set(Box::new(plugin))
            .map_err(|_| "init called twice on one instance".to_string())
    })?;
    Ok(hooks)
}

fn with_plugin<P: Plugin, R>(f: impl FnOnce(&P) -> R) -> R {
    INSTANCE.with(|cell| {
        let plugin = cell
            .get()
            .and_then(|b| b.downcast_ref::<P>())
            .expect("the host calls init before any hook");
        f(plugin)
    })
}

#[doc(hidden)]
pub fn __on_request<P: Plugin>(request: &wit::Request) -> RequestAction {
    let request = Request::from_host(request);
    with_plugin(|p: &P| p.on_request(&request))
}

#[doc(hidden)]
pub fn __on_response<P: Plugin>(
    request: &wit::Request,
    outcome: UpstreamOutcome,
    response: &wit::ResponseHead,
) -> ResponseAction {
    let request = Request::from_host(request);
    let response = ResponseHead::from_host(response);
    with_plugin(|p: &P| p.on_response(&request, &outcome, &response))
}

/// Export a [`Plugin`] implementation as the component's `policy` world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __WicketPolicy;
        impl $crate::bindings::Guest for __WicketPolicy {
            fn init(config: String) -> Result<$crate::Hooks, String> {
                $crate::__init::<$plugin>(config)
            }
            fn on_request(
                request: &$crate::bindings::wicket::plugin::types::Request,
            ) -> $crate::RequestAction {
                $crate::__on_request::<$plugin>(request)
            }
            fn on_response(
                request: &$crate::bindings::wicket::plugin::types::Request,
                outcome: $crate::UpstreamOutcome,
                response: &$crate::bindings::wicket::plugin::types::ResponseHead,
            ) -> $crate::ResponseAction {
                $crate::__on_response::<$plugin>(request, outcome, response)
            }
        }
        $crate::bindings::__export_policy!(__WicketPolicy with_types_in $crate::bindings);
    };
}

/// The request a hook sees. Each part is fetched from the host the first time
/// it is read and cached for the rest of the call, so a plugin pays only for
/// what it reads.
pub struct Request<'a> {
    /// `None` for a request built from plain values (tests): every cell is
    /// then filled up front.
    host: Option<&'a wit::Request>,
    method: OnceCell<String>,
    scheme: OnceCell<String>,
    authority: OnceCell<String>,
    path: OnceCell<String>,
    query: OnceCell<Option<String>>,
    client_addr: OnceCell<String>,
    route: OnceCell<String>,
    upstream: OnceCell<String>,
    params: OnceCell<Vec<RouteParam>>,
    headers: OnceCell<Vec<Header>>,
    tls: OnceCell<Option<TlsInfo>>,
}

impl<'a> Request<'a> {
    fn from_host(host: &'a wit::Request) -> Request<'a> {
        Request {
            host: Some(host),
            method: OnceCell::new(),
            scheme: OnceCell::new(),
            authority: OnceCell::new(),
            path: OnceCell::new(),
            query: OnceCell::new(),
            client_addr: OnceCell::new(),
            route: OnceCell::new(),
            upstream: OnceCell::new(),
            params: OnceCell::new(),
            headers: OnceCell::new(),
            tls: OnceCell::new(),
        }
    }

    /// A request from plain values, for unit tests of a plugin's logic.
    pub fn from_head(head: RequestHead) -> Request<'static> {
        Request {
            host: None,
            method: OnceCell::from(head.method),
            scheme: OnceCell::from(head.scheme),
            authority: OnceCell::from(head.authority),
            path: OnceCell::from(head.path),
            query: OnceCell::from(head.query),
            client_addr: OnceCell::from(head.client_addr),
            route: OnceCell::from(head.route),
            upstream: OnceCell::from(head.upstream),
            params: OnceCell::from(head.params),
            headers: OnceCell::from(head.headers),
            tls: OnceCell::from(None),
        }
    }

    /// The same, on a TLS connection with these facts (tests of policies
    /// that read the handshake, such as mTLS authorisation).
    pub fn from_head_tls(head: RequestHead, tls: TlsInfo) -> Request<'static> {
        let r = Request::from_head(head);
        Request {
            tls: OnceCell::from(Some(tls)),
            ..r
        }
    }

    fn fetch<'s, T>(
        &'s self,
        cell: &'s OnceCell<T>,
        get: impl FnOnce(&wit::Request) -> T,
    ) -> &'s T {
        cell.get_or_init(|| get(self.host.expect(FILLED)))
    }

    /// Upper-case method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.fetch(&self.method, wit::Request::method).as_str()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.fetch(&self.scheme, wit::Request::scheme).as_str()
    }

    /// The `Host` (or `:authority`), including any port.
    pub fn authority(&self) -> &str {
        self.fetch(&self.authority, wit::Request::authority)
            .as_str()
    }

    /// The path, starting with `/`, without the query.
    pub fn path(&self) -> &str {
        self.fetch(&self.path, wit::Request::path).as_str()
    }

    /// The raw query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.fetch(&self.query, wit::Request::query).as_deref()
    }

    /// The client's address as `ip:port`.
    pub fn client_addr(&self) -> &str {
        self.fetch(&self.client_addr, wit::Request::client_addr)
            .as_str()
    }

    /// The matched route's name.
    pub fn route(&self) -> &str {
        self.fetch(&self.route, wit::Request::route).as_str()
    }

    /// The upstream the request is headed for.
    pub fn upstream(&self) -> &str {
        self.fetch(&self.upstream, wit::Request::upstream).as_str()
    }

    /// Every path parameter the route captured.
    pub fn params(&self) -> &[RouteParam] {
        self.fetch(&self.params, wit::Request::params).as_slice()
    }

    /// One path parameter by name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params()
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }

    /// What the connection's TLS handshake negotiated (SNI, ALPN, version
    /// and the verified client certificate), or `None` in cleartext.
    /// Needs a host of contract 0.1.1 or later.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.fetch(&self.tls, wit::Request::tls).as_ref()
    }

    /// How many tries the upstream call made: 1 unless the upstream
    /// retried; 0 in `on-request` (and for a request from plain values).
    /// Needs a host of contract 0.1.3 or later.
    pub fn upstream_attempts(&self) -> u32 {
        self.host.map_or(0, |h| h.upstream_attempts())
    }

    /// Every header in arrival order. Copies them all from the host; prefer
    /// [`Request::header`] for single lookups.
    pub fn headers(&self) -> &[Header] {
        self.fetch(&self.headers, wit::Request::headers).as_slice()
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        // Plain values always have the full list, so `host` is only asked
        // when the list was never fetched.
        match self.headers.get() {
            Some(all) => first_value(all, name),
            None => self.host.expect(FILLED).header(name),
        }
    }

    /// Every value of a header, in order.
    pub fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        match self.headers.get() {
            Some(all) => all_values(all, name),
            None => self.host.expect(FILLED).header_values(name),
        }
    }

    /// The first value of a header as UTF-8 text, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// The first value of a query parameter (raw, not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The value of a cookie from the `cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header_values("cookie").into_iter().find_map(|v| {
            let v = String::from_utf8(v).ok()?;
            v.split(';').find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        })
    }

    /// The whole head in one record. One call to the host, but it copies
    /// every header: prefer the accessors above for what the plugin reads.
    pub fn head(&self) -> RequestHead {
        if let Some(host) = self.host {
            return host.head();
        }
        RequestHead {
            method: self.method().to_string(),
            scheme: self.scheme().to_string(),
            authority: self.authority().to_string(),
            path: self.path().to_string(),
            query: self.query().map(str::to_string),
            headers: self.headers().to_vec(),
            client_addr: self.client_addr().to_string(),
            route: self.route().to_string(),
            params: self.params().to_vec(),
            upstream: self.upstream().to_string(),
        }
    }

    /// The client's IP address without the port.
    pub fn client_ip(&self) -> &str {
        let addr = self.client_addr();
        match addr.rsplit_once(':') {
            Some((ip, _)) => ip.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        }
    }
}

/// The response head `on-response` sees, fetched from the host as it is read.
pub struct ResponseHead<'a> {
    host: Option<&'a wit::ResponseHead>,
    status: OnceCell<u16>,
    headers: OnceCell<Vec<Header>>,
}

impl<'a> ResponseHead<'a> {
    fn from_host(host: &'a wit::ResponseHead) -> ResponseHead<'a> {
        ResponseHead {
            host: Some(host),
            status: OnceCell::new(),
            headers: OnceCell::new(),
        }
    }

    /// A response head from plain values, for unit tests of a plugin's logic.
    pub fn new(status: u16, headers: Vec<Header>) -> ResponseHead<'static> {
        ResponseHead {
            host: None,
            status: OnceCell::from(status),
            headers: OnceCell::from(headers),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        *self
            .status
            .get_or_init(|| self.host.expect(FILLED).status())
    }

    /// Every header, in order. Copies them all; prefer [`ResponseHead::header`].
    pub fn headers(&self) -> &[Header] {
        self.headers
            .get_or_init(|| self.host.expect(FILLED).headers())
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        // Plain values always have the full list, so `host` is only asked
        // when the list was never fetched.
        match self.headers.get() {
            Some(all) => first_value(all, name),
            None => self.host.expect(FILLED).header(name),
        }
    }

    /// The first value of a header as UTF-8 text, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// Every value of a header, in order.
    pub fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        match self.headers.get() {
            Some(all) => all_values(all, name),
            None => self.host.expect(FILLED).header_values(name),
        }
    }
}

/// Why a wrapper without a host handle never needs one.
const FILLED: &str = "plain values are filled up front";

fn find_headers<'h>(headers: &'h [Header], name: &'h str) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

fn first_value(headers: &[Header], name: &str) -> Option<Vec<u8>> {
    find_headers(headers, name).next().map(<[u8]>::to_vec)
}

fn all_values(headers: &[Header], name: &str) -> Vec<Vec<u8>> {
    find_headers(headers, name).map(<[u8]>::to_vec).collect()
}

#[allow(clippy::derivable_impls)] // generated type: cannot derive here
impl Default for RequestPatch {
    fn default() -> Self {
        RequestPatch {
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            path: None,
            query: None,
            upstream: None,
            response_headers: Vec::new(),
        }
    }
}

impl RequestPatch {
    /// Set a header on the upstream request (replacing any of the same name).
    pub fn set_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.set_headers.push(header(name, value));
        self
    }

    /// Remove a header from the upstream request.
    pub fn remove_header(mut self, name: &str) -> Self {
        self.remove_headers.push(name.to_ascii_lowercase());
        self
    }

    /// Replace the upstream request's query string (without `?`); `""`
    /// removes it.
    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// Add a header to the response the client finally receives.
    pub fn response_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.response_headers.push(header(name, value));
        self
    }
}

#[allow(clippy::derivable_impls)] // generated type: cannot derive here
impl Default for ResponsePatch {
    fn default() -> Self {
        ResponsePatch {
            status: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
        }
    }
}

impl ResponsePatch {
    /// Set a header on the response (replacing any of the same name).
    pub fn set_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.set_headers.push(header(name, value));
        self
    }
}

/// `query` without any `name=value` (or bare `name`) pair, for
/// [`RequestPatch::query`]: lets a plugin keep a credential passed in the
/// query string from reaching the upstream. Other pairs keep their order and
/// spelling; an empty result removes the query.
pub fn query_without(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header with a lower-cased name.
pub fn header(name: &str, value: impl AsRef<[u8]>) -> Header {
    Header {
        name: name.to_ascii_lowercase(),
        value: value.as_ref().to_vec(),
    }
}

impl Response {
    /// A response with a JSON body and `content-type: application/json`.
    pub fn json(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![header("content-type", "application/json")],
            body: body.as_bytes().to_vec(),
        }
    }

    /// A refusal with the JSON body every Wicket plugin uses:
    /// `{"error": code, "message": message}`.
    pub fn json_error(status: u16, code: &str, message: &str) -> Response {
        let body = serde_json::json!({ "error": code, "message": message });
        Response::json(status, &body.to_string())
    }

    /// A gRPC error in gRPC's *trailers-only* form: HTTP 200,
    /// `content-type: application/grpc`, `grpc-status: code` and the
    /// percent-encoded `grpc-message`, no body. For a refusal a gRPC client
    /// understands (16 unauthenticated, 7 permission denied, 8 resource
    /// exhausted, 14 unavailable). A JSON refusal to a gRPC request is
    /// turned into one by the gateway anyway, with the code its HTTP
    /// status stands for; this one says exactly what the plugin means.
    pub fn grpc_error(code: u32, message: &str) -> Response {
        let mut encoded = String::with_capacity(message.len());
        for b in message.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        Response {
            status: 200,
            headers: vec![
                header("content-type", "application/grpc"),
                header("grpc-status", code.to_string()),
                header("grpc-message", encoded),
            ],
            body: Vec::new(),
        }
    }

    /// Add a header.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.headers.push(header(name, value));
        self
    }
}

/// Log a message at `info` level into the gateway's log.
pub fn log_info(message: &str) {
    log::log(log::Level::Info, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_error_is_trailers_only_with_an_encoded_message() {
        let r = Response::grpc_error(16, "no key: 100% sure ✓");
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        let get = |n: &str| {
            r.headers
                .iter()
                .find(|h| h.name == n)
                .map(|h| String::from_utf8(h.value.clone()).unwrap())
        };
        assert_eq!(get("content-type").as_deref(), Some("application/grpc"));
        assert_eq!(get("grpc-status").as_deref(), Some("16"));
        assert_eq!(
            get("grpc-message").as_deref(),
            Some("no key: 100%25 sure %E2%9C%93")
        );
    }

    #[test]
    fn query_without_drops_every_pair_of_the_name_only() {
        assert_eq!(query_without("api_key=s3cr3t&page=2", "api_key"), "page=2");
        assert_eq!(
            query_without("a=1&api_key=x&b=2&api_key=y", "api_key"),
            "a=1&b=2"
        );
        assert_eq!(query_without("api_key", "api_key"), "");
        assert_eq!(query_without("api_key=1", "api_key"), "");
        assert_eq!(
            query_without("api_keys=1&x=%20", "api_key"),
            "api_keys=1&x=%20"
        );
        assert_eq!(query_without("&&a=1&", "b"), "a=1");
    }

    #[test]
    fn plain_requests_answer_from_their_values() {
        let req = Request::from_head(RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "example.com".into(),
            path: "/p".into(),
            query: Some("a=1&b=2".into()),
            headers: vec![
                header("cookie", "x=1; session=abc"),
                header("x-multi", "a"),
                header("X-Multi", "b"),
            ],
            client_addr: "[::1]:5000".into(),
            route: "r".into(),
            params: vec![RouteParam {
                name: "id".into(),
                value: "7".into(),
            }],
            upstream: "u".into(),
        });
        assert_eq!(req.header("X-MULTI"), Some(b"a".to_vec()));
        assert_eq!(
            req.header_values("x-multi"),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(req.header("missing"), None);
        assert_eq!(req.cookie("session").as_deref(), Some("abc"));
        assert_eq!(req.query_param("b"), Some("2"));
        assert_eq!(req.param("id"), Some("7"));
        assert_eq!(req.client_ip(), "::1");
        assert_eq!(req.head().path, "/p");
        let resp = ResponseHead::new(503, vec![header("Retry-After", "5")]);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.header_str("retry-after").as_deref(), Some("5"));
    }
}
