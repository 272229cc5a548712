//! `tessera publish`, `append`, `rebuild`, `compact`, `vacuum`, `forget` and
//! `readmit`: clients of a running server.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Where the server is and who is asking.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The server's base URL.
    #[arg(long, env = "TESSERA_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A bearer token (demo tokens: <data-dir>/demo-principals.json).
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Remote {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }

    fn request(&self, client: &reqwest::Client, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = client.request(method, self.url(path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// The server's error body, rendered for a terminal.
fn render_error(status: reqwest::StatusCode, body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return format!("HTTP {status}: {body}");
    };
    let mut out = format!("HTTP {status} {}: {}", v["code"].as_str().unwrap_or("error"), v["message"].as_str().unwrap_or(body));
    if let Some(errors) = v["errors"].as_array() {
        for e in errors.iter().take(20) {
            if let Some(m) = e["message"].as_str() {
                let at = match (e["line"].as_u64(), e["column"].as_u64(), e["index"].as_u64()) {
                    (Some(l), Some(c), _) => format!("{l}:{c}: "),
                    (Some(l), None, _) => format!("line {l}: "),
                    (None, _, Some(i)) => format!("event {i}: "),
                    _ => String::new(),
                };
                let pointer = e["pointer"].as_str().filter(|p| !p.is_empty()).map(|p| format!(" [{p}]")).unwrap_or_default();
                out.push_str(&format!("\n  {at}{m}{pointer}"));
            } else if let Some(s) = e.as_str() {
                out.push_str(&format!("\n  {s}"));
            }
        }
    }
    out
}

/// Sends `request`; the body of a successful answer, or `None` once the
/// server's error is printed (prefixed with `what`).
async fn exchange(remote: &Remote, request: reqwest::RequestBuilder, what: &str) -> Result<Option<String>> {
    let response = request.send().await.with_context(|| format!("cannot reach the server at {}", remote.server))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        eprintln!("{what}: {}", render_error(status, &body));
        return Ok(None);
    }
    Ok(Some(body))
}

/// `tessera forget DOMAIN SUBJECT --reason R` (`all` for every domain).
pub fn forget(domain: &str, subject: &str, reason: &str, remote: &Remote) -> Result<ExitCode> {
    let mut body = serde_json::json!({ "subject": subject, "reason": reason });
    if domain != "all" {
        body["domain"] = Value::from(domain);
    }
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let request = remote.request(&client, reqwest::Method::POST, "/api/v1/subjects/forget").json(&body);
        let Some(answer) = exchange(remote, request, &format!("forget {subject}")).await? else { return Ok(ExitCode::from(1)) };
        let v: Value = serde_json::from_str(&answer)?;
        for f in v["forgotten"].as_array().into_iter().flatten() {
            let what = if f["already"].as_bool() == Some(true) {
                "already forgotten".to_owned()
            } else {
                format!("forgotten, {} key(s) destroyed", f["keys_destroyed"].as_u64().unwrap_or(0))
            };
            println!("{} in {}: {what}", f["subject"].as_str().unwrap_or_default(), f["domain"].as_str().unwrap_or_default());
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `tessera readmit DOMAIN SUBJECT`.
pub fn readmit(domain: &str, subject: &str, remote: &Remote) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let request = remote
            .request(&client, reqwest::Method::POST, "/api/v1/subjects/readmit")
            .json(&serde_json::json!({ "subject": subject, "domain": domain }));
        if exchange(remote, request, &format!("readmit {subject}")).await?.is_none() {
            return Ok(ExitCode::from(1));
        }
        println!("{subject} in {domain}: re-admitted; its next event gets a new key");
        Ok(ExitCode::SUCCESS)
    })
}

pub fn publish(file: &Path, remote: &Remote) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let request =
            remote.request(&client, reqwest::Method::POST, "/api/v1/products").header("content-type", "application/yaml").body(text);
        let Some(body) = exchange(remote, request, &file.display().to_string()).await? else { return Ok(ExitCode::from(1)) };
        let v: Value = serde_json::from_str(&body)?;
        println!(
            "{}/{} {}: {}",
            v["domain"].as_str().unwrap_or_default(),
            v["name"].as_str().unwrap_or_default(),
            v["version"].as_str().unwrap_or_default(),
            v["outcome"].as_str().unwrap_or_default()
        );
        for c in v["changes"].as_array().into_iter().flatten() {
            println!(
                "  [{}] {}: {}",
                c["impact"].as_str().unwrap_or_default(),
                c["subject"].as_str().unwrap_or_default(),
                c["message"].as_str().unwrap_or_default()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn append(product: &str, file: &Path, batch: usize, remote: &Remote) -> Result<ExitCode> {
    let Some((domain, name)) = product.split_once('/') else {
        bail!("name the product as DOMAIN/NAME, e.g. sales/orders");
    };
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let handle = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let size = handle.metadata().map(|m| m.len()).unwrap_or(0);
    let mut lines = BufReader::new(handle).lines();
    let path = format!("/api/v1/products/{domain}/{name}/events");
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (mut appended, mut duplicates, mut line_no) = (0u64, 0u64, 0usize);
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        loop {
            let first_line = line_no + 1;
            let mut body = String::new();
            let mut count = 0;
            while count < batch {
                let Some(line) = lines.next() else { break };
                let line = line.with_context(|| format!("{}:{}: cannot read the line", file.display(), line_no + 1))?;
                line_no += 1;
                bar.inc(line.len() as u64 + 1);
                // Blank lines keep their place so that the server's line numbers map back.
                body.push_str(&line);
                body.push('\n');
                if !line.trim().is_empty() {
                    count += 1;
                }
            }
            if count == 0 {
                break;
            }
            let response = remote
                .request(&client, reqwest::Method::POST, &path)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .with_context(|| format!("cannot reach the server at {}", remote.server))?;
            let status = response.status();
            let text = response.text().await?;
            if !status.is_success() {
                bar.abandon();
                let shifted = shift_lines(&text, first_line - 1);
                eprintln!(
                    "{}: lines {first_line}-{line_no} rejected; nothing of them was stored: {}",
                    file.display(),
                    render_error(status, &shifted)
                );
                if first_line > 1 {
                    eprintln!(
                        "lines 1-{} were stored before; fix the file and run the same command again (stored events are recognised by id)",
                        first_line - 1
                    );
                }
                return Ok(ExitCode::from(1));
            }
            let v: Value = serde_json::from_str(&text)?;
            appended += v["appended"].as_u64().unwrap_or(0);
            duplicates += v["duplicates"].as_u64().unwrap_or(0);
            bar.set_message(format!("{appended} appended"));
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{product}: {appended} events appended, {duplicates} already stored, in {secs:.1} s ({:.0} events/s)",
            (appended + duplicates) as f64 / secs.max(1e-9)
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Rewrites the `line` fields of an error body from batch lines to file lines.
fn shift_lines(body: &str, offset: usize) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(body) else { return body.to_owned() };
    let shift = |x: &mut Value| {
        if let Some(l) = x.get("line").and_then(Value::as_u64) {
            x["line"] = Value::from(l + offset as u64);
        }
    };
    shift(&mut v);
    if let Some(errors) = v.get_mut("errors").and_then(Value::as_array_mut) {
        errors.iter_mut().for_each(shift);
    }
    v.to_string()
}

/// Asks the server to run `kind` (rebuild, compact, vacuum) on a product's
/// tables and follows it to the end, with a progress bar for a rebuild.
pub fn projection_command(kind: &str, product: &str, remote: &Remote) -> Result<ExitCode> {
    let Some((domain, name)) = product.split_once('/') else {
        bail!("name the product as DOMAIN/NAME, e.g. sales/orders");
    };
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let path = format!("/api/v1/products/{domain}/{name}/commands");
        let request = remote.request(&client, reqwest::Method::POST, &path).json(&serde_json::json!({ "kind": kind }));
        let Some(body) = exchange(remote, request, product).await? else { return Ok(ExitCode::from(1)) };
        let id = serde_json::from_str::<Value>(&body)?["id"].as_i64().context("the server's answer has no command id")?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{kind} {product}: waiting for its projector"));
        let started = Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let request = remote.request(&client, reqwest::Method::GET, &format!("{path}/{id}"));
            let Some(body) = exchange(remote, request, product).await? else {
                bar.abandon();
                return Ok(ExitCode::from(1));
            };
            let command: Value = serde_json::from_str(&body)?;
            let target = command["target"].as_i64().unwrap_or(0).max(0) as u64;
            let reached = command["progress"].as_i64().unwrap_or(0).max(0) as u64;
            match command["state"].as_str() {
                Some("running") => {
                    bar.set_length(target);
                    bar.set_position(reached.min(target));
                    bar.set_message(format!("{kind} {product}: events"));
                }
                Some("done") => {
                    bar.finish_and_clear();
                    println!("{kind} {product}: done in {:.1} s", started.elapsed().as_secs_f64());
                    println!("{}", serde_json::to_string_pretty(&command["outcome"])?);
                    return Ok(ExitCode::SUCCESS);
                }
                Some("failed") => {
                    bar.abandon();
                    eprintln!("{kind} {product} failed: {}", command["outcome"].as_str().unwrap_or("(no reason given)"));
                    return Ok(ExitCode::from(1));
                }
                _ => bar.tick(),
            }
        }
    })
}

/// How `tessera sql` prints a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlFormat {
    /// An aligned table.
    Table,
    Csv,
    Json,
}

/// `tessera sql "SELECT …"`: runs one query on the server as the token's
/// principal (masked for it) and prints the result.
pub fn sql(query: &str, format: SqlFormat, remote: &Remote) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let accept = match format {
            SqlFormat::Table => "application/vnd.apache.arrow.stream",
            SqlFormat::Csv => "text/csv",
            SqlFormat::Json => "application/json",
        };
        let started = Instant::now();
        let request = remote
            .request(&client, reqwest::Method::POST, "/api/v1/sql")
            .header("accept", accept)
            .json(&serde_json::json!({ "sql": query }));
        let response = request.send().await.with_context(|| format!("cannot reach the server at {}", remote.server))?;
        let status = response.status();
        let limit: Option<usize> = response.headers().get("x-tessera-row-limit").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = response.bytes().await.context("the server's answer broke off")?;
        if !status.is_success() {
            eprintln!("query failed: {}", render_error(status, &String::from_utf8_lossy(&body)));
            return Ok(ExitCode::from(1));
        }
        match format {
            SqlFormat::Csv | SqlFormat::Json => {
                use std::io::Write as _;
                std::io::stdout().write_all(&body)?;
                if format == SqlFormat::Json {
                    println!();
                }
            }
            SqlFormat::Table => {
                let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
                    .context("the result is not an Arrow stream")?;
                let batches = reader.collect::<Result<Vec<_>, _>>().context("the result's Arrow stream is broken")?;
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
                let cut = if limit == Some(rows) { ", the server's row limit: there may be more" } else { "" };
                eprintln!("({rows} row{}{cut}, {:.0} ms)", if rows == 1 { "" } else { "s" }, started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
