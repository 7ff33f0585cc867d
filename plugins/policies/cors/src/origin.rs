//! Origins (RFC 6454 as browsers serialise them in `Origin`) and the
//! patterns a route allows.

/// A parsed `Origin` header: `scheme://host[:port]`, lower-case, with the
/// scheme's default port dropped so `https://a.test:443` is `https://a.test`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) scheme: String,
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

impl Origin {
    /// Parse a serialised origin; anything else (`null`, a path, userinfo,
    /// odd characters) is `None` and so allowed by no pattern.
    pub(crate) fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return None;
        }
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal's colons are inside brackets.
            Some((host, port)) if !port.contains(']') => {
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (host, Some(port.parse::<u16>().ok()?))
            }
            _ => (rest, None),
        };
        let valid_host = !host.is_empty()
            && (host.starts_with('[') && host.ends_with(']')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !valid_host || host.starts_with('.') || host.ends_with('.') || host.contains("..") {
            return None;
        }
        let default = match scheme.as_str() {
            "https" | "wss" => Some(443),
            "http" | "ws" => Some(80),
            _ => None,
        };
        Some(Origin {
            port: port.filter(|p| Some(*p) != default),
            host: host.to_ascii_lowercase(),
            scheme,
        })
    }
}

/// An allowed origin as configured: exact, or `scheme://*.parent[:port]`,
/// which allows every subdomain of `parent` at any depth but not `parent`.
#[derive(Debug)]
pub(crate) struct Pattern {
    origin: Origin,
    subdomains: bool,
}

impl Pattern {
    pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
        let shape = "must be an origin like `https://app.example.com`, `http://127.0.0.1:8080` or `https://*.example.com` (no path)";
        let (subdomains, plain) = match text.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{rest}")),
            None => (false, text.to_string()),
        };
        let origin = Origin::parse(&plain).ok_or_else(|| format!("{text:?} {shape}"))?;
        if origin.host.contains('*') || (subdomains && !origin.host.contains('.')) {
            return Err(format!(
                "{text:?} {shape}; a `*.` pattern needs a parent with a dot"
            ));
        }
        Ok(Pattern { origin, subdomains })
    }

    pub(crate) fn matches(&self, origin: &Origin) -> bool {
        if origin.scheme != self.origin.scheme || origin.port != self.origin.port {
            return false;
        }
        if !self.subdomains {
            return origin.host == self.origin.host;
        }
        origin
            .host
            .strip_suffix(self.origin.host.as_str())
            .and_then(|label| label.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, origin: &str) -> bool {
        let p = Pattern::parse(pattern).unwrap();
        Origin::parse(origin).is_some_and(|o| p.matches(&o))
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port() {
        let p = "https://app.example.com";
        assert!(allows(p, "https://app.example.com"));
        assert!(allows(p, "https://APP.example.com"));
        assert!(allows(p, "https://app.example.com:443"), "the default port");
        assert!(!allows(p, "http://app.example.com"));
        assert!(!allows(p, "https://app.example.com:8443"));
        assert!(!allows(p, "https://app.example.com.evil.test"));
        assert!(!allows(p, "https://evilapp.example.com"));
        assert!(allows("http://127.0.0.1:8080", "http://127.0.0.1:8080"));
        assert!(!allows("http://127.0.0.1:8080", "http://127.0.0.1"));
        assert!(allows("http://[::1]:3000", "http://[::1]:3000"));
    }

    #[test]
    fn subdomain_patterns_need_a_label_before_the_parent() {
        let p = "https://*.example.com";
        assert!(allows(p, "https://a.example.com"));
        assert!(allows(p, "https://a.b.example.com"));
        assert!(!allows(p, "https://example.com"));
        assert!(!allows(p, "https://evilexample.com"));
        assert!(!allows(p, "https://a.example.com.evil.test"));
        assert!(!allows(p, "http://a.example.com"));
    }

    #[test]
    fn malformed_origins_match_nothing() {
        for o in [
            "null",
            "",
            "https://",
            "https://a.example.com/",
            "https://a.example.com/path",
            "https://user@a.example.com",
            "https://a.example.com:",
            "https://a.example.com:99999",
            "https://a..example.com",
            "https://.example.com",
            "https://a.example.com, https://b.example.com",
        ] {
            assert!(!allows("https://*.example.com", o), "{o:?}");
        }
    }
}
