//! Hostile domains and hostile callers.
//!
//! The domain suite publishes every case of `tests/corpus/hostile-domain`
//! (contracts a domain owner could write to launder personal data), then
//! reads every table of every case as an analyst and as an anonymous caller
//! over HTTP SQL, the sample endpoint, entity state and psql, and fails on
//! any personal value of the events in any answer. Lint and publish
//! behaviour, which derived tables are views, and that views leave no files
//! in the warehouse are asserted too.
//!
//! The caller suite sends what would crash or starve a server: deep and
//! wide expressions, up to and past the bounds; functions that allocate
//! without bound; many of them at once; and checks that the server answers
//! afterwards.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::on_both;
use crate::support::{ANALYST, CLINIC, TestServer, in_ci};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/hostile-domain")
}

/// The personal values, and the fragments a transformed leak would show.
fn needles() -> Vec<String> {
    let read = |f: &str| std::fs::read_to_string(corpus().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let mut out: Vec<String> = Vec::new();
    for line in read("personal.txt").lines().chain(read("fragments.txt").lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(line.to_lowercase());
        out.push(line.chars().rev().collect::<String>().to_lowercase());
    }
    out.sort();
    out.dedup();
    out
}

fn leaks(needles: &[String], text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    needles.iter().filter(|n| lower.contains(n.as_str())).cloned().collect()
}

struct Version {
    file: String,
    accepted: bool,
    views: Vec<String>,
    materialized: Vec<String>,
    errors: Vec<String>,
}

struct Case {
    dir: PathBuf,
    product: String,
    versions: Vec<Version>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn cases() -> Vec<Case> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(corpus()).expect("corpus").filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let text = std::fs::read_to_string(dir.join("expect.yaml")).expect("expect.yaml");
            let expect = tessera_contract::source::parse(&text).unwrap_or_else(|_| panic!("{}: expect.yaml", dir.display())).value;
            let versions: Vec<Version> = expect["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .map(|v| Version {
                    file: v["file"].as_str().expect("file").to_owned(),
                    accepted: v["publish"] == "accepted",
                    views: strings(&v["views"]),
                    materialized: strings(&v["materialized"]),
                    errors: strings(&v["errors"]),
                })
                .collect();
            let first = std::fs::read_to_string(dir.join(&versions[0].file)).expect("contract");
            let product = first
                .lines()
                .find_map(|l| l.strip_prefix("name:"))
                .map(|n| n.trim().to_owned())
                .unwrap_or_else(|| panic!("{}: no name", dir.display()));
            Case { dir, product, versions }
        })
        .collect()
}

async fn hostile_domains(server: &TestServer) {
    let cases = cases();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let events = std::fs::read_to_string(corpus().join("events.ndjson")).expect("events");
    let streams: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["stream"].as_str().map(str::to_owned))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let needles = needles();
    let mut served = Vec::new();
    for case in &cases {
        let mut appended = false;
        let mut last = None;
        for v in &case.versions {
            let yaml = std::fs::read_to_string(case.dir.join(&v.file)).expect("contract");
            let (status, body) = server.publish(Some(CLINIC), &yaml).await;
            let at = format!("{}/{}", case.dir.display(), v.file);
            if !v.accepted {
                assert_eq!(status, 422, "{at}: expected a refusal: {body}");
                let codes: std::collections::BTreeSet<String> =
                    body["errors"].as_array().into_iter().flatten().filter_map(|e| e["code"].as_str().map(str::to_owned)).collect();
                for code in &v.errors {
                    assert!(codes.contains(code), "{at}: expected {code}, got {codes:?}");
                }
                continue;
            }
            assert!(status == 201 || status == 200, "{at}: {status} {body}");
            let (status, lineage) = server.get(&format!("/api/v1/products/clinic/{}/lineage", case.product), None).await;
            assert_eq!(status, 200, "{lineage}");
            for node in lineage["nodes"].as_array().expect("nodes") {
                let Some(table) = node["id"].as_str().and_then(|i| i.strip_prefix("table:")) else { continue };
                if v.views.iter().any(|t| t == table) {
                    assert_eq!(node["served_as"], "view", "{at}: `{table}` must be a view: {node}");
                }
                if v.materialized.iter().any(|t| t == table) {
                    assert_eq!(node["served_as"], "table", "{at}: `{table}` must be materialized: {node}");
                }
            }
            if !appended {
                let (status, body) =
                    server.append(Some(CLINIC), &format!("clinic/{}", case.product), "application/x-ndjson", events.clone()).await;
                assert!(status == 201 || status == 200, "{at}: append: {body}");
                appended = true;
            }
            last = Some(v);
        }
        if let Some(v) = last {
            served.push((case, v));
        }
    }
    // Everything projected (views are never written, but are up to date).
    for (case, _) in &served {
        server.projected(&format!("clinic/{}", case.product), 8).await;
    }
    let warehouse = server.warehouse.root().to_file_path().expect("a local warehouse");
    for (case, v) in &served {
        let (_, product) = server.get(&format!("/api/v1/products/clinic/{}", case.product), Some(CLINIC)).await;
        let tables: Vec<String> = product["contract"]["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        let mut schemas = vec![case.product.clone()];
        // A previous major version still served.
        let (_, generations) = server.get(&format!("/api/v1/products/clinic/{}", case.product), Some(CLINIC)).await;
        if generations["projection"]["generations"].as_array().is_some_and(|g| g.iter().any(|g| g["state"] == "previous")) {
            schemas.push(format!("\"{}@v1\"", case.product));
        }
        let mut seen = String::new();
        for schema in &schemas {
            for table in &tables {
                let query = format!("SELECT * FROM clinic.{schema}.{table}");
                for token in [Some(ANALYST), None] {
                    let (status, body) = sql(server, token, &query).await;
                    assert!(status == 200 || status == 400, "{query}: {status} {body}");
                    seen.push_str(&body.to_string());
                }
                // The owner reads views too (they are real tables to them).
                let (status, body) = sql(server, Some(CLINIC), &format!("SELECT count(*) AS n FROM clinic.{schema}.{table}")).await;
                assert_eq!(status, 200, "owner: {table}: {body}");
                if schema == &case.product {
                    for token in [Some(ANALYST), None] {
                        let (_, body) = server.get(&format!("/api/v1/products/clinic/{}/sample?table={table}", case.product), token).await;
                        seen.push_str(&body.to_string());
                    }
                }
                if let Some((_, out, err)) = psql(server, "analyst", ANALYST, &query) {
                    seen.push_str(&out);
                    seen.push_str(&err);
                }
            }
        }
        for stream in &streams {
            for token in [Some(ANALYST), None] {
                let (_, body) = server.get(&format!("/api/v1/products/clinic/{}/streams/{stream}/state", case.product), token).await;
                seen.push_str(&body.to_string());
            }
        }
        let found = leaks(&needles, &seen);
        assert!(found.is_empty(), "{}: analyst or public read personal values {found:?}", case.dir.display());
        // A view leaves nothing in the warehouse.
        for view in &v.views {
            let dir = warehouse.join("clinic").join(&case.product);
            let files = parquet_files(&dir.join("v1").join(view)).len() + parquet_files(&dir.join("v2").join(view)).len();
            assert_eq!(files, 0, "{}: view `{view}` has materialized files", case.dir.display());
        }
    }
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out
}

pub async fn sql(server: &TestServer, token: Option<&str>, query: &str) -> (u16, Value) {
    let body = serde_json::json!({ "sql": query }).to_string();
    server.call(reqwest::Method::POST, "/api/v1/sql", token, Some("application/json"), body).await
}

/// psql as `user`: (success, stdout, stderr); `None` when psql is missing outside CI.
pub fn psql(server: &TestServer, user: &str, token: &str, query: &str) -> Option<(bool, String, String)> {
    let conn = format!("postgresql://{user}:{token}@127.0.0.1:{}/tessera?sslmode=disable", server.pg_port);
    match std::process::Command::new("psql").args([conn.as_str(), "-X", "-A", "-t", "-c", query]).output() {
        Ok(o) => {
            Some((o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned()))
        }
        Err(e) if in_ci() => panic!("psql is required under CI=true: {e}"),
        Err(_) => None,
    }
}

/// What an anonymous caller sends to crash or starve the server, and what
/// it must get: each shape at the bound runs (or fails cleanly), past the
/// bound is a 400 naming the bound; functions that would allocate without
/// bound are refused; afterwards the server answers.
async fn hostile_callers(server: &TestServer) {
    let chain = |n: usize| format!("SELECT {} AS x", vec!["1"; n].join(" + "));
    let parens = |n: usize| format!("SELECT {}1{} AS x", "(".repeat(n), ")".repeat(n));
    let subqueries = |n: usize| {
        let mut q = "SELECT 1 AS x".to_owned();
        for _ in 0..n {
            q = format!("SELECT x FROM ({q}) t");
        }
        q
    };
    let unions = |n: usize| vec!["SELECT 1 AS x"; n].join(" UNION ALL ");
    let ors = |n: usize| format!("SELECT 1 AS x WHERE {}", (0..n).map(|i| format!("1 = {i}")).collect::<Vec<_>>().join(" OR "));
    let nots = |n: usize| format!("SELECT {} true AS x", "NOT ".repeat(n));
    let casts = |n: usize| format!("SELECT 1{} AS x", "::BIGINT".repeat(n));
    let cases = |n: usize| format!("SELECT {}1{} AS x", "CASE WHEN true THEN ".repeat(n), " END".repeat(n));
    // Within the bound: answered (or refused by the parser's own nesting
    // limit), never a crash.
    for (what, text) in [
        ("a chain of 200 additions", chain(200)),
        ("an OR chain of 120 terms", ors(120)),
        ("40 nested parentheses", parens(40)),
        ("20 nested subqueries", subqueries(20)),
        ("100 unions", unions(100)),
        (
            "an IN list of 5000 values",
            format!("SELECT 1 AS x WHERE 1 IN ({})", (0..5000).map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
        ),
        ("20 casts", casts(20)),
    ] {
        let (status, body) = sql(server, None, &text).await;
        assert!(status == 200 || status == 400, "{what}: {status} {body}");
    }
    // Past the bound: 400, naming it, before anything is planned.
    for (what, text) in [
        ("a chain of 5000 additions", chain(5000)),
        ("a chain of 200,000 additions", chain(200_000)),
        ("2000 nested parentheses", parens(2000)),
        ("600 nested subqueries", subqueries(600)),
        ("2000 unions", unions(2000)),
        ("an OR chain of 3000 terms", ors(3000)),
        ("3000 NOTs", nots(3000)),
        ("3000 casts", casts(3000)),
        ("1000 nested CASEs", cases(1000)),
    ] {
        let (status, body) = sql(server, None, &text).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(matches!(body["code"].as_str(), Some("query_too_complex" | "sql_syntax")), "{what}: {body}");
    }
    let (status, body) = sql(server, None, &format!("SELECT '{}' AS x", "x".repeat(2 << 20))).await;
    assert!(status == 400 || status == 413, "2 MiB of SQL: {status} {body}");
    let (status, body) = sql(server, None, &format!("SELECT '{}' AS x", "x".repeat(100_000))).await;
    assert_eq!(status, 400, "a 100 KB literal: {body}");
    assert_eq!(body["code"], "query_too_complex", "{body}");
    // Functions that would allocate without bound.
    for q in [
        "SELECT length(repeat('x', 2000000000)) AS n",
        "SELECT length(lpad('x', 2000000000)) AS n",
        "SELECT length(rpad('x', 2000000000, 'yz')) AS n",
        "SELECT cardinality(array_repeat(1, 2000000000)) AS n",
        "SELECT cardinality(range(0, 2000000000)) AS n",
        "SELECT cardinality(generate_series(1, 2000000000)) AS n",
        "SELECT length(replace(repeat('a', 60000), 'a', repeat('b', 60000))) AS n",
        "SELECT length(concat(repeat('a', 60000), repeat('b', 60000))) AS n",
        "SELECT cardinality(array_resize([1], 2000000000)) AS n",
        "SELECT length(repeat('a', 60000) || repeat('b', 60000)) AS n",
        "WITH a AS (SELECT repeat('x', 40000) AS s), b AS (SELECT s || s AS s FROM a), c AS (SELECT s || s AS s FROM b) SELECT length(s) AS n FROM c",
        "WITH a AS (SELECT array_repeat(1, 6000) AS l), b AS (SELECT l || l AS l FROM a), c AS (SELECT l || l AS l FROM b) SELECT cardinality(l) AS n FROM c",
        "SELECT length(overlay(repeat('a', 60000) placing repeat('b', 60000) from 2 for 1)) AS n",
        // Estimated row by row, and for dates and timestamps too.
        "SELECT cardinality(range(a, b)) AS n FROM (VALUES (0, 2000000000), (2000000000, 2000000000)) t(a, b)",
        "SELECT cardinality(range(TIMESTAMP '1970-01-01 00:00:00', TIMESTAMP '2100-01-01 00:00:00', INTERVAL '1 second')) AS n",
        "SELECT cardinality(generate_series(DATE '1970-01-01', DATE '9999-01-01', INTERVAL '1 day')) AS n",
        // Functions that multiply their arguments.
        "SELECT cardinality(make_array(repeat('a', 60000), repeat('b', 60000), repeat('c', 60000))) AS n",
        "SELECT length(array_to_string(array_repeat(1, 8000), repeat('-', 60000))) AS n",
        "SELECT length(concat_ws(repeat('-', 60000), 'a', 'b', 'c', 'd')) AS n",
        // Gathering a whole table into one value, and copying it into every row.
        "SELECT length(string_agg(repeat('s', 1000), ',')) AS n FROM generate_series(1, 2000000) t(x)",
        "SELECT sum(cardinality(a)) AS n FROM (SELECT array_agg(x) OVER () AS a FROM generate_series(1, 200000) t(x))",
    ] {
        let (status, body) = sql(server, None, q).await;
        assert!(status == 400 || status == 422, "{q}: {status} {body}");
    }
    // Many at once, from anonymous callers and an analyst: some are told
    // to come back later, none takes the server down.
    let hostile = "SELECT count(*) AS n FROM generate_series(1, 50000000) a";
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (base, token) = (server.base.clone(), if i % 2 == 0 { None } else { Some(ANALYST) });
        tasks.push(tokio::spawn(async move {
            let mut request = reqwest::Client::new().post(format!("{base}/api/v1/sql")).json(&serde_json::json!({ "sql": hostile }));
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let response = request.send().await.expect("request");
            let retry = response.headers().get("retry-after").is_some();
            (response.status().as_u16(), retry)
        }));
    }
    let mut busy = 0;
    for t in tasks {
        let (status, retry) = t.await.expect("task");
        assert!(matches!(status, 200 | 422 | 429), "{status}");
        if status == 429 {
            assert!(retry, "a 429 says when to retry");
            busy += 1;
        }
    }
    assert!(busy > 0, "12 concurrent heavy queries: none was refused as busy");
    let (status, _) = server.get("/healthz", None).await;
    assert_eq!(status, 200);
    let (status, body) = sql(server, Some(ANALYST), "SELECT 1 + 1 AS two").await;
    assert_eq!(status, 200, "{body}");
    // Invalid UTF-8 and several statements.
    let response = server
        .http
        .post(server.url("/api/v1/sql"))
        .header("content-type", "application/json")
        .body(vec![b'{', b'"', b's', b'q', b'l', b'"', b':', b'"', 0xff, 0xfe, b'"', b'}'])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    let (status, _) = sql(server, None, "SELECT 1; SELECT 2").await;
    assert_eq!(status, 400);
    // Over the PostgreSQL protocol too.
    if let Some((ok, _, err)) = psql(server, "analyst", ANALYST, &chain(5000)) {
        assert!(!ok && err.contains("nests deeper"), "{err}");
        let (ok, _, err) = psql(server, "analyst", ANALYST, "SELECT length(repeat('x', 2000000000))").expect("psql");
        assert!(!ok, "{err}");
        let (ok, out, err) = psql(server, "analyst", ANALYST, "SELECT 1 + 1").expect("psql");
        assert!(ok && out.trim() == "2", "{out} {err}");
    }
}

/// A table that a new minor version adds reads as an empty table of its
/// declared schema until the projector has created it: never a 500.
async fn a_table_not_projected_yet_reads_as_empty(server: &TestServer) {
    let (status, body) = server.publish(Some(crate::support::SALES), crate::support::ORDERS).await;
    assert!(status == 201 || status == 200, "{body}");
    let added = crate::support::ORDERS.replacen("version: 1.2.0", "version: 1.3.0", 1)
        + "\n  currencies:\n    description: Currencies seen.\n    sql: SELECT DISTINCT currency FROM orders\n    columns:\n      currency: { type: string, required: true, description: ISO 4217 code }\n";
    // Projection is stopped, so the new table cannot have been created yet.
    server.projections.shutdown(std::time::Duration::from_secs(10)).await;
    let (status, body) = server.publish(Some(crate::support::SALES), &added).await;
    assert!(status == 201 || status == 200, "{body}");
    let (status, body) = sql(server, Some(ANALYST), "SELECT * FROM sales.orders.currencies").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["row_count"], 0, "{body}");
    assert_eq!(body["columns"][0]["name"], "currency", "{body}");
}

on_both!(hostile_domains, a_table_not_projected_yet_reads_as_empty);

/// The caller suite on a runtime like `tessera serve`'s (deep worker stacks).
mod hostile_callers {
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_stack_size(32 << 20).enable_all().build().expect("runtime")
    }

    #[test]
    fn sqlite() {
        runtime().block_on(async {
            let server = crate::support::TestServer::start(false).await.expect("SQLite server");
            super::hostile_callers(&server).await;
            server.finish().await;
        });
    }

    #[test]
    fn postgres() {
        runtime().block_on(async {
            let Some(server) = crate::support::TestServer::start(true).await else { return };
            super::hostile_callers(&server).await;
            server.finish().await;
        });
    }
}
