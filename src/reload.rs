//! Reloading files on SIGHUP without a restart: TLS listeners' certificates, keys, client CAs
//! and CRLs, upstreams' TLS files, and allowlist files. New connections and requests use the new
//! files; open connections keep what they negotiated. A file that fails to load keeps the one
//! in use and says why; the whole config is read only at start-up.

use crate::gateway::Gateway;
use crate::tls::expiry;

/// What one reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// What was read again (`listener public`, `upstream crm`, `ip_allowlists`).
    pub reloaded: Vec<String>,
    /// Each failure, with the file and the reason; the previous material stays in use.
    pub failures: Vec<String>,
}

impl ReloadReport {
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Reads every reloadable file again, counts the result in `seawall_config_reloads_total` and
/// logs what happened.
pub fn reload_files(gateway: &Gateway) -> ReloadReport {
    let mut report = ReloadReport::default();
    for listener in gateway.tls_listeners.iter().flatten() {
        match listener.reload() {
            Ok(()) => report.reloaded.push(format!("listener {}", listener.name())),
            Err(e) => report.failures.push(format!("listener `{}`: {e}", listener.name())),
        }
    }
    for upstream in &gateway.upstreams {
        match upstream.reload_tls() {
            Ok(true) => report.reloaded.push(format!("upstream {}", upstream.name)),
            Ok(false) => {}
            Err(e) => report.failures.push(format!("upstream `{}`: {e}", upstream.name)),
        }
    }
    if !gateway.config.ip_allowlists.is_empty() {
        let (allowlists, failures) = gateway.allowlists().reload(&gateway.config);
        gateway.set_allowlists(allowlists);
        report.reloaded.push("ip_allowlists".into());
        report.failures.extend(failures);
    }

    let certificates = gateway.certificates();
    gateway.metrics.certificate_expiry(&certificates);
    expiry::log_notices(&certificates, crate::auth::jwt::unix_now() as i64);
    gateway.metrics.config_reload(report.is_success());
    for failure in &report.failures {
        tracing::error!(failure = %failure, "reload: kept the files in use");
    }
    tracing::info!(reloaded = ?report.reloaded, failures = report.failures.len(), "reload (SIGHUP) done");
    report
}
