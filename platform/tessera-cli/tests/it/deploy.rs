//! `deploy/`: the container image, the compose trial and the Kubernetes
//! manifests set the environment, command and ports that `tessera serve`
//! actually reads. No container engine runs here (`.ci/run` lints the files
//! with hadolint, docker-compose and kubernetes-validate): the binary is
//! started with the manifests' own environment, against PostgreSQL and the
//! S3-compatible server, and must answer `/readyz`, then drain on SIGTERM.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use yaml_rust2::{Yaml, YamlLoader};

use crate::repo;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `KEY=value` lines (comments and blank lines skipped).
fn env_file(path: &str) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{path}: `{l}` is not KEY=value"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The Dockerfile's final stage: its `ENV` settings, `EXPOSE`d ports, `ENTRYPOINT` and `CMD`.
struct Image {
    env: BTreeMap<String, String>,
    ports: Vec<u16>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

fn image() -> Image {
    let text = read("deploy/Dockerfile").replace("\\\n", " ");
    let last = text.rfind("\nFROM ").expect("a final stage");
    let mut image = Image { env: BTreeMap::new(), ports: Vec::new(), entrypoint: Vec::new(), cmd: Vec::new() };
    let exec = |rest: &str| -> Vec<String> { serde_json::from_str(rest.trim()).expect("exec form: a JSON array") };
    for line in text[last..].lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=value");
                image.env.insert(k.to_owned(), v.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("EXPOSE ") {
            image.ports.extend(rest.split_whitespace().map(|p| p.parse::<u16>().expect("a port")));
        } else if let Some(rest) = line.strip_prefix("ENTRYPOINT ") {
            image.entrypoint = exec(rest);
        } else if let Some(rest) = line.strip_prefix("CMD ") {
            image.cmd = exec(rest);
        }
    }
    image
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("{address} has no port"))
}

/// Every `TESSERA_*` variable the files set is one the server reads, and
/// the ports line up: what it listens on, what the image exposes, what the
/// Deployment names and the NetworkPolicy lets in.
#[test]
fn the_files_name_only_settings_and_ports_the_server_has() {
    let known: Vec<String> = tessera_server::config::Config::ENVIRONMENT.iter().map(|k| format!("TESSERA_{}", k.to_uppercase())).collect();
    let image = image();
    let config = env_file("deploy/kubernetes/config.env");
    let secret = env_file("deploy/kubernetes/secret.env");
    let compose = yaml("deploy/compose.yaml");
    let compose_env: Vec<String> = compose[0]["services"]["tessera"]["environment"]
        .as_hash()
        .expect("compose environment")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for name in image.env.keys().chain(config.keys()).chain(secret.keys()).chain(compose_env.iter()) {
        if name.starts_with("TESSERA_") {
            assert!(known.contains(name), "{name} is set in deploy/ but `tessera serve` does not read it (it reads {known:?})");
        } else {
            assert!(name.starts_with("AWS_"), "{name}: only TESSERA_* and the standard AWS_* variables configure the server");
        }
    }
    // The masking key, the key-encryption key and the database URL are secrets, not configuration.
    for secret_name in ["TESSERA_MASKING_KEY", "TESSERA_KEK", "TESSERA_DATABASE_URL", "AWS_SECRET_ACCESS_KEY"] {
        assert!(secret.contains_key(secret_name), "{secret_name} belongs in the Secret");
        assert!(!config.contains_key(secret_name) && !image.env.contains_key(secret_name), "{secret_name} outside the Secret");
    }
    assert_eq!(image.entrypoint, ["/usr/local/bin/tessera"]);
    assert_eq!(image.cmd.first().map(String::as_str), Some("serve"));
    let http = port_of(&config["TESSERA_LISTEN"]);
    let pg = port_of(&config["TESSERA_PG_LISTEN"]);
    assert_eq!((port_of(&image.env["TESSERA_LISTEN"]), port_of(&image.env["TESSERA_PG_LISTEN"])), (http, pg));
    assert_eq!(image.ports, [http, pg], "EXPOSE");
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let container = &deployment[0]["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<i64> = container["ports"].as_vec().expect("ports").iter().filter_map(|p| p["containerPort"].as_i64()).collect();
    assert_eq!(ports, [i64::from(http), i64::from(pg)], "the Deployment's container ports");
    let args: Vec<&str> = container["args"].as_vec().expect("args").iter().filter_map(Yaml::as_str).collect();
    assert_eq!(args.first(), Some(&"serve"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    let grace = deployment[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().expect("a grace period");
    let drain: i64 = config["TESSERA_DRAIN_SECONDS"].parse().expect("drain seconds");
    let timeout: i64 = config.get("TESSERA_QUERY_TIMEOUT_SECONDS").map_or(30, |t| t.parse().expect("query timeout seconds"));
    // The drain, then the longest query finishing, then projectors stopping (10 s at most), inside the grace period.
    assert!(
        grace > drain + timeout + 10,
        "terminationGracePeriodSeconds {grace} leaves no time after a {drain} s drain and {timeout} s queries"
    );
    let policy = yaml("deploy/kubernetes/networkpolicy.yaml");
    let open: Vec<i64> =
        policy[0]["spec"]["ingress"][0]["ports"].as_vec().expect("ingress ports").iter().filter_map(|p| p["port"].as_i64()).collect();
    assert_eq!(open, [i64::from(http), i64::from(pg)], "the NetworkPolicy's ingress");
}

/// The server started as the image and the Deployment start it: the image's
/// command and environment, the ConfigMap's and the Secret's settings; only
/// what points at this machine is replaced (addresses, the database, the
/// bucket, the key-encryption key that secret.env leaves as a placeholder).
/// It must be ready, then not ready for its drain after SIGTERM, then stop.
#[test]
fn the_server_runs_with_the_manifests_environment() {
    let _servers = crate::shared();
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let Some(bucket) = std::env::var("TESSERA_TEST_S3").ok().filter(|b| !b.is_empty()) else {
        assert!(!in_ci, "TESSERA_TEST_S3 is not set: CI must provide an S3-compatible server (.ci/run starts one)");
        eprintln!("SKIPPED: TESSERA_TEST_S3 is not set");
        return;
    };
    let admin = std::env::var("TESSERA_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("tessera_deploy_{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let created = runtime.block_on(async {
        use sqlx::Executor as _;
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
        conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).await?;
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await?;
        Ok::<_, sqlx::Error>(())
    });
    if let Err(e) = created {
        assert!(!in_ci, "PostgreSQL is required under CI=true: {admin}: {e}");
        eprintln!("SKIPPED: no PostgreSQL at {admin}: {e}");
        return;
    }
    let database = format!("{}/{name}", admin.rsplit_once('/').expect("a database URL").0);
    let dir = tempfile::tempdir().unwrap();
    let image = image();
    let mut env: BTreeMap<String, String> = image.env.clone();
    env.extend(env_file("deploy/kubernetes/config.env"));
    env.extend(env_file("deploy/kubernetes/secret.env"));
    let here = [
        ("TESSERA_LISTEN", "127.0.0.1:0".to_owned()),
        ("TESSERA_PG_LISTEN", "127.0.0.1:0".to_owned()),
        ("TESSERA_DATA_DIR", dir.path().display().to_string()),
        ("TESSERA_DATABASE_URL", database),
        ("TESSERA_WAREHOUSE", format!("{bucket}/deploy-{}", std::process::id())),
        ("TESSERA_KEK", "5a".repeat(32)),
    ];
    for (k, v) in here {
        assert!(env.contains_key(k), "the manifests do not set {k}");
        env.insert(k.to_owned(), v);
    }
    // The S3 server's address and credentials are this machine's (the standard AWS_* variables).
    for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        env.insert(k, v);
    }
    // The Secret's placeholders are refused, not served with: a masking key
    // anyone can read would make hashed values a dictionary lookup.
    let refused = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("TESSERA_MASKING_KEY"), "the placeholder masking key was accepted: {said}");
    env.insert("TESSERA_MASKING_KEY".to_owned(), "deploy-test-masking-key-0123456789abcdef".to_owned());
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let args: Vec<String> = deployment[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || BufReader::new(log).lines().map_while(Result::ok).collect::<Vec<String>>());
    // Killed if the test fails before it stops on its own.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut child = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let base = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("not serving within a minute: {seen:?}"));
        if let Some(url) = line.strip_prefix("Tessera is serving at ") {
            break url.to_owned();
        }
        seen.push(line);
    };
    let readyz = || {
        let o = Command::new("curl").args(["-s", "-o", "/dev/stderr", "-w", "%{http_code}", &format!("{base}/readyz")]).output().unwrap();
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (status, body) = readyz();
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("\"status\":\"ready\""), "{body}");
    Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    let stopping = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = readyz();
    assert_eq!(status, "503", "not ready while draining: {body}");
    assert!(body.contains("\"draining\":true"), "{body}");
    let stopped = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(stopping.elapsed() < Duration::from_secs(40), "still running 40 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(stopped.success(), "{stopped:?}");
    // The log (JSON lines, as the Deployment asks): Tessera's own events
    // from INFO up; the libraries' only from WARN up.
    let log = log.join().unwrap();
    assert!(log.iter().any(|l| l.contains("\"stopped\"")), "{log:?}");
    for line in &log {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let (level, target) = (event["level"].as_str().unwrap_or(""), event["target"].as_str().unwrap_or(""));
        assert!(target.starts_with("tessera") || matches!(level, "WARN" | "ERROR"), "a library's {level} event by default: {line}");
    }
    let drain: u64 = env["TESSERA_DRAIN_SECONDS"].parse().unwrap();
    assert!(stopping.elapsed() >= Duration::from_secs(drain), "stopped before its drain of {drain} s");
    let _ = runtime.block_on(async {
        use sqlx::Executor as _;
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
        conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await
    });
}
