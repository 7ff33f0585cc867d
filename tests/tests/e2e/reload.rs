//! Hot reload: every way files really change, bad changes kept out, plugin
//! modules replaced, and no request lost or served by two generations while
//! reloads run under load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use wicket_tests::{backend, fill, scratch_dir, Backend, HttpClient, TestGateway};

/// A config whose header-injector stamps `version` on the request and the
/// response, so each response shows which config served each phase.
fn versioned(b: &Backend, module: &Path, version: &str) -> String {
    fill(
        &r#"
listeners: [{ address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
access_log: false
expose_generation: true
watch_debounce_ms: 50
plugins:
  stamp: { module: "MODULE" }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - name: r
    match: { path: "/{*p}" }
    upstream: b
    plugins:
      - { name: stamp, config: { request: { x-version: "VERSION" }, response: { x-version: "VERSION" } } }
"#
        .replace("MODULE", module.to_str().unwrap())
        .replace("VERSION", version),
        &[("b", b)],
    )
}

/// A copy of the header-injector module with a custom section appended, so
/// its digest differs while its behaviour does not: a "new version".
fn module_variant(dir: &Path, name: &str, variant: u32) -> PathBuf {
    let mut bytes = std::fs::read(wicket_tests::plugins::HEADER_INJECTOR).unwrap();
    let section_name = format!("wicket-test-{variant}");
    let mut payload = vec![section_name.len() as u8];
    payload.extend_from_slice(section_name.as_bytes());
    bytes.push(0); // custom section id
    bytes.push(payload.len() as u8); // fits one LEB128 byte
    bytes.extend_from_slice(&payload);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn version_seen(gw: &TestGateway, c: &HttpClient) -> String {
    let r = c.get(&gw.url("/v"), &[]).await;
    assert_eq!(r.status, 200);
    r.header("x-version").unwrap().to_string()
}

/// Replace `path`'s content by writing a temporary file and renaming it over.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_is_applied() {
    let b = backend("b").await;
    let module = wicket_tests::plugins::HEADER_INJECTOR.as_ref();
    let gw = TestGateway::start_watching(&versioned(&b, module, "one")).await;
    let c = HttpClient::new();
    assert_eq!(version_seen(&gw, &c).await, "one");
    std::fs::write(&gw.config_path, versioned(&b, module, "two")).unwrap();
    gw.wait_for_generation(2).await;
    assert_eq!(version_seen(&gw, &c).await, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_rename_is_applied() {
    let b = backend("b").await;
    let module = wicket_tests::plugins::HEADER_INJECTOR.as_ref();
    let gw = TestGateway::start_watching(&versioned(&b, module, "one")).await;
    rename_over(&gw.config_path, &versioned(&b, module, "two"));
    gw.wait_for_generation(2).await;
    assert_eq!(version_seen(&gw, &HttpClient::new()).await, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_swap_is_applied() {
    use std::os::unix::fs::symlink;
    let b = backend("b").await;
    let module = wicket_tests::plugins::HEADER_INJECTOR.as_ref();
    // The kubelet's layout: wicket.yaml -> ..data/wicket.yaml, ..data -> ..<timestamp>.
    let dir = scratch_dir("configmap");
    std::fs::create_dir(dir.join("..2026_11_25_01")).unwrap();
    std::fs::write(
        dir.join("..2026_11_25_01/wicket.yaml"),
        versioned(&b, module, "one"),
    )
    .unwrap();
    symlink("..2026_11_25_01", dir.join("..data")).unwrap();
    symlink("..data/wicket.yaml", dir.join("wicket.yaml")).unwrap();
    let gw = TestGateway::start_file(
        dir.join("wicket.yaml"),
        wicket_tests::wicket::Clock::system(),
        true,
    )
    .await;
    assert_eq!(version_seen(&gw, &HttpClient::new()).await, "one");

    // An update: a new timestamped directory, then `..data` renamed over.
    std::fs::create_dir(dir.join("..2026_11_25_02")).unwrap();
    std::fs::write(
        dir.join("..2026_11_25_02/wicket.yaml"),
        versioned(&b, module, "two"),
    )
    .unwrap();
    symlink("..2026_11_25_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_25_01")).unwrap();
    gw.wait_for_generation(2).await;
    assert_eq!(version_seen(&gw, &HttpClient::new()).await, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_file_keeps_the_last_good_generation() {
    let b = backend("b").await;
    let module = wicket_tests::plugins::HEADER_INJECTOR.as_ref();
    let gw = TestGateway::start_watching(&versioned(&b, module, "one")).await;
    let c = HttpClient::new();
    std::fs::remove_file(&gw.config_path).unwrap();
    gw.wait_for_failed_reloads(1).await;
    assert_eq!(gw.generation(), 1);
    assert_eq!(version_seen(&gw, &c).await, "one");
    let status = c.get(&gw.admin_url("/status"), &[]).await.json();
    assert!(
        status["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("cannot read"),
        "{status}"
    );

    std::fs::write(&gw.config_path, versioned(&b, module, "two")).unwrap();
    gw.wait_for_generation(2).await;
    assert_eq!(version_seen(&gw, &c).await, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_file_is_not_applied_as_a_smaller_config() {
    let b = backend("b").await;
    let module = wicket_tests::plugins::HEADER_INJECTOR.as_ref();
    let gw = TestGateway::start_watching(&versioned(&b, module, "one")).await;
    let c = HttpClient::new();
    // Cut the new config in the middle of its last route: still valid YAML up
    // to the cut, but it does not end where a complete write ends.
    let full = versioned(&b, module, "two");
    let cut = full.find("response: {").unwrap();
    std::fs::write(&gw.config_path, &full[..cut]).unwrap();
    gw.wait_for_failed_reloads(1).await;
    assert_eq!(gw.generation(), 1);
    assert_eq!(version_seen(&gw, &c).await, "one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_several_pieces_is_applied_once_complete() {
    let b = backend("b").await;
    let module = wicket_tests::plugins::HEADER_INJECTOR.as_ref();
    let gw = TestGateway::start_watching(&versioned(&b, module, "one")).await;
    let full = versioned(&b, module, "two");
    let (head, tail) = full.split_at(full.len() / 2);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&gw.config_path).unwrap();
        f.write_all(head.as_bytes()).unwrap();
        f.flush().unwrap();
        // Inside the debounce window: the watcher must wait for the rest.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        f.write_all(tail.as_bytes()).unwrap();
    }
    gw.wait_for_generation(2).await;
    assert_eq!(version_seen(&gw, &HttpClient::new()).await, "two");
    assert_eq!(
        gw.gateway
            .shared()
            .runtime()
            .metrics()
            .reload_count("error"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_keep_the_current_generation() {
    let b = backend("b").await;
    let module = wicket_tests::plugins::HEADER_INJECTOR.as_ref();
    let good = versioned(&b, module, "one");
    let gw = TestGateway::start(&good).await;
    let c = HttpClient::new();
    let cases = [
        (
            "invalid YAML",
            "listeners: [ {address: \n".to_string(),
            "(line 2, column 1)",
        ),
        (
            "unknown upstream",
            good.replace("upstream: b\n", "upstream: gone\n"),
            "routes[0].upstream",
        ),
        (
            "plugin init refuses its config",
            good.replace("config: { request:", "config: { colour: red, request:"),
            "routes[0].plugins[0].config",
        ),
        (
            "missing module",
            good.replace(wicket_tests::plugins::HEADER_INJECTOR, "/nope.wasm"),
            "plugins.stamp.module",
        ),
    ];
    for (what, text, location) in cases {
        std::fs::write(&gw.config_path, text).unwrap();
        let r = c
            .send("POST", &gw.admin_url("/reload"), &[], Default::default())
            .await;
        assert_eq!(r.status, 422, "{what}");
        let errors = r.json()["errors"].to_string();
        assert!(errors.contains(location), "{what}: {errors}");
        assert_eq!(gw.generation(), 1, "{what}");
        assert_eq!(version_seen(&gw, &c).await, "one", "{what}");
    }
    let status = c.get(&gw.admin_url("/status"), &[]).await.json();
    assert!(status["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("plugins.stamp.module"));
    assert_eq!(status["reloads_failed"], 4);
    let metrics =
        String::from_utf8_lossy(&c.get(&gw.admin_url("/metrics"), &[]).await.body).to_string();
    assert!(
        metrics.contains(r#"wicket_config_reloads_total{result="error"} 4"#),
        "{metrics}"
    );

    std::fs::write(&gw.config_path, versioned(&b, module, "two")).unwrap();
    let r = c
        .send("POST", &gw.admin_url("/reload"), &[], Default::default())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["generation"], 2);
    assert!(c.get(&gw.admin_url("/status"), &[]).await.json()["last_reload_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_module_is_picked_up() {
    let b = backend("b").await;
    let dir = scratch_dir("module-swap");
    let module = dir.join("plugin.wasm");
    std::fs::copy(wicket_tests::plugins::CHAOS, &module).unwrap();
    let gw = TestGateway::start_watching(&fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
watch_debounce_ms: 50
plugins: {{ p: {{ module: "{}" }} }}
upstreams: {{ b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }} }}
routes: [{{ name: r, match: {{ path: "/" }}, upstream: b, plugins: [{{ name: p }}] }}]
"#,
            module.display()
        ),
        &[("b", &b)],
    ))
    .await;
    let c = HttpClient::new();
    assert!(c
        .get(&gw.url("/"), &[])
        .await
        .header("x-chaos-instance")
        .is_some());
    // The new version of the module: the header injector, which (with no
    // config) sets nothing.
    let tmp = dir.join("plugin.wasm.new");
    std::fs::copy(wicket_tests::plugins::HEADER_INJECTOR, &tmp).unwrap();
    std::fs::rename(&tmp, &module).unwrap();
    gw.wait_for_generation(2).await;
    let r = c.get(&gw.url("/"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-chaos-instance").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_files_do_not_make_a_new_generation() {
    let b = backend("b").await;
    let module = wicket_tests::plugins::HEADER_INJECTOR.as_ref();
    let gw = TestGateway::start(&versioned(&b, module, "one")).await;
    let r = HttpClient::new()
        .send("POST", &gw.admin_url("/reload"), &[], Default::default())
        .await;
    assert_eq!(r.json()["generation"], 1);
    assert_eq!(gw.generation(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_survives_a_reload_of_an_unchanged_plugin() {
    let b = backend("b").await;
    let yaml = |tag: &str| {
        fill(
            &r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins: { counter: { module: "{plugin:counter}" } }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - { name: r, match: { path: "/" }, upstream: b, plugins: [{ name: counter }] }
  - { name: TAG, match: { path: "/TAG" }, upstream: b }
"#
            .replace("TAG", tag),
            &[("b", &b)],
        )
    };
    let gw = TestGateway::start(&yaml("first")).await;
    let c = HttpClient::new();
    for _ in 0..3 {
        c.get(&gw.url("/"), &[]).await;
    }
    std::fs::write(&gw.config_path, yaml("second")).unwrap();
    gw.gateway.shared().reload().await.unwrap();
    assert_eq!(gw.generation(), 2);
    let r = c.get(&gw.url("/"), &[]).await;
    assert_eq!(r.echoed_header("x-hits").as_deref(), Some("4"));
}

/// 60 reloads — valid configs, invalid ones, and new module versions — while
/// four clients send requests without pause. Not one request may fail, and
/// every response must come wholly from one generation: the version the
/// request phase stamped equals the version the response phase stamped, and
/// each generation maps to one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_nothing_and_never_mix_generations() {
    let b = backend("b").await;
    let dir = scratch_dir("under-load");
    let module = module_variant(&dir, "stamp.wasm", 0);
    let gw = TestGateway::start(&versioned(&b, &module, "v0")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (c, url, stop) = (HttpClient::new(), gw.url("/load"), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(SeqCst) {
                let r = c.get(&url, &[]).await;
                assert_eq!(
                    r.status, 200,
                    "a request failed during reloads: {:?}",
                    r.body
                );
                let generation: u64 = r.header("x-wicket-generation").unwrap().parse().unwrap();
                let resp_version = r.header("x-version").unwrap().to_string();
                let req_version = r.echoed_header("x-version").unwrap();
                assert_eq!(
                    req_version, resp_version,
                    "request and response phases saw different configs"
                );
                seen.push((generation, resp_version));
            }
            seen
        }));
    }
    let c = HttpClient::new();
    let mut applied = 0;
    for i in 1..=60u32 {
        let text = match i % 3 {
            0 => "routes: [ {broken\n".to_string(),
            1 => versioned(&b, &module, &format!("v{i}")),
            _ => {
                let m = module_variant(&dir, &format!("stamp-{i}.wasm"), i);
                versioned(&b, &m, &format!("v{i}"))
            }
        };
        rename_over(&gw.config_path, &text);
        let r = c
            .send("POST", &gw.admin_url("/reload"), &[], Default::default())
            .await;
        if i % 3 == 0 {
            assert_eq!(r.status, 422);
        } else {
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            applied += 1;
        }
    }
    stop.store(true, SeqCst);
    let mut by_generation = std::collections::HashMap::new();
    let mut total = 0;
    for client in clients {
        for (generation, version) in client.await.unwrap() {
            total += 1;
            let first = by_generation
                .entry(generation)
                .or_insert_with(|| version.clone());
            assert_eq!(
                *first, version,
                "generation {generation} served two configs"
            );
        }
    }
    assert_eq!(gw.generation(), 1 + applied);
    assert!(total > 60, "the load ran ({total} requests)");
    assert!(
        by_generation.len() > 1,
        "responses came from several generations"
    );
}
