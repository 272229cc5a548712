//! `tessera`: the command line of the Tessera data-product platform.
//!
//! Each subcommand lives in its own module and is a thin shell around a
//! library call: parsing arguments, reading files, printing results and
//! choosing the exit code. Exit codes: 0 success, 1 the input has errors
//! (lint findings, a breaking change without a major bump), 2 the command
//! could not run (usage, I/O).

#![allow(clippy::print_stdout, clippy::print_stderr)] // A CLI prints.

/// mimalloc: the projector, the query engine and ingest allocate and free
/// many small values across threads, where glibc's allocator spends a third
/// of the projection's time (measured with perf; see bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod contracts;
mod keys;
mod samples;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "tessera", version, about = "Tessera: event-sourced data products with data contracts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// For people: `file:line:column: error[code]: message`.
    Text,
    /// For machines: one JSON document.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate contracts: YAML, structure, semantics and governance.
    Lint {
        /// Contract files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The global governance policy (default: the one built in, contracts/policies.yaml).
        #[arg(long, env = "TESSERA_POLICY")]
        policy: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// List the changes between two versions of a contract, breaking or not.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long, env = "TESSERA_POLICY")]
        policy: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Export a contract to another standard.
    Export {
        #[command(subcommand)]
        target: ExportTarget,
    },
    /// Run the HTTP server (`--demo`: with demo principals and the example products loaded).
    Serve(serve::ServeArgs),
    /// Publish a contract version to a server.
    Publish {
        file: PathBuf,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Append the events of an NDJSON file to a product, in batches.
    Append {
        /// DOMAIN/NAME, e.g. sales/orders.
        product: String,
        file: PathBuf,
        /// Events per request; each request is stored whole or not at all.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Run one SQL query on a server, masked for the token's principal.
    Sql {
        /// The query, e.g. "SELECT * FROM sales.orders.orders LIMIT 10".
        query: String,
        /// How to print the result.
        #[arg(long, value_enum, default_value = "table")]
        format: client::SqlFormat,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Replay a product's whole log into fresh tables and swap them in, one
    /// commit per table (on the server that projects it), with progress.
    Rebuild {
        /// DOMAIN/NAME, e.g. sales/orders.
        product: String,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Compact a product's tables: rewrite small files into larger ones.
    Compact {
        /// DOMAIN/NAME, e.g. sales/orders.
        product: String,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Vacuum a product's tables: delete files older than the retention window.
    Vacuum {
        /// DOMAIN/NAME, e.g. sales/orders.
        product: String,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Forget a data subject: destroy its keys, so that every personal value
    /// of it reads as null everywhere, and refuse new events about it.
    Forget {
        /// The domain, or `all` for every domain the token may forget in.
        domain: String,
        /// The subject's identifier as events carry it, e.g. CUS-000123.
        subject: String,
        /// Why (a request reference, not personal data); kept in the ledger.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Let a forgotten subject back in with a new key (stewards only).
    Readmit {
        domain: String,
        subject: String,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Re-wrap every data key under a new key-encryption key (the tokens
    /// stay as they are). Stop the servers first; start them with the new key.
    RotateKek(keys::RotateKekArgs),
    /// Sample events for example products.
    Samples {
        #[command(subcommand)]
        action: SamplesAction,
    },
}

#[derive(Debug, Subcommand)]
enum ExportTarget {
    /// Open Data Contract Standard v3.1.0 (YAML).
    Odcs {
        file: PathBuf,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long, env = "TESSERA_POLICY")]
        policy: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SamplesAction {
    /// Generate deterministic sample events (NDJSON) from a contract.
    Generate {
        /// The product's contract.
        contract: PathBuf,
        /// How many streams (entities) to generate.
        #[arg(long, default_value_t = 600)]
        streams: usize,
        /// The random seed: the same seed gives the same file.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lint { files, policy, format } => contracts::lint(&files, policy.as_deref(), format),
        Command::Diff { old, new, policy, format } => contracts::diff(&old, &new, policy.as_deref(), format),
        Command::Export { target: ExportTarget::Odcs { file, output, policy } } => {
            contracts::export_odcs(&file, output.as_deref(), policy.as_deref())
        }
        Command::Serve(args) => serve::run(args),
        Command::Publish { file, remote } => client::publish(&file, &remote),
        Command::Append { product, file, batch, remote } => client::append(&product, &file, batch, &remote),
        Command::Sql { query, format, remote } => client::sql(&query, format, &remote),
        Command::Rebuild { product, remote } => client::projection_command("rebuild", &product, &remote),
        Command::Compact { product, remote } => client::projection_command("compact", &product, &remote),
        Command::Vacuum { product, remote } => client::projection_command("vacuum", &product, &remote),
        Command::Forget { domain, subject, reason, remote } => client::forget(&domain, &subject, &reason, &remote),
        Command::Readmit { domain, subject, remote } => client::readmit(&domain, &subject, &remote),
        Command::RotateKek(args) => keys::run(args),
        Command::Samples { action: SamplesAction::Generate { contract, streams, seed, output } } => {
            samples::generate_command(&contract, streams, seed, output.as_deref())
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
