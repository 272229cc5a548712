//! Projection as a service of the server: one projector per product,
//! woken by new events (not by polling), at most one per product across
//! every process sharing the database (a lease), and what each one has
//! done, for the API and the metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tessera_store::Store;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::projector::{Projector, TableState};
use crate::warehouse::Warehouse;

/// How long a projector's lease lasts without renewal: another process
/// takes a product over within this time after its holder dies.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a holder renews its lease, and a waiting process retries.
const RENEW: Duration = Duration::from_secs(3);

/// What the service knows of one product's projection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProductProjection {
    /// `running` (this process holds the product's lease), `standby`
    /// (another process does) or `starting`.
    pub state: &'static str,
    pub contract_version: Option<String>,
    pub major: Option<u64>,
    /// The position every table has applied.
    pub applied_position: i64,
    pub tables: Vec<TableState>,
    /// The last error, until a run succeeds again.
    pub error: Option<String>,
    /// Microseconds since the epoch of the last successful run.
    #[serde(skip)]
    pub last_run_at: Option<i64>,
}

/// The running projectors of this process.
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    warehouse: Warehouse,
    /// Who this process is, for leases.
    holder: String,
    status: RwLock<BTreeMap<String, ProductProjection>>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.drain().for_each(|(_, t)| t.abort());
        }
        if let Ok(Some(s)) = self.supervisor.lock().map(|mut s| s.take()) {
            s.abort();
        }
    }
}

impl Projections {
    /// Starts projecting every product of `store` into `warehouse`, and
    /// every product published later.
    pub fn start(store: Store, warehouse: Warehouse) -> Self {
        let holder = format!("{}:{}:{}", hostname(), std::process::id(), chrono::Utc::now().timestamp_micros());
        let inner = Arc::new(Inner {
            store,
            warehouse,
            holder,
            status: RwLock::new(BTreeMap::new()),
            tasks: Mutex::new(HashMap::new()),
            supervisor: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let supervisor = tokio::spawn(async move {
            let mut events = match weak.upgrade() {
                Some(inner) => inner.store.subscribe(),
                None => return,
            };
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.ensure_projectors().await {
                    tracing::warn!(error = %e, "listing products for projection failed");
                }
                drop(inner);
                // New products show up with their first events, or at the
                // next look round.
                let _ = tokio::time::timeout(RENEW, events.recv()).await;
            }
        });
        if let Ok(mut s) = inner.supervisor.lock() {
            *s = Some(supervisor);
        }
        Self { inner }
    }

    /// What is known of one product's projection.
    pub fn product(&self, domain: &str, name: &str) -> Option<ProductProjection> {
        self.inner.status.read().ok()?.get(&format!("{domain}/{name}")).cloned()
    }

    /// Every product's projection, by `domain/name`.
    pub fn all(&self) -> BTreeMap<String, ProductProjection> {
        self.inner.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.inner.warehouse
    }

    /// Waits until every table of `domain/name` has applied `position`
    /// (or `timeout` passes): for tests and the demo.
    pub async fn wait_for(&self, domain: &str, name: &str, position: i64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.product(domain, name).is_some_and(|p| p.applied_position >= position && p.error.is_none()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl std::fmt::Debug for Projections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projections").field("holder", &self.inner.holder).field("warehouse", &self.inner.warehouse).finish()
    }
}

impl Inner {
    async fn ensure_projectors(self: &Arc<Self>) -> tessera_store::Result<()> {
        let products = self.store.products().await?;
        let Ok(mut tasks) = self.tasks.lock() else { return Ok(()) };
        for p in products {
            let key = format!("{}/{}", p.domain, p.name);
            if tasks.get(&key).is_some_and(|t| !t.is_finished()) {
                continue;
            }
            let weak = Arc::downgrade(self);
            let (domain, name) = (p.domain.clone(), p.name.clone());
            tasks.insert(key, tokio::spawn(async move { follow(weak, domain, name).await }));
        }
        Ok(())
    }

    fn update(&self, product: &str, f: impl FnOnce(&mut ProductProjection)) {
        if let Ok(mut status) = self.status.write() {
            let entry = status.entry(product.to_owned()).or_insert_with(|| ProductProjection { state: "starting", ..Default::default() });
            f(entry);
        }
    }
}

/// One product's projector loop: hold the lease, run, wait for events.
async fn follow(weak: std::sync::Weak<Inner>, domain: String, name: String) {
    let Some(inner) = weak.upgrade() else { return };
    let product = format!("{domain}/{name}");
    let lease = format!("projector:{product}");
    let mut events = inner.store.subscribe();
    let mut projector = Projector::new(inner.store.clone(), inner.warehouse.clone(), &domain, &name);
    let holder = inner.holder.clone();
    drop(inner);
    let mut failures: u32 = 0;
    // The newest position announced for this product.
    let mut announced: i64 = 0;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match inner.store.try_lease(&lease, &holder, LEASE).await {
            Ok(true) => {}
            Ok(false) => {
                projector.reset();
                inner.update(&product, |s| s.state = "standby");
                drop(inner);
                tokio::time::sleep(RENEW).await;
                continue;
            }
            Err(e) => {
                inner.update(&product, |s| s.error = Some(format!("lease: {e}")));
                drop(inner);
                tokio::time::sleep(RENEW).await;
                continue;
            }
        }
        match projector.run(&|_| {}).await {
            Ok(report) => {
                failures = 0;
                let quality = if report.commits > 0 { projector.check_quality().await.err() } else { None };
                let tables = projector.tables();
                inner.update(&product, |s| {
                    s.state = "running";
                    s.error = quality.map(|e| format!("quality checks: {e}"));
                    s.applied_position = projector.applied().unwrap_or(0);
                    if let Some((version, major)) = projector.contract_version() {
                        s.contract_version = Some(version.to_owned());
                        s.major = Some(major);
                    }
                    match tables {
                        Ok(t) => s.tables = t,
                        Err(e) => s.error = Some(e.to_string()),
                    }
                    s.last_run_at = Some(chrono::Utc::now().timestamp_micros());
                });
                if report.events > 0 {
                    tracing::debug!(product = %product, events = report.events, commits = report.commits, "projected");
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(product = %product, error = %e, "projection failed; retrying");
                inner.update(&product, |s| s.error = Some(e.to_string()));
                projector.reset();
                drop(inner);
                let backoff = Duration::from_millis(200u64.saturating_mul(1 << failures.min(5)));
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        drop(inner);
        // On PostgreSQL a read right after a notification may stop short of
        // it (see `Store::subscribe`): read again soon until it is reached.
        if announced > projector.applied().unwrap_or(0) {
            tokio::time::sleep(Duration::from_millis(25)).await;
            announced = 0;
            continue;
        }
        let deadline = tokio::time::Instant::now() + RENEW;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => break,
                Ok(Ok(n)) if n.product == product => {
                    announced = announced.max(n.position);
                    break;
                }
                // Another product's events.
                Ok(Ok(n)) if !n.product.is_empty() => continue,
                // A lost notification connection, or too many to keep up:
                // read the log to see.
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => return,
            }
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "tessera".to_owned())
}
