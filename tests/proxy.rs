//! The proxy path end to end: routing, rewrite, forwarding headers, bodies, deadlines, errors
//! and metrics, through the real gateway and real backends on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{problem_code, raw_request, Backend, TestGateway};

fn config(routes: &str) -> String {
    format!(
        r#"
server: {{ threads: 1 }}
logging: {{ access_log: false }}
listeners:
  - name: public
    address: "127.0.0.1:${{PORT}}"
admin:
  address: "127.0.0.1:${{ADMIN_PORT}}"
upstreams:
  crm:
    targets: ["${{BACKEND}}"]
  dead:
    targets: ["${{DEAD}}"]
    connect_timeout_ms: 300
routes:
{routes}
"#
    )
}

fn start(routes: &str, backend: &Backend) -> TestGateway {
    let dead = format!("127.0.0.1:{}", common::free_port());
    TestGateway::start(&config(routes), &[("BACKEND", backend.addr.to_string()), ("DEAD", dead)])
}

const ROUTES: &str = r#"
  - id: account
    match: { method: GET, path: "/accounts/{accountId}" }
    upstream: crm
    upstream_path: "/legacy/account?id={accountId}"
    forward_query: true
    timeout_ms: 2000
  - id: account_special
    match: { method: GET, path: "/accounts/special" }
    upstream: crm
    upstream_path: "/special"
    timeout_ms: 2000
  - id: api
    match: { path: "/api/{*rest}" }
    upstream: crm
    upstream_path: "/v2/{rest}"
    timeout_ms: 2000
  - id: passthrough
    match: { method: [GET, POST], path: "/plain/{x}" }
    upstream: crm
    timeout_ms: 2000
    max_body_bytes: 1000
  - id: broken
    match: { method: GET, path: "/broken" }
    upstream: dead
    timeout_ms: 2000
"#;

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_precedence_and_rewrites_paths() {
    let backend = Backend::ok().await;
    let gw = start(ROUTES, &backend);
    let client = reqwest::Client::new();
    for (path, expected_uri) in [
        ("/accounts/special", "/special"),
        ("/accounts/42?channel=voice", "/legacy/account?id=42&channel=voice"),
        ("/accounts/a%26b%3Dc", "/legacy/account?id=a%26b%3Dc"),
        ("/api/x/y%2Fz", "/v2/x/y%2Fz"),
        ("/plain/7?q=1", "/plain/7?q=1"),
    ] {
        let resp = client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["uri"], expected_uri, "{path}");
    }
    assert_eq!(backend.received().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_get_404_and_wrong_methods_405_with_allow() {
    let backend = Backend::ok().await;
    let gw = start(ROUTES, &backend);
    let client = reqwest::Client::new();

    let resp = client.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(problem_code(&resp.text().await.unwrap()), "route_not_found");

    let resp = client.delete(gw.url("/accounts/42")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert_eq!(problem_code(&resp.text().await.unwrap()), "method_not_allowed");

    let resp = client.get(gw.url("/api/../admin")).send().await.unwrap();
    // reqwest normalises dot segments itself; send a raw one too.
    assert_ne!(resp.status(), 500);
    let raw = raw_request(gw.addr, &[b"GET /api/%2e%2e/admin HTTP/1.1\r\nHost: x\r\n\r\n"], Duration::ZERO).await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("\"code\":\"bad_request\""), "{raw}");

    assert!(backend.received().is_empty(), "the backend saw refused requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_upstream_port_is_502() {
    let backend = Backend::ok().await;
    let gw = start(ROUTES, &backend);
    let resp = reqwest::get(gw.url("/broken")).await.unwrap();
    assert_eq!(resp.status(), 502);
    let body = resp.text().await.unwrap();
    assert_eq!(problem_code(&body), "upstream_unavailable");
    assert!(!body.contains("127.0.0.1"), "address leaked: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hung_upstream_is_504_within_deadline_and_slow_one_passes() {
    let hung = Backend::slow(Duration::from_secs(30)).await;
    let routes = r#"
  - id: hang
    match: { method: GET, path: "/hang" }
    upstream: crm
    timeout_ms: 500
"#;
    let gw = start(routes, &hung);
    let started = Instant::now();
    let resp = reqwest::get(gw.url("/hang")).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(problem_code(&resp.text().await.unwrap()), "upstream_timeout");
    assert!(elapsed >= Duration::from_millis(480), "answered before the deadline: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(750), "answered after deadline + 250 ms: {elapsed:?}");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_upstream_requests_total{outcome="timeout",upstream="crm"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"seawall_requests_total{route="hang",status="504"} 1"#), "{metrics}");
    drop(gw);

    let slow = Backend::slow(Duration::from_millis(300)).await;
    let routes = r#"
  - id: slow
    match: { method: GET, path: "/slow" }
    upstream: crm
    timeout_ms: 1000
"#;
    let gw = start(routes, &slow);
    let resp = reqwest::get(gw.url("/slow")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "{\"slow\":true}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_covers_retries() {
    // Two targets: a closed port and a hung backend. With retries the deadline still holds.
    let hung = Backend::slow(Duration::from_secs(30)).await;
    let yaml = r#"
server: { threads: 1 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
upstreams:
  pair:
    targets: ["${DEAD}", "${HUNG}"]
routes:
  - id: r
    match: { method: GET, path: "/r" }
    upstream: pair
    timeout_ms: 600
    retries: 3
"#;
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = TestGateway::start(yaml, &[("DEAD", dead), ("HUNG", hung.addr.to_string())]);
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let started = Instant::now();
        let resp = client.get(gw.url("/r")).send().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(resp.status(), 504);
        assert!(elapsed < Duration::from_millis(850), "{elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_requests_retry_on_the_next_target_and_posts_do_not() {
    let good = Backend::ok().await;
    let yaml = r#"
server: { threads: 1 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
upstreams:
  pair:
    targets: ["${DEAD}", "${GOOD}"]
routes:
  - id: r
    match: { method: [GET, POST], path: "/r" }
    upstream: pair
    timeout_ms: 2000
    retries: 1
"#;
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = TestGateway::start(yaml, &[("DEAD", dead), ("GOOD", good.addr.to_string())]);
    let client = reqwest::Client::new();
    for _ in 0..4 {
        assert_eq!(client.get(gw.url("/r")).send().await.unwrap().status(), 200);
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.post(gw.url("/r")).body("{}").send().await.unwrap().status().as_u16());
    }
    // Round robin sends half the POSTs to the closed port, and those are not retried.
    assert_eq!(statuses.iter().filter(|s| **s == 502).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_take_turns_and_connections_are_reused() {
    let a = Backend::ok().await;
    let b = Backend::ok().await;
    let yaml = r#"
server: { threads: 1 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
upstreams:
  pair:
    targets: ["${A}", "${B}"]
routes:
  - id: r
    match: { method: GET, path: "/r" }
    upstream: pair
    timeout_ms: 2000
"#;
    let gw = TestGateway::start(yaml, &[("A", a.addr.to_string()), ("B", b.addr.to_string())]);
    let client = reqwest::Client::new();
    for _ in 0..10 {
        assert_eq!(client.get(gw.url("/r")).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.received().len(), 5);
    assert_eq!(b.received().len(), 5);
    for backend in [&a, &b] {
        let mut peers: Vec<_> = backend.received().iter().map(|r| r.peer).collect();
        peers.dedup();
        assert_eq!(peers.len(), 1, "a new upstream connection per request: {peers:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_post_reaches_the_backend_intact() {
    let backend = Backend::ok().await;
    let gw = start(ROUTES, &backend);
    let request: &[&[u8]] = &[
        b"POST /plain/1 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"7\r\n{\"a\":\"1\r\n",
        b"9\r\n23456789\"\r\n",
        b"1\r\n}\r\n0\r\n\r\n",
    ];
    let answer = raw_request(gw.addr, request, Duration::from_millis(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = backend.received();
    assert_eq!(received.len(), 1);
    assert_eq!(&received[0].body[..], b"{\"a\":\"123456789\"}");
    assert_eq!(received[0].header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_and_never_reach_the_backend_complete() {
    let backend = Backend::ok().await;
    let gw = start(ROUTES, &backend);
    let client = reqwest::Client::new();
    let resp = client.post(gw.url("/plain/1")).body(vec![b'x'; 1001]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(problem_code(&resp.text().await.unwrap()), "request_too_large");
    assert_eq!(backend.started(), 0, "the backend saw a request with a declared oversize body");

    let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
    let request: Vec<&[u8]> = vec![
        b"POST /plain/1 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunk.as_bytes(),
        chunk.as_bytes(),
        b"0\r\n\r\n",
    ];
    let answer = raw_request(gw.addr, &request, Duration::from_millis(20)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
    assert!(backend.received().is_empty(), "the backend got a complete oversized request");

    let resp = client.post(gw.url("/plain/1")).body(vec![b'z'; 1000]).send().await.unwrap();
    assert_eq!(resp.status(), 200, "a body at the limit passes");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_echoed_or_generated_and_forwarding_headers_set() {
    let backend = Backend::ok().await;
    let gw = start(ROUTES, &backend);
    let client = reqwest::Client::new();

    let resp = client
        .get(gw.url("/plain/1"))
        .header("x-request-id", "call-123.abc")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "call-123.abc");
    let got = &backend.received()[0];
    assert_eq!(got.header("x-request-id"), Some("call-123.abc"));
    assert_eq!(got.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(got.header("host"), Some(backend.addr.to_string().as_str()));
    assert_eq!(got.header("x-forwarded-host"), Some(gw.addr.to_string().as_str()));
    assert_eq!(got.header("x-secret"), None, "a connection-nominated header was forwarded");

    let resp = client.get(gw.url("/plain/2")).header("x-request-id", "bad id <script>").send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(backend.received()[1].header("x-request-id"), Some(id.as_str()));

    let resp = client.get(gw.url("/nowhere")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(resp.text().await.unwrap().contains(&id), "problem body names the request id");
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_response_headers_are_dropped() {
    let backend = Backend::start(|_| {
        Box::pin(async {
            let mut resp = common::json(200, "{}");
            let h = resp.headers_mut();
            h.insert("connection", "x-internal".parse().unwrap());
            h.insert("x-internal", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-kept", "yes".parse().unwrap());
            resp
        })
    })
    .await;
    let gw = start(ROUTES, &backend);
    let resp = reqwest::get(gw.url("/plain/1")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-kept"], "yes");
    assert!(!resp.headers().contains_key("x-internal"));
    assert!(!resp.headers().contains_key("keep-alive"));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_the_traffic() {
    let backend = Backend::ok().await;
    let gw = start(ROUTES, &backend);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(client.get(gw.url("/plain/1")).send().await.unwrap().status(), 200);
    }
    client.get(gw.url("/nowhere")).send().await.unwrap();
    client.get(gw.url("/broken")).send().await.unwrap();
    let metrics = gw.metrics().await;
    for line in [
        r#"seawall_requests_total{route="passthrough",status="200"} 3"#,
        r#"seawall_requests_total{route="_none",status="404"} 1"#,
        r#"seawall_requests_total{route="broken",status="502"} 1"#,
        r#"seawall_upstream_requests_total{outcome="ok",upstream="crm"} 3"#,
        r#"seawall_upstream_requests_total{outcome="error",upstream="dead"} 1"#,
        r#"seawall_request_duration_seconds_count{route="passthrough"} 3"#,
        r#"seawall_upstream_duration_seconds_count{upstream="crm"} 3"#,
        r#"seawall_inflight_requests{upstream="crm"} 0"#,
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    for line in metrics.lines().filter(|l| l.starts_with("seawall_")) {
        assert!(!line.contains("/plain"), "a raw path became a label: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_answer_only_on_the_admin_listener() {
    let backend = Backend::ok().await;
    let gw = start(ROUTES, &backend);
    let admin = |p: &str| format!("http://{}{}", gw.admin, p);
    assert_eq!(reqwest::get(admin("/healthz")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(admin("/readyz")).await.unwrap().status(), 200);
    let resp = reqwest::get(admin("/metrics")).await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(reqwest::get(gw.url(path)).await.unwrap().status(), 404, "{path} on the public listener");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_or_vanished_client_is_not_an_upstream_timeout() {
    let hung = Backend::slow(Duration::from_secs(30)).await;
    let routes = r#"
  - id: upload
    match: { method: [GET, POST], path: "/upload" }
    upstream: crm
    timeout_ms: 500
"#;
    let gw = start(routes, &hung);

    // The caller declares 100 bytes and sends 10: the backend waits for the rest.
    let request: &[&[u8]] = &[b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n0123456789"];
    let answer = raw_request(gw.addr, request, Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // The caller gives up while the backend is still working.
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(b"GET /upload HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The abandoned request ends when Pingora sees the caller gone; wait for its log line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut metrics = gw.metrics().await;
    while !metrics.contains(r#"seawall_requests_total{route="upload",status="499"} 1"#) {
        assert!(Instant::now() < deadline, "the vanished caller was never logged:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = gw.metrics().await;
    }

    assert!(
        metrics.contains(r#"seawall_upstream_requests_total{outcome="timeout",upstream="crm"} 0"#),
        "a client's fault was counted as an upstream timeout:\n{metrics}"
    );
    assert!(metrics.contains(r#"seawall_requests_total{route="upload",status="408"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"seawall_requests_total{route="upload",status="499"} 1"#), "{metrics}");
    assert!(!metrics.contains(r#"status="504""#), "{metrics}");
}

#[tokio::test]
async fn the_admin_api_shows_the_running_config_with_secrets_redacted() {
    let backend = Backend::ok().await;
    let yaml = format!(
        "{}\ntoken_issuer:\n  issuer: https://gw.test\n  signing_key: certs/dev/issuer-es256.pem\n  clients:\n    genesys: {{ secret: inline-secret-0123456789, scopes: [ivr.read], audience: api://x }}\n",
        config(ROUTES)
    );
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = TestGateway::start(&yaml, &[("BACKEND", backend.addr.to_string()), ("DEAD", dead)]);
    let response = reqwest::get(format!("http://{}/config", gw.admin)).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(!body.contains("inline-secret"), "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["config"]["token_issuer"]["clients"]["genesys"]["secret"], "<redacted>");
    assert_eq!(shown["config"]["upstreams"]["crm"]["targets"][0], "${BACKEND}", "as written, before expansion");
    assert_eq!(shown["config"]["routes"][0]["id"], "account");
    assert!(shown["hash"].as_str().unwrap().starts_with("sha256:"));
    let public = reqwest::get(gw.url("/config")).await.unwrap();
    assert_eq!(public.status(), 404, "never on a public listener");
}
