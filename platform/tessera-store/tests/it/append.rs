//! Appending: validation, atomicity, idempotency, upcasting, authorization,
//! notifications.

use std::time::Duration;

use serde_json::json;
use sqlx::Row;
use tessera_store::{Error, EventInput, Expected, Principal};
use uuid::Uuid;

use crate::on_both;
use crate::support::{TestDb, analyst, line_added, owner, read_whole_log, sample_orders, with_orders};

on_both!(
    sample_events_load_in_order,
    idempotent_resend_stores_nothing,
    resend_mixed_with_repeats_and_new_events,
    payloads_are_stored_faithfully,
    a_resend_with_numbers_written_otherwise_is_the_same_event,
    same_id_other_payload_is_a_conflict,
    one_bad_event_stores_nothing,
    old_payloads_come_back_upcast,
    expected_versions,
    who_may_append_and_read,
    unknown_product_and_event_type,
    appends_wake_subscribers,
    the_bulk_read_gives_what_the_general_read_gives,
);

async fn sample_events_load_in_order(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let samples = sample_orders();
    let n = samples.len();
    let outcome = store.append(&owner("sales"), "sales", "orders", samples).await.expect("append samples");
    assert_eq!((outcome.appended, outcome.duplicates), (n, 0));
    let positions: Vec<i64> = outcome.events.iter().map(|e| e.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions follow request order");
    // Read the whole log back in pages.
    let read = read_whole_log(store, "sales", "orders", n).await;
    assert_eq!(read.len(), n);
    assert_eq!(read.iter().map(|e| e.position).collect::<Vec<_>>(), positions);
    assert_eq!(store.head("sales", "orders").await.expect("head"), *positions.last().expect("some"));
}

async fn idempotent_resend_stores_nothing(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let batch: Vec<_> = sample_orders().into_iter().take(200).collect();
    let first = store.append(&owner("sales"), "sales", "orders", batch.clone()).await.expect("first");
    assert_eq!(first.appended, 200);
    let count = db.count_events().await;
    let again = store.append(&owner("sales"), "sales", "orders", batch).await.expect("resend");
    assert_eq!((again.appended, again.duplicates), (0, 200));
    assert!(again.events.iter().all(|e| e.duplicate));
    assert_eq!(
        again.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        first.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        "a resend returns the original positions"
    );
    assert_eq!(db.count_events().await, count, "nothing new stored");
}

/// One request holding events already stored, an event repeated within the
/// request, and new events of a stream that already has some: each new event
/// takes the next version of its stream, the others answer as duplicates.
async fn resend_mixed_with_repeats_and_new_events(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let sales = owner("sales");
    let with_id = |stream: &str, line: u64| EventInput { id: Some(Uuid::now_v7()), ..line_added(stream, line) };
    let (a1, a2) = (with_id("ORD-A", 1), with_id("ORD-A", 2));
    let first = store.append(&sales, "sales", "orders", vec![a1.clone(), a2.clone()]).await.expect("first");
    let count = db.count_events().await;
    let (a3, b1) = (with_id("ORD-A", 3), with_id("ORD-B", 1));
    let request = vec![a3.clone(), a1, b1.clone(), a3, a2, line_added("ORD-A", 4)];
    let out = store.append(&sales, "sales", "orders", request).await.expect("mixed request");
    assert_eq!((out.appended, out.duplicates), (3, 3));
    let placed: Vec<(&str, i64, bool)> = out.events.iter().map(|e| (e.stream.as_str(), e.version, e.duplicate)).collect();
    assert_eq!(
        placed,
        [("ORD-A", 3, false), ("ORD-A", 1, true), ("ORD-B", 1, false), ("ORD-A", 3, true), ("ORD-A", 2, true), ("ORD-A", 4, false)]
    );
    assert_eq!(out.events[1].position, first.events[0].position, "a stored event answers with its original position");
    assert_eq!(out.events[3].position, out.events[0].position, "a repeat answers as the event it repeats");
    assert!(
        out.events[0].position < out.events[2].position && out.events[2].position < out.events[5].position,
        "new events in request order"
    );
    assert_eq!(db.count_events().await, count + 3);
    let stream = store.read_stream(&sales, "sales", "orders", "ORD-A", 1, 10).await.expect("read ORD-A");
    assert_eq!(stream.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(stream[2].id, out.events[0].id);
    assert_eq!(
        stream.iter().map(|e| e.position).collect::<Vec<_>>(),
        [first.events[0].position, first.events[1].position, out.events[0].position, out.events[5].position]
    );
}

/// Payloads and metadata come back as sent: escapes, characters outside
/// ASCII, integers beyond a double's precision, decimals and exponents.
async fn payloads_are_stored_faithfully(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let mut event = line_added("ORD-Ü", 1);
    event.payload["sku"] = json!("Ünïcödé \"quoted\" back\\slash\nnew line\t tab \u{0} nul 🎉 </script>");
    event.payload["quantity"] = json!(9_007_199_254_740_993u64);
    event.payload["unit_price"] = serde_json::from_str("1.50").expect("number");
    event.payload["note"] = serde_json::from_str(
        r#"{"tiny": 1e-7, "big": -12345678901234.5, "exact": 12345678901234567.890123456789, "list": [0, -0.0, true, null, {}, []]}"#,
    )
    .expect("json");
    event.metadata.insert("correlation_id".into(), json!("c-1"));
    event.metadata.insert("trace".into(), json!({"spans": [1, 2, 3], "ok": true}));
    let sent = event.clone();
    store.append(&owner("sales"), "sales", "orders", vec![event]).await.expect("append");
    let stored = store.read_stream(&owner("sales"), "sales", "orders", "ORD-Ü", 1, 1).await.expect("read");
    assert_eq!(stored[0].payload, sent.payload);
    assert_eq!(stored[0].payload["quantity"].as_u64(), Some(9_007_199_254_740_993));
    // A number is stored as it was written, digit for digit: more digits
    // than a float holds are not rounded away, nor `1.50` made `1.5`.
    assert_eq!(stored[0].payload["note"]["exact"].to_string(), "12345678901234567.890123456789");
    assert_eq!(stored[0].payload["unit_price"].to_string(), "1.50");
    assert_eq!(stored[0].metadata["trace"], sent.metadata["trace"]);
    assert_eq!(stored[0].metadata["correlation_id"], json!("c-1"));
    assert_eq!(stored[0].metadata["principal"], json!("sales-owner"));
}

/// Numbers are stored as written, but a resend compares them by value: a
/// producer (or a payload stored before numbers were kept as written) that
/// prints `19.90` as `19.9` resends the same event.
async fn a_resend_with_numbers_written_otherwise_is_the_same_event(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let number = |t: &str| serde_json::from_str::<serde_json::Value>(t).expect("number");
    let mut event = line_added("ORD-N", 1);
    event.id = Some(Uuid::now_v7());
    event.payload["unit_price"] = number("19.90");
    store.append(&owner("sales"), "sales", "orders", vec![event.clone()]).await.expect("append");
    let mut again = event.clone();
    again.payload["unit_price"] = number("1.99e1");
    let out = store.append(&owner("sales"), "sales", "orders", vec![again]).await.expect("resend");
    assert_eq!((out.appended, out.duplicates), (0, 1));
    let mut other = event;
    other.payload["unit_price"] = number("19.91");
    let err = store.append(&owner("sales"), "sales", "orders", vec![other]).await.expect_err("another price");
    assert!(matches!(err, Error::EventIdConflict { .. }), "{err}");
}

async fn same_id_other_payload_is_a_conflict(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let id = Uuid::now_v7();
    let mut event = line_added("ORD-1", 1);
    event.id = Some(id);
    store.append(&owner("sales"), "sales", "orders", vec![event.clone()]).await.expect("first");
    let count = db.count_events().await;
    event.payload["quantity"] = json!(99);
    let fresh = line_added("ORD-2", 1);
    match store.append(&owner("sales"), "sales", "orders", vec![fresh, event]).await {
        Err(Error::EventIdConflict { index, id: conflicting, .. }) => assert_eq!((index, conflicting), (1, id)),
        other => panic!("expected event_id_conflict, got {other:?}"),
    }
    assert_eq!(db.count_events().await, count, "the fresh event of the refused request was not stored either");
}

async fn one_bad_event_stores_nothing(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let mut batch: Vec<_> = (1..=10).map(|i| line_added(&format!("ORD-{i}"), 1)).collect();
    batch[7].payload["quantity"] = json!("many");
    batch[3].payload.as_object_mut().expect("object").remove("sku");
    match store.append(&owner("sales"), "sales", "orders", batch).await {
        Err(Error::InvalidEvents { problems }) => {
            let found: Vec<(usize, &str, &str)> = problems.iter().map(|p| (p.index, p.pointer.as_str(), p.code)).collect();
            assert_eq!(found, [(3, "/payload", "payload_invalid"), (7, "/payload/quantity", "payload_invalid")]);
            assert!(problems[1].message.contains("rule `type`"), "{}", problems[1].message);
            assert!(problems[0].message.contains("\"sku\" is a required property"), "{}", problems[0].message);
        }
        other => panic!("expected invalid_events, got {other:?}"),
    }
    assert_eq!(db.count_events().await, 0);
}

async fn old_payloads_come_back_upcast(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let v1 = sample_orders().into_iter().find(|e| e.event_type == "OrderPlaced" && e.schema_version == Some(1)).expect("a v1 sample");
    let original = v1.payload.clone();
    let stream = v1.stream.clone();
    store.append(&owner("sales"), "sales", "orders", vec![v1]).await.expect("append v1");
    let events = store.read_stream(&owner("sales"), "sales", "orders", &stream, 1, 10).await.expect("read");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!((e.stored_schema_version, e.schema_version), (1, 2));
    assert!(e.payload["customer"]["email"].is_string(), "moved into customer: {}", e.payload);
    assert!(e.payload.get("customer_email").is_none());
    assert_eq!(e.payload["currency"], json!("EUR"), "defaulted");
    // Read by the owner, the personal fields are open again.
    assert_eq!(e.payload["customer"]["email"], original["customer_email"]);
    assert_eq!(e.payload["customer"]["name"], original["customer"]["name"]);
    // Stored as written, at its own version, but with its personal fields
    // (where version 1 had them) sealed: nothing clear in the database.
    let stored: String = sqlx::query("SELECT payload FROM events").fetch_one(store.pool()).await.expect("row").try_get(0).expect("payload");
    let stored: serde_json::Value = serde_json::from_str(&stored).expect("json");
    for key in ["order_id", "customer_id", "placed_at", "total", "channel"] {
        assert_eq!(stored[key], original[key], "{key} is not personal: stored as written");
    }
    for pointer in ["/customer_email", "/customer/name"] {
        assert!(stored.pointer(pointer).and_then(|v| v.as_str()).is_some_and(|t| t.starts_with("tsr1.")), "{pointer} sealed: {stored}");
    }
    let text = stored.to_string();
    for clear in [original["customer_email"].as_str().expect("email"), original["customer"]["name"].as_str().expect("name")] {
        assert!(!text.contains(clear), "{clear} is stored in clear: {text}");
    }
}

async fn expected_versions(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let sales = owner("sales");
    let mut e = line_added("ORD-9", 1);
    e.expected = Expected::NoStream;
    store.append(&sales, "sales", "orders", vec![e.clone()]).await.expect("new stream");
    match store.append(&sales, "sales", "orders", vec![e.clone()]).await {
        Err(Error::WrongExpectedVersion { index, stream, actual, .. }) => assert_eq!((index, stream.as_str(), actual), (0, "ORD-9", 1)),
        other => panic!("expected wrong_expected_version, got {other:?}"),
    }
    // Several events of one stream in one request: each expects the one before.
    let mut a = line_added("ORD-9", 2);
    a.expected = Expected::Exactly(1);
    let mut b = line_added("ORD-9", 3);
    b.expected = Expected::Exactly(2);
    let out = store.append(&sales, "sales", "orders", vec![a, b]).await.expect("chain");
    assert_eq!(out.events.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(store.stream_version("sales", "orders", "ORD-9").await.expect("version"), 3);
    // A stale expectation in the middle of a request refuses all of it.
    let fresh = line_added("ORD-10", 1);
    let mut stale = line_added("ORD-9", 4);
    stale.expected = Expected::Exactly(2);
    let count = db.count_events().await;
    assert!(matches!(store.append(&sales, "sales", "orders", vec![fresh, stale]).await, Err(Error::WrongExpectedVersion { index: 1, .. })));
    assert_eq!(db.count_events().await, count);
}

async fn who_may_append_and_read(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let event = || vec![line_added("ORD-1", 1)];
    assert!(matches!(store.append(&Principal::public(), "sales", "orders", event()).await, Err(Error::Unauthenticated(_))));
    assert!(matches!(store.append(&owner("payments"), "sales", "orders", event()).await, Err(Error::Forbidden(_))));
    assert!(matches!(store.append(&analyst(), "sales", "orders", event()).await, Err(Error::Forbidden(_))));
    assert_eq!(db.count_events().await, 0);
    store.append(&owner("sales"), "sales", "orders", event()).await.expect("member appends");
    assert!(matches!(store.read_log(&analyst(), "sales", "orders", 0, 10).await, Err(Error::Forbidden(_))));
    assert!(matches!(store.read_log(&Principal::public(), "sales", "orders", 0, 10).await, Err(Error::Unauthenticated(_))));
    assert!(matches!(store.read_stream(&owner("payments"), "sales", "orders", "ORD-1", 1, 10).await, Err(Error::Forbidden(_))));
}

async fn unknown_product_and_event_type(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    assert!(matches!(store.append(&owner("sales"), "sales", "returns", vec![line_added("R-1", 1)]).await, Err(Error::NotFound { .. })));
    let mut e = line_added("ORD-1", 1);
    e.event_type = "OrderLineAddded".into();
    match store.append(&owner("sales"), "sales", "orders", vec![e]).await {
        Err(Error::InvalidEvents { problems }) => {
            assert_eq!((problems[0].pointer.as_str(), problems[0].code), ("/type", "unknown_event_type"));
            assert!(problems[0].message.contains("OrderLineAdded"), "lists the event types: {}", problems[0].message);
        }
        other => panic!("expected invalid_events, got {other:?}"),
    }
    let mut future = line_added("ORD-1", 1);
    future.schema_version = Some(7);
    assert!(matches!(store.append(&owner("sales"), "sales", "orders", vec![future]).await, Err(Error::InvalidEvents { .. })));
    assert_eq!(db.count_events().await, 0);
}

async fn appends_wake_subscribers(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    // Another handle on the database, as another server process would have.
    let other = db.another_store().await;
    let mut here = store.subscribe();
    let mut there = other.subscribe();
    let out = store.append(&owner("sales"), "sales", "orders", vec![line_added("ORD-1", 1)]).await.expect("append");
    let last = out.last_position.expect("stored");
    let n = tokio::time::timeout(Duration::from_secs(5), here.recv()).await.expect("woken in time").expect("notification");
    assert_eq!((n.product.as_str(), n.position), ("sales/orders", last));
    if store.backend() == tessera_store::Backend::Postgres {
        // Across processes through LISTEN/NOTIFY.
        let n = tokio::time::timeout(Duration::from_secs(5), there.recv()).await.expect("woken across processes").expect("notification");
        assert_eq!((n.product.as_str(), n.position), ("sales/orders", last));
    }
    other.close().await;
}

/// The projector's bulk read (rusqlite on SQLite, binary `COPY` on
/// PostgreSQL) gives every event exactly as the general read does: text
/// with escapes, characters outside ASCII and a NUL, numbers as written,
/// ids, times, old payloads upcast.
async fn the_bulk_read_gives_what_the_general_read_gives(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let samples = sample_orders();
    let expected = samples.len() + 1;
    store.append(&owner("sales"), "sales", "orders", samples).await.expect("append the samples");
    let mut odd = line_added("ORD-Ü \"q\"", 1);
    odd.payload["sku"] = json!("Ünïcödé \"quoted\" back\\slash\nnew line\t \u{0} nul 🎉");
    odd.payload["unit_price"] = serde_json::from_str("12345678901234567.890123456789").expect("number");
    odd.metadata.insert("trace".into(), json!({"spans": [1, 2, 3], "e": 1.5e300}));
    store.append(&owner("sales"), "sales", "orders", vec![odd]).await.expect("append the odd one");
    // Read in small pages, waiting (PostgreSQL's horizon) until all are visible.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut bulk = Vec::new();
    while bulk.len() < expected && std::time::Instant::now() < deadline {
        let after = bulk.last().map_or(0, |e: &tessera_store::StoredEvent| e.position);
        let page = store.log_after("sales", "orders", after, i64::MAX, 7).await.expect("bulk read");
        if page.events.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bulk.extend(page.events);
    }
    assert_eq!(bulk.len(), expected);
    assert!(bulk.iter().any(|e| e.stored_schema_version < e.schema_version), "an old payload was read and upcast");
    let head = bulk.last().map_or(0, |e| e.position);
    let mut streams: Vec<&str> = bulk.iter().map(|e| e.stream.as_str()).collect();
    streams.dedup();
    let mut general = Vec::new();
    for stream in streams.iter().collect::<std::collections::BTreeSet<_>>() {
        general.extend(store.stream_until("sales", "orders", stream, head).await.expect("general read"));
    }
    general.sort_by_key(|e| e.position);
    assert_eq!(serde_json::to_string(&bulk).expect("json"), serde_json::to_string(&general).expect("json"));
}
