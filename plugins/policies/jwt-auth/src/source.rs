//! Where a request carries its token: a header, a query parameter or a cookie.

use serde::Deserialize;
use wicket_plugin_sdk::Request;

use crate::config::header_name;

/// One place to look for the token, written `{"header": "authorization"}`,
/// `{"query": "access_token"}` or `{"cookie": "session"}`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum TokenSource {
    Header(String),
    Query(String),
    Cookie(String),
}

impl TokenSource {
    /// Check the name and lower-case header names.
    pub(crate) fn validated(self) -> Result<TokenSource, String> {
        match self {
            TokenSource::Header(name) => header_name(&name, "token_from").map(TokenSource::Header),
            TokenSource::Query(name) | TokenSource::Cookie(name) if name.is_empty() => {
                Err("token_from: a query or cookie name must not be empty".into())
            }
            other => Ok(other),
        }
    }

    /// The token this source finds in `request`, if any.
    ///
    /// The `authorization` header only yields a token under the `Bearer` scheme
    /// (RFC 6750 §2.1); another scheme counts as no token. Other headers may
    /// carry the bare token or `Bearer <token>`.
    pub(crate) fn token(&self, request: &Request) -> Option<String> {
        match self {
            TokenSource::Header(name) => {
                let value = request.header_str(name)?;
                let value = value.trim();
                match bearer(value) {
                    Some(token) => non_empty(token),
                    None if name == "authorization" => None,
                    None => non_empty(value),
                }
            }
            TokenSource::Query(name) => non_empty(request.query_param(name)?),
            TokenSource::Cookie(name) => non_empty(&request.cookie(name)?),
        }
    }
}

/// The token without surrounding whitespace, unless that leaves nothing.
fn non_empty(token: &str) -> Option<String> {
    Some(token.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// The credentials of a `Bearer` authorization value (scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::request;

    #[test]
    fn authorization_header_needs_bearer_scheme() {
        let source = TokenSource::Header("authorization".into());
        let token = |value: &str| source.token(&request(&[("authorization", value)], None));
        assert_eq!(token("Bearer abc.def.ghi").as_deref(), Some("abc.def.ghi"));
        assert_eq!(token("bearer   abc").as_deref(), Some("abc"));
        assert_eq!(token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(token("abc.def.ghi"), None);
        assert_eq!(token("Bearer "), None);
        assert_eq!(source.token(&request(&[], None)), None);
    }

    #[test]
    fn custom_header_takes_bare_or_bearer_token() {
        let source = TokenSource::Header("x-token".into());
        let req = request(&[("x-token", "abc")], None);
        assert_eq!(source.token(&req).as_deref(), Some("abc"));
        let req = request(&[("x-token", "Bearer abc")], None);
        assert_eq!(source.token(&req).as_deref(), Some("abc"));
    }

    #[test]
    fn query_and_cookie_sources() {
        let req = request(
            &[("cookie", "theme=dark; jwt=c.d.e")],
            Some("page=1&access_token=a.b.c"),
        );
        assert_eq!(
            TokenSource::Query("access_token".into())
                .token(&req)
                .as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            TokenSource::Cookie("jwt".into()).token(&req).as_deref(),
            Some("c.d.e")
        );
        assert_eq!(TokenSource::Cookie("other".into()).token(&req), None);
    }
}
