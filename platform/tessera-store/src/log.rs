//! The event log: atomic, validated, idempotent appends with optimistic
//! concurrency, and reads in log order with payloads upcast on the way out.
//!
//! # The order of the log, and why no reader skips an event
//!
//! Each event gets a global `position` from the database (SQLite's
//! `AUTOINCREMENT`, PostgreSQL's identity column). A reader follows a
//! product's log by position, so positions must become visible in order.
//! On SQLite there is one writer at a time, so they do. On PostgreSQL they
//! would not by themselves: two transactions take positions 10 and 11, the
//! one holding 11 commits first, a reader moves past 11, and event 10
//! appears behind it, never to be read. Two things prevent that:
//!
//! 1. Appends to one product hold a transaction-scoped advisory lock from
//!    before they take positions until after their commit is visible
//!    (PostgreSQL releases locks after marking the transaction committed),
//!    so a product's positions are assigned in commit order.
//! 2. Each row records its transaction id, and readers only return rows
//!    written below `pg_snapshot_xmin(pg_current_snapshot())`, the oldest
//!    transaction still in flight: nothing that could still commit below a
//!    returned position is ever outrun.
//!
//! The horizon is the cluster's: any transaction that has written, in any
//! database of the server, holds tailing readers back until it ends (never
//! writers). Reading one stream needs no horizon: its versions are
//! assigned under the product's lock and read by version, so a stream read
//! sees its writer's events as soon as they commit.
//!
//! `tests/it/concurrency.rs` builds the interleaving above on purpose, and
//! runs many writers with randomly delayed commits against a reader that
//! checks it never sees a position appear behind its cursor.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::catalog::ProductRow;
use crate::envelope::{EventInput, MAX_PROBLEMS};
use crate::error::{Error, EventProblem, Result};
use crate::principals::Principal;
use crate::{Backend, CHANNEL, Store, now_micros, rfc3339};

/// At most this many events per append request.
pub const MAX_EVENTS_PER_REQUEST: usize = 100_000;
/// At most this many events per read.
pub const MAX_READ: i64 = 10_000;
/// Rows per multi-row INSERT: 10 parameters each, well under both databases' limits.
const ROWS_PER_INSERT: usize = 500;
/// Values per `IN (...)` list.
const KEYS_PER_LOOKUP: usize = 500;
/// See [`Store::keep_statistics_fresh`].
const ANALYZE_EVERY: u64 = 50_000;
/// Namespace of the advisory locks that order appends per product.
const APPEND_LOCK: i64 = 0x7e55_0000_0000_0000;

/// What an append stored.
#[derive(Debug, Clone, Serialize)]
pub struct AppendOutcome {
    /// Events newly stored.
    pub appended: usize,
    /// Events whose id was already stored with the same content: not stored again.
    pub duplicates: usize,
    /// The contract version the events were validated against.
    pub contract_version: String,
    /// Position of the last event stored, if any.
    pub last_position: Option<i64>,
    /// One entry per event, in request order.
    pub events: Vec<AppendedEvent>,
}

/// Where one event of a request is stored.
#[derive(Debug, Clone, Serialize)]
pub struct AppendedEvent {
    pub index: usize,
    pub id: Uuid,
    pub stream: String,
    pub version: i64,
    pub position: i64,
    pub duplicate: bool,
}

/// An event as read back.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub position: i64,
    pub stream: String,
    /// The event's version in its stream, from 1.
    pub version: i64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The schema version of `payload` (the current one, after upcasting).
    pub schema_version: i64,
    /// The schema version the event was written with.
    pub stored_schema_version: i64,
    pub payload: Value,
    pub metadata: Value,
    pub contract_version: String,
    pub recorded_at: String,
    /// Why the payload could not be upcast, if it could not (then `payload`
    /// is the stored original).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upcast_error: Option<String>,
}

/// A page of a product's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogPage {
    pub events: Vec<StoredEvent>,
    /// Pass as `after` to read on; equals the request's `after` when nothing is new.
    pub next_after: i64,
}

/// An event ready to be stored.
struct Prepared {
    index: usize,
    id: Uuid,
    explicit_id: bool,
    stream: String,
    event_type: String,
    schema_version: i64,
    payload: String,
    payload_value: Value,
    metadata: String,
    expected: crate::Expected,
}

impl Store {
    /// Appends a request's events to a product's log: all of them or none.
    pub async fn append(&self, principal: &Principal, domain: &str, name: &str, events: Vec<EventInput>) -> Result<AppendOutcome> {
        if principal.is_public() {
            return Err(Error::Unauthenticated("appending needs a token: send `Authorization: Bearer <token>`".into()));
        }
        let product = self.product_row(domain, name).await?;
        if !principal.is_member_of(domain) {
            return Err(Error::Forbidden(format!(
                "{} is not a member of domain `{domain}`; only its members may append to {domain}/{name}",
                principal.name
            )));
        }
        if events.is_empty() {
            return Err(Error::NoEvents);
        }
        if events.len() > MAX_EVENTS_PER_REQUEST {
            return Err(Error::TooManyEvents { count: events.len(), max: MAX_EVENTS_PER_REQUEST });
        }
        let compiled = self.compiled(&product).await?;
        // Validation is CPU work: keep it off the async workers, so that a
        // large request does not stall the others (or a health check).
        let prepared = {
            let (compiled, principal) = (compiled.clone(), principal.clone());
            tokio::task::spawn_blocking(move || prepare(&compiled, &principal, events))
                .await
                .map_err(|e| Error::Config(format!("validating the events failed: {e}")))??
        };
        let product_key = format!("{domain}/{name}");
        let outcome = self.write(&product, &product_key, &compiled.version, prepared).await?;
        if let Some(last) = outcome.last_position {
            self.announce(&product_key, last);
        }
        self.keep_statistics_fresh(outcome.appended);
        Ok(outcome)
    }

    async fn write(
        &self,
        product: &ProductRow,
        product_key: &str,
        contract_version: &str,
        prepared: Vec<Prepared>,
    ) -> Result<AppendOutcome> {
        let mut tx = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l").bind(APPEND_LOCK | product.id).execute(&mut **tx).await?;
        }

        // Idempotency: ids already stored, and ids repeated within the request.
        let explicit: Vec<&Prepared> = prepared.iter().filter(|p| p.explicit_id).collect();
        let mut stored: HashMap<Uuid, (i64, String, i64, String, String)> = HashMap::new();
        for chunk in explicit.chunks(KEYS_PER_LOOKUP) {
            let sql = format!(
                "SELECT event_id, position, stream, stream_version, event_type, payload FROM events WHERE product_id = $1 AND event_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(self.dialect(sql))).bind(product.id);
            for p in chunk {
                q = q.bind(p.id.as_bytes().to_vec());
            }
            for row in q.fetch_all(&mut **tx).await? {
                let id: Vec<u8> = row.try_get(0)?;
                let id = Uuid::from_slice(&id).unwrap_or_default();
                stored.insert(id, (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?, row.try_get(5)?));
            }
        }
        let mut outcome_events = Vec::with_capacity(prepared.len());
        let mut first_in_request: HashMap<Uuid, usize> = HashMap::new();
        let mut fresh: Vec<&Prepared> = Vec::with_capacity(prepared.len());
        for p in &prepared {
            if let Some((position, stream, version, event_type, payload)) = stored.get(&p.id) {
                let same = *stream == p.stream
                    && *event_type == p.event_type
                    && serde_json::from_str::<Value>(payload).ok().as_ref() == Some(&p.payload_value);
                if !same {
                    return Err(Error::EventIdConflict { index: p.index, id: p.id, position: *position });
                }
                outcome_events.push(Some(AppendedEvent {
                    index: p.index,
                    id: p.id,
                    stream: stream.clone(),
                    version: *version,
                    position: *position,
                    duplicate: true,
                }));
                continue;
            }
            if p.explicit_id {
                if let Some(&first) = first_in_request.get(&p.id) {
                    let f = &prepared[first];
                    if f.stream != p.stream || f.event_type != p.event_type || f.payload_value != p.payload_value {
                        return Err(Error::InvalidEvents {
                            problems: vec![EventProblem {
                                index: p.index,
                                line: None,
                                pointer: "/id".into(),
                                code: "duplicate_id",
                                message: format!(
                                    "id {} is also the id of event {first} of this request, with other content; give each event its own id",
                                    p.id
                                ),
                            }],
                        });
                    }
                    outcome_events.push(None); // filled in from `first` below
                    continue;
                }
                first_in_request.insert(p.id, p.index);
            }
            outcome_events.push(None);
            fresh.push(p);
        }

        // Optimistic concurrency: each stream's current version.
        let streams: Vec<&str> = fresh.iter().map(|p| p.stream.as_str()).collect::<HashSet<_>>().into_iter().collect();
        let mut versions: HashMap<String, i64> = HashMap::with_capacity(streams.len());
        for chunk in streams.chunks(KEYS_PER_LOOKUP) {
            let sql = format!(
                "SELECT stream, MAX(stream_version) FROM events WHERE product_id = $1 AND stream IN ({}) GROUP BY stream",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(self.dialect(sql))).bind(product.id);
            for s in chunk {
                q = q.bind(*s);
            }
            for row in q.fetch_all(&mut **tx).await? {
                versions.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        let mut assigned: Vec<i64> = Vec::with_capacity(fresh.len());
        for p in &fresh {
            let current = versions.get(&p.stream).copied().unwrap_or(0);
            if !p.expected.allows(u64::try_from(current).unwrap_or(0)) {
                return Err(Error::WrongExpectedVersion {
                    index: p.index,
                    stream: p.stream.clone(),
                    expected: p.expected.describe(),
                    actual: u64::try_from(current).unwrap_or(0),
                });
            }
            versions.insert(p.stream.clone(), current + 1);
            assigned.push(current + 1);
        }

        // Insert, many rows per statement.
        let recorded_at = now_micros();
        let mut positions: HashMap<(String, i64), i64> = HashMap::with_capacity(fresh.len());
        for (chunk, versions) in fresh.chunks(ROWS_PER_INSERT).zip(assigned.chunks(ROWS_PER_INSERT)) {
            let mut sql = String::from(
                "INSERT INTO events (product_id, contract_version, recorded_at, stream, stream_version, event_id, event_type, schema_version, payload, metadata) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                sql.push_str(&placeholders(1 + i * 10, 10));
                sql.push(')');
            }
            sql.push_str(" RETURNING position, stream, stream_version");
            let mut q = sqlx::query(AssertSqlSafe(self.dialect(sql)));
            for (p, version) in chunk.iter().zip(versions) {
                q = q
                    .bind(product.id)
                    .bind(contract_version)
                    .bind(recorded_at)
                    .bind(p.stream.as_str())
                    .bind(*version)
                    .bind(p.id.as_bytes().to_vec())
                    .bind(p.event_type.as_str())
                    .bind(p.schema_version)
                    .bind(p.payload.as_str())
                    .bind(p.metadata.as_str());
            }
            for row in q.fetch_all(&mut **tx).await? {
                positions.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
            }
        }
        let last_position = positions.values().copied().max();
        if let (Backend::Postgres, Some(last)) = (self.backend(), last_position) {
            sqlx::query("SELECT 1 FROM (SELECT pg_notify($1, $2)) AS n")
                .bind(CHANNEL)
                .bind(format!("{product_key} {last}"))
                .execute(&mut **tx)
                .await?;
        }
        let delay = self.inner.commit_delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(0..delay))).await;
        }
        tx.commit().await?;

        let mut by_index: HashMap<usize, AppendedEvent> = HashMap::with_capacity(fresh.len());
        for (p, version) in fresh.iter().zip(&assigned) {
            let position = positions.get(&(p.stream.clone(), *version)).copied().unwrap_or_default();
            by_index.insert(
                p.index,
                AppendedEvent { index: p.index, id: p.id, stream: p.stream.clone(), version: *version, position, duplicate: false },
            );
        }
        let events: Vec<AppendedEvent> = prepared
            .iter()
            .zip(outcome_events)
            .map(|(p, e)| match e {
                Some(e) => e,
                None => match by_index.get(&p.index) {
                    Some(e) => e.clone(),
                    None => {
                        let first = first_in_request.get(&p.id).and_then(|i| by_index.get(i)).cloned();
                        let mut e = first.unwrap_or(AppendedEvent {
                            index: p.index,
                            id: p.id,
                            stream: p.stream.clone(),
                            version: 0,
                            position: 0,
                            duplicate: true,
                        });
                        e.index = p.index;
                        e.duplicate = true;
                        e
                    }
                },
            })
            .collect();
        let appended = fresh.len();
        Ok(AppendOutcome {
            appended,
            duplicates: prepared.len() - appended,
            contract_version: contract_version.to_owned(),
            last_position,
            events,
        })
    }

    /// A product's log after `after`, oldest first, at most `limit` events.
    pub async fn read_log(&self, principal: &Principal, domain: &str, name: &str, after: i64, limit: i64) -> Result<LogPage> {
        let product = self.readable(principal, domain, name).await?;
        let limit = limit.clamp(1, MAX_READ);
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE product_id = $1 AND position > $2{} ORDER BY position LIMIT $3", self.horizon());
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(product.id).bind(after).bind(limit).fetch_all(self.pool()).await?;
        let compiled = self.compiled(&product).await?;
        let events = rows.iter().map(|r| stored_event(r, &compiled)).collect::<Result<Vec<_>>>()?;
        let next_after = events.last().map_or(after, |e| e.position);
        Ok(LogPage { events, next_after })
    }

    /// One stream's events from version `from` (1 for the whole stream).
    pub async fn read_stream(
        &self,
        principal: &Principal,
        domain: &str,
        name: &str,
        stream: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let product = self.readable(principal, domain, name).await?;
        let limit = limit.clamp(1, MAX_READ);
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE product_id = $1 AND stream = $2 AND stream_version >= $3 ORDER BY stream_version LIMIT $4"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(product.id).bind(stream).bind(from).bind(limit).fetch_all(self.pool()).await?;
        if rows.is_empty() && from <= 1 {
            return Err(Error::NotFound { what: format!("stream `{stream}` of {domain}/{name}") });
        }
        let compiled = self.compiled(&product).await?;
        rows.iter().map(|r| stored_event(r, &compiled)).collect()
    }

    /// The position of the product's newest event (0 for an empty log).
    pub async fn head(&self, domain: &str, name: &str) -> Result<i64> {
        let product = self.product_row(domain, name).await?;
        let sql = format!("SELECT COALESCE(MAX(position), 0) FROM events WHERE product_id = $1{}", self.horizon());
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(product.id).fetch_one(self.pool()).await?.try_get(0)?)
    }

    /// A stream's current version: that of its last event, 0 if it has none.
    pub async fn stream_version(&self, domain: &str, name: &str, stream: &str) -> Result<i64> {
        let product = self.product_row(domain, name).await?;
        Ok(sqlx::query("SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE product_id = $1 AND stream = $2")
            .bind(product.id)
            .bind(stream)
            .fetch_one(self.pool())
            .await?
            .try_get(0)?)
    }

    /// Testing only: hold every append's transaction open for a random time
    /// below `max_ms` before committing, to shuffle commit order.
    #[doc(hidden)]
    pub fn delay_commits_for_tests(&self, max_ms: u64) {
        self.inner.commit_delay_ms.store(max_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The raw log holds clear personal data: only the owning domain's members read it.
    async fn readable(&self, principal: &Principal, domain: &str, name: &str) -> Result<ProductRow> {
        if principal.is_public() {
            return Err(Error::Unauthenticated("reading events needs a token: send `Authorization: Bearer <token>`".into()));
        }
        let product = self.product_row(domain, name).await?;
        if !principal.is_member_of(domain) {
            return Err(Error::Forbidden(format!(
                "the raw events of {domain}/{name} hold unmasked data and are readable by members of domain `{domain}` only; \
                 query the product's tables instead"
            )));
        }
        Ok(product)
    }

    /// Re-analyzes the log on PostgreSQL after every [`ANALYZE_EVERY`]
    /// events appended through this process. The lookups of an append (ids,
    /// stream versions) are planned from statistics; a log that grew from
    /// empty without an ANALYZE looks tiny, and PostgreSQL then scans a whole
    /// product per append (seen: 400 events/s at 1M events instead of
    /// 10,000). Autovacuum does this too, where it is on; this does not rely
    /// on it.
    fn keep_statistics_fresh(&self, appended: usize) {
        if self.backend() != Backend::Postgres {
            return;
        }
        let before = self.inner.appended_since_analyze.fetch_add(appended as u64, std::sync::atomic::Ordering::Relaxed);
        if before / ANALYZE_EVERY != (before + appended as u64) / ANALYZE_EVERY {
            let pool = self.pool().clone();
            tokio::spawn(async move {
                if let Err(e) = sqlx::query("ANALYZE events").execute(&pool).await {
                    tracing::warn!(error = %e, "ANALYZE events failed");
                }
            });
        }
    }

    /// A statement whose parameters are `$1, $2, ...`, each once and in
    /// order, in the placeholders of this database. SQLite gets anonymous `?`:
    /// it looks up each named parameter by walking a list of all of them,
    /// which makes binding a statement with thousands of `$N` quadratic
    /// (it was over half of an append's time).
    fn dialect(&self, sql: String) -> String {
        match self.backend() {
            Backend::Postgres => sql,
            Backend::Sqlite => {
                let mut out = String::with_capacity(sql.len());
                let mut chars = sql.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                        while chars.peek().is_some_and(char::is_ascii_digit) {
                            chars.next();
                        }
                        out.push('?');
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// The extra condition that keeps readers below the safe horizon.
    fn horizon(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " AND tx_id < pg_snapshot_xmin(pg_current_snapshot())",
        }
    }
}

const COLUMNS: &str =
    "position, stream, stream_version, event_id, event_type, schema_version, payload, metadata, contract_version, recorded_at";

fn stored_event(r: &sqlx::any::AnyRow, compiled: &crate::compiled::Compiled) -> Result<StoredEvent> {
    let id: Vec<u8> = r.try_get(3)?;
    let event_type: String = r.try_get(4)?;
    let stored_schema_version: i64 = r.try_get(5)?;
    let payload: String = r.try_get(6)?;
    let metadata: String = r.try_get(7)?;
    let original: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
    let (payload, schema_version, upcast_error) = match compiled.event_type(&event_type) {
        Some(t) if i64::from(t.version) != stored_schema_version => {
            match tessera_contract::upcast(t, u32::try_from(stored_schema_version).unwrap_or(0), original.clone()) {
                Ok(p) => (p, i64::from(t.version), None),
                Err(e) => (original, stored_schema_version, Some(e.to_string())),
            }
        }
        _ => (original, stored_schema_version, None),
    };
    Ok(StoredEvent {
        position: r.try_get(0)?,
        stream: r.try_get(1)?,
        version: r.try_get(2)?,
        id: Uuid::from_slice(&id).unwrap_or_default(),
        event_type,
        schema_version,
        stored_schema_version,
        payload,
        metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
        contract_version: r.try_get(8)?,
        recorded_at: rfc3339(r.try_get(9)?),
        upcast_error,
    })
}

/// `$first, $first+1, ...`, `count` of them.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Validates every event (all problems at once, up to a limit) and renders
/// what will be stored.
fn prepare(compiled: &crate::compiled::Compiled, principal: &Principal, events: Vec<EventInput>) -> Result<Vec<Prepared>> {
    let mut problems = Vec::new();
    let mut prepared = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        match compiled.check(index, &event) {
            Ok(version) => {
                let mut metadata: Map<String, Value> = event.metadata;
                metadata.insert("principal".into(), Value::String(principal.name.clone()));
                prepared.push(Prepared {
                    index,
                    id: event.id.unwrap_or_else(Uuid::now_v7),
                    explicit_id: event.id.is_some(),
                    payload: serde_json::to_string(&event.payload).unwrap_or_default(),
                    payload_value: event.payload,
                    metadata: serde_json::to_string(&metadata).unwrap_or_default(),
                    stream: event.stream,
                    event_type: event.event_type,
                    schema_version: i64::from(version),
                    expected: event.expected,
                });
            }
            Err(p) => {
                problems.push(p);
                if problems.len() >= MAX_PROBLEMS {
                    break;
                }
            }
        }
    }
    if problems.is_empty() { Ok(prepared) } else { Err(Error::InvalidEvents { problems }) }
}
