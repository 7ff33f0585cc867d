//! End-to-end: the traffic-split policy plugin through the gateway — header
//! rules, sticky weighted canaries and path rewrites, as the backends see them.

use std::sync::atomic::Ordering;

use wicket_tests::{backend, fill, Backend, HttpClient, TestGateway};

/// `/hdr/...`: `x-canary: 1|true` goes to the canary as `/v2/...`; everything
/// else to stable as `/...`. `/sticky/...`: 30 % of users (by `x-user`) to
/// the canary.
async fn start() -> (TestGateway, Backend, Backend) {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  traffic-split: { module: "{plugin:traffic-split}" }
upstreams:
  stable: { endpoints: [{ address: "{backend:stable}" }] }
  canary: { endpoints: [{ address: "{backend:canary}" }] }
routes:
  - name: hdr
    match: { path: "/hdr/{*rest}" }
    upstream: stable
    plugins:
      - name: traffic-split
        config:
          upstream_header: x-wicket-upstream
          rewrite: { strip_prefix: "/hdr" }
          rules:
            - match: { header: { name: x-canary, values: ["1", "true"] } }
              upstream: canary
              rewrite: { strip_prefix: "/hdr", replace_prefix: "/v2" }
  - name: sticky
    match: { path: "/sticky/{*rest}" }
    upstream: stable
    plugins:
      - name: traffic-split
        config:
          sticky_key: "header:x-user"
          upstream_header: x-wicket-upstream
          rules:
            - weight: 30
              upstream: canary
"#,
        &[("stable", &stable), ("canary", &canary)],
    );
    (TestGateway::start(&yaml).await, stable, canary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_header_match_routes_to_the_canary_with_its_rewrite() {
    let (gw, stable, canary) = start().await;
    let c = HttpClient::new();
    for value in ["1", "true"] {
        let r = c
            .get(&gw.url("/hdr/users/7?page=2"), &[("x-canary", value)])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "canary");
        assert_eq!(r.json()["path"], "/v2/users/7");
        assert_eq!(r.json()["query"], "page=2");
        assert_eq!(r.header("x-wicket-upstream"), Some("canary"));
    }
    assert_eq!(canary.hits.load(Ordering::SeqCst), 2);
    assert_eq!(stable.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_without_a_matching_header_stays_on_stable() {
    let (gw, stable, canary) = start().await;
    let c = HttpClient::new();
    // Values match exactly: case and whitespace matter.
    for headers in [vec![], vec![("x-canary", "0")], vec![("x-canary", "TRUE")]] {
        let r = c.get(&gw.url("/hdr/users/7?page=2"), &headers).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "stable");
        assert_eq!(
            r.json()["path"],
            "/users/7",
            "the top-level rewrite applies"
        );
        assert_eq!(r.json()["query"], "page=2");
        assert_eq!(r.header("x-wicket-upstream"), Some("stable"));
    }
    assert_eq!(stable.hits.load(Ordering::SeqCst), 3);
    assert_eq!(canary.hits.load(Ordering::SeqCst), 0);
}

/// The documented sticky bucket: `fmix64(FNV-1a-64(salt ‖ 0x00 ‖ key)) mod 100`.
fn sticky_bucket(salt: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in salt.as_bytes().iter().chain(&[0]).chain(key.as_bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h % 100
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_sticky_weight_keeps_each_user_on_one_side() {
    const USERS: usize = 200;
    let (gw, _stable, canary) = start().await;
    let mut on_canary = 0;
    for i in 0..USERS {
        let user = format!("user-{i}");
        let expected = if sticky_bucket("canary", &user) < 30 {
            "canary"
        } else {
            "stable"
        };
        // Fresh connections (so a new client port each time): only the key decides.
        for _ in 0..3 {
            let r = HttpClient::new()
                .get(&gw.url("/sticky/x"), &[("x-user", &user)])
                .await;
            assert_eq!(r.json()["backend"], expected, "{user}");
            assert_eq!(r.json()["path"], "/sticky/x", "no rewrite configured");
        }
        if expected == "canary" {
            on_canary += 1;
        }
    }
    assert_eq!(canary.hits.load(Ordering::SeqCst), 3 * on_canary);
    // Roughly the configured share: 30 % of 200 is 60.
    assert!(
        (40..=80).contains(&on_canary),
        "{on_canary} of {USERS} on the canary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_weight_without_a_sticky_key_spreads_requests() {
    const REQUESTS: u64 = 200;
    let (gw, stable, canary) = start().await;
    // No x-user: each request rolls on its own seed (client port, path, query).
    for i in 0..REQUESTS {
        let r = HttpClient::new()
            .get(&gw.url(&format!("/sticky/x?n={i}")), &[])
            .await;
        assert_eq!(r.status, 200);
    }
    let on_canary = canary.hits.load(Ordering::SeqCst);
    assert_eq!(on_canary + stable.hits.load(Ordering::SeqCst), REQUESTS);
    assert!(
        (30..=90).contains(&on_canary),
        "{on_canary} of {REQUESTS} on the canary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_to_an_unknown_upstream_is_refused_when_the_config_is_checked() {
    let (gw, _stable, canary) = start().await;
    let c = HttpClient::new();

    // A reload that drops the `canary` upstream while a traffic-split rule
    // still names it is refused at the rule's location, and the running
    // configuration keeps routing to the canary.
    let text = std::fs::read_to_string(&gw.config_path).expect("read config");
    let without_canary: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("canary:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&gw.config_path, &without_canary).expect("write config");
    let errors = gw
        .gateway
        .shared()
        .reload()
        .await
        .expect_err("the reload must be refused");
    let errors: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("routes[0].plugins[0].config: ")
                && e.contains("rules[0].upstream: no upstream named `canary`")),
        "{errors:?}"
    );
    let r = c.get(&gw.url("/hdr/x"), &[("x-canary", "1")]).await;
    assert_eq!(r.json()["backend"], "canary");
    assert_eq!(canary.hits.load(Ordering::SeqCst), 1);
}
