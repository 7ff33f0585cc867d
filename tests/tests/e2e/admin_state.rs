//! The admin API for plugin state: an operator flips `degradation`'s manual
//! switch with `PUT /plugins/degradation/state/{key}` and every instance sees
//! it on the next request; bad requests get clear errors.

use bytes::Bytes;
use wicket_tests::{backend, fill, HttpClient, TestGateway};

const CONFIG: &str = r#"
listeners: [{ address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
plugins:
  degradation: { module: "{plugin:degradation}" }
upstreams:
  catalog: { endpoints: [{ address: "{backend:catalog}" }] }
routes:
  - name: catalog
    match: { path: "/catalog/{*rest}" }
    upstream: catalog
    plugins:
      - name: degradation
        config:
          on: []
          fallback: { status: 200, body_json: { items: [], degraded: true } }
          switch_key: "degrade:catalog"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_degradation_switch_is_flipped_through_the_admin_api() {
    let catalog = backend("catalog").await;
    let gw = TestGateway::start(&fill(CONFIG, &[("catalog", &catalog)])).await;
    let c = HttpClient::new();
    let key_url = gw.admin_url("/plugins/degradation/state/degrade%3Acatalog");

    let r = c.get(&gw.url("/catalog/items"), &[]).await;
    assert_eq!(
        r.json()["backend"],
        "catalog",
        "switch off: served upstream"
    );
    assert_eq!(c.get(&key_url, &[]).await.status, 404, "no key yet");

    let r = c.send("PUT", &key_url, &[], Bytes::from("on\n")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let version = r.json()["version"].as_u64().expect("a version");

    let r = c.get(&gw.url("/catalog/items"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["degraded"],
        true,
        "switch on: the fallback answers"
    );
    assert_eq!(catalog.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    let r = c.get(&key_url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"on\n");
    assert_eq!(
        r.header("x-wicket-state-version"),
        Some(version.to_string().as_str())
    );

    let r = c.send("DELETE", &key_url, &[], Bytes::new()).await;
    assert_eq!(r.json()["deleted"], true);
    let r = c.get(&gw.url("/catalog/items"), &[]).await;
    assert_eq!(
        r.json()["backend"],
        "catalog",
        "switch deleted: upstream again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_with_a_ttl_expires() {
    let catalog = backend("catalog").await;
    let clock = wicket::Clock::manual(1_000_000);
    let gw =
        TestGateway::start_with_clock(&fill(CONFIG, &[("catalog", &catalog)]), clock.clone()).await;
    let c = HttpClient::new();
    let key_url = gw.admin_url("/plugins/degradation/state/degrade:catalog");
    let r = c
        .send(
            "PUT",
            &format!("{key_url}?ttl_ms=5000"),
            &[],
            Bytes::from("on"),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = c.get(&gw.url("/catalog/x"), &[]).await;
    assert_eq!(r.json()["degraded"], true);
    clock.advance(std::time::Duration::from_millis(5_001));
    let r = c.get(&gw.url("/catalog/x"), &[]).await;
    assert_eq!(r.json()["backend"], "catalog", "the switch expired");
    assert_eq!(c.get(&key_url, &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_state_requests_get_clear_errors() {
    let catalog = backend("catalog").await;
    let gw = TestGateway::start(&fill(CONFIG, &[("catalog", &catalog)])).await;
    let c = HttpClient::new();

    let r = c
        .send(
            "PUT",
            &gw.admin_url("/plugins/nope/state/k"),
            &[],
            Bytes::from("1"),
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("no plugin `nope`"),
        "{:?}",
        r.json()
    );

    let url = gw.admin_url("/plugins/degradation/state/k");
    let r = c
        .send("PUT", &format!("{url}?ttl_ms=soon"), &[], Bytes::from("1"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("ttl_ms"));

    let big = Bytes::from(vec![b'x'; wicket::state::MAX_VALUE_BYTES + 1]);
    let r = c.send("PUT", &url, &[], big).await;
    assert_eq!(r.status, 413);

    let r = c.send("POST", &url, &[], Bytes::new()).await;
    assert_eq!(r.status, 405);

    let long_key = "k".repeat(4096);
    let r = c
        .send(
            "PUT",
            &gw.admin_url(&format!("/plugins/degradation/state/{long_key}")),
            &[],
            Bytes::from("1"),
        )
        .await;
    assert_eq!(r.status, 413, "keys are capped like a plugin's own");
}
