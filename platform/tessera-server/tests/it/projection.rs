//! Projection through the server: events appended over HTTP become table
//! rows, and the API and `/metrics` tell how far each table is.

use serde_json::{Value, json};

use crate::on_both;
use crate::support::{ANALYST, ORDER_EVENTS, ORDERS, SALES, TestServer};

on_both!(
    rebuilds_in_a_row_while_events_arrive,
    appended_events_become_tables_with_lag_and_quality_in_the_api,
    dead_letters_are_listed_to_the_domain_only,
    an_entity_as_it_was_at_a_position_or_a_time,
    rebuild_compact_and_vacuum_on_request,
    a_new_major_version_is_projected_into_a_generation_of_its_own
);

fn table<'a>(product: &'a Value, name: &str) -> &'a Value {
    product["projection"]["tables"].as_array().and_then(|t| t.iter().find(|t| t["name"] == name)).unwrap_or(&Value::Null)
}

async fn appended_events_become_tables_with_lag_and_quality_in_the_api(s: &TestServer) {
    assert_eq!(s.publish(Some(SALES), ORDERS).await.0, 201);
    let (status, body) = s.append(Some(SALES), "sales/orders", "application/x-ndjson", ORDER_EVENTS).await;
    assert_eq!(status, 201, "{body}");
    let head = body["last_position"].as_i64().expect("position");
    let lines = ORDER_EVENTS.lines().filter(|l| l.contains("\"OrderLineAdded\"")).count();

    let product = s.projected("sales/orders", head).await;
    let p = &product["projection"];
    assert_eq!(p["state"], "running", "{p:#}");
    assert_eq!((p["lag_events"].as_i64(), p["degraded"].as_bool(), &p["error"]), (Some(0), Some(false), &Value::Null), "{p:#}");
    assert_eq!(p["generation"], "v1");
    let order_lines = table(&product, "order_lines");
    assert_eq!(order_lines["rows"].as_u64(), Some(lines as u64), "{order_lines:#}");
    assert_eq!(order_lines["kind"], "append");
    assert!(order_lines["files"].as_u64() >= Some(1) && order_lines["bytes"].as_i64() > Some(0), "{order_lines:#}");
    assert!(order_lines["location"].as_str().is_some_and(|l| l.ends_with("/sales/orders/v1/order_lines")), "{order_lines:#}");
    assert!(order_lines["last_commit_at"].is_string());
    let orders = table(&product, "orders");
    let checks = orders["quality"].as_array().expect("quality results");
    assert!(checks.len() >= 5 && checks.iter().all(|q| q["passed"] == true), "{orders:#}");
    assert!(table(&product, "daily_revenue")["rows"].as_u64() > Some(0));

    // Storage locations are the domain's business.
    for token in [Some(ANALYST), None] {
        let (_, seen) = s.get("/api/v1/products/sales/orders", token).await;
        assert_eq!(table(&seen, "order_lines")["location"], Value::Null, "{token:?}");
        assert_eq!(table(&seen, "order_lines")["rows"], order_lines["rows"]);
    }

    let metrics = s.http.get(s.url("/metrics")).send().await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("text");
    let labels = |t: &str| format!("{{domain=\"sales\",product=\"orders\",table=\"{t}\"}}");
    assert!(text.contains(&format!("tessera_projection_lag_events{} 0", labels("orders"))), "{text}");
    assert!(text.contains(&format!("tessera_table_rows{} {lines}", labels("order_lines"))), "{text}");
    assert!(
        text.contains("tessera_quality_check_passed{domain=\"sales\",product=\"orders\",table=\"orders\",check=\"unique(order_id)\"} 1"),
        "{text}"
    );
    assert!(text.contains("tessera_projection_lag_seconds"), "{text}");

    // More events: the projector wakes and applies them.
    let more = json!({"stream": "ORD-NEW", "type": "OrderPlaced", "schema_version": 2, "payload": {
        "order_id": "ORD-NEW", "customer": {"id": "CUS-1", "email": "ada@example.com"},
        "placed_at": "2026-02-01T10:00:00Z", "currency": "EUR", "total": 12.5}});
    let (status, body) = s.append(Some(SALES), "sales/orders", "application/json", json!([more]).to_string()).await;
    assert_eq!(status, 201, "{body}");
    let product = s.projected("sales/orders", body["last_position"].as_i64().expect("position")).await;
    assert_eq!(table(&product, "orders")["rows"].as_u64(), orders["rows"].as_u64().map(|n| n + 1));
    assert!(table(&product, "orders")["version"].as_i64() > orders["version"].as_i64());
}

async fn dead_letters_are_listed_to_the_domain_only(s: &TestServer) {
    assert_eq!(s.publish(Some(SALES), ORDERS).await.0, 201);
    let shipped = json!({"stream": "ORD-GHOST", "type": "OrderShipped", "schema_version": 1,
        "payload": {"order_id": "ORD-GHOST", "shipped_at": "2026-02-01T10:00:00Z"}});
    let (status, body) = s.append(Some(SALES), "sales/orders", "application/json", json!([shipped]).to_string()).await;
    assert_eq!(status, 201, "{body}");
    let position = body["last_position"].as_i64().expect("position");
    let product = s.projected("sales/orders", position).await;
    assert_eq!(table(&product, "orders")["dead_letters"], 1, "{product:#}");
    assert_eq!(table(&product, "orders")["rows"], 0);

    let (status, body) = s.get("/api/v1/products/sales/orders/dead-letters", Some(SALES)).await;
    assert_eq!(status, 200, "{body}");
    let letters = body["dead_letters"].as_array().expect("list");
    assert_eq!(letters.len(), 1, "{body:#}");
    assert_eq!((letters[0]["table"].as_str(), letters[0]["position"].as_i64()), (Some("orders"), Some(position)));
    assert!(letters[0]["reason"].as_str().is_some_and(|r| r.contains("ORD-GHOST")), "{body:#}");

    assert_eq!(s.get("/api/v1/products/sales/orders/dead-letters", Some(ANALYST)).await.0, 403);
    assert_eq!(s.get("/api/v1/products/sales/orders/dead-letters", None).await.0, 401);
    assert_eq!(s.get("/api/v1/products/sales/nope/dead-letters", Some(SALES)).await.0, 404);
    let metrics = s.http.get(s.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("tessera_projection_dead_letters{domain=\"sales\",product=\"orders\",table=\"orders\"} 1"), "{metrics}");
}

async fn an_entity_as_it_was_at_a_position_or_a_time(s: &TestServer) {
    assert_eq!(s.publish(Some(SALES), ORDERS).await.0, 201);
    let placed = json!({"stream": "ORD-T", "type": "OrderPlaced", "schema_version": 2, "payload": {
        "order_id": "ORD-T", "customer": {"id": "CUS-1", "email": "ada@example.com"},
        "placed_at": "2026-02-01T10:00:00Z", "currency": "EUR", "total": 12.5}});
    let line = json!({"stream": "ORD-T", "type": "OrderLineAdded", "schema_version": 1,
        "payload": {"order_id": "ORD-T", "line_no": 1, "sku": "SKU-1", "quantity": 2, "unit_price": 6.25}});
    let other = json!({"stream": "ORD-U", "type": "OrderPlaced", "schema_version": 2, "payload": {
        "order_id": "ORD-U", "customer": {"id": "CUS-2", "email": "bo@example.com"},
        "placed_at": "2026-02-01T11:00:00Z", "currency": "EUR", "total": 3}});
    let (_, first) = s.append(Some(SALES), "sales/orders", "application/json", json!([placed, line, other]).to_string()).await;
    let placed_at = first["last_position"].as_i64().expect("position");
    s.projected("sales/orders", placed_at).await;
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let shipped = json!({"stream": "ORD-T", "type": "OrderShipped", "schema_version": 1,
        "payload": {"order_id": "ORD-T", "shipped_at": "2026-02-02T09:00:00Z"}});
    let (_, second) = s.append(Some(SALES), "sales/orders", "application/json", json!([shipped]).to_string()).await;
    s.projected("sales/orders", second["last_position"].as_i64().expect("position")).await;

    let state = |as_of: &str| {
        let path = format!("/api/v1/products/sales/orders/streams/ORD-T/state{as_of}");
        async move { s.get(&path, Some(SALES)).await }
    };
    let (status, now) = state("").await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["tables"]["orders"].as_array().map(Vec::len), Some(1), "{now:#}");
    assert_eq!(now["tables"]["orders"][0]["status"], "shipped");
    assert_eq!(now["tables"]["order_lines"][0]["quantity"], 2);
    assert!(now["tables"].get("daily_revenue").is_none(), "derived tables hold no entity");

    for as_of in [format!("?as_of={placed_at}"), format!("?as_of={between}")] {
        let (status, then) = state(&as_of).await;
        assert_eq!(status, 200, "{then}");
        assert_eq!(then["as_of_position"], placed_at, "{as_of}");
        assert_eq!(then["tables"]["orders"][0]["status"], "placed", "{as_of}: {then:#}");
        assert_eq!(then["tables"]["orders"][0]["shipped_at"], Value::Null);
        assert_eq!(then["tables"]["orders"][0]["customer_email"], "ada@example.com");
    }
    let (_, before) = state("?as_of=0").await;
    assert_eq!(before["tables"]["orders"], json!([]), "{before:#}");

    let (status, body) = state("?as_of=yesterday").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_as_of")), "{body}");
    // Anyone may read an entity's state, masked for them by the same masks as SQL.
    let (status, analyst) = s.get("/api/v1/products/sales/orders/streams/ORD-T/state", Some(ANALYST)).await;
    assert_eq!(status, 200, "{analyst}");
    assert_eq!(analyst["tables"]["orders"][0]["customer_email"], "***@example.com", "{analyst:#}");
    assert_eq!(analyst["tables"]["orders"][0]["status"], "shipped");
    assert_eq!(analyst["tables"]["orders"][0]["total"], now["tables"]["orders"][0]["total"]);
    let (status, public) = s.get("/api/v1/products/sales/orders/streams/ORD-T/state?as_of=0", None).await;
    assert_eq!((status, &public["tables"]["orders"]), (200, &json!([])), "{public}");
    let (_, public) = s.get("/api/v1/products/sales/orders/streams/ORD-T/state", None).await;
    assert_eq!(public["tables"]["orders"][0]["customer_email"], "***", "{public:#}");
}

/// Asks for a command and waits for its end.
/// Rebuild after rebuild while events keep arriving: every one finishes,
/// and appends never wait on a rebuild's progress reports (they once
/// deadlocked on SQLite's write lock, found by schemathesis).
async fn rebuilds_in_a_row_while_events_arrive(s: &TestServer) {
    assert_eq!(s.publish(Some(SALES), ORDERS).await.0, 201);
    let lines: Vec<&str> = ORDER_EVENTS.lines().collect();
    let (first, rest) = lines.split_at(lines.len() / 2);
    let (status, _) = s.append(Some(SALES), "sales/orders", "application/x-ndjson", first.join("\n")).await;
    assert_eq!(status, 201);
    let chunks: Vec<String> = rest.chunks(rest.len() / 6 + 1).map(|c| c.join("\n")).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let appended = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            s.append(Some(SALES), "sales/orders", "application/x-ndjson", chunk.clone()),
        );
        let (rebuilt, appended) = tokio::join!(run_command(s, "rebuild"), appended);
        assert_eq!(rebuilt["state"], "done", "rebuild {i}: {rebuilt:#}");
        let (status, body) = appended.unwrap_or_else(|_| panic!("append {i} waited more than 30 s beside a rebuild"));
        assert_eq!(status, 201, "{body}");
    }
}

async fn run_command(s: &TestServer, kind: &str) -> Value {
    let (status, command) = s.post_json("/api/v1/products/sales/orders/commands", Some(SALES), json!({"kind": kind})).await;
    assert_eq!(status, 202, "{command}");
    let id = command["id"].as_i64().expect("id");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, command) = s.get(&format!("/api/v1/products/sales/orders/commands/{id}"), Some(SALES)).await;
        assert_eq!(status, 200, "{command}");
        if matches!(command["state"].as_str(), Some("done" | "failed")) {
            return command;
        }
        assert!(std::time::Instant::now() < deadline, "{kind} did not finish within a minute: {command}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn rebuild_compact_and_vacuum_on_request(s: &TestServer) {
    assert_eq!(s.publish(Some(SALES), ORDERS).await.0, 201);
    let (_, body) = s.append(Some(SALES), "sales/orders", "application/x-ndjson", ORDER_EVENTS).await;
    let before = s.projected("sales/orders", body["last_position"].as_i64().expect("position")).await;

    let rebuilt = run_command(s, "rebuild").await;
    assert_eq!(rebuilt["state"], "done", "{rebuilt:#}");
    let events = ORDER_EVENTS.lines().count() as i64;
    assert_eq!((rebuilt["progress"].as_i64(), rebuilt["target"].as_i64()), (Some(events), Some(events)), "{rebuilt:#}");
    assert_eq!(rebuilt["outcome"]["events"], events);
    let (_, after) = s.get("/api/v1/products/sales/orders", Some(SALES)).await;
    for name in ["orders", "order_lines", "daily_revenue"] {
        let (old, new) = (table(&before, name), table(&after, name));
        assert_eq!(new["version"].as_i64(), old["version"].as_i64().map(|v| v + 1), "{name}: one commit swaps it");
        assert_eq!(new["rows"], old["rows"], "{name}");
        assert_eq!(new["lag_events"], 0, "{name}");
    }

    let compacted = run_command(s, "compact").await;
    assert_eq!(compacted["state"], "done", "{compacted:#}");
    let vacuumed = run_command(s, "vacuum").await;
    assert_eq!(vacuumed["state"], "done", "{vacuumed:#}");
    // Inside the retention window every version is still readable.
    let url = s.projections.warehouse().table_url("sales", "orders", 1, "orders");
    let first = table(&before, "orders")["version"].as_u64().expect("version");
    let old = tessera_projection::history::at_version(&url, first).await.expect("an old version after vacuum");
    let rows: usize = tessera_projection::history::scan("orders", &old).await.expect("scan").iter().map(|b| b.num_rows()).sum();
    assert_eq!(Some(rows as u64), table(&before, "orders")["rows"].as_u64());
    let (_, after) = s.get("/api/v1/products/sales/orders", Some(SALES)).await;
    assert_eq!(table(&after, "orders")["rows"], table(&before, "orders")["rows"]);

    let post = |token: Option<&'static str>, body: Value| {
        s.call(reqwest::Method::POST, "/api/v1/products/sales/orders/commands", token, Some("application/json"), body.to_string())
    };
    assert_eq!(post(Some(ANALYST), json!({"kind": "rebuild"})).await.0, 403);
    assert_eq!(post(None, json!({"kind": "rebuild"})).await.0, 401);
    let (status, body) = post(Some(SALES), json!({"kind": "drop"})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_command")), "{body}");
    assert_eq!(s.get("/api/v1/products/sales/orders/commands/999999", Some(SALES)).await.0, 404);
}

async fn a_new_major_version_is_projected_into_a_generation_of_its_own(s: &TestServer) {
    assert_eq!(s.publish(Some(SALES), ORDERS).await.0, 201);
    let (_, body) = s.append(Some(SALES), "sales/orders", "application/x-ndjson", ORDER_EVENTS).await;
    let head = body["last_position"].as_i64().expect("position");
    let v1 = s.projected("sales/orders", head).await;
    assert_eq!(v1["projection"]["generations"][0]["state"], "live", "{:#}", v1["projection"]);

    // 2.0.0 drops a column: a breaking change, so a new generation. It also
    // hides the customer's email from analysts altogether.
    let v2 = ORDERS
        .replacen("version: 1.2.0", "version: 2.0.0", 1)
        .replace("            channel: payload.channel\n", "")
        .replace("      channel: { type: string, description: Where the order was placed }\n", "")
        .replacen("        classification: pii.email\n", "        classification: pii.email\n        masking: { analyst: \"null\" }\n", 1);
    assert!(v2.contains("masking: { analyst: \"null\" }"), "the email column is where the test expects it");
    let (status, body) = s.publish(Some(SALES), &v2).await;
    assert_eq!(status, 201, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let product = loop {
        let (_, product) = s.get("/api/v1/products/sales/orders", Some(SALES)).await;
        let generations = &product["projection"]["generations"];
        if generations[1]["state"] == "live" && product["projection"]["generation"] == "v2" {
            break product;
        }
        assert!(std::time::Instant::now() < deadline, "v2 did not go live: {:#}", product["projection"]);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let p = &product["projection"];
    assert_eq!((p["generation"].as_str(), p["contract_version"].as_str()), (Some("v2"), Some("2.0.0")), "{p:#}");
    assert_eq!(p["generations"][0]["state"], "previous", "v1 stays readable until retired: {p:#}");
    let orders = table(&product, "orders");
    assert!(orders["location"].as_str().is_some_and(|l| l.ends_with("/sales/orders/v2/orders")), "{orders:#}");
    assert_eq!(orders["rows"], table(&v1, "orders")["rows"], "the whole log, projected again");
    assert_eq!(orders["applied_position"], head);

    // Both generations are there, each with its own columns.
    let warehouse = s.projections.warehouse();
    for (major, has_channel) in [(1, true), (2, false)] {
        let table = deltalake::open_table(warehouse.table_url("sales", "orders", major, "orders")).await.expect("open");
        let schema = table.snapshot().expect("snapshot").schema();
        assert_eq!(schema.field("channel").is_some(), has_channel, "v{major}");
    }

    // SQL reads both: the live one by the product's name, the previous one as "orders@v1",
    // which masks at least as strictly as the live version (the email is null for analysts there too).
    let sql = |token: &'static str, query: &'static str| async move {
        s.call(reqwest::Method::POST, "/api/v1/sql", Some(token), Some("application/json"), json!({ "sql": query }).to_string()).await
    };
    let previous =
        "SELECT count(*) AS n, count(channel) AS with_channel, count(customer_email) AS with_email FROM sales.\"orders@v1\".orders";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let owner = loop {
        let (status, body) = sql(SALES, previous).await;
        if status == 200 || std::time::Instant::now() > deadline {
            assert_eq!(status, 200, "{body}");
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let rows = table(&v1, "orders")["rows"].as_i64().expect("rows");
    assert_eq!(owner["rows"][0][0], rows, "{owner}");
    assert!(owner["rows"][0][1].as_i64() > Some(0) && owner["rows"][0][2].as_i64() > Some(0), "{owner}");
    let (status, analyst) = sql(ANALYST, previous).await;
    assert_eq!(status, 200, "{analyst}");
    assert_eq!((analyst["rows"][0][0].as_i64(), analyst["rows"][0][2].as_i64()), (Some(rows), Some(0)), "{analyst}");
    let (status, live) = sql(ANALYST, "SELECT count(customer_email) FROM sales.orders.orders").await;
    assert_eq!((status, live["rows"][0][0].as_i64()), (200, Some(0)), "{live}");
    let (status, body) = sql(ANALYST, "SELECT channel FROM sales.orders.orders").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "v2 has no channel: {body}");

    let retire = |major: &str| {
        let path = format!("/api/v1/products/sales/orders/generations/{major}/retire");
        async move { s.call(reqwest::Method::POST, &path, Some(SALES), None, "").await }
    };
    let (status, body) = retire("v2").await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")), "the live generation stays: {body}");
    let (status, body) = retire("1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generations"][0]["state"], "retired", "{body}");
    assert_eq!(retire("v9").await.0, 404);
    assert_eq!(retire("latest").await.0, 400);
    let (status, body) = sql(SALES, previous).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "a retired generation is not served: {body}");
}
