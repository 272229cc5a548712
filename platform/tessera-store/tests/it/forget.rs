//! Crypto-shredding in the store: personal fields sealed at append, opened
//! for the domain's members, gone for good once the subject is forgotten.

use serde_json::{Value, json};
use sqlx::Row;
use tessera_contract::Role;
use tessera_store::{Error, Principal};

use crate::on_both;
use crate::support::{TestDb, analyst, owner, sample_orders, test_kek, with_orders};

on_both!(
    forgetting_a_subject_destroys_its_values_and_refuses_new_events,
    only_stewards_and_members_forget,
    a_log_stored_in_clear_is_sealed_at_open,
    an_event_about_two_persons_is_sealed_per_person,
    rotating_the_kek_rewraps_every_key,
    a_personal_field_sent_where_a_later_version_has_it_is_refused,
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

    // Each change of the ledger left one notice, in order: forgotten (once, though asked twice), re-admitted.
    let notices = store.notices(&steward(), "sales", 0, 100).await.expect("notices");
    let kinds: Vec<(&str, &Value)> = notices.iter().map(|n| (n.kind.as_str(), &n.body["subject"])).collect();
    assert_eq!(kinds, [("SubjectForgotten", &json!(subject)), ("SubjectReadmitted", &json!(subject))]);
    assert_eq!(notices[0].body["reason"], json!("erasure request #1"));
    let after = store.notices(&owner("sales"), "sales", notices[0].id, 100).await.expect("notices after the first");
    assert_eq!(after.len(), 1, "a reader resumes after the last id it saw");
    assert!(matches!(store.notices(&analyst(), "sales", 0, 100).await, Err(Error::Forbidden(_))), "not for analysts");
    assert!(matches!(store.notices(&steward(), "sales", 0, 0).await, Err(Error::BadRequest(_))));

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

/// A product whose event is about two persons: a transfer between two
/// customers, each party's fields sealed under that party's key.
const TRANSFERS: &str = r#"
domain: payments
name: transfers
version: 1.0.0
title: Transfers between customers
description: Money sent from one customer to another.
owner: { team: payments-core, contact: https://chat.example.com/payments }
events:
  MoneySent:
    version: 1
    schema:
      type: object
      required: [transfer_id, payer, payee, amount]
      properties:
        transfer_id: { type: string }
        amount: { type: number }
        payer:
          type: object
          subject: payer.customer_id
          required: [customer_id]
          properties:
            customer_id: { type: string }
            email: { type: string, classification: pii.email }
        payee:
          type: object
          subject: payee.customer_id
          required: [customer_id]
          properties:
            customer_id: { type: string }
            email: { type: string, classification: pii.email }
tables:
  transfers:
    description: One row per transfer.
    append:
      from:
        MoneySent:
          set:
            transfer_id: payload.transfer_id
            amount: payload.amount
            payer_email: payload.payer.email
            payee_email: payload.payee.email
    columns:
      transfer_id: { type: string, required: true, description: Transfer identifier }
      amount: { type: float64, description: Amount sent }
      payer_email: { type: string, classification: pii.email, description: The payer's email }
      payee_email: { type: string, classification: pii.email, description: The payee's email }
"#;

fn transfer(id: &str, payer: &str, payee: &str) -> tessera_store::EventInput {
    let line = json!({"stream": id, "type": "MoneySent", "payload": {"transfer_id": id, "amount": 10.5,
        "payer": {"customer_id": payer, "email": format!("{payer}@payer.example")},
        "payee": {"customer_id": payee, "email": format!("{payee}@payee.example")}}});
    tessera_store::envelope::parse_ndjson(line.to_string().as_bytes()).expect("a transfer").remove(0)
}

async fn an_event_about_two_persons_is_sealed_per_person(db: &TestDb) {
    let store = &db.store;
    store.publish(&owner("payments"), TRANSFERS).await.expect("publish payments/transfers");
    store.append(&owner("payments"), "payments", "transfers", vec![transfer("T1", "CUS-A", "CUS-B")]).await.expect("append");
    let text = &stored(db, "T1").await[0];
    assert!(!text.contains("@payer.example") && !text.contains("@payee.example"), "both parties sealed: {text}");
    let keys: Vec<String> = sqlx::query("SELECT subject FROM data_keys WHERE domain = 'payments' ORDER BY subject")
        .fetch_all(store.pool())
        .await
        .expect("keys")
        .iter()
        .map(|r| r.try_get(0).expect("subject"))
        .collect();
    assert_eq!(keys, ["CUS-A", "CUS-B"], "one key per party");

    store.forget(&owner("payments"), "payments", "CUS-A", "erasure request").await.expect("forget the payer");
    let read = store.read_stream(&owner("payments"), "payments", "transfers", "T1", 1, 10).await.expect("read");
    assert_eq!(read[0].payload["payer"]["email"], Value::Null, "the payer's fields are gone");
    assert_eq!(read[0].payload["payee"]["email"], json!("CUS-B@payee.example"), "the payee's are not");
    assert_eq!(read[0].payload["payer"]["customer_id"], json!("CUS-A"), "identifiers are not personal fields here");
    // A new transfer from or to the forgotten customer is refused, naming them.
    for (payer, payee) in [("CUS-A", "CUS-C"), ("CUS-C", "CUS-A")] {
        match store.append(&owner("payments"), "payments", "transfers", vec![transfer("T2", payer, payee)]).await {
            Err(e @ Error::SubjectForgotten { .. }) => assert!(e.to_string().contains("CUS-A"), "{e}"),
            other => panic!("expected subject_forgotten, got {other:?}"),
        }
    }
    store.append(&owner("payments"), "payments", "transfers", vec![transfer("T3", "CUS-B", "CUS-C")]).await.expect("others still transfer");
}

/// Rotating the key-encryption key re-wraps the data keys; the tokens in
/// the log stay as they are, and open under the new key only.
async fn rotating_the_kek_rewraps_every_key(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let samples = sample_orders();
    store.append(&owner("sales"), "sales", "orders", samples.clone()).await.expect("append samples");
    let placed = samples.iter().find(|e| e.event_type == "OrderPlaced" && e.schema_version == Some(2)).expect("a v2 OrderPlaced");
    let before = stored(db, &placed.stream).await;
    let keys: i64 = sqlx::query("SELECT COUNT(*) FROM data_keys").fetch_one(store.pool()).await.expect("count").try_get(0).expect("count");
    assert!(keys > 1, "the samples have several subjects");

    let new = tessera_store::Kek::parse(&"a1".repeat(32)).expect("a new key-encryption key");
    assert_eq!(store.rotate_kek(&new).await.expect("rotate"), u64::try_from(keys).expect("count"));
    assert_eq!(stored(db, &placed.stream).await, before, "no stored event is rewritten");

    let rotated = tessera_store::Store::open(&db.url, tessera_contract::Policy::builtin(), new).await.expect("open with the new key");
    let read = rotated.read_stream(&owner("sales"), "sales", "orders", &placed.stream, 1, 10).await.expect("read");
    assert_eq!(read[0].payload["customer"]["email"], placed.payload["customer"]["email"], "opens under the new key");
    match tessera_store::Store::open(&db.url, tessera_contract::Policy::builtin(), test_kek()).await {
        Err(e) => assert!(e.to_string().contains("not the one that wrapped"), "{e}"),
        Ok(_) => panic!("the old key-encryption key must be refused after a rotation"),
    }
    // A process still running with the old key fails clearly, and opens nothing.
    let read = store.read_stream(&owner("sales"), "sales", "orders", &placed.stream, 1, 10).await;
    assert!(read.is_err(), "{read:?}");
    rotated.close().await;
}

/// An old-version payload that carries a personal field where only the
/// current version has it: validation (after upcasting) would pass, but
/// the old version's plan does not seal it there. It is refused.
async fn a_personal_field_sent_where_a_later_version_has_it_is_refused(db: &TestDb) {
    let store = &db.store;
    with_orders(store).await;
    let line = json!({"stream": "ORD-LEAK-1", "type": "OrderPlaced", "schema_version": 1, "payload": {"order_id": "ORD-LEAK-1",
        "customer": {"name": "Ada Leak", "email": "ada@leak.example"}, "customer_id": "CUS-LEAK",
        "placed_at": "2026-01-01T10:00:00Z", "total": 10.0, "channel": "web"}});
    let event = tessera_store::envelope::parse_ndjson(line.to_string().as_bytes()).expect("event").remove(0);
    match store.append(&owner("sales"), "sales", "orders", vec![event.clone()]).await {
        Err(Error::InvalidEvents { problems }) => {
            assert_eq!(problems[0].code, "payload_invalid");
            assert!(problems[0].message.contains("could not be sealed"), "{}", problems[0].message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(stored(db, "ORD-LEAK-1").await.is_empty(), "nothing stored");
    // Where version 1 has it, it is sealed and accepted.
    let mut fine = event;
    fine.payload["customer"].as_object_mut().expect("customer").remove("email");
    fine.payload["customer_email"] = json!("ada@leak.example");
    store.append(&owner("sales"), "sales", "orders", vec![fine]).await.expect("a version 1 payload as version 1 has it");
    assert!(!stored(db, "ORD-LEAK-1").await[0].contains("leak.example"));
}
