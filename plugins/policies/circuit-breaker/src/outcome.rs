//! What an upstream outcome means to the breaker: a failure, a success, or
//! nothing at all, according to the configured `failure_on` list.

use wicket_plugin_sdk::{UpstreamError, UpstreamResult};

/// How one upstream call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observation {
    Success,
    Failure,
    /// Counts neither way: the upstream was skipped, or failed in a way the
    /// configuration does not hold against it.
    Neutral,
}

/// The outcomes that count as failures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FailureOn {
    connect: bool,
    no_endpoint: bool,
    timeout: bool,
    reset: bool,
    protocol: bool,
    client_errors: bool,
    server_errors: bool,
    statuses: Vec<u16>,
}

/// The outcomes every breaker should count unless told otherwise: the
/// upstream could not be reached, did not answer in time, dropped the
/// connection, or answered with a server error.
pub(crate) const DEFAULT_FAILURE_ON: [&str; 4] = ["connect", "timeout", "reset", "5xx"];

impl FailureOn {
    /// Parse the `failure_on` list; errors name the entry.
    pub(crate) fn parse(names: &[String]) -> Result<FailureOn, String> {
        if names.is_empty() {
            return Err("failure_on: must name at least one outcome".to_string());
        }
        let mut set = FailureOn::default();
        for (i, name) in names.iter().enumerate() {
            match name.as_str() {
                "connect" => set.connect = true,
                "no_endpoint" => set.no_endpoint = true,
                "timeout" => set.timeout = true,
                "reset" => set.reset = true,
                "protocol" => set.protocol = true,
                "4xx" => set.client_errors = true,
                "5xx" => set.server_errors = true,
                code => match code.parse::<u16>() {
                    Ok(status) if (100..=599).contains(&status) && code.len() == 3 => {
                        set.statuses.push(status)
                    }
                    _ => {
                        return Err(format!(
                            "failure_on[{i}]: unknown outcome `{name}`; expected connect, \
                             no_endpoint, timeout, reset, protocol, 4xx, 5xx or a status code"
                        ))
                    }
                },
            }
        }
        Ok(set)
    }

    /// How `result` counts. A status the list does not name is a success (the
    /// upstream answered in a way the operator accepts); an error it does not
    /// name is neutral, so that excluding e.g. `timeout` means "timeouts say
    /// nothing about health", not "timeouts prove the upstream healthy".
    pub(crate) fn classify(&self, result: &UpstreamResult) -> Observation {
        let failed = match result {
            UpstreamResult::Skipped => return Observation::Neutral,
            UpstreamResult::Status(status) => {
                return if self.status_fails(*status) {
                    Observation::Failure
                } else {
                    Observation::Success
                };
            }
            UpstreamResult::Error(UpstreamError::ConnectFailed) => self.connect,
            UpstreamResult::Error(UpstreamError::NoEndpoint) => self.no_endpoint,
            UpstreamResult::Error(UpstreamError::Timeout) => self.timeout,
            UpstreamResult::Error(UpstreamError::Reset) => self.reset,
            UpstreamResult::Error(UpstreamError::Protocol) => self.protocol,
        };
        if failed {
            Observation::Failure
        } else {
            Observation::Neutral
        }
    }

    fn status_fails(&self, status: u16) -> bool {
        (self.client_errors && (400..500).contains(&status))
            || (self.server_errors && (500..600).contains(&status))
            || self.statuses.contains(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> FailureOn {
        FailureOn::parse(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn defaults() -> FailureOn {
        set(&DEFAULT_FAILURE_ON)
    }

    #[test]
    fn defaults_count_unreachable_and_server_errors() {
        let f = defaults();
        use Observation::*;
        use UpstreamResult as R;
        assert_eq!(f.classify(&R::Error(UpstreamError::ConnectFailed)), Failure);
        assert_eq!(f.classify(&R::Error(UpstreamError::Timeout)), Failure);
        assert_eq!(f.classify(&R::Error(UpstreamError::Reset)), Failure);
        assert_eq!(f.classify(&R::Status(500)), Failure);
        assert_eq!(f.classify(&R::Status(503)), Failure);
        assert_eq!(f.classify(&R::Status(200)), Success);
        assert_eq!(f.classify(&R::Status(404)), Success);
        assert_eq!(f.classify(&R::Status(429)), Success);
        assert_eq!(f.classify(&R::Error(UpstreamError::NoEndpoint)), Neutral);
        assert_eq!(f.classify(&R::Error(UpstreamError::Protocol)), Neutral);
    }

    #[test]
    fn skipped_never_counts() {
        let all = set(&[
            "connect",
            "no_endpoint",
            "timeout",
            "reset",
            "protocol",
            "4xx",
            "5xx",
        ]);
        assert_eq!(all.classify(&UpstreamResult::Skipped), Observation::Neutral);
    }

    #[test]
    fn exact_statuses_and_classes() {
        let f = set(&["429", "4xx"]);
        assert_eq!(
            f.classify(&UpstreamResult::Status(429)),
            Observation::Failure
        );
        assert_eq!(
            f.classify(&UpstreamResult::Status(401)),
            Observation::Failure
        );
        assert_eq!(
            f.classify(&UpstreamResult::Status(500)),
            Observation::Success
        );
        let f = set(&["502"]);
        assert_eq!(
            f.classify(&UpstreamResult::Status(502)),
            Observation::Failure
        );
        assert_eq!(
            f.classify(&UpstreamResult::Status(503)),
            Observation::Success
        );
    }

    #[test]
    fn unlisted_errors_are_neutral() {
        let f = set(&["5xx"]);
        assert_eq!(
            f.classify(&UpstreamResult::Error(UpstreamError::Timeout)),
            Observation::Neutral
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let err = |names: &[&str]| {
            FailureOn::parse(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err()
        };
        assert!(err(&[]).starts_with("failure_on:"));
        assert!(err(&["5xx", "oops"]).starts_with("failure_on[1]:"));
        assert!(err(&["600"]).starts_with("failure_on[0]:"));
        assert!(err(&["0500"]).starts_with("failure_on[0]:"));
    }
}
