//! A real `tessera serve --demo` for the tests that need one, and its two
//! protocols: HTTP and psql.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::repo;

pub struct Server {
    pub child: Child,
    pub base: String,
    pub pg_port: u16,
    output: std::sync::mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `tessera serve --demo` on `data` with `env` set, its log (stderr)
/// into `log` if given, and waits until it serves.
pub fn start(data: &std::path::Path, env: &[(&str, String)], log: Option<&std::path::Path>) -> Server {
    let pg_port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--pg-listen", &format!("127.0.0.1:{pg_port}"), "--data-dir"])
        .arg(data)
        .current_dir(repo())
        .env("TESSERA_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        });
    let child = command.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Killed and waited for when dropped, whatever happens next.
    let mut server = Server { child, base: String::new(), pg_port, output: rx };
    let out = server.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = server.output.recv_timeout(Duration::from_secs(180)).expect("the demo server started within 3 minutes");
        if let Some(url) = line.strip_prefix("Tessera is serving at ") {
            server.base = url.to_owned();
            return server;
        }
    }
}

/// `sql` over HTTP: the status and the error code, if any.
pub async fn http(client: &reqwest::Client, base: &str, token: Option<&str>, sql: &str) -> (u16, String) {
    let mut request = client.post(format!("{base}/api/v1/sql")).json(&serde_json::json!({ "sql": sql }));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            let code = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.pointer("/error/code").or_else(|| v.pointer("/code")).and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| if body.contains("\"error\"") { body.chars().take(300).collect() } else { String::new() });
            (status, code)
        }
        Err(e) => (0, e.to_string()),
    }
}

/// `sql` over psql as `user`: whether it succeeded, and what it said.
pub fn psql(pg_port: u16, user: &str, token: &str, sql: &str) -> (bool, String) {
    let conn = format!("host=127.0.0.1 port={pg_port} user={user} password={token} dbname=tessera sslmode=disable connect_timeout=10");
    match Command::new("psql").args([conn.as_str(), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]).output() {
        Ok(o) => (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))),
        Err(e) => panic!("psql is required: {e}"),
    }
}
