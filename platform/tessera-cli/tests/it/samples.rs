//! `tessera samples generate`: deterministic, and the committed sample files
//! are exactly its output (regenerate them with the command in README.md).

use crate::{example_contracts, repo, stderr, stdout, tessera};

#[test]
fn committed_samples_are_what_the_generator_writes() {
    for contract in example_contracts() {
        let out = tessera(&["samples", "generate", &contract]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let committed = std::fs::read_to_string(repo().join(contract.replace("contract.yaml", "events.ndjson"))).unwrap();
        assert!(
            stdout(&out) == committed,
            "{contract}: the committed events.ndjson differs from the generator's output; regenerate it (see README.md)"
        );
    }
}

#[test]
fn seeds_change_the_output_and_only_seeds() {
    let a = tessera(&["samples", "generate", "products/sales-orders/contract.yaml", "--streams", "20", "--seed", "1"]);
    let b = tessera(&["samples", "generate", "products/sales-orders/contract.yaml", "--streams", "20", "--seed", "1"]);
    let c = tessera(&["samples", "generate", "products/sales-orders/contract.yaml", "--streams", "20", "--seed", "2"]);
    assert_eq!(stdout(&a), stdout(&b));
    assert_ne!(stdout(&a), stdout(&c));
    // Every stream's events are in order, with consecutive expected versions.
    let mut next = std::collections::HashMap::new();
    for line in stdout(&a).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seen = next.entry(v["stream"].as_str().unwrap().to_owned()).or_insert(0);
        let expected = if *seen == 0 { serde_json::json!("no_stream") } else { serde_json::json!(*seen) };
        assert_eq!(v["expected_version"], expected, "{line}");
        *seen += 1;
    }
}

#[test]
fn self_referencing_schemas_generate_bounded_payloads() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["samples", "generate", "tests/corpus/hostile/recursive-ref.yaml", "--streams", "3"])
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            return;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("sample generation did not finish within 30 s on a self-referencing schema");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
