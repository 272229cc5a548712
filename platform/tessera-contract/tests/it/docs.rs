//! `contracts/README.md` stays true: it documents every diagnostic code, its
//! examples lint as they claim, and its complete example is the real file.

use tessera_contract::{Code, Policy, lint};

use crate::repo;

fn spec() -> String {
    std::fs::read_to_string(repo().join("contracts/README.md")).unwrap()
}

/// The fenced YAML block right after the line `marker`.
fn block_after<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text.find(marker).unwrap_or_else(|| panic!("no `{marker}` in the spec")) + marker.len();
    let body = text[start..].trim_start().strip_prefix("```yaml\n").expect("a yaml block follows the marker");
    &body[..body.find("```").unwrap()]
}

#[test]
fn every_diagnostic_code_is_documented() {
    let text = spec();
    let missing: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).filter(|c| !text.contains(&format!("| `{c}` |"))).collect();
    assert!(missing.is_empty(), "contracts/README.md does not document {missing:?}");
}

#[test]
fn examples_marked_valid_lint_clean() {
    let text = spec();
    let marker = "<!-- lint: valid -->";
    assert!(text.contains(marker));
    for (i, _) in text.match_indices(marker) {
        let linted = lint(block_after(&text[i..], marker), &Policy::builtin());
        assert!(linted.diagnostics.is_empty(), "{:?}", linted.diagnostics);
    }
}

#[test]
fn the_complete_example_is_the_sales_orders_contract() {
    let text = spec();
    let marker = "<!-- example: products/sales-orders/contract.yaml -->";
    let file = std::fs::read_to_string(repo().join("products/sales-orders/contract.yaml")).unwrap();
    assert_eq!(block_after(&text, marker), file, "copy products/sales-orders/contract.yaml into contracts/README.md");
}
