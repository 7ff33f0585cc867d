//! Compiles every guest plugin in `plugins/` for `wasm32-wasip2` and generates
//! a constant with each module's path, plus `foreach_plugin!`, so tests name
//! plugins by constant and a plugin that does not build fails the test build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let plugins = root.join("plugins");
    for dir in ["sdk", "examples", "policies", "test-programs"] {
        println!("cargo:rerun-if-changed={}", plugins.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let crates = plugin_crates(&plugins);
    for (_, dir) in &crates {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args(["build", "--release", "--target", "wasm32-wasip2"]);
    // The outer build's settings are for the host; the guests have their own.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the guest plugins");
    assert!(
        status.success(),
        "building the guest plugins failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );

    let out_dir = plugins.join("target/wasm32-wasip2/release");
    let mut consts = String::new();
    let mut names = Vec::new();
    for (name, _) in &crates {
        let file = name.replace('-', "_");
        let path = out_dir.join(format!("{file}.wasm"));
        assert!(path.exists(), "{} was not built", path.display());
        let ident = file.to_uppercase();
        consts.push_str(&format!(
            "/// The compiled `{name}` plugin.\npub const {ident}: &str = {:?};\n",
            path.display().to_string()
        ));
        names.push(ident);
    }
    consts.push_str(&format!(
        "/// Every compiled plugin as (crate name, path).\npub const ALL: &[(&str, &str)] = &[{}];\n",
        crates
            .iter()
            .zip(&names)
            .map(|((n, _), i)| format!("({n:?}, {i})"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("plugins.rs");
    std::fs::write(out, consts).unwrap();
}

/// `(crate name, directory)` of every cdylib plugin crate.
fn plugin_crates(plugins: &Path) -> Vec<(String, PathBuf)> {
    let mut crates = Vec::new();
    for group in ["examples", "policies", "templates", "test-programs"] {
        let Ok(entries) = std::fs::read_dir(plugins.join(group)) else {
            continue;
        };
        for entry in entries.flatten() {
            let mut dir = entry.path();
            // An example written in several languages keeps its Rust crate
            // in `rust/`.
            if dir.join("rust/Cargo.toml").exists() {
                dir = dir.join("rust");
            }
            let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
                continue;
            };
            let name = manifest
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = \""))
                .and_then(|r| r.strip_suffix('"'))
                .map(str::to_string);
            if let Some(name) = name {
                crates.push((name, dir));
            }
        }
    }
    crates.sort();
    crates
}
