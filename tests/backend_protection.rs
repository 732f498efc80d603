//! The backend never sees more than it can take: usage plans (exact GCRA, 429 with Retry-After
//! and RateLimit headers), bulkheads, circuit breakers, and degraded 200 answers for flows that
//! cannot read errors. Time-dependent checks move the gateway's clock instead of sleeping.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{problem_code, Backend, Canned, TestGateway};

const BASE: &str = r#"
server: { threads: 1 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
trusted_proxies: [127.0.0.0/8]
"#;

/// One route, `/limited`, to the backend under the given usage plan.
fn limited_route(plan: &str) -> String {
    format!(
        r#"
upstreams: {{ crm: {{ targets: ["${{BACKEND}}"] }} }}
routes:
  - {{ id: limited, match: {{ method: GET, path: "/limited" }}, rate_limit: {plan}, upstream: crm, timeout_ms: 2000 }}
"#
    )
}

fn start(rest: &str, backend: &Backend) -> TestGateway {
    TestGateway::start(&format!("{BASE}{rest}"), &[("BACKEND", backend.addr.to_string())])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_usage_plan_lets_through_its_burst_then_answers_429_until_a_token_is_free() {
    let backend = Backend::ok().await;
    let gw = start(&limited_route("{ requests_per_sec: 2, burst: 5 }"), &backend);
    let client = reqwest::Client::new();
    let get = || client.get(gw.url("/limited")).send();
    for _ in 0..5 {
        assert_eq!(get().await.unwrap().status(), 200);
    }
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 429);
    let header = |name: &str| refused.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("retry-after"), "1");
    assert_eq!(header("ratelimit-policy"), "\"route\";q=2;w=1");
    assert_eq!(header("ratelimit"), "\"route\";r=0;t=1");
    assert_eq!(problem_code(&refused.text().await.unwrap()), "rate_limited");
    assert_eq!(backend.received().len(), 5, "a refused request reached the backend");

    // 2.5 s later, 5 tokens are back: the burst, not more.
    gw.gateway.clock.advance(Duration::from_millis(2500));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_ratelimit_rejections_total{route="limited"} 2"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_a_steady_overload_the_backend_sees_the_limit_and_no_more() {
    let backend = Backend::ok().await;
    let gw = start(&limited_route("{ requests_per_sec: 40, burst: 4 }"), &backend);
    // About 5× the limit from 4 callers, for a bounded 2 seconds.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), gw.url("/limited"));
            tokio::spawn(async move {
                let (mut ok, mut limited) = (0u32, 0u32);
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                while started.elapsed() < Duration::from_secs(2) {
                    tick.tick().await;
                    match client.get(&url).send().await.unwrap().status().as_u16() {
                        200 => ok += 1,
                        429 => limited += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for caller in callers {
        let (o, l) = caller.await.unwrap();
        ok += o;
        limited += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ceiling = 4.0 + 40.0 * elapsed;
    let seen = backend.received().len() as f64;
    assert_eq!(seen, f64::from(ok));
    assert!(seen <= ceiling, "backend saw {seen} in {elapsed:.2} s: more than burst + rate × time = {ceiling:.0}");
    assert!(seen >= 0.9 * 40.0 * elapsed, "backend saw only {seen} in {elapsed:.2} s: the plan held back too much");
    assert!(limited > ok, "the overload was not refused ({limited} refused, {ok} passed)");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_ip_plans_give_each_caller_its_own_budget() {
    let backend = Backend::ok().await;
    let gw = start(&limited_route("{ requests_per_sec: 1, burst: 2, key: ip }"), &backend);
    let client = reqwest::Client::new();
    // The test client is a trusted proxy: X-Forwarded-For names the caller.
    let from = |ip: &'static str| {
        let req = client.get(gw.url("/limited")).header("x-forwarded-for", ip);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!([from("198.51.100.1").await, from("198.51.100.1").await, from("198.51.100.1").await], [200, 200, 429]);
    assert_eq!(from("198.51.100.2").await, 200, "another caller has its own bucket");
}

/// `key: client`: each client the bearer token names (`azp`, else `client_id`, ..., else `sub`)
/// has its own budget on a route with auth.
#[tokio::test(flavor = "multi_thread")]
async fn per_client_plans_give_each_token_client_its_own_budget() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("idp.pub.pem");
    std::fs::write(&public, openssl::pkey::PKey::from_rsa(rsa.clone()).unwrap().public_key_to_pem().unwrap()).unwrap();
    let key = EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap()).unwrap();
    let token = |claims: serde_json::Value| {
        let now = jsonwebtoken::get_current_timestamp();
        let mut all = serde_json::json!({"iss": "https://idp", "aud": "api://ivr", "iat": now, "exp": now + 600});
        all.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &all, &key).unwrap()
    };
    let backend = Backend::ok().await;
    let config = format!(
        r#"{BASE}
jwt_providers:
  idp: {{ issuer: "https://idp", public_key_pem: "{}", audiences: [api://ivr], algorithms: [RS256] }}
upstreams: {{ crm: {{ targets: ["${{BACKEND}}"] }} }}
routes:
  - id: limited
    match: {{ method: GET, path: "/limited" }}
    auth: {{ jwt: idp }}
    rate_limit: {{ requests_per_sec: 1, burst: 2, key: client }}
    upstream: crm
    timeout_ms: 2000
"#,
        public.display()
    );
    let gw = TestGateway::start(&config, &[("BACKEND", backend.addr.to_string())]);
    let client = reqwest::Client::new();
    let send = |token: String| {
        let req = client.get(gw.url("/limited")).bearer_auth(token);
        async move { req.send().await.unwrap() }
    };
    let genesys = || token(serde_json::json!({"sub": "user-1", "azp": "genesys"}));
    assert_eq!(send(genesys()).await.status(), 200);
    // Another subject of the same client shares its budget.
    assert_eq!(send(token(serde_json::json!({"sub": "user-2", "azp": "genesys"}))).await.status(), 200);
    let refused = send(genesys()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["ratelimit-policy"], "\"client\";q=1;w=1");
    assert_eq!(send(token(serde_json::json!({"sub": "bot", "azp": "bot-client"}))).await.status(), 200);
    assert_eq!(send(token(serde_json::json!({"sub": "only-sub"}))).await.status(), 200, "no client claim: the subject");
    assert_eq!(backend.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_bulkhead_answers_503_at_once_instead_of_queueing() {
    let backend = Backend::slow(Duration::from_millis(600)).await;
    let gw = start(
        r#"
upstreams: { crm: { targets: ["${BACKEND}"], max_inflight: 2 } }
routes:
  - id: slow
    match: { method: GET, path: "/slow" }
    upstream: crm
    timeout_ms: 3000
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    let busy: Vec<_> = (0..2).map(|_| tokio::spawn(client.get(gw.url("/slow")).send())).collect();
    while backend.started() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let third = client.get(gw.url("/slow")).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300), "the third call waited {:?}", started.elapsed());
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    assert_eq!(problem_code(&third.text().await.unwrap()), "backend_overloaded");
    for call in busy {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
    // The slots are free again.
    assert_eq!(client.get(gw.url("/slow")).send().await.unwrap().status(), 200);
    assert_eq!(backend.started(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_circuit_opens_on_failures_then_a_probe_closes_it() {
    let (backend, healthy) =
        Backend::switched(Canned::new(500, "{\"error\":\"db down\"}"), Canned::new(200, "{}")).await;
    let gw = start(
        r#"
upstreams:
  crm:
    targets: ["${BACKEND}"]
    circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window_secs: 10, open_secs: 30, probes: 1 }
routes:
  - id: lookup
    match: { method: GET, path: "/lookup" }
    upstream: crm
    timeout_ms: 2000
"#,
        &backend,
    );
    let client = reqwest::Client::new();
    let get = || async { client.get(gw.url("/lookup")).send().await.unwrap() };
    for _ in 0..4 {
        assert_eq!(get().await.status(), 500, "the backend's own answer passes while closed");
    }
    let open = get().await;
    assert_eq!(open.status(), 503);
    assert_eq!(open.headers()["retry-after"], "30");
    assert_eq!(problem_code(&open.text().await.unwrap()), "circuit_open");
    assert_eq!(backend.received().len(), 4, "an open circuit let a call through");
    assert!(gw.metrics().await.contains(r#"seawall_circuit_state{upstream="crm"} 1"#));

    healthy.store(true, Ordering::SeqCst);
    gw.gateway.clock.advance(Duration::from_secs(30));
    assert_eq!(get().await.status(), 200, "the half-open probe");
    assert!(gw.metrics().await.contains(r#"seawall_circuit_state{upstream="crm"} 0"#));
    assert_eq!(get().await.status(), 200);
    assert_eq!(backend.received().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_error_turns_backend_failures_into_a_readable_200() {
    // A port nothing listens on: every call fails to connect.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let backend = Backend::ok().await;
    let failing = Backend::start(|_| Box::pin(async { common::json(500, r#"{"error":"ledger down"}"#) })).await;
    let gw = TestGateway::start(
        &format!(
            "{BASE}{}",
            r#"
upstreams:
  dead: { targets: ["${DEAD}"] }
  crm: { targets: ["${BACKEND}"] }
  ledger: { targets: ["${FAILING}"] }
routes:
  - id: ledger_degraded
    match: { method: GET, path: "/ledger/degraded" }
    upstream: ledger
    timeout_ms: 1000
    on_error: { codes: [upstream_error, upstream_unavailable], body: { balance: "" } }
  - id: ledger_default
    match: { method: GET, path: "/ledger/default" }
    upstream: ledger
    timeout_ms: 1000
    on_error: { body: { balance: "" } }
  - id: degraded
    match: { method: GET, path: "/degraded" }
    upstream: dead
    timeout_ms: 1000
    on_error: { body: { balance: "", currency: "" } }
  - id: plain
    match: { method: GET, path: "/plain" }
    upstream: dead
    timeout_ms: 1000
  - id: limited
    match: { method: GET, path: "/limited" }
    upstream: crm
    timeout_ms: 1000
    rate_limit: { requests_per_sec: 1, burst: 1 }
    on_error: { status: 200, codes: [rate_limited], body: { found: false } }
"#
        ),
        &[("DEAD", dead.to_string()), ("BACKEND", backend.addr.to_string()), ("FAILING", failing.addr.to_string())],
    );
    let client = reqwest::Client::new();
    // The backend's own 500: degraded where the route lists `upstream_error`, else passed on.
    let resp = client.get(gw.url("/ledger/degraded")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"balance": "", "gateway_status": "upstream_error"}));
    let resp = client.get(gw.url("/ledger/default")).send().await.unwrap();
    assert_eq!(resp.status(), 500, "not listed (the default codes): the backend's answer as it is");
    assert_eq!(resp.text().await.unwrap(), r#"{"error":"ledger down"}"#);
    assert_eq!(failing.received().len(), 2);

    let resp = client.get(gw.url("/degraded")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"balance": "", "currency": "", "gateway_status": "upstream_unavailable"}));
    assert_eq!(client.get(gw.url("/plain")).send().await.unwrap().status(), 502, "no on_error: the plain status");

    assert_eq!(client.get(gw.url("/limited")).send().await.unwrap().status(), 200);
    let body: serde_json::Value = client.get(gw.url("/limited")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body, serde_json::json!({"found": false, "gateway_status": "rate_limited"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_budget_keeps_a_failing_backend_from_being_hit_four_times_over() {
    // A backend that accepts and drops every connection: each attempt is one accept.
    let listener = common::bind_unreserved().await;
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepts.clone();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let gw = TestGateway::start(
        &format!(
            "{BASE}{}",
            r#"
upstreams: { flaky: { targets: ["${FLAKY}"] } }
routes:
  - id: flaky
    match: { method: GET, path: "/flaky" }
    upstream: flaky
    timeout_ms: 2000
    retries: 3
"#
        ),
        &[("FLAKY", addr.to_string())],
    );
    let client = reqwest::Client::new();
    for _ in 0..300 {
        assert_eq!(client.get(gw.url("/flaky")).send().await.unwrap().status(), 502);
    }
    let attempts = accepts.load(Ordering::SeqCst);
    // Without a budget: 4 attempts each, 1200. With it: 300 + 10/s × 10 s + 20% of 300.
    assert!((400..=470).contains(&attempts), "{attempts} attempts for 300 requests");
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_stops_reading_does_not_hold_the_bulkhead() {
    // 32 MB: far more than the loopback socket buffers can hold for a caller that reads nothing.
    let big = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
    let backend = Backend::start(move |r| {
        let body = if r.uri.starts_with("/big") { big.clone() } else { Bytes::from_static(b"{}") };
        Box::pin(async move { http::Response::builder().status(200).body(http_body_util::Full::new(body)).unwrap() })
    })
    .await;
    let gw = start(
        r#"
upstreams: { crm: { targets: ["${BACKEND}"], max_inflight: 1 } }
routes:
  - id: any
    match: { method: GET, path: "/{*rest}" }
    upstream: crm
    timeout_ms: 1000
"#,
        &backend,
    );
    use tokio::io::AsyncWriteExt;
    let mut stuck = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stuck.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    while backend.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client = reqwest::Client::new();
    // While the stuck caller holds the only slot: 503 at once.
    assert_eq!(client.get(gw.url("/small")).send().await.unwrap().status(), 503);
    // Once a write has waited the route's deadline, the caller is cut off and the slot is free.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client.get(gw.url("/small")).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the stuck caller still holds the slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stuck);
}
