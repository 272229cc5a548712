//! `tessera lint`, `tessera diff` and `tessera export odcs`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tessera_contract::{Contract, Linted, Policy, Severity, odcs};

use crate::Format;

/// The policy from a file, or the built-in one.
pub fn load_policy(path: Option<&Path>) -> Result<Policy> {
    let Some(path) = path else {
        return Ok(Policy::builtin());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the policy {}", path.display()))?;
    Policy::parse(&text).map_err(|errors| {
        let rendered: Vec<String> = errors.iter().map(|e| e.render(&path.display().to_string())).collect();
        anyhow::anyhow!("the policy is invalid:\n{}", rendered.join("\n"))
    })
}

fn lint_file(path: &Path, policy: &Policy) -> Result<Linted> {
    Ok(lint_read(path, policy)?.0)
}

/// A file's bytes and what lint says of them.
fn lint_read(path: &Path, policy: &Policy) -> Result<(Linted, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((tessera_contract::lint_bytes(&bytes, policy), bytes))
}

/// Adds what the platform will do with the contract's derived tables (which
/// are views, and why): information from planning their queries.
fn add_lineage(linted: &mut Linted, text: &[u8]) -> Result<()> {
    let Some(contract) = linted.contract.as_ref().filter(|_| !linted.has_errors()) else { return Ok(()) };
    if !contract.tables.values().any(|t| matches!(t.projection, tessera_contract::model::Projection::Sql { .. })) {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().build().context("cannot start the async runtime")?;
    let lineage = runtime.block_on(tessera_projection::lineage::analyze(contract));
    linted.diagnostics.extend(tessera_projection::lineage::view_diagnostics(&lineage, &String::from_utf8_lossy(text)));
    linted.diagnostics.sort_by_key(|d| (d.position, d.code));
    Ok(())
}

pub fn lint(files: &[std::path::PathBuf], policy: Option<&Path>, format: Format) -> Result<ExitCode> {
    let policy = load_policy(policy)?;
    let mut failed = false;
    let (mut errors, mut warnings) = (0, 0);
    let mut reports = Vec::new();
    for path in files {
        let (mut linted, bytes) = lint_read(path, &policy)?;
        add_lineage(&mut linted, &bytes)?;
        failed |= linted.has_errors();
        errors += linted.diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
        warnings += linted.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count();
        let name = path.display().to_string();
        match format {
            Format::Text => {
                for d in &linted.diagnostics {
                    println!("{}", d.render(&name));
                }
            }
            Format::Json => reports.push(json!({ "file": name, "valid": !linted.has_errors(), "diagnostics": linted.diagnostics })),
        }
    }
    match format {
        Format::Text => {
            let verdict = if failed { "lint failed" } else { "lint passed" };
            eprintln!("{verdict}: {} file(s), {errors} error(s), {warnings} warning(s)", files.len());
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&json!({ "files": reports }))?),
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Reads a contract that must be valid, or explains why it is not.
fn valid_contract(path: &Path, policy: &Policy) -> Result<Contract> {
    let linted = lint_file(path, policy)?;
    if linted.has_errors() {
        let name = path.display().to_string();
        let rendered: Vec<String> = linted.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| d.render(&name)).collect();
        bail!("{} is not a valid contract (run `tessera lint` on it):\n{}", name, rendered.join("\n"));
    }
    linted.contract.with_context(|| format!("{} could not be read as a contract", path.display()))
}

pub fn diff(old: &Path, new: &Path, policy: Option<&Path>, format: Format) -> Result<ExitCode> {
    let policy = load_policy(policy)?;
    let (a, b) = (valid_contract(old, &policy)?, valid_contract(new, &policy)?);
    let d = tessera_contract::diff(&a, &b, &policy);
    match format {
        Format::Text => print!("{d}"),
        Format::Json => println!("{}", serde_json::to_string_pretty(&d)?),
    }
    Ok(if d.is_valid_successor() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn export_odcs(file: &Path, output: Option<&Path>, policy: Option<&Path>) -> Result<ExitCode> {
    let policy = load_policy(policy)?;
    let contract = valid_contract(file, &policy)?;
    let yaml = odcs::to_yaml(&odcs::export(&contract));
    match output {
        Some(path) => std::fs::write(path, yaml).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}
