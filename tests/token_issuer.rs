//! The built-in token issuer end to end: a client gets a token over HTTP, `seawall token` prints
//! one, the token opens a JWT route through a provider that trusts the issuer's key, and bad
//! clients get RFC 6749 errors, then 429.

mod common;

use std::process::Command;

use common::{Backend, TestGateway};

struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let key = openssl::pkey::PKey::from_ec_key(ec).unwrap();
        std::fs::write(dir.path().join("issuer.pem"), key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::write(dir.path().join("issuer.pub.pem"), key.public_key_to_pem().unwrap()).unwrap();
        Keys { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

const CONFIG: &str = r#"
server: { threads: 1 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
token_issuer:
  issuer: https://gateway.example.com
  signing_key: "${KEY}"
  token_ttl_secs: 600
  clients:
    genesys:
      secret: "${SECRET}"
      scopes: [ivr.read]
      audience: api://ivr-data-dips
jwt_providers:
  self:
    issuer: https://gateway.example.com
    public_key_pem: "${PUB}"
    audiences: [api://ivr-data-dips]
    algorithms: [ES256]
upstreams:
  crm: { targets: ["${BACKEND}"] }
routes:
  - id: lookup
    match: { method: GET, path: "/accounts/{id}" }
    auth: { jwt: self, scopes_any: [ivr.read] }
    upstream: crm
    timeout_ms: 2000
"#;

const SECRET: &str = "correct-horse-battery-staple";

/// A compact JWT's claims, decoded without verifying (the gateway verifies them).
fn payload(token: &str) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("a compact JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A gateway with the issuer and a route that accepts its tokens (the keys live as long as it).
async fn start() -> (Keys, Backend, TestGateway) {
    start_with(CONFIG).await
}

/// [`start`] with another config (`CONFIG` with changes).
async fn start_with(config: &str) -> (Keys, Backend, TestGateway) {
    let keys = Keys::new();
    let backend = Backend::ok().await;
    let vars = [
        ("KEY", keys.path("issuer.pem")),
        ("PUB", keys.path("issuer.pub.pem")),
        ("SECRET", SECRET.to_string()),
        ("BACKEND", backend.addr.to_string()),
    ];
    let gw = TestGateway::start(config, &vars);
    (keys, backend, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_token_opens_the_protected_route() {
    let (_keys, _backend, gw) = start().await;
    let client = reqwest::Client::new();

    // As Genesys' "User Defined (OAuth)" auth action does: Basic auth + form body.
    let resp = client
        .post(gw.url("/oauth/token"))
        .basic_auth("genesys", Some(SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["scope"], "ivr.read");
    let token = body["access_token"].as_str().unwrap().to_string();
    let resp = client.get(gw.url("/accounts/7")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // The claims the contract names (the signature was checked by the route just now).
    let claims = payload(&token);
    assert_eq!(claims["iss"], "https://gateway.example.com");
    assert_eq!(claims["aud"], "api://ivr-data-dips");
    for name in ["sub", "client_id", "azp"] {
        assert_eq!(claims[name], "genesys", "{name}: {claims}");
    }
    assert_eq!(claims["scope"], "ivr.read");
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 600, "{claims}");
    let jti = claims["jti"].as_str().expect("a jti");
    assert!(!jti.is_empty());
    let again: serde_json::Value = client
        .post(gw.url("/oauth/token"))
        .basic_auth("genesys", Some(SECRET))
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(payload(again["access_token"].as_str().unwrap())["jti"], jti, "each token has its own jti");

    // The issuer's keys, published for IdP-style configuration.
    let jwks: serde_json::Value =
        client.get(gw.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["alg"], "ES256");

    // `seawall token` prints a token that works the same way.
    let output = Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["token", "--client-id", "genesys", "--secret", SECRET, "--url", &gw.url("/oauth/token")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    let resp = client.get(gw.url("/accounts/8")).bearer_auth(printed.trim()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let output = Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["token", "--client-id", "genesys", "--secret", "nope", "--url", &gw.url("/oauth/token")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid_client"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_clients_get_rfc6749_errors_then_429() {
    let (_keys, backend, gw) = start().await;
    let client = reqwest::Client::new();
    let post = |auth: (&'static str, &'static str), body: &'static str| {
        client.post(gw.url("/oauth/token")).basic_auth(auth.0, Some(auth.1)).body(body).send()
    };
    let resp = post(("genesys", SECRET), "grant_type=password").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.unwrap(), r#"{"error":"unsupported_grant_type"}"#);
    let resp = post(("genesys", SECRET), "nonsense").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.unwrap(), r#"{"error":"invalid_request"}"#);
    for _ in 0..5 {
        let resp = post(("genesys", "guess"), "grant_type=client_credentials").await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], r#"Basic realm="seawall""#);
        assert_eq!(resp.text().await.unwrap(), r#"{"error":"invalid_client"}"#);
    }
    let resp = post(("genesys", SECRET), "grant_type=client_credentials").await.unwrap();
    assert_eq!(resp.status(), 429, "secret guessing from one address is throttled");
    assert!(backend.received().is_empty());
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"seawall_auth_rejections_total{layer="issuer",reason="invalid_client"} 5"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"seawall_auth_rejections_total{layer="issuer",reason="throttled"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"seawall_requests_total{route="_token_issuer",status="401"} 5"#), "{metrics}");
}

/// Behind a trusted load balancer, the failure throttle keys on the caller X-Forwarded-For
/// names, not on the balancer every caller shares: one guessing caller does not lock out the
/// others.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_throttle_keys_on_the_caller() {
    let (_keys, _backend, gw) = start_with(&format!("trusted_proxies: [127.0.0.0/8]\n{CONFIG}")).await;
    let client = reqwest::Client::new();
    let ask = |caller: &'static str, secret: &'static str| {
        let req = client
            .post(gw.url("/oauth/token"))
            .header("x-forwarded-for", caller)
            .basic_auth("genesys", Some(secret))
            .body("grant_type=client_credentials");
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..5 {
        assert_eq!(ask("198.51.100.7", "guess").await, 401);
    }
    assert_eq!(ask("198.51.100.7", SECRET).await, 429, "the guessing caller is throttled");
    assert_eq!(ask("198.51.100.8", SECRET).await, 200, "another caller behind the same balancer is not");
}
