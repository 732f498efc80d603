//! The GET cache: a herd of identical requests costs the backend one query, entries are told
//! apart by the declared `vary` parts and by principal, freshness follows the gateway clock
//! (moved, not slept), stale answers cover refreshes and backend failures, memory stays under
//! its bound, the admin API purges, and a cached answer never skips a check.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{json, problem_code, Backend, Canned, TestGateway, BASE};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The gateway with `rest` (routes) and one upstream, `crm`, to the backend.
fn start(rest: &str, backend: &Backend) -> TestGateway {
    start_with_upstreams(&format!("upstreams: {{ crm: {{ targets: [\"${{BACKEND}}\"] }} }}\n{rest}"), backend)
}

fn start_with_upstreams(rest: &str, backend: &Backend) -> TestGateway {
    TestGateway::start(&format!("{BASE}{rest}"), &[("BACKEND", backend.addr.to_string())])
}

/// The gateway with one cached route, `GET /balance`, to the backend (upstream `crm`).
fn balance_route(timeout_ms: u64, cache: &str, backend: &Backend) -> TestGateway {
    start(
        &format!(
            r#"
routes:
  - {{ id: balance, match: {{ method: GET, path: "/balance" }}, upstream: crm, timeout_ms: {timeout_ms},
      cache: {cache} }}
"#
        ),
        backend,
    )
}

/// Like [`counting`], but only the first request is answered at once: every later one is held
/// until the test opens the gate (a permit per request), so "answered without the backend" is
/// proven by a hang, not by a clock.
async fn gated() -> (Backend, Arc<AtomicU32>, Arc<tokio::sync::Semaphore>) {
    let count = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (c, g) = (count.clone(), gate.clone());
    let backend = Backend::start(move |_| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = g.clone();
        Box::pin(async move {
            if n > 1 {
                gate.acquire().await.expect("the gate is never closed").forget();
            }
            json(200, &format!("{{\"answer\":{n}}}"))
        })
    })
    .await;
    (backend, count, gate)
}

/// An answer the test must get without waiting on a held backend (which would hang it).
async fn unheld(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    tokio::time::timeout(Duration::from_secs(5), get(client, url)).await.expect("waited for the held backend")
}

/// A backend that answers with a body naming its own count of requests so far.
async fn counting(delay: Duration) -> (Backend, Arc<AtomicU32>) {
    let count = Arc::new(AtomicU32::new(0));
    let c = count.clone();
    let backend = Backend::start(move |r| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!("{{\"answer\":{n},\"uri\":\"{}\"}}", r.uri);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            json(200, &body)
        })
    })
    .await;
    (backend, count)
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let cache_status = r.headers().get("cache-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, cache_status, r.text().await.unwrap())
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_misses_on_a_cold_key_cost_one_backend_query() {
    let (backend, count) = counting(Duration::from_millis(200)).await;
    let gw = start(
        r#"
routes:
  - { id: account, match: { method: GET, path: "/accounts/{id}" }, upstream: crm, timeout_ms: 10000,
      cache: { ttl_secs: 60, vary: [path.id] } }
"#,
        &backend,
    );
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let url = gw.url("/accounts/42");
    let herd: Vec<_> = (0..1000)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    let mut stored = 0;
    for request in herd {
        let (status, cache_status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"answer\":1"), "{body}");
        if cache_status == "seawall; fwd=miss; stored" {
            stored += 1;
        } else {
            assert!(cache_status.starts_with("seawall; hit; ttl="), "{cache_status}");
        }
    }
    assert_eq!(count.load(Ordering::SeqCst), 1, "the backend saw more than one query");
    assert_eq!(stored, 1);
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, r#"seawall_cache_lookups_total{result="miss",route="account"}"#), 1);
    let coalesced = metric(&metrics, r#"seawall_cache_lookups_total{result="coalesced",route="account"}"#);
    let hits = metric(&metrics, r#"seawall_cache_lookups_total{result="hit",route="account"}"#);
    assert_eq!(coalesced + hits, 999);
    assert!(coalesced > 0, "no request waited for the fill");
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_vary_parts_select_separate_entries_and_the_rest_is_ignored() {
    let (backend, count) = counting(Duration::ZERO).await;
    let gw = start(
        r#"
routes:
  - { id: account, match: { method: GET, path: "/accounts/{id}" }, upstream: crm, timeout_ms: 2000,
      cache: { ttl_secs: 60, vary: [path.id, query.lang, header.x-tenant] } }
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    let fetch = |path: &str, tenant: &str| {
        let req = client.get(gw.url(path)).header("x-tenant", tenant).header("x-trace", fastrand::u32(..).to_string());
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let first = fetch("/accounts/1?lang=en", "t1").await;
    assert_eq!(fetch("/accounts/1?lang=en&page=2", "t1").await, first, "an undeclared query key is not in the key");
    assert_ne!(fetch("/accounts/2?lang=en", "t1").await, first);
    assert_ne!(fetch("/accounts/1?lang=fr", "t1").await, first);
    assert_ne!(fetch("/accounts/1?lang=en", "t2").await, first);
    assert_eq!(count.load(Ordering::SeqCst), 4);
    // HEAD is keyed apart from GET and answered without a body.
    let head = client.head(gw.url("/accounts/1?lang=en")).header("x-tenant", "t1").send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(count.load(Ordering::SeqCst), 5);
    let head = client.head(gw.url("/accounts/1?lang=en")).header("x-tenant", "t1").send().await.unwrap();
    assert!(head.headers()["cache-status"].to_str().unwrap().starts_with("seawall; hit"));
    assert_eq!(count.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn freshness_follows_the_clock_and_the_origin_cache_control() {
    let no_store = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU32::new(0));
    let (n, ns) = (count.clone(), no_store.clone());
    let backend = Backend::start(move |r| {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        let cache_control = if ns.load(Ordering::SeqCst) { "no-store" } else { "max-age=30" };
        let origin = r.uri.starts_with("/origin");
        Box::pin(async move {
            let mut response = json(200, &format!("{{\"answer\":{n}}}"));
            if origin {
                response.headers_mut().insert("cache-control", cache_control.parse().unwrap());
            }
            response
        })
    })
    .await;
    let gw = start(
        r#"
routes:
  - { id: plain, match: { method: GET, path: "/plain" }, upstream: crm, timeout_ms: 2000, cache: { ttl_secs: 60 } }
  - { id: origin, match: { method: GET, path: "/origin" }, upstream: crm, timeout_ms: 2000, cache: { ttl_secs: 60 } }
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    let (_, status, _) = get(&client, &gw.url("/plain")).await;
    assert_eq!(status, "seawall; fwd=miss; stored");
    gw.gateway.clock.advance(Duration::from_secs(59));
    let (_, status, body) = get(&client, &gw.url("/plain")).await;
    assert_eq!(status, "seawall; hit; ttl=0", "{body}");
    gw.gateway.clock.advance(Duration::from_secs(2));
    let (_, status, body) = get(&client, &gw.url("/plain")).await;
    assert_eq!(status, "seawall; fwd=stale; stored");
    assert_eq!(body, "{\"answer\":2}");

    // The origin's max-age=30 wins over ttl_secs: 60.
    get(&client, &gw.url("/origin")).await;
    gw.gateway.clock.advance(Duration::from_secs(31));
    assert_eq!(get(&client, &gw.url("/origin")).await.2, "{\"answer\":4}");
    // no-store: passed through, never stored.
    no_store.store(true, Ordering::SeqCst);
    gw.gateway.clock.advance(Duration::from_secs(31));
    let (_, status, _) = get(&client, &gw.url("/origin")).await;
    assert_eq!(status, "seawall; fwd=miss");
    let (_, status, body) = get(&client, &gw.url("/origin")).await;
    assert_eq!(status, "seawall; fwd=miss");
    assert_eq!(body, "{\"answer\":6}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    // The refresh is held until the stale answers are in: one that waited for it would hang.
    let (backend, count, gate) = gated().await;
    let gw = balance_route(3000, "{ ttl_secs: 10, stale_while_revalidate_secs: 30 }", &backend);
    let client = reqwest::Client::new();
    get(&client, &gw.url("/balance")).await;
    gw.gateway.clock.advance(Duration::from_secs(15));
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let (status, cache_status, body) = unheld(&client, &gw.url("/balance")).await;
        assert_eq!(status, 200);
        assert!(body.contains("\"answer\":1"), "{body}");
        assert!(cache_status.ends_with("detail=stale-while-revalidate"), "{cache_status}");
        assert!(started.elapsed() < Duration::from_millis(500), "a stale answer waited for the backend");
    }
    // One background refresh, then the fresh answer (the gate is opened for good).
    gate.add_permits(1000);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut calls = 1 + 5;
    loop {
        calls += 1;
        let (_, cache_status, body) = get(&client, &gw.url("/balance")).await;
        if cache_status.starts_with("seawall; hit; ttl=") && body.contains("\"answer\":2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refreshed: {cache_status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // Past both windows: a plain miss.
    gw.gateway.clock.advance(Duration::from_secs(60));
    let (_, cache_status, _) = get(&client, &gw.url("/balance")).await;
    assert_eq!(cache_status, "seawall; fwd=stale; stored");
    // The background refresh is an upstream call, not a caller's request.
    let metrics = gw.metrics().await;
    calls += 1;
    let answered = metric(&metrics, r#"seawall_requests_total{route="balance",status="200"}"#);
    let looked_up: u64 = ["hit", "miss", "stale", "coalesced"]
        .iter()
        .map(|r| metric(&metrics, &format!(r#"seawall_cache_lookups_total{{result="{r}",route="balance"}}"#)))
        .sum();
    assert_eq!((answered, looked_up), (calls, calls));
    assert_eq!(metric(&metrics, r#"seawall_upstream_requests_total{outcome="ok",upstream="crm"}"#), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_covers_a_failing_backend_and_an_open_circuit_within_its_window() {
    let (backend, failing) =
        Backend::switched(Canned::new(200, "{\"balance\":10}"), Canned::new(500, "{\"error\":true}")).await;
    let gw = start_with_upstreams(
        r#"
upstreams:
  ledger:
    targets: ["${BACKEND}"]
    circuit_breaker: { failure_ratio: 0.5, min_requests: 2, window_secs: 10, open_secs: 30 }
routes:
  - { id: balance, match: { method: GET, path: "/balance" }, upstream: ledger, timeout_ms: 2000,
      cache: { ttl_secs: 10, stale_if_error_secs: 60 } }
  - { id: other, match: { method: GET, path: "/other" }, upstream: ledger, timeout_ms: 2000 }
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    get(&client, &gw.url("/balance")).await;
    failing.store(true, Ordering::SeqCst);
    gw.gateway.clock.advance(Duration::from_secs(20));
    let (status, cache_status, body) = get(&client, &gw.url("/balance")).await;
    assert_eq!((status, body.as_str()), (200, "{\"balance\":10}"));
    assert_eq!(cache_status, "seawall; fwd=stale; ttl=-10; detail=stale-if-error");

    // Open the circuit with uncached failures: the stale entry still answers, the backend is spared.
    let mut opened = false;
    for _ in 0..3 {
        let (status, _, body) = get(&client, &gw.url("/other")).await;
        if status == 503 {
            assert_eq!(problem_code(&body), "circuit_open");
            opened = true;
            break;
        }
        assert_eq!(status, 500);
    }
    assert!(opened, "the circuit never opened");
    let before = backend.received().len();
    let (status, cache_status, _) = get(&client, &gw.url("/balance")).await;
    assert_eq!(status, 200);
    assert!(cache_status.ends_with("detail=stale-if-error"), "{cache_status}");
    assert_eq!(backend.received().len(), before, "an open circuit let a call through");
    let (status, _, body) = get(&client, &gw.url("/other")).await;
    assert_eq!((status, problem_code(&body).as_str()), (503, "circuit_open"));

    // Past the window (10 s fresh + 60 s; the circuit half-open by then): the failure shows.
    gw.gateway.clock.advance(Duration::from_secs(61));
    let (status, cache_status, body) = get(&client, &gw.url("/balance")).await;
    assert_eq!((status, body.as_str()), (500, "{\"error\":true}"));
    assert!(!cache_status.contains("stale-if-error"), "{cache_status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_past_their_deadline_answer_504_and_never_reach_the_backend() {
    let backend = Backend::slow(Duration::from_secs(5)).await;
    let gw = start(
        r#"
routes:
  - { id: slow, match: { method: GET, path: "/slow" }, upstream: crm, timeout_ms: 500, cache: { ttl_secs: 60 } }
"#,
        &backend,
    );
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let herd: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (client.clone(), gw.url("/slow"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    for request in herd {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status, problem_code(&body).as_str()), (504, "upstream_timeout"));
    }
    // The writer, plus at most a few whose deadline had a sliver left when the writer gave up.
    let started = backend.started();
    assert!((1..=5).contains(&started), "{started} of 100 waiters reached the backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn principals_never_see_each_others_entries_unless_the_route_is_shared() {
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("idp.pub.pem");
    std::fs::write(&key_path, openssl::pkey::PKey::from_rsa(rsa.clone()).unwrap().public_key_to_pem().unwrap())
        .unwrap();
    let private = EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap()).unwrap();
    let token = |client: &str, tenant: &str| {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": "https://idp.example.com", "aud": "api://ivr", "sub": client, "azp": client,
            "iat": now - 5, "exp": now + 600, "tenant": tenant
        });
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &private).unwrap()
    };
    let (backend, count) = counting(Duration::ZERO).await;
    let gw = TestGateway::start(
        &format!(
            r#"{BASE}
upstreams: {{ crm: {{ targets: ["${{BACKEND}}"] }} }}
jwt_providers:
  idp: {{ issuer: "https://idp.example.com", public_key_pem: "${{KEY}}", audiences: [api://ivr], algorithms: [RS256] }}
routes:
  - {{ id: mine, match: {{ method: GET, path: "/mine" }}, upstream: crm, timeout_ms: 2000, auth: {{ jwt: idp }},
      cache: {{ ttl_secs: 60 }} }}
  - {{ id: shared, match: {{ method: GET, path: "/shared" }}, upstream: crm, timeout_ms: 2000, auth: {{ jwt: idp }},
      cache: {{ ttl_secs: 60, shared: true }} }}
  - {{ id: tenant, match: {{ method: GET, path: "/tenant" }}, upstream: crm, timeout_ms: 2000, auth: {{ jwt: idp }},
      cache: {{ ttl_secs: 60, shared: true, vary: [claim.tenant] }} }}
"#
        ),
        &[("BACKEND", backend.addr.to_string()), ("KEY", key_path.display().to_string())],
    );
    let client = reqwest::Client::new();
    let as_client = |path: &str, token: String| {
        let req = client.get(gw.url(path)).bearer_auth(token);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let a = as_client("/mine", token("a", "t1")).await.1;
    let b = as_client("/mine", token("b", "t1")).await.1;
    assert_ne!(a, b, "client b was served client a's entry");
    assert_eq!(as_client("/mine", token("a", "t1")).await.1, a);
    assert_eq!(count.load(Ordering::SeqCst), 2);

    let shared = as_client("/shared", token("a", "t1")).await.1;
    assert_eq!(as_client("/shared", token("b", "t1")).await.1, shared);
    assert_eq!(count.load(Ordering::SeqCst), 3);

    let t1 = as_client("/tenant", token("a", "t1")).await.1;
    assert_eq!(as_client("/tenant", token("b", "t1")).await.1, t1);
    assert_ne!(as_client("/tenant", token("a", "t2")).await.1, t1);
    assert_eq!(count.load(Ordering::SeqCst), 5);

    // A cached answer never skips the check.
    let refused = client.get(gw.url("/shared")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let refused = client.get(gw.url("/shared")).bearer_auth("not.a.token").send().await.unwrap();
    assert_eq!(refused.status(), 401);

    // Purge one principal's entry: `principal` is the issuer and the client, joined by `+`.
    let admin = format!("http://{}", gw.admin);
    let purge =
        client.delete(format!("{admin}/cache/mine?principal=https%3A%2F%2Fidp.example.com+a")).send().await.unwrap();
    assert_eq!(purge.status(), 200);
    assert_eq!(purge.json::<serde_json::Value>().await.unwrap()["purged"], 1);
    assert_ne!(as_client("/mine", token("a", "t1")).await.1, a, "the purged entry was served");
    assert_eq!(as_client("/mine", token("b", "t1")).await.1, b, "another principal's entry was purged");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_purges_a_route_or_one_entry() {
    let (backend, count) = counting(Duration::ZERO).await;
    let gw = start(
        r#"
routes:
  - { id: account, match: { method: GET, path: "/accounts/{id}" }, upstream: crm, timeout_ms: 2000,
      cache: { ttl_secs: 60, vary: [path.id] } }
  - { id: plain, match: { method: GET, path: "/plain" }, upstream: crm, timeout_ms: 2000 }
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    for id in 1..=3 {
        get(&client, &gw.url(&format!("/accounts/{id}"))).await;
    }
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let admin = format!("http://{}", gw.admin);
    let delete = |path: &str| {
        let req = client.delete(format!("{admin}{path}"));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = delete("/cache/account?path.id=2").await;
    assert_eq!((status, body.as_str()), (200, "{\"purged\":1,\"route\":\"account\"}"));
    assert_eq!(get(&client, &gw.url("/accounts/1")).await.1.split(';').nth(1), Some(" hit"));
    assert_eq!(get(&client, &gw.url("/accounts/2")).await.1, "seawall; fwd=miss; stored");

    let (status, body) = delete("/cache/account").await;
    assert_eq!((status, body.as_str()), (200, "{\"purged\":3,\"route\":\"account\"}"));
    assert_eq!(get(&client, &gw.url("/accounts/1")).await.1, "seawall; fwd=miss; stored");

    let (status, body) = delete("/cache/account?path.nope=1").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not part of this route's cache key"), "{body}");
    assert_eq!(delete("/cache/plain").await.0, 400);
    assert_eq!(delete("/cache/missing").await.0, 404);
    assert_eq!(client.get(format!("{admin}/cache/account")).send().await.unwrap().status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_keeps_memory_under_the_bound_and_large_answers_pass_uncached() {
    let body = "x".repeat(8 * 1024);
    let large = "y".repeat(40 * 1024);
    let count = Arc::new(AtomicU32::new(0));
    let n = count.clone();
    let backend = Backend::start(move |r| {
        n.fetch_add(1, Ordering::SeqCst);
        let text = if r.uri.contains("large") { large.clone() } else { body.clone() };
        Box::pin(async move { json(200, &text) })
    })
    .await;
    let gw = start(
        r#"
cache_storage: { max_bytes: 131072, max_object_bytes: 32768 }
routes:
  - { id: item, match: { method: GET, path: "/items/{id}" }, upstream: crm, timeout_ms: 2000,
      cache: { ttl_secs: 600, vary: [path.id] } }
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    for id in 0..100 {
        let (status, _, _) = get(&client, &gw.url(&format!("/items/{id}"))).await;
        assert_eq!(status, 200);
        let held = metric(&gw.metrics().await, "seawall_cache_stored_bytes");
        assert!(held <= 131072, "{held} bytes held after {id} answers");
    }
    let held = metric(&gw.metrics().await, "seawall_cache_stored_bytes");
    assert!(held > 65536, "the store should be near full: {held}");
    // Early entries were evicted: asking again goes to the backend.
    let before = count.load(Ordering::SeqCst);
    get(&client, &gw.url("/items/0")).await;
    assert_eq!(count.load(Ordering::SeqCst), before + 1);

    for _ in 0..2 {
        let (status, cache_status, text) = get(&client, &gw.url("/items/large")).await;
        assert_eq!((status, text.len()), (200, 40 * 1024));
        assert_eq!(cache_status, "seawall; fwd=miss");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_are_not_charged_to_a_route_usage_plan() {
    let (backend, count) = counting(Duration::ZERO).await;
    let gw = start(
        r#"
routes:
  - { id: account, match: { method: GET, path: "/accounts/{id}" }, upstream: crm, timeout_ms: 2000,
      rate_limit: { requests_per_sec: 1, burst: 2 }, cache: { ttl_secs: 60, vary: [path.id] } }
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    for _ in 0..20 {
        assert_eq!(get(&client, &gw.url("/accounts/1")).await.0, 200);
    }
    assert_eq!(get(&client, &gw.url("/accounts/2")).await.0, 200);
    let (status, _, body) = get(&client, &gw.url("/accounts/3")).await;
    assert_eq!((status, problem_code(&body).as_str()), (429, "rate_limited"));
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn hits_carry_age_and_honour_ranges_and_conditional_requests() {
    let backend = Backend::start(|_| {
        Box::pin(async {
            let mut response = json(200, "{\"balance\":12345}");
            response.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
            response
        })
    })
    .await;
    let gw = balance_route(2000, "{ ttl_secs: 60 }", &backend);
    let client = reqwest::Client::new();
    let miss = client.get(gw.url("/balance")).send().await.unwrap();
    // Ranges are advertised on the miss (Pingora's cache path) and on a hit alike.
    assert_eq!(miss.headers()["accept-ranges"], "bytes");
    assert_eq!(miss.text().await.unwrap(), "{\"balance\":12345}");
    gw.gateway.clock.advance(Duration::from_secs(7));
    let hit = client.get(gw.url("/balance")).header("x-request-id", "hit-1").send().await.unwrap();
    let header = |name: &str| hit.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("age"), "7");
    assert_eq!(header("cache-status"), "seawall; hit; ttl=52");
    assert_eq!(header("content-length"), "17");
    assert_eq!(header("x-request-id"), "hit-1");
    assert_eq!(header("accept-ranges"), "bytes");
    assert_eq!(hit.text().await.unwrap(), "{\"balance\":12345}");

    let partial = client.get(gw.url("/balance")).header("range", "bytes=0-3").send().await.unwrap();
    assert_eq!(partial.status(), 206);
    assert!(partial.headers()["cache-status"].to_str().unwrap().starts_with("seawall; hit"));
    assert_eq!(partial.text().await.unwrap(), "{\"ba");

    let unchanged = client.get(gw.url("/balance")).header("if-none-match", "\"v1\"").send().await.unwrap();
    assert_eq!(unchanged.status(), 304);
    assert_eq!(backend.received().len(), 1, "every answer after the first came from the cache");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_past_the_deadline_is_covered_by_a_stale_entry() {
    let balance = Canned::new(200, "{\"balance\":10}");
    let (backend, slow) = Backend::switched(balance, balance.after(Duration::from_secs(5))).await;
    let gw = balance_route(300, "{ ttl_secs: 10, stale_if_error_secs: 60 }", &backend);
    let client = reqwest::Client::new();
    get(&client, &gw.url("/balance")).await;
    slow.store(true, Ordering::SeqCst);
    gw.gateway.clock.advance(Duration::from_secs(11));
    let started = std::time::Instant::now();
    let (status, cache_status, body) = get(&client, &gw.url("/balance")).await;
    assert_eq!((status, body.as_str()), (200, "{\"balance\":10}"));
    assert!(cache_status.ends_with("detail=stale-if-error"), "{cache_status}");
    assert!(started.elapsed() < Duration::from_secs(2), "the stale answer waited for the backend");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, r#"seawall_upstream_requests_total{outcome="timeout",upstream="crm"}"#), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_bulkhead_is_covered_by_a_stale_entry() {
    let (backend, count, gate) = gated().await;
    let gw = start_with_upstreams(
        r#"
upstreams: { crm: { targets: ["${BACKEND}"], max_inflight: 1 } }
routes:
  - { id: balance, match: { method: GET, path: "/balance" }, upstream: crm, timeout_ms: 3000,
      cache: { ttl_secs: 10, stale_if_error_secs: 60 } }
  - { id: slow, match: { method: GET, path: "/slow" }, upstream: crm, timeout_ms: 3000 }
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    get(&client, &gw.url("/balance")).await;
    gw.gateway.clock.advance(Duration::from_secs(11));
    // One call, held at the backend, holds the upstream's only slot.
    let holder = {
        let (client, url) = (client.clone(), gw.url("/slow"));
        tokio::spawn(async move { get(&client, &url).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backend.started() < 2 {
        assert!(std::time::Instant::now() < deadline, "the holding call never reached the backend");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, cache_status, body) = unheld(&client, &gw.url("/balance")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"answer\":1"), "{body}");
    assert!(cache_status.ends_with("detail=stale-if-error"), "{cache_status}");
    gate.add_permits(1);
    assert_eq!(holder.await.unwrap().0, 200);
    assert_eq!(count.load(Ordering::SeqCst), 2, "the stale answer reached the backend");
}
