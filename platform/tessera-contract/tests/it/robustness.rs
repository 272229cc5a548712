//! No input makes lint panic or hang: mangled contracts, huge and deep
//! inputs, alias bombs, binary garbage. The fuzz target (`fuzz/`) explores
//! further; these cases run on every test run.

use proptest::prelude::*;
use tessera_contract::{Code, Policy, lint_bytes};

use crate::repo;

fn example() -> Vec<u8> {
    std::fs::read(repo().join("products/sales-orders/contract.yaml")).unwrap()
}

fn codes(bytes: &[u8]) -> Vec<Code> {
    lint_bytes(bytes, &Policy::builtin()).diagnostics.into_iter().map(|d| d.code).collect()
}

#[test]
fn hostile_inputs_get_errors_not_panics() {
    let bomb = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n";
    assert_eq!(codes(bomb.as_bytes()), [Code::YamlAnchor]);
    assert_eq!(codes("[".repeat(1 << 20).as_bytes()), [Code::YamlTooDeep]);
    assert_eq!(codes(&vec![b'a'; 5 << 20]), [Code::YamlTooLarge]);
    assert_eq!(codes(&[0xff, 0xfe, 0x00, 0x01]), [Code::YamlEncoding]);
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert!(!codes(&garbage).is_empty());
    assert!(!codes(b"- just\n- a list\n").is_empty());
    assert!(!codes(b"42").is_empty());
}

#[test]
fn self_referencing_payload_schemas_lint_quickly() {
    let bytes = std::fs::read(repo().join("tests/corpus/hostile/recursive-ref.yaml")).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(codes(&bytes), Vec::<Code>::new());
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any byte edit of a valid contract lints to a result: never a panic.
    #[test]
    fn mangled_contracts_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = example();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = lint_bytes(&bytes, &Policy::builtin());
    }

    /// Cutting a contract anywhere lints to a result, with located errors.
    #[test]
    fn truncated_contracts_are_located(cut in any::<prop::sample::Index>()) {
        let bytes = example();
        let linted = lint_bytes(&bytes[..cut.index(bytes.len())], &Policy::builtin());
        prop_assert!(linted.diagnostics.iter().all(|d| d.position.is_some()));
    }
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        "[a-zA-Z0-9 ._-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("(customer_id|customer_email|customer|currency|total|id|email|[a-z]{1,6})", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Upcasting is total: every payload and version gives a payload or a
    /// typed error, never a panic; the current version is left untouched.
    #[test]
    fn upcasting_is_total(payload in arbitrary_json(), version in 0u32..4) {
        let contract = lint_bytes(&example(), &Policy::builtin()).valid().unwrap();
        for event in contract.events.values() {
            match tessera_contract::upcast(event, version, payload.clone()) {
                Ok(out) if version == event.version => prop_assert_eq!(out, payload.clone()),
                Ok(out) => prop_assert!(out.is_object()),
                Err(_) => {}
            }
        }
    }
}
