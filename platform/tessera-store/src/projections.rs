//! What the projector keeps in the catalog database beside its Delta
//! tables: dead letters, quality results and leases. (The position a table
//! has applied is not here: it lives in the table's own Delta log.)

use serde::Serialize;
use sqlx::Row;

use crate::error::Result;
use crate::{Store, now_micros, rfc3339};

/// An event that could not be projected into a table, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub table: String,
    pub position: i64,
    pub stream: String,
    pub event_type: String,
    pub reason: String,
}

/// A dead letter as listed: which generation it belongs to and when it was recorded.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterEntry {
    #[serde(flatten)]
    pub letter: DeadLetter,
    pub major: i64,
    pub recorded_at: String,
}

/// The latest result of one quality check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityResult {
    pub table: String,
    /// The check as written, e.g. `unique(order_id)`.
    pub check: String,
    pub passed: bool,
    /// What was measured, e.g. `2 duplicate keys`.
    pub detail: String,
    /// The Delta version of the table that was checked.
    pub table_version: i64,
    pub checked_at: String,
}

impl Store {
    /// Records dead letters of generation `major`; one that is already
    /// recorded (a run retried after a crash) is kept as it was.
    pub async fn record_dead_letters(&self, domain: &str, name: &str, major: i64, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let product = self.product_row(domain, name).await?;
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        for chunk in letters.chunks(500) {
            let rows = serde_json::Value::from(
                chunk.iter().map(|l| serde_json::json!([l.table, l.position, l.stream, l.event_type, l.reason])).collect::<Vec<_>>(),
            )
            .to_string();
            let sql = match self.backend() {
                crate::Backend::Sqlite => {
                    "INSERT INTO dead_letters (product_id, major, table_name, position, stream, event_type, reason, recorded_at) \
                     SELECT $1, $2, value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, $3 FROM json_each($4) \
                     WHERE true ON CONFLICT DO NOTHING"
                }
                crate::Backend::Postgres => {
                    "INSERT INTO dead_letters (product_id, major, table_name, position, stream, event_type, reason, recorded_at) \
                     SELECT $1, $2, value ->> 0, (value ->> 1)::bigint, value ->> 2, value ->> 3, value ->> 4, $3 \
                     FROM json_array_elements($4::json) ON CONFLICT DO NOTHING"
                }
            };
            sqlx::query(sql).bind(product.id).bind(major).bind(now).bind(rows).execute(&mut **tx).await?;
        }
        tx.commit().await
    }

    /// Forgets the dead letters of generation `major` (before a rebuild
    /// projects the whole log again).
    pub async fn clear_dead_letters(&self, domain: &str, name: &str, major: i64) -> Result<()> {
        let product = self.product_row(domain, name).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM dead_letters WHERE product_id = $1 AND major = $2")
            .bind(product.id)
            .bind(major)
            .execute(&mut **tx)
            .await?;
        tx.commit().await
    }

    /// A product's dead letters, oldest event first, at most `limit`.
    pub async fn dead_letters(&self, domain: &str, name: &str, limit: i64) -> Result<Vec<DeadLetterEntry>> {
        let product = self.product_row(domain, name).await?;
        let rows = sqlx::query(
            "SELECT table_name, position, stream, event_type, reason, major, recorded_at FROM dead_letters \
             WHERE product_id = $1 ORDER BY major, position, table_name LIMIT $2",
        )
        .bind(product.id)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetterEntry {
                    letter: DeadLetter {
                        table: r.try_get(0)?,
                        position: r.try_get(1)?,
                        stream: r.try_get(2)?,
                        event_type: r.try_get(3)?,
                        reason: r.try_get(4)?,
                    },
                    major: r.try_get(5)?,
                    recorded_at: rfc3339(r.try_get(6)?),
                })
            })
            .collect()
    }

    /// How many dead letters each table of generation `major` has.
    pub async fn dead_letter_counts(&self, domain: &str, name: &str, major: i64) -> Result<Vec<(String, i64)>> {
        let product = self.product_row(domain, name).await?;
        let rows = sqlx::query(
            "SELECT table_name, COUNT(*) FROM dead_letters WHERE product_id = $1 AND major = $2 GROUP BY table_name ORDER BY table_name",
        )
        .bind(product.id)
        .bind(major)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Stores the latest results of a table's quality checks.
    pub async fn record_quality(&self, domain: &str, name: &str, major: i64, results: &[QualityResult]) -> Result<()> {
        let product = self.product_row(domain, name).await?;
        let mut tx = self.begin_write().await?;
        for q in results {
            sqlx::query(
                "INSERT INTO quality_results (product_id, major, table_name, check_name, passed, detail, table_version, checked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (product_id, major, table_name, check_name) DO UPDATE SET \
                 passed = excluded.passed, detail = excluded.detail, table_version = excluded.table_version, checked_at = excluded.checked_at",
            )
            .bind(product.id)
            .bind(major)
            .bind(&q.table)
            .bind(&q.check)
            .bind(i64::from(q.passed))
            .bind(&q.detail)
            .bind(q.table_version)
            .bind(now_micros())
            .execute(&mut **tx)
            .await?;
        }
        tx.commit().await
    }

    /// The latest quality results of generation `major` of a product.
    pub async fn quality(&self, domain: &str, name: &str, major: i64) -> Result<Vec<QualityResult>> {
        let product = self.product_row(domain, name).await?;
        let rows = sqlx::query(
            "SELECT table_name, check_name, passed, detail, table_version, checked_at FROM quality_results \
             WHERE product_id = $1 AND major = $2 ORDER BY table_name, check_name",
        )
        .bind(product.id)
        .bind(major)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QualityResult {
                    table: r.try_get(0)?,
                    check: r.try_get(1)?,
                    passed: r.try_get::<i64, _>(2)? != 0,
                    detail: r.try_get(3)?,
                    table_version: r.try_get(4)?,
                    checked_at: rfc3339(r.try_get(5)?),
                })
            })
            .collect()
    }

    /// Takes or renews the lease `name` for `holder` until `ttl` from now;
    /// `false` if another holder has it and has not let it expire.
    pub async fn try_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let now = now_micros();
        let until = now.saturating_add(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX));
        let mut tx = self.begin_write().await?;
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(taken)
    }

    /// Gives up the lease `name` if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2").bind(name).bind(holder).execute(&mut **tx).await?;
        tx.commit().await
    }
}

/// Work asked of a product's projector.
#[derive(Debug, Clone, Serialize)]
pub struct Command {
    pub id: i64,
    pub kind: String,
    /// `pending`, `running`, `done` or `failed`.
    pub state: &'static str,
    pub requested_by: String,
    pub requested_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Events done (a rebuild's events replayed), and the number to do.
    pub progress: i64,
    pub target: i64,
    /// What it did, or why it failed.
    pub outcome: Option<serde_json::Value>,
}

const COMMAND_COLUMNS: &str = "id, kind, requested_by, requested_at, started_at, finished_at, progress, target, failed, outcome";

fn command(r: &sqlx::any::AnyRow) -> Result<Command> {
    let started: Option<i64> = r.try_get(4)?;
    let finished: Option<i64> = r.try_get(5)?;
    let failed: i64 = r.try_get(8)?;
    let outcome: Option<String> = r.try_get(9)?;
    Ok(Command {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        state: match (started, finished, failed) {
            (_, Some(_), 0) => "done",
            (_, Some(_), _) => "failed",
            (Some(_), None, _) => "running",
            (None, None, _) => "pending",
        },
        requested_by: r.try_get(2)?,
        requested_at: rfc3339(r.try_get(3)?),
        started_at: started.map(rfc3339),
        finished_at: finished.map(rfc3339),
        progress: r.try_get(6)?,
        target: r.try_get(7)?,
        outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
    })
}

impl Store {
    /// Asks the product's projector to `kind` (`rebuild`, `compact`,
    /// `vacuum`); the same request still pending is not asked twice.
    pub async fn request_command(&self, domain: &str, name: &str, kind: &str, by: &str) -> Result<Command> {
        let product = self.product_row(domain, name).await?;
        let mut tx = self.begin_write().await?;
        let pending = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COMMAND_COLUMNS} FROM projection_commands WHERE product_id = $1 AND kind = $2 AND started_at IS NULL"
        )))
        .bind(product.id)
        .bind(kind)
        .fetch_optional(&mut **tx)
        .await?;
        let row = match pending {
            Some(row) => row,
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO projection_commands (product_id, kind, requested_by, requested_at, progress, target, failed) \
                     VALUES ($1, $2, $3, $4, 0, 0, 0) RETURNING {COMMAND_COLUMNS}"
                )))
                .bind(product.id)
                .bind(kind)
                .bind(by)
                .bind(now_micros())
                .fetch_one(&mut **tx)
                .await?
            }
        };
        let out = command(&row)?;
        tx.commit().await?;
        Ok(out)
    }

    /// The oldest unfinished command of a product.
    pub async fn next_command(&self, domain: &str, name: &str) -> Result<Option<Command>> {
        let product = self.product_row(domain, name).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COMMAND_COLUMNS} FROM projection_commands WHERE product_id = $1 AND finished_at IS NULL ORDER BY id LIMIT 1"
        )))
        .bind(product.id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(command).transpose()
    }

    /// One command of a product.
    pub async fn command(&self, domain: &str, name: &str, id: i64) -> Result<Command> {
        let product = self.product_row(domain, name).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COMMAND_COLUMNS} FROM projection_commands WHERE product_id = $1 AND id = $2"
        )))
        .bind(product.id)
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| crate::Error::NotFound { what: format!("command {id} of {domain}/{name}") })?;
        command(&row)
    }

    /// Records a command's progress (marking it started).
    pub async fn command_progress(&self, id: i64, progress: i64, target: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE projection_commands SET started_at = COALESCE(started_at, $2), progress = $3, target = $4 WHERE id = $1")
            .bind(id)
            .bind(now_micros())
            .bind(progress)
            .bind(target)
            .execute(&mut **tx)
            .await?;
        tx.commit().await
    }

    /// Ends a command with what it did, or its error.
    pub async fn finish_command(&self, id: i64, outcome: std::result::Result<serde_json::Value, String>) -> Result<()> {
        let (failed, text) = match outcome {
            Ok(v) => (0, v.to_string()),
            Err(e) => (1, serde_json::Value::from(e).to_string()),
        };
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE projection_commands SET started_at = COALESCE(started_at, $2), finished_at = $2, failed = $3, outcome = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(failed)
        .bind(text)
        .execute(&mut **tx)
        .await?;
        tx.commit().await
    }
}

/// One generation of a product's tables: those of one major version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generation {
    pub major: i64,
    /// `building`, `live`, `previous` or `retired`.
    pub state: String,
    pub created_at: String,
    pub changed_at: String,
}

impl Store {
    /// Records generation `major` as `building` unless it is known.
    pub async fn ensure_generation(&self, domain: &str, name: &str, major: i64) -> Result<()> {
        let product = self.product_row(domain, name).await?;
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO generations (product_id, major, state, created_at, changed_at) VALUES ($1, $2, 'building', $3, $3) \
             ON CONFLICT (product_id, major) DO NOTHING",
        )
        .bind(product.id)
        .bind(major)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        tx.commit().await
    }

    /// Makes generation `major` the live one; the live one before it
    /// becomes `previous`. Nothing changes if it is live already.
    pub async fn promote_generation(&self, domain: &str, name: &str, major: i64) -> Result<()> {
        let product = self.product_row(domain, name).await?;
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE generations SET state = 'previous', changed_at = $3 WHERE product_id = $1 AND state = 'live' AND major <> $2")
            .bind(product.id)
            .bind(major)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE generations SET state = 'live', changed_at = $3 WHERE product_id = $1 AND major = $2 AND state <> 'live'")
            .bind(product.id)
            .bind(major)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        tx.commit().await
    }

    /// Retires generation `major`: it is served no more. The live one
    /// cannot be retired.
    pub async fn retire_generation(&self, domain: &str, name: &str, major: i64) -> Result<()> {
        let product = self.product_row(domain, name).await?;
        let mut tx = self.begin_write().await?;
        let state: Option<String> = sqlx::query("SELECT state FROM generations WHERE product_id = $1 AND major = $2")
            .bind(product.id)
            .bind(major)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        match state.as_deref() {
            None => return Err(crate::Error::NotFound { what: format!("generation v{major} of {domain}/{name}") }),
            Some("live" | "building") => {
                return Err(crate::Error::Conflict(format!(
                    "generation v{major} of {domain}/{name} is {}: only a generation that another has replaced can be retired",
                    state.unwrap_or_default()
                )));
            }
            Some(_) => {}
        }
        sqlx::query("UPDATE generations SET state = 'retired', changed_at = $3 WHERE product_id = $1 AND major = $2")
            .bind(product.id)
            .bind(major)
            .bind(now_micros())
            .execute(&mut **tx)
            .await?;
        tx.commit().await
    }

    /// A product's generations, oldest first.
    pub async fn generations(&self, domain: &str, name: &str) -> Result<Vec<Generation>> {
        let product = self.product_row(domain, name).await?;
        let rows = sqlx::query("SELECT major, state, created_at, changed_at FROM generations WHERE product_id = $1 ORDER BY major")
            .bind(product.id)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Generation {
                    major: r.try_get(0)?,
                    state: r.try_get(1)?,
                    created_at: rfc3339(r.try_get(2)?),
                    changed_at: rfc3339(r.try_get(3)?),
                })
            })
            .collect()
    }
}
