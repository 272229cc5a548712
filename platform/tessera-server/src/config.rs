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
//! `TESSERA_COMPACT_AFTER_FILES`, `TESSERA_LEASE_SECONDS`. S3 credentials and endpoint come
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
    /// A governance policy file replacing the built-in `contracts/policies.yaml`.
    pub policy: Option<PathBuf>,
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
            policy: None,
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
        figment = figment.merge(Env::prefixed("TESSERA_").only(&[
            "listen",
            "data_dir",
            "database_url",
            "max_body_bytes",
            "policy",
            "warehouse",
            "retention_hours",
            "compact_after_files",
        ]));
        figment.extract().map_err(|e| format!("invalid configuration: {e}"))
    }

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
