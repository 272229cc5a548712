//! Projections: a product's event log into versioned Delta Lake tables in
//! object storage, exactly once.
//!
//! What is here: the Arrow schema of a contract table (`schema`), event
//! values checked into cells (`values`), a run of events into rows or net
//! changes per key with dead letters for what cannot be projected (`rows`,
//! `fold`), and Delta commits that carry the last log position they applied
//! (`delta`). The projector that follows the log, upsert merges, derived
//! tables, generations per major version, time travel and maintenance are
//! being built on these (issue 4).

pub mod delta;
pub mod fold;
pub mod rows;
pub mod schema;
pub mod values;
