//! The plugin's route configuration: parsed from JSON, validated once in `init`.

use serde::Deserialize;
use wicket_plugin_sdk::config;

/// The configuration as written in the route.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Who may pass, and as which consumer; tried in order. Required.
    #[serde(default)]
    pub(crate) consumers: Vec<Entry>,
    /// Header that carries the authenticated consumer's name upstream.
    #[serde(default = "default_consumer_header")]
    pub(crate) consumer_header: String,
    /// Headers that carry facts about the certificate upstream.
    #[serde(default)]
    pub(crate) forward: Forward,
    /// What each entry matches, with its position in `consumers`: filled by
    /// `parse`, once every entry is known to be valid.
    #[serde(skip)]
    pub(crate) criteria: std::collections::HashMap<Criterion, usize>,
}

/// One accepted certificate: exactly one of `subject`, `san`, `sha256`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    /// The consumer a matching certificate authenticates.
    #[serde(default)]
    pub(crate) consumer: String,
    /// The subject DN, exactly as RFC 4514 writes it (`O=Example,CN=svc-a`).
    #[serde(default)]
    pub(crate) subject: Option<String>,
    /// One subjectAltName entry (DNS name, IP address, URI or email).
    #[serde(default)]
    pub(crate) san: Option<String>,
    /// The certificate's SHA-256 fingerprint: hex, with or without colons.
    #[serde(default)]
    pub(crate) sha256: Option<String>,
}

/// What an entry matches, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Criterion {
    Subject(String),
    San(String),
    Sha256(String),
}

/// Optional headers describing the certificate to the upstream.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Forward {
    /// Header for the subject DN.
    #[serde(default)]
    pub(crate) subject: Option<String>,
    /// Header for the SHA-256 fingerprint (lower-case hex).
    #[serde(default)]
    pub(crate) sha256: Option<String>,
}

fn default_consumer_header() -> String {
    "x-wicket-consumer".to_string()
}

impl Config {
    /// Parse and validate; errors name the offending field.
    pub(crate) fn parse(text: &str) -> Result<Config, String> {
        let mut config: Config = config::deserialize(text)
            .map_err(|e: config::ConfigError| e.describe("invalid mtls-auth config"))?;
        config.consumer_header = config.consumer_header.to_ascii_lowercase();
        for header in [&mut config.forward.subject, &mut config.forward.sha256]
            .into_iter()
            .flatten()
        {
            *header = header.to_ascii_lowercase();
        }
        config.criteria = config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<std::collections::HashMap<Criterion, usize>, String> {
        if self.consumers.is_empty() {
            return Err(
                "consumers: must list at least one certificate (by subject, san or sha256) and its consumer"
                    .into(),
            );
        }
        let mut seen = std::collections::HashMap::new();
        for (i, entry) in self.consumers.iter().enumerate() {
            let criterion = entry
                .criterion()
                .map_err(|e| format!("consumers[{i}]: {e}"))?;
            if let Some(first) = seen.insert(criterion, i) {
                return Err(format!(
                    "consumers[{i}]: matches the same certificates as consumers[{first}]"
                ));
            }
        }
        let mut headers = vec![("consumer_header", &self.consumer_header)];
        headers.extend(self.forward.subject.iter().map(|h| ("forward.subject", h)));
        headers.extend(self.forward.sha256.iter().map(|h| ("forward.sha256", h)));
        for (i, (field, name)) in headers.iter().enumerate() {
            if !is_header_name(name) {
                return Err(format!("{field}: {name:?} is not a valid header name"));
            }
            if let Some((other, _)) = headers[..i].iter().find(|(_, n)| n == name) {
                return Err(format!("{field}: must differ from {other}"));
            }
        }
        Ok(seen)
    }
}

impl Entry {
    /// The one thing this entry matches, or why it is not valid.
    pub(crate) fn criterion(&self) -> Result<Criterion, String> {
        if self.consumer.is_empty() || self.consumer.chars().any(char::is_control) {
            return Err(format!(
                "consumer: must be non-empty printable text (got {:?})",
                self.consumer
            ));
        }
        let criterion = match (&self.subject, &self.san, &self.sha256) {
            (Some(subject), None, None) if !subject.is_empty() => {
                Criterion::Subject(subject.clone())
            }
            // The gateway gives DNS names lower-cased and IP addresses in
            // their canonical text, so those are lower-cased here too; URIs
            // and email addresses are matched exactly as written.
            (None, Some(san), None) if !san.is_empty() => {
                if let Ok(ip) = san.parse::<std::net::IpAddr>() {
                    // `0:0::1` is `::1`, as the gateway writes it.
                    Criterion::San(ip.to_string())
                } else if san.contains("://") || san.contains('@') {
                    Criterion::San(san.clone())
                } else {
                    Criterion::San(san.to_ascii_lowercase())
                }
            }
            (None, None, Some(sha256)) => Criterion::Sha256(fingerprint(sha256).ok_or_else(|| {
                format!("sha256: {sha256:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
            })?),
            _ => return Err("give exactly one non-empty subject, san or sha256".into()),
        };
        Ok(criterion)
    }
}

/// A fingerprint as lower-case hex without separators: `openssl x509
/// -fingerprint -sha256` writes `AB:CD:…`, the gateway `abcd…`.
fn fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// An HTTP token (RFC 9110 §5.1), as the host requires for header names.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "3f0c9a8e4b1d7c6e2a5f8b9d0c1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e";

    #[test]
    fn defaults_apply_and_criteria_are_normalised() {
        let upper_colons = FP
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let c = Config::parse(r#"{"consumers": [{"consumer": "a", "san": "0:0::1"}]}"#).unwrap();
        assert_eq!(c.consumers[0].criterion(), Ok(Criterion::San("::1".into())));
        let c = Config::parse(&format!(
            r#"{{"consumers": [{{"consumer": "a", "san": "SVC-A.Internal"}},
                              {{"consumer": "b", "sha256": "{upper_colons}"}},
                              {{"consumer": "c", "subject": "O=Example,CN=c"}}]}}"#
        ))
        .unwrap();
        assert_eq!(c.consumer_header, "x-wicket-consumer");
        assert_eq!(c.forward.subject, None);
        let criteria: Vec<_> = c.consumers.iter().map(|e| e.criterion().unwrap()).collect();
        assert_eq!(
            criteria,
            [
                Criterion::San("svc-a.internal".into()),
                Criterion::Sha256(FP.into()),
                Criterion::Subject("O=Example,CN=c".into()),
            ]
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            ("{}", "consumers:"),
            (r#"{"consumers": []}"#, "consumers:"),
            (
                r#"{"consumers": [{"consumer": "a"}]}"#,
                "consumers[0]: give exactly one",
            ),
            (
                r#"{"consumers": [{"consumer": "a", "san": "x", "subject": "CN=x"}]}"#,
                "consumers[0]: give exactly one",
            ),
            (
                r#"{"consumers": [{"consumer": "a", "san": ""}]}"#,
                "consumers[0]: give exactly one",
            ),
            (
                r#"{"consumers": [{"san": "x"}]}"#,
                "consumers[0]: consumer:",
            ),
            (
                r#"{"consumers": [{"consumer": "a\nb", "san": "x"}]}"#,
                "consumers[0]: consumer:",
            ),
            (
                r#"{"consumers": [{"consumer": "a", "sha256": "abc"}]}"#,
                "consumers[0]: sha256:",
            ),
            (
                r#"{"consumers": [{"consumer": "a", "san": "x"}, {"consumer": "b", "san": "X"}]}"#,
                "consumers[1]: matches the same certificates as consumers[0]",
            ),
            (
                r#"{"consumers": [{"consumer": "a", "san": "x"}], "consumer_header": "x y"}"#,
                "consumer_header:",
            ),
            (
                r#"{"consumers": [{"consumer": "a", "san": "x"}], "forward": {"sha256": "X-Wicket-Consumer"}}"#,
                "forward.sha256: must differ from consumer_header",
            ),
            (
                r#"{"consumers": [{"consumer": "a", "san": "x"}], "forward": {"issuer": "x-i"}}"#,
                "unknown field `issuer`",
            ),
            (
                r#"{"consumers": [{"consumer": "a", "cn": "x"}]}"#,
                "unknown field `cn`",
            ),
            (r#"{"consumers": {"a": "x"}}"#, "consumers: invalid type"),
        ];
        for (text, want) in cases {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
