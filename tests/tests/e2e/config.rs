//! Configuration errors name their location, and `wicket validate` reports them.

use std::process::Command;

use wicket_tests::{fill, scratch_dir};

async fn errors_of(yaml: &str) -> Vec<String> {
    let dir = scratch_dir("config");
    let path = dir.join("wicket.yaml");
    std::fs::write(&path, yaml).unwrap();
    match wicket_tests::wicket::gateway::validate(&path).await {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const BASE: &str = r#"
listeners: [{ address: "127.0.0.1:0" }]
runtime: { no_module_cache: true }
plugins:
  strict: { module: "{plugin:bad-init}" }
upstreams: { b: { endpoints: [{ address: "127.0.0.1:9" }] } }
routes:
  - { name: ok, match: { path: "/ok" }, upstream: b }
  - name: checked
    match: { path: "/checked" }
    upstream: b
    plugins: [{ name: strict, config: { must_be_positive: 1 } }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_config_validates() {
    assert_eq!(errors_of(&fill(BASE, &[])).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_init_error_is_located_at_its_config() {
    let yaml = fill(BASE, &[]).replace("must_be_positive: 1", "must_be_positive: -3");
    let errors = errors_of(&yaml).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("routes[1].plugins[0].config: "),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("must_be_positive: must be > 0, got -3"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_errors_are_all_reported_with_locations() {
    let yaml = fill(BASE, &[])
        .replace("upstream: b\n    plugins", "upstream: nowhere\n    plugins")
        .replace("name: strict, config", "name: missing, config")
        .replace(
            "{ name: ok, match: { path: \"/ok\" }",
            "{ name: ok, match: { path: \"ok\" }",
        );
    let errors = errors_of(&yaml).await;
    assert!(
        errors.contains(&"routes[1].upstream: no upstream named \"nowhere\"".to_string()),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"routes[1].plugins[0].name: no plugin named \"missing\"".to_string()),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("routes[0].match.path: ")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_and_bad_modules_are_located() {
    let yaml = fill(BASE, &[]).replace(
        "upstream: b\n    plugins",
        "upstream: b\n    retries: 3\n    plugins",
    );
    let errors = errors_of(&yaml).await;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("routes[1].retries: unknown field `retries`"),
        "{errors:?}"
    );

    let yaml = fill(BASE, &[]).replace(wicket_tests::plugins::BAD_INIT, "/nonexistent/x.wasm");
    let errors = errors_of(&yaml).await;
    assert!(
        errors[0].starts_with("plugins.strict.module: cannot read /nonexistent/x.wasm"),
        "{errors:?}"
    );

    let dir = scratch_dir("notwasm");
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let yaml = fill(BASE, &[]).replace(wicket_tests::plugins::BAD_INIT, junk.to_str().unwrap());
    let errors = errors_of(&yaml).await;
    assert!(
        errors[0].starts_with("plugins.strict.module: "),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_syntax_error_gives_line_and_column() {
    let errors = errors_of("listeners: [ {address: \n  - oops").await;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("line "), "{errors:?}");
}

#[test]
fn validate_command_exits_non_zero_with_the_errors() {
    let dir = scratch_dir("cli");
    let good = dir.join("good.yaml");
    let bad = dir.join("bad.yaml");
    std::fs::write(&good, fill(BASE, &[])).unwrap();
    std::fs::write(
        &bad,
        fill(BASE, &[]).replace("must_be_positive: 1", "must_be_positive: 0"),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_wicket-under-test");
    let ok = Command::new(bin)
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = Command::new(bin)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes[1].plugins[0].config: "), "{stderr}");
}
