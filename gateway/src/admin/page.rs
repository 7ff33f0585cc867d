//! The read-only admin page: plain HTML, CSS and a little JavaScript built
//! into the binary, reading `/api/overview`. No external assets, nothing
//! inline, so a strict Content-Security-Policy holds.

use http::{header, HeaderValue, Response};

use crate::body::{self, Body};

/// One of the page's files.
#[derive(Debug, Clone, Copy)]
pub(super) enum Asset {
    /// `/`.
    Html,
    /// `/ui/app.js`.
    Script,
    /// `/ui/app.css`.
    Style,
}

impl Asset {
    /// The file served at `path`, if any.
    pub(super) fn at(path: &str) -> Option<Asset> {
        match path {
            "/" => Some(Asset::Html),
            "/ui/app.js" => Some(Asset::Script),
            "/ui/app.css" => Some(Asset::Style),
            _ => None,
        }
    }
}

const HTML: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// Serve `asset`, with headers that keep the page to itself: only its own
/// files and API, never framed, never sniffed.
pub(super) fn asset(asset: Asset) -> Response<Body> {
    let (text, kind) = match asset {
        Asset::Html => (HTML, "text/html; charset=utf-8"),
        Asset::Script => (SCRIPT, "text/javascript; charset=utf-8"),
        Asset::Style => (STYLE, "text/css; charset=utf-8"),
    };
    let mut resp = Response::new(body::full(text));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
