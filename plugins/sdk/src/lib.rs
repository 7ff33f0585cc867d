//! The Rust SDK for Wicket policy plugins: implement [`Plugin`], then call
//! [`export_plugin!`] once.
//!
//! ```ignore
//! use wicket_plugin_sdk::{export_plugin, Plugin, RequestAction, RequestHead, RequestPatch};
//!
//! struct AddHeader { value: String }
//!
//! impl Plugin for AddHeader {
//!     fn init(config: &str) -> Result<Self, String> {
//!         Ok(AddHeader { value: config.to_string() })
//!     }
//!     fn on_request(&self, _req: &RequestHead) -> RequestAction {
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

#![forbid(unsafe_code)]

pub mod config;
pub mod transact;

/// Bindings generated from the contract. Plugin authors use the re-exports below.
#[doc(hidden)]
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

pub use bindings::wicket::plugin::types::{
    Header, RequestAction, RequestHead, RequestPatch, Response, ResponseAction, ResponseHead,
    ResponsePatch, RouteParam, UpstreamError, UpstreamOutcome, UpstreamResult,
};
pub use bindings::wicket::plugin::{clock, log, metrics, state};

/// A policy plugin. Every hook has a default that lets traffic through unchanged.
pub trait Plugin: Sized + 'static {
    /// Build the plugin from its per-route configuration (JSON text, `{}` when the
    /// route gives none). Return a message naming the bad field on error; the
    /// gateway reports it at the configuration's location.
    fn init(config: &str) -> Result<Self, String>;

    /// Runs for each request, in chain order. Default: continue unchanged.
    fn on_request(&self, request: &RequestHead) -> RequestAction {
        let _ = request;
        RequestAction::Continue(RequestPatch::default())
    }

    /// Runs when the response is known, in reverse chain order. Default: keep it.
    fn on_response(
        &self,
        request: &RequestHead,
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
pub fn __init<P: Plugin>(config: String) -> Result<(), String> {
    let plugin = P::init(&config)?;
    INSTANCE.with(|cell| {
        cell.set(Box::new(plugin))
            .map_err(|_| "init called twice on one instance".to_string())
    })
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
pub fn __on_request<P: Plugin>(request: RequestHead) -> RequestAction {
    with_plugin(|p: &P| p.on_request(&request))
}

#[doc(hidden)]
pub fn __on_response<P: Plugin>(
    request: RequestHead,
    outcome: UpstreamOutcome,
    response: ResponseHead,
) -> ResponseAction {
    with_plugin(|p: &P| p.on_response(&request, &outcome, &response))
}

/// Export a [`Plugin`] implementation as the component's `policy` world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __WicketPolicy;
        impl $crate::bindings::Guest for __WicketPolicy {
            fn init(config: String) -> Result<(), String> {
                $crate::__init::<$plugin>(config)
            }
            fn on_request(request: $crate::RequestHead) -> $crate::RequestAction {
                $crate::__on_request::<$plugin>(request)
            }
            fn on_response(
                request: $crate::RequestHead,
                outcome: $crate::UpstreamOutcome,
                response: $crate::ResponseHead,
            ) -> $crate::ResponseAction {
                $crate::__on_response::<$plugin>(request, outcome, response)
            }
        }
        $crate::bindings::__export_policy!(__WicketPolicy with_types_in $crate::bindings);
    };
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

    /// Add a header.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.headers.push(header(name, value));
        self
    }
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The first value of a header as UTF-8 text, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of a query parameter (raw, not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The value of a cookie from the `cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .filter_map(|h| std::str::from_utf8(&h.value).ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then_some(v)
            })
    }

    /// The client's IP address without the port.
    pub fn client_ip(&self) -> &str {
        match self.client_addr.rsplit_once(':') {
            Some((ip, _)) => ip.trim_start_matches('[').trim_end_matches(']'),
            None => &self.client_addr,
        }
    }
}

impl ResponseHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

/// Log a message at `info` level into the gateway's log.
pub fn log_info(message: &str) {
    log::log(log::Level::Info, message);
}
