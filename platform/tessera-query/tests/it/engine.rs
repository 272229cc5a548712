use hmac::{Hmac, Mac};
use sha2::Sha256;
use tessera_query::{ErrorKind, Limits};
use tessera_store::{AuditFilter, Principal};

use crate::{Fixture, KEY, analyst, owner, rows, run, steward, text_rows};

/// The hash masking of a customers value, worked out from the definition:
/// the domain's key is HMAC-SHA256 of `tessera masking key for domain
/// customers` under the platform's key; the value's hash is its HMAC under that.
fn hmac_hex(value: &str) -> String {
    let mut domain = Hmac::<Sha256>::new_from_slice(KEY).expect("key");
    domain.update(b"tessera masking key for domain customers");
    let mut mac = Hmac::<Sha256>::new_from_slice(&domain.finalize().into_bytes()).expect("key");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

const PROFILE: &str = "SELECT customer_id, email, full_name, phone, CAST(birth_date AS VARCHAR), national_id, \
     CAST(address IS NULL AS VARCHAR), signup_ip, country FROM customers.profiles.profiles WHERE customer_id = 'CUS-000003'";

/// Each role's view of one customer, against values worked out by hand
/// from the owner's clear row.
#[tokio::test]
async fn every_role_sees_its_masking_of_a_customer() {
    let f = Fixture::new().await;
    let engine = f.engine(Limits::default());
    let clear = rows(&engine, &owner("customers"), PROFILE).await;
    assert_eq!(clear.len(), 1, "{clear:?}");
    let cells: Vec<&str> = clear[0].split('|').collect();
    let [id, email, name, phone, birth, national_id, address_null, ip, country] = cells.as_slice() else { panic!("{clear:?}") };
    assert_eq!(*id, "CUS-000003");
    assert_eq!(*email, "olga.larsen178@example.com");
    // The owner gets `null` for national_id: the contract tightens it.
    assert_eq!(*national_id, "NULL");
    assert_eq!(*address_null, "false");

    let masked = rows(&engine, &analyst(), PROFILE).await;
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    let year = &birth[..4];
    assert_eq!(
        masked,
        vec![format!(
            "{id}|***@example.com|{}|***{}|{year}-01-01|NULL|true|{}|{country}",
            hmac_hex(name),
            &digits[digits.len() - 4..],
            hmac_hex(ip)
        )]
    );

    let public = Principal::public();
    assert_eq!(rows(&engine, &public, PROFILE).await, vec![format!("{id}|***|***|***|NULL|NULL|true|NULL|{country}")]);

    // A steward reads national ids in the clear; an owner who is also a steward too.
    let st = rows(&engine, &steward(), PROFILE).await;
    assert!(st[0].split('|').nth(5).is_some_and(|v| v.starts_with("QQ")), "{st:?}");
}

/// No query can infer a clear value a mask hides: filters, joins, grouping,
/// ordering, aggregates and functions all see masked values.
#[tokio::test]
async fn queries_only_ever_see_masked_values() {
    let f = Fixture::new().await;
    let engine = f.engine(Limits::default());
    let a = analyst();
    let none: Vec<String> = Vec::new();
    for sql in [
        "SELECT customer_id FROM customers.profiles.profiles WHERE email = 'chiara.tanaka20@example.com'",
        "SELECT customer_id FROM customers.profiles.profiles WHERE email LIKE 'chiara%'",
        "SELECT customer_id FROM customers.profiles.profiles WHERE starts_with(email, 'c')",
        "SELECT customer_id FROM customers.profiles.profiles WHERE full_name = 'Chiara Tanaka'",
        "SELECT customer_id FROM customers.profiles.profiles WHERE phone = '+44 20 7946 0020'",
        "SELECT customer_id FROM customers.profiles.profiles WHERE birth_date = DATE '1970-09-25'",
        "SELECT customer_id FROM customers.profiles.profiles WHERE national_id IS NOT NULL",
        "SELECT p.customer_id FROM customers.profiles.profiles p JOIN (VALUES ('chiara.tanaka20@example.com')) v(e) ON p.email = v.e",
        "SELECT customer_id FROM customers.profiles.profiles WHERE lower(email) IN (SELECT 'chiara.tanaka20@example.com')",
    ] {
        assert_eq!(rows(&engine, &a, sql).await, none, "{sql}");
    }
    // Aggregates, grouping and ordering give masked values only.
    for sql in [
        "SELECT min(email) FROM customers.profiles.profiles",
        "SELECT max(email) FROM customers.profiles.profiles",
        "SELECT email FROM customers.profiles.profiles GROUP BY email",
        "SELECT first_value(email) OVER (ORDER BY email) FROM customers.profiles.profiles LIMIT 1",
        "SELECT email FROM customers.profiles.profiles ORDER BY email DESC LIMIT 3",
        "SELECT string_agg(email, ',') FROM customers.profiles.profiles",
    ] {
        for row in rows(&engine, &a, sql).await {
            for email in row.split(',') {
                assert!(email.starts_with("***@") || email == "NULL", "{sql}: {row}");
            }
        }
    }
    // Ordering by a hashed name orders hashes, not names: the first by
    // hash is the smallest hash.
    let by_hash = rows(&engine, &a, "SELECT full_name FROM customers.profiles.profiles ORDER BY full_name LIMIT 1").await;
    let min_hash = rows(&engine, &a, "SELECT min(full_name) FROM customers.profiles.profiles").await;
    assert_eq!(by_hash, min_hash);
    assert_eq!(by_hash[0].len(), 64);
    // Joins on a hashed column still match (the hash is deterministic).
    let joined = rows(
        &engine,
        &a,
        "SELECT count(*) FROM customers.profiles.profiles a JOIN customers.profiles.profiles b ON a.full_name = b.full_name",
    )
    .await;
    assert_ne!(joined, vec!["0".to_owned()]);
}

#[tokio::test]
async fn explain_shows_tables_by_name_and_never_storage() {
    let f = Fixture::new().await;
    let engine = f.engine(Limits::default());
    let root = f.warehouse.root().path().to_owned();
    for sql in [
        "EXPLAIN SELECT email FROM customers.profiles.profiles WHERE country = 'GB'",
        "EXPLAIN VERBOSE SELECT email FROM customers.profiles.profiles WHERE country = 'GB'",
        "EXPLAIN ANALYZE SELECT email FROM customers.profiles.profiles WHERE country = 'GB'",
        "EXPLAIN FORMAT INDENT SELECT * FROM as_of('customers.profiles.profiles', 1)",
    ] {
        let text = rows(&engine, &analyst(), sql).await.join("\n");
        assert!(text.contains("MaskedScan") || text.contains("customers.profiles.profiles"), "{sql}: {text}");
        for leak in [root.as_str(), root.trim_start_matches('/'), ".parquet", "file://", "_delta_log"] {
            assert!(!text.contains(leak), "{sql} reveals `{leak}`:\n{text}");
        }
    }
}

#[tokio::test]
async fn time_travel_reads_old_versions_masked() {
    let f = Fixture::new().await;
    let engine = f.engine(Limits::default());
    let now = rows(&engine, &analyst(), "SELECT count(*) FROM customers.profiles.profiles").await;
    // Version 0 is the empty table the first commit created.
    assert_eq!(rows(&engine, &analyst(), "SELECT count(*) FROM as_of('customers.profiles.profiles', 0)").await, vec!["0"]);
    assert_eq!(rows(&engine, &analyst(), "SELECT count(*) FROM as_of('customers.profiles.profiles', 1)").await, now);
    let far = rows(&engine, &analyst(), "SELECT count(*) FROM as_of('customers.profiles.profiles', '2999-01-01T00:00:00Z')").await;
    assert_eq!(far, now);
    for row in rows(&engine, &analyst(), "SELECT email, national_id FROM as_of('customers.profiles.profiles', 1)").await {
        assert!(row.starts_with("***@") && row.ends_with("|NULL"), "{row}");
    }
    let e = run(&engine, &analyst(), "SELECT * FROM as_of('customers.profiles.nope', 1)").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{e:?}");
    let e = run(&engine, &analyst(), "SELECT * FROM as_of('customers.profiles.profiles', 999)").await.unwrap_err();
    assert!(e.message.contains("profiles"), "{e:?}");
    assert!(!e.message.contains(f.warehouse.root().path()), "{e:?}");
}

#[tokio::test]
async fn sql_is_read_only() {
    let f = Fixture::new().await;
    let engine = f.engine(Limits::default());
    let st = steward();
    for (sql, kind) in [
        ("CREATE TABLE t AS SELECT 1", ErrorKind::ReadOnly),
        ("CREATE VIEW v AS SELECT * FROM customers.profiles.profiles", ErrorKind::ReadOnly),
        ("INSERT INTO customers.profiles.profiles (customer_id) VALUES ('x')", ErrorKind::ReadOnly),
        ("DELETE FROM customers.profiles.profiles", ErrorKind::ReadOnly),
        ("UPDATE customers.profiles.profiles SET email = 'x'", ErrorKind::ReadOnly),
        ("DROP TABLE customers.profiles.profiles", ErrorKind::ReadOnly),
        ("COPY (SELECT * FROM customers.profiles.profiles) TO '/tmp/leak.csv'", ErrorKind::ReadOnly),
        ("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'", ErrorKind::ReadOnly),
        ("SET datafusion.execution.target_partitions = 64", ErrorKind::ReadOnly),
        ("SELECT * INTO leak FROM customers.profiles.profiles", ErrorKind::ReadOnly),
        ("SELECT * FROM '/etc/passwd'", ErrorKind::Invalid),
        ("SELECT * FROM 'file:///etc/passwd'", ErrorKind::Invalid),
        ("SELECT * FROM read_csv('/etc/passwd')", ErrorKind::Invalid),
        ("SELECT * FROM read_parquet('/tmp/x.parquet')", ErrorKind::Invalid),
        ("SELECT 1; SELECT 2", ErrorKind::Syntax),
        ("SELEC 1", ErrorKind::Syntax),
    ] {
        let e = run(&engine, &st, sql).await.expect_err(sql);
        assert_eq!(e.kind, kind, "{sql}: {e:?}");
    }
    // Unqualified names find nothing, and the message says how to address tables.
    let e = run(&engine, &st, "SELECT * FROM profiles").await.unwrap_err();
    assert!(e.message.contains("domain.product.table"), "{e:?}");
}

#[tokio::test]
async fn information_schema_lists_what_the_caller_reads() {
    let f = Fixture::new().await;
    let engine = f.engine(Limits::default());
    let tables = rows(&engine, &analyst(), "SHOW TABLES").await;
    assert!(tables.iter().any(|t| t.starts_with("customers|profiles|profiles|")), "{tables:?}");
    assert!(tables.iter().any(|t| t.starts_with("sales|orders|")), "{tables:?}");
    let columns = rows(
        &engine,
        &analyst(),
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = 'customers' AND table_name = 'profiles' ORDER BY ordinal_position",
    )
    .await;
    assert!(columns.contains(&"email|Utf8".to_owned()) || columns.iter().any(|c| c.starts_with("email|")), "{columns:?}");
}

#[tokio::test]
async fn limits_cut_stop_and_refuse() {
    let f = Fixture::new().await;
    let engine = f.engine(Limits { max_rows: 5, ..Limits::default() });
    let mut result = engine.query(&analyst(), "test", "SELECT * FROM generate_series(1, 100)").await.expect("query");
    let mut n = 0;
    while let Some(b) = result.next().await {
        n += b.expect("batch").num_rows();
    }
    assert_eq!(n, 5);
    assert!(result.truncated());
    // Exactly at the limit is not cut.
    let mut exact = engine.query(&analyst(), "test", "SELECT * FROM generate_series(1, 5)").await.expect("query");
    while exact.next().await.is_some() {}
    assert!(!exact.truncated());

    let slow = f.engine(Limits { timeout: std::time::Duration::from_millis(300), ..Limits::default() });
    let e = run(&slow, &analyst(), "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:?}");

    let small = f.engine(Limits { memory_bytes: 1 << 20, ..Limits::default() });
    let e = run(&small, &analyst(), "SELECT value FROM generate_series(1, 5000000) ORDER BY value DESC").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Memory, "{e:?}");
}

#[tokio::test]
async fn every_query_is_audited() {
    let f = Fixture::new().await;
    let engine = f.engine(Limits::default());
    let a = analyst();
    let out = run(&engine, &a, "SELECT customer_id FROM customers.profiles.profiles LIMIT 3").await.expect("query");
    assert_eq!(text_rows(&out).len(), 3);
    let _ = run(&engine, &a, "DROP TABLE customers.profiles.profiles").await.unwrap_err();
    engine.flush_audit().await;
    let log = f.store.audit_log(&AuditFilter { principal: Some("ana".into()), limit: 10, ..AuditFilter::default() }).await.expect("log");
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].record.outcome, "refused");
    assert_eq!(log[1].record.outcome, "ok");
    assert_eq!(log[1].record.rows, 3);
    assert_eq!(log[1].record.tables, vec!["customers.profiles.profiles".to_owned()]);
}

/// Late masking ([`tessera_query::late`]): top-k, filters and projections on
/// clear columns run below the mask. For every role, a sample of queries
/// mixing clear and masked filters, sort keys, projections and limits gives
/// exactly the rows the engine gives with late masking off; and the plans
/// say which queries absorbed what.
#[tokio::test]
async fn late_masking_changes_no_result() {
    let f = Fixture::new().await;
    let late = f.engine(Limits::default());
    let plain = f.engine(Limits::default()).with_late_masking(false);
    let selects = ["*", "customer_id, email", "customer_id, country, full_name, birth_date", "email AS customer_id, customer_id AS c"];
    let filters = [
        "",
        "WHERE country = 'GB'",
        "WHERE customer_id >= 'CUS-000005'",
        "WHERE email LIKE 'c%'",
        "WHERE country IN ('GB', 'DE') AND email IS NOT NULL",
        "WHERE country = 'GB' OR email LIKE '%example%'",
        "WHERE lower(country) = 'gb'",
        "WHERE email_verified AND NOT (country = 'FR')",
        "WHERE birth_date > DATE '1980-01-01'",
    ];
    let orders = [
        "",
        "ORDER BY customer_id",
        "ORDER BY country DESC NULLS LAST, customer_id",
        "ORDER BY email, customer_id",
        "ORDER BY registered_at DESC, customer_id",
    ];
    let limits = ["", "LIMIT 1", "LIMIT 3", "LIMIT 1000", "LIMIT 2 OFFSET 1"];
    let public = Principal { name: "pub".into(), roles: Vec::new(), domains: Vec::new() };
    let who = [analyst(), steward(), owner("customers"), public];
    // A fixed sample of the combinations (a small linear congruential walk).
    let mut state: u64 = 0x5eed;
    let mut next = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        usize::try_from(state >> 33).unwrap_or(0) % n
    };
    let mut compared = 0;
    for _ in 0..60 {
        let (select, filter, order, limit) =
            (selects[next(selects.len())], filters[next(filters.len())], orders[next(orders.len())], limits[next(limits.len())]);
        // Without a total order, LIMIT may keep any rows: compare only where the result is determined.
        if order.is_empty() && !limit.is_empty() {
            continue;
        }
        let sql = format!("SELECT * FROM (SELECT {select} FROM customers.profiles.profiles {filter} {order} {limit}) t");
        let sql = if select.starts_with("email AS") { sql.replace("ORDER BY email,", "ORDER BY t.c,") } else { sql };
        for p in &who {
            let (a, b) = (run(&late, p, &sql).await, run(&plain, p, &sql).await);
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    let (mut a, mut b) = (text_rows(&a), text_rows(&b));
                    if order.is_empty() {
                        a.sort();
                        b.sort();
                    }
                    assert_eq!(a, b, "{} differs with late masking: {sql}", p.name);
                }
                (Err(a), Err(b)) => assert_eq!(a.kind, b.kind, "{sql}"),
                (a, b) => panic!("{}: {sql}: late {a:?}, plain {b:?}", p.name),
            }
            compared += 1;
        }
    }
    assert!(compared >= 100, "only {compared} comparisons");
    // A plan run again and again (the recursive part of a recursive query)
    // starts afresh each time, the top-k inside the scan included.
    let recursive = "WITH RECURSIVE r(n) AS (SELECT 0 UNION ALL SELECT r.n + 1 FROM r CROSS JOIN \
                     (SELECT customer_id FROM customers.profiles.profiles ORDER BY customer_id LIMIT 3) p WHERE r.n < 2) \
                     SELECT n, count(*) FROM r GROUP BY n ORDER BY n";
    assert_eq!(rows(&late, &analyst(), recursive).await, vec!["0|1", "1|3", "2|9"]);
    assert_eq!(rows(&plain, &analyst(), recursive).await, vec!["0|1", "1|3", "2|9"]);
    // What moved below the mask, as the plan tells it.
    let plan_as = |who: Principal, sql: &str| {
        let sql = format!("EXPLAIN {sql}");
        let late = late.clone();
        async move { rows(&late, &who, &sql).await.join("\n") }
    };
    let explain = |sql: &str| plan_as(analyst(), sql);
    let top = explain("SELECT * FROM customers.profiles.profiles ORDER BY registered_at DESC, customer_id LIMIT 3").await;
    assert!(top.contains("before masking=[TopK(fetch=3)]"), "{top}");
    let filtered = explain("SELECT email FROM customers.profiles.profiles WHERE country = 'GB' ORDER BY customer_id LIMIT 3").await;
    assert!(filtered.contains("before masking=[Filter, TopK(fetch=3)]"), "{filtered}");
    // A key computed from literals is folded into a literal first: it moves too.
    let folded = explain("SELECT * FROM sales.orders.orders WHERE order_id = 'SO-' || lpad(CAST(1 AS VARCHAR), 8, '0')").await;
    assert!(folded.contains("before masking=[Filter]"), "{folded}");
    for sql in [
        "SELECT customer_id FROM customers.profiles.profiles ORDER BY email LIMIT 3",
        "SELECT customer_id FROM customers.profiles.profiles WHERE email = 'x' ORDER BY customer_id LIMIT 3",
        "SELECT customer_id FROM customers.profiles.profiles WHERE lower(country) = 'gb'",
        "SELECT customer_id FROM customers.profiles.profiles ORDER BY birth_date, customer_id LIMIT 3",
        "SELECT c FROM (SELECT email AS customer_id, customer_id AS c FROM customers.profiles.profiles) t ORDER BY t.customer_id LIMIT 1",
    ] {
        let plan = explain(sql).await;
        assert!(plan.contains("MaskedScan") && !plan.contains("before masking"), "{sql} must not move below the mask:\n{plan}");
    }
    // A sealed column never moves, even for a steward who reads it in the
    // clear: what is stored are tokens, opened only by the mask.
    let steward_plan = |sql: &str| plan_as(steward(), sql);
    let plan = steward_plan("SELECT customer_id FROM customers.profiles.profiles ORDER BY customer_id LIMIT 3").await;
    assert!(plan.contains("before masking=[TopK(fetch=3)]"), "{plan}");
    let plan = steward_plan("SELECT customer_id FROM customers.profiles.profiles ORDER BY email, customer_id LIMIT 3").await;
    assert!(!plan.contains("before masking"), "{plan}");
}
