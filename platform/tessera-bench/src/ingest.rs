//! The ingest benchmark.

use std::collections::HashMap;
use std::fmt::Write as _;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::Value;
use sqlx::{Connection, Executor};
use tessera_contract::{Policy, Role};
use tessera_store::{Principal, Store};

use crate::{median, quantile, repo};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Runs per measurement; the report gives medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Single-event appends for the latency figures.
    #[arg(long, default_value_t = 1000)]
    single: usize,
    /// Copies of the sample file per request (one copy is about 2,400 events).
    #[arg(long, default_value_t = 2)]
    copies_per_request: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// The `tessera` binary (release build).
    #[arg(long, default_value = "target/release/tessera")]
    tessera: PathBuf,
    /// A PostgreSQL database to create benchmark databases from; `none` to skip.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Where to write the report.
    #[arg(long, default_value = "bench/README.md")]
    output: PathBuf,
}

const TOKEN: &str = "tsr_bench_owner_token";
const CONTRACT: &str = "products/sales-orders/contract.yaml";
const EVENTS: &str = "products/sales-orders/events.ndjson";

/// The events, as request bodies and as the rows a raw insert would write.
struct Workload {
    /// NDJSON bodies; each holds whole streams, so requests in flight at once never touch one stream.
    bodies: Vec<bytes::Bytes>,
    rows: Vec<RawRow>,
    /// How many rows each body holds, in order.
    rows_per_body: Vec<usize>,
}

struct RawRow {
    stream: String,
    version: i64,
    id: Vec<u8>,
    event_type: String,
    schema_version: i64,
    payload: String,
    metadata: String,
}

fn workload(events: usize, copies_per_request: usize) -> Result<Workload> {
    let text =
        std::fs::read_to_string(repo().join(EVENTS)).with_context(|| format!("cannot read {EVENTS}; run from the repository root"))?;
    let samples: Vec<Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let mut bodies = Vec::new();
    let mut rows = Vec::with_capacity(events);
    let mut body = String::new();
    let mut versions: HashMap<String, i64> = HashMap::new();
    let mut rows_per_body = Vec::new();
    let mut body_start = 0;
    'copies: for copy in 0.. {
        for sample in &samples {
            if rows.len() == events {
                break 'copies;
            }
            let mut e = sample.clone();
            let stream = format!("{}-{copy}", e["stream"].as_str().unwrap_or_default());
            let id = uuid::Uuid::now_v7();
            e["stream"] = Value::from(stream.clone());
            e["id"] = Value::from(id.to_string());
            body.push_str(&e.to_string());
            body.push('\n');
            let version = versions.entry(stream.clone()).or_default();
            *version += 1;
            let mut metadata = e["metadata"].clone();
            metadata["principal"] = Value::from("bench-owner");
            rows.push(RawRow {
                stream,
                version: *version,
                id: id.as_bytes().to_vec(),
                event_type: e["type"].as_str().unwrap_or_default().to_owned(),
                schema_version: e["schema_version"].as_i64().unwrap_or(1),
                payload: e["payload"].to_string(),
                metadata: metadata.to_string(),
            });
        }
        if (copy + 1) % copies_per_request.max(1) == 0 {
            bodies.push(std::mem::take(&mut body).into());
            rows_per_body.push(rows.len() - body_start);
            body_start = rows.len();
        }
    }
    if !body.is_empty() {
        bodies.push(body.into());
        rows_per_body.push(rows.len() - body_start);
    }
    Ok(Workload { bodies, rows, rows_per_body })
}

/// One database to run against.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

pub(crate) struct Database {
    pub(crate) url: String,
    _dir: Option<tempfile::TempDir>,
    drop: Option<(String, String)>,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) async fn fresh_database(backend: Backend, admin: &str) -> Result<Database> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir_in(".")?;
            let path = std::fs::canonicalize(dir.path())?;
            Ok(Database { url: tessera_store::db::sqlite_url(&path), _dir: Some(dir), drop: None })
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(admin).await.with_context(|| format!("cannot connect to {admin}"))?;
            let name = format!("tessera_bench_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).await?;
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await?;
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
            Ok(Database { url: format!("{base}/{name}"), _dir: None, drop: Some((admin.to_owned(), name)) })
        }
    }
}

impl Database {
    pub(crate) async fn remove(self) -> Result<()> {
        if let Some((admin, name)) = self.drop {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await?;
        }
        Ok(())
    }
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(tessera: &Path, db: &Database, data_dir: &Path) -> Result<Server> {
        let config = data_dir.join("tessera.toml");
        std::fs::write(
            &config,
            format!(
                "max_body_bytes = 268435456\n[[principals]]\nname = \"bench-owner\"\ntoken_sha256 = \"{}\"\nroles = [\"owner\"]\ndomains = [\"sales\"]\n",
                tessera_store::principals::hash_token(TOKEN)
            ),
        )?;
        let mut child = Command::new(tessera)
            .args(["serve", "--listen", "127.0.0.1:0", "--pg-listen", "off", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--database-url", &db.url])
            .env("TESSERA_LOG", "warn")
            // A database URL needs the key-encryption key given: a fresh one per run.
            .env("TESSERA_KEK", tessera_store::Kek::generate_text()?)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}; build it with `cargo build --release -p tessera-cli`", tessera.display()))?;
        let base = crate::serving_url(&mut child)?;
        Ok(Server { child, base })
    }

    /// The server process's peak resident memory, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// What one platform run measured.
struct PlatformRun {
    events_per_second: f64,
    peak_rss_mib: f64,
    latencies_ms: Vec<f64>,
}

/// The contract with its payload fields declared not personal (`none`,
/// with a justification): the same events, appended with nothing to seal.
/// The baseline that says what sealing costs.
fn without_sealing(contract: &str) -> Result<String> {
    let (events, tables) = contract.split_at(contract.find("\ntables:").context("the contract has a `tables:` section")?);
    let mut out = String::with_capacity(contract.len());
    let mut rest = events;
    while let Some(at) = rest.find("classification: pii.") {
        out.push_str(&rest[..at]);
        let value = at + "classification: ".len();
        let end = rest[value..].find([' ', ',', '}', '\n']).map_or(rest.len(), |e| value + e);
        out.push_str("classification: none, justification: \"benchmark baseline: sealing off\"");
        rest = &rest[end..];
    }
    out.push_str(rest);
    if out == events {
        bail!("the contract's personal payload fields are not where the benchmark expects them");
    }
    out.push_str(tables);
    Ok(out)
}

async fn platform_run(args: &Args, backend: Backend, work: &Workload, sealing: bool) -> Result<PlatformRun> {
    let db = fresh_database(backend, &args.postgres).await?;
    let data = tempfile::tempdir_in(".")?;
    let server = Server::start(&args.tessera, &db, &std::fs::canonicalize(data.path())?)?;
    let http = reqwest::Client::new();
    let contract = std::fs::read_to_string(repo().join(CONTRACT))?;
    let contract = if sealing { contract } else { without_sealing(&contract)? };
    let r = http
        .post(format!("{}/api/v1/products", server.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/yaml")
        .body(contract)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("publish failed: {}", r.text().await?);
    }
    let url = format!("{}/api/v1/products/sales/orders/events", server.base);
    let started = Instant::now();
    let mut responses = futures::stream::iter(work.bodies.iter().cloned())
        .map(|body| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.post(&url).bearer_auth(TOKEN).header("content-type", "application/x-ndjson").body(body).send().await?;
                let status = r.status();
                let text = r.text().await?;
                if !status.is_success() {
                    bail!("append failed: {status} {}", &text[..text.len().min(500)]);
                }
                // Only the count: a client that parsed the whole answer would
                // take CPU from the server on a small machine.
                #[derive(serde::Deserialize)]
                struct Appended {
                    appended: u64,
                }
                Ok::<u64, anyhow::Error>(serde_json::from_str::<Appended>(&text)?.appended)
            }
        })
        .buffer_unordered(args.clients.max(1));
    let mut appended = 0;
    while let Some(r) = responses.next().await {
        appended += r?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if appended != work.rows.len() as u64 {
        bail!("appended {appended} of {} events", work.rows.len());
    }
    // Single-event appends, one at a time.
    let mut latencies_ms = Vec::with_capacity(args.single);
    for i in 0..args.single {
        let body = format!(
            "{{\"stream\":\"LAT-{i}\",\"type\":\"OrderCancelled\",\"payload\":{{\"order_id\":\"LAT-{i}\",\"reason\":\"customer_request\"}},\"expected_version\":\"no_stream\"}}\n"
        );
        let t = Instant::now();
        let r = http.post(&url).bearer_auth(TOKEN).header("content-type", "application/x-ndjson").body(body).send().await?;
        let ok = r.status().is_success();
        r.bytes().await?;
        latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if !ok {
            bail!("single append failed");
        }
    }
    let peak_rss_mib = server.peak_rss_mib();
    server.stop();
    db.remove().await?;
    Ok(PlatformRun { events_per_second: appended as f64 / elapsed, peak_rss_mib, latencies_ms })
}

const INSERT: &str = "INSERT INTO events (product_id, contract_version, recorded_at, stream, stream_version, event_id, event_type, schema_version, payload, metadata) \
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const COPY: &str = "COPY events (product_id, contract_version, recorded_at, stream, stream_version, event_id, event_type, schema_version, payload, metadata) \
                    FROM STDIN";

/// The baseline: the same rows into the same schema and indexes, by the
/// database's fastest path, without validation, in transactions of the
/// platform's request size, each durable. SQLite: its C API (rusqlite), one
/// prepared statement, the writer's settings of the platform (WAL,
/// `synchronous=FULL`, 64 MiB of cache). PostgreSQL: one `COPY` per
/// transaction.
async fn raw_run(args: &Args, backend: Backend, work: &Workload) -> Result<f64> {
    let db = fresh_database(backend, &args.postgres).await?;
    // The platform's own schema and product row, so that the rows are identical.
    let store = Store::open(&db.url, Policy::builtin(), tessera_store::Kek::parse(&tessera_store::Kek::generate_text()?)?).await?;
    let owner = Principal { name: "bench-owner".into(), roles: vec![Role::Owner], domains: vec!["sales".into()] };
    store.publish(&owner, &std::fs::read_to_string(repo().join(CONTRACT))?).await?;
    store.close().await;
    let now = 1_764_000_000_000_000i64;
    let elapsed = match backend {
        Backend::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://").split('?').next().unwrap_or_default().to_owned();
            let mut conn = rusqlite::Connection::open(&path)?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;",
            )?;
            let started = Instant::now();
            let mut rows = work.rows.iter();
            for &n in &work.rows_per_body {
                let tx = conn.transaction()?;
                {
                    let mut insert = tx.prepare(INSERT)?;
                    for r in rows.by_ref().take(n) {
                        insert.execute(rusqlite::params![
                            1i64,
                            "1.2.0",
                            now,
                            r.stream,
                            r.version,
                            r.id,
                            r.event_type,
                            r.schema_version,
                            r.payload,
                            r.metadata
                        ])?;
                    }
                }
                tx.commit()?;
            }
            started.elapsed()
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await?;
            let started = Instant::now();
            let mut rows = work.rows.iter();
            let mut text = String::new();
            for &n in &work.rows_per_body {
                text.clear();
                for r in rows.by_ref().take(n) {
                    let _ = writeln!(
                        text,
                        "1\t1.2.0\t{now}\t{}\t{}\t\\\\x{}\t{}\t{}\t{}\t{}",
                        copy_text(&r.stream),
                        r.version,
                        hex::encode(&r.id),
                        copy_text(&r.event_type),
                        r.schema_version,
                        copy_text(&r.payload),
                        copy_text(&r.metadata)
                    );
                }
                let mut tx = conn.begin().await?;
                let mut copy = tx.copy_in_raw(COPY).await?;
                copy.send(text.as_bytes()).await?;
                copy.finish().await?;
                tx.commit().await?;
            }
            started.elapsed()
        }
    };
    db.remove().await?;
    Ok(work.rows.len() as f64 / elapsed.as_secs_f64())
}

/// A value in `COPY`'s text format.
fn copy_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

struct Row {
    backend: Backend,
    platform: Vec<f64>,
    /// The platform on the same events with nothing to seal.
    unsealed: Vec<f64>,
    raw: Vec<f64>,
    rss: Vec<f64>,
    latencies: Vec<f64>,
}

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        println!("generating {} events...", args.events);
        let work = workload(args.events, args.copies_per_request)?;
        let mut backends = vec![Backend::Sqlite];
        if args.postgres != "none" {
            backends.push(Backend::Postgres);
        }
        let mut table = Vec::new();
        for backend in backends {
            let mut row =
                Row { backend, platform: Vec::new(), unsealed: Vec::new(), raw: Vec::new(), rss: Vec::new(), latencies: Vec::new() };
            // Alternate the two, so that drift in the machine hits both alike.
            for run in 1..=args.runs {
                let p = platform_run(&args, backend, &work, true).await?;
                println!("{backend:?} run {run}: platform {:.0} events/s, peak {:.0} MiB", p.events_per_second, p.peak_rss_mib);
                row.platform.push(p.events_per_second);
                row.rss.push(p.peak_rss_mib);
                row.latencies.extend(p.latencies_ms);
                let off = platform_run(&args, backend, &work, false).await?;
                println!("{backend:?} run {run}: platform without sealing {:.0} events/s", off.events_per_second);
                row.unsealed.push(off.events_per_second);
                let raw = raw_run(&args, backend, &work).await?;
                println!("{backend:?} run {run}: raw      {raw:.0} events/s");
                row.raw.push(raw);
            }
            table.push(row);
        }
        let report = report(&args, &table, &work, &runtime_facts(&args).await);
        crate::write_section(&args.output, "ingest", &report)?;
        println!("wrote {}", args.output.display());
        Ok(())
    })
}

async fn runtime_facts(args: &Args) -> String {
    let mut facts = String::new();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = write!(facts, "{cpus} cores");
    if args.postgres != "none"
        && let Ok(mut conn) = sqlx::PgConnection::connect(&args.postgres).await
    {
        use sqlx::Row as _;
        let mut settings = Vec::new();
        for s in ["server_version", "fsync", "synchronous_commit", "wal_sync_method"] {
            if let Ok(row) = sqlx::query(sqlx::AssertSqlSafe(format!("SHOW {s}"))).fetch_one(&mut conn).await {
                settings.push(format!("{s}={}", row.try_get::<String, _>(0).unwrap_or_default()));
            }
        }
        let _ = write!(facts, "; PostgreSQL {}", settings.join(", "));
    }
    facts
}

fn report(args: &Args, table: &[Row], work: &Workload, facts: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Ingest\n");
    let _ = writeln!(out, "Medians over {} runs.\n", args.runs);
    let _ = writeln!(
        out,
        "{} events of `sales/orders` (the sample file repeated with fresh ids and stream names, old schema versions and expected versions included) \
         appended through `POST /api/v1/products/sales/orders/events` to a release-built `tessera serve` process, in {} NDJSON requests of about {} events, \
         {} in flight at a time. Every request is validated against the contract and committed durably before it is acknowledged \
         (SQLite: WAL with `synchronous=FULL`; PostgreSQL: its settings below). \
         The raw baseline inserts the same rows into the same schema and indexes without the platform, by each database's fastest path and \
         without validation, in durable transactions of the platform's request size: into SQLite through its C API (rusqlite) with one \
         prepared statement and the platform's writer settings (WAL, `synchronous=FULL`, 64 MiB of cache); into PostgreSQL with one `COPY` \
         per transaction. The platform sends each request's rows to the database as one JSON parameter. The server projects what it \
         ingests meanwhile, as in production. \
         Sealing is on: each event's personal fields (the customer's email and name) are sealed under the customer's data key \
         (AES-256-GCM, keys read from the database for each request, created for new customers) before the rows are rendered. \
         The *sealing off* run appends the same events to the same contract with those fields declared `none` (nothing to seal), \
         in the same run, alternating.\n",
        work.rows.len(),
        work.bodies.len(),
        work.rows.len() / work.bodies.len().max(1),
        args.clients
    );
    let _ = writeln!(
        out,
        "| database | platform (events/s) | sealing off (events/s) | sealing on / off | raw baseline (events/s) | platform / raw | server peak RSS | single append p50 | single append p99 |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in table {
        let (p, off, raw) = (median(&r.platform), median(&r.unsealed), median(&r.raw));
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.2}× | {:.0} | {:.2}× | {:.0} MiB | {:.2} ms | {:.2} ms |",
            match r.backend {
                Backend::Sqlite => "SQLite",
                Backend::Postgres => "PostgreSQL",
            },
            p,
            off,
            p / off,
            raw,
            p / raw,
            median(&r.rss),
            quantile(&r.latencies, 0.5),
            quantile(&r.latencies, 0.99)
        );
    }
    let _ = writeln!(out, "\nSingle append: {} one-event requests after each run's bulk load, one at a time.\n", args.single);
    let _ = writeln!(
        out,
        "Targets: validated, durable ingest at least 0.9× the raw baseline on both databases, with projection running alongside.\n"
    );
    let _ = writeln!(out, "Machine: {facts}.\n");
    let _ = writeln!(out, "All runs (events/s):\n");
    for r in table {
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "- {:?}: platform {}; sealing off {}; raw {}", r.backend, fmt(&r.platform), fmt(&r.unsealed), fmt(&r.raw));
    }
    let _ = writeln!(
        out,
        "\nReproduce: `bench/run ingest` (1M events, 3 runs, SQLite and PostgreSQL); `bench/run ingest --events 100000 --runs 1 --postgres none` for a quick look."
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_baseline_contract_has_nothing_to_seal_and_still_lints() {
        // `bench/run` runs from the repository's root; tests, from the crate's.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let contract = std::fs::read_to_string(root.join(super::CONTRACT)).expect("contract");
        let off = super::without_sealing(&contract).expect("rewritten");
        let linted = tessera_contract::lint(&off, &tessera_contract::Policy::builtin());
        let errors: Vec<String> = linted.diagnostics.iter().map(|d| d.render("contract.yaml")).collect();
        let model = linted.valid().unwrap_or_else(|| panic!("the baseline contract lints: {errors:?}"));
        for (name, _) in &model.events {
            let plan = tessera_contract::seal::plan_for(&model, name.as_str(), 1).expect("plan");
            assert!(!plan.seals_anything(), "{name} still seals: {plan:?}");
        }
    }
}
