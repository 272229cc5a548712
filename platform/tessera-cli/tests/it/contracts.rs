//! `tessera lint`, `diff` and `export odcs`: output and exit codes.

use serde_json::Value;

use crate::{corpus, example_contracts, repo, stderr, stdout, tessera};

#[test]
fn lint_passes_the_examples_and_says_so() {
    let mut args = vec!["lint"];
    let files = example_contracts();
    args.extend(files.iter().map(String::as_str));
    let out = tessera(&args);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains(&format!("lint passed: {} file(s), 0 error(s), 0 warning(s)", files.len())));
}

#[test]
fn lint_reports_every_error_with_its_position_and_fails() {
    let (unknown_column, unknown_subject) = (corpus("lint", "ref-unknown-column"), corpus("lint", "subject-unknown-path"));
    let out = tessera(&["lint", &unknown_column, &unknown_subject]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains(&format!("{unknown_column}:")), "{text}");
    assert!(text.contains("error[ref.unknown_column]: the rule sets the unknown column `state`"), "{text}");
    assert!(text.contains("= help: did you mean `status`?"), "{text}");
    assert!(text.contains("error[subject.invalid]"), "{text}");
}

#[test]
fn lint_json_is_machine_readable() {
    let out = tessera(&["lint", "--format", "json", &corpus("lint", "ref-unknown-column")]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let d = &doc["files"][0]["diagnostics"][0];
    assert_eq!(d["code"], "ref.unknown_column");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["pointer"], "/tables/carts/upsert/from/CartOpened/set/state");
    assert!(d["line"].as_u64().unwrap() > 1 && d["column"].as_u64().unwrap() > 1);
    assert_eq!(doc["files"][0]["valid"], false);
}

#[test]
fn missing_files_and_bad_usage_exit_2() {
    let out = tessera(&["lint", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read does/not/exist.yaml"), "{}", stderr(&out));
    assert_eq!(tessera(&["lint"]).status.code(), Some(2));
}

#[test]
fn diff_exit_code_follows_the_version_rules() {
    let base = "tests/corpus/diff/base.yaml";
    let ok = tessera(&["diff", base, &corpus("diff", "add-required-column")]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("breaking   tables.items.columns.note"));
    let bad = tessera(&["diff", base, &corpus("diff", "add-required-column-minor")]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("breaking changes need a new major version"));
    let json = tessera(&["diff", "--format", "json", base, &corpus("diff", "widen-int")]);
    let doc: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(doc["changes"][0]["impact"], "compatible");
    // An invalid contract is refused with its errors, not compared.
    let invalid = tessera(&["diff", base, &corpus("lint", "ref-unknown-column")]);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(stderr(&invalid).contains("is not a valid contract"));
}

#[test]
fn export_odcs_writes_a_document() {
    let dir = std::env::temp_dir().join(format!("tessera-odcs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("orders.odcs.yaml");
    let out = tessera(&["export", "odcs", "products/sales-orders/contract.yaml", "-o", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(text.contains("apiVersion: v3.1.0") && text.contains("kind: DataContract"), "{text}");
    assert!(text.contains("classification: pii.email"));
    std::fs::remove_dir_all(dir).unwrap();
    let _ = repo();
}

/// The path of an external tool: `$env_var`, else `name` on the PATH. In CI
/// a missing tool fails the test; elsewhere the test says it was skipped.
pub fn external_tool(env_var: &str, name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os(env_var)
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file())));
    if found.is_none() {
        assert!(std::env::var("CI").is_err(), "{name} is missing: CI must install it (.ci/run sets {env_var})");
        eprintln!("SKIPPED: {name} is not installed; `.ci/run` installs it");
    }
    found
}

#[test]
fn odcs_exports_pass_datacontract_cli() {
    let Some(datacontract) = external_tool("TESSERA_DATACONTRACT", "datacontract") else { return };
    let dir = std::env::temp_dir().join(format!("tessera-odcs-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for contract in example_contracts() {
        let target = dir.join(contract.replace('/', "_"));
        let out = tessera(&["export", "odcs", &contract, "-o", target.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lint = std::process::Command::new(&datacontract).arg("lint").arg(&target).output().unwrap();
        let report = format!("{}{}", stdout(&lint), stderr(&lint));
        assert!(lint.status.success() && report.contains("valid against ODCS v3.1.0"), "{contract}: datacontract lint says:\n{report}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_custom_policy_governs_and_a_broken_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("tessera-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let builtin = std::fs::read_to_string(repo().join("contracts/policies.yaml")).unwrap();
    // A stricter federation: a sales channel counts as personal free text.
    let stricter = dir.join("stricter.yaml");
    std::fs::write(&stricter, format!("{builtin}  - {{ pattern: \"^channel$\", classification: pii.free_text }}\n")).unwrap();
    let out = tessera(&["lint", "--policy", stricter.to_str().unwrap(), "products/sales-orders/contract.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("error[governance.unclassified]: column `channel` looks like personal data (pii.free_text)"),
        "{}",
        stdout(&out)
    );
    // A policy that leaves a role out is refused before any contract is read.
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, builtin.replace("analyst: year_only, ", "")).unwrap();
    let out = tessera(&["lint", "--policy", broken.to_str().unwrap(), "products/sales-orders/contract.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("the policy is invalid") && stderr(&out).contains("says nothing for role `analyst`"), "{}", stderr(&out));
    std::fs::remove_dir_all(dir).unwrap();
}
