//! What SQL may do on Tessera, before and while it is planned: one
//! read-only statement within bounds on its size and nesting (`sandbox`),
//! built-in functions replaced by bounded ones (`guard`), and the memory
//! DataFusion's operators do not reserve put under the query's pool
//! (`budget`).
//!
//! Depends on DataFusion alone, knows nothing of tables, storage, callers
//! or HTTP, so that it can be fuzzed in seconds of build time: the query
//! engine (`tessera-query`) applies it to every query.

pub mod budget;
pub mod guard;
pub mod sandbox;

/// Which version of a table to read.
#[derive(Debug, Clone, PartialEq)]
pub enum At {
    Latest,
    Version(u64),
    Time(chrono::DateTime<chrono::Utc>),
}
