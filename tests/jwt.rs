//! OAuth2 bearer tokens on routes: 401 with `WWW-Authenticate` for missing, bad, expired or
//! wrong-audience tokens, 403 for a missing scope, the backend reached only with a good token.

mod common;

use common::{problem_code, Backend, TestGateway};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

const ISSUER: &str = "https://idp.example.com/oauth2/default";

struct Idp {
    private_pem: Vec<u8>,
    dir: tempfile::TempDir,
}

impl Idp {
    fn new() -> Idp {
        let rsa = Rsa::generate(2048).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = PKey::from_rsa(rsa.clone()).unwrap().public_key_to_pem().unwrap();
        std::fs::write(dir.path().join("idp.pub.pem"), public).unwrap();
        Idp { private_pem: rsa.private_key_to_pem().unwrap(), dir }
    }

    fn key_path(&self) -> String {
        self.dir.path().join("idp.pub.pem").display().to_string()
    }

    fn token(&self, claims: serde_json::Value) -> String {
        self.token_signed(None, &self.private_pem, claims)
    }

    /// A token with `kid` in its header, signed by `key` (PEM), with the usual claims.
    fn token_signed(&self, kid: Option<&str>, key: &[u8], claims: serde_json::Value) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let mut c = serde_json::json!({
            "iss": ISSUER, "aud": "api://ivr-data-dips", "sub": "genesys", "azp": "genesys",
            "iat": now - 5, "exp": now + 600, "scp": ["ivr.read"]
        });
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, &c, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
    }
}

fn config() -> &'static str {
    r#"
server: { threads: 1 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
jwt_providers:
  corp_idp:
    issuer: https://idp.example.com/oauth2/default
    public_key_pem: "${KEY}"
    audiences: [api://ivr-data-dips]
    algorithms: [RS256, ES256]
upstreams:
  crm: { targets: ["${BACKEND}"] }
routes:
  - id: lookup
    match: { method: GET, path: "/accounts/{id}" }
    auth: { jwt: corp_idp, scopes_any: [ivr.read, ivr.admin] }
    upstream: crm
    timeout_ms: 2000
  - id: admin
    match: { method: GET, path: "/admin" }
    auth: { jwt: corp_idp, scopes_all: [ivr.admin, ivr.read] }
    upstream: crm
    timeout_ms: 2000
"#
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_valid_token_with_the_scope_reaches_the_backend() {
    let idp = Idp::new();
    let backend = Backend::ok().await;
    let gw = TestGateway::start(config(), &[("BACKEND", backend.addr.to_string()), ("KEY", idp.key_path())]);
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<String>| {
        let mut req = client.get(gw.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };

    let good = idp.token(serde_json::json!({}));
    let resp = get("/accounts/1", Some(good.clone())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.received().len(), 1);

    let now = jsonwebtoken::get_current_timestamp();
    for (token, what) in [
        (None, "no token"),
        (Some(idp.token(serde_json::json!({"exp": now - 3600}))), "expired"),
        (Some(idp.token(serde_json::json!({"aud": "api://other"}))), "wrong audience"),
        (Some(idp.token(serde_json::json!({"iss": "https://evil.example.com"}))), "wrong issuer"),
        (Some(format!("{good}x")), "tampered"),
        (Some("not-a-token".to_string()), "garbage"),
    ] {
        let resp = get("/accounts/1", token).await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        assert_eq!(resp.headers()["www-authenticate"], r#"Bearer error="invalid_token""#, "{what}");
        let body = resp.text().await.unwrap();
        assert_eq!(problem_code(&body), "invalid_token", "{what}");
        assert!(!body.contains("genesys") && !body.contains("idp.example.com"), "token details leaked: {body}");
    }

    let resp = get("/admin", Some(good)).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["www-authenticate"], r#"Bearer error="insufficient_scope", scope="ivr.admin""#);
    assert_eq!(problem_code(&resp.text().await.unwrap()), "insufficient_scope");
    let roles = idp.token(serde_json::json!({"scp": "ivr.read ivr.admin"}));
    assert_eq!(get("/admin", Some(roles)).await.unwrap().status(), 200);

    assert_eq!(backend.received().len(), 2, "a refused request reached the backend");
    let metrics = gw.metrics().await;
    for line in [
        r#"seawall_auth_rejections_total{layer="jwt",reason="missing"} 1"#,
        r#"seawall_auth_rejections_total{layer="jwt",reason="expired"} 1"#,
        r#"seawall_auth_rejections_total{layer="jwt",reason="audience"} 1"#,
        r#"seawall_auth_rejections_total{layer="jwt",reason="issuer"} 1"#,
        r#"seawall_auth_rejections_total{layer="jwt",reason="insufficient_scope"} 1"#,
        r#"seawall_requests_total{route="lookup",status="401"} 6"#,
    ] {
        assert!(metrics.contains(line), "missing `{line}`:\n{metrics}");
    }
}

#[test]
fn provider_mistakes_are_reported_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("bad.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let ec = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap();
    let ec_pub = dir.path().join("ec.pem");
    std::fs::write(&ec_pub, PKey::from_ec_key(ec).unwrap().public_key_to_pem().unwrap()).unwrap();
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:1" }}]
admin: {{ address: "127.0.0.1:2" }}
jwt_providers:
  a: {{ issuer: x, public_key_pem: "{bad}", audiences: [y], algorithms: [RS256] }}
  b: {{ issuer: x, public_key_pem: "{ec}", audiences: [y], algorithms: [RS256] }}
  c: {{ issuer: x, jwks_uri: "ftp://idp/keys", audiences: [y], algorithms: [HS256, none] }}
  d: {{ issuer: "", audiences: [], algorithms: [] }}
upstreams: {{ crm: {{ targets: ["127.0.0.1:9"] }} }}
routes:
  - {{ id: r, match: {{ path: "/r" }}, auth: {{ jwt: nobody, client_cert: required, scopes_any: ["ivr read"] }}, upstream: crm, timeout_ms: 100 }}
"#,
        bad = not_pem.display(),
        ec = ec_pub.display()
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["validate", "-c"])
        .arg({
            let p = dir.path().join("c.yaml");
            std::fs::write(&p, &yaml).unwrap();
            p
        })
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (path, fragment) in [
        ("`jwt_providers.c.jwks_uri`", "not an http(s) URL"),
        ("`jwt_providers.c.algorithms[0]`", "shared-secret"),
        ("`jwt_providers.c.algorithms[1]`", "not a JWS algorithm"),
        ("`jwt_providers.d.issuer`", "must not be empty"),
        ("`jwt_providers.d.audiences`", "required"),
        ("`jwt_providers.d.algorithms`", "required"),
        ("`jwt_providers.d`", "exactly one of"),
        ("`routes[0].auth.client_cert`", "no listener asks for client certificates"),
        ("`routes[0].auth.jwt`", "unknown jwt_providers entry `nobody`"),
        ("`routes[0].auth.scopes_any[0]`", "not a scope token"),
    ] {
        assert!(stderr.lines().any(|l| l.contains(path) && l.contains(fragment)), "{path} {fragment}:\n{stderr}");
    }

    // With the semantic errors fixed, the key files themselves are checked when the gateway is built.
    let fixed = yaml
        .replace(
            r#"jwks_uri: "ftp://idp/keys", audiences: [y], algorithms: [HS256, none]"#,
            &format!(r#"public_key_pem: "{}", audiences: [y], algorithms: [ES256]"#, ec_pub.display()),
        )
        .replace(r#"d: { issuer: "", audiences: [], algorithms: [] }"#, "")
        .replace(r#"auth: { jwt: nobody, client_cert: required, scopes_any: ["ivr read"] }"#, "auth: { jwt: c }");
    let p = dir.path().join("fixed.yaml");
    std::fs::write(&p, fixed).unwrap();
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_seawall")).args(["validate", "-c"]).arg(&p).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`jwt_providers.a.public_key_pem`") && stderr.contains("not a PEM public key"), "{stderr}");
    assert!(stderr.contains("`jwt_providers.b.public_key_pem`") && stderr.contains("no key fits"), "{stderr}");
}

/// `jwks_file`: the provider's keys from a JWKS document on disk, chosen by `kid`.
#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_file_provider_picks_the_key_by_kid() {
    use base64::Engine;
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let idp = Idp::new();
    let rsa = Rsa::private_key_from_pem(&idp.private_pem).unwrap();
    let jwks = serde_json::json!({"keys": [
        {"kty": "EC", "kid": "ec-unused", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": b64(rsa.n().to_vec()), "e": b64(rsa.e().to_vec())},
    ]});
    let path = idp.dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let backend = Backend::ok().await;
    let config = config().replace(r#"public_key_pem: "${KEY}""#, r#"jwks_file: "${JWKS}""#);
    let gw =
        TestGateway::start(&config, &[("BACKEND", backend.addr.to_string()), ("JWKS", path.display().to_string())]);
    let client = reqwest::Client::new();
    let with_kid = |kid: &str, key: &[u8]| idp.token_signed(Some(kid), key, serde_json::json!({}));

    let resp = client.get(gw.url("/accounts/1")).bearer_auth(with_kid("k1", &idp.private_pem)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let stranger = Rsa::generate(2048).unwrap().private_key_to_pem().unwrap();
    for (token, what) in
        [(with_kid("k2", &idp.private_pem), "a kid the file does not hold"), (with_kid("k1", &stranger), "another key")]
    {
        let resp = client.get(gw.url("/accounts/1")).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        assert_eq!(problem_code(&resp.text().await.unwrap()), "invalid_token", "{what}");
    }
    assert_eq!(backend.received().len(), 1);
}
