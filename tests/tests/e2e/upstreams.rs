//! Upstreams that heal themselves: retries (and their budget) across a
//! killed endpoint, active health checks, outlier ejection, least-request
//! and consistent-hash balancing, and endpoints from DNS, a file and etcd —
//! all on real sockets, with `/status` and `/metrics` showing the state.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wicket_tests::{backend, fill, Backend, HttpClient, TestGateway};

/// Requests from `clients` loops for `run`, calling `during` once a third
/// of the way in: (non-200 answers, answers, p99 latency of the requests
/// that started in the half second after `during`).
async fn steady_load(
    url: &str,
    clients: usize,
    run: Duration,
    during: impl FnOnce(),
) -> (usize, usize, Duration) {
    let start = Instant::now();
    let stop = start + run;
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, results) = (url.to_string(), results.clone());
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let status = client.get(&url, &[]).await.status;
                results.lock().unwrap().push((status, t, t.elapsed()));
            }
        }));
    }
    tokio::time::sleep(run / 3).await;
    let at = Instant::now();
    during();
    for t in tasks {
        t.await.unwrap();
    }
    let results = results.lock().unwrap();
    let errors = results.iter().filter(|(s, _, _)| *s != 200).count();
    let mut lat: Vec<Duration> = results
        .iter()
        .filter(|(_, t, _)| *t >= at && *t < at + Duration::from_millis(500))
        .map(|(_, _, l)| *l)
        .collect();
    lat.sort();
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    (errors, results.len(), p99)
}

async fn status_of(gw: &TestGateway, upstream: &str) -> serde_json::Value {
    let reply = HttpClient::new().get(&gw.admin_url("/status"), &[]).await;
    let json = reply.json();
    json["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream)
        .unwrap_or_else(|| panic!("no upstream {upstream} in {json}"))
        .clone()
}

fn endpoint(status: &serde_json::Value, addr: SocketAddr) -> Option<&serde_json::Value> {
    status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
}

/// Poll `/status` (every 20 ms, up to 10 s) until `ok` holds.
async fn wait_for_status(
    gw: &TestGateway,
    upstream: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status_of(gw, upstream).await;
        if ok(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {s:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway (admin on) routing every path to the upstream `name`, whose
/// settings are `settings` (YAML lines indented four spaces).
fn gateway_yaml(name: &str, settings: &str) -> String {
    format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
access_log: false
upstreams:
  {name}:
{settings}
routes:
  - {{ name: r, match: {{ path: "/{{*rest}}" }}, upstream: {name} }}
"#
    )
}

fn three_backends_yaml(upstream_extra: &str) -> String {
    gateway_yaml(
        "b",
        &format!(
            r#"    endpoints:
      - {{ address: "{{backend:a}}" }}
      - {{ address: "{{backend:b}}" }}
      - {{ address: "{{backend:c}}" }}
    connect_timeout_ms: 200
    request_timeout_ms: 2000
{upstream_extra}"#
        ),
    )
}

async fn three() -> (Backend, Backend, Backend) {
    (backend("a").await, backend("b").await, backend("c").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_costs_no_errors_with_retries_and_some_without() {
    let mut figures = Vec::new();
    for retries in [true, false] {
        let (a, b, c) = three().await;
        let extra = if retries {
            "    retry: { attempts: 3, retry_on: [connect-failure, reset, refused-stream] }"
        } else {
            ""
        };
        let yaml = fill(
            &three_backends_yaml(extra),
            &[("a", &a), ("b", &b), ("c", &c)],
        );
        let gw = TestGateway::start(&yaml).await;
        let killed = b.clone();
        let (errors, total, p99) = steady_load(
            &gw.url("/work"),
            8,
            Duration::from_millis(1500),
            move || killed.kill(),
        )
        .await;
        println!(
            "kill one of three endpoints under load, retries {}: {errors} errors in {total} requests, p99 in the 500 ms after the kill {:?}",
            if retries { "on" } else { "off" },
            p99
        );
        figures.push((retries, errors, total));
        if retries {
            assert_eq!(
                errors, 0,
                "{errors} of {total} requests failed with retries on"
            );
            let s = status_of(&gw, "b").await;
            assert!(s["retries"].as_u64().unwrap() > 0, "{s:#}");
        } else {
            assert!(
                errors > 0,
                "a dead endpoint without retries should cost some errors"
            );
            // Passive ejection took the dead endpoint out: the errors stop.
            let s = status_of(&gw, "b").await;
            let dead = endpoint(&s, b.addr).unwrap();
            assert_eq!(dead["ejected"], true, "{s:#}");
            assert!(
                dead["failures"]["connect-failure"].as_u64().unwrap() >= 1,
                "{s:#}"
            );
        }
    }
    assert!(
        figures.iter().all(|f| f.2 > 100),
        "too little load to judge: {figures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_amplification_when_every_endpoint_fails() {
    let (a, b, c) = three().await;
    for be in [&a, &b, &c] {
        be.answer.store(503, Ordering::SeqCst);
    }
    // Every endpoint answers 503; without a budget, 3 tries each would
    // triple the load. The budget allows 10 % of requests plus 1/s over 10 s.
    let extra = r#"    outlier: { consecutive_failures: 0 }
    retry:
      attempts: 3
      retry_on: ["503"]
      backoff_base_ms: 1
      backoff_max_ms: 2
      budget: { ratio: 0.1, min_per_second: 1, window_ms: 10000 }"#;
    let yaml = fill(
        &three_backends_yaml(extra),
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    for _ in 0..300 {
        assert_eq!(client.get(&gw.url("/x"), &[]).await.status, 503);
    }
    let hits: u64 = [&a, &b, &c]
        .iter()
        .map(|b| b.hits.load(Ordering::SeqCst))
        .sum();
    // 300 first tries + at most 10 (the floor) + 30 (10 % of 300).
    assert!(hits >= 300 + 10, "retries were made: {hits}");
    assert!(
        hits <= 300 + 10 + 30,
        "the budget let {} retries through",
        hits - 300
    );
    let s = status_of(&gw, "b").await;
    assert!(s["retry_budget_exhausted"].as_u64().unwrap() > 200, "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_only_when_it_was_never_sent() {
    let (a, b, c) = three().await;
    a.answer.store(Backend::RESET, Ordering::SeqCst);
    b.answer.store(Backend::RESET, Ordering::SeqCst);
    c.answer.store(Backend::RESET, Ordering::SeqCst);
    let extra = "    outlier: { consecutive_failures: 0 }\n    retry: { attempts: 3, retry_on: [connect-failure, reset] }";
    let yaml = fill(
        &three_backends_yaml(extra),
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    // A GET that reached an endpoint and was reset goes to the next one.
    let r = client.get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 502);
    let hits = |bs: &[&Backend]| {
        bs.iter()
            .map(|b| b.hits.load(Ordering::SeqCst))
            .sum::<u64>()
    };
    assert_eq!(hits(&[&a, &b, &c]), 3, "a GET is tried three times");
    // A POST that reached one is not sent again: it may have done its work.
    let r = client
        .send("POST", &gw.url("/x"), &[], Bytes::from_static(b"pay once"))
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(hits(&[&a, &b, &c]), 4, "a POST is tried once");
    // A POST to a dead endpoint was never sent: it goes to a live one.
    a.kill();
    b.kill();
    c.answer.store(0, Ordering::SeqCst);
    for _ in 0..6 {
        let r = client
            .send("POST", &gw.url("/x"), &[], Bytes::from_static(b"pay once"))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "c");
        assert_eq!(r.json()["body_len"], 8);
    }
}

fn health_yaml(extra: &str) -> String {
    three_backends_yaml(&format!(
        r#"    health_check:
      http: {{ path: /healthz, expected_statuses: ["200-299"] }}
      interval_ms: 50
      timeout_ms: 40
      healthy_threshold: 2
      unhealthy_threshold: 2
{extra}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_failing_endpoint_out_and_bring_it_back_each_time_it_flaps() {
    let (a, b, c) = three().await;
    let yaml = fill(&health_yaml(""), &[("a", &a), ("b", &b), ("c", &c)]);
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    for round in 0..3 {
        a.answer.store(503, Ordering::SeqCst);
        wait_for_status(&gw, "b", "marked a unhealthy", |s| {
            endpoint(s, a.addr).unwrap()["failing_checks"] == true
        })
        .await;
        for _ in 0..12 {
            let r = client.get(&gw.url("/x"), &[]).await;
            assert_eq!(r.status, 200, "round {round}");
            assert_ne!(r.header("x-backend"), Some("a"), "round {round}");
        }
        a.answer.store(0, Ordering::SeqCst);
        wait_for_status(&gw, "b", "brought a back", |s| {
            endpoint(s, a.addr).unwrap()["healthy"] == true
        })
        .await;
        let mut seen_a = false;
        for _ in 0..12 {
            seen_a |= client.get(&gw.url("/x"), &[]).await.header("x-backend") == Some("a");
        }
        assert!(seen_a, "round {round}: a is back in rotation");
    }
    let metrics = client.get(&gw.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = format!(
        "wicket_upstream_endpoint_healthy{{upstream=\"b\",endpoint=\"{}\"}} 1",
        a.addr
    );
    assert!(text.contains(&line), "{line} not in\n{text}");
    assert!(
        text.contains("wicket_upstream_endpoint_requests_total"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_finds_a_dead_endpoint_and_no_healthy_endpoint_means_503() {
    let (a, b, c) = three().await;
    let extra = r#"    panic_threshold_percent: 0
    health_check: { tcp: {}, interval_ms: 50, timeout_ms: 40, unhealthy_threshold: 1 }"#;
    let yaml = fill(
        &three_backends_yaml(extra),
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    let gw = TestGateway::start(&yaml).await;
    a.kill();
    wait_for_status(&gw, "b", "marked a unhealthy", |s| {
        endpoint(s, a.addr).unwrap()["healthy"] == false
    })
    .await;
    b.kill();
    c.kill();
    wait_for_status(&gw, "b", "marked every endpoint unhealthy", |s| {
        s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["healthy"] == false)
    })
    .await;
    let r = HttpClient::new().get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "upstream_no_endpoint", "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_panic_threshold_failing_endpoints_still_take_traffic() {
    let (a, b, c) = three().await;
    // Two of three fail their checks but still answer: with a 50 % panic
    // threshold the one healthy endpoint is not left to carry everything.
    let yaml = fill(&health_yaml(""), &[("a", &a), ("b", &b), ("c", &c)]);
    let gw = TestGateway::start(&yaml).await;
    a.answer.store(503, Ordering::SeqCst);
    b.answer.store(503, Ordering::SeqCst);
    wait_for_status(&gw, "b", "marked a and b unhealthy", |s| {
        endpoint(s, a.addr).unwrap()["failing_checks"] == true
            && endpoint(s, b.addr).unwrap()["failing_checks"] == true
    })
    .await;
    let client = HttpClient::new();
    let mut not_c = 0;
    for _ in 0..30 {
        if client.get(&gw.url("/x"), &[]).await.header("x-backend") != Some("c") {
            not_c += 1;
        }
    }
    assert!(not_c > 0, "panic routing spreads over all endpoints");
    assert!(status_of(&gw, "b").await["panic_picks"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_an_endpoint_and_it_returns_after_the_ejection() {
    let (a, b, c) = three().await;
    a.answer.store(Backend::RESET, Ordering::SeqCst);
    let extra =
        "    outlier: { consecutive_failures: 2, base_ejection_ms: 400, max_ejected_percent: 34 }";
    let yaml = fill(
        &three_backends_yaml(extra),
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    let mut failures = 0;
    for _ in 0..30 {
        if client.get(&gw.url("/x"), &[]).await.status != 200 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "two resets eject it; then it gets nothing");
    let s = status_of(&gw, "b").await;
    let ejected = endpoint(&s, a.addr).unwrap();
    assert_eq!(ejected["ejected"], true, "{s:#}");
    assert_eq!(ejected["ejections"], 1);
    // The cap: a second failing endpoint is not ejected (34 % of 3 is one).
    b.answer.store(Backend::RESET, Ordering::SeqCst);
    for _ in 0..12 {
        client.get(&gw.url("/x"), &[]).await;
    }
    let s = status_of(&gw, "b").await;
    assert_eq!(endpoint(&s, b.addr).unwrap()["ejected"], false, "{s:#}");
    assert!(s["ejections_capped"].as_u64().unwrap() > 0, "{s:#}");
    b.answer.store(0, Ordering::SeqCst);
    // After the ejection, a is tried again.
    a.answer.store(0, Ordering::SeqCst);
    wait_for_status(&gw, "b", "returned a", |s| {
        endpoint(s, a.addr).unwrap()["ejected"] == false
    })
    .await;
    let before = a.hits.load(Ordering::SeqCst);
    for _ in 0..9 {
        assert_eq!(client.get(&gw.url("/x"), &[]).await.status, 200);
    }
    assert!(
        a.hits.load(Ordering::SeqCst) > before,
        "a is back in rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_the_slow_endpoint() {
    let (a, b, c) = three().await;
    a.delay_ms.store(200, Ordering::SeqCst);
    let yaml = fill(
        &three_backends_yaml("    balance: least-request"),
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    let gw = TestGateway::start(&yaml).await;
    let (errors, total, _) =
        steady_load(&gw.url("/x"), 12, Duration::from_millis(1500), || {}).await;
    assert_eq!(errors, 0);
    let (ha, hb, hc) = (
        a.hits.load(Ordering::SeqCst),
        b.hits.load(Ordering::SeqCst),
        c.hits.load(Ordering::SeqCst),
    );
    // Round-robin would give each a third; the slow one holds its requests
    // longer, so it is the busier of two nearly always, and is picked about
    // when both draws land on it (1 in 9).
    assert!(
        ha * 4 < hb + hc,
        "slow a got {ha}, b {hb}, c {hc} of {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_each_user_on_one_endpoint() {
    let (a, b, c) = three().await;
    let yaml = fill(
        &three_backends_yaml("    balance: consistent-hash\n    hash_on: header:x-user"),
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    let mut owners = std::collections::HashMap::new();
    for round in 0..3 {
        for user in 0..40 {
            let u = format!("user-{user}");
            let r = client.get(&gw.url("/x"), &[("x-user", &u)]).await;
            let owner = r.header("x-backend").unwrap().to_string();
            let first = owners.entry(u.clone()).or_insert_with(|| owner.clone());
            assert_eq!(*first, owner, "round {round}: {u} moved");
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "40 users spread over every endpoint");
    // An endpoint leaving moves only its own users.
    b.kill();
    let client = HttpClient::new();
    for (u, owner) in &owners {
        let r = client.get(&gw.url("/x"), &[("x-user", u)]).await;
        if owner != "b" && r.status == 200 {
            assert_eq!(
                r.header("x-backend"),
                Some(owner.as_str()),
                "{u} moved though its endpoint lives"
            );
        }
    }
}

/// A DNS server the test controls: answers A queries for any name with the
/// addresses in `answers` (TTL 1 s), AAAA with none; SERVFAIL when `fail`.
struct TestDns {
    addr: SocketAddr,
    answers: Arc<Mutex<Vec<std::net::Ipv4Addr>>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    queries: Arc<std::sync::atomic::AtomicU64>,
}

async fn test_dns() -> TestDns {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let answers: Arc<Mutex<Vec<std::net::Ipv4Addr>>> = Arc::default();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let queries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (ans, f, q) = (answers.clone(), fail.clone(), queries.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let query = &buf[..n];
            // The question: the name's labels, then type and class.
            let mut i = 12;
            while i < n && query[i] != 0 {
                i += query[i] as usize + 1;
            }
            if i + 5 > n {
                continue;
            }
            q.fetch_add(1, Ordering::SeqCst);
            let qtype = u16::from_be_bytes([query[i + 1], query[i + 2]]);
            let question = &query[12..i + 5];
            let failing = f.load(Ordering::SeqCst);
            let ips = if qtype == 1 && !failing {
                ans.lock().unwrap().clone()
            } else {
                vec![]
            };
            let mut out = Vec::new();
            out.extend_from_slice(&query[..2]);
            // Response, recursion desired and available; SERVFAIL when failing.
            out.extend_from_slice(&[0x81, if failing { 0x82 } else { 0x80 }]);
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&(ips.len() as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(question);
            for ip in ips {
                out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                out.extend_from_slice(&1u32.to_be_bytes());
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&out, from).await;
        }
    });
    TestDns {
        addr,
        answers,
        fail,
        queries,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_are_re_resolved_and_a_failed_lookup_keeps_the_last_answer() {
    // Two backends on one port at two loopback addresses: the name decides.
    let one = backend("one").await;
    let port = one.addr.port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.2", port))
        .await
        .unwrap();
    let two = wicket_tests::serve_backend(listener, "two".into());
    let dns = test_dns().await;
    dns.answers
        .lock()
        .unwrap()
        .push("127.0.0.1".parse().unwrap());
    let yaml = gateway_yaml(
        "b",
        &format!(
            r#"    endpoints: [{{ address: "api.wicket.test:{port}" }}]
    dns: {{ nameservers: ["{}"], min_ttl_ms: 100, max_ttl_ms: 200, timeout_ms: 200 }}"#,
            dns.addr
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    // The first answer was awaited before serving.
    assert_eq!(
        client.get(&gw.url("/x"), &[]).await.header("x-backend"),
        Some("one")
    );
    let s = status_of(&gw, "b").await;
    assert_eq!(s["endpoints"][0]["source"], "dns", "{s:#}");
    *dns.answers.lock().unwrap() = vec!["127.0.0.2".parse().unwrap()];
    wait_for_status(&gw, "b", "re-resolved to 127.0.0.2", |s| {
        endpoint(s, two.addr).is_some() && endpoint(s, one.addr).is_none()
    })
    .await;
    assert_eq!(
        client.get(&gw.url("/x"), &[]).await.header("x-backend"),
        Some("two")
    );
    // The resolver fails: the last answer stands.
    dns.fail.store(true, Ordering::SeqCst);
    let asked = dns.queries.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.queries.load(Ordering::SeqCst) < asked + 4 {
        assert!(Instant::now() < deadline, "the name was never asked again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let r = client.get(&gw.url("/x"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("two"));
    }
    drop(one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_registry_change_is_applied_and_a_broken_one_keeps_the_last_list() {
    let (a, b, _c) = three().await;
    let dir = wicket_tests::scratch_dir("registry");
    let registry = dir.join("endpoints.yaml");
    let write = |text: String| wicket_tests::pki::write_atomically(&registry, &text);
    write(format!("services:\n  api:\n    - \"{}\"\n", a.addr));
    let yaml = gateway_yaml(
        "api",
        &format!(
            r#"    discovery: {{ file: {{ path: "{}" }} }}"#,
            registry.display()
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    assert_eq!(
        client.get(&gw.url("/x"), &[]).await.header("x-backend"),
        Some("a")
    );
    write(format!(
        "services:\n  api:\n    - {{ address: \"{}\", weight: 2 }}\n",
        b.addr
    ));
    wait_for_status(&gw, "api", "applied the new file", |s| {
        endpoint(s, b.addr).is_some_and(|e| e["weight"] == 2) && endpoint(s, a.addr).is_none()
    })
    .await;
    assert_eq!(
        client.get(&gw.url("/x"), &[]).await.header("x-backend"),
        Some("b")
    );
    // Broken, then missing the service: both refused, b stays.
    write("services: { api: [ not-an-address ] }\n".into());
    tokio::time::sleep(Duration::from_millis(800)).await;
    write("services: { other: [] }\n".into());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = status_of(&gw, "api").await;
    assert!(endpoint(&s, b.addr).is_some(), "{s:#}");
    assert_eq!(
        client.get(&gw.url("/x"), &[]).await.header("x-backend"),
        Some("b")
    );
}

/// A real etcd on loopback ports, killed on drop.
struct Etcd {
    child: std::process::Child,
    url: String,
    _dir: std::path::PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_etcd() -> Etcd {
    let dir = wicket_tests::scratch_dir("etcd");
    let (client, peer) = (wicket_tests::free_port(), wicket_tests::free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = std::process::Command::new("etcd")
        .args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .args(["--log-level", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcd is needed for this test (Debian: apt-get install etcd-server)");
    let etcd = Etcd {
        child,
        url,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("{}/v3/kv/range", etcd.url);
        let health = tokio::spawn(async move {
            let client = HttpClient::new();
            tokio::time::timeout(
                Duration::from_secs(1),
                client.send("POST", &url, &[], Bytes::from(r#"{"key":"AA=="}"#)),
            )
            .await
        });
        if let Ok(Ok(r)) = health.await {
            if r.status == 200 {
                return etcd;
            }
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn etcd_call(etcd: &Etcd, path: &str, body: serde_json::Value) {
    let r = HttpClient::new()
        .send(
            "POST",
            &format!("{}{path}", etcd.url),
            &[],
            Bytes::from(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{path}: {:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_endpoints_appear_and_leave_within_a_second_and_a_lost_etcd_keeps_serving() {
    let (a, b, _c) = three().await;
    let etcd = start_etcd().await;
    let put = |key: &str, value: String| serde_json::json!({"key": b64(key), "value": b64(&value)});
    etcd_call(
        &etcd,
        "/v3/kv/put",
        put("/services/api/a", a.addr.to_string()),
    )
    .await;
    let yaml = gateway_yaml(
        "api",
        &format!(
            r#"    discovery: {{ etcd: {{ endpoints: ["{}"], prefix: "/services/api/" }} }}"#,
            etcd.url
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    assert_eq!(
        client.get(&gw.url("/x"), &[]).await.header("x-backend"),
        Some("a")
    );
    // Added: visible within a second.
    let t = Instant::now();
    etcd_call(
        &etcd,
        "/v3/kv/put",
        put(
            "/services/api/b",
            format!(r#"{{"address": "{}", "weight": 3}}"#, b.addr),
        ),
    )
    .await;
    wait_for_status(&gw, "api", "added b", |s| {
        endpoint(s, b.addr).is_some_and(|e| e["weight"] == 3)
    })
    .await;
    let added = t.elapsed();
    // Removed: likewise.
    let t = Instant::now();
    etcd_call(
        &etcd,
        "/v3/kv/deleterange",
        serde_json::json!({"key": b64("/services/api/a")}),
    )
    .await;
    wait_for_status(&gw, "api", "removed a", |s| endpoint(s, a.addr).is_none()).await;
    let removed = t.elapsed();
    println!(
        "etcd: an added endpoint was live after {added:?}, a removed one gone after {removed:?}"
    );
    assert!(added < Duration::from_secs(1) && removed < Duration::from_secs(1));
    // A key outside the prefix, and a value that is no endpoint, change nothing.
    etcd_call(
        &etcd,
        "/v3/kv/put",
        put("/services/other/x", a.addr.to_string()),
    )
    .await;
    etcd_call(
        &etcd,
        "/v3/kv/put",
        put("/services/api/junk", "not an endpoint".into()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = status_of(&gw, "api").await;
    assert_eq!(s["endpoints"].as_array().unwrap().len(), 1, "{s:#}");
    // etcd goes away: the last good set keeps serving.
    drop(etcd);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let r = client.get(&gw.url("/x"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("b"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_settings_are_validated_with_their_locations() {
    let dir = wicket_tests::scratch_dir("upstream-config");
    let cases = [
        (
            "retry: { attempts: 3, retry_on: [sometimes] }",
            "upstreams.b.retry.retry_on[0]",
        ),
        ("retry: { attempts: 1 }", "upstreams.b.retry.attempts"),
        ("balance: consistent-hash", "upstreams.b.hash_on"),
        (
            "balance: consistent-hash\n    hash_on: body",
            "upstreams.b.hash_on",
        ),
        (
            "health_check: { interval_ms: 10 }",
            "upstreams.b.health_check.http",
        ),
        (
            "health_check: { http: { expected_statuses: [\"2xx\"] } }",
            "upstreams.b.health_check.http.expected_statuses[0]",
        ),
        (
            "outlier: { max_ejected_percent: 150 }",
            "upstreams.b.outlier.max_ejected_percent",
        ),
        (
            "discovery: { etcd: { endpoints: [\"https://x:1\"], prefix: /a/ } }",
            "upstreams.b.discovery.etcd.endpoints[0]",
        ),
        (
            "discovery: { file: { path: missing.yaml } }",
            "upstreams.b.discovery.file.path",
        ),
    ];
    for (extra, location) in cases {
        let path = dir.join("wicket.yaml");
        std::fs::write(
            &path,
            format!(
                "listeners: [{{ address: \"127.0.0.1:0\" }}]\nupstreams:\n  b:\n    endpoints: [{{ address: \"127.0.0.1:9\" }}]\n    {extra}\nroutes:\n  - {{ name: r, match: {{ path: /x }}, upstream: b }}\n"
            ),
        )
        .unwrap();
        let errors: Vec<String> = match wicket_tests::wicket::gateway::validate(&path).await {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        };
        assert!(
            errors.iter().any(|e| e.starts_with(location)),
            "{extra}: expected an error at {location}, got {errors:?}"
        );
    }
    // A name that is not a DNS name is refused where it is written.
    let path = dir.join("wicket.yaml");
    std::fs::write(
        &path,
        "listeners: [{ address: \"127.0.0.1:0\" }]\nupstreams:\n  b:\n    endpoints: [{ address: \"bad_name!:80\" }]\nroutes: []\n",
    )
    .unwrap();
    let err = wicket_tests::wicket::gateway::validate(&path)
        .await
        .unwrap_err();
    assert!(
        err.0[0]
            .to_string()
            .contains("upstreams.b.endpoints[0].address"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_the_final_outcome_and_the_attempt_count() {
    let (a, b, c) = three().await;
    a.answer.store(Backend::RESET, Ordering::SeqCst);
    b.answer.store(Backend::RESET, Ordering::SeqCst);
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
access_log: false
plugins:
  inspect: { module: "{plugin:inspect}" }
upstreams:
  b:
    endpoints:
      - { address: "{backend:a}" }
      - { address: "{backend:b}" }
      - { address: "{backend:c}" }
    outlier: { consecutive_failures: 0 }
    retry: { attempts: 3, retry_on: [reset], backoff_base_ms: 1, backoff_max_ms: 1 }
routes:
  - { name: r, match: { path: "/{*rest}" }, upstream: b, plugins: [{ name: inspect }] }
"#,
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    let gw = TestGateway::start(&yaml).await;
    let client = HttpClient::new();
    let hits = || {
        [&a, &b, &c]
            .iter()
            .map(|b| b.hits.load(Ordering::SeqCst))
            .sum::<u64>()
    };
    let mut counts = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let before = hits();
        let r = client.get(&gw.url("/x"), &[]).await;
        assert_eq!(r.status, 200);
        let tries = hits() - before;
        assert_eq!(
            r.header("x-seen-attempts"),
            Some(tries.to_string().as_str())
        );
        assert_eq!(
            r.header("x-seen-outcome"),
            Some(format!("200@{}", c.addr).as_str())
        );
        counts.insert(tries);
    }
    assert!(
        counts.iter().any(|&n| n > 1),
        "some requests were retried: {counts:?}"
    );
    // Every endpoint resets: the outcome is the last try's failure.
    c.answer.store(Backend::RESET, Ordering::SeqCst);
    let r = client.get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-seen-attempts"), Some("3"));
    assert!(
        r.header("x-seen-outcome")
            .unwrap()
            .starts_with("error:UpstreamError::Reset@"),
        "{:?}",
        r.headers
    );
}
