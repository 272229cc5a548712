//! The example products under `products/`: they lint clean, export to valid
//! ODCS, and their sample events fit their contracts after upcasting.

use serde_json::Value;
use tessera_contract::{Policy, lint_bytes, odcs, upcast};

use crate::repo;

fn products() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(repo().join("products"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("contract.yaml").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "expected at least four example products, found {}", dirs.len());
    dirs
}

#[test]
fn examples_lint_without_errors_or_warnings() {
    let policy = Policy::builtin();
    for dir in products() {
        let linted = lint_bytes(&std::fs::read(dir.join("contract.yaml")).unwrap(), &policy);
        let rendered: Vec<String> = linted.diagnostics.iter().map(|d| d.render(&dir.display().to_string())).collect();
        assert!(rendered.is_empty(), "{}", rendered.join("\n"));
    }
}

#[test]
fn the_vendored_odcs_schema_is_the_official_one() {
    // `../shared/odcs` holds the standard's files where the workplace provides them.
    let official = repo().join("../shared/odcs/odcs-json-schema-v3.1.0.json");
    let vendored = repo().join("tests/corpus/odcs/odcs-json-schema-v3.1.0.json");
    match std::fs::read(&official) {
        Ok(bytes) => assert!(bytes == std::fs::read(vendored).unwrap(), "tests/corpus/odcs differs from ../shared/odcs: copy it again"),
        Err(_) => eprintln!("SKIPPED: no ../shared/odcs to compare the vendored ODCS schema with"),
    }
}

#[test]
fn odcs_exports_pass_the_official_schema() {
    let policy = Policy::builtin();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/corpus/odcs/odcs-json-schema-v3.1.0.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for dir in products() {
        let contract = lint_bytes(&std::fs::read(dir.join("contract.yaml")).unwrap(), &policy).valid().unwrap();
        let exported = odcs::export(&contract);
        let errors: Vec<String> = validator.iter_errors(&exported).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: {}", dir.display(), errors.join("\n"));
        // The YAML rendering reads back to the same document.
        let yaml = odcs::to_yaml(&exported);
        let back = tessera_contract::source::parse(&yaml).unwrap().value;
        assert_eq!(back, exported, "{}", dir.display());
        // Nothing is dropped: every table, column and event is in the export.
        let text = serde_json::to_string(&exported).unwrap();
        for (t, table) in &contract.tables {
            assert!(text.contains(&format!("\"name\":\"{t}\"")), "{t}");
            for c in table.columns.keys() {
                assert!(text.contains(&format!("\"name\":\"{c}\"")), "{t}.{c}");
            }
        }
        for e in contract.events.keys() {
            assert!(text.contains(&format!("\"{e}\"")), "{e}");
        }
    }
}

#[test]
fn sample_events_fit_their_contracts_after_upcasting() {
    let policy = Policy::builtin();
    for dir in products() {
        let contract = lint_bytes(&std::fs::read(dir.join("contract.yaml")).unwrap(), &policy).valid().unwrap();
        let text = std::fs::read_to_string(dir.join("events.ndjson")).unwrap();
        let mut older = 0;
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 1000, "{}: only {} sample events", dir.display(), lines.len());
        for (i, line) in lines.iter().enumerate() {
            let envelope: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", dir.display(), i + 1));
            let event_type = envelope["type"].as_str().unwrap();
            let event = contract.events.get(event_type).unwrap_or_else(|| panic!("{}:{}: unknown type {event_type}", dir.display(), i + 1));
            let version = envelope["schema_version"].as_u64().unwrap() as u32;
            older += usize::from(version < event.version);
            let payload = upcast(event, version, envelope["payload"].clone()).unwrap();
            let validator = jsonschema::draft202012::new(&event.schema).unwrap();
            let errors: Vec<String> = validator.iter_errors(&payload).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}:{} ({event_type}): {}", dir.display(), i + 1, errors.join("; "));
        }
        let has_versions = contract.events.values().any(|e| e.version > 1);
        assert!(!has_versions || older > 0, "{}: no sample event exercises upcasting", dir.display());
    }
}
