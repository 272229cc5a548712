//! Projections: a product's event log into versioned Delta Lake tables in
//! object storage, exactly once.
//!
//! From the bottom up: the Arrow schema of a contract table (`schema`),
//! event values checked into cells (`values`), a run of events into rows or
//! net changes per key with dead letters for what cannot be projected
//! (`rows`, `fold`; compiled from the contract: `decode`, `upsert`), Delta commits that carry the last log position they
//! applied (`delta`), time travel by version, time and log position
//! (`history`), quality checks (`quality`), where tables live
//! (`warehouse`), the projector of one product (`projector`), and the
//! service that runs one projector per product in a server (`service`).

pub mod decode;
pub mod delta;
pub mod fold;
pub mod history;
pub mod lineage;
pub mod projector;
pub mod quality;
pub mod rows;
pub mod schema;
pub mod service;
pub mod upsert;
pub mod values;
pub mod warehouse;

pub use projector::{Projector, RunReport, Stages, TableState};
pub use service::{ProductProjection, Projections};
pub use warehouse::Warehouse;
