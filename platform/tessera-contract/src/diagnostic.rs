//! Diagnostics: what is wrong with a contract, where, and how to fix it.
//!
//! A diagnostic is created against a JSON pointer into the document (the
//! validator thinks in the document's structure, not in text) and located
//! afterwards through the [`SpanMap`] of the YAML source, so every message
//! names `file:line:column`. Rendering for people and for machines lives here.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::source::{Position, SpanMap, Target};

/// The closed vocabulary of diagnostic codes. Codes are stable: tools and
/// tests match on them, people search for them in `contracts/README.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    YamlSyntax,
    YamlAnchor,
    YamlTag,
    YamlDuplicateKey,
    YamlMultipleDocuments,
    YamlTooDeep,
    YamlTooLarge,
    YamlEncoding,
    SchemaUnknownKey,
    SchemaMissingKey,
    SchemaWrongType,
    SchemaInvalidValue,
    VersionInvalid,
    TypeInvalid,
    TableInvalid,
    PayloadSchemaInvalid,
    RefUnknownEvent,
    RefUnknownColumn,
    RefUnknownPayloadPath,
    RefUnknownEventField,
    RefTypeMismatch,
    KeyInvalid,
    RuleInvalid,
    ColumnUnset,
    ColumnUndocumented,
    SqlInvalid,
    UpcastInvalid,
    CheckInvalid,
    SubjectInvalid,
    GovernanceUnclassified,
    GovernanceUnknownClassification,
    GovernanceMissingJustification,
    GovernanceLoosenedMasking,
    GovernanceInapplicableMasking,
    GovernanceWeakerThanSource,
    DerivedView,
}

impl Code {
    /// Every code, in documentation order.
    pub const ALL: [Code; 36] = [
        Code::YamlSyntax,
        Code::YamlAnchor,
        Code::YamlTag,
        Code::YamlDuplicateKey,
        Code::YamlMultipleDocuments,
        Code::YamlTooDeep,
        Code::YamlTooLarge,
        Code::YamlEncoding,
        Code::SchemaUnknownKey,
        Code::SchemaMissingKey,
        Code::SchemaWrongType,
        Code::SchemaInvalidValue,
        Code::VersionInvalid,
        Code::TypeInvalid,
        Code::TableInvalid,
        Code::PayloadSchemaInvalid,
        Code::RefUnknownEvent,
        Code::RefUnknownColumn,
        Code::RefUnknownPayloadPath,
        Code::RefUnknownEventField,
        Code::RefTypeMismatch,
        Code::KeyInvalid,
        Code::RuleInvalid,
        Code::ColumnUnset,
        Code::ColumnUndocumented,
        Code::SqlInvalid,
        Code::UpcastInvalid,
        Code::CheckInvalid,
        Code::SubjectInvalid,
        Code::GovernanceUnclassified,
        Code::GovernanceUnknownClassification,
        Code::GovernanceMissingJustification,
        Code::GovernanceLoosenedMasking,
        Code::GovernanceInapplicableMasking,
        Code::GovernanceWeakerThanSource,
        Code::DerivedView,
    ];

    /// The code as written in messages, e.g. `ref.unknown_column`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml.syntax",
            Code::YamlAnchor => "yaml.anchor",
            Code::YamlTag => "yaml.tag",
            Code::YamlDuplicateKey => "yaml.duplicate_key",
            Code::YamlMultipleDocuments => "yaml.multiple_documents",
            Code::YamlTooDeep => "yaml.too_deep",
            Code::YamlTooLarge => "yaml.too_large",
            Code::YamlEncoding => "yaml.encoding",
            Code::SchemaUnknownKey => "schema.unknown_key",
            Code::SchemaMissingKey => "schema.missing_key",
            Code::SchemaWrongType => "schema.wrong_type",
            Code::SchemaInvalidValue => "schema.invalid_value",
            Code::VersionInvalid => "version.invalid",
            Code::TypeInvalid => "type.invalid",
            Code::TableInvalid => "table.invalid",
            Code::PayloadSchemaInvalid => "payload_schema.invalid",
            Code::RefUnknownEvent => "ref.unknown_event",
            Code::RefUnknownColumn => "ref.unknown_column",
            Code::RefUnknownPayloadPath => "ref.unknown_payload_path",
            Code::RefUnknownEventField => "ref.unknown_event_field",
            Code::RefTypeMismatch => "ref.type_mismatch",
            Code::KeyInvalid => "key.invalid",
            Code::RuleInvalid => "rule.invalid",
            Code::ColumnUnset => "column.unset",
            Code::ColumnUndocumented => "column.undocumented",
            Code::SqlInvalid => "sql.invalid",
            Code::UpcastInvalid => "upcast.invalid",
            Code::CheckInvalid => "check.invalid",
            Code::SubjectInvalid => "subject.invalid",
            Code::GovernanceUnclassified => "governance.unclassified",
            Code::GovernanceUnknownClassification => "governance.unknown_classification",
            Code::GovernanceMissingJustification => "governance.missing_justification",
            Code::GovernanceLoosenedMasking => "governance.loosened_masking",
            Code::GovernanceInapplicableMasking => "governance.inapplicable_masking",
            Code::GovernanceWeakerThanSource => "governance.weaker_than_source",
            Code::DerivedView => "derived.view",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How serious a diagnostic is. Errors fail the lint; warnings and
/// information do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One finding about a contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    /// JSON pointer of the offending node in the document (`""` for the root).
    pub pointer: String,
    /// Whether the key of that node or its value is at fault.
    #[serde(skip)]
    pub target: Target,
    /// What is wrong: lowercase, no trailing period.
    pub message: String,
    /// How to fix it, when there is something to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Line and column, once located in the source.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// A position inside the node's text (e.g. of a syntax error in a SQL
    /// query), counted from 1 at the start of its content.
    #[serde(skip)]
    pub within: Option<Position>,
}

impl Diagnostic {
    /// An error about the value at `pointer`.
    pub fn error(code: Code, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            severity: Severity::Error,
            pointer: pointer.into(),
            target: Target::Value,
            message: message.into(),
            help: None,
            position: None,
            within: None,
        }
    }

    /// A warning about the value at `pointer`.
    pub fn warning(code: Code, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, ..Self::error(code, pointer, message) }
    }

    /// Information about the value at `pointer`: how the platform will treat it.
    pub fn info(code: Code, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self { severity: Severity::Info, ..Self::error(code, pointer, message) }
    }

    /// Points at the key of the node rather than its value.
    pub fn at_key(mut self) -> Self {
        self.target = Target::Key;
        self
    }

    /// Adds how to fix it.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Sets the position directly, for errors found before there is a document.
    pub fn at(mut self, position: Position) -> Self {
        self.position = Some(position);
        self
    }

    /// Points inside the node's text: `within` counts lines and columns from
    /// the start of its content.
    pub fn within(mut self, within: Position) -> Self {
        self.within = Some(within);
        self
    }

    /// Fills in the position from the source's span map, if not known yet.
    /// A position `within` a multi-line scalar assumes its lines share the
    /// first line's indentation, as block scalars (`|`) do.
    pub fn locate(&mut self, spans: &SpanMap) {
        if self.position.is_none() {
            let start = spans.locate(&self.pointer, self.target);
            self.position = Some(match self.within {
                Some(w) => Position { line: start.line + w.line.saturating_sub(1), column: start.column + w.column.saturating_sub(1) },
                None => start,
            });
        }
    }

    /// Renders `file:line:column: error[code]: message` and its help line.
    pub fn render(&self, file: &str) -> String {
        let mut out = String::new();
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        let pos = self.position.unwrap_or(Position { line: 1, column: 1 });
        let _ = write!(out, "{file}:{}:{}: {severity}[{}]: {}", pos.line, pos.column, self.code, self.message);
        if let Some(help) = &self.help {
            let _ = write!(out, "\n  = help: {help}");
        }
        out
    }
}

/// The name among `candidates` closest to `wrong`, if one is close enough to
/// be what the author meant.
pub fn nearest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wrong_lower = wrong.to_lowercase();
    candidates
        .into_iter()
        .filter_map(|c| {
            let c_lower = c.to_lowercase();
            // An abbreviation (`desc`, `cart`) or an extension of a valid name.
            let prefix = wrong.len().min(c.len()) >= 3 && (c_lower.starts_with(&wrong_lower) || wrong_lower.starts_with(&c_lower));
            let distance = strsim::damerau_levenshtein(&wrong_lower, &c_lower);
            let close = distance <= (c.len().max(wrong.len()) / 3).max(2);
            (prefix || close).then_some((if prefix { 0 } else { distance + 1 }, c))
        })
        .min_by_key(|(score, _)| *score)
        .map(|(_, c)| c)
}

/// "did you mean `x`?" when there is a near name, otherwise the list of valid ones.
pub fn suggestion<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str> + Clone) -> String {
    match nearest(wrong, candidates.clone()) {
        Some(near) => format!("did you mean `{near}`?"),
        None => {
            let all: Vec<String> = candidates.into_iter().map(|c| format!("`{c}`")).collect();
            if all.is_empty() { "there is nothing to refer to yet".to_owned() } else { format!("expected one of {}", all.join(", ")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_listed_once_with_distinct_names() {
        let mut names: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Code::ALL.len());
    }

    #[test]
    fn nearest_finds_typos_and_ignores_strangers() {
        assert_eq!(nearest("colums", ["columns", "checks"]), Some("columns"));
        assert_eq!(nearest("OrderPlacd", ["OrderPlaced", "OrderShipped"]), Some("OrderPlaced"));
        assert_eq!(nearest("zebra", ["columns", "checks"]), None);
        assert_eq!(nearest("desc", ["type", "required", "description"]), Some("description"));
        assert_eq!(nearest("cart", ["cart_id", "shopper_id"]), Some("cart_id"));
    }
}
