//! Keys from an IdP's JWKS endpoint (a real local HTTP server): ready only once fetched, one
//! refetch for a burst of tokens with a new `kid`, no refetch storm for unknown kids, and the
//! last good keys kept while the IdP is down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Backend, TestGateway};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::rsa::Rsa;

struct SigningKey {
    kid: String,
    rsa: Rsa<openssl::pkey::Private>,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        SigningKey { kid: kid.into(), rsa: Rsa::generate(2048).unwrap() }
    }

    fn jwk(&self) -> serde_json::Value {
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
            "n": b64(self.rsa.n().to_vec()), "e": b64(self.rsa.e().to_vec())})
    }

    fn token(&self) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({"iss": "https://idp.test", "aud": "api://ivr", "sub": "genesys",
            "iat": now, "exp": now + 600, "scope": "ivr.read"});
        let header = Header { kid: Some(self.kid.clone()), ..Header::new(Algorithm::RS256) };
        let key = EncodingKey::from_rsa_pem(&self.rsa.private_key_to_pem().unwrap()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

/// The IdP: serves whatever JWKS (and status) the test sets.
struct Idp {
    server: Backend,
    document: Arc<Mutex<(u16, String)>>,
}

impl Idp {
    async fn start(keys: &[&SigningKey]) -> Idp {
        let document = Arc::new(Mutex::new((200, String::new())));
        let served = document.clone();
        let server = Backend::start(move |_| {
            let (status, body) = served.lock().unwrap().clone();
            Box::pin(async move {
                let mut resp = common::json(status, &body);
                resp.headers_mut().insert("cache-control", "public, max-age=3600".parse().unwrap());
                resp
            })
        })
        .await;
        let idp = Idp { server, document };
        idp.publish(keys);
        idp
    }

    fn publish(&self, keys: &[&SigningKey]) {
        let jwks = serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        *self.document.lock().unwrap() = (200, jwks.to_string());
    }

    fn go_down(&self) {
        *self.document.lock().unwrap() = (503, "{}".into());
    }

    fn fetches(&self) -> usize {
        self.server.received().len()
    }
}

const CONFIG: &str = r#"
server: { threads: 1 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
jwt_providers:
  idp:
    issuer: https://idp.test
    jwks_uri: "http://${IDP}/keys"
    jwks_min_refresh_secs: 60
    audiences: [api://ivr]
    algorithms: [RS256]
upstreams:
  crm: { targets: ["${BACKEND}"] }
routes:
  - id: lookup
    match: { method: GET, path: "/accounts/{id}" }
    auth: { jwt: idp, scopes_any: [ivr.read] }
    upstream: crm
    timeout_ms: 3000
"#;

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_fetched_rotated_once_per_burst_and_kept_when_the_idp_is_down() {
    let k1 = SigningKey::new("k1");
    let k2 = SigningKey::new("k2");
    let idp = Idp::start(&[&k1]).await;
    let backend = Backend::ok().await;
    let gw = TestGateway::start(CONFIG, &[("IDP", idp.server.addr.to_string()), ("BACKEND", backend.addr.to_string())]);
    // TestGateway waits for /readyz semantics: ready implies the JWKS was fetched.
    assert_eq!(idp.fetches(), 1);
    let client = reqwest::Client::new();
    let call = |token: String| {
        let req = client.get(gw.url("/accounts/1")).bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call(k1.token()).await, 200);

    // The IdP rotates in k2; a burst of 20 requests with the new kid causes one fetch.
    idp.publish(&[&k1, &k2]);
    let burst: Vec<_> = (0..20).map(|_| tokio::spawn(call(k2.token()))).collect();
    for status in burst {
        assert_eq!(status.await.unwrap(), 200);
    }
    assert_eq!(idp.fetches(), 2, "a burst of unknown kids must share one fetch");

    // An unknown kid right after: no new fetch within jwks_min_refresh_secs, just 401.
    let stranger = SigningKey::new("k9");
    let started = Instant::now();
    assert_eq!(call(stranger.token()).await, 401);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(idp.fetches(), 2);

    // The IdP goes down: the last good keys keep working.
    idp.go_down();
    assert_eq!(call(k1.token()).await, 200);
    assert_eq!(call(k2.token()).await, 200);

    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_jwks_refresh_total{provider="idp",result="ok"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"seawall_auth_rejections_total{layer="jwt",reason="unknown_key"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_until_the_jwks_is_loaded() {
    let k1 = SigningKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    idp.go_down();
    let backend = Backend::ok().await;
    let yaml = CONFIG.replace("jwks_min_refresh_secs: 60", "jwks_min_refresh_secs: 1");
    let port = common::free_port();
    let admin = common::free_port();
    let mut env = std::collections::HashMap::new();
    env.insert("PORT", port.to_string());
    env.insert("ADMIN_PORT", admin.to_string());
    env.insert("IDP", idp.server.addr.to_string());
    env.insert("BACKEND", backend.addr.to_string());
    let lookup = move |name: &str| env.get(name).cloned();
    let config = seawall::config::load_str(&yaml, &lookup).unwrap();
    let built = seawall::build(config).unwrap();
    let gateway = built.gateway.clone();
    let (handle, watch) = seawall::lifecycle::ShutdownHandle::new();
    let thread = std::thread::spawn(move || built.run(Box::new(watch)));

    // Listeners come up, but the IdP answers 503: not ready.
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut body = String::new();
    while Instant::now() < deadline {
        if let Ok(resp) = reqwest::get(&readyz).await {
            body = resp.text().await.unwrap();
            if body.contains("JWKS") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.contains("not ready: JWKS not loaded yet"), "{body}");
    assert!(!gateway.is_ready());

    // The IdP recovers; the retry (after jwks_min_refresh_secs) loads the keys.
    idp.publish(&[&k1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.is_ready() {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/accounts/1"))
        .bearer_auth(k1.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    handle.shutdown(false);
    thread.join().unwrap();
}
