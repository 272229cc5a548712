//! The catalog and the append-only event log, on SQLite or PostgreSQL.
//!
//! [`Store`] is the write side of Tessera: publishing contract versions
//! ([`catalog`]), appending and reading events ([`log`]), principals
//! ([`principals`]), and waking subscribers when events arrive. It owns every
//! rule about what may be stored (validation, versions, concurrency,
//! idempotency, who may write); the HTTP server only translates.

pub mod audit;
mod bulk;
pub mod catalog;
mod compiled;
pub mod db;
pub mod envelope;
pub mod error;
pub mod keys;
pub mod log;
pub mod notices;
pub mod principals;
pub mod projections;
mod seal_existing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::AnyPool;
use tessera_contract::Policy;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use audit::{AuditEntry, AuditFilter, QueryRecord};
pub use bulk::RawEvent;
pub use catalog::{ProductSummary, Published, VersionInfo};
pub use db::Backend;
pub use envelope::{EventInput, Expected};
pub use error::{Error, EventProblem, Result};
pub use keys::{Forgotten, LedgerEntry, Opener};
pub use log::{AppendOutcome, AppendedEvent, BodyFormat, LogPage, RawPage, StoredEvent};
pub use notices::Notice;
pub use principals::{Principal, PrincipalRecord};
pub use projections::{Command, DeadLetter, DeadLetterEntry, Generation, QualityResult};
pub use tessera_seal::{Kek, SealError};

use compiled::Compiled;

/// The PostgreSQL channel on which appends are announced.
pub const CHANNEL: &str = "tessera_events";

/// New events were committed to a product's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// `domain/name`.
    pub product: String,
    /// The position of the last event committed.
    pub position: i64,
}

/// A handle on the catalog and the log; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: AnyPool,
    /// See [`db::Pools::write`].
    write_pool: AnyPool,
    backend: Backend,
    policy: Arc<Policy>,
    /// Compiled current contract per product id.
    compiled: Mutex<HashMap<i64, Arc<Compiled>>>,
    /// SQLite has one writer at a time; queueing writers here, instead of in
    /// SQLite's busy handler, keeps them fair and fast.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the SQLite checkpointer after commits (see [`db::checkpoint`]).
    checkpoint: Arc<tokio::sync::Notify>,
    notify: broadcast::Sender<Notification>,
    /// The notification listener and the checkpointer, stopped on drop.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// See [`Store::delay_commits_for_tests`].
    commit_delay_ms: std::sync::atomic::AtomicU64,
    /// SQLite: the WAL size (pages) beyond which checkpoints truncate it.
    wal_limit_pages: Arc<std::sync::atomic::AtomicI64>,
    /// Events appended through this handle, for [`Store::keep_statistics_fresh`].
    appended_since_analyze: std::sync::atomic::AtomicU64,
    /// Wraps and unwraps the data keys (see [`keys`]); never stored.
    kek: Kek,
    /// The projector's bulk reader of the log (see [`bulk`]); none for an
    /// in-memory SQLite database.
    bulk: Option<bulk::Bulk>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.drain(..).for_each(|t| t.abort());
        }
    }
}

impl Store {
    /// Opens (and migrates) the database at `url`: `sqlite://PATH?mode=rwc`
    /// or `postgres://...`. `kek` wraps the data keys that seal personal
    /// values (see [`keys`]): it must be the same every time a database is
    /// opened, and is never stored in it.
    pub async fn open(url: &str, policy: Policy, kek: Kek) -> Result<Self> {
        let db::Pools { backend, read, write } = db::connect(url).await?;
        let (notify, _) = broadcast::channel(1024);
        let store = Self {
            inner: Arc::new(Inner {
                pool: read,
                write_pool: write,
                backend,
                policy: Arc::new(policy),
                compiled: Mutex::new(HashMap::new()),
                write_lock: Arc::new(tokio::sync::Mutex::new(())),
                checkpoint: Arc::new(tokio::sync::Notify::new()),
                notify,
                tasks: Mutex::new(Vec::new()),
                commit_delay_ms: std::sync::atomic::AtomicU64::new(0),
                wal_limit_pages: Arc::new(std::sync::atomic::AtomicI64::new(db::WAL_LIMIT_PAGES)),
                appended_since_analyze: std::sync::atomic::AtomicU64::new(0),
                kek,
                bulk: match backend {
                    Backend::Sqlite => bulk::BulkReader::for_url(url).map(bulk::Bulk::Sqlite),
                    Backend::Postgres => Some(bulk::Bulk::Postgres(bulk::PgCopyReader::new(url)?)),
                },
            }),
        };
        store.check_kek().await?;
        store.reapply_ledger().await?;
        store.seal_existing_events().await?;
        match backend {
            Backend::Sqlite => {
                store.spawn(db::checkpoint(store.inner.pool.clone(), store.inner.checkpoint.clone(), store.inner.wal_limit_pages.clone()))
            }
            Backend::Postgres => store.listen(url).await?,
        }
        Ok(store)
    }

    /// SQLite: bounds the WAL to about `pages` pages of 4 KiB (default
    /// [`db::WAL_LIMIT_PAGES`]); see [`db::checkpoint`].
    pub fn limit_wal(&self, pages: i64) {
        self.inner.wal_limit_pages.store(pages.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Whether the database answers: `SELECT 1` on a pooled connection.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.inner.pool.close().await;
        self.inner.write_pool.close().await;
    }

    /// Wakes on every commit to the log, in this process and, on
    /// PostgreSQL, in every process sharing the database (LISTEN/NOTIFY).
    /// A notification says only that something arrived: read the log from
    /// your own position to see what. On PostgreSQL a read right after the
    /// notification may still stop short of its `position` (readers stay
    /// below the oldest transaction in flight on the server, see [`log`]):
    /// until your cursor reaches the notified position, read again after a
    /// short pause rather than waiting for the next notification.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.inner.notify.subscribe()
    }

    /// Wakes this process's subscribers of `domain/name` without new
    /// events (say, work was asked of its projector).
    pub fn nudge(&self, domain: &str, name: &str) {
        self.announce(&format!("{domain}/{name}"), 0);
    }

    fn announce(&self, product: &str, position: i64) {
        // No subscriber is not an error.
        let _ = self.inner.notify.send(Notification { product: product.to_owned(), position });
    }

    /// Relays PostgreSQL notifications from other processes to subscribers.
    async fn listen(&self, url: &str) -> Result<()> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        let sender = self.inner.notify.clone();
        self.spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        if let Some((product, position)) = n.payload().rsplit_once(' ')
                            && let Ok(position) = position.parse()
                        {
                            let _ = sender.send(Notification { product: product.to_owned(), position });
                        }
                    }
                    Err(e) => {
                        // recv reconnects on the next call; notifications sent
                        // meanwhile are lost, so wake everyone to re-read.
                        tracing::warn!(error = %e, "lost the PostgreSQL notification connection; reconnecting");
                        let _ = sender.send(Notification { product: String::new(), position: 0 });
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(())
    }

    /// Runs a task for as long as the store lives.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.push(handle);
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// RFC 3339 text of a time in microseconds since the Unix epoch.
pub(crate) fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)).unwrap_or_default()
}
