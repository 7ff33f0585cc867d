//! Circuit-breaker policy plugin: one circuit per upstream (or route), shared
//! by every pooled instance through the host's `state`; refuses requests with
//! 503 while the upstream is failing, without touching it.
//!
//! The state machine is in [`machine`] (pure), its application to shared
//! state in [`breaker`]; this file is the glue: clock, probe
//! tagging, metrics, and the 503. Configuration and responses:
//! `docs/plugins/circuit-breaker.md`.

mod breaker;
mod config;
mod machine;
mod outcome;

use wicket_plugin_sdk::transact::{HostStore, TxError};
use wicket_plugin_sdk::{
    clock, context, export_plugin, log, metrics, Plugin, Request, RequestAction, RequestPatch,
    Response, ResponseAction, ResponseHead, ResponsePatch, UpstreamOutcome,
};

use crate::breaker::{Gate, Transition};
use crate::config::{Config, OnStateError, Scope};
use crate::outcome::Observation;

/// The request-context key that marks a request admitted as a half-open
/// probe; its value is the episode. The context never leaves the gateway,
/// so a client cannot pose as a probe and the upstream never sees the mark.
const PROBE_KEY: &str = "probe";

/// Set on every refusal. The degradation plugin recognises an open circuit by
/// exactly `x-wicket-circuit: open`.
const CIRCUIT_HEADER: &str = "x-wicket-circuit";

struct CircuitBreaker {
    config: Config,
}

impl Plugin for CircuitBreaker {
    fn init(config: &str) -> Result<Self, String> {
        Config::parse(config).map(|config| CircuitBreaker { config })
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        let (scope, name) = self.circuit_of(request);
        let key = state_key(scope, name);
        let gate = breaker::gate(&self.config.policy, &HostStore, &key, clock::now_ms());
        match &gate {
            Gate::Probe {
                transition: Some(t),
                ..
            } => report_transition(scope, name, *t),
            Gate::Reject { .. } => count("circuit_breaker_rejected_total", scope, name, &[]),
            Gate::StateFailed(e) => log::log(
                log::Level::Warn,
                &format!("circuit state for {scope} {name} unavailable: {e:?}"),
            ),
            _ => {}
        }
        if let Gate::Probe { episode, .. } = &gate {
            // Only fails past 16 keys or 4 KiB, which one key cannot reach.
            context::set(PROBE_KEY, &episode.to_le_bytes());
        }
        respond(&self.config, scope, name, gate)
    }

    fn on_response(
        &self,
        request: &Request,
        outcome: &UpstreamOutcome,
        _response: &ResponseHead,
    ) -> ResponseAction {
        let keep = ResponseAction::Continue(ResponsePatch::default());
        let observation = self.config.failure_on.classify(&outcome.result);
        let probe = context::get(PROBE_KEY)
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_le_bytes);
        // A neutral outcome only matters to a probe, whose slot it frees.
        if observation == Observation::Neutral && probe.is_none() {
            return keep;
        }
        let (scope, name) = self.circuit_of(request);
        let key = state_key(scope, name);
        let recorded = breaker::record(
            &self.config.policy,
            &HostStore,
            &key,
            clock::now_ms(),
            observation,
            probe,
        );
        match recorded {
            Ok(Some(t)) => report_transition(scope, name, t),
            Ok(None) => {}
            // The observation is lost; the circuit stays as it was, which is
            // the most any fallback could do without the store.
            Err(TxError::State(e)) => log::log(
                log::Level::Warn,
                &format!(
                    "circuit state for {scope} {name} unavailable; outcome not recorded: {e:?}"
                ),
            ),
            Err(TxError::Contended) => log::log(
                log::Level::Warn,
                &format!("circuit state for {scope} {name} too contended; outcome not recorded"),
            ),
        }
        keep
    }
}

export_plugin!(CircuitBreaker);

impl CircuitBreaker {
    /// The circuit a request belongs to: `("upstream", name)` or `("route", name)`.
    fn circuit_of<'r>(&self, request: &'r Request) -> (&'static str, &'r str) {
        match self.config.scope {
            Scope::Upstream => ("upstream", request.upstream()),
            Scope::Route => ("route", request.route()),
        }
    }
}

/// The state key of a circuit, e.g. `upstream:backend`.
fn state_key(scope: &str, name: &str) -> String {
    format!("{scope}:{name}")
}

/// Turn the gate's decision into the hook's result.
fn respond<E>(config: &Config, scope: &str, name: &str, gate: Gate<E>) -> RequestAction {
    let pass = RequestPatch::default();
    match gate {
        Gate::Pass | Gate::Probe { .. } => RequestAction::Continue(pass),
        Gate::Reject { retry_after_ms } => {
            // Whole seconds, rounded up and at least 1, so a client never
            // retries straight into the same refusal.
            let retry = retry_after_ms.div_ceil(1000).max(1);
            RequestAction::Respond(
                Response::json_error(
                    503,
                    "circuit_open",
                    &format!("{scope} {name} is failing; requests are refused for {retry} s"),
                )
                .with_header(CIRCUIT_HEADER, "open")
                .with_header("retry-after", retry.to_string()),
            )
        }
        Gate::StateFailed(_) => match config.on_state_error {
            OnStateError::Allow => RequestAction::Continue(pass),
            OnStateError::Deny => RequestAction::Respond(
                Response::json_error(
                    503,
                    "circuit_state_unavailable",
                    "the circuit breaker cannot read its state; retry shortly",
                )
                .with_header("retry-after", "1"),
            ),
        },
    }
}

fn report_transition(scope: &str, name: &str, t: Transition) {
    let level = if t.to == "open" {
        log::Level::Warn
    } else {
        log::Level::Info
    };
    log::log(
        level,
        &format!("circuit for {scope} {name}: {} -> {}", t.from, t.to),
    );
    count(
        "circuit_breaker_transitions_total",
        scope,
        name,
        &[("from", t.from), ("to", t.to)],
    );
}

fn count(metric: &str, scope: &str, name: &str, extra: &[(&str, &str)]) {
    let labels: Vec<metrics::Label> = [("scope", scope), ("name", name)]
        .iter()
        .chain(extra)
        .map(|(n, v)| metrics::Label {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect();
    metrics::counter_add(metric, &labels, 1);
}

#[cfg(test)]
mod tests {
    use wicket_plugin_sdk::Header;

    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| std::str::from_utf8(&h.value).unwrap())
    }

    #[test]
    fn open_circuit_answers_503_with_marker() {
        let gate = Gate::<()>::Reject {
            retry_after_ms: 12_001,
        };
        let RequestAction::Respond(r) = respond(&config("{}"), "upstream", "backend", gate) else {
            panic!("expected a response");
        };
        assert_eq!(r.status, 503);
        assert_eq!(header(&r.headers, "x-wicket-circuit"), Some("open"));
        assert_eq!(header(&r.headers, "retry-after"), Some("13"));
        assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "circuit_open");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("upstream backend"));
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let gate = Gate::<()>::Reject { retry_after_ms: 1 };
        let RequestAction::Respond(r) = respond(&config("{}"), "upstream", "b", gate) else {
            panic!("expected a response");
        };
        assert_eq!(header(&r.headers, "retry-after"), Some("1"));
    }

    #[test]
    fn passes_and_probes_leave_the_request_as_it_is() {
        let probe = Gate::<()>::Probe {
            episode: 42,
            transition: None,
        };
        for gate in [Gate::Pass, probe] {
            let RequestAction::Continue(p) = respond(&config("{}"), "upstream", "b", gate) else {
                panic!("expected continue");
            };
            assert!(p.remove_headers.is_empty() && p.set_headers.is_empty());
        }
    }

    #[test]
    fn state_error_allows_by_default() {
        let action = respond(&config("{}"), "upstream", "b", Gate::StateFailed(()));
        assert!(matches!(action, RequestAction::Continue(_)));
    }

    #[test]
    fn state_error_denies_when_configured() {
        let cfg = config(r#"{"on_state_error": "deny"}"#);
        let RequestAction::Respond(r) = respond(&cfg, "upstream", "b", Gate::StateFailed(()))
        else {
            panic!("expected a response");
        };
        assert_eq!(r.status, 503);
        // Not an open circuit: degradation must not mistake it for one.
        assert_eq!(header(&r.headers, "x-wicket-circuit"), None);
    }

    #[test]
    fn keys_separate_scopes() {
        assert_eq!(state_key("upstream", "backend"), "upstream:backend");
        assert_ne!(state_key("upstream", "x"), state_key("route", "x"));
    }
}
