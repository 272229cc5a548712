//! Data keys per subject, and forgetting a subject (crypto-shredding).
//!
//! Every classified payload field is sealed at append under a data key of
//! the event's subject, scoped to the product's domain (see
//! `tessera_contract::seal` for which fields, `tessera_seal` for the
//! cryptography). Data keys live in `data_keys`, only wrapped under the
//! key-encryption key, which is given to [`Store::open`] and never stored
//! here. **This module is the only place that unwraps a data key**: the
//! store seals with it at append, and hands out [`Opener`]s to the read
//! paths (the masked scan, the raw log), which open tokens for one domain.
//!
//! Forgetting a subject deletes its keys (every token sealed under them
//! opens as nothing, in the log and in every table and version built from
//! it) and records the subject in `forgotten_subjects`. Nothing keeps an
//! unwrapped key between reads or appends: an [`Opener`] lives for one read
//! (one scan of one table, one page of the log), and an append reads its
//! subjects' keys afresh, so a forget is seen by every process at its next
//! read, without notifications. An append checks the ledger again inside
//! its transaction.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};
use tessera_seal::{DataKey, KeyContext, Sealer, Token};

use crate::error::{Error, Result};
use crate::principals::Principal;
use crate::{Backend, Store, now_micros};

/// The subjects' sealers an append needs: `None` for a forgotten subject.
pub(crate) type Sealers = HashMap<String, Option<Arc<Sealer>>>;

/// The outcome of forgetting a subject.
#[derive(Debug, Clone, Serialize)]
pub struct Forgotten {
    pub domain: String,
    pub subject: String,
    /// Data keys destroyed now (0 when the subject was forgotten already or never had one).
    pub keys_destroyed: u64,
    /// Whether the subject was already in the ledger.
    pub already: bool,
    pub forgotten_at: String,
}

/// A subject in the ledger of forgotten subjects.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    pub domain: String,
    pub subject: String,
    pub forgotten_at: String,
    pub forgotten_by: String,
    pub reason: String,
    pub readmitted_at: Option<String>,
    pub readmitted_by: Option<String>,
}

/// Opens the tokens of one domain for one read: each key is looked up and
/// unwrapped once, and a destroyed key (a forgotten subject), a key of
/// another domain or a token that does not open, opens as nothing.
#[derive(Debug)]
pub struct Opener {
    store: Store,
    domain: String,
    keys: HashMap<i64, Option<Sealer>>,
}

impl Opener {
    /// Looks up the keys of these tokens not looked up yet.
    pub async fn prepare<'a>(&mut self, tokens: impl IntoIterator<Item = &'a Token>) -> Result<()> {
        let missing: BTreeSet<i64> = tokens.into_iter().map(Token::key_id).filter(|id| !self.keys.contains_key(id)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let found = self.store.unwrap_keys(&self.domain, &missing).await?;
        for id in missing {
            self.keys.insert(id, None);
        }
        self.keys.extend(found.into_iter().map(|(id, sealer)| (id, Some(sealer))));
        Ok(())
    }

    /// The value in `token`, if its key was prepared and still exists.
    pub fn open(&self, token: &Token) -> Option<Value> {
        self.keys.get(&token.key_id())?.as_ref()?.open(token).ok()
    }

    /// Whether `token`'s key was prepared and still exists (without opening it).
    pub fn alive(&self, token: &Token) -> bool {
        self.keys.get(&token.key_id()).is_some_and(Option::is_some)
    }

    /// Opens every token in `value` (a sealed column's cell, or a payload
    /// at its sealed paths), preparing their keys first. `None` when one of
    /// them does not open: the value is gone.
    pub async fn open_value(&mut self, mut value: Value) -> Result<Option<Value>> {
        let tokens = tokens_in(&value);
        self.prepare(tokens.iter()).await?;
        Ok(self.open_prepared(&mut value).then_some(value))
    }

    /// Opens every token in `value` in place with the keys prepared; false
    /// when one of them does not open.
    pub fn open_prepared(&self, value: &mut Value) -> bool {
        match value {
            // Text that only looks like a token is text (as `tokens_in` sees it).
            Value::String(s) if s.starts_with(tessera_seal::TOKEN_PREFIX) => match Token::parse(s).map(|t| self.open(&t)) {
                Ok(Some(v)) => {
                    *value = v;
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            },
            Value::Array(items) => items.iter_mut().all(|v| self.open_prepared(v)),
            Value::Object(o) => o.values_mut().all(|v| self.open_prepared(v)),
            _ => true,
        }
    }
}

/// Every token in a JSON value.
pub fn tokens_in(value: &Value) -> Vec<Token> {
    let mut out = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.starts_with(tessera_seal::TOKEN_PREFIX) => out.extend(Token::parse(s).ok()),
            Value::Array(items) => stack.extend(items),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    out
}

impl Store {
    /// An opener of `domain`'s tokens, for one read.
    pub fn opener(&self, domain: &str) -> Opener {
        Opener { store: self.clone(), domain: domain.to_owned(), keys: HashMap::new() }
    }

    /// The key-encryption key's fingerprint (names it without revealing it).
    pub fn kek_fingerprint(&self) -> &str {
        self.inner.kek.fingerprint()
    }

    /// The data keys `ids` of `domain` that still exist, unwrapped.
    async fn unwrap_keys(&self, domain: &str, ids: &BTreeSet<i64>) -> Result<Vec<(i64, Sealer)>> {
        let found = self.keys_where(domain, "id", "bigint", ids).await?;
        Ok(found.into_iter().map(|(id, _, sealer)| (id, sealer)).collect())
    }

    /// The data keys of `domain` whose `column` (`id` or `subject`, of SQL
    /// type `cast` on PostgreSQL) is among `values`, unwrapped.
    async fn keys_where<T: Serialize>(
        &self,
        domain: &str,
        column: &'static str,
        cast: &'static str,
        values: &BTreeSet<T>,
    ) -> Result<Vec<(i64, String, Sealer)>> {
        let sql = match self.backend() {
            // The listed values drive the join, each found by its index (the
            // primary key, or the (domain, subject) key): SQLite would
            // otherwise read every key of the domain and test each against
            // the list (38 ms for one key among 500,000, against 0.3 ms).
            Backend::Sqlite => format!(
                "SELECT k.id, k.subject, k.wrapped FROM json_each($2) AS listed CROSS JOIN data_keys AS k \
                 WHERE k.{column} = listed.value AND k.domain = $1"
            ),
            Backend::Postgres => format!(
                "SELECT id, subject, wrapped FROM data_keys WHERE domain = $1 AND {column} IN (SELECT json_array_elements_text($2::json)::{cast})"
            ),
        };
        let values = serde_json::to_string(values).map_err(|e| Error::Config(e.to_string()))?;
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(domain).bind(values).fetch_all(self.pool()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, subject, wrapped): (i64, String, Vec<u8>) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let key = self.inner.kek.unwrap(&wrapped, KeyContext { id, domain, subject: &subject }).map_err(|e| {
                Error::Config(format!(
                    "data key {id} of domain `{domain}` does not unwrap: {e}; is the key-encryption key the one the store was created with?"
                ))
            })?;
            out.push((id, subject, Sealer::new(id, &key)));
        }
        Ok(out)
    }

    /// The sealers of `subjects` of `domain`, creating keys for subjects
    /// that have none; `None` for a forgotten subject (not re-admitted).
    /// Keys are read for each append, never kept: a key destroyed by
    /// another process is never used to seal.
    pub(crate) async fn sealers(&self, domain: &str, subjects: &BTreeSet<String>) -> Result<Sealers> {
        let mut out: Sealers = HashMap::with_capacity(subjects.len());
        if subjects.is_empty() {
            return Ok(out);
        }
        let forgotten = self.forgotten_among(self.pool(), domain, subjects).await?;
        let live: BTreeSet<String> = subjects.iter().filter(|s| !forgotten.contains(*s)).cloned().collect();
        out.extend(forgotten.into_iter().map(|s| (s, None)));
        if live.is_empty() {
            return Ok(out);
        }
        for (subject, sealer) in self.load_or_create_keys(domain, &live).await? {
            out.insert(subject, Some(Arc::new(sealer)));
        }
        Ok(out)
    }

    /// The subjects among `subjects` that are forgotten in `domain`.
    pub(crate) async fn forgotten_among<'c, E>(&self, executor: E, domain: &str, subjects: &BTreeSet<String>) -> Result<BTreeSet<String>>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let sql = match self.backend() {
            Backend::Sqlite => {
                "SELECT subject FROM forgotten_subjects WHERE domain = $1 AND readmitted_at IS NULL AND subject IN (SELECT value FROM json_each($2))"
            }
            Backend::Postgres => {
                "SELECT subject FROM forgotten_subjects WHERE domain = $1 AND readmitted_at IS NULL AND subject IN (SELECT json_array_elements_text($2::json))"
            }
        };
        let list = serde_json::to_string(subjects).map_err(|e| Error::Config(e.to_string()))?;
        let rows = sqlx::query(sql).bind(domain).bind(list).fetch_all(executor).await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }

    /// The keys of `subjects`, created (and wrapped) for those that have none.
    async fn load_or_create_keys(&self, domain: &str, subjects: &BTreeSet<String>) -> Result<Vec<(String, Sealer)>> {
        let mut out = self.existing_keys(domain, subjects).await?;
        if out.len() == subjects.len() {
            return Ok(out);
        }
        let have: BTreeSet<&str> = out.iter().map(|(s, _)| s.as_str()).collect();
        let missing: BTreeSet<String> = subjects.iter().filter(|s| !have.contains(s.as_str())).cloned().collect();
        let kek = &self.inner.kek;
        // New keys, wrapped before any lock: ids are random (a token names
        // its key, and the wrapping is bound to the id).
        let mut fresh = Vec::with_capacity(missing.len());
        for subject in &missing {
            let key = DataKey::generate().map_err(|e| Error::Config(e.to_string()))?;
            let id = random_id()?;
            let wrapped = kek.wrap(&key, KeyContext { id, domain, subject }).map_err(|e| Error::Config(e.to_string()))?;
            fresh.push((id, subject.as_str(), hex::encode(wrapped)));
        }
        let rows = serde_json::to_string(&fresh).map_err(|e| Error::Config(e.to_string()))?;
        let insert = match self.backend() {
            Backend::Sqlite => {
                "INSERT INTO data_keys (id, domain, subject, wrapped, kek, created_at) \
                 SELECT r.value ->> 0, $1, r.value ->> 1, unhex(r.value ->> 2), $2, $3 FROM json_each($4) AS r \
                 WHERE true ON CONFLICT (domain, subject) DO NOTHING"
            }
            Backend::Postgres => {
                "INSERT INTO data_keys (id, domain, subject, wrapped, kek, created_at) \
                 SELECT (r.value ->> 0)::bigint, $1, r.value ->> 1, decode(r.value ->> 2, 'hex'), $2, $3 FROM json_array_elements($4::json) AS r(value) \
                 ON CONFLICT (domain, subject) DO NOTHING"
            }
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(insert).bind(domain).bind(kek.fingerprint()).bind(now_micros()).bind(rows).execute(&mut **tx).await?;
        tx.commit().await?;
        // Whichever key won (another process may have created one meanwhile).
        let created = self.existing_keys(domain, &missing).await?;
        if created.len() != missing.len() {
            return Err(Error::Config(format!("{} of {} data keys could not be created", missing.len() - created.len(), missing.len())));
        }
        out.extend(created);
        Ok(out)
    }

    /// The keys `subjects` of `domain` have, unwrapped.
    async fn existing_keys(&self, domain: &str, subjects: &BTreeSet<String>) -> Result<Vec<(String, Sealer)>> {
        let found = self.keys_where(domain, "subject", "text", subjects).await?;
        Ok(found.into_iter().map(|(_, subject, sealer)| (subject, sealer)).collect())
    }

    /// Re-wraps every data key under `new` (rotating the key-encryption
    /// key): the keys themselves, and so every token, stay as they are. One
    /// transaction: every key is re-wrapped, or none. Processes still
    /// running with the old key-encryption key cannot unwrap the keys
    /// afterwards (their reads and appends of personal values fail with a
    /// clear error) and must be restarted with the new one; it returns the
    /// number of keys re-wrapped.
    pub async fn rotate_kek(&self, new: &tessera_seal::Kek) -> Result<u64> {
        let old = &self.inner.kek;
        let mut tx = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            // No key may be created under the old key-encryption key meanwhile.
            sqlx::query("LOCK TABLE data_keys IN EXCLUSIVE MODE").execute(&mut **tx).await?;
        }
        let rows = sqlx::query("SELECT id, domain, subject, wrapped, kek FROM data_keys").fetch_all(&mut **tx).await?;
        let mut rotated = 0u64;
        for row in rows {
            let (id, domain, subject, wrapped, fingerprint): (i64, String, String, Vec<u8>, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
            // Already under the new key (a rotation that is run again).
            if fingerprint == new.fingerprint() {
                continue;
            }
            if fingerprint != old.fingerprint() {
                return Err(Error::Config(format!(
                    "data key {id} of domain `{domain}` is wrapped under another key-encryption key (fingerprint {fingerprint}): \
                     was a server still running with it? nothing was re-wrapped"
                )));
            }
            let context = KeyContext { id, domain: &domain, subject: &subject };
            let key = old.unwrap(&wrapped, context).map_err(|e| {
                Error::Config(format!("data key {id} of domain `{domain}` does not unwrap under the current key-encryption key: {e}"))
            })?;
            let rewrapped = new.wrap(&key, context).map_err(|e| Error::Config(e.to_string()))?;
            sqlx::query("UPDATE data_keys SET wrapped = $1, kek = $2 WHERE id = $3")
                .bind(rewrapped)
                .bind(new.fingerprint())
                .bind(id)
                .execute(&mut **tx)
                .await?;
            rotated += 1;
        }
        tx.commit().await?;
        tracing::info!(
            keys = rotated,
            from = old.fingerprint(),
            to = new.fingerprint(),
            "re-wrapped the data keys under a new key-encryption key"
        );
        Ok(rotated)
    }

    /// Refuses a key-encryption key other than the one that wrapped the
    /// stored data keys (it would make keys the other processes cannot
    /// unwrap, and open none of theirs).
    pub(crate) async fn check_kek(&self) -> Result<()> {
        let other: Option<String> = sqlx::query("SELECT kek FROM data_keys WHERE kek <> $1 LIMIT 1")
            .bind(self.inner.kek.fingerprint())
            .fetch_optional(self.pool())
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        match other {
            Some(theirs) => Err(Error::Config(format!(
                "the key-encryption key (fingerprint {}) is not the one that wrapped the stored data keys (fingerprint {theirs}): \
                 start with the deployment's key (kek / TESSERA_KEK)",
                self.inner.kek.fingerprint()
            ))),
            None => Ok(()),
        }
    }

    /// Forgets `subject` of `domain`: destroys its data keys and records it
    /// in the ledger. A steward may forget anyone; a member of the domain,
    /// the subjects of its own products. Idempotent.
    pub async fn forget(&self, principal: &Principal, domain: &str, subject: &str, reason: &str) -> Result<Forgotten> {
        if principal.is_public() {
            return Err(Error::Unauthenticated("forgetting a subject needs a token: send `Authorization: Bearer <token>`".into()));
        }
        let steward = principal.roles.contains(&tessera_contract::Role::Steward);
        if !steward && !principal.is_member_of(domain) {
            return Err(Error::Forbidden(format!(
                "{} may not forget subjects of domain `{domain}`: a steward, or a member of the domain, may",
                principal.name
            )));
        }
        check_subject(subject)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(Error::BadRequest(
                "give a reason of 1 to 500 characters (the request's reference, not personal data): it is kept in the ledger".into(),
            ));
        }
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            // Wait for appends to the domain's products in flight, and hold
            // new ones back until the ledger names the subject: an append
            // that made the subject's first key meanwhile either committed
            // (its key is deleted here) or reads the ledger after this commits.
            sqlx::query("SELECT COUNT(pg_advisory_xact_lock($1 | id)) FROM (SELECT id FROM products WHERE domain = $2 ORDER BY id) AS p")
                .bind(crate::log::APPEND_LOCK)
                .bind(domain)
                .fetch_one(&mut **tx)
                .await?;
        }
        let destroyed = sqlx::query("DELETE FROM data_keys WHERE domain = $1 AND subject = $2")
            .bind(domain)
            .bind(subject)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        let existing: Option<(i64, Option<i64>)> =
            sqlx::query("SELECT forgotten_at, readmitted_at FROM forgotten_subjects WHERE domain = $1 AND subject = $2")
                .bind(domain)
                .bind(subject)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
                .transpose()?;
        let (already, at) = match existing {
            Some((at, None)) => (true, at),
            Some((_, Some(_))) => {
                sqlx::query(
                    "UPDATE forgotten_subjects SET forgotten_at = $3, forgotten_by = $4, reason = $5, readmitted_at = NULL, readmitted_by = NULL \
                     WHERE domain = $1 AND subject = $2",
                )
                .bind(domain)
                .bind(subject)
                .bind(now)
                .bind(&principal.name)
                .bind(reason)
                .execute(&mut **tx)
                .await?;
                (false, now)
            }
            None => {
                sqlx::query(
                    "INSERT INTO forgotten_subjects (domain, subject, forgotten_at, forgotten_by, reason) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(domain)
                .bind(subject)
                .bind(now)
                .bind(&principal.name)
                .bind(reason)
                .execute(&mut **tx)
                .await?;
                (false, now)
            }
        };
        if !already {
            let body =
                serde_json::json!({"subject": subject, "forgotten_by": principal.name, "reason": reason, "keys_destroyed": destroyed});
            crate::notices::record(&mut tx, "SubjectForgotten", domain, &body).await?;
        }
        tx.commit().await?;
        self.scrub_deleted_pages().await;
        tracing::info!(domain, principal = %principal.name, keys_destroyed = destroyed, "a data subject was forgotten");
        Ok(Forgotten {
            domain: domain.to_owned(),
            subject: subject.to_owned(),
            keys_destroyed: destroyed,
            already,
            forgotten_at: crate::rfc3339(at),
        })
    }

    /// Lets a forgotten subject back in (a steward only): its next event
    /// gets a new key; what was sealed under the old one stays gone.
    pub async fn readmit(&self, principal: &Principal, domain: &str, subject: &str) -> Result<LedgerEntry> {
        if principal.is_public() {
            return Err(Error::Unauthenticated("re-admitting a subject needs a token: send `Authorization: Bearer <token>`".into()));
        }
        if !principal.roles.contains(&tessera_contract::Role::Steward) {
            return Err(Error::Forbidden(format!("{} may not re-admit a forgotten subject: only a steward may", principal.name)));
        }
        check_subject(subject)?;
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE forgotten_subjects SET readmitted_at = $3, readmitted_by = $4 WHERE domain = $1 AND subject = $2 AND readmitted_at IS NULL",
        )
        .bind(domain)
        .bind(subject)
        .bind(now_micros())
        .bind(&principal.name)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated > 0 {
            let body = serde_json::json!({"subject": subject, "readmitted_by": principal.name});
            crate::notices::record(&mut tx, "SubjectReadmitted", domain, &body).await?;
        }
        tx.commit().await?;
        if updated == 0 {
            return Err(Error::NotFound { what: format!("forgotten subject `{subject}` of domain `{domain}`") });
        }
        self.ledger(domain, Some(subject)).await?.pop().ok_or_else(|| Error::NotFound { what: format!("subject `{subject}`") })
    }

    /// The ledger of forgotten subjects of `domain` (or one subject).
    pub async fn ledger(&self, domain: &str, subject: Option<&str>) -> Result<Vec<LedgerEntry>> {
        let sql = format!(
            "SELECT domain, subject, forgotten_at, forgotten_by, reason, readmitted_at, readmitted_by FROM forgotten_subjects \
             WHERE domain = $1{} ORDER BY forgotten_at, subject",
            if subject.is_some() { " AND subject = $2" } else { "" }
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(domain);
        if let Some(s) = subject {
            query = query.bind(s);
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(LedgerEntry {
                    domain: r.try_get(0)?,
                    subject: r.try_get(1)?,
                    forgotten_at: crate::rfc3339(r.try_get(2)?),
                    forgotten_by: r.try_get(3)?,
                    reason: r.try_get(4)?,
                    readmitted_at: r.try_get::<Option<i64>, _>(5)?.map(crate::rfc3339),
                    readmitted_by: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Destroys again the keys of every subject in the ledger (not
    /// re-admitted): a database restored from a backup taken before a
    /// forget holds the key again. Run at every start.
    pub(crate) async fn reapply_ledger(&self) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let destroyed = sqlx::query(
            "DELETE FROM data_keys WHERE EXISTS (SELECT 1 FROM forgotten_subjects f \
             WHERE f.domain = data_keys.domain AND f.subject = data_keys.subject AND f.readmitted_at IS NULL)",
        )
        .execute(&mut **tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if destroyed > 0 {
            tracing::warn!(keys_destroyed = destroyed, "destroyed data keys of forgotten subjects again (restored from a backup?)");
            self.scrub_deleted_pages().await;
        }
        Ok(destroyed)
    }

    /// SQLite keeps deleted rows in free pages and in the WAL: with
    /// `secure_delete` the pages are zeroed, and a truncating checkpoint
    /// empties the WAL of the old frames (when no reader holds it).
    async fn scrub_deleted_pages(&self) {
        if self.backend() == Backend::Sqlite
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.inner.write_pool).await
        {
            tracing::warn!(error = %e, "checkpointing the SQLite WAL after destroying keys failed");
        }
    }
}

fn check_subject(subject: &str) -> Result<()> {
    if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
        return Err(Error::BadRequest(
            "a subject is its identifier as events carry it (1 to 256 characters, no control characters)".into(),
        ));
    }
    Ok(())
}

/// A random positive key id.
fn random_id() -> Result<i64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Error::Config(format!("the system's random source failed: {e}")))?;
    Ok(i64::from_be_bytes(bytes) & i64::MAX).map(|id| id.max(1))
}
