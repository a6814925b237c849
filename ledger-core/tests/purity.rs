//! Architecture Invariant: ledger-core does no IO. This fails the build if an
//! IO or runtime crate becomes one of its dependencies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

const MANIFEST: &str = include_str!("../Cargo.toml");
const FORBIDDEN: &[&str] = &["tokio", "sqlx", "axum", "reqwest", "hyper", "kurrentdb"];

/// Dependency keys of every `[*dependencies*]` table, including
/// `[target.'…'.dependencies]` and `[dependencies.foo]` forms.
fn dependency_keys(manifest: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut in_deps = false;
    for raw in manifest.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            let header = line.trim_matches(|c| c == '[' || c == ']');
            in_deps = header.contains("dependencies");
            // `[dependencies.tokio]` names the dependency in the header.
            if let Some((_, name)) = header.split_once("dependencies.") {
                keys.push(name.trim().trim_matches('"').to_owned());
            }
            continue;
        }
        if let (true, Some((key, _))) = (in_deps, line.split_once('=')) {
            let key = key.trim().trim_matches('"');
            // `foo.workspace = true` or `foo = { … }`
            keys.push(key.split('.').next().unwrap_or(key).to_owned());
        }
    }
    keys
}

#[test]
fn ledger_core_has_no_io_dependencies() {
    let keys = dependency_keys(MANIFEST);
    assert!(
        keys.iter().any(|k| k == "serde"),
        "parser found no dependencies: {keys:?}"
    );
    let bad: Vec<&String> = keys
        .iter()
        .filter(|k| FORBIDDEN.contains(&k.as_str()))
        .collect();
    assert!(
        bad.is_empty(),
        "ledger-core must stay pure, but depends on {bad:?}"
    );
}

#[test]
fn the_check_itself_catches_each_form() {
    for manifest in [
        "[dependencies]\ntokio = \"1\"\n",
        "[dependencies]\nsqlx.workspace = true\n",
        "[dev-dependencies]\naxum = { version = \"0.8\" }\n",
        "[target.'cfg(unix)'.dependencies]\nreqwest = \"0.12\"\n",
        "[dependencies.hyper]\nversion = \"1\"\n",
        "[build-dependencies]\n\"kurrentdb\" = \"1\"\n",
    ] {
        let keys = dependency_keys(manifest);
        assert!(
            keys.iter().any(|k| FORBIDDEN.contains(&k.as_str())),
            "missed a forbidden dependency in {manifest:?}: {keys:?}"
        );
    }
    // Mentions outside dependency tables are not dependencies.
    assert!(dependency_keys("[package]\ndescription = \"No tokio here\"\n").is_empty());
}
