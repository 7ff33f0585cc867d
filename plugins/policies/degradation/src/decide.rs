//! Degradation decisions as pure functions: which trigger (if any) a response
//! or a manual switch fires. No host imports here, so every case is unit-tested.

use serde::Deserialize;
use wicket_plugin_sdk::{UpstreamError, UpstreamResult};

use crate::config::OnStateError;

/// A condition that makes the plugin serve its fallback, as named in `on`.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The upstream failed without a timeout: connect-failed, reset,
    /// no-endpoint or protocol.
    #[serde(rename = "error")]
    Error,
    /// The upstream's connect or response deadline passed.
    #[serde(rename = "timeout")]
    Timeout,
    /// The upstream answered with a status in 500..=599.
    #[serde(rename = "5xx")]
    Status5xx,
    /// The circuit-breaker plugin (later in the chain) refused the call.
    #[serde(rename = "circuit_open")]
    CircuitOpen,
}

impl Trigger {
    /// Every trigger: the default of `on`.
    pub(crate) const ALL: [Trigger; 4] = [
        Trigger::Error,
        Trigger::Timeout,
        Trigger::Status5xx,
        Trigger::CircuitOpen,
    ];
}

/// The set of enabled triggers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Triggers {
    error: bool,
    timeout: bool,
    status_5xx: bool,
    circuit_open: bool,
}

impl Triggers {
    pub(crate) fn from_list(list: &[Trigger]) -> Triggers {
        let mut set = Triggers::default();
        for trigger in list {
            match trigger {
                Trigger::Error => set.error = true,
                Trigger::Timeout => set.timeout = true,
                Trigger::Status5xx => set.status_5xx = true,
                Trigger::CircuitOpen => set.circuit_open = true,
            }
        }
        set
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Triggers::default()
    }
}

/// Why a response was degraded: the value of the marker header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Error,
    Timeout,
    Status5xx,
    CircuitOpen,
    /// The manual switch (`force` or the state key) is on.
    Forced,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Error => "error",
            Reason::Timeout => "timeout",
            Reason::Status5xx => "5xx",
            Reason::CircuitOpen => "circuit_open",
            Reason::Forced => "forced",
        }
    }
}

/// Decide whether the response about to go to the client must be replaced by
/// the fallback, and why. `circuit_open` says whether the response head
/// carries the circuit breaker's marker (see [`is_circuit_open`]).
pub(crate) fn response_reason(
    triggers: Triggers,
    result: &UpstreamResult,
    circuit_open: bool,
) -> Option<Reason> {
    // Checked first because it is the most specific: the breaker's reply is a
    // 503 that would otherwise read as a plain 5xx (when it comes back from a
    // nested gateway) or as a deliberate plugin answer (when skipped).
    if circuit_open && triggers.circuit_open {
        return Some(Reason::CircuitOpen);
    }
    match result {
        UpstreamResult::Status(status) if (500..=599).contains(status) && triggers.status_5xx => {
            Some(Reason::Status5xx)
        }
        UpstreamResult::Status(_) => None,
        UpstreamResult::Error(UpstreamError::Timeout) => {
            triggers.timeout.then_some(Reason::Timeout)
        }
        UpstreamResult::Error(_) => triggers.error.then_some(Reason::Error),
        // Another later plugin answered on purpose (a refusal, a redirect...):
        // that answer is not a failure to hide.
        UpstreamResult::Skipped => None,
    }
}

/// Whether a response head carries the circuit breaker's marker, given every
/// value of the marker header: one of them is `open` (case and surrounding
/// spaces ignored).
pub(crate) fn is_circuit_open(values: &[Vec<u8>]) -> bool {
    values
        .iter()
        .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"open"))
}

/// Whether the manual switch is on, given what reading its state key gave.
/// `on`, `1` and `true` (any case, surrounding whitespace ignored, so a value
/// written with a trailing newline works) mean on; anything else, or a missing
/// key, means off. A failed read follows `on_state_error`.
pub(crate) fn switch_is_on<E>(
    read: Result<Option<&[u8]>, E>,
    on_state_error: OnStateError,
) -> bool {
    match read {
        Ok(Some(value)) => {
            let value = value.trim_ascii();
            [&b"on"[..], b"1", b"true"]
                .iter()
                .any(|on| value.eq_ignore_ascii_case(on))
        }
        Ok(None) => false,
        Err(_) => on_state_error == OnStateError::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wicket_plugin_sdk::{header, Header, ResponseHead};

    fn all() -> Triggers {
        Triggers::from_list(&Trigger::ALL)
    }

    fn only(trigger: Trigger) -> Triggers {
        Triggers::from_list(&[trigger])
    }

    const FAILURES: [UpstreamError; 4] = [
        UpstreamError::ConnectFailed,
        UpstreamError::Reset,
        UpstreamError::NoEndpoint,
        UpstreamError::Protocol,
    ];

    #[test]
    fn success_is_kept() {
        for status in [200, 204, 301, 404, 429, 499] {
            assert_eq!(
                response_reason(all(), &UpstreamResult::Status(status), false),
                None
            );
        }
    }

    #[test]
    fn status_5xx_degrades() {
        for status in [500, 502, 503, 504, 599] {
            assert_eq!(
                response_reason(all(), &UpstreamResult::Status(status), false),
                Some(Reason::Status5xx)
            );
        }
    }

    #[test]
    fn status_5xx_kept_when_trigger_off() {
        let triggers =
            Triggers::from_list(&[Trigger::Error, Trigger::Timeout, Trigger::CircuitOpen]);
        assert_eq!(
            response_reason(triggers, &UpstreamResult::Status(503), false),
            None
        );
    }

    #[test]
    fn upstream_errors_degrade_as_error() {
        for error in FAILURES {
            assert_eq!(
                response_reason(all(), &UpstreamResult::Error(error), false),
                Some(Reason::Error)
            );
            assert_eq!(
                response_reason(only(Trigger::Error), &UpstreamResult::Error(error), false),
                Some(Reason::Error)
            );
        }
    }

    #[test]
    fn upstream_errors_kept_when_trigger_off() {
        for error in FAILURES {
            assert_eq!(
                response_reason(only(Trigger::Timeout), &UpstreamResult::Error(error), false),
                None
            );
        }
    }

    #[test]
    fn timeout_degrades_as_timeout() {
        let timeout = UpstreamResult::Error(UpstreamError::Timeout);
        assert_eq!(
            response_reason(all(), &timeout, false),
            Some(Reason::Timeout)
        );
        assert_eq!(
            response_reason(only(Trigger::Timeout), &timeout, false),
            Some(Reason::Timeout)
        );
    }

    #[test]
    fn timeout_kept_when_only_error_enabled() {
        let timeout = UpstreamResult::Error(UpstreamError::Timeout);
        assert_eq!(response_reason(only(Trigger::Error), &timeout, false), None);
    }

    #[test]
    fn circuit_open_degrades() {
        assert_eq!(
            response_reason(all(), &UpstreamResult::Skipped, true),
            Some(Reason::CircuitOpen)
        );
        // Even with the 5xx trigger off, and even if the breaker's reply came
        // back as a status (from a nested gateway).
        assert_eq!(
            response_reason(
                only(Trigger::CircuitOpen),
                &UpstreamResult::Status(503),
                true
            ),
            Some(Reason::CircuitOpen)
        );
    }

    #[test]
    fn circuit_open_kept_when_trigger_off() {
        let triggers = Triggers::from_list(&[Trigger::Error, Trigger::Timeout, Trigger::Status5xx]);
        assert_eq!(
            response_reason(triggers, &UpstreamResult::Skipped, true),
            None
        );
        // An upstream 503 carrying the marker still counts as a 5xx.
        assert_eq!(
            response_reason(triggers, &UpstreamResult::Status(503), true),
            Some(Reason::Status5xx)
        );
    }

    #[test]
    fn other_plugin_answers_are_kept() {
        assert_eq!(
            response_reason(all(), &UpstreamResult::Skipped, false),
            None
        );
    }

    #[test]
    fn circuit_marker_is_recognised() {
        let name = "x-wicket-circuit";
        let open = |headers: Vec<Header>| {
            is_circuit_open(&ResponseHead::new(503, headers).header_values(name))
        };
        assert!(open(vec![header(name, "open")]));
        assert!(open(vec![
            header("content-type", "a"),
            header(name, " Open ")
        ]));
        assert!(open(vec![header(name, "half-open"), header(name, "open")]));
        assert!(!open(vec![header(name, "closed")]));
        assert!(!open(vec![header(name, "half-open")]));
        assert!(!open(vec![header("x-other", "open")]));
        assert!(!open(vec![]));
    }

    #[test]
    fn switch_on_values() {
        for value in [&b"on"[..], b"1", b"ON", b"true", b"on\n", b" 1 "] {
            assert!(
                switch_is_on::<()>(Ok(Some(value)), OnStateError::Allow),
                "{value:?}"
            );
        }
    }

    #[test]
    fn switch_off_values() {
        for value in [&b"off"[..], b"0", b"", b"false", b"yes please", b"onn"] {
            assert!(
                !switch_is_on::<()>(Ok(Some(value)), OnStateError::Deny),
                "{value:?}"
            );
        }
        assert!(!switch_is_on::<()>(Ok(None), OnStateError::Deny));
    }

    #[test]
    fn switch_state_error_follows_mode() {
        assert!(!switch_is_on::<()>(Err(()), OnStateError::Allow));
        assert!(switch_is_on::<()>(Err(()), OnStateError::Deny));
    }

    #[test]
    fn reasons_name_the_marker_value() {
        let names: Vec<_> = [
            Reason::Error,
            Reason::Timeout,
            Reason::Status5xx,
            Reason::CircuitOpen,
            Reason::Forced,
        ]
        .iter()
        .map(|r| r.as_str())
        .collect();
        assert_eq!(names, ["error", "timeout", "5xx", "circuit_open", "forced"]);
    }
}
