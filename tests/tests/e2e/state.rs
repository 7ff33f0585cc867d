//! Plugin state on Redis: one conformance suite for both backends; two
//! gateway processes enforcing one limit exactly; a breaker and an admin
//! switch seen by every gateway; Redis stopped mid-load and restarted under
//! each failure policy; a slow Redis cut by the plugin's deadline; Redis
//! over mutual TLS with a password.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wicket_tests::pki::{Ca, Validity};
use wicket_tests::redis_server::RedisServer;
use wicket_tests::wicket::state::{CasOutcome, Entry, SharedState, StateError};
use wicket_tests::wicket::Clock;
use wicket_tests::{
    backend, fill, free_port, scratch_dir, GatewayProcess, HttpClient, TestGateway,
};

/// The keys the gateway wrote to the Redis at `url`, sorted.
async fn keys(url: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// A store routed as a gateway with this `state` section routes plugin `p`
/// (and `q`): what the conformance suite runs against.
async fn store(state_yaml: &str) -> SharedState {
    let yaml = format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\n{state_yaml}\nplugins:\n  p: {{ module: x.wasm }}\n  q: {{ module: x.wasm }}\n"
    );
    let cfg = wicket_tests::wicket::config::parse(&yaml).expect("a valid config");
    let metrics = Arc::new(wicket_tests::wicket::metrics::Metrics::new());
    let routes =
        wicket_tests::wicket::state::Routes::build(&cfg, std::path::Path::new("."), None, &metrics)
            .expect("valid state settings");
    let state = SharedState::in_memory(Clock::system());
    state.apply(Arc::new(routes)).await;
    state
}

/// The contract's `state` semantics, asserted the same way on each backend.
async fn conformance(s: &SharedState, backend: &str) {
    let p: Arc<str> = Arc::from("p");
    let q: Arc<str> = Arc::from("q");
    let ctx = |what: &str| format!("{backend}: {what}");

    // Get, set, versions.
    assert_eq!(s.get(&p, "k", None).await, Ok(None), "{}", ctx("missing"));
    let v1 = s.set(&p, "k", b"a".to_vec(), None, None).await.unwrap();
    assert_eq!(
        s.get(&p, "k", None).await,
        Ok(Some(Entry {
            value: b"a".to_vec(),
            version: v1
        })),
        "{}",
        ctx("read back")
    );
    let v2 = s.set(&p, "k", b"b".to_vec(), None, None).await.unwrap();
    assert!(v2 > v1, "{}", ctx("versions increase"));

    // Compare-and-swap.
    let now = Some(Entry {
        value: b"b".to_vec(),
        version: v2,
    });
    assert_eq!(
        s.compare_and_swap(&p, "k", None, b"x".to_vec(), None, None)
            .await,
        Ok(CasOutcome::Conflict(now.clone())),
        "{}",
        ctx("cas only-if-absent on a present key")
    );
    assert_eq!(
        s.compare_and_swap(&p, "k", Some(v1), b"x".to_vec(), None, None)
            .await,
        Ok(CasOutcome::Conflict(now)),
        "{}",
        ctx("cas on a stale version")
    );
    let v3 = match s
        .compare_and_swap(&p, "k", Some(v2), b"c".to_vec(), None, None)
        .await
    {
        Ok(CasOutcome::Swapped(v)) => v,
        other => panic!("{}: {other:?}", ctx("cas on the current version")),
    };
    assert!(v3 > v2);
    assert!(matches!(
        s.compare_and_swap(&p, "fresh", None, b"1".to_vec(), None, None)
            .await,
        Ok(CasOutcome::Swapped(_))
    ));
    assert_eq!(
        s.compare_and_swap(&p, "absent", Some(7), b"1".to_vec(), None, None)
            .await,
        Ok(CasOutcome::Conflict(None)),
        "{}",
        ctx("cas on a missing key with a version")
    );

    // Binary values, the largest value, the limits.
    let binary: Vec<u8> = (0..=255).collect();
    s.set(&p, "bin", binary.clone(), None, None).await.unwrap();
    assert_eq!(s.get(&p, "bin", None).await.unwrap().unwrap().value, binary);
    let max = vec![7u8; wicket_tests::wicket::state::MAX_VALUE_BYTES];
    s.set(&p, "max", max.clone(), None, None).await.unwrap();
    assert_eq!(s.get(&p, "max", None).await.unwrap().unwrap().value, max);
    let over = vec![7u8; wicket_tests::wicket::state::MAX_VALUE_BYTES + 1];
    assert_eq!(
        s.set(&p, "over", over.clone(), None, None).await,
        Err(StateError::TooLarge)
    );
    assert_eq!(
        s.compare_and_swap(&p, "over", None, over, None, None).await,
        Err(StateError::TooLarge)
    );
    let long = "k".repeat(wicket_tests::wicket::state::MAX_KEY_BYTES + 1);
    assert_eq!(s.get(&p, &long, None).await, Err(StateError::TooLarge));
    assert_eq!(
        s.increment(&p, &long, 1, None, None).await,
        Err(StateError::TooLarge)
    );

    // Counters: 8 bytes little-endian, exact over the whole i64 range,
    // wrapping like the memory backend.
    assert_eq!(s.increment(&p, "n", 5, None, None).await, Ok((5, None)));
    assert_eq!(s.increment(&p, "n", -7, None, None).await, Ok((-2, None)));
    assert_eq!(
        s.get(&p, "n", None).await.unwrap().unwrap().value,
        (-2i64).to_le_bytes().to_vec(),
        "{}",
        ctx("a counter reads as 8 bytes")
    );
    let big = (1i64 << 53) + 3;
    assert_eq!(
        s.increment(&p, "big", big, None, None).await,
        Ok((big, None))
    );
    assert_eq!(
        s.increment(&p, "big", big, None, None).await,
        Ok((2 * big, None)),
        "{}",
        ctx("past 2^53")
    );
    s.set(&p, "edge", i64::MAX.to_le_bytes().to_vec(), None, None)
        .await
        .unwrap();
    assert_eq!(
        s.increment(&p, "edge", 1, None, None).await,
        Ok((i64::MIN, None)),
        "{}",
        ctx("wraps")
    );
    assert_eq!(
        s.increment(&p, "edge", i64::MIN, None, None).await,
        Ok((0, None))
    );
    assert_eq!(
        s.increment(&p, "bin", 1, None, None).await,
        Err(StateError::NotACounter)
    );

    // Delete.
    assert_eq!(s.delete(&p, "k", None).await, Ok(true));
    assert_eq!(s.delete(&p, "k", None).await, Ok(false));
    // A deleted key's version is never handed out again.
    let v4 = s.set(&p, "k", b"again".to_vec(), None, None).await.unwrap();
    assert!(v4 > v3, "{}", ctx("versions survive a delete"));

    // Namespaces.
    assert_eq!(s.get(&q, "k", None).await, Ok(None));
    assert_eq!(s.delete(&q, "k", None).await, Ok(false));
    assert_eq!(s.increment(&q, "n", 1, None, None).await, Ok((1, None)));

    // TTLs: expiry, a write without TTL clears one, a counter keeps its
    // first expiry and starts afresh after it.
    s.set(&p, "t", b"v".to_vec(), Some(300), None)
        .await
        .unwrap();
    s.set(&p, "kept", b"v".to_vec(), Some(300), None)
        .await
        .unwrap();
    s.set(&p, "kept", b"w".to_vec(), None, None).await.unwrap();
    let cas_kept = s.set(&p, "cas-kept", b"v".to_vec(), Some(300), None).await;
    assert!(matches!(
        s.compare_and_swap(
            &p,
            "cas-kept",
            Some(cas_kept.unwrap()),
            b"w".to_vec(),
            None,
            None
        )
        .await,
        Ok(CasOutcome::Swapped(_))
    ));
    let (one, left) = s.increment(&p, "w", 1, Some(600), None).await.unwrap();
    assert_eq!(one, 1);
    assert!(left.is_some_and(|l| l > 300 && l <= 600), "{left:?}");
    assert!(s.get(&p, "t", None).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(s.get(&p, "t", None).await, Ok(None), "{}", ctx("expired"));
    assert_eq!(s.delete(&p, "t", None).await, Ok(false));
    assert!(
        s.get(&p, "kept", None).await.unwrap().is_some(),
        "{}",
        ctx("set without a TTL keeps the key")
    );
    assert!(
        s.get(&p, "cas-kept", None).await.unwrap().is_some(),
        "{}",
        ctx("cas without a TTL keeps the key")
    );
    let (two, left) = s.increment(&p, "w", 1, Some(600), None).await.unwrap();
    assert_eq!(two, 2);
    assert!(
        left.is_some_and(|l| l <= 260),
        "{}: the first expiry holds, {left:?}",
        backend
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.increment(&p, "w", 1, Some(600), None).await.map(|c| c.0),
        Ok(1),
        "{}",
        ctx("a counter starts afresh after expiry")
    );

    // Exactness under concurrency: read-modify-write with compare-and-swap
    // from many tasks at once loses no update.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, p) = (s.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                loop {
                    let cur = s.get(&p, "sum", None).await.unwrap();
                    let (n, version) = cur.map_or((0, None), |e| {
                        (
                            u64::from_le_bytes(e.value.try_into().unwrap()),
                            Some(e.version),
                        )
                    });
                    let next = (n + 1).to_le_bytes().to_vec();
                    if let Ok(CasOutcome::Swapped(_)) = s
                        .compare_and_swap(&p, "sum", version, next, None, None)
                        .await
                    {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        s.get(&p, "sum", None).await.unwrap().unwrap().value,
        400u64.to_le_bytes().to_vec(),
        "{}",
        ctx("no lost update")
    );

    // take-tokens: a bucket of 5 refilled one token an hour.
    let hour = 3_600_000;
    for left in (0..5).rev() {
        let t = s.take_tokens(&p, "tb", 1, hour, 5, 1, None).await.unwrap();
        assert!(t.taken, "{}", ctx("within the burst"));
        assert_eq!(
            (t.remaining, t.retry_after_ms),
            (left, 0),
            "{}",
            ctx("remaining")
        );
    }
    let t = s.take_tokens(&p, "tb", 1, hour, 5, 1, None).await.unwrap();
    assert!(!t.taken, "{}", ctx("past the burst"));
    assert_eq!(t.remaining, 0);
    assert!(
        (hour - 5_000..=hour).contains(&t.retry_after_ms),
        "{}: {t:?}",
        ctx("retry")
    );
    assert!(
        (5 * hour - 5_000..=5 * hour).contains(&t.reset_ms),
        "{}: {t:?}",
        ctx("reset")
    );
    // It is an ordinary entry: 17 bytes, versioned; deleting it refills it.
    let e = s.get(&p, "tb", None).await.unwrap().unwrap();
    assert_eq!((e.value.len(), e.value[0]), (17, 1), "{}", ctx("layout"));
    assert!(s.delete(&p, "tb", None).await.unwrap());
    let t = s.take_tokens(&p, "tb", 1, hour, 5, 2, None).await.unwrap();
    assert_eq!(
        (t.taken, t.remaining),
        (true, 3),
        "{}",
        ctx("cost 2 after delete")
    );
    // Another layout under the key is a full bucket, replaced.
    s.set(&p, "tb", b"not a bucket".to_vec(), None, None)
        .await
        .unwrap();
    let t = s.take_tokens(&p, "tb", 1, hour, 5, 1, None).await.unwrap();
    assert_eq!(
        (t.taken, t.remaining),
        (true, 4),
        "{}",
        ctx("foreign value")
    );
    // Limits the contract does not take.
    for (rate, period, burst, cost) in [(0, hour, 5, 1), (1, hour, 5, 6), (1, 1 << 40, 1 << 20, 1)]
    {
        assert_eq!(
            s.take_tokens(&p, "bad", rate, period, burst, cost, None)
                .await,
            Err(StateError::TooLarge),
            "{}",
            ctx("bad limit")
        );
    }
    // Refill on the store's clock: 10 a second, burst 1.
    assert!(
        s.take_tokens(&p, "fast", 10, 1_000, 1, 1, None)
            .await
            .unwrap()
            .taken
    );
    let t = s
        .take_tokens(&p, "fast", 10, 1_000, 1, 1, None)
        .await
        .unwrap();
    assert!(
        !t.taken && t.retry_after_ms <= 100,
        "{}: {t:?}",
        ctx("refused")
    );
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(
        s.take_tokens(&p, "fast", 10, 1_000, 1, 1, None)
            .await
            .unwrap()
            .taken,
        "{}",
        ctx("refilled")
    );
    // Exact under contention: 8 tasks × 50 takes share a burst of 100.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, p) = (s.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let mut taken = 0;
            for _ in 0..50 {
                if s.take_tokens(&p, "shared", 1, hour, 100, 1, None)
                    .await
                    .unwrap()
                    .taken
                {
                    taken += 1;
                }
            }
            taken
        }));
    }
    let mut taken = 0;
    for t in tasks {
        taken += t.await.unwrap();
    }
    assert_eq!(taken, 100, "{}", ctx("exactly the burst"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_pass_the_same_conformance_suite() {
    conformance(&store("").await, "memory").await;

    let redis = RedisServer::start();
    let s = store(&format!(
        "state: {{ backend: redis, redis: {{ url: \"{}\", key_prefix: \"conf:\" }} }}",
        redis.url()
    ))
    .await;
    conformance(&s, "redis").await;
    assert!(s.is_empty(), "nothing went to memory");
    let keys = keys(&redis.url()).await;
    assert!(keys.contains(&"conf:{p}:sum".to_string()), "{keys:?}");
    assert!(keys.contains(&"conf:{p}#version".to_string()), "{keys:?}");
    assert!(keys.contains(&"conf:{q}:n".to_string()), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("conf:")), "{keys:?}");
}

/// One route limited to 1,000 requests a day in all, its state on Redis.
fn fleet_config(redis: &RedisServer, b: &wicket_tests::Backend) -> String {
    fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
state: {{ backend: redis, redis: {{ url: "{url}" }} }}
plugins:
  rate-limit: {{ module: "{{plugin:rate-limit}}", limits: {{ deadline_ms: 2000 }} }}
upstreams: {{ b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }} }}
routes:
  - name: limited
    match: {{ path: "/limited" }}
    upstream: b
    plugins:
      - name: rate-limit
        config: {{ rate: 1000, period_seconds: 86400, burst: 1000, key: route }}
"#,
            url = redis.url()
        ),
        &[("b", b)],
    )
}

#[test]
fn two_gateway_processes_sharing_redis_enforce_one_limit_exactly() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();
    let b = rt.block_on(backend("b"));
    let dir = scratch_dir("fleet");
    let config = dir.join("wicket.yaml");
    std::fs::write(&config, fleet_config(&redis, &b)).unwrap();
    let bin = env!("CARGO_BIN_EXE_wicket-under-test");
    let gateways = [
        GatewayProcess::spawn(bin, &config, &[]),
        GatewayProcess::spawn(bin, &config, &[]),
    ];
    // Each start awaited its first Redis probe before listening.
    let urls: Vec<String> = gateways
        .iter()
        .map(|g| format!("http://{}/limited", g.addr))
        .collect();
    let (passed, limited, other) = rt.block_on(async {
        let c = HttpClient::new();
        let (passed, limited, other) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut tasks = Vec::new();
        // 32 clients, half on each gateway, 3,000 requests for 1,000 tokens.
        for i in 0..32 {
            let (c, url) = (c.clone(), urls[i % 2].clone());
            let (passed, limited, other) = (passed.clone(), limited.clone(), other.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..94 {
                    let r = c.get(&url, &[]).await;
                    match r.status {
                        200 => passed.fetch_add(1, SeqCst),
                        429 => limited.fetch_add(1, SeqCst),
                        _ => other.fetch_add(1, SeqCst),
                    };
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (
            passed.load(SeqCst),
            limited.load(SeqCst),
            other.load(SeqCst),
        )
    });
    assert_eq!(other, 0, "every answer is 200 or 429");
    assert_eq!(
        passed, 1000,
        "exactly the limit passed across both gateways ({limited} limited)"
    );
    assert_eq!(b.hits.load(SeqCst), 1000);
    assert_eq!(passed + limited, 32 * 94);
}

/// Two in-process gateways (separate runtimes and memory) on one Redis: a
/// breaker tripped through one is open on the other; the admin switch put
/// through one flips the other; `/status` shows the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_and_an_admin_switch_hold_across_gateways() {
    let redis = RedisServer::start();
    let failing = backend("failing").await;
    failing.answer.store(500, SeqCst);
    let catalog = backend("catalog").await;
    let yaml = fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
state: {{ backend: redis, redis: {{ url: "{url}" }} }}
plugins:
  circuit-breaker: {{ module: "{{plugin:circuit-breaker}}" }}
  degradation: {{ module: "{{plugin:degradation}}" }}
upstreams:
  failing: {{ endpoints: [{{ address: "{{backend:failing}}" }}] }}
  catalog: {{ endpoints: [{{ address: "{{backend:catalog}}" }}] }}
routes:
  - name: fragile
    match: {{ path: "/fragile" }}
    upstream: failing
    plugins:
      - name: circuit-breaker
        config: {{ consecutive_failures: 3, cooldown_seconds: 60 }}
  - name: catalog
    match: {{ path: "/catalog" }}
    upstream: catalog
    plugins:
      - name: degradation
        config:
          on: []
          fallback: {{ status: 200, body_json: {{ degraded: true }} }}
          switch_key: "degrade:catalog"
"#,
            url = redis.url()
        ),
        &[("failing", &failing), ("catalog", &catalog)],
    );
    let a = TestGateway::start(&yaml).await;
    let b = TestGateway::start(&yaml).await;
    let c = HttpClient::new();

    for _ in 0..3 {
        assert_eq!(c.get(&a.url("/fragile"), &[]).await.status, 500);
    }
    let r = c.get(&b.url("/fragile"), &[]).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "circuit_open");
    assert_eq!(
        failing.hits.load(SeqCst),
        3,
        "the other gateway never called it"
    );

    let r = c.get(&b.url("/catalog"), &[]).await;
    assert_eq!(r.json()["backend"], "catalog");
    let put = c
        .send(
            "PUT",
            &a.admin_url("/plugins/degradation/state/degrade:catalog"),
            &[],
            Bytes::from("on"),
        )
        .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    let r = c.get(&b.url("/catalog"), &[]).await;
    assert_eq!(
        r.json()["degraded"],
        true,
        "the switch flipped on the other gateway"
    );
    let read = c
        .get(
            &b.admin_url("/plugins/degradation/state/degrade:catalog"),
            &[],
        )
        .await;
    assert_eq!(&read.body[..], b"on");

    let status = c.get(&b.admin_url("/status"), &[]).await.json();
    let state = &status["state"];
    assert_eq!(state["redis"]["up"], true, "{state}");
    assert_eq!(state["redis"]["url"], redis.url());
    assert_eq!(
        state["plugins_on_redis"]["degradation"]["on_unavailable"],
        "error"
    );
}

/// A slow proxy in front of Redis: forwards both ways, holding each reply
/// chunk for `delay_ms` (0: none).
async fn slow_proxy(to: String, delay_ms: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (to, delay_ms) = (to.clone(), delay_ms.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&to).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut buf = vec![0; 16 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let d = delay_ms.load(SeqCst);
                    if d > 0 {
                        tokio::time::sleep(Duration::from_millis(d)).await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Three rate limits, each on Redis with its own failure policy: fail
/// closed (503), fail open (pass), and a memory fallback (limit per gateway
/// until Redis is back).
fn policies_config(url: &str, b: &wicket_tests::Backend) -> String {
    fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
state:
  backend: redis
  redis: {{ url: "{url}", probe_interval_ms: 100 }}
plugins:
  closed: {{ module: "{{plugin:rate-limit}}" }}
  open: {{ module: "{{plugin:rate-limit}}" }}
  local: {{ module: "{{plugin:rate-limit}}", state: {{ on_unavailable: memory }} }}
upstreams: {{ b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }} }}
routes:
  - name: closed
    match: {{ path: "/closed" }}
    upstream: b
    plugins: [{{ name: closed, config: {{ rate: 3, period_seconds: 86400, key: route, on_state_error: deny }} }}]
  - name: open
    match: {{ path: "/open" }}
    upstream: b
    plugins: [{{ name: open, config: {{ rate: 3, period_seconds: 86400, key: route, on_state_error: allow }} }}]
  - name: local
    match: {{ path: "/local" }}
    upstream: b
    plugins: [{{ name: local, config: {{ rate: 3, period_seconds: 86400, key: route }} }}]
"#
        ),
        &[("b", b)],
    )
}

async fn statuses(c: &HttpClient, url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.get(url, &[]).await.status);
    }
    out
}

async fn wait_for_health(c: &HttpClient, gw: &TestGateway, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.get(&gw.admin_url("/status"), &[]).await.json();
        if s["state"]["redis"]["up"] == up {
            return;
        }
        assert!(Instant::now() < deadline, "Redis never became up={up}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_load_follows_each_policy_and_recovers() {
    let mut redis = RedisServer::start();
    let b = backend("b").await;
    let gw = TestGateway::start(&policies_config(&redis.url(), &b)).await;
    let c = HttpClient::new();

    // Up: two of each route's three tokens taken, on Redis.
    for path in ["/closed", "/open", "/local"] {
        assert_eq!(statuses(&c, &gw.url(path), 2).await, [200, 200], "{path}");
    }
    assert_eq!(
        keys(&redis.url()).await.len(),
        6,
        "three buckets and three version counters"
    );

    // Load keeps coming while Redis goes away.
    let load = {
        let (c, url) = (c.clone(), gw.url("/open"));
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..40 {
                seen.push(c.get(&url, &[]).await.status);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.stop();
    let seen = load.await.unwrap();
    assert!(
        seen.iter().all(|s| *s == 200 || *s == 429),
        "fail-open never errs: {seen:?}"
    );
    wait_for_health(&c, &gw, false).await;

    // Down: closed refuses with its own 503, open passes everything, local
    // limits from a fresh bucket in this gateway's memory.
    let r = c.get(&gw.url("/closed"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "rate_limit_unavailable");
    assert_eq!(statuses(&c, &gw.url("/open"), 5).await, [200; 5]);
    assert_eq!(
        statuses(&c, &gw.url("/local"), 4).await,
        [200, 200, 200, 429],
        "the fallback bucket holds the limit in this gateway"
    );
    let metrics = c.get(&gw.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("wicket_state_backend_up{backend=\"redis\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("wicket_state_backend_transitions_total{backend=\"redis\",to=\"down\"} 1"),
        "{text}"
    );
    // One `take-tokens` call per decision: the four /local requests.
    assert!(
        text.contains("wicket_state_operations_total{backend=\"redis\",result=\"fallback\"} 4"),
        "{text}"
    );

    // Redis is back (empty, as a restarted Redis without persistence is):
    // every route is on Redis again without a restart of the gateway.
    redis.spawn();
    wait_for_health(&c, &gw, true).await;
    assert_eq!(
        statuses(&c, &gw.url("/closed"), 4).await,
        [200, 200, 200, 429]
    );
    assert_eq!(
        statuses(&c, &gw.url("/local"), 4).await,
        [200, 200, 200, 429]
    );
    let status = c.get(&gw.admin_url("/status"), &[]).await.json();
    assert_eq!(status["state"]["redis"]["fallback_entries"], 0, "{status}");
    assert_eq!(
        keys(&redis.url()).await.len(),
        4,
        "closed and local on Redis again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_cut_by_the_plugin_deadline() {
    let redis = RedisServer::start();
    let delay = Arc::new(AtomicU64::new(0));
    let proxy = slow_proxy(redis.addr(), delay.clone()).await;
    let b = backend("b").await;
    let gw = TestGateway::start(&policies_config(&format!("redis://{proxy}/0"), &b)).await;
    let c = HttpClient::new();
    assert_eq!(c.get(&gw.url("/closed"), &[]).await.status, 200);

    // Replies now take 3 s: each state call is cut a fifth before the
    // hook's 50 ms deadline, and the plugin answers with its own error.
    delay.store(3_000, SeqCst);
    let started = Instant::now();
    let r = c.get(&gw.url("/closed"), &[]).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"],
        "rate_limit_unavailable",
        "the plugin's own refusal, not a deadline failure"
    );
    assert!(took < Duration::from_secs(1), "cut in {took:?}");
    let r = c.get(&gw.url("/open"), &[]).await;
    assert_eq!(r.status, 200, "fail-open passes while Redis is slow");
    let local = statuses(&c, &gw.url("/local"), 4).await;
    assert_eq!(
        local,
        [200, 200, 200, 429],
        "the fallback serves while Redis is slow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_state_settings_are_config_errors_with_their_location() {
    let dir = scratch_dir("state-config");
    let cases = [
        ("state: { backend: redis }", "state.redis"),
        ("state: { redis: { url: \"http://x\" } }", "state.redis.url"),
        (
            "state: { redis: { url: \"redis://127.0.0.1:1\", timeout_ms: 0 } }",
            "state.redis.timeout_ms",
        ),
        (
            "state: { redis: { url: \"redis://127.0.0.1:1\", password_file: missing.txt } }",
            "state.redis.password_file",
        ),
        (
            "state: { redis: { url: \"redis://127.0.0.1:1\", tls: { ca_file: ca.pem } } }",
            "state.redis.tls",
        ),
        (
            "state: { redis: { url: \"redis://127.0.0.1:1\", colour: blue } }",
            "state.redis",
        ),
    ];
    for (i, (state, location)) in cases.iter().enumerate() {
        let path = dir.join(format!("c{i}.yaml"));
        std::fs::write(
            &path,
            format!("listeners: [{{ address: \"127.0.0.1:0\" }}]\n{state}\n"),
        )
        .unwrap();
        let err = wicket_tests::wicket::gateway::validate(&path)
            .await
            .expect_err(state)
            .to_string();
        assert!(err.contains(location), "{state}: {err}");
    }
    // A plugin on Redis with no Redis configured, and a memory plugin that
    // asks for a fallback it can never need.
    let path = dir.join("plugins.yaml");
    std::fs::write(
        &path,
        fill(
            r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  a: { module: "{plugin:rate-limit}", state: { backend: redis } }
  b: { module: "{plugin:rate-limit}", state: { on_unavailable: memory } }
"#,
            &[],
        ),
    )
    .unwrap();
    let err = wicket_tests::wicket::gateway::validate(&path)
        .await
        .expect_err("invalid")
        .to_string();
    assert!(err.contains("plugins.a.state.backend"), "{err}");
    assert!(err.contains("plugins.b.state.on_unavailable"), "{err}");
}

/// `rediss://` with a CA file, a client certificate and a password file: the
/// limiter's state lives on a Redis that requires all three. A wrong password
/// or a server the CA does not vouch for leaves the backend down, reported in
/// `/status`, and the plugin takes its own error path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_mutual_tls_with_a_password() {
    let dir = scratch_dir("redis-tls");
    let ca = Ca::new("redis-ca");
    let (cert, key) = ca
        .server(&["127.0.0.1"], Validity::Current)
        .write(&dir, "server");
    let (client_cert, client_key) = ca.client("wicket", "wicket.test").write(&dir, "client");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let stranger = dir.join("stranger-ca.pem");
    std::fs::write(&stranger, Ca::new("stranger").pem).unwrap();
    std::fs::write(dir.join("password"), "s3cret-pass\n").unwrap();
    std::fs::write(dir.join("wrong"), "not-it\n").unwrap();
    let tls_port = free_port();
    let path = |p: &std::path::Path| p.display().to_string();
    let redis = RedisServer::start_with(vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path(&cert),
        "--tls-key-file".into(),
        path(&key),
        "--tls-ca-cert-file".into(),
        path(&ca_file),
        "--tls-auth-clients".into(),
        "yes".into(),
        "--requirepass".into(),
        "s3cret-pass".into(),
    ]);
    let b = backend("b").await;
    let config = |password: &str, ca: &std::path::Path| {
        fill(
            &format!(
                r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
state:
  backend: redis
  redis:
    url: "rediss://127.0.0.1:{tls_port}/0"
    password_file: "{password}"
    tls: {{ ca_file: "{ca}", cert_file: "{cert}", key_file: "{key}" }}
plugins:
  limit: {{ module: "{{plugin:rate-limit}}" }}
upstreams: {{ b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }} }}
routes:
  - name: limited
    match: {{ path: "/limited" }}
    upstream: b
    plugins: [{{ name: limit, config: {{ rate: 3, period_seconds: 86400, key: route, on_state_error: deny }} }}]
"#,
                password = path(&dir.join(password)),
                ca = path(ca),
                cert = path(&client_cert),
                key = path(&client_key),
            ),
            &[("b", &b)],
        )
    };
    let c = HttpClient::new();

    let gw = TestGateway::start(&config("password", &ca_file)).await;
    wait_for_health(&c, &gw, true).await;
    assert_eq!(
        statuses(&c, &gw.url("/limited"), 4).await,
        [200, 200, 200, 429]
    );
    let on_redis = keys(&format!("redis://:s3cret-pass@{}/0", redis.addr())).await;
    assert_eq!(
        on_redis.len(),
        2,
        "the bucket and the version: {on_redis:?}"
    );
    assert!(
        on_redis.iter().all(|k| k.starts_with("wicket:{limit}")),
        "{on_redis:?}"
    );
    let status = c.get(&gw.admin_url("/status"), &[]).await.json();
    assert_eq!(
        status["state"]["redis"]["url"],
        format!("rediss://127.0.0.1:{tls_port}/0"),
        "{status}"
    );

    for (password, ca) in [("wrong", &ca_file), ("password", &stranger)] {
        let gw = TestGateway::start(&config(password, ca)).await;
        let status = c.get(&gw.admin_url("/status"), &[]).await.json();
        assert_eq!(
            status["state"]["redis"]["up"], false,
            "{password}: {status}"
        );
        assert!(
            status["state"]["redis"]["last_error"].is_string(),
            "{password}: {status}"
        );
        let r = c.get(&gw.url("/limited"), &[]).await;
        assert_eq!(r.status, 503, "{password}");
        assert_eq!(r.json()["error"], "rate_limit_unavailable", "{password}");
    }
}
