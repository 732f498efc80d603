//! Only the right addresses get in: route allowlists (inline and from files written by
//! `seawall genesys ipranges`), trusted proxies, and `X-Forwarded-For` that cannot be spoofed.

mod common;

use std::process::Command;

use common::{problem_code, Backend, TestGateway};

fn config(trusted: &str, lists: &str) -> String {
    format!(
        r#"
server: {{ threads: 1 }}
logging: {{ access_log: false }}
listeners: [{{ name: public, address: "127.0.0.1:${{PORT}}" }}]
admin: {{ address: "127.0.0.1:${{ADMIN_PORT}}" }}
trusted_proxies: {trusted}
ip_allowlists:
{lists}
upstreams:
  crm: {{ targets: ["${{BACKEND}}"] }}
routes:
  - id: guarded
    match: {{ method: GET, path: "/guarded" }}
    allow_ips: [callers]
    upstream: crm
    timeout_ms: 2000
  - id: open
    match: {{ method: GET, path: "/open" }}
    upstream: crm
    timeout_ms: 2000
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_outside_the_list_get_403_and_are_counted() {
    let backend = Backend::ok().await;
    let gw = TestGateway::start(
        &config("[]", "  callers: { cidrs: [10.0.0.0/8, \"2001:db8::/32\"] }"),
        &[("BACKEND", backend.addr.to_string())],
    );
    let client = reqwest::Client::new();
    let resp = client.get(gw.url("/guarded")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(problem_code(&resp.text().await.unwrap()), "ip_not_allowed");
    // A caller that is not a trusted proxy cannot claim an allowed address.
    let resp = client.get(gw.url("/guarded")).header("x-forwarded-for", "10.1.2.3").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(client.get(gw.url("/open")).send().await.unwrap().status(), 200);
    assert_eq!(backend.received().len(), 1, "a refused caller reached the backend");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_auth_rejections_total{layer="ip",reason="not_allowed"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"seawall_requests_total{route="guarded",status="403"} 2"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_callers_pass_from_inline_lists_and_files() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("genesys.json");
    std::fs::write(
        &file,
        r#"{"source":"genesys","region":"us-east-1","service":"data-actions","cidrs":["127.0.0.0/8"]}"#,
    )
    .unwrap();
    let lists = format!("  callers: {{ cidrs: [52.0.0.0/8], files: [\"{}\"] }}", file.display());
    let gw = TestGateway::start(&config("[]", &lists), &[("BACKEND", backend.addr.to_string())]);
    let resp = reqwest::get(gw.url("/guarded")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_files_are_read_again_on_reload_and_a_broken_one_is_kept() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("genesys.json");
    std::fs::write(&file, r#"{"cidrs":["52.0.0.0/8"]}"#).unwrap();
    let lists = format!("  callers: {{ files: [\"{}\"] }}", file.display());
    let gw = TestGateway::start(&config("[]", &lists), &[("BACKEND", backend.addr.to_string())]);
    let status = || async { reqwest::get(gw.url("/guarded")).await.unwrap().status().as_u16() };
    assert_eq!(status().await, 403);

    // Genesys published a new range (the test client's own address).
    std::fs::write(&file, r#"{"cidrs":["52.0.0.0/8","127.0.0.0/8"]}"#).unwrap();
    let report = seawall::reload::reload_files(&gw.gateway);
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(status().await, 200);

    // A half-written file: the reload says so and the list in use stays.
    std::fs::write(&file, r#"{"cidrs":["52.0.0.0/8","#).unwrap();
    let report = seawall::reload::reload_files(&gw.gateway);
    assert!(
        report.failures.iter().any(|f| f.contains("ip_allowlists.callers") && f.contains("not JSON")),
        "{report:?}"
    );
    assert_eq!(status().await, 200);
    std::fs::write(&file, r#"{"cidrs":[]}"#).unwrap();
    assert!(!seawall::reload::reload_files(&gw.gateway).is_success(), "an empty list would lock every caller out");
    assert_eq!(status().await, 200);
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_config_reloads_total{result="failure"} 2"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_decides() {
    let backend = Backend::ok().await;
    // The test client (127.0.0.1) plays the trusted load balancer.
    let gw = TestGateway::start(
        &config("[127.0.0.0/8]", "  callers: { cidrs: [198.51.100.0/24] }"),
        &[("BACKEND", backend.addr.to_string())],
    );
    let client = reqwest::Client::new();
    let send = |xff: &'static str| {
        let req = client.get(gw.url("/guarded"));
        async move { req.header("x-forwarded-for", xff).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send("198.51.100.7").await, 200);
    // The caller prepended an allowed address; the balancer appended the real one.
    assert_eq!(send("198.51.100.7, 203.0.113.5").await, 403);
    assert_eq!(send("203.0.113.5, 198.51.100.7").await, 200);
    // No header from a trusted proxy: the proxy itself is the caller, and it is not listed.
    assert_eq!(client.get(gw.url("/guarded")).send().await.unwrap().status(), 403);
    // The backend sees the chain with the socket peer appended.
    let last = backend.received().last().unwrap().clone();
    assert_eq!(last.header("x-forwarded-for"), Some("203.0.113.5, 198.51.100.7, 127.0.0.1"));
}

#[test]
fn genesys_ipranges_writes_an_allowlist_file_the_config_reads() {
    let dir = tempfile::tempdir().unwrap();
    let answer = dir.path().join("ipranges.json");
    std::fs::write(
        &answer,
        r#"{"entities":[
            {"cidr":"52.1.0.0/16","service":"data-actions","region":"us-east-1","direction":"outbound"},
            {"cidr":"52.9.0.0/16","service":"data-actions","region":"us-east-1","direction":"inbound"},
            {"cidr":"3.4.0.0/16","service":"data-actions","region":"eu-west-1","direction":"both"}]}"#,
    )
    .unwrap();
    let out = dir.path().join("allow.json");
    let status = Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["genesys", "ipranges", "--region", "us-east-1", "--from"])
        .arg(&answer)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written["cidrs"], serde_json::json!(["52.1.0.0/16"]));
    assert_eq!(written["region"], "us-east-1");
    assert_eq!(written["service"], "data-actions");
    assert_eq!(written["source"], "genesys");

    // The file feeds a config.
    let yaml = config("[]", &format!("  callers: {{ files: [\"{}\"] }}", out.display()));
    let lookup = |name: &str| match name {
        "PORT" => Some("1".to_string()),
        "ADMIN_PORT" => Some("2".to_string()),
        "BACKEND" => Some("127.0.0.1:9".to_string()),
        _ => None,
    };
    seawall::config::load_str(&yaml, &lookup).map(|_| ()).unwrap_or_else(|e| panic!("{e:?}"));

    // A malformed answer is one clear line and exit 1.
    std::fs::write(&answer, "{\"entities\": \"nope\"}").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["genesys", "ipranges", "--region", "us-east-1", "--from"])
        .arg(&answer)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a Genesys"), "{stderr}");
}

#[test]
fn bad_allowlists_are_reported_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"cidrs": ["10.0.0.0/8", "not-a-cidr"]}"#).unwrap();
    let lists = format!(
        "  callers: {{ cidrs: [10.0.0.0/33], files: [\"{}\", \"{}/missing.json\"] }}\n  empty: {{}}",
        broken.display(),
        dir.path().display()
    );
    let mut yaml = config("[10.0.0.0/8, bogus]", &lists);
    yaml = yaml.replace("allow_ips: [callers]", "allow_ips: [callers, nobody]");
    let lookup = |name: &str| match name {
        "PORT" => Some("1".to_string()),
        "ADMIN_PORT" => Some("2".to_string()),
        "BACKEND" => Some("127.0.0.1:9".to_string()),
        _ => None,
    };
    let errors = seawall::config::load_str(&yaml, &lookup).err().expect("invalid config accepted");
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for (path, fragment) in [
        ("`trusted_proxies[1]`", "not an IPv4/IPv6 address or CIDR"),
        ("`ip_allowlists.callers.cidrs[0]`", "10.0.0.0/33"),
        ("`ip_allowlists.callers.files[0]`", "cidrs[1]"),
        ("`ip_allowlists.callers.files[1]`", "cannot read"),
        ("`ip_allowlists.empty`", "would refuse every caller"),
        ("`routes[0].allow_ips[1]`", "unknown ip_allowlists entry `nobody`"),
    ] {
        assert!(text.iter().any(|t| t.starts_with(path) && t.contains(fragment)), "{path} {fragment}: {text:#?}");
    }
    assert_eq!(errors.len(), 6, "{text:#?}");
}
