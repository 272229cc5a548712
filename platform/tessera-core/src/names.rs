//! Validated identifiers: domains, products, tables, columns and event types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest name accepted, in bytes (PostgreSQL's identifier limit).
const MAX_LEN: usize = 63;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind}: {rule}")]
pub struct NameError {
    /// What kind of name was expected, e.g. "table name".
    pub kind: &'static str,
    /// The rejected input, as given.
    pub value: String,
    /// The rule it breaks, phrased as what a valid name looks like.
    pub rule: &'static str,
}

const SNAKE_RULE: &str = "use lower_snake_case: a lowercase letter, then lowercase letters, digits or `_`, at most 63 characters";
const CAMEL_RULE: &str = "use UpperCamelCase: an uppercase letter, then letters or digits, at most 63 characters";

fn is_snake(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z')) && s.len() <= MAX_LEN && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

fn is_camel(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('A'..='Z')) && s.len() <= MAX_LEN && chars.all(|c| c.is_ascii_alphanumeric())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:ident, $rule:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `value` against the naming rule.
            pub fn parse(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                if $check(&value) {
                    Ok(Self(value))
                } else {
                    Err(NameError { kind: $kind, value, rule: $rule })
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

name_type!(
    /// A domain of the mesh, e.g. `sales`: the unit of ownership.
    DomainName, "domain name", is_snake, SNAKE_RULE
);
name_type!(
    /// A data product's name inside its domain, e.g. `orders`.
    ProductName, "product name", is_snake, SNAKE_RULE
);
name_type!(
    /// An output table of a product, e.g. `daily_revenue`.
    TableName, "table name", is_snake, SNAKE_RULE
);
name_type!(
    /// A column of a table, or a field of a struct column.
    ColumnName, "column name", is_snake, SNAKE_RULE
);
name_type!(
    /// An event type of a product, e.g. `OrderPlaced`.
    EventTypeName, "event type name", is_camel, CAMEL_RULE
);

/// A product's full address: its domain and its name, written `domain/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProductRef {
    /// The owning domain.
    pub domain: DomainName,
    /// The product's name in that domain.
    pub name: ProductName,
}

impl fmt::Display for ProductRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.name)
    }
}

impl FromStr for ProductRef {
    type Err = NameError;

    /// Parses `domain/name`.
    fn from_str(s: &str) -> Result<Self, NameError> {
        let (domain, name) = s.split_once('/').ok_or_else(|| NameError {
            kind: "product reference",
            value: s.to_owned(),
            rule: "write it as `domain/name`, e.g. `sales/orders`",
        })?;
        Ok(Self { domain: domain.parse()?, name: name.parse()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_names_accept_the_rule_and_nothing_else() {
        for ok in ["a", "orders", "daily_revenue", "v2_items", &"a".repeat(63)] {
            assert!(TableName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Orders", "2fast", "_x", "a-b", "a.b", "a/b", "../x", "é", &"a".repeat(64)] {
            let err = TableName::parse(bad).unwrap_err();
            assert_eq!(err.value, bad);
        }
    }

    #[test]
    fn camel_names_accept_the_rule_and_nothing_else() {
        assert!(EventTypeName::parse("OrderPlaced").is_ok());
        for bad in ["orderPlaced", "Order_Placed", "Order Placed", ""] {
            assert!(EventTypeName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn product_refs_round_trip() {
        let r: ProductRef = "sales/orders".parse().unwrap();
        assert_eq!(r.to_string(), "sales/orders");
        assert!("sales".parse::<ProductRef>().is_err());
        assert!("sales/../x".parse::<ProductRef>().is_err());
    }
}
