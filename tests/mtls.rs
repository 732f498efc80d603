//! TLS listeners and client certificates, with real handshakes and certificates made per run:
//! HTTP/1.1 and HTTP/2 over TLS 1.2+, `client_auth` required and optional (trusted, missing,
//! wrong CA, expired, not yet valid, revoked, wrong name, wrong pin), and SIGHUP-style reloads
//! that change what new connections get while open ones carry on.

mod common;

use std::path::{Path, PathBuf};

use common::certs::{self, Issued, Usage};
use common::tls_client::TlsClient;
use common::{problem_code, Backend, TestGateway};
use openssl::hash::MessageDigest;

/// The server's CA (callers trust it) and the clients' CA (the gateway trusts it), on disk.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: Issued,
    client_ca: Issued,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = certs::ca("Test server CA");
        let client_ca = certs::ca("Test Genesys client CA");
        let server = certs::leaf(&server_ca, "localhost", &["localhost"], Usage::Server);
        let (server_cert, server_key) = server.write(dir.path(), "server").unwrap();
        let (client_ca_file, _) = client_ca.write(dir.path(), "client-ca").unwrap();
        Pki { dir, server_ca, client_ca, server_cert, server_key, client_ca_file }
    }

    fn client(&self, cn: &str) -> Issued {
        certs::leaf(&self.client_ca, cn, &[cn], Usage::Client)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A CRL of the client CA revoking `revoked`, written to `name`.
    fn write_crl(&self, name: &str, revoked: &[&Issued]) -> PathBuf {
        let certs: Vec<_> = revoked.iter().map(|i| &i.cert).collect();
        let crl = seawall::dev_certs::crl(&self.client_ca, &certs, 7).unwrap();
        let path = self.path(name);
        std::fs::write(&path, crl.to_pem().unwrap()).unwrap();
        path
    }

    fn caller<'a>(&'a self, identity: Option<&'a Issued>) -> TlsClient<'a> {
        TlsClient {
            ca: Some(&self.server_ca.cert),
            identity: identity.map(|i| (&i.cert, &i.key)),
            ..Default::default()
        }
    }
}

fn config(pki: &Pki, client_auth: &str) -> String {
    format!(
        r#"
server: {{ threads: 1 }}
logging: {{ access_log: false }}
listeners:
  - name: public
    address: "127.0.0.1:${{PORT}}"
    tls:
      cert: {}
      key: {}
{client_auth}
admin: {{ address: "127.0.0.1:${{ADMIN_PORT}}" }}
upstreams:
  crm: {{ targets: ["${{BACKEND}}"] }}
routes:
  - id: lookup
    match: {{ method: GET, path: "/lookup" }}
    upstream: crm
    timeout_ms: 2000
"#,
        pki.server_cert.display(),
        pki.server_key.display(),
    )
}

fn start(yaml: &str, backend: &Backend) -> TestGateway {
    TestGateway::start(yaml, &[("BACKEND", backend.addr.to_string())])
}

fn sha256_hex(issued: &Issued) -> String {
    issued
        .cert
        .digest(MessageDigest::sha256())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn serial(cert: &openssl::x509::X509) -> String {
    cert.serial_number().to_bn().unwrap().to_hex_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_http1_and_http2_over_tls_1_2_or_later_only() {
    let backend = Backend::ok().await;
    let pki = Pki::new();
    let gw = start(&config(&pki, ""), &backend);

    let mut conn = pki.caller(None).connect(gw.addr).await.unwrap();
    assert_eq!(conn.version(), "TLSv1.3");
    assert_eq!(conn.get("/lookup").await.unwrap().0, 200);
    assert_eq!(conn.get("/lookup").await.unwrap().0, 200, "keep-alive over TLS");

    let h2 = TlsClient { alpn: Some(b"\x02h2\x08http/1.1"), ..pki.caller(None) };
    assert_eq!(h2.connect(gw.addr).await.unwrap().alpn().as_deref(), Some(&b"h2"[..]));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pki.server_ca.cert_pem()).unwrap())
        .build()
        .unwrap();
    let resp = client.get(format!("https://localhost:{}/lookup", gw.addr.port())).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_2));

    let tls12 = TlsClient { max_version: Some(openssl::ssl::SslVersion::TLS1_2), ..pki.caller(None) };
    assert_eq!(tls12.connect(gw.addr).await.unwrap().version(), "TLSv1.2");
    let tls11 = TlsClient { max_version: Some(openssl::ssl::SslVersion::TLS1_1), ..pki.caller(None) };
    assert!(tls11.connect(gw.addr).await.is_err(), "TLS 1.1 must be refused");

    let seen = backend.received().last().unwrap().clone();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let metrics = gw.metrics().await;
    let expiry = metrics
        .lines()
        .find(|l| l.starts_with(r#"seawall_certificate_expiry_timestamp_seconds{name="public/server"}"#))
        .unwrap_or_else(|| panic!("no expiry series for the server certificate:\n{metrics}"));
    let not_after: i64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = seawall::auth::jwt::unix_now() as i64;
    assert!((not_after - (now + 90 * 86_400)).abs() < 300, "{expiry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn required_mode_refuses_in_the_handshake_every_certificate_that_does_not_verify() {
    let backend = Backend::ok().await;
    let pki = Pki::new();
    let trusted = pki.client("dataactions.prod.us-east-1.mypurecloud.com");
    let revoked = pki.client("revoked.example");
    let crl = pki.write_crl("clients.crl", &[&revoked]);
    let client_auth = format!(
        "      client_auth: {{ mode: required, ca: [{}], crl: [{}] }}",
        pki.client_ca_file.display(),
        crl.display()
    );
    let gw = start(&config(&pki, &client_auth), &backend);

    assert_eq!(pki.caller(Some(&trusted)).get(gw.addr, "/lookup").await.unwrap().0, 200);

    let stranger_ca = certs::ca("Someone else's CA");
    let cases = [
        ("no certificate", None),
        (
            "another CA",
            Some(certs::leaf(&stranger_ca, "dataactions.prod.us-east-1.mypurecloud.com", &[], Usage::Client)),
        ),
        ("expired", Some(certs::leaf_valid(&pki.client_ca, "old.example", Usage::Client, -30, -1))),
        ("not yet valid", Some(certs::leaf_valid(&pki.client_ca, "early.example", Usage::Client, 2, 30))),
        ("revoked", Some(revoked)),
    ];
    for (what, identity) in &cases {
        let answer = pki.caller(identity.as_ref()).get(gw.addr, "/lookup").await;
        assert!(answer.is_err(), "{what}: the handshake should have failed, got {answer:?}");
    }
    assert_eq!(backend.received().len(), 1, "a refused caller reached the backend");
    let metrics = gw.metrics().await;
    for reason in ["untrusted_issuer", "expired", "not_yet_valid", "revoked"] {
        let line = format!(r#"seawall_auth_rejections_total{{layer="mtls",reason="{reason}"}} 1"#);
        assert!(metrics.contains(&line), "missing {line}\n{metrics}");
    }
    assert!(
        metrics.contains(r#"seawall_certificate_expiry_timestamp_seconds{name="public/ca/Test Genesys client CA"}"#)
    );
    // The CRL's nextUpdate is watched like a certificate's end: past it, every client is refused.
    assert!(
        metrics.contains(r#"seawall_certificate_expiry_timestamp_seconds{name="public/crl/Test Genesys client CA"}"#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_certificate_outside_the_allowed_names_or_pins_gets_403() {
    let backend = Backend::ok().await;
    let pki = Pki::new();
    let genesys = pki.client("dataactions.prod.us-east-1.mypurecloud.com");
    let same_name_unpinned = pki.client("dataactions.prod.us-east-1.mypurecloud.com");
    let other_name = pki.client("dataactions.prod.eu-west-1.mypurecloud.com");
    let client_auth = format!(
        "      client_auth: {{ mode: required, ca: [{}], allowed_names: [DataActions.prod.us-east-1.mypurecloud.com], \
         pinned_sha256: [\"{}\", \"{}\"] }}",
        pki.client_ca_file.display(),
        sha256_hex(&genesys),
        sha256_hex(&other_name),
    );
    let gw = start(&config(&pki, &client_auth), &backend);

    assert_eq!(pki.caller(Some(&genesys)).get(gw.addr, "/lookup").await.unwrap().0, 200);
    let (status, body) = pki.caller(Some(&other_name)).get(gw.addr, "/lookup").await.unwrap();
    assert_eq!((status, problem_code(&body).as_str()), (403, "client_cert_rejected"));
    assert!(!body.contains("eu-west-1"), "certificate details leaked: {body}");
    let (status, body) = pki.caller(Some(&same_name_unpinned)).get(gw.addr, "/lookup").await.unwrap();
    assert_eq!((status, problem_code(&body).as_str()), (403, "client_cert_rejected"));
    // Refused before anything else answers: no 404 to map the routes with.
    let (status, body) = pki.caller(Some(&other_name)).get(gw.addr, "/nowhere").await.unwrap();
    assert_eq!((status, problem_code(&body).as_str()), (403, "client_cert_rejected"));

    assert_eq!(backend.received().len(), 1);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"seawall_auth_rejections_total{layer="mtls",reason="name_not_allowed"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"seawall_auth_rejections_total{layer="mtls",reason="not_pinned"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_mode_lets_each_route_decide() {
    let backend = Backend::ok().await;
    let pki = Pki::new();
    let client_auth = format!("      client_auth: {{ mode: optional, ca: [{}] }}", pki.client_ca_file.display());
    let yaml = config(&pki, &client_auth)
        + r#"
  - id: secure
    match: { method: GET, path: "/secure" }
    auth: { client_cert: required }
    upstream: crm
    timeout_ms: 2000
"#;
    let gw = start(&yaml, &backend);
    let genesys = pki.client("dataactions.prod.us-east-1.mypurecloud.com");

    assert_eq!(pki.caller(None).get(gw.addr, "/lookup").await.unwrap().0, 200);
    let (status, body) = pki.caller(None).get(gw.addr, "/secure").await.unwrap();
    assert_eq!((status, problem_code(&body).as_str()), (403, "client_cert_rejected"));
    assert_eq!(pki.caller(Some(&genesys)).get(gw.addr, "/secure").await.unwrap().0, 200);
    // A certificate that is sent must verify, optional or not.
    let stranger = certs::leaf(&certs::ca("Someone else's CA"), "x.example", &[], Usage::Client);
    assert!(pki.caller(Some(&stranger)).get(gw.addr, "/lookup").await.is_err());

    assert_eq!(backend.received().len(), 2);
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_auth_rejections_total{layer="mtls",reason="no_certificate"} 1"#), "{metrics}");
}

/// Replaces a file the way a deploy tool does: write aside, then rename over.
fn replace(path: &Path, contents: &[u8]) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_changes_what_new_connections_get_and_open_ones_carry_on() {
    let backend = Backend::ok().await;
    let pki = Pki::new();
    let first = pki.client("first.example");
    let second = pki.client("second.example");
    let crl = pki.write_crl("clients.crl", &[]);
    let client_auth = format!(
        "      client_auth: {{ mode: required, ca: [{}], crl: [{}] }}",
        pki.client_ca_file.display(),
        crl.display()
    );
    let gw = start(&config(&pki, &client_auth), &backend);

    let mut open = pki.caller(Some(&first)).connect(gw.addr).await.unwrap();
    assert_eq!(open.get("/lookup").await.unwrap().0, 200);
    let old_serial = serial(&open.peer_certificate().unwrap());

    // Renewed server certificate, and `first` revoked.
    let renewed = certs::leaf(&pki.server_ca, "localhost", &["localhost"], Usage::Server);
    replace(&pki.server_cert, &renewed.cert_pem());
    replace(&pki.server_key, &renewed.key_pem());
    pki.write_crl("clients.crl", &[&first]);
    let report = seawall::reload::reload_files(&gw.gateway);
    assert!(report.is_success(), "{:?}", report.failures);

    assert_eq!(open.get("/lookup").await.unwrap().0, 200, "an open connection was dropped by the reload");
    let mut fresh = pki.caller(Some(&second)).connect(gw.addr).await.unwrap();
    assert_eq!(fresh.get("/lookup").await.unwrap().0, 200);
    let new_serial = serial(&fresh.peer_certificate().unwrap());
    assert_ne!(new_serial, old_serial, "new connections still get the old certificate");
    assert_eq!(new_serial, serial(&renewed.cert));
    assert!(pki.caller(Some(&first)).get(gw.addr, "/lookup").await.is_err(), "the revoked client got in");

    // A broken key: the reload fails, says why, and the renewed material stays in use.
    replace(&pki.server_key, b"not a key");
    let report = seawall::reload::reload_files(&gw.gateway);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(report.failures[0].contains("server.key"), "{:?}", report.failures);
    let mut after = pki.caller(Some(&second)).connect(gw.addr).await.unwrap();
    assert_eq!(after.get("/lookup").await.unwrap().0, 200);
    assert_eq!(serial(&after.peer_certificate().unwrap()), new_serial);

    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_config_reloads_total{result="success"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"seawall_config_reloads_total{result="failure"} 1"#), "{metrics}");
}
