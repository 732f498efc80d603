//! Seawall: an edge gateway on Pingora between a public cloud caller (Genesys Cloud data
//! actions first) and fragile internal systems.
//!
//! The request path, in Pingora's phase order (`proxy.rs` orchestrates, modules decide):
//! 1. `request_filter`: [`request_id`], [`routing`] (404/405), [`auth`] (403/401), body size
//!    (413), route deadline, per-caller usage plans ([`throttle`]).
//! 2. cache phases: [`cache`] lookup after auth; a miss goes on, a herd waits for one fill.
//! 3. `proxy_upstream_filter`: the backend's guards: route usage plan, breaker, bulkhead.
//! 4. `upstream_peer`: [`upstream`] picks a target; timeouts capped by the deadline.
//! 5. `upstream_request_filter` / `request_body_filter`: rewrite, forwarding headers, body bound.
//! 6. response filters: deadline re-checked, hop-by-hop headers dropped, what is stored decided,
//!    `X-Request-Id` and `Cache-Status` added.
//! 7. `fail_to_proxy`: every failure becomes one [`problem::Problem`] answer (problem+json), or a
//!    stale entry where the route allows it.
//! 8. `logging`: [`metrics`] and the access log.
//!
//! [`build`] turns a validated [`config::Config`] into a Pingora [`Server`]; the binary and the
//! integration tests both use it.
// One exception, documented where it stands: the daemon's fork (`daemon::detach`).
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod database;
pub mod degraded;
pub mod demo;
pub mod dev_certs;
pub mod forwarding;
pub mod gateway;
pub mod genesys;
pub mod lifecycle;
pub mod logging;
pub mod mediation;
pub mod metrics;
pub mod periodic;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod request_id;
pub mod routing;
pub mod throttle;
pub mod tls;
pub mod upstream;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::config::{Config, ConfigError};
use crate::gateway::Gateway;

/// Socket buffers of plain listeners. Pingora's default read buffer (64 KB, allocated for the
/// life of each connection) made an idle keep-alive connection cost about 90 kB; the HTTP parser
/// reads into its own buffer, so plain connections need none here.
const PLAIN_BUFFERS: L4BufferSettings = L4BufferSettings { read: Some(0), write: None };
/// TLS listeners: OpenSSL reads a record header then its body, so a buffer of one full record
/// (16 KB + header and tag) keeps that to one system call.
const TLS_BUFFERS: L4BufferSettings = L4BufferSettings { read: Some(16 * 1024 + 512), write: None };

/// A gateway ready to run: the Pingora server and the state its services share.
pub struct Built {
    pub server: Server,
    pub gateway: Arc<Gateway>,
}

/// Builds the server for a validated config: the public proxy on every listener, the admin
/// service and the readiness probe. Binds nothing yet.
pub fn build(config: Config) -> Result<Built, Vec<ConfigError>> {
    let gateway = Arc::new(Gateway::new(config)?);
    let settings = &gateway.config.server;
    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: settings.upstream_keepalive_pool_size,
        // Route retries, plus one free retry of a stale pooled connection, plus the first try.
        max_retries: config::defaults::MAX_RETRIES as usize + 2,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy::SeawallProxy::new(gateway.clone()),
        "seawall proxy",
    );
    for (i, (listener, tls)) in gateway.config.listeners.iter().zip(&gateway.tls_listeners).enumerate() {
        let endpoint = ListenerConfig::tcp(listener.address.to_string());
        let endpoint = match tls {
            None => endpoint.l4_buffer(PLAIN_BUFFERS),
            Some(tls) => {
                let settings = tls.settings().map_err(|m| vec![ConfigError::at(format!("listeners[{i}].tls"), m)])?;
                endpoint.tls(settings).l4_buffer(TLS_BUFFERS)
            }
        };
        proxy.add_listener(endpoint);
    }
    server.add_service(proxy);

    let mut admin = Service::new("seawall admin".to_string(), admin::AdminApp::new(gateway.clone()));
    admin.add_tcp(&gateway.config.admin.address.to_string());
    admin.threads = Some(1);
    server.add_service(admin);

    let certificates = gateway.certificates();
    if !certificates.is_empty() {
        tls::expiry::log_notices(&certificates, auth::jwt::unix_now() as i64);
        let watched = gateway.clone();
        let watch = periodic::Periodic::new(tls::expiry::WATCH_EVERY, move || {
            tls::expiry::log_notices(&watched.certificates(), auth::jwt::unix_now() as i64)
        });
        server.add_service(background_service("certificate expiry", watch));
    }
    if gateway.usage_plans.iter().any(Option::is_some) {
        let plans = gateway.clone();
        let forget = periodic::Periodic::new(throttle::FORGET_EVERY, move || {
            plans.usage_plans.iter().flatten().for_each(|plan| {
                plan.forget_idle();
            })
        });
        server.add_service(background_service("usage plans", forget));
    }
    if gateway.jwks_sources.iter().any(Option::is_some) {
        server.add_service(background_service("jwks", auth::jwks::JwksRefresher { gateway: gateway.clone() }));
    }

    let probe_targets = gateway.config.listeners.iter().map(|l| l.address).collect();
    server.add_service(background_service(
        "readiness",
        ReadinessProbe { gateway: gateway.clone(), targets: probe_targets },
    ));
    Ok(Built { server, gateway })
}

impl Built {
    /// Runs until `shutdown` says so. Blocks the calling thread.
    pub fn run(self, shutdown: Box<dyn pingora::server::ShutdownSignalWatch>) {
        self.server.run(RunArgs { shutdown_signal: shutdown });
    }
}

/// A wildcard listen address is probed on loopback.
fn loopback_for(address: SocketAddr) -> SocketAddr {
    let mut target = address;
    if address.ip().is_unspecified() {
        target.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    target
}

/// Marks the gateway ready once every public listener listens, and says what it listens on.
struct ReadinessProbe {
    gateway: Arc<Gateway>,
    targets: Vec<SocketAddr>,
}

#[async_trait]
impl BackgroundService for ReadinessProbe {
    async fn start(&self, shutdown: ShutdownWatch) {
        for target in &self.targets {
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let target = *target;
                let listening = match lifecycle::is_listening(target) {
                    Some(listening) => listening,
                    // No kernel table to read: a TCP connection says it (a TLS listener then
                    // logs one aborted handshake).
                    None => tokio::task::spawn_blocking(move || {
                        TcpStream::connect_timeout(&loopback_for(target), Duration::from_millis(200)).is_ok()
                    })
                    .await
                    .unwrap_or(false),
                };
                if listening {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.gateway.set_listeners_bound();
        for listener in &self.gateway.config.listeners {
            let scheme = match listener.tls.as_ref().map(|t| t.client_auth.as_ref().map(|c| c.mode)) {
                None => "http",
                Some(None) => "https",
                Some(Some(config::ClientAuthMode::Required)) => "https, client certificate required",
                Some(Some(config::ClientAuthMode::Optional)) => "https, client certificate optional",
            };
            tracing::info!(listener = %listener.name, address = %listener.address, "listening ({scheme})");
        }
        tracing::info!(address = %self.gateway.config.admin.address, "admin listening (/metrics /healthz /readyz)");
    }
}
