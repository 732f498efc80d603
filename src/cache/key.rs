//! Cache keys (`cache_key_callback`, and the admin API's purge of one entry): the route id, the
//! method, the route's declared `vary` parts and, on a route with a token, the principal (issuer
//! and client) unless the route says `shared: true`. Never the raw `Authorization` value.
//!
//! Each part is written with a presence byte and its length, so no two different requests can
//! spell the same key (`a` + `bc` is not `ab` + `c`; absent is not empty).

use http::Method;
use pingora_cache::key::CacheKey;
use pingora_http::RequestHeader;
use siphasher::sip128::SipHasher13;

use crate::auth::jwt::Principal;
use crate::config::{RouteCacheConfig, VaryPart};
use crate::routing::PathParams;

/// The principal's part of a key: issuer and client id.
pub type PrincipalKey<'a> = (&'a str, &'a str);

/// A key being written: each part with a presence byte and its length.
struct KeyParts(Vec<u8>);

impl KeyParts {
    fn new(route_id: &str, method: &Method) -> KeyParts {
        let mut parts = KeyParts(Vec::with_capacity(128));
        parts.push(Some(route_id.as_bytes()));
        parts.push(Some(method.as_str().as_bytes()));
        parts
    }

    fn push(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.0.push(0),
            Some(bytes) => {
                self.0.push(1);
                self.0.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                self.0.extend_from_slice(bytes);
            }
        }
    }

    fn finish(mut self, route_id: &str, principal: Option<PrincipalKey<'_>>) -> CacheKey {
        match principal {
            Some((issuer, client)) => {
                self.push(Some(issuer.as_bytes()));
                self.push(Some(client.as_bytes()));
            }
            None => self.push(None),
        }
        // The key's hash, everywhere (store, lock): keyed SipHash-1-3 (128 bits) instead of
        // Pingora's default BLAKE2b, a sixth of the work. The key is random per process, so a
        // caller cannot craft a request whose key collides with another's entry.
        let hash = SipHasher13::new_with_key(hash_key()).hash(&self.0).as_bytes();
        let mut key = CacheKey::new(self.0, route_id);
        key.set_primary_bin_override(hash);
        key
    }
}

/// The process's random SipHash key for cache keys.
fn hash_key() -> &'static [u8; 16] {
    static KEY: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 16];
        if openssl::rand::rand_bytes(&mut key).is_err() {
            // Never seen in practice; the key is then only as good as fastrand's seed.
            key = fastrand::u128(..).to_le_bytes();
        }
        key
    })
}

/// Builds a key from its parts, in the route's `vary` order.
pub fn compose<'a>(
    route_id: &str,
    method: &Method,
    values: impl IntoIterator<Item = Option<&'a [u8]>>,
    principal: Option<PrincipalKey<'_>>,
) -> CacheKey {
    let mut parts = KeyParts::new(route_id, method);
    for value in values {
        parts.push(value);
    }
    parts.finish(route_id, principal)
}

/// The key of a request on a cached route (after auth, so the principal is known).
pub fn request_key(
    route_id: &str,
    config: &RouteCacheConfig,
    request: &RequestHeader,
    params: &PathParams,
    principal: Option<&Principal>,
) -> CacheKey {
    let mut parts = KeyParts::new(route_id, &request.method);
    for part in &config.vary {
        match part {
            VaryPart::Path(name) => parts.push(params.get(name).map(str::as_bytes)),
            VaryPart::Query(name) => {
                let query = request.uri.query().unwrap_or("");
                let value = form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, v)| v);
                parts.push(value.as_deref().map(str::as_bytes));
            }
            VaryPart::Header(name) => {
                let values = request.headers.get_all(name);
                if values.iter().nth(1).is_none() {
                    parts.push(values.iter().next().map(|v| v.as_bytes()));
                } else {
                    // Sent more than once (rare): every value, in order, is the part.
                    let joined = values.iter().map(|v| v.as_bytes()).collect::<Vec<_>>().join(&b"\n"[..]);
                    parts.push(Some(&joined));
                }
            }
            VaryPart::Claim(name) => parts.push(principal.and_then(|p| p.claim(name)).map(str::as_bytes)),
        }
    }
    let principal =
        principal.filter(|_| config.per_principal).map(|p| (p.issuer.as_str(), p.client_id.as_deref().unwrap_or("")));
    parts.finish(route_id, principal)
}

/// The keys (GET and HEAD) of one entry named in an admin purge query:
/// `path.accountId=42&principal=ISSUER+CLIENT` (the principal's issuer and client id joined by a
/// space, which `+` spells in a query).
pub fn purge_keys(route_id: &str, config: &RouteCacheConfig, query: &str) -> Result<Vec<CacheKey>, String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let mut names: Vec<String> = config.vary.iter().map(VaryPart::label).collect();
    if config.per_principal {
        names.push("principal".into());
    }
    if let Some((unknown, _)) = pairs.iter().find(|(name, _)| !names.contains(name)) {
        return Err(format!("`{unknown}` is not part of this route's cache key (known: {})", names.join(", ")));
    }
    let value = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let missing: Vec<&str> = names.iter().map(String::as_str).filter(|name| value(name).is_none()).collect();
    if !missing.is_empty() {
        return Err(format!("name every part of the key; missing: {}", missing.join(", ")));
    }
    let principal = match value("principal") {
        Some(p) => Some(p.split_once(' ').ok_or("`principal` is the issuer and the client id, joined by `+`")?),
        None => None,
    };
    let values: Vec<&[u8]> = config.vary.iter().filter_map(|part| value(&part.label())).map(str::as_bytes).collect();
    Ok([Method::GET, Method::HEAD]
        .iter()
        .map(|method| compose(route_id, method, values.iter().map(|v| Some(*v)), principal))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::CacheHashKey;
    use std::time::Duration;

    fn config(vary: Vec<VaryPart>) -> RouteCacheConfig {
        RouteCacheConfig {
            ttl: Duration::from_secs(60),
            honor_origin: true,
            vary,
            per_principal: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            negative_ttl: Duration::ZERO,
        }
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (name, value) in headers {
            r.append_header(name.to_string(), *value).unwrap();
        }
        r
    }

    fn hash(key: &CacheKey) -> u128 {
        u128::from_be_bytes(key.combined_bin())
    }

    #[test]
    fn parts_cannot_run_into_each_other() {
        let a = compose("r", &Method::GET, [Some(&b"a"[..]), Some(&b"bc"[..])], None);
        let b = compose("r", &Method::GET, [Some(&b"ab"[..]), Some(&b"c"[..])], None);
        let absent = compose("r", &Method::GET, [None, Some(&b"c"[..])], None);
        let empty = compose("r", &Method::GET, [Some(&b""[..]), Some(&b"c"[..])], None);
        assert_ne!(hash(&a), hash(&b));
        assert_ne!(hash(&absent), hash(&empty));
        assert_ne!(hash(&a), hash(&compose("r", &Method::HEAD, [Some(&b"a"[..]), Some(&b"bc"[..])], None)));
        assert_ne!(hash(&a), hash(&compose("s", &Method::GET, [Some(&b"a"[..]), Some(&b"bc"[..])], None)));
    }

    #[test]
    fn only_declared_parts_select_the_entry() {
        let c =
            config(vec![VaryPart::Query("lang".into()), VaryPart::Header(http::HeaderName::from_static("x-tenant"))]);
        let params = PathParams::default();
        let key =
            |uri: &str, headers: &[(&str, &str)]| hash(&request_key("r", &c, &request(uri, headers), &params, None));
        let base = key("/a?lang=en&x=1", &[("x-tenant", "t1"), ("user-agent", "a")]);
        assert_eq!(base, key("/a?x=2&lang=en", &[("x-tenant", "t1"), ("user-agent", "b")]));
        assert_eq!(base, key("/a?lang=%65n", &[("x-tenant", "t1")]), "query values are compared decoded");
        assert_ne!(base, key("/a?lang=fr", &[("x-tenant", "t1")]));
        assert_ne!(base, key("/a?lang=en", &[("x-tenant", "t2")]));
        assert_ne!(base, key("/a?lang=en", &[]));
        let twice = key("/a?lang=en", &[("x-tenant", "t1"), ("x-tenant", "t2")]);
        assert_ne!(base, twice, "every value of a repeated header is in the key");
        assert_eq!(twice, key("/a?lang=en", &[("x-tenant", "t1"), ("x-tenant", "t2")]));
    }

    #[test]
    fn principals_get_their_own_entries() {
        let c = config(vec![]);
        let principal = |client: &str| Principal {
            issuer: "https://idp".into(),
            subject: None,
            client_id: Some(client.into()),
            scopes: vec![],
            expires_at: 0,
            claims: vec![],
        };
        let (a, b) = (principal("a"), principal("b"));
        let req = request("/x", &[]);
        let params = PathParams::default();
        let mut c = c;
        c.per_principal = true;
        let by = |c: &RouteCacheConfig, p: &Principal| hash(&request_key("r", c, &req, &params, Some(p)));
        assert_ne!(by(&c, &a), by(&c, &b));
        c.per_principal = false;
        assert_eq!(by(&c, &a), by(&c, &b), "shared: one entry for every caller");
    }

    #[test]
    fn a_purge_query_names_the_same_key_as_the_request() {
        let mut c = config(vec![VaryPart::Query("id".into())]);
        c.per_principal = true;
        let principal = Principal {
            issuer: "https://idp/x".into(),
            subject: None,
            client_id: Some("genesys".into()),
            scopes: vec![],
            expires_at: 0,
            claims: vec![],
        };
        let req = request("/a?id=42", &[]);
        let from_request = hash(&request_key("r", &c, &req, &PathParams::default(), Some(&principal)));
        let keys = purge_keys("r", &c, "query.id=42&principal=https%3A%2F%2Fidp%2Fx+genesys").unwrap();
        assert_eq!(hash(&keys[0]), from_request);
        assert!(purge_keys("r", &c, "query.id=42").unwrap_err().contains("missing: principal"));
        assert!(purge_keys("r", &c, "path.id=1").unwrap_err().contains("not part of"));
        c.per_principal = false;
        assert!(purge_keys("r", &c, "query.id=42&principal=a+b").is_err());
    }
}
