//! The catalog: products, every published contract version, principals.

use std::sync::Arc;

use serde::Serialize;
use sqlx::Row;
use tessera_contract::{Contract, Severity};

use crate::compiled::Compiled;
use crate::error::{Error, Result};
use crate::principals::{Principal, PrincipalRecord, sha256_hex};
use crate::{Backend, Store, now_micros, rfc3339};

/// The outcome of a publication.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub domain: String,
    pub name: String,
    pub version: String,
    /// `registered` (first version), `published` (a successor) or
    /// `unchanged` (this exact version was already published).
    pub outcome: &'static str,
    pub changes: Vec<tessera_contract::Change>,
    /// The linter's warnings; errors would have refused the contract.
    pub warnings: Vec<tessera_contract::Diagnostic>,
}

/// One published version of a contract.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub published_at: String,
    pub published_by: String,
    pub sha256: String,
    pub changes: serde_json::Value,
}

/// A product as the catalog lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ProductSummary {
    #[serde(skip)]
    pub id: i64,
    pub domain: String,
    pub name: String,
    pub current_version: String,
    pub registered_at: String,
}

/// A product's id and current contract version.
#[derive(Debug, Clone)]
pub(crate) struct ProductRow {
    pub id: i64,
    pub current_version: String,
}

impl Store {
    /// Validates a contract and publishes it as a new version (or registers
    /// the product with its first version). Only members of the contract's
    /// domain may publish.
    pub async fn publish(&self, publisher: &Principal, source: &str) -> Result<Published> {
        if publisher.is_public() {
            return Err(Error::Unauthenticated("publishing needs a token: send `Authorization: Bearer <token>`".into()));
        }
        let linted = tessera_contract::lint(source, self.policy());
        let warnings: Vec<_> = linted.diagnostics.iter().filter(|d| d.severity == Severity::Warning).cloned().collect();
        if linted.has_errors() {
            return Err(Error::ContractInvalid { diagnostics: linted.diagnostics });
        }
        let Some(contract) = linted.contract else {
            return Err(Error::ContractInvalid { diagnostics: linted.diagnostics });
        };
        let domain = contract.domain.to_string();
        let name = contract.name.to_string();
        let product = format!("{domain}/{name}");
        if !publisher.is_member_of(&domain) {
            return Err(Error::Forbidden(format!(
                "{} is not a member of domain `{domain}`; only its members may publish {product}",
                publisher.name
            )));
        }
        let version = contract.version.to_string();
        let sha = sha256_hex(source.as_bytes());
        let now = now_micros();

        let mut tx = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            // Two first publications of one product must not both register it.
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS l")
                .bind(format!("tessera:publish:{product}"))
                .execute(&mut **tx)
                .await?;
        }
        let existing = sqlx::query("SELECT id, current_version FROM products WHERE domain = $1 AND name = $2")
            .bind(&domain)
            .bind(&name)
            .fetch_optional(&mut **tx)
            .await?;
        let (outcome, changes) = match existing {
            None => {
                let id: i64 =
                    sqlx::query("INSERT INTO products (domain, name, current_version, created_at) VALUES ($1, $2, $3, $4) RETURNING id")
                        .bind(&domain)
                        .bind(&name)
                        .bind(&version)
                        .bind(now)
                        .fetch_one(&mut **tx)
                        .await?
                        .try_get(0)?;
                insert_version(&mut tx, id, &contract, source, &sha, "[]", now, &publisher.name).await?;
                ("registered", Vec::new())
            }
            Some(row) => {
                let id: i64 = row.try_get(0)?;
                let current: String = row.try_get(1)?;
                let same = sqlx::query("SELECT sha256 FROM contract_versions WHERE product_id = $1 AND version = $2")
                    .bind(id)
                    .bind(&version)
                    .fetch_optional(&mut **tx)
                    .await?;
                if let Some(same) = same {
                    let stored: String = same.try_get(0)?;
                    if stored == sha {
                        return Ok(Published { domain, name, version, outcome: "unchanged", changes: Vec::new(), warnings });
                    }
                    return Err(Error::VersionTaken { product, version });
                }
                let current_semver =
                    semver::Version::parse(&current).map_err(|e| Error::Config(format!("stored version `{current}`: {e}")))?;
                if contract.version < current_semver {
                    return Err(Error::StaleVersion { product, version, current });
                }
                let old_source: String = sqlx::query("SELECT source FROM contract_versions WHERE product_id = $1 AND version = $2")
                    .bind(id)
                    .bind(&current)
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get(0)?;
                let old = tessera_contract::lint(&old_source, self.policy()).contract.ok_or_else(|| {
                    Error::Config(format!(
                        "the stored contract {product} {current} no longer parses; publish a fix under a new major version"
                    ))
                })?;
                let diff = tessera_contract::diff(&old, &contract, self.policy());
                if !diff.is_valid_successor() {
                    return Err(Error::NotASuccessor { product, old: current, new: version, errors: diff.errors, changes: diff.changes });
                }
                let changes_json = serde_json::to_string(&diff.changes).unwrap_or_else(|_| "[]".into());
                insert_version(&mut tx, id, &contract, source, &sha, &changes_json, now, &publisher.name).await?;
                sqlx::query("UPDATE products SET current_version = $1 WHERE id = $2").bind(&version).bind(id).execute(&mut **tx).await?;
                ("published", diff.changes)
            }
        };
        tx.commit().await?;
        tracing::info!(product = %product, version = %version, outcome, by = %publisher.name, "contract published");
        Ok(Published { domain, name, version, outcome, changes, warnings })
    }

    /// Every product, by domain and name.
    pub async fn products(&self) -> Result<Vec<ProductSummary>> {
        let rows = sqlx::query("SELECT id, domain, name, current_version, created_at FROM products ORDER BY domain, name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(summary).collect()
    }

    /// One product.
    pub async fn product(&self, domain: &str, name: &str) -> Result<ProductSummary> {
        let row = sqlx::query("SELECT id, domain, name, current_version, created_at FROM products WHERE domain = $1 AND name = $2")
            .bind(domain)
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| not_found(domain, name))?;
        summary(&row)
    }

    /// Every published version of a product, oldest first.
    pub async fn versions(&self, domain: &str, name: &str) -> Result<Vec<VersionInfo>> {
        let product = self.product(domain, name).await?;
        let rows = sqlx::query(
            "SELECT version, published_at, published_by, sha256, changes FROM contract_versions WHERE product_id = $1 ORDER BY published_at, version",
        )
        .bind(product.id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let changes: String = r.try_get(4)?;
                Ok(VersionInfo {
                    version: r.try_get(0)?,
                    published_at: rfc3339(r.try_get(1)?),
                    published_by: r.try_get(2)?,
                    sha256: r.try_get(3)?,
                    changes: serde_json::from_str(&changes).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect()
    }

    /// The YAML of one published version, exactly as published.
    pub async fn contract_source(&self, domain: &str, name: &str, version: &str) -> Result<String> {
        let product = self.product(domain, name).await?;
        sqlx::query("SELECT source FROM contract_versions WHERE product_id = $1 AND version = $2")
            .bind(product.id)
            .bind(version)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::NotFound { what: format!("version {version} of {domain}/{name}") })?
            .try_get(0)
            .map_err(Error::from)
    }

    /// One published version's contract, as the platform reads it.
    pub async fn contract_at(&self, domain: &str, name: &str, version: &str) -> Result<Contract> {
        let source = self.contract_source(domain, name, version).await?;
        tessera_contract::lint(&source, self.policy())
            .contract
            .ok_or_else(|| Error::Config(format!("the stored contract version {version} of {domain}/{name} no longer parses")))
    }

    pub(crate) async fn product_row(&self, domain: &str, name: &str) -> Result<ProductRow> {
        let row = sqlx::query("SELECT id, current_version FROM products WHERE domain = $1 AND name = $2")
            .bind(domain)
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| not_found(domain, name))?;
        Ok(ProductRow { id: row.try_get(0)?, current_version: row.try_get(1)? })
    }

    /// The product's current contract, compiled (cached per version).
    pub(crate) async fn compiled(&self, product: &ProductRow) -> Result<Arc<Compiled>> {
        if let Ok(cache) = self.inner.compiled.lock()
            && let Some(c) = cache.get(&product.id)
            && c.version == product.current_version
        {
            return Ok(c.clone());
        }
        let source: String = sqlx::query("SELECT source FROM contract_versions WHERE product_id = $1 AND version = $2")
            .bind(product.id)
            .bind(&product.current_version)
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        let contract: Contract = tessera_contract::lint(&source, self.policy())
            .contract
            .ok_or_else(|| Error::Config(format!("the stored contract version {} no longer parses", product.current_version)))?;
        let compiled = Arc::new(Compiled::new(contract).map_err(Error::Config)?);
        if let Ok(mut cache) = self.inner.compiled.lock() {
            cache.insert(product.id, compiled.clone());
        }
        Ok(compiled)
    }

    /// Starts a write transaction: on SQLite, queued behind this process's
    /// other writers and holding SQLite's write lock from the start.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx> {
        let guard = match self.backend() {
            Backend::Sqlite => Some(self.inner.write_lock.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        let tx = match self.backend() {
            Backend::Sqlite => self.inner.write_pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.inner.write_pool.begin().await?,
        };
        let checkpoint = (self.backend() == Backend::Sqlite).then(|| self.inner.checkpoint.clone());
        Ok(WriteTx { tx, _guard: guard, checkpoint })
    }

    /// Stores (or replaces) principals of one origin: those of that origin
    /// not in `records` are removed.
    pub async fn sync_principals(&self, origin: &str, records: &[PrincipalRecord]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM principals WHERE origin = $1").bind(origin).execute(&mut **tx).await?;
        for r in records {
            sqlx::query("DELETE FROM principals WHERE name = $1 OR token_sha256 = $2")
                .bind(&r.principal.name)
                .bind(&r.token_sha256)
                .execute(&mut **tx)
                .await?;
            sqlx::query("INSERT INTO principals (name, token_sha256, roles, domains, origin, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&r.principal.name)
                .bind(&r.token_sha256)
                .bind(serde_json::to_string(&r.principal.roles).unwrap_or_default())
                .bind(serde_json::to_string(&r.principal.domains).unwrap_or_default())
                .bind(origin)
                .bind(now_micros())
                .execute(&mut **tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every stored principal.
    pub async fn principals(&self) -> Result<Vec<PrincipalRecord>> {
        let rows =
            sqlx::query("SELECT name, token_sha256, roles, domains, origin FROM principals ORDER BY name").fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let roles: String = r.try_get(2)?;
                let domains: String = r.try_get(3)?;
                Ok(PrincipalRecord {
                    principal: Principal {
                        name: r.try_get(0)?,
                        roles: serde_json::from_str(&roles).unwrap_or_default(),
                        domains: serde_json::from_str(&domains).unwrap_or_default(),
                    },
                    token_sha256: r.try_get(1)?,
                    origin: r.try_get(4)?,
                })
            })
            .collect()
    }
}

/// A write transaction (and, on SQLite, this process's writer slot).
pub(crate) struct WriteTx {
    pub tx: sqlx::Transaction<'static, sqlx::Any>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// SQLite: the checkpointer to wake after the commit.
    checkpoint: Option<Arc<tokio::sync::Notify>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        if let Some(checkpoint) = self.checkpoint {
            checkpoint.notify_one();
        }
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::Transaction<'static, sqlx::Any>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_version(
    tx: &mut WriteTx,
    product_id: i64,
    contract: &Contract,
    source: &str,
    sha: &str,
    changes: &str,
    now: i64,
    by: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO contract_versions (product_id, version, major, source, sha256, changes, published_at, published_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(product_id)
    .bind(contract.version.to_string())
    .bind(i64::try_from(contract.version.major).unwrap_or(i64::MAX))
    .bind(source)
    .bind(sha)
    .bind(changes)
    .bind(now)
    .bind(by)
    .execute(&mut ***tx)
    .await?;
    Ok(())
}

fn not_found(domain: &str, name: &str) -> Error {
    Error::NotFound { what: format!("product {domain}/{name}") }
}

fn summary(r: &sqlx::any::AnyRow) -> Result<ProductSummary> {
    Ok(ProductSummary {
        id: r.try_get(0)?,
        domain: r.try_get(1)?,
        name: r.try_get(2)?,
        current_version: r.try_get(3)?,
        registered_at: rfc3339(r.try_get(4)?),
    })
}
