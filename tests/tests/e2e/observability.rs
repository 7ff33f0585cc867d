//! Request ids and access logs: the client's id kept (or a new one made),
//! sent upstream and returned; one JSON line per request for a success, a
//! plugin's refusal, an upstream failure, a plugin trap and an unrouted
//! request; the file reopened on SIGUSR1; sampling; bad settings located.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wicket_tests::{
    backend, fill, free_port, scratch_dir, GatewayProcess, HttpClient, TestGateway,
};

/// The file's lines, parsed, once it holds at least `n` (lines are written
/// off the request path, when each response has been sent).
async fn lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} lines in {}:\n{text}",
            lines.len(),
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn by_id<'a>(lines: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no line for {id} in {lines:#?}"))
}

fn config(b: &wicket_tests::Backend, access_log: &str) -> String {
    fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
access_log: {access_log}
plugins:
  key-auth: {{ module: "{{plugin:key-auth}}" }}
  chaos: {{ module: "{{plugin:chaos}}" }}
upstreams:
  b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }}
  dead: {{ endpoints: [{{ address: "127.0.0.1:{dead}" }}] }}
routes:
  - name: api
    match: {{ path: "/api" }}
    upstream: b
    plugins:
      - {{ name: key-auth, config: {{ keys: {{ "k-alice": alice }} }} }}
      - {{ name: chaos, config: {{ default: continue }} }}
  - name: dead
    match: {{ path: "/dead" }}
    upstream: dead
"#,
            dead = free_port()
        ),
        &[("b", b)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_for_success_refusal_upstream_failure_trap_and_no_route() {
    let dir = scratch_dir("access-log");
    let log = dir.join("access.log");
    let b = backend("b").await;
    let gw = TestGateway::start(&config(
        &b,
        &format!("{{ format: json, path: \"{}\" }}", log.display()),
    ))
    .await;
    let c = HttpClient::new();
    let key = ("x-api-key", "k-alice");
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // A success, with the client's id and trace context.
    let ok = c
        .send(
            "POST",
            &gw.url("/api"),
            &[
                key,
                ("x-request-id", "client-id.42"),
                ("traceparent", trace),
            ],
            Bytes::from(vec![b'x'; 1000]),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.header("x-request-id"), Some("client-id.42"));
    assert_eq!(
        ok.json()["headers"]["x-request-id"],
        serde_json::json!(["client-id.42"]),
        "the upstream gets the same id, once"
    );
    // A plugin's refusal; a malformed client id is replaced.
    let refused = c
        .get(&gw.url("/api"), &[("x-request-id", "two words")])
        .await;
    assert_eq!(refused.status, 401);
    let refused_id = refused.header("x-request-id").unwrap().to_string();
    assert_eq!(refused_id.len(), 16, "a made id: {refused_id}");
    // An upstream failure, a trap, no route.
    let dead = c.get(&gw.url("/dead"), &[]).await;
    assert_eq!(dead.status, 502);
    let trap = c.get(&gw.url("/api"), &[key, ("x-chaos", "trap")]).await;
    assert_eq!(trap.status, 500);
    let lost = c.get(&gw.url("/nowhere"), &[]).await;
    assert_eq!(lost.status, 404);
    for r in [&dead, &trap, &lost] {
        let id = r.header("x-request-id").expect("every answer has an id");
        assert_eq!(r.json()["request_id"], id, "the error body names it too");
    }

    let lines = lines(&log, 5).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let l = by_id(&lines, "client-id.42");
    assert_eq!(l["status"], 200);
    assert_eq!(l["method"], "POST");
    assert_eq!(l["path"], "/api");
    assert_eq!(l["scheme"], "http");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["route"], "api");
    assert_eq!(l["upstream"], "b");
    assert_eq!(l["endpoint"], b.addr.to_string());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["bytes_in"], 1000);
    assert_eq!(l["bytes_out"], ok.body.len());
    assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(l["client_ip"], "127.0.0.1");
    assert_eq!(l["completed"], true);
    assert!(l["error"].is_null() && l["upstream_error"].is_null(), "{l}");
    assert!(l["authority"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
    assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
    let steps: Vec<(String, String, String)> = l["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["plugin"].as_str().unwrap().to_string(),
                s["hook"].as_str().unwrap().to_string(),
                s["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        steps.contains(&("key-auth".into(), "on-request".into(), "continue".into()))
            && steps.contains(&("chaos".into(), "on-request".into(), "continue".into())),
        "{steps:?}"
    );

    let l = by_id(&lines, &refused_id);
    assert_eq!(l["status"], 401);
    assert_eq!(l["plugins"][0]["plugin"], "key-auth");
    assert_eq!(l["plugins"][0]["decision"], "respond");
    assert_eq!(l["plugins"].as_array().unwrap().len(), 1, "chaos never ran");
    assert!(l["upstream_ms"].as_f64().unwrap() == 0.0 && l["attempts"] == 0);

    let l = by_id(&lines, dead.header("x-request-id").unwrap());
    assert_eq!(l["status"], 502);
    assert_eq!(l["upstream"], "dead");
    assert_eq!(l["upstream_error"], "connect-failure");
    assert_eq!(l["error"], "upstream_connect_failed");

    let l = by_id(&lines, trap.header("x-request-id").unwrap());
    assert_eq!(l["status"], 500);
    assert_eq!(l["error"], "plugin_failed");
    let chaos = l["plugins"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(chaos["plugin"], "chaos");
    assert_eq!(chaos["decision"], "refused");
    assert_eq!(chaos["failure"], "trap");

    let l = by_id(&lines, lost.header("x-request-id").unwrap());
    assert_eq!(l["status"], 404);
    assert_eq!(l["error"], "no_route");
    assert!(l["route"].is_null(), "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_settings_and_sampling() {
    let dir = scratch_dir("request-id");
    let log = dir.join("access.log");
    let b = backend("b").await;
    let yaml = config(
        &b,
        &format!(
            "{{ format: json, path: \"{}\", sample_success: 0 }}\nrequest_id: {{ header: x-trace-ref, accept_inbound: false }}",
            log.display()
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    let c = HttpClient::new();
    let r = c
        .get(
            &gw.url("/api"),
            &[("x-api-key", "k-alice"), ("x-trace-ref", "mine")],
        )
        .await;
    assert_eq!(r.status, 200);
    let id = r.header("x-trace-ref").unwrap().to_string();
    assert_ne!(id, "mine", "inbound ids are not accepted here");
    assert_eq!(r.json()["headers"]["x-trace-ref"], serde_json::json!([id]));
    let refused = c.get(&gw.url("/api"), &[]).await;
    assert_eq!(refused.status, 401);
    // Successes are sampled out; every failure is kept.
    let lines = lines(&log, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines_now = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines_now.lines().count(), 1, "{lines_now}");
    assert_eq!(
        lines[0]["request_id"],
        refused.header("x-trace-ref").unwrap()
    );

    // Bad settings are config errors at their place.
    for (bad, at) in [
        (
            "access_log: { sample_success: 2 }",
            "access_log.sample_success",
        ),
        ("access_log: { format: xml }", "access_log.format"),
        ("access_log: { colour: red }", "access_log"),
        (
            "access_log: { path: /nonexistent-dir/access.log }",
            "access_log.path",
        ),
        (
            "request_id: { header: \"bad header\" }",
            "request_id.header",
        ),
        ("request_id: { header: host }", "request_id.header"),
    ] {
        let path = dir.join("bad.yaml");
        std::fs::write(
            &path,
            format!("listeners: [{{ address: \"127.0.0.1:0\" }}]\n{bad}\n"),
        )
        .unwrap();
        let err = wicket_tests::wicket::gateway::validate(&path)
            .await
            .expect_err(bad)
            .to_string();
        assert!(err.contains(at), "{bad}: {err}");
    }
}

/// logrotate moves the file away and sends SIGUSR1: lines before go to the
/// moved file, lines after to a new one at the configured path.
#[test]
fn the_file_is_reopened_on_sigusr1() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = scratch_dir("access-reopen");
    let log = dir.join("access.log");
    let b = rt.block_on(backend("b"));
    let config = dir.join("wicket.yaml");
    std::fs::write(
        &config,
        fill(
            &format!(
                r#"
listeners: [{{ address: "127.0.0.1:0" }}]
access_log: {{ format: json, path: "{}" }}
upstreams: {{ b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }} }}
routes: [{{ name: all, match: {{ path: "/" }}, upstream: b }}]
"#,
                log.display()
            ),
            &[("b", &b)],
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(env!("CARGO_BIN_EXE_wicket-under-test"), &config, &[]);
    let c = HttpClient::new();
    let url = format!("http://{}/", gw.addr);
    rt.block_on(async {
        for _ in 0..3 {
            assert_eq!(c.get(&url, &[]).await.status, 200);
        }
        lines(&log, 3).await;
    });
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    gw.wait_for_log("access log reopened");
    rt.block_on(async {
        for _ in 0..2 {
            assert_eq!(c.get(&url, &[]).await.status, 200);
        }
        assert_eq!(lines(&log, 2).await.len(), 2);
    });
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        3
    );
}
