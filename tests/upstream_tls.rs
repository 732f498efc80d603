//! TLS towards the backend: the certificate is always verified against the configured CA and
//! the SNI name; a backend the CA did not sign is a 502, never a silent plaintext fallback.

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
