//! Cache keys (`cache_key_callback`, and the admin API's purge of one entry): the route id, the
//! method, the route's declared `vary` parts and, on a route with a token, the principal (issuer
//! and client) unless the route says `shared: true`. Never the raw `Authorization` value.
//!
//! Each part is written with a presence byte and its length, so no two different requests can
//! spell the same key (`a` + `bc` is not `ab` + `c`; absent is not empty).

use http::Method;
use pingora_cache::key::CacheKey;
use pingora_http::RequestHeader;

use crate::auth::jwt::Principal;
use crate::config::{RouteCacheConfig, VaryPart};
use crate::routing::PathParams;

/// The principal's part of a key: issuer and client id.
pub type PrincipalKey<'a> = (&'a str, &'a str);

/// Builds a key from its parts, in the route's `vary` order.
pub fn compose<'a>(
    route_id: &str,
    method: &Method,
    values: impl IntoIterator<Item = Option<&'a [u8]>>,
    principal: Option<PrincipalKey<'_>>,
) -> CacheKey {
    let mut primary = Vec::with_capacity(128);
    let mut part = |value: Option<&[u8]>| match value {
        None => primary.push(0),
        Some(bytes) => {
            primary.push(1);
            primary.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            primary.extend_from_slice(bytes);
        }
    };
    part(Some(route_id.as_bytes()));
    part(Some(method.as_str().as_bytes()));
    for value in values {
        part(value);
    }
    match principal {
        Some((issuer, client)) => {
            part(Some(issuer.as_bytes()));
            part(Some(client.as_bytes()));
        }
        None => part(None),
    }
    CacheKey::new(primary, route_id)
}

/// Whether the route's entries are per principal.
pub fn keyed_by_principal(config: &RouteCacheConfig, has_token: bool) -> bool {
    has_token && !config.shared
}

/// The key of a request on a cached route (after auth, so the principal is known).
pub fn request_key(
    route_id: &str,
    config: &RouteCacheConfig,
    by_principal: bool,
    request: &RequestHeader,
    params: &PathParams,
    principal: Option<&Principal>,
) -> CacheKey {
    let query = request.uri.query().unwrap_or("");
    let values: Vec<Option<Vec<u8>>> = config
        .vary
        .iter()
        .map(|part| match part {
            VaryPart::Path(name) => params.get(name).map(|v| v.as_bytes().to_vec()),
            VaryPart::Query(name) => form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned().into_bytes()),
            VaryPart::Header(name) => {
                let mut all = request.headers.get_all(name).iter().peekable();
                all.peek()?;
                Some(all.map(|v| v.as_bytes()).collect::<Vec<_>>().join(&b"\n"[..]))
            }
            VaryPart::Claim(name) => principal.and_then(|p| p.claim(name)).map(|v| v.as_bytes().to_vec()),
        })
        .collect();
    let principal =
        by_principal.then(|| principal.map(|p| (p.issuer.as_str(), p.client_id.as_deref().unwrap_or("")))).flatten();
    compose(route_id, &request.method, values.iter().map(|v| v.as_deref()), principal)
}

/// The keys (GET and HEAD) of one entry named in an admin purge query:
/// `path.accountId=42&principal=ISSUER+CLIENT` (the principal's issuer and client id joined by a
/// space, which `+` spells in a query).
pub fn purge_keys(
    route_id: &str,
    config: &RouteCacheConfig,
    by_principal: bool,
    query: &str,
) -> Result<Vec<CacheKey>, String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let labels: Vec<String> = config.vary.iter().map(VaryPart::label).collect();
    for (name, _) in &pairs {
        let known = labels.contains(name) || (by_principal && name == "principal");
        if !known {
            let mut known = labels.clone();
            if by_principal {
                known.push("principal".into());
            }
            return Err(format!("`{name}` is not part of this route's cache key (known: {})", known.join(", ")));
        }
    }
    let value = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let missing: Vec<&str> = labels
        .iter()
        .map(String::as_str)
        .chain(by_principal.then_some("principal"))
        .filter(|name| value(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!("name every part of the key; missing: {}", missing.join(", ")));
    }
    let principal = match value("principal") {
        Some(p) => Some(p.split_once(' ').ok_or("`principal` is the issuer and the client id, joined by `+`")?),
        None => None,
    };
    let values: Vec<&[u8]> = labels.iter().filter_map(|name| value(name)).map(str::as_bytes).collect();
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
            shared: false,
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
        let key = |uri: &str, headers: &[(&str, &str)]| {
            hash(&request_key("r", &c, false, &request(uri, headers), &params, None))
        };
        let base = key("/a?lang=en&x=1", &[("x-tenant", "t1"), ("user-agent", "a")]);
        assert_eq!(base, key("/a?x=2&lang=en", &[("x-tenant", "t1"), ("user-agent", "b")]));
        assert_eq!(base, key("/a?lang=%65n", &[("x-tenant", "t1")]), "query values are compared decoded");
        assert_ne!(base, key("/a?lang=fr", &[("x-tenant", "t1")]));
        assert_ne!(base, key("/a?lang=en", &[("x-tenant", "t2")]));
        assert_ne!(base, key("/a?lang=en", &[]));
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
        let by = |p: &Principal, by_principal| hash(&request_key("r", &c, by_principal, &req, &params, Some(p)));
        assert_ne!(by(&a, true), by(&b, true));
        assert_eq!(by(&a, false), by(&b, false), "shared: one entry for every caller");
    }

    #[test]
    fn a_purge_query_names_the_same_key_as_the_request() {
        let c = config(vec![VaryPart::Query("id".into())]);
        let principal = Principal {
            issuer: "https://idp/x".into(),
            subject: None,
            client_id: Some("genesys".into()),
            scopes: vec![],
            expires_at: 0,
            claims: vec![],
        };
        let req = request("/a?id=42", &[]);
        let from_request = hash(&request_key("r", &c, true, &req, &PathParams::default(), Some(&principal)));
        let keys = purge_keys("r", &c, true, "query.id=42&principal=https%3A%2F%2Fidp%2Fx+genesys").unwrap();
        assert_eq!(hash(&keys[0]), from_request);
        assert!(purge_keys("r", &c, true, "query.id=42").unwrap_err().contains("missing: principal"));
        assert!(purge_keys("r", &c, true, "path.id=1").unwrap_err().contains("not part of"));
        assert!(purge_keys("r", &c, false, "query.id=42&principal=a+b").is_err());
    }
}
