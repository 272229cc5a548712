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

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::bulk::RawEvent;
use crate::catalog::ProductRow;
use crate::envelope::{EventInput, MAX_PROBLEMS};
use crate::error::{Error, EventProblem, Result};
use crate::principals::Principal;
use crate::{Backend, CHANNEL, Store, now_micros, rfc3339};

/// At most this many events per append request.
pub const MAX_EVENTS_PER_REQUEST: usize = 100_000;
/// At most this many events per read.
pub const MAX_READ: i64 = 10_000;
/// The most events one [`Store::log_after`] returns.
pub const MAX_PLATFORM_READ: i64 = 100_000;
/// See [`Store::keep_statistics_fresh`].
const ANALYZE_EVERY: u64 = 50_000;
/// Namespace of the advisory locks that order appends per product.
pub(crate) const APPEND_LOCK: i64 = 0x7e55_0000_0000_0000;

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
    /// Seconds the database took to give the rows (the rest of a read is
    /// decoding them), for the projector's stage timers.
    #[serde(skip)]
    pub fetch_seconds: f64,
    /// Seconds spent decoding them (parsing, upcasting).
    #[serde(skip)]
    pub parse_seconds: f64,
}

/// A page of a product's log as stored: payloads and metadata still JSON
/// text. The projector's compiled decoders read values in place from it;
/// [`RawPage::parse`] gives an event as [`Store::log_after`] does (parsed,
/// upcast), which every other reader uses.
#[derive(Debug)]
pub struct RawPage {
    pub events: Vec<RawEvent>,
    /// Pass as `after` to read on; equals the request's `after` when nothing is new.
    pub next_after: i64,
    /// Seconds the database took to give the rows.
    pub fetch_seconds: f64,
    /// The product's current contract, for upcasting.
    compiled: std::sync::Arc<crate::compiled::Compiled>,
}

impl RawPage {
    /// Whether `e`'s payload was written at an older schema version of its
    /// type than the current one: read it through [`RawPage::parse`], which
    /// upcasts it.
    pub fn upcast_needed(&self, e: &RawEvent) -> bool {
        self.compiled.event_type(&e.event_type).is_some_and(|t| i64::from(t.version) != e.schema_version)
    }

    /// `e` parsed and upcast.
    pub fn parse(&self, e: &RawEvent) -> StoredEvent {
        from_raw(e.clone(), &self.compiled)
    }

    /// Every event parsed and upcast.
    pub fn into_events(self) -> Vec<StoredEvent> {
        let compiled = self.compiled;
        self.events.into_iter().map(|r| from_raw(r, &compiled)).collect()
    }
}

/// An event ready to be stored.
struct Prepared {
    index: usize,
    id: Uuid,
    explicit_id: bool,
    stream: String,
    event_type: String,
    schema_version: i64,
    payload: Value,
    metadata: Map<String, Value>,
    expected: crate::Expected,
    /// An earlier event of the same request with the same id and content:
    /// this one is stored once, as that one.
    repeat_of: Option<usize>,
    /// The identifiers of the subjects whose keys seal the payload's
    /// classified fields, by their index in the event's seal plan (`None`
    /// for a subject the payload holds no values of).
    subjects: Vec<Option<String>>,
    /// A subject of the event that is forgotten: the payload could not be
    /// sealed, and the event may only be a resend of one already stored.
    forgotten: Option<String>,
}

/// A request's events, validated and rendered as the parameters of the
/// write statements before the write lock is taken: under the lock, the
/// database does the work, not the encoding of thousands of values.
struct Batch {
    events: Vec<Prepared>,
    /// The rows to insert, if every event is new (see [`rows_json`]).
    rows: String,
    /// The ids the producer chose, as a JSON array of hex strings.
    ids: Option<String>,
    /// The distinct streams, as a JSON array.
    streams: String,
}

/// The statements of an append. Each takes its many values as one JSON
/// parameter, which both databases unpack natively: thousands of bound
/// values cost more to encode and bind than the inserts themselves.
struct Statements {
    /// Stored events among the ids of `$2`.
    find_ids: &'static str,
    /// `{stream: current version}` for the streams of `$2`, as one JSON object.
    stream_versions: &'static str,
    /// Inserts the rows of `$5` in order. A row's version is its stream's
    /// current version plus its ordinal in the request, so that the rows
    /// can be rendered before the current versions are known. (SQLite's
    /// `jsonb_each` hands over each row as JSONB, which `->>` reads without
    /// parsing it again.)
    insert: &'static str,
}

const SQLITE: Statements = Statements {
    find_ids: "SELECT event_id, position, stream, stream_version, event_type, payload FROM events \
               WHERE product_id = $1 AND event_id IN (SELECT unhex(value) FROM json_each($2))",
    stream_versions: "SELECT json_group_object(stream, v) FROM (SELECT stream, MAX(stream_version) AS v FROM events \
                      WHERE product_id = $1 AND stream IN (SELECT value FROM json_each($2)) GROUP BY stream)",
    insert: "INSERT INTO events (product_id, contract_version, recorded_at, stream, stream_version, event_id, event_type, schema_version, payload, metadata) \
             SELECT $1, $2, $3, r.value ->> 0, \
                    COALESCE((SELECT MAX(e.stream_version) FROM events e WHERE e.product_id = $4 AND e.stream = r.value ->> 0), 0) + (r.value ->> 1), \
                    unhex(r.value ->> 2), r.value ->> 3, r.value ->> 4, r.value ->> 5, r.value ->> 6 \
             FROM jsonb_each($5) AS r ORDER BY r.key",
};

const POSTGRES: Statements = Statements {
    find_ids: "SELECT event_id, position, stream, stream_version, event_type, payload FROM events \
               WHERE product_id = $1 AND event_id IN (SELECT decode(value, 'hex') FROM json_array_elements_text($2::json) AS value)",
    stream_versions: "SELECT COALESCE(json_object_agg(stream, v), '{}')::text FROM (SELECT stream, MAX(stream_version) AS v FROM events \
                      WHERE product_id = $1 AND stream IN (SELECT json_array_elements_text($2::json)) GROUP BY stream) AS s",
    insert: "INSERT INTO events (product_id, contract_version, recorded_at, stream, stream_version, event_id, event_type, schema_version, payload, metadata) \
             SELECT $1, $2, $3, r.value ->> 0, \
                    COALESCE((SELECT MAX(e.stream_version) FROM events e WHERE e.product_id = $4 AND e.stream = r.value ->> 0), 0) + (r.value ->> 1)::bigint, \
                    decode(r.value ->> 2, 'hex'), r.value ->> 3, (r.value ->> 4)::bigint, r.value ->> 5, r.value ->> 6 \
             FROM json_array_elements($5::json) WITH ORDINALITY AS r(value, key) ORDER BY r.key \
             RETURNING position, stream, stream_version",
};

/// A stored event with the same id as one of the request's.
struct StoredId {
    position: i64,
    stream: String,
    version: i64,
    event_type: String,
    payload: String,
}

/// How the events of an append request's body are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One envelope per line.
    Ndjson,
    /// An array of envelopes (or a single one).
    Json,
}

impl Store {
    /// Appends events to a product's log: all of them or none.
    pub async fn append(&self, principal: &Principal, domain: &str, name: &str, events: Vec<EventInput>) -> Result<AppendOutcome> {
        self.append_with(principal, domain, name, move || Ok(events)).await
    }

    /// Appends the events of a request body, parsed with the line, index and
    /// JSON pointer of every problem. Who may append is checked before the
    /// body is parsed.
    pub async fn append_body(
        &self,
        principal: &Principal,
        domain: &str,
        name: &str,
        format: BodyFormat,
        body: impl AsRef<[u8]> + Send + 'static,
    ) -> Result<AppendOutcome> {
        self.append_with(principal, domain, name, move || {
            let parsed = match format {
                BodyFormat::Ndjson => crate::envelope::parse_ndjson(body.as_ref()),
                BodyFormat::Json => crate::envelope::parse_json(body.as_ref()),
            };
            parsed.map_err(|problems| Error::InvalidEvents { problems })
        })
        .await
    }

    async fn append_with(
        &self,
        principal: &Principal,
        domain: &str,
        name: &str,
        events: impl FnOnce() -> Result<Vec<EventInput>> + Send + 'static,
    ) -> Result<AppendOutcome> {
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
        let compiled = self.compiled(&product).await?;
        // Parsing, validation, sealing and rendering are CPU work: keep them
        // off the async workers, so that a large request does not stall the
        // others (or a health check).
        let prepared = {
            let (compiled, principal) = (compiled.clone(), principal.clone());
            tokio::task::spawn_blocking(move || {
                let events = events()?;
                if events.is_empty() {
                    return Err(Error::NoEvents);
                }
                if events.len() > MAX_EVENTS_PER_REQUEST {
                    return Err(Error::TooManyEvents { count: events.len(), max: MAX_EVENTS_PER_REQUEST });
                }
                prepare(&compiled, &principal, events)
            })
            .await
            .map_err(|e| Error::Config(format!("validating the events failed: {e}")))??
        };
        // Nothing clear reaches the database: each event's classified
        // fields are sealed under its subject's key.
        let subjects: BTreeSet<String> = prepared.iter().flat_map(|p| p.subjects.iter().flatten().cloned()).collect();
        let sealers = self.sealers(domain, &subjects).await?;
        let batch = {
            let compiled = compiled.clone();
            tokio::task::spawn_blocking(move || seal_and_render(&compiled, prepared, &sealers))
                .await
                .map_err(|e| Error::Config(format!("sealing the events failed: {e}")))??
        };
        let product_key = format!("{domain}/{name}");
        let outcome = self.write(&product, domain, &product_key, &compiled.version, batch).await?;
        if let Some(last) = outcome.last_position {
            self.announce(&product_key, last);
        }
        self.keep_statistics_fresh(outcome.appended);
        Ok(outcome)
    }

    async fn write(
        &self,
        product: &ProductRow,
        domain: &str,
        product_key: &str,
        contract_version: &str,
        batch: Batch,
    ) -> Result<AppendOutcome> {
        let sql = match self.backend() {
            Backend::Sqlite => &SQLITE,
            Backend::Postgres => &POSTGRES,
        };
        let Batch { events, mut rows, ids, streams } = batch;
        let mut tx = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l").bind(APPEND_LOCK | product.id).execute(&mut **tx).await?;
        }

        // Idempotency: ids already stored are answered with their original
        // position, if the event is the same; they are not stored again.
        let mut stored: HashMap<Uuid, StoredId> = HashMap::new();
        if let Some(ids) = ids {
            let found = sqlx::query(sql.find_ids).bind(product.id).bind(ids).fetch_all(&mut **tx).await?;
            for row in found {
                let id: Vec<u8> = row.try_get(0)?;
                let entry = StoredId {
                    position: row.try_get(1)?,
                    stream: row.try_get(2)?,
                    version: row.try_get(3)?,
                    event_type: row.try_get(4)?,
                    payload: row.try_get(5)?,
                };
                stored.insert(Uuid::from_slice(&id).unwrap_or_default(), entry);
            }
        }
        for p in &events {
            if let Some(s) = stored.get(&p.id) {
                // A forgotten subject's payload cannot be sealed again to compare: its
                // resend is recognized by id, stream and type.
                let same = s.stream == p.stream
                    && s.event_type == p.event_type
                    && (p.forgotten.is_some() || serde_json::from_str::<Value>(&s.payload).is_ok_and(|v| same_json(&v, &p.payload)));
                if !same {
                    return Err(Error::EventIdConflict { index: p.index, id: p.id, position: s.position });
                }
            }
        }
        let fresh: Vec<&Prepared> = events.iter().filter(|p| p.repeat_of.is_none() && !stored.contains_key(&p.id)).collect();
        // New events about a forgotten subject are refused; the ledger is read
        // again here, under the lock, for a forget that committed meanwhile.
        let subjects: BTreeSet<String> = fresh.iter().flat_map(|p| p.subjects.iter().flatten().cloned()).collect();
        let forgotten = if subjects.is_empty() { BTreeSet::new() } else { self.forgotten_among(&mut **tx, domain, &subjects).await? };
        for p in &fresh {
            if let Some(subject) = p.forgotten.clone().or_else(|| p.subjects.iter().flatten().find(|s| forgotten.contains(*s)).cloned()) {
                return Err(Error::SubjectForgotten { index: p.index, domain: domain.to_owned(), subject });
            }
        }
        if fresh.len() != events.len() {
            rows = rows_json(fresh.iter().copied())?;
        }

        // Optimistic concurrency: each stream's current version.
        let current: String = sqlx::query(sql.stream_versions).bind(product.id).bind(streams).fetch_one(&mut **tx).await?.try_get(0)?;
        let mut versions: HashMap<String, i64> = serde_json::from_str(&current)
            .map_err(|e| Error::Config(format!("the database answered the stream versions with unexpected JSON: {e}")))?;
        let mut assigned: Vec<i64> = Vec::with_capacity(fresh.len());
        for p in &fresh {
            let version = versions.entry(p.stream.clone()).or_insert(0);
            let current = u64::try_from(*version).unwrap_or(0);
            if !p.expected.allows(current) {
                return Err(Error::WrongExpectedVersion {
                    index: p.index,
                    stream: p.stream.clone(),
                    expected: p.expected.describe(),
                    actual: current,
                });
            }
            *version += 1;
            assigned.push(*version);
        }

        // Insert. The statement assigns the same versions as `assigned`: it
        // reads the same current versions, under the same lock, and its
        // SELECT sees the table as it was before the statement (as SQL
        // requires of INSERT ... SELECT; `resend_mixed_with_repeats_and_new_events`
        // and `expected_versions` would catch a database that did not).
        let mut positions: Vec<i64> = Vec::new();
        if !fresh.is_empty() {
            let insert = sqlx::query(sql.insert).bind(product.id).bind(contract_version).bind(now_micros()).bind(product.id).bind(rows);
            positions = match self.backend() {
                // One writer at a time, and AUTOINCREMENT: the rows take the
                // positions after the last one, in order. Asking for them
                // instead (RETURNING) would hand each row from SQLite's
                // thread to this one, which costs more than inserting it.
                Backend::Sqlite => {
                    let inserted = insert.execute(&mut **tx).await?.rows_affected();
                    let last: i64 = sqlx::query("SELECT last_insert_rowid()").fetch_one(&mut **tx).await?.try_get(0)?;
                    if usize::try_from(inserted).ok() != Some(fresh.len()) {
                        return Err(Error::Config(format!("inserted {inserted} rows for {} events", fresh.len())));
                    }
                    (last - fresh.len() as i64 + 1..=last).collect()
                }
                Backend::Postgres => {
                    let mut by_version: HashMap<(String, i64), i64> = HashMap::with_capacity(fresh.len());
                    for row in insert.fetch_all(&mut **tx).await? {
                        by_version.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
                    }
                    fresh
                        .iter()
                        .zip(&assigned)
                        .map(|(p, v)| by_version.get(&(p.stream.clone(), *v)).copied())
                        .collect::<Option<Vec<i64>>>()
                        .ok_or_else(|| Error::Config("the inserted rows do not match the events".into()))?
                }
            };
        }
        let last_position = positions.last().copied();
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

        // One entry per event of the request, in its order.
        let mut placed: HashMap<usize, AppendedEvent> = HashMap::with_capacity(fresh.len());
        for ((p, version), position) in fresh.iter().zip(&assigned).zip(&positions) {
            let e = AppendedEvent {
                index: p.index,
                id: p.id,
                stream: p.stream.clone(),
                version: *version,
                position: *position,
                duplicate: false,
            };
            placed.insert(p.index, e);
        }
        let mut out = Vec::with_capacity(events.len());
        for p in &events {
            let e = if let Some(s) = stored.get(&p.id) {
                AppendedEvent {
                    index: p.index,
                    id: p.id,
                    stream: s.stream.clone(),
                    version: s.version,
                    position: s.position,
                    duplicate: true,
                }
            } else if let Some(first) = p.repeat_of.and_then(|i| out.get(i).cloned()) {
                AppendedEvent { index: p.index, duplicate: true, ..first }
            } else {
                placed.remove(&p.index).ok_or_else(|| Error::Config(format!("event {} was neither stored nor a duplicate", p.index)))?
            };
            out.push(e);
        }
        Ok(AppendOutcome {
            appended: fresh.len(),
            duplicates: events.len() - fresh.len(),
            contract_version: contract_version.to_owned(),
            last_position,
            events: out,
        })
    }

    /// A product's log after `after`, oldest first, at most `limit` events.
    pub async fn read_log(&self, principal: &Principal, domain: &str, name: &str, after: i64, limit: i64) -> Result<LogPage> {
        let product = self.readable(principal, domain, name).await?;
        let limit = limit.clamp(1, MAX_READ);
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE product_id = $1 AND position > $2{} ORDER BY position LIMIT $3", self.horizon());
        let clock = std::time::Instant::now();
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(product.id).bind(after).bind(limit).fetch_all(self.pool()).await?;
        let fetch_seconds = clock.elapsed().as_secs_f64();
        let compiled = self.compiled(&product).await?;
        let mut events = rows.iter().map(|r| stored_event(r, &compiled)).collect::<Result<Vec<_>>>()?;
        self.open_payloads(domain, &compiled, &mut events).await?;
        let next_after = events.last().map_or(after, |e| e.position);
        Ok(LogPage { events, next_after, fetch_seconds, parse_seconds: 0.0 })
    }

    /// Opens the sealed fields of events read by a member of the domain: a
    /// forgotten subject's fields read as null.
    async fn open_payloads(&self, domain: &str, compiled: &crate::compiled::Compiled, events: &mut [StoredEvent]) -> Result<()> {
        let plan_of = |e: &StoredEvent| {
            let version = if e.upcast_error.is_none() { e.schema_version } else { e.stored_schema_version };
            compiled.plan(&e.event_type, u32::try_from(version).unwrap_or(0)).filter(|p| p.seals_anything())
        };
        let mut opener = self.opener(domain);
        let mut tokens = Vec::new();
        for e in events.iter_mut() {
            if let Some(plan) = plan_of(e) {
                plan.visit(&mut e.payload, &mut |v| {
                    tokens.extend(crate::keys::tokens_in(v));
                    Ok::<_, std::convert::Infallible>(())
                })
                .unwrap_or_else(|never| match never {});
            }
        }
        opener.prepare(tokens.iter()).await?;
        for e in events.iter_mut() {
            if let Some(plan) = plan_of(e) {
                plan.visit(&mut e.payload, &mut |v| {
                    if !opener.open_prepared(v) {
                        *v = Value::Null;
                    }
                    Ok::<_, std::convert::Infallible>(())
                })
                .unwrap_or_else(|never| match never {});
            }
        }
        Ok(())
    }

    /// The platform's own read of a product's log (the projector's): the
    /// events after `after` and up to `until`, oldest first, at most `limit`
    /// (up to [`MAX_PLATFORM_READ`]), upcast to the current contract. No
    /// principal: what is read here reaches nobody unmasked.
    pub async fn log_after(&self, domain: &str, name: &str, after: i64, until: i64, limit: i64) -> Result<LogPage> {
        let raw = self.log_after_raw(domain, name, after, until, limit).await?;
        let clock = std::time::Instant::now();
        let (next_after, fetch_seconds) = (raw.next_after, raw.fetch_seconds);
        let events = raw.into_events();
        Ok(LogPage { events, next_after, fetch_seconds, parse_seconds: clock.elapsed().as_secs_f64() })
    }

    /// [`Store::log_after`], the events as stored: their payloads and
    /// metadata not parsed yet (see [`RawPage`]).
    pub async fn log_after_raw(&self, domain: &str, name: &str, after: i64, until: i64, limit: i64) -> Result<RawPage> {
        let product = self.product_row(domain, name).await?;
        let limit = limit.clamp(1, MAX_PLATFORM_READ);
        let clock = std::time::Instant::now();
        let events = match &self.inner.bulk {
            Some(bulk) => bulk.read(product.id, after, until, limit).await?,
            None => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM events WHERE product_id = $1 AND position > $2 AND position <= $3{} ORDER BY position LIMIT $4",
                    self.horizon()
                );
                let rows =
                    sqlx::query(AssertSqlSafe(sql)).bind(product.id).bind(after).bind(until).bind(limit).fetch_all(self.pool()).await?;
                rows.iter().map(raw_event).collect::<Result<Vec<_>>>()?
            }
        };
        let fetch_seconds = clock.elapsed().as_secs_f64();
        let compiled = self.compiled(&product).await?;
        let next_after = events.last().map_or(after, |e| e.position);
        Ok(RawPage { events, next_after, fetch_seconds, compiled })
    }

    /// How far behind `after` the product's log is: the events after it,
    /// and when the oldest of them was recorded (microseconds since the
    /// epoch), if there is one.
    pub async fn backlog(&self, domain: &str, name: &str, after: i64) -> Result<(i64, Option<i64>)> {
        let product = self.product_row(domain, name).await?;
        let row = sqlx::query("SELECT COUNT(*), MIN(recorded_at) FROM events WHERE product_id = $1 AND position > $2")
            .bind(product.id)
            .bind(after)
            .fetch_one(self.pool())
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// The platform's own read of one stream: its events up to log
    /// position `until`, oldest first (at most [`MAX_PLATFORM_READ`]).
    pub async fn stream_until(&self, domain: &str, name: &str, stream: &str, until: i64) -> Result<Vec<StoredEvent>> {
        let product = self.product_row(domain, name).await?;
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE product_id = $1 AND stream = $2 AND position <= $3 ORDER BY position LIMIT $4");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(product.id)
            .bind(stream)
            .bind(until)
            .bind(MAX_PLATFORM_READ)
            .fetch_all(self.pool())
            .await?;
        let compiled = self.compiled(&product).await?;
        rows.iter().map(|r| stored_event(r, &compiled)).collect()
    }

    /// The position of the product's last event recorded at or before
    /// `micros` (microseconds since the epoch); 0 if there is none.
    pub async fn position_at(&self, domain: &str, name: &str, micros: i64) -> Result<i64> {
        let product = self.product_row(domain, name).await?;
        let sql = format!("SELECT COALESCE(MAX(position), 0) FROM events WHERE product_id = $1 AND recorded_at <= $2{}", self.horizon());
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(product.id).bind(micros).fetch_one(self.pool()).await?.try_get(0)?)
    }

    /// The product's current contract and its version.
    pub async fn current_contract(&self, domain: &str, name: &str) -> Result<tessera_contract::Contract> {
        let product = self.product_row(domain, name).await?;
        Ok(self.compiled(&product).await?.contract.clone())
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
        let mut events = rows.iter().map(|r| stored_event(r, &compiled)).collect::<Result<Vec<_>>>()?;
        self.open_payloads(domain, &compiled, &mut events).await?;
        Ok(events)
    }

    /// The position of the product's newest event (0 for an empty log).
    pub async fn head(&self, domain: &str, name: &str) -> Result<i64> {
        let product = self.product_row(domain, name).await?;
        let sql = format!("SELECT COALESCE(MAX(position), 0) FROM events WHERE product_id = $1{}", self.horizon());
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(product.id).fetch_one(self.pool()).await?.try_get(0)?)
    }

    /// Events recorded per day and type since `since` (microseconds since
    /// the epoch): `(day, event type, count)`, day as days since the epoch,
    /// oldest first.
    pub async fn event_volume(&self, domain: &str, name: &str, since: i64) -> Result<Vec<(i64, String, i64)>> {
        let product = self.product_row(domain, name).await?;
        let sql = format!(
            "SELECT recorded_at / 86400000000 AS day, event_type, COUNT(*) FROM events \
             WHERE product_id = $1 AND recorded_at >= $2{} GROUP BY recorded_at / 86400000000, event_type ORDER BY day, event_type",
            self.horizon()
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(product.id).bind(since).fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
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
    Ok(from_raw(raw_event(r)?, compiled))
}

/// Whether two payloads are the same: equal, except that numbers compare
/// by value (`19.90` is `19.9`; a payload stored before numbers were kept
/// as written holds them as a float printed them).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let integer = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            x == y
                || match (integer(x), integer(y)) {
                    (Some(i), Some(j)) => i == j,
                    (None, None) => x.as_f64().is_some() && x.as_f64() == y.as_f64(),
                    _ => false,
                }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w))),
        _ => a == b,
    }
}

/// A row of [`COLUMNS`].
fn raw_event(r: &sqlx::any::AnyRow) -> Result<RawEvent> {
    Ok(RawEvent {
        position: r.try_get(0)?,
        stream: r.try_get(1)?,
        version: r.try_get(2)?,
        id: r.try_get(3)?,
        event_type: r.try_get(4)?,
        schema_version: r.try_get(5)?,
        payload: r.try_get(6)?,
        metadata: r.try_get(7)?,
        contract_version: r.try_get(8)?,
        recorded_at: r.try_get(9)?,
    })
}

/// An event as stored, its payload and metadata parsed and the payload
/// upcast to the current schema version of its type.
fn from_raw(raw: RawEvent, compiled: &crate::compiled::Compiled) -> StoredEvent {
    let RawEvent {
        position,
        stream,
        version,
        id,
        event_type,
        schema_version: stored_schema_version,
        payload,
        metadata,
        contract_version,
        recorded_at,
    } = raw;
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
    StoredEvent {
        position,
        stream,
        version,
        id: Uuid::from_slice(&id).unwrap_or_default(),
        event_type,
        schema_version,
        stored_schema_version,
        payload,
        metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
        contract_version,
        recorded_at: rfc3339(recorded_at),
        upcast_error,
    }
}

/// Validates every event (all problems at once, up to a limit) and finds
/// the subject of each that holds personal data.
fn prepare(compiled: &crate::compiled::Compiled, principal: &Principal, events: Vec<EventInput>) -> Result<Vec<Prepared>> {
    let mut problems = Vec::new();
    let mut prepared: Vec<Prepared> = Vec::with_capacity(events.len());
    let mut first_with_id: HashMap<Uuid, usize> = HashMap::new();
    for (index, event) in events.into_iter().enumerate() {
        let version = match compiled.check(index, &event) {
            Ok(version) => version,
            Err(p) => {
                problems.push(p);
                if problems.len() >= MAX_PROBLEMS {
                    break;
                }
                continue;
            }
        };
        // Fields an upcaster removes whose subject is unknown are not kept.
        let mut event = event;
        if let Some(plan) = compiled.plan(&event.event_type, version) {
            plan.drop_removed(&mut event.payload);
        }
        let (mut repeat_of, mut remember) = (None, None);
        if let Some(id) = event.id {
            match first_with_id.get(&id).map(|&i| &prepared[i]) {
                Some(first) if first.stream != event.stream || first.event_type != event.event_type || first.payload != event.payload => {
                    problems.push(EventProblem {
                        index,
                        line: event.line,
                        pointer: "/id".into(),
                        code: "duplicate_id",
                        message: format!(
                            "id {id} is also the id of event {} of this request, with other content; give each event its own id",
                            first.index
                        ),
                    });
                    continue;
                }
                Some(first) => repeat_of = Some(first.index),
                // Remembered once the event is prepared (below): one refused
                // further on must not stand for the id.
                None => remember = Some(id),
            }
        }
        // Only an event that holds personal values needs a subject to seal them under.
        let plan = compiled.plan(&event.event_type, version).filter(|p| p.seals_anything());
        let subjects = match plan.map(|plan| (plan, plan.subject_ids(&event.payload))) {
            None => Vec::new(),
            Some((_, Ok(ids))) => match ids.iter().flatten().find(|id| id.len() > 256 || id.chars().any(char::is_control)) {
                None => ids,
                Some(bad) => {
                    let at = plan.and_then(|p| ids.iter().position(|i| i.as_ref() == Some(bad)).and_then(|i| p.subjects.get(i)));
                    problems.push(EventProblem {
                        index,
                        line: event.line,
                        pointer: at.map(|s| format!("/payload/{}", s.0.join("/"))).unwrap_or_default(),
                        code: "subject_invalid",
                        message:
                            "the subject's identifier must be 1 to 256 characters without control characters, so that it can be forgotten"
                                .into(),
                    });
                    continue;
                }
            },
            Some((plan, Err(missing))) => {
                let path = missing.and_then(|i| plan.subjects.get(i));
                problems.push(EventProblem {
                    index,
                    line: event.line,
                    pointer: path.map(|s| format!("/payload/{}", s.0.join("/"))).unwrap_or_else(|| "/payload".into()),
                    code: "subject_missing",
                    message: format!(
                        "the `{}` payload holds personal data but no subject to seal it under{}; give the subject's identifier (a non-empty string or integer)",
                        event.event_type,
                        path.map(|s| format!(" at `{s}`")).unwrap_or_default()
                    ),
                });
                continue;
            }
        };
        let mut metadata = event.metadata;
        metadata.insert("principal".into(), Value::String(principal.name.clone()));
        prepared.push(Prepared {
            index,
            id: event.id.unwrap_or_else(Uuid::now_v7),
            explicit_id: event.id.is_some(),
            stream: event.stream,
            event_type: event.event_type,
            schema_version: i64::from(version),
            payload: event.payload,
            metadata,
            expected: event.expected,
            repeat_of,
            subjects,
            forgotten: None,
        });
        if let Some(id) = remember {
            first_with_id.insert(id, prepared.len() - 1);
        }
    }
    if !problems.is_empty() {
        return Err(Error::InvalidEvents { problems });
    }
    Ok(prepared)
}

/// Seals every event's classified fields under its subject's key, and
/// renders the parameters of the write statements.
fn seal_and_render(compiled: &crate::compiled::Compiled, mut prepared: Vec<Prepared>, sealers: &crate::keys::Sealers) -> Result<Batch> {
    for p in &mut prepared {
        if p.subjects.iter().all(Option::is_none) {
            continue;
        }
        let version = u32::try_from(p.schema_version).unwrap_or(0);
        let Some(plan) = compiled.plan(&p.event_type, version) else { continue };
        let (subjects, index) = (&p.subjects, p.index);
        let mut forgotten = None;
        plan.apply(&mut p.payload, &mut |subject, v| {
            let id = subject.and_then(|i| subjects.get(i)).and_then(Option::as_ref);
            match id.map(|id| (id, sealers.get(id))) {
                Some((_, Some(Some(sealer)))) => Ok(Value::String(sealer.seal(v).to_string())),
                // Forgotten: the payload is never stored (see `write`); drop its values now.
                Some((id, Some(None))) => {
                    forgotten = Some(id.clone());
                    Ok(Value::Null)
                }
                _ => Err(Error::Config(format!("no data key was made for a subject of event {index}"))),
            }
        })?;
        p.forgotten = forgotten;
    }
    let rows = rows_json(prepared.iter().filter(|p| p.repeat_of.is_none()))?;
    let explicit: Vec<String> = prepared.iter().filter(|p| p.explicit_id).map(|p| p.id.simple().to_string()).collect();
    let ids = if explicit.is_empty() { None } else { Some(to_json(&explicit)?) };
    let mut seen = HashSet::new();
    let streams: Vec<&str> = prepared.iter().map(|p| p.stream.as_str()).filter(|s| seen.insert(*s)).collect();
    let streams = to_json(&streams)?;
    Ok(Batch { events: prepared, rows, ids, streams })
}

/// The rows of the insert statement, as a JSON array of
/// `[stream, ordinal in its stream, id (hex), type, schema version, payload, metadata]`.
/// Payload and metadata are JSON texts inside JSON strings, stored as they
/// are: PostgreSQL cannot unpack a `\u0000` escape into text, so it must
/// never see one outside a string.
fn rows_json<'a>(events: impl Iterator<Item = &'a Prepared>) -> Result<String> {
    let mut ordinals: HashMap<&str, i64> = HashMap::new();
    let mut rows = Vec::new();
    for p in events {
        let ordinal = ordinals.entry(p.stream.as_str()).or_insert(0);
        *ordinal += 1;
        let (payload, metadata) = (to_json(&p.payload)?, to_json(&p.metadata)?);
        rows.push((&p.stream, *ordinal, p.id.simple().to_string(), &p.event_type, p.schema_version, payload, metadata));
    }
    to_json(&rows)
}

fn to_json(value: &impl Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Config(format!("cannot render the events as JSON: {e}")))
}
