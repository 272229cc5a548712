//! Test databases, principals and sample events.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use sqlx::{Connection, Executor};
use tessera_contract::{Policy, Role};
use tessera_store::{EventInput, Principal, Store};

pub const ORDERS: &str = include_str!("../../../../products/sales-orders/contract.yaml");
pub const ORDER_EVENTS: &str = include_str!("../../../../products/sales-orders/events.ndjson");
pub const PAYMENTS: &str = include_str!("../../../../products/payments-transactions/contract.yaml");

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The key-encryption key of the test stores.
pub fn test_kek() -> tessera_store::Kek {
    tessera_store::Kek::parse(&"7e".repeat(32)).expect("a test key-encryption key")
}

/// A database of one's own for one test.
pub struct TestDb {
    pub url: String,
    pub store: Store,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = tessera_store::db::sqlite_url(dir.path());
        let store = Store::open(&url, Policy::builtin(), test_kek()).await.expect("open SQLite");
        Self { url, store, postgres: None, _dir: Some(dir) }
    }

    /// A fresh PostgreSQL database, or `None` (with a note) when there is no server outside CI.
    pub async fn postgres() -> Option<Self> {
        let admin = std::env::var("TESSERA_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) if in_ci() => panic!("PostgreSQL is required under CI=true: {admin}: {e}"),
            Err(e) => {
                eprintln!("skipping the PostgreSQL variant: {admin}: {e}");
                return None;
            }
        };
        let name = format!("tessera_it_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).await.expect("drop");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create database");
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("TESSERA_TEST_POSTGRES must end with /DATABASE"),
        };
        let store = Store::open(&url, Policy::builtin(), test_kek()).await.expect("open PostgreSQL");
        Some(Self { url, store, postgres: Some((admin, name)), _dir: None })
    }

    /// A second, independent handle on the same database (as another process would have).
    pub async fn another_store(&self) -> Store {
        Store::open(&self.url, Policy::builtin(), test_kek()).await.expect("open again")
    }

    pub async fn finish(self) {
        self.store.close().await;
        if let Some((admin, name)) = self.postgres {
            let mut conn = sqlx::PgConnection::connect(&admin).await.expect("admin connection");
            conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await.expect("drop database");
        }
    }

    /// Rows in the events table, straight from SQL.
    pub async fn count_events(&self) -> i64 {
        use sqlx::Row;
        sqlx::query("SELECT COUNT(*) FROM events").fetch_one(self.store.pool()).await.expect("count").try_get(0).expect("count")
    }
}

pub fn owner(domain: &str) -> Principal {
    Principal { name: format!("{domain}-owner"), roles: vec![Role::Owner], domains: vec![domain.to_owned()] }
}

pub fn analyst() -> Principal {
    Principal { name: "analyst".into(), roles: vec![Role::Analyst], domains: vec![] }
}

/// Publishes the sales/orders example.
pub async fn with_orders(store: &Store) {
    store.publish(&owner("sales"), ORDERS).await.expect("publish sales/orders");
}

/// The sample events of sales/orders, parsed.
pub fn sample_orders() -> Vec<EventInput> {
    tessera_store::envelope::parse_ndjson(ORDER_EVENTS.as_bytes()).expect("samples parse")
}

/// A valid `OrderLineAdded` event for `stream`, with no id and no expectation.
pub fn line_added(stream: &str, line_no: u64) -> EventInput {
    static TEMPLATE: OnceLock<EventInput> = OnceLock::new();
    let template = TEMPLATE
        .get_or_init(|| sample_orders().into_iter().find(|e| e.event_type == "OrderLineAdded").expect("a sample OrderLineAdded"))
        .clone();
    let mut payload: Value = template.payload;
    payload["order_id"] = Value::from(stream);
    payload["line_no"] = Value::from(line_no);
    EventInput { id: None, stream: stream.to_owned(), schema_version: None, payload, expected: Default::default(), line: None, ..template }
}

/// Reads a product's whole log from the start, waiting (up to 30 s) until it
/// holds `expected` events: on PostgreSQL, tailing readers stay below the
/// oldest transaction in flight anywhere on the server, which other tests
/// running beside this one may hold open for a moment.
pub async fn read_whole_log(store: &Store, domain: &str, name: &str, expected: usize) -> Vec<tessera_store::StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut events: Vec<tessera_store::StoredEvent> = Vec::new();
    loop {
        let after = events.last().map_or(0, |e| e.position);
        let page = store.read_log(&owner(domain), domain, name, after, 1000).await.expect("read the log");
        let empty = page.events.is_empty();
        events.extend(page.events);
        if events.len() >= expected || (empty && std::time::Instant::now() > deadline) {
            return events;
        }
        if empty {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Under CI (`CI` set to anything but empty, `0` or `false`), a missing
/// service fails the test instead of skipping it.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}
