//! Configuration: one [`Settings`] value built from four layers.
//!
//! Precedence, lowest first: built-in defaults < `tenantd.toml` (`--config` or
//! `TENANTD_CONFIG`) < `TENANTD_*` environment variables < command-line flags.
//!
//! Every knob is listed once in [`KNOBS`] with its file key, its environment variable and a
//! line of documentation; README's configuration table is that list. Unknown keys in the
//! file and unknown `TENANTD_*` variables are errors naming the key, so a typo never goes
//! unnoticed. Every error is one line naming the setting; the binary exits with code 2.
//!
//! The file is longer than most (about 520 lines before its tests) because it is one cohesive
//! thing: the settings types, the one knob table and the layering that reads it belong
//! together, and splitting them would scatter each knob over three files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// Most tenants one upgrade run works on at once.
pub const MAX_UPGRADE_CONCURRENCY: usize = 64;
/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "TENANTD_CONFIG";

/// A configuration problem, always naming the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {setting}: {problem}")]
pub struct ConfigError {
    /// The key, variable or flag that is wrong.
    pub setting: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { setting: setting.into(), problem: problem.into() }
    }
}

/// Format of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything tenantd can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Catalog database URL. Absent: the embedded default runs its own PostgreSQL.
    pub catalog_url: Option<SecretString>,
    /// Base64 of the 32-byte master key sealing stored secrets.
    pub master_key: Option<SecretString>,
    /// Earlier master keys, still accepted for opening secrets until `server rotate-key`.
    pub old_master_keys: Vec<SecretString>,
    /// Bearer token of the admin API.
    pub admin_token: Option<SecretString>,
    /// Directory of the embedded default (cluster, generated key and token).
    pub data_dir: PathBuf,
    /// `text` or `json` log lines (`RUST_LOG` filters them).
    pub log_format: LogFormat,
    /// HTTP server limits.
    pub http: HttpSettings,
    /// Provisioning workers.
    pub workers: WorkerSettings,
    /// Tenant connection pools.
    pub pools: PoolSettings,
    /// Names of tenant databases and roles.
    pub names: NameSettings,
    /// Upgrading tenant databases at start.
    pub upgrade: UpgradeSettings,
    /// Final archives of dropped tenants.
    pub lifecycle: LifecycleSettings,
    /// Scheduled backups.
    pub backups: BackupSettings,
    /// What each tenant role may use when it connects directly.
    pub limits: LimitSettings,
    /// The PgBouncer in front of the tenant databases, if any.
    pub pgbouncer: PgBouncerSettings,
    /// Delivery of webhooks.
    pub webhooks: WebhookSettings,
    /// Moving tenants between servers.
    pub moves: MoveSettings,
    /// Comparing the catalog with the servers.
    pub reconcile: ReconcileSettings,
    /// Warm spares (`[spares]`).
    pub spares: SpareSettings,
}

/// Delivery of webhooks (signed HTTP POSTs of tenant events).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Deliver to loopback, private and link-local addresses (refused by default: a webhook
    /// URL must not reach into the daemon's own network).
    pub allow_private: bool,
    /// Delays before each retry of a failed delivery; after the last one it is given up.
    #[serde(deserialize_with = "de_durations")]
    pub retry_delays: Vec<Duration>,
    /// How often each daemon looks for deliveries that are due.
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
    /// Longest wait for an endpoint's answer (connect, send, answer).
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        // Standard Webhooks' schedule: about 28 hours from the first attempt to the last.
        let delays = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];
        Self {
            allow_private: false,
            retry_delays: delays.into_iter().map(Duration::from_secs).collect(),
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Warm spares: databases provisioned ahead of need on every active server, handed to new
/// tenants by renaming (README, "Warm spares").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpareSettings {
    /// Spares kept ready per server (0: off). Each one is a real database and role, and
    /// counts against the server's `max_tenants`.
    pub per_server: usize,
}

/// Moving tenants between servers (`tenant move`, `server drain`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoveSettings {
    /// How long a moved tenant's source database is kept (renamed, with tenantd's marker)
    /// before a daemon drops it.
    #[serde(deserialize_with = "de_duration")]
    pub keep_source: Duration,
    /// Parallel jobs of `pg_dump -j` and `pg_restore -j` in a move.
    pub jobs: usize,
}

impl Default for MoveSettings {
    fn default() -> Self {
        Self { keep_source: Duration::from_secs(24 * 3600), jobs: 2 }
    }
}

/// The daemons' periodic reconcile (`tenantd reconcile` run in the background).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// How often one of the daemons compares the catalog with every server (`0s`: never;
    /// `tenantd reconcile` still works).
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Make the safe repairs in the background too (as `tenantd reconcile --repair`); off by
    /// default: the background check only reports.
    pub repair: bool,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self { interval: Duration::from_secs(600), repair: false }
    }
}

/// The PgBouncer that applications reach tenant databases through (`tenantd pgbouncer config`
/// writes its configuration). With `host` set, the connection details lent to tenants name
/// this route instead of the server, with `pool_mode = transaction`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgBouncerSettings {
    /// Host applications reach PgBouncer at; unset = details name the server itself.
    pub host: Option<String>,
    /// Port of that PgBouncer.
    pub port: u16,
}

impl Default for PgBouncerSettings {
    fn default() -> Self {
        Self { host: None, port: 6432 }
    }
}

/// Limits of tenant roles, applied on the servers (each tenant may override them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// `CONNECTION LIMIT` of each tenant role: one tenant cannot use up `max_connections`.
    pub connections_per_tenant: u32,
    /// Default `statement_timeout` of tenant sessions (`ALTER ROLE ... SET`); 0 = none.
    #[serde(deserialize_with = "de_duration")]
    pub statement_timeout: Duration,
    /// Default `idle_in_transaction_session_timeout` of tenant sessions; 0 = none.
    #[serde(deserialize_with = "de_duration")]
    pub idle_in_transaction_timeout: Duration,
    /// Storage quota of each tenant database in bytes; 0 = none. Over it, the tenant is
    /// read-only until it is under again.
    pub max_database_bytes: u64,
    /// How often database sizes are measured against the quotas.
    #[serde(deserialize_with = "de_duration")]
    pub quota_check_interval: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            connections_per_tenant: 20,
            statement_timeout: Duration::from_secs(60),
            idle_in_transaction_timeout: Duration::from_secs(300),
            max_database_bytes: 0,
            quota_check_interval: Duration::from_secs(60),
        }
    }
}

/// Final archives of dropped tenants.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleSettings {
    /// Directory for the archives of `DELETE /v1/tenants/{slug}?archive=true`; unset = such
    /// deletions are refused.
    pub archive_dir: Option<PathBuf>,
}

/// Daily backups of every READY or SUSPENDED tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSettings {
    /// Directory (one subdirectory per tenant); unset = no scheduled backups.
    pub dir: Option<PathBuf>,
    /// Time of day (UTC, `HH:MM`) of the daily run.
    pub daily_at: String,
    /// Daily backups kept (the newest of each day).
    pub keep_daily: usize,
    /// Weekly backups kept (the newest of each ISO week).
    pub keep_weekly: usize,
    /// Tenants backed up at once.
    pub concurrency: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self { dir: None, daily_at: "03:00".into(), keep_daily: 7, keep_weekly: 4, concurrency: 2 }
    }
}

impl BackupSettings {
    /// The daily time as (hour, minute).
    pub fn time_of_day(&self) -> Result<(u32, u32), ConfigError> {
        let bad =
            || ConfigError::new("backups.daily_at", format!("expected HH:MM (UTC), got {:?}", self.daily_at));
        let (h, m) = self.daily_at.split_once(':').ok_or_else(bad)?;
        let (h, m) = (h.parse::<u32>().map_err(|_| bad())?, m.parse::<u32>().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok((h, m))
    }
}

/// Upgrading tenant databases when a new build starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeSettings {
    /// Upgrade every READY tenant in the background when the daemon starts.
    pub auto: bool,
    /// Tenants upgraded at once by that run.
    pub concurrency: usize,
}

impl Default for UpgradeSettings {
    fn default() -> Self {
        Self { auto: false, concurrency: 4 }
    }
}

/// HTTP server limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// Longest a request may take before it is answered 503 (wait=… requests excepted).
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Requests handled at once; more are answered 503 at once (health and metrics excepted),
    /// which bounds the memory their bodies and results can take.
    pub max_concurrent_requests: usize,
    /// HTTP connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Longest wait for a request's headers, and for the next request on an idle keep-alive
    /// connection (and for a TLS handshake); the connection is closed after it.
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// PEM certificate chain: serve HTTPS (read again on SIGHUP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (a TLS-terminating proxy in front).
    pub allow_plaintext: bool,
    /// Admin requests must also carry `X-Tenantd-Signature` made with `signature_secret`.
    pub require_signature: bool,
    /// Shared secret of signed admin requests (at least 32 characters).
    pub signature_secret: Option<SecretString>,
}

/// Provisioning workers and background checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Tenants provisioned at once by one daemon.
    pub concurrency: usize,
    /// Catalog poll period, the safety net behind LISTEN/NOTIFY.
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
    /// How long a claim on a tenant lasts without renewal.
    #[serde(deserialize_with = "de_duration")]
    pub lease: Duration,
    /// Delays between attempts; the last one repeats.
    #[serde(deserialize_with = "de_durations")]
    pub backoff: Vec<Duration>,
    /// Attempts before a tenant goes to ERROR.
    pub max_attempts: u32,
    /// Period of the server health check.
    #[serde(deserialize_with = "de_duration")]
    pub health_interval: Duration,
}

/// Tenant connection pools and lending.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Connections per tenant pool.
    pub per_tenant: usize,
    /// Connections per server, shared by all tenant pools on it.
    pub per_server: usize,
    /// An unused tenant pool is closed after this long.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// How long a caller waits for a connection before 503.
    #[serde(deserialize_with = "de_duration")]
    pub acquire_timeout: Duration,
    /// Default lifetime of an idle connection handle.
    #[serde(deserialize_with = "de_duration")]
    pub handle_ttl: Duration,
    /// Longest lifetime a caller may ask for a handle.
    #[serde(deserialize_with = "de_duration")]
    pub max_handle_ttl: Duration,
    /// Open handles allowed per tenant.
    pub max_handles_per_tenant: usize,
    /// `statement_timeout` of SQL sent over HTTP.
    #[serde(deserialize_with = "de_duration")]
    pub statement_timeout: Duration,
    /// Rows returned by one SQL request before it fails with 413.
    pub max_rows: usize,
    /// Bytes of result returned by one SQL request before it fails with 413.
    pub max_result_bytes: usize,
}

/// Names of tenant databases and roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NameSettings {
    /// Prefix of tenant database and role names (`tenant_` + slug).
    pub prefix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            catalog_url: None,
            master_key: None,
            old_master_keys: Vec::new(),
            admin_token: None,
            data_dir: PathBuf::from("./tenantd-data"),
            log_format: LogFormat::Text,
            http: HttpSettings::default(),
            workers: WorkerSettings::default(),
            pools: PoolSettings::default(),
            names: NameSettings::default(),
            upgrade: UpgradeSettings::default(),
            lifecycle: LifecycleSettings::default(),
            backups: BackupSettings::default(),
            limits: LimitSettings::default(),
            pgbouncer: PgBouncerSettings::default(),
            webhooks: WebhookSettings::default(),
            moves: MoveSettings::default(),
            reconcile: ReconcileSettings::default(),
            spares: SpareSettings::default(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(60),
            max_concurrent_requests: 256,
            header_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            tls_cert: None,
            tls_key: None,
            allow_plaintext: false,
            require_signature: false,
            signature_secret: None,
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            poll_interval: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            backoff: [1, 5, 30, 120, 600].into_iter().map(Duration::from_secs).collect(),
            max_attempts: 8,
            health_interval: Duration::from_secs(10),
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            per_tenant: 5,
            per_server: 80,
            idle_timeout: Duration::from_secs(300),
            acquire_timeout: Duration::from_secs(5),
            handle_ttl: Duration::from_secs(60),
            max_handle_ttl: Duration::from_secs(3600),
            max_handles_per_tenant: 2,
            statement_timeout: Duration::from_secs(30),
            max_rows: 10_000,
            max_result_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for NameSettings {
    fn default() -> Self {
        Self { prefix: "tenant_".to_owned() }
    }
}

/// How an environment value is turned into a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kept as a string (addresses, paths, durations like `5s`, secrets).
    Text,
    /// A whole number.
    Integer,
    /// A comma-separated list of strings.
    List,
    /// `true` or `false`.
    Bool,
}

/// One configuration knob: where it lives in the file, its variable, what it does.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    /// Dotted key in `tenantd.toml`.
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Value kind, for parsing the environment.
    pub kind: Kind,
    /// Default, as shown in the README.
    pub default: &'static str,
    /// One line of documentation.
    pub doc: &'static str,
}

macro_rules! knobs {
    ($( $key:literal, $env:literal, $kind:ident, $default:literal, $doc:literal; )*) => {
        /// Every configuration knob, in README order.
        pub const KNOBS: &[Knob] = &[
            $( Knob { key: $key, env: $env, kind: Kind::$kind, default: $default, doc: $doc }, )*
        ];
    };
}

knobs! {
    "listen", "TENANTD_LISTEN", Text, "127.0.0.1:8080", "HTTP API address";
    "catalog_url", "TENANTD_CATALOG_URL", Text, "(embedded)", "catalog database URL; unset = embedded PostgreSQL in data_dir";
    "master_key", "TENANTD_MASTER_KEY", Text, "(generated when embedded)", "base64 of 32 bytes; required with catalog_url";
    "old_master_keys", "TENANTD_OLD_MASTER_KEYS", List, "", "comma-separated earlier keys, readable until rotate-key";
    "admin_token", "TENANTD_ADMIN_TOKEN", Text, "(generated when embedded)", "bearer token of the admin API";
    "data_dir", "TENANTD_DATA_DIR", Text, "./tenantd-data", "embedded cluster, key and token files";
    "log_format", "TENANTD_LOG_FORMAT", Text, "text", "text or json (filter with RUST_LOG)";
    "http.body_limit_bytes", "TENANTD_HTTP_BODY_LIMIT_BYTES", Integer, "1048576", "largest request body (413 above)";
    "http.request_timeout", "TENANTD_HTTP_REQUEST_TIMEOUT", Text, "60s", "longest request, ?wait= included";
    "http.max_concurrent_requests", "TENANTD_HTTP_MAX_CONCURRENT_REQUESTS", Integer, "256", "requests handled at once (503 above)";
    "http.max_connections", "TENANTD_HTTP_MAX_CONNECTIONS", Integer, "4096", "HTTP connections open at once (more wait to be accepted)";
    "http.header_read_timeout", "TENANTD_HTTP_HEADER_READ_TIMEOUT", Text, "30s", "wait for request headers, idle keep-alive and TLS handshakes";
    "http.tls_cert", "TENANTD_HTTP_TLS_CERT", Text, "(none)", "PEM certificate chain: serve HTTPS (reloaded on SIGHUP)";
    "http.tls_key", "TENANTD_HTTP_TLS_KEY", Text, "(none)", "PEM private key of http.tls_cert";
    "http.allow_plaintext", "TENANTD_HTTP_ALLOW_PLAINTEXT", Bool, "false", "plain HTTP on a non-loopback address (TLS proxy in front)";
    "http.require_signature", "TENANTD_HTTP_REQUIRE_SIGNATURE", Bool, "false", "admin requests must also be signed (X-Tenantd-Signature)";
    "http.signature_secret", "TENANTD_HTTP_SIGNATURE_SECRET", Text, "(none)", "shared secret of signed admin requests (32+ characters)";
    "workers.concurrency", "TENANTD_WORKERS_CONCURRENCY", Integer, "4", "tenants provisioned at once per daemon";
    "workers.poll_interval", "TENANTD_WORKERS_POLL_INTERVAL", Text, "5s", "catalog poll behind LISTEN/NOTIFY";
    "workers.lease", "TENANTD_WORKERS_LEASE", Text, "30s", "claim length, renewed while working";
    "workers.backoff", "TENANTD_WORKERS_BACKOFF", List, "1s,5s,30s,2m,10m", "retry delays, last one repeats";
    "workers.max_attempts", "TENANTD_WORKERS_MAX_ATTEMPTS", Integer, "8", "attempts before ERROR";
    "workers.health_interval", "TENANTD_WORKERS_HEALTH_INTERVAL", Text, "10s", "server health check period";
    "pools.per_tenant", "TENANTD_POOLS_PER_TENANT", Integer, "5", "connections per tenant pool";
    "pools.per_server", "TENANTD_POOLS_PER_SERVER", Integer, "80", "connections per server, all tenants";
    "pools.idle_timeout", "TENANTD_POOLS_IDLE_TIMEOUT", Text, "5m", "unused tenant pools close after this";
    "pools.acquire_timeout", "TENANTD_POOLS_ACQUIRE_TIMEOUT", Text, "5s", "wait for a connection before 503";
    "pools.handle_ttl", "TENANTD_POOLS_HANDLE_TTL", Text, "60s", "default idle lifetime of a handle";
    "pools.max_handle_ttl", "TENANTD_POOLS_MAX_HANDLE_TTL", Text, "1h", "longest handle lifetime a caller may ask";
    "pools.max_handles_per_tenant", "TENANTD_POOLS_MAX_HANDLES_PER_TENANT", Integer, "2", "open handles per tenant";
    "pools.statement_timeout", "TENANTD_POOLS_STATEMENT_TIMEOUT", Text, "30s", "statement_timeout of SQL over HTTP";
    "pools.max_rows", "TENANTD_POOLS_MAX_ROWS", Integer, "10000", "rows per SQL response (413 above)";
    "pools.max_result_bytes", "TENANTD_POOLS_MAX_RESULT_BYTES", Integer, "16777216", "bytes per SQL response (413 above)";
    "names.prefix", "TENANTD_NAMES_PREFIX", Text, "tenant_", "prefix of tenant database and role names";
    "upgrade.auto", "TENANTD_UPGRADE_AUTO", Bool, "false", "upgrade every READY tenant when the daemon starts";
    "upgrade.concurrency", "TENANTD_UPGRADE_CONCURRENCY", Integer, "4", "tenants upgraded at once by that run";
    "lifecycle.archive_dir", "TENANTD_LIFECYCLE_ARCHIVE_DIR", Text, "(none)", "final archives of DELETE ?archive=true";
    "backups.dir", "TENANTD_BACKUPS_DIR", Text, "(none: off)", "daily backups, one subdirectory per tenant";
    "backups.daily_at", "TENANTD_BACKUPS_DAILY_AT", Text, "03:00", "time of the daily backup run (UTC)";
    "backups.keep_daily", "TENANTD_BACKUPS_KEEP_DAILY", Integer, "7", "daily backups kept per tenant";
    "backups.keep_weekly", "TENANTD_BACKUPS_KEEP_WEEKLY", Integer, "4", "weekly backups kept per tenant";
    "backups.concurrency", "TENANTD_BACKUPS_CONCURRENCY", Integer, "2", "tenants backed up at once";
    "limits.connections_per_tenant", "TENANTD_LIMITS_CONNECTIONS_PER_TENANT", Integer, "20", "CONNECTION LIMIT of each tenant role";
    "limits.statement_timeout", "TENANTD_LIMITS_STATEMENT_TIMEOUT", Text, "60s", "default statement_timeout of tenant sessions";
    "limits.idle_in_transaction_timeout", "TENANTD_LIMITS_IDLE_IN_TRANSACTION_TIMEOUT", Text, "5m", "default idle_in_transaction_session_timeout of tenant sessions";
    "limits.max_database_bytes", "TENANTD_LIMITS_MAX_DATABASE_BYTES", Integer, "0", "storage quota per tenant database (0: none); read-only above";
    "limits.quota_check_interval", "TENANTD_LIMITS_QUOTA_CHECK_INTERVAL", Text, "60s", "how often database sizes are measured";
    "pgbouncer.host", "TENANTD_PGBOUNCER_HOST", Text, "(none)", "PgBouncer host named in lent connection details";
    "pgbouncer.port", "TENANTD_PGBOUNCER_PORT", Integer, "6432", "PgBouncer port named in lent connection details";
    "webhooks.allow_private", "TENANTD_WEBHOOKS_ALLOW_PRIVATE", Bool, "false", "deliver webhooks to loopback and private addresses";
    "webhooks.retry_delays", "TENANTD_WEBHOOKS_RETRY_DELAYS", List, "5s,5m,30m,2h,5h,10h,10h", "delays between delivery attempts; given up after the last";
    "webhooks.poll_interval", "TENANTD_WEBHOOKS_POLL_INTERVAL", Text, "1s", "how often due deliveries are looked for";
    "webhooks.timeout", "TENANTD_WEBHOOKS_TIMEOUT", Text, "10s", "longest wait for a webhook endpoint's answer";
    "moves.keep_source", "TENANTD_MOVES_KEEP_SOURCE", Text, "24h", "moved-away source databases are dropped after this";
    "moves.jobs", "TENANTD_MOVES_JOBS", Integer, "2", "parallel jobs of pg_dump/pg_restore in a move";
    "reconcile.interval", "TENANTD_RECONCILE_INTERVAL", Text, "10m", "how often one daemon compares the catalog with every server (0s: never)";
    "reconcile.repair", "TENANTD_RECONCILE_REPAIR", Bool, "false", "the background check also makes the safe repairs";
    "spares.per_server", "TENANTD_SPARES_PER_SERVER", Integer, "0", "warm spares kept ready per server (0: off); they count against max_tenants";
}

/// Environment variables that are not knobs of the file but are still ours.
pub const OTHER_ENV: &[&str] = &[CONFIG_ENV, "TENANTD_SERVER_PASSWORD"];

/// Flags given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Explicit configuration file (`--config`).
    pub config_file: Option<PathBuf>,
    /// `(dotted key, value)` pairs from flags such as `--listen`.
    pub values: Vec<(&'static str, String)>,
}

impl Settings {
    /// Builds the settings from every layer: defaults, file, environment, flags.
    ///
    /// `env` is passed in (rather than read here) so that tests stay parallel-safe.
    pub fn load(overrides: &Overrides, env: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
        let file = overrides.config_file.clone().or_else(|| env.get(CONFIG_ENV).map(PathBuf::from));
        let mut table = match &file {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        for (name, value) in env.iter().filter(|(name, _)| name.starts_with("TENANTD_")) {
            if OTHER_ENV.contains(&name.as_str()) {
                continue;
            }
            let knob = KNOBS.iter().find(|k| k.env == name).ok_or_else(|| {
                ConfigError::new(name, "unknown variable (see the configuration table in README)")
            })?;
            insert(&mut table, knob.key, env_value(knob, value)?);
        }
        for (key, value) in &overrides.values {
            insert(&mut table, key, toml::Value::String(value.clone()));
        }
        let settings = Settings::deserialize(toml::Value::Table(table)).map_err(|e| {
            let source = file.as_deref().map(Path::display);
            ConfigError::new(
                source.map_or_else(|| "settings".to_owned(), |p| p.to_string()),
                e.to_string().trim().replace('\n', " "),
            )
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the values that a type alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.workers;
        let p = &self.pools;
        in_range("workers.concurrency", w.concurrency, 1, 256)?;
        in_range("workers.max_attempts", w.max_attempts as usize, 1, 1000)?;
        in_range("pools.per_tenant", p.per_tenant, 1, 1000)?;
        in_range("pools.per_server", p.per_server, p.per_tenant, 100_000)?;
        in_range("pools.max_handles_per_tenant", p.max_handles_per_tenant, 0, p.per_tenant)?;
        in_range("pools.max_rows", p.max_rows, 1, usize::MAX)?;
        in_range("http.body_limit_bytes", self.http.body_limit_bytes, 1024, 1 << 30)?;
        in_range("http.max_concurrent_requests", self.http.max_concurrent_requests, 1, 100_000)?;
        in_range("http.max_connections", self.http.max_connections, 1, 1_000_000)?;
        in_range("upgrade.concurrency", self.upgrade.concurrency, 1, MAX_UPGRADE_CONCURRENCY)?;
        in_range("backups.concurrency", self.backups.concurrency, 1, 64)?;
        // Lending pools log in as the tenant role, so they count against its limit.
        let connections = usize::try_from(self.limits.connections_per_tenant).unwrap_or(usize::MAX);
        in_range("limits.connections_per_tenant", connections, self.pools.per_tenant, 10_000)?;
        in_range("backups.keep_daily", self.backups.keep_daily, 1, 10_000)?;
        in_range("moves.jobs", self.moves.jobs, 1, 64)?;
        in_range("spares.per_server", self.spares.per_server, 0, 10_000)?;
        self.backups.time_of_day()?;
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(ConfigError::new("http.tls_cert", "http.tls_cert and http.tls_key go together"));
        }
        in_range("webhooks.retry_delays", self.webhooks.retry_delays.len(), 0, 100)?;
        if self.http.require_signature
            && self.http.signature_secret.as_ref().is_none_or(|s| s.expose_secret().len() < 32)
        {
            return Err(ConfigError::new(
                "http.signature_secret",
                "http.require_signature needs http.signature_secret of at least 32 characters",
            ));
        }
        if w.backoff.is_empty() {
            return Err(ConfigError::new("workers.backoff", "needs at least one delay"));
        }
        for (key, value) in [
            ("workers.poll_interval", w.poll_interval),
            ("workers.lease", w.lease),
            ("workers.health_interval", w.health_interval),
            ("pools.acquire_timeout", p.acquire_timeout),
            ("pools.handle_ttl", p.handle_ttl),
            ("http.request_timeout", self.http.request_timeout),
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("webhooks.poll_interval", self.webhooks.poll_interval),
            ("webhooks.timeout", self.webhooks.timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be longer than zero"));
            }
        }
        if w.lease < Duration::from_secs(1) {
            return Err(ConfigError::new("workers.lease", "must be at least 1s"));
        }
        if p.handle_ttl > p.max_handle_ttl {
            return Err(ConfigError::new("pools.handle_ttl", "is longer than pools.max_handle_ttl"));
        }
        if self.pgbouncer.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Err(ConfigError::new("pgbouncer.host", "must not be empty (leave it unset instead)"));
        }
        crate::names::validate_prefix(&self.names.prefix)
            .map_err(|e| ConfigError::new("names.prefix", e.to_string()))?;
        Ok(())
    }

    /// True when no catalog URL is configured: tenantd runs its own PostgreSQL.
    pub fn is_embedded(&self) -> bool {
        self.catalog_url.is_none()
    }
}

fn in_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(key, format!("must be between {min} and {max} (got {value})")));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let setting = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::new(&setting, format!("cannot read: {e}")))?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::new(&setting, e.message().replace('\n', " ")))
}

fn env_value(knob: &Knob, raw: &str) -> Result<toml::Value, ConfigError> {
    Ok(match knob.kind {
        Kind::Text => toml::Value::String(raw.to_owned()),
        Kind::Integer => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| ConfigError::new(knob.env, format!("expected a whole number, got {raw:?}")))?,
        ),
        Kind::Bool => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(ConfigError::new(knob.env, format!("expected true or false, got {raw:?}"))),
        }),
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

fn insert(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().unwrap_or(dotted);
    let mut current = table;
    for part in parts {
        let entry = current.entry(part.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = match entry {
            toml::Value::Table(t) => t,
            _ => unreachable!("just made a table"),
        };
    }
    current.insert(last.to_owned(), value);
}

/// A duration that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?} ({reason}); use forms like 500ms, 5s, 2m, 1h")]
pub struct DurationError {
    text: String,
    reason: String,
}

/// Parses a human duration such as `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text.trim())
        .map_err(|e| DurationError { text: text.to_owned(), reason: e.to_string() })
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    items.iter().map(|t| parse_duration(t).map_err(serde::de::Error::custom)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, Overrides) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenantd.toml");
        std::fs::write(&path, text).unwrap();
        (dir, Overrides { config_file: Some(path), values: vec![] })
    }

    #[test]
    fn defaults_are_valid_and_embedded() {
        let s = Settings::load(&Overrides::default(), &BTreeMap::new()).unwrap();
        assert!(s.is_embedded());
        assert_eq!(s.workers.concurrency, 4);
        assert_eq!(s.workers.backoff.len(), 5);
        assert_eq!(s.pools.per_server, 80);
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let (_dir, mut o) =
            file("listen = \"127.0.0.1:9000\"\n[workers]\nconcurrency = 7\npoll_interval = \"2s\"\n");
        let e = env(&[("TENANTD_WORKERS_CONCURRENCY", "9"), ("TENANTD_LISTEN", "127.0.0.1:9001")]);
        let s = Settings::load(&o, &e).unwrap();
        assert_eq!(s.workers.concurrency, 9, "env beats file");
        assert_eq!(s.workers.poll_interval, Duration::from_secs(2), "file beats default");
        assert_eq!(s.listen.to_string(), "127.0.0.1:9001");
        o.values.push(("listen", "127.0.0.1:9002".into()));
        let s = Settings::load(&o, &e).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9002", "flag beats env");
    }

    #[test]
    fn config_file_from_env_variable() {
        let (_dir, o) = file("[names]\nprefix = \"acme_\"\n");
        let path = o.config_file.unwrap();
        let e = env(&[(CONFIG_ENV, path.to_str().unwrap())]);
        let s = Settings::load(&Overrides::default(), &e).unwrap();
        assert_eq!(s.names.prefix, "acme_");
    }

    #[test]
    fn env_lists_and_secrets() {
        let e =
            env(&[("TENANTD_WORKERS_BACKOFF", "100ms, 2s"), ("TENANTD_CATALOG_URL", "postgres://u:pw@h/db")]);
        let s = Settings::load(&Overrides::default(), &e).unwrap();
        assert_eq!(s.workers.backoff, vec![Duration::from_millis(100), Duration::from_secs(2)]);
        assert_eq!(s.catalog_url.as_ref().unwrap().expose_secret(), "postgres://u:pw@h/db");
        assert!(!format!("{s:?}").contains("pw@"), "secrets never in Debug output");
    }

    #[test]
    fn unknown_file_key_is_named() {
        let (_dir, o) = file("[workers]\nconcurency = 3\n");
        let err = Settings::load(&o, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn unknown_env_variable_is_named() {
        let e = env(&[("TENANTD_MASTERKEY", "x")]);
        let err = Settings::load(&Overrides::default(), &e).unwrap_err();
        assert_eq!(err.setting, "TENANTD_MASTERKEY");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            ("TENANTD_WORKERS_CONCURRENCY", "zero", "TENANTD_WORKERS_CONCURRENCY"),
            ("TENANTD_WORKERS_CONCURRENCY", "0", "workers.concurrency"),
            ("TENANTD_POOLS_IDLE_TIMEOUT", "soon", "idle_timeout"),
            ("TENANTD_LISTEN", "nowhere", "listen"),
            ("TENANTD_NAMES_PREFIX", "Bad-Prefix", "names.prefix"),
            ("TENANTD_POOLS_PER_SERVER", "2", "pools.per_server"),
        ];
        for (var, value, named) in cases {
            let err = Settings::load(&Overrides::default(), &env(&[(var, value)])).unwrap_err().to_string();
            assert!(err.contains(named), "{var}={value}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn malformed_file_is_one_line() {
        let (_dir, o) = file("listen = [\n");
        let err = Settings::load(&o, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("tenantd.toml"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn readme_documents_every_knob() {
        let readme = include_str!("../README.md");
        for knob in KNOBS {
            let row = format!("| `{}` | `{}` |", knob.key, knob.env);
            assert!(readme.contains(&row), "README's configuration table lacks {row}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let o = Overrides { config_file: Some("/nonexistent/t.toml".into()), values: vec![] };
        let err = Settings::load(&o, &BTreeMap::new()).unwrap_err();
        assert_eq!(err.setting, "/nonexistent/t.toml");
    }
}
