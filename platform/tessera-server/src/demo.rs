//! `tessera serve --demo`: demo principals, and every example product under
//! `products/` published with its sample events, so that a fresh clone has a
//! populated platform from one command. Running it again changes nothing
//! (the same tokens, identical contracts, idempotent events).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_contract::Role;
use tessera_store::principals::{hash_token, new_token};
use tessera_store::{Principal, PrincipalRecord, Store};

/// A demo principal with its token, as written to `demo-principals.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DemoPrincipal {
    pub name: String,
    pub token: String,
    pub roles: Vec<Role>,
    pub domains: Vec<String>,
}

/// What the demo loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub product: String,
    pub version: String,
    pub outcome: &'static str,
    pub appended: usize,
    pub duplicates: usize,
}

/// The example contracts under `products_dir`: `*/contract.yaml`, sorted.
pub fn example_contracts(products_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(products_dir).map_err(|e| format!("cannot read {}: {e}", products_dir.display()))?;
    let mut found: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path().join("contract.yaml")).filter(|p| p.is_file()).collect();
    found.sort();
    if found.is_empty() {
        return Err(format!(
            "no */contract.yaml under {}; run the demo from the repository root or pass --products",
            products_dir.display()
        ));
    }
    Ok(found)
}

/// Creates (or reuses) the demo principals and stores them.
pub async fn principals(store: &Store, data_dir: &Path, contracts: &[PathBuf]) -> Result<Vec<DemoPrincipal>, String> {
    let file = data_dir.join("demo-principals.json");
    let mut domains = Vec::new();
    for path in contracts {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let contract = tessera_contract::lint(&text, store.policy())
            .contract
            .ok_or_else(|| format!("{}: the contract has errors; run `tessera lint {}`", path.display(), path.display()))?;
        let domain = contract.domain.to_string();
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    let existing: Option<Vec<DemoPrincipal>> = std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str(&t).ok());
    let mut wanted: Vec<(String, Vec<Role>, Vec<String>)> =
        domains.iter().map(|d| (format!("{d}-owner"), vec![Role::Owner], vec![d.clone()])).collect();
    wanted.push(("steward".into(), vec![Role::Steward], Vec::new()));
    wanted.push(("analyst".into(), vec![Role::Analyst], Vec::new()));
    let mut principals = Vec::new();
    for (name, roles, domains) in wanted {
        let token = match existing.as_ref().and_then(|e| e.iter().find(|p| p.name == name)) {
            Some(p) => p.token.clone(),
            None => new_token()?,
        };
        principals.push(DemoPrincipal { name, token, roles, domains });
    }
    let records: Vec<PrincipalRecord> = principals
        .iter()
        .map(|p| PrincipalRecord {
            principal: Principal { name: p.name.clone(), roles: p.roles.clone(), domains: p.domains.clone() },
            token_sha256: hash_token(&p.token),
            origin: "demo".into(),
        })
        .collect();
    store.sync_principals("demo", &records).await.map_err(|e| e.to_string())?;
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let json = serde_json::to_string_pretty(&principals).map_err(|e| e.to_string())?;
    write_private(&file, json.as_bytes()).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(principals)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Publishes each example contract as its domain's owner and appends the
/// `events.ndjson` beside it.
pub async fn load(
    store: &Store,
    contracts: &[PathBuf],
    principals: &[DemoPrincipal],
    mut progress: impl FnMut(&Loaded),
) -> Result<Vec<Loaded>, String> {
    let mut loaded = Vec::new();
    for path in contracts {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let contract =
            tessera_contract::lint(&text, store.policy()).contract.ok_or_else(|| format!("{}: the contract has errors", path.display()))?;
        let domain = contract.domain.to_string();
        let name = contract.name.to_string();
        let owner = principals
            .iter()
            .find(|p| p.domains.contains(&domain))
            .map(|p| Principal { name: p.name.clone(), roles: p.roles.clone(), domains: p.domains.clone() })
            .ok_or_else(|| format!("no demo owner for domain {domain}"))?;
        let published = store.publish(&owner, &text).await.map_err(|e| format!("{}: {e}", path.display()))?;
        let mut item = Loaded {
            product: format!("{domain}/{name}"),
            version: published.version,
            outcome: published.outcome,
            appended: 0,
            duplicates: 0,
        };
        let events_path = path.with_file_name("events.ndjson");
        if events_path.is_file() {
            let bytes = std::fs::read(&events_path).map_err(|e| format!("{}: {e}", events_path.display()))?;
            let events = tessera_store::envelope::parse_ndjson(&bytes).map_err(|problems| {
                let p = &problems[0];
                format!("{}:{}: {}", events_path.display(), p.line.unwrap_or(0), p.message)
            })?;
            // One request per 5,000 events, as a producer would batch them.
            let mut events = events.into_iter().peekable();
            while events.peek().is_some() {
                let batch: Vec<_> = events.by_ref().take(5000).collect();
                let outcome = store.append(&owner, &domain, &name, batch).await.map_err(|e| format!("{}: {e}", events_path.display()))?;
                item.appended += outcome.appended;
                item.duplicates += outcome.duplicates;
            }
        }
        progress(&item);
        loaded.push(item);
    }
    Ok(loaded)
}
