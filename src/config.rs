//! Command line, environment and TOML configuration, merged and validated once at start-up.
//!
//! Precedence: a flag beats its environment variable, which beats the TOML file
//! (`--config`), which beats the built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::auth::{
    AclEntry, AclOperation, ApiKey, AuthSettings, JwtSettings, Pattern, Permission, QuotaSettings, ResourceType, User,
};
use crate::group::GroupSettings;
use crate::http::tls::TlsSettings;
use crate::topic::{MAX_PARTITIONS, check_name};

#[derive(Debug, Parser)]
#[command(name = "gregor", version, about = "A Kafka-style commit log over HTTP and WebSocket")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Read a password from standard input and print its Argon2id hash, for `[[auth.users]]`.
    HashPassword,
    /// Print a new random API key and the `[[auth.api_keys]]` entry that accepts it.
    NewApiKey {
        /// The principal the key stands for (`User:<principal>`).
        #[arg(long)]
        principal: String,
    },
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 or 0.0.0.0:8080.
    #[arg(long, env = "GREGOR_LISTEN")]
    pub listen: Option<String>,
    /// Directory holding the store; created if missing.
    #[arg(long, env = "GREGOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Optional TOML file with any of the settings (see README).
    #[arg(long, env = "GREGOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Create a topic (with `default_partitions`) on the first produce to it.
    #[arg(long, env = "GREGOR_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Address of the Kafka protocol listener (default 127.0.0.1:9092; `off` turns it off).
    #[arg(long, env = "GREGOR_KAFKA_LISTEN")]
    pub kafka_listen: Option<String>,
    /// Where the log lives: `embedded` (RocksDB in --data-dir, the default) or `kafka` (a Kafka cluster).
    #[arg(long, env = "GREGOR_BACKEND")]
    pub backend: Option<String>,
    /// The Kafka cluster's bootstrap servers (HOST:PORT[,HOST:PORT]) for `--backend kafka`.
    #[arg(long, env = "GREGOR_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: Option<String>,
}

/// The TOML file: every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<u32>,
    max_request_bytes: Option<usize>,
    write_queue_bytes: Option<usize>,
    write_queue_len: Option<usize>,
    retention_check_interval_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    min_session_timeout_ms: Option<u64>,
    max_session_timeout_ms: Option<u64>,
    offsets_retention_ms: Option<u64>,
    idempotency_window_ms: Option<u64>,
    ws_ping_interval_ms: Option<u64>,
    socket_send_buffer_bytes: Option<usize>,
    http: Option<FileHttp>,
    auth: Option<FileAuth>,
    acl: Option<Vec<FileAcl>>,
    tls: Option<FileTls>,
    quotas: Option<Vec<FileQuota>>,
    kafka: Option<FileKafka>,
    backend: Option<FileBackend>,
}

/// `[backend]`: where the log lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    kind: Option<String>,
    bootstrap_servers: Option<String>,
    /// Passed to the Kafka client as they are (SASL, TLS, tuning): librdkafka's property names.
    kafka_config: Option<std::collections::BTreeMap<String, toml::Value>>,
    request_timeout_ms: Option<u64>,
    cursor_secret: Option<String>,
}

/// `[kafka]`: the Kafka protocol listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKafka {
    listen: Option<String>,
    advertised_listener: Option<String>,
    max_request_bytes: Option<usize>,
    producer_id_expiration_ms: Option<u64>,
    group_initial_rebalance_delay_ms: Option<u64>,
}

/// One `[[quotas]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuota {
    principal: String,
    produce_bytes_per_sec: Option<u64>,
    consume_bytes_per_sec: Option<u64>,
    requests_per_sec: Option<u64>,
    max_connections: Option<u32>,
    max_streams: Option<u32>,
}

/// `[tls]`: serve HTTPS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    handshake_timeout_ms: Option<u64>,
}

/// `[auth]`: credentials and who is a superuser.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    allow_anonymous: Option<bool>,
    superusers: Option<Vec<String>>,
    api_keys: Option<Vec<FileApiKey>>,
    users: Option<Vec<FileUser>>,
    jwt: Option<FileJwt>,
}

/// `[auth.jwt]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJwt {
    issuer: String,
    audience: String,
    jwks_file: PathBuf,
    principal_claim: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApiKey {
    principal: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    password_hash: String,
}

/// One `[[acl]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAcl {
    principal: String,
    resource: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    pattern: Option<String>,
    operations: Vec<String>,
    #[serde(default)]
    permission: Option<String>,
}

/// `[http]`: serving limits and browser safety.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    header_read_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    allowed_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
}

/// Serving limits and browser safety (`[http]`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// How long a connection may take to deliver a request's headers, counted from
    /// when it starts waiting for one (so it also bounds keep-alive idle time).
    pub header_read_timeout: Duration,
    /// Most connections open at once (WebSockets included); more are refused with 503.
    pub max_connections: usize,
    /// Origins (`http://host:port`) whose pages may call the API (CORS); others
    /// get `403 origin_not_allowed` on state-changing requests and WebSocket upgrades.
    pub allowed_origins: Vec<String>,
    /// Host names besides localhost, 127.0.0.1 and [::1] accepted on a loopback address.
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// Validated settings of a gregor server.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    /// Largest accepted request body; larger ones get `413 request_too_large`.
    pub max_request_bytes: usize,
    /// Bytes of produce requests allowed to wait for the writer before `503`.
    pub write_queue_bytes: usize,
    /// Requests allowed to wait for the writer before `503`.
    pub write_queue_len: usize,
    pub retention_check_interval: Duration,
    /// How long shutdown waits for in-flight requests before closing them.
    pub shutdown_timeout: Duration,
    /// Bounds and default of consumer group members' session timeouts.
    pub groups: GroupSettings,
    /// How long a produce's `Idempotency-Key` replays its first answer.
    pub idempotency_window: Duration,
    /// How often expired group sessions are looked for.
    pub session_check_interval: Duration,
    /// How often WebSocket connections are pinged; a client silent for two
    /// intervals (or not reading for two) is disconnected.
    pub ws_ping_interval: Duration,
    /// `SO_SNDBUF` of every accepted socket (Kafka's `socket.send.buffer.bytes`);
    /// 0 leaves it to the OS's autotuning. Bounds the kernel memory a client that
    /// stops reading (a stalled WebSocket subscriber) can pin until it is dropped.
    pub socket_send_buffer_bytes: usize,
    /// Serving limits and browser safety.
    pub http: HttpSettings,
    /// Credentials, superusers and ACLs (`[auth]`, `[[acl]]`); reloaded on SIGHUP.
    pub auth: AuthSettings,
    /// The TOML file the settings came from, re-read on SIGHUP.
    pub file: Option<PathBuf>,
    /// Serve HTTPS (`[tls]`); certificates reloaded on SIGHUP.
    pub tls: Option<TlsSettings>,
    /// The Kafka protocol listener (`[kafka]`).
    pub kafka: crate::kafka::KafkaSettings,
    /// Where the log lives (`[backend]`): the embedded store, or a Kafka cluster.
    pub backend: Backend,
}

/// Where the log lives.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// RocksDB in `data_dir`, with gregor's own group coordinator.
    #[default]
    Embedded,
    /// A Kafka cluster: gregor is a stateless gateway in front of it.
    Kafka(crate::cluster::ClusterSettings),
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_DATA_DIR: &str = "gregor-data";
/// 256 KiB: ample for loopback and LAN; over a long fat link a connection's
/// throughput is at most this much per round trip (0 restores autotuning).
pub const DEFAULT_SOCKET_SEND_BUFFER: usize = 256 * 1024;

impl Config {
    /// Defaults for a server on `data_dir`, listening on an ephemeral loopback port.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            auto_create_topics: false,
            default_partitions: 1,
            max_request_bytes: 32 * 1024 * 1024,
            write_queue_bytes: 256 * 1024 * 1024,
            write_queue_len: 4096,
            retention_check_interval: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            groups: GroupSettings { initial_rebalance_delay_ms: 0, ..GroupSettings::default() },
            idempotency_window: Duration::from_millis(crate::log::DEFAULT_IDEMPOTENCY_WINDOW_MS),
            session_check_interval: Duration::from_millis(100),
            ws_ping_interval: Duration::from_secs(15),
            socket_send_buffer_bytes: DEFAULT_SOCKET_SEND_BUFFER,
            http: HttpSettings::default(),
            auth: AuthSettings::default(),
            file: None,
            tls: None,
            // Embedded servers and tests: the Kafka listener on an ephemeral loopback port.
            kafka: crate::kafka::KafkaSettings {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                ..Default::default()
            },
            backend: Backend::Embedded,
        }
    }

    /// Merges flags/environment (already in `args`), the TOML file and defaults.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut c = Config::for_data_dir(
            args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        );
        let listen = args.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        c.listen = listen
            .parse()
            .map_err(|_| ConfigError(format!("listen: '{listen}' is not an address:port such as 127.0.0.1:8080")))?;
        c.auto_create_topics = args.auto_create_topics.or(file.auto_create_topics).unwrap_or(false);
        let kafka = file.kafka.unwrap_or_default();
        let kafka_listen =
            args.kafka_listen.clone().or(kafka.listen).unwrap_or_else(|| DEFAULT_KAFKA_LISTEN.to_owned());
        c.kafka.listen = match kafka_listen.as_str() {
            "off" | "none" | "" => None,
            addr => Some(addr.parse().map_err(|_| {
                ConfigError(format!("kafka.listen: '{addr}' is not an address:port such as 127.0.0.1:9092, or 'off'"))
            })?),
        };
        if let Some(adv) = kafka.advertised_listener {
            let (host, port) = adv
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']').to_owned(), p.parse().ok()?)))
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| ConfigError(format!("kafka.advertised_listener: '{adv}' is not host:port")))?;
            c.kafka.advertised = Some((host, port));
        }
        // Kafka's default; embedded servers and tests (`for_data_dir`) start at once.
        c.groups.initial_rebalance_delay_ms = kafka.group_initial_rebalance_delay_ms.unwrap_or(3_000);
        if let Some(ms) = kafka.producer_id_expiration_ms {
            c.kafka.producer_id_expiration = Duration::from_millis(ms);
        }
        if let Some(n) = kafka.max_request_bytes {
            c.kafka.max_request_bytes = n;
        }
        if let Some(n) = file.default_partitions {
            c.default_partitions = n;
        }
        if let Some(n) = file.max_request_bytes {
            c.max_request_bytes = n;
        }
        if let Some(n) = file.write_queue_bytes {
            c.write_queue_bytes = n;
        }
        if let Some(n) = file.write_queue_len {
            c.write_queue_len = n;
        }
        if let Some(ms) = file.retention_check_interval_ms {
            c.retention_check_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = file.shutdown_timeout_ms {
            c.shutdown_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = file.min_session_timeout_ms {
            c.groups.min_session_timeout_ms = ms;
        }
        if let Some(ms) = file.max_session_timeout_ms {
            c.groups.max_session_timeout_ms = ms;
        }
        if let Some(ms) = file.offsets_retention_ms {
            c.groups.offsets_retention_ms = ms;
        }
        if let Some(ms) = file.idempotency_window_ms {
            c.idempotency_window = Duration::from_millis(ms);
        }
        if let Some(ms) = file.ws_ping_interval_ms {
            c.ws_ping_interval = Duration::from_millis(ms);
        }
        if let Some(n) = file.socket_send_buffer_bytes {
            c.socket_send_buffer_bytes = n;
        }
        let http = file.http.unwrap_or_default();
        if let Some(ms) = http.header_read_timeout_ms {
            c.http.header_read_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = http.max_connections {
            c.http.max_connections = n;
        }
        if let Some(origins) = http.allowed_origins {
            c.http.allowed_origins = origins;
        }
        if let Some(hosts) = http.allowed_hosts {
            c.http.allowed_hosts = hosts;
        }
        c.tls = file.tls.map(|t| TlsSettings {
            cert_file: t.cert_file,
            key_file: t.key_file,
            client_ca_file: t.client_ca_file,
            handshake_timeout: Duration::from_millis(t.handshake_timeout_ms.unwrap_or(10_000)),
        });
        c.auth = auth_settings(file.auth, file.acl)?;
        c.auth.client_certificates = c.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        c.auth.quotas = quotas(file.quotas)?;
        c.backend = backend(args, file.backend.unwrap_or_default())?;
        if matches!(c.backend, Backend::Kafka(_)) {
            // In front of a Kafka cluster, Kafka clients talk to the cluster itself: the
            // listener (which serves the embedded store) stays off.
            c.kafka.listen = None;
        }
        c.file = args.config.clone();
        c.validate()?;
        Ok(c)
    }

    /// Checks the ranges of every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.default_partitions == 0 || self.default_partitions > MAX_PARTITIONS {
            return Err(ConfigError(format!(
                "default_partitions: must be between 1 and {MAX_PARTITIONS}, not {}",
                self.default_partitions
            )));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_request_bytes) {
            return Err(ConfigError(format!(
                "max_request_bytes: must be between 1 KiB and 1 GiB, not {}",
                self.max_request_bytes
            )));
        }
        if self.write_queue_bytes < self.max_request_bytes || self.write_queue_bytes > u32::MAX as usize {
            return Err(ConfigError(format!(
                "write_queue_bytes: must be at least max_request_bytes ({}) and below 4 GiB, not {}",
                self.max_request_bytes, self.write_queue_bytes
            )));
        }
        if self.write_queue_len == 0 {
            return Err(ConfigError("write_queue_len: must be at least 1".into()));
        }
        if self.ws_ping_interval < Duration::from_millis(10) {
            return Err(ConfigError("ws_ping_interval_ms: must be at least 10".into()));
        }
        if self.socket_send_buffer_bytes != 0 && !(4096..=64 * 1024 * 1024).contains(&self.socket_send_buffer_bytes) {
            return Err(ConfigError(format!(
                "socket_send_buffer_bytes: must be 0 (the OS decides) or between 4 KiB and 64 MiB, not {}",
                self.socket_send_buffer_bytes
            )));
        }
        if self.retention_check_interval.is_zero() {
            return Err(ConfigError("retention_check_interval_ms: must be at least 1".into()));
        }
        let g = &self.groups;
        if g.min_session_timeout_ms == 0 || g.min_session_timeout_ms > g.max_session_timeout_ms {
            return Err(ConfigError(format!(
                "min_session_timeout_ms ({}) must be at least 1 and at most max_session_timeout_ms ({})",
                g.min_session_timeout_ms, g.max_session_timeout_ms
            )));
        }
        if g.offsets_retention_ms < 1_000 {
            return Err(ConfigError(format!(
                "offsets_retention_ms: must be at least 1000, not {}",
                g.offsets_retention_ms
            )));
        }
        // Off loopback the Kafka listener must not be an open door: SASL/PLAIN required (users
        // configured), or anonymous access asked for.
        if let Some(addr) = self.kafka.listen
            && !addr.ip().is_loopback()
            && !self.auth.allow_anonymous
            && self.auth.users.is_empty()
        {
            return Err(ConfigError(format!(
                "kafka.listen: {addr} is not a loopback address and no [[auth.users]] are configured for \
                 SASL/PLAIN: add users, keep it on 127.0.0.1/::1, turn it off with 'off', or set \
                 auth.allow_anonymous (its connections then act as User:ANONYMOUS, under the ACLs)"
            )));
        }
        if self.kafka.max_request_bytes < 1024 || self.kafka.max_request_bytes > 1 << 30 {
            return Err(ConfigError(format!(
                "kafka.max_request_bytes: must be between 1024 and 1073741824, not {}",
                self.kafka.max_request_bytes
            )));
        }
        let h = &self.http;
        if !(100..=3_600_000).contains(&h.header_read_timeout.as_millis()) {
            return Err(ConfigError(format!(
                "http.header_read_timeout_ms: must be between 100 and 3600000, not {}",
                h.header_read_timeout.as_millis()
            )));
        }
        if h.max_connections == 0 || h.max_connections > 1_000_000 {
            return Err(ConfigError(format!(
                "http.max_connections: must be between 1 and 1000000, not {}",
                h.max_connections
            )));
        }
        for origin in &h.allowed_origins {
            crate::http::guard::normalize_origin(origin)
                .map_err(|e| ConfigError(format!("http.allowed_origins: {e}")))?;
        }
        for host in &h.allowed_hosts {
            if host.is_empty() || host.contains([':', '/', ' ']) {
                return Err(ConfigError(format!(
                    "http.allowed_hosts: '{host}' is not a host name (give names without ports)"
                )));
            }
        }
        if let Some(t) = &self.tls
            && !(100..=600_000).contains(&t.handshake_timeout.as_millis())
        {
            return Err(ConfigError("tls.handshake_timeout_ms: must be between 100 and 600000".into()));
        }
        if !self.auth.enabled() && !self.auth.allow_anonymous && !self.listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "refusing to serve {} without authentication: anyone who can reach it could read and change \
                 everything. Configure credentials ([[auth.api_keys]] made with `gregor new-api-key`, or \
                 [[auth.users]] with `gregor hash-password`) and [[acl]] entries, or set auth.allow_anonymous = true \
                 to serve it open on purpose (README: Securing gregor)",
                self.listen
            )));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("data_dir: must not be empty".into()));
        }
        Ok(())
    }
}

/// The `[auth]` section and `[[acl]]` entries of the TOML file at `path`, for a
/// reload: the rest of the file is checked too, but only these take effect.
pub fn load_auth(path: &Path) -> Result<AuthSettings, ConfigError> {
    let file = read_file(path)?;
    let client_certificates = file.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
    let mut auth = auth_settings(file.auth, file.acl)?;
    auth.client_certificates = client_certificates;
    auth.quotas = quotas(file.quotas)?;
    Ok(auth)
}

fn quotas(entries: Option<Vec<FileQuota>>) -> Result<Vec<QuotaSettings>, ConfigError> {
    let mut out: Vec<QuotaSettings> = Vec::new();
    for (i, q) in entries.unwrap_or_default().into_iter().enumerate() {
        let at = |e: String| ConfigError(format!("quotas[{i}]: {e}"));
        let principal = principal(&q.principal).map_err(at)?;
        if out.iter().any(|o| o.principal == principal) {
            return Err(at(format!("{principal} has another [[quotas]] entry")));
        }
        let rates = [q.produce_bytes_per_sec, q.consume_bytes_per_sec, q.requests_per_sec];
        if rates.contains(&Some(0)) || q.max_connections == Some(0) || q.max_streams == Some(0) {
            return Err(at("a limit of 0 would refuse everything; leave it out for no limit".into()));
        }
        out.push(QuotaSettings {
            principal,
            produce_bytes_per_sec: q.produce_bytes_per_sec,
            consume_bytes_per_sec: q.consume_bytes_per_sec,
            requests_per_sec: q.requests_per_sec,
            max_connections: q.max_connections,
            max_streams: q.max_streams,
        });
    }
    Ok(out)
}

fn auth_settings(auth: Option<FileAuth>, acls: Option<Vec<FileAcl>>) -> Result<AuthSettings, ConfigError> {
    let auth = auth.unwrap_or_default();
    let mut out = AuthSettings { allow_anonymous: auth.allow_anonymous.unwrap_or(false), ..AuthSettings::default() };
    for (i, s) in auth.superusers.unwrap_or_default().into_iter().enumerate() {
        out.superusers.push(principal(&s).map_err(|e| ConfigError(format!("auth.superusers[{i}]: {e}")))?);
    }
    for (i, k) in auth.api_keys.unwrap_or_default().into_iter().enumerate() {
        let at = |e: String| ConfigError(format!("auth.api_keys[{i}]: {e}"));
        check_name("principal", &k.principal).map_err(at)?;
        let sha256 = parse_sha256(&k.sha256).ok_or_else(|| {
            at("sha256 must be the 64 hex digits of the key's SHA-256 (see `gregor new-api-key`)".into())
        })?;
        out.api_keys.push(ApiKey { principal: k.principal, sha256 });
    }
    for (i, u) in auth.users.unwrap_or_default().into_iter().enumerate() {
        let at = |e: String| ConfigError(format!("auth.users[{i}]: {e}"));
        check_name("user name", &u.name).map_err(at)?;
        let parsed = argon2::password_hash::PasswordHash::new(&u.password_hash)
            .map_err(|_| at("password_hash is not a PHC string; make one with `gregor hash-password`".into()))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(at(format!("password_hash uses {}, not argon2id", parsed.algorithm)));
        }
        out.users.push(User { name: u.name, password_hash: u.password_hash });
    }
    if let Some(jwt) = auth.jwt {
        let text = std::fs::read_to_string(&jwt.jwks_file)
            .map_err(|e| ConfigError(format!("auth.jwt.jwks_file {}: {e}", jwt.jwks_file.display())))?;
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text).map_err(|e| {
            ConfigError(format!(
                "auth.jwt.jwks_file {}: not a JWKS ({{\"keys\": [...]}}): {e}",
                jwt.jwks_file.display()
            ))
        })?;
        if jwks.keys.is_empty() {
            return Err(ConfigError(format!("auth.jwt.jwks_file {}: no keys in it", jwt.jwks_file.display())));
        }
        if jwt.issuer.is_empty() || jwt.audience.is_empty() {
            return Err(ConfigError("auth.jwt: issuer and audience must not be empty".into()));
        }
        out.jwt = Some(JwtSettings {
            issuer: jwt.issuer,
            audience: jwt.audience,
            jwks,
            principal_claim: jwt.principal_claim.unwrap_or_else(|| "sub".to_owned()),
        });
    }
    for (i, a) in acls.unwrap_or_default().into_iter().enumerate() {
        out.acls.push(acl_entry(a).map_err(|e| ConfigError(format!("acl[{i}]: {e}")))?);
    }
    Ok(out)
}

/// `User:NAME` (or `User:*`), checked.
fn principal(s: &str) -> Result<String, String> {
    match s.strip_prefix("User:") {
        Some("*") => Ok(s.to_owned()),
        Some(name) if check_name("principal", name).is_ok() => Ok(s.to_owned()),
        _ => Err(format!("'{s}' is not a principal such as User:alice (or User:*)")),
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn acl_entry(a: FileAcl) -> Result<AclEntry, String> {
    let principal = principal(&a.principal)?;
    let resource = match a.resource.as_str() {
        "topic" => ResourceType::Topic,
        "group" => ResourceType::Group,
        "cluster" => ResourceType::Cluster,
        other => return Err(format!("resource '{other}': use topic, group or cluster")),
    };
    let name = match (resource, a.name) {
        (ResourceType::Cluster, _) => "kafka-cluster".to_owned(),
        (_, Some(n)) if !n.is_empty() => n,
        _ => return Err("a topic or group entry needs a name ('*' for all)".into()),
    };
    let pattern = match a.pattern.as_deref().unwrap_or("literal") {
        "literal" => Pattern::Literal,
        "prefixed" => Pattern::Prefixed,
        other => return Err(format!("pattern '{other}': use literal or prefixed")),
    };
    if a.operations.is_empty() {
        return Err("operations: name at least one".into());
    }
    let operations = a
        .operations
        .iter()
        .map(|o| {
            AclOperation::parse(o)
                .ok_or_else(|| format!("operation '{o}': use read, write, create, delete, alter, describe or all"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let permission = match a.permission.as_deref().unwrap_or("allow") {
        "allow" => Permission::Allow,
        "deny" => Permission::Deny,
        other => return Err(format!("permission '{other}': use allow or deny")),
    };
    Ok(AclEntry { principal, resource, name, pattern, operations, permission })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {}", path.display(), e.message())))
}

/// `[backend]` merged with `--backend` and `--kafka-bootstrap`.
fn backend(args: &ServeArgs, file: FileBackend) -> Result<Backend, ConfigError> {
    let kind = args.backend.clone().or(file.kind).unwrap_or_else(|| "embedded".to_owned());
    let bootstrap = args.kafka_bootstrap.clone().or(file.bootstrap_servers);
    match kind.as_str() {
        "embedded" => {
            if bootstrap.is_some() || file.kafka_config.is_some() {
                return Err(ConfigError(
                    "backend: bootstrap servers and kafka_config are for backend kind \"kafka\"; the embedded \
                     backend has none"
                        .into(),
                ));
            }
            Ok(Backend::Embedded)
        }
        "kafka" => {
            let bootstrap = bootstrap.filter(|b| !b.trim().is_empty()).ok_or_else(|| {
                ConfigError("backend kafka needs bootstrap servers: --kafka-bootstrap HOST:PORT[,HOST:PORT]".into())
            })?;
            let mut servers = Vec::new();
            for server in bootstrap.split(',').map(str::trim) {
                match server.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                        servers.push(server.to_owned())
                    }
                    _ => {
                        return Err(ConfigError(format!(
                            "backend.bootstrap_servers: '{server}' is not HOST:PORT (e.g. broker-1:9092)"
                        )));
                    }
                }
            }
            let mut kafka_config = std::collections::BTreeMap::new();
            for (name, value) in file.kafka_config.unwrap_or_default() {
                let value = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    other => {
                        return Err(ConfigError(format!(
                            "backend.kafka_config.{name}: a string, number or boolean, not {}",
                            other.type_str()
                        )));
                    }
                };
                kafka_config.insert(name, value);
            }
            let settings = crate::cluster::ClusterSettings {
                bootstrap_servers: servers,
                kafka_config,
                request_timeout: Duration::from_millis(file.request_timeout_ms.unwrap_or(30_000)),
                cursor_secret: file.cursor_secret,
            };
            settings.check().map_err(ConfigError)?;
            Ok(Backend::Kafka(settings))
        }
        other => Err(ConfigError(format!("backend: '{other}' is not a backend: embedded or kafka"))),
    }
}

/// A configuration problem, already phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(!c.auto_create_topics);
        assert_eq!(c.kafka.listen.map(|a| a.to_string()).as_deref(), Some(DEFAULT_KAFKA_LISTEN));
    }

    #[test]
    fn the_kafka_listener_is_configured_and_kept_off_public_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gregor.toml");
        std::fs::write(&path, "[kafka]\nlisten = \"127.0.0.1:9093\"\nadvertised_listener = \"kafka.example:19092\"\n")
            .unwrap();
        let c = Config::load(&ServeArgs { config: Some(path.clone()), ..Default::default() }).unwrap();
        assert_eq!(c.kafka.listen.unwrap().port(), 9093);
        assert_eq!(c.kafka.advertised, Some(("kafka.example".to_owned(), 19092)));
        let off = Config::load(&ServeArgs { kafka_listen: Some("off".into()), ..Default::default() }).unwrap();
        assert!(off.kafka.listen.is_none());
        let public = ServeArgs { kafka_listen: Some("0.0.0.0:9092".into()), ..Default::default() };
        let err = Config::load(&public).unwrap_err().0;
        assert!(err.contains("kafka.listen") && err.contains("SASL"), "{err}");
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gregor.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\ndata_dir = \"/tmp/x\"\ndefault_partitions = 3\n").unwrap();
        let args = ServeArgs { listen: Some("127.0.0.1:9001".into()), config: Some(path), ..Default::default() };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.default_partitions, 3);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let args = ServeArgs { listen: Some("nonsense".into()), ..Default::default() };
        assert!(Config::load(&args).unwrap_err().0.contains("listen"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let args = ServeArgs { config: Some(path), ..Default::default() };
        assert!(Config::load(&args).unwrap_err().0.contains("no_such_setting"));
        let path = dir.path().join("sndbuf.toml");
        std::fs::write(&path, "socket_send_buffer_bytes = 100\n").unwrap();
        let args = ServeArgs { config: Some(path.clone()), ..Default::default() };
        assert!(Config::load(&args).unwrap_err().0.contains("socket_send_buffer_bytes"));
        std::fs::write(&path, "socket_send_buffer_bytes = 0\n").unwrap();
        assert_eq!(Config::load(&args).unwrap().socket_send_buffer_bytes, 0, "0 hands the size to the OS");
    }

    #[test]
    fn the_http_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http.toml");
        let args = ServeArgs { config: Some(path.clone()), ..Default::default() };
        let c = Config::load(&args);
        assert!(c.is_err(), "no file");
        std::fs::write(
            &path,
            "[http]\nheader_read_timeout_ms = 2500\nmax_connections = 50\nallowed_origins = [\"http://localhost:3000\"]\n",
        )
        .unwrap();
        let c = Config::load(&args).unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(c.http.max_connections, 50);
        assert_eq!(c.http.allowed_origins, vec!["http://localhost:3000".to_owned()]);
        let defaults = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(defaults.http.header_read_timeout, Duration::from_secs(10), "SPEC §8's default");
        for (bad, field) in [
            ("[http]\nallowed_origins = [\"localhost:3000\"]\n", "http.allowed_origins"),
            ("[http]\nheader_read_timeout_ms = 0\n", "http.header_read_timeout_ms"),
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[http]\nallowed_hosts = [\"a:80\"]\n", "http.allowed_hosts"),
            ("[http]\nno_such = 1\n", "no_such"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = Config::load(&args).unwrap_err().0;
            assert!(e.contains(field), "{bad}: {e}");
        }
    }
}
