//! The precompiled-module cache: a restart loads compiled code instead of
//! compiling again, and a corrupt entry is replaced rather than trusted.

use std::time::SystemTime;

use wicket_tests::{fill, scratch_dir};

fn cache_entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

async fn start_with_cache(cache: &std::path::Path) -> wicket_tests::wicket::Gateway {
    let dir = scratch_dir("cache-config");
    let config = dir.join("wicket.yaml");
    std::fs::write(
        &config,
        fill(
            &format!(
                r#"
listeners: [{{ address: "127.0.0.1:0" }}]
runtime: {{ module_cache: "{}" }}
plugins: {{ noop: {{ module: "{{plugin:noop}}" }} }}
upstreams: {{ b: {{ endpoints: [{{ address: "127.0.0.1:9" }}] }} }}
routes: [{{ name: r, match: {{ path: "/" }}, upstream: b, plugins: [{{ name: noop }}] }}]
"#,
                cache.display()
            ),
            &[],
        ),
    )
    .unwrap();
    let mut options = wicket_tests::wicket::Options::new(&config);
    options.watch = false;
    wicket_tests::wicket::Gateway::start(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loads_the_precompiled_module() {
    let cache = scratch_dir("cache");
    start_with_cache(&cache).await.shutdown().await;
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "one entry for the one module");
    let written = std::fs::metadata(&entries[0]).unwrap();

    start_with_cache(&cache).await.shutdown().await;
    assert_eq!(cache_entries(&cache), entries);
    let after = std::fs::metadata(&entries[0]).unwrap();
    // Entries are written to a temporary file and renamed into place, so a
    // rewrite would be a new inode.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        written.ino(),
        after.ino(),
        "a valid entry is loaded, not rewritten"
    );
    // Loading marks it as used, for least-recently-used pruning.
    let (w, a): (SystemTime, SystemTime) = (written.modified().unwrap(), after.modified().unwrap());
    assert!(a >= w, "a load refreshes the entry's time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_cache_entry_is_replaced() {
    let cache = scratch_dir("cache-corrupt");
    start_with_cache(&cache).await.shutdown().await;
    let entry = cache_entries(&cache).pop().unwrap();
    std::fs::write(&entry, b"definitely not a compiled module").unwrap();

    let gw = start_with_cache(&cache).await;
    gw.shutdown().await;
    let bytes = std::fs::read(&entry).unwrap();
    assert_ne!(bytes, b"definitely not a compiled module");
    assert!(bytes.len() > 1000);
}
