//! The YAML file as written by users: serde types only, no policy.
//!
//! Every struct rejects unknown keys; defaults live in `super::defaults` as named constants.
//! `super::validate` turns these into the typed runtime config.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub threads: Option<usize>,
    pub grace_period_secs: Option<u64>,
    /// Idle upstream connections kept for reuse, per process. Must follow the client
    /// concurrency: a pool smaller than it opens a new upstream connection per request.
    pub upstream_keepalive_pool_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    pub level: Option<String>,
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: String,
    pub address: String,
    pub tls: Option<ListenerTlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    pub cert: String,
    pub key: String,
    pub client_auth: Option<ClientAuthSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthSection {
    pub mode: String,
    #[serde(default)]
    pub ca: Vec<String>,
    #[serde(default)]
    pub crl: Vec<String>,
    #[serde(default)]
    pub allowed_names: Vec<String>,
    #[serde(default)]
    pub pinned_sha256: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpAllowlistSection {
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub files: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderSection {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<String>,
    pub public_key_pem: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub leeway_secs: Option<u64>,
    pub scope_claims: Option<Vec<String>>,
    pub jwks_min_refresh_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthSection {
    pub jwt: Option<String>,
    #[serde(default)]
    pub scopes_any: Vec<String>,
    #[serde(default)]
    pub scopes_all: Vec<String>,
    pub client_cert: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuerSection {
    pub path: Option<String>,
    pub issuer: String,
    pub signing_key: String,
    pub token_ttl_secs: Option<u64>,
    #[serde(default)]
    pub clients: BTreeMap<String, IssuerClientSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerClientSection {
    pub secret_sha256: Option<String>,
    pub secret: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub audience: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub targets: Vec<String>,
    #[serde(default)]
    pub tls: UpstreamTlsSection,
    pub connect_timeout_ms: Option<u64>,
    pub max_inflight: Option<u32>,
    pub circuit_breaker: Option<CircuitBreakerSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSection {
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window_secs: u64,
    pub open_secs: u64,
    pub probes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    pub url: String,
    pub max_connections: Option<u32>,
    pub acquire_timeout_ms: Option<u64>,
    pub statement_timeout_ms: Option<u64>,
    pub circuit_breaker: Option<CircuitBreakerSection>,
}

/// `tls: false` / `tls: true` or a map, which turns TLS on.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UpstreamTlsSection {
    Enabled(bool),
    Settings(UpstreamTlsSettings),
}

impl Default for UpstreamTlsSection {
    fn default() -> Self {
        UpstreamTlsSection::Enabled(false)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSettings {
    pub sni: Option<String>,
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub id: String,
    #[serde(rename = "match")]
    pub matcher: MatchSection,
    pub upstream: Option<String>,
    pub mediation: Option<String>,
    pub upstream_path: Option<String>,
    #[serde(default)]
    pub forward_query: bool,
    pub timeout_ms: u64,
    #[serde(default)]
    pub allow_ips: Vec<String>,
    pub auth: Option<RouteAuthSection>,
    pub retries: Option<u32>,
    pub max_body_bytes: Option<u64>,
    pub rate_limit: Option<RateLimitSection>,
    pub on_error: Option<OnErrorSection>,
    pub cache: Option<CacheSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub ttl_secs: u64,
    pub origin_cache_control: Option<String>,
    #[serde(default)]
    pub vary: Vec<String>,
    #[serde(default)]
    pub shared: bool,
    pub stale_while_revalidate_secs: Option<u64>,
    pub stale_if_error_secs: Option<u64>,
    pub negative_ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheStorageSection {
    pub max_bytes: Option<u64>,
    pub max_object_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnErrorSection {
    pub status: Option<u16>,
    pub body: serde_json::Map<String, serde_json::Value>,
    pub codes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub requests_per_sec: f64,
    pub burst: Option<u32>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    pub method: Option<Methods>,
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Methods {
    One(String),
    Many(Vec<String>),
}

/// The sections a file may hold, in the order they are checked.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "logging",
    "listeners",
    "admin",
    "trusted_proxies",
    "ip_allowlists",
    "jwt_providers",
    "token_issuer",
    "upstreams",
    "routes",
    "cache_storage",
    "plugins_dir",
    "databases",
];

/// The file as parsed section by section: an element that failed to parse is `None`, so the
/// others keep their list positions (and YAML paths) and are still checked.
#[derive(Debug, Default)]
pub struct Sections {
    pub server: ServerSection,
    pub logging: LoggingSection,
    pub listeners: Vec<Option<ListenerSection>>,
    pub admin: Option<AdminSection>,
    pub trusted_proxies: Vec<String>,
    pub ip_allowlists: BTreeMap<String, Option<IpAllowlistSection>>,
    pub jwt_providers: BTreeMap<String, Option<JwtProviderSection>>,
    pub token_issuer: Option<TokenIssuerSection>,
    pub upstreams: BTreeMap<String, Option<UpstreamSection>>,
    pub routes: Vec<Option<RouteSection>>,
    pub cache_storage: CacheStorageSection,
    pub plugins_dir: Option<String>,
    pub databases: BTreeMap<String, Option<DatabaseSection>>,
}

/// Kept for the typed whole-file parse that gives the first error its line and column.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub logging: LoggingSection,
    pub listeners: Vec<ListenerSection>,
    pub admin: AdminSection,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub ip_allowlists: BTreeMap<String, IpAllowlistSection>,
    #[serde(default)]
    pub jwt_providers: BTreeMap<String, JwtProviderSection>,
    pub token_issuer: Option<TokenIssuerSection>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    pub cache_storage: Option<CacheStorageSection>,
    pub plugins_dir: Option<String>,
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseSection>,
}
