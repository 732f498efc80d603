//! Configuration: YAML file -> serde schema -> validated, typed runtime config.
//!
//! Two steps, as vector and linkerd do: serde parses each section on its own (so one bad route
//! does not hide the next), then [`validate`] checks meaning. Both collect **every** problem with
//! its YAML path; `seawall validate` prints them one per line.

mod env;
mod schema;
pub mod source;

pub(crate) use validate::is_identifier;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

pub use env::{EnvLookup, ProcessEnv};

use crate::auth::ip::CidrSet;
use crate::routing::{PathTemplate, RewriteTemplate, Router};

/// Defaults named once; the contract lists them.
pub mod defaults {
    pub const GRACE_PERIOD_SECS: u64 = 30;
    pub const CONNECT_TIMEOUT_MS: u64 = 1000;
    pub const CIRCUIT_PROBES: u32 = 3;
    pub const RETRIES: u32 = 0;
    pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
    pub const UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 4096;
    pub const LOG_LEVEL: &str = "info";
    /// The longest route deadline: a second under the longest Genesys data-action timeout (60 s),
    /// so the gateway's answer (a 504 at worst) reaches the caller before it gives up.
    pub const MAX_ROUTE_TIMEOUT_MS: u64 = 59_000;
    pub const MAX_RETRIES: u32 = 10;
    pub const JWT_LEEWAY_SECS: u64 = 30;
    pub const JWT_MAX_LEEWAY_SECS: u64 = 300;
    pub const SCOPE_CLAIMS: &[&str] = &["scp", "scope", "roles"];
    pub const JWKS_MIN_REFRESH_SECS: u64 = 10;
    pub const TOKEN_PATH: &str = "/oauth/token";
    pub const TOKEN_TTL_SECS: u64 = 3600;
    pub const CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
    pub const CACHE_MAX_OBJECT_BYTES: u64 = 2 * 1024 * 1024;
    /// The largest answer the store can hold (eviction weights are 16-bit, in 256-byte units: 16 MiB with headers).
    pub const CACHE_MAX_OBJECT_LIMIT: u64 = 8 * 1024 * 1024;
    /// The smallest store worth having: a few answers of the largest size.
    pub const CACHE_MIN_BYTES: u64 = 64 * 1024;
    /// Freshness and stale windows are kept in 32-bit seconds: a year is plenty.
    pub const CACHE_MAX_SECS: u64 = 365 * 24 * 3600;
    pub const PLUGINS_DIR: &str = "plugins";
    pub const DB_MAX_CONNECTIONS: u32 = 8;
    pub const DB_ACQUIRE_TIMEOUT_MS: u64 = 500;
    pub const DB_STATEMENT_TIMEOUT_MS: u64 = 2000;
}

/// One problem in a config, located by its YAML path (and line/column where the parser knows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    pub location: Option<(usize, usize)>,
}

impl ConfigError {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into(), location: None }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "`{}`: {}", self.path, self.message)?;
        }
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// The validated config the gateway runs on. Everything is typed and checked; nothing here is
/// parsed again on the request path.
pub struct Config {
    pub server: ServerSettings,
    pub logging: LoggingSettings,
    pub listeners: Vec<ListenerConfig>,
    pub admin: AdminConfig,
    /// Peers whose `X-Forwarded-For` is believed (the client IP is then read from it).
    pub trusted_proxies: CidrSet,
    /// Named networks routes accept callers from; their files are read again on SIGHUP.
    pub ip_allowlists: Vec<AllowlistConfig>,
    pub jwt_providers: Vec<JwtProviderConfig>,
    pub token_issuer: Option<TokenIssuerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub router: Router,
    pub cache_storage: CacheStorageConfig,
    /// SQL backends. Each is also in `upstreams` under its name (with no targets): its breaker
    /// and metrics are an upstream's.
    pub databases: Vec<DatabaseConfig>,
    /// The file as loaded (secrets redacted) and its hash, for the admin API's `GET /config`.
    pub source: source::ConfigSource,
    /// The mediation folders routes name, loaded and compiled; routes refer to them by index.
    pub mediations: Vec<crate::mediation::Mediation>,
}

/// `cache_storage`: the one in-memory store every route's cache shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStorageConfig {
    /// Bound on the stored answers (bodies, headers and per-entry overhead), kept by eviction.
    pub max_bytes: u64,
    /// Larger answers pass through uncached.
    pub max_object_bytes: u64,
}

/// A route's GET cache (`routes[].cache`).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCacheConfig {
    /// Freshness when the origin says nothing (`honor`), or always (`ignore`); zero with `honor`
    /// stores only what the origin marks fresh.
    pub ttl: Duration,
    /// `origin_cache_control: honor` (RFC 9111 directives win) or `ignore`.
    pub honor_origin: bool,
    /// What besides the route and method tells entries apart, in declaration order.
    pub vary: Vec<VaryPart>,
    /// Entries are per principal (issuer + client): the route checks a token and is not
    /// `shared: true`.
    pub per_principal: bool,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// Freshness of a 404 (zero: 404s are not stored).
    pub negative_ttl: Duration,
}

/// One `cache.vary` entry: a part of the request that selects the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaryPart {
    Path(String),
    Query(String),
    /// Lowercase header name.
    Header(http::HeaderName),
    Claim(String),
}

impl VaryPart {
    /// The name as written in `vary` and in purge queries (`path.accountId`).
    pub fn label(&self) -> String {
        match self {
            VaryPart::Path(name) => format!("path.{name}"),
            VaryPart::Query(name) => format!("query.{name}"),
            VaryPart::Header(name) => format!("header.{name}"),
            VaryPart::Claim(name) => format!("claim.{name}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub upstream_keepalive_pool_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LoggingSettings {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// `None`: plain HTTP.
    pub tls: Option<ListenerTlsConfig>,
}

/// A TLS listener's files (read at start-up and again on SIGHUP) and client certificate policy.
#[derive(Debug, Clone)]
pub struct ListenerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_auth: Option<ClientAuthConfig>,
}

#[derive(Debug, Clone)]
pub struct ClientAuthConfig {
    pub mode: ClientAuthMode,
    /// CA bundles that client certificates must chain to (at least one).
    pub ca: Vec<PathBuf>,
    /// Revocation lists checked for the client certificate.
    pub crl: Vec<PathBuf>,
    /// CN or DNS SAN values a certificate must carry (empty: any).
    pub allowed_names: Vec<String>,
    /// SHA-256 fingerprints of the exact certificates allowed (empty: any).
    pub pinned_sha256: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// The handshake fails without a valid certificate.
    Required,
    /// A certificate is checked when sent; routes with `auth.client_cert: required` need one.
    Optional,
}

/// An `ip_allowlists` entry.
#[derive(Debug, Clone)]
pub struct AllowlistConfig {
    pub name: String,
    /// Networks written in the config.
    pub inline: CidrSet,
    /// Files read at start-up and on SIGHUP.
    pub files: Vec<PathBuf>,
    /// `inline` plus the files' networks as read at start-up.
    pub networks: CidrSet,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub targets: Vec<SocketAddr>,
    /// The `Host` header sent upstream: the first target as written (`host:port`).
    pub host: String,
    pub tls: Option<UpstreamTls>,
    pub connect_timeout: Duration,
    /// Bulkhead: calls in flight allowed at once (0: no limit).
    pub max_inflight: u32,
    pub circuit_breaker: Option<CircuitBreakerConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreakerConfig {
    /// Share of failed calls (errors and timeouts) that opens the circuit.
    pub failure_ratio: f64,
    /// Calls that must have ended in the window before the ratio counts.
    pub min_requests: u32,
    pub window_secs: u64,
    /// How long an open circuit refuses calls before probing.
    pub open: Duration,
    /// Trial calls of the half-open circuit; all must succeed to close it.
    pub probes: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: String,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub id: String,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub path: PathTemplate,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub upstream_path: Option<RewriteTemplate>,
    pub forward_query: bool,
    pub timeout: Duration,
    pub retries: u32,
    pub max_body_bytes: u64,
    /// Indexes into [`Config::ip_allowlists`] of the lists the route accepts; `None`: any caller.
    pub allow_ips: Option<Vec<usize>>,
    pub auth: Option<RouteAuth>,
    pub rate_limit: Option<RateLimitConfig>,
    /// Degraded answers for backend-side failures (`on_error`).
    pub on_error: Option<crate::degraded::DegradedAnswers>,
    pub cache: Option<RouteCacheConfig>,
    /// Index into [`Config::mediations`]: the route answers through a mediation.
    pub mediation: Option<usize>,
    /// Index into [`Config::databases`]: the route's SQL mediation runs there.
    pub database: Option<usize>,
}

/// A SQL backend (`databases.NAME`).
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub name: String,
    /// The sqlx connection URL (it may hold a password: never logged whole).
    pub url: String,
    pub driver: Driver,
    pub max_connections: u32,
    /// Every pooled connection busy this long: 503 `backend_overloaded`.
    pub acquire_timeout: Duration,
    /// Enforced by the database where it can, always by the gateway: 504.
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Postgres,
    MySql,
    Sqlite,
}

/// A route's usage plan: a token bucket of `burst` tokens refilled at `requests_per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    pub requests_per_sec: f64,
    pub burst: u32,
    pub key: RateLimitKey,
}

/// Whose budget a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitKey {
    /// All callers of the route together: the backend's budget.
    Route,
    /// Each client: the token's client id (routes with `auth.jwt`).
    Client,
    /// Each client IP.
    Ip,
}

impl RateLimitKey {
    pub fn label(self) -> &'static str {
        match self {
            RateLimitKey::Route => "route",
            RateLimitKey::Client => "client",
            RateLimitKey::Ip => "ip",
        }
    }
}

/// A route's caller requirements: a token, a client certificate, or both.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    /// Index into [`Config::jwt_providers`]; `None`: no token needed.
    pub provider: Option<usize>,
    /// A verified client certificate allowed by its listener's `allowed_names` / `pinned_sha256`.
    pub client_cert: bool,
    /// At least one of these scopes (empty: no requirement).
    pub scopes_any: Vec<String>,
    /// Every one of these scopes.
    pub scopes_all: Vec<String>,
}

/// The built-in token issuer.
pub struct TokenIssuerConfig {
    pub path: String,
    pub issuer: String,
    pub signing_key: PathBuf,
    pub ttl_secs: u64,
    pub clients: Vec<crate::auth::issuer::IssuerClient>,
}

impl std::fmt::Debug for TokenIssuerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.clients.iter().map(|c| c.name.as_str()).collect();
        write!(f, "TokenIssuerConfig({} at {}, clients {names:?})", self.issuer, self.path)
    }
}

/// Where a provider's keys come from (read when the gateway is built).
#[derive(Debug, Clone)]
pub enum KeySource {
    JwksFile(PathBuf),
    PublicKeyPem(PathBuf),
    JwksUri { uri: String, min_refresh: Duration },
}

#[derive(Debug, Clone)]
pub struct JwtProviderConfig {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway_secs: u64,
    pub scope_claims: Vec<String>,
    pub keys: KeySource,
}

/// Reads and validates a config file. Relative paths inside it are taken from the working
/// directory, as the contract says.
pub fn load_file(path: &Path, env: &dyn EnvLookup) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::at("", format!("cannot read config file `{}`: {e}", path.display()))])?;
    load_str(&text, env)
}

/// Parses and validates config text.
pub fn load_str(text: &str, env: &dyn EnvLookup) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut tree: Value = match serde_yaml_ng::from_str(text) {
        Ok(Value::Null) => return Err(vec![ConfigError::at("", "the config is empty")]),
        Ok(tree) => tree,
        Err(e) => {
            let location = e.location().map(|l| (l.line(), l.column()));
            return Err(vec![ConfigError { path: String::new(), message: format!("not valid YAML: {e}"), location }]);
        }
    };
    let source = source::ConfigSource::new(text, &tree);
    env::expand_tree(&mut tree, "", env, &mut errors);
    // A value whose variable is missing became empty; checks of that value would only repeat
    // the missing-variable error, so errors at or under those paths are dropped.
    let unresolved: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    let mut later = Vec::new();
    let file = parse_sections(tree, &mut later);
    let config = file.and_then(|file| validate::validate(file, &mut later));
    later.retain(|e| !unresolved.iter().any(|p| is_at_or_under(&e.path, p)));
    errors.extend(later);
    if errors.is_empty() {
        if let Some(mut config) = config {
            config.source = source;
            return Ok(config);
        }
    }
    add_locations(text, &mut errors);
    Err(errors)
}

/// Deserializes each section, and each list or map element, on its own so that every schema
/// error is reported, not only the first, and the parts that did parse are still validated.
fn parse_sections(tree: Value, errors: &mut Vec<ConfigError>) -> Option<schema::Sections> {
    let Value::Mapping(map) = tree else {
        errors.push(ConfigError::at("", "the config must be a YAML mapping of sections"));
        return None;
    };
    let mut sections = std::collections::HashMap::new();
    for (key, value) in map {
        let name = env::key_name(&key);
        if schema::TOP_LEVEL_KEYS.contains(&name.as_str()) {
            sections.insert(name, value);
        } else {
            errors.push(ConfigError::at(
                name.clone(),
                format!("unknown section `{name}`, expected one of: {}", schema::TOP_LEVEL_KEYS.join(", ")),
            ));
        }
    }
    let server = optional(sections.remove("server"), "server", errors).unwrap_or_default();
    let logging = optional(sections.remove("logging"), "logging", errors).unwrap_or_default();
    let listeners = match sections.remove("listeners") {
        Some(v) => list(v, "listeners", errors),
        None => {
            errors.push(ConfigError::at("listeners", "required: at least one listener"));
            Vec::new()
        }
    };
    let admin = match sections.remove("admin") {
        Some(v) => section(v, "admin", errors),
        None => {
            errors.push(ConfigError::at("admin", "required: the admin listener (`admin.address`)"));
            None
        }
    };
    let trusted_proxies = optional(sections.remove("trusted_proxies"), "trusted_proxies", errors).unwrap_or_default();
    let ip_allowlists = named(sections.remove("ip_allowlists"), "ip_allowlists", errors);
    let jwt_providers = named(sections.remove("jwt_providers"), "jwt_providers", errors);
    let token_issuer = optional(sections.remove("token_issuer"), "token_issuer", errors);
    let upstreams = named(sections.remove("upstreams"), "upstreams", errors);
    let cache_storage = optional(sections.remove("cache_storage"), "cache_storage", errors).unwrap_or_default();
    let plugins_dir = optional(sections.remove("plugins_dir"), "plugins_dir", errors);
    let databases = named(sections.remove("databases"), "databases", errors);
    let routes = match sections.remove("routes") {
        Some(v) => list(v, "routes", errors),
        None => Vec::new(),
    };
    Some(schema::Sections {
        server,
        logging,
        listeners,
        admin,
        trusted_proxies,
        ip_allowlists,
        jwt_providers,
        token_issuer,
        upstreams,
        routes,
        cache_storage,
        plugins_dir,
        databases,
    })
}

/// A mapping of names to settings (`upstreams`, `ip_allowlists`); each entry parsed on its own.
fn named<T: DeserializeOwned>(
    value: Option<Value>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> std::collections::BTreeMap<String, Option<T>> {
    match value {
        Some(Value::Null) | None => Default::default(),
        Some(Value::Mapping(map)) => map
            .into_iter()
            .map(|(key, value)| {
                let name = env::key_name(&key);
                let parsed = section(value, &format!("{path}.{name}"), errors);
                (name, parsed)
            })
            .collect(),
        Some(_) => {
            errors.push(ConfigError::at(path, "must be a mapping of names to settings"));
            Default::default()
        }
    }
}

fn section<T: DeserializeOwned>(value: Value, path: &str, errors: &mut Vec<ConfigError>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_string()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            errors.push(ConfigError::at(full, schema_message(e.into_inner())));
            None
        }
    }
}

fn optional<T: DeserializeOwned>(value: Option<Value>, path: &str, errors: &mut Vec<ConfigError>) -> Option<T> {
    match value {
        None | Some(Value::Null) => None,
        Some(v) => section(v, path, errors),
    }
}

fn list<T: DeserializeOwned>(value: Value, path: &str, errors: &mut Vec<ConfigError>) -> Vec<Option<T>> {
    match value {
        Value::Null => Vec::new(),
        Value::Sequence(items) => {
            items.into_iter().enumerate().map(|(i, item)| section(item, &format!("{path}[{i}]"), errors)).collect()
        }
        _ => {
            errors.push(ConfigError::at(path, "must be a list"));
            Vec::new()
        }
    }
}

/// serde's messages, with the untagged enums' vague one replaced by what is accepted.
fn schema_message(e: serde_yaml_ng::Error) -> String {
    let message = e.to_string();
    if message.starts_with("data did not match any variant of untagged enum Methods") {
        return "must be a method name or a list of method names".to_string();
    }
    if message.starts_with("data did not match any variant of untagged enum UpstreamTlsSection") {
        return "must be `false`, `true` or a map with `sni`, `ca`, `client_cert`, `client_key`".to_string();
    }
    message
}

fn is_at_or_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Attaches a line and column to errors when a typed whole-file parse of the text points at the
/// same path (serde stops at its first error, so this locates at most one).
fn add_locations(text: &str, errors: &mut [ConfigError]) {
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    if let Err(e) = serde_path_to_error::deserialize::<_, schema::FileConfig>(deserializer) {
        let path = e.path().to_string();
        let location = e.inner().location().map(|l| (l.line(), l.column()));
        if let Some(location) = location {
            if let Some(err) = errors.iter_mut().find(|err| err.path == path && err.location.is_none()) {
                err.location = Some(location);
            }
        }
    }
}

impl Config {
    /// A one-line summary for `seawall validate` and the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "{} listener(s), {} upstream(s), {} route(s); admin on {}",
            self.listeners.len(),
            self.upstreams.len(),
            self.routes.len(),
            self.admin.address
        )
    }
}
