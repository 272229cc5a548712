//! Time travel returns what a rebuild up to that point returns: at any log
//! position, at every version, and at every version's commit time.

use std::collections::BTreeMap;

use tessera_projection::history::{self, at_position, at_timestamp, at_version, commits, scan};
use tessera_projection::schema::table_schema;
use tessera_projection::{Projector, Warehouse};
use tessera_store::{BodyFormat, Store};

use crate::duckdb::rows;
use crate::projector::{ndjson, owner, random_history, store_with};

const TABLES: [&str; 3] = ["orders", "order_lines", "daily_revenue"];

/// Every table's rows after a fresh projector applied the log up to `position`.
async fn rebuilt_up_to(store: &Store, dir: &std::path::Path, position: i64) -> BTreeMap<&'static str, Vec<String>> {
    let warehouse = Warehouse::parse(&format!("rebuild-{position}"), dir).expect("warehouse");
    Projector::new(store.clone(), warehouse.clone(), "sales", "orders").run_until(position, &|_| {}).await.expect("rebuild");
    let contract = store.current_contract("sales", "orders").await.expect("contract");
    let mut out = BTreeMap::new();
    for t in TABLES {
        let url = warehouse.table_url("sales", "orders", 1, t);
        let table = deltalake::open_table(url).await.expect("open");
        out.insert(t, rows(&scan(t, &table).await.expect("scan"), &table_schema(&contract.tables[t])).await);
    }
    out
}

#[tokio::test]
async fn time_travel_returns_what_a_rebuild_up_to_there_returns() {
    for seed in [11u64, 12] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().expect("dir");
        let store = store_with(dir.path(), "sales-orders").await;
        let live = Warehouse::parse("live", dir.path()).expect("warehouse");
        let mut projector = Projector::new(store.clone(), live.clone(), "sales", "orders").with_batch(rng.i64(2..10));
        let history = random_history(&mut rng, 40);
        for chunk in history.chunks(rng.usize(3..10)) {
            store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(chunk)).await.expect("append");
            projector.run(&|_| {}).await.expect("run");
        }
        let contract = store.current_contract("sales", "orders").await.expect("contract");
        let head = store.head("sales", "orders").await.expect("head");
        let first = head - history.len() as i64;

        // Any position, including before the first event and between commits.
        let mut positions: Vec<i64> = (0..4).map(|_| rng.i64(first..=head)).collect();
        positions.extend([0, head]);
        for p in positions {
            let rebuilt = rebuilt_up_to(&store, dir.path(), p).await;
            for t in TABLES {
                let batches = at_position(&store, &live, &contract, t, p).await.expect("at position");
                let travelled = rows(&batches, &table_schema(&contract.tables[t])).await;
                assert_eq!(travelled, rebuilt[t], "seed {seed}: {t} at position {p}");
            }
        }

        // Every version, by number and by its commit time.
        let url = live.table_url("sales", "orders", 1, "orders");
        let versions = commits(&url).await.expect("commits");
        assert!(versions.len() > 3, "{versions:?}");
        let schema = table_schema(&contract.tables["orders"]);
        for c in versions.iter().filter(|c| c.position.is_some()) {
            let position = c.position.expect("position");
            let rebuilt = rebuilt_up_to(&store, dir.path(), position).await;
            let by_version =
                rows(&scan("orders", &at_version(&url, c.version).await.expect("version")).await.expect("scan"), &schema).await;
            assert_eq!(by_version, rebuilt["orders"], "seed {seed}: orders at version {}", c.version);
            // Several commits may share a millisecond: the time names the newest of them.
            let ms = c.timestamp.expect("commit time");
            let newest = versions.iter().filter(|o| o.timestamp == Some(ms)).map(|o| o.version).max().expect("itself");
            let time = chrono::DateTime::from_timestamp_millis(ms).expect("time");
            let by_time = at_timestamp(&url, time).await.expect("timestamp");
            assert_eq!(by_time.version(), Some(newest), "seed {seed}: the version at {time}");
        }
        let _ = history::events_between(&store, "sales", "orders", 0, head).await.expect("events");
        store.close().await;
    }
}
