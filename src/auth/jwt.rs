//! OAuth2 bearer tokens (JWT): the signature checked by `jsonwebtoken` on its `aws_lc_rs`
//! backend, the claims checked here against an injected "now". Called from `request_filter`
//! for routes with `auth.jwt`.
//!
//! Order of work, cheapest refusal first: size, the verified token cache (steady state is a hash
//! and a lookup: a cached token passed every check below), shape (no crypto for garbage), header
//! `alg` against the provider's allowlist, the key picked by `kid` and matched to the algorithm's
//! family (no `none`, no HS* with a public key), the signature, then `exp`/`nbf`/`iat`/`iss`/`aud`.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Longest token looked at; Entra ID and Okta tokens are 1–2 KB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Verified tokens kept per provider.
const CACHE_ENTRIES: usize = 16 * 1024;

/// Why a token was refused: the `reason` label of `seawall_auth_rejections_total{layer="jwt"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not a well-formed JWS")]
    Malformed,
    #[error("token algorithm not allowed for this provider")]
    AlgorithmNotAllowed,
    #[error("no key for the token's kid and algorithm")]
    UnknownKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::WrongIssuer => "issuer",
            TokenError::WrongAudience => "audience",
        }
    }

    pub const ALL: [TokenError; 11] = [
        TokenError::Missing,
        TokenError::TooLarge,
        TokenError::Malformed,
        TokenError::AlgorithmNotAllowed,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::IssuedInFuture,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
    ];
}

/// Who called, as the token says: kept in the request context for rate-limit keys, cache keys
/// and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub issuer: String,
    pub subject: Option<String>,
    /// `azp`, else `client_id`, else `appid` (Entra v1), else the subject (the contract's order).
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub expires_at: u64,
    /// The claims routes name in `cache.vary` (`claim.NAME`), as text: strings as they are,
    /// other values as compact JSON. Absent claims are left out.
    pub claims: Vec<(String, String)>,
}

impl Principal {
    /// A kept claim's value (see [`Principal::claims`]).
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A verification key with the id it is published under.
pub struct ProviderKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
}

/// One `jwt_providers` entry, ready to verify.
pub struct JwtProvider {
    pub name: String,
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    scope_claims: Vec<String>,
    kept_claims: Vec<String>,
    keys: RwLock<Arc<KeySet>>,
    cache: MemoryCache<[u8; 32], Verified>,
}

/// The provider's current keys; a new generation replaces the whole set (JWKS refresh).
struct KeySet {
    keys: Vec<ProviderKey>,
    generation: u64,
}

/// A cache entry: valid only for the key set it was verified with, so a token whose key was
/// withdrawn is checked again (and refused) rather than served from the cache.
#[derive(Clone)]
struct Verified {
    principal: Arc<Principal>,
    generation: u64,
}

/// Settings of a provider, from the config.
pub struct ProviderSettings {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
    pub scope_claims: Vec<String>,
    /// Claims kept in the principal for cache keys (`claim.NAME` in a route's `cache.vary`).
    pub kept_claims: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    iss: Option<String>,
    aud: Option<serde_json::Value>,
    sub: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
    appid: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderKey({:?}, {:?})", self.kid, self.key.family())
    }
}

impl JwtProvider {
    pub fn new(settings: ProviderSettings, keys: Vec<ProviderKey>) -> JwtProvider {
        JwtProvider {
            name: settings.name,
            issuer: settings.issuer,
            audiences: settings.audiences,
            algorithms: settings.algorithms,
            leeway: settings.leeway_secs,
            scope_claims: settings.scope_claims,
            kept_claims: settings.kept_claims,
            keys: RwLock::new(Arc::new(KeySet { keys, generation: 0 })),
            cache: MemoryCache::new(CACHE_ENTRIES),
        }
    }

    /// Installs a new key set (a refreshed JWKS); tokens cached under the old set are checked again.
    pub fn replace_keys(&self, keys: Vec<ProviderKey>) {
        let mut current = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let generation = current.generation + 1;
        *current = Arc::new(KeySet { keys, generation });
    }

    /// Number of keys in the current set.
    pub fn key_count(&self) -> usize {
        self.key_set().keys.len()
    }

    fn key_set(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Verifies a bearer token at unix time `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Principal>, TokenError> {
        check_size(token)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let keys = self.key_set();
        if let (Some(hit), _) = self.cache.get(&digest) {
            if hit.generation == keys.generation {
                if now <= hit.principal.expires_at.saturating_add(self.leeway) {
                    return Ok(hit.principal);
                }
                self.cache.remove(&digest);
                return Err(TokenError::Expired);
            }
        }
        check_shape(token)?;
        let principal = Arc::new(self.verify_uncached(token, now, &keys.keys)?);
        let ttl = principal.expires_at.saturating_add(self.leeway).saturating_sub(now);
        let entry = Verified { principal: principal.clone(), generation: keys.generation };
        self.cache.put(&digest, entry, Some(Duration::from_secs(ttl.max(1))));
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str, now: u64, keys: &[ProviderKey]) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let family = header.alg.family();
        let candidates = || keys.iter().filter(|k| k.key.family() == family);
        // A token's kid picks the key published under it; a key with no kid (a configured PEM)
        // stands for any kid, but only when it is the one such key: never a guess between keys.
        let exact = header.kid.as_deref().and_then(|kid| candidates().find(|k| k.kid.as_deref() == Some(kid)));
        let key = exact
            .or_else(|| {
                let mut unnamed = candidates().filter(|k| k.kid.is_none() || header.kid.is_none());
                match (unnamed.next(), unnamed.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            })
            .ok_or(TokenError::UnknownKey)?;

        // jsonwebtoken checks the signature and that the header alg is the one asked for;
        // time and claims are checked below with our own clock.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::AlgorithmNotAllowed,
                _ => TokenError::Malformed,
            }
        })?;
        let claims = data.claims;

        let exp = numeric(&claims.exp).ok_or(TokenError::Malformed)?;
        if now > exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = numeric_opt(&claims.nbf)? {
            if now.saturating_add(self.leeway) < nbf {
                return Err(TokenError::NotYetValid);
            }
        }
        if let Some(iat) = numeric_opt(&claims.iat)? {
            if iat > now.saturating_add(self.leeway) {
                return Err(TokenError::IssuedInFuture);
            }
        }
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(TokenError::WrongIssuer);
        }
        let audience_ok = match &claims.aud {
            Some(serde_json::Value::String(a)) => self.audiences.iter().any(|x| x == a),
            Some(serde_json::Value::Array(list)) => {
                list.iter().filter_map(|a| a.as_str()).any(|a| self.audiences.iter().any(|x| x == a))
            }
            _ => false,
        };
        if !audience_ok {
            return Err(TokenError::WrongAudience);
        }
        let mut scopes = Vec::new();
        for claim in &self.scope_claims {
            match claims.other.get(claim) {
                Some(serde_json::Value::String(s)) => scopes.extend(s.split_whitespace().map(String::from)),
                Some(serde_json::Value::Array(list)) => {
                    scopes.extend(list.iter().filter_map(|v| v.as_str()).map(String::from))
                }
                _ => {}
            }
        }
        let kept = self
            .kept_claims
            .iter()
            .filter_map(|name| {
                let standard = match name.as_str() {
                    "iss" => claims.iss.clone(),
                    "sub" => claims.sub.clone(),
                    "client_id" => claims.client_id.clone(),
                    "azp" => claims.azp.clone(),
                    "appid" => claims.appid.clone(),
                    _ => None,
                };
                let value = standard.or_else(|| match claims.other.get(name)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                })?;
                Some((name.clone(), value))
            })
            .collect();
        let client_id = claims.azp.or(claims.client_id).or(claims.appid).or_else(|| claims.sub.clone());
        Ok(Principal {
            issuer: self.issuer.clone(),
            subject: claims.sub,
            client_id,
            scopes,
            expires_at: exp,
            claims: kept,
        })
    }
}

/// The scope a principal lacks for a route, as the `WWW-Authenticate` `scope` parameter: all of
/// `all` that are missing, or `any` (space-separated) when it has none of them.
pub fn missing_scope(principal: &Principal, any: &[String], all: &[String]) -> Option<String> {
    let has = |s: &String| principal.scopes.iter().any(|p| p == s);
    let missing_all: Vec<&str> = all.iter().filter(|s| !has(s)).map(String::as_str).collect();
    if !missing_all.is_empty() {
        return Some(missing_all.join(" "));
    }
    if !any.is_empty() && !any.iter().any(has) {
        return Some(any.join(" "));
    }
    None
}

/// Seconds since the Unix epoch: the clock tokens are checked against on the request path.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An empty or oversized token is refused before it is even hashed.
fn check_size(token: &str) -> Result<(), TokenError> {
    match token.len() {
        0 => Err(TokenError::Missing),
        n if n > MAX_TOKEN_BYTES => Err(TokenError::TooLarge),
        _ => Ok(()),
    }
}

/// Three non-empty base64url parts, the first decoding: checked before any key is looked at.
fn check_shape(token: &str) -> Result<(), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let b64url = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !(b64url(header) && b64url(payload) && b64url(signature)) {
        return Err(TokenError::Malformed);
    }
    // A header that is not base64url is refused here too (decode_header does it again, cheaply,
    // but this keeps garbage away from the key lookup).
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?;
    Ok(())
}

fn numeric(v: &Option<serde_json::Value>) -> Option<u64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

fn numeric_opt(v: &Option<serde_json::Value>) -> Result<Option<u64>, TokenError> {
    match v {
        None => Ok(None),
        Some(_) => numeric(v).map(Some).ok_or(TokenError::Malformed),
    }
}

/// The bearer token of a request: exactly one `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<&str, TokenError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(http::header::AUTHORIZATION) {
            TokenError::Malformed
        } else {
            TokenError::Missing
        });
    };
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    Ok(token.trim())
}

/// Keys from a JWKS document; keys of unsupported types are skipped with their kid in `skipped`.
pub fn keys_from_jwks(text: &str) -> Result<(Vec<ProviderKey>, Vec<String>), String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        match DecodingKey::from_jwk(jwk) {
            Ok(key) if key.family() != jsonwebtoken::AlgorithmFamily::Hmac => keys.push(ProviderKey { kid, key }),
            _ => skipped.push(kid.unwrap_or_else(|| "(no kid)".into())),
        }
    }
    Ok((keys, skipped))
}

/// A PEM public key (RSA, EC or Ed25519), its type read from the PEM itself.
pub fn key_from_pem(pem: &[u8]) -> Result<ProviderKey, String> {
    use openssl::pkey::{Id, PKey};
    let parsed = PKey::public_key_from_pem(pem).map_err(|e| format!("not a PEM public key: {e}"))?;
    let key = match parsed.id() {
        Id::RSA => DecodingKey::from_rsa_pem(pem),
        Id::EC => DecodingKey::from_ec_pem(pem),
        Id::ED25519 => DecodingKey::from_ed_pem(pem),
        other => return Err(format!("unsupported key type {other:?} (RSA, EC or Ed25519)")),
    }
    .map_err(|e| format!("unusable public key: {e}"))?;
    Ok(ProviderKey { kid: None, key })
}

/// Parses an algorithm name of the allowlist; symmetric (HS*) and `none` are never accepted.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name.parse().map_err(|_| format!("`{name}` is not a JWS algorithm"))?;
    if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return Err(format!("`{name}` is a shared-secret algorithm: only public-key algorithms are accepted"));
    }
    Ok(alg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;

    const NOW: u64 = 1_800_000_000;

    struct Keys {
        rsa_private: Vec<u8>,
        rsa_public: Vec<u8>,
        ec_private: Vec<u8>,
        ec_public: Vec<u8>,
    }

    fn keys() -> Keys {
        let rsa = Rsa::generate(2048).unwrap();
        let ec = EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
        let ec = PKey::from_ec_key(ec).unwrap();
        Keys {
            rsa_private: rsa.private_key_to_pem().unwrap(),
            rsa_public: PKey::from_rsa(rsa.clone()).unwrap().public_key_to_pem().unwrap(),
            ec_private: ec.private_key_to_pem_pkcs8().unwrap(),
            ec_public: ec.public_key_to_pem().unwrap(),
        }
    }

    fn provider(k: &Keys) -> JwtProvider {
        let mut rsa = key_from_pem(&k.rsa_public).unwrap();
        rsa.kid = Some("rsa-1".into());
        let mut ec = key_from_pem(&k.ec_public).unwrap();
        ec.kid = Some("ec-1".into());
        JwtProvider::new(
            ProviderSettings {
                name: "idp".into(),
                issuer: "https://idp.example.com".into(),
                audiences: vec!["api://ivr".into(), "api://other".into()],
                algorithms: vec![Algorithm::RS256, Algorithm::ES256],
                leeway_secs: 30,
                scope_claims: vec!["scp".into(), "scope".into(), "roles".into()],
                kept_claims: vec!["tenant".into()],
            },
            vec![rsa, ec],
        )
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({
            "iss": "https://idp.example.com", "aud": "api://ivr", "sub": "genesys",
            "azp": "genesys-client", "exp": NOW + 600, "iat": NOW - 10, "scope": "ivr.read ivr.write"
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn rs256(k: &Keys, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&k.rsa_private).unwrap()).unwrap()
    }

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
    }

    #[test]
    fn the_client_is_azp_then_client_id_then_appid_then_the_subject() {
        let k = keys();
        let p = provider(&k);
        let client = |extra: serde_json::Value| {
            let token = rs256(&k, Some("rsa-1"), &claims(extra));
            p.verify(&token, NOW).unwrap().client_id.clone()
        };
        let both = serde_json::json!({"azp": "by-azp", "client_id": "by-client-id", "appid": "by-appid"});
        assert_eq!(client(both).as_deref(), Some("by-azp"));
        let no_azp = serde_json::json!({"azp": null, "client_id": "by-client-id", "appid": "by-appid"});
        assert_eq!(client(no_azp).as_deref(), Some("by-client-id"));
        assert_eq!(client(serde_json::json!({"azp": null, "appid": "by-appid"})).as_deref(), Some("by-appid"));
        assert_eq!(client(serde_json::json!({"azp": null})).as_deref(), Some("genesys"));
    }

    #[test]
    fn kept_claims_are_in_the_principal_as_text() {
        let k = keys();
        let p = provider(&k);
        let token = rs256(&k, Some("rsa-1"), &claims(serde_json::json!({"tenant": 42})));
        let principal = p.verify(&token, NOW).unwrap();
        assert_eq!(principal.claim("tenant"), Some("42"));
        assert_eq!(principal.claim("scope"), None, "only the claims routes name are kept");
        let token = rs256(&k, Some("rsa-1"), &claims(serde_json::json!({"tenant": "acme"})));
        assert_eq!(p.verify(&token, NOW).unwrap().claim("tenant"), Some("acme"));
    }

    #[test]
    fn a_valid_token_yields_its_principal_and_is_cached() {
        let k = keys();
        let p = provider(&k);
        let token = rs256(&k, Some("rsa-1"), &claims(serde_json::json!({})));
        let principal = p.verify(&token, NOW).unwrap();
        assert_eq!(principal.client_id.as_deref(), Some("genesys-client"));
        assert_eq!(principal.subject.as_deref(), Some("genesys"));
        assert_eq!(principal.scopes, vec!["ivr.read", "ivr.write"]);
        assert!(Arc::ptr_eq(&principal, &p.verify(&token, NOW + 1).unwrap()), "second check missed the cache");
        // Cached, but expired by now: refused.
        assert_eq!(p.verify(&token, NOW + 600 + 31).unwrap_err(), TokenError::Expired);

        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-1".into());
        let ec = jsonwebtoken::encode(
            &header,
            &claims(serde_json::json!({"aud": ["x", "api://other"], "scope": null, "roles": ["A", "B"]})),
            &EncodingKey::from_ec_pem(&k.ec_private).unwrap(),
        )
        .unwrap();
        assert_eq!(p.verify(&ec, NOW).unwrap().scopes, vec!["A", "B"]);
    }

    #[test]
    fn a_withdrawn_key_invalidates_cached_tokens() {
        let k = keys();
        let p = provider(&k);
        let token = rs256(&k, Some("rsa-1"), &claims(serde_json::json!({})));
        assert!(p.verify(&token, NOW).is_ok());
        let mut ec = key_from_pem(&k.ec_public).unwrap();
        ec.kid = Some("ec-1".into());
        p.replace_keys(vec![ec]);
        assert_eq!(p.verify(&token, NOW).unwrap_err(), TokenError::UnknownKey);
        assert_eq!(p.key_count(), 1);
    }

    #[test]
    fn claims_are_checked_with_the_given_clock_and_leeway() {
        let k = keys();
        let p = provider(&k);
        let check = |extra: serde_json::Value| p.verify(&rs256(&k, Some("rsa-1"), &claims(extra)), NOW);
        assert_eq!(check(serde_json::json!({"exp": NOW - 31})).unwrap_err(), TokenError::Expired);
        assert!(check(serde_json::json!({"exp": NOW - 29})).is_ok(), "leeway applies to exp");
        assert_eq!(check(serde_json::json!({"exp": null})).unwrap_err(), TokenError::Malformed);
        assert_eq!(check(serde_json::json!({"nbf": NOW + 60})).unwrap_err(), TokenError::NotYetValid);
        assert!(check(serde_json::json!({"nbf": NOW + 20})).is_ok());
        assert_eq!(check(serde_json::json!({"iat": NOW + 3600})).unwrap_err(), TokenError::IssuedInFuture);
        assert_eq!(check(serde_json::json!({"iss": "https://evil"})).unwrap_err(), TokenError::WrongIssuer);
        assert_eq!(check(serde_json::json!({"aud": "api://nope"})).unwrap_err(), TokenError::WrongAudience);
        assert_eq!(check(serde_json::json!({"aud": null})).unwrap_err(), TokenError::WrongAudience);
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let k = keys();
        let p = provider(&k);
        let good = rs256(&k, Some("rsa-1"), &claims(serde_json::json!({})));
        let (message, _) = good.rsplit_once('.').unwrap();
        let payload = message.split('.').nth(1).unwrap();

        // alg none
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(p.verify(&none, NOW).unwrap_err(), TokenError::Malformed);
        let none_sig = format!("{}.{payload}.AAAA", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(p.verify(&none_sig, NOW).is_err());
        // HS256 "signed" with the RSA public key (the classic algorithm confusion)
        let hs = jsonwebtoken::encode(
            &Header { kid: Some("rsa-1".into()), ..Header::new(Algorithm::HS256) },
            &claims(serde_json::json!({})),
            &EncodingKey::from_secret(&k.rsa_public),
        )
        .unwrap();
        assert_eq!(p.verify(&hs, NOW).unwrap_err(), TokenError::AlgorithmNotAllowed);
        // tampered signature and payload
        let at = good.len() - 20;
        let flipped = if &good[at..at + 1] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
        assert_eq!(p.verify(&tampered, NOW).unwrap_err(), TokenError::BadSignature);
        let other_payload = b64(claims(serde_json::json!({"sub": "admin"})).to_string().as_bytes());
        let swapped = good.replacen(payload, &other_payload, 1);
        assert_eq!(p.verify(&swapped, NOW).unwrap_err(), TokenError::BadSignature);
        // unknown kid; no kid with one RSA key is fine
        assert_eq!(
            p.verify(&rs256(&k, Some("rsa-9"), &claims(serde_json::json!({}))), NOW).unwrap_err(),
            TokenError::UnknownKey
        );
        assert!(p.verify(&rs256(&k, None, &claims(serde_json::json!({}))), NOW).is_ok());
        // truncated, oversized, empty, garbage
        assert_eq!(p.verify(&good[..good.find('.').unwrap() + 5], NOW).unwrap_err(), TokenError::Malformed);
        assert_eq!(p.verify(&good[..good.len() - 10], NOW).unwrap_err(), TokenError::BadSignature);
        assert_eq!(p.verify(&"a".repeat(10 * 1024), NOW).unwrap_err(), TokenError::TooLarge);
        assert_eq!(p.verify("", NOW).unwrap_err(), TokenError::Missing);
        assert_eq!(p.verify("a.b.c.d", NOW).unwrap_err(), TokenError::Malformed);
        assert_eq!(p.verify("!!.??.##", NOW).unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn bearer_tokens_are_read_from_one_authorization_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h).unwrap_err(), TokenError::Missing);
        h.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&h).unwrap(), "abc.def.ghi");
        h.insert("authorization", "bearer  abc.def.ghi ".parse().unwrap());
        assert_eq!(bearer_token(&h).unwrap(), "abc.def.ghi");
        h.insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
        assert_eq!(bearer_token(&h).unwrap_err(), TokenError::Missing);
        h.append("authorization", "Bearer x.y.z".parse().unwrap());
        assert_eq!(bearer_token(&h).unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn key_material_and_algorithms_are_checked() {
        let k = keys();
        assert!(key_from_pem(b"nope").unwrap_err().contains("not a PEM public key"));
        assert!(key_from_pem(&k.rsa_public).is_ok());
        assert!(parse_algorithm("HS256").unwrap_err().contains("shared-secret"));
        assert!(parse_algorithm("none").is_err());
        assert_eq!(parse_algorithm("PS256").unwrap(), Algorithm::PS256);
        let jwks = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let (keys, skipped) = keys_from_jwks(jwks).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ec"));
        assert_eq!(skipped, vec!["hmac"]);
        assert!(keys_from_jwks("[]").unwrap_err().contains("not a JWKS"));
    }
}
