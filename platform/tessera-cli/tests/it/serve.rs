//! `tessera serve --demo`, `tessera publish` and `tessera append`: the real
//! binary, a real server process, real HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{repo, stderr, stdout};

/// A `tessera serve --demo` process and the address it serves at.
pub(crate) struct Demo {
    child: Child,
    pub(crate) base: String,
    /// Keeps the reader thread of the server's output alive.
    _output: std::sync::mpsc::Receiver<String>,
}

impl Demo {
    pub(crate) fn start(data_dir: &Path) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .current_dir(repo())
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut base = None;
        let mut seen = Vec::new();
        while base.is_none() {
            let line =
                rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("no address within 2 minutes; output: {seen:?}"));
            if let Some(url) = line.strip_prefix("Tessera is serving at ") {
                base = Some(url.to_owned());
            }
            seen.push(line);
        }
        let demo = Demo { child, base: base.unwrap(), _output: rx };
        demo.lines_so_far(seen);
        demo
    }

    fn lines_so_far(&self, seen: Vec<String>) {
        SEEN.with(|s| *s.borrow_mut() = seen);
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill().unwrap();
        panic!("the server did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Demo {
    /// A failing test must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

thread_local! {
    static SEEN: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new().get(url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    })
}

fn tessera_remote(args: &[&str], base: &str, token: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).args(["--server", base, "--token", token]).current_dir(repo()).output().unwrap()
}

fn count_events(base: &str, product: &str, token: &str) -> usize {
    let (mut after, mut total) = (0, 0);
    loop {
        let (status, page) = get(&format!("{base}/api/v1/products/{product}/events?after={after}&limit=10000"), Some(token));
        assert_eq!(status, 200, "{page}");
        let n = page["events"].as_array().unwrap().len();
        if n == 0 {
            return total;
        }
        total += n;
        after = page["next_after"].as_i64().unwrap();
    }
}

#[test]
fn demo_publishes_and_loads_every_example_then_clients_publish_and_append() {
    let _servers = crate::shared();
    let data = tempfile::tempdir().unwrap();
    let demo = Demo::start(data.path());
    let base = demo.base.clone();
    let printed = SEEN.with(|s| s.borrow().join("\n"));

    // Every example product, with all of its sample events.
    let (status, body) = get(&format!("{base}/api/v1/products"), None);
    assert_eq!(status, 200);
    let products: Vec<String> = body["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", p["domain"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    assert_eq!(products, ["customers/profiles", "logistics/shipments", "payments/transactions", "sales/orders"]);

    let principals: Value = serde_json::from_str(&std::fs::read_to_string(data.path().join("demo-principals.json")).unwrap()).unwrap();
    let token_of =
        |name: &str| principals.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["token"].as_str().unwrap().to_owned();
    for p in principals.as_array().unwrap() {
        assert!(p["roles"].as_array().unwrap().iter().all(|r| ["owner", "steward", "analyst"].contains(&r.as_str().unwrap())));
        assert!(printed.contains(p["token"].as_str().unwrap()), "tokens are printed");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join("demo-principals.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the token file is private");
    }
    for dir in ["customers-profiles", "logistics-shipments", "payments-transactions", "sales-orders"] {
        let (domain, name) = dir.split_once('-').unwrap();
        let lines = std::fs::read_to_string(repo().join("products").join(dir).join("events.ndjson")).unwrap().lines().count();
        assert_eq!(count_events(&base, &format!("{domain}/{name}"), &token_of(&format!("{domain}-owner"))), lines, "{dir}");
    }

    // `tessera publish`: a compatible minor version, and a refusal.
    let work = tempfile::tempdir().unwrap();
    let contract = std::fs::read_to_string(repo().join("products/sales-orders/contract.yaml")).unwrap();
    let next = work.path().join("orders-1.3.0.yaml");
    std::fs::write(&next, contract.replace("version: 1.2.0", "version: 1.3.0").replace("title: Orders", "title: Web shop orders")).unwrap();
    let out = tessera_remote(&["publish", next.to_str().unwrap()], &base, &token_of("sales-owner"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("sales/orders 1.3.0: published"), "{}", stdout(&out));
    let out = tessera_remote(&["publish", next.to_str().unwrap()], &base, &token_of("analyst"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("403 Forbidden forbidden"), "{}", stderr(&out));

    // `tessera append`: new events in batches; then a file whose third line is bad.
    let template: Value = serde_json::from_str(contract_line(2)).unwrap();
    let event = |stream: &str| {
        let mut e = template.clone();
        e["stream"] = stream.into();
        e["id"] = uuid::Uuid::now_v7().to_string().into();
        e["expected_version"] = "any".into();
        e.to_string()
    };
    let good = work.path().join("good.ndjson");
    std::fs::write(&good, [event("ORD-N1"), event("ORD-N2"), event("ORD-N3")].join("\n")).unwrap();
    let out = tessera_remote(&["append", "sales/orders", good.to_str().unwrap(), "--batch", "2"], &base, &token_of("sales-owner"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("3 events appended, 0 already stored"), "{}", stdout(&out));
    let bad = work.path().join("bad.ndjson");
    std::fs::write(&bad, [event("ORD-B1"), event("ORD-B2"), "{\"stream\": \"ORD-B3\"}".to_owned()].join("\n")).unwrap();
    let out = tessera_remote(&["append", "sales/orders", bad.to_str().unwrap(), "--batch", "2"], &base, &token_of("sales-owner"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("lines 3-3 rejected") && err.contains("line 3:"), "{err}");
    assert!(err.contains("lines 1-2 were stored"), "{err}");

    // `tessera sql`: an aligned table masked for the caller, CSV, and a refusal.
    assert!(printed.contains("PostgreSQL protocol at 127.0.0.1:"), "{printed}");
    let query = "SELECT customer_id, email FROM customers.profiles.profiles WHERE email IS NOT NULL ORDER BY customer_id LIMIT 2";
    let out = tessera_remote(&["sql", query], &base, &token_of("analyst"));
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("| customer_id") && table.contains("| ***@example."), "{table}");
    assert!(stderr(&out).contains("(2 rows,"), "{}", stderr(&out));
    let out = tessera_remote(&["sql", query, "--format", "csv"], &base, &token_of("customers-owner"));
    let csv = stdout(&out);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(lines[0], "customer_id,email");
    assert!(!lines[1].contains("***"), "the owner reads emails in the clear: {csv}");
    let out = tessera_remote(&["sql", "DROP TABLE customers.profiles.profiles"], &base, &token_of("analyst"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("read_only") && stderr(&out).contains("DROP TABLE is not allowed"), "{}", stderr(&out));

    let mut demo = demo;
    let status = demo.stop();
    assert!(status.success(), "graceful shutdown on SIGTERM: {status:?}");

    // Again on the same data directory: the same tokens, nothing loaded twice.
    let mut again = Demo::start(data.path());
    let printed = SEEN.with(|s| s.borrow().join("\n"));
    assert!(printed.contains(&token_of("analyst")), "the demo tokens are kept");
    assert!(printed.contains("0 events appended"), "{printed}");
    let lines = std::fs::read_to_string(repo().join("products/sales-orders/events.ndjson")).unwrap().lines().count();
    assert_eq!(count_events(&again.base, "sales/orders", &token_of("sales-owner")), lines + 5);
    assert!(again.stop().success());
}

/// The `n`-th line (from 1) of the sales/orders sample events.
fn contract_line(n: usize) -> &'static str {
    static EVENTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EVENTS.get_or_init(|| std::fs::read_to_string(repo().join("products/sales-orders/events.ndjson")).unwrap()).lines().nth(n - 1).unwrap()
}

/// `tessera.toml` principals (a hashed token) and `TESSERA_*` overrides, and
/// a configuration mistake as a clear error.
#[test]
fn config_file_and_environment() {
    let _servers = crate::shared();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("tessera.toml");
    let token = "tsr_configured_token";
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\n[[principals]]\nname = \"sales-bot\"\ntoken_sha256 = \"{}\"\nroles = [\"owner\"]\ndomains = [\"sales\"]\n",
            tessera_store::principals::hash_token(token)
        ),
    )
    .unwrap();
    // The environment overrides the file's unusable port.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("TESSERA_LISTEN", "127.0.0.1:0")
        .env("TESSERA_PG_LISTEN", "off")
        .env("TESSERA_DATA_DIR", &data)
        .env("TESSERA_LOG", "warn")
        .current_dir(repo())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let base = BufReader::new(out).lines().map_while(Result::ok).find_map(|l| l.strip_prefix("Tessera is serving at ").map(str::to_owned));
    let base = base.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the server did not start")
    });
    let contract = std::fs::read_to_string(repo().join("products/sales-orders/contract.yaml")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = runtime.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/api/v1/products"))
            .bearer_auth(token)
            .header("content-type", "application/yaml")
            .body(contract)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 201, "the configured principal publishes");
    assert!(data.join("tessera.db").exists(), "TESSERA_DATA_DIR holds the database");

    // A misspelt key is named, and the command could not run (exit 2).
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nmax_body_byte = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["serve", "--config"]).arg(&config).current_dir(repo()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_body_byte"), "{}", stderr(&out));
}
