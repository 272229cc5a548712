//! The server's memory budget, measured where it matters: the resident
//! memory of a real `tessera serve` process while anonymous and signed-in
//! callers run memory-hungry queries at once over HTTP and the PostgreSQL
//! protocol. The budget holds (the process grows by no more than the
//! configured query memory budget) and the server keeps answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::{http, psql, start};

/// Per query, and for all queries together (MiB).
const QUERY_MEMORY_MB: u64 = 64;
const BUDGET_MB: u64 = 256;

/// Queries that hold or allocate far more than their limit unless it is
/// enforced: a window over its whole input, constants copied into every
/// row, bounded functions over many rows, aggregation into one value,
/// sorting, a large join build side.
fn hostile_queries() -> Vec<String> {
    let wide = (0..8).map(|i| format!("repeat('{i}', 16000) AS c{i}")).collect::<Vec<_>>().join(", ");
    let literal = "z".repeat(60_000);
    vec![
        "SELECT max(x) OVER () AS m FROM generate_series(1, 50000000) t(x) LIMIT 1".to_owned(),
        "SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS s FROM generate_series(1, 20000000) t(x) LIMIT 1".to_owned(),
        format!("SELECT sum(length(c0 || c7 || x::text)) AS n FROM (SELECT {wide}, x FROM generate_series(1, 400000) t(x)) w"),
        format!("SELECT sum(length('{literal}' || x::text)) AS n FROM generate_series(1, 400000) t(x)"),
        "SELECT sum(length(repeat(x::text, 1000))) AS n FROM generate_series(1, 2000000) t(x)".to_owned(),
        "SELECT length(string_agg(repeat('s', 4000), ',')) AS n FROM generate_series(1, 2000000) t(x)".to_owned(),
        "SELECT cardinality(array_agg(x)) AS n FROM generate_series(1, 100000000) t(x)".to_owned(),
        "SELECT x FROM generate_series(1, 50000000) t(x) ORDER BY random() LIMIT 10 OFFSET 40000000".to_owned(),
        "SELECT count(*) AS n FROM generate_series(1, 20000000) a(x) JOIN generate_series(1, 20000000) b(y) ON x = y".to_owned(),
        // A gathered value copied into every row of its window, or of the other side of a join.
        "SELECT sum(cardinality(a)) AS n FROM (SELECT array_agg(x) OVER (PARTITION BY x / 500) AS a FROM generate_series(1, 2000000) t(x))".to_owned(),
        "SELECT sum(length(s)) AS n FROM generate_series(1, 3000000) t(x), (SELECT string_agg(y::text, ',') AS s FROM generate_series(1, 1200) u(y)) g".to_owned(),
        // One row's span, not each argument's extremes; the siblings of an unnested list.
        "SELECT cardinality(range(a, b)) AS n FROM (VALUES (0, 2000000000), (2000000000, 2000000000)) t(a, b)".to_owned(),
        "SELECT sum(length(pad)) AS n FROM (SELECT unnest(range(0, 900)) AS u, repeat(x::text, 2000) AS pad FROM generate_series(1, 100000) t(x))".to_owned(),
        // Functions that multiply what they are given.
        "SELECT sum(cardinality(regexp_match(s, '((((((((((.*))))))))))'))) AS n FROM (SELECT repeat(x::text, 1000) AS s FROM generate_series(1, 1000000) t(x))".to_owned(),
        "SELECT sum(cardinality(make_array(c, c, c, c, c, c, c, c))) AS n FROM (SELECT repeat(x::text, 1500) AS c FROM generate_series(1, 1000000) t(x))".to_owned(),
    ]
}

/// The resident and peak resident memory of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn concurrent_hostile_queries_stay_within_the_memory_budget() {
    let _alone = crate::alone();
    let data = tempfile::tempdir().unwrap();
    let server = start(
        data.path(),
        &[
            ("TESSERA_QUERY_MEMORY_MB", QUERY_MEMORY_MB.to_string()),
            ("TESSERA_QUERY_MEMORY_BUDGET_MB", BUDGET_MB.to_string()),
            ("TESSERA_QUERY_TIMEOUT_SECONDS", "20".to_owned()),
        ],
        None,
    );
    let pid = server.child.id();
    let principals: Value = serde_json::from_str(&std::fs::read_to_string(data.path().join("demo-principals.json")).unwrap()).unwrap();
    let token_of =
        |name: &str| principals.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["token"].as_str().unwrap().to_owned();
    let analyst = token_of("analyst");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();

    // Warm up every path once, then take the baseline.
    runtime.block_on(async {
        for token in [None, Some(analyst.as_str())] {
            let (status, code) = http(&client, &server.base, token, "SELECT count(*) AS n FROM sales.orders.orders").await;
            assert_eq!(status, 200, "{code}");
        }
    });
    let (ok, out) = psql(server.pg_port, "analyst", &analyst, "SELECT count(*) FROM sales.orders.orders");
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let (baseline_kib, _) = memory_kib(pid);

    // Sample the resident memory while the queries run.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline_kib));
    let sampler = {
        let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(memory_kib(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let started = Instant::now();
    let queries = hostile_queries();
    // Over the PostgreSQL protocol: the analyst runs every query, two connections at once.
    let pg: Vec<_> = (0..2)
        .map(|lane| {
            let (queries, analyst, pg_port) = (queries.clone(), analyst.clone(), server.pg_port);
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for (i, sql) in queries.iter().enumerate().filter(|(i, _)| i % 2 == lane) {
                    let (ok, said) = psql(pg_port, "analyst", &analyst, sql);
                    outcomes.push((i, ok, said.chars().take(300).collect::<String>()));
                }
                outcomes
            })
        })
        .collect();
    // Over HTTP: anonymous callers and the analyst, every query, all at once.
    let outcomes = runtime.block_on(async {
        let mut tasks = Vec::new();
        for (i, sql) in queries.iter().enumerate() {
            for token in [None, Some(analyst.clone())] {
                let (client, base, sql) = (client.clone(), server.base.clone(), sql.clone());
                tasks.push(tokio::spawn(async move { (i, token.is_some(), http(&client, &base, token.as_deref(), &sql).await) }));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let pg_outcomes: Vec<_> = pg.into_iter().flat_map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (_, hwm_kib) = memory_kib(pid);
    let peak_kib = peak.load(Ordering::Relaxed).max(hwm_kib);
    eprintln!(
        "memory: baseline {} MiB, peak {} MiB, growth {} MiB (budget {BUDGET_MB} MiB), {:.1} s",
        baseline_kib >> 10,
        peak_kib >> 10,
        peak_kib.saturating_sub(baseline_kib) >> 10,
        started.elapsed().as_secs_f64()
    );
    for (i, signed_in, (status, code)) in &outcomes {
        eprintln!("http q{i} {}: {status} {code}", if *signed_in { "analyst" } else { "anonymous" });
        // Answered, out of memory, out of time, or busy: never a crash or an internal error.
        assert!(
            (*status == 200 && ["", "memory_limit", "query_timeout"].contains(&code.as_str()))
                || (*status == 422 && ["memory_limit", "query_timeout"].contains(&code.as_str()))
                || (*status == 429 && code == "too_many_queries"),
            "query {i} answered {status} {code}"
        );
    }
    for (i, ok, said) in &pg_outcomes {
        eprintln!("pgwire q{i}: {ok} {said}");
        assert!(*ok || said.contains("memory") || said.contains("limit") || said.contains("at once"), "query {i} over psql: {said}");
    }
    assert!(
        outcomes.iter().any(|(_, _, (_, c))| c == "memory_limit"),
        "some queries ran into the memory limit (else this test does not test it)"
    );

    // Still serving, over both protocols. A query past its deadline has
    // been answered, but may hold its slot until the batch it is computing
    // is done: a slot taken is told to retry, and is retried.
    runtime.block_on(async {
        let r = client.get(format!("{}/healthz", server.base)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let since = Instant::now();
        loop {
            let (status, code) = http(&client, &server.base, None, "SELECT 1 + 1 AS two").await;
            if status == 429 && since.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            assert_eq!(status, 200, "{code}");
            break;
        }
    });
    let since = Instant::now();
    let (ok, out) = loop {
        let (ok, out) = psql(server.pg_port, "analyst", &analyst, "SELECT 1 + 1");
        if !ok && out.contains("at once") && since.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        break (ok, out);
    };
    assert!(ok && out.trim() == "2", "{out}");

    let growth_mib = peak_kib.saturating_sub(baseline_kib) >> 10;
    assert!(growth_mib <= BUDGET_MB, "the server grew by {growth_mib} MiB under hostile queries, over its budget of {BUDGET_MB} MiB");
}
