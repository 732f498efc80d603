//! The built-in OAuth2 client-credentials token issuer (RFC 6749 §4.4), for companies without
//! an IdP at hand: Genesys "User Defined (OAuth)" credentials POST here and get a JWT that the
//! gateway's own JWT check (a `jwt_providers` entry with this key) then accepts. Served from
//! `request_filter` on every public listener at `token_issuer.path`, with the public key at
//! `/.well-known/jwks.json`.
//!
//! Answers follow RFC 6749 (not problem+json). Client secrets are kept as SHA-256 digests and
//! compared in constant time; a source IP that keeps failing is throttled with 429.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::memcmp;
use sha2::{Digest, Sha256};

/// Where the issuer's public key is published, on every public listener.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Failed client authentications allowed per source IP per window, then 429 until it ends.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Source IPs tracked at most (older windows are dropped first).
const TRACKED_IPS: usize = 10_000;
/// Largest token request body read.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

#[derive(Clone)]
pub struct IssuerClient {
    pub name: String,
    pub secret_sha256: [u8; 32],
    pub scopes: Vec<String>,
    pub audience: String,
}

pub struct TokenIssuer {
    pub path: String,
    issuer: String,
    ttl_secs: u64,
    clients: Vec<IssuerClient>,
    algorithm: Algorithm,
    key: EncodingKey,
    kid: String,
    jwks: String,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// An RFC 6749 answer: status, JSON body, and `WWW-Authenticate` for 401.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenAnswer {
    pub status: u16,
    pub body: String,
    pub basic_challenge: bool,
}

impl TokenAnswer {
    fn error(status: u16, error: &str) -> TokenAnswer {
        TokenAnswer { status, body: serde_json::json!({ "error": error }).to_string(), basic_challenge: status == 401 }
    }
}

impl TokenIssuer {
    /// `signing_key_pem`: an EC P-256 (ES256) or RSA (RS256) private key.
    pub fn new(
        path: &str,
        issuer: &str,
        ttl_secs: u64,
        clients: Vec<IssuerClient>,
        signing_key_pem: &[u8],
    ) -> Result<TokenIssuer, String> {
        use openssl::pkey::{Id, PKey};
        let private = PKey::private_key_from_pem(signing_key_pem).map_err(|e| format!("not a PEM private key: {e}"))?;
        let public_der = private.public_key_to_der().map_err(|e| format!("unusable key: {e}"))?;
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&Sha256::digest(&public_der)[..16]);
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (algorithm, key, jwk) = match private.id() {
            Id::EC => {
                let ec = private.ec_key().map_err(|e| e.to_string())?;
                if ec.group().curve_name() != Some(openssl::nid::Nid::X9_62_PRIME256V1) {
                    return Err("EC signing keys must be P-256 (ES256)".into());
                }
                let mut ctx = openssl::bn::BigNumContext::new().map_err(|e| e.to_string())?;
                let (mut x, mut y) = (openssl::bn::BigNum::new().unwrap(), openssl::bn::BigNum::new().unwrap());
                ec.public_key().affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx).map_err(|e| e.to_string())?;
                let pkcs8 = private.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?;
                let key = EncodingKey::from_ec_pem(&pkcs8).map_err(|e| e.to_string())?;
                let pad = |b: Vec<u8>| {
                    let mut v = vec![0u8; 32usize.saturating_sub(b.len())];
                    v.extend(b);
                    v
                };
                let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                    "x": b64(pad(x.to_vec())), "y": b64(pad(y.to_vec()))});
                (Algorithm::ES256, key, jwk)
            }
            Id::RSA => {
                let rsa = private.rsa().map_err(|e| e.to_string())?;
                if rsa.size() < 256 {
                    return Err("RSA signing keys must be at least 2048 bits".into());
                }
                let key = EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                let jwk = serde_json::json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                    "n": b64(rsa.n().to_vec()), "e": b64(rsa.e().to_vec())});
                (Algorithm::RS256, key, jwk)
            }
            other => return Err(format!("unsupported signing key type {other:?} (EC P-256 or RSA)")),
        };
        Ok(TokenIssuer {
            path: path.to_string(),
            issuer: issuer.to_string(),
            ttl_secs,
            clients,
            algorithm,
            key,
            kid,
            jwks: serde_json::json!({ "keys": [jwk] }).to_string(),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The JWKS document served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Handles one token request. `now` is unix seconds; `clock` the monotonic time used for
    /// the failure throttle (both injected, so tests control time).
    pub fn token(
        &self,
        method: &http::Method,
        authorization: Option<&str>,
        body: &[u8],
        source: Option<IpAddr>,
        now: u64,
        clock: Instant,
    ) -> TokenAnswer {
        if source.is_some_and(|ip| self.throttled(ip, clock)) {
            return TokenAnswer::error(429, "slow_down");
        }
        if method != http::Method::POST {
            return TokenAnswer::error(400, "invalid_request");
        }
        let form: HashMap<String, String> = match serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
            Ok(pairs) => {
                let mut map = HashMap::new();
                for (k, v) in pairs {
                    // RFC 6749 §3.2: parameters must not repeat.
                    if map.insert(k, v).is_some() {
                        return TokenAnswer::error(400, "invalid_request");
                    }
                }
                map
            }
            Err(_) => return TokenAnswer::error(400, "invalid_request"),
        };
        match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {}
            Some(_) => return TokenAnswer::error(400, "unsupported_grant_type"),
            None => return TokenAnswer::error(400, "invalid_request"),
        }
        let credentials =
            match (authorization.and_then(basic_credentials), form.get("client_id"), form.get("client_secret")) {
                (Some(basic), None, None) => basic,
                (None, Some(id), Some(secret)) => vec![(id.clone(), secret.clone())],
                (None, None, None) | (None, Some(_), None) | (None, None, Some(_)) if authorization.is_none() => {
                    return self.failed(source, clock)
                }
                _ => return TokenAnswer::error(400, "invalid_request"),
            };
        let Some(client) = credentials.iter().find_map(|(id, secret)| self.authenticate(id, secret)) else {
            return self.failed(source, clock);
        };
        let requested: Vec<&str> = form.get("scope").map(|s| s.split_whitespace().collect()).unwrap_or_default();
        if requested.iter().any(|s| !client.scopes.iter().any(|c| c == s)) {
            return TokenAnswer::error(400, "invalid_scope");
        }
        let scopes: Vec<&str> =
            if requested.is_empty() { client.scopes.iter().map(String::as_str).collect() } else { requested };
        let scope = scopes.join(" ");
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": client.name, "client_id": client.name, "azp": client.name,
            "aud": client.audience, "iat": now, "exp": now + self.ttl_secs,
            "jti": format!("{:032x}", fastrand::u128(..)), "scope": scope,
        });
        let header = Header { kid: Some(self.kid.clone()), typ: Some("at+jwt".into()), ..Header::new(self.algorithm) };
        match jsonwebtoken::encode(&header, &claims, &self.key) {
            Ok(token) => TokenAnswer {
                status: 200,
                body: serde_json::json!({"access_token": token, "token_type": "Bearer",
                    "expires_in": self.ttl_secs, "scope": scope})
                .to_string(),
                basic_challenge: false,
            },
            Err(e) => {
                tracing::error!(error = %e, "token signing failed");
                TokenAnswer::error(500, "server_error")
            }
        }
    }

    /// The client whose name and secret match, compared in constant time over digests.
    fn authenticate(&self, id: &str, secret: &str) -> Option<&IssuerClient> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for client in &self.clients {
            // Every client's digest is compared, so timing says nothing about which names exist.
            let secret_ok = memcmp::eq(&client.secret_sha256, &digest);
            if secret_ok && client.name == id {
                found = Some(client);
            }
        }
        found
    }

    fn failed(&self, source: Option<IpAddr>, clock: Instant) -> TokenAnswer {
        if let Some(ip) = source {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if failures.len() >= TRACKED_IPS {
                failures.retain(|_, (start, _)| clock.duration_since(*start) < FAILURE_WINDOW);
            }
            let entry = failures.entry(ip).or_insert((clock, 0));
            if clock.duration_since(entry.0) >= FAILURE_WINDOW {
                *entry = (clock, 0);
            }
            entry.1 += 1;
        }
        TokenAnswer::error(401, "invalid_client")
    }

    fn throttled(&self, ip: IpAddr, clock: Instant) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.get(&ip).is_some_and(|(start, n)| *n >= MAX_FAILURES && clock.duration_since(*start) < FAILURE_WINDOW)
    }
}

/// `Basic base64(id:secret)`: the id and secret as sent, then (when it differs) with RFC 6749
/// §2.3.1's form-encoding undone. Genesys' auth actions and most clients send them raw, so a
/// secret with `+` or `%` in it must match as it is; strict RFC clients encode them first.
fn basic_credentials(value: &str) -> Option<Vec<(String, String)>> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape =
        |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8().ok().map(|c| c.into_owned());
    let raw = (id.to_string(), secret.to_string());
    let decoded = unescape(id).zip(unescape(secret)).filter(|decoded| *decoded != raw);
    Some([Some(raw), decoded].into_iter().flatten().collect())
}

/// A secret's digest for `secret_sha256` (hex).
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> TokenIssuer {
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let pem = openssl::pkey::PKey::from_ec_key(ec).unwrap().private_key_to_pem_pkcs8().unwrap();
        let client = IssuerClient {
            name: "genesys".into(),
            secret_sha256: Sha256::digest(b"s3cret").into(),
            scopes: vec!["ivr.read".into(), "ivr.write".into()],
            audience: "api://ivr".into(),
        };
        TokenIssuer::new("/oauth/token", "https://gw.example.com", 3600, vec![client], &pem).unwrap()
    }

    fn basic(id: &str, secret: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
    }

    const GRANT: &[u8] = b"grant_type=client_credentials";

    #[test]
    fn a_client_gets_a_token_its_own_jwks_verifies() {
        let i = issuer();
        let now = 1_800_000_000;
        let t0 = Instant::now();
        let answer = i.token(&http::Method::POST, Some(&basic("genesys", "s3cret")), GRANT, None, now, t0);
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["scope"], "ivr.read ivr.write");
        let (keys, _) = crate::auth::jwt::keys_from_jwks(i.jwks()).unwrap();
        let provider = crate::auth::jwt::JwtProvider::new(
            crate::auth::jwt::ProviderSettings {
                name: "self".into(),
                issuer: "https://gw.example.com".into(),
                audiences: vec!["api://ivr".into()],
                algorithms: vec![Algorithm::ES256],
                leeway_secs: 0,
                scope_claims: vec!["scope".into()],
                kept_claims: Vec::new(),
            },
            keys,
        );
        let principal = provider.verify(body["access_token"].as_str().unwrap(), now + 10).unwrap();
        assert_eq!(principal.client_id.as_deref(), Some("genesys"));
        assert_eq!(principal.scopes, vec!["ivr.read", "ivr.write"]);

        // Form credentials and a narrower scope work too.
        let form = b"grant_type=client_credentials&client_id=genesys&client_secret=s3cret&scope=ivr.read";
        let answer = i.token(&http::Method::POST, None, form, None, now, t0);
        assert_eq!(answer.status, 200);
        assert!(answer.body.contains(r#""scope":"ivr.read""#));
    }

    #[test]
    fn a_secret_with_plus_or_percent_matches_raw_or_form_encoded() {
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let pem = openssl::pkey::PKey::from_ec_key(ec).unwrap().private_key_to_pem_pkcs8().unwrap();
        // As `openssl rand -base64` makes them.
        let secret = "a+b/c%2Bd==";
        let client = IssuerClient {
            name: "genesys".into(),
            secret_sha256: Sha256::digest(secret.as_bytes()).into(),
            scopes: vec!["ivr.read".into()],
            audience: "api://ivr".into(),
        };
        let i = TokenIssuer::new("/oauth/token", "https://gw.example.com", 3600, vec![client], &pem).unwrap();
        let ask = |authorization: &str| {
            i.token(&http::Method::POST, Some(authorization), GRANT, None, 1_800_000_000, Instant::now()).status
        };
        // Raw, as Genesys' `$encoder.base64("${id}:${secret}")` sends it.
        assert_eq!(ask(&basic("genesys", secret)), 200);
        // Form-encoded first, as RFC 6749 section 2.3.1 asks.
        assert_eq!(ask(&basic("genesys", "a%2Bb%2Fc%252Bd%3D%3D")), 200);
        // Decoding the raw secret gives "a b/c+d==": not the secret.
        assert_eq!(ask(&basic("genesys", "a b/c+d==")), 401);
    }

    #[test]
    fn bad_requests_get_rfc6749_errors() {
        let i = issuer();
        let t0 = Instant::now();
        let ok = basic("genesys", "s3cret");
        let call = |m: http::Method, auth: Option<&str>, body: &[u8]| i.token(&m, auth, body, None, 0, t0);
        let e = call(http::Method::POST, Some(&ok), b"grant_type=password");
        assert_eq!((e.status, e.body.as_str()), (400, r#"{"error":"unsupported_grant_type"}"#));
        assert_eq!(call(http::Method::POST, Some(&ok), b"").status, 400);
        assert_eq!(call(http::Method::GET, Some(&ok), GRANT).status, 400);
        assert_eq!(call(http::Method::POST, Some(&ok), b"grant_type=client_credentials&grant_type=x").status, 400);
        let e = call(http::Method::POST, Some(&basic("genesys", "wrong")), GRANT);
        assert_eq!((e.status, e.basic_challenge), (401, true));
        assert_eq!(e.body, r#"{"error":"invalid_client"}"#);
        assert_eq!(call(http::Method::POST, Some(&basic("nobody", "s3cret")), GRANT).status, 401);
        assert_eq!(call(http::Method::POST, None, GRANT).status, 401);
        assert_eq!(call(http::Method::POST, Some(&ok), b"grant_type=client_credentials&scope=admin").status, 400);
    }

    #[test]
    fn a_source_that_keeps_failing_is_throttled_until_the_window_ends() {
        let i = issuer();
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        let other: IpAddr = "203.0.113.6".parse().unwrap();
        let t0 = Instant::now();
        let wrong = basic("genesys", "guess");
        for _ in 0..MAX_FAILURES {
            assert_eq!(i.token(&http::Method::POST, Some(&wrong), GRANT, Some(ip), 0, t0).status, 401);
        }
        let ok = basic("genesys", "s3cret");
        assert_eq!(i.token(&http::Method::POST, Some(&ok), GRANT, Some(ip), 0, t0).status, 429);
        assert_eq!(i.token(&http::Method::POST, Some(&ok), GRANT, Some(other), 0, t0).status, 200);
        let later = t0 + FAILURE_WINDOW;
        assert_eq!(i.token(&http::Method::POST, Some(&ok), GRANT, Some(ip), 0, later).status, 200);
    }

    #[test]
    fn secrets_digests_parse_from_hex() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(parse_sha256_hex(hex).unwrap(), <[u8; 32]>::from(Sha256::digest(b"")));
        assert!(parse_sha256_hex("abc").is_none());
        assert!(parse_sha256_hex(&"zz".repeat(32)).is_none());
    }
}
