//! Publishing contract versions.

use tessera_store::Error;

use crate::on_both;
use crate::support::{ORDERS, PAYMENTS, TestDb, analyst, owner};

on_both!(
    first_version_registers_and_identical_republish_is_a_no_op,
    version_rules,
    who_may_publish,
    invalid_contract_is_refused_with_positions
);

async fn first_version_registers_and_identical_republish_is_a_no_op(db: &TestDb) {
    let store = &db.store;
    let first = store.publish(&owner("sales"), ORDERS).await.expect("publish");
    assert_eq!((first.outcome, first.version.as_str()), ("registered", "1.2.0"));
    let again = store.publish(&owner("sales"), ORDERS).await.expect("republish");
    assert_eq!(again.outcome, "unchanged");
    let versions = store.versions("sales", "orders").await.expect("versions");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].published_by, "sales-owner");
    assert_eq!(store.contract_source("sales", "orders", "1.2.0").await.expect("source"), ORDERS);
}

async fn version_rules(db: &TestDb) {
    let store = &db.store;
    store.publish(&owner("sales"), ORDERS).await.expect("publish");

    // The same version number with other content.
    let edited = ORDERS.replace("title: Orders", "title: Web shop orders");
    match store.publish(&owner("sales"), &edited).await {
        Err(Error::VersionTaken { version, .. }) => assert_eq!(version, "1.2.0"),
        other => panic!("expected version_taken, got {other:?}"),
    }

    // An older version.
    let older = edited.replace("version: 1.2.0", "version: 1.1.9");
    match store.publish(&owner("sales"), &older).await {
        Err(Error::StaleVersion { current, .. }) => assert_eq!(current, "1.2.0"),
        other => panic!("expected stale_version, got {other:?}"),
    }

    // A breaking change (a looser freshness promise) under a minor bump.
    let breaking = ORDERS.replace("version: 1.2.0", "version: 1.3.0").replace("freshness: 15m", "freshness: 2h");
    assert_ne!(breaking, ORDERS);
    match store.publish(&owner("sales"), &breaking).await {
        Err(Error::NotASuccessor { errors, changes, .. }) => {
            assert!(errors.iter().any(|e| e.contains("major")), "{errors:?}");
            assert!(changes.iter().any(|c| c.impact == tessera_contract::Impact::Breaking), "{changes:?}");
        }
        other => panic!("expected incompatible_version, got {:?}", other.map(|p| p.outcome)),
    }

    // A compatible minor change is published, and both versions are kept.
    let minor = ORDERS.replace("version: 1.2.0", "version: 1.3.0").replace("title: Orders", "title: Web shop orders");
    let published = store.publish(&owner("sales"), &minor).await.expect("minor");
    assert_eq!(published.outcome, "published");
    assert!(!published.changes.is_empty());
    let versions = store.versions("sales", "orders").await.expect("versions");
    assert_eq!(versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(), ["1.2.0", "1.3.0"]);
    assert_eq!(store.product("sales", "orders").await.expect("product").current_version, "1.3.0");
}

async fn who_may_publish(db: &TestDb) {
    let store = &db.store;
    match store.publish(&tessera_store::Principal::public(), ORDERS).await {
        Err(Error::Unauthenticated(_)) => {}
        other => panic!("expected unauthenticated, got {other:?}"),
    }
    match store.publish(&owner("payments"), ORDERS).await {
        Err(Error::Forbidden(m)) => assert!(m.contains("not a member of domain `sales`"), "{m}"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    match store.publish(&analyst(), PAYMENTS).await {
        Err(Error::Forbidden(_)) => {}
        other => panic!("expected forbidden, got {other:?}"),
    }
    assert!(store.products().await.expect("products").is_empty(), "nothing was registered");
}

async fn invalid_contract_is_refused_with_positions(db: &TestDb) {
    let store = &db.store;
    let broken = ORDERS.replace("status: active", "status: actve");
    match store.publish(&owner("sales"), &broken).await {
        Err(Error::ContractInvalid { diagnostics }) => {
            let d = diagnostics.iter().find(|d| d.severity == tessera_contract::Severity::Error).expect("an error");
            assert_eq!(d.pointer, "/status");
            let line = ORDERS.lines().position(|l| l.starts_with("status:")).expect("status line") + 1;
            assert_eq!(d.position.map(|p| p.line), Some(line));
        }
        other => panic!("expected contract_invalid, got {other:?}"),
    }
    assert!(store.products().await.expect("products").is_empty());
}
