//! The platform's bulk read of the log (the projector's), rows read
//! straight into [`RawEvent`]s. On SQLite: a connection of its own to the
//! same file through SQLite's C API (rusqlite), one prepared statement, on
//! a blocking thread. On PostgreSQL: `COPY (SELECT …) TO STDOUT` in the
//! binary format on a small pool of its own, decoded here.
//!
//! The general path (sqlx's `Any` driver) copies every column of every row
//! into a row object, sends each row across a channel between threads and
//! converts it again; for a read of 50,000 events that dominates the read.
//! This one is read-only (`query_only`), so it can never write; it sees
//! what is committed (WAL snapshots), like any other reader.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;

use crate::error::{Error, Result};

/// An event's stored columns, before its payload and metadata are parsed
/// (see [`crate::log::RawPage`]).
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub position: i64,
    pub stream: String,
    pub version: i64,
    pub id: Vec<u8>,
    pub event_type: String,
    pub schema_version: i64,
    pub payload: String,
    pub metadata: String,
    pub contract_version: String,
    /// Microseconds since the epoch.
    pub recorded_at: i64,
}

impl RawEvent {
    /// The event's id (the nil id for stored bytes that are not one, as
    /// [`crate::StoredEvent`] reads them).
    pub fn id(&self) -> uuid::Uuid {
        uuid::Uuid::from_slice(&self.id).unwrap_or_default()
    }

    /// When it was recorded, as [`crate::StoredEvent::recorded_at`] gives it.
    pub fn recorded_at_text(&self) -> String {
        crate::rfc3339(self.recorded_at)
    }
}

/// The bulk reader of a store's database.
#[derive(Debug)]
pub(crate) enum Bulk {
    Sqlite(Arc<BulkReader>),
    Postgres(PgCopyReader),
}

impl Bulk {
    /// The events of product `product` after `after` and up to `until`,
    /// oldest first, at most `limit`.
    pub async fn read(&self, product: i64, after: i64, until: i64, limit: i64) -> Result<Vec<RawEvent>> {
        match self {
            Bulk::Sqlite(r) => r.read(product, after, until, limit).await,
            Bulk::Postgres(r) => r.read(product, after, until, limit).await,
        }
    }
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

/// The bulk reader of a PostgreSQL database: `COPY … TO STDOUT (FORMAT
/// binary)` of the same query as the general read (the same safe horizon),
/// every column cast to the type decoded here.
#[derive(Debug)]
pub(crate) struct PgCopyReader {
    pool: sqlx::PgPool,
}

/// The binary COPY format's signature (then flags and a header extension).
const PGCOPY: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl PgCopyReader {
    /// A reader of the database at `url`; it connects on first use.
    pub fn new(url: &str) -> Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy(url)
            .map_err(|e| Error::Config(format!("the log reader's connection settings: {e}")))?;
        Ok(Self { pool })
    }

    async fn read(&self, product: i64, after: i64, until: i64, limit: i64) -> Result<Vec<RawEvent>> {
        // A COPY left half-read would leave its connection out of step with
        // the protocol for every later use: it is read to the end on a task
        // of its own, whatever happens to the caller, and a connection whose
        // COPY failed is closed rather than pooled.
        let pool = self.pool.clone();
        tokio::spawn(async move { Self::copy(&pool, product, after, until, limit).await })
            .await
            .map_err(|e| Error::Config(format!("the log reader stopped: {e}")))?
    }

    async fn copy(pool: &sqlx::PgPool, product: i64, after: i64, until: i64, limit: i64) -> Result<Vec<RawEvent>> {
        // COPY takes no parameters; these are integers, written as such.
        let statement = format!(
            "COPY (SELECT position::int8, stream::text, stream_version::int8, event_id::bytea, event_type::text, \
             schema_version::int8, payload::text, metadata::text, contract_version::text, recorded_at::int8 FROM events \
             WHERE product_id = {product} AND position > {after} AND position <= {until} \
             AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY position LIMIT {limit}) TO STDOUT (FORMAT binary)"
        );
        let mut conn = pool.acquire().await?;
        let read = async {
            let mut stream = conn.copy_out_raw(&statement).await?;
            let mut data = Vec::new();
            while let Some(chunk) = stream.try_next().await? {
                data.extend_from_slice(&chunk);
            }
            Ok::<_, sqlx::Error>(data)
        }
        .await;
        let data = match read {
            Ok(data) => data,
            Err(e) => {
                conn.close_on_drop();
                return Err(e.into());
            }
        };
        decode_copy(&data, usize::try_from(limit).unwrap_or(0)).map_err(|e| Error::Config(format!("reading the log (COPY): {e}")))
    }
}

/// The rows of a binary COPY of the bulk query.
fn decode_copy(data: &[u8], capacity: usize) -> std::result::Result<Vec<RawEvent>, String> {
    let mut r = Cursor { data, at: 0 };
    if r.take(PGCOPY.len())? != PGCOPY {
        return Err("not the binary COPY format".into());
    }
    let _flags = r.i32()?;
    let extension = usize::try_from(r.i32()?).map_err(|_| "a negative header extension length")?;
    r.take(extension)?;
    let mut out = Vec::with_capacity(capacity.min(100_000));
    loop {
        let fields = r.i16()?;
        if fields == -1 {
            return Ok(out);
        }
        if fields != 10 {
            return Err(format!("a row of {fields} fields where 10 were asked for"));
        }
        out.push(RawEvent {
            position: r.int8()?,
            stream: r.text()?,
            version: r.int8()?,
            id: r.field()?.to_vec(),
            event_type: r.text()?,
            schema_version: r.int8()?,
            payload: r.text()?,
            metadata: r.text()?,
            contract_version: r.text()?,
            recorded_at: r.int8()?,
        });
    }
}

/// Reads a binary COPY stream (big-endian integers, length-prefixed fields).
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| format!("the data ends at byte {}", self.data.len()))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn i16(&mut self) -> std::result::Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().map_err(|_| "two bytes")?))
    }

    fn i32(&mut self) -> std::result::Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().map_err(|_| "four bytes")?))
    }

    /// One field's bytes (every column of the query is NOT NULL).
    fn field(&mut self) -> std::result::Result<&'a [u8], String> {
        let at = self.at;
        let len = usize::try_from(self.i32()?).map_err(|_| format!("a null field at byte {at}"))?;
        self.take(len)
    }

    fn int8(&mut self) -> std::result::Result<i64, String> {
        let at = self.at;
        let bytes: [u8; 8] = self.field()?.try_into().map_err(|_| format!("a bigint field at byte {at} that is not 8 bytes"))?;
        Ok(i64::from_be_bytes(bytes))
    }

    fn text(&mut self) -> std::result::Result<String, String> {
        let at = self.at;
        String::from_utf8(self.field()?.to_vec()).map_err(|e| format!("a text field at byte {at} that is not UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&i32::try_from(bytes.len()).expect("len").to_be_bytes());
        out.extend_from_slice(bytes);
    }

    fn copy(rows: usize) -> Vec<u8> {
        let mut out = PGCOPY.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        for i in 0..rows {
            out.extend_from_slice(&10i16.to_be_bytes());
            field(&mut out, &(i as i64 + 1).to_be_bytes());
            field(&mut out, "Ö-1".as_bytes());
            field(&mut out, &7i64.to_be_bytes());
            field(&mut out, &[9u8; 16]);
            field(&mut out, b"OrderPlaced");
            field(&mut out, &2i64.to_be_bytes());
            field(&mut out, br#"{"a":"\u00e9"}"#);
            field(&mut out, b"{}");
            field(&mut out, b"1.0.0");
            field(&mut out, &(-5i64).to_be_bytes());
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn binary_copy_rows_decode_column_by_column() {
        let rows = decode_copy(&copy(3), 3).expect("decodes");
        assert_eq!(rows.len(), 3);
        let r = &rows[2];
        assert_eq!((r.position, r.stream.as_str(), r.version, r.id.as_slice()), (3, "Ö-1", 7, &[9u8; 16][..]));
        assert_eq!((r.event_type.as_str(), r.schema_version, r.payload.as_str()), ("OrderPlaced", 2, r#"{"a":"\u00e9"}"#));
        assert_eq!((r.metadata.as_str(), r.contract_version.as_str(), r.recorded_at), ("{}", "1.0.0", -5));
    }

    #[test]
    fn a_cut_or_foreign_copy_stream_is_an_error_never_a_panic() {
        let whole = copy(2);
        for end in 0..whole.len() - 1 {
            assert!(decode_copy(&whole[..end], 2).is_err(), "cut at {end}");
        }
        let mut foreign = whole.clone();
        foreign[0] = b'X';
        assert!(decode_copy(&foreign, 2).unwrap_err().contains("not the binary COPY format"));
        let mut null = copy(0);
        null.truncate(null.len() - 2);
        null.extend_from_slice(&10i16.to_be_bytes());
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(decode_copy(&null, 1).unwrap_err().contains("a null field"));
    }
}
