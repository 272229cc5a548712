//! `tessera-bench`: Tessera's benchmarks, each measured side by side with a
//! baseline in the same run, reporting medians and ratios into
//! `bench/README.md`. Run through `bench/run` (it builds in release mode).
//!
//! `ingest`: 1M events of sales/orders through the HTTP API (a real
//! `tessera serve` process, NDJSON batches) against the raw baseline of
//! inserting the same rows into the same schema without the platform (one
//! transaction, one prepared statement), on SQLite and PostgreSQL.
//!
//! `projection`: 1M and 10M events into an append table and an upsert
//! table, against DuckDB doing the same transformation on the same events.
//!
//! `query`: ten analytical queries over the example products scaled to 10M
//! rows, through `POST /api/v1/sql` as a masked and an unmasked role,
//! against DuckDB on the same Parquet files; point lookups at 64 clients.
//!
//! `catalog`: search over 10,000 generated products through
//! `GET /api/v1/search`, against SQLite FTS5 over the same text.
//!
//! Each benchmark rewrites its own section of the report, between
//! `<!-- bench:NAME -->` markers, and leaves the others as they were.

#![allow(clippy::print_stdout, clippy::print_stderr)] // A benchmark reports.

/// mimalloc: the projector, the query engine and ingest allocate and free
/// many small values across threads, where glibc's allocator spends a third
/// of the projection's time (measured with perf; see bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod catalog;
mod ingest;
mod projection;
mod query;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tessera-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Event ingest through the HTTP API vs. raw inserts.
    Ingest(ingest::Args),
    /// Projection into append and upsert tables vs. DuckDB.
    Projection(projection::Args),
    /// Analytical SQL through the HTTP API, masked and unmasked, vs. DuckDB; point lookups under load.
    Query(query::Args),
    /// Catalog search over 10,000 generated products vs. SQLite FTS5.
    Catalog(catalog::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.bench {
        Bench::Ingest(args) => ingest::run(args),
        Bench::Projection(args) => projection::run(args),
        Bench::Query(args) => query::run(args),
        Bench::Catalog(args) => catalog::run(args),
    }
}

/// Replaces section `name` of the report at `path` (between its markers),
/// or adds it, keeping every other section.
pub fn write_section(path: &std::path::Path, name: &str, markdown: &str) -> anyhow::Result<()> {
    const HEADER: &str = "# Benchmarks\n\nWritten by `bench/run`; do not edit by hand. Every figure is a median, measured in the same run as its baseline.\n";
    let (begin, end) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let current = std::fs::read_to_string(path).unwrap_or_else(|_| HEADER.to_owned());
    let block = format!("{begin}\n{}\n{end}", markdown.trim_end());
    let updated = match (current.find(&begin), current.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &current[..a], &current[b + end.len()..]),
        _ => format!("{}\n\n{block}\n", current.trim_end()),
    };
    std::fs::write(path, updated)?;
    Ok(())
}

/// The median of some measurements.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A quantile (0..=1) by nearest rank.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Waits until a started `tessera serve` prints the URL it serves at, and
/// drains the rest of its output from then on.
pub fn serving_url(child: &mut std::process::Child) -> anyhow::Result<String> {
    serving(child).map(|(http, _)| http)
}

/// The server's HTTP base URL and, when it listens for it, the address of
/// its PostgreSQL protocol (`host:port`), from what it prints at start.
pub fn serving(child: &mut std::process::Child) -> anyhow::Result<(String, Option<String>)> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("the server's output is not piped"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut pg = None;
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("Tessera is serving at ") {
                    break url.to_owned();
                }
                if let Some(rest) = line.strip_prefix("PostgreSQL protocol at ") {
                    pg = rest.split(':').take(2).collect::<Vec<_>>().join(":").into();
                }
            }
            _ => anyhow::bail!("the server exited before it served"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((base, pg))
}

/// The repository root: the working directory, which `bench/run` sets.
pub fn repo() -> PathBuf {
    PathBuf::from(".")
}
