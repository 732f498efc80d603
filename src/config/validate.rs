//! Semantic checks: the parsed file -> typed [`Config`], every problem collected with its path.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;

use super::schema::{self, Methods, Sections, UpstreamTlsSection};
use super::{
    defaults, AdminConfig, AllowlistConfig, CacheStorageConfig, CircuitBreakerConfig, ClientAuthConfig, ClientAuthMode,
    Config, ConfigError, DatabaseConfig, Driver, JwtProviderConfig, KeySource, ListenerConfig, ListenerTlsConfig,
    LogFormat, LoggingSettings, RateLimitConfig, RateLimitKey, RouteAuth, RouteCacheConfig, RouteConfig,
    ServerSettings, TokenIssuerConfig, UpstreamConfig, UpstreamTls, VaryPart,
};
use crate::auth::ip::{parse_cidr, read_allowlist_file, CidrSet};
use crate::auth::jwt::parse_algorithm;
use crate::routing::{PathTemplate, RewriteTemplate, RouteSpec, Router};

pub(super) fn validate(file: Sections, errors: &mut Vec<ConfigError>) -> Option<Config> {
    let mut err = |path: String, message: String| errors.push(ConfigError::at(path, message));

    let server = server(&file.server, &mut err);
    let logging = logging(&file.logging, &mut err);

    if file.listeners.is_empty() {
        err("listeners".into(), "required: at least one listener".into());
    }
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let Some(l) = l else { continue };
        let path = format!("listeners[{i}]");
        if l.name.trim().is_empty() {
            err(format!("{path}.name"), "must not be empty".into());
        } else if !names.insert(l.name.as_str()) {
            err(format!("{path}.name"), format!("duplicate listener name `{}`", l.name));
        }
        let tls = l.tls.as_ref().and_then(|t| listener_tls(&path, t, &mut err));
        match socket_addr(&l.address) {
            Ok(address) => {
                if !addresses.insert(address) {
                    err(format!("{path}.address"), format!("address `{address}` is used by another listener"));
                }
                listeners.push(ListenerConfig { name: l.name.clone(), address, tls });
            }
            Err(message) => err(format!("{path}.address"), message),
        }
    }

    let admin = match file.admin.as_ref().map(|a| socket_addr(&a.address)) {
        None => None,
        Some(Ok(address)) => {
            if addresses.contains(&address) {
                err(
                    "admin.address".into(),
                    format!("`{address}` is also a public listener: the admin API must never be on a public listener"),
                );
            }
            Some(AdminConfig { address })
        }
        Some(Err(message)) => {
            err("admin.address".into(), message);
            None
        }
    };

    let trusted_proxies = cidr_set(&file.trusted_proxies, &[], "trusted_proxies", &mut err);
    let mut allowlists = Vec::new();
    for (name, list) in &file.ip_allowlists {
        let Some(list) = list else { continue };
        let path = format!("ip_allowlists.{name}");
        let inline = cidr_set(&list.cidrs, &[], &path, &mut err);
        let mut networks = cidr_set(&[], &list.files, &path, &mut err);
        networks.extend(&inline);
        if networks.is_empty() && list.files.is_empty() {
            err(path, "has no networks: it would refuse every caller".into());
        }
        let files = list.files.iter().map(PathBuf::from).collect();
        allowlists.push(AllowlistConfig { name: name.clone(), inline, files, networks });
    }

    let mut jwt_providers = Vec::new();
    for (name, p) in &file.jwt_providers {
        let Some(p) = p else { continue };
        if let Some(provider) = jwt_provider(name, p, &mut err) {
            jwt_providers.push(provider);
        }
    }

    let token_issuer = file.token_issuer.as_ref().and_then(|t| token_issuer(t, &mut err));

    let mut upstreams = Vec::new();
    for (name, u) in &file.upstreams {
        let Some(u) = u else { continue };
        if let Some(upstream) = upstream(name, u, &mut err) {
            upstreams.push(upstream);
        }
    }

    let mut databases = Vec::new();
    for (name, d) in &file.databases {
        let Some(d) = d else { continue };
        if file.upstreams.contains_key(name) {
            err(format!("databases.{name}"), format!("`{name}` is also an upstream: a backend name is used once"));
            continue;
        }
        if let Some((database, circuit_breaker)) = database(name, d, &mut err) {
            // The database is a backend like an upstream: breaker, metrics, in-flight gauge.
            upstreams.push(UpstreamConfig {
                name: name.clone(),
                targets: Vec::new(),
                host: String::new(),
                tls: None,
                connect_timeout: database.acquire_timeout,
                max_inflight: 0,
                circuit_breaker,
            });
            databases.push(database);
        }
    }

    let mediations = mediations(&file, &mut err);

    let mut routes = Vec::new();
    let mut ids = HashSet::new();
    // Index of each route in `file.routes`, to name router errors by their YAML path.
    let mut positions = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        let Some(r) = r else { continue };
        let path = format!("routes[{i}]");
        if !is_identifier(&r.id) {
            err(
                format!("{path}.id"),
                format!("`{}` is not a valid route id (letters, digits, `_`, `-`, `.`; at most 64)", r.id),
            );
        } else if !ids.insert(r.id.as_str()) {
            err(format!("{path}.id"), format!("duplicate route id `{}`", r.id));
        }
        let known = Known {
            upstreams: &upstreams,
            allowlists: &allowlists,
            jwt_providers: &jwt_providers,
            mediations: &mediations,
            databases: &databases,
            client_auth: file
                .listeners
                .iter()
                .flatten()
                .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some())),
        };
        if let Some(route) = route(&path, r, &file, &known, &mut err) {
            routes.push(route);
            positions.push(i);
        }
    }

    let specs: Vec<RouteSpec> = routes
        .iter()
        .map(|r: &RouteConfig| RouteSpec { id: &r.id, methods: r.methods.clone(), template: &r.path })
        .collect();
    let router = match Router::build(&specs) {
        Ok(router) => {
            if let Some(t) = &token_issuer {
                for path in [t.path.as_str(), crate::auth::issuer::JWKS_PATH] {
                    let shadowed = [Method::POST, Method::GET].iter().find_map(|m| match router.find(m, path) {
                        crate::routing::RouteMatch::Found { route, .. } => Some(route),
                        _ => None,
                    });
                    if let Some(route) = shadowed {
                        err(
                            format!("routes[{}].match.path", positions[route]),
                            format!("matches `{path}`, which the token issuer serves: the route would never see it"),
                        );
                    }
                }
            }
            Some(router)
        }
        Err(conflicts) => {
            for (index, message) in conflicts {
                err(format!("routes[{}].match.path", positions[index]), message);
            }
            None
        }
    };

    let cache_storage = cache_storage(&file.cache_storage, &mut err);

    if !errors.is_empty() {
        return None;
    }
    Some(Config {
        server,
        logging,
        listeners,
        admin: admin?,
        trusted_proxies,
        ip_allowlists: allowlists,
        jwt_providers,
        token_issuer,
        upstreams,
        routes,
        router: router?,
        cache_storage,
        databases,
        source: Default::default(),
        mediations,
    })
}

/// `databases.NAME`: the URL's scheme picks the driver; the URL must parse.
fn database(
    name: &str,
    d: &schema::DatabaseSection,
    err: &mut impl FnMut(String, String),
) -> Option<(DatabaseConfig, Option<CircuitBreakerConfig>)> {
    use std::str::FromStr;
    let path = format!("databases.{name}");
    let mut ok = true;
    if !is_identifier(name) {
        err(path.clone(), format!("`{name}` is not a valid database name (letters, digits, `_`, `-`, `.`)"));
        ok = false;
    }
    let scheme = d.url.split(':').next().unwrap_or_default().to_ascii_lowercase();
    let driver = match scheme.as_str() {
        "postgres" | "postgresql" => Some(Driver::Postgres),
        "mysql" | "mariadb" => Some(Driver::MySql),
        "sqlite" => Some(Driver::Sqlite),
        "sqlserver" | "mssql" | "jdbc" => {
            err(format!("{path}.url"), "SQL Server is not supported by this version yet".into());
            None
        }
        _ => {
            err(format!("{path}.url"), "must start with postgres://, mysql://, mariadb:// or sqlite:".into());
            None
        }
    };
    // The URL may carry a password: errors never quote it.
    let url = if scheme == "mariadb" { format!("mysql{}", &d.url["mariadb".len()..]) } else { d.url.clone() };
    let parsed = match driver {
        Some(Driver::Postgres) => sqlx::postgres::PgConnectOptions::from_str(&url).map(|_| ()),
        Some(Driver::MySql) => sqlx::mysql::MySqlConnectOptions::from_str(&url).map(|_| ()),
        Some(Driver::Sqlite) => sqlx::sqlite::SqliteConnectOptions::from_str(&url).map(|_| ()),
        None => Ok(()),
    };
    if let Err(e) = parsed {
        let reason = e.to_string();
        let reason = if reason.contains(&d.url) { "not a valid connection URL".to_string() } else { reason };
        err(format!("{path}.url"), reason);
        ok = false;
    }
    if driver == Some(Driver::Sqlite) {
        // A database file must exist, unless the URL asks for one to be made or for memory.
        let file = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
        let (file, query) = file.split_once('?').unwrap_or((file, ""));
        let creates = query.contains("mode=rwc") || query.contains("mode=memory") || file == ":memory:";
        if !creates && !Path::new(file).is_file() {
            err(format!("{path}.url"), format!("SQLite file `{file}` does not exist"));
            ok = false;
        }
    }
    let max_connections = d.max_connections.unwrap_or(defaults::DB_MAX_CONNECTIONS);
    if !(1..=1000).contains(&max_connections) {
        err(format!("{path}.max_connections"), format!("{max_connections} must be between 1 and 1000"));
        ok = false;
    }
    let mut millis = |value: Option<u64>, default: u64, key: &str| {
        let ms = value.unwrap_or(default);
        if ms == 0 || ms > defaults::MAX_ROUTE_TIMEOUT_MS {
            err(format!("{path}.{key}"), format!("{ms} must be between 1 and {}", defaults::MAX_ROUTE_TIMEOUT_MS));
            ok = false;
        }
        Duration::from_millis(ms)
    };
    let acquire_timeout = millis(d.acquire_timeout_ms, defaults::DB_ACQUIRE_TIMEOUT_MS, "acquire_timeout_ms");
    let statement_timeout = millis(d.statement_timeout_ms, defaults::DB_STATEMENT_TIMEOUT_MS, "statement_timeout_ms");
    let circuit_breaker = d.circuit_breaker.as_ref().and_then(|b| circuit_breaker(&path, b, err));
    ok &= d.circuit_breaker.is_none() || circuit_breaker.is_some();
    if !ok {
        return None;
    }
    let config = DatabaseConfig {
        name: name.to_string(),
        url,
        driver: driver?,
        max_connections,
        acquire_timeout,
        statement_timeout,
    };
    Some((config, circuit_breaker))
}

/// Loads every mediation folder routes name, once each; a folder's errors are reported at the
/// first route that names it.
fn mediations(file: &Sections, err: &mut impl FnMut(String, String)) -> Vec<crate::mediation::Mediation> {
    let dir = Path::new(file.plugins_dir.as_deref().unwrap_or(defaults::PLUGINS_DIR));
    let mut loaded: Vec<crate::mediation::Mediation> = Vec::new();
    let mut failed = HashSet::new();
    for (i, r) in file.routes.iter().enumerate() {
        let Some(name) = r.as_ref().and_then(|r| r.mediation.as_ref()) else { continue };
        if loaded.iter().any(|m| &m.name == name) || failed.contains(name) {
            continue;
        }
        match crate::mediation::load(dir, name) {
            Ok(mediation) => loaded.push(mediation),
            Err(errors) => {
                failed.insert(name.clone());
                for e in errors {
                    err(format!("routes[{i}].mediation"), e.to_string());
                }
            }
        }
    }
    loaded
}

fn cache_storage(s: &schema::CacheStorageSection, err: &mut impl FnMut(String, String)) -> CacheStorageConfig {
    let max_bytes = s.max_bytes.unwrap_or(defaults::CACHE_MAX_BYTES);
    let max_object_bytes = s.max_object_bytes.unwrap_or(defaults::CACHE_MAX_OBJECT_BYTES);
    if max_bytes < defaults::CACHE_MIN_BYTES {
        err(
            "cache_storage.max_bytes".into(),
            format!("{max_bytes} is below {} (64 KiB), too small to hold an answer", defaults::CACHE_MIN_BYTES),
        );
    }
    if max_object_bytes == 0 || max_object_bytes > defaults::CACHE_MAX_OBJECT_LIMIT {
        err(
            "cache_storage.max_object_bytes".into(),
            format!("{max_object_bytes} is not between 1 and {} (8 MiB)", defaults::CACHE_MAX_OBJECT_LIMIT),
        );
    } else if max_object_bytes > max_bytes {
        err(
            "cache_storage.max_object_bytes".into(),
            format!("{max_object_bytes} is more than the whole store (`max_bytes`: {max_bytes})"),
        );
    }
    CacheStorageConfig { max_bytes, max_object_bytes }
}

fn route_cache(
    path: &str,
    c: &schema::CacheSection,
    r: &schema::RouteSection,
    template: Option<&PathTemplate>,
    methods: Option<&[Method]>,
    err: &mut impl FnMut(String, String),
) -> Option<RouteCacheConfig> {
    let path = format!("{path}.cache");
    let mut ok = true;
    if methods.is_some_and(|m| !m.iter().any(|m| m == Method::GET || m == Method::HEAD)) {
        err(path.clone(), "only GET and HEAD answers are cached, and this route matches neither".into());
        ok = false;
    }
    let mut seconds = |name: &str, value: Option<u64>| {
        let value = value.unwrap_or(0);
        if value > defaults::CACHE_MAX_SECS {
            err(format!("{path}.{name}"), format!("{value} is more than a year ({} s)", defaults::CACHE_MAX_SECS));
            ok = false;
        }
        Duration::from_secs(value)
    };
    let ttl = seconds("ttl_secs", Some(c.ttl_secs));
    let stale_while_revalidate = seconds("stale_while_revalidate_secs", c.stale_while_revalidate_secs);
    let stale_if_error = seconds("stale_if_error_secs", c.stale_if_error_secs);
    let negative_ttl = seconds("negative_ttl_secs", c.negative_ttl_secs);
    let honor_origin = match c.origin_cache_control.as_deref() {
        None | Some("honor") => true,
        Some("ignore") => false,
        Some(other) => {
            err(format!("{path}.origin_cache_control"), format!("`{other}` is not one of honor, ignore"));
            ok = false;
            true
        }
    };
    if !honor_origin && ttl.is_zero() {
        err(
            format!("{path}.ttl_secs"),
            "0 with `origin_cache_control: ignore` would store nothing: give a freshness in seconds".into(),
        );
        ok = false;
    }
    let has_jwt = r.auth.as_ref().is_some_and(|a| a.jwt.is_some());
    let params = template.map(|t| t.param_names()).unwrap_or_default();
    let mut vary = Vec::new();
    for (i, entry) in c.vary.iter().enumerate() {
        let at = format!("{path}.vary[{i}]");
        let part = match entry.split_once('.') {
            Some(("path", name)) if params.contains(&name) => Some(VaryPart::Path(name.to_string())),
            Some(("path", name)) => {
                err(at, format!("`{name}` is not a parameter of `match.path` (known: {})", list_or_none(&params)));
                None
            }
            Some(("query", name)) if !name.is_empty() => Some(VaryPart::Query(name.to_string())),
            Some(("header", name)) => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) if header != http::header::AUTHORIZATION => Some(VaryPart::Header(header)),
                Ok(_) => {
                    err(
                        at,
                        "the raw Authorization value is never a key: the principal already is (unless `shared: true`)"
                            .into(),
                    );
                    None
                }
                Err(_) => {
                    err(at, format!("`{name}` is not a header name"));
                    None
                }
            },
            Some(("claim", name)) if !name.is_empty() && has_jwt => Some(VaryPart::Claim(name.to_string())),
            Some(("claim", _)) if !has_jwt => {
                err(at, "`claim.` parts need `auth.jwt` on the route".into());
                None
            }
            _ => {
                err(at, format!("`{entry}` is not one of path.NAME, query.NAME, header.NAME, claim.NAME"));
                None
            }
        };
        match part {
            Some(part) if vary.contains(&part) => {
                err(format!("{path}.vary[{i}]"), format!("`{entry}` is listed twice"));
                ok = false;
            }
            Some(part) => vary.push(part),
            None => ok = false,
        }
    }
    ok.then_some(RouteCacheConfig {
        ttl,
        honor_origin,
        vary,
        per_principal: has_jwt && !c.shared,
        stale_while_revalidate,
        stale_if_error,
        negative_ttl,
    })
}

fn server(s: &schema::ServerSection, err: &mut impl FnMut(String, String)) -> ServerSettings {
    let threads = match s.threads {
        Some(0) => {
            err("server.threads".into(), "must be at least 1".into());
            1
        }
        Some(n) if n > 256 => {
            err("server.threads".into(), format!("{n} is more than 256"));
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    let grace = s.grace_period_secs.unwrap_or(defaults::GRACE_PERIOD_SECS);
    if grace > 3600 {
        err("server.grace_period_secs".into(), format!("{grace} is more than an hour"));
    }
    let pool = s.upstream_keepalive_pool_size.unwrap_or(defaults::UPSTREAM_KEEPALIVE_POOL_SIZE);
    if pool == 0 {
        err(
            "server.upstream_keepalive_pool_size".into(),
            "must be at least 1 (0 would open a new upstream connection per request)".into(),
        );
    }
    ServerSettings { threads, grace_period: Duration::from_secs(grace), upstream_keepalive_pool_size: pool }
}

fn logging(l: &schema::LoggingSection, err: &mut impl FnMut(String, String)) -> LoggingSettings {
    let level = l.level.clone().unwrap_or_else(|| defaults::LOG_LEVEL.to_string());
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        err("logging.level".into(), format!("`{level}` is not one of error, warn, info, debug, trace"));
    }
    let format = match l.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            err("logging.format".into(), format!("`{other}` is not one of text, json"));
            LogFormat::Text
        }
    };
    LoggingSettings { level, format, access_log: l.access_log.unwrap_or(true) }
}

/// `circuit_breaker` of an upstream or a database, under `path`.
fn circuit_breaker(
    path: &str,
    b: &schema::CircuitBreakerSection,
    err: &mut impl FnMut(String, String),
) -> Option<CircuitBreakerConfig> {
    let path = format!("{path}.circuit_breaker");
    let mut good = true;
    let mut check = |valid: bool, key: &str, message: String| {
        if !valid {
            err(format!("{path}.{key}"), message);
            good = false;
        }
    };
    check(
        b.failure_ratio > 0.0 && b.failure_ratio <= 1.0,
        "failure_ratio",
        format!("{}: give a share of failed calls above 0 and at most 1 (0.5 is half)", b.failure_ratio),
    );
    check(
        b.min_requests >= 1,
        "min_requests",
        "must be at least 1: a single failure would otherwise open the circuit".into(),
    );
    check((1..=3600).contains(&b.window_secs), "window_secs", format!("{} must be between 1 and 3600", b.window_secs));
    check((1..=3600).contains(&b.open_secs), "open_secs", format!("{} must be between 1 and 3600", b.open_secs));
    let probes = b.probes.unwrap_or(defaults::CIRCUIT_PROBES);
    check((1..=100).contains(&probes), "probes", format!("{probes} must be between 1 and 100"));
    good.then_some(CircuitBreakerConfig {
        failure_ratio: b.failure_ratio,
        min_requests: b.min_requests,
        window_secs: b.window_secs,
        open: Duration::from_secs(b.open_secs),
        probes,
    })
}

fn upstream(name: &str, u: &schema::UpstreamSection, err: &mut impl FnMut(String, String)) -> Option<UpstreamConfig> {
    let path = format!("upstreams.{name}");
    let mut ok = true;
    if !is_identifier(name) {
        err(path.clone(), format!("`{name}` is not a valid upstream name (letters, digits, `_`, `-`, `.`)"));
        ok = false;
    }
    if u.targets.is_empty() {
        err(format!("{path}.targets"), "required: at least one `host:port`".into());
        ok = false;
    }
    let mut targets = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        match resolve(t) {
            Ok(addr) => targets.push(addr),
            Err(message) => {
                err(format!("{path}.targets[{i}]"), message);
                ok = false;
            }
        }
    }
    let connect_ms = u.connect_timeout_ms.unwrap_or(defaults::CONNECT_TIMEOUT_MS);
    if connect_ms == 0 || connect_ms > defaults::MAX_ROUTE_TIMEOUT_MS {
        err(
            format!("{path}.connect_timeout_ms"),
            format!("{connect_ms} must be between 1 and {}", defaults::MAX_ROUTE_TIMEOUT_MS),
        );
        ok = false;
    }
    let circuit_breaker = u.circuit_breaker.as_ref().and_then(|b| circuit_breaker(&path, b, err));
    ok &= u.circuit_breaker.is_none() || circuit_breaker.is_some();
    let host = u.targets.first().cloned().unwrap_or_default();
    let tls = match &u.tls {
        UpstreamTlsSection::Enabled(false) => None,
        UpstreamTlsSection::Enabled(true) => Some(UpstreamTls { sni: host_part(&host), ca: None, client_cert: None }),
        UpstreamTlsSection::Settings(s) => {
            let file = |value: &Option<String>, key: &str, err: &mut dyn FnMut(String, String)| {
                value.as_ref().and_then(|f| {
                    let key_path = format!("{path}.tls.{key}");
                    check_file(f, &key_path, err).then(|| PathBuf::from(f))
                })
            };
            let ca = file(&s.ca, "ca", err);
            let cert = file(&s.client_cert, "client_cert", err);
            let key = file(&s.client_key, "client_key", err);
            if s.client_cert.is_some() != s.client_key.is_some() {
                err(format!("{path}.tls"), "`client_cert` and `client_key` go together".into());
                ok = false;
            }
            Some(UpstreamTls { sni: s.sni.clone().unwrap_or_else(|| host_part(&host)), ca, client_cert: cert.zip(key) })
        }
    };
    ok.then(|| UpstreamConfig {
        name: name.to_string(),
        targets,
        host,
        tls,
        connect_timeout: Duration::from_millis(connect_ms),
        max_inflight: u.max_inflight.unwrap_or(0),
        circuit_breaker,
    })
}

fn route(
    path: &str,
    r: &schema::RouteSection,
    file: &Sections,
    known: &Known<'_>,
    err: &mut impl FnMut(String, String),
) -> Option<RouteConfig> {
    let (upstreams, allowlists) = (known.upstreams, known.allowlists);
    let mut ok = true;
    let auth = r.auth.as_ref().and_then(|a| route_auth(path, a, file, known, err));
    if r.auth.is_some() && auth.is_none() {
        ok = false;
    }
    let allow_ips = if r.allow_ips.is_empty() {
        None
    } else {
        let mut lists = Vec::new();
        for (i, name) in r.allow_ips.iter().enumerate() {
            match allowlists.iter().position(|l| &l.name == name) {
                Some(index) => lists.push(index),
                None if file.ip_allowlists.contains_key(name) => {}
                None => {
                    let known: Vec<&str> = file.ip_allowlists.keys().map(String::as_str).collect();
                    err(
                        format!("{path}.allow_ips[{i}]"),
                        format!("refers to unknown ip_allowlists entry `{name}` (known: {})", list_or_none(&known)),
                    );
                    ok = false;
                }
            }
        }
        Some(lists)
    };
    let template = match PathTemplate::parse(&r.matcher.path) {
        Ok(t) => Some(t),
        Err(message) => {
            err(format!("{path}.match.path"), message);
            None
        }
    };
    let methods = match &r.matcher.method {
        None => None,
        Some(m) => {
            let names: Vec<&String> = match m {
                Methods::One(one) => vec![one],
                Methods::Many(many) => many.iter().collect(),
            };
            if names.is_empty() {
                err(
                    format!("{path}.match.method"),
                    "an empty list matches nothing; omit it to match any method".into(),
                );
                ok = false;
            }
            let mut parsed = Vec::new();
            for name in names {
                let upper = name.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(m) if !upper.is_empty() => parsed.push(m),
                    _ => {
                        err(format!("{path}.match.method"), format!("`{name}` is not an HTTP method"));
                        ok = false;
                    }
                }
            }
            Some(parsed)
        }
    };
    let cache = match &r.cache {
        None => None,
        Some(c) => {
            let cache = route_cache(path, c, r, template.as_ref(), methods.as_deref(), err);
            ok &= cache.is_some();
            cache
        }
    };
    let mediation = match &r.mediation {
        None => None,
        Some(name) => {
            let index = known.mediations.iter().position(|m| &m.name == name);
            // (A folder that failed to load has its errors reported already.)
            ok &= index.is_some();
            if r.upstream_path.is_some() {
                err(format!("{path}.upstream_path"), "a mediation builds the backend request itself".into());
                ok = false;
            }
            index
        }
    };
    let sql_database = mediation.and_then(|m| known.mediations[m].database_name());
    let mut database = None;
    let upstream = match (&r.upstream, &r.mediation) {
        (Some(_), Some(_)) if sql_database.is_some() => {
            err(format!("{path}.upstream"), "a SQL mediation runs on its `sql.database`, not an upstream".into());
            None
        }
        (None, Some(_)) => match sql_database {
            None if mediation.is_none() => None,
            None => {
                err(format!("{path}.upstream"), "required: a SOAP mediation calls an upstream".into());
                None
            }
            Some(name) => match known.databases.iter().position(|d| d.name == name) {
                Some(i) => {
                    database = Some(i);
                    upstreams.iter().position(|u| u.name == name)
                }
                None => {
                    if !file.databases.contains_key(name) {
                        let names: Vec<&str> = file.databases.keys().map(String::as_str).collect();
                        err(
                            format!("{path}.mediation"),
                            format!(
                                "its `sql.database` `{name}` is not in `databases` (known: {})",
                                list_or_none(&names)
                            ),
                        );
                    }
                    None
                }
            },
        },
        (None, None) => {
            err(path.to_string(), "required: `upstream` (or `mediation`)".into());
            None
        }
        (Some(name), _) => match upstreams.iter().position(|u| &u.name == name) {
            Some(i) if file.upstreams.contains_key(name) => Some(i),
            Some(_) => {
                err(format!("{path}.upstream"), format!("`{name}` is a database: a SQL mediation runs on it"));
                None
            }
            None => {
                if !file.upstreams.contains_key(name) {
                    let known: Vec<&str> = file.upstreams.keys().map(String::as_str).collect();
                    err(
                        format!("{path}.upstream"),
                        format!("refers to unknown upstream `{name}` (known: {})", list_or_none(&known)),
                    );
                }
                None
            }
        },
    };
    let upstream_path = match (&r.upstream_path, &template) {
        (Some(p), Some(t)) => match RewriteTemplate::parse(p, t) {
            Ok(rewrite) => Some(rewrite),
            Err(message) => {
                err(format!("{path}.upstream_path"), message);
                ok = false;
                None
            }
        },
        _ => None,
    };
    if r.timeout_ms == 0 {
        err(
            format!("{path}.timeout_ms"),
            format!(
                "0 is not a deadline: give the whole-request deadline in ms (1 to {})",
                defaults::MAX_ROUTE_TIMEOUT_MS
            ),
        );
        ok = false;
    } else if r.timeout_ms > defaults::MAX_ROUTE_TIMEOUT_MS {
        err(
            format!("{path}.timeout_ms"),
            format!(
                "{} ms is above {}: Genesys gives up on a data action after 60 s at the longest, and the \
                 gateway's answer must reach it first",
                r.timeout_ms,
                defaults::MAX_ROUTE_TIMEOUT_MS
            ),
        );
        ok = false;
    }
    let retries = r.retries.unwrap_or(defaults::RETRIES);
    if retries > defaults::MAX_RETRIES {
        err(format!("{path}.retries"), format!("{retries} is more than {}", defaults::MAX_RETRIES));
        ok = false;
    }
    let max_body_bytes = r.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES);
    let rate_limit = match &r.rate_limit {
        None => None,
        Some(section) => {
            let has_jwt = r.auth.as_ref().is_some_and(|a| a.jwt.is_some());
            let limit = rate_limit(path, section, has_jwt, err);
            ok &= limit.is_some();
            limit
        }
    };
    let mediation_failures = mediation.map(|m| known.mediations[m].failure_codes()).unwrap_or_default();
    let on_error = r.on_error.as_ref().and_then(|o| on_error(path, o, &mediation_failures, err));
    ok &= r.on_error.is_none() || on_error.is_some();
    if !ok {
        return None;
    }
    Some(RouteConfig {
        id: r.id.clone(),
        methods,
        path: template?,
        upstream: upstream?,
        upstream_path,
        forward_query: r.forward_query,
        timeout: Duration::from_millis(r.timeout_ms),
        retries,
        max_body_bytes,
        allow_ips,
        auth,
        rate_limit,
        on_error,
        cache,
        mediation,
        database,
    })
}

/// `mediation_failures`: the backend-side failure codes of the route's mediation, degradable
/// too (and by default).
fn on_error(
    path: &str,
    o: &schema::OnErrorSection,
    mediation_failures: &[&'static str],
    err: &mut impl FnMut(String, String),
) -> Option<crate::degraded::DegradedAnswers> {
    let degradable: Vec<&'static str> =
        crate::problem::DEGRADABLE_CODES.iter().chain(mediation_failures).copied().collect();
    // Listed only: by default a backend's own 5xx answer passes through as it is.
    let listable: Vec<&'static str> = degradable.iter().copied().chain([crate::problem::UPSTREAM_ERROR]).collect();
    let path = format!("{path}.on_error");
    let mut ok = true;
    let status = o.status.unwrap_or(200);
    if !(200..=299).contains(&status) {
        err(
            format!("{path}.status"),
            format!("{status}: a degraded answer is a success (200 to 299) the flow can read"),
        );
        ok = false;
    }
    if o.body.contains_key("gateway_status") {
        err(format!("{path}.body.gateway_status"), "is added by the gateway (the failure's code): leave it out".into());
        ok = false;
    }
    // What a data action's output contract can hold (GENESYS.md): a body beyond it would take
    // the flow's Failure path, the very thing the degraded answer is for.
    for (key, value) in &o.body {
        if let Err(why) = fits_output_contract(value, 2, false) {
            err(format!("{path}.body.{key}"), why);
            ok = false;
        }
    }
    let mut codes = Vec::new();
    match &o.codes {
        None => codes.extend(&degradable),
        Some(listed) => {
            if listed.is_empty() {
                err(format!("{path}.codes"), "empty: omit it for the default (every backend-side failure)".into());
                ok = false;
            }
            for (i, code) in listed.iter().enumerate() {
                match listable.iter().find(|c| **c == code.as_str()) {
                    Some(c) => codes.push(*c),
                    None => {
                        err(format!("{path}.codes[{i}]"), format!("`{code}` is not one of {}", listable.join(", ")));
                        ok = false;
                    }
                }
            }
        }
    }
    ok.then(|| crate::degraded::DegradedAnswers::new(status, &o.body, &codes))
}

/// Genesys data actions read JSON nested at most this deep.
const MAX_OUTPUT_NESTING: usize = 50;

/// Whether `value`, at nesting `depth` (the body itself is 1), fits a data action's output
/// contract: at most [`MAX_OUTPUT_NESTING`] levels and no array directly inside an array.
fn fits_output_contract(value: &serde_json::Value, depth: usize, in_array: bool) -> Result<(), String> {
    use serde_json::Value;
    match value {
        _ if depth > MAX_OUTPUT_NESTING => {
            Err(format!("nested deeper than {MAX_OUTPUT_NESTING} levels, which data actions cannot read"))
        }
        Value::Array(_) if in_array => Err("an array inside an array, which data actions cannot read".into()),
        Value::Array(items) => items.iter().try_for_each(|item| fits_output_contract(item, depth + 1, true)),
        Value::Object(fields) => fields.values().try_for_each(|field| fits_output_contract(field, depth + 1, false)),
        _ => Ok(()),
    }
}

/// Highest rate and burst a usage plan may name: beyond this a limit protects nothing.
const MAX_RATE: f64 = 1_000_000.0;
/// Lowest rate: one request a day.
const MIN_RATE: f64 = 1.0 / 86_400.0;

fn rate_limit(
    path: &str,
    r: &schema::RateLimitSection,
    has_jwt: bool,
    err: &mut impl FnMut(String, String),
) -> Option<RateLimitConfig> {
    let path = format!("{path}.rate_limit");
    let mut ok = true;
    let rps = r.requests_per_sec;
    if !(rps.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rps)) {
        err(
            format!("{path}.requests_per_sec"),
            format!(
                "{rps} is not a rate: give requests per second, from 0.0000116 (one a day) to 1000000 (0.5 is one every 2 s)"
            ),
        );
        ok = false;
    }
    let burst = r.burst.unwrap_or_else(|| rps.ceil().clamp(1.0, MAX_RATE) as u32);
    if burst == 0 || f64::from(burst) > MAX_RATE {
        err(format!("{path}.burst"), format!("{burst}: give the requests allowed at once, 1 to 1000000"));
        ok = false;
    }
    let key = match r.key.as_deref() {
        None | Some("route") => RateLimitKey::Route,
        Some("client") if has_jwt => RateLimitKey::Client,
        Some("client") => {
            err(
                format!("{path}.key"),
                "`client` needs `auth.jwt` on the route: the client is the token's client id".into(),
            );
            ok = false;
            RateLimitKey::Client
        }
        Some("ip") => RateLimitKey::Ip,
        Some(other) => {
            err(format!("{path}.key"), format!("`{other}` is not one of route, client, ip"));
            ok = false;
            RateLimitKey::Route
        }
    };
    ok.then_some(RateLimitConfig { requests_per_sec: rps, burst, key })
}

/// What a route may refer to by name.
struct Known<'a> {
    upstreams: &'a [UpstreamConfig],
    allowlists: &'a [AllowlistConfig],
    jwt_providers: &'a [JwtProviderConfig],
    /// The mediations that loaded (a folder that failed to load is not there).
    mediations: &'a [crate::mediation::Mediation],
    databases: &'a [DatabaseConfig],
    /// Some listener asks for client certificates.
    client_auth: bool,
}

fn route_auth(
    path: &str,
    a: &schema::RouteAuthSection,
    file: &Sections,
    known: &Known<'_>,
    err: &mut impl FnMut(String, String),
) -> Option<RouteAuth> {
    let providers = known.jwt_providers;
    let mut ok = true;
    let client_cert = match a.client_cert.as_deref() {
        None | Some("optional") => false,
        Some("required") if !known.client_auth => {
            err(
                format!("{path}.auth.client_cert"),
                "no listener asks for client certificates: add `tls.client_auth` to a listener".into(),
            );
            ok = false;
            true
        }
        Some("required") => true,
        Some(other) => {
            err(format!("{path}.auth.client_cert"), format!("`{other}` is not one of required, optional"));
            ok = false;
            // Taken as meant to be `required`, so no second error follows from this one.
            true
        }
    };
    let provider = match &a.jwt {
        None if client_cert && a.scopes_any.is_empty() && a.scopes_all.is_empty() => None,
        None => {
            let what = if client_cert { "`scopes_any` / `scopes_all` need " } else { "required: " };
            err(
                format!("{path}.auth"),
                format!("{what}`jwt` (the jwt_providers entry that issues the tokens), or `client_cert: required`"),
            );
            ok = false;
            None
        }
        Some(name) => match providers.iter().position(|p| &p.name == name) {
            Some(i) => Some(i),
            None => {
                ok = false;
                if !file.jwt_providers.contains_key(name) {
                    let known: Vec<&str> = file.jwt_providers.keys().map(String::as_str).collect();
                    err(
                        format!("{path}.auth.jwt"),
                        format!("refers to unknown jwt_providers entry `{name}` (known: {})", list_or_none(&known)),
                    );
                }
                None
            }
        },
    };
    ok &= check_scopes(&a.scopes_any, &format!("{path}.auth.scopes_any"), err);
    ok &= check_scopes(&a.scopes_all, &format!("{path}.auth.scopes_all"), err);
    if !ok {
        return None;
    }
    Some(RouteAuth { provider, client_cert, scopes_any: a.scopes_any.clone(), scopes_all: a.scopes_all.clone() })
}

fn jwt_provider(
    name: &str,
    p: &schema::JwtProviderSection,
    err: &mut impl FnMut(String, String),
) -> Option<JwtProviderConfig> {
    let path = format!("jwt_providers.{name}");
    let mut ok = true;
    if !is_identifier(name) {
        err(path.clone(), format!("`{name}` is not a valid provider name (letters, digits, `_`, `-`, `.`)"));
        ok = false;
    }
    if p.issuer.trim().is_empty() {
        err(format!("{path}.issuer"), "must not be empty".into());
        ok = false;
    }
    if p.audiences.is_empty() {
        err(format!("{path}.audiences"), "required: at least one audience the tokens must name".into());
        ok = false;
    }
    if p.algorithms.is_empty() {
        err(format!("{path}.algorithms"), "required: the allowed algorithms, e.g. [RS256]".into());
        ok = false;
    }
    let mut algorithms = Vec::new();
    for (i, a) in p.algorithms.iter().enumerate() {
        match parse_algorithm(a) {
            Ok(alg) => algorithms.push(alg),
            Err(message) => {
                err(format!("{path}.algorithms[{i}]"), message);
                ok = false;
            }
        }
    }
    let leeway_secs = p.leeway_secs.unwrap_or(defaults::JWT_LEEWAY_SECS);
    if leeway_secs > defaults::JWT_MAX_LEEWAY_SECS {
        err(format!("{path}.leeway_secs"), format!("{leeway_secs} is more than {}", defaults::JWT_MAX_LEEWAY_SECS));
        ok = false;
    }
    let scope_claims =
        p.scope_claims.clone().unwrap_or_else(|| defaults::SCOPE_CLAIMS.iter().map(|s| s.to_string()).collect());
    let sources = [p.jwks_uri.is_some(), p.jwks_file.is_some(), p.public_key_pem.is_some()];
    let keys = match (&p.jwks_uri, &p.jwks_file, &p.public_key_pem) {
        _ if sources.iter().filter(|s| **s).count() != 1 => {
            err(path.clone(), "give exactly one of `jwks_uri`, `jwks_file`, `public_key_pem`".into());
            None
        }
        (Some(uri), _, _) => {
            let secs = p.jwks_min_refresh_secs.unwrap_or(defaults::JWKS_MIN_REFRESH_SECS);
            if !(uri.starts_with("https://") || uri.starts_with("http://")) || uri.parse::<http::Uri>().is_err() {
                err(format!("{path}.jwks_uri"), format!("`{uri}` is not an http(s) URL"));
                None
            } else if secs == 0 || secs > 3600 {
                err(format!("{path}.jwks_min_refresh_secs"), format!("{secs} must be between 1 and 3600"));
                None
            } else {
                Some(KeySource::JwksUri { uri: uri.clone(), min_refresh: Duration::from_secs(secs) })
            }
        }
        (_, Some(f), _) => check_file(f, &format!("{path}.jwks_file"), err).then(|| KeySource::JwksFile(f.into())),
        (_, _, Some(f)) => {
            check_file(f, &format!("{path}.public_key_pem"), err).then(|| KeySource::PublicKeyPem(f.into()))
        }
        _ => None,
    };
    if p.jwks_min_refresh_secs.is_some() && p.jwks_uri.is_none() {
        err(format!("{path}.jwks_min_refresh_secs"), "only applies with `jwks_uri`".into());
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(JwtProviderConfig {
        name: name.to_string(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        algorithms,
        leeway_secs,
        scope_claims,
        keys: keys?,
    })
}

/// Networks from inline CIDRs and allowlist files, merged; every bad entry reported by path.
fn cidr_set(cidrs: &[String], files: &[String], path: &str, err: &mut impl FnMut(String, String)) -> CidrSet {
    let mut set = CidrSet::default();
    let key = if path == "trusted_proxies" { String::new() } else { ".cidrs".to_string() };
    for (i, text) in cidrs.iter().enumerate() {
        match parse_cidr(text) {
            Ok(net) => set.add(net),
            Err(message) => err(format!("{path}{key}[{i}]"), message),
        }
    }
    for (i, file) in files.iter().enumerate() {
        match read_allowlist_file(Path::new(file)) {
            Ok(nets) if nets.is_empty() => {
                err(format!("{path}.files[{i}]"), format!("`{file}` lists no networks"));
            }
            Ok(nets) => nets.into_iter().for_each(|n| set.add(n)),
            Err(message) => err(format!("{path}.files[{i}]"), message),
        }
    }
    set.simplify();
    set
}

/// Scopes are RFC 6749 scope tokens: no spaces, quotes or backslashes (they end up inside a
/// space-separated claim and a quoted `WWW-Authenticate` parameter).
fn check_scopes(scopes: &[String], path: &str, err: &mut impl FnMut(String, String)) -> bool {
    let mut ok = true;
    for (i, scope) in scopes.iter().enumerate() {
        if scope.is_empty() || scope.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
            err(format!("{path}[{i}]"), format!("`{scope}` is not a scope token"));
            ok = false;
        }
    }
    ok
}

/// A name in the config (route, upstream, database, mediation folder): letters, digits, `_`,
/// `-`, `.`; at most 64; not first `_`.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| format!("`{s}` is not an `ip:port` address (e.g. 0.0.0.0:8080 or [::]:8080)"))
}

/// Resolves `host:port` once, at start-up.
fn resolve(target: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !target.contains(':') {
        return Err(format!("`{target}` needs a port (`host:port`)"));
    }
    match target.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("`{target}` resolves to no address")),
        Err(e) => Err(format!("cannot resolve `{target}`: {e}")),
    }
}

fn host_part(target: &str) -> String {
    match target.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => target.to_string(),
    }
}

/// True when the file exists and is readable; otherwise records why.
/// A listener's `tls` section. The files' contents are parsed when the gateway is built.
fn listener_tls(
    path: &str,
    tls: &schema::ListenerTlsSection,
    err: &mut impl FnMut(String, String),
) -> Option<ListenerTlsConfig> {
    let mut ok = check_file(&tls.cert, &format!("{path}.tls.cert"), err);
    ok &= check_file(&tls.key, &format!("{path}.tls.key"), err);
    let client_auth = match &tls.client_auth {
        None => None,
        Some(auth) => {
            let path = format!("{path}.tls.client_auth");
            let mode = match auth.mode.as_str() {
                "required" => Some(ClientAuthMode::Required),
                "optional" => Some(ClientAuthMode::Optional),
                other => {
                    err(format!("{path}.mode"), format!("`{other}` is not one of required, optional"));
                    None
                }
            };
            let mut pins = Vec::new();
            for (j, pin) in auth.pinned_sha256.iter().enumerate() {
                match parse_fingerprint(pin) {
                    Some(pin) => pins.push(pin),
                    None => {
                        err(
                            format!("{path}.pinned_sha256[{j}]"),
                            "must be a SHA-256 fingerprint: 64 hex digits (colons allowed)".into(),
                        );
                        ok = false;
                    }
                }
            }
            for (j, name) in auth.allowed_names.iter().enumerate() {
                if name.trim().is_empty() {
                    err(format!("{path}.allowed_names[{j}]"), "must not be empty".into());
                    ok = false;
                }
            }
            if auth.ca.is_empty() {
                err(format!("{path}.ca"), "required: the CA bundle(s) client certificates must chain to".into());
                ok = false;
            }
            for (j, ca) in auth.ca.iter().enumerate() {
                ok &= check_file(ca, &format!("{path}.ca[{j}]"), err);
            }
            for (j, crl) in auth.crl.iter().enumerate() {
                ok &= check_file(crl, &format!("{path}.crl[{j}]"), err);
            }
            Some(ClientAuthConfig {
                mode: mode?,
                ca: auth.ca.iter().map(PathBuf::from).collect(),
                crl: auth.crl.iter().map(PathBuf::from).collect(),
                allowed_names: auth.allowed_names.iter().map(|n| n.trim().to_ascii_lowercase()).collect(),
                pinned_sha256: pins,
            })
        }
    };
    if !ok || (tls.client_auth.is_some() && client_auth.is_none()) {
        return None;
    }
    Some(ListenerTlsConfig { cert: PathBuf::from(&tls.cert), key: PathBuf::from(&tls.key), client_auth })
}

/// `AB:CD:…` or `abcd…`: 32 bytes.
fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = text.trim().bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn check_file(file: &str, path: &str, err: &mut dyn FnMut(String, String)) -> bool {
    match std::fs::metadata(Path::new(file)) {
        Ok(m) if m.is_file() => true,
        Ok(_) => {
            err(path.to_string(), format!("`{file}` is not a file"));
            false
        }
        Err(e) => {
            err(path.to_string(), format!("cannot read `{file}`: {e}"));
            false
        }
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn token_issuer(t: &schema::TokenIssuerSection, err: &mut impl FnMut(String, String)) -> Option<TokenIssuerConfig> {
    use crate::auth::issuer::{parse_sha256_hex, IssuerClient};
    use sha2::Digest;
    let mut ok = true;
    let path = t.path.clone().unwrap_or_else(|| defaults::TOKEN_PATH.to_string());
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        err("token_issuer.path".into(), format!("`{path}` must be a path starting with `/`"));
        ok = false;
    }
    if t.issuer.trim().is_empty() {
        err("token_issuer.issuer".into(), "must not be empty".into());
        ok = false;
    }
    let ttl_secs = t.token_ttl_secs.unwrap_or(defaults::TOKEN_TTL_SECS);
    if !(60..=86_400).contains(&ttl_secs) {
        err("token_issuer.token_ttl_secs".into(), format!("{ttl_secs} must be between 60 and 86400"));
        ok = false;
    }
    ok &= check_file(&t.signing_key, "token_issuer.signing_key", err);
    if t.clients.is_empty() {
        err("token_issuer.clients".into(), "required: at least one client".into());
        ok = false;
    }
    let mut clients = Vec::new();
    for (name, c) in &t.clients {
        let path = format!("token_issuer.clients.{name}");
        if !is_identifier(name) {
            err(path.clone(), format!("`{name}` is not a valid client name (letters, digits, `_`, `-`, `.`)"));
            ok = false;
        }
        let digest = match (&c.secret_sha256, &c.secret) {
            (Some(hex), None) => parse_sha256_hex(hex).or_else(|| {
                err(format!("{path}.secret_sha256"), "must be 64 hex digits (`printf %s SECRET | sha256sum`)".into());
                None
            }),
            (None, Some(secret)) if secret.len() >= 16 => Some(sha2::Sha256::digest(secret.as_bytes()).into()),
            (None, Some(_)) => {
                err(format!("{path}.secret"), "must be at least 16 characters".into());
                None
            }
            _ => {
                err(
                    path.clone(),
                    "give exactly one of `secret_sha256`, `secret` (e.g. `${GENESYS_CLIENT_SECRET}`)".into(),
                );
                None
            }
        };
        if c.audience.trim().is_empty() {
            err(format!("{path}.audience"), "must not be empty".into());
            ok = false;
        }
        ok &= check_scopes(&c.scopes, &format!("{path}.scopes"), err);
        match digest {
            Some(secret_sha256) => clients.push(IssuerClient {
                name: name.clone(),
                secret_sha256,
                scopes: c.scopes.clone(),
                audience: c.audience.clone(),
            }),
            None => ok = false,
        }
    }
    ok.then(|| TokenIssuerConfig {
        path,
        issuer: t.issuer.clone(),
        signing_key: t.signing_key.clone().into(),
        ttl_secs,
        clients,
    })
}
