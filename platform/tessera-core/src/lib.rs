//! Tessera's shared vocabulary: the names every other crate passes around.
//!
//! Each name is a newtype with one constructor that enforces its rule, so a
//! value of the type is valid by construction ("parse, don't validate"). The
//! rules also keep names safe as path segments in object storage and as SQL
//! identifiers: no dots, slashes, quotes or upper case in lower_snake names.
//!
//! This crate knows nothing of YAML, SQL, HTTP or storage.

mod names;

pub use names::{ColumnName, DomainName, EventTypeName, NameError, ProductName, ProductRef, TableName};
