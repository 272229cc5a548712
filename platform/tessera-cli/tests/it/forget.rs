//! Crypto-shredding end to end, on a real `tessera serve --demo` (SQLite and
//! a local warehouse): no clear personal value of the example products in
//! the database files, the warehouse or the log; owners still read them;
//! after a subject is forgotten, every classified value of that subject
//! reads null for every role, at every version, over HTTP and psql, in
//! entity state and in the raw log, while other subjects and unclassified
//! columns stay as they were.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tessera_contract::Policy;

use crate::repo;
use crate::server::{Server, psql, start};

/// Every clear personal value (at least 6 characters: shorter ones such as
/// a country code also occur in unclassified columns) of the example
/// products' sample events, by the subject it belongs to.
fn personal_values() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("products")).unwrap() {
        let dir = entry.unwrap().path();
        let contract =
            tessera_contract::lint(&std::fs::read_to_string(dir.join("contract.yaml")).unwrap(), &Policy::builtin()).contract.unwrap();
        for line in std::fs::read_to_string(dir.join("events.ndjson")).unwrap().lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            let Some(spec) = contract.events.get(event["type"].as_str().unwrap()) else { continue };
            let version = event["schema_version"].as_u64().map_or(spec.version, |v| u32::try_from(v).unwrap());
            let plan = tessera_contract::seal::plan_for(&contract, event["type"].as_str().unwrap(), version).unwrap();
            let payload = &event["payload"];
            let Ok(ids) = plan.subject_ids(payload) else { continue };
            plan.each_value(payload, &mut |subject, v| {
                let Some(id) = subject.and_then(|i| ids[i].clone()) else { return };
                let mut values = Vec::new();
                strings(v, &mut values);
                out.entry(id).or_default().extend(values.into_iter().filter(|s| s.chars().count() >= 6));
            });
        }
    }
    out
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// The values of `needles` found in any of `haystacks`, with where (at most 20).
fn found_in(haystacks: &[(String, Vec<u8>)], needles: &BTreeSet<String>) -> Vec<String> {
    let needles: Vec<&String> = needles.iter().collect();
    let automaton = aho_corasick::AhoCorasick::new(needles.iter().map(|n| n.as_bytes())).unwrap();
    let mut out = Vec::new();
    for (name, bytes) in haystacks {
        for m in automaton.find_overlapping_iter(bytes.as_slice()) {
            out.push(format!("{} in {name}", needles[m.pattern().as_usize()]));
            if out.len() >= 20 {
                return out;
            }
        }
    }
    out
}

/// The Python with DuckDB (`.ci/run` sets `TESSERA_PYTHON`); under CI its absence fails.
fn python() -> Option<PathBuf> {
    let found = std::env::var_os("TESSERA_PYTHON").map(PathBuf::from);
    if found.is_none() {
        let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
        assert!(!in_ci, "TESSERA_PYTHON is not set: CI must provide DuckDB (.ci/run sets it)");
        eprintln!("SKIPPED the DuckDB part: TESSERA_PYTHON is not set");
    }
    found
}

/// What DuckDB reads in every Parquet file of the warehouse, as text.
fn duckdb_dump(python: &Path, warehouse: &Path) -> String {
    let run = std::process::Command::new(python).arg(repo().join("tests/duckdb/dump_warehouse.py")).arg(warehouse).output().unwrap();
    assert!(run.status.success(), "DuckDB failed: {}", String::from_utf8_lossy(&run.stderr));
    String::from_utf8(run.stdout).unwrap()
}

struct Caller<'a> {
    server: &'a Server,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Caller<'_> {
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.runtime.block_on(async {
            let url = format!("{}{path}", self.server.base);
            let mut r = if method == "POST" { self.client.post(url) } else { self.client.get(url) };
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(b) = body {
                r = r.json(&b);
            }
            let response = r.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        })
    }

    /// Rows of `sql` over HTTP as JSON objects.
    fn sql(&self, token: Option<&str>, sql: &str) -> Vec<Value> {
        let (status, body) = self.request("POST", "/api/v1/sql", token, Some(json!({ "sql": sql })));
        assert_eq!(status, 200, "{sql}: {body}");
        let names: Vec<String> = body["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();
        let rows = body["rows"].as_array().unwrap_or_else(|| panic!("{sql}: no rows in {body}"));
        rows.iter().map(|r| Value::Object(names.iter().cloned().zip(r.as_array().unwrap().iter().cloned()).collect())).collect()
    }
}

/// A data directory written by the binary before sealing existed
/// (`tests/fixtures/store-before-sealing`): today's server seals its log in
/// place at its first start, rebuilds its tables from the sealed log and
/// deletes their earlier versions; nothing clear is left in the directory,
/// and the owner still reads the values.
#[test]
fn a_store_written_before_sealing_is_sealed_at_its_first_start() {
    let _servers = crate::shared();
    let data = tempfile::tempdir().unwrap();
    let fixture = repo().join("tests/fixtures/store-before-sealing");
    for (path, bytes) in files(&fixture) {
        let to = data.path().join(path.strip_prefix(&fixture).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
    // The personal values of the events it holds (the first 400 of the sample file).
    let contract = tessera_contract::lint(
        &std::fs::read_to_string(repo().join("products/customers-profiles/contract.yaml")).unwrap(),
        &Policy::builtin(),
    )
    .contract
    .unwrap();
    let mut clear = BTreeSet::new();
    for line in std::fs::read_to_string(repo().join("products/customers-profiles/events.ndjson")).unwrap().lines().take(400) {
        let event: Value = serde_json::from_str(line).unwrap();
        let spec = &contract.events[event["type"].as_str().unwrap()];
        let version = event["schema_version"].as_u64().map_or(spec.version, |v| u32::try_from(v).unwrap());
        let plan = tessera_contract::seal::plan_for(&contract, event["type"].as_str().unwrap(), version).unwrap();
        plan.each_value(&event["payload"], &mut |_, v| {
            let mut values = Vec::new();
            strings(v, &mut values);
            clear.extend(values.into_iter().filter(|s| s.chars().count() >= 6));
        });
    }
    let on_disk = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        files(dir)
            .into_iter()
            .filter(|(p, _)| p.extension().is_none_or(|e| e != "log"))
            .map(|(p, b)| (p.display().to_string(), b))
            .collect()
    };
    assert!(!found_in(&on_disk(data.path()), &clear).is_empty(), "the fixture holds clear values, as the old binary wrote them");

    let log = data.path().join("server.log");
    let server = start(data.path(), &[("TESSERA_LOG", "info".to_owned())], Some(&log));
    let leaks = found_in(&on_disk(data.path()), &clear);
    assert!(leaks.is_empty(), "clear personal values left after the first start: {leaks:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sealing stored events"), "the log was sealed in place");
    assert!(text.contains("before sealing"), "the tables' earlier versions were deleted");

    let principals: Value = serde_json::from_str(&std::fs::read_to_string(data.path().join("demo-principals.json")).unwrap()).unwrap();
    let owner =
        principals.as_array().unwrap().iter().find(|p| p["name"] == "customers-owner").unwrap()["token"].as_str().unwrap().to_owned();
    let caller = Caller {
        server: &server,
        client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
    };
    let emails = caller.sql(Some(&owner), "SELECT email FROM customers.profiles.profiles WHERE email IS NOT NULL");
    assert!(emails.len() > 10, "the owner reads the emails: {}", emails.len());
    let read: BTreeSet<String> = emails.iter().filter_map(|r| r["email"].as_str().map(str::to_owned)).collect();
    assert!(read.iter().any(|e| clear.contains(e)), "the values written before sealing read as before");
    drop(server);
}

/// Each example table that holds a subject's personal values: its name,
/// the column that names the customer, and its classified columns.
const TABLES: [(&str, &str, &[&str]); 4] = [
    ("customers.profiles.profiles", "customer_id", &["email", "full_name", "phone", "birth_date", "national_id", "address", "signup_ip"]),
    ("sales.orders.orders", "customer_id", &["customer_email"]),
    ("payments.transactions.payments", "customer_id", &["payer_ip", "card_holder_name", "card_last4"]),
    ("logistics.shipments.shipments", "customer_id", &["recipient_name", "delivery_address"]),
];

#[test]
fn a_forgotten_subject_reads_null_everywhere_and_nothing_clear_is_stored() {
    let _servers = crate::shared();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("server.log");
    let server = start(data.path(), &[("TESSERA_LOG", "info".to_owned())], Some(&log));
    let principals: Value = serde_json::from_str(&std::fs::read_to_string(data.path().join("demo-principals.json")).unwrap()).unwrap();
    let token_of =
        |name: &str| principals.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["token"].as_str().unwrap().to_owned();
    let (owner, steward, analyst) = (token_of("customers-owner"), token_of("steward"), token_of("analyst"));
    let caller = Caller {
        server: &server,
        client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
    };

    // The subject to forget appears in every product; the control subject too.
    let values = personal_values();
    let all: BTreeSet<String> = values.values().flatten().cloned().collect();
    assert!(all.len() > 1000, "the samples hold personal values: {}", all.len());
    let in_every_product = |subject: &str| {
        TABLES.iter().all(|(table, column, _)| {
            !caller.sql(Some(&owner), &format!("SELECT 1 AS x FROM {table} WHERE {column} = '{subject}' LIMIT 1")).is_empty()
        })
    };
    // The catalog's sample rows of the customers' table: the subject to forget is one shown there.
    let sample = || {
        let (status, body) =
            caller.request("GET", "/api/v1/products/customers/profiles/sample?table=profiles&limit=100", Some(&owner), None);
        assert_eq!(status, 200, "{body}");
        let columns: Vec<String> = body["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();
        let rows: Vec<Value> = body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| Value::Object(columns.iter().cloned().zip(r.as_array().unwrap().iter().cloned()).collect()))
            .collect();
        rows
    };
    let shown: BTreeSet<String> = sample().iter().filter_map(|r| r["customer_id"].as_str().map(str::to_owned)).collect();
    let mut candidates: Vec<&String> = values.keys().filter(|s| s.starts_with("CUS-")).filter(|s| in_every_product(s)).collect();
    candidates.sort_by_key(|s| !shown.contains(*s));
    assert!(shown.contains(candidates[0]), "a customer in every product is among the sample rows");
    let (target, control) = (candidates[0].clone(), candidates.get(1).expect("a second customer in every product").to_string());
    // Every table as it was once the demo was loaded: read again by time after the forget.
    let loaded_at = chrono::Utc::now().to_rfc3339();

    // Before any forget: nothing clear on disk or in the log, owners read clear values.
    let on_disk = |exclude_log: bool| -> Vec<(String, Vec<u8>)> {
        files(data.path()).into_iter().filter(|(p, _)| !(exclude_log && p == &log)).map(|(p, b)| (p.display().to_string(), b)).collect()
    };
    let leaks = found_in(&on_disk(false), &all);
    assert!(leaks.is_empty(), "clear personal values on disk or in the server's log: {leaks:?}");
    let target_email = caller.sql(Some(&owner), &format!("SELECT email FROM customers.profiles.profiles WHERE customer_id = '{target}'"));
    assert!(target_email[0]["email"].as_str().is_some_and(|e| e.contains('@')), "the owner reads the email: {target_email:?}");
    let counts = |token: &str| -> Vec<Value> {
        TABLES.iter().map(|(t, _, _)| caller.sql(Some(token), &format!("SELECT count(*) AS n FROM {t}"))[0]["n"].clone()).collect()
    };
    let counts_before = counts(&owner);
    let python = python();
    if let Some(python) = &python {
        let dump = duckdb_dump(python, &data.path().join("warehouse"));
        let leaks = found_in(&[("DuckDB".to_owned(), dump.clone().into_bytes())], &all);
        assert!(leaks.is_empty(), "DuckDB reads clear personal values in the warehouse: {leaks:?}");
        assert!(dump.contains("#type customers/profiles/v1/profiles email BLOB"), "sealed columns are opaque binary to DuckDB");
        assert!(dump.contains("#type customers/profiles/v1/profiles country VARCHAR"), "unclassified columns stay plainly readable");
    }

    // The target's wrapped data keys, as stored.
    let wrapped = wrapped_keys(data.path(), &target);
    assert!(wrapped.len() >= 4, "a key per domain: {}", wrapped.len());

    // Forget the target in every domain, as a steward.
    let forget =
        crate::tessera(&["forget", "all", &target, "--reason", "erasure request E-1", "--server", &server.base, "--token", &steward]);
    assert!(forget.status.success(), "tessera forget: {}", crate::stderr(&forget));
    assert!(crate::stdout(&forget).matches("forgotten, 1 key(s) destroyed").count() >= 4, "every domain: {}", crate::stdout(&forget));
    let (status, body) =
        caller.request("POST", "/api/v1/subjects/forget", Some(&analyst), Some(json!({"subject": control, "reason": "x"})));
    assert_eq!(status, 403, "an analyst may not forget: {body}");

    // Every classified value of the target reads null, for every role, over HTTP and psql, now and at the first version.
    for token in [Some(owner.as_str()), Some(steward.as_str()), Some(analyst.as_str()), None] {
        for (table, column, classified) in TABLES {
            let list = classified.join(", ");
            for from in [table.to_owned(), format!("as_of('{table}', 1)"), format!("as_of('{table}', '{loaded_at}')")] {
                let rows = caller.sql(token, &format!("SELECT {list} FROM {from} WHERE {column} = '{target}'"));
                for row in &rows {
                    for c in classified {
                        assert_eq!(row[*c], Value::Null, "{c} of {table} ({from}) for {token:?}: {row}");
                    }
                }
            }
        }
    }
    let (ok, out) = psql(
        server.pg_port,
        "customers-owner",
        &owner,
        &format!("SELECT count(email) FROM customers.profiles.profiles WHERE customer_id = '{target}'"),
    );
    assert!(ok && out.trim() == "0", "psql: {out}");
    let (ok, out) = psql(
        server.pg_port,
        "customers-owner",
        &owner,
        &format!("SELECT count(email) FROM customers.profiles.profiles WHERE customer_id = '{control}'"),
    );
    assert!(ok && out.trim() == "1", "psql, the control subject: {out}");
    // The control subject and the unclassified columns are untouched; no row is lost.
    let control_row =
        caller.sql(Some(&owner), &format!("SELECT email, country FROM customers.profiles.profiles WHERE customer_id = '{control}'"));
    assert!(control_row[0]["email"].as_str().is_some_and(|e| e.contains('@')), "{control_row:?}");
    let target_row =
        caller.sql(Some(&owner), &format!("SELECT country, registered_at FROM customers.profiles.profiles WHERE customer_id = '{target}'"));
    assert!(target_row[0]["country"].is_string() && target_row[0]["registered_at"].is_string(), "{target_row:?}");
    assert_eq!(counts(&owner), counts_before, "row counts");

    // The catalog's sample rows.
    let rows = sample();
    let shown: Vec<&Value> = rows.iter().filter(|r| r["customer_id"] == json!(target)).collect();
    assert_eq!(shown.len(), 1, "the subject's row is still shown");
    for c in TABLES[0].2 {
        assert_eq!(shown[0][*c], Value::Null, "sample rows: {c}");
    }
    assert!(shown[0]["country"].is_string(), "{}", shown[0]);

    // Entity state (at the head and at an early position) and the raw log.
    for as_of in ["", "?as_of=1"] {
        let (status, state) =
            caller.request("GET", &format!("/api/v1/products/customers/profiles/streams/{target}/state{as_of}"), Some(&owner), None);
        assert_eq!(status, 200, "{state}");
        for row in state["tables"]["profiles"].as_array().unwrap() {
            assert_eq!(row.get("email").cloned().unwrap_or(Value::Null), Value::Null, "entity state{as_of}: {row}");
        }
    }
    let (status, log_page) = caller.request("GET", &format!("/api/v1/products/customers/profiles/streams/{target}"), Some(&owner), None);
    assert_eq!(status, 200, "{log_page}");
    let leaks = found_in(&[("the raw log".to_owned(), log_page.to_string().into_bytes())], &values[&target]);
    assert!(leaks.is_empty(), "the raw log still opens the forgotten subject's values: {leaks:?}");

    // A new event about the subject is refused; an old one resent is a duplicate.
    let owner_sales = token_of("sales-owner");
    let event = json!({"stream": "ORD-FORGET-1", "type": "OrderPlaced", "payload": {"order_id": "ORD-FORGET-1", "customer": {"id": target, "email": "new@example.com", "name": "New Name"}, "placed_at": "2026-12-01T10:00:00Z", "total": 10.0, "currency": "EUR", "channel": "web"}});
    let (status, body) = caller.request("POST", "/api/v1/products/sales/orders/events", Some(&owner_sales), Some(event));
    assert_eq!((status, body["code"].as_str()), (409, Some("subject_forgotten")), "{body}");

    // No table keeps statistics of a sealed column: min/max values would be clear values.
    for (path, bytes) in files(&data.path().join("warehouse")) {
        let commit = path.extension().is_some_and(|e| e == "json") && path.parent().is_some_and(|p| p.ends_with("_delta_log"));
        if !commit {
            continue;
        }
        for line in String::from_utf8(bytes).unwrap().lines() {
            let action: Value = serde_json::from_str(line).unwrap();
            let Some(stats) = action["add"]["stats"].as_str() else { continue };
            let stats: Value = serde_json::from_str(stats).unwrap();
            for (_, _, classified) in TABLES {
                for c in classified {
                    for kind in ["minValues", "maxValues"] {
                        assert!(stats[kind].get(*c).is_none(), "{} keeps {kind} of the sealed column {c}: {stats}", path.display());
                    }
                }
            }
        }
    }

    // A new major version projects the whole log again: still null, and the previous version too.
    let contract = std::fs::read_to_string(repo().join("products/customers-profiles/contract.yaml")).unwrap();
    let v2 = contract.replacen("version: 1.4.0", "version: 2.0.0", 1);
    assert_ne!(v2, contract, "the contract's version is where the test expects it");
    let published = caller.runtime.block_on(async {
        let r = caller
            .client
            .post(format!("{}/api/v1/products", server.base))
            .bearer_auth(&owner)
            .header("content-type", "application/yaml")
            .body(v2)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(published.0, 201, "{}", published.1);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, product) = caller.request("GET", "/api/v1/products/customers/profiles", Some(&owner), None);
        if product["projection"]["generation"] == "v2" && product["projection"]["generations"][1]["state"] == "live" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "v2 did not go live: {:#}", product["projection"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (table, column, classified) = TABLES[0];
    for from in [table.to_owned(), "customers.\"profiles@v1\".profiles".to_owned()] {
        let rows = caller.sql(Some(&owner), &format!("SELECT {} FROM {from} WHERE {column} = '{target}'", classified.join(", ")));
        assert_eq!(rows.len(), 1, "{from}");
        for c in classified {
            assert_eq!(rows[0][*c], Value::Null, "{c} of {from} after a new major version");
        }
    }
    let control_v2 = caller.sql(Some(&owner), &format!("SELECT email FROM {table} WHERE {column} = '{control}'"));
    assert!(control_v2[0]["email"].as_str().is_some_and(|e| e.contains('@')), "the control subject in v2: {control_v2:?}");

    // Nothing of the subject is readable by an outside reader either.
    if let Some(python) = &python {
        let dump = duckdb_dump(python, &data.path().join("warehouse"));
        let leaks = found_in(&[("DuckDB".to_owned(), dump.into_bytes())], &all);
        assert!(leaks.is_empty(), "DuckDB reads clear personal values after the forget: {leaks:?}");
    }
    let leaks = found_in(&on_disk(false), &all);
    assert!(leaks.is_empty(), "clear personal values on disk or in the server's log after the forget: {leaks:?}");
    // The wrapped keys are gone from the database file and its WAL.
    let db: Vec<(String, Vec<u8>)> = on_disk(true).into_iter().filter(|(p, _)| p.contains("tessera.db")).collect();
    for key in &wrapped {
        let hits: Vec<&String> = db.iter().filter(|(_, b)| b.windows(key.len()).any(|w| w == key.as_slice())).map(|(p, _)| p).collect();
        assert!(hits.is_empty(), "a destroyed wrapped key is still in {hits:?}");
    }
    drop(server);
}

/// The wrapped data keys of `subject` in the server's SQLite database.
fn wrapped_keys(data: &Path, subject: &str) -> Vec<Vec<u8>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::Row as _;
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&format!("sqlite://{}?mode=ro", data.join("tessera.db").display())).await.unwrap();
        let rows = sqlx::query("SELECT wrapped FROM data_keys WHERE subject = $1").bind(subject).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows.iter().map(|r| r.try_get::<Vec<u8>, _>(0).unwrap()).collect()
    })
}
