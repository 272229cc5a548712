//! The projector against the real store (SQLite) and Delta tables in a
//! local directory: the sample products, dead letters, and the property
//! that runs cut anywhere, with restarts anywhere, give the same rows as
//! one run over the whole log.

use std::path::Path;

use deltalake::datafusion::prelude::SessionContext;
use serde_json::{Value, json};
use tessera_contract::{Policy, Role};
use tessera_projection::{Projector, Warehouse};
use tessera_store::{BodyFormat, Principal, Store};

pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

pub fn owner(domain: &str) -> Principal {
    Principal { name: format!("{domain}-owner"), roles: vec![Role::Owner], domains: vec![domain.into()] }
}

pub async fn store_with(dir: &Path, product: &str) -> Store {
    let store = Store::open(
        &tessera_store::db::sqlite_url(dir),
        Policy::builtin(),
        tessera_store::Kek::parse(&"7e".repeat(32)).expect("a test key-encryption key"),
    )
    .await
    .expect("store");
    let contract = std::fs::read_to_string(repo().join(format!("products/{product}/contract.yaml"))).expect("contract");
    let domain = product.split('-').next().expect("domain");
    store.publish(&owner(domain), &contract).await.expect("publish");
    store
}

/// Every row of a table as text, sorted: what two tables are compared by.
pub async fn rows_of(warehouse: &Warehouse, domain: &str, product: &str, table: &str) -> Vec<String> {
    let url = warehouse.table_url(domain, product, 1, table);
    let delta = deltalake::open_table(url).await.expect("open table");
    let ctx = SessionContext::new();
    ctx.register_table("t", delta.table_provider().await.expect("provider")).expect("register");
    let batches = ctx.sql("SELECT * FROM t").await.expect("sql").collect().await.expect("rows");
    match batches.first() {
        Some(first) => crate::duckdb::rows(&batches, &first.schema()).await,
        None => Vec::new(),
    }
}

#[tokio::test]
async fn the_sample_orders_project_into_every_table_and_pass_their_checks() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with(dir.path(), "sales-orders").await;
    let events = std::fs::read(repo().join("products/sales-orders/events.ndjson")).expect("events");
    store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, events).await.expect("append");
    let log = store.read_log(&owner("sales"), "sales", "orders", 0, 10_000).await.expect("log").events;

    let warehouse = Warehouse::parse("warehouse", dir.path()).expect("warehouse");
    let mut projector = Projector::new(store.clone(), warehouse.clone(), "sales", "orders").with_batch(500);
    let report = projector.run(&|_| {}).await.expect("run");
    let head = log.last().expect("events").position;
    assert_eq!(report.position, head);
    assert_eq!(report.dead_letters, 0, "{:?}", store.dead_letters("sales", "orders", 10).await);

    // One row per order placed and not erased.
    let placed: std::collections::BTreeSet<&str> =
        log.iter().filter(|e| e.event_type == "OrderPlaced").filter_map(|e| e.payload["order_id"].as_str()).collect();
    let erased: std::collections::BTreeSet<&str> =
        log.iter().filter(|e| e.event_type == "OrderErased").filter_map(|e| e.payload["order_id"].as_str()).collect();
    let orders = rows_of(&warehouse, "sales", "orders", "orders").await;
    assert_eq!(orders.len(), placed.difference(&erased).count());
    let lines = rows_of(&warehouse, "sales", "orders", "order_lines").await;
    assert_eq!(lines.len(), log.iter().filter(|e| e.event_type == "OrderLineAdded").count());
    assert!(!rows_of(&warehouse, "sales", "orders", "daily_revenue").await.is_empty());

    for state in projector.tables().expect("tables") {
        assert_eq!(state.applied_position, head, "{}", state.name);
        let url = warehouse.table_url("sales", "orders", 1, &state.name);
        let table = deltalake::open_table(url.clone()).await.expect("open");
        let recorded = tessera_projection::delta::applied(&table, &url, tessera_projection::projector::APP_ID).await.expect("txn");
        assert_eq!(recorded, Some(head), "{}: the Delta log records the position applied", state.name);
    }
    let quality = projector.check_quality().await.expect("checks");
    assert!(quality.len() >= 8, "{quality:?}");
    assert!(quality.iter().all(|q| q.passed), "{quality:#?}");
    assert_eq!(store.quality("sales", "orders", 1).await.expect("stored").len(), quality.len());

    // Nothing new: a second run reads nothing and commits nothing.
    let again = projector.run(&|_| {}).await.expect("run again");
    assert_eq!((again.events, again.commits), (0, 0));
    store.close().await;
}

fn placed(order: &str, total: f64, currency: &str, day: u32) -> Value {
    json!({"stream": order, "type": "OrderPlaced", "schema_version": 2, "payload": {
        "order_id": order, "customer": {"id": "CUS-1", "email": "ada@example.com"},
        "placed_at": format!("2026-01-{day:02}T10:00:00Z"), "currency": currency, "total": total, "channel": "web"}})
}

fn event(order: &str, kind: &str, payload: Value) -> Value {
    json!({"stream": order, "type": kind, "schema_version": 1, "payload": payload})
}

/// A random but valid history over a handful of orders: placed (again),
/// shipped, cancelled, erased, lines added; some events touch orders that
/// do not exist (dead letters).
pub fn random_history(rng: &mut fastrand::Rng, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let order = format!("ORD-{}", rng.usize(0..6));
            match rng.u8(0..10) {
                0..=2 => placed(&order, f64::from(rng.u32(1..100_000)) / 100.0, ["EUR", "USD"][rng.usize(0..2)], rng.u32(1..4)),
                3 => event(&order, "OrderShipped", json!({"order_id": order, "shipped_at": "2026-01-05T08:00:00Z"})),
                4 => event(&order, "OrderCancelled", json!({"order_id": order, "reason": "customer_request"})),
                5 => event(&order, "OrderErased", json!({"order_id": order})),
                _ => event(
                    &order,
                    "OrderLineAdded",
                    json!({"order_id": order, "line_no": i + 1, "sku": "SKU-1", "quantity": rng.u32(1..5), "unit_price": 12.5}),
                ),
            }
        })
        .collect()
}

pub fn ndjson(events: &[Value]) -> Vec<u8> {
    events.iter().map(|e| format!("{e}\n")).collect::<String>().into_bytes()
}

/// The property of issue 4: projecting in runs cut at random positions,
/// in random batch sizes and commit sizes, with the projector restarted at
/// random (state read back from the Delta logs), gives the rows of one run
/// over the whole log, and sets aside the same number of dead letters. And
/// the compiled decoder gives what the general path gives.
#[tokio::test]
async fn runs_cut_anywhere_with_restarts_give_the_rows_of_one_run() {
    for seed in 1..=6u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().expect("dir");
        let store = store_with(dir.path(), "sales-orders").await;
        let incremental = Warehouse::parse("incremental", dir.path()).expect("warehouse");
        let fresh = |rng: &mut fastrand::Rng| {
            Projector::new(store.clone(), incremental.clone(), "sales", "orders")
                .with_batch(rng.i64(1..8))
                .with_commit_rows(rng.usize(1..20))
        };
        let mut projector = fresh(&mut rng);
        let mut dead_letters = 0;
        let history = random_history(&mut rng, 50);
        let mut rest = history.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rng.usize(1..=rest.len().min(12)));
            rest = tail;
            store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(chunk)).await.expect("append");
            if rng.bool() {
                // A restart: nothing survives but the tables.
                projector = fresh(&mut rng);
            }
            dead_letters += projector.run(&|_| {}).await.expect("incremental run").dead_letters;
        }

        let whole = Warehouse::parse("whole", dir.path()).expect("warehouse");
        let report = Projector::new(store.clone(), whole.clone(), "sales", "orders").run(&|_| {}).await.expect("one run");
        assert_eq!(dead_letters, report.dead_letters, "seed {seed}: every event is applied (or set aside) exactly once");
        let general = Warehouse::parse("general", dir.path()).expect("warehouse");
        let report = Projector::new(store.clone(), general.clone(), "sales", "orders")
            .with_compiled_decoder(false)
            .with_batch(rng.i64(1..8))
            .run(&|_| {})
            .await
            .expect("the general path");
        assert_eq!(dead_letters, report.dead_letters, "seed {seed}: the general path sets aside as many");
        for table in ["orders", "order_lines", "daily_revenue"] {
            let a = rows_of(&incremental, "sales", "orders", table).await;
            let b = rows_of(&whole, "sales", "orders", table).await;
            assert_eq!(a, b, "seed {seed}, table {table}");
            assert_eq!(rows_of(&general, "sales", "orders", table).await, b, "seed {seed}, table {table}: the general path");
        }
        store.close().await;
    }
}

#[tokio::test]
async fn events_that_cannot_be_projected_are_dead_letters_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with(dir.path(), "sales-orders").await;
    let events = [
        // Ships an order that was never placed: it cannot create the row.
        event("ORD-9", "OrderShipped", json!({"order_id": "ORD-9", "shipped_at": "2026-01-05T08:00:00Z"})),
        placed("ORD-1", 10.0, "EUR", 1),
        // A price with more digits than decimal(12,2) keeps: never rounded.
        event("ORD-1", "OrderLineAdded", json!({"order_id": "ORD-1", "line_no": 1, "sku": "S", "quantity": 1, "unit_price": 0.125})),
        event("ORD-1", "OrderLineAdded", json!({"order_id": "ORD-1", "line_no": 2, "sku": "S", "quantity": 1, "unit_price": 0.25})),
        // More digits than a float holds: as a float it would be 1234567890.0
        // and fit; as sent, it does not.
        event(
            "ORD-1",
            "OrderLineAdded",
            json!({"order_id": "ORD-1", "line_no": 3, "sku": "S", "quantity": 1,
                   "unit_price": serde_json::from_str::<Value>("1234567890.0000000000000001").expect("number")}),
        ),
        event("ORD-1", "OrderShipped", json!({"order_id": "ORD-1", "shipped_at": "2026-01-05T08:00:00Z"})),
    ];
    store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(&events)).await.expect("append");
    let warehouse = Warehouse::parse("warehouse", dir.path()).expect("warehouse");
    let report = Projector::new(store.clone(), warehouse.clone(), "sales", "orders").run(&|_| {}).await.expect("run");
    assert_eq!(report.dead_letters, 3);

    let letters = store.dead_letters("sales", "orders", 100).await.expect("letters");
    assert_eq!(letters.len(), 3, "{letters:#?}");
    assert_eq!((letters[0].letter.table.as_str(), letters[0].letter.event_type.as_str()), ("orders", "OrderShipped"));
    assert!(letters[0].letter.reason.contains("no row with key [\"ORD-9\"]"), "{}", letters[0].letter.reason);
    assert!(letters[0].letter.reason.contains("`customer_id`"), "{}", letters[0].letter.reason);
    assert_eq!(letters[1].letter.table, "order_lines");
    assert!(
        letters[1].letter.reason.contains("unit_price") && letters[1].letter.reason.contains("after the point"),
        "{}",
        letters[1].letter.reason
    );
    assert!(
        letters[2].letter.reason.contains("`1234567890.0000000000000001` has more than 2 digits after the point"),
        "{}",
        letters[2].letter.reason
    );

    let orders = rows_of(&warehouse, "sales", "orders", "orders").await;
    assert_eq!(orders.len(), 1);
    assert!(orders[0].contains("shipped"), "the valid events went on: {orders:?}");
    assert_eq!(rows_of(&warehouse, "sales", "orders", "order_lines").await.len(), 1);

    // A retried run records nothing twice.
    let again = Projector::new(store.clone(), Warehouse::parse("again", dir.path()).expect("w"), "sales", "orders");
    let mut again = again;
    again.run(&|_| {}).await.expect("run");
    assert_eq!(store.dead_letters("sales", "orders", 100).await.expect("letters").len(), 3);
    assert_eq!(store.dead_letter_counts("sales", "orders", 1).await.expect("counts"), [("order_lines".into(), 2), ("orders".into(), 1)]);
    store.close().await;
}

/// Dead letters are stored before the commit that moves a table past their
/// events: when storing them fails (here a trigger refuses them; in life a
/// crash between the two), the table has not moved, and the next run
/// records them. The other way round they were lost.
#[tokio::test]
async fn dead_letters_are_stored_before_the_commit_that_skips_their_events() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with(dir.path(), "sales-orders").await;
    let events = [
        placed("ORD-1", 10.0, "EUR", 1),
        event("ORD-1", "OrderLineAdded", json!({"order_id": "ORD-1", "line_no": 1, "sku": "S", "quantity": 1, "unit_price": 0.125})),
        event("ORD-1", "OrderLineAdded", json!({"order_id": "ORD-1", "line_no": 2, "sku": "S", "quantity": 1, "unit_price": 0.25})),
    ];
    store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(&events)).await.expect("append");
    sqlx::raw_sql("CREATE TRIGGER refuse_letters BEFORE INSERT ON dead_letters BEGIN SELECT RAISE(ABORT, 'refused'); END")
        .execute(store.pool())
        .await
        .expect("trigger");
    let warehouse = Warehouse::parse("warehouse", dir.path()).expect("warehouse");
    let mut projector = Projector::new(store.clone(), warehouse.clone(), "sales", "orders");
    projector.run(&|_| {}).await.expect_err("storing the dead letter fails");
    let lines = rows_of(&warehouse, "sales", "orders", "order_lines").await;
    assert!(lines.is_empty(), "the table did not move past the dead letter's event: {lines:?}");

    sqlx::raw_sql("DROP TRIGGER refuse_letters").execute(store.pool()).await.expect("drop trigger");
    projector.reset();
    let report = projector.run(&|_| {}).await.expect("run");
    assert_eq!(report.dead_letters, 1);
    let letters = store.dead_letters("sales", "orders", 100).await.expect("letters");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert!(letters[0].letter.reason.contains("0.125"), "{}", letters[0].letter.reason);
    assert_eq!(rows_of(&warehouse, "sales", "orders", "order_lines").await.len(), 1);
    store.close().await;
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_rebuild_swaps_in_fresh_rows_and_a_fixed_contract_applies_its_dead_letters() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with(dir.path(), "sales-orders").await;
    let line = |n: i64, price: f64| {
        event("ORD-1", "OrderLineAdded", json!({"order_id": "ORD-1", "line_no": n, "sku": "S", "quantity": 1, "unit_price": price}))
    };
    let events = [placed("ORD-1", 10.0, "EUR", 1), line(1, 0.125), line(2, 0.25), line(3, 2.5)];
    store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(&events)).await.expect("append");
    let warehouse = Warehouse::parse("warehouse", dir.path()).expect("warehouse");
    let mut projector = Projector::new(store.clone(), warehouse.clone(), "sales", "orders").with_batch(2);
    assert_eq!(projector.run(&|_| {}).await.expect("run").dead_letters, 1);
    let before: Vec<_> = projector.tables().expect("tables").into_iter().map(|t| (t.name, t.stats.version)).collect();
    let lines = rows_of(&warehouse, "sales", "orders", "order_lines").await;
    assert_eq!(lines.len(), 2);

    let progress = std::sync::Mutex::new(Vec::new());
    let report = projector.rebuild(&|done, total| progress.lock().expect("lock").push((done, total))).await.expect("rebuild");
    assert_eq!(report["events"], 4, "{report}");
    assert_eq!(progress.lock().expect("lock").last(), Some(&(4, 4)));
    assert_eq!(rows_of(&warehouse, "sales", "orders", "order_lines").await, lines, "the same rows, rebuilt");
    for ((name, old), new) in before.iter().zip(projector.tables().expect("tables")) {
        assert_eq!(new.stats.version, old + 1, "{name}: the swap is one commit");
        assert_eq!(new.applied_position, store.head("sales", "orders").await.expect("head"));
    }
    assert_eq!(store.dead_letters("sales", "orders", 10).await.expect("letters").len(), 1);
    let staging = dir.path().join("warehouse/sales/orders/_staging");
    assert_eq!(files_under(&staging), 0, "the scratch tables are gone");
    // The versions before the swap are still readable.
    let url = warehouse.table_url("sales", "orders", 1, "order_lines");
    let old = tessera_projection::history::at_version(&url, u64::try_from(before[1].1).expect("version")).await.expect("old version");
    assert_eq!(tessera_projection::history::scan("order_lines", &old).await.expect("scan").iter().map(|b| b.num_rows()).sum::<usize>(), 2);

    // A minor version that widens the price to three decimals: the tables
    // are rewritten in the new type, and the price set aside fits now.
    let contract = std::fs::read_to_string(repo().join("products/sales-orders/contract.yaml")).expect("contract");
    let widened = contract
        .replacen("version: 1.2.0", "version: 1.3.0", 1)
        .replace(r#"unit_price: { type: "decimal(12,2)""#, r#"unit_price: { type: "decimal(13,3)""#);
    assert_ne!(widened, contract);
    store.publish(&owner("sales"), &widened).await.expect("a compatible minor version");
    let report = projector.run(&|_| {}).await.expect("run on the new version");
    assert_eq!(report.dead_letters, 0);
    let lines = rows_of(&warehouse, "sales", "orders", "order_lines").await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("0.125")), "{lines:#?}");
    assert!(store.dead_letters("sales", "orders", 10).await.expect("letters").is_empty());
    store.close().await;
}

/// Two processes share one database and warehouse: one projects, the other
/// stands by, and takes over within the lease once the first dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_lease_holder_dies() {
    use std::time::Duration;
    use tessera_projection::Projections;
    use tessera_projection::service::Options;

    let dir = tempfile::tempdir().expect("dir");
    let store = store_with(dir.path(), "sales-orders").await;
    let warehouse = Warehouse::parse("warehouse", dir.path()).expect("warehouse");
    let options = Options { lease: Duration::from_millis(1500), ..Options::default() };
    let events = std::fs::read(repo().join("products/sales-orders/events.ndjson")).expect("events");
    let outcome = store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, events).await.expect("append");

    let first = Projections::start_with(store.clone(), warehouse.clone(), options.clone());
    assert!(
        first.wait_for("sales", "orders", outcome.last_position.expect("position"), Duration::from_secs(60)).await,
        "{:?}",
        first.product("sales", "orders")
    );
    let second = Projections::start_with(store.clone(), warehouse.clone(), options.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while second.product("sales", "orders").is_none_or(|p| p.state != "standby") {
        assert!(std::time::Instant::now() < deadline, "the second process stands by: {:?}", second.product("sales", "orders"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.product("sales", "orders").map(|p| p.state), Some("running"));

    // The holder dies without a word: its lease runs out.
    drop(first);
    let more = [placed("ORD-LATE", 5.0, "EUR", 3)];
    let late = store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(&more)).await.expect("append");
    let started = std::time::Instant::now();
    assert!(
        second.wait_for("sales", "orders", late.last_position.expect("position"), Duration::from_secs(20)).await,
        "the standby took over: {:?}",
        second.product("sales", "orders")
    );
    assert!(started.elapsed() < Duration::from_secs(10), "within seconds: {:?}", started.elapsed());
    assert_eq!(second.product("sales", "orders").map(|p| p.state), Some("running"));
    let orders = rows_of(&warehouse, "sales", "orders", "orders").await;
    assert!(orders.iter().any(|r| r.starts_with("ORD-LATE |")), "{orders:?}");
    second.shutdown(Duration::from_secs(10)).await;
    store.close().await;
}

/// A minor version that adds a column evolves the tables in place: no
/// rebuild, old rows keep their values (the new column null), new rows
/// fill it.
#[tokio::test]
async fn a_minor_version_that_adds_a_column_evolves_the_table_in_place() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with(dir.path(), "sales-orders").await;
    let line =
        |n: i64| event("ORD-1", "OrderLineAdded", json!({"order_id": "ORD-1", "line_no": n, "sku": "S", "quantity": 1, "unit_price": 2.5}));
    store
        .append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(&[placed("ORD-1", 10.0, "EUR", 1), line(1)]))
        .await
        .expect("append");
    let warehouse = Warehouse::parse("warehouse", dir.path()).expect("warehouse");
    let mut projector = Projector::new(store.clone(), warehouse.clone(), "sales", "orders");
    projector.run(&|_| {}).await.expect("run");
    let before = projector.tables().expect("tables").into_iter().find(|t| t.name == "order_lines").expect("order_lines").stats.version;

    let contract = std::fs::read_to_string(repo().join("products/sales-orders/contract.yaml")).expect("contract");
    let evolved = contract.replacen("version: 1.2.0", "version: 1.3.0", 1).replacen(
        "            added_at: event.recorded_at\n",
        "            added_at: event.recorded_at\n            event_id: event.id\n",
        1,
    );
    let evolved = evolved.replacen(
        "      added_at: { type: timestamp, required: true, description: When the line was recorded }\n",
        "      added_at: { type: timestamp, required: true, description: When the line was recorded }\n      event_id: { type: string, description: The event that added the line }\n",
        1,
    );
    assert_ne!(evolved, contract);
    store.publish(&owner("sales"), &evolved).await.expect("a compatible minor version");
    store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(&[line(2)])).await.expect("append");
    projector.run(&|_| {}).await.expect("run on 1.3.0");

    let state = projector.tables().expect("tables").into_iter().find(|t| t.name == "order_lines").expect("order_lines");
    assert_eq!(state.stats.version, before + 2, "one commit adds the column, one appends: no rebuild");
    let url = warehouse.table_url("sales", "orders", 1, "order_lines");
    let table = deltalake::open_table(url).await.expect("open");
    assert!(table.snapshot().expect("snapshot").schema().field("event_id").is_some());
    let rows = rows_of(&warehouse, "sales", "orders", "order_lines").await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().any(|r| r.ends_with("| ∅")), "the old row has no event id: {rows:?}");
    assert!(rows.iter().any(|r| !r.ends_with("| ∅")), "the new row has one: {rows:?}");
    store.close().await;
}

/// Compaction rewrites an upsert table in key order (so that a lookup by
/// key prunes to one file and row group), in row groups of at most
/// [`tessera_projection::delta::ROW_GROUP_ROWS`] rows with a bloom filter
/// and no dictionary on the key, and changes no row.
#[tokio::test]
async fn compaction_writes_upsert_tables_in_key_order() {
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with(dir.path(), "sales-orders").await;
    let warehouse = Warehouse::parse("warehouse", dir.path()).expect("warehouse");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut ids: Vec<usize> = (0..1500).collect();
    rng.shuffle(&mut ids);
    // Three appends of keys in random order, each projected on its own: several files.
    let mut projector = Projector::new(store.clone(), warehouse.clone(), "sales", "orders").with_batch(200);
    for chunk in ids.chunks(500) {
        let events: Vec<Value> = chunk.iter().map(|i| placed(&format!("ORD-{i:05}"), 10.0, "EUR", 1 + (*i % 28) as u32)).collect();
        store.append_body(&owner("sales"), "sales", "orders", BodyFormat::Ndjson, ndjson(&events)).await.expect("append");
        projector.run(&|_| {}).await.expect("run");
    }
    let before = rows_of(&warehouse, "sales", "orders", "orders").await;
    assert_eq!(before.len(), 1500);
    let report = projector.compact(2).await.expect("compact");
    assert!(report["orders"]["files_added"].as_u64().is_some_and(|n| n >= 1), "{report}");
    assert_eq!(rows_of(&warehouse, "sales", "orders", "orders").await, before);

    let table = deltalake::open_table(warehouse.table_url("sales", "orders", 1, "orders")).await.expect("open");
    let files: Vec<String> = table.get_file_uris().expect("files").collect();
    assert!(!files.is_empty());
    for uri in files {
        let path = url::Url::parse(&uri).ok().and_then(|u| u.to_file_path().ok()).unwrap_or_else(|| uri.clone().into());
        let reader = SerializedFileReader::new(std::fs::File::open(&path).expect("file")).expect("parquet");
        let meta = reader.metadata();
        let key = meta.file_metadata().schema_descr().columns().iter().position(|c| c.name() == "order_id").expect("key column");
        let mut last: Option<Vec<u8>> = None;
        for group in meta.row_groups() {
            assert!(group.num_rows() as usize <= tessera_projection::delta::ROW_GROUP_ROWS);
            assert!(group.column(key).bloom_filter_offset().is_some(), "no bloom filter on the key in {uri}");
            // Distinct values: no dictionary page to read for one row.
            assert!(group.column(key).dictionary_page_offset().is_none(), "a dictionary on the key in {uri}");
            // Key order: each row group starts at or after the previous one's largest key.
            let stats = group.column(key).statistics().expect("key statistics");
            let (min, max) = (stats.min_bytes_opt().expect("min").to_vec(), stats.max_bytes_opt().expect("max").to_vec());
            if let Some(previous) = &last {
                assert!(min >= *previous, "row groups out of key order in {uri}");
            }
            last = Some(max);
        }
        // And every key in order within the file.
        let batches =
            deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).expect("file"))
                .expect("reader")
                .build()
                .expect("reader");
        let mut keys = Vec::new();
        for batch in batches {
            let batch = batch.expect("batch");
            let column =
                arrow::compute::cast(batch.column_by_name("order_id").expect("order_id"), &arrow::datatypes::DataType::Utf8).expect("cast");
            let column = column.as_any().downcast_ref::<arrow::array::StringArray>().expect("strings");
            keys.extend(column.iter().map(|k| k.map(str::to_owned)));
        }
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "keys out of order in {uri}");
    }
    store.close().await;
}
