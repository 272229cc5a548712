//! The query engine over the example products, projected for real into
//! Delta tables in a temporary warehouse: masking per role end to end,
//! the sandbox, time travel, limits and the audit log.

mod engine;

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use tessera_contract::{Policy, Role};
use tessera_projection::{Projector, Warehouse};
use tessera_query::{Engine, Limits, QueryError};
use tessera_store::{BodyFormat, Principal, Store};

pub const KEY: &[u8] = b"test-hash-key";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every example product published, its sample events appended and projected.
#[derive(Debug)]
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub store: Store,
    pub warehouse: Warehouse,
}

impl Fixture {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(
            &tessera_store::db::sqlite_url(dir.path()),
            Policy::builtin(),
            tessera_store::Kek::parse(&"7e".repeat(32)).expect("a test key-encryption key"),
        )
        .await
        .expect("store");
        let warehouse = Warehouse::parse("warehouse", dir.path()).expect("warehouse");
        for product in ["sales-orders", "customers-profiles", "payments-transactions", "logistics-shipments"] {
            let (domain, name) = product.split_once('-').expect("domain-name");
            let owner = owner(domain);
            let contract = std::fs::read_to_string(repo().join("products").join(product).join("contract.yaml")).expect("contract");
            store.publish(&owner, &contract).await.expect("publish");
            let events = std::fs::read(repo().join("products").join(product).join("events.ndjson")).expect("events");
            store.append_body(&owner, domain, name, BodyFormat::Ndjson, events).await.expect("append");
            Projector::new(store.clone(), warehouse.clone(), domain, name).run(&|_| {}).await.expect("project");
        }
        Self { _dir: dir, store, warehouse }
    }

    pub fn engine(&self, limits: Limits) -> Engine {
        Engine::new(self.store.clone(), self.warehouse.clone(), KEY, limits)
    }
}

pub fn owner(domain: &str) -> Principal {
    Principal { name: format!("{domain}-owner"), roles: vec![Role::Analyst], domains: vec![domain.into()] }
}

pub fn analyst() -> Principal {
    Principal { name: "ana".into(), roles: vec![Role::Analyst], domains: Vec::new() }
}

pub fn steward() -> Principal {
    Principal { name: "stew".into(), roles: vec![Role::Steward], domains: Vec::new() }
}

/// Runs a query to its end.
pub async fn run(engine: &Engine, who: &Principal, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let mut rows = engine.query(who, "test", sql).await?;
    let mut out = Vec::new();
    while let Some(batch) = rows.next().await {
        out.push(batch?);
    }
    Ok(out)
}

/// The result as text rows (`|`-separated cells, nulls as `NULL`).
pub async fn rows(engine: &Engine, who: &Principal, sql: &str) -> Vec<String> {
    let batches = run(engine, who, sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    text_rows(&batches)
}

pub fn text_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            out.push(formatters.iter().map(|f| f.value(row).to_string()).collect::<Vec<_>>().join("|"));
        }
    }
    out
}
