//! The platform's bulk read of the log on SQLite (the projector's): a
//! connection of its own to the same file through SQLite's C API
//! (rusqlite), one prepared statement, rows read straight into
//! [`RawEvent`]s on a blocking thread.
//!
//! The general path (sqlx's `Any` driver) copies every column of every row
//! into a row object, sends each row across a channel between threads and
//! converts it again; for a read of 50,000 events that dominates the read.
//! This one is read-only (`query_only`), so it can never write; it sees
//! what is committed (WAL snapshots), like any other reader.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// An event's stored columns, before its payload is parsed.
pub(crate) struct RawEvent {
    pub position: i64,
    pub stream: String,
    pub version: i64,
    pub id: Vec<u8>,
    pub event_type: String,
    pub schema_version: i64,
    pub payload: String,
    pub metadata: String,
    pub contract_version: String,
    pub recorded_at: i64,
}

/// The bulk reader of one SQLite database file.
#[derive(Debug)]
pub(crate) struct BulkReader {
    path: PathBuf,
    /// Opened on first use, kept for the next read (its page cache stays warm).
    conn: Mutex<Option<rusqlite::Connection>>,
}

const SELECT: &str = "SELECT position, stream, stream_version, event_id, event_type, schema_version, payload, metadata, \
                      contract_version, recorded_at FROM events \
                      WHERE product_id = ?1 AND position > ?2 AND position <= ?3 ORDER BY position LIMIT ?4";

impl BulkReader {
    /// The reader of the database at `url` (`sqlite://PATH?...`); `None` for
    /// an in-memory database, which no second connection can see.
    pub fn for_url(url: &str) -> Option<Arc<Self>> {
        // The file as sqlx opens it (percent-decoded, options stripped).
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url).ok()?;
        let path = options.get_filename();
        if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" || url.contains("mode=memory") {
            return None;
        }
        Some(Arc::new(Self { path: path.to_path_buf(), conn: Mutex::new(None) }))
    }

    /// The events of product `product` after `after` and up to `until`,
    /// oldest first, at most `limit`.
    pub async fn read(self: &Arc<Self>, product: i64, after: i64, until: i64, limit: i64) -> Result<Vec<RawEvent>> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.read_blocking(product, after, until, limit))
            .await
            .map_err(|e| Error::Config(format!("the log reader stopped: {e}")))?
    }

    fn read_blocking(&self, product: i64, after: i64, until: i64, limit: i64) -> Result<Vec<RawEvent>> {
        let failed = |e: rusqlite::Error| Error::Config(format!("reading the log from {}: {e}", self.path.display()));
        // A panic while reading leaves nothing half-done in the connection:
        // take it back, and start from a fresh one.
        let mut guard = self.conn.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        });
        if guard.is_none() {
            let conn = rusqlite::Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(failed)?;
            // query_only: this connection cannot write, whatever it is asked.
            conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 30000; PRAGMA cache_size = -65536;").map_err(failed)?;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_ref() else { return Ok(Vec::new()) };
        let result = (|| {
            let mut statement = conn.prepare(SELECT)?;
            let mut rows = statement.query(rusqlite::params![product, after, until, limit])?;
            let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(100_000));
            while let Some(r) = rows.next()? {
                out.push(RawEvent {
                    position: r.get(0)?,
                    stream: r.get(1)?,
                    version: r.get(2)?,
                    id: r.get(3)?,
                    event_type: r.get(4)?,
                    schema_version: r.get(5)?,
                    payload: r.get(6)?,
                    metadata: r.get(7)?,
                    contract_version: r.get(8)?,
                    recorded_at: r.get(9)?,
                });
            }
            Ok::<_, rusqlite::Error>(out)
        })();
        if result.is_err() {
            // Start from a fresh connection next time.
            *guard = None;
        }
        result.map_err(failed)
    }
}
