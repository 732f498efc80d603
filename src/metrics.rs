//! Every metric, registered once per gateway in its own registry (tests run several gateways in
//! one process). Labels come only from bounded sets: route ids and upstream names from the
//! config, status codes, fixed outcome words.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `route` label of requests that matched no route.
pub const NO_ROUTE: &str = "_none";

/// Latency buckets in seconds: from a cache hit to the longest Genesys timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

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
    fn label(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::Error => "error",
            UpstreamOutcome::Timeout => "timeout",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_requests: IntCounterVec,
    inflight: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric and pre-creates the series of every route and upstream, so a
    /// scrape shows them at zero before the first request.
    pub fn new(routes: &[&str], upstreams: &[&str]) -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "seawall_requests_total",
                "Requests answered, by route and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "seawall_request_duration_seconds",
                "Time from request to last response byte",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "seawall_upstream_duration_seconds",
                "Time spent on upstream calls, retries included",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("valid metric");
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "seawall_upstream_requests_total",
                "Upstream calls by outcome (ok, error, timeout)",
            ),
            &["upstream", "outcome"],
        )
        .expect("valid metric");
        let inflight = IntGaugeVec::new(
            Opts::new("seawall_inflight_requests", "Upstream calls in progress"),
            &["upstream"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(inflight.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for route in routes {
            request_duration.with_label_values(&[*route]);
        }
        for upstream in upstreams {
            upstream_duration.with_label_values(&[*upstream]);
            inflight.with_label_values(&[*upstream]);
            for outcome in [
                UpstreamOutcome::Ok,
                UpstreamOutcome::Error,
                UpstreamOutcome::Timeout,
            ] {
                upstream_requests.with_label_values(&[*upstream, outcome.label()]);
            }
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_requests,
            inflight,
        }
    }

    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let buf = itoa_status(status);
        let status = std::str::from_utf8(&buf).unwrap_or("000");
        self.requests.with_label_values(&[route, status]).inc();
        self.request_duration
            .with_label_values(&[route])
            .observe(seconds);
    }

    pub fn observe_upstream(&self, upstream: &str, outcome: UpstreamOutcome, seconds: f64) {
        self.upstream_requests
            .with_label_values(&[upstream, outcome.label()])
            .inc();
        self.upstream_duration
            .with_label_values(&[upstream])
            .observe(seconds);
    }

    /// Counts one upstream call in flight until the guard drops.
    pub fn inflight(&self, upstream: &str) -> InflightGuard {
        let gauge = self.inflight.with_label_values(&[upstream]);
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

pub struct InflightGuard(prometheus::IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A status code as three ASCII digits, without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_bounded_labels() {
        let m = Metrics::new(&["accounts"], &["crm"]);
        m.observe_request("accounts", 200, 0.003);
        m.observe_request(NO_ROUTE, 404, 0.0001);
        m.observe_upstream("crm", UpstreamOutcome::Timeout, 1.0);
        let guard = m.inflight("crm");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("seawall_requests_total{route=\"accounts\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("seawall_requests_total{route=\"_none\",status=\"404\"} 1"));
        assert!(text
            .contains("seawall_upstream_requests_total{outcome=\"timeout\",upstream=\"crm\"} 1"));
        assert!(text.contains("seawall_inflight_requests{upstream=\"crm\"} 1"));
        drop(guard);
        assert!(String::from_utf8(m.render())
            .unwrap()
            .contains("seawall_inflight_requests{upstream=\"crm\"} 0"));
    }
}
