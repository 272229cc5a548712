//! A real server on a loopback port, with a database of its own.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use sqlx::{Connection, Executor};
use tessera_contract::{Policy, Role};
use tessera_server::AppState;
use tessera_store::principals::hash_token;
use tessera_store::{Principal, PrincipalRecord, Store};

pub const ORDERS: &str = include_str!("../../../../products/sales-orders/contract.yaml");
pub const ORDER_EVENTS: &str = include_str!("../../../../products/sales-orders/events.ndjson");

/// The largest body the test servers accept.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub store: Store,
    pub projections: tessera_projection::Projections,
    /// The PostgreSQL protocol's port.
    pub pg_port: u16,
    pub warehouse: tessera_projection::Warehouse,
    /// The server's query engine (to see which path answered a query).
    pub engine: tessera_query::Engine,
    /// The server's shared state (to drain it).
    pub state: AppState,
    stop_pg: tokio::sync::watch::Sender<bool>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    postgres: Option<(String, String)>,
    /// The catalog database's URL.
    url: String,
    _dir: tempfile::TempDir,
}

/// The test servers' key-encryption key.
pub fn kek() -> tessera_store::Kek {
    tessera_store::Kek::parse(&"7e".repeat(32)).expect("a test key-encryption key")
}

/// A second server process on the same catalog database and warehouse
/// (serving HTTP, not projecting), as in a deployment of several replicas.
pub struct Replica {
    pub base: String,
    pub store: Store,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Replica {
    pub async fn finish(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("replica task").expect("served until shutdown");
        self.store.close().await;
    }
}

/// Tokens of the test principals.
pub const SALES: &str = "tsr_sales_owner_token";
pub const PAYMENTS: &str = "tsr_payments_owner_token";
pub const ANALYST: &str = "tsr_analyst_token";
pub const STEWARD: &str = "tsr_steward_token";
pub const CUSTOMERS: &str = "tsr_customers_owner_token";
pub const CLINIC: &str = "tsr_clinic_owner_token";

/// The HMAC key of the test servers' `hash` masking.
pub const MASKING_KEY: &[u8] = b"test-masking-key-0123456789";

impl TestServer {
    /// `None` when PostgreSQL is wanted but missing outside CI.
    pub async fn start(postgres: bool) -> Option<Self> {
        Self::start_in(postgres, "warehouse").await
    }

    /// [`TestServer::start`] with the warehouse at `warehouse`: a
    /// directory under the test's own, or a URL (`s3://bucket/prefix`).
    pub async fn start_in(postgres: bool, warehouse: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (url, pg) = if postgres {
            let admin = std::env::var("TESSERA_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let mut conn = match sqlx::PgConnection::connect(&admin).await {
                Ok(c) => c,
                Err(e) if in_ci() => panic!("PostgreSQL is required under CI=true: {admin}: {e}"),
                Err(e) => {
                    eprintln!("skipping the PostgreSQL variant: {admin}: {e}");
                    return None;
                }
            };
            let name = format!("tessera_api_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).await.expect("drop");
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create");
            let base = admin.rsplit_once('/').expect("admin URL ends with /DATABASE").0;
            (format!("{base}/{name}"), Some((admin, name)))
        } else {
            (tessera_store::db::sqlite_url(dir.path()), None)
        };
        let store = Store::open(&url, Policy::builtin(), kek()).await.expect("open store");
        let principal = |name: &str, token: &str, role: Role, domains: &[&str]| PrincipalRecord {
            principal: Principal { name: name.into(), roles: vec![role], domains: domains.iter().map(|d| d.to_string()).collect() },
            token_sha256: hash_token(token),
            origin: "config".into(),
        };
        store
            .sync_principals(
                "config",
                &[
                    principal("sales-owner", SALES, Role::Owner, &["sales"]),
                    principal("payments-owner", PAYMENTS, Role::Owner, &["payments"]),
                    principal("analyst", ANALYST, Role::Analyst, &[]),
                    principal("steward", STEWARD, Role::Steward, &[]),
                    principal("customers-owner", CUSTOMERS, Role::Owner, &["customers"]),
                    principal("clinic-owner", CLINIC, Role::Owner, &["clinic"]),
                ],
            )
            .await
            .expect("principals");
        let warehouse = tessera_projection::Warehouse::parse(warehouse, dir.path()).expect("warehouse");
        let projections = tessera_projection::Projections::start(store.clone(), warehouse.clone());
        let limits = tessera_query::Limits { max_rows: 10_000, ..tessera_query::Limits::default() };
        let engine = tessera_query::Engine::new(store.clone(), warehouse.clone(), MASKING_KEY, limits);
        let state = AppState::new(store.clone(), BODY_LIMIT)
            .await
            .expect("state")
            .with_projections(projections.clone())
            .with_engine(engine.clone());
        let pg_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let pg_port = pg_listener.local_addr().expect("address").port();
        let (stop_pg, pg_stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(tessera_server::pgwire::serve(pg_listener, state.clone(), pg_stopped));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tessera_server::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Some(Self {
            state,
            base,
            http: reqwest::Client::new(),
            store,
            projections,
            pg_port,
            warehouse,
            engine,
            stop_pg,
            shutdown: Some(tx),
            task,
            postgres: pg,
            url,
            _dir: dir,
        })
    }

    /// Another server process on this one's database and warehouse.
    pub async fn replica(&self) -> Replica {
        let store = Store::open(&self.url, Policy::builtin(), kek()).await.expect("open the store again");
        let engine = tessera_query::Engine::new(store.clone(), self.warehouse.clone(), MASKING_KEY, tessera_query::Limits::default());
        let state = AppState::new(store.clone(), BODY_LIMIT).await.expect("state").with_engine(engine);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tessera_server::serve(listener, state, async {
            let _ = rx.await;
        }));
        Replica { base, store, shutdown: Some(tx), task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and returns the status and the JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).body(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body, got {status} {text:?}"));
        (status, json)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None, "").await
    }

    pub async fn publish(&self, token: Option<&str>, yaml: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/api/v1/products", token, Some("application/yaml"), yaml.to_owned()).await
    }

    /// POSTs a JSON body; the status and the JSON answer.
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some("application/json"), body.to_string()).await
    }

    pub async fn append(&self, token: Option<&str>, product: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.call(reqwest::Method::POST, &format!("/api/v1/products/{product}/events"), token, Some(content_type), body).await
    }

    /// Events stored, straight from SQL.
    pub async fn count_events(&self) -> i64 {
        use sqlx::Row;
        sqlx::query("SELECT COUNT(*) FROM events").fetch_one(self.store.pool()).await.expect("count").try_get(0).expect("count")
    }

    /// Waits (up to a minute) until the product's projection has applied
    /// `position` in every table, and returns the product as the API shows it.
    pub async fn projected(&self, product: &str, position: i64) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (status, body) = self.get(&format!("/api/v1/products/{product}"), Some(SALES)).await;
            assert_eq!(status, 200, "{body}");
            let p = &body["projection"];
            let tables = p["tables"].as_array().map(|t| t.as_slice()).unwrap_or_default();
            // Projected up to there with the current contract (a version published
            // meanwhile reloads the tables, and may add some that start behind).
            let current = p["contract_version"] == body["contract"]["version"];
            if current && !tables.is_empty() && tables.iter().all(|t| t["applied_position"].as_i64() >= Some(position)) {
                return body;
            }
            assert!(std::time::Instant::now() < deadline, "not projected up to {position} within a minute: {p:#}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Stops gracefully and drops the database.
    pub async fn finish(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.stop_pg.send(true);
        self.task.await.expect("server task").expect("served until shutdown");
        self.projections.shutdown(std::time::Duration::from_secs(10)).await;
        self.store.close().await;
        if let Some((admin, name)) = self.postgres.take() {
            let mut conn = sqlx::PgConnection::connect(&admin).await.expect("admin");
            conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await.expect("drop");
        }
    }
}

/// Under CI (`CI` set to anything but empty, `0` or `false`), a missing
/// service fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}
