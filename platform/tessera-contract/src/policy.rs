//! The global governance policy (`contracts/policies.yaml`): consumer roles,
//! masking strategies in order of restrictiveness, classifications with
//! their masking per role, and the naming heuristics that flag likely PII.
//!
//! The policy is federated governance: one file for every domain. Contracts
//! may tighten it for their own columns, never loosen it. The query engine
//! applies the strategies; this module only says which one applies.

use std::collections::BTreeMap;
use std::fmt;

use indexmap::IndexMap;
use regex::Regex;
use serde::Deserialize;

use crate::diagnostic::{Code, Diagnostic, suggestion};
use crate::model::{Column, DataType};
use crate::source;

/// Who is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A member of the product's owning domain.
    Owner,
    /// The data-governance team.
    Steward,
    /// Any signed-in employee.
    Analyst,
    /// A request without credentials.
    Public,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Steward, Role::Analyst, Role::Public];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Steward => "steward",
            Self::Analyst => "analyst",
            Self::Public => "public",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a value is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Clear,
    Partial,
    YearOnly,
    Hash,
    Redact,
    Null,
}

impl Strategy {
    pub const ALL: [Strategy; 6] =
        [Strategy::Clear, Strategy::Partial, Strategy::YearOnly, Strategy::Hash, Strategy::Redact, Strategy::Null];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clear => "clear",
            Self::Partial => "partial",
            Self::YearOnly => "year_only",
            Self::Hash => "hash",
            Self::Redact => "redact",
            Self::Null => "null",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the strategy can produce a value of the column's type.
    pub fn applies_to(self, data_type: &DataType) -> bool {
        match self {
            Self::Clear | Self::Null => true,
            Self::Partial | Self::Hash | Self::Redact => matches!(data_type, DataType::String),
            Self::YearOnly => matches!(data_type, DataType::Date | DataType::Timestamp),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `partial` keeps of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partial {
    /// `someone@example.com` becomes `***@example.com`.
    EmailDomain,
    /// `+44 20 7946 0958` becomes `***0958`.
    Last4,
}

/// A kind of data and how it is masked for each role.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub description: String,
    pub masking: BTreeMap<Role, Strategy>,
    pub partial: Option<Partial>,
}

/// A name pattern that marks a field as likely personal.
#[derive(Debug, Clone)]
pub struct Heuristic {
    pub pattern: Regex,
    pub classification: String,
}

/// The global governance policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Strategies, least restrictive first.
    pub order: Vec<Strategy>,
    pub classifications: IndexMap<String, Classification>,
    pub heuristics: Vec<Heuristic>,
}

/// The classification of data that is not personal.
pub const NONE: &str = "none";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePolicy {
    #[allow(dead_code)]
    version: u32,
    roles: Vec<String>,
    strategies: IndexMap<String, Option<String>>,
    classifications: IndexMap<String, WireClassification>,
    #[serde(default)]
    heuristics: Vec<WireHeuristic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClassification {
    description: String,
    masking: IndexMap<String, String>,
    #[serde(default)]
    partial: Option<Partial>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHeuristic {
    pattern: String,
    classification: String,
}

impl Policy {
    /// Reads and checks a policy file. Errors carry positions like contract errors.
    pub fn parse(text: &str) -> Result<Self, Vec<Diagnostic>> {
        let doc = source::parse(text)?;
        let locate = |mut d: Diagnostic| {
            d.locate(&doc.spans);
            d
        };
        let wire: WirePolicy = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
            let pointer = path_to_pointer(&e.path().to_string());
            vec![locate(Diagnostic::error(Code::SchemaInvalidValue, pointer, e.inner().to_string()))]
        })?;
        let mut errors = Vec::new();

        let roles: Vec<&str> = wire.roles.iter().map(String::as_str).collect();
        let expected: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        if roles != expected {
            errors.push(Diagnostic::error(
                Code::SchemaInvalidValue,
                "/roles",
                format!("the roles must be exactly {}", expected.join(", ")),
            ));
        }

        let mut order = Vec::new();
        for name in wire.strategies.keys() {
            match Strategy::parse(name) {
                Some(s) => order.push(s),
                None => errors.push(
                    Diagnostic::error(Code::SchemaInvalidValue, source::child("/strategies", name), format!("unknown strategy `{name}`"))
                        .at_key()
                        .help(suggestion(name, Strategy::ALL.iter().map(|s| s.as_str()))),
                ),
            }
        }
        for s in Strategy::ALL {
            if !order.contains(&s) {
                errors.push(Diagnostic::error(Code::SchemaMissingKey, "/strategies", format!("strategy `{s}` is not ranked")));
            }
        }

        let mut classifications = IndexMap::new();
        for (name, c) in wire.classifications {
            let at = source::child("/classifications", &name);
            let mut masking = BTreeMap::new();
            for (role, strategy) in &c.masking {
                let pointer = source::child(&format!("{at}/masking"), role);
                match (Role::parse(role), Strategy::parse(strategy)) {
                    (Some(r), Some(s)) => {
                        masking.insert(r, s);
                    }
                    (None, _) => {
                        errors.push(Diagnostic::error(Code::SchemaInvalidValue, pointer, format!("unknown role `{role}`")).at_key())
                    }
                    (_, None) => {
                        errors.push(Diagnostic::error(Code::SchemaInvalidValue, pointer, format!("unknown strategy `{strategy}`")))
                    }
                }
            }
            for role in Role::ALL {
                if !masking.contains_key(&role) {
                    errors.push(Diagnostic::error(
                        Code::SchemaMissingKey,
                        format!("{at}/masking"),
                        format!("classification `{name}` says nothing for role `{role}`: every role needs a strategy"),
                    ));
                }
            }
            if masking.values().any(|s| *s == Strategy::Partial) && c.partial.is_none() {
                errors.push(Diagnostic::error(
                    Code::SchemaMissingKey,
                    at.clone(),
                    format!("classification `{name}` uses `partial` but does not say what it keeps: add `partial: email_domain` or `partial: last4`"),
                ));
            }
            classifications.insert(name, Classification { description: c.description, masking, partial: c.partial });
        }
        if !classifications.contains_key(NONE) {
            errors.push(Diagnostic::error(Code::SchemaMissingKey, "/classifications", "the policy must define the classification `none`"));
        }

        let mut heuristics = Vec::new();
        for (i, h) in wire.heuristics.into_iter().enumerate() {
            let at = format!("/heuristics/{i}");
            if !classifications.contains_key(&h.classification) {
                errors.push(Diagnostic::error(
                    Code::GovernanceUnknownClassification,
                    format!("{at}/classification"),
                    format!("unknown classification `{}`", h.classification),
                ));
            }
            match regex::RegexBuilder::new(&h.pattern).case_insensitive(true).size_limit(1 << 20).build() {
                Ok(pattern) => heuristics.push(Heuristic { pattern, classification: h.classification }),
                Err(e) => {
                    errors.push(Diagnostic::error(Code::SchemaInvalidValue, format!("{at}/pattern"), format!("invalid pattern: {e}")))
                }
            }
        }

        if errors.is_empty() { Ok(Self { order, classifications, heuristics }) } else { Err(errors.into_iter().map(locate).collect()) }
    }

    /// The policy shipped in `contracts/policies.yaml`, built into the binary.
    pub fn builtin() -> Self {
        #[allow(clippy::expect_used)] // The file is checked by this crate's tests.
        Self::parse(BUILTIN_POLICY).expect("contracts/policies.yaml is valid")
    }

    /// How restrictive a strategy is: a higher rank reveals less.
    pub fn rank(&self, strategy: Strategy) -> usize {
        self.order.iter().position(|s| *s == strategy).unwrap_or(usize::MAX)
    }

    /// The classification a field name suggests, if any heuristic matches.
    pub fn suspect(&self, field_name: &str) -> Option<&str> {
        self.heuristics.iter().find(|h| h.pattern.is_match(field_name)).map(|h| h.classification.as_str())
    }

    /// The strategy a role gets for a column: the stricter of the global
    /// policy and the contract's own tightening. `None` when the column's
    /// classification is unknown: callers must then not serve the column.
    pub fn effective(&self, column: &Column, role: Role) -> Option<Strategy> {
        let classification = self.classifications.get(column.classification.as_deref().unwrap_or(NONE))?;
        let global = *classification.masking.get(&role)?;
        Some(match column.masking.get(&role) {
            Some(own) if self.rank(*own) > self.rank(global) => *own,
            _ => global,
        })
    }
}

/// `contracts/policies.yaml`, as shipped.
pub const BUILTIN_POLICY: &str = include_str!("../../../contracts/policies.yaml");

/// serde_path_to_error's `a.b[0].c` as a JSON pointer `/a/b/0/c`.
pub(crate) fn path_to_pointer(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    let mut pointer = String::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            pointer.push_str(&source::child("", &rest[..i]));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                pointer.push('/');
                pointer.push_str(&rest[1..end]);
                rest = &rest[end + 1..];
            }
        } else {
            pointer.push_str(&source::child("", rest));
        }
    }
    pointer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policy_is_valid_and_ranks_strategies() {
        let p = Policy::builtin();
        assert!(p.rank(Strategy::Clear) < p.rank(Strategy::Hash));
        assert!(p.rank(Strategy::Redact) < p.rank(Strategy::Null));
        assert_eq!(p.suspect("customer_email"), Some("pii.email"));
        assert_eq!(p.suspect("Phone"), Some("pii.phone"));
        assert_eq!(p.suspect("order_id"), None);
        assert_eq!(p.suspect("shipped_at"), None);
    }

    #[test]
    fn a_policy_missing_a_role_is_rejected_with_a_position() {
        let text = BUILTIN_POLICY.replacen(
            "masking: { owner: clear, steward: clear, analyst: hash, public: redact }",
            "masking: { owner: clear }",
            1,
        );
        let errors = Policy::parse(&text).unwrap_err();
        assert!(errors.iter().any(|e| e.message.contains("role `steward`")), "{errors:?}");
        assert!(errors.iter().all(|e| e.position.is_some_and(|p| p.line > 1)));
    }

    #[test]
    fn pointers_from_serde_paths() {
        assert_eq!(path_to_pointer("a.b[0].c"), "/a/b/0/c");
        assert_eq!(path_to_pointer("."), "");
    }
}
