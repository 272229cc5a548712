//! `catalog`: catalog search over generated products (10,000 by default)
//! through `GET /api/v1/search` of the real router on loopback HTTP, side by
//! side in the same run with SQLite FTS5 answering the same queries over the
//! same text in-process (bm25 with the same field weights, plus the total
//! and the four facet counts that the API returns).
//!
//! Products are published through `Store::publish` (linted, stored) into a
//! SQLite catalog; the server indexes them on its first search, and that
//! build is timed too. Projections and SQL are off in this server: they
//! play no part in search, and 10,000 idle projectors would only add noise.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use sqlx::{Connection, Row};
use tessera_contract::{Policy, Role};
use tessera_store::{Principal, Store};

use crate::{median, quantile};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Products to generate.
    #[arg(long, default_value_t = 10_000)]
    products: usize,
    /// Timed runs of each query per engine (medians are reported).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Where to write the report (its `catalog` section).
    #[arg(long, default_value = "bench/README.md")]
    output: PathBuf,
    /// Accepted for symmetry with the other benchmarks; this one serves in-process.
    #[arg(long)]
    tessera: Option<PathBuf>,
}

const DOMAINS: [&str; 24] = [
    "sales",
    "finance",
    "logistics",
    "marketing",
    "payments",
    "customers",
    "inventory",
    "hr",
    "support",
    "risk",
    "pricing",
    "supply",
    "web",
    "mobile",
    "stores",
    "warehouse",
    "legal",
    "procurement",
    "fleet",
    "loyalty",
    "billing",
    "partners",
    "research",
    "security",
];
const NOUNS: [&str; 40] = [
    "orders",
    "invoices",
    "shipments",
    "returns",
    "refunds",
    "payments",
    "accounts",
    "contracts",
    "tickets",
    "sessions",
    "visits",
    "campaigns",
    "coupons",
    "products",
    "prices",
    "stock",
    "deliveries",
    "routes",
    "vehicles",
    "claims",
    "policies",
    "ledgers",
    "budgets",
    "forecasts",
    "leads",
    "subscriptions",
    "renewals",
    "devices",
    "alerts",
    "incidents",
    "audits",
    "suppliers",
    "purchases",
    "receipts",
    "transfers",
    "balances",
    "reviews",
    "ratings",
    "clicks",
    "searches",
];
const QUALIFIERS: [&str; 16] = [
    "daily", "monthly", "regional", "global", "open", "closed", "pending", "realtime", "historic", "weekly", "european", "american",
    "online", "offline", "b2b", "retail",
];
const TAGS: [&str; 20] = [
    "revenue",
    "kpi",
    "gdpr",
    "finance",
    "operations",
    "marketing",
    "e-commerce",
    "realtime",
    "reporting",
    "ml-features",
    "churn",
    "fraud",
    "growth",
    "compliance",
    "forecasting",
    "logistics",
    "customer-360",
    "experiments",
    "pricing",
    "audit",
];
const COLUMNS: [&str; 30] = [
    "amount",
    "currency",
    "status",
    "created_at",
    "updated_at",
    "region",
    "country",
    "channel",
    "quantity",
    "unit_price",
    "discount",
    "tax",
    "score",
    "category",
    "segment",
    "priority",
    "carrier",
    "warehouse_code",
    "sku",
    "reason",
    "source",
    "campaign_code",
    "device_type",
    "duration_seconds",
    "rating",
    "margin",
    "cost",
    "revenue",
    "weight_kg",
    "distance_km",
];

/// The contract of generated product `i`: deterministic, varied vocabulary.
fn contract(i: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(i as u64);
    let domain = DOMAINS[i % DOMAINS.len()];
    let noun = NOUNS[rng.usize(..NOUNS.len())];
    let qualifier = QUALIFIERS[rng.usize(..QUALIFIERS.len())];
    let name = format!("{qualifier}_{noun}_{i}");
    let tags: Vec<&str> =
        (0..rng.usize(1..4)).map(|_| TAGS[rng.usize(..TAGS.len())]).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let columns: Vec<&str> =
        (0..rng.usize(3..9)).map(|_| COLUMNS[rng.usize(..COLUMNS.len())]).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let other = NOUNS[rng.usize(..NOUNS.len())];
    let status = ["active", "active", "active", "draft", "deprecated"][rng.usize(..5)];
    let column_spec: String = columns
        .iter()
        .map(|c| format!("      {c}: {{ type: string, description: The {} of the {noun} }}\n", c.replace('_', " ")))
        .collect();
    let sets: String = columns.iter().map(|c| format!("            {c}: payload.{c}\n")).collect();
    let props: String = columns.iter().map(|c| format!("        {c}: {{ type: string }}\n")).collect();
    format!(
        "domain: {domain}\nname: {name}\nversion: 1.0.0\ntitle: {} {}\n\
         description: {} {noun} of the {domain} domain, with their {other} and {}, for reporting and analysis.\n\
         owner: {{ team: {domain}-team-{}, contact: {domain}-data@example.com }}\ntags: [{}]\nstatus: {status}\n\
         events:\n  {}Recorded:\n    description: A {noun} was recorded\n    version: 1\n    schema:\n      type: object\n      required: [id]\n      properties:\n        id: {{ type: string }}\n{props}\
         tables:\n  {noun}:\n    description: Every {noun}, one row each, with its {other}\n    upsert:\n      key: [id]\n      from:\n        {}Recorded:\n          set:\n            id: payload.id\n{sets}\
         \x20   columns:\n      id: {{ type: string, required: true, description: Identifier of the {noun} }}\n{column_spec}",
        capitalize(qualifier),
        noun,
        capitalize(qualifier),
        columns.join(", ").replace('_', " "),
        i % 3,
        tags.join(", "),
        capitalize(noun),
        capitalize(noun),
    )
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// The queries: one common word, rare words, two words, a prefix as typed,
/// a column name, facets alone and with words, and the empty search.
const QUERIES: [(&str, &str); 10] = [
    ("orders", ""),
    ("revenue", ""),
    ("daily invoices", ""),
    ("shipm", ""),
    ("warehouse_code", ""),
    ("refunds currency", ""),
    ("", "domain=finance"),
    ("payments", "tag=fraud&status=active"),
    ("european leads kpi", ""),
    ("", ""),
];

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<()> {
    let scratch = tempfile::tempdir_in(".").context("a scratch directory here")?;
    let dir = scratch.path();
    println!("catalog: {} products, {} runs per query", args.products, args.runs);
    let store = Store::open(
        &tessera_store::db::sqlite_url(dir),
        Policy::builtin(),
        tessera_store::Kek::parse(&tessera_store::Kek::generate_text()?)?,
    )
    .await?;
    let publisher = Principal { name: "bench".into(), roles: vec![Role::Owner], domains: DOMAINS.iter().map(|d| d.to_string()).collect() };
    let started = Instant::now();
    for i in 0..args.products {
        let yaml = contract(i);
        store.publish(&publisher, &yaml).await.with_context(|| format!("publishing generated product {i}:\n{yaml}"))?;
    }
    println!("published {} products in {:.1} s", args.products, started.elapsed().as_secs_f64());

    // The server: the real router on loopback.
    let state = tessera_server::AppState::new(store.clone(), 1 << 20).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tessera_server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let first = search(&client, &base, "orders", "").await?;
    let build_seconds = started.elapsed().as_secs_f64();
    println!("first search (builds the index) in {build_seconds:.2} s: {} results", first.0);

    // The baseline: SQLite FTS5 over the same fields, in-process.
    let fts = Fts::build(dir, &store).await?;

    let mut rows = Vec::new();
    let (mut all_tessera, mut all_fts) = (Vec::new(), Vec::new());
    for (q, filters) in QUERIES {
        // One warm-up each, then alternate engines run by run.
        let (total, _) = search(&client, &base, q, filters).await?;
        let fts_total = fts.search(q, filters).await?.0;
        let (mut t, mut f) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let s = Instant::now();
            search(&client, &base, q, filters).await?;
            t.push(s.elapsed().as_secs_f64() * 1e3);
            let s = Instant::now();
            fts.search(q, filters).await?;
            f.push(s.elapsed().as_secs_f64() * 1e3);
        }
        all_tessera.extend_from_slice(&t);
        all_fts.extend_from_slice(&f);
        let label = match (q, filters) {
            ("", "") => "(everything)".to_owned(),
            ("", f) => f.to_owned(),
            (q, "") => format!("`{q}`"),
            (q, f) => format!("`{q}` {f}"),
        };
        println!("{label:<36} tessera {:.2} ms ({total} results), fts5 {:.2} ms ({fts_total} results)", median(&t), median(&f));
        rows.push((label, total, fts_total, median(&t), quantile(&t, 0.99), median(&f)));
    }
    let _ = stop.send(());
    server.await??;

    let (p50, p99, fts50) = (median(&all_tessera), quantile(&all_tessera, 0.99), median(&all_fts));
    let mut md = String::new();
    md.push_str("## Catalog search\n\n");
    md.push_str(&format!(
        "`bench/run catalog`: {} generated products (24 domains; names, titles, tags, tables, columns and descriptions from word lists), \
         published through the store. `GET /api/v1/search` of the real router over loopback HTTP (JSON, top 20, total and facet counts), \
         against SQLite FTS5 answering the same query in-process over the same text (bm25 with the same field weights; top 20, total and \
         the four facet counts). {} timed runs of each query, alternating, after one warm-up. Target: p50 ≤ 20 ms through the API.\n\n",
        args.products, args.runs
    ));
    md.push_str(&format!(
        "- **All queries: p50 {p50:.2} ms, p99 {p99:.2} ms through the API; FTS5 in-process p50 {fts50:.2} ms ({:.2}×).** Target p50 ≤ 20 ms: {}.\n",
        p50 / fts50,
        if p50 <= 20.0 { "met" } else { "**not met**" }
    ));
    md.push_str(&format!(
        "- The first search builds the index from the catalog database: {build_seconds:.2} s for {} products.\n\n",
        args.products
    ));
    md.push_str(
        "| query | results (Tessera / FTS5) | Tessera p50 ms | Tessera p99 ms | FTS5 p50 ms | ratio |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (label, total, fts_total, t50, t99, f50) in &rows {
        md.push_str(&format!("| {label} | {total} / {fts_total} | {t50:.2} | {t99:.2} | {f50:.2} | {:.2}× |\n", t50 / f50));
    }
    md.push_str(
        "\nResult counts differ where the two match differently: Tessera splits identifiers (`warehouse_code` also matches \
         `warehouse` and `code`) and matches the last word as a prefix; FTS5 is given the last word as a prefix too (`word*`).\n",
    );
    crate::write_section(&args.output, "catalog", &md)?;
    println!("wrote the catalog section of {}", args.output.display());
    store.close().await;
    Ok(())
}

async fn search(client: &reqwest::Client, base: &str, q: &str, filters: &str) -> Result<(u64, usize)> {
    let mut url = format!("{base}/api/v1/search?limit=20");
    if !q.is_empty() {
        url.push_str("&q=");
        url.push_str(&q.replace(' ', "+"));
    }
    if !filters.is_empty() {
        url.push('&');
        url.push_str(filters);
    }
    let response = client.get(&url).send().await?;
    anyhow::ensure!(response.status().is_success(), "{url}: {}", response.status());
    let body: serde_json::Value = response.json().await?;
    Ok((body["total"].as_u64().unwrap_or(0), body["results"].as_array().map_or(0, Vec::len)))
}

/// SQLite FTS5 over the same fields, one row per product.
struct Fts {
    conn: tokio::sync::Mutex<sqlx::SqliteConnection>,
}

impl Fts {
    async fn build(dir: &std::path::Path, store: &Store) -> Result<Fts> {
        let url = format!("sqlite://{}?mode=rwc", dir.join("fts.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        sqlx::query(
            "CREATE VIRTUAL TABLE docs USING fts5(name, title, tags, domain, owner, tables, columns, events, description, \
             f_domain UNINDEXED, f_tags UNINDEXED, f_status UNINDEXED, f_owner UNINDEXED, tokenize = 'unicode61')",
        )
        .execute(&mut conn)
        .await?;
        let mut tx = conn.begin().await?;
        for p in store.products().await? {
            let c = store.contract_at(&p.domain, &p.name, &p.current_version).await?;
            let tables: Vec<String> = c.tables.keys().map(ToString::to_string).collect();
            let columns: Vec<String> = c.tables.values().flat_map(|t| t.columns.keys().map(ToString::to_string)).collect();
            let events: Vec<String> = c.events.keys().map(ToString::to_string).collect();
            let mut description = c.description.clone().unwrap_or_default();
            for t in c.tables.values() {
                description.push(' ');
                description.push_str(t.description.as_deref().unwrap_or(""));
                for col in t.columns.values() {
                    description.push(' ');
                    description.push_str(col.description.as_deref().unwrap_or(""));
                }
            }
            sqlx::query("INSERT INTO docs VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
                .bind(c.name.as_str())
                .bind(&c.title)
                .bind(c.tags.join(" "))
                .bind(c.domain.as_str())
                .bind(format!("{} {}", c.owner.team, c.owner.contact))
                .bind(tables.join(" "))
                .bind(columns.join(" "))
                .bind(events.join(" "))
                .bind(description)
                .bind(c.domain.as_str())
                .bind(format!(",{},", c.tags.join(",")))
                .bind(c.status.as_str())
                .bind(&c.owner.team)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Fts { conn: tokio::sync::Mutex::new(conn) })
    }

    /// The same answer as the API: total, top 20 by bm25, four facets.
    async fn search(&self, q: &str, filters: &str) -> Result<(i64, usize)> {
        let words: Vec<String> = q.split_whitespace().map(|w| format!("\"{}\"", w.replace('"', ""))).collect();
        let mut clauses = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if !words.is_empty() {
            let mut m = words.join(" ");
            m.push('*');
            clauses.push("docs MATCH ?".to_owned());
            binds.push(m);
        }
        for pair in filters.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "tag" => {
                    clauses.push("f_tags LIKE ?".into());
                    binds.push(format!("%,{v},%"));
                }
                other => {
                    clauses.push(format!("f_{other} = ?"));
                    binds.push(v.to_owned());
                }
            }
        }
        let filter = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
        let order = if words.is_empty() { "ORDER BY name" } else { "ORDER BY bm25(docs, 10, 8, 6, 5, 4, 4, 3, 2, 1)" };
        let mut conn = self.conn.lock().await;
        let bind_all = |sql: String| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for b in &binds {
                query = query.bind(b.clone());
            }
            query
        };
        let top = bind_all(format!("SELECT name, title, description FROM docs{filter} {order} LIMIT 20")).fetch_all(&mut *conn).await?;
        let total: i64 = bind_all(format!("SELECT COUNT(*) FROM docs{filter}")).fetch_one(&mut *conn).await?.try_get(0)?;
        // The facet counts are computed as the API computes them; their values are not compared.
        for f in ["f_domain", "f_status", "f_owner", "f_tags"] {
            bind_all(format!("SELECT {f}, COUNT(*) FROM docs{filter} GROUP BY {f} ORDER BY 2 DESC LIMIT 50")).fetch_all(&mut *conn).await?;
        }
        Ok((total, top.len()))
    }
}
