//! Upstreams at run time: target choice (round robin), TLS material (reloaded on SIGHUP), and the
//! per-attempt [`HttpPeer`] whose timeouts never outlive the route deadline. Called from
//! `upstream_peer`.

pub mod breaker;
pub mod client;
mod deadline;
pub mod retry_budget;
mod window;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use pingora::tls::x509::X509;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora::utils::tls::CertKey;

pub use deadline::Deadline;

use breaker::{Admission, CircuitBreaker};
use pingora_limits::inflight::{Guard as InflightSlot, Inflight};
use retry_budget::RetryBudget;

use prometheus::IntGauge;

use crate::clock::Clock;
use crate::config::{UpstreamConfig, UpstreamTls};
use crate::problem::Problem;
use crate::tls::expiry::NamedCertificate;
use crate::tls::pem::{read_certificates, read_private_key};

/// Idle upstream connections are closed after this long, before most backends' own idle
/// timeouts (nginx 75 s, IIS 120 s) so a reused connection is rarely one the backend dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// TLS settings loaded from files, at start-up and again on SIGHUP.
struct TlsMaterial {
    sni: String,
    ca: Option<Arc<Box<[X509]>>>,
    client: Option<Arc<CertKey>>,
    certificates: Vec<NamedCertificate>,
}

pub struct Upstream {
    pub name: String,
    targets: Vec<SocketAddr>,
    next: AtomicUsize,
    host_header: HeaderValue,
    tls_config: Option<UpstreamTls>,
    tls: Option<ArcSwap<TlsMaterial>>,
    connect_timeout: Duration,
    /// Bulkhead: calls in flight allowed at once (0: no limit), counted in `inflight`.
    max_inflight: u32,
    inflight: Inflight,
    breaker: Option<Arc<CircuitBreaker>>,
    pub retry_budget: RetryBudget,
}

/// A call let through to the upstream: holds its bulkhead slot and, for a half-open circuit's
/// probe, the probe. Handed back to [`Upstream::finish`] when the request ends; dropped without
/// that (a request that never got there), it still frees both.
pub struct UpstreamPass {
    _slot: Option<InflightSlot>,
    /// The breaker and the half-open round this call probes, while the outcome is unreported.
    probe: Option<(Arc<CircuitBreaker>, u64)>,
}

impl Drop for UpstreamPass {
    fn drop(&mut self) {
        if let Some((breaker, round)) = self.probe.take() {
            breaker.record(Some(round), None);
        }
    }
}

impl Upstream {
    /// `circuit_gauge` is the upstream's `seawall_circuit_state` series.
    pub fn new(config: &UpstreamConfig, clock: &Clock, circuit_gauge: IntGauge) -> Result<Upstream, String> {
        let tls = config.tls.as_ref().map(|t| load_tls(&config.name, t)).transpose()?;
        Ok(Upstream {
            name: config.name.clone(),
            targets: config.targets.clone(),
            next: AtomicUsize::new(fastrand::usize(..config.targets.len().max(1))),
            host_header: HeaderValue::from_str(&config.host)
                .map_err(|_| format!("`{}` cannot be a Host header", config.host))?,
            tls_config: config.tls.clone(),
            tls: tls.map(ArcSwap::from_pointee),
            connect_timeout: config.connect_timeout,
            max_inflight: config.max_inflight,
            inflight: Inflight::new(),
            breaker: config.circuit_breaker.map(|b| Arc::new(CircuitBreaker::new(b, clock.clone(), circuit_gauge))),
            retry_budget: RetryBudget::new(clock.clone()),
        })
    }

    /// Lets a call through, or refuses it at once: the circuit is open (503 `circuit_open`) or
    /// `max_inflight` calls are already in flight (503 `backend_overloaded`). Nothing queues.
    pub fn admit(&self) -> Result<UpstreamPass, Problem> {
        let probe = match self.breaker.as_deref().map(CircuitBreaker::admit) {
            Some(Admission::Refused { retry_after_secs }) => return Err(Problem::CircuitOpen { retry_after_secs }),
            Some(Admission::Allowed { probe }) => probe,
            None => None,
        };
        let slot = if self.max_inflight == 0 {
            None
        } else {
            let (slot, in_flight) = self.inflight.incr(0u8, 1);
            if in_flight > self.max_inflight as isize {
                drop(slot);
                if let Some(breaker) = &self.breaker {
                    breaker.record(probe, None);
                }
                return Err(Problem::BackendOverloaded);
            }
            Some(slot)
        };
        self.retry_budget.deposit();
        let probe = probe.and_then(|round| Some((Arc::clone(self.breaker.as_ref()?), round)));
        Ok(UpstreamPass { _slot: slot, probe })
    }

    /// Ends a call let through by [`Self::admit`]: frees its slot and tells the breaker how it
    /// went (`None`: it says nothing about the upstream).
    pub fn finish(&self, mut pass: UpstreamPass, ok: Option<bool>) {
        if let Some(breaker) = &self.breaker {
            breaker.record(pass.probe.take().map(|(_, round)| round), ok);
        }
    }

    /// Reads the TLS files again (CA bundle, client certificate and key); on any error the
    /// current ones stay in use. `Ok(false)`: this upstream has no TLS files.
    pub fn reload_tls(&self) -> Result<bool, String> {
        let (Some(config), Some(current)) = (&self.tls_config, &self.tls) else { return Ok(false) };
        if config.ca.is_none() && config.client_cert.is_none() {
            return Ok(false);
        }
        current.store(Arc::new(load_tls(&self.name, config)?));
        Ok(true)
    }

    /// The CA and client certificates in use, for the expiry gauge.
    pub fn certificates(&self) -> Vec<NamedCertificate> {
        self.tls.as_ref().map(|t| t.load().certificates.clone()).unwrap_or_default()
    }

    /// The `Host` header the upstream expects, built once.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// A peer for the next attempt, round robin over the targets (a retry goes to the next
    /// target), with every timeout capped by `remaining`.
    pub fn peer(&self, remaining: Duration) -> HttpPeer {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        let address = self.targets[index];
        let mut peer = match &self.tls {
            None => HttpPeer::new(address, false, String::new()),
            Some(tls) => {
                let tls = tls.load();
                let mut peer = HttpPeer::new(address, true, tls.sni.clone());
                peer.options.verify_cert = true;
                peer.options.verify_hostname = true;
                peer.options.ca = tls.ca.clone();
                peer.client_cert_key = tls.client.clone();
                peer
            }
        };
        let connect = self.connect_timeout.min(remaining);
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(remaining);
        peer.options.write_timeout = Some(remaining);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        // A data API gateway forwards no protocol upgrades (WebSocket and the like).
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::deny_upgrades();
        peer
    }
}

fn load_tls(upstream: &str, tls: &UpstreamTls) -> Result<TlsMaterial, String> {
    let mut certificates = Vec::new();
    let ca = match &tls.ca {
        None => None,
        Some(path) => {
            let certs = read_certificates(path)?;
            for ca in &certs {
                let name = format!("upstream/{upstream}/ca/{}", crate::tls::client_cert::common_name(ca));
                certificates.push(NamedCertificate::new(name, ca));
            }
            Some(Arc::new(certs.into_boxed_slice()))
        }
    };
    let client = match &tls.client_cert {
        None => None,
        Some((cert_path, key_path)) => {
            let (certs, key) = (read_certificates(cert_path)?, read_private_key(key_path)?);
            certificates.push(NamedCertificate::new(format!("upstream/{upstream}/client"), &certs[0]));
            Some(Arc::new(CertKey::new(certs, key)))
        }
    };
    Ok(TlsMaterial { sni: tls.sni.clone(), ca, client, certificates })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CircuitBreakerConfig;

    #[test]
    fn a_pass_dropped_without_finish_frees_its_slot_and_probe() {
        let clock = Clock::default();
        let config = UpstreamConfig {
            name: "crm".into(),
            targets: vec!["127.0.0.1:9".parse().unwrap()],
            host: "127.0.0.1:9".into(),
            tls: None,
            connect_timeout: Duration::from_secs(1),
            max_inflight: 1,
            circuit_breaker: Some(CircuitBreakerConfig {
                failure_ratio: 0.5,
                min_requests: 1,
                window_secs: 10,
                open: Duration::from_secs(5),
                probes: 1,
            }),
        };
        let upstream = Upstream::new(&config, &clock, IntGauge::new("g", "g").unwrap()).unwrap();
        let pass = upstream.admit().unwrap();
        assert_eq!(upstream.admit().err(), Some(Problem::BackendOverloaded), "one slot");
        upstream.finish(pass, Some(false));
        assert!(matches!(upstream.admit(), Err(Problem::CircuitOpen { .. })));
        clock.advance(Duration::from_secs(5));
        let probe = upstream.admit().unwrap();
        drop(probe); // e.g. the request ended before reaching the upstream, without `finish`
        let probe = upstream.admit().expect("the dropped probe and its slot were given back");
        upstream.finish(probe, Some(true));
        assert!(upstream.admit().is_ok(), "closed again");
    }
}
