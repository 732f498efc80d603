//! JWKS from an IdP's `jwks_uri`: fetched at start-up (the gateway is ready only once every
//! provider has keys), refreshed ahead of expiry as `Cache-Control: max-age` says, refetched at
//! most once per `jwks_min_refresh_secs` when a token names an unknown `kid` (concurrent requests
//! with the same new kid share that one fetch), and the last good keys kept while the IdP is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::jwt::{keys_from_jwks, JwtProvider};
use crate::metrics::Metrics;

/// One fetch may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Refresh period when the IdP sends no `max-age`, and the longest one honoured.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
const LONGEST_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// JWKS documents larger than this are refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub struct JwksSource {
    pub provider: String,
    uri: String,
    min_refresh: Duration,
    client: reqwest::Client,
    /// When the last fetch for an unknown kid started (scheduled refreshes do not count); the
    /// mutex makes concurrent kid misses share one fetch.
    last_kid_fetch: tokio::sync::Mutex<Option<Instant>>,
    loaded: AtomicBool,
}

impl JwksSource {
    pub fn new(provider: &str, uri: &str, min_refresh: Duration) -> Result<JwksSource, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("seawall/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(JwksSource {
            provider: provider.to_string(),
            uri: uri.to_string(),
            min_refresh,
            client,
            last_kid_fetch: tokio::sync::Mutex::new(None),
            loaded: AtomicBool::new(false),
        })
    }

    /// True once keys were fetched at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Fetches the document and installs its keys; returns the `max-age` the IdP asked for.
    async fn fetch_into(&self, provider: &JwtProvider, metrics: &Metrics) -> Result<Option<Duration>, String> {
        let result = self.fetch(provider).await;
        metrics.jwks_refresh(&self.provider, result.is_ok());
        match &result {
            Ok(_) => {
                self.loaded.store(true, Ordering::Release);
                tracing::info!(provider = %self.provider, keys = provider.key_count(), "JWKS loaded");
            }
            Err(e) => {
                tracing::warn!(provider = %self.provider, error = %e, "JWKS fetch failed; keeping the last good keys")
            }
        }
        result
    }

    async fn fetch(&self, provider: &JwtProvider) -> Result<Option<Duration>, String> {
        let response = self.client.get(&self.uri).send().await.map_err(|e| format!("GET {}: {e}", self.uri))?;
        if !response.status().is_success() {
            return Err(format!("GET {}: status {}", self.uri, response.status()));
        }
        let max_age =
            response.headers().get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
        let body = response.bytes().await.map_err(|e| format!("GET {}: {e}", self.uri))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
        }
        let text = std::str::from_utf8(&body).map_err(|_| "JWKS is not UTF-8".to_string())?;
        let (keys, skipped) = keys_from_jwks(text)?;
        if keys.is_empty() {
            return Err("JWKS holds no usable public key".into());
        }
        if !skipped.is_empty() {
            tracing::warn!(provider = %self.provider, kids = ?skipped, "JWKS keys of unsupported types skipped");
        }
        provider.replace_keys(keys);
        Ok(max_age)
    }

    /// After a token named an unknown kid: refetch unless a fetch started within
    /// `jwks_min_refresh_secs`. Callers queue on one lock, so a burst causes one fetch; the
    /// others then retry with whatever keys it brought.
    pub async fn refetch_for_unknown_kid(&self, provider: &JwtProvider, metrics: &Metrics) {
        let mut last = self.last_kid_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_into(provider, metrics).await;
    }
}

/// The `max-age` of a `Cache-Control` value.
fn max_age(value: &str) -> Option<Duration> {
    value
        .split(',')
        .find_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("max-age").then(|| v.trim().trim_matches('"').parse().ok()).flatten()
        })
        .map(Duration::from_secs)
}

/// When to refresh next: at 80% of the IdP's max-age (within bounds), sooner after a failure.
fn next_refresh(result: &Result<Option<Duration>, String>, min_refresh: Duration, failures: u32) -> Duration {
    match result {
        Ok(max_age) => {
            let age = max_age.unwrap_or(DEFAULT_MAX_AGE).clamp(min_refresh, LONGEST_MAX_AGE);
            age.mul_f64(0.8).max(min_refresh)
        }
        Err(_) => (min_refresh * 2u32.saturating_pow(failures.min(6))).min(Duration::from_secs(300)),
    }
}

/// The background task keeping every `jwks_uri` provider's keys fresh.
pub struct JwksRefresher {
    pub gateway: Arc<crate::gateway::Gateway>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = Vec::new();
        for (index, source) in self.gateway.jwks_sources.iter().enumerate() {
            if source.is_none() {
                continue;
            }
            let gateway = self.gateway.clone();
            tasks.push(tokio::spawn(async move {
                let (Some(source), provider) = (&gateway.jwks_sources[index], &gateway.jwt_providers[index]) else {
                    return;
                };
                let mut failures = 0u32;
                loop {
                    let result = source.fetch_into(provider, &gateway.metrics).await;
                    failures = if result.is_ok() { 0 } else { failures + 1 };
                    tokio::time::sleep(next_refresh(&result, source.min_refresh, failures)).await;
                }
            }));
        }
        let _ = shutdown.changed().await;
        for task in tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age_is_honoured_within_bounds() {
        assert_eq!(max_age("public, max-age=600, must-revalidate"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("no-cache"), None);
        let min = Duration::from_secs(10);
        assert_eq!(next_refresh(&Ok(Some(Duration::from_secs(600))), min, 0), Duration::from_secs(480));
        assert_eq!(next_refresh(&Ok(None), min, 0), Duration::from_secs(2880));
        assert_eq!(next_refresh(&Ok(Some(Duration::from_secs(1))), min, 0), min);
        assert_eq!(next_refresh(&Ok(Some(Duration::from_secs(10_000_000))), min, 0), Duration::from_secs(69_120));
        assert_eq!(next_refresh(&Err("down".into()), min, 1), Duration::from_secs(20));
        assert_eq!(next_refresh(&Err("down".into()), min, 9), Duration::from_secs(300));
    }
}
