//! No caller can take the service down for the others: how many queries
//! run at once (per principal, for anonymous callers together, and in
//! total), and one memory budget that every query's pool draws from.
//!
//! A query waits a short while for a slot, then is refused as busy (HTTP
//! 429 with `Retry-After`). Memory that operators reserve (sorts, joins,
//! aggregates, the guarded functions) counts against the query's own limit
//! and against the server's budget, so the sum over all running queries
//! stays under the budget whatever each of them asks for.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation};
use tessera_store::Principal;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{ErrorKind, QueryError};

/// How many queries may run at once, and the memory they share.
#[derive(Debug, Clone)]
pub struct Concurrency {
    /// Queries running at once in this server.
    pub total: usize,
    /// Queries one signed-in principal runs at once.
    pub per_principal: usize,
    /// Queries all anonymous callers together run at once.
    pub public: usize,
    /// How long a query waits for a slot before it is refused as busy.
    pub wait: Duration,
    /// Memory all running queries together may take: their pools share
    /// half of it ([`POOLED_SHARE`]), the rest is for what no operator
    /// reserves (batches passing between operators, buffers of the
    /// protocols, and the allocator's slack: freed memory that its
    /// per-thread arenas keep resident).
    pub memory_budget_bytes: usize,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self { total: 8, per_principal: 4, public: 2, wait: Duration::from_secs(2), memory_budget_bytes: 2 << 30 }
    }
}

/// The share of the memory budget that queries' pools may reserve, in
/// quarters. Measured (`concurrent_hostile_queries_stay_within_the_memory_budget`):
/// with pools at three quarters, the process grew by up to 96 % of the budget.
pub const POOLED_SHARE: usize = 2;

/// The admission of queries: shared by every caller of an engine.
#[derive(Debug)]
pub struct Admission {
    settings: Concurrency,
    total: Arc<Semaphore>,
    principals: Mutex<HashMap<String, Arc<Semaphore>>>,
    budget: Arc<GreedyMemoryPool>,
}

/// A running query's slots; dropping it frees them.
#[derive(Debug)]
pub struct Permit {
    _own: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(settings: Concurrency) -> Self {
        Self {
            total: Arc::new(Semaphore::new(settings.total.max(1))),
            principals: Mutex::new(HashMap::new()),
            budget: Arc::new(GreedyMemoryPool::new((settings.memory_budget_bytes / 4 * POOLED_SHARE).max(1 << 20))),
            settings,
        }
    }

    pub fn settings(&self) -> &Concurrency {
        &self.settings
    }

    /// Waits (a short while) for a slot for `principal`'s next query.
    pub async fn admit(&self, principal: &Principal) -> Result<Permit, QueryError> {
        let (key, limit, who) = if principal.is_public() {
            ("\u{0}public".to_owned(), self.settings.public, "anonymous callers together".to_owned())
        } else {
            (principal.name.clone(), self.settings.per_principal, format!("`{}`", principal.name))
        };
        let own = {
            let mut map = self.principals.lock().map_err(|_| busy("the admission table is unavailable".into()))?;
            // Forget principals with nothing running, so the table stays small.
            if map.len() > 10_000 {
                map.retain(|_, s| s.available_permits() < limit.max(1));
            }
            Arc::clone(map.entry(key).or_insert_with(|| Arc::new(Semaphore::new(limit.max(1)))))
        };
        let wait = self.settings.wait;
        let own = tokio::time::timeout(wait, own.acquire_owned()).await.ok().and_then(Result::ok).ok_or_else(|| {
            busy(format!("{who} already run {limit} queries at once, the most allowed; wait for one to finish and retry"))
        })?;
        let total =
            tokio::time::timeout(wait, Arc::clone(&self.total).acquire_owned()).await.ok().and_then(Result::ok).ok_or_else(|| {
                busy(format!("the server runs {} queries at once, the most it allows; retry in a moment", self.settings.total))
            })?;
        Ok(Permit { _own: own, _total: total })
    }

    /// A memory pool for one query: at most `limit` bytes, drawn from the
    /// server's budget.
    pub fn pool(&self, limit: usize) -> Arc<dyn MemoryPool> {
        Arc::new(QueryPool {
            query: GreedyMemoryPool::new(limit),
            budget: Arc::clone(&self.budget),
            budget_bytes: self.settings.memory_budget_bytes,
        })
    }

    /// Bytes reserved by all running queries.
    pub fn reserved(&self) -> usize {
        self.budget.reserved()
    }
}

fn busy(message: String) -> QueryError {
    QueryError { kind: ErrorKind::Busy, message }
}

/// One query's memory: its own limit, and the server's budget behind it.
struct QueryPool {
    query: GreedyMemoryPool,
    budget: Arc<GreedyMemoryPool>,
    budget_bytes: usize,
}

impl fmt::Debug for QueryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryPool").field("reserved", &self.query.reserved()).field("budget_reserved", &self.budget.reserved()).finish()
    }
}

impl fmt::Display for QueryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query pool ({} reserved)", self.query.reserved())
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "tessera-query"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.query.grow(reservation, additional);
        self.budget.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.query.shrink(reservation, shrink);
        self.budget.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.query.try_grow(reservation, additional)?;
        if self.budget.try_grow(reservation, additional).is_err() {
            self.query.shrink(reservation, additional);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the server's query memory budget of {} MiB is taken by other queries; try again in a moment",
                self.budget_bytes >> 20
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.query.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.query.memory_limit()
    }
}
