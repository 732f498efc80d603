//! The state every service of one gateway shares: the validated config, upstreams, metrics,
//! readiness and the count of requests in progress (for draining on SIGTERM).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

pub struct Gateway {
    pub config: Config,
    pub upstreams: Vec<Upstream>,
    pub metrics: Metrics,
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
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            match Upstream::new(u) {
                Ok(upstream) => upstreams.push(upstream),
                Err(message) => errors.push(ConfigError::at(format!("upstreams.{}.tls", u.name), message)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let route_ids: Vec<&str> = config.routes.iter().map(|r| r.id.as_str()).collect();
        let upstream_names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        let metrics = Metrics::new(&route_ids, &upstream_names);
        Ok(Gateway {
            access_log: config.logging.access_log,
            config,
            upstreams,
            metrics,
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            active: Arc::new(AtomicUsize::new(0)),
        })
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

    /// Ready: config loaded (this value exists), every public listener accepts, not draining.
    pub fn is_ready(&self) -> bool {
        self.listeners_bound.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

pub struct ActiveRequest(Arc<AtomicUsize>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
