//! The query audit log: who ran which SQL, what it read, how many rows it
//! returned, how long it took and how it ended. Written by the query engine
//! (in batches, off the query's path); listed to stewards.

use serde::Serialize;
use sqlx::Row;

use crate::error::Result;
use crate::{Store, rfc3339};

/// One query, as audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryRecord {
    /// Microseconds since the Unix epoch, when the query started.
    #[serde(skip)]
    pub at_micros: i64,
    pub principal: String,
    /// `http`, `pgwire` or `catalog`.
    pub via: String,
    pub sql: String,
    /// `domain.product.table` of every table the query read.
    pub tables: Vec<String>,
    pub rows: i64,
    pub duration_us: i64,
    /// `ok`, `refused`, `failed` or `cancelled`.
    pub outcome: String,
    pub error: Option<String>,
}

/// A query as listed, with its id and time.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    #[serde(flatten)]
    pub record: QueryRecord,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub principal: Option<String>,
    /// Only entries with an id below this (paging backwards).
    pub before: Option<i64>,
    pub limit: i64,
}

impl Store {
    /// Records queries in one transaction.
    pub async fn record_queries(&self, records: &[QueryRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO query_audit (at, principal, via, sql_text, tables_read, row_count, duration_us, outcome, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(r.at_micros)
            .bind(&r.principal)
            .bind(&r.via)
            .bind(&r.sql)
            .bind(serde_json::to_string(&r.tables).unwrap_or_else(|_| "[]".into()))
            .bind(r.rows)
            .bind(r.duration_us)
            .bind(&r.outcome)
            .bind(r.error.as_deref())
            .execute(&mut **tx)
            .await?;
        }
        tx.commit().await
    }

    /// The newest audited queries first.
    pub async fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, principal, via, sql_text, tables_read, row_count, duration_us, outcome, error FROM query_audit \
             WHERE ($1 = '' OR principal = $1) AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(filter.principal.as_deref().unwrap_or(""))
        .bind(filter.before.unwrap_or(i64::MAX))
        .bind(filter.limit.clamp(1, 10_000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let at: i64 = r.try_get(1)?;
                let tables: String = r.try_get(5)?;
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at: rfc3339(at),
                    record: QueryRecord {
                        at_micros: at,
                        principal: r.try_get(2)?,
                        via: r.try_get(3)?,
                        sql: r.try_get(4)?,
                        tables: serde_json::from_str(&tables).unwrap_or_default(),
                        rows: r.try_get(6)?,
                        duration_us: r.try_get(7)?,
                        outcome: r.try_get(8)?,
                        error: r.try_get(9)?,
                    },
                })
            })
            .collect()
    }
}
