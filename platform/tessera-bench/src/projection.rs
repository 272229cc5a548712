//! `projection`: N events projected by Tessera's projector (release build,
//! Delta tables in a local directory, the log on SQLite and on PostgreSQL),
//! side by side with DuckDB (PyPI) doing the same transformation on the same
//! events exported as NDJSON (`read_json`, then `COPY TO` Parquet). Two
//! workloads: synthetic readings into (a) an append table and (b) an upsert
//! table over K keys; and `sales/orders` (the example product: several event
//! types per table, upserts that set different columns per event type, a
//! delete, decimals, timestamps, a sealed column). Then an incremental run
//! over 1% new events against the full run, and each projection's peak RSS.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tessera_contract::{Policy, Role};
use tessera_projection::{Projector, Stages, Warehouse};
use tessera_store::{BodyFormat, Principal, Store};

use crate::ingest::{Backend, Database, fresh_database};
use crate::median;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Event counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    events: Vec<usize>,
    /// Distinct keys of the upsert table.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Runs per measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A Python with the `duckdb` package (`.ci/run`'s venv has one).
    #[arg(long, env = "TESSERA_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Where to write the report (its `projection` section).
    #[arg(long, default_value = "bench/README.md")]
    output: PathBuf,
    /// Events per read of the log.
    #[arg(long, default_value_t = tessera_projection::projector::DEFAULT_BATCH)]
    batch: i64,
    /// Where the log is: sqlite, postgres (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    log: Vec<Backend>,
    /// PostgreSQL's admin URL: a database is created (and dropped) per measurement.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Workloads: readings, orders (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "readings,orders")]
    workloads: Vec<Workload>,
    /// The largest event count at which the readings are also projected
    /// through the previous data path and with a sealed column.
    #[arg(long, default_value_t = 1_000_000)]
    extras_up_to: usize,
    /// Accepted from `bench/run`, which passes it to every benchmark.
    #[arg(long, hide = true)]
    tessera: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Workload {
    Readings,
    Orders,
}

/// One product per table kind, over the same event type.
fn contract(name: &str, table_head: &str) -> String {
    let mut table = format!("{table_head}{READING_COLUMNS}");
    // `bench/sealed`: the note is personal, so it is sealed at append and
    // its column holds the tokens (stored as binary, no statistics).
    let sealed = name == "sealed";
    if sealed {
        table = table.replace(
            "note: { type: string, description: Free text }",
            "note: { type: string, classification: pii.free_text, description: Free text }",
        );
    }
    let note = if sealed { "{ type: string, classification: pii.free_text }" } else { "{ type: string }" };
    format!(
        r#"domain: bench
name: {name}
version: 1.0.0
title: Projection benchmark ({name})
description: Synthetic readings for the projection benchmark.
owner:
  team: bench
  contact: bench@example.com
status: draft
events:
  Reading:
    version: 1
    subject: key
    schema:
      type: object
      required: [key, value, at, note]
      properties:
        key: {{ type: string }}
        value: {{ type: integer }}
        at: {{ type: string, format: date-time }}
        note: {note}
tables:
{table}"#
    )
}

/// Both tables' rule body and columns: every field of the reading.
const READING_COLUMNS: &str = r#"        Reading:
          set:
            key: payload.key
            value: payload.value
            at: payload.at
            note: payload.note
    columns:
      key: { type: string, required: true, description: Sensor }
      value: { type: int64, required: true, description: Reading }
      at: { type: timestamp, required: true, description: When }
      note: { type: string, description: Free text }
"#;

const APPEND_TABLE: &str = r#"  readings:
    description: Every reading.
    append:
      from:
"#;

const UPSERT_TABLE: &str = r#"  latest:
    description: The latest reading per key.
    upsert:
      key: [key]
      from:
"#;

/// DuckDB's side: the same transformation, timed; prints the seconds and
/// the rows written.
const DUCKDB: &str = r#"
import sys, time, duckdb
events, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect()
con.execute('SET enable_progress_bar = false')
if kind in ("append", "upsert"):
    cols = "{'pos': 'BIGINT', 'key': 'VARCHAR', 'value': 'BIGINT', 'at': 'TIMESTAMPTZ', 'note': 'VARCHAR'}"
    source = f"read_json('{events}', format='newline_delimited', columns={cols})"
    if kind == "append":
        queries = {out: f'SELECT "key", "value", "at", "note" FROM {source}'}
    else:
        queries = {out: f'SELECT "key", arg_max("value", pos) AS "value", arg_max("at", pos) AS "at", arg_max("note", pos) AS "note" FROM {source} GROUP BY "key"'}
else:
    # sales/orders as stored: the envelope and the nested payload.
    payload = ("STRUCT(order_id VARCHAR, customer STRUCT(id VARCHAR, email VARCHAR), placed_at TIMESTAMPTZ, currency VARCHAR, "
               "total DECIMAL(12,2), channel VARCHAR, shipped_at TIMESTAMPTZ, reason VARCHAR, line_no INTEGER, sku VARCHAR, "
               "quantity INTEGER, unit_price DECIMAL(12,2))")
    cols = "{'pos': 'BIGINT', 'type': 'VARCHAR', 'recorded_at': 'TIMESTAMPTZ', 'payload': '" + payload + "'}"
    source = f"read_json('{events}', format='newline_delimited', columns={cols})"
    placed = "FILTER (WHERE type = 'OrderPlaced')"
    live = "FILTER (WHERE type IN ('OrderPlaced', 'OrderShipped', 'OrderCancelled'))"
    orders = f"""SELECT payload.order_id AS order_id,
        arg_max(payload.customer.id, pos) {placed} AS customer_id,
        arg_max(payload.customer.email, pos) {placed} AS customer_email,
        arg_max(CASE type WHEN 'OrderPlaced' THEN 'placed' WHEN 'OrderShipped' THEN 'shipped' ELSE 'cancelled' END, pos) {live} AS status,
        arg_max(payload.currency, pos) {placed} AS currency,
        arg_max(payload.total, pos) {placed} AS total,
        arg_max(payload.channel, pos) {placed} AS channel,
        arg_max(payload.placed_at, pos) {placed} AS placed_at,
        arg_max(payload.shipped_at, pos) FILTER (WHERE type = 'OrderShipped') AS shipped_at,
        arg_max(payload.reason, pos) FILTER (WHERE type = 'OrderCancelled') AS cancel_reason,
        arg_max(recorded_at, pos) {live} AS updated_at
      FROM {source} WHERE type <> 'OrderLineAdded' GROUP BY payload.order_id
      HAVING count(*) FILTER (WHERE type = 'OrderErased') = 0"""
    lines = f"""SELECT payload.order_id AS order_id, payload.line_no AS line_no, payload.sku AS sku, payload.quantity AS quantity,
        payload.unit_price AS unit_price, recorded_at AS added_at FROM {source} WHERE type = 'OrderLineAdded'"""
    queries = {out + ".orders.parquet": orders, out + ".lines.parquet": lines}
started = time.perf_counter()
for path, query in queries.items():
    con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet)")
seconds = time.perf_counter() - started
rows = sum(con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0] for path in queries)
print(seconds, rows)
"#;

/// sales/orders as published in `products/`, without its derived table
/// (the benchmark compares event projection).
fn orders_contract() -> String {
    let contract = include_str!("../../../products/sales-orders/contract.yaml");
    let Some(start) = contract.find("\n  daily_revenue:\n") else { return contract.to_owned() };
    let after = start + 1;
    // Up to the next top-level key, if any.
    let end = contract[after..]
        .match_indices('\n')
        .map(|(i, _)| after + i + 1)
        .find(|&i| contract[i..].starts_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(contract.len());
    format!("{}{}", &contract[..after], &contract[end..])
}

/// One line of the report: a table (or a product's tables) projected by
/// Tessera and by DuckDB from the same events.
struct Measured {
    log: Backend,
    events: usize,
    what: &'static str,
    tessera: Vec<f64>,
    duckdb: Vec<f64>,
    /// Each run's wall time and stages.
    stages: Vec<(f64, Stages)>,
    /// Each run's peak resident memory (MiB).
    rss: Vec<f64>,
    rows: usize,
    duckdb_rows: usize,
    /// Seconds of an incremental run over 1% new events, if measured.
    incremental: Option<f64>,
    /// A line compared with another's time rather than DuckDB's.
    versus: Option<&'static str>,
}

impl Measured {
    fn new(log: Backend, events: usize, what: &'static str) -> Self {
        Self {
            log,
            events,
            what,
            tessera: Vec::new(),
            duckdb: Vec::new(),
            stages: Vec::new(),
            rss: Vec::new(),
            rows: 0,
            duckdb_rows: 0,
            incremental: None,
            versus: None,
        }
    }

    fn record(&mut self, p: &Projected) {
        self.tessera.push(p.seconds);
        self.stages.push((p.seconds, p.stages));
        self.rss.push(p.peak_rss_mib);
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.runs == 0 || args.keys == 0 {
        bail!("--runs and --keys must be at least 1");
    }
    let check = std::process::Command::new(&args.python).args(["-c", "import duckdb; print(duckdb.__version__)"]).output();
    let duckdb_version = match check {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => bail!(
            "{} cannot import duckdb: pass --python (or TESSERA_PYTHON) of a venv with it, e.g. ~/.cache/tessera/venv/bin/python",
            args.python.display()
        ),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    for &log in &args.log {
        for &n in &args.events {
            for &workload in &args.workloads {
                println!("projection: {workload:?}, {n} events, log on {log:?}, {} runs", args.runs);
                let measured = match workload {
                    Workload::Readings => runtime.block_on(readings(&args, log, n))?,
                    Workload::Orders => runtime.block_on(orders(&args, log, n))?,
                };
                results.extend(measured);
            }
        }
    }
    let section = report(&args, &duckdb_version, &results);
    crate::write_section(&args.output, "projection", &section)?;
    println!("wrote {}", args.output.display());
    Ok(())
}

fn owner() -> Principal {
    Principal { name: "bench".into(), roles: vec![Role::Owner], domains: vec!["bench".into(), "sales".into()] }
}

/// Appends `count` readings (from `first`) to `products`, and to the
/// NDJSON export DuckDB reads.
async fn load(
    store: &Store,
    products: &[&str],
    export: &mut std::io::BufWriter<std::fs::File>,
    first: usize,
    count: usize,
    keys: usize,
) -> Result<()> {
    let mut rng = fastrand::Rng::with_seed(first as u64 + 7);
    const CHUNK: usize = 20_000;
    let mut i = first;
    while i < first + count {
        let end = (i + CHUNK).min(first + count);
        let mut body = String::with_capacity((end - i) * 180);
        for pos in i..end {
            let key = format!("K-{:06}", rng.usize(0..keys));
            let value = rng.i64(0..1_000_000);
            let at = format!("2026-01-{:02}T{:02}:{:02}:{:02}Z", 1 + pos % 28, pos % 24, pos % 60, (pos / 60) % 60);
            let note = format!("reading {pos} of {key}");
            let payload = serde_json::json!({"key": key, "value": value, "at": at, "note": note});
            body.push_str(&serde_json::json!({"stream": key, "type": "Reading", "payload": payload}).to_string());
            body.push('\n');
            writeln!(export, "{}", serde_json::json!({"pos": pos, "key": key, "value": value, "at": at, "note": note}))?;
        }
        for product in products {
            store.append_body(&owner(), "bench", product, BodyFormat::Ndjson, bytes::Bytes::from(body.clone().into_bytes())).await?;
        }
        i = end;
    }
    export.flush()?;
    Ok(())
}

/// A full projection of one product into a fresh warehouse.
struct Projected {
    seconds: f64,
    stages: Stages,
    /// The process's peak resident memory during the projection.
    peak_rss_mib: f64,
    projector: Projector,
}

/// Resets the process's peak resident memory (VmHWM) to what it holds now.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())))
        .flatten()
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Projects `domain/product` into a fresh warehouse `label` under `dir`.
/// `general`: the previous data path, for comparison: rows through the
/// general decoder, one commit per batch.
async fn project(store: &Store, dir: &Path, label: &str, domain: &str, product: &str, batch: i64, general: bool) -> Result<Projected> {
    let warehouse = Warehouse::parse(label, dir).map_err(anyhow::Error::msg)?;
    let mut projector = Projector::new(store.clone(), warehouse, domain, product).with_batch(batch);
    if general {
        projector = projector.with_compiled_decoder(false).with_commit_rows(usize::try_from(batch).unwrap_or(1));
    }
    reset_peak_rss();
    let started = Instant::now();
    let report = projector.run(&|_| {}).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Projected { seconds, stages: report.stages, peak_rss_mib: peak_rss_mib(), projector })
}

/// DuckDB's seconds and rows written.
fn duckdb(python: &Path, events: &Path, out: &Path, kind: &str) -> Result<(f64, usize)> {
    let o = std::process::Command::new(python).args(["-c", DUCKDB]).arg(events).arg(out).arg(kind).output()?;
    if !o.status.success() {
        bail!("DuckDB failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().unwrap_or_default();
    let (seconds, rows) = last.split_once(' ').with_context(|| format!("DuckDB's timing in: {out}"))?;
    Ok((seconds.trim().parse().with_context(|| format!("DuckDB's timing in: {out}"))?, rows.trim().parse()?))
}

/// A store on a fresh database of `log`, and a scratch directory.
async fn open(args: &Args, log: Backend) -> Result<(Store, Database, tempfile::TempDir)> {
    let dir = tempfile::tempdir_in(".").context("a scratch directory here")?;
    let db = fresh_database(log, &args.postgres).await?;
    let kek = tessera_store::Kek::parse(&tessera_store::Kek::generate_text()?)?;
    let store = Store::open(&db.url, Policy::builtin(), kek).await?;
    Ok((store, db, dir))
}

async fn readings(args: &Args, log: Backend, n: usize) -> Result<Vec<Measured>> {
    let (store, db, dir) = open(args, log).await?;
    let extras = n <= args.extras_up_to;
    let mut products = vec!["appends", "upserts"];
    store.publish(&owner(), &contract("appends", APPEND_TABLE)).await?;
    store.publish(&owner(), &contract("upserts", UPSERT_TABLE)).await?;
    if extras {
        store.publish(&owner(), &contract("sealed", APPEND_TABLE)).await?;
        products.push("sealed");
    }
    let export_path = dir.path().join("events.ndjson");
    let mut export = std::io::BufWriter::new(std::fs::File::create(&export_path)?);
    let started = Instant::now();
    load(&store, &products, &mut export, 0, n, args.keys).await?;
    println!("  loaded {n} events into {} products in {:.0} s", products.len(), started.elapsed().as_secs_f64());

    let mut append = Measured::new(log, n, "readings: append");
    let mut general = Measured::new(log, n, "readings: append, previous path");
    general.versus = Some("append");
    let mut upsert = Measured::new(log, n, "readings: upsert");
    let mut sealed = Measured::new(log, n, "readings: append, `note` sealed");
    sealed.versus = Some("append");
    let mut last = None;
    for run in 0..args.runs {
        for label in ["append", "general", "upsert", "sealed"] {
            let _ = std::fs::remove_dir_all(dir.path().join(format!("{label}-{}", run.wrapping_sub(1))));
        }
        let a = project(&store, dir.path(), &format!("append-{run}"), "bench", "appends", args.batch, false).await?;
        let u = project(&store, dir.path(), &format!("upsert-{run}"), "bench", "upserts", args.batch, false).await?;
        let (da, ra) = duckdb(&args.python, &export_path, &dir.path().join("duckdb-append.parquet"), "append")?;
        let (du, ru) = duckdb(&args.python, &export_path, &dir.path().join("duckdb-upsert.parquet"), "upsert")?;
        print!("  run {run}: Tessera append {:.2} s, upsert {:.2} s; DuckDB append {da:.2} s, upsert {du:.2} s", a.seconds, u.seconds);
        append.record(&a);
        upsert.record(&u);
        for (m, seconds, rows) in [(&mut append, da, ra), (&mut upsert, du, ru)] {
            m.duckdb.push(seconds);
            m.duckdb_rows = rows;
        }
        if extras {
            let g = project(&store, dir.path(), &format!("general-{run}"), "bench", "appends", args.batch, true).await?;
            let s = project(&store, dir.path(), &format!("sealed-{run}"), "bench", "sealed", args.batch, false).await?;
            print!("; previous path {:.2} s, sealed {:.2} s", g.seconds, s.seconds);
            general.record(&g);
            sealed.record(&s);
        }
        println!();
        last = Some((a.projector, u.projector));
    }
    let Some((mut pa, mut pu)) = last else { bail!("no run") };
    append.rows = pa.tables()?.iter().map(|t| t.stats.rows).sum();
    upsert.rows = pu.tables()?.iter().map(|t| t.stats.rows).sum();
    general.rows = append.rows;
    sealed.rows = append.rows;

    // 1% new events, projected incrementally onto the last run's tables.
    let more = (n / 100).max(1);
    load(&store, &products, &mut export, n, more, args.keys).await?;
    let started = Instant::now();
    pa.run(&|_| {}).await?;
    append.incremental = Some(started.elapsed().as_secs_f64());
    let started = Instant::now();
    pu.run(&|_| {}).await?;
    upsert.incremental = Some(started.elapsed().as_secs_f64());
    println!(
        "  incremental over {more} new events: append {:.2} s, upsert {:.2} s",
        append.incremental.unwrap_or(0.0),
        upsert.incremental.unwrap_or(0.0)
    );
    store.close().await;
    db.remove().await?;
    let mut out = vec![append, upsert];
    if extras {
        out.extend([general, sealed]);
    }
    Ok(out)
}

/// Orders whose events number about `events` (an order is placed, gets 3
/// lines, and is sometimes shipped or cancelled: about 4.3 events).
fn orders_for(events: usize) -> usize {
    (events * 10 / 43).max(1)
}

/// Appends the events of `count` orders from `first` to sales/orders;
/// every 50th order is erased after its other events.
async fn load_orders(store: &Store, first: usize, count: usize) -> Result<usize> {
    const CHUNK: usize = 5_000;
    let mut appended = 0;
    let mut i = first;
    while i < first + count {
        let n = CHUNK.min(first + count - i);
        let mut body = crate::query::order_events(i, n, 3, 50_000);
        for k in (i..i + n).filter(|k| k % 50 == 49) {
            let id = format!("SO-{k:08}");
            body.push_str(&serde_json::json!({"stream": id, "type": "OrderErased", "payload": {"order_id": id}}).to_string());
            body.push('\n');
        }
        let outcome = store.append_body(&owner(), "sales", "orders", BodyFormat::Ndjson, bytes::Bytes::from(body.into_bytes())).await?;
        appended += outcome.events.len();
        i += n;
    }
    Ok(appended)
}

/// The log of sales/orders as DuckDB reads it: each event's position, type,
/// time of recording and payload, as stored (sealed values as their tokens).
async fn export_orders(store: &Store, path: &Path) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut after = 0;
    loop {
        let page = store.log_after("sales", "orders", after, i64::MAX, 50_000).await?;
        if page.events.is_empty() {
            break;
        }
        for e in &page.events {
            let line = serde_json::json!({"pos": e.position, "type": e.event_type, "recorded_at": e.recorded_at, "payload": e.payload});
            writeln!(out, "{line}")?;
        }
        after = page.next_after;
    }
    out.flush()?;
    Ok(())
}

async fn orders(args: &Args, log: Backend, n: usize) -> Result<Vec<Measured>> {
    let (store, db, dir) = open(args, log).await?;
    store.publish(&owner(), &orders_contract()).await?;
    let started = Instant::now();
    let count = orders_for(n);
    let events = load_orders(&store, 0, count).await?;
    println!("  loaded {events} events of {count} orders in {:.0} s", started.elapsed().as_secs_f64());
    let export_path = dir.path().join("orders.ndjson");
    export_orders(&store, &export_path).await?;
    let mut m = Measured::new(log, events, "sales/orders: orders (upsert) and order_lines (append)");
    let mut last = None;
    for run in 0..args.runs {
        let _ = std::fs::remove_dir_all(dir.path().join(format!("orders-{}", run.wrapping_sub(1))));
        let p = project(&store, dir.path(), &format!("orders-{run}"), "sales", "orders", args.batch, false).await?;
        let (d, rows) = duckdb(&args.python, &export_path, &dir.path().join("duckdb-orders"), "orders")?;
        println!("  run {run}: Tessera {:.2} s; DuckDB {d:.2} s", p.seconds);
        m.record(&p);
        m.duckdb.push(d);
        m.duckdb_rows = rows;
        last = Some(p.projector);
    }
    let Some(mut p) = last else { bail!("no run") };
    m.rows = p.tables()?.iter().map(|t| t.stats.rows).sum();
    if m.rows != m.duckdb_rows {
        bail!("Tessera's tables hold {} rows, DuckDB's {}: the two transformations differ", m.rows, m.duckdb_rows);
    }
    load_orders(&store, count, (count / 100).max(1)).await?;
    let started = Instant::now();
    p.run(&|_| {}).await?;
    m.incremental = Some(started.elapsed().as_secs_f64());
    store.close().await;
    db.remove().await?;
    Ok(vec![m])
}

/// The run of median wall time, with its stages.
fn median_run(runs: &[(f64, Stages)]) -> Option<(f64, Stages)> {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    sorted.get(sorted.len() / 2).copied()
}

fn rate(events: usize, seconds: f64) -> String {
    format!("{:.0}", events as f64 / seconds)
}

fn log_name(log: Backend) -> &'static str {
    match log {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    }
}

fn report(args: &Args, duckdb_version: &str, results: &[Measured]) -> String {
    let mut out = String::new();
    out.push_str("## Projection\n\n");
    out.push_str(&format!(
        "A release-built projector, in process, reads a product's log (SQLite through the bulk reader, PostgreSQL through binary \
         `COPY`; {} events at a time, the next read while the last is decoded), checks every value against its column and writes \
         Delta tables in a local directory: an append table decodes straight into Arrow and commits every {} rows and at the end; \
         an upsert table folds the net changes per key over the run (up to {} keys a commit) and writes them as a plain append \
         into a table with no files yet, otherwise as one MERGE; every commit carries its log position. DuckDB {duckdb_version} \
         (PyPI, same machine, same run) does the same transformation on the same events exported as NDJSON: `read_json`, then \
         `COPY TO` Parquet. Events/s is the events of the log divided by the wall time of one full projection; medians of {} \
         runs; peak RSS is the benchmark process's during the projection (its peak reset before it).\n\n\
         - **readings**: N synthetic `Reading` events (one event type, four payload fields, {} keys) appended to `bench/appends` \
         (an append table, one row per event) and `bench/upserts` (an upsert table, the latest reading per key; DuckDB: \
         `arg_max` of each column by position, grouped by key). *Previous path* is the append through the data path this \
         replaced (the general decoder: a JSON object per row, then Arrow's JSON reader; one commit per batch); *`note` sealed* \
         is `bench/sealed`, the append product with its `note` classified `pii.free_text`, sealed per key at append, its tokens \
         copied into a binary column.\n\
         - **sales/orders**: the example product (its derived table left out): orders placed with three lines each, a quarter \
         shipped, one in twenty cancelled, one in fifty erased; `orders` is an upsert table set by four event types (each \
         setting its own columns, one deleting), with a decimal, timestamps and a sealed e-mail; `order_lines` an append table. \
         DuckDB reads the log as stored (envelope and nested payload) and writes both tables: `arg_max` per column by position \
         over the event types that set it, the erased orders left out. Both sides' tables hold the same number of rows.\n\n",
        args.batch,
        tessera_projection::projector::DEFAULT_COMMIT_ROWS,
        tessera_projection::projector::FOLD_KEYS,
        args.runs,
        args.keys,
    ));
    out.push_str(
        "| log | events | workload: table | Tessera (events/s) | DuckDB (events/s) | Tessera / DuckDB | rows | incremental over 1% new events / full run | peak RSS (MiB) |\n",
    );
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for m in results {
        let t = median(&m.tessera);
        let vs = match m.versus {
            Some(other) => {
                let base =
                    results.iter().find(|o| o.log == m.log && o.events == m.events && o.what.ends_with(other)).map(|o| median(&o.tessera));
                format!("{:.2}× the {other}'s time", t / base.unwrap_or(f64::NAN))
            }
            None => format!("{:.2}×", median(&m.duckdb) / t),
        };
        let duck = if m.versus.is_some() { "".to_owned() } else { rate(m.events, median(&m.duckdb)) };
        let incremental = m.incremental.map_or_else(String::new, |i| format!("{:.1}% ({i:.2} s / {t:.2} s)", 100.0 * i / t));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {duck} | {vs} | {} | {incremental} | {:.0} |\n",
            log_name(m.log),
            m.events,
            m.what,
            rate(m.events, t),
            m.rows,
            median(&m.rss)
        ));
    }
    out.push_str(
        "\nTargets: append ≥ 1.0× DuckDB; upsert ≥ 1.0× DuckDB; an incremental run over 1% new events ≤ 5% of a full run; peak \
         RSS of a 10M rebuild under 1 GiB; for both workloads.\n\n",
    );
    out.push_str(
        "Where the time goes (the projector's own timers, in the run of median wall time): *fetch* is the log query and its rows and \
         *parse* turns them into parsed events where a table needs those (upserts, the previous path), both on another thread \
         while the batch before is decoded and written; *wait* is the time the projector waited for a batch to be read; *decode* \
         turns events into checked cells and those into Arrow (compiled decoders read the payload's JSON text in place); \
         *lookup* finds which keys of an upsert already have a row; *dead letters* records them; *write* writes Parquet and \
         commits to the Delta log (for an upsert, the fold's rows and the MERGE). Seconds, and the share of the wall time.\n\n",
    );
    out.push_str("| log | events | workload: table | wall (s) | fetch | parse | wait | decode | lookup | dead letters | write | other |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in results {
        let Some((wall, s)) = median_run(&m.stages) else { continue };
        let share = |x: f64| format!("{x:.2} ({:.0}%)", 100.0 * x / wall);
        let other = wall - s.read_wait - s.decode - s.lookup - s.dead_letters - s.write;
        out.push_str(&format!(
            "| {} | {} | {} | {wall:.2} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            log_name(m.log),
            m.events,
            m.what,
            share(s.fetch),
            share(s.parse),
            share(s.read_wait),
            share(s.decode),
            share(s.lookup),
            share(s.dead_letters),
            share(s.write),
            share(other)
        ));
    }
    out.push('\n');
    out.push_str("All runs (seconds, Tessera; DuckDB):\n\n");
    for m in results {
        let list = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
        out.push_str(&format!("- {}, {} events, {}: {}; {}\n", log_name(m.log), m.events, m.what, list(&m.tessera), list(&m.duckdb)));
    }
    out.push_str(
        "\nReproduce: `bench/run projection` (1M and 10M events, 3 runs, both logs, both workloads); `bench/run projection --events \
         100000 --runs 1 --log sqlite` for a quick look.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_orders_workload_is_the_example_product_without_its_derived_table() {
        let text = orders_contract();
        assert!(!text.contains("daily_revenue") && text.contains("order_lines:") && text.contains("OrderErased"));
        let linted = tessera_contract::lint(&text, &Policy::builtin());
        assert!(!linted.has_errors(), "{:?}", linted.diagnostics);
    }
}
