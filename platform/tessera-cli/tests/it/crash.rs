//! The crash test of issue 4: a real server process, appending and
//! projecting, is killed with SIGKILL at random moments, again and again.
//! After every kill each table must be at a committed version whose rows
//! are exactly those of the log up to the position it records (nothing
//! applied twice, nothing skipped); after the last restart the tables must
//! converge to a rebuild's rows.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_contract::Policy;
use tessera_projection::schema::table_schema;
use tessera_projection::{Projector, Warehouse};
use tessera_store::Store;

use crate::repo;

const TOKEN: &str = "tsr_crash_test_owner";
const TABLES: [&str; 3] = ["orders", "order_lines", "daily_revenue"];

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tessera.toml");
    let text = format!(
        "data_dir = \"{}\"\nlease_seconds = 1\n\n[[principals]]\nname = \"sales-bot\"\ntoken = \"{TOKEN}\"\nroles = [\"owner\"]\ndomains = [\"sales\"]\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `tessera serve` and returns it with its base URL.
fn start(config: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", "127.0.0.1:0", "--pg-listen", "off", "--config"])
        .arg(config)
        .current_dir(repo())
        .env("TESSERA_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    for line in out.lines().map_while(Result::ok) {
        if let Some(url) = line.strip_prefix("Tessera is serving at ") {
            return (child, url.to_owned());
        }
    }
    let _ = child.kill();
    panic!("the server stopped before serving: {:?}", child.wait());
}

fn client(args: &[&str], base: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.args(args).args(["--server", base, "--token", TOKEN]).current_dir(repo()).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// Every table's rows as text, sorted, read from `warehouse`.
async fn rows(store: &Store, warehouse: &Warehouse, table: &str) -> Vec<String> {
    let contract = store.current_contract("sales", "orders").await.unwrap();
    let delta = deltalake::open_table(warehouse.table_url("sales", "orders", 1, table)).await.unwrap();
    let batches = tessera_projection::history::scan(table, &delta).await.unwrap();
    let schema = table_schema(&contract.tables[table]);
    let json = tessera_projection::history::json_rows(table, &schema, &batches).unwrap();
    let mut out: Vec<String> = json.into_iter().map(|r| serde_json::Value::Object(r).to_string()).collect();
    out.sort();
    out
}

/// After a kill: every table opens at a committed version, and its rows
/// are those of a fresh projection of the log up to the position that
/// version records.
async fn check(data: &Path, run: usize) -> i64 {
    let store = Store::open(
        &tessera_store::db::sqlite_url(data),
        Policy::builtin(),
        tessera_store::Kek::parse(&std::fs::read_to_string(data.join("kek.key")).unwrap()).unwrap(),
    )
    .await
    .unwrap();
    let live = Warehouse::parse("warehouse", data).unwrap();
    let mut positions = Vec::new();
    for table in TABLES {
        let url = live.table_url("sales", "orders", 1, table);
        let Ok(delta) = deltalake::open_table(url.clone()).await else {
            // Killed before the table was created: nothing to check yet.
            positions.push((table, None));
            continue;
        };
        let position = tessera_projection::delta::applied(&delta, &url, tessera_projection::projector::APP_ID).await.unwrap().unwrap_or(0);
        positions.push((table, Some(position)));
    }
    // One fresh projection per position that some table records.
    let mut distinct: Vec<i64> = positions.iter().filter_map(|(_, p)| *p).collect();
    distinct.sort_unstable();
    distinct.dedup();
    for position in distinct {
        let label = format!("check-{run}-{position}");
        let scratch = Warehouse::parse(&label, data).unwrap();
        Projector::new(store.clone(), scratch.clone(), "sales", "orders").run_until(position, &|_| {}).await.unwrap();
        for (table, _) in positions.iter().filter(|(_, p)| *p == Some(position)) {
            let (ours, expected) = (rows(&store, &live, table).await, rows(&store, &scratch, table).await);
            assert_eq!(ours.len(), expected.len(), "run {run}: {table} at position {position}: row count");
            assert_eq!(ours, expected, "run {run}: {table} at position {position}");
        }
        std::fs::remove_dir_all(data.join(label)).unwrap();
    }
    store.close().await;
    positions.iter().map(|(_, p)| p.unwrap_or(0)).min().unwrap_or(0)
}

#[test]
fn killed_at_random_moments_the_tables_stay_exactly_once_and_converge() {
    let _servers = crate::shared();
    let runs: usize = std::env::var("TESSERA_CRASH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(50);
    let seed = std::env::var("TESSERA_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test: {runs} runs, TESSERA_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let data = dir.path().join("data");
    let events: Vec<String> =
        std::fs::read_to_string(repo().join("products/sales-orders/events.ndjson")).unwrap().lines().map(str::to_owned).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let (mut server, base) = start(&config);
    assert!(client(&["publish", "products/sales-orders/contract.yaml"], &base).status().unwrap().success());
    let _ = server.kill();
    let _ = server.wait();

    let mut confirmed = 0;
    let mut kills_with_projection_behind = 0;
    let mut progress = Vec::new();
    for run in 0..runs {
        let (mut server, base) = start(&config);
        // About the sample log's length over 50 runs.
        let chunk = rng.usize(10..=80).min(events.len() - confirmed.min(events.len()));
        let file = dir.path().join(format!("chunk-{run}.ndjson"));
        std::fs::write(&file, events[confirmed..confirmed + chunk].join("\n") + "\n").unwrap();
        let mut append = client(&["append", "sales/orders", file.to_str().unwrap(), "--batch", "40"], &base).spawn().unwrap();
        // The killed process's lease (1 s here) must run out before this
        // one projects: kill while it waits, while it projects, or after.
        std::thread::sleep(Duration::from_millis(rng.u64(200..2000)));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        if append.wait().unwrap().success() {
            confirmed += chunk;
        }
        let lowest = runtime.block_on(check(&data, run));
        let head = runtime.block_on(async {
            let store = Store::open(
                &tessera_store::db::sqlite_url(&data),
                Policy::builtin(),
                tessera_store::Kek::parse(&std::fs::read_to_string(data.join("kek.key")).unwrap()).unwrap(),
            )
            .await
            .unwrap();
            let head = store.head("sales", "orders").await.unwrap();
            store.close().await;
            head
        });
        if lowest < head {
            kills_with_projection_behind += 1;
        }
        progress.push((lowest, head));
    }
    eprintln!("crash test: {kills_with_projection_behind} of {runs} kills left projection behind the log");
    eprintln!("crash test: (lowest table position, log head) after each kill: {progress:?}");
    let advanced = progress.windows(2).filter(|w| w[1].0 > w[0].0).count();
    assert!(runs < 5 || advanced * 4 >= runs, "projection advanced between kills in only {advanced} of {runs} runs: {progress:?}");

    // The rest of the events, then a clean run to the end.
    let (mut server, base) = start(&config);
    let file = dir.path().join("rest.ndjson");
    std::fs::write(&file, events.join("\n") + "\n").unwrap();
    assert!(client(&["append", "sales/orders", file.to_str().unwrap()], &base).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(120);
    runtime.block_on(async {
        let http = reqwest::Client::new();
        loop {
            let response = http.get(format!("{base}/api/v1/products/sales/orders")).bearer_auth(TOKEN).send().await.unwrap();
            let product: serde_json::Value = response.json().await.unwrap();
            let tables = product["projection"]["tables"].as_array().cloned().unwrap_or_default();
            if tables.len() == 3 && tables.iter().all(|t| t["lag_events"] == 0) && product["projection"]["error"].is_null() {
                break;
            }
            assert!(Instant::now() < deadline, "no convergence within 2 minutes: {product:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    server.wait().unwrap();
    runtime.block_on(async {
        let store = Store::open(
            &tessera_store::db::sqlite_url(&data),
            Policy::builtin(),
            tessera_store::Kek::parse(&std::fs::read_to_string(data.join("kek.key")).unwrap()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(store.head("sales", "orders").await.unwrap() as usize, events.len(), "every event stored once");
        let live = Warehouse::parse("warehouse", &data).unwrap();
        let rebuilt = Warehouse::parse("rebuilt", &data).unwrap();
        Projector::new(store.clone(), rebuilt.clone(), "sales", "orders").run(&|_| {}).await.unwrap();
        for table in TABLES {
            assert_eq!(rows(&store, &live, table).await, rows(&store, &rebuilt, table).await, "{table} converges to the rebuild");
        }
        store.close().await;
    });
}
