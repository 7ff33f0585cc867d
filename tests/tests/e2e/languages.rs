//! Policies in Python and JavaScript, as first-class as Rust: the same
//! behaviour specs through the conformance kit, served through the gateway,
//! memory that creeps up recycled before it fails a request, errors in the
//! guest's own words (never in the client's body), and WASI denied.
//!
//! The components come from `plugins/build-components` (run by
//! `scripts/test`), built from the registries' toolchains.

use std::path::PathBuf;
use std::time::Duration;

use wicket_tests::wicket::plugin::conformance;
use wicket_tests::wicket::Clock;
use wicket_tests::{backend, component, fill, module_cache, scratch_dir, HttpClient, TestGateway};

fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins")
}

fn rust_module(crate_name: &str) -> String {
    wicket_tests::plugins::ALL
        .iter()
        .find(|(name, _)| *name == crate_name)
        .map(|(_, path)| path.to_string())
        .unwrap_or_else(|| panic!("no Rust plugin crate {crate_name}"))
}

async fn check(module: &str, spec_path: &std::path::Path, what: &str) -> usize {
    let spec = conformance::read_spec(spec_path).expect("a valid spec");
    let report = conformance::run(
        std::path::Path::new(module),
        &spec,
        Some(module_cache()),
        None,
    )
    .await;
    assert!(report.passed(), "{what}:\n{report}");
    report.checks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_pass_one_spec_in_every_language() {
    // (spec, Rust crate, component prefix): the examples, and the templates
    // a new policy starts from.
    let examples = plugins_dir().join("examples");
    let templates = plugins_dir().join("templates");
    for (spec, crate_name, example) in [
        (
            examples.join("deny-header/spec.yaml"),
            "deny-header",
            "deny-header",
        ),
        (
            examples.join("fixed-window/spec.yaml"),
            "fixed-window",
            "fixed-window",
        ),
        (
            templates.join("rust/spec.yaml"),
            "policy-template",
            "template",
        ),
    ] {
        let mut counts = Vec::new();
        for (lang, module) in [
            ("Rust", rust_module(crate_name)),
            ("Python", component(&format!("{example}-python"))),
            ("JavaScript", component(&format!("{example}-js"))),
        ] {
            counts.push(check(&module, &spec, &format!("{example} in {lang}")).await);
        }
        // The same checks ran for each: the spec, not the language, decides.
        assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
        assert!(counts[0] >= 9, "{example}: only {} checks", counts[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_passes_its_spec() {
    let policies = plugins_dir().join("policies");
    let mut checked = 0;
    for entry in std::fs::read_dir(&policies).expect("plugins/policies") {
        let dir = entry.expect("an entry").path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let spec = dir.join("spec.yaml");
        assert!(spec.exists(), "{name} has no spec.yaml");
        check(&rust_module(&name), &spec, &name).await;
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} policies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_plugin_that_breaks_its_spec() {
    // The Python deny-header held to a spec it does not meet: the kit must
    // say which case failed and why, not pass it.
    let dir = scratch_dir("kit-fails");
    let spec = dir.join("spec.yaml");
    std::fs::write(
        &spec,
        "config: { header: x-debug }\n\
         invalid_configs: [{ config: { header: x-debug }, error_contains: header }]\n\
         cases:\n  - { name: teapot, request: { headers: { x-debug: '1' } }, expect: { status: 418 } }\n",
    )
    .unwrap();
    let spec = conformance::read_spec(&spec).unwrap();
    let module = component("deny-header-python");
    let report = conformance::run(
        std::path::Path::new(&module),
        &spec,
        Some(module_cache()),
        None,
    )
    .await;
    let failed: Vec<_> = report.failures().map(|c| c.name.clone()).collect();
    assert_eq!(failed.len(), 2, "{report}");
    assert!(failed[0].contains("invalid config"), "{report}");
    assert!(
        report.to_string().contains("expected 418, got 403"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_policies_serve_through_the_gateway() {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  deny-js: { module: "{component:deny-header-js}" }
  window-py: { module: "{component:fixed-window-python}" }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - name: js
    match: { path: "/js" }
    upstream: b
    plugins: [{ name: deny-js, config: { header: x-debug } }]
  - name: py
    match: { path: "/py" }
    upstream: b
    plugins: [{ name: window-py, config: { limit: 2, window_seconds: 60 } }]
"#,
        &[("b", &b)],
    );
    let gw = TestGateway::start_with_clock(&yaml, Clock::manual(1_700_000_000_000)).await;
    let c = HttpClient::new();

    let r = c.get(&gw.url("/js"), &[]).await;
    assert_eq!(r.status, 200);
    let r = c.get(&gw.url("/js"), &[("x-debug", "1")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "x-debug is not allowed");

    for remaining in ["1", "0"] {
        let r = c.get(&gw.url("/py"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
    }
    let r = c.get(&gw.url("/py"), &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    gw.clock.advance(Duration::from_secs(60));
    assert_eq!(c.get(&gw.url("/py"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creeping_memory_is_recycled_and_a_grow_past_the_cap_fails_one_request() {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  leaky-js: { module: "{component:leaky-js}", limits: { memory_mb: 20, instances: 1, deadline_ms: 2000 } }
  leaky-py: { module: "{component:leaky-python}", limits: { memory_mb: 20, instances: 1, deadline_ms: 2000 } }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - { name: js, match: { path: "/js" }, upstream: b, plugins: [{ name: leaky-js }] }
  - { name: py, match: { path: "/py" }, upstream: b, plugins: [{ name: leaky-py }] }
"#,
        &[("b", &b)],
    );
    let gw = TestGateway::start(&yaml).await;
    let c = HttpClient::new();
    for (path, plugin) in [("/js", "leaky-js"), ("/py", "leaky-py")] {
        // 64 KiB kept per call: 300 calls hold ~19 MiB more than the cap
        // leaves, so without recycling the instance would fail.
        let mut most = 0;
        for i in 0..300 {
            let r = c.get(&gw.url(path), &[]).await;
            assert_eq!(
                r.status,
                200,
                "{path} call {i}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let kib: u64 = r.echoed_header("x-leaked-kib").unwrap().parse().unwrap();
            most = most.max(kib);
        }
        assert!(most < 12 * 1024, "{path}: an instance held {most} KiB");
        let text = gw.gateway.shared().runtime().metrics().encode();
        let recycled = format!(r#"wicket_plugin_instances_recycled_total{{plugin="{plugin}"}}"#);
        assert!(text.contains(&recycled), "{recycled} in {text}");

        // One allocation past the cap: that request fails, as a memory
        // failure, and the next is served by a fresh instance.
        let r = c.get(&gw.url(path), &[("x-alloc-mb", "64")]).await;
        assert_eq!(r.status, 500, "{path}");
        assert_eq!(r.json()["error"], "plugin_failed");
        let text = gw.gateway.shared().runtime().metrics().encode();
        let line = format!(r#"wicket_plugin_failures_total{{plugin="{plugin}",kind="memory"}} 1"#);
        assert!(text.contains(&line), "{line} in {text}");
        assert_eq!(
            c.get(&gw.url(path), &[]).await.status,
            200,
            "{path} recovers"
        );
    }
}

async fn validation_errors(yaml: &str) -> Vec<String> {
    let dir = scratch_dir("languages-validate");
    let path = dir.join("wicket.yaml");
    std::fs::write(&path, yaml).unwrap();
    match wicket_tests::wicket::gateway::validate(&path).await {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_exceptions_are_reported_in_their_own_words() {
    let cache = module_cache();
    let yaml = fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
runtime: {{ module_cache: "{}" }}
plugins:
  py: {{ module: "{{component:guest-errors-python}}" }}
  js: {{ module: "{{component:guest-errors-js}}" }}
  small: {{ module: "{{component:deny-header-python}}", limits: {{ memory_mb: 13 }} }}
upstreams: {{ b: {{ endpoints: [{{ address: "127.0.0.1:9" }}] }} }}
routes:
  - name: r
    match: {{ path: "/" }}
    upstream: b
    plugins:
      - {{ name: py, config: {{ raise: "no such region: mars" }} }}
      - {{ name: js, config: {{ raise: "tenant list is empty" }} }}
      - {{ name: small, config: {{ header: x }} }}
"#,
            cache.display()
        ),
        &[],
    );
    let errors = validation_errors(&yaml).await;
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let py = &errors[0];
    assert!(py.starts_with("routes[0].plugins[0].config"), "{py}");
    assert!(py.contains("RuntimeError: no such region: mars"), "{py}");
    assert!(
        !py.contains("wasm backtrace"),
        "the guest's words, not the backtrace: {py}"
    );
    let js = &errors[1];
    assert!(js.contains("TypeError: tenant list is empty"), "{js}");
    // Too small a cap is the plugin's setting, located there, with the size
    // that would do.
    let small = &errors[2];
    assert!(
        small.starts_with("plugins.small.limits.memory_mb"),
        "{small}"
    );
    assert!(
        small.contains("set limits.memory_mb to at least"),
        "{small}"
    );

    // In a hook: the client gets the kind of failure, never the guest's text.
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  py: { module: "{component:guest-errors-python}" }
  js: { module: "{component:guest-errors-js}" }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - { name: py, match: { path: "/py" }, upstream: b, plugins: [{ name: py }] }
  - { name: js, match: { path: "/js" }, upstream: b, plugins: [{ name: js }] }
"#,
        &[("b", &b)],
    );
    let gw = TestGateway::start(&yaml).await;
    let c = HttpClient::new();
    for path in ["/py", "/js"] {
        assert_eq!(c.get(&gw.url(path), &[]).await.status, 200);
        let r = c
            .get(&gw.url(path), &[("x-raise", "secret-detail-42")])
            .await;
        assert_eq!(r.status, 500);
        assert_eq!(r.json()["error"], "plugin_failed");
        assert!(!String::from_utf8_lossy(&r.body).contains("secret-detail-42"));
        assert_eq!(
            c.get(&gw.url(path), &[]).await.status,
            200,
            "{path} recovers"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_guest_gets_no_files_environment_or_network() {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  probe: { module: "{component:wasi-probe-python}", limits: { deadline_ms: 2000 } }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - { name: probe, match: { path: "/" }, upstream: b, plugins: [{ name: probe }] }
"#,
        &[("b", &b)],
    );
    let gw = TestGateway::start(&yaml).await;
    // A port something listens on: the refusal is the sandbox's, not a
    // closed port's.
    let port = b.addr.port().to_string();
    let r = HttpClient::new()
        .get(&gw.url("/"), &[("x-port", &port)])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = |name: &str| r.echoed_header(name).unwrap_or_default();
    assert!(
        seen("x-probe-file").starts_with("denied:"),
        "{}",
        seen("x-probe-file")
    );
    assert_eq!(seen("x-probe-env"), "0");
    assert!(
        seen("x-probe-socket").starts_with("denied:"),
        "{}",
        seen("x-probe-socket")
    );
    assert_eq!(seen("x-probe-clock"), "ok");
    assert_eq!(seen("x-probe-random"), "ok");
}

#[test]
fn scaffolded_python_and_javascript_plugins_build_and_pass_their_spec() {
    // `wicket plugin new`, then the plugin's own `build`: unit tests in its
    // language, the component, then `wicket plugin test` with its spec. The
    // toolchains are the ones plugins/build-components installed.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wicket-under-test"));
    // The build script looks for `wicket` on PATH.
    let bin_dir = scratch_dir("scaffold-bin");
    let wicket = bin_dir.join("wicket");
    let _ = std::fs::remove_file(&wicket);
    std::os::unix::fs::symlink(&bin, &wicket).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let tools = plugins_dir();
    let dir = scratch_dir("scaffold");
    for (lang, name) in [("python", "tenant-py"), ("js", "tenant-js")] {
        let _ = std::fs::remove_dir_all(dir.join(name));
        let made = std::process::Command::new(&bin)
            .args(["plugin", "new", "--lang", lang, name, "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        // Outside the repository: its own contract and SDK.
        assert!(dir.join(name).join("wit/plugin.wit").exists());
        let built = std::process::Command::new(dir.join(name).join("build"))
            .env("PATH", &path)
            .env(
                "COMPONENTIZE_PY",
                tools.join("target/tools/python/bin/componentize-py"),
            )
            .env("PYTHONPATH", tools.join("target/tools/python"))
            .env(
                "COMPONENTIZE_JS",
                tools.join("tools/js/node_modules/.bin/componentize-js"),
            )
            .env("WICKET_LOG", "error")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&built.stdout);
        assert!(
            built.status.success(),
            "{name}: {out}\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        assert!(out.contains("9 checks, 0 failed"), "{name}: {out}");
    }
}
