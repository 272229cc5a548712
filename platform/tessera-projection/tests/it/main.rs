//! Delta tables in a local directory: create, append with the applied
//! position, reopen and resume, read back through DataFusion.

#![allow(clippy::print_stderr)] // Tests say what they skipped.

mod duckdb;
mod history;
mod projector;
mod s3;

use arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::SessionContext;
use serde_json::json;
use tessera_projection::delta;

#[tokio::test]
async fn a_commit_carries_its_position_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = deltalake::ensure_table_uri(dir.path().join("sales/orders/v1/order_lines").to_string_lossy()).expect("url");
    let schema = Schema::new(vec![Field::new("order_id", DataType::Utf8, false), Field::new("quantity", DataType::Int32, true)]);
    let table = delta::open_or_create(&url, "order_lines", &schema).await.expect("create");
    let app = "tessera/sales/orders/v1/order_lines";
    assert_eq!(delta::applied(&table, &url, app).await.expect("txn"), None);

    let rows = [json!({"order_id": "ORD-1", "quantity": 2}), json!({"order_id": "ORD-2", "quantity": null})];
    let batch = delta::batch("order_lines", &schema, &rows).expect("batch");
    let table = delta::append(table, &url, vec![batch], app, 42, "1.2.0").await.expect("append");
    assert_eq!(delta::applied(&table, &url, app).await.expect("txn"), Some(42));

    // Another process: open the same table and find the position there.
    let again = delta::open_or_create(&url, "order_lines", &schema).await.expect("reopen");
    assert_eq!(again.version(), table.version());
    assert_eq!(delta::applied(&again, &url, app).await.expect("txn"), Some(42));

    let ctx = SessionContext::new();
    ctx.register_table("order_lines", again.table_provider().await.expect("provider")).expect("register");
    let out = ctx.sql("SELECT order_id, quantity FROM order_lines ORDER BY order_id").await.expect("sql").collect().await.expect("rows");
    let text = arrow::util::pretty::pretty_format_batches(&out).expect("format").to_string();
    assert!(text.contains("ORD-1") && text.contains("| 2 ") && text.contains("ORD-2"), "{text}");
}

/// The sample events of sales/orders, through the real store, into the
/// append table `order_lines`: one row per `OrderLineAdded`, no dead letter,
/// the same rows read back through DataFusion.
#[tokio::test]
async fn sample_order_lines_from_the_store_into_delta() {
    use tessera_contract::{Policy, Role};
    use tessera_projection::rows::append_rows;
    use tessera_store::{BodyFormat, Principal, Store};

    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let contract_text = std::fs::read_to_string(repo.join("products/sales-orders/contract.yaml")).expect("contract");
    let events_text = std::fs::read(repo.join("products/sales-orders/events.ndjson")).expect("events");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        &tessera_store::db::sqlite_url(dir.path()),
        Policy::builtin(),
        tessera_store::Kek::parse(&"7e".repeat(32)).expect("a test key-encryption key"),
    )
    .await
    .expect("store");
    let owner = Principal { name: "sales-owner".into(), roles: vec![Role::Owner], domains: vec!["sales".into()] };
    store.publish(&owner, &contract_text).await.expect("publish");
    store.append_body(&owner, "sales", "orders", BodyFormat::Ndjson, events_text).await.expect("append");
    let log = store.read_log(&owner, "sales", "orders", 0, 10_000).await.expect("read").events;
    let lines_added = log.iter().filter(|e| e.event_type == "OrderLineAdded").count();

    let contract = tessera_contract::lint(&contract_text, &Policy::builtin()).contract.expect("contract");
    let table = &contract.tables["order_lines"];
    let (rows, dead) = append_rows("order_lines", table, &log);
    assert_eq!(dead, []);
    assert_eq!(rows.len(), lines_added);

    let schema = tessera_projection::schema::table_schema(table);
    let url = deltalake::ensure_table_uri(dir.path().join("warehouse/sales/orders/v1/order_lines").to_string_lossy()).expect("url");
    let delta_table = delta::open_or_create(&url, "order_lines", &schema).await.expect("create");
    let batch = delta::batch("order_lines", &schema, &rows).expect("batch");
    let last = log.last().expect("events").position;
    let delta_table =
        delta::append(delta_table, &url, vec![batch], "tessera/sales/orders/v1/order_lines", last, "1.2.0").await.expect("commit");

    let ctx = SessionContext::new();
    ctx.register_table("order_lines", delta_table.table_provider().await.expect("provider")).expect("register");
    let out = ctx.sql("SELECT count(*) AS n, sum(quantity) AS q FROM order_lines").await.expect("sql").collect().await.expect("rows");
    let n = out[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().expect("count").value(0);
    assert_eq!(n as usize, lines_added);
    let expected_quantity: i64 =
        log.iter().filter(|e| e.event_type == "OrderLineAdded").map(|e| e.payload["quantity"].as_i64().expect("quantity")).sum();
    let q = out[0].column(1).as_any().downcast_ref::<arrow::array::Int64Array>().expect("sum").value(0);
    assert_eq!(q, expected_quantity);
    store.close().await;
}
