//! Crypto-shredding in the store: personal fields sealed at append, opened
//! for the domain's members, gone for good once the subject is forgotten.

use serde_json::{Value, json};
use sqlx::Row;
use tessera_contract::Role;
use tessera_store::{Error, Principal};

use crate::on_both;
use crate::support::{TestDb, analyst, owner, sample_orders, with_orders};

on_both!(
    forgetting_a_subject_destroys_its_values_and_refuses_new_events,
    only_stewards_and_members_forget,
    a_log_stored_in_clear_is_sealed_at_open,
);

fn steward() -> Principal {
    Principal { name: "governance".into(), roles: vec![Role::Steward], domains: vec![] }
}

/// The stored payloads of `stream`, as text.
async fn stored(db: &TestDb, stream: &str) -> Vec<String> {
    sqlx::query("SELECT payload FROM events WHERE stream = $1 ORDER BY position")
        .bind(stream)
        .fetch_all(db.store.pool())
        .await
        .expect("stored payloads")
        .iter()
        .map(|r| r.try_get(0).expect("payload"))
        .collect()
}

async fn forgetting_a_subject_destroys_its_values_and_refuses_new_events(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let samples = sample_orders();
    store.append(&owner("sales"), "sales", "orders", samples.clone()).await.expect("append samples");
    // Two customers' orders: one to forget, one as the control.
    let placed: Vec<_> = samples.iter().filter(|e| e.event_type == "OrderPlaced" && e.schema_version == Some(2)).collect();
    let customer = |e: &tessera_store::EventInput| e.payload["customer"]["id"].as_str().expect("customer id").to_owned();
    let target = placed[0];
    let control = placed.iter().find(|e| customer(e) != customer(target)).expect("another customer");
    let (subject, email, name) =
        (customer(target), target.payload["customer"]["email"].clone(), target.payload["customer"]["name"].clone());

    // Sealed in the database, clear for the domain's members.
    for text in stored(db, &target.stream).await {
        assert!(!text.contains(email.as_str().expect("email")), "clear email stored: {text}");
    }
    let read = store.read_stream(&owner("sales"), "sales", "orders", &target.stream, 1, 10).await.expect("read");
    assert_eq!(read[0].payload["customer"]["email"], email);
    assert_eq!(read[0].payload["customer"]["name"], name);

    let forgotten = store.forget(&owner("sales"), "sales", &subject, "erasure request #1").await.expect("forget");
    assert_eq!((forgotten.keys_destroyed, forgotten.already), (1, false));
    let again = store.forget(&steward(), "sales", &subject, "erasure request #1").await.expect("forget again");
    assert_eq!((again.keys_destroyed, again.already), (0, true), "idempotent");
    let keys: i64 = sqlx::query("SELECT COUNT(*) FROM data_keys WHERE domain = 'sales' AND subject = $1")
        .bind(&subject)
        .fetch_one(store.pool())
        .await
        .expect("count")
        .try_get(0)
        .expect("count");
    assert_eq!(keys, 0, "the wrapped key is deleted");

    // The subject's personal fields read null; the rest of the event, and the control subject, are untouched.
    let read = store.read_stream(&owner("sales"), "sales", "orders", &target.stream, 1, 10).await.expect("read");
    assert_eq!(read[0].payload["customer"]["email"], Value::Null);
    assert_eq!(read[0].payload["customer"]["name"], Value::Null);
    assert_eq!(read[0].payload["customer"]["id"], json!(subject));
    assert_eq!(read[0].payload["order_id"], target.payload["order_id"]);
    let other = store.read_stream(&owner("sales"), "sales", "orders", &control.stream, 1, 10).await.expect("read control");
    assert_eq!(other[0].payload["customer"]["email"], control.payload["customer"]["email"]);

    // Resending the subject's old events is a duplicate; a new event is refused until re-admission.
    let resend = store.append(&owner("sales"), "sales", "orders", vec![target.clone()]).await.expect("resend");
    assert_eq!((resend.appended, resend.duplicates), (0, 1));
    let mut fresh = target.clone();
    fresh.id = None;
    fresh.stream = "ORD-NEW-1".into();
    fresh.payload["order_id"] = json!("ORD-NEW-1");
    fresh.expected = Default::default();
    match store.append(&owner("sales"), "sales", "orders", vec![fresh.clone()]).await {
        Err(e @ Error::SubjectForgotten { .. }) => {
            assert_eq!(e.code(), "subject_forgotten");
            assert!(e.to_string().contains(&subject) && e.to_string().contains("re-admits"), "{e}");
        }
        other => panic!("expected subject_forgotten, got {other:?}"),
    }
    assert!(matches!(store.readmit(&owner("sales"), "sales", &subject).await, Err(Error::Forbidden(_))), "only stewards re-admit");
    let entry = store.readmit(&steward(), "sales", &subject).await.expect("readmit");
    assert_eq!(entry.readmitted_by.as_deref(), Some("governance"));
    store.append(&owner("sales"), "sales", "orders", vec![fresh]).await.expect("a new event after re-admission");
    let new = store.read_stream(&owner("sales"), "sales", "orders", "ORD-NEW-1", 1, 10).await.expect("read new");
    assert_eq!(new[0].payload["customer"]["email"], email, "a new key seals and opens the new event");
    let old = store.read_stream(&owner("sales"), "sales", "orders", &target.stream, 1, 10).await.expect("read old");
    assert_eq!(old[0].payload["customer"]["email"], Value::Null, "what was sealed under the destroyed key stays gone");

    // The ledger names who, when and why; a reopened store (a restored backup) destroys keys of forgotten subjects again.
    store.forget(&steward(), "sales", &subject, "second request").await.expect("forget after re-admission");
    let ledger = store.ledger("sales", Some(&subject)).await.expect("ledger");
    assert_eq!((ledger[0].forgotten_by.as_str(), ledger[0].reason.as_str()), ("governance", "second request"));
    let control_subject = customer(control);
    sqlx::query(
        "INSERT INTO forgotten_subjects (domain, subject, forgotten_at, forgotten_by, reason) VALUES ('sales', $1, 0, 'restore-test', 'x')",
    )
    .bind(&control_subject)
    .execute(store.pool())
    .await
    .expect("ledger row as a restored backup would have it");
    let reopened = db.another_store().await;
    let read = reopened.read_stream(&owner("sales"), "sales", "orders", &control.stream, 1, 10).await.expect("read control again");
    assert_eq!(read[0].payload["customer"]["email"], Value::Null, "the ledger is applied again at start");
}

async fn only_stewards_and_members_forget(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    assert!(matches!(store.forget(&Principal::public(), "sales", "CUS-1", "x").await, Err(Error::Unauthenticated(_))));
    assert!(matches!(store.forget(&analyst(), "sales", "CUS-1", "x").await, Err(Error::Forbidden(_))));
    assert!(matches!(store.forget(&owner("payments"), "sales", "CUS-1", "x").await, Err(Error::Forbidden(_))));
    assert!(matches!(store.forget(&owner("sales"), "sales", "CUS-1", " ").await, Err(Error::BadRequest(_))), "a reason is required");
    assert!(matches!(store.forget(&owner("sales"), "sales", "", "x").await, Err(Error::BadRequest(_))));
    store.forget(&owner("sales"), "sales", "CUS-1", "x").await.expect("a member forgets in its domain");
    store.forget(&steward(), "payments", "CUS-1", "x").await.expect("a steward forgets anywhere");
}

/// A store written before sealing existed holds clear payloads: the first
/// open seals them in place, once, and members still read them.
async fn a_log_stored_in_clear_is_sealed_at_open(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let samples = sample_orders();
    store.append(&owner("sales"), "sales", "orders", samples.clone()).await.expect("append samples");
    let placed = samples.iter().find(|e| e.event_type == "OrderPlaced" && e.schema_version == Some(2)).expect("a v2 OrderPlaced");
    let email = placed.payload["customer"]["email"].as_str().expect("email").to_owned();
    // As the previous version stored it: in clear, and no record of sealing.
    sqlx::query("UPDATE events SET payload = $1 WHERE stream = $2 AND stream_version = 1")
        .bind(placed.payload.to_string())
        .bind(&placed.stream)
        .execute(store.pool())
        .await
        .expect("write a clear payload");
    sqlx::query("DELETE FROM store_state").execute(store.pool()).await.expect("forget the marker");
    assert!(stored(db, &placed.stream).await[0].contains(&email), "the clear payload is in place");

    let reopened = db.another_store().await;
    let text = &stored(db, &placed.stream).await[0];
    assert!(!text.contains(&email), "sealed in place at open: {text}");
    assert!(text.contains("tsr1."), "{text}");
    let read = reopened.read_stream(&owner("sales"), "sales", "orders", &placed.stream, 1, 10).await.expect("read");
    assert_eq!(read[0].payload["customer"]["email"], json!(email), "members read it as before");
    let marked: i64 = sqlx::query("SELECT COUNT(*) FROM store_state WHERE key = 'log_sealed'")
        .fetch_one(store.pool())
        .await
        .expect("marker")
        .try_get(0)
        .expect("count");
    assert_eq!(marked, 1, "it runs once");
}
