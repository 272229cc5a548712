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
