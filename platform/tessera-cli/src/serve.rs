//! `tessera serve`: the HTTP server, optionally with the demo loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use tessera_projection::Projections;
use tessera_server::config::Config;
use tessera_server::{AppState, demo};
use tessera_store::Store;

/// Where the configuration and the database are: the options every
/// command that opens the store takes.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The configuration file (default: ./tessera.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the embedded database lives (and the demo's tokens).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `postgres://...` to use PostgreSQL instead of the embedded SQLite file.
    #[arg(long)]
    database_url: Option<String>,
}

impl StoreArgs {
    /// The configuration, with these options applied over it.
    pub fn load(self) -> Result<Config> {
        let mut config = Config::load(self.config.as_deref()).map_err(anyhow::Error::msg)?;
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let Some(url) = self.database_url {
            config.database_url = Some(url);
        }
        Ok(config)
    }
}

/// Command-line overrides of the configuration.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Create demo principals and load every example product under --products.
    #[arg(long)]
    demo: bool,
    /// The example products for --demo.
    #[arg(long, default_value = "products")]
    products: PathBuf,
    /// Where the PostgreSQL wire protocol listens (`off` to disable).
    #[arg(long)]
    pg_listen: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// The C allocator's settings for a server: glibc keeps memory that queries
/// have freed (an arena for each thread, up to eight per core, and a
/// threshold for mapping large blocks that rises with every one freed), so
/// that under many concurrent queries the process grows to about twice what
/// they reserve. One arena per core and a fixed threshold (large buffers are
/// mapped, and unmapped when freed) keep resident memory near what the
/// queries hold (see the memory test of this crate). glibc reads its
/// settings from the environment when the process starts: the server starts
/// itself again, once, with them, unless they are set already.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt as _;
        const TUNED: &str = "TESSERA_ALLOCATOR_TUNED";
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let settings = [("MALLOC_ARENA_MAX", cores.to_string()), ("MALLOC_MMAP_THRESHOLD_", (128 << 10).to_string())];
        if std::env::var_os(TUNED).is_some() || settings.iter().any(|(name, _)| std::env::var_os(name).is_some()) {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        // Returns only if the process could not be replaced; it then runs as it is.
        let e = std::process::Command::new(exe).args(std::env::args_os().skip(1)).envs(settings).env(TUNED, "1").exec();
        eprintln!("note: serving without the allocator's server settings ({e})");
    }
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    tune_allocator();
    init_tracing(args.log_json);
    let mut config = args.store.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(pg) = args.pg_listen {
        config.pg_listen = pg;
    }
    // Deep stacks for every worker: planning and running a query recurse
    // with its nesting, up to the configured bound (query_max_depth). The
    // memory is reserved, and used only by a query that nests that deep.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, args.demo, &args.products))
}

/// The stack of each runtime thread.
const WORKER_STACK_BYTES: usize = 32 << 20;

/// What the log shows unless `TESSERA_LOG` says otherwise: Tessera's own
/// events from INFO up (`tessera` is a prefix of every crate's target:
/// the binary's and each `tessera_*`), the libraries' from WARN up (the Delta kernel's
/// scans alone log several INFO lines per query). The Delta kernel also
/// logs an error for every table it looks for before creating it, and
/// merges warn of a metric they do not report: noise for an operator.
pub const DEFAULT_LOG: &str = "warn,tessera=info,buoyant_kernel::snapshot::builder=off,deltalake_core::operations::merge=error";

pub fn init_tracing(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(config: Config, with_demo: bool, products: &Path) -> Result<ExitCode> {
    let policy = crate::contracts::load_policy(config.policy.as_deref())?;
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    }
    let url = config.database_url();
    let kek = config.kek().map_err(anyhow::Error::msg)?;
    let store = Store::open(&url, policy, kek).await?;
    tracing::info!(database = %tessera_store::db::redact(&url), "catalog and event log open");
    store.sync_principals("config", &config.principal_records().map_err(anyhow::Error::msg)?).await?;

    let mut demo_principals = Vec::new();
    if with_demo {
        let contracts = demo::example_contracts(products).map_err(anyhow::Error::msg)?;
        demo_principals = demo::principals(&store, &config.data_dir, &contracts).await.map_err(anyhow::Error::msg)?;
        let started = std::time::Instant::now();
        demo::load(&store, &contracts, &demo_principals, |l| {
            println!(
                "  {:<28} {:<8} {:<10} {} events appended, {} already stored",
                l.product, l.version, l.outcome, l.appended, l.duplicates
            );
        })
        .await
        .map_err(anyhow::Error::msg)?;
        println!("demo loaded in {:.1} s", started.elapsed().as_secs_f64());
    }

    let warehouse = config.warehouse().map_err(anyhow::Error::msg)?;
    tracing::info!(warehouse = %warehouse.root(), "projecting into the warehouse");
    let projections = Projections::start_with(store.clone(), warehouse.clone(), config.projection_options());
    let key = config.masking_key().map_err(anyhow::Error::msg)?;
    let engine = tessera_query::Engine::new(store.clone(), warehouse, &key, config.query_limits());
    if with_demo {
        let started = std::time::Instant::now();
        for p in store.products().await? {
            let head = store.head(&p.domain, &p.name).await?;
            if !projections.wait_for(&p.domain, &p.name, head, std::time::Duration::from_secs(600)).await {
                let error = projections.product(&p.domain, &p.name).and_then(|s| s.error).unwrap_or_else(|| "timed out".into());
                anyhow::bail!("projecting {}/{} failed: {error}", p.domain, p.name);
            }
        }
        println!("demo projected in {:.1} s", started.elapsed().as_secs_f64());
    }
    let state = AppState::new(store.clone(), config.max_body_bytes).await?.with_projections(projections.clone()).with_engine(engine);
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let (stop_pg, pg_stopped) = tokio::sync::watch::channel(false);
    let mut pg_task = None;
    if let Some(pg) = config.pg_listen().map_err(anyhow::Error::msg)? {
        let pg_listener = tokio::net::TcpListener::bind(pg)
            .await
            .with_context(|| format!("cannot listen on {pg} for the PostgreSQL protocol (set --pg-listen, or `off`)"))?;
        let pg_address = pg_listener.local_addr()?;
        if !pg_address.ip().is_loopback() {
            tracing::warn!(
                address = %pg_address,
                "the PostgreSQL protocol listens beyond this machine without TLS: tokens (the passwords) travel in clear text; \
                 put a TLS-terminating proxy in front of it"
            );
        }
        println!(
            "PostgreSQL protocol at {pg_address}: psql -h {} -p {} -U <principal> (the token is the password)",
            pg_address.ip(),
            pg_address.port()
        );
        pg_task = Some(tokio::spawn(tessera_server::pgwire::serve(pg_listener, state.clone(), pg_stopped)));
    }
    if with_demo {
        println!("demo tokens (also in {}):", config.data_dir.join("demo-principals.json").display());
        for p in &demo_principals {
            let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
            println!("  {:<22} {:<10} {}", p.name, roles.join(","), p.token);
        }
        println!("try: curl -s http://{address}/api/v1/products");
    }
    println!("catalog: open http://{address}/ in a browser (sign in with a token, top right)");
    // The search index is built before the first search needs it.
    let (discovery, catalog_store) = (state.discovery.clone(), store.clone());
    tokio::spawn(async move {
        if let Err(e) = discovery.refresh(&catalog_store).await {
            tracing::warn!(error = %e, "the catalog's search index could not be built; searches will retry");
        }
    });
    // Last, so that whoever waits for this line finds everything above it.
    println!("Tessera is serving at http://{address}");
    let (draining, drain) = (state.clone(), std::time::Duration::from_secs(config.drain_seconds));
    let shutdown = async move {
        shutdown_signal().await;
        // Not ready from now on; connections close once balancers had time to notice.
        draining.drain();
        if !drain.is_zero() {
            tracing::info!(seconds = drain.as_secs(), "draining: /readyz says not ready");
            tokio::time::sleep(drain).await;
        }
    };
    tessera_server::serve(listener, state, shutdown).await?;
    let _ = stop_pg.send(true);
    if let Some(task) = pg_task {
        let _ = task.await;
    }
    projections.shutdown(std::time::Duration::from_secs(10)).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
