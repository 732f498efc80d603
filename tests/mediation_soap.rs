//! SOAP mediations end to end: the caller's REST request becomes a SOAP envelope at a real
//! backend, and its XML answer (or Fault) becomes flat JSON (or a mapped problem). Inputs are
//! checked before any backend is touched; hostile or broken answers are 502s with memory bounded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{problem_code, Backend, Received, TestGateway, BASE};
use http_body_util::Full;
use hyper::Response;
use seawall::mediation::xml::{Document, XmlLimits};

/// The SOAP service, at the test's backend.
const UPSTREAM: &str = r#"upstreams: { crm_soap: { targets: ["${BACKEND}"] } }"#;

const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";

fn xml(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A SOAP 1.1 answer carrying `customer` (the inside of `c:Customer`), with prefix `p` for the
/// CRM's namespace.
fn customer_answer(p: &str, customer: &str) -> String {
    format!(
        r#"<?xml version="1.0"?><soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><{p}:GetCustomerResponse xmlns:{p}="urn:crm"><{p}:Customer {customer}</{p}:Customer></{p}:GetCustomerResponse></soap:Body></soap:Envelope>"#
    )
}

fn fault11(code: &str) -> String {
    format!(
        r#"<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><soap:Fault><faultcode>soap:{code}</faultcode><faultstring>customer 42 does not exist</faultstring></soap:Fault></soap:Body></soap:Envelope>"#
    )
}

/// A backend answering every request with `body` (status `status`).
async fn answering(status: u16, body: String) -> Backend {
    Backend::start(move |_| {
        let body = body.clone();
        Box::pin(async move { xml(status, body) })
    })
    .await
}

/// The gateway with the shipped `plugins/crm-customer` on `GET /customers/{customerId}`.
fn shipped(backend: &Backend, route_extra: &str) -> TestGateway {
    customer_route(UPSTREAM, route_extra, &[("BACKEND", backend.addr.to_string())])
}

/// The same with its own `upstreams` section (YAML) and variables.
fn customer_route(upstreams: &str, route_extra: &str, vars: &[(&str, String)]) -> TestGateway {
    let yaml = format!(
        r#"{BASE}{upstreams}
plugins_dir: plugins
routes:
  - {{ id: customer, match: {{ method: GET, path: "/customers/{{customerId}}" }}, upstream: crm_soap,
      mediation: crm-customer, timeout_ms: 1000 {route_extra} }}
"#
    );
    TestGateway::start(&yaml, vars)
}

/// A gateway whose plugins folder holds one mediation, `m`, with these files, on `route`.
fn with_plugin(backend: &Backend, files: &[(&str, String)], route: &str) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("m")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("m").join(name), text).unwrap();
    }
    let yaml = format!("{BASE}{UPSTREAM}\nplugins_dir: {}\nroutes:\n  - {route}\n", dir.path().display());
    (TestGateway::start(&yaml, &[("BACKEND", backend.addr.to_string())]), dir)
}

async fn get(gw: &TestGateway, path: &str) -> (u16, String) {
    let response = reqwest::get(gw.url(path)).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn a_rest_lookup_becomes_a_soap_call_and_its_answer_flat_json() {
    let backend = Backend::start(|r: &Received| {
        // Three accounts for customer 3, one for anyone else; the CRM picks its own prefix.
        let three = String::from_utf8_lossy(&r.body).contains(">0000000003<");
        let accounts = if three {
            "<x:Account><x:Number>A1</x:Number></x:Account><x:Account><x:Number>A2</x:Number></x:Account><x:Account><x:Number>A3</x:Number></x:Account>"
        } else {
            "<x:Account><x:Number>A1</x:Number></x:Account>"
        };
        let body = customer_answer("x", &format!(r#"vip="true"><x:Name>Ada</x:Name><x:Tier>2</x:Tier><x:Accounts>{accounts}</x:Accounts>"#));
        Box::pin(async move { xml(200, body) })
    })
    .await;
    let gw = shipped(&backend, "");

    let (status, body) = get(&gw, "/customers/42?channel=chat").await;
    assert_eq!(status, 200, "{body}");
    let expected = serde_json::json!({"name": "Ada", "tier": 2, "tierName": "silver", "vip": true, "accounts": ["A1"]});
    assert_eq!(json(&body), expected, "mapped, then shaped by the script's `after`");
    let (status, body) = get(&gw, "/customers/3").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["accounts"], serde_json::json!(["A1", "A2", "A3"]), "an array for one or many");

    let sent = &backend.received()[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.uri, "/CustomerService.svc");
    assert_eq!(sent.header("soapaction"), Some("\"urn:crm/GetCustomer\""));
    assert_eq!(sent.header("content-type"), Some("text/xml; charset=utf-8"));
    assert!(sent.header("x-request-id").is_some());
    let envelope = String::from_utf8_lossy(&sent.body);
    assert!(envelope.contains("<crm:CustomerId>0000000042</crm:CustomerId>"), "padded by `before`: {envelope}");
    assert!(envelope.contains("<crm:Channel>chat</crm:Channel>"), "{envelope}");

    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_upstream_requests_total{outcome="ok",upstream="crm_soap"} 2"#), "{metrics}");
}

#[tokio::test]
async fn two_prefixes_for_one_namespace_give_the_same_json() {
    for prefix in ["x", "crm"] {
        let body = customer_answer(prefix, &format!("><{prefix}:Name>Ada</{prefix}:Name>"));
        let backend = answering(200, body).await;
        let gw = shipped(&backend, "");
        let (status, body) = get(&gw, "/customers/42").await;
        assert_eq!(status, 200);
        let expected = serde_json::json!({"name": "Ada", "tier": 0, "tierName": "none", "vip": false, "accounts": []});
        assert_eq!(json(&body), expected);
    }
    // A default namespace instead of a prefix.
    let body = format!(
        r#"<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><GetCustomerResponse xmlns="urn:crm"><Customer><Name>Ada</Name></Customer></GetCustomerResponse></soap:Body></soap:Envelope>"#
    );
    let backend = answering(200, body).await;
    let gw = shipped(&backend, "");
    assert_eq!(json(&get(&gw, "/customers/42").await.1)["name"], "Ada");
}

#[tokio::test]
async fn invalid_or_undeclared_inputs_are_400_before_the_backend() {
    let backend = answering(200, customer_answer("c", "><c:Name>Ada</c:Name>")).await;
    let gw = shipped(&backend, "");
    for (path, input) in [
        ("/customers/1%20OR%201=1", "customerId"),
        ("/customers/1;DROP%20TABLE%20customers", "customerId"),
        ("/customers/12345678901", "customerId"),
        ("/customers/42?channel=fax", "channel"),
        ("/customers/42?debug=true", "query.debug"),
    ] {
        let (status, body) = get(&gw, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(problem_code(&body), "invalid_input");
        assert_eq!(json(&body)["input"], input, "{path}");
        assert!(!body.contains("DROP") && !body.contains("fax"), "never echoes the value: {body}");
    }
    assert!(backend.received().is_empty(), "the backend saw nothing");
}

#[tokio::test]
async fn faults_map_to_problems_as_configured() {
    let backend = answering(500, fault11("Client.NotFound")).await;
    let gw = shipped(&backend, "");
    let (status, body) = get(&gw, "/customers/42").await;
    assert_eq!((status, problem_code(&body).as_str()), (404, "not_found"), "{body}");
    assert!(!body.contains("does not exist"), "the fault's text goes to the log, not the caller");

    let backend = answering(500, fault11("Server")).await;
    let gw = shipped(&backend, "");
    let (status, body) = get(&gw, "/customers/42").await;
    assert_eq!((status, problem_code(&body).as_str()), (502, "upstream_fault"));
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_upstream_requests_total{outcome="error",upstream="crm_soap"} 1"#));
}

const ECHO_MEDIATION_12: &str = r#"
inputs:
  note: { from: body, type: string, max_length: 64 }
  id: { from: body, type: integer, min: 1, max: 999 }
request:
  soap: { version: "1.2", action: "urn:crm/Note", path: /notes }
  template: request.xml.j2
response:
  namespaces: { env: "http://www.w3.org/2003/05/soap-envelope", n: "urn:notes" }
  root: /env:Envelope/env:Body/n:NoteResponse
  fields:
    saved: { select: n:Saved, type: boolean }
faults:
  - { code: "Sender", status: 400, problem: note_refused }
  - { code: "*", status: 502, problem: upstream_fault }
"#;

const ECHO_TEMPLATE_12: &str = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><n:Note xmlns:n="urn:notes" id="{{ id }}"><n:Text>{{ note }}</n:Text></n:Note></env:Body></env:Envelope>"#;

fn echo_plugin() -> Vec<(&'static str, String)> {
    vec![("mediation.yaml", ECHO_MEDIATION_12.to_string()), ("request.xml.j2", ECHO_TEMPLATE_12.to_string())]
}

const ECHO_ROUTE: &str = r#"{ id: note, match: { method: POST, path: "/notes" }, upstream: crm_soap, mediation: m,
      timeout_ms: 500, max_body_bytes: 256 }"#;

#[tokio::test]
async fn soap12_body_inputs_stay_well_formed_and_sender_faults_map() {
    let saved = format!(
        r#"<e:Envelope xmlns:e="{SOAP12}"><e:Body><NoteResponse xmlns="urn:notes"><Saved>1</Saved></NoteResponse></e:Body></e:Envelope>"#
    );
    let backend = Backend::start(move |r: &Received| {
        let answer = if String::from_utf8_lossy(&r.body).contains("refuse") {
            format!(
                r#"<e:Envelope xmlns:e="{SOAP12}"><e:Body><e:Fault><e:Code><e:Value>e:Sender</e:Value></e:Code><e:Reason><e:Text xml:lang="en">no</e:Text></e:Reason></e:Fault></e:Body></e:Envelope>"#
            )
        } else {
            saved.clone()
        };
        Box::pin(async move { xml(if answer.contains("Fault") { 400 } else { 200 }, answer) })
    })
    .await;
    let (gw, _dir) = with_plugin(&backend, &echo_plugin(), ECHO_ROUTE);
    let client = reqwest::Client::new();
    let response = client
        .post(gw.url("/notes"))
        .header("content-type", "application/json")
        .body(r#"{"note": "<&\"'> </n:Text><evil/>", "id": "7"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(&response.text().await.unwrap()), serde_json::json!({"saved": true}));

    let sent = &backend.received()[0];
    assert_eq!(sent.header("content-type"), Some(r#"application/soap+xml; charset=utf-8; action="urn:crm/Note""#));
    assert_eq!(sent.header("soapaction"), None);
    let limits = XmlLimits { max_bytes: 65536, max_depth: 16 };
    let envelope = Document::parse(&sent.body, limits).expect("the envelope stays well-formed");
    let ns = std::collections::BTreeMap::from([("e".into(), SOAP12.into()), ("n".into(), "urn:notes".into())]);
    let text = seawall::mediation::xml::Selector::parse("e:Envelope/e:Body/n:Note/n:Text", &ns).unwrap();
    assert_eq!(envelope.select(Document::ROOT, &text), vec![r#"<&"'> </n:Text><evil/>"#]);

    let response = client.post(gw.url("/notes")).body(r#"{"note": "refuse", "id": 8}"#).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(problem_code(&response.text().await.unwrap()), "note_refused");

    // Genesys may send the body chunked (GENESYS.md): the inputs are read across the chunks.
    let request: &[&[u8]] = &[
        b"POST /notes HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"c\r\n{\"note\": \"ch\r\n",
        b"13\r\nunked\", \"id\": \"42\"}\r\n0\r\n\r\n",
    ];
    let answer = common::raw_request(gw.addr, request, Duration::from_millis(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let sent = backend.received().last().unwrap().clone();
    let envelope = Document::parse(&sent.body, limits).expect("a well-formed envelope");
    assert_eq!(envelope.select(Document::ROOT, &text), vec!["chunked"]);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_bad_bodies_400_before_the_backend() {
    let backend = answering(200, String::new()).await;
    let (gw, _dir) = with_plugin(&backend, &echo_plugin(), ECHO_ROUTE);
    let client = reqwest::Client::new();
    let big = format!(r#"{{"note": "{}", "id": 1}}"#, "x".repeat(300));
    let response = client.post(gw.url("/notes")).body(big).send().await.unwrap();
    assert_eq!(response.status(), 413);
    for (body, input) in [
        (r#"{"note": "hi", "id": 0}"#, "id"),
        (r#"{"note": "hi", "id": 1.5}"#, "id"),
        (r#"{"note": "hi"}"#, "id"),
        (r#"{"note": "hi", "id": 1, "extra": 2}"#, "body.extra"),
        (r#"{"note": ["hi"], "id": 1}"#, "note"),
        ("not json", "body"),
    ] {
        let response = client.post(gw.url("/notes")).body(body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(json(&response.text().await.unwrap())["input"], input, "{body}");
    }
    assert!(backend.received().is_empty());
}

#[tokio::test]
async fn hostile_or_broken_answers_are_502_upstream_bad_answer() {
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]><lolz>&lol2;</lolz>"#;
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>"#;
    let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
    let large = customer_answer("c", &format!("><c:Name>{}</c:Name>", "x".repeat(1_100_000)));
    let cases = [
        ("malformed", "<soap:Envelope><soap:Body>".to_string()),
        ("billion laughs", laughs.to_string()),
        ("xxe", xxe.to_string()),
        ("too deep", deep),
        ("too large", large),
        ("wrong type", customer_answer("c", "><c:Tier>gold</c:Tier>")),
        ("no root", format!(r#"<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body/></soap:Envelope>"#)),
    ];
    for (name, answer) in cases {
        let backend = answering(200, answer).await;
        let gw = shipped(&backend, "");
        let (status, body) = get(&gw, "/customers/42").await;
        assert_eq!((status, problem_code(&body).as_str()), (502, "upstream_bad_answer"), "{name}: {body}");
        assert!(!body.contains("passwd") && !body.contains("lol"), "{name}");
    }
}

#[tokio::test]
async fn a_slow_backend_gets_504_and_a_degraded_answer_where_declared() {
    let backend = Backend::start(|_| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            xml(200, String::new())
        })
    })
    .await;
    let gw = shipped(&backend, "");
    let started = std::time::Instant::now();
    let (status, body) = get(&gw, "/customers/42").await;
    assert_eq!((status, problem_code(&body).as_str()), (504, "upstream_timeout"));
    assert!(started.elapsed() < Duration::from_millis(2000), "answered at the deadline");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_upstream_requests_total{outcome="timeout",upstream="crm_soap"} 1"#));

    let degraded = shipped(&backend, r#", on_error: { body: { name: "", tier: 0 } }"#);
    let (status, body) = get(&degraded, "/customers/42").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body), serde_json::json!({"name": "", "tier": 0, "gateway_status": "upstream_timeout"}));
}

#[tokio::test]
async fn server_faults_open_the_circuit() {
    let backend = answering(500, fault11("Server")).await;
    let upstreams = r#"upstreams:
  crm_soap:
    targets: ["${BACKEND}"]
    circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window_secs: 10, open_secs: 30 }"#;
    let gw = customer_route(upstreams, "", &[("BACKEND", backend.addr.to_string())]);
    for _ in 0..4 {
        assert_eq!(get(&gw, "/customers/42").await.0, 502);
    }
    let (status, body) = get(&gw, "/customers/42").await;
    assert_eq!((status, problem_code(&body).as_str()), (503, "circuit_open"));
    assert_eq!(backend.received().len(), 4, "the open circuit kept the fifth call away");
}

#[tokio::test]
async fn a_script_over_its_budget_is_500_and_the_next_request_is_fine() {
    let backend = answering(
        200,
        format!(r#"<e:Envelope xmlns:e="{SOAP12}"><e:Body><n:NoteResponse xmlns:n="urn:notes"><n:Saved>true</n:Saved></n:NoteResponse></e:Body></e:Envelope>"#),
    )
    .await;
    let mut files = echo_plugin();
    files[0].1.push_str("script: hooks.lua\n");
    files.push((
        "hooks.lua",
        r#"
function before(inputs)
  if inputs.note == "spin" then while true do end end
  if inputs.note == "fail" then error("refused by the script") end
  return inputs
end
function after(answer, inputs)
  answer.note = string.upper(inputs.note)
  return answer
end
"#
        .to_string(),
    ));
    let (gw, _dir) = with_plugin(&backend, &files, ECHO_ROUTE);
    let client = reqwest::Client::new();
    for note in ["spin", "fail"] {
        let started = std::time::Instant::now();
        let response =
            client.post(gw.url("/notes")).body(format!(r#"{{"note": "{note}", "id": 1}}"#)).send().await.unwrap();
        assert_eq!(response.status(), 500, "{note}");
        let body = response.text().await.unwrap();
        assert_eq!(problem_code(&body), "script_error");
        assert!(!body.contains("refused by the script"), "the reason goes to the log");
        assert!(started.elapsed() < Duration::from_secs(2), "{note}: stopped by its budget");
    }
    assert!(backend.received().is_empty(), "`before` failed: the backend was never called");
    let response = client.post(gw.url("/notes")).body(r#"{"note": "hello", "id": 1}"#).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(&response.text().await.unwrap()), serde_json::json!({"saved": true, "note": "HELLO"}));
}

#[tokio::test]
async fn mediated_answers_are_cached_a_herd_costs_one_call_and_stale_covers_failures() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let failing = Arc::new(AtomicBool::new(false));
    // The SOAP service answers nothing until the test opens the gate: the whole herd is inside
    // the gateway by then, so one call proves the herd was collapsed, not that it came in turns.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (flag, held) = (failing.clone(), gate.clone());
    let backend = Backend::start(move |_| {
        let fail = flag.load(Ordering::SeqCst);
        let held = held.clone();
        Box::pin(async move {
            let _open = held.acquire().await.expect("the gate is never closed");
            if fail {
                xml(500, fault11("Server"))
            } else {
                xml(200, customer_answer("c", "><c:Name>Ada</c:Name>"))
            }
        })
    })
    .await;
    let gw = shipped(
        &backend,
        ", cache: { ttl_secs: 10, vary: [path.customerId], stale_if_error_secs: 300, origin_cache_control: ignore }",
    );
    let herd: Vec<_> = (0..100)
        .map(|_| {
            let url = gw.url("/customers/42");
            tokio::spawn(async move {
                let response = reqwest::get(url).await.unwrap();
                let status = response.headers()["cache-status"].to_str().unwrap().to_string();
                (response.status().as_u16(), status, response.text().await.unwrap())
            })
        })
        .collect();
    let gathered = std::time::Instant::now() + Duration::from_secs(10);
    while gw.gateway.active_requests() < 100 {
        assert!(std::time::Instant::now() < gathered, "the herd never gathered in the gateway");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    for request in herd {
        let (status, cache_status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["name"], "Ada");
        assert!(cache_status == "seawall; fwd=miss; stored" || cache_status.contains("hit"), "{cache_status}");
    }
    assert_eq!(backend.received().len(), 1, "a herd of 100 cost the SOAP service one call");

    let response = reqwest::get(gw.url("/customers/7")).await.unwrap();
    assert_eq!(response.headers()["cache-status"], "seawall; fwd=miss; stored", "another key, another entry");
    assert_eq!(backend.received().len(), 2);

    // Expired, and the CRM now faults: the stale entry answers.
    failing.store(true, Ordering::SeqCst);
    gw.gateway.clock.advance(Duration::from_secs(11));
    let response = reqwest::get(gw.url("/customers/42")).await.unwrap();
    assert_eq!(response.status(), 200);
    let cache_status = response.headers()["cache-status"].to_str().unwrap().to_string();
    assert!(cache_status.contains("detail=stale-if-error"), "{cache_status}");
    assert_eq!(json(&response.text().await.unwrap())["name"], "Ada");
}

#[tokio::test]
async fn a_flow_gets_a_degraded_200_for_a_server_fault_or_a_broken_answer() {
    let on_error = r#", on_error: { body: { name: "", tier: 0 } }"#;
    let cases = [(500, fault11("Server"), "upstream_fault"), (200, "<broken".to_string(), "upstream_bad_answer")];
    for (status, answer, code) in cases {
        let backend = answering(status, answer).await;
        let gw = shipped(&backend, on_error);
        let (status, body) = get(&gw, "/customers/42").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["gateway_status"], code);
    }
    // A Client fault is about the request, not a failure: it stays a 404 the flow branches on.
    let backend = answering(500, fault11("Client")).await;
    let gw = shipped(&backend, on_error);
    assert_eq!(get(&gw, "/customers/42").await.0, 404);
}

#[tokio::test]
async fn a_call_that_got_no_answer_is_retried_on_the_next_target() {
    let backend = answering(200, customer_answer("c", "><c:Name>Ada</c:Name>")).await;
    let dead = format!("127.0.0.1:{}", common::free_port());
    let upstreams = r#"upstreams: { crm_soap: { targets: ["${DEAD}", "${BACKEND}"], connect_timeout_ms: 300 } }"#;
    let vars = [("BACKEND", backend.addr.to_string()), ("DEAD", dead)];
    let gw = customer_route(upstreams, ", retries: 1", &vars);
    for _ in 0..6 {
        let (status, body) = get(&gw, "/customers/42").await;
        assert_eq!(status, 200, "the refused connection is retried on the live target: {body}");
    }
    assert_eq!(backend.received().len(), 6);
    drop(gw);

    let gw = customer_route(upstreams, "", &vars);
    let mut refused = 0;
    for _ in 0..6 {
        let (status, body) = get(&gw, "/customers/42").await;
        if status == 502 {
            assert_eq!(problem_code(&body), "upstream_unavailable");
            refused += 1;
        }
    }
    assert_eq!(refused, 3, "without retries, every other call goes to the dead target");
}

/// `seawall test plugins/NAME [--update]` as users run it: a wrong expectation is exit 1 with a
/// diff, `--update` rewrites it from what the mediation does, and the cases pass again.
#[test]
fn seawall_test_fails_on_a_wrong_expectation_and_update_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("crm-customer");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/crm-customer");
    for sub in ["", "tests"] {
        std::fs::create_dir_all(plugin.join(sub)).unwrap();
        for entry in std::fs::read_dir(shipped.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), plugin.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    let case = plugin.join("tests/not-found.yaml");
    let right = std::fs::read_to_string(&case).unwrap();
    assert!(right.contains("code: not_found"));
    std::fs::write(&case, right.replace("code: not_found", "code: not_there")).unwrap();
    let run = |update: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_seawall"));
        command.arg("test").arg(&plugin);
        if update {
            command.arg("--update");
        }
        let output = command.output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };

    let (code, out) = run(false);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not-found.yaml: FAILED"), "{out}");
    assert!(out.contains("not_there") && out.contains("not_found"), "the diff names both: {out}");
    assert!(out.contains("3 passed, 1 failed, 0 updated"), "{out}");

    let (code, out) = run(true);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("not-found.yaml: updated"), "{out}");
    assert!(std::fs::read_to_string(&case).unwrap().contains("code: not_found"));
    let (code, out) = run(false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4 passed, 0 failed, 0 updated"), "{out}");
}
