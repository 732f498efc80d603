//! TLS towards the backend: the certificate is always verified against the configured CA and
//! the SNI name; a backend the CA did not sign is a 502, never a silent plaintext fallback. With
//! `client_cert` / `client_key` the gateway presents its own certificate (mutual TLS).

mod common;

use common::{certs, Backend, TestGateway};

const CONFIG: &str = r#"
server: { threads: 1 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
upstreams:
  billing:
    targets: ["${BACKEND}"]
    tls: { sni: billing.internal, ca: "${CA}" }
routes:
  - id: billing
    match: { method: GET, path: "/billing/{*rest}" }
    upstream: billing
    upstream_path: "/api/{rest}"
    timeout_ms: 2000
"#;

/// `CONFIG` with the gateway's client certificate for the backend.
fn mtls_config() -> String {
    let with_client = r#"ca: "${CA}", client_cert: "${CLIENT_CERT}", client_key: "${CLIENT_KEY}" }"#;
    let config = CONFIG.replace(r#"ca: "${CA}" }"#, with_client);
    assert!(config.contains("client_cert"), "CONFIG's upstream tls line changed");
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_tls_backend_answers_and_an_unknown_ca_is_502() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::ca("test backend CA");
    let (ca_path, _) = ca.write(dir.path(), "ca").unwrap();
    let server = certs::leaf(&ca, "billing.internal", &["billing.internal"], certs::Usage::Server);
    let backend = Backend::start_tls(
        |r| {
            let body = format!("{{\"uri\":\"{}\"}}", r.uri);
            Box::pin(async move { common::json(200, &body) })
        },
        &server,
    )
    .await;
    let vars = [("BACKEND", backend.addr.to_string()), ("CA", ca_path.display().to_string())];
    let gw = TestGateway::start(CONFIG, &vars);
    let resp = reqwest::get(gw.url("/billing/invoices/7")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["uri"], "/api/invoices/7");
    assert_eq!(backend.received()[0].header("host"), Some(backend.addr.to_string().as_str()));
    drop(gw);

    // Same backend, but the gateway trusts another CA: refused, 502, nothing reaches the backend.
    let other = certs::ca("someone else");
    let (other_path, _) = other.write(dir.path(), "other-ca").unwrap();
    let before = backend.received().len();
    let vars = [("BACKEND", backend.addr.to_string()), ("CA", other_path.display().to_string())];
    let gw = TestGateway::start(CONFIG, &vars);
    let resp = reqwest::get(gw.url("/billing/invoices/7")).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(common::problem_code(&resp.text().await.unwrap()), "upstream_unavailable");
    assert_eq!(backend.received().len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::ca("test backend CA");
    let (ca_path, _) = ca.write(dir.path(), "ca").unwrap();
    let wrong_name = certs::leaf(&ca, "crm.internal", &["crm.internal"], certs::Usage::Server);
    let backend = Backend::start_tls(|_| Box::pin(async { common::json(200, "{}") }), &wrong_name).await;
    let vars = [("BACKEND", backend.addr.to_string()), ("CA", ca_path.display().to_string())];
    let gw = TestGateway::start(CONFIG, &vars);
    let resp = reqwest::get(gw.url("/billing/x")).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(backend.received().is_empty());
}

/// A backend that requires mutual TLS: its server certificate from one CA, and client
/// certificates verified against another. Returns it with the server CA's path.
async fn mtls_backend(dir: &std::path::Path, client_ca: &certs::Issued) -> (Backend, String) {
    let server_ca = certs::ca("test backend CA");
    let (server_ca_path, _) = server_ca.write(dir, "ca").unwrap();
    let server = certs::leaf(&server_ca, "billing.internal", &["billing.internal"], certs::Usage::Server);
    let backend = Backend::start_mtls(|_| Box::pin(async { common::json(200, "{}") }), &server, client_ca).await;
    (backend, server_ca_path.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_presents_its_client_certificate_to_a_backend_that_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let client_ca = certs::ca("gateway client CA");
    let (backend, ca_path) = mtls_backend(dir.path(), &client_ca).await;
    let client = certs::leaf(&client_ca, "seawall-gateway", &[], certs::Usage::Client);
    let (client_cert, client_key) = client.write(dir.path(), "client").unwrap();
    let vars = [
        ("BACKEND", backend.addr.to_string()),
        ("CA", ca_path),
        ("CLIENT_CERT", client_cert.display().to_string()),
        ("CLIENT_KEY", client_key.display().to_string()),
    ];
    let gw = TestGateway::start(&mtls_config(), &vars);
    let resp = reqwest::get(gw.url("/billing/invoices/7")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let received = backend.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].uri, "/api/invoices/7");
    assert_eq!(received[0].client_cert_cn.as_deref(), Some("seawall-gateway"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_client_certificate_a_backend_that_requires_one_refuses_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let client_ca = certs::ca("gateway client CA");
    let (backend, ca_path) = mtls_backend(dir.path(), &client_ca).await;
    let vars = [("BACKEND", backend.addr.to_string()), ("CA", ca_path)];
    let gw = TestGateway::start(CONFIG, &vars);
    let resp = reqwest::get(gw.url("/billing/invoices/7")).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(common::problem_code(&resp.text().await.unwrap()), "upstream_unavailable");
    assert_eq!(backend.started(), 0, "no request head reached the backend");
}
