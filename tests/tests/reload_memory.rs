//! Memory returns to its level after many reloads: old generations' plugin
//! instances and compiled modules are freed once nothing uses them. Alone in
//! its own test binary so no other test's allocations blur the measurement.

use wicket_tests::{backend, fill, scratch_dir, HttpClient, TestGateway};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_after_many_reloads_stays_near_its_level_after_the_first() {
    let b = backend("b").await;
    let dir = scratch_dir("memory");
    let config = |i: u32| {
        // Every reload brings a new module version (a custom section changes
        // its digest) and a new config, so each one compiles, links and
        // instantiates afresh and the previous generation must be freed.
        let mut bytes = std::fs::read(wicket_tests::plugins::CHAOS).unwrap();
        let name = format!("v{i}");
        bytes.extend_from_slice(&[0, (name.len() + 1) as u8, name.len() as u8]);
        bytes.extend_from_slice(name.as_bytes());
        let module = dir.join(format!("chaos-{}.wasm", i % 2));
        std::fs::write(&module, bytes).unwrap();
        fill(
            &format!(
                r#"
listeners: [{{ address: "127.0.0.1:0" }}]
access_log: false
runtime: {{ no_module_cache: true }}
plugins: {{ chaos: {{ module: "{}", limits: {{ instances: 4 }} }} }}
upstreams: {{ b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }} }}
routes:
  - {{ name: r, match: {{ path: "/" }}, upstream: b, plugins: [{{ name: chaos, config: {{ tag: "t{i}" }} }}] }}
"#,
                module.display()
            ),
            &[("b", &b)],
        )
    };
    let gw = TestGateway::start(&config(0)).await;
    let c = HttpClient::new();
    let mut after = Vec::new();
    for i in 1..=100 {
        std::fs::write(&gw.config_path, config(i)).unwrap();
        gw.gateway.shared().reload().await.unwrap();
        // Serve a few requests so instances are created and pooled.
        for _ in 0..4 {
            assert_eq!(c.get(&gw.url("/"), &[]).await.status, 200);
        }
        after.push(rss_kib());
    }
    assert_eq!(gw.generation(), 101);
    let first = after[0];
    let at_10 = after[9];
    let last = after[99];
    eprintln!("RSS after reload 1: {first} KiB, after 10: {at_10} KiB, after 100: {last} KiB");
    // A leak of one module or one instance per reload would add well over
    // 100 × 100 KiB; allocator noise stays far below this bound.
    assert!(
        last <= at_10 + 8 * 1024,
        "memory grew from {at_10} KiB (reload 10) to {last} KiB (reload 100)"
    );
}
