//! The read-only admin page and the JSON API behind it: `/api/overview`
//! lists routes with their chains, plugins with their pools, calls and
//! failures, upstreams with endpoint health and the recent errors; the page
//! is served with a strict CSP, needs no token to load but gets no data
//! without one; headless Chromium renders it (DOM and a screenshot).

use std::process::Command;

use wicket_tests::{backend, fill, scratch_dir, HttpClient, TestGateway};

fn config(b: &wicket_tests::Backend, admin_extra: &str) -> String {
    fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0"{admin_extra} }}
access_log: false
plugins:
  key-auth: {{ module: "{{plugin:key-auth}}" }}
  rate-limit: {{ module: "{{plugin:rate-limit}}" }}
  chaos: {{ module: "{{plugin:chaos}}" }}
upstreams:
  catalog: {{ endpoints: [{{ address: "{{backend:b}}" }}] }}
routes:
  - name: catalog-api
    match: {{ path: "/api/{{*rest}}", methods: [GET] }}
    upstream: catalog
    plugins:
      - {{ name: key-auth, config: {{ keys: {{ "k-alice": alice }} }} }}
      - {{ name: rate-limit, config: {{ rate: 1000, period_seconds: 1, key: consumer }} }}
      - {{ name: chaos, config: {{ default: continue }} }}
  - name: open-pages
    match: {{ path: "/pages" }}
    upstream: catalog
"#
        ),
        &[("b", b)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_lists_routes_plugins_upstreams_and_recent_errors() {
    let b = backend("b").await;
    let gw = TestGateway::start(&config(&b, "")).await;
    let c = HttpClient::new();
    let key = ("x-api-key", "k-alice");
    for _ in 0..3 {
        assert_eq!(c.get(&gw.url("/api/items"), &[key]).await.status, 200);
    }
    assert_eq!(c.get(&gw.url("/api/items"), &[]).await.status, 401);
    let trap = c
        .get(&gw.url("/api/items"), &[key, ("x-chaos", "trap")])
        .await;
    assert_eq!(trap.status, 500);

    let o = c.get(&gw.admin_url("/api/overview"), &[]).await;
    assert_eq!(o.status, 200);
    let o = o.json();
    assert_eq!(o["generation"], 1);
    let routes = o["routes"].as_array().unwrap();
    let api = routes.iter().find(|r| r["name"] == "catalog-api").unwrap();
    assert_eq!(
        api["plugins"],
        serde_json::json!(["key-auth", "rate-limit", "chaos"])
    );
    assert_eq!(api["path"], "/api/{*rest}");
    assert_eq!(api["methods"], serde_json::json!(["GET"]));
    assert_eq!(api["upstream"], "catalog");
    assert!(routes.iter().any(|r| r["name"] == "open-pages"));

    let plugin = |name: &str| {
        o["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {o}"))
            .clone()
    };
    let auth = plugin("key-auth");
    assert_eq!(auth["on_request"]["calls"], 5, "{auth}");
    assert_eq!(auth["pools"], 1);
    assert_eq!(auth["instances_per_pool"], 16);
    assert_eq!(auth["failure"], "fail-closed");
    assert!(auth["on_request"]["p99_ms"].as_f64().unwrap() > 0.0);
    let chaos = plugin("chaos");
    assert_eq!(chaos["on_request"]["calls"], 4, "{chaos}");
    assert_eq!(chaos["on_request"]["failures"]["trap"], 1, "{chaos}");
    assert_eq!(plugin("rate-limit")["on_request"]["calls"], 4);

    let upstream = &o["upstreams"][0];
    assert_eq!(upstream["name"], "catalog");
    assert_eq!(upstream["endpoints"][0]["address"], b.addr.to_string());
    assert_eq!(upstream["endpoints"][0]["healthy"], true);

    let errors = o["recent_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "plugin_failed");
    assert_eq!(errors[0]["status"], 500);
    assert_eq!(errors[0]["route"], "catalog-api");
    assert_eq!(
        errors[0]["request_id"],
        trap.header("x-request-id").unwrap()
    );
    assert!(
        !errors[0]["message"].as_str().unwrap().contains("wasm"),
        "no guest internals: {}",
        errors[0]
    );

    // A refused reload is a recent error too.
    std::fs::write(&gw.config_path, "listeners: []\n").unwrap();
    let r = c
        .send("POST", &gw.admin_url("/reload"), &[], Default::default())
        .await;
    assert_eq!(r.status, 422);
    let o = c.get(&gw.admin_url("/api/overview"), &[]).await.json();
    assert_eq!(o["recent_errors"][0]["source"], "reload");
    assert_eq!(o["reloads_failed"], 1);
    assert!(o["last_reload_error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_loads_without_the_token_and_its_data_needs_it() {
    let b = backend("b").await;
    let dir = scratch_dir("admin-token");
    std::fs::write(dir.join("token"), "s3cret-admin-token-0042\n").unwrap();
    let extra = format!(", token_file: \"{}\"", dir.join("token").display());
    let gw = TestGateway::start(&config(&b, &extra)).await;
    let c = HttpClient::new();

    let page = c.get(&gw.admin_url("/"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("/ui/app.js") && !html.contains("http://") && !html.contains("https://"));
    for asset in ["/ui/app.js", "/ui/app.css"] {
        assert_eq!(
            c.get(&gw.admin_url(asset), &[]).await.status,
            200,
            "{asset}"
        );
    }

    assert_eq!(c.get(&gw.admin_url("/api/overview"), &[]).await.status, 401);
    let authed = c
        .get(
            &gw.admin_url("/api/overview"),
            &[("authorization", "Bearer s3cret-admin-token-0042")],
        )
        .await;
    assert_eq!(authed.status, 200);
    // The DNS-rebinding guard covers the page too.
    let foreign = c.get(&gw.admin_url("/"), &[("host", "evil.example")]).await;
    assert_eq!(foreign.status, 403);
}

/// Debian's `chromium`, installed by `.ci/run`.
fn chromium(args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .output()
        .expect("chromium is needed for the admin page test (Debian: apt-get install chromium)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_routes_and_plugins() {
    let b = backend("b").await;
    let gw = TestGateway::start(&config(&b, "")).await;
    let c = HttpClient::new();
    c.get(&gw.url("/api/items"), &[("x-api-key", "k-alice")])
        .await;
    let url = gw.admin_url("/");
    let dom = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || chromium(&["--dump-dom", &url]))
            .await
            .unwrap()
    };
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for text in [
        "<td data-label=\"route\">catalog-api</td>",
        "<td data-label=\"route\">open-pages</td>",
        "key-auth → rate-limit → chaos",
        "key-auth (",
        "rate-limit (",
        "generation 1 · 2 routes · 3 plugins",
        "healthy",
    ] {
        assert!(
            html.contains(text),
            "{text:?} not in the rendered page:\n{html}"
        );
    }

    // A phone-sized screenshot for a person to look at (kept out of the
    // repository, under target/).
    let shot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e/admin-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let out =
        tokio::task::spawn_blocking(move || chromium(&[&arg, "--window-size=412,1400", &url]))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
