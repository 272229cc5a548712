//! `POST /api/v1/sql` and the PostgreSQL protocol, over real HTTP and real
//! clients (psql, psycopg), against SQLite and PostgreSQL catalogs: result
//! formats, errors, the audit log, and a red-team suite of attempts to read
//! clear personal data or to change anything.

use serde_json::{Value, json};

use crate::on_both;
use crate::support::{ANALYST, CLINIC, CUSTOMERS, STEWARD, TestServer, in_ci};

const PROFILES_CONTRACT: &str = include_str!("../../../../products/customers-profiles/contract.yaml");
const PROFILES_EVENTS: &str = include_str!("../../../../products/customers-profiles/events.ndjson");

/// Publishes customers/profiles with its sample events and waits until they are projected.
pub async fn load_customers(server: &TestServer) {
    let (status, body) = server.publish(Some(CUSTOMERS), PROFILES_CONTRACT).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.append(Some(CUSTOMERS), "customers/profiles", "application/x-ndjson", PROFILES_EVENTS.to_owned()).await;
    assert_eq!(status, 201, "{body}");
    let last =
        body["last_position"].as_i64().or_else(|| body["events"].as_array().and_then(|e| e.last()).and_then(|e| e["position"].as_i64()));
    let head = last.unwrap_or_else(|| panic!("no position in {body}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, p) = server.get("/api/v1/products/customers/profiles", Some(CUSTOMERS)).await;
        let tables = p["projection"]["tables"].as_array().cloned().unwrap_or_default();
        if !tables.is_empty() && tables.iter().all(|t| t["applied_position"].as_i64() >= Some(head)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not projected: {p:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs a query over HTTP; the status and the JSON body.
async fn sql(server: &TestServer, token: Option<&str>, query: &str) -> (u16, Value) {
    server.call(reqwest::Method::POST, "/api/v1/sql", token, Some("application/json"), json!({ "sql": query }).to_string()).await
}

/// The rows of a JSON result as text, one line per row.
fn lines(body: &Value) -> Vec<String> {
    body["rows"]
        .as_array()
        .map(|rows| {
            rows.iter().map(|r| r.as_array().map(|c| c.iter().map(cell).collect::<Vec<_>>().join("|")).unwrap_or_default()).collect()
        })
        .unwrap_or_default()
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

/// psql against the PostgreSQL protocol: (success, stdout, stderr).
fn psql(server: &TestServer, user: &str, token: &str, query: &str) -> Option<(bool, String, String)> {
    let conn =
        format!("host=127.0.0.1 port={} user={user} password={token} dbname=tessera sslmode=disable connect_timeout=10", server.pg_port);
    match std::process::Command::new("psql").args([conn.as_str(), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query]).output() {
        Ok(o) => {
            Some((o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned()))
        }
        Err(e) if in_ci() => panic!("psql is required under CI=true: {e}"),
        Err(e) => {
            eprintln!("skipping psql: {e}");
            None
        }
    }
}

on_both!(
    results_come_in_every_format,
    errors_are_clear_4xx,
    the_audit_log_is_for_stewards,
    red_team,
    pg_clients_connect_and_query,
    key_lookups_answer_as_the_general_path_does,
    a_key_the_caller_sees_masked_is_never_looked_up
);

async fn results_come_in_every_format(server: &TestServer) {
    load_customers(server).await;
    let q = "SELECT customer_id, email, birth_date, registered_at FROM customers.profiles.profiles ORDER BY customer_id LIMIT 3";
    let (status, body) = sql(server, Some(ANALYST), q).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["columns"],
        json!([{"name": "customer_id", "type": "string"}, {"name": "email", "type": "string"}, {"name": "birth_date", "type": "date"}, {"name": "registered_at", "type": "timestamp"}])
    );
    assert_eq!(body["row_count"], 3);
    assert_eq!(body["truncated"], false);
    let rows = lines(&body);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.split('|').nth(1).is_some_and(|e| e.starts_with("***@") || e == "NULL")), "{rows:?}");

    let post = |accept: &'static str| {
        server.http.post(server.url("/api/v1/sql")).bearer_auth(ANALYST).header("accept", accept).json(&json!({ "sql": q })).send()
    };
    let csv = post("text/csv").await.expect("csv");
    assert_eq!(csv.headers()["content-type"], "text/csv");
    let text = csv.text().await.expect("text");
    let csv_lines: Vec<&str> = text.lines().collect();
    assert_eq!(csv_lines[0], "customer_id,email,birth_date,registered_at");
    assert_eq!(csv_lines.len(), 4, "{text}");
    assert!(csv_lines[1].starts_with(&rows[0].split('|').take(2).collect::<Vec<_>>().join(",")), "{text}");

    let arrow_bytes = post("application/vnd.apache.arrow.stream").await.expect("arrow").bytes().await.expect("bytes");
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow_bytes), None).expect("arrow stream");
    let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("batches");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);

    let parquet_bytes = post("application/vnd.apache.parquet").await.expect("parquet").bytes().await.expect("bytes");
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet_bytes).expect("parquet").build().expect("reader");
    let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("batches");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    assert_eq!(batches[0].schema().field(1).name(), "email");

    // The row limit (10,000 on the test servers) cuts and says so.
    let (status, body) = sql(server, Some(ANALYST), "SELECT * FROM generate_series(1, 20000)").await;
    assert_eq!(status, 200);
    assert_eq!(body["row_count"], 10_000);
    assert_eq!(body["truncated"], true);
}

async fn errors_are_clear_4xx(server: &TestServer) {
    for (query, status, code) in [
        ("SELEC 1", 400, "sql_syntax"),
        ("SELECT nope FROM customers.profiles.profiles", 400, "invalid_query"),
        ("SELECT * FROM nowhere.nothing.none", 400, "invalid_query"),
        ("DROP TABLE customers.profiles.profiles", 403, "read_only"),
        ("SELECT 1/0", 400, "query_failed"),
    ] {
        let (s, body) = sql(server, Some(ANALYST), query).await;
        assert_eq!((s, body["code"].as_str()), (status, Some(code)), "{query}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (s, body) = server.call(reqwest::Method::POST, "/api/v1/sql", Some(ANALYST), Some("application/json"), "{\"query\": 1}").await;
    assert_eq!((s, body["code"].as_str()), (400, Some("invalid_json")), "{body}");
    let response = server
        .http
        .post(server.url("/api/v1/sql"))
        .header("accept", "image/png")
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 406);
}

async fn the_audit_log_is_for_stewards(server: &TestServer) {
    let (s, _) = sql(server, Some(ANALYST), "SELECT 42 AS answer").await;
    assert_eq!(s, 200);
    let (s, _) = sql(server, Some(ANALYST), "DELETE FROM customers.profiles.profiles").await;
    assert_eq!(s, 403);
    let (s, body) = server.get("/api/v1/audit", Some(ANALYST)).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = server.get("/api/v1/audit?principal=analyst", Some(STEWARD)).await;
    assert_eq!(s, 200, "{body}");
    let queries = body["queries"].as_array().expect("queries");
    assert_eq!(queries.len(), 2, "{body:#}");
    assert_eq!(queries[0]["outcome"], "refused");
    assert_eq!(queries[1]["sql"], "SELECT 42 AS answer");
    assert_eq!(queries[1]["rows"], 1);
    assert_eq!(queries[1]["via"], "http");
    assert!(queries[1]["duration_us"].as_i64().is_some());
}

/// What an attempt must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Refused with an error.
    Refused,
    /// Runs, returns no rows.
    Empty,
    /// Runs; nothing in the result is a clear value masking hides.
    Masked,
}

/// The attempts, with `{email}`, `{name}`, `{phone}`, `{birth}`, `{national_id}`,
/// `{ip}` standing for one customer's clear values.
const ATTACKS: &[(&str, Expect)] = &[
    // Plain reads and every column.
    ("SELECT * FROM customers.profiles.profiles", Expect::Masked),
    ("SELECT email, full_name, phone, birth_date, national_id, signup_ip, address FROM customers.profiles.profiles", Expect::Masked),
    // Inference through filters.
    ("SELECT customer_id FROM customers.profiles.profiles WHERE email = '{email}'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE email LIKE '{email_prefix}%'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE split_part(email, '@', 1) = '{email_prefix}'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE full_name = '{name}'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE full_name = encode(sha256('{name}'), 'hex')", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE phone = '{phone}'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE substr(phone, 1, 3) = '+44'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE national_id LIKE 'QQ%'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE birth_date = DATE '{birth}'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE birth_date BETWEEN DATE '{birth}' AND DATE '{birth}'", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE signup_ip = '{ip}'", Expect::Empty),
    (
        "SELECT customer_id FROM customers.profiles.profiles WHERE get_field(address, 'street') IS NOT NULL AND customer_id = '{id}' AND get_field(address, 'street') <> '***'",
        Expect::Empty,
    ),
    (
        "SELECT customer_id FROM customers.profiles.profiles WHERE length(email) = length('{email}') AND email LIKE '%{email_prefix}%'",
        Expect::Empty,
    ),
    // Joins.
    ("SELECT p.customer_id FROM customers.profiles.profiles p JOIN (VALUES ('{email}')) v(e) ON p.email = v.e", Expect::Empty),
    (
        "SELECT a.customer_id FROM customers.profiles.profiles a JOIN customers.profiles.profiles b ON a.email = b.email AND b.email = '{email}'",
        Expect::Empty,
    ),
    // Grouping, ordering and aggregates.
    ("SELECT email, count(*) FROM customers.profiles.profiles GROUP BY email", Expect::Masked),
    ("SELECT full_name FROM customers.profiles.profiles ORDER BY full_name LIMIT 5", Expect::Masked),
    ("SELECT min(email), max(email), min(phone), max(national_id) FROM customers.profiles.profiles", Expect::Masked),
    ("SELECT string_agg(full_name, ','), array_agg(email) FROM customers.profiles.profiles", Expect::Masked),
    ("SELECT first_value(email) OVER (ORDER BY email), last_value(phone) OVER () FROM customers.profiles.profiles LIMIT 3", Expect::Masked),
    ("SELECT count(*) FROM customers.profiles.profiles WHERE CASE WHEN email = '{email}' THEN true ELSE false END", Expect::Masked),
    // Late masking: a top-k or filter on clear columns runs below the mask;
    // one on a masked column, or a masked column renamed to a clear one's
    // name, must not.
    (
        "SELECT customer_id, email, full_name FROM customers.profiles.profiles WHERE customer_id = '{id}' ORDER BY customer_id LIMIT 1",
        Expect::Masked,
    ),
    ("SELECT * FROM customers.profiles.profiles ORDER BY customer_id LIMIT 3", Expect::Masked),
    (
        "SELECT email, phone FROM customers.profiles.profiles WHERE country IS NOT NULL ORDER BY country, customer_id LIMIT 2",
        Expect::Masked,
    ),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE customer_id = '{id}' AND email = '{email}' LIMIT 1", Expect::Empty),
    (
        "SELECT customer_id FROM customers.profiles.profiles WHERE customer_id = '{id}' AND email LIKE '{email_prefix}%' ORDER BY customer_id LIMIT 1",
        Expect::Empty,
    ),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE email IN ('{email}') ORDER BY customer_id LIMIT 5", Expect::Empty),
    ("SELECT customer_id FROM customers.profiles.profiles WHERE birth_date = DATE '{birth}' ORDER BY customer_id LIMIT 1", Expect::Empty),
    (
        "SELECT customer_id FROM (SELECT customer_id, email AS country FROM customers.profiles.profiles) t WHERE country = '{email}' ORDER BY customer_id LIMIT 1",
        Expect::Empty,
    ),
    (
        "SELECT c FROM (SELECT email AS customer_id, customer_id AS c FROM customers.profiles.profiles) t WHERE customer_id = '{email}' LIMIT 1",
        Expect::Empty,
    ),
    (
        "SELECT * FROM (SELECT full_name AS customer_id, signup_ip AS country FROM customers.profiles.profiles) t ORDER BY customer_id, country LIMIT 2",
        Expect::Masked,
    ),
    ("SELECT customer_id FROM customers.profiles.profiles ORDER BY national_id NULLS FIRST, customer_id LIMIT 1", Expect::Masked),
    ("EXPLAIN ANALYZE SELECT * FROM customers.profiles.profiles WHERE customer_id = '{id}' ORDER BY customer_id LIMIT 1", Expect::Masked),
    // EXPLAIN.
    ("EXPLAIN SELECT * FROM customers.profiles.profiles WHERE email = '{email}'", Expect::Masked),
    ("EXPLAIN VERBOSE SELECT email FROM customers.profiles.profiles", Expect::Masked),
    ("EXPLAIN ANALYZE SELECT email, full_name FROM customers.profiles.profiles", Expect::Masked),
    // Time travel to old versions.
    ("SELECT * FROM as_of('customers.profiles.profiles', 1)", Expect::Masked),
    ("SELECT email FROM as_of('customers.profiles.profiles', '2999-01-01T00:00:00Z') WHERE email = '{email}'", Expect::Empty),
    ("SELECT * FROM AS_OF('customers.profiles.profiles', 1) UNION ALL SELECT * FROM customers.profiles.profiles", Expect::Masked),
    // Quoting and case.
    ("SELECT \"email\", \"full_name\" FROM \"customers\".\"profiles\".\"profiles\"", Expect::Masked),
    ("SELECT EMAIL, Full_Name FROM CUSTOMERS.PROFILES.PROFILES", Expect::Masked),
    ("SELECT \"EMAIL\" FROM customers.profiles.profiles", Expect::Refused),
    ("SELECT * FROM customers.\"profiles@v0\".profiles", Expect::Refused),
    // CTEs, unions and subqueries.
    ("WITH c AS (SELECT * FROM customers.profiles.profiles) SELECT email FROM c WHERE email = '{email}'", Expect::Empty),
    ("WITH RECURSIVE r(e) AS (SELECT email FROM customers.profiles.profiles) SELECT e FROM r", Expect::Masked),
    ("SELECT email FROM customers.profiles.profiles UNION SELECT full_name FROM customers.profiles.profiles", Expect::Masked),
    ("SELECT (SELECT email FROM customers.profiles.profiles WHERE customer_id = '{id}')", Expect::Masked),
    ("SELECT 1 WHERE EXISTS (SELECT 1 FROM customers.profiles.profiles WHERE email = '{email}')", Expect::Empty),
    ("SELECT 1 WHERE '{email}' IN (SELECT email FROM customers.profiles.profiles)", Expect::Empty),
    // Reading files and URLs.
    ("SELECT * FROM '/etc/passwd'", Expect::Refused),
    ("SELECT * FROM 'file:///etc/hostname'", Expect::Refused),
    ("SELECT * FROM read_csv('/etc/passwd')", Expect::Refused),
    ("SELECT * FROM read_parquet('{warehouse}')", Expect::Refused),
    ("CREATE EXTERNAL TABLE raw STORED AS PARQUET LOCATION '{warehouse}'", Expect::Refused),
    ("COPY (SELECT * FROM customers.profiles.profiles) TO '/tmp/tessera-leak.csv'", Expect::Refused),
    // DDL, DML and settings.
    ("CREATE TABLE leak AS SELECT * FROM customers.profiles.profiles", Expect::Refused),
    ("CREATE VIEW leak AS SELECT * FROM customers.profiles.profiles", Expect::Refused),
    ("SELECT * INTO leak FROM customers.profiles.profiles", Expect::Refused),
    ("INSERT INTO customers.profiles.profiles (customer_id) VALUES ('x')", Expect::Refused),
    ("UPDATE customers.profiles.profiles SET email = 'x'", Expect::Refused),
    ("DELETE FROM customers.profiles.profiles", Expect::Refused),
    ("DROP TABLE customers.profiles.profiles", Expect::Refused),
    ("SET datafusion.execution.target_partitions = 1", Expect::Refused),
    ("PREPARE p AS SELECT email FROM customers.profiles.profiles", Expect::Refused),
    ("SELECT 1; DROP TABLE customers.profiles.profiles", Expect::Refused),
];

/// One customer's clear values, as a steward reads them.
async fn secrets(server: &TestServer) -> Vec<(&'static str, String)> {
    let (s, body) = sql(
        server,
        Some(STEWARD),
        "SELECT customer_id, email, full_name, phone, CAST(birth_date AS VARCHAR), national_id, signup_ip FROM customers.profiles.profiles \
         WHERE email IS NOT NULL AND phone IS NOT NULL AND birth_date IS NOT NULL AND signup_ip IS NOT NULL AND national_id IS NOT NULL ORDER BY customer_id LIMIT 1",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let row = lines(&body).pop().expect("a customer with every field");
    let cells: Vec<String> = row.split('|').map(str::to_owned).collect();
    let email_prefix = cells[1].split('@').next().unwrap_or_default().to_owned();
    vec![
        ("id", cells[0].clone()),
        ("email", cells[1].clone()),
        ("email_prefix", email_prefix),
        ("name", cells[2].clone()),
        ("phone", cells[3].clone()),
        ("birth", cells[4].clone()),
        ("national_id", cells[5].clone()),
        ("ip", cells[6].clone()),
    ]
}

/// Every attempt, as analyst and as public, over HTTP and over the
/// PostgreSQL protocol: none reads a clear value that masking hides, and
/// none changes anything.
async fn red_team(server: &TestServer) {
    load_customers(server).await;
    let secrets = secrets(server).await;
    let warehouse = server.warehouse.root().path().to_owned();
    // Every clear value of the whole table must stay hidden, not just one customer's.
    let (_, all) =
        sql(server, Some(STEWARD), "SELECT email, full_name, phone, national_id, signup_ip FROM customers.profiles.profiles").await;
    let mut hidden: Vec<String> =
        lines(&all).iter().flat_map(|r| r.split('|').map(str::to_owned).collect::<Vec<_>>()).filter(|v| v != "NULL").collect();
    hidden.extend(secrets.iter().filter(|(k, _)| matches!(*k, "birth")).map(|(_, v)| v.clone()));
    hidden.sort();
    hidden.dedup();
    let count_before = server.count_events().await;
    let mut attempts = 0;
    for (template, expect) in ATTACKS {
        let mut query = template.replace("{warehouse}", &warehouse);
        for (k, v) in &secrets {
            query = query.replace(&format!("{{{k}}}"), v);
        }
        for (who, token) in [("analyst", Some(ANALYST)), ("public", None)] {
            // Over HTTP.
            let (status, body) = sql(server, token, &query).await;
            attempts += 1;
            let text = body.to_string();
            match expect {
                Expect::Refused => assert!((400..500).contains(&status), "{who} over HTTP: {query}: {status} {body}"),
                Expect::Empty => assert_eq!((status, body["row_count"].as_u64()), (200, Some(0)), "{who} over HTTP: {query}: {body}"),
                Expect::Masked => assert_eq!(status, 200, "{who} over HTTP: {query}: {body}"),
            }
            if status == 200 {
                for v in &hidden {
                    // The attacker's own literals may echo back (EXPLAIN shows the query); values from the table may not.
                    if !query.contains(v.as_str()) {
                        assert!(!text.contains(v.as_str()), "{who} over HTTP read `{v}`: {query}\n{text}");
                    }
                }
                assert!(!text.contains(&warehouse) && !text.contains(".parquet"), "{who} over HTTP sees storage: {query}\n{text}");
            }
            // Over the PostgreSQL protocol (public has no password to give: analyst only).
            if who == "analyst"
                && let Some((ok, out, err)) = psql(server, "analyst", ANALYST, &query)
            {
                attempts += 1;
                match expect {
                    Expect::Refused => assert!(!ok, "analyst over psql: {query}: {out}"),
                    Expect::Empty => assert!(ok && out.trim().is_empty(), "analyst over psql: {query}: {out} {err}"),
                    Expect::Masked => assert!(ok, "analyst over psql: {query}: {err}"),
                }
                for v in &hidden {
                    if !query.contains(v.as_str()) {
                        assert!(
                            !out.contains(v.as_str()) && !err.contains(v.as_str()),
                            "analyst over psql read `{v}`: {query}\n{out}{err}"
                        );
                    }
                }
                assert!(!out.contains(&warehouse) && !err.contains(&warehouse), "psql sees storage: {query}\n{out}{err}");
            }
        }
    }
    assert!(ATTACKS.len() >= 40, "the red team has {} attempts", ATTACKS.len());
    eprintln!("red team: {attempts} attempts ({} queries) failed to read clear data or change anything", ATTACKS.len());
    // Nothing changed: the log, and the table's rows.
    assert_eq!(server.count_events().await, count_before);
    let (_, after) =
        sql(server, Some(STEWARD), "SELECT email, full_name, phone, national_id, signup_ip FROM customers.profiles.profiles").await;
    assert_eq!(lines(&after), lines(&all));
    assert!(!std::path::Path::new("/tmp/tessera-leak.csv").exists());
}

/// psql and psycopg connect with a principal's name and token, and query.
async fn pg_clients_connect_and_query(server: &TestServer) {
    load_customers(server).await;
    let q = "SELECT count(*) FROM customers.profiles.profiles";
    let (_, body) = sql(server, Some(ANALYST), q).await;
    let count = lines(&body).pop().expect("count");
    if let Some((ok, out, err)) = psql(server, "analyst", ANALYST, q) {
        assert!(ok, "{err}");
        assert_eq!(out.trim(), count);
        // A wrong token, or another principal's, is refused.
        let (ok, _, err) = psql(server, "analyst", "wrong", q).expect("psql");
        assert!(!ok && err.contains("password authentication failed"), "{err}");
        let (ok, _, _) = psql(server, "steward", ANALYST, q).expect("psql");
        assert!(!ok);
        // The owner reads emails in the clear over psql too.
        let (ok, out, err) =
            psql(server, "customers-owner", CUSTOMERS, "SELECT email FROM customers.profiles.profiles WHERE email IS NOT NULL LIMIT 1")
                .expect("psql");
        assert!(ok && out.contains('@') && !out.starts_with("***"), "{out} {err}");
    }
    let python = std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import sys, psycopg
port, user, token = sys.argv[1], sys.argv[2], sys.argv[3]
with psycopg.connect(host="127.0.0.1", port=port, user=user, password=token, dbname="tessera", sslmode="disable") as conn:
    row = conn.execute("SELECT count(*) FROM customers.profiles.profiles").fetchone()
    print(row[0])
    row = conn.execute("SELECT email FROM customers.profiles.profiles WHERE customer_id = %s", ("CUS-000574",)).fetchone()
    print(row[0])
"#;
    let out = std::process::Command::new(&python).args(["-c", script, &server.pg_port.to_string(), "analyst", ANALYST]).output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some(count.as_str()), "{text}");
            assert_eq!(lines.next(), Some("***@example.com"), "{text}");
        }
        Ok(o) if in_ci() || !String::from_utf8_lossy(&o.stderr).contains("No module named") => {
            panic!("psycopg failed: {}", String::from_utf8_lossy(&o.stderr))
        }
        Ok(_) => eprintln!("skipping psycopg: not installed for {python}"),
        Err(e) if in_ci() => panic!("psycopg needs a Python under CI=true: {e}"),
        Err(e) => eprintln!("skipping psycopg: {e}"),
    }
}

/// A query's status and body bytes, in the format `accept` asks for.
async fn answer(server: &TestServer, token: Option<&str>, accept: &str, query: &str) -> (u16, Vec<u8>) {
    let mut request = server.http.post(server.url("/api/v1/sql")).header("accept", accept).json(&json!({ "sql": query }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.bytes().await.unwrap_or_else(|e| panic!("{query} in {accept}: {e}")).to_vec())
}

/// A result body as text: an Arrow stream decoded (schema and rows).
fn shown(format: &str, body: &[u8]) -> String {
    if format != "application/vnd.apache.arrow.stream" {
        return String::from_utf8_lossy(body).into_owned();
    }
    match arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body.to_vec()), None) {
        Ok(reader) => {
            let schema = reader.schema();
            let batches: Vec<String> = reader.map(|b| format!("{b:?}")).collect();
            format!("{schema:#?}\n{}", batches.join("\n"))
        }
        Err(e) => format!("not an Arrow stream: {e}"),
    }
}

/// A body without its timing (`"elapsed_ms": …` of a JSON result).
fn untimed(body: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&body).into_owned();
    match text.find("\"elapsed_ms\":") {
        Some(at) => {
            let end = text[at..].find([',', '}']).map_or(text.len(), |e| at + e);
            format!("{}{}", &text[..at], &text[end..]).into_bytes()
        }
        None => body,
    }
}

/// Asks a sample of key lookups twice, as a lookup (answered from the
/// serving index: the engine's count says so) and in a form the lookup
/// path does not take (`WHERE (key = …)`, planned), and compares the bytes.
async fn same_answers(server: &TestServer, keys: &[String], samples: usize, seed: u64) {
    let selects = ["*", "customer_id, email, full_name", "national_id AS id, customer_id", "COUNTRY, \"customer_id\", signup_ip"];
    let limits = ["", " LIMIT 1", " LIMIT 0"];
    let callers = [None, Some(ANALYST), Some(STEWARD), Some(CUSTOMERS)];
    let formats = ["application/json", "text/csv", "application/vnd.apache.arrow.stream"];
    let mut state = seed;
    let mut next = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        usize::try_from(state >> 33).unwrap_or(0) % n
    };
    for _ in 0..samples {
        let (key, select, limit) = (&keys[next(keys.len())], selects[next(selects.len())], limits[next(limits.len())]);
        let (caller, format) = (callers[next(callers.len())], formats[next(formats.len())]);
        let lookup = format!("SELECT {select} FROM customers.profiles.profiles WHERE customer_id = '{key}'{limit}");
        let planned = format!("SELECT {select} FROM customers.profiles.profiles WHERE (customer_id = '{key}'){limit}");
        // A new table version (the projector's maintenance) is indexed in
        // the background: lookups take the general path meanwhile.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let fast = loop {
            let before = server.engine.lookups_answered();
            let (status, fast) = answer(server, caller, format, &lookup).await;
            // CSV holds no nested column (`address`): refused, on both paths alike.
            let refused = format == "text/csv" && select == "*";
            assert_eq!(status, if refused { 406 } else { 200 }, "{lookup}: {}", String::from_utf8_lossy(&fast));
            if server.engine.lookups_answered() == before + 1 {
                break (status, fast);
            }
            assert!(std::time::Instant::now() < deadline, "not answered from the serving index within 30 s: {lookup} as {caller:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let before = server.engine.lookups_answered();
        let (fast_status, fast) = fast;
        let (status, slow) = answer(server, caller, format, &planned).await;
        assert_eq!(status, fast_status, "{planned}: {}", String::from_utf8_lossy(&slow));
        assert_eq!(server.engine.lookups_answered(), before, "answered from the serving index: {planned}");
        assert!(
            untimed(fast.clone()) == untimed(slow.clone()),
            "{lookup} as {caller:?} in {format}:\n{}\nplanned:\n{}",
            shown(format, &fast),
            shown(format, &slow)
        );
    }
    // The PostgreSQL protocol: the same rows, the same text.
    for (user, token) in [("analyst", ANALYST), ("steward", STEWARD), ("customers-owner", CUSTOMERS)] {
        for _ in 0..3 {
            let (key, select) = (&keys[next(keys.len())], selects[next(selects.len())]);
            let lookup = format!("SELECT {select} FROM customers.profiles.profiles WHERE customer_id = '{key}'");
            let planned = format!("SELECT {select} FROM customers.profiles.profiles WHERE (customer_id = '{key}')");
            index_ready(server, key).await;
            let before = server.engine.lookups_answered();
            let Some((ok, fast, err)) = psql(server, user, token, &lookup) else { return };
            assert!(ok, "{lookup}: {err}");
            assert_eq!(server.engine.lookups_answered(), before + 1, "not answered from the serving index over pgwire: {lookup}");
            let Some((ok, slow, err)) = psql(server, user, token, &planned) else { return };
            assert!(ok, "{planned}: {err}");
            assert_eq!(fast, slow, "{lookup} as {user} over the PostgreSQL protocol");
        }
    }
}

/// Waits until the serving index answers lookups on the table's current version.
async fn index_ready(server: &TestServer, key: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let lookup = format!("SELECT customer_id FROM customers.profiles.profiles WHERE customer_id = '{key}'");
    loop {
        let before = server.engine.lookups_answered();
        let (status, body) = sql(server, Some(ANALYST), &lookup).await;
        assert_eq!(status, 200, "{body}");
        if server.engine.lookups_answered() > before {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the serving index did not answer within 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Key lookups are answered from the serving index without a plan, and
/// give the bytes the general path gives: for a sample of keys (present,
/// absent, of another case, deleted customers), column lists, aliases,
/// limits and callers (public, analyst, steward, the owning domain), in
/// every result format and over the PostgreSQL protocol; at the first
/// table version, at a later one (an update and a new customer), and after
/// a forget (sealed columns opened per lookup, as the scan opens them).
async fn key_lookups_answer_as_the_general_path_does(server: &TestServer) {
    load_customers(server).await;
    let (_, all) = sql(server, Some(CUSTOMERS), "SELECT customer_id FROM customers.profiles.profiles ORDER BY customer_id").await;
    let mut keys = lines(&all);
    assert!(keys.len() > 100, "{all}");
    // Deleted customers are not in the table; a key of another case, with a space, empty, unknown.
    let deleted: Vec<String> = PROFILES_EVENTS
        .lines()
        .filter(|l| l.contains("\"CustomerDeleted\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["payload"]["customer_id"].as_str().map(str::to_owned))
        .collect();
    assert!(!deleted.is_empty());
    keys.extend(deleted);
    keys.extend(["CUS-999999".to_owned(), String::new(), keys[0].to_lowercase(), format!("{} ", keys[0])]);
    index_ready(server, &keys[0]).await;
    same_answers(server, &keys, 60, 0x5eed).await;

    // A new table version: a customer's profile changes, one registers.
    let target = keys[7].clone();
    let events = [
        json!({"stream": target, "type": "CustomerProfileUpdated", "id": "019b7b12-05a3-7f2b-ad2f-000000000001", "schema_version": 1,
               "payload": {"customer_id": target, "phone": "+44 20 7946 0001", "full_name": "Ada Lookup", "updated_at": "2026-02-01T10:00:00Z"},
               "metadata": {"producer": "test"}}),
        json!({"stream": "CUS-900001", "type": "CustomerRegistered", "id": "019b7b12-05a3-7f2b-ad2f-000000000002", "schema_version": 3,
               "payload": {"customer_id": "CUS-900001", "email": "new.customer@example.com", "full_name": "New Customer",
                           "national_id": "QQ900001C", "country": "GB", "email_verified": true, "registered_at": "2026-02-01T10:00:00Z"},
               "metadata": {"producer": "test"}}),
    ];
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let (status, appended) = server.append(Some(CUSTOMERS), "customers/profiles", "application/x-ndjson", body).await;
    assert_eq!(status, 201, "{appended}");
    let position = appended["last_position"].as_i64().expect("position");
    server.projected("customers/profiles", position).await;
    keys.push("CUS-900001".to_owned());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // The new version is indexed once the lookup path answers with the new row.
        let before = server.engine.lookups_answered();
        let (_, body) =
            sql(server, Some(CUSTOMERS), "SELECT full_name FROM customers.profiles.profiles WHERE customer_id = 'CUS-900001'").await;
        if server.engine.lookups_answered() > before && lines(&body) == vec!["New Customer".to_owned()] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new version was not indexed within 30 s: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, body) =
        sql(server, Some(CUSTOMERS), &format!("SELECT full_name FROM customers.profiles.profiles WHERE customer_id = '{target}'")).await;
    assert_eq!(lines(&body), vec!["Ada Lookup".to_owned()], "{body}");
    let mut sample = vec![target.clone(), "CUS-900001".to_owned()];
    sample.extend(keys.iter().step_by(11).cloned());
    same_answers(server, &sample, 40, 0xfeed).await;

    // A forget: the subject's sealed values are gone on both paths at once.
    let (status, body) = server
        .post_json(
            "/api/v1/subjects/forget",
            Some(CUSTOMERS),
            json!({"subject": target, "reason": "erasure request", "domain": "customers"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) =
        sql(server, Some(CUSTOMERS), &format!("SELECT email FROM customers.profiles.profiles WHERE customer_id = '{target}'")).await;
    assert_eq!(lines(&body), vec!["NULL".to_owned()], "the forgotten email from the lookup path: {body}");
    same_answers(server, &[target.clone(), keys[3].clone()], 24, 0xf0f0).await;
}

/// An upsert table keyed by a classified column (a hostile or careless
/// domain keys patients by email): no lookup by it is answered from the
/// serving index, neither for a caller who sees the key masked (a lookup
/// by a clear email finds nothing, one by the masked form finds what the
/// general path finds) nor for the owner (the key is stored sealed). No
/// response to the analyst holds a personal value.
async fn a_key_the_caller_sees_masked_is_never_looked_up(server: &TestServer) {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/hostile-domain");
    let contract = std::fs::read_to_string(corpus.join("01-plain-select/v1.yaml"))
        .expect("corpus contract")
        .replace("name: leak_01_plain_select", "name: keyed_by_email")
        .replacen("key: [patient_id]", "key: [email]", 1)
        .replacen(
            "      email: { type: string, classification: pii.email,",
            "      email: { type: string, required: true, classification: pii.email,",
            1,
        );
    let (status, body) = server.publish(Some(CLINIC), &contract).await;
    assert_eq!(status, 201, "{body}");
    let events = std::fs::read_to_string(corpus.join("events.ndjson")).expect("corpus events");
    let (status, appended) = server.append(Some(CLINIC), "clinic/keyed_by_email", "application/x-ndjson", events).await;
    assert_eq!(status, 201, "{appended}");
    server.projected("clinic/keyed_by_email", appended["last_position"].as_i64().expect("position")).await;
    let personal = std::fs::read_to_string(corpus.join("personal.txt")).expect("personal values");
    let email = "quorvin.zythrosk@example.com";
    let by = |value: &str| format!("SELECT * FROM clinic.keyed_by_email.patients WHERE email = '{value}'");
    let planned = |value: &str| format!("SELECT * FROM clinic.keyed_by_email.patients WHERE (email = '{value}')");

    // The owner reads emails in the clear, but they are stored sealed (a
    // forget must reach them): the index holds no clear key, so the owner
    // too is answered by the general path, which opens them first.
    // A lookup not answered from the index, and the same bytes as planned.
    let not_from_index = |token: &'static str, value: String, accept: &'static str| async move {
        let before = server.engine.lookups_answered();
        let (status, fast) = answer(server, Some(token), accept, &by(&value)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&fast));
        assert_eq!(server.engine.lookups_answered(), before, "answered from the index by a sealed or masked key: {value}");
        let (_, slow) = answer(server, Some(token), accept, &planned(&value)).await;
        assert!(untimed(fast.clone()) == untimed(slow), "{value} in {accept}");
        fast
    };
    for accept in ["application/json", "application/vnd.apache.arrow.stream"] {
        not_from_index(CLINIC, email.to_owned(), accept).await;
    }
    let (_, rows) = sql(server, Some(CLINIC), &by(email)).await;
    assert_eq!(rows["row_count"], 1, "{rows}");

    // The analyst: never from the index, whatever the literal.
    let (_, masked) = sql(server, Some(ANALYST), "SELECT email FROM clinic.keyed_by_email.patients LIMIT 1").await;
    let masked_email = lines(&masked).first().cloned().expect("a masked email");
    assert!(masked_email.starts_with("***@"), "{masked}");
    for value in [email, masked_email.as_str(), "nobody@example.com"] {
        for accept in ["application/json", "application/vnd.apache.arrow.stream"] {
            let fast = not_from_index(ANALYST, value.to_owned(), accept).await;
            let text = String::from_utf8_lossy(&fast).to_lowercase();
            for clear in personal.lines().map(str::trim).filter(|l| !l.is_empty()) {
                // The analyst's own literal is echoed by no response either.
                assert!(!text.contains(&clear.to_lowercase()), "{clear} in the analyst's answer to {value}");
            }
        }
    }
    let (_, clear) = sql(server, Some(ANALYST), &by(email)).await;
    assert_eq!(clear["row_count"], 0, "a lookup by a clear email must find nothing: {clear}");
    let (_, all_masked) = sql(server, Some(ANALYST), &by(&masked_email)).await;
    assert!(all_masked["row_count"].as_u64() >= Some(1), "{all_masked}");
}
