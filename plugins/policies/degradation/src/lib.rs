//! Degradation policy plugin: serves a configured fallback response in place
//! of the upstream's when the upstream fails, times out, answers 5xx or its
//! circuit is open, or at once while a manual switch is on.
//!
//! Place it before the circuit breaker in the chain (`[..., degradation,
//! circuit-breaker, ...]`): `on-response` runs in reverse chain order, so
//! degradation sees the breaker's short-circuit reply as well as the
//! upstream's failures. The decisions live in [`decide`]; this module is the
//! thin glue to the host.

mod config;
mod decide;

use wicket_plugin_sdk::{
    export_plugin, header, log, metrics, state, Plugin, Request, RequestAction, RequestPatch,
    Response, ResponseAction, ResponseHead, ResponsePatch, UpstreamOutcome,
};

use config::{Degradation, Fallback};
use decide::Reason;

impl Plugin for Degradation {
    fn init(config: &str) -> Result<Self, String> {
        Degradation::from_json(config)
    }

    /// Answers with the fallback at once while the manual switch is on, so the
    /// upstream (and every later plugin) is not called.
    fn on_request(&self, request: &Request) -> RequestAction {
        if self.applies_to(request.method()) && self.switch_on() {
            count(request.route(), Reason::Forced);
            return RequestAction::Respond(fallback_response(
                &self.fallback,
                self.marker_header.as_deref(),
                Reason::Forced,
            ));
        }
        RequestAction::Continue(RequestPatch::default())
    }

    /// Replaces a failed, 5xx or circuit-open response with the fallback.
    fn on_response(
        &self,
        request: &Request,
        outcome: &UpstreamOutcome,
        response: &ResponseHead,
    ) -> ResponseAction {
        if !self.applies_to(request.method()) {
            return ResponseAction::Continue(ResponsePatch::default());
        }
        let circuit_open = decide::is_circuit_open(&response.header_values(&self.circuit_header));
        match decide::response_reason(self.triggers, &outcome.result, circuit_open) {
            Some(reason) => {
                count(request.route(), reason);
                ResponseAction::Replace(fallback_response(
                    &self.fallback,
                    self.marker_header.as_deref(),
                    reason,
                ))
            }
            None => ResponseAction::Continue(ResponsePatch::default()),
        }
    }
}

impl Degradation {
    /// Whether the manual switch is on: `force` in the config, else the
    /// shared-state key (read on every request, so flipping it takes effect
    /// at once on every instance).
    fn switch_on(&self) -> bool {
        if self.force {
            return true;
        }
        let Some(key) = &self.switch_key else {
            return false;
        };
        let read = state::get(key);
        if let Err(err) = &read {
            log::log(
                log::Level::Warn,
                &format!(
                    "degradation: cannot read switch key `{key}` ({err:?}); treating the switch as {}",
                    if self.on_state_error == config::OnStateError::Deny { "on" } else { "off" }
                ),
            );
        }
        let read = read
            .as_ref()
            .map(|entry| entry.as_ref().map(|e| e.value.as_slice()));
        decide::switch_is_on(read, self.on_state_error)
    }
}

/// The fallback as a response, with the marker header naming the reason.
fn fallback_response(fallback: &Fallback, marker_header: Option<&str>, reason: Reason) -> Response {
    let mut headers: Vec<_> = fallback
        .headers
        .iter()
        .filter(|(name, _)| Some(name.as_str()) != marker_header)
        .map(|(name, value)| header(name, value))
        .collect();
    if let Some(name) = marker_header {
        headers.push(header(name, reason.as_str()));
    }
    Response {
        status: fallback.status,
        headers,
        body: fallback.body.clone(),
    }
}

/// Count degraded responses per route and reason (exported as `wicket_plugin_degraded_total`).
fn count(route: &str, reason: Reason) {
    metrics::counter_add(
        "degraded",
        &[
            metrics::Label {
                name: "route".to_string(),
                value: route.to_string(),
            },
            metrics::Label {
                name: "reason".to_string(),
                value: reason.as_str().to_string(),
            },
        ],
        1,
    );
}

export_plugin!(Degradation);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_response_carries_marker() {
        let d = Degradation::from_json(
            r#"{"fallback": {"status": 200, "body": "cached", "headers": {"x-wicket-degraded": "spoof"}}}"#,
        )
        .unwrap();
        let r = fallback_response(&d.fallback, d.marker_header.as_deref(), Reason::Timeout);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"cached");
        let headers: Vec<_> = r
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice()))
            .collect();
        assert_eq!(
            headers,
            [
                ("content-type", &b"text/plain; charset=utf-8"[..]),
                ("x-wicket-degraded", b"timeout"),
            ]
        );
    }

    #[test]
    fn fallback_response_without_marker() {
        let d = Degradation::from_json(r#"{"marker_header": null}"#).unwrap();
        let r = fallback_response(&d.fallback, None, Reason::Forced);
        assert_eq!(r.status, 503);
        assert!(r.headers.iter().all(|h| h.name != "x-wicket-degraded"));
    }
}
