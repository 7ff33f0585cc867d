//! `wicket plugin new`: a new policy from the Python or JavaScript
//! template, carrying its own copy of the contract and the SDK so it builds
//! outside this repository.

use std::path::{Path, PathBuf};

/// A file of a scaffolded plugin: its path in the new folder, its text, and
/// whether it is a script to make executable.
type File = (&'static str, &'static str, bool);

const WIT: &str = include_str!("../../../wit/plugin.wit");

const PYTHON: &[File] = &[
    (
        "app.py",
        include_str!("../../../plugins/templates/python/app.py"),
        false,
    ),
    (
        "test_app.py",
        include_str!("../../../plugins/templates/python/test_app.py"),
        false,
    ),
    (
        "spec.yaml",
        include_str!("../../../plugins/templates/python/spec.yaml"),
        false,
    ),
    (
        "build",
        include_str!("../../../plugins/templates/python/build"),
        true,
    ),
    (
        "README.md",
        include_str!("../../../plugins/templates/python/README.md"),
        false,
    ),
    (
        "wicket-sdk/wicket/__init__.py",
        include_str!("../../../plugins/sdk-python/wicket/__init__.py"),
        false,
    ),
    (
        "wicket-sdk/wicket/_host.py",
        include_str!("../../../plugins/sdk-python/wicket/_host.py"),
        false,
    ),
    (
        "wicket-sdk/wicket/testing.py",
        include_str!("../../../plugins/sdk-python/wicket/testing.py"),
        false,
    ),
];

const JS: &[File] = &[
    (
        "app.js",
        include_str!("../../../plugins/templates/js/app.js"),
        false,
    ),
    (
        "app.test.js",
        include_str!("../../../plugins/templates/js/app.test.js"),
        false,
    ),
    (
        "spec.yaml",
        include_str!("../../../plugins/templates/js/spec.yaml"),
        false,
    ),
    (
        "build",
        include_str!("../../../plugins/templates/js/build"),
        true,
    ),
    (
        "README.md",
        include_str!("../../../plugins/templates/js/README.md"),
        false,
    ),
    (
        "wicket-sdk/wicket.js",
        include_str!("../../../plugins/sdk-js/wicket.js"),
        false,
    ),
    (
        "wicket-sdk/wicket.d.ts",
        include_str!("../../../plugins/sdk-js/wicket.d.ts"),
        false,
    ),
    (
        "wicket-sdk/testing/register.js",
        include_str!("../../../plugins/sdk-js/testing/register.js"),
        false,
    ),
    (
        "wicket-sdk/testing/hooks.js",
        include_str!("../../../plugins/sdk-js/testing/hooks.js"),
        false,
    ),
    (
        "wicket-sdk/testing/host.js",
        include_str!("../../../plugins/sdk-js/testing/host.js"),
        false,
    ),
    (
        "wicket-sdk/testing/index.js",
        include_str!("../../../plugins/sdk-js/testing/index.js"),
        false,
    ),
    (
        "wicket-sdk/testing/fakes/state.js",
        include_str!("../../../plugins/sdk-js/testing/fakes/state.js"),
        false,
    ),
    (
        "wicket-sdk/testing/fakes/context.js",
        include_str!("../../../plugins/sdk-js/testing/fakes/context.js"),
        false,
    ),
    (
        "wicket-sdk/testing/fakes/span.js",
        include_str!("../../../plugins/sdk-js/testing/fakes/span.js"),
        false,
    ),
    (
        "wicket-sdk/testing/fakes/log.js",
        include_str!("../../../plugins/sdk-js/testing/fakes/log.js"),
        false,
    ),
    (
        "wicket-sdk/testing/fakes/metrics.js",
        include_str!("../../../plugins/sdk-js/testing/fakes/metrics.js"),
        false,
    ),
    (
        "wicket-sdk/testing/fakes/clock.js",
        include_str!("../../../plugins/sdk-js/testing/fakes/clock.js"),
        false,
    ),
    (
        "wicket-sdk/testing/fakes/gateway.js",
        include_str!("../../../plugins/sdk-js/testing/fakes/gateway.js"),
        false,
    ),
];

/// The languages `wicket plugin new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// componentize-py.
    Python,
    /// componentize-js.
    Js,
}

/// Create `parent/name` from the template of `lang`; refuses a name that
/// is not a plain folder name and a folder that already exists.
pub fn new(lang: Lang, name: &str, parent: &Path) -> Result<PathBuf, String> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plain {
        return Err(format!(
            "{name:?} is not a plugin name: use letters, digits, `-` and `_`"
        ));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let files = match lang {
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    let write = |rel: &str, text: &str, exec: bool| -> Result<(), String> {
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        if exec {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    };
    write("wit/plugin.wit", WIT, false)?;
    for (rel, text, exec) in files {
        // The template reaches the repository's SDK; the copy its own.
        let text = text
            .replace("../../sdk-js/", "./wicket-sdk/")
            .replace("docs/plugins/", "the Wicket repository's docs/plugins/");
        write(rel, &text, *exec)?;
    }
    Ok(dir)
}
