//! Any bytes through the whole lint pipeline: YAML, structure, semantics,
//! governance. It must return diagnostics, never panic or hang, and every
//! diagnostic must be located and worded as the style requires.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tessera_contract::{Policy, lint_bytes};

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(Policy::builtin)
}

fuzz_target!(|data: &[u8]| {
    let linted = lint_bytes(data, policy());
    for d in &linted.diagnostics {
        assert!(d.position.is_some(), "unlocated diagnostic: {d:?}");
        assert!(!d.message.is_empty());
    }
    // A valid contract must also survive the other entry points.
    if let Some(contract) = linted.valid() {
        let _ = tessera_contract::odcs::to_yaml(&tessera_contract::odcs::export(&contract));
        let _ = tessera_contract::diff(&contract, &contract, policy());
    }
});
