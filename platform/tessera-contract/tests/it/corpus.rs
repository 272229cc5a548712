//! The corpora under `tests/corpus`: broken contracts with the error each
//! must produce, and version pairs with the classification each must get.
//! Expectations are the files' `# expect:` header lines.

use std::collections::BTreeSet;

use tessera_contract::{Impact, Policy, Severity, diff, lint_bytes};

use crate::{files, repo};

fn header<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.strip_prefix(&format!("# {key}: "))).collect()
}

#[test]
fn every_broken_contract_gets_exactly_its_error_at_its_position() {
    let policy = Policy::builtin();
    let cases = files(&repo().join("tests/corpus/lint"), "yaml");
    assert!(cases.len() >= 40, "the lint corpus has only {} cases", cases.len());
    let mut failures = Vec::new();
    for path in &cases {
        let bytes = std::fs::read(path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let expected: BTreeSet<String> = header(&text, "expect").into_iter().map(str::to_owned).collect();
        assert!(!expected.is_empty(), "{} has no `# expect:` line", path.display());
        let linted = lint_bytes(&bytes, &policy);
        let actual: BTreeSet<String> = linted
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| {
                let p = d.position.expect("every diagnostic is located");
                format!("{}:{} {}", p.line, p.column, d.code)
            })
            .collect();
        for d in &linted.diagnostics {
            assert!(!d.message.is_empty() && !d.message.ends_with('.'), "{}: message style: {:?}", path.display(), d.message);
        }
        if expected != actual {
            failures.push(format!("{}\n  expected {expected:?}\n  actual   {actual:?}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn every_version_pair_is_classified_as_expected() {
    let policy = Policy::builtin();
    let dir = repo().join("tests/corpus/diff");
    let base = lint_bytes(&std::fs::read(dir.join("base.yaml")).unwrap(), &policy).valid().expect("the diff base is valid");
    let mut cases: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 25, "the diff corpus has only {} cases", cases.len());
    for case in cases {
        let path = case.join("new.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let linted = lint_bytes(text.as_bytes(), &policy);
        let errors: Vec<String> =
            linted.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| d.render("new.yaml")).collect();
        let new = linted.valid().unwrap_or_else(|| panic!("{} does not lint:\n{}", path.display(), errors.join("\n")));
        let d = diff(&base, &new, &policy);

        let expect = header(&text, "expect")[0];
        let (overall, subject) = expect.split_once(' ').unwrap();
        match overall {
            "none" => assert!(d.changes.is_empty(), "{}: expected no change, got {d}", path.display()),
            _ => {
                let impact = if overall == "breaking" { Impact::Breaking } else { Impact::Compatible };
                assert_eq!(d.is_breaking(), impact == Impact::Breaking, "{}: {d}", path.display());
                assert!(
                    d.changes.iter().any(|c| c.subject == subject && c.impact == impact),
                    "{}: expected a {overall} change of {subject}, got {d}",
                    path.display()
                );
            }
        }
        let successor = header(&text, "successor")[0] == "valid";
        assert_eq!(d.is_valid_successor(), successor, "{}: {d}", path.display());
    }
}

/// The rendered messages of the whole lint corpus, as a person reads them,
/// against `tests/corpus/lint.expected`. A wording change shows in review as a
/// diff of that file; regenerate it with `UPDATE_EXPECT=1 cargo test`.
#[test]
fn rendered_messages_match_the_golden_file() {
    let policy = Policy::builtin();
    let root = repo();
    let mut rendered = String::new();
    for path in files(&root.join("tests/corpus/lint"), "yaml") {
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        for d in lint_bytes(&std::fs::read(&path).unwrap(), &policy).diagnostics {
            rendered.push_str(&d.render(&name));
            rendered.push('\n');
        }
    }
    let golden = root.join("tests/corpus/lint.expected");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    if expected != rendered {
        let first = expected
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(rendered.lines().count()));
        panic!(
            "rendered diagnostics differ from tests/corpus/lint.expected at line {}:\n  expected: {}\n  actual:   {}\nrun `UPDATE_EXPECT=1 cargo test -p tessera-contract` and review the diff",
            first + 1,
            expected.lines().nth(first).unwrap_or("<end>"),
            rendered.lines().nth(first).unwrap_or("<end>")
        );
    }
}
