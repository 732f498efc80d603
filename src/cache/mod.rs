//! The GET cache, on pingora-cache: which requests use it and under which key
//! (`request_cache_filter`, `cache_key_callback`), which answers are stored and for how long
//! (`response_cache_filter`), and what the caller is told (`Cache-Status`, RFC 9211).
//!
//! Concurrent misses on one key are one upstream request: Pingora's cache lock elects a writer
//! and the others wait, each for at most what is left of its deadline. The lock here keeps that
//! single flight when the writer fails (a 5xx or no answer): the next waiter becomes the writer,
//! instead of every waiter going to the backend at once. Only an answer the origin forbids to
//! store (`no-store`, `private`, ...) releases the waiters together, as no entry can serve them.

pub mod key;
pub mod store;

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::filters::calculate_expires_header_time;
use pingora_cache::key::CacheKey;
use pingora_cache::lock::{CacheKeyLock, CacheLock, LockStatus, Locked, WritePermit};
use pingora_cache::{CacheMeta, CacheOptionOverrides, CachePhase, HttpCache, NoCacheReason, RespCacheable};
use pingora_http::ResponseHeader;

use crate::clock::Clock;
use crate::config::{CacheStorageConfig, RouteCacheConfig, VaryPart};
use crate::request_id::X_REQUEST_ID;
use store::CacheStore;

/// How many times a waiter may wait on a new writer; time (its deadline) is the real bound.
const MAX_LOCK_RETRIES: usize = 1 << 16;

/// What one cached request's lookup came to (the `result` label of
/// `seawall_cache_lookups_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// A fresh entry.
    Hit,
    /// Went to the backend (no entry, an expired one, or one that could not be used).
    Miss,
    /// An expired entry served while it is refreshed, or because the backend failed.
    Stale,
    /// Waited for another request's fill, then served from it.
    Coalesced,
}

impl CacheResult {
    pub const ALL: [CacheResult; 4] = [CacheResult::Hit, CacheResult::Miss, CacheResult::Stale, CacheResult::Coalesced];

    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Coalesced => "coalesced",
        }
    }

    /// The result of a request whose cache was enabled, from Pingora's cache phase at the end.
    pub fn of(cache: &HttpCache) -> CacheResult {
        match cache.phase() {
            CachePhase::Hit if cache.lock_duration().is_some() => CacheResult::Coalesced,
            CachePhase::Hit => CacheResult::Hit,
            CachePhase::Stale | CachePhase::StaleUpdating => CacheResult::Stale,
            _ => CacheResult::Miss,
        }
    }
}

/// The `Cache-Status` value for an answer about to be sent (RFC 9211), e.g.
/// `seawall; hit; ttl=42` or `seawall; fwd=miss; stored`.
pub fn cache_status(cache: &HttpCache) -> String {
    let ttl = cache.maybe_cache_meta().map(|meta| {
        let now = SystemTime::now();
        match meta.fresh_until().duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs().max(1) as i64),
        }
    });
    let ttl = ttl.map(|t| format!("; ttl={t}")).unwrap_or_default();
    match cache.phase() {
        CachePhase::Hit if cache.lock_duration().is_some() => format!("seawall; hit{ttl}; detail=coalesced"),
        CachePhase::Hit => format!("seawall; hit{ttl}"),
        CachePhase::StaleUpdating => format!("seawall; hit{ttl}; detail=stale-while-revalidate"),
        // An expired entry is answered in this phase only when the backend failed (a refresh
        // behind a stale answer is `StaleUpdating`).
        CachePhase::Stale => format!("seawall; fwd=stale{ttl}; detail=stale-if-error"),
        CachePhase::Expired if cache.enabled() => "seawall; fwd=stale; stored".into(),
        CachePhase::Expired => "seawall; fwd=stale".into(),
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
            format!("seawall; fwd=stale; fwd-status=304{ttl}")
        }
        CachePhase::Miss if cache.enabled() => "seawall; fwd=miss; stored".into(),
        _ => "seawall; fwd=miss".into(),
    }
}

/// Stores an answer the gateway made itself (a mediation's) as this request's fill, as Pingora
/// stores a proxied one, and releases the key's waiters to it. `false`: not stored (the answer
/// is not cacheable, or the request is not the key's writer).
pub async fn fill(cache: &mut HttpCache, config: &RouteCacheConfig, header: &ResponseHeader, body: Bytes) -> bool {
    // (`Expired` is only ever entered from `Stale` by `set_cache_meta` below.)
    if !matches!(cache.phase(), CachePhase::Miss | CachePhase::Stale) {
        return false;
    }
    if cache.max_file_size_bytes().is_some_and(|max| body.len() > max) {
        return false;
    }
    let RespCacheable::Cacheable(meta) = cacheability(config, header) else {
        return false;
    };
    cache.set_cache_meta(meta);
    if cache.set_miss_handler().await.is_err() {
        return false;
    }
    let written = match cache.miss_handler() {
        Some(handler) => handler.write_body(body, true).await.is_ok(),
        None => false,
    };
    written && cache.finish_miss_handler().await.is_ok()
}

/// The shared cache: its store, its lock and the object size bound.
pub struct ResponseCache {
    pub store: &'static CacheStore,
    lock: &'static SingleFlight,
    max_object_bytes: usize,
}

impl ResponseCache {
    /// `longest_deadline`: the longest deadline of a cached route. A writer may hold a key's
    /// lock that long before waiters elect another.
    ///
    /// The store and lock live for the rest of the process (Pingora takes them as `'static`).
    pub fn new(
        storage: &CacheStorageConfig,
        route_ids: &[&str],
        clock: Clock,
        longest_deadline: Duration,
    ) -> ResponseCache {
        let store = Box::leak(Box::new(CacheStore::new(storage.max_bytes, route_ids, clock)));
        let lock = CacheLock::new(longest_deadline + Duration::from_secs(1));
        let lock = Box::leak(Box::new(SingleFlight { lock, store }));
        ResponseCache { store, lock, max_object_bytes: storage.max_object_bytes as usize }
    }

    /// Turns the cache on for one request; a waiter gives up on another's fill after `wait`.
    pub fn enable(&self, cache: &mut HttpCache, wait: Duration) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(wait);
        overrides.max_lock_retries = Some(MAX_LOCK_RETRIES);
        cache.enable(self.store, None, None, Some(self.lock), Some(overrides));
        cache.set_max_file_size_bytes(self.max_object_bytes);
    }
}

/// A fresh entry answered straight from the store, before Pingora's cache phases (which cost
/// a fifth of a hit's CPU: lock bookkeeping, a second header copy, range and conditional
/// filters). Only for plain GETs: a `Range` or conditional request, HEAD, and anything not
/// fresh go the whole way.
pub fn fresh_answer(
    cache: &ResponseCache,
    request: &pingora_http::RequestHeader,
    key: &CacheKey,
    request_id: &http::HeaderValue,
) -> Option<(ResponseHeader, bytes::Bytes)> {
    use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, RANGE};
    // One pass over the request's few names (cheaper than three hashed lookups).
    if request.method != http::Method::GET
        || request.headers.keys().any(|name| name == RANGE || name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE)
    {
        return None;
    }
    let fresh = cache.store.fresh(key)?;
    // RFC 9111 section 4: a stored answer used without validation carries `Age`.
    let age = http::HeaderValue::from(fresh.age_secs);
    let mut status = BytesMut::with_capacity(HIT_STATUS.len() + 10);
    status.extend_from_slice(HIT_STATUS);
    status.extend_from_slice(itoa::Buffer::new().format(fresh.ttl_secs).as_bytes());
    let status = http::HeaderValue::from_maybe_shared(status.freeze()).ok()?;
    // Built from the fields prepared at store time, written lower case (no case map: fresh
    // hits skip its bookkeeping), with typed names: no name is parsed per hit. The stored map
    // holds a placeholder for each of `HIT_FIELDS`, filled in one pass without hashing.
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = fresh.header().status;
    parts.headers = fresh.hit_headers().clone();
    let mut per_hit = [Some(age), Some(status), Some(request_id.clone())];
    for (name, value) in parts.headers.iter_mut() {
        if let Some(slot) = HIT_FIELDS.iter().position(|field| field == name) {
            if let Some(own) = per_hit[slot].take() {
                *value = own;
            }
        }
    }
    Some((ResponseHeader::from(parts), fresh.body()))
}

/// RFC 9211's field.
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");
/// `Cache-Status` of a fresh hit, before its remaining TTL.
const HIT_STATUS: &[u8] = b"seawall; hit; ttl=";
/// The fields [`fresh_answer`] sets on every hit.
const HIT_FIELDS: [http::HeaderName; 3] = [http::header::AGE, CACHE_STATUS, X_REQUEST_ID];

/// Pingora's cache lock, with one change that keeps a herd to one backend request: Pingora
/// looks a key up, then locks it on a miss, so a fill that completes in between would make this
/// request a second writer. It is told to look again instead. (A writer whose backend failed
/// hands the lock to the next waiter: Pingora's own `UpstreamError` handling, see
/// [`cacheability`].)
struct SingleFlight {
    lock: CacheLock,
    store: &'static CacheStore,
}

impl CacheKeyLock for SingleFlight {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        match self.lock.lock(key, stale_writer) {
            Locked::Write(permit) if !stale_writer && self.store.contains(key) => {
                // Filled since this request's lookup: release at once (waking anyone who joined)
                // and wait on a lock that is already done, which means "look up again".
                self.lock.release(key, permit, LockStatus::Done);
                let (mut done, stub) = WritePermit::new(Duration::ZERO, false, http::Extensions::new());
                let reader = stub.read_lock();
                done.unlock(LockStatus::Done);
                Locked::Read(reader)
            }
            locked => locked,
        }
    }

    fn release(&self, key: &CacheKey, permit: WritePermit, reason: LockStatus) {
        self.lock.release(key, permit, reason)
    }
}

/// Whether and for how long an answer is stored (`response_cache_filter`).
///
/// Stored: 2xx answers other than 206, and 404 with `negative_ttl_secs`; never one that sets a
/// cookie. With `origin_cache_control: honor`, `no-store`, `private` and `no-cache` forbid
/// storing, a `Vary` the key does not cover too, and `s-maxage` / `max-age` / `Expires` give the
/// freshness before `ttl_secs` does. With `ignore`, `ttl_secs` always does.
pub fn cacheability(config: &RouteCacheConfig, response: &ResponseHeader) -> RespCacheable {
    use RespCacheable::{Cacheable, Uncacheable};
    let status = response.status.as_u16();
    if status >= 500 {
        // Pingora then hands the lock to the next waiter (`TransientError`), rather than
        // releasing every waiter to the failing backend.
        return Uncacheable(NoCacheReason::UpstreamError);
    }
    let default_ttl = match status {
        200..=299 if status != 206 => config.ttl,
        404 if !config.negative_ttl.is_zero() => config.negative_ttl,
        _ => return Uncacheable(NoCacheReason::OriginNotCache),
    };
    if response.headers.contains_key(http::header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    let (mut fresh_for, mut stale_while_revalidate, mut stale_if_error) =
        (default_ttl, config.stale_while_revalidate, config.stale_if_error);
    if config.honor_origin {
        let directives = CacheControl::from_resp_headers(response);
        if directives.as_ref().is_some_and(|cc| cc.no_store() || cc.private()) || !vary_is_covered(config, response) {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        // Pingora's reading of RFC 9111 and 5861: `no-cache` is fresh for 0 s (not stored);
        // `must-revalidate`, `proxy-revalidate` and `s-maxage` forbid stale answers; the
        // origin's own `stale-*` windows win over the route's.
        if let Some(cc) = &directives {
            stale_while_revalidate = cc.serve_stale_while_revalidate_duration().unwrap_or(stale_while_revalidate);
            stale_if_error = cc.serve_stale_if_error_duration().unwrap_or(stale_if_error);
        }
        let origin = directives.as_ref().and_then(|cc| cc.fresh_duration()).or_else(|| {
            calculate_expires_header_time(response).map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
        });
        fresh_for = origin.unwrap_or(default_ttl);
    }
    if fresh_for.is_zero() {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    let secs = |d: Duration| d.as_secs().min(crate::config::defaults::CACHE_MAX_SECS) as u32;
    Cacheable(CacheMeta::new(
        now + fresh_for,
        now,
        secs(stale_while_revalidate),
        secs(stale_if_error),
        response.clone(),
    ))
}

/// Whether every header the origin's `Vary` names is part of the route's key.
fn vary_is_covered(config: &RouteCacheConfig, response: &ResponseHeader) -> bool {
    response.headers.get_all(http::header::VARY).iter().all(|value| {
        let Ok(value) = value.to_str() else { return false };
        value.split(',').map(str::trim).filter(|name| !name.is_empty()).all(|name| {
            name != "*"
                && config
                    .vary
                    .iter()
                    .any(|part| matches!(part, VaryPart::Header(h) if h.as_str().eq_ignore_ascii_case(name)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(honor: bool) -> RouteCacheConfig {
        RouteCacheConfig {
            ttl: Duration::from_secs(60),
            honor_origin: honor,
            vary: vec![VaryPart::Header(http::HeaderName::from_static("accept-language"))],
            per_principal: false,
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(300),
            negative_ttl: Duration::ZERO,
        }
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            r.append_header(name.to_string(), *value).unwrap();
        }
        r
    }

    fn fresh_secs(c: RespCacheable) -> Option<u64> {
        match c {
            RespCacheable::Cacheable(meta) => Some(meta.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[tokio::test]
    async fn a_request_that_missed_just_before_a_fill_looks_again_instead_of_writing() {
        use pingora_cache::storage::Storage;
        let storage = CacheStorageConfig { max_bytes: 1 << 20, max_object_bytes: 1 << 16 };
        let cache = ResponseCache::new(&storage, &["r"], Clock::default(), Duration::from_secs(2));
        let key = key::compose("r", &http::Method::GET, [Some(&b"42"[..])], None);
        // Nothing stored: the first request to miss becomes the writer, the next one waits.
        let Locked::Write(permit) = cache.lock.lock(&key, false) else { panic!("the first miss must write") };
        assert!(matches!(cache.lock.lock(&key, false), Locked::Read(_)));
        cache.lock.release(&key, permit, LockStatus::Done);

        // The fill completes between a request's lookup and its lock: it must not write again.
        let span = pingora_cache::trace::Span::inactive().handle();
        let meta = match cacheability(&config(true), &response(200, &[])) {
            RespCacheable::Cacheable(meta) => meta,
            RespCacheable::Uncacheable(r) => panic!("{r:?}"),
        };
        let mut fill = cache.store.get_miss_handler(&key, &meta, &span).await.unwrap();
        fill.write_body(bytes::Bytes::from_static(b"{}"), true).await.unwrap();
        fill.finish().await.unwrap();
        match cache.lock.lock(&key, false) {
            Locked::Read(reader) => assert_eq!(reader.lock_status(), LockStatus::Done),
            Locked::Write(_) => panic!("a second writer for a stored key"),
        }
        // A revalidation of a stale entry still gets to write.
        let Locked::Write(permit) = cache.lock.lock(&key, true) else { panic!("a revalidation must write") };
        cache.lock.release(&key, permit, LockStatus::Done);
    }

    #[tokio::test]
    async fn a_fresh_hit_sends_the_stored_fields_and_sets_its_own() {
        use pingora_cache::storage::Storage;
        let storage = CacheStorageConfig { max_bytes: 1 << 20, max_object_bytes: 1 << 16 };
        let cache = ResponseCache::new(&storage, &["r"], Clock::default(), Duration::from_secs(2));
        let key = key::compose("r", &http::Method::GET, [Some(&b"7"[..])], None);
        let stored = response(200, &[("content-type", "application/json"), ("age", "30"), ("x-backend", "crm")]);
        let RespCacheable::Cacheable(meta) = cacheability(&config(true), &stored) else { panic!("not stored") };
        let span = pingora_cache::trace::Span::inactive().handle();
        let mut fill = cache.store.get_miss_handler(&key, &meta, &span).await.unwrap();
        fill.write_body(bytes::Bytes::from_static(b"{\"id\":7}"), true).await.unwrap();
        fill.finish().await.unwrap();

        let request = pingora_http::RequestHeader::build("GET", b"/c/7", None).unwrap();
        let id = http::HeaderValue::from_static("req-1");
        for _ in 0..2 {
            // Twice: a hit changes its own copy of the fields, never the stored ones.
            let (header, body) = fresh_answer(&cache, &request, &key, &id).expect("a fresh hit");
            assert_eq!(&body[..], b"{\"id\":7}");
            let h = &header.headers;
            assert_eq!(h["content-type"], "application/json");
            assert_eq!(h["x-backend"], "crm");
            assert_eq!(h["content-length"], "8");
            // As Pingora's cache path answers a 200: ranged requests for it are served there.
            assert_eq!(h["accept-ranges"], "bytes");
            assert_eq!(h["x-request-id"], "req-1");
            assert!(h["cache-status"].to_str().unwrap().starts_with("seawall; hit; ttl="), "{h:?}");
            // The store's own age, not the origin's.
            assert_eq!(h.get_all("age").iter().count(), 1);
            assert!(h["age"].to_str().unwrap().parse::<u64>().unwrap() < 30, "{h:?}");
            assert!(h.values().all(|v| !v.is_empty()), "a placeholder left empty: {h:?}");
            // Pingora replaces these two as it writes; what is in place is valid on its own.
            assert_eq!(h["connection"], "keep-alive");
            assert!(h.contains_key("date"));
        }
    }

    #[test]
    fn the_route_ttl_applies_when_the_origin_says_nothing() {
        let meta = match cacheability(&config(true), &response(200, &[])) {
            RespCacheable::Cacheable(meta) => meta,
            RespCacheable::Uncacheable(r) => panic!("not stored: {r:?}"),
        };
        assert_eq!(meta.fresh_sec(), 60);
        assert_eq!(meta.stale_while_revalidate_sec(), 5);
        assert_eq!(meta.stale_if_error_sec(), 300);
    }

    #[test]
    fn origin_directives_win_when_honored() {
        let c = config(true);
        assert_eq!(fresh_secs(cacheability(&c, &response(200, &[("cache-control", "max-age=7")]))), Some(7));
        assert_eq!(
            fresh_secs(cacheability(&c, &response(200, &[("cache-control", "s-maxage=9, max-age=7")]))),
            Some(9)
        );
        for forbidding in ["no-store", "private", "no-cache", "max-age=0"] {
            assert_eq!(
                fresh_secs(cacheability(&c, &response(200, &[("cache-control", forbidding)]))),
                None,
                "{forbidding}"
            );
        }
        assert_eq!(fresh_secs(cacheability(&c, &response(200, &[("vary", "*")]))), None);
        assert_eq!(fresh_secs(cacheability(&c, &response(200, &[("vary", "Cookie")]))), None);
        assert_eq!(fresh_secs(cacheability(&c, &response(200, &[("vary", "Accept-Language")]))), Some(60));
    }

    #[test]
    fn the_origin_may_forbid_or_set_stale_windows_when_honored() {
        let stale = |c: &RouteCacheConfig, cc: &str| match cacheability(c, &response(200, &[("cache-control", cc)])) {
            RespCacheable::Cacheable(meta) => (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec()),
            RespCacheable::Uncacheable(r) => panic!("{cc}: not stored: {r:?}"),
        };
        let honored = config(true);
        assert_eq!(stale(&honored, "max-age=7"), (5, 300), "the route's windows when the origin says nothing");
        assert_eq!(stale(&honored, "max-age=7, must-revalidate"), (0, 0), "RFC 9111: no stale answers");
        assert_eq!(stale(&honored, "max-age=7, stale-while-revalidate=9, stale-if-error=60"), (9, 60));
        assert_eq!(stale(&config(false), "max-age=7, must-revalidate"), (5, 300), "ignored when told");
    }

    #[test]
    fn origin_directives_are_ignored_when_told() {
        let c = config(false);
        assert_eq!(fresh_secs(cacheability(&c, &response(200, &[("cache-control", "no-store")]))), Some(60));
        assert_eq!(fresh_secs(cacheability(&c, &response(200, &[("cache-control", "max-age=7")]))), Some(60));
    }

    #[test]
    fn only_successes_and_declared_404s_are_stored() {
        let mut c = config(true);
        for status in [206, 301, 400, 401, 403, 404, 429] {
            assert_eq!(fresh_secs(cacheability(&c, &response(status, &[]))), None, "{status}");
        }
        assert!(matches!(
            cacheability(&c, &response(503, &[])),
            RespCacheable::Uncacheable(NoCacheReason::UpstreamError)
        ));
        assert_eq!(fresh_secs(cacheability(&c, &response(200, &[("set-cookie", "a=b")]))), None);
        c.negative_ttl = Duration::from_secs(10);
        assert_eq!(fresh_secs(cacheability(&c, &response(404, &[]))), Some(10));
    }
}
