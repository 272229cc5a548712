//! The catalog UI in a real browser: `tessera serve --demo`, then
//! `tests/browser/catalog.mjs` drives Debian's Chromium through
//! playwright-core (search, masking per role, the SQL console and its CSV,
//! the lineage graph, derived tables and column lineage, keyboard-only
//! search, a narrow screen). Screenshots go to
//! `<target>/tmp/browser-artifacts`.
//!
//! Needs `node`, `/usr/bin/chromium` (or `TESSERA_CHROMIUM`) and
//! `npm ci --prefix tests/browser`; `.ci/run` provides all three. Without
//! them the test says what is missing and passes, except under `CI=true`,
//! where it fails.

use std::path::PathBuf;
use std::process::Command;

use crate::repo;
use crate::serve::Demo;

fn missing() -> Option<String> {
    let chromium = std::env::var("TESSERA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Some(format!("no browser at {chromium}: `apt-get install chromium`, or set TESSERA_CHROMIUM"));
    }
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        return Some("no `node` on PATH".into());
    }
    if !repo().join("tests/browser/node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed: `npm ci --prefix tests/browser`".into());
    }
    None
}

#[test]
fn catalog_ui_in_headless_chromium() {
    let _servers = crate::shared();
    if let Some(what) = missing() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "the browser tests cannot run under CI: {what}");
        eprintln!("skipping the browser tests: {what}");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let demo = Demo::start(data.path());
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    let output = Command::new("node")
        .arg(repo().join("tests/browser/catalog.mjs"))
        .env("TESSERA_URL", &demo.base)
        .env("TESSERA_TOKENS", data.path().join("demo-principals.json"))
        .env("TESSERA_ARTIFACTS", &artifacts)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    eprintln!("{out}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the browser tests failed; screenshots in {}", artifacts.display());
    for page in ["search.png", "product.png", "product-analyst.png", "product-owner.png", "sql.png", "lineage.png", "narrow-product.png"] {
        assert!(artifacts.join(page).exists(), "no screenshot {page} in {}", artifacts.display());
    }
}
