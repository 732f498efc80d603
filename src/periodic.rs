//! A background service that runs one job at a fixed period until shutdown (certificate expiry
//! warnings, forgetting idle rate-limit callers).

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

pub struct Periodic<F> {
    every: Duration,
    job: F,
}

impl<F: Fn() + Send + Sync + 'static> Periodic<F> {
    pub fn new(every: Duration, job: F) -> Self {
        Periodic { every, job }
    }
}

#[async_trait]
impl<F: Fn() + Send + Sync + 'static> BackgroundService for Periodic<F> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.every) => (self.job)(),
            }
        }
    }
}
