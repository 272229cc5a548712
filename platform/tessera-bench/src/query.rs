//! `query`: ten analytical queries over the example products scaled up
//! (sales/orders and customers/profiles: by default 2M orders with 5 lines
//! each, so 10M order lines, and 500k customers), through
//! `POST /api/v1/sql` of a release-built `tessera serve` process as a masked
//! role (analyst) and as an unmasked one (steward), side by side in the same
//! run with DuckDB (PyPI) reading the same Parquet files. Then point lookups
//! at 64 concurrent clients with wrk over HTTP and with pgbench over the
//! PostgreSQL protocol (both Debian packages), and the fixed cost of
//! `SELECT 1`.
//!
//! The tables are made the way production makes them: the events go
//! through the store (validated, upcast) and the real projector commits
//! them to Delta tables, batch by batch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tessera_contract::{Policy, Role};
use tessera_projection::{Projector, Warehouse};
use tessera_store::{BodyFormat, Principal, Store};

use crate::{median, quantile};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Orders to generate (each with `--lines` order lines).
    #[arg(long, default_value_t = 2_000_000)]
    orders: usize,
    /// Lines per order.
    #[arg(long, default_value_t = 5)]
    lines: usize,
    /// Customers to generate.
    #[arg(long, default_value_t = 500_000)]
    customers: usize,
    /// Timed runs of each query per engine and role (medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Clients of the point-lookup load test.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of the point-lookup load test.
    #[arg(long, default_value_t = 15)]
    load_seconds: u64,
    /// A Python with the `duckdb` package (`.ci/run`'s venv has one).
    #[arg(long, env = "TESSERA_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Where to write the report (its `query` section).
    #[arg(long, default_value = "bench/README.md")]
    output: PathBuf,
    /// Keep the generated data here and reuse it on the next run (it takes
    /// minutes to make); default: a scratch directory removed afterwards.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The release-built `tessera` binary (`bench/run` passes it).
    #[arg(long)]
    tessera: PathBuf,
}

const ANALYST: &str = "tsr_bench_analyst";
const STEWARD: &str = "tsr_bench_steward";

/// One benchmark query: Tessera's text and DuckDB's (the same but for time travel).
struct Query {
    name: &'static str,
    what: &'static str,
    sql: String,
    duckdb: String,
}

fn queries(args: &Args, time_travel_version: u64) -> Vec<Query> {
    let q = |name, what, sql: String| Query { name, what, duckdb: sql.clone(), sql };
    let some_order = format!("SO-{:08}", args.orders / 3);
    let some_customer = format!("CUS-{:07}", args.customers / 7);
    vec![
        q(
            "Q1",
            "selective filter: one day's app orders",
            "SELECT count(*) AS orders, sum(total) AS revenue FROM sales.orders.orders \
             WHERE placed_at >= TIMESTAMP '2026-03-01 00:00:00' AND placed_at < TIMESTAMP '2026-03-02 00:00:00' AND channel = 'app'"
                .into(),
        ),
        q(
            "Q2",
            "selective filter: one SKU's large lines",
            "SELECT order_id, line_no, quantity, unit_price FROM sales.orders.order_lines WHERE sku = 'SKU-00042' AND quantity >= 9 ORDER BY order_id, line_no"
                .into(),
        ),
        q(
            "Q3",
            "group-by: orders by currency and status",
            "SELECT currency, status, count(*) AS orders, sum(total) AS revenue, avg(total) AS average FROM sales.orders.orders \
             GROUP BY currency, status ORDER BY currency, status"
                .into(),
        ),
        q(
            "Q4",
            "group-by: top SKUs by revenue over 10M lines",
            "SELECT sku, sum(quantity) AS units, sum(quantity * unit_price) AS revenue FROM sales.orders.order_lines \
             GROUP BY sku ORDER BY revenue DESC, sku LIMIT 20"
                .into(),
        ),
        q(
            "Q5",
            "group-by on masked columns: email domain and birth year per country",
            "SELECT country, date_part('year', birth_date) AS born, count(*) AS customers FROM customers.profiles.profiles \
             GROUP BY country, date_part('year', birth_date) ORDER BY customers DESC, country, born LIMIT 10"
                .into(),
        ),
        q(
            "Q6",
            "join across two products: revenue by customer country",
            "SELECT p.country, count(*) AS orders, sum(o.total) AS revenue FROM sales.orders.orders o \
             JOIN customers.profiles.profiles p ON o.customer_id = p.customer_id GROUP BY p.country ORDER BY revenue DESC"
                .into(),
        ),
        q(
            "Q7",
            "top-k over wide rows: the latest customers, every column",
            "SELECT * FROM customers.profiles.profiles ORDER BY registered_at DESC, customer_id LIMIT 100".into(),
        ),
        q("Q8", "top-k over wide rows: the largest orders", "SELECT * FROM sales.orders.orders ORDER BY total DESC, order_id LIMIT 100".into()),
        q("Q9", "point lookup: one order", format!("SELECT * FROM sales.orders.orders WHERE order_id = '{some_order}'")),
        Query {
            name: "Q10",
            what: "time travel: a customer's orders at an older table version",
            sql: format!(
                "SELECT order_id, status, total FROM as_of('sales.orders.orders', {time_travel_version}) WHERE customer_id = '{some_customer}' ORDER BY order_id"
            ),
            duckdb: format!(
                "SELECT order_id, status, total FROM sales.orders.orders_at WHERE customer_id = '{some_customer}' ORDER BY order_id"
            ),
        },
    ]
}

fn owner() -> Principal {
    Principal { name: "bench".into(), roles: vec![Role::Owner], domains: vec!["sales".into(), "customers".into()] }
}

const COUNTRIES: [&str; 8] = ["GB", "DE", "FR", "NL", "ES", "IT", "NO", "US"];
const FIRST: [&str; 8] = ["ada", "lars", "chiara", "gustav", "amara", "kenji", "sofia", "omar"];
const LAST: [&str; 8] = ["lovelace", "berg", "tanaka", "cohen", "okafor", "sato", "rossi", "haddad"];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];
const CHANNELS: [&str; 3] = ["web", "app", "store"];
const DOMAINS: [&str; 4] = ["example.com", "example.org", "example.net", "mail.example"];

/// The events of customers/profiles, NDJSON, `count` customers from `first`.
fn customer_events(first: usize, count: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(first as u64 + 11);
    let mut out = String::with_capacity(count * 420);
    for i in first..first + count {
        let id = format!("CUS-{i:07}");
        let (f, l) = (FIRST[rng.usize(..FIRST.len())], LAST[rng.usize(..LAST.len())]);
        let payload = serde_json::json!({
            "customer_id": id,
            "email": format!("{f}.{l}{i}@{}", DOMAINS[rng.usize(..DOMAINS.len())]),
            "full_name": format!("{} {}", capitalized(f), capitalized(l)),
            "phone": format!("+44 20 7946 {:04}", rng.u32(0..10_000)),
            "birth_date": format!("{}-{:02}-{:02}", rng.u32(1940..2006), rng.u32(1..13), rng.u32(1..29)),
            "national_id": format!("QQ{:06}C", rng.u32(0..1_000_000)),
            "country": COUNTRIES[rng.usize(..COUNTRIES.len())],
            "signup_ip": format!("203.0.{}.{}", rng.u8(0..=255), rng.u8(1..=254)),
            "email_verified": rng.bool(),
            "registered_at": timestamp(&mut rng),
        });
        out.push_str(&serde_json::json!({"stream": id, "type": "CustomerRegistered", "schema_version": 3, "payload": payload}).to_string());
        out.push('\n');
    }
    out
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// A time in the first half of 2026.
fn timestamp(rng: &mut fastrand::Rng) -> String {
    format!("2026-{:02}-{:02}T{:02}:{:02}:{:02}Z", rng.u32(1..7), rng.u32(1..29), rng.u32(0..24), rng.u32(0..60), rng.u32(0..60))
}

/// The events of sales/orders, NDJSON: `count` orders from `first`, each
/// placed with its lines; a quarter shipped, one in twenty cancelled.
pub(crate) fn order_events(first: usize, count: usize, lines: usize, customers: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(first as u64 + 13);
    let mut out = String::with_capacity(count * (300 + lines * 160));
    let mut push = |stream: &str, kind: &str, payload: serde_json::Value| {
        out.push_str(&serde_json::json!({"stream": stream, "type": kind, "payload": payload}).to_string());
        out.push('\n');
    };
    for i in first..first + count {
        let id = format!("SO-{i:08}");
        let customer = rng.usize(..customers);
        let (f, l) = (FIRST[customer % FIRST.len()], LAST[(customer / 8) % LAST.len()]);
        let mut total = 0i64;
        let mut placed = Vec::with_capacity(lines);
        for line in 1..=lines {
            let (quantity, cents) = (rng.i64(1..11), rng.i64(100..20_000));
            total += quantity * cents;
            placed.push(serde_json::json!({
                "order_id": id, "line_no": line, "sku": format!("SKU-{:05}", rng.u32(0..10_000)),
                "quantity": quantity, "unit_price": cents as f64 / 100.0,
            }));
        }
        push(
            &id,
            "OrderPlaced",
            serde_json::json!({
                "order_id": id,
                "customer": {"id": format!("CUS-{customer:07}"), "email": format!("{f}.{l}{customer}@example.com"), "name": format!("{f} {l}")},
                "placed_at": timestamp(&mut rng),
                "currency": CURRENCIES[rng.usize(..CURRENCIES.len())],
                "total": total as f64 / 100.0,
                "channel": CHANNELS[rng.usize(..CHANNELS.len())],
            }),
        );
        for p in placed {
            push(&id, "OrderLineAdded", p);
        }
        match rng.u32(0..20) {
            0 => push(&id, "OrderCancelled", serde_json::json!({"order_id": id, "reason": "customer_request"})),
            1..=5 => push(&id, "OrderShipped", serde_json::json!({"order_id": id, "shipped_at": "2026-07-01T10:00:00Z", "carrier": "DHL"})),
            _ => {}
        }
    }
    out
}

/// Makes the data: both products published, their events appended through
/// the store, projected by the real projector. Reused when already there.
async fn prepare(args: &Args, dir: &Path) -> Result<()> {
    let done = dir.join("prepared");
    let fingerprint = format!("{} {} {}", args.orders, args.lines, args.customers);
    if std::fs::read_to_string(&done).is_ok_and(|f| f == fingerprint) {
        println!("  reusing the data in {}", dir.display());
        return Ok(());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    // The key-encryption key where the server started on this directory
    // finds it (the embedded default's `kek.key`).
    let kek = tessera_store::Kek::generate_text()?;
    tessera_server::config::write_secret(&dir.join("kek.key"), &kek)?;
    let store = Store::open(&tessera_store::db::sqlite_url(dir), Policy::builtin(), tessera_store::Kek::parse(&kek)?).await?;
    for product in ["sales-orders", "customers-profiles"] {
        let path = crate::repo().join("products").join(product).join("contract.yaml");
        store.publish(&owner(), &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?).await?;
    }
    let started = Instant::now();
    const CHUNK: usize = 5_000;
    for first in (0..args.customers).step_by(CHUNK) {
        let body = customer_events(first, CHUNK.min(args.customers - first));
        store.append_body(&owner(), "customers", "profiles", BodyFormat::Ndjson, bytes::Bytes::from(body)).await?;
    }
    for first in (0..args.orders).step_by(CHUNK) {
        let body = order_events(first, CHUNK.min(args.orders - first), args.lines, args.customers);
        store.append_body(&owner(), "sales", "orders", BodyFormat::Ndjson, bytes::Bytes::from(body)).await?;
    }
    println!("  appended the events in {:.0} s", started.elapsed().as_secs_f64());
    let warehouse = Warehouse::parse("warehouse", dir).map_err(anyhow::Error::msg)?;
    for (domain, product) in [("customers", "profiles"), ("sales", "orders")] {
        let started = Instant::now();
        let mut projector = Projector::new(store.clone(), warehouse.clone(), domain, product);
        projector.run(&|_| {}).await?;
        println!("  projected {domain}/{product} in {:.0} s", started.elapsed().as_secs_f64());
        // What the server's scheduled maintenance does once a table has 64 files.
        let started = Instant::now();
        projector.compact(64).await?;
        println!("  compacted {domain}/{product} in {:.0} s", started.elapsed().as_secs_f64());
    }
    store.close().await;
    std::fs::write(&done, fingerprint)?;
    Ok(())
}

struct Server {
    child: Child,
    base: String,
    /// The PostgreSQL protocol's `host:port`.
    pg: String,
}

impl Server {
    fn start(tessera: &Path, dir: &Path) -> Result<Server> {
        let config = dir.join("tessera.toml");
        let principal = |name: &str, token: &str, role: &str| {
            format!(
                "[[principals]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"{role}\"]\n",
                tessera_store::principals::hash_token(token)
            )
        };
        std::fs::write(
            &config,
            format!(
                "pg_listen = \"127.0.0.1:0\"\nmasking_key = \"bench-masking-key-0123456789\"\nquery_timeout_seconds = 300\n{}{}",
                principal("bench-analyst", ANALYST, "analyst"),
                principal("bench-steward", STEWARD, "steward")
            ),
        )?;
        let mut child = Command::new(tessera)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}; build it with `cargo build --release -p tessera-cli`", tessera.display()))?;
        let (base, pg) = crate::serving(&mut child)?;
        let pg = pg.context("the server did not listen for the PostgreSQL protocol")?;
        Ok(Server { child, base, pg })
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// Runs `sql` once as `token`, reading the whole Arrow result; seconds and rows.
async fn timed(client: &reqwest::Client, base: &str, token: &str, sql: &str) -> Result<(f64, usize)> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/api/v1/sql"))
        .bearer_auth(token)
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.is_success() {
        bail!("{sql}: {status} {}", String::from_utf8_lossy(&body));
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
    let rows = reader.map(|b| b.map(|b| b.num_rows())).sum::<Result<usize, _>>()?;
    Ok((seconds, rows))
}

/// The Parquet files of each table (newest version), and of the orders
/// table at `version`, for DuckDB.
async fn files(dir: &Path, version: u64) -> Result<Vec<(String, Vec<String>)>> {
    let warehouse = Warehouse::parse("warehouse", dir).map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    for (domain, product, table) in
        [("sales", "orders", "orders"), ("sales", "orders", "order_lines"), ("customers", "profiles", "profiles")]
    {
        let url = warehouse.table_url(domain, product, 1, table);
        let mut t = deltalake::DeltaTable::try_from_url(url.clone()).await?;
        t.load().await?;
        out.push((format!("{domain}.{product}.{table}"), t.get_file_uris()?.collect()));
        if table == "orders" {
            let mut old = deltalake::DeltaTable::try_from_url(url).await?;
            old.load_version(version).await?;
            out.push((format!("{domain}.{product}.orders_at"), old.get_file_uris()?.collect()));
        }
    }
    Ok(out)
}

/// DuckDB: views named like Tessera's tables over the same Parquet files,
/// then each query `runs` times after one warm-up; seconds per run, as JSON.
const DUCKDB: &str = r#"
import json, sys, time, duckdb
spec = json.load(open(sys.argv[1]))
con = duckdb.connect()
con.execute('SET enable_progress_bar = false')
for name, files in spec["tables"]:
    catalog, schema, table = name.split(".")
    if catalog not in [r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()]:
        con.execute(f"ATTACH ':memory:' AS {catalog}")
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {catalog}.{schema}")
    listed = ", ".join("'" + f.replace("file://", "") + "'" for f in files)
    con.execute(f"CREATE VIEW {catalog}.{schema}.{table} AS SELECT * FROM read_parquet([{listed}])")
out = {}
for name, sql in spec["queries"]:
    try:
        con.execute(sql).fetch_arrow_table()
    except duckdb.Error as e:
        # A query over a sealed column: DuckDB sees opaque bytes there.
        out[name] = {"error": str(e).splitlines()[0]}
        continue
    times, rows = [], 0
    for _ in range(spec["runs"]):
        started = time.perf_counter()
        rows = con.execute(sql).fetch_arrow_table().num_rows
        times.append(time.perf_counter() - started)
    out[name] = {"seconds": times, "rows": rows}
print(json.dumps(out))
"#;

/// wrk's Lua script: POSTs point lookups of random orders.
const WRK_SCRIPT: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Authorization"] = "Bearer TOKEN"
request = function()
  local id = string.format("SO-%08d", math.random(0, ORDERS - 1))
  return wrk.format(nil, nil, nil, '{"sql": "SELECT * FROM sales.orders.orders WHERE OPEN' .. 'order_id = \'' .. id .. '\'CLOSE"}')
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %f %f %d %d %d\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests / (summary.duration / 1e6), summary.requests, summary.errors.status, summary.errors.timeout))
end
"#;

struct Load {
    p50_ms: f64,
    p99_ms: f64,
    per_second: f64,
    requests: u64,
    errors: u64,
}

/// Point lookups with wrk for `seconds`; `planned` writes the filter as
/// `(order_id = …)`, which the key-lookup path does not take (the same
/// answer, planned by DataFusion: the baseline).
fn load_test(args: &Args, base: &str, dir: &Path, clients: usize, seconds: u64, planned: bool) -> Result<Load> {
    let script = dir.join("point-lookup.lua");
    let (open, close) = if planned { ("(", ")") } else { ("", "") };
    let lua =
        WRK_SCRIPT.replace("TOKEN", ANALYST).replace("ORDERS", &args.orders.to_string()).replace("OPEN", open).replace("CLOSE", close);
    std::fs::write(&script, lua)?;
    let o = Command::new("wrk")
        .args([&format!("-t{}", clients.min(2)), &format!("-c{clients}"), &format!("-d{seconds}s"), "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(format!("{base}/api/v1/sql"))
        .output()
        .context("wrk is needed for the load test: apt-get install wrk")?;
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT ")).with_context(|| format!("wrk said: {text}"))?;
    let v: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [p50_ms, p99_ms, per_second, requests, status_errors, timeouts] = v.as_slice() else { bail!("wrk said: {text}") };
    Ok(Load {
        p50_ms: *p50_ms,
        p99_ms: *p99_ms,
        per_second: *per_second,
        requests: *requests as u64,
        errors: (*status_errors + *timeouts) as u64,
    })
}

/// pgbench's script: point lookups of random orders, the same statement
/// as wrk's. pgbench draws numbers only and substitutes `:id` as text, so
/// the key's zero padding is chosen by the number's digits.
fn pgbench_script(orders: usize) -> String {
    let lookup = |digits: usize| format!("SELECT * FROM sales.orders.orders WHERE order_id = 'SO-{}:id';\n", "0".repeat(8 - digits));
    let mut script = format!("\\set id random(0, {})\n", orders.saturating_sub(1));
    for digits in 1..8 {
        let keyword = if digits == 1 { "if" } else { "elif" };
        script.push_str(&format!("\\{keyword} :id < {}\n", 10u64.pow(digits as u32)));
        script.push_str(&lookup(digits));
    }
    script.push_str("\\else\n");
    script.push_str(&lookup(8));
    script.push_str("\\endif\n");
    script
}

/// The point lookups over the PostgreSQL protocol with pgbench, latencies
/// from its per-transaction log.
/// `script` with pgbench over the PostgreSQL protocol, `clients` at once
/// for `seconds`, latencies from its per-transaction log.
fn pg_load_test(pg: &str, dir: &Path, name: &str, script: &str, clients: usize, seconds: u64) -> Result<Load> {
    let (host, port) = pg.rsplit_once(':').context("the PostgreSQL protocol's address")?;
    let logs = dir.join(format!("pgbench-{name}"));
    std::fs::create_dir_all(&logs)?;
    let file = dir.join(format!("{name}.sql"));
    std::fs::write(&file, script)?;
    let script = file;
    let o = Command::new("pgbench")
        .args(["-n", "-h", host, "-p", port, "-U", "bench-analyst", "-M", "simple", "-j", &clients.min(2).to_string()])
        .arg(format!("-c{clients}"))
        .arg(format!("-T{seconds}"))
        .arg("-f")
        .arg(&script)
        .arg("-l")
        .arg(format!("--log-prefix={}", logs.join("lookup").display()))
        .arg("tessera")
        .env("PGPASSWORD", ANALYST)
        .output()
        .context("pgbench is needed for the PostgreSQL protocol's load test: apt-get install postgresql-client")?;
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        bail!("pgbench failed: {text}{}", String::from_utf8_lossy(&o.stderr));
    }
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    // Each log line: client, transaction, latency (µs), script, epoch seconds, µs.
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(&logs)? {
        for line in std::fs::read_to_string(entry?.path())?.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<f64>().ok()) {
                latencies.push(us / 1e3);
            }
        }
    }
    if latencies.is_empty() {
        bail!("pgbench logged no transaction: {text}");
    }
    let requests = latencies.len() as u64;
    Ok(Load {
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        per_second: requests as f64 / seconds as f64,
        requests,
        errors: failed,
    })
}

struct Row {
    query: Query,
    rows: usize,
    analyst: Vec<f64>,
    steward: Vec<f64>,
    duckdb: Vec<f64>,
}

pub fn run(args: Args) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let check = Command::new(&args.python).args(["-c", "import duckdb; print(duckdb.__version__)"]).output();
    let duckdb_version = match check {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => bail!("{} cannot import duckdb: pass --python (or TESSERA_PYTHON) of a venv with it", args.python.display()),
    };
    let scratch = tempfile::tempdir_in(".").context("a scratch directory here")?;
    let dir = args.data.clone().unwrap_or_else(|| scratch.path().join("data"));
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "query: {} orders × {} lines, {} customers; {} runs; {} clients",
        args.orders, args.lines, args.customers, args.runs, args.concurrency
    );
    runtime.block_on(prepare(&args, &dir))?;
    // Time travel reads the orders table at the version half way through its history.
    let orders_url = Warehouse::parse("warehouse", &dir).map_err(anyhow::Error::msg)?.table_url("sales", "orders", 1, "orders");
    let head = runtime.block_on(async {
        let mut t = deltalake::DeltaTable::try_from_url(orders_url).await?;
        t.load().await?;
        anyhow::Ok(t.version().unwrap_or(0))
    })?;
    let version = head / 2;
    let queries = queries(&args, version);

    // DuckDB first, on its own: the server is not running yet.
    let spec = serde_json::json!({
        "tables": runtime.block_on(files(&dir, version))?,
        "queries": queries.iter().map(|q| (q.name, q.duckdb.clone())).collect::<Vec<_>>(),
        "runs": args.runs,
    });
    let spec_path = scratch.path().join("duckdb.json");
    std::fs::write(&spec_path, spec.to_string())?;
    let o = Command::new(&args.python).args(["-c", DUCKDB]).arg(&spec_path).output()?;
    if !o.status.success() {
        bail!("DuckDB failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let duck: serde_json::Value = serde_json::from_slice(&o.stdout).context("DuckDB's timings")?;

    let server = Server::start(&args.tessera, &dir)?;
    let outcome = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut table = Vec::new();
        for query in queries {
            // One warm-up each (opens the tables, fills the OS cache), then alternate roles run by run.
            timed(&client, &server.base, ANALYST, &query.sql).await?;
            timed(&client, &server.base, STEWARD, &query.sql).await?;
            let (mut analyst, mut steward, mut rows) = (Vec::new(), Vec::new(), 0);
            for _ in 0..args.runs {
                let (s, n) = timed(&client, &server.base, ANALYST, &query.sql).await?;
                analyst.push(s);
                rows = n;
                steward.push(timed(&client, &server.base, STEWARD, &query.sql).await?.0);
            }
            let d = &duck[query.name];
            let duckdb: Vec<f64> =
                d["seconds"].as_array().map(|v| v.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default();
            let duck_rows = d["rows"].as_u64().unwrap_or(0) as usize;
            if let Some(e) = d["error"].as_str() {
                println!("  {}: DuckDB cannot run it over the files: {e}", query.name);
            } else if duck_rows != rows {
                bail!("{}: Tessera returned {rows} rows, DuckDB {duck_rows}", query.name);
            }
            println!(
                "  {}: analyst {:.1} ms, steward {:.1} ms, DuckDB {:.1} ms ({rows} rows)",
                query.name,
                median(&analyst) * 1e3,
                median(&steward) * 1e3,
                median(&duckdb) * 1e3
            );
            table.push(Row { query, rows, analyst, steward, duckdb });
        }
        // The fixed cost of a query: `SELECT 1` reads no table.
        let mut select_one = Vec::new();
        for _ in 0..(args.runs * 20) {
            select_one.push(timed(&client, &server.base, ANALYST, "SELECT 1").await?.0);
        }
        anyhow::Ok((table, select_one))
    });
    // A warm-up builds the orders table's key-lookup index (lookups take
    // the planner until it is ready); then the lookups, the same lookups
    // planned (the baseline), the lookups over the PostgreSQL protocol, and
    // `SELECT 1` over it from one client.
    let loads = outcome.as_ref().ok().map(|_| -> Result<[Load; 5]> {
        load_test(&args, &server.base, scratch.path(), args.concurrency, 3, false)?;
        let lookups = load_test(&args, &server.base, scratch.path(), args.concurrency, args.load_seconds, false)?;
        let planned = load_test(&args, &server.base, scratch.path(), args.concurrency, args.load_seconds, true)?;
        let one = load_test(&args, &server.base, scratch.path(), 1, 5, false)?;
        let pg = pg_load_test(&server.pg, scratch.path(), "lookup", &pgbench_script(args.orders), args.concurrency, args.load_seconds)?;
        let pg_one = pg_load_test(&server.pg, scratch.path(), "select-one", "SELECT 1;\n", 1, 5)?;
        Ok([lookups, planned, pg, pg_one, one])
    });
    server.stop();
    let (table, select_one) = outcome?;
    let [load, planned, pg_load, pg_one, one] = loads.context("no load test")??;
    println!("  SELECT 1: p50 {:.2} ms over HTTP, {:.2} ms over the PostgreSQL protocol", median(&select_one) * 1e3, pg_one.p50_ms);
    println!(
        "  the same lookups planned (WHERE (order_id = …)) at {} clients: p50 {:.1} ms, p99 {:.1} ms, {:.0}/s ({} errors)",
        args.concurrency, planned.p50_ms, planned.p99_ms, planned.per_second, planned.errors
    );
    println!(
        "  point lookups over the PostgreSQL protocol at {} clients: p50 {:.1} ms, p99 {:.1} ms, {:.0}/s ({} errors)",
        args.concurrency, pg_load.p50_ms, pg_load.p99_ms, pg_load.per_second, pg_load.errors
    );
    println!(
        "  point lookups at {} clients: p50 {:.1} ms, p99 {:.1} ms, {:.0}/s",
        args.concurrency, load.p50_ms, load.p99_ms, load.per_second
    );
    let section = report(&args, &duckdb_version, version, &table, &[&load, &pg_load, &planned, &pg_one, &one], &select_one);
    crate::write_section(&args.output, "query", &section)?;
    println!("wrote {}", args.output.display());
    Ok(())
}

fn ms(seconds: f64) -> String {
    format!("{:.1}", seconds * 1e3)
}

fn report(args: &Args, duckdb_version: &str, version: u64, table: &[Row], loads: &[&Load; 5], select_one: &[f64]) -> String {
    let [load, pg_load, planned, pg_one, one] = *loads;
    let mut out = String::new();
    out.push_str("## Query\n\n");
    out.push_str(&format!(
        "The example products scaled up: `sales/orders` with {} orders of {} lines each ({} rows in `order_lines`) and \
         `customers/profiles` with {} customers, appended as events through the store and projected by the real projector into \
         Delta tables in a local directory, then compacted as the server's maintenance does at 64 files. Each query goes through `POST /api/v1/sql` of a release-built `tessera serve` process \
         (Arrow IPC result, read whole by the client), as `analyst` (masked: email partial, names and IP addresses keyed hashes, \
         birth dates year only, national ids null) and as `steward` (every column of these tables in the clear), alternating, after \
         one warm-up; medians of {} runs. DuckDB {duckdb_version} (PyPI, in process, the same run, the same 2 cores) runs the same \
         SQL over views of the same Parquet files (`read_parquet` of each table's active files), reading its result into Arrow; \
         it applies no masking. Q10 reads the orders table at version {version} (`as_of`); DuckDB reads that version's files. \
         Personal values are sealed: the files hold tokens in the classified columns (binary, opaque to DuckDB), and Tessera opens \
         them in the masked scan, for the steward (clear) and for the analyst's `partial`, `hash` and `year_only` columns; a \
         query DuckDB cannot compute over such a column is marked.\n\n",
        args.orders,
        args.lines,
        args.orders * args.lines,
        args.customers,
        args.runs
    ));
    out.push_str("| query | what | rows | analyst (ms) | steward (ms) | DuckDB (ms) | analyst / DuckDB | analyst / steward |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    let (mut ta, mut ts, mut td, mut tad) = (0.0, 0.0, 0.0, 0.0);
    for r in table {
        let (a, s) = (median(&r.analyst), median(&r.steward));
        ta += a;
        ts += s;
        // DuckDB cannot compute a query over a sealed column (it reads opaque bytes there).
        let (d, ratio) = if r.duckdb.is_empty() {
            ("— (sealed column)".to_owned(), "—".to_owned())
        } else {
            let d = median(&r.duckdb);
            td += d;
            tad += a;
            (ms(d), format!("{:.2}×", a / d))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2}× |\n",
            r.query.name,
            r.query.what,
            r.rows,
            ms(a),
            ms(s),
            d,
            ratio,
            a / s
        ));
    }
    out.push_str(&format!(
        "| total | | | {} | {} | {} | {:.2}× (of the queries DuckDB runs) | {:.2}× |\n\n",
        ms(ta),
        ms(ts),
        ms(td),
        tad / td,
        ta / ts
    ));
    out.push_str(&format!(
        "Point lookups (`SELECT * FROM sales.orders.orders WHERE order_id = '…'`, a random order, as analyst, JSON) from {} \
         concurrent clients for {} s with wrk (Debian's package, 2 threads, on the same 2 cores as the server), after a 3 s warm-up \
         that builds the table's key-lookup index: p50 {:.1} ms, p99 {:.1} ms, {:.0} queries/s ({} queries, {} errors). The same \
         lookups planned by DataFusion (written `WHERE (order_id = '…')`, which the lookup path does not take), the baseline: \
         p50 {:.1} ms, p99 {:.1} ms, {:.0} queries/s ({} errors); lookups {:.1}× the planned throughput. One client at a time \
         (wrk, 5 s): p50 {:.2} ms, p99 {:.2} ms. The same lookups over the PostgreSQL protocol \
         (pgbench, Debian's package, {} clients, 2 threads, simple protocol, the key's literal chosen by its digits with `\\if`): \
         p50 {:.1} ms, p99 {:.1} ms, {:.0} queries/s ({} queries, {} errors).\n\n",
        args.concurrency,
        args.load_seconds,
        load.p50_ms,
        load.p99_ms,
        load.per_second,
        load.requests,
        load.errors,
        planned.p50_ms,
        planned.p99_ms,
        planned.per_second,
        planned.errors,
        load.per_second / planned.per_second.max(f64::MIN_POSITIVE),
        one.p50_ms,
        one.p99_ms,
        args.concurrency,
        pg_load.p50_ms,
        pg_load.p99_ms,
        pg_load.per_second,
        pg_load.requests,
        pg_load.errors,
    ));
    out.push_str(&format!(
        "The fixed cost of a query (`SELECT 1`, one client): over HTTP (Arrow IPC, {} runs) p50 {:.2} ms, p99 {:.2} ms; over the \
         PostgreSQL protocol (pgbench, simple protocol, 5 s, {} queries) p50 {:.2} ms, p99 {:.2} ms.\n\n",
        select_one.len(),
        median(select_one) * 1e3,
        quantile(select_one, 0.99) * 1e3,
        pg_one.requests,
        pg_one.p50_ms,
        pg_one.p99_ms
    ));
    out.push_str(
        "Targets: total of the ten queries ≤ 1.2× DuckDB; masking overhead (analyst / steward) ≤ 1.05× in total and ≤ 1.2× for every \
         query; point lookups p50 ≤ 5 ms and p99 ≤ 20 ms at 64 concurrent clients.\n\n",
    );
    out.push_str("The queries:\n\n");
    for r in table {
        out.push_str(&format!("- {}: `{}`\n", r.query.name, r.query.sql));
    }
    out.push_str("\nAll runs (ms):\n\n");
    let list = |v: &[f64]| v.iter().map(|s| ms(*s)).collect::<Vec<_>>().join(", ");
    for r in table {
        out.push_str(&format!(
            "- {}: analyst {}; steward {}; DuckDB {}\n",
            r.query.name,
            list(&r.analyst),
            list(&r.steward),
            list(&r.duckdb)
        ));
    }
    out.push_str(
        "\nReproduce: `bench/run query` (2M orders, 10M lines, 500k customers, 5 runs; add `--data DIR` to keep the generated data \
         for the next run); `bench/run query --orders 100000 --customers 20000 --runs 3` for a quick look.\n",
    );
    out
}
