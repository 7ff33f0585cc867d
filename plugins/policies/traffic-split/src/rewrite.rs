//! Path rewriting: strip a leading prefix and/or put another in its place,
//! sent to the host as `request-patch.path`.

use serde::Deserialize;

/// A rewrite as written in the configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRewrite {
    #[serde(default)]
    strip_prefix: Option<String>,
    #[serde(default)]
    replace_prefix: Option<String>,
}

/// A validated rewrite. Prefixes are stored without a trailing `/`, so
/// `strip_prefix` is never empty and `replace_prefix` may be (for `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rewrite {
    strip_prefix: Option<String>,
    replace_prefix: Option<String>,
}

impl Rewrite {
    /// Validate a configured rewrite; `field` names it in errors.
    pub(crate) fn from_raw(field: &str, raw: RawRewrite) -> Result<Rewrite, String> {
        let strip_prefix = match raw.strip_prefix {
            Some(p) => {
                let p = prefix(&format!("{field}.strip_prefix"), &p)?;
                if p.is_empty() {
                    return Err(format!(
                        "{field}.strip_prefix: `/` strips nothing; give a prefix such as `/api`"
                    ));
                }
                Some(p)
            }
            None => None,
        };
        let replace_prefix = match raw.replace_prefix {
            Some(p) => Some(prefix(&format!("{field}.replace_prefix"), &p)?),
            None => None,
        };
        match (&strip_prefix, &replace_prefix) {
            (None, None) => Err(format!(
                "{field}: give strip_prefix, replace_prefix or both"
            )),
            (None, Some(p)) if p.is_empty() => Err(format!(
                "{field}.replace_prefix: `/` alone changes nothing without strip_prefix"
            )),
            _ => Ok(Rewrite {
                strip_prefix,
                replace_prefix,
            }),
        }
    }

    /// The rewritten path, or `None` when the path is left as it is.
    ///
    /// `strip_prefix` only matches whole segments (`/api` matches `/api` and
    /// `/api/x`, not `/apix`); a path it does not match is left alone entirely.
    /// `replace_prefix` goes in front of what remains — of the whole path when
    /// there is no `strip_prefix`.
    pub(crate) fn apply(&self, path: &str) -> Option<String> {
        let rest = match &self.strip_prefix {
            Some(strip) => {
                let rest = path.strip_prefix(strip.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                rest
            }
            None => path,
        };
        let mut new = self.replace_prefix.clone().unwrap_or_default();
        new.push_str(rest);
        if new.is_empty() {
            new.push('/');
        }
        (new != path).then_some(new)
    }
}

/// Check a configured prefix (starts with `/`, no query or fragment) and drop
/// its trailing slashes.
fn prefix(field: &str, p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{field}: must start with `/`, got `{p}`"));
    }
    if p.contains(['?', '#']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{field}: must be a plain path (no query, fragment or spaces), got `{p}`"
        ));
    }
    Ok(p.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(strip: Option<&str>, replace: Option<&str>) -> Result<Rewrite, String> {
        Rewrite::from_raw(
            "rewrite",
            RawRewrite {
                strip_prefix: strip.map(str::to_string),
                replace_prefix: replace.map(str::to_string),
            },
        )
    }

    #[test]
    fn strip_and_replace() {
        let r = rewrite(Some("/api"), Some("/v2")).unwrap();
        assert_eq!(r.apply("/api/users/7").as_deref(), Some("/v2/users/7"));
        assert_eq!(r.apply("/api").as_deref(), Some("/v2"));
        assert_eq!(r.apply("/api/").as_deref(), Some("/v2/"));
    }

    #[test]
    fn strip_only() {
        let r = rewrite(Some("/api/"), None).unwrap();
        assert_eq!(r.apply("/api/users").as_deref(), Some("/users"));
        assert_eq!(r.apply("/api").as_deref(), Some("/"));
        assert_eq!(r.apply("/api/").as_deref(), Some("/"));
        assert_eq!(r.apply("/").as_deref(), None);
    }

    #[test]
    fn replace_only_prepends() {
        let r = rewrite(None, Some("/v2/")).unwrap();
        assert_eq!(r.apply("/users").as_deref(), Some("/v2/users"));
        assert_eq!(r.apply("/").as_deref(), Some("/v2/"));
    }

    #[test]
    fn strip_to_root_replacement() {
        let r = rewrite(Some("/legacy"), Some("/")).unwrap();
        assert_eq!(r.apply("/legacy/a").as_deref(), Some("/a"));
        assert_eq!(r.apply("/legacy").as_deref(), Some("/"));
    }

    #[test]
    fn strip_matches_whole_segments_only() {
        let r = rewrite(Some("/api"), Some("/v2")).unwrap();
        assert_eq!(r.apply("/apix/users"), None);
        assert_eq!(r.apply("/other/api"), None);
        assert_eq!(r.apply("/"), None);
    }

    #[test]
    fn invalid_rewrites_name_the_field() {
        let e = |s, r| rewrite(s, r).unwrap_err();
        assert_eq!(
            e(None, None),
            "rewrite: give strip_prefix, replace_prefix or both"
        );
        assert!(e(Some("api"), None).starts_with("rewrite.strip_prefix: must start with `/`"));
        assert!(e(Some("/"), None).starts_with("rewrite.strip_prefix:"));
        assert!(e(None, Some("v2")).starts_with("rewrite.replace_prefix:"));
        assert!(e(None, Some("/")).starts_with("rewrite.replace_prefix:"));
        assert!(e(None, Some("/v2?x=1")).starts_with("rewrite.replace_prefix:"));
        assert!(e(Some("/a b"), None).starts_with("rewrite.strip_prefix:"));
    }
}
