//! The database connection: one code path over SQLite and PostgreSQL.
//!
//! Queries go through sqlx's `Any` driver, so that every statement is written
//! once. The few places where the two databases must behave differently
//! (locking, the safe read horizon, notifications) ask [`Backend`].

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::error::{Error, Result};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(Error::Config(format!("unsupported database URL `{}`: use `sqlite://PATH` or `postgres://USER@HOST/DB`", redact(url))))
        }
    }
}

/// The SQLite URL of the embedded default database inside a data directory.
pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("tessera.db").display())
}

/// A URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The connections of a store.
#[derive(Debug)]
pub struct Pools {
    pub backend: Backend,
    /// Reads, and on PostgreSQL everything.
    pub read: AnyPool,
    /// Writes. On SQLite, which has one writer at a time, a single connection
    /// of its own: its page cache stays warm from one append to the next
    /// (SQLite drops a connection's cache whenever another connection has
    /// written), and it leaves checkpoints to [`checkpoint`], off the
    /// appends' path. On PostgreSQL, the read pool.
    pub write: AnyPool,
}

/// Opens the pools and brings the schema up to date.
pub async fn connect(url: &str) -> Result<Pools> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url)?;
    let options = AnyConnectOptions::from_str(url)
        .map_err(|e| Error::Config(format!("invalid database URL `{}`: {e}", redact(url))))?
        .disable_statement_logging();
    let open = |max_connections: u32, writer: bool| {
        AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    match backend {
                        // WAL lets readers run beside the writer;
                        // synchronous=FULL fsyncs the WAL on every commit, so
                        // that an acknowledged append survives a power cut;
                        // secure_delete zeroes what a delete frees (a
                        // destroyed data key must not stay in a free page).
                        Backend::Sqlite => {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;",
                            )
                            .await?;
                            if writer {
                                // 64 MiB of pages: the log's indexes stay in
                                // memory. A large insert's statement journal
                                // stays in memory too, instead of a temporary file.
                                conn.execute("PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;")
                                    .await?;
                            }
                        }
                        // The log grows from empty faster than autovacuum
                        // analyzes it: a generic plan cached while the table
                        // was small would scan it whole on every append. Plan
                        // each execution for the table as it is.
                        Backend::Postgres => {
                            conn.execute("SET plan_cache_mode = force_custom_plan").await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
    };
    let failed = |e: sqlx::Error| Error::Config(format!("cannot open the database `{}`: {e}", redact(url)));
    let pools = match backend {
        Backend::Sqlite => {
            let write = open(1, true).await.map_err(failed)?;
            SQLITE_MIGRATIONS.run(&write).await?;
            Pools { backend, read: open(8, false).await.map_err(failed)?, write }
        }
        Backend::Postgres => {
            let read = open(24, false).await.map_err(failed)?;
            POSTGRES_MIGRATIONS.run(&read).await?;
            Pools { backend, write: read.clone(), read }
        }
    };
    Ok(pools)
}

/// A truncating checkpoint that waits at most a second for readers (new
/// appends wait while it does): when they stay busy, the next wake tries
/// again, and appends are never held for long.
async fn truncate(pool: &AnyPool) -> std::result::Result<(i64, i64, i64), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    conn.execute("PRAGMA busy_timeout = 1000").await?;
    let result = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *conn).await;
    conn.execute("PRAGMA busy_timeout = 30000").await?;
    result
}

/// The WAL size (in pages of 4 KiB) beyond which [`checkpoint`] waits for
/// readers to move on and starts the WAL over: 256 MiB.
pub const WAL_LIMIT_PAGES: i64 = 65_536;

/// SQLite: copies the WAL's committed pages into the database file, without
/// waiting for readers or the writer (a passive checkpoint), each time the
/// writer wakes it. The WAL starts over at the next write once every page
/// is copied and no reader still reads from it.
///
/// Under sustained load that moment may never come: some reader is always
/// in the WAL, and it grows without bound (44 GB in one measured run). So
/// once it holds more than `limit_pages` pages, the checkpoint waits for the
/// readers of older snapshots to finish (new appends wait meanwhile),
/// copies everything and truncates the WAL to nothing. Runs until the pool
/// closes.
pub async fn checkpoint(
    pool: AnyPool,
    wake: std::sync::Arc<tokio::sync::Notify>,
    limit_pages: std::sync::Arc<std::sync::atomic::AtomicI64>,
) {
    loop {
        wake.notified().await;
        if pool.is_closed() {
            return;
        }
        let limit_pages = limit_pages.load(std::sync::atomic::Ordering::Relaxed);
        // (busy, pages in the WAL, pages copied)
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&pool).await {
            Ok((_, pages, _)) if pages > limit_pages => match truncate(&pool).await {
                Ok((0, _, _)) => tracing::debug!(pages, "the SQLite WAL was over its limit: checkpointed and truncated"),
                Ok(_) => tracing::warn!(pages, "the SQLite WAL is over its limit and readers kept it busy; retrying after the next append"),
                Err(e) => tracing::warn!(error = %e, "truncating the SQLite WAL failed; retrying after the next append"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checkpointing the SQLite WAL failed; retrying after the next append"),
        }
        // Let a few commits gather before copying again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
