//! The state every service of one gateway shares: the validated config, upstreams, TLS
//! listeners, allowlists (the last two swapped on SIGHUP), metrics, readiness and the count of
//! requests in progress (for draining on SIGTERM).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::ip::Allowlists;
use crate::auth::issuer::TokenIssuer;
use crate::auth::jwks::JwksSource;
use crate::auth::jwt::{key_from_pem, keys_from_jwks, JwtProvider, ProviderKey, ProviderSettings};
use crate::cache::ResponseCache;
use crate::clock::Clock;
use crate::config::{Config, ConfigError, JwtProviderConfig, KeySource, RouteConfig};
use crate::metrics::Metrics;
use crate::throttle::UsagePlan;
use crate::tls::expiry::NamedCertificate;
use crate::tls::ListenerTls;
use crate::upstream::Upstream;

pub struct Gateway {
    pub config: Config,
    pub upstreams: Vec<Upstream>,
    /// One per `config.databases`, same order: SQL mediations run there.
    pub databases: Vec<crate::database::Database>,
    /// Calls the gateway makes itself (mediations), with their own connection pool.
    pub upstream_client: crate::upstream::client::UpstreamClient,
    /// One per `config.jwt_providers`, same order.
    pub jwt_providers: Vec<JwtProvider>,
    /// For each provider, its JWKS source when the keys come from `jwks_uri`.
    pub jwks_sources: Vec<Option<JwksSource>>,
    pub token_issuer: Option<TokenIssuer>,
    /// One per `config.listeners`, same order; `None` for plain HTTP listeners.
    pub tls_listeners: Vec<Option<Arc<ListenerTls>>>,
    allowlists: ArcSwap<Allowlists>,
    /// One per `config.routes`, same order: the route's usage plan.
    pub usage_plans: Vec<Option<UsagePlan>>,
    /// The GET cache, when a route has one.
    pub cache: Option<ResponseCache>,
    /// Policy time (usage plans, breakers, cache freshness); tests move it forward.
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub access_log: bool,
    /// Set once every public listener accepts connections.
    listeners_bound: AtomicBool,
    /// Set when SIGTERM starts the drain: a load balancer polling `/readyz` stops sending.
    draining: AtomicBool,
    active: Arc<AtomicUsize>,
}

impl Gateway {
    /// Builds everything the request path needs; errors name the config path at fault (TLS
    /// material that does not parse, say).
    pub fn new(config: Config) -> Result<Gateway, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let route_ids: Vec<&str> = config.routes.iter().map(|r| r.id.as_str()).collect();
        let upstream_names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        let cached_routes: Vec<usize> =
            (0..config.routes.len()).filter(|&i| config.routes[i].cache.is_some()).collect();
        let metrics = Arc::new(Metrics::new(&route_ids, &upstream_names).with_cached_routes(&cached_routes));
        let clock = Clock::default();
        let mut upstreams = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            match Upstream::new(u, &clock, metrics.circuit_gauge(i)) {
                Ok(upstream) => upstreams.push(upstream),
                Err(message) => errors.push(ConfigError::at(format!("upstreams.{}.tls", u.name), message)),
            }
        }
        let mut jwt_providers = Vec::new();
        let mut jwks_sources = Vec::new();
        for (provider_index, p) in config.jwt_providers.iter().enumerate() {
            jwks_sources.push(match &p.keys {
                KeySource::JwksUri { uri, min_refresh } => match JwksSource::new(&p.name, uri, *min_refresh) {
                    Ok(source) => Some(source),
                    Err(message) => {
                        errors.push(ConfigError::at(format!("jwt_providers.{}.jwks_uri", p.name), message));
                        None
                    }
                },
                _ => None,
            });
            match load_keys(p) {
                Ok(keys) => jwt_providers.push(JwtProvider::new(
                    ProviderSettings {
                        name: p.name.clone(),
                        issuer: p.issuer.clone(),
                        audiences: p.audiences.clone(),
                        algorithms: p.algorithms.clone(),
                        leeway_secs: p.leeway_secs,
                        scope_claims: p.scope_claims.clone(),
                        kept_claims: kept_claims(&config, provider_index),
                    },
                    keys,
                )),
                Err((key, message)) => errors.push(ConfigError::at(format!("jwt_providers.{}.{key}", p.name), message)),
            }
        }
        let token_issuer = match &config.token_issuer {
            None => None,
            Some(t) => {
                let built = crate::tls::pem::read(&t.signing_key)
                    .and_then(|pem| TokenIssuer::new(&t.path, &t.issuer, t.ttl_secs, t.clients.clone(), &pem));
                match built {
                    Ok(issuer) => Some(issuer),
                    Err(message) => {
                        errors.push(ConfigError::at("token_issuer.signing_key", message));
                        None
                    }
                }
            }
        };
        let mut tls_listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            tls_listeners.push(match &l.tls {
                None => None,
                Some(tls) => match ListenerTls::new(&l.name, tls, Arc::clone(&metrics)) {
                    Ok(listener) => Some(Arc::new(listener)),
                    Err(message) => {
                        errors.push(ConfigError::at(format!("listeners[{i}].tls"), message));
                        None
                    }
                },
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let allowlists = ArcSwap::from_pointee(Allowlists::new(&config));
        let usage_plans =
            config.routes.iter().map(|r| r.rate_limit.as_ref().map(|l| UsagePlan::new(l, clock.clone()))).collect();
        let cached: Vec<&RouteConfig> = config.routes.iter().filter(|r| r.cache.is_some()).collect();
        let cache = (!cached.is_empty()).then(|| {
            let longest_deadline = cached.iter().map(|r| r.timeout).max().unwrap_or_default();
            ResponseCache::new(&config.cache_storage, &route_ids, clock.clone(), longest_deadline)
        });
        let gateway = Gateway {
            cache,
            access_log: config.logging.access_log,
            databases: config.databases.iter().cloned().map(crate::database::Database::new).collect(),
            config,
            upstreams,
            upstream_client: Default::default(),
            jwt_providers,
            jwks_sources,
            token_issuer,
            tls_listeners,
            allowlists,
            usage_plans,
            clock,
            metrics,
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            active: Arc::new(AtomicUsize::new(0)),
        };
        gateway.metrics.certificate_expiry(&gateway.certificates());
        Ok(gateway)
    }

    /// The allowlists as last loaded.
    pub fn allowlists(&self) -> arc_swap::Guard<Arc<Allowlists>> {
        self.allowlists.load()
    }

    pub fn set_allowlists(&self, allowlists: Allowlists) {
        self.allowlists.store(Arc::new(allowlists));
    }

    /// Every certificate the gateway depends on: listeners' server certificates and client
    /// CAs, upstreams' CAs and client certificates.
    pub fn certificates(&self) -> Vec<NamedCertificate> {
        let listeners = self.tls_listeners.iter().flatten().flat_map(|l| l.certificates());
        let mut all: Vec<NamedCertificate> =
            listeners.chain(self.upstreams.iter().flat_map(|u| u.certificates())).collect();
        let mut seen = std::collections::HashMap::new();
        for c in &mut all {
            let count = seen.entry(c.name.clone()).or_insert(0u32);
            *count += 1;
            if *count > 1 {
                c.name = format!("{}#{count}", c.name);
            }
        }
        all
    }

    /// Counts one request in progress until the returned guard drops.
    pub fn active_request(&self) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.active.clone())
    }

    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready: config loaded (this value exists), every public listener accepts, every JWKS
    /// fetched once, not draining.
    pub fn is_ready(&self) -> bool {
        self.listeners_bound.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.jwks_sources.iter().flatten().all(JwksSource::is_loaded)
    }

    /// Why `/readyz` says no.
    pub fn not_ready_reason(&self) -> &'static str {
        if self.draining.load(Ordering::Acquire) {
            "draining"
        } else if !self.listeners_bound.load(Ordering::Acquire) {
            "listeners not bound yet"
        } else {
            "JWKS not loaded yet"
        }
    }
}

pub struct ActiveRequest(Arc<AtomicUsize>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The claims that routes verified by this provider name in `cache.vary` (`claim.NAME`).
fn kept_claims(config: &Config, provider_index: usize) -> Vec<String> {
    let mut kept = Vec::new();
    for route in &config.routes {
        if route.auth.as_ref().and_then(|a| a.provider) != Some(provider_index) {
            continue;
        }
        for part in route.cache.iter().flat_map(|c| &c.vary) {
            if let crate::config::VaryPart::Claim(name) = part {
                if !kept.contains(name) {
                    kept.push(name.clone());
                }
            }
        }
    }
    kept
}

/// A provider's keys from its file; the error names the config key at fault. Keys that fit
/// none of the provider's algorithms are an error too: every token would be refused.
fn load_keys(p: &JwtProviderConfig) -> Result<Vec<ProviderKey>, (&'static str, String)> {
    let (key, keys) = match &p.keys {
        KeySource::JwksFile(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ("jwks_file", format!("cannot read `{}`: {e}", path.display())))?;
            let (keys, skipped) =
                keys_from_jwks(&text).map_err(|e| ("jwks_file", format!("`{}`: {e}", path.display())))?;
            if !skipped.is_empty() {
                tracing::warn!(provider = %p.name, kids = ?skipped, "JWKS keys of unsupported types skipped");
            }
            ("jwks_file", keys)
        }
        // Fetched by the JWKS refresher once the server runs.
        KeySource::JwksUri { .. } => return Ok(Vec::new()),
        KeySource::PublicKeyPem(path) => {
            let pem = crate::tls::pem::read(path).map_err(|e| ("public_key_pem", e))?;
            let key = key_from_pem(&pem).map_err(|e| ("public_key_pem", format!("`{}`: {e}", path.display())))?;
            ("public_key_pem", vec![key])
        }
    };
    let usable = keys.iter().any(|k| p.algorithms.iter().any(|a| a.family() == k.key.family()));
    if !usable {
        return Err((key, "no key fits the provider's `algorithms` (e.g. RS256 needs an RSA key)".into()));
    }
    Ok(keys)
}
