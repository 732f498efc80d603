//! The cache's storage: one in-memory store for every route, bounded in bytes with TinyUFO
//! eviction (pingora-cache's own `MemCache` is unbounded and "for testing"). Pingora calls it
//! through the [`Storage`] trait: `lookup` on every cached request, a miss handler to fill an
//! entry, `update_meta` after a 304 revalidation, `purge`. The admin API purges a whole route
//! (every entry of a route is indexed) or one entry.
//!
//! Times are kept on the gateway's [`Clock`] and handed to Pingora as `SystemTime`s rebased on
//! the real clock at each lookup, so freshness, stale windows and `Age` follow the gateway clock
//! (tests move it instead of sleeping).

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, CacheKey, CompactCacheKey};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use tinyufo::TinyUfo;

use crate::clock::Clock;

/// Eviction weights are 16-bit: entries are weighed in units of this many bytes.
const WEIGHT_UNIT: usize = 256;
/// What an entry costs beside its body and headers: the entry itself, its index slot, TinyUFO's
/// bucket and queue nodes.
const ENTRY_OVERHEAD: usize = 256;
/// Per header line beside its name and value (the header map's slot, the case-preserving copy).
const HEADER_OVERHEAD: usize = 48;

/// One stored answer.
struct Entry {
    /// The full key hash: TinyUFO keeps only a 64-bit hash of it.
    key: u128,
    route: usize,
    /// The route's purge generation when stored; a whole-route purge moves it on.
    generation: u64,
    header: ResponseHeader,
    /// `header`'s fields as a fresh hit sends them (no `Transfer-Encoding`, the body's
    /// `Content-Length`), made once when the entry is stored.
    hit_headers: http::HeaderMap,
    body: Bytes,
    freshness: Freshness,
    bytes: usize,
}

impl Entry {
    /// An entry, with what derives from its header and body: its weight and the fields a hit sends.
    fn new(
        key: u128,
        route: usize,
        generation: u64,
        header: ResponseHeader,
        body: Bytes,
        freshness: Freshness,
    ) -> Entry {
        Entry {
            bytes: entry_bytes(&header, body.len()),
            hit_headers: hit_headers(&header, body.len()),
            key,
            route,
            generation,
            header,
            body,
            freshness,
        }
    }
}

/// An entry's times, on the gateway clock, and its stale windows.
#[derive(Clone, Copy)]
struct Freshness {
    created: Duration,
    fresh_until: Duration,
    stale_while_revalidate_secs: u32,
    stale_if_error_secs: u32,
}

/// One moment on both clocks, to move times between Pingora's `SystemTime`s and the gateway's.
struct Now {
    system: SystemTime,
    clock: Duration,
}

impl Now {
    fn of(clock: &Clock) -> Now {
        Now { system: SystemTime::now(), clock: clock.elapsed() }
    }

    fn to_system(&self, at: Duration) -> SystemTime {
        if at >= self.clock {
            self.system + (at - self.clock)
        } else {
            self.system.checked_sub(self.clock - at).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    fn to_clock(&self, at: SystemTime) -> Duration {
        match at.duration_since(self.system) {
            Ok(ahead) => self.clock + ahead,
            Err(behind) => self.clock.saturating_sub(behind.duration()),
        }
    }
}

/// A fresh entry, for answering without Pingora's cache machinery (see `cache::fresh_answer`).
pub struct FreshEntry {
    entry: Arc<Entry>,
    pub age_secs: u64,
    pub ttl_secs: u64,
}

impl FreshEntry {
    pub fn header(&self) -> &ResponseHeader {
        &self.entry.header
    }

    /// The fields a fresh hit sends (see [`hit_headers`]).
    pub fn hit_headers(&self) -> &http::HeaderMap {
        &self.entry.hit_headers
    }

    pub fn body(&self) -> Bytes {
        self.entry.body.clone()
    }
}

/// Per route: the keys it has stored (for whole-route purge) and its purge generation.
#[derive(Default)]
struct RouteIndex {
    keys: Mutex<HashSet<u128>>,
    generation: AtomicU64,
}

pub struct CacheStore {
    entries: TinyUfo<u128, Arc<Entry>>,
    routes: Vec<RouteIndex>,
    route_ids: HashMap<String, usize>,
    clock: Clock,
    /// Estimated bytes held (what eviction keeps under `max_bytes`).
    stored_bytes: AtomicI64,
    max_bytes: usize,
}

fn key_hash(key: &impl CacheHashKey) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

/// What an answer of this size costs in the store: the body, its header twice (as stored and
/// as a hit sends it) and a fixed overhead.
fn entry_bytes(header: &ResponseHeader, body_len: usize) -> usize {
    let headers: usize =
        header.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD).sum();
    body_len + 2 * headers + ENTRY_OVERHEAD
}

/// The fields a fresh hit sends: the stored answer's, without `Transfer-Encoding` (the body is
/// whole), with its `Content-Length` (none for 204 and 304), `Accept-Ranges: bytes` on a 200 as
/// Pingora's cache path sends it (a ranged request for the entry is served there), and already
/// in place the fields set on every hit: `Age`, `Cache-Status` and `X-Request-Id` (empty here,
/// set by `fresh_answer`), `Date` and `Connection` (valid values, which Pingora replaces as it
/// writes the answer). A hit's copy of the map then has room for them all: each is set in place,
/// never grown into.
fn hit_headers(header: &ResponseHeader, body_len: usize) -> http::HeaderMap {
    let mut headers = header.headers.clone();
    headers.remove(http::header::TRANSFER_ENCODING);
    if !matches!(header.status.as_u16(), 204 | 304) {
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body_len));
    }
    if header.status == http::StatusCode::OK {
        headers.insert(http::header::ACCEPT_RANGES, http::HeaderValue::from_static("bytes"));
    }
    for name in super::HIT_FIELDS {
        headers.insert(name, http::HeaderValue::from_static(""));
    }
    headers.insert(http::header::DATE, pingora_core::protocols::http::date::get_cached_date());
    headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("keep-alive"));
    headers
}

fn weight(bytes: usize) -> u16 {
    bytes.div_ceil(WEIGHT_UNIT).min(u16::MAX as usize) as u16
}

impl CacheStore {
    /// `route_ids`: every route in config order (entries are tagged with their route's id).
    pub fn new(max_bytes: u64, route_ids: &[&str], clock: Clock) -> CacheStore {
        let max_bytes = max_bytes as usize;
        // TinyLFU's frequency sketch is sized for the number of entries it may see.
        let estimated_entries = (max_bytes / 2048).max(1024);
        CacheStore {
            entries: TinyUfo::new(max_bytes / WEIGHT_UNIT, estimated_entries),
            routes: route_ids.iter().map(|_| RouteIndex::default()).collect(),
            route_ids: route_ids.iter().enumerate().map(|(i, id)| (id.to_string(), i)).collect(),
            clock,
            stored_bytes: AtomicI64::new(0),
            max_bytes,
        }
    }

    /// Estimated bytes held now.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Drops every entry of a route; returns how many were indexed.
    pub fn purge_route(&self, route: usize) -> usize {
        let index = &self.routes[route];
        // Entries stored while this runs carry the old generation and are never served.
        index.generation.fetch_add(1, Ordering::Relaxed);
        let keys: Vec<u128> =
            std::mem::take(&mut *index.keys.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
        keys.iter().filter(|key| self.remove(**key)).count()
    }

    /// Drops one entry; `true` when it was there.
    pub fn purge_key(&self, key: &CacheKey) -> bool {
        self.remove(key_hash(key))
    }

    fn remove(&self, key: u128) -> bool {
        match self.entries.remove(&key) {
            Some(entry) => {
                self.forget(&entry);
                true
            }
            None => false,
        }
    }

    /// Accounting for an entry that left the store.
    fn forget(&self, entry: &Entry) {
        self.stored_bytes.fetch_sub(entry.bytes as i64, Ordering::Relaxed);
        if let Some(index) = self.routes.get(entry.route) {
            index.keys.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.key);
        }
    }

    fn insert(&self, entry: Entry) {
        let entry = Arc::new(entry);
        self.routes[entry.route].keys.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.key);
        let replaced = self.entries.get(&entry.key);
        self.stored_bytes.fetch_add(entry.bytes as i64, Ordering::Relaxed);
        // `force_put`: a herd waiting for this entry must find it (plain `put` may refuse a new
        // key that TinyLFU rates below the one it would evict).
        let evicted = self.entries.force_put(entry.key, Arc::clone(&entry), weight(entry.bytes));
        if let Some(old) = replaced {
            self.stored_bytes.fetch_sub(old.bytes as i64, Ordering::Relaxed);
        }
        for gone in evicted {
            if Arc::ptr_eq(&gone.data, &entry) {
                // Evicted at once to make room (an entry replaced in place can be: `force_put`
                // never refuses a new key; one larger than the store never gets here).
                self.stored_bytes.fetch_sub(entry.bytes as i64, Ordering::Relaxed);
                self.routes[entry.route].keys.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.key);
            } else {
                self.forget(&gone.data);
            }
        }
    }

    /// A live entry under this key: the full hash matches and its route was not purged since.
    fn get(&self, key: u128) -> Option<Arc<Entry>> {
        let entry = self.entries.get(&key)?;
        let current = self.routes[entry.route].generation.load(Ordering::Relaxed);
        (entry.key == key && entry.generation == current).then_some(entry)
    }

    /// Whether a live entry (fresh or not) is stored under this key.
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.get(key_hash(key)).is_some()
    }

    /// A fresh entry under this key: its header, body and seconds of freshness and of age.
    pub fn fresh(&self, key: &CacheKey) -> Option<FreshEntry> {
        let entry = self.get(key_hash(key))?;
        let now = self.clock.elapsed();
        let left = entry.freshness.fresh_until.checked_sub(now).filter(|left| !left.is_zero())?;
        let age_secs = now.saturating_sub(entry.freshness.created).as_secs();
        Some(FreshEntry { age_secs, ttl_secs: left.as_secs(), entry })
    }

    fn meta_of(&self, entry: &Entry) -> CacheMeta {
        let now = Now::of(&self.clock);
        let f = &entry.freshness;
        CacheMeta::new(
            now.to_system(f.fresh_until),
            now.to_system(f.created),
            f.stale_while_revalidate_secs,
            f.stale_if_error_secs,
            entry.header.clone(),
        )
    }

    fn freshness_of(&self, meta: &CacheMeta) -> Freshness {
        let now = Now::of(&self.clock);
        Freshness {
            created: now.to_clock(meta.created()),
            fresh_until: now.to_clock(meta.fresh_until()),
            stale_while_revalidate_secs: meta.stale_while_revalidate_sec(),
            stale_if_error_secs: meta.stale_if_error_sec(),
        }
    }

    fn route_of(&self, key: &CacheKey) -> Result<usize> {
        self.route_ids
            .get(key.user_tag())
            .copied()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key names no route"))
    }
}

#[async_trait]
impl Storage for CacheStore {
    async fn lookup(&'static self, key: &CacheKey, _trace: &SpanHandle) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.get(key_hash(key)) else {
            return Ok(None);
        };
        let meta = self.meta_of(&entry);
        let hit = StoredBody { body: entry.body.clone(), done: false, range: None };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let route = self.route_of(key)?;
        Ok(Box::new(Filling {
            store: self,
            key: key_hash(key),
            route,
            generation: self.routes[route].generation.load(Ordering::Relaxed),
            header: meta.response_header_copy(),
            freshness: self.freshness_of(meta),
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key: &CompactCacheKey = target.key();
        Ok(if self.remove(key_hash(key)) { PurgeOutcome::Purged(None) } else { PurgeOutcome::NotFound })
    }

    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<bool> {
        let Some(old) = self.get(key_hash(key)) else {
            return Ok(false);
        };
        let header = meta.response_header_copy();
        let freshness = self.freshness_of(meta);
        self.insert(Entry::new(old.key, old.route, old.generation, header, old.body.clone(), freshness));
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A hit: the stored body, shared, in one piece (or the requested range of it).
struct StoredBody {
    body: Bytes,
    done: bool,
    range: Option<(usize, usize)>,
}

#[async_trait]
impl HandleHit for StoredBody {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(match self.range {
            Some((start, end)) => self.body.slice(start..end),
            None => self.body.clone(),
        }))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        // An end past the last byte is allowed: the range ends with the body.
        let end = end.unwrap_or(len).min(len);
        if start >= len || start > end {
            return Error::e_explain(ErrorType::InternalError, format!("range start {start} is outside the body"));
        }
        self.range = Some((start, end));
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A miss being filled: the body is gathered, then stored whole when the answer is complete
/// (Pingora stops a fill that grows past `max_object_bytes`).
struct Filling {
    store: &'static CacheStore,
    key: u128,
    route: usize,
    generation: u64,
    header: ResponseHeader,
    freshness: Freshness,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Filling {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Filling { store, key, route, generation, header, freshness, body } = *self;
        let entry = Entry::new(key, route, generation, header, body.freeze(), freshness);
        if entry.bytes > store.max_bytes {
            return Ok(MissFinishType::Created(0));
        }
        let bytes = entry.bytes;
        store.insert(entry);
        Ok(MissFinishType::Created(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> SpanHandle {
        pingora_cache::trace::Span::inactive().handle()
    }

    fn header() -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "application/json").unwrap();
        h
    }

    fn store(max_bytes: u64) -> &'static CacheStore {
        Box::leak(Box::new(CacheStore::new(max_bytes, &["a", "b"], Clock::default())))
    }

    async fn fill(store: &'static CacheStore, key: &CacheKey, body: &[u8], fresh_secs: u64) {
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(fresh_secs), now, 0, 0, header());
        let mut miss = store.get_miss_handler(key, &meta, &span()).await.unwrap();
        miss.write_body(Bytes::copy_from_slice(body), true).await.unwrap();
        miss.finish().await.unwrap();
    }

    async fn read(store: &'static CacheStore, key: &CacheKey) -> Option<(CacheMeta, Bytes)> {
        let (meta, mut hit) = store.lookup(key, &span()).await.unwrap()?;
        Some((meta, hit.read_body().await.unwrap().unwrap()))
    }

    #[tokio::test]
    async fn stores_and_serves_an_answer() {
        let s = store(1 << 20);
        let key = CacheKey::new("k1", "a");
        assert!(read(s, &key).await.is_none());
        fill(s, &key, b"{\"balance\":1}", 60).await;
        let (meta, body) = read(s, &key).await.unwrap();
        assert_eq!(&body[..], b"{\"balance\":1}");
        assert!(meta.is_fresh(SystemTime::now()));
        assert_eq!(meta.response_header().status, 200);
        assert!(read(s, &CacheKey::new("k2", "a")).await.is_none());
    }

    #[tokio::test]
    async fn freshness_follows_the_gateway_clock() {
        let s = store(1 << 20);
        let key = CacheKey::new("k", "a");
        fill(s, &key, b"x", 60).await;
        assert!(read(s, &key).await.unwrap().0.is_fresh(SystemTime::now()));
        s.clock.advance(Duration::from_secs(61));
        let (meta, _) = read(s, &key).await.unwrap();
        assert!(!meta.is_fresh(SystemTime::now()));
        assert!(meta.age() >= Duration::from_secs(61));
    }

    #[tokio::test]
    async fn eviction_keeps_the_store_under_its_bound() {
        let max = 256 * 1024;
        let s = store(max);
        let body = vec![b'x'; 4096];
        for i in 0..500 {
            fill(s, &CacheKey::new(format!("k{i}"), "a"), &body, 60).await;
            assert!(s.stored_bytes() <= max, "{} bytes held after {i} answers", s.stored_bytes());
        }
        assert!(s.stored_bytes() > max / 2, "the store should be close to full: {}", s.stored_bytes());
        let held = (0..500).filter(|i| s.get(key_hash(&CacheKey::new(format!("k{i}"), "a"))).is_some()).count();
        assert!(held < 100 && held > 10, "{held} of 500 answers held");
        assert_eq!(s.routes[0].keys.lock().unwrap().len(), held, "the route index follows evictions");
    }

    #[tokio::test]
    async fn purging_a_route_leaves_the_others() {
        let s = store(1 << 20);
        for i in 0..10 {
            // Real keys hold the route id in their hashed part; so do these.
            fill(s, &CacheKey::new(format!("a{i}"), "a"), b"a", 60).await;
            fill(s, &CacheKey::new(format!("b{i}"), "b"), b"b", 60).await;
        }
        assert_eq!(s.purge_route(0), 10);
        assert!(read(s, &CacheKey::new("a3", "a")).await.is_none());
        assert_eq!(&read(s, &CacheKey::new("b3", "b")).await.unwrap().1[..], b"b");
        assert!(s.purge_key(&CacheKey::new("b3", "b")));
        assert!(!s.purge_key(&CacheKey::new("b3", "b")));
        assert!(read(s, &CacheKey::new("b3", "b")).await.is_none());
        // An entry stored after the purge is served again.
        fill(s, &CacheKey::new("a3", "a"), b"a2", 60).await;
        assert_eq!(&read(s, &CacheKey::new("a3", "a")).await.unwrap().1[..], b"a2");
    }

    #[tokio::test]
    async fn a_range_is_served_from_the_stored_body() {
        let s = store(1 << 20);
        let key = CacheKey::new("k", "a");
        fill(s, &key, b"0123456789", 60).await;
        let (_, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
        hit.seek(2, Some(5)).unwrap();
        assert_eq!(&hit.read_body().await.unwrap().unwrap()[..], b"234");
        assert!(hit.read_body().await.unwrap().is_none());
    }
}
