//! Settings: built-in defaults, then an optional TOML file, then `ENIGMA__SECTION__KEY`
//! environment variables; validated once at startup so a bad value fails fast with the
//! name of the key at fault.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The engine without Redis (`ENIGMA__ENGINE`): `embedded` (default; kept in a data file
    /// under `data_dir`) or `memory` (nothing kept). With `redis.url` set the engine is Redis.
    pub engine: EngineKind,
    /// Where the embedded engine keeps its data file (`ENIGMA__DATA_DIR`), created if missing;
    /// relative paths are relative to the working directory.
    pub data_dir: String,
    pub server: ServerSettings,
    pub limits: Limits,
    pub redis: RedisSettings,
    pub log: LogSettings,
    pub auth: crate::auth::settings::AuthSettings,
    /// Rate limits (see `crate::limits`).
    pub rate: crate::limits::rates::RateSettings,
    /// The verifiable key directory (see `crate::transparency`).
    pub directory: crate::transparency::settings::DirectorySettings,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Single node, durable in a local file: survives restarts and `kill -9` for everything
    /// acknowledged.
    #[default]
    Embedded,
    /// Single node, everything in the process, lost on restart (tests, trying it out).
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP/WebSocket listener binds (`ENIGMA__SERVER__ADDR`).
    pub addr: String,
    /// An extra listener serving only `/metrics` (e.g. `0.0.0.0:9100`), for scrapers kept off
    /// the public port; `/metrics` stays on `addr` as well unless `metrics_public = false`.
    /// Unset: none.
    pub metrics_addr: Option<String>,
    /// Whether `addr` serves `/metrics` too (`ENIGMA__SERVER__METRICS_PUBLIC`). `false` needs
    /// `metrics_addr`; the Helm chart sets it so the Ingress can never expose metrics.
    pub metrics_public: bool,
    /// Origins allowed by CORS; `["*"]` allows any (the API carries no cookies).
    pub cors_origins: Vec<String>,
    /// How long a SIGTERM drain may take before the process exits anyway.
    pub shutdown_grace_ms: u64,
    /// Interval of server pings on an open socket.
    pub ping_interval_ms: u64,
    /// A socket from which nothing (not even a pong) arrived for this long is dropped.
    pub idle_timeout_ms: u64,
    /// A request head (the WebSocket handshake too) must arrive within this long after the
    /// connection opened or the previous response; it also bounds idle keep-alive connections.
    pub request_head_timeout_ms: u64,
    /// The longest request head (request line and headers); longer ones get 431.
    pub max_request_head_bytes: usize,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` name the client (CIDRs or addresses);
    /// a forwarded header from anyone else is ignored.
    pub trusted_proxies: Vec<String>,
    /// Open connections (HTTP and WebSocket) this replica serves at once; past it 503, or 1013
    /// on a socket. 0: no cap.
    pub max_connections: usize,
    /// Open connections from one client address (the TCP peer; trusted proxies are exempt,
    /// their clients are limited by rate instead). 0: no cap.
    pub max_connections_per_address: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest accepted public key, in bytes.
    pub max_public_key_bytes: usize,
    /// Longest accepted `payload`, in bytes.
    pub max_payload_bytes: usize,
    /// Messages a user's inbox may hold; a send to a full inbox is refused.
    pub inbox_capacity: usize,
    /// Age after which an inbox nobody reads expires (refreshed on every write).
    pub inbox_ttl_secs: u64,
    /// Frames waiting to be written to one socket before it counts as a slow reader.
    pub outbound_queue_frames: usize,
    /// Bytes waiting to be written to one socket before it counts as a slow reader.
    pub outbound_queue_bytes: usize,
    /// How long a full outbound queue may stay full before the socket is closed.
    pub send_timeout_ms: u64,
    /// Messages one sender may have waiting in one recipient's inbox: a flood refuses the
    /// flooder, not the recipient's other contacts. 0: no share (only the capacity).
    pub inbox_share: usize,
    /// Payload bytes one sender may have waiting in one recipient's inbox. 0: no share.
    pub inbox_share_bytes: usize,
    /// Payload bytes an inbox may hold, from all senders together.
    pub inbox_max_bytes: usize,
    /// Embedded and memory engines: bytes held by all inboxes (payloads) and the key directory together
    /// (each user counted as its key, twice, plus a fixed overhead); past it sends and new
    /// registrations are refused (`unavailable`) rather than the process growing until it is
    /// killed.
    pub memory_max_bytes: usize,
    /// A registration nobody used (no socket admitted as the user, no claim) is forgotten this
    /// long after it was made: its id and its key index expire. Used once, a user is kept for
    /// `inactive_user_ttl_secs` instead.
    pub unused_registration_ttl_secs: u64,
    /// A user who has not used their id (a socket admitted, a claim) for this long is
    /// forgotten: the user record and key index expire; the same key logging in again gets a
    /// new id. Each use starts the time again (a socket open renews it at most once a day).
    pub inactive_user_ttl_secs: u64,
    /// The most registrations from one address prefix (`rate.address_prefix`) that may wait
    /// unused at once; past it a new key's login from that prefix is refused (429) until one
    /// is used or expires. Logins of registered keys are never refused by it. 0: no maximum.
    pub max_unused_registrations_per_prefix: usize,
    /// Messages all *strangers* together (senders the recipient never wrote to) may have
    /// waiting in one inbox; one stranger may hold an eighth of it. What strangers cannot
    /// take stays for the recipient's contacts, however many ids strangers make. 0: no pool
    /// (every sender is treated as a contact).
    pub stranger_pool: usize,
    /// Payload bytes all strangers together may have waiting in one inbox (an eighth each).
    pub stranger_pool_bytes: usize,
    /// The most people one user's contact list holds; past it, whom the user writes to next
    /// is not added (their replies then count as a stranger's).
    pub max_contacts: usize,
    /// How long a user's contact list is kept after the user last added to it.
    pub contacts_ttl_secs: u64,
    /// Storage charged to its source: the share of the store one address prefix and one
    /// sender id may hold (`limits::storage`).
    pub storage: crate::limits::storage::StorageShares,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://…` URL (`ENIGMA__REDIS__URL`); unset or empty selects `engine` (embedded or memory). In
    /// cluster mode the seed nodes, in sentinel mode the Sentinels, comma-separated.
    pub url: Option<String>,
    /// `single` (one Redis, or a master behind one stable address), `sentinel` (the master
    /// that Redis Sentinel names, followed across failovers) or `cluster` (Redis Cluster,
    /// sharded pub/sub) (`ENIGMA__REDIS__MODE`).
    pub mode: RedisMode,
    /// Sentinel mode: the name the Sentinels monitor the master under (`sentinel monitor
    /// <name> …`).
    pub sentinel_master: String,
    /// Prefix of every key and channel, so several deployments (or tests) can share a Redis.
    pub prefix: String,
    /// A Redis command that takes longer than this fails (and the client gets an error).
    pub command_timeout_ms: u64,
    /// `rediss://` only: trust only the CA certificate(s) in this PEM file for Redis (a private
    /// CA) instead of the platform's roots (`ENIGMA__REDIS__TLS_CA_FILE`). Single and cluster
    /// modes; behind Sentinel the platform's roots apply (`SSL_CERT_FILE` can name the CA).
    pub tls_ca_file: Option<String>,
    /// How often each replica checks its subscription link end to end (a probe published on
    /// its own channel must come back); three misses in a row count as a dead link.
    pub probe_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Single,
    Sentinel,
    Cluster,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `enigma=debug,tower_http=info`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            engine: EngineKind::Embedded,
            data_dir: "enigma-data".into(),
            server: ServerSettings::default(),
            limits: Limits::default(),
            redis: RedisSettings::default(),
            log: LogSettings::default(),
            auth: crate::auth::settings::AuthSettings::default(),
            rate: crate::limits::rates::RateSettings::default(),
            directory: crate::transparency::settings::DirectorySettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:8000".into(),
            metrics_addr: None,
            metrics_public: true,
            cors_origins: vec!["*".into()],
            shutdown_grace_ms: 10_000,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            request_head_timeout_ms: 10_000,
            // Room for the longest public key in the login path, percent-encoded (3 × 8 KiB).
            max_request_head_bytes: 32 * 1024,
            trusted_proxies: Vec::new(),
            max_connections: 20_000,
            max_connections_per_address: 500,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_public_key_bytes: 8 * 1024,
            max_payload_bytes: 64 * 1024,
            inbox_capacity: 10_000,
            inbox_ttl_secs: 30 * 24 * 3600,
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            send_timeout_ms: 5_000,
            // Well below the capacity, above a phone's backlog flush (500).
            inbox_share: 1_000,
            inbox_share_bytes: 8 * 1024 * 1024,
            inbox_max_bytes: 64 * 1024 * 1024,
            memory_max_bytes: 512 * 1024 * 1024,
            // A week: a real client connects within seconds of its login (the web page and the
            // CLI do), and someone who registers and comes back days later still finds their id.
            unused_registration_ttl_secs: 7 * 24 * 3600,
            // A year: whoever opens the app once a year keeps their id; someone gone longer
            // has missed every message for eleven months anyway (inboxes expire after 30 days).
            inactive_user_ttl_secs: 365 * 24 * 3600,
            // A school of 300 behind one NAT address registers (and may connect later) with
            // room to spare; one address cannot park more than 1,000 never-used ids at a time.
            max_unused_registrations_per_prefix: 1_000,
            // Strangers (any number of fresh ids) never take more than half the inbox's messages
            // and 24 of its 64 MiB: the rest stays for the people the recipient writes to. One
            // stranger holds an eighth (625 messages, 3 MiB): a phone's first flush of 500 fits.
            stranger_pool: 5_000,
            stranger_pool_bytes: 24 * 1024 * 1024,
            max_contacts: 5_000,
            // A year: someone who has not written to anyone new for a year still has their
            // contacts (the list is refreshed whenever they add one).
            contacts_ttl_secs: 365 * 24 * 3600,
            storage: crate::limits::storage::StorageShares::default(),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            mode: RedisMode::Single,
            sentinel_master: "mymaster".into(),
            prefix: "enigma:".into(),
            command_timeout_ms: 2_000,
            tls_ca_file: None,
            probe_interval_ms: 1_000,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, level: "info".into() }
    }
}

impl Settings {
    /// Defaults, then `file` (if given; it must exist), then `ENIGMA__…` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        Self::build(
            builder.add_source(
                config::Environment::with_prefix("ENIGMA")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("server.cors_origins")
                    .with_list_parse_key("auth.token_keys")
                    .with_list_parse_key("directory.signing_keys")
                    .with_list_parse_key("server.trusted_proxies")
                    .try_parsing(true),
            ),
        )
    }

    /// Settings from a TOML document alone (defaults for what it leaves out), validated.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::build(config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml)))
    }

    fn build(builder: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Self, ConfigError> {
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value that cannot be expressed in its type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid { key, reason: reason.into() }
        }
        self.server
            .addr
            .parse::<SocketAddr>()
            .map_err(|e| invalid("server.addr", format!("`{}` is not host:port ({e})", self.server.addr)))?;
        if !self.server.metrics_public && self.metrics_addr().is_none() {
            return Err(invalid(
                "server.metrics_public",
                "false needs server.metrics_addr (else no port serves /metrics)",
            ));
        }
        if let Some(addr) = self.metrics_addr() {
            addr.parse::<SocketAddr>()
                .map_err(|e| invalid("server.metrics_addr", format!("`{addr}` is not host:port ({e})")))?;
        }
        if self.server.cors_origins.is_empty() {
            return Err(invalid("server.cors_origins", "must list at least one origin (or \"*\")"));
        }
        for origin in &self.server.cors_origins {
            if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err() {
                return Err(invalid("server.cors_origins", format!("`{origin}` is not a valid origin")));
            }
        }
        let positive = [
            ("server.shutdown_grace_ms", self.server.shutdown_grace_ms as usize),
            ("server.ping_interval_ms", self.server.ping_interval_ms as usize),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms as usize),
            ("server.request_head_timeout_ms", self.server.request_head_timeout_ms as usize),
            ("limits.max_public_key_bytes", self.limits.max_public_key_bytes),
            ("limits.max_payload_bytes", self.limits.max_payload_bytes),
            ("limits.inbox_capacity", self.limits.inbox_capacity),
            ("limits.inbox_ttl_secs", self.limits.inbox_ttl_secs as usize),
            ("limits.unused_registration_ttl_secs", self.limits.unused_registration_ttl_secs as usize),
            ("limits.outbound_queue_frames", self.limits.outbound_queue_frames),
            ("limits.outbound_queue_bytes", self.limits.outbound_queue_bytes),
            ("limits.send_timeout_ms", self.limits.send_timeout_ms as usize),
            ("redis.command_timeout_ms", self.redis.command_timeout_ms as usize),
            ("redis.probe_interval_ms", self.redis.probe_interval_ms as usize),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(key, "must be greater than zero"));
        }
        if self.server.idle_timeout_ms <= self.server.ping_interval_ms {
            return Err(invalid("server.idle_timeout_ms", "must be longer than server.ping_interval_ms"));
        }
        if self.server.max_request_head_bytes < 8192 {
            return Err(invalid("server.max_request_head_bytes", "must be at least 8192"));
        }
        if self.limits.max_payload_bytes > 16 * 1024 * 1024 {
            return Err(invalid("limits.max_payload_bytes", "must be at most 16 MiB"));
        }
        if self.limits.outbound_queue_bytes < self.limits.max_payload_bytes * 2 {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "must hold at least two frames of limits.max_payload_bytes",
            ));
        }
        if self.redis_url().is_some() && self.engine == EngineKind::Memory {
            return Err(invalid(
                "engine",
                "\"memory\" cannot be combined with redis.url (a Redis URL selects the Redis engine: unset one of them)",
            ));
        }
        if self.redis_url().is_none() && self.engine == EngineKind::Embedded && self.data_dir.trim().is_empty() {
            return Err(invalid("data_dir", "must name a directory for the embedded engine's data file"));
        }
        if self.redis_url().is_some() {
            let urls = self.redis_urls();
            if urls.is_empty() {
                return Err(invalid("redis.url", "lists no URL"));
            }
            if self.redis.mode == RedisMode::Single && urls.len() != 1 {
                return Err(invalid(
                    "redis.url",
                    "one URL in single mode (a list is for redis.mode = \"cluster\" or \"sentinel\")",
                ));
            }
            if self.redis.mode == RedisMode::Sentinel && self.redis.sentinel_master.trim().is_empty() {
                return Err(invalid("redis.sentinel_master", "must name the master the Sentinels monitor"));
            }
            for url in urls {
                // Never echo the URL as given: it may carry a password (`secrets`).
                let shown = crate::secrets::redact_url(url);
                redis::Client::open(url).map_err(|e| invalid("redis.url", format!("`{shown}`: {e}")))?;
            }
            if let Some(path) = self.redis_tls_ca_file() {
                let pem = std::fs::read(path)
                    .map_err(|e| invalid("redis.tls_ca_file", format!("cannot read `{path}`: {e}")))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(invalid("redis.tls_ca_file", format!("`{path}` holds no PEM certificate")));
                }
            }
        }
        if self.redis.prefix.contains(['{', '}']) {
            return Err(invalid("redis.prefix", "must not contain `{` or `}` (they are Redis Cluster hash tags)"));
        }
        crate::limits::address::TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|bad| invalid("server.trusted_proxies", format!("`{bad}` is not an address or CIDR")))?;
        if let Some(key) = self.rate.invalid() {
            return Err(invalid(key, "per_second must be a positive number when burst is set"));
        }
        if let Some(key) = self.limits.storage.invalid() {
            return Err(invalid(key, "must be a fraction of the store from 0 (off) to 1"));
        }
        if let Some(key) = self.rate.address_prefix.invalid() {
            return Err(invalid(key, "must be a prefix length: 1 to 32 for ipv4, 1 to 128 for ipv6"));
        }
        let bytes = self.rate.send_bytes_per_user;
        // Room for one envelope of the largest payload (ids and JSON around it).
        if !bytes.is_off() && bytes.burst < self.limits.max_payload_bytes as u64 + 4096 {
            return Err(invalid("rate.send_bytes_per_user", "burst must hold one payload of limits.max_payload_bytes"));
        }
        if self.limits.stranger_pool > 0 && self.limits.stranger_pool_bytes / 8 < self.limits.max_payload_bytes {
            return Err(invalid(
                "limits.stranger_pool_bytes",
                "an eighth of it (one stranger's part) must hold one payload of limits.max_payload_bytes",
            ));
        }
        if self.limits.inbox_max_bytes < self.limits.max_payload_bytes {
            return Err(invalid("limits.inbox_max_bytes", "must hold one payload of limits.max_payload_bytes"));
        }
        if self.limits.inbox_share_bytes != 0 && self.limits.inbox_share_bytes < self.limits.max_payload_bytes {
            return Err(invalid(
                "limits.inbox_share_bytes",
                "must hold one payload of limits.max_payload_bytes (or be 0)",
            ));
        }
        if self.limits.memory_max_bytes < self.limits.max_payload_bytes {
            return Err(invalid("limits.memory_max_bytes", "must hold one payload of limits.max_payload_bytes"));
        }
        if self.limits.inactive_user_ttl_secs < self.limits.inbox_ttl_secs {
            return Err(invalid(
                "limits.inactive_user_ttl_secs",
                "must be at least limits.inbox_ttl_secs (whoever comes back before their inbox expires must find their id)",
            ));
        }
        if self.limits.inactive_user_ttl_secs <= self.limits.unused_registration_ttl_secs {
            return Err(invalid(
                "limits.inactive_user_ttl_secs",
                "must be longer than limits.unused_registration_ttl_secs",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        self.auth.validate().map_err(|(key, reason)| invalid(key, reason))?;
        self.directory.validate().map_err(|(key, reason)| invalid(key, reason))?;
        Ok(())
    }

    /// The Redis URL, if one is configured (an empty value means none).
    pub fn redis_url(&self) -> Option<&str> {
        self.redis.url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    /// The separate metrics address, if one is configured (an empty value means none).
    pub fn redis_tls_ca_file(&self) -> Option<&str> {
        self.redis.tls_ca_file.as_deref().map(str::trim).filter(|p| !p.is_empty())
    }

    pub fn metrics_addr(&self) -> Option<&str> {
        self.server.metrics_addr.as_deref().map(str::trim).filter(|a| !a.is_empty())
    }

    /// The Redis URLs: one in single mode, the seed nodes in cluster mode, the Sentinels in
    /// sentinel mode.
    pub fn redis_urls(&self) -> Vec<&str> {
        self.redis_url().map(|u| u.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()).unwrap_or_default()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.addr.parse().expect("validated")
    }
}

impl ServerSettings {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// The trusted proxies (validated at startup).
    pub fn trusted_proxies(&self) -> crate::limits::address::TrustedProxies {
        crate::limits::address::TrustedProxies::parse(&self.trusted_proxies).unwrap_or_default()
    }
}

impl Limits {
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
        assert_eq!(Settings::default().server.addr, "0.0.0.0:8000");
        assert!(Settings::default().redis_url().is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::default();
        s.server.addr = "nonsense".into();
        assert!(s.validate().unwrap_err().to_string().contains("server.addr"));
        let mut s = Settings::default();
        s.limits.inbox_capacity = 0;
        assert!(s.validate().unwrap_err().to_string().contains("limits.inbox_capacity"));
        let mut s = Settings::default();
        s.redis.url = Some("http://nope".into());
        assert!(s.validate().unwrap_err().to_string().contains("redis.url"));
        let mut s = Settings::default();
        s.limits.inactive_user_ttl_secs = s.limits.inbox_ttl_secs - 1;
        assert!(s.validate().unwrap_err().to_string().contains("limits.inactive_user_ttl_secs"));
        let mut s = Settings::default();
        s.limits.unused_registration_ttl_secs = s.limits.inactive_user_ttl_secs;
        assert!(s.validate().unwrap_err().to_string().contains("limits.inactive_user_ttl_secs"));
    }

    #[test]
    fn redis_modes_take_their_urls() {
        let mut s = Settings::default();
        s.redis.url = Some("redis://a:26379, redis://b:26379".into());
        assert!(s.validate().unwrap_err().to_string().contains("redis.url"), "a list in single mode");
        s.redis.mode = RedisMode::Sentinel;
        s.validate().unwrap();
        assert_eq!(s.redis_urls(), ["redis://a:26379", "redis://b:26379"]);
        s.redis.sentinel_master = " ".into();
        assert!(s.validate().unwrap_err().to_string().contains("redis.sentinel_master"));
        s.redis.mode = RedisMode::Cluster;
        s.validate().unwrap();
        s.redis.url = Some(" , ".into());
        assert!(s.validate().unwrap_err().to_string().contains("redis.url"), "a list of nothing");
    }

    #[test]
    fn the_engine_is_embedded_unless_chosen_and_memory_excludes_redis() {
        let s = Settings::default();
        assert_eq!((s.engine, s.data_dir.as_str()), (EngineKind::Embedded, "enigma-data"));
        let s = Settings::from_toml("engine = \"memory\"\ndata_dir = \"/var/lib/enigma\"").unwrap();
        assert_eq!((s.engine, s.data_dir.as_str()), (EngineKind::Memory, "/var/lib/enigma"));
        let e = Settings::from_toml("engine = \"memory\"\n[redis]\nurl = \"redis://127.0.0.1/\"").unwrap_err();
        assert!(e.to_string().contains("`engine`") && e.to_string().contains("redis.url"), "{e}");
        Settings::from_toml("[redis]\nurl = \"redis://127.0.0.1/\"").expect("the default engine with Redis is Redis");
        let e = Settings::from_toml("engine = \"disk\"").unwrap_err();
        assert!(e.to_string().contains("disk"), "{e}");
        let e = Settings::from_toml("data_dir = \" \"").unwrap_err();
        assert!(e.to_string().contains("data_dir"), "{e}");
    }

    #[test]
    fn empty_redis_url_means_memory() {
        let mut s = Settings::default();
        s.redis.url = Some("  ".into());
        assert!(s.redis_url().is_none());
    }
}
