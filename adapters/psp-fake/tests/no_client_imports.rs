//! The fake is specified by the providers' documents, not by our client: no
//! file of this crate may name the client crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Occurrences of `needle` not followed by `suffix` (this crate's own name
/// contains the client's).
fn mentions(text: &str, needle: &str, suffix: &str) -> usize {
    text.match_indices(needle)
        .filter(|(at, _)| !text[at + needle.len()..].starts_with(suffix))
        .count()
}

#[test]
fn no_source_file_of_the_fake_names_the_client_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("Cargo.toml")];
    files_under(&root.join("src"), &mut files);
    files_under(&root.join("tests"), &mut files);
    // Built at run time so this file does not match itself.
    let rust_name = ["ledger", "psp"].join("_");
    let package_name = ["ledger", "psp"].join("-");
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if mentions(&text, &rust_name, "_fake") + mentions(&text, &package_name, "-fake") > 0 {
            offenders.push(file.display().to_string());
        }
    }
    assert!(files.len() > 5, "scanned too few files: {files:?}");
    assert!(
        offenders.is_empty(),
        "the fake names the client in {offenders:?}"
    );
}

#[test]
fn the_scan_catches_a_client_import() {
    let rust_name = ["ledger", "psp"].join("_");
    assert_eq!(
        mentions(&format!("use {rust_name}::stripe;"), &rust_name, "_fake"),
        1
    );
    assert_eq!(
        mentions(
            &format!("use {rust_name}_fake::FakePsp;"),
            &rust_name,
            "_fake"
        ),
        0
    );
}
