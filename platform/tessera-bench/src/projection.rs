//! `projection`: N events projected into (a) an append table and (b) an
//! upsert table over K keys, by Tessera's projector (release build, Delta
//! tables in a local directory), side by side with DuckDB (PyPI) doing the
//! same transformation on the same events exported as NDJSON (`read_json`,
//! then `COPY TO` Parquet; for the upsert, the latest value per key). Then
//! an incremental run over 1% new events against the full run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tessera_contract::{Policy, Role};
use tessera_projection::{Projector, Stages, Warehouse};
use tessera_store::{BodyFormat, Principal, Store};

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
    /// Events per projector batch (one Delta commit per table per batch).
    #[arg(long, default_value_t = tessera_projection::projector::DEFAULT_BATCH)]
    batch: i64,
    /// Accepted from `bench/run`, which passes it to every benchmark.
    #[arg(long, hide = true)]
    tessera: Option<PathBuf>,
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

const DUCKDB: &str = r#"
import sys, time, duckdb
events, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect()
con.execute('SET enable_progress_bar = false')
cols = "{'pos': 'BIGINT', 'key': 'VARCHAR', 'value': 'BIGINT', 'at': 'TIMESTAMPTZ', 'note': 'VARCHAR'}"
source = f"read_json('{events}', format='newline_delimited', columns={cols})"
if kind == "append":
    query = f'SELECT "key", "value", "at", "note" FROM {source}'
else:
    query = f'SELECT "key", arg_max("value", pos) AS "value", arg_max("at", pos) AS "at", arg_max("note", pos) AS "note" FROM {source} GROUP BY "key"'
started = time.perf_counter()
con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")
print(time.perf_counter() - started)
"#;

struct Measured {
    events: usize,
    tessera_append: Vec<f64>,
    tessera_upsert: Vec<f64>,
    /// The append table with its `note` sealed.
    tessera_sealed: Vec<f64>,
    duckdb_append: Vec<f64>,
    duckdb_upsert: Vec<f64>,
    /// Each run's wall time and stages.
    stages_append: Vec<(f64, Stages)>,
    /// The append through the previous data path (general decoder, a commit per batch).
    stages_general: Vec<(f64, Stages)>,
    stages_upsert: Vec<(f64, Stages)>,
    incremental_append: f64,
    incremental_upsert: f64,
    rows_append: usize,
    rows_upsert: usize,
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
    for &n in &args.events {
        println!("projection: {n} events, {} keys, {} runs", args.keys, args.runs);
        results.push(runtime.block_on(measure(&args, n))?);
    }
    let section = report(&args, &duckdb_version, &results);
    crate::write_section(&args.output, "projection", &section)?;
    println!("wrote {}", args.output.display());
    Ok(())
}

fn owner() -> Principal {
    Principal { name: "bench".into(), roles: vec![Role::Owner], domains: vec!["bench".into()] }
}

/// Appends `count` readings (from `first`) to both products, and to the
/// NDJSON export DuckDB reads.
async fn load(store: &Store, export: &mut std::io::BufWriter<std::fs::File>, first: usize, count: usize, keys: usize) -> Result<()> {
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
        for product in ["appends", "upserts", "sealed"] {
            store.append_body(&owner(), "bench", product, BodyFormat::Ndjson, bytes::Bytes::from(body.clone().into_bytes())).await?;
        }
        i = end;
    }
    export.flush()?;
    Ok(())
}

/// Seconds for a full projection of `product` into a fresh warehouse.
/// Seconds for a full projection of `product` into a fresh warehouse, and
/// where they went.
/// `general`: the previous data path, for comparison: rows through the
/// general decoder, one commit per batch.
async fn project(store: &Store, dir: &Path, label: &str, product: &str, batch: i64, general: bool) -> Result<(f64, Stages, Projector)> {
    let warehouse = Warehouse::parse(label, dir).map_err(anyhow::Error::msg)?;
    let mut projector = Projector::new(store.clone(), warehouse, "bench", product).with_batch(batch);
    if general {
        projector = projector.with_compiled_decoder(false).with_commit_rows(usize::try_from(batch).unwrap_or(1));
    }
    let started = Instant::now();
    let report = projector.run(&|_| {}).await?;
    Ok((started.elapsed().as_secs_f64(), report.stages, projector))
}

fn duckdb(python: &Path, events: &Path, out: &Path, kind: &str) -> Result<f64> {
    let o = std::process::Command::new(python).args(["-c", DUCKDB]).arg(events).arg(out).arg(kind).output()?;
    if !o.status.success() {
        bail!("DuckDB failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines().last().unwrap_or_default().trim().parse().with_context(|| format!("DuckDB's timing in: {out}"))
}

async fn measure(args: &Args, n: usize) -> Result<Measured> {
    let dir = tempfile::tempdir_in(".").context("a scratch directory here")?;
    let store = Store::open(
        &tessera_store::db::sqlite_url(dir.path()),
        Policy::builtin(),
        tessera_store::Kek::parse(&tessera_store::Kek::generate_text()?)?,
    )
    .await?;
    store.publish(&owner(), &contract("appends", APPEND_TABLE)).await?;
    store.publish(&owner(), &contract("upserts", UPSERT_TABLE)).await?;
    store.publish(&owner(), &contract("sealed", APPEND_TABLE)).await?;
    let export_path = dir.path().join("events.ndjson");
    let mut export = std::io::BufWriter::new(std::fs::File::create(&export_path)?);
    let started = Instant::now();
    load(&store, &mut export, 0, n, args.keys).await?;
    println!("  loaded {n} events into the three products in {:.0} s", started.elapsed().as_secs_f64());

    let mut m = Measured {
        events: n,
        tessera_append: Vec::new(),
        tessera_upsert: Vec::new(),
        tessera_sealed: Vec::new(),
        duckdb_append: Vec::new(),
        duckdb_upsert: Vec::new(),
        stages_append: Vec::new(),
        stages_general: Vec::new(),
        stages_upsert: Vec::new(),
        incremental_append: 0.0,
        incremental_upsert: 0.0,
        rows_append: 0,
        rows_upsert: 0,
    };
    let mut last = None;
    for run in 0..args.runs {
        for label in ["append", "general", "upsert", "sealed"] {
            let _ = std::fs::remove_dir_all(dir.path().join(format!("{label}-{}", run.wrapping_sub(1))));
        }
        let (a, sa, pa) = project(&store, dir.path(), &format!("append-{run}"), "appends", args.batch, false).await?;
        let (g, sg, _) = project(&store, dir.path(), &format!("general-{run}"), "appends", args.batch, true).await?;
        let (u, su, pu) = project(&store, dir.path(), &format!("upsert-{run}"), "upserts", args.batch, false).await?;
        let (sealed, _, _) = project(&store, dir.path(), &format!("sealed-{run}"), "sealed", args.batch, false).await?;
        let da = duckdb(&args.python, &export_path, &dir.path().join("duckdb-append.parquet"), "append")?;
        let du = duckdb(&args.python, &export_path, &dir.path().join("duckdb-upsert.parquet"), "upsert")?;
        println!(
            "  run {run}: Tessera append {a:.2} s, upsert {u:.2} s, append with the note sealed {sealed:.2} s; DuckDB append {da:.2} s, upsert {du:.2} s"
        );
        m.stages_append.push((a, sa));
        m.stages_general.push((g, sg));
        m.stages_upsert.push((u, su));
        m.tessera_append.push(a);
        m.tessera_sealed.push(sealed);
        m.tessera_upsert.push(u);
        m.duckdb_append.push(da);
        m.duckdb_upsert.push(du);
        last = Some((pa, pu));
    }
    let Some((mut pa, mut pu)) = last else { bail!("no run") };
    m.rows_append = pa.tables()?.iter().map(|t| t.stats.rows).sum();
    m.rows_upsert = pu.tables()?.iter().map(|t| t.stats.rows).sum();

    // 1% new events, projected incrementally onto the last run's tables.
    let more = (n / 100).max(1);
    load(&store, &mut export, n, more, args.keys).await?;
    let started = Instant::now();
    pa.run(&|_| {}).await?;
    m.incremental_append = started.elapsed().as_secs_f64();
    let started = Instant::now();
    pu.run(&|_| {}).await?;
    m.incremental_upsert = started.elapsed().as_secs_f64();
    println!("  incremental over {more} new events: append {:.2} s, upsert {:.2} s", m.incremental_append, m.incremental_upsert);
    store.close().await;
    Ok(m)
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

fn report(args: &Args, duckdb_version: &str, results: &[Measured]) -> String {
    let mut out = String::new();
    out.push_str("## Projection\n\n");
    out.push_str(&format!(
        "N synthetic `Reading` events (one event type, four payload fields, {} keys) appended to three products, then projected by a \
         release-built projector in process into Delta tables in a local directory: `bench/appends` has an append table (one row per \
         event), `bench/upserts` an upsert table (the latest reading per key: the net changes per key folded over the \
         run, up to {} keys or {} events per commit, into a table with no files yet as a plain append, otherwise as one MERGE). Each projection reads the events from the SQLite log ({} at a time, through the bulk reader), upcasts and checks every \
         value against its column; an append table decodes straight into Arrow and commits every {} rows and at the end, each commit \
         with its log position. DuckDB {duckdb_version} (PyPI, same machine, same run) does the same \
         transformation on the same events exported as NDJSON: `read_json`, then `COPY TO` Parquet; for the upsert, `arg_max` of each \
         column by position, grouped by key. `bench/sealed` is the append product with its `note` classified \
         (`pii.free_text`): the note is sealed per key at append, and the projector copies the tokens into a binary column with no \
         statistics, in the same run. Events/s is N divided by the wall time of one projection; medians of {} runs.\n\n",
        args.keys,
        tessera_projection::projector::FOLD_KEYS,
        tessera_projection::projector::DEFAULT_COMMIT_ROWS,
        args.batch,
        tessera_projection::projector::DEFAULT_COMMIT_ROWS,
        args.runs
    ));
    out.push_str("| events | table | Tessera (events/s) | DuckDB (events/s) | Tessera / DuckDB | rows | incremental over 1% new events / full run |\n");
    out.push_str("|---:|---|---:|---:|---:|---:|---:|\n");
    for m in results {
        let (ta, tu, da, du) = (median(&m.tessera_append), median(&m.tessera_upsert), median(&m.duckdb_append), median(&m.duckdb_upsert));
        out.push_str(&format!(
            "| {} | append | {} | {} | {:.2}× | {} | {:.1}% ({:.2} s / {:.2} s) |\n",
            m.events,
            rate(m.events, ta),
            rate(m.events, da),
            da / ta,
            m.rows_append,
            100.0 * m.incremental_append / ta,
            m.incremental_append,
            ta
        ));
        out.push_str(&format!(
            "| {} | upsert | {} | {} | {:.2}× | {} | {:.1}% ({:.2} s / {:.2} s) |\n",
            m.events,
            rate(m.events, tu),
            rate(m.events, du),
            du / tu,
            m.rows_upsert,
            100.0 * m.incremental_upsert / tu,
            m.incremental_upsert,
            tu
        ));
        let ts = median(&m.tessera_sealed);
        out.push_str(&format!(
            "| {} | append, `note` sealed | {} | {} | {:.2}× | {} | {:.2}× the plain append's time |\n",
            m.events,
            rate(m.events, ts),
            rate(m.events, da),
            da / ts,
            m.rows_append,
            ts / ta
        ));
    }
    out.push_str("\nTargets: append ≥ 1.0× DuckDB; upsert ≥ 1.0× DuckDB; an incremental run over 1% new events ≤ 5% of a full run.\n\n");
    out.push_str(
        "Where the time goes (the projector's own timers, in the run of median wall time): *fetch* is the log query and its rows and \
         *parse* decodes them into events (payloads and metadata parsed, old versions upcast), both on another thread while the batch \
         before is decoded and written; *wait* is the time the projector waited for a batch to be read; *decode* turns events into checked cells and those into Arrow; *lookup* finds which \
         keys of an upsert already have a row; *dead letters* records them; *write* writes Parquet and commits to the Delta log \
         (for an upsert, the MERGE). *Append, previous path* is the same append through the data path this replaced, in \
         the same run: the general decoder (a JSON object per row, then Arrow's JSON reader) and one commit per batch. Seconds, \
         and the share of the wall time.\n\n",
    );
    out.push_str("| events | table | wall (s) | fetch | parse | wait | decode | lookup | dead letters | write | other |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in results {
        for (table, runs) in [("append", &m.stages_append), ("append, previous path", &m.stages_general), ("upsert", &m.stages_upsert)] {
            let Some((wall, s)) = median_run(runs) else { continue };
            let share = |x: f64| format!("{x:.2} ({:.0}%)", 100.0 * x / wall);
            let other = wall - s.read_wait - s.decode - s.lookup - s.dead_letters - s.write;
            out.push_str(&format!(
                "| {} | {table} | {wall:.2} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                m.events,
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
    }
    out.push('\n');
    out.push_str("All runs (seconds):\n\n");
    for m in results {
        let list = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "- {} events: Tessera append {}; upsert {}; append with the note sealed {}; DuckDB append {}; upsert {}\n",
            m.events,
            list(&m.tessera_append),
            list(&m.tessera_upsert),
            list(&m.tessera_sealed),
            list(&m.duckdb_append),
            list(&m.duckdb_upsert)
        ));
    }
    out.push_str("\nReproduce: `bench/run projection` (1M and 10M events, 3 runs); `bench/run projection --events 100000 --runs 1` for a quick look.\n");
    out
}
