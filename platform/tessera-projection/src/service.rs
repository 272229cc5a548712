//! Projection as a service of the server: one projector per product,
//! woken by new events (not by polling), at most one per product across
//! every process sharing the database (a lease), and what each one has
//! done, for the API and the metrics.

use futures::FutureExt as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tessera_store::Store;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::projector::{Projector, TableState};
use crate::warehouse::Warehouse;

/// How the service keeps tables tidy.
#[derive(Debug, Clone)]
pub struct Options {
    /// Files no version younger than this reads are vacuumed; time travel
    /// works inside this window.
    pub retention: Duration,
    /// A table with this many live files is compacted after a run.
    pub compact_after_files: usize,
    /// How often each product's tables are vacuumed.
    pub vacuum_every: Duration,
    /// How long a projector's lease lasts without renewal: another process
    /// takes a product over within this time after its holder dies. The
    /// holder renews it three times as often.
    pub lease: Duration,
}

impl Options {
    /// How often a holder renews its lease, and a waiting process retries.
    fn renew(&self) -> Duration {
        self.lease / 3
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            compact_after_files: 64,
            vacuum_every: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(10),
        }
    }
}

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
    options: Options,
    /// Who this process is, for leases.
    holder: String,
    status: RwLock<BTreeMap<String, ProductProjection>>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// Set by [`Projections::shutdown`]: every loop stops at its next safe point.
    stop: tokio::sync::watch::Sender<bool>,
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
        Self::start_with(store, warehouse, Options::default())
    }

    /// [`Projections::start`] with these options.
    pub fn start_with(store: Store, warehouse: Warehouse, options: Options) -> Self {
        let holder = format!("{}:{}:{}", hostname(), std::process::id(), chrono::Utc::now().timestamp_micros());
        let inner = Arc::new(Inner {
            store,
            warehouse,
            options,
            holder,
            status: RwLock::new(BTreeMap::new()),
            tasks: Mutex::new(HashMap::new()),
            supervisor: Mutex::new(None),
            stop: tokio::sync::watch::Sender::new(false),
        });
        let weak = Arc::downgrade(&inner);
        let renew = inner.options.renew();
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
                let _ = tokio::time::timeout(renew, events.recv()).await;
            }
        });
        if let Ok(mut s) = inner.supervisor.lock() {
            *s = Some(supervisor);
        }
        Self { inner }
    }

    /// Stops every projector of this process at its next safe point (between
    /// batches, never inside a commit) and gives up their leases, so that
    /// another process takes over at once; waits up to `grace` for them.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop.send_replace(true);
        let handles: Vec<JoinHandle<()>> = match self.inner.tasks.lock() {
            Ok(mut tasks) => tasks.drain().map(|(_, t)| t).collect(),
            Err(_) => Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + grace;
        for mut handle in handles {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                tracing::warn!("a projector did not stop in time; aborting it");
                handle.abort();
            }
        }
        if let Ok(Some(s)) = self.inner.supervisor.lock().map(|mut s| s.take()) {
            s.abort();
        }
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

    /// Publishes what `projector` holds now as the product's status.
    fn show(&self, product: &str, projector: &Projector, error: Option<String>) {
        let tables = projector.tables();
        self.update(product, |s| {
            s.state = "running";
            s.error = error;
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
    }

    fn update(&self, product: &str, f: impl FnOnce(&mut ProductProjection)) {
        if let Ok(mut status) = self.status.write() {
            let entry = status.entry(product.to_owned()).or_insert_with(|| ProductProjection { state: "starting", ..Default::default() });
            f(entry);
        }
    }
}

/// What a caught panic says.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// One product's projector loop: hold the lease, run, wait for events.
async fn follow(weak: std::sync::Weak<Inner>, domain: String, name: String) {
    let Some(inner) = weak.upgrade() else { return };
    let product = format!("{domain}/{name}");
    let lease = format!("projector:{product}");
    let mut events = inner.store.subscribe();
    let mut stop = inner.stop.subscribe();
    let mut projector = Projector::new(inner.store.clone(), inner.warehouse.clone(), &domain, &name).with_stop(stop.clone());
    let holder = inner.holder.clone();
    let store = inner.store.clone();
    drop(inner);
    follow_until_stopped(&weak, &product, &lease, &holder, &mut projector, &mut events, &mut stop).await;
    if let Err(e) = store.release_lease(&lease, &holder).await {
        tracing::warn!(product = %product, error = %e, "could not give up the projector's lease");
    }
}

/// Sleeps for `time`, or less if asked to stop; `true` if asked to stop.
async fn pause(stop: &mut tokio::sync::watch::Receiver<bool>, time: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(time) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn follow_until_stopped(
    weak: &std::sync::Weak<Inner>,
    product: &str,
    lease: &str,
    holder: &str,
    projector: &mut Projector,
    events: &mut tokio::sync::broadcast::Receiver<tessera_store::Notification>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    let (domain, name) = product.split_once('/').unwrap_or((product, ""));
    let product = product.to_owned();
    let mut failures: u32 = 0;
    let mut last_vacuum = tokio::time::Instant::now();
    // The newest position announced for this product.
    let mut announced: i64 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        let renew = inner.options.renew();
        match inner.store.try_lease(lease, holder, inner.options.lease).await {
            Ok(true) => {}
            Ok(false) => {
                projector.reset();
                inner.update(&product, |s| s.state = "standby");
                drop(inner);
                pause(stop, renew).await;
                continue;
            }
            Err(e) => {
                inner.update(&product, |s| s.error = Some(format!("lease: {e}")));
                drop(inner);
                pause(stop, renew).await;
                continue;
            }
        }
        // A panic in a run (a bug, or an input nobody foresaw) is this
        // product's failure, reported and retried like any other: never the server's.
        let run = std::panic::AssertUnwindSafe(projector.run(&|_| {}))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(crate::projector::Error::Panicked(panic_message(&panic))));
        match run {
            Ok(report) => {
                failures = 0;
                let quality = if report.commits > 0 { projector.check_quality().await.err() } else { None };
                inner.show(&product, projector, quality.map(|e| format!("quality checks: {e}")));
                if report.events > 0 {
                    tracing::debug!(product = %product, events = report.events, commits = report.commits, "projected");
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(product = %product, error = %e, "projection failed; retrying");
                inner.update(&product, |s| s.error = Some(e.to_string()));
                projector.reset();
                // Commands still run while projection fails: a rebuild is
                // often what a failing projection needs, and nobody else takes them.
                if let Err(e) = commands(&inner, projector, domain, name).await {
                    tracing::warn!(product = %product, error = %e, "a projection command failed");
                }
                drop(inner);
                let backoff = Duration::from_millis(200u64.saturating_mul(1 << failures.min(5)));
                pause(stop, backoff).await;
                continue;
            }
        }
        if *stop.borrow() {
            return;
        }
        let maintained = std::panic::AssertUnwindSafe(maintain(&inner, projector, domain, name, &mut last_vacuum))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(crate::projector::Error::Panicked(panic_message(&panic))));
        match maintained {
            Ok(false) => {}
            Ok(true) => {
                let quality = projector.check_quality().await.err();
                inner.show(&product, projector, quality.map(|e| format!("quality checks: {e}")));
            }
            Err(e) => {
                tracing::warn!(product = %product, error = %e, "projection maintenance failed");
                inner.update(&product, |s| s.error = Some(e.to_string()));
                projector.reset();
            }
        }
        drop(inner);
        // On PostgreSQL a read right after a notification may stop short of
        // it (see `Store::subscribe`): read again soon until it is reached.
        if announced > projector.applied().unwrap_or(0) {
            pause(stop, Duration::from_millis(25)).await;
            announced = 0;
            continue;
        }
        let deadline = tokio::time::Instant::now() + renew;
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout_at(deadline, events.recv()) => n,
                _ = stop.changed() => return,
            };
            match next {
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

/// Carries out the commands asked of this product's projector (rebuild,
/// compact, vacuum), then the scheduled compaction and vacuum. Returns
/// whether it did anything.
async fn maintain(
    inner: &Inner,
    projector: &mut Projector,
    domain: &str,
    name: &str,
    last_vacuum: &mut tokio::time::Instant,
) -> Result<bool, crate::projector::Error> {
    let mut did = commands(inner, projector, domain, name).await?;
    let crowded = projector.tables()?.iter().any(|t| t.stats.files >= inner.options.compact_after_files);
    if crowded {
        projector.compact(inner.options.compact_after_files).await?;
        did = true;
    }
    if last_vacuum.elapsed() >= inner.options.vacuum_every {
        *last_vacuum = tokio::time::Instant::now();
        projector.vacuum(inner.options.retention).await?;
        did = true;
    }
    Ok(did)
}

/// Carries out the commands asked of this product's projector, oldest
/// first. Returns whether there were any.
async fn commands(inner: &Inner, projector: &mut Projector, domain: &str, name: &str) -> Result<bool, crate::projector::Error> {
    let mut did = false;
    while let Some(command) = inner.store.next_command(domain, name).await? {
        tracing::info!(product = %projector.product(), command = %command.kind, id = command.id, "running a projection command");
        let outcome = match command.kind.as_str() {
            "rebuild" => rebuild(inner, projector, command.id).await,
            "compact" => projector.compact(2).await,
            "vacuum" => projector.vacuum(inner.options.retention).await,
            other => Ok(serde_json::json!({"ignored": format!("unknown command `{other}`")})),
        };
        did = true;
        if outcome.is_ok() {
            // Whoever sees the command done sees its tables too.
            let quality = projector.check_quality().await.err();
            inner.show(&projector.product(), projector, quality.map(|e| format!("quality checks: {e}")));
        }
        let failed = outcome.as_ref().err().map(ToString::to_string);
        inner.store.finish_command(command.id, outcome.map_err(|e| e.to_string())).await?;
        if let Some(e) = failed {
            projector.reset();
            return Err(crate::projector::Error::Derived { table: String::new(), message: format!("{} failed: {e}", command.kind) });
        }
    }
    Ok(did)
}

/// A rebuild, with its progress written to its command every half second.
async fn rebuild(inner: &Inner, projector: &mut Projector, id: i64) -> Result<serde_json::Value, crate::projector::Error> {
    use std::sync::atomic::{AtomicI64, Ordering};
    let reached = Arc::new(AtomicI64::new(0));
    let target = Arc::new(AtomicI64::new(0));
    let (r, t) = (reached.clone(), target.clone());
    let report = move |done: u64, total: u64| {
        r.store(i64::try_from(done).unwrap_or(i64::MAX), Ordering::Relaxed);
        t.store(i64::try_from(total).unwrap_or(i64::MAX), Ordering::Relaxed);
    };
    // Progress is written by a task of its own: a write awaited beside the
    // rebuild (in a `select!`) could wait for the SQLite write lock that the
    // suspended rebuild holds, and neither would ever move again.
    let store = inner.store.clone();
    let (r, t) = (reached.clone(), target.clone());
    let reporter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let (p, h) = (r.load(Ordering::Relaxed), t.load(Ordering::Relaxed));
            if let Err(e) = store.command_progress(id, p, h).await {
                tracing::warn!(error = %e, "could not record a rebuild's progress");
            }
        }
    });
    let outcome = projector.rebuild(&report).await;
    reporter.abort();
    let _ = reporter.await;
    let (p, h) = (reached.load(Ordering::Relaxed), target.load(Ordering::Relaxed));
    if let Err(e) = inner.store.command_progress(id, p, h).await {
        tracing::warn!(error = %e, "could not record a rebuild's progress");
    }
    outcome
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "tessera".to_owned())
}
