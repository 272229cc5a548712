//! Integration tests of the contract crate: one binary, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // Test code: a panic is a failure.

mod corpus;
mod docs;
mod examples;
mod robustness;

use std::path::{Path, PathBuf};

/// The repository root, from this crate's manifest directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file with `extension` directly under `dir`, sorted.
pub fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    out.sort();
    out
}
