//! Integration tests of the `tessera` command: the real binary, real files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // Test code: a panic is a failure.

mod browser;
mod contracts;
mod crash;
mod deploy;
mod forget;
mod memory;
mod samples;
mod serve;
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The memory-budget test runs alone (`alone`); every other test that starts
/// servers shares (`shared`). On 2 cores, servers of other tests beside it
/// starve the connections it makes under load and skew the memory it measures.
static SERVERS: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    SERVERS.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    SERVERS.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `tessera` with `args` from the repository root.
pub fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).current_dir(repo()).env_remove("TESSERA_POLICY").output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The example products' contract paths, relative to the repository root.
pub fn example_contracts() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join("products"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("contract.yaml").exists())
        .map(|p| format!("products/{}/contract.yaml", p.file_name().unwrap().to_string_lossy()))
        .collect();
    out.sort();
    out
}

/// The corpus file of `tests/corpus/<kind>` whose name ends with `-<name>`.
pub fn corpus(kind: &str, name: &str) -> String {
    let dir = repo().join("tests/corpus").join(kind);
    let found = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|f| f.ends_with(&format!("-{name}.yaml")) || f.ends_with(&format!("-{name}")))
        .unwrap_or_else(|| panic!("no {name} in {}", dir.display()));
    let path = format!("tests/corpus/{kind}/{found}");
    if kind == "diff" { format!("{path}/new.yaml") } else { path }
}
