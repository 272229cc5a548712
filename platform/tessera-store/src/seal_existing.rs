//! Sealing a log written before sealing existed: the one time stored events
//! are rewritten.
//!
//! A store created by an earlier version holds every payload in clear. At
//! the first open by this version, [`Store::seal_existing_events`] seals
//! the personal fields of every stored event in place (at the event's own
//! schema version, as an append would have), in one transaction per batch,
//! logging its progress; it then records `log_sealed` in `store_state`, so
//! that it never runs again. The projector sees each table's sealed columns
//! change type (binary) and rebuilds the tables from the sealed log.

use std::collections::BTreeSet;

use serde_json::Value;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::{Store, now_micros};

/// The `store_state` key of a sealed log.
const LOG_SEALED: &str = "log_sealed";

/// Events read and rewritten per transaction.
const BATCH: i64 = 2000;

impl Store {
    /// Seals the events stored in clear, unless the log is sealed already.
    /// Returns the events rewritten.
    pub(crate) async fn seal_existing_events(&self) -> Result<u64> {
        let done: Option<String> = sqlx::query("SELECT value FROM store_state WHERE key = $1")
            .bind(LOG_SEALED)
            .fetch_optional(self.pool())
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if done.is_some() {
            return Ok(0);
        }
        let mut rewritten = 0;
        let rows = sqlx::query("SELECT id, domain, name FROM products ORDER BY id").fetch_all(self.pool()).await?;
        for row in rows {
            let (id, domain, name): (i64, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            rewritten += self.seal_product(id, &domain, &name).await?;
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO store_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(LOG_SEALED)
            .bind(crate::rfc3339(now_micros()))
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        if rewritten > 0 {
            tracing::warn!(events = rewritten, "sealed the personal fields of events stored before sealing; their tables are rebuilt");
        }
        Ok(rewritten)
    }

    async fn seal_product(&self, id: i64, domain: &str, name: &str) -> Result<u64> {
        let product = self.product_row(domain, name).await?;
        let compiled = self.compiled(&product).await?;
        let mut cursor = 0i64;
        let mut rewritten = 0u64;
        loop {
            let rows = sqlx::query(
                "SELECT position, event_type, schema_version, payload FROM events WHERE product_id = $1 AND position > $2 ORDER BY position LIMIT $3",
            )
            .bind(id)
            .bind(cursor)
            .bind(BATCH)
            .fetch_all(self.pool())
            .await?;
            let Some(last) = rows.last() else { break };
            cursor = last.try_get(0)?;
            // The events of this batch that hold clear personal fields.
            let mut clear = Vec::new();
            for row in &rows {
                let (position, event_type, version, payload): (i64, String, i64, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
                let Some(plan) =
                    compiled.plan(&event_type, u32::try_from(version).unwrap_or(0)).filter(|p| p.seals_anything() || !p.drop.is_empty())
                else {
                    continue;
                };
                let Ok(mut payload) = serde_json::from_str::<Value>(&payload) else { continue };
                let mut needs = false;
                plan.each_value(&payload, &mut |_, v| needs |= !v.as_str().is_some_and(|s| s.starts_with(tessera_seal::TOKEN_PREFIX)));
                let before = payload.clone();
                plan.drop_removed(&mut payload);
                if !needs && payload == before {
                    continue;
                }
                // A value whose subject has no identifier here cannot be sealed: it is not kept.
                let ids: Vec<Option<String>> = (0..plan.subjects.len()).map(|i| plan.subject_id(i, &payload)).collect();
                if plan.subject_ids(&payload).is_err() {
                    tracing::warn!(product = %format!("{domain}/{name}"), position, "personal fields without a subject are dropped: they cannot be sealed");
                }
                clear.push((position, event_type, version, payload, ids));
            }
            if clear.is_empty() {
                continue;
            }
            let subjects: BTreeSet<String> = clear.iter().flat_map(|c| c.4.iter().flatten().cloned()).collect();
            let sealers = self.sealers(domain, &subjects).await?;
            let mut tx = self.begin_write().await?;
            for (position, event_type, version, mut payload, ids) in clear {
                let Some(plan) = compiled.plan(&event_type, u32::try_from(version).unwrap_or(0)) else { continue };
                plan.apply(&mut payload, &mut |subject, v| {
                    if v.as_str().is_some_and(|s| s.starts_with(tessera_seal::TOKEN_PREFIX)) {
                        return Ok(v.clone());
                    }
                    let sealer =
                        subject.and_then(|i| ids.get(i)).and_then(Option::as_ref).and_then(|id| sealers.get(id)).cloned().flatten();
                    Ok::<_, std::convert::Infallible>(match sealer {
                        Some(s) => Value::String(s.seal(v).to_string()),
                        // A forgotten subject, or none named: its values are dropped.
                        None => Value::Null,
                    })
                })
                .unwrap_or_else(|never| match never {});
                let text = serde_json::to_string(&payload).map_err(|e| Error::Config(e.to_string()))?;
                sqlx::query("UPDATE events SET payload = $1 WHERE position = $2").bind(text).bind(position).execute(&mut **tx).await?;
                rewritten += 1;
            }
            tx.commit().await?;
            tracing::info!(product = %format!("{domain}/{name}"), up_to = cursor, events = rewritten, "sealing stored events");
        }
        Ok(rewritten)
    }
}
