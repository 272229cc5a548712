//! Configuration: `tessera.toml`, overridden by `TESSERA_*` environment
//! variables, overridden by command-line flags (applied by the caller).
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data_dir = ".tessera"
//! # database_url = "postgres://tessera@db.internal/tessera"
//! max_body_bytes = 67108864
//! # warehouse = "s3://bucket/prefix"   # default: <data_dir>/warehouse
//! retention_hours = 168        # time travel window: vacuum keeps files younger than this
//! compact_after_files = 64     # a table with this many files is compacted
//! lease_seconds = 10           # another process takes a product's projection over this long after its holder dies
//! pg_listen = "127.0.0.1:5433" # the PostgreSQL wire protocol; "off" to disable
//! masking_key = "<secret>"     # HMAC key of the `hash` masking; default: generated once into <data_dir>/masking.key
//! kek = "<64 hex digits>"      # key-encryption key of the data keys that seal personal values; required with database_url,
//!                              # else generated once into <data_dir>/kek.key
//! query_memory_mb = 512        # per query
//! query_timeout_seconds = 30   # per query, from arrival to last row
//! query_max_rows = 1000000     # a longer result is cut here (and says so)
//! query_max_sql_bytes = 1048576 # the SQL text of one query
//! query_max_depth = 256        # nesting of expressions, subqueries, set operations and joins
//! query_concurrency = 8        # queries running at once in this server
//! query_concurrency_per_principal = 4  # ... for one signed-in principal
//! query_concurrency_public = 2 # ... for all anonymous callers together
//! query_memory_budget_mb = 2048 # what all running queries may add to the server's memory
//! drain_seconds = 0            # on shutdown, /readyz says "not ready" this long before connections close
//!
//! [[principals]]
//! name = "sales-bot"
//! token_sha256 = "<hex sha256 of the token>"   # or token = "..." (hashed on load)
//! roles = ["owner"]
//! domains = ["sales"]
//! ```
//!
//! Environment: `TESSERA_LISTEN`, `TESSERA_DATA_DIR`, `TESSERA_DATABASE_URL`,
//! `TESSERA_MAX_BODY_BYTES`, `TESSERA_WAREHOUSE`, `TESSERA_RETENTION_HOURS`,
//! `TESSERA_COMPACT_AFTER_FILES`, `TESSERA_LEASE_SECONDS`, `TESSERA_PG_LISTEN`, `TESSERA_MASKING_KEY`, `TESSERA_KEK`,
//! `TESSERA_QUERY_MEMORY_MB`, `TESSERA_QUERY_TIMEOUT_SECONDS`, `TESSERA_QUERY_MAX_ROWS`, `TESSERA_QUERY_MAX_SQL_BYTES`,
//! `TESSERA_QUERY_MAX_DEPTH`, `TESSERA_QUERY_CONCURRENCY`, `TESSERA_QUERY_CONCURRENCY_PER_PRINCIPAL`,
//! `TESSERA_QUERY_CONCURRENCY_PUBLIC`, `TESSERA_QUERY_MEMORY_BUDGET_MB`, `TESSERA_DRAIN_SECONDS`. S3 credentials and endpoint come
//! from the standard `AWS_*` environment variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tessera_contract::Role;
use tessera_store::principals::hash_token;
use tessera_store::{Principal, PrincipalRecord};

/// The server's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: the SQLite file `<data_dir>/tessera.db`.
    pub database_url: Option<String>,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Where the tables live: a directory (relative to the working
    /// directory) or a URL such as `s3://bucket/prefix`. `None`:
    /// `<data_dir>/warehouse`.
    pub warehouse: Option<String>,
    /// Vacuum deletes files that no table version younger than this reads:
    /// time travel works inside this window.
    pub retention_hours: u64,
    /// A table with this many live files is compacted after a projection run.
    pub compact_after_files: usize,
    /// How long a projector's lease outlives its holder: another process
    /// (or this one, restarted) takes the product over after this long.
    pub lease_seconds: u64,
    /// Where the PostgreSQL wire protocol listens (`off`: nowhere).
    pub pg_listen: String,
    /// The HMAC key of the `hash` masking strategy. Every process of a
    /// deployment needs the same one (hashes must agree); when unset, one
    /// is generated into `<data_dir>/masking.key` on first start.
    pub masking_key: Option<String>,
    /// The key-encryption key: wraps the per-subject data keys that seal
    /// personal values in the log and the tables. It must never be stored
    /// beside the database (a backup of one must not open the other), every
    /// process of a deployment needs the same one, and losing it loses every
    /// personal value. Required when `database_url` is set; for the embedded
    /// default, generated into `<data_dir>/kek.key` on first start.
    pub kek: Option<String>,
    /// Memory one query may use, in MiB.
    pub query_memory_mb: usize,
    /// How long one query may run, in seconds.
    pub query_timeout_seconds: u64,
    /// The most rows one query returns.
    pub query_max_rows: usize,
    /// The longest SQL text one query may have, in bytes.
    pub query_max_sql_bytes: usize,
    /// How deeply one query may nest.
    pub query_max_depth: usize,
    /// Queries running at once in this server.
    pub query_concurrency: usize,
    /// Queries one signed-in principal runs at once.
    pub query_concurrency_per_principal: usize,
    /// Queries all anonymous callers together run at once.
    pub query_concurrency_public: usize,
    /// Memory all running queries share, in MiB.
    pub query_memory_budget_mb: usize,
    /// A governance policy file replacing the built-in `contracts/policies.yaml`.
    pub policy: Option<PathBuf>,
    /// On shutdown, how long `/readyz` says "not ready" before the server
    /// stops accepting connections (for load balancers to notice).
    pub drain_seconds: u64,
    pub principals: Vec<PrincipalConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from(".tessera"),
            database_url: None,
            max_body_bytes: 64 * 1024 * 1024,
            warehouse: None,
            retention_hours: 168,
            compact_after_files: 64,
            lease_seconds: 10,
            pg_listen: "127.0.0.1:5433".into(),
            masking_key: None,
            kek: None,
            query_memory_mb: 512,
            query_timeout_seconds: 30,
            query_max_rows: 1_000_000,
            query_max_sql_bytes: 1 << 20,
            query_max_depth: 256,
            query_concurrency: 8,
            query_concurrency_per_principal: 4,
            query_concurrency_public: 2,
            query_memory_budget_mb: 2048,
            policy: None,
            drain_seconds: 0,
            principals: Vec::new(),
        }
    }
}

/// A principal as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    /// The token itself; prefer `token_sha256` so that the file holds no secret.
    pub token: Option<String>,
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub domains: Vec<String>,
}

impl Config {
    /// Loads `file` (if it exists; an explicitly named file must exist) and
    /// the environment over the defaults.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => return Err(format!("config file {} does not exist", path.display())),
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new("tessera.toml").exists() => figment = figment.merge(Toml::file_exact("tessera.toml")),
            None => {}
        }
        figment = figment.merge(Env::prefixed("TESSERA_").only(&Self::ENVIRONMENT));
        figment.extract().map_err(|e| format!("invalid configuration: {e}"))
    }

    /// The settings the environment may set, as `TESSERA_<NAME>` (upper case).
    pub const ENVIRONMENT: [&'static str; 22] = [
        "listen",
        "data_dir",
        "database_url",
        "max_body_bytes",
        "policy",
        "warehouse",
        "retention_hours",
        "compact_after_files",
        "lease_seconds",
        "pg_listen",
        "masking_key",
        "kek",
        "query_memory_mb",
        "query_timeout_seconds",
        "query_max_rows",
        "query_max_sql_bytes",
        "query_max_depth",
        "query_concurrency",
        "query_concurrency_per_principal",
        "query_concurrency_public",
        "query_memory_budget_mb",
        "drain_seconds",
    ];

    /// The database URL: configured, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| tessera_store::db::sqlite_url(&self.data_dir))
    }

    /// The warehouse: configured, or `<data_dir>/warehouse`.
    pub fn warehouse(&self) -> Result<tessera_projection::Warehouse, String> {
        match &self.warehouse {
            Some(location) => tessera_projection::Warehouse::parse(location, Path::new(".")),
            None => tessera_projection::Warehouse::parse("warehouse", &self.data_dir),
        }
    }

    /// How the projectors keep tables tidy.
    pub fn projection_options(&self) -> tessera_projection::service::Options {
        tessera_projection::service::Options {
            retention: std::time::Duration::from_secs(self.retention_hours.saturating_mul(3600)),
            compact_after_files: self.compact_after_files.max(2),
            lease: std::time::Duration::from_secs(self.lease_seconds.max(1)),
            ..Default::default()
        }
    }

    /// Per-query limits.
    pub fn query_limits(&self) -> tessera_query::Limits {
        tessera_query::Limits {
            memory_bytes: self.query_memory_mb.max(16).saturating_mul(1 << 20),
            timeout: std::time::Duration::from_secs(self.query_timeout_seconds.max(1)),
            max_rows: self.query_max_rows.max(1),
            bounds: tessera_query::Bounds {
                max_sql_bytes: self.query_max_sql_bytes.max(1024),
                max_depth: self.query_max_depth.max(8),
                ..tessera_query::Bounds::default()
            },
            concurrency: tessera_query::Concurrency {
                total: self.query_concurrency.max(1),
                per_principal: self.query_concurrency_per_principal.max(1),
                public: self.query_concurrency_public.max(1),
                memory_budget_bytes: self.query_memory_budget_mb.max(64).saturating_mul(1 << 20),
                ..tessera_query::Concurrency::default()
            },
            ..tessera_query::Limits::default()
        }
    }

    /// Where the PostgreSQL protocol listens, if anywhere.
    pub fn pg_listen(&self) -> Result<Option<SocketAddr>, String> {
        match self.pg_listen.trim() {
            "" | "off" | "none" => Ok(None),
            a => a.parse().map(Some).map_err(|e| format!("pg_listen `{a}` is not an address such as 127.0.0.1:5433 (or `off`): {e}")),
        }
    }

    /// The masking key: configured, or the one in `<data_dir>/masking.key`
    /// (generated there on first use).
    pub fn masking_key(&self) -> Result<Vec<u8>, String> {
        if let Some(k) = &self.masking_key {
            if k.len() < 16 {
                return Err("masking_key must be at least 16 characters: it is what keeps hashed values from a dictionary attack".into());
            }
            // A placeholder from deploy/ left as it is would be a key anyone can read.
            if k.to_ascii_lowercase().contains("change-me") {
                return Err("masking_key (TESSERA_MASKING_KEY) is still the placeholder `CHANGE-ME…`: set a random secret of at least \
                            32 characters, the same for every process of the deployment"
                    .into());
            }
            return Ok(k.as_bytes().to_vec());
        }
        let path = self.data_dir.join("masking.key");
        match std::fs::read_to_string(&path) {
            Ok(k) if k.trim().len() >= 16 => Ok(k.trim().as_bytes().to_vec()),
            Ok(_) => Err(format!("{} holds no key (at least 16 characters); delete it to have one generated", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = tessera_store::principals::new_token()?;
                std::fs::create_dir_all(&self.data_dir).map_err(|e| format!("cannot create {}: {e}", self.data_dir.display()))?;
                std::fs::write(&path, &key).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(key.into_bytes())
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The key-encryption key: configured, or, for the embedded database
    /// only, the one in `<data_dir>/kek.key` (generated there on first use).
    pub fn kek(&self) -> Result<tessera_store::Kek, String> {
        let bad = |e: tessera_store::SealError| format!("kek: {e}");
        if let Some(k) = &self.kek {
            return tessera_store::Kek::parse(k).map_err(bad);
        }
        if self.database_url.is_some() {
            return Err(
                "kek is not set: with database_url, give the key-encryption key (64 hex digits, e.g. from `openssl rand -hex 32`) \
                 in TESSERA_KEK or `kek` from a secret store; the same key in every process, never stored beside the database"
                    .into(),
            );
        }
        let path = self.data_dir.join("kek.key");
        match std::fs::read_to_string(&path) {
            Ok(k) => tessera_store::Kek::parse(&k).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = tessera_store::Kek::generate_text().map_err(bad)?;
                std::fs::create_dir_all(&self.data_dir).map_err(|e| format!("cannot create {}: {e}", self.data_dir.display()))?;
                write_secret(&path, &key).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                tessera_store::Kek::parse(&key).map_err(bad)
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The file the key-encryption key is kept in, for the embedded
    /// database with no key configured (`None` otherwise).
    pub fn kek_file(&self) -> Option<PathBuf> {
        (self.kek.is_none() && self.database_url.is_none()).then(|| self.data_dir.join("kek.key"))
    }

    /// The configured principals, with their tokens hashed.
    pub fn principal_records(&self) -> Result<Vec<PrincipalRecord>, String> {
        self.principals
            .iter()
            .map(|p| {
                let token_sha256 = match (&p.token, &p.token_sha256) {
                    (Some(t), None) => hash_token(t),
                    (None, Some(h)) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => h.to_ascii_lowercase(),
                    (None, Some(_)) => return Err(format!("principal `{}`: token_sha256 must be 64 hex digits", p.name)),
                    _ => return Err(format!("principal `{}`: give exactly one of `token` and `token_sha256`", p.name)),
                };
                if p.name.is_empty() || p.name == "public" {
                    return Err(format!("principal name `{}` is reserved or empty", p.name));
                }
                Ok(PrincipalRecord {
                    principal: Principal { name: p.name.clone(), roles: p.roles.clone(), domains: p.domains.clone() },
                    token_sha256,
                    origin: "config".into(),
                })
            })
            .collect()
    }
}

/// Writes a secret into a new file only its owner may read.
pub fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
