//! What every handler shares: the store, the principals by token, the
//! projectors, the SQL engine and the catalog's search index.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tessera_store::principals::hash_token;
use tessera_store::{Principal, Store};

use crate::discovery;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    /// Principals by token hash.
    principals: Arc<RwLock<HashMap<String, Principal>>>,
    pub max_body_bytes: usize,
    /// The projectors of this process, when it runs them.
    pub projections: Option<tessera_projection::Projections>,
    /// The SQL engine, when a warehouse is configured.
    pub engine: Option<tessera_query::Engine>,
    /// The catalog's search index.
    pub discovery: discovery::Discovery,
    /// Set when the server is shutting down: `/readyz` says not ready, so
    /// that load balancers stop sending it work while it finishes.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// The last readiness checks, shared by the probes of the next second.
    pub(crate) readiness: Readiness,
}

/// Readiness checks run at most once a second, however many probes ask
/// (anyone may ask `/readyz`: it must not be a way to load the database or
/// the bucket).
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness {
    last: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Checks)>>>,
}

type Checks = (Result<(), String>, Result<(), String>);

impl Readiness {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

    /// The checks of the last second, or `run`'s (one caller runs them; the others wait for its outcome).
    pub(crate) async fn checked<F: Future<Output = Checks>>(&self, run: impl FnOnce() -> F) -> Checks {
        let mut last = self.last.lock().await;
        if let Some((at, checks)) = last.as_ref()
            && at.elapsed() < Self::FRESH
        {
            return checks.clone();
        }
        let checks = run().await;
        *last = Some((std::time::Instant::now(), checks.clone()));
        checks
    }
}

impl AppState {
    pub async fn new(store: Store, max_body_bytes: usize) -> Result<Self, tessera_store::Error> {
        let state = Self {
            store,
            principals: Arc::default(),
            max_body_bytes,
            projections: None,
            engine: None,
            discovery: discovery::Discovery::default(),
            draining: Arc::default(),
            readiness: Readiness::default(),
        };
        state.reload_principals().await?;
        Ok(state)
    }

    /// Serves the state of these projectors too.
    pub fn with_projections(mut self, projections: tessera_projection::Projections) -> Self {
        self.projections = Some(projections);
        self
    }

    /// Serves SQL through this engine.
    pub fn with_engine(mut self, engine: tessera_query::Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Starts draining: from now on `/readyz` says not ready.
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The principal of a token, if any has it.
    pub fn principal_of_token(&self, token: &str) -> Option<Principal> {
        self.principal_for(token)
    }

    /// Re-reads the principals from the catalog.
    pub async fn reload_principals(&self) -> Result<(), tessera_store::Error> {
        let records = self.store.principals().await?;
        let map = records.into_iter().map(|r| (r.token_sha256, r.principal)).collect();
        if let Ok(mut principals) = self.principals.write() {
            *principals = map;
        }
        Ok(())
    }

    pub(crate) fn principal_for(&self, token: &str) -> Option<Principal> {
        self.principals.read().ok()?.get(&hash_token(token)).cloned()
    }
}
