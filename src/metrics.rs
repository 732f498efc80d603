//! Every metric, registered once per gateway in its own registry (tests run several gateways in
//! one process). Labels come only from bounded sets: route ids and upstream names from the
//! config, status codes, fixed outcome words.
//!
//! The request path never looks a series up by its labels: handles are resolved at start-up
//! (per route, per upstream) or once per status code, and indexed by route/upstream position.

use std::sync::OnceLock;

use crate::cache::CacheResult;
use crate::problem::Problem;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The `route` label of requests that matched no route.
pub const NO_ROUTE: &str = "_none";
/// The `route` label of the built-in token issuer's answers (token and JWKS endpoints).
pub const ISSUER_ROUTE: &str = "_token_issuer";

/// Latency buckets in seconds: from a cache hit to the longest Genesys timeout.
const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Status codes 100..=599 get a cached counter handle each.
const STATUS_MIN: u16 = 100;
const STATUS_SLOTS: usize = 500;

/// How one upstream call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// A complete answer below 500.
    Ok,
    /// Connect failure, reset, malformed answer, or a 5xx.
    Error,
    /// The route deadline passed.
    Timeout,
}

impl UpstreamOutcome {
    /// How an upstream call ended, from what the request saw; `None` when the caller's own
    /// failure (too slow, too large, gone) ended it, which says nothing about the backend.
    pub fn of(
        problem: Option<&Problem>,
        upstream_status: Option<u16>,
        failed: bool,
        caller_failed: bool,
    ) -> Option<Self> {
        match (problem, upstream_status) {
            (Some(Problem::UpstreamTimeout), _) => Some(UpstreamOutcome::Timeout),
            (Some(Problem::RequestTimeout | Problem::RequestTooLarge { .. }), _) => None,
            // A mediation's script failed before any backend call: nothing about the backend.
            (Some(Problem::ScriptError { .. }), None) => None,
            // A mediation's backend answered, but not as declared.
            (Some(Problem::UpstreamBadAnswer { .. }), _) => Some(UpstreamOutcome::Error),
            // A backend's own fault: an answer about the caller's request (not found) is the
            // backend working; one about itself is not.
            (Some(Problem::Mapped { status, .. }), _) if *status < 500 => Some(UpstreamOutcome::Ok),
            (Some(Problem::Mapped { .. }), _) => Some(UpstreamOutcome::Error),
            (_, Some(status)) if status < 500 && !failed => Some(UpstreamOutcome::Ok),
            (None, _) if caller_failed => None,
            _ => Some(UpstreamOutcome::Error),
        }
    }

    const ALL: [UpstreamOutcome; 3] = [UpstreamOutcome::Ok, UpstreamOutcome::Error, UpstreamOutcome::Timeout];

    fn label(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::Error => "error",
            UpstreamOutcome::Timeout => "timeout",
        }
    }
}

/// The layer that refused a caller (the `layer` label of `seawall_auth_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthLayer {
    Ip,
    /// Client certificates: refused in the handshake, or not allowed by name or pin.
    Mtls,
    Jwt,
    /// The built-in token issuer's client authentication.
    Issuer,
}

impl AuthLayer {
    fn label(self) -> &'static str {
        match self {
            AuthLayer::Ip => "ip",
            AuthLayer::Mtls => "mtls",
            AuthLayer::Jwt => "jwt",
            AuthLayer::Issuer => "issuer",
        }
    }
}

/// Handles of one route's series.
struct RouteSeries {
    id: String,
    duration: Histogram,
    rate_limited: IntCounter,
    by_status: Box<[OnceLock<IntCounter>]>,
    /// `seawall_cache_lookups_total` by [`CacheResult`], for routes with a cache.
    cache: Option<[IntCounter; 4]>,
}

/// Handles of one upstream's series.
struct UpstreamSeries {
    duration: Histogram,
    circuit: IntGauge,
    outcomes: [IntCounter; 3],
    inflight: IntGauge,
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    auth_rejections: IntCounterVec,
    jwks_refreshes: IntCounterVec,
    config_reloads: IntCounterVec,
    certificate_expiry: IntGaugeVec,
    cache_lookups: IntCounterVec,
    cache_stored_bytes: IntGauge,
    /// One per route, in config order, then [`ISSUER_ROUTE`] and [`NO_ROUTE`].
    routes: Vec<RouteSeries>,
    /// One per upstream, in config order.
    upstreams: Vec<UpstreamSeries>,
}

impl Metrics {
    /// Registers every metric and creates the series of every route and upstream, so a scrape
    /// shows them at zero before the first request.
    pub fn new(routes: &[&str], upstreams: &[&str]) -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("seawall_requests_total", "Requests answered, by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("seawall_request_duration_seconds", "Time from request to last response byte")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new("seawall_upstream_duration_seconds", "Time spent on upstream calls, retries included")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("valid metric");
        let upstream_requests = IntCounterVec::new(
            Opts::new("seawall_upstream_requests_total", "Upstream calls by outcome (ok, error, timeout)"),
            &["upstream", "outcome"],
        )
        .expect("valid metric");
        let inflight =
            IntGaugeVec::new(Opts::new("seawall_inflight_requests", "Upstream calls in progress"), &["upstream"])
                .expect("valid metric");
        let circuit = IntGaugeVec::new(
            Opts::new("seawall_circuit_state", "Circuit breaker per upstream: 0 closed, 1 open, 2 half-open"),
            &["upstream"],
        )
        .expect("valid metric");
        let auth_rejections = IntCounterVec::new(
            Opts::new("seawall_auth_rejections_total", "Callers refused, by layer (ip, mtls, jwt) and reason"),
            &["layer", "reason"],
        )
        .expect("valid metric");
        auth_rejections.with_label_values(&[AuthLayer::Ip.label(), "not_allowed"]);
        for reason in crate::auth::jwt::TokenError::ALL.map(|e| e.reason()).into_iter().chain(["insufficient_scope"]) {
            auth_rejections.with_label_values(&[AuthLayer::Jwt.label(), reason]);
        }
        for reason in crate::tls::client_cert::Verdict::REASONS {
            auth_rejections.with_label_values(&[AuthLayer::Mtls.label(), reason]);
        }
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "seawall_config_reloads_total",
                "SIGHUP reloads of certificates, keys, CAs, CRLs and allowlist files",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "seawall_certificate_expiry_timestamp_seconds",
                "notAfter of each server certificate, client CA and upstream certificate, as Unix time",
            ),
            &["name"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new("seawall_ratelimit_rejections_total", "Requests refused by a route's usage plan (429)"),
            &["route"],
        )
        .expect("valid metric");
        let jwks_refreshes = IntCounterVec::new(
            Opts::new("seawall_jwks_refresh_total", "JWKS fetches by provider and result (ok, error)"),
            &["provider", "result"],
        )
        .expect("valid metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "seawall_cache_lookups_total",
                "Lookups of cached routes by result (hit, miss, stale, coalesced)",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let cache_stored_bytes = IntGauge::new(
            "seawall_cache_stored_bytes",
            "Bytes the cache holds (bodies, headers, per-entry overhead); eviction keeps it under cache_storage.max_bytes",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cache_lookups.clone()),
            Box::new(cache_stored_bytes.clone()),
            Box::new(jwks_refreshes.clone()),
            Box::new(config_reloads.clone()),
            Box::new(rate_limited.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(auth_rejections.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(inflight.clone()),
            Box::new(circuit.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        let routes = routes
            .iter()
            .copied()
            .chain([ISSUER_ROUTE, NO_ROUTE])
            .map(|id| RouteSeries {
                id: id.to_string(),
                duration: request_duration.with_label_values(&[id]),
                rate_limited: rate_limited.with_label_values(&[id]),
                by_status: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
                cache: None,
            })
            .collect();
        let upstreams = upstreams
            .iter()
            .map(|name| UpstreamSeries {
                duration: upstream_duration.with_label_values(&[*name]),
                outcomes: UpstreamOutcome::ALL.map(|o| upstream_requests.with_label_values(&[*name, o.label()])),
                inflight: inflight.with_label_values(&[*name]),
                circuit: circuit.with_label_values(&[*name]),
            })
            .collect();
        Metrics {
            registry,
            requests,
            auth_rejections,
            jwks_refreshes,
            config_reloads,
            certificate_expiry,
            cache_lookups,
            cache_stored_bytes,
            routes,
            upstreams,
        }
    }

    /// Creates the cache series of these routes (indexes in the config), at zero.
    pub fn with_cached_routes(mut self, routes: &[usize]) -> Metrics {
        for &route in routes {
            let series = &mut self.routes[route];
            let counters = CacheResult::ALL
                .map(|result| self.cache_lookups.with_label_values(&[series.id.as_str(), result.label()]));
            series.cache = Some(counters);
        }
        self
    }

    /// Counts one lookup of a cached route.
    pub fn cache_lookup(&self, route: usize, result: CacheResult) {
        if let Some(counters) = &self.routes[route].cache {
            counters[result as usize].inc();
        }
    }

    /// What the cache holds now (set before each scrape).
    pub fn cache_stored_bytes(&self, bytes: u64) {
        self.cache_stored_bytes.set(bytes as i64);
    }

    /// `route`: index in the config, `None` when no route matched.
    pub fn observe_request(&self, route: Option<usize>, status: u16, seconds: f64) {
        self.observe(&self.routes[route.unwrap_or(self.routes.len() - 1)], status, seconds);
    }

    /// An answer of the built-in token issuer.
    pub fn observe_issuer(&self, status: u16, seconds: f64) {
        self.observe(&self.routes[self.routes.len() - 2], status, seconds);
    }

    fn observe(&self, series: &RouteSeries, status: u16, seconds: f64) {
        series.duration.observe(seconds);
        let status = status.clamp(STATUS_MIN, STATUS_MIN + STATUS_SLOTS as u16 - 1);
        series.by_status[(status - STATUS_MIN) as usize]
            .get_or_init(|| self.requests.with_label_values(&[series.id.as_str(), &status.to_string()]))
            .inc();
    }

    pub fn observe_upstream(&self, upstream: usize, outcome: UpstreamOutcome, seconds: f64) {
        let series = &self.upstreams[upstream];
        series.outcomes[outcome as usize].inc();
        series.duration.observe(seconds);
    }

    /// Counts a request refused by route `route`'s usage plan.
    pub fn rate_limited(&self, route: usize) {
        self.routes[route].rate_limited.inc();
    }

    /// Counts a refused caller; `reason` is one of a fixed set per layer.
    pub fn auth_rejection(&self, layer: AuthLayer, reason: &'static str) {
        self.auth_rejections.with_label_values(&[layer.label(), reason]).inc();
    }

    /// Counts one JWKS fetch of a provider (names come from the config: a bounded set).
    pub fn jwks_refresh(&self, provider: &str, ok: bool) {
        self.jwks_refreshes.with_label_values(&[provider, if ok { "ok" } else { "error" }]).inc();
    }

    /// Counts one SIGHUP reload: `ok` when every file was taken.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads.with_label_values(&[if ok { "success" } else { "failure" }]).inc();
    }

    /// Sets the expiry gauge to exactly these certificates (a reload drops the ones no longer
    /// in use). Names come from the configured files: a bounded set.
    pub fn certificate_expiry(&self, certificates: &[crate::tls::expiry::NamedCertificate]) {
        self.certificate_expiry.reset();
        for c in certificates {
            self.certificate_expiry.with_label_values(&[c.name.as_str()]).set(c.not_after);
        }
    }

    /// The `seawall_circuit_state` series of upstream `upstream`.
    pub fn circuit_gauge(&self, upstream: usize) -> IntGauge {
        self.upstreams[upstream].circuit.clone()
    }

    /// Counts one upstream call in flight until the guard drops.
    pub fn inflight(&self, upstream: usize) -> InflightGuard {
        let gauge = self.upstreams[upstream].inflight.clone();
        gauge.inc();
        InflightGuard(gauge)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

pub struct InflightGuard(IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mediation_outcomes_say_only_what_they_know_of_the_backend() {
        use UpstreamOutcome::{Error, Ok};
        let of = |problem: Problem, status: Option<u16>| UpstreamOutcome::of(Some(&problem), status, false, false);
        let mapped = |status| Problem::Mapped { status, code: "x", reason: String::new() };
        assert_eq!(of(mapped(404), Some(500)), Some(Ok), "a Client fault is the backend working");
        assert_eq!(of(mapped(502), Some(500)), Some(Error), "a Server fault is not");
        assert_eq!(of(Problem::UpstreamBadAnswer { reason: String::new() }, Some(200)), Some(Error));
        assert_eq!(of(Problem::ScriptError { reason: String::new() }, None), None, "`before` failed: no call");
        assert_eq!(of(Problem::ScriptError { reason: String::new() }, Some(200)), Some(Ok), "`after` failed");
    }

    #[test]
    fn renders_prometheus_text_with_bounded_labels() {
        let m = Metrics::new(&["accounts"], &["crm"]);
        m.observe_request(Some(0), 200, 0.003);
        m.observe_request(Some(0), 200, 0.003);
        m.observe_request(None, 404, 0.0001);
        m.observe_upstream(0, UpstreamOutcome::Timeout, 1.0);
        let guard = m.inflight(0);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("seawall_requests_total{route=\"accounts\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("seawall_requests_total{route=\"_none\",status=\"404\"} 1"));
        assert!(text.contains("seawall_upstream_requests_total{outcome=\"timeout\",upstream=\"crm\"} 1"));
        assert!(text.contains("seawall_upstream_requests_total{outcome=\"ok\",upstream=\"crm\"} 0"));
        assert!(text.contains("seawall_request_duration_seconds_count{route=\"accounts\"} 2"));
        assert!(text.contains("seawall_inflight_requests{upstream=\"crm\"} 1"));
        drop(guard);
        assert!(String::from_utf8(m.render()).unwrap().contains("seawall_inflight_requests{upstream=\"crm\"} 0"));
    }
}
