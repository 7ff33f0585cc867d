//! Running a route's plugin chain: `on-request` in order until one responds,
//! then `on-response` in reverse for every plugin that let the request pass —
//! the onion order. Failure policies are applied here.

use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use crate::body::{self, Body};
use crate::config::FailurePolicy;
use crate::error::ProxyError;
use crate::plugin::{
    Context, PluginResponse, Pool, RequestDecision, RequestInfo, RequestPatch, ResponseDecision,
    UpstreamOutcome,
};
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::access_log::Step;
use crate::telemetry::hooks::Hook;
use crate::telemetry::trace::{HookCall, RequestTrace};
use crate::upstream::Upstream;

/// Where the request stands after the `on-request` pass.
pub struct RequestPass {
    /// Indices of the plugins that continued, and so get `on-response`.
    pub continued: Vec<usize>,
    /// The upstream the request goes to.
    pub upstream: Arc<Upstream>,
    /// Headers for the client's final response.
    pub response_headers: HeaderMap,
    /// Set when a plugin answered (or a fail-closed plugin failed): the
    /// response to send instead of calling the upstream.
    pub short_circuit: Option<http::Response<Body>>,
    /// The request contexts plugins set in `on-request`, by chain position,
    /// for their `on-response`. Only non-empty ones are kept, so a request
    /// whose plugins keep nothing allocates nothing for them.
    pub contexts: Vec<(usize, Context)>,
    /// What each hook decided and how long it took, for the access log
    /// (kept only when it is on).
    pub steps: Option<Vec<Step>>,
}

impl RequestPass {
    /// Whether any `on-response` will run, and so read the request head
    /// after the upstream call.
    pub fn runs_on_response(&self, route: &Route) -> bool {
        self.continued
            .iter()
            .any(|&i| route.chain[i].hooks().on_response)
    }
}

/// Run `on-request` for each plugin of `route`, applying patches to `parts`.
/// A plugin that declared no `on-request` counts as continuing.
pub async fn on_request(
    snapshot: &Snapshot,
    route: &Route,
    parts: &mut http::request::Parts,
    info: &Arc<RequestInfo>,
    trace: Option<&RequestTrace>,
) -> RequestPass {
    let mut pass = RequestPass {
        continued: Vec::with_capacity(route.chain.len()),
        upstream: route.upstream.clone(),
        response_headers: HeaderMap::new(),
        short_circuit: None,
        contexts: Vec::new(),
        steps: (snapshot.access_log.is_some() && !route.chain.is_empty())
            .then(|| Vec::with_capacity(route.chain.len())),
    };
    for (i, pool) in route.chain.iter().enumerate() {
        if !pool.hooks().on_request {
            pass.continued.push(i);
            continue;
        }
        let mut context = Context::default();
        arm_span(trace, &mut context);
        let began = std::time::Instant::now();
        let result = pool
            .on_request(parts, info, &pass.upstream, &mut context)
            .await;
        let decided = result.as_ref().map(|d| match d {
            RequestDecision::Continue(_) => "continue",
            RequestDecision::Respond(_) => "respond",
        });
        note(
            &mut pass.steps,
            trace,
            &mut context,
            pool,
            Hook::Request,
            decided,
            began,
        );
        if !context.is_empty() {
            pass.contexts.push((i, context));
        }
        match result {
            Ok(RequestDecision::Continue(patch)) => {
                if let Err(e) = apply_request_patch(snapshot, pool, patch, parts, &mut pass) {
                    pass.short_circuit = Some(e.to_response(&info.request_id));
                    return pass;
                }
                pass.continued.push(i);
            }
            Ok(RequestDecision::Respond(resp)) => {
                pass.short_circuit = Some(plugin_response(resp));
                return pass;
            }
            Err(err) => match pool.plugin().failure_policy() {
                FailurePolicy::FailOpen => {
                    tracing::warn!(plugin = pool.plugin().name(), route = &*route.name, request_id = %info.request_id, error = %err, "plugin failed; skipped (fail-open)");
                }
                FailurePolicy::FailClosed => {
                    tracing::error!(plugin = pool.plugin().name(), route = &*route.name, request_id = %info.request_id, error = %err, "plugin failed; request refused (fail-closed)");
                    let e = ProxyError::Plugin {
                        plugin: pool.plugin().name().to_string(),
                        source: err,
                    };
                    pass.short_circuit = Some(e.to_response(&info.request_id));
                    return pass;
                }
            },
        }
    }
    pass
}

fn apply_request_patch(
    snapshot: &Snapshot,
    pool: &Pool,
    mut patch: RequestPatch,
    parts: &mut http::request::Parts,
    pass: &mut RequestPass,
) -> Result<(), ProxyError> {
    // The path was validated at the boundary, so this only fails on an
    // impossible combination; treat that like a bad plugin output.
    patch.apply_to_head(parts).map_err(|_| ProxyError::Plugin {
        plugin: pool.plugin().name().to_string(),
        source: crate::plugin::PluginError::InvalidOutput(
            "path rewrite produced an invalid URI".into(),
        ),
    })?;
    if let Some(name) = patch.upstream {
        pass.upstream =
            snapshot
                .upstream(&name)
                .cloned()
                .ok_or_else(|| ProxyError::UnknownUpstream {
                    plugin: pool.plugin().name().to_string(),
                    upstream: name,
                })?;
    }
    for (name, value) in patch.response_headers {
        pass.response_headers.append(name, value);
    }
    Ok(())
}

/// Run `on-response` in reverse over the plugins that continued (and
/// declared `on-response`).
pub async fn on_response(
    route: &Route,
    pass: &mut RequestPass,
    parts: &mut http::request::Parts,
    info: &Arc<RequestInfo>,
    outcome: &UpstreamOutcome,
    mut resp: http::Response<Body>,
    trace: Option<&RequestTrace>,
) -> http::Response<Body> {
    for &i in pass.continued.iter().rev() {
        let pool = &route.chain[i];
        if !pool.hooks().on_response {
            continue;
        }
        let mut context = match pass.contexts.iter().position(|(at, _)| *at == i) {
            Some(k) => pass.contexts.swap_remove(k).1,
            None => Context::default(),
        };
        arm_span(trace, &mut context);
        let (mut head, body) = resp.into_parts();
        let began = std::time::Instant::now();
        let result = pool
            .on_response(
                parts,
                info,
                &pass.upstream,
                outcome,
                &mut head,
                &mut context,
            )
            .await;
        let decided = result.as_ref().map(|d| match d {
            ResponseDecision::Continue(_) => "continue",
            ResponseDecision::Replace(_) => "replace",
        });
        note(
            &mut pass.steps,
            trace,
            &mut context,
            pool,
            Hook::Response,
            decided,
            began,
        );
        resp = http::Response::from_parts(head, body);
        match result {
            Ok(ResponseDecision::Continue(patch)) => {
                let (mut head, body) = resp.into_parts();
                patch.apply(&mut head);
                resp = http::Response::from_parts(head, body);
            }
            Ok(ResponseDecision::Replace(r)) => resp = plugin_response(r),
            Err(err) => match pool.plugin().failure_policy() {
                FailurePolicy::FailOpen => {
                    tracing::warn!(plugin = pool.plugin().name(), route = &*route.name, request_id = %info.request_id, error = %err, "plugin failed in on-response; skipped (fail-open)");
                }
                FailurePolicy::FailClosed => {
                    tracing::error!(plugin = pool.plugin().name(), route = &*route.name, request_id = %info.request_id, error = %err, "plugin failed in on-response; response replaced (fail-closed)");
                    resp = ProxyError::Plugin {
                        plugin: pool.plugin().name().to_string(),
                        source: err,
                    }
                    .to_response(&info.request_id);
                }
            },
        }
    }
    resp
}

/// Let the next hook call add to its span, when the request is recorded.
fn arm_span(trace: Option<&RequestTrace>, context: &mut Context) {
    if trace.is_some_and(|t| t.recording()) {
        context.record_span();
    }
}

/// Count one hook call on its pool (for the admin page); when the access
/// log is on, keep what it decided for the request's line; when the request
/// is traced, make its span. A failed call's decision is what its failure
/// policy made of it.
fn note(
    steps: &mut Option<Vec<Step>>,
    trace: Option<&RequestTrace>,
    context: &mut Context,
    pool: &Arc<Pool>,
    hook: Hook,
    decided: Result<&'static str, &crate::plugin::PluginError>,
    began: std::time::Instant,
) {
    let took = began.elapsed();
    let (decision, failure) = match decided {
        Ok(decision) => (decision, None),
        Err(e) => match pool.plugin().failure_policy() {
            FailurePolicy::FailOpen => ("skipped", Some(e.kind())),
            FailurePolicy::FailClosed => ("refused", Some(e.kind())),
        },
    };
    pool.stats().record(hook, took, failure);
    if let Some(trace) = trace {
        let call = HookCall {
            plugin: pool.plugin().shared_name(),
            hook: hook.name(),
            decision,
            failure,
            took,
        };
        trace.hook(call, context.take_span());
    }
    if let Some(steps) = steps {
        steps.push(Step {
            pool: pool.clone(),
            hook: hook.name(),
            decision,
            failure,
            us: took.as_micros() as u64,
        });
    }
}

fn plugin_response(r: PluginResponse) -> http::Response<Body> {
    let mut resp = http::Response::new(body::full(r.body));
    *resp.status_mut() = r.status;
    for (name, value) in r.headers {
        resp.headers_mut().append(name, value);
    }
    // The body is complete, so its length is known; a plugin's own framing
    // headers must not contradict it.
    resp.headers_mut().remove(http::header::TRANSFER_ENCODING);
    resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    if resp.status() == StatusCode::NO_CONTENT || resp.status() == StatusCode::NOT_MODIFIED {
        *resp.body_mut() = body::empty();
    }
    resp
}
