//! Traces: the span tree of a request through a three-plugin chain, as an
//! OTLP/HTTP collector receives it (server span, one span per hook call
//! with its decision, the upstream call's span, the context the upstream
//! saw); refusals and traps on their spans; the caller's sampling decision
//! followed; a stuck or absent collector costs spans, never requests.

use std::time::{Duration, Instant};

use wicket_tests::otlp::{attribute, Collector, Span};
use wicket_tests::{backend, fill, free_port, HttpClient, TestGateway};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn config(b: &wicket_tests::Backend, tracing: &str) -> String {
    fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
access_log: false
tracing: {tracing}
plugins:
  key-auth: {{ module: "{{plugin:key-auth}}" }}
  header-injector: {{ module: "{{plugin:header-injector}}" }}
  chaos: {{ module: "{{plugin:chaos}}" }}
upstreams:
  b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }}
routes:
  - name: api
    match: {{ path: "/api" }}
    upstream: b
    plugins:
      - {{ name: key-auth, config: {{ keys: {{ "k-alice": alice }} }} }}
      - name: header-injector
        config: {{ request: {{ x-injected: "yes" }}, response: {{ x-served-by: wicket }} }}
      - {{ name: chaos, config: {{ default: continue }} }}
"#
        ),
        &[("b", b)],
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:#?}", names(spans)))
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_three_plugins_is_one_span_tree() {
    let collector = Collector::start().await;
    let b = backend("b").await;
    let gw = TestGateway::start(&config(
        &b,
        &format!(
            "{{ otlp: {{ endpoint: \"{}\" }}, flush_interval_ms: 50, resource: {{ deployment.environment: test }} }}",
            collector.endpoint()
        ),
    ))
    .await;
    let c = HttpClient::new();
    let key = ("x-api-key", "k-alice");

    // A success, as the child of the caller's span.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{caller}-01");
    let ok = c
        .get(
            &gw.url("/api"),
            &[key, ("traceparent", &tp), ("tracestate", "vendor=1")],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.header("x-served-by"), Some("wicket"));
    let seen = ok.json()["headers"]["traceparent"][0]
        .as_str()
        .expect("the upstream gets a traceparent")
        .to_string();
    assert_eq!(ok.json()["headers"]["tracestate"][0], "vendor=1");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts[1], trace, "same trace upstream: {seen}");
    assert_ne!(
        parts[2], caller,
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(parts[3], "01");

    let spans = collector.trace(&unhex(trace), 7).await;
    assert_eq!(spans.len(), 7, "{:#?}", names(&spans));
    let server = named(&spans, "GET api");
    assert_eq!(server.kind, SERVER);
    assert_eq!(hex(&server.parent_span_id), caller);
    assert_eq!(attribute(server, "http.route"), "api");
    assert_eq!(attribute(server, "http.request.method"), "GET");
    assert_eq!(attribute(server, "http.response.status_code"), "200");
    assert_eq!(attribute(server, "url.path"), "/api");
    assert_eq!(attribute(server, "wicket.upstream"), "b");
    assert_eq!(attribute(server, "wicket.endpoint"), b.addr.to_string());
    assert_eq!(
        attribute(server, "wicket.request_id"),
        ok.header("x-request-id").unwrap()
    );
    // One span per hook call, in the order they ran, each the server
    // span's child.
    let mut hooks: Vec<&Span> = spans
        .iter()
        .filter(|s| !attribute(s, "wicket.hook").is_empty())
        .collect();
    hooks.sort_by_key(|s| s.start_time_unix_nano);
    let order: Vec<String> = hooks
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                attribute(s, "wicket.plugin"),
                attribute(s, "wicket.hook"),
                attribute(s, "wicket.decision")
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            "key-auth on-request continue",
            "header-injector on-request continue",
            "chaos on-request continue",
            "chaos on-response continue",
            "header-injector on-response continue",
        ]
    );
    // What key-auth added to its span through the contract.
    assert_eq!(attribute(hooks[0], "key_auth.outcome"), "allowed");
    assert!(hooks[0].events.is_empty());
    for h in &hooks {
        assert_eq!(h.parent_span_id, server.span_id, "{}", h.name);
        assert!(h.end_time_unix_nano >= h.start_time_unix_nano);
        assert!(h.start_time_unix_nano >= server.start_time_unix_nano);
    }
    let upstream = named(&spans, "upstream b");
    assert_eq!(upstream.kind, CLIENT);
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(
        hex(&upstream.span_id),
        parts[2],
        "the context sent is the upstream span's"
    );
    assert_eq!(attribute(upstream, "http.response.status_code"), "200");
    assert_eq!(attribute(upstream, "server.address"), b.addr.to_string());
    assert_eq!(attribute(upstream, "wicket.attempts"), "1");
    assert!(upstream.start_time_unix_nano > hooks[2].start_time_unix_nano);
    assert!(upstream.end_time_unix_nano <= hooks[3].end_time_unix_nano);
    assert!(server.end_time_unix_nano >= hooks[4].end_time_unix_nano);
    let resource = collector.resource_attributes();
    assert!(
        resource.contains(&"service.name=wicket".to_string()),
        "{resource:?}"
    );
    assert!(
        resource.contains(&"deployment.environment=test".to_string()),
        "{resource:?}"
    );

    // A response with no body to send (HEAD) is complete, not aborted.
    let head_trace = "4bf92f3577b34da6a3ce929d0e0e4735";
    let r = c
        .send(
            "HEAD",
            &gw.url("/api"),
            &[
                key,
                ("traceparent", &format!("00-{head_trace}-{caller}-01")),
            ],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    let spans = collector.trace(&unhex(head_trace), 5).await;
    let head = named(&spans, "HEAD api");
    assert_eq!(attribute(head, "http.response.status_code"), "200");
    assert_eq!(attribute(head, "wicket.aborted"), "", "a whole answer");

    // A refusal: key-auth answers, nothing else runs, no upstream span.
    let refused_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = c
        .get(
            &gw.url("/api"),
            &[("traceparent", &format!("00-{refused_trace}-{caller}-01"))],
        )
        .await;
    assert_eq!(r.status, 401);
    let spans = collector.trace(&unhex(refused_trace), 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans_now: Vec<Span> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == unhex(refused_trace))
        .collect();
    assert_eq!(spans_now.len(), 2, "{:#?}", names(&spans_now));
    let auth = named(&spans, "key-auth on-request");
    assert_eq!(attribute(auth, "wicket.decision"), "respond");
    assert_eq!(attribute(auth, "key_auth.outcome"), "missing_key");
    assert_eq!(auth.events.len(), 1, "{:?}", auth.events);
    assert_eq!(auth.events[0].name, "api key refused");
    assert_eq!(auth.events[0].attributes[0].key, "reason");
    assert_eq!(
        attribute(named(&spans, "GET api"), "http.response.status_code"),
        "401"
    );

    // A trap: the hook's span says so; the server span is an error.
    let trap_trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    let r = c
        .get(
            &gw.url("/api"),
            &[
                key,
                ("x-chaos", "trap"),
                ("traceparent", &format!("00-{trap_trace}-{caller}-01")),
            ],
        )
        .await;
    assert_eq!(r.status, 500);
    let spans = collector.trace(&unhex(trap_trace), 4).await;
    let chaos = named(&spans, "chaos on-request");
    assert_eq!(attribute(chaos, "wicket.decision"), "refused");
    assert_eq!(attribute(chaos, "error.type"), "trap");
    let server = named(&spans, "GET api");
    assert_eq!(attribute(server, "error.type"), "plugin_failed");
    assert_eq!(
        server.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );

    // The caller decided not to sample: nothing is recorded, and the
    // upstream still gets the trace, unsampled.
    let quiet_trace = "7bf92f3577b34da6a3ce929d0e0e4739";
    let r = c
        .get(
            &gw.url("/api"),
            &[
                key,
                ("traceparent", &format!("00-{quiet_trace}-{caller}-00")),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = r.json()["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(seen.starts_with(&format!("00-{quiet_trace}-")), "{seen}");
    assert!(seen.ends_with("-00"), "{seen}");
    // A request with no context starts a trace of its own.
    let r = c.get(&gw.url("/api"), &[key]).await;
    let own = r.json()["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    let own_trace = own.split('-').nth(1).unwrap().to_string();
    let spans = collector.trace(&unhex(&own_trace), 7).await;
    assert!(
        named(&spans, "GET api").parent_span_id.is_empty(),
        "a root span"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| s.trace_id != unhex(quiet_trace)),
        "an unsampled trace is not exported"
    );
    let text = gw.gateway.shared().runtime().metrics().encode();
    assert!(
        text.contains(r#"wicket_trace_spans_total{result="dropped"} 0"#),
        "{text}"
    );
}

fn spans_counted(gw: &TestGateway, result: &str) -> u64 {
    let text = gw.gateway.shared().runtime().metrics().encode();
    let prefix = format!(r#"wicket_trace_spans_total{{result="{result}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_or_absent_collector_costs_spans_not_requests() {
    let collector = Collector::start().await;
    collector.hang(true);
    let b = backend("b").await;
    let tracing = |endpoint: &str| {
        format!(
            "{{ otlp: {{ endpoint: \"{endpoint}\", timeout_ms: 300 }}, max_queue_spans: 20, max_batch_spans: 10, flush_interval_ms: 20 }}"
        )
    };
    let gw = TestGateway::start(&config(&b, &tracing(&collector.endpoint()))).await;
    let c = HttpClient::new();
    let key = ("x-api-key", "k-alice");
    // 7 spans a request against a queue of 20: the collector does not
    // answer, so the queue fills and later spans are dropped.
    for _ in 0..60 {
        let r = c.get(&gw.url("/api"), &[key]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    wait_until("spans dropped at the full queue", || {
        spans_counted(&gw, "dropped") > 0
    })
    .await;
    wait_until("a stuck export timed out", || {
        spans_counted(&gw, "failed") > 0
    })
    .await;
    assert_eq!(spans_counted(&gw, "exported"), 0);
    assert!(collector.requests.load(std::sync::atomic::Ordering::SeqCst) > 0);

    // The collector answers again: new spans get through.
    collector.hang(false);
    for _ in 0..5 {
        assert_eq!(c.get(&gw.url("/api"), &[key]).await.status, 200);
    }
    wait_until("spans exported once it answers", || {
        spans_counted(&gw, "exported") > 0
    })
    .await;
    drop(gw);

    // No collector at all: requests are served; every export fails.
    let gw = TestGateway::start(&config(
        &b,
        &tracing(&format!("http://127.0.0.1:{}/v1/traces", free_port())),
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(c.get(&gw.url("/api"), &[key]).await.status, 200);
    }
    wait_until("exports to nothing fail", || {
        spans_counted(&gw, "failed") > 0
    })
    .await;
    assert_eq!(spans_counted(&gw, "exported"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tracing_settings_are_refused_at_their_field() {
    let b = backend("b").await;
    for (tracing, at, says) in [
        (
            "{ otlp: { endpoint: \"https://collector:4318/v1/traces\" } }",
            "tracing.otlp.endpoint",
            "https",
        ),
        (
            "{ otlp: { endpoint: \"collector:4318\" } }",
            "tracing.otlp.endpoint",
            "http://",
        ),
        (
            "{ otlp: { endpoint: \"http://127.0.0.1:4318/v1/traces\" }, sampling_ratio: 1.5 }",
            "tracing.sampling_ratio",
            "between 0 and 1",
        ),
        (
            "{ otlp: { endpoint: \"http://127.0.0.1:4318/v1/traces\" }, max_queue_spans: 10, max_batch_spans: 20 }",
            "tracing.max_batch_spans",
            "max_queue_spans",
        ),
        (
            "{ otlp: { endpoint: \"http://127.0.0.1:4318/v1/traces\", colour: red } }",
            "tracing.otlp",
            "unknown field",
        ),
    ] {
        let dir = wicket_tests::scratch_dir("trace-config");
        let path = dir.join("wicket.yaml");
        std::fs::write(&path, config(&b, tracing)).unwrap();
        let err = match wicket::Gateway::start(wicket::Options::new(&path)).await {
            Ok(_) => panic!("{tracing} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(at) && err.contains(says), "{tracing}: {err}");
    }
}
