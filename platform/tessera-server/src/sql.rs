//! `POST /api/v1/sql`: one read-only query, answered in the format the
//! client accepts, streamed batch by batch (never buffered whole):
//!
//! - `application/json` (the default): `{"columns": [{"name", "type"}],
//!   "rows": [[…], …], "row_count", "truncated", "elapsed_ms"}`. An error
//!   after the first rows ends the body with `"error": {"code", "message"}`
//!   in place of the totals.
//! - `text/csv`: a header line, then the rows.
//! - `application/vnd.apache.arrow.stream`: the Arrow IPC stream format.
//! - `application/vnd.apache.parquet`: a Parquet file.
//!
//! The row limit is announced in the `x-tessera-row-limit` header; JSON
//! says `"truncated": true` when the result was cut there. Errors before
//! the first row are JSON with a 4xx status.

use std::io::Write;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tessera_query::{ErrorKind, QueryError, Rows};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// The result formats, by media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    pub const MEDIA_TYPES: [(&'static str, Format); 4] = [
        ("application/json", Format::Json),
        ("text/csv", Format::Csv),
        ("application/vnd.apache.arrow.stream", Format::Arrow),
        ("application/vnd.apache.parquet", Format::Parquet),
    ];

    fn media_type(self) -> &'static str {
        Self::MEDIA_TYPES.iter().find(|(_, f)| *f == self).map(|(m, _)| *m).unwrap_or("application/json")
    }

    /// The first acceptable format of an `Accept` header (JSON when absent or `*/*`).
    fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
        let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(Format::Json) };
        for part in accept.split(',') {
            let media = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if media == "*/*" || media == "application/*" || media.is_empty() {
                return Ok(Format::Json);
            }
            if let Some((_, f)) = Self::MEDIA_TYPES.iter().find(|(m, _)| *m == media) {
                return Ok(*f);
            }
        }
        let offered: Vec<&str> = Self::MEDIA_TYPES.iter().map(|(m, _)| *m).collect();
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            format!("cannot answer in `{accept}`; ask for one of: {}", offered.join(", ")),
        ))
    }
}

/// `POST /sql` and the audit log.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/sql", axum::routing::post(post_sql)).route("/audit", axum::routing::get(audit_log))
}

/// A query error as an HTTP error.
pub fn query_error(e: &QueryError) -> ApiError {
    let status = match e.kind {
        ErrorKind::Syntax | ErrorKind::Invalid | ErrorKind::Execution | ErrorKind::TooComplex => StatusCode::BAD_REQUEST,
        ErrorKind::ReadOnly => StatusCode::FORBIDDEN,
        ErrorKind::Memory | ErrorKind::Timeout => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Busy => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let error = ApiError::new(status, e.kind.code(), e.message.clone());
    if e.kind == ErrorKind::Busy { error.retry_after(1) } else { error }
}

pub(crate) async fn post_sql(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let engine = state.engine.clone().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sql_unavailable", "this server does not serve SQL: it has no warehouse configured")
    })?;
    let format = Format::negotiate(&headers)?;
    // The SQL text is bounded (query_max_sql_bytes): a body far larger is
    // refused before it is buffered (JSON escapes at most 6 bytes a byte).
    let limit = engine.limits().bounds.max_sql_bytes.saturating_mul(6).saturating_add(4096).min(state.max_body_bytes);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the request body is larger than {limit} bytes; the SQL text may be at most {} bytes",
                engine.limits().bounds.max_sql_bytes
            ),
        )
        .with("limit", limit)
    })?;
    let request: SqlRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body must be {{\"sql\": \"SELECT …\"}}: {e}"))
            .with("line", e.line())
            .with("column", e.column())
    })?;
    let started = std::time::Instant::now();
    let mut rows = engine.query(&caller, "http", &request.sql).await.map_err(|e| query_error(&e))?;
    if format == Format::Csv
        && let Some(nested) = rows.schema().fields().iter().find(|f| f.data_type().is_nested())
    {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "csv_nested_column",
            format!(
                "column `{}` is a {} and CSV holds flat values only: select its fields (`{}['…']`) or ask for JSON, Arrow or Parquet",
                nested.name(),
                nested.data_type(),
                nested.name()
            ),
        ));
    }
    // The first batch before the status line: most failures (limits,
    // runtime errors) happen before any row and deserve a 4xx.
    let first = match rows.next().await {
        Some(Err(e)) => return Err(query_error(&e)),
        Some(Ok(batch)) => Some(batch),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let max_rows = rows.max_rows();
    tokio::spawn(async move {
        let writer = ChunkWriter { tx: tx.clone(), buffer: Vec::with_capacity(CHUNK), deadline: rows.deadline() };
        let outcome = write_result(writer, rows, first, format, started).await;
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "a query result ended before its last row");
            // Ends the body abruptly: the client sees an incomplete response, never a silently short one.
            let _ = tx.send(Err(std::io::Error::other(e))).await;
        }
    });
    let body = Body::from_stream(tokio_stream(rx));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.media_type()));
    if let Ok(v) = HeaderValue::from_str(&max_rows.to_string()) {
        headers.insert("x-tessera-row-limit", v);
    }
    if format == Format::Parquet {
        headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"result.parquet\""));
    }
    Ok(response)
}

fn tokio_stream(mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Bytes are sent in chunks of about this size.
const CHUNK: usize = 64 * 1024;

/// A `Write` that hands full chunks to the response body. Writes block
/// (back-pressure) while the client is slow; it runs on a blocking-safe
/// path because chunks are only sent from `flush_chunk`, awaited.
struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
    /// The query's deadline: a client that does not read by then loses the
    /// result (and the query's slot goes to someone else).
    deadline: tokio::time::Instant,
}

impl ChunkWriter {
    /// Sends what is buffered once it is a chunk (or `always`).
    async fn flush_chunk(&mut self, always: bool) -> Result<(), String> {
        if self.buffer.len() >= CHUNK || (always && !self.buffer.is_empty()) {
            let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK)));
            match tokio::time::timeout_at(self.deadline, self.tx.send(Ok(chunk))).await {
                Ok(sent) => sent.map_err(|_| "the client went away".to_owned())?,
                Err(_) => return Err("the client did not read the result within the query's time limit".to_owned()),
            }
        }
        Ok(())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `batch` with its string and binary views holding only their own
/// values: a view array cut from a larger one (a filtered page) still
/// points into that page's buffers, which the IPC format would send whole.
/// Compacted, a result's bytes depend on its values only.
fn compact_views(batch: &RecordBatch) -> Result<RecordBatch, String> {
    use arrow::array::{Array as _, AsArray as _};
    if !batch.columns().iter().any(|c| matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView)) {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as arrow::array::ArrayRef,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as arrow::array::ArrayRef,
            _ => Arc::clone(c),
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| e.to_string())
}

/// A shared buffer for writers that take ownership of their sink (Arrow
/// IPC, Parquet): bytes they write are moved into the chunk writer after
/// each batch.
#[derive(Clone, Default)]
struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn take(&self) -> Vec<u8> {
        self.0.lock().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default()
    }
}

/// A column type as the API names it: the contract's names where they apply.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "uint64".into(),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "float64".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        DataType::Struct(_) => "struct".into(),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => format!("list<{}>", type_name(f.data_type())),
        DataType::Null => "null".into(),
        other => other.to_string().to_ascii_lowercase(),
    }
}

pub fn columns_json(schema: &SchemaRef) -> serde_json::Value {
    serde_json::Value::Array(schema.fields().iter().map(|f| json!({"name": f.name(), "type": type_name(f.data_type())})).collect())
}

/// A result's encoder in one of the formats.
enum Encoder {
    Json { first_row: bool, options: arrow::json::writer::EncoderOptions },
    Csv,
    Arrow { writer: arrow::ipc::writer::StreamWriter<Shared>, sink: Shared },
    Parquet { writer: parquet::arrow::ArrowWriter<Shared>, sink: Shared },
}

impl Encoder {
    /// Starts a result: what comes before the first row goes into `out`.
    fn start(format: Format, schema: &SchemaRef, out: &mut Vec<u8>) -> Result<Self, String> {
        Ok(match format {
            Format::Json => {
                out.extend_from_slice(format!("{{\"columns\":{},\"rows\":[", columns_json(schema)).as_bytes());
                Self::Json { first_row: true, options: arrow::json::writer::EncoderOptions::default().with_explicit_nulls(true) }
            }
            Format::Csv => {
                let header: Vec<String> = schema.fields().iter().map(|f| csv_cell(f.name())).collect();
                out.extend_from_slice(header.join(",").as_bytes());
                out.push(b'\n');
                Self::Csv
            }
            Format::Arrow => {
                let sink = Shared::default();
                let writer = arrow::ipc::writer::StreamWriter::try_new(sink.clone(), schema).map_err(|e| e.to_string())?;
                out.extend(sink.take());
                Self::Arrow { writer, sink }
            }
            Format::Parquet => {
                let sink = Shared::default();
                let writer = parquet::arrow::ArrowWriter::try_new(sink.clone(), Arc::clone(schema), None).map_err(|e| e.to_string())?;
                Self::Parquet { writer, sink }
            }
        })
    }

    /// Encodes one batch into `out`.
    fn write(&mut self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Self::Json { first_row, options } => json_rows(batch, options, first_row, out),
            Self::Csv => arrow::csv::WriterBuilder::new().with_header(false).build(&mut *out).write(batch).map_err(|e| e.to_string()),
            Self::Arrow { writer, sink } => {
                writer.write(&compact_views(batch)?).map_err(|e| e.to_string())?;
                out.extend(sink.take());
                Ok(())
            }
            Self::Parquet { writer, sink } => {
                writer.write(batch).map_err(|e| e.to_string())?;
                // Row groups are written out as they fill; what they wrote goes now.
                out.extend(sink.take());
                Ok(())
            }
        }
    }

    /// Ends the result. JSON ends with its totals, or with the error that
    /// stopped the query; the binary formats and CSV have no place for an
    /// error, so the body breaks off instead (never a silently short result).
    fn finish(self, outcome: Result<(), QueryError>, rows: &Rows, started: std::time::Instant, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Self::Json { .. } => {
                let tail = match outcome {
                    Ok(()) => json!({
                        "row_count": rows.row_count(),
                        "truncated": rows.truncated(),
                        "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
                    }),
                    Err(e) => json!({ "error": { "code": e.kind.code(), "message": e.message } }),
                };
                // `{"row_count":…}` → `],"row_count":…}`
                out.extend_from_slice(b"],");
                out.extend_from_slice(&tail.to_string().as_bytes()[1..]);
                Ok(())
            }
            Self::Csv => outcome.map_err(|e| e.message),
            Self::Arrow { mut writer, sink } => {
                outcome.map_err(|e| e.message)?;
                writer.finish().map_err(|e| e.to_string())?;
                out.extend(sink.take());
                Ok(())
            }
            Self::Parquet { writer, sink } => {
                outcome.map_err(|e| e.message)?;
                writer.close().map_err(|e| e.to_string())?;
                out.extend(sink.take());
                Ok(())
            }
        }
    }
}

/// Streams a result: the first batch (already read), then the rest, each
/// sent on as soon as a chunk is full.
async fn write_result(
    mut w: ChunkWriter,
    mut rows: Rows,
    first: Option<RecordBatch>,
    format: Format,
    started: std::time::Instant,
) -> Result<(), String> {
    let mut encoder = Encoder::start(format, &rows.schema(), &mut w.buffer)?;
    let mut next = first.map(Ok);
    let mut outcome = Ok(());
    loop {
        let batch = match next.take() {
            Some(b) => b,
            None => match rows.next().await {
                Some(b) => b,
                None => break,
            },
        };
        match batch {
            Ok(batch) => encoder.write(&batch, &mut w.buffer)?,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        w.flush_chunk(false).await?;
    }
    encoder.finish(outcome, &rows, started, &mut w.buffer)?;
    w.flush_chunk(true).await
}

/// Appends `batch`'s rows to `out` as JSON arrays, comma-separated.
fn json_rows(
    batch: &RecordBatch,
    options: &arrow::json::writer::EncoderOptions,
    first_row: &mut bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let fields = batch.schema().fields().clone();
    let mut encoders = batch
        .columns()
        .iter()
        .zip(fields.iter())
        .map(|(c, f)| arrow::json::writer::make_encoder(f, c.as_ref(), options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    for row in 0..batch.num_rows() {
        if !*first_row {
            out.push(b',');
        }
        *first_row = false;
        out.push(b'[');
        for (i, enc) in encoders.iter_mut().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if enc.is_null(row) {
                out.extend_from_slice(b"null");
            } else {
                enc.encode(row, out);
            }
        }
        out.push(b']');
    }
    Ok(())
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// `GET /api/v1/audit?principal=&before=&limit=`: the query audit log, newest first; stewards only.
pub(crate) async fn audit_log(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if caller.is_public() {
        return Err(tessera_store::Error::Unauthenticated(
            "the query audit log needs a steward's token: send `Authorization: Bearer <token>`".into(),
        )
        .into());
    }
    if !caller.roles.contains(&tessera_contract::Role::Steward) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "only stewards may read the query audit log"));
    }
    let axum::extract::Query(q) = query.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}; use ?principal=<name>&before=<id>&limit=<1..1000>"))
    })?;
    if let Some(engine) = &state.engine {
        engine.flush_audit().await;
    }
    let filter = tessera_store::AuditFilter { principal: q.principal, before: q.before, limit: q.limit.unwrap_or(100) };
    let entries = state.store.audit_log(&filter).await?;
    let next = entries.last().map(|e| e.id);
    Ok(axum::Json(json!({ "queries": entries, "next_before": next })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    principal: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}
