//! The binary's lifecycle: SIGTERM drains (in-flight requests finish, new connections are
//! refused, exit 0 as soon as none remain), an address in use is exit 2 with one clear line.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tls_client::TlsClient;
use common::{free_port, Backend};

fn write_config(dir: &tempfile::TempDir, port: u16, admin: u16, backend: SocketAddr, grace: u64) -> std::path::PathBuf {
    let path = dir.path().join("seawall.yaml");
    let yaml = format!(
        r#"
server: {{ threads: 1, grace_period_secs: {grace} }}
logging: {{ level: warn }}
listeners: [{{ name: public, address: "127.0.0.1:{port}" }}]
admin: {{ address: "127.0.0.1:{admin}" }}
upstreams:
  crm: {{ targets: ["{backend}"] }}
routes:
  - id: slow
    match: {{ method: GET, path: "/slow" }}
    upstream: crm
    timeout_ms: 5000
"#
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `seawall run -c CONFIG`; `stdout` is where its log goes.
fn spawn(config: &std::path::Path, stdout: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["run", "-c"])
        .arg(config)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// One admin request; the whole answer, or empty when the admin listener is not up.
fn admin_get(admin: u16, path: &str) -> String {
    let mut out = String::new();
    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) {
        let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes());
        let _ = s.read_to_string(&mut out);
    }
    out
}

fn wait_ready(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if admin_get(admin, "/readyz").starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(Instant::now() < deadline, "gateway not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([format!("-{name}"), child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_then_exits_promptly() {
    let backend = Backend::slow(Duration::from_millis(800)).await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = write_config(&dir, port, admin, backend.addr, 30);
    let mut child = spawn(&config, Stdio::null());
    wait_ready(admin);

    let in_flight = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        (out, Instant::now())
    });
    // SIGTERM once the backend is working on the request, not after a guessed pause.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.started() == 0 {
        assert!(Instant::now() < deadline, "the request never reached the backend");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&child, "TERM");
    // The listener closes while the request is still in flight (the backend takes 800 ms).
    let deadline = Instant::now() + Duration::from_millis(500);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "new connections accepted while draining");
        std::thread::sleep(Duration::from_millis(10));
    }

    let (answer, answered_at) = in_flight.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "in-flight request cut: {answer}");
    let status = wait_exit(&mut child, Duration::from_secs(5)).expect("did not exit after draining");
    assert!(status.success(), "exit status {status:?}");
    // Exits once drained, far before the 30 s grace period.
    assert!(answered_at.elapsed() < Duration::from_secs(2), "exit waited for the grace period");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_files_and_sigint_exits_fast() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = write_config(&dir, port, admin, backend.addr, 30);
    let mut child = spawn(&config, Stdio::null());
    wait_ready(admin);
    signal(&child, "HUP");
    // The reload is counted once done; the process is still there to count it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin_get(admin, "/metrics").contains(r#"seawall_config_reloads_total{result="success"} 1"#) {
        assert!(child.try_wait().unwrap().is_none(), "SIGHUP killed the gateway");
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_ready(admin);
    signal(&child, "INT");
    let status = wait_exit(&mut child, Duration::from_secs(3)).expect("SIGINT did not exit fast");
    assert!(status.success() || status.code().is_some(), "{status:?}");
}

#[test]
fn an_address_in_use_is_exit_2_with_one_line() {
    let busy = common::listen_unreserved();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, port, free_port(), "127.0.0.1:9".parse().unwrap(), 1);
    let output = Command::new(env!("CARGO_BIN_EXE_seawall")).args(["run", "-c"]).arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(&format!("cannot listen on 127.0.0.1:{port}")), "{stderr}");
    assert!(lines[0].contains("in use"), "{stderr}");
}

#[test]
fn an_invalid_or_missing_config_is_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_seawall")).args(["run", "-c"]).arg(&missing).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listeners: []\nadmin: { address: nowhere }\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_seawall")).args(["run", "-c"]).arg(&bad).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`listeners`: required"), "{stderr}");
    assert!(stderr.contains("`admin.address`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_routes_a_lookup_and_times_out_the_hanging_one() {
    let (port, admin, mtls) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["demo", "--port", &port.to_string(), "--admin-port", &admin.to_string()])
        .args(["--mtls-port", &mtls.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Drained as it comes: the demo logs every request, and a full pipe would stall it.
    let mut demo_stdout = child.stdout.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        demo_stdout.read_to_string(&mut text).unwrap();
        text
    });
    wait_ready(admin);
    let client = reqwest::Client::new();
    let resp = client.get(format!("http://127.0.0.1:{port}/accounts/1001")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["accountId"], "1001");
    let resp = client.get(format!("http://127.0.0.1:{port}/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // The cache: a miss then a hit; a herd of 200 on a cold account is one more miss (one CRM
    // query); a purge.
    let cache_status = |r: &reqwest::Response| r.headers()["cache-status"].to_str().unwrap().to_string();
    let cached = format!("http://127.0.0.1:{port}/cached/accounts/1001");
    assert_eq!(cache_status(&client.get(&cached).send().await.unwrap()), "seawall; fwd=miss; stored");
    assert!(cache_status(&client.get(&cached).send().await.unwrap()).starts_with("seawall; hit; ttl="));
    let herd: Vec<_> = (0..200)
        .map(|_| {
            let (client, url) = (client.clone(), format!("http://127.0.0.1:{port}/cached/accounts/2002"));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for request in herd {
        assert_eq!(request.await.unwrap(), 200);
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"seawall_cache_lookups_total{result="miss",route="cached_lookup"} 2"#), "{metrics}");
    let purged = client.delete(format!("http://127.0.0.1:{admin}/cache/cached_lookup")).send().await.unwrap();
    assert_eq!(purged.text().await.unwrap(), r#"{"purged":2,"route":"cached_lookup"}"#);

    // The mediations the demo prints: SOAP to the CRM (a customer, the CRM's fault for an unknown
    // one), SQL on the demo's SQLite database.
    let get_json = |path: &str| {
        let (client, url) = (client.clone(), format!("http://127.0.0.1:{port}{path}"));
        async move {
            let resp = client.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, customer) = get_json("/customers/42").await;
    assert_eq!(status, 200, "{customer}");
    assert!(customer["name"].is_string() && customer["accounts"].is_array() && customer["tierName"].is_string());
    assert_eq!(get_json("/customers/9001").await.1["code"], "not_found");
    let (status, balance) = get_json("/accounts/1001/balance").await;
    assert_eq!(
        (status, balance),
        (200, serde_json::json!({"balance": 1234.56, "currency": "USD", "updated_at": "2026-11-30T08:00:00Z"}))
    );
    assert_eq!(get_json("/accounts/4242/balance").await.0, 404);

    // The OAuth2 flow the demo prints: 401 without a token, a token from the built-in issuer, 200.
    let secure = format!("http://127.0.0.1:{port}/secure/accounts/1001");
    assert_eq!(client.get(&secure).send().await.unwrap().status(), 401);
    let token: serde_json::Value = client
        .post(format!("http://127.0.0.1:{port}/oauth/token"))
        .basic_auth("genesys-demo", Some("demo-secret-change-me"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    assert_eq!(client.get(&secure).bearer_auth(token).send().await.unwrap().status(), 200);
    let admin_route = format!("http://127.0.0.1:{port}/secure/admin/accounts/1001");
    assert_eq!(client.get(&admin_route).bearer_auth(token).send().await.unwrap().status(), 403);

    // The mTLS listener, with the certificates the demo made: no certificate fails the
    // handshake, another name is 403, the dev Genesys client without a token 401, with one 200.
    let material = std::env::temp_dir().join(format!("seawall-demo-{}", child.id()));
    let read = |name: &str| std::fs::read(material.join(name)).unwrap();
    let ca = openssl::x509::X509::from_pem(&read("ca.pem")).unwrap();
    let identity = |name: &str| {
        let cert = openssl::x509::X509::from_pem(&read(&format!("{name}.pem"))).unwrap();
        let key = openssl::pkey::PKey::private_key_from_pem(&read(&format!("{name}.key"))).unwrap();
        (cert, key)
    };
    let (genesys, other) = (identity("client"), identity("other-client"));
    let mtls_addr: SocketAddr = ([127, 0, 0, 1], mtls).into();
    type Identity = (openssl::x509::X509, openssl::pkey::PKey<openssl::pkey::Private>);
    fn with<'a>(ca: &'a openssl::x509::X509, id: Option<&'a Identity>) -> TlsClient<'a> {
        TlsClient { ca: Some(ca), identity: id.map(|(c, k)| (c, k)), ..Default::default() }
    }
    let caller = |id| with(&ca, id);
    assert!(caller(None).get(mtls_addr, "/secure/accounts/1001").await.is_err());
    assert_eq!(caller(Some(&other)).get(mtls_addr, "/secure/accounts/1001").await.unwrap().0, 403);
    assert_eq!(caller(Some(&genesys)).get(mtls_addr, "/secure/accounts/1001").await.unwrap().0, 401);
    let mut conn = caller(Some(&genesys)).connect(mtls_addr).await.unwrap();
    assert_eq!(conn.get_with_token("/secure/accounts/1001", token).await.unwrap().0, 200);

    // Backend protection: a usage plan, an open circuit, and the degraded answer of the same failure.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses
            .push(client.get(format!("http://127.0.0.1:{port}/limited/accounts/1001")).send().await.unwrap().status());
    }
    assert_eq!(statuses, [200, 200, 429]);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.get(format!("http://127.0.0.1:{port}/balance/1001")).send().await.unwrap().status());
    }
    assert_eq!(statuses, [500, 500, 500, 503]);
    let degraded: serde_json::Value =
        client.get(format!("http://127.0.0.1:{port}/ivr/balance/1001")).send().await.unwrap().json().await.unwrap();
    assert_eq!(degraded["gateway_status"], "circuit_open");

    let started = Instant::now();
    let resp = client.get(format!("http://127.0.0.1:{port}/accounts/hang")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(2300));
    signal(&child, "INT");
    let _ = wait_exit(&mut child, Duration::from_secs(3));
    let stdout = stdout_reader.join().unwrap();
    assert!(stdout.contains(&format!("curl -i http://127.0.0.1:{port}/accounts/1001")), "{stdout}");
    assert!(stdout.contains("/accounts/hang"), "{stdout}");
    assert!(stdout.contains(&format!("--cert {}/client.pem", material.display())), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_has_one_json_line_per_request_and_startup_says_where_it_listens() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let path = dir.path().join("seawall.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
server: {{ threads: 1 }}
logging: {{ level: info, format: json }}
listeners: [{{ name: public, address: "127.0.0.1:{port}" }}]
admin: {{ address: "127.0.0.1:{admin}" }}
upstreams: {{ crm: {{ targets: ["{}"] }} }}
routes:
  - {{ id: lookup, match: {{ method: GET, path: "/a/{{id}}" }}, upstream: crm, timeout_ms: 1000 }}
"#,
            backend.addr
        ),
    )
    .unwrap();
    let mut child = spawn(&path, Stdio::piped());
    wait_ready(admin);
    let client = reqwest::Client::new();
    let resp =
        client.get(format!("http://127.0.0.1:{port}/a/1")).header("x-request-id", "log-me-1").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client.get(format!("http://127.0.0.1:{port}/zzz")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // The drain waits for every request to finish its logging phase: no pause needed.
    signal(&child, "TERM");
    wait_exit(&mut child, Duration::from_secs(5)).expect("no exit");
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();

    let lines: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        lines.iter().any(|l| l["message"] == "listening (http)" && l["address"] == format!("127.0.0.1:{port}")),
        "{stdout}"
    );
    let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "seawall::access").collect();
    assert_eq!(access.len(), 2, "{stdout}");
    let ok = access.iter().find(|l| l["request_id"] == "log-me-1").expect("request id in the log");
    assert_eq!(ok["route"], "lookup");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream"], "crm");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0);
    let missing = access.iter().find(|l| l["status"] == 404).unwrap();
    assert_eq!(missing["code"], "route_not_found");
    assert_eq!(missing["route"], "_none");
}

/// Whether `pid` names a live process (a zombie left for init to reap counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// Kills a daemon the test started if the test ends first (a failed assertion), so no gateway
/// outlives its test.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
}

/// `seawall run -c CONFIG --daemon` with its files in `dir`; waits for the command to return.
fn run_daemon(config: &std::path::Path, dir: &tempfile::TempDir) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["run", "--daemon", "-c"])
        .arg(config)
        .arg("--pid-file")
        .arg(dir.path().join("seawall.pid"))
        .arg("--log-file")
        .arg(dir.path().join("seawall.log"))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_daemon_returns_once_serving_and_its_pid_file_goes_with_it() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = write_config(&dir, port, admin, backend.addr, 30);
    let yaml = std::fs::read_to_string(&config).unwrap().replace("level: warn", "level: info");
    std::fs::write(&config, yaml).unwrap();

    let output = run_daemon(&config, &dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let pid: u32 = String::from_utf8_lossy(&output.stdout).trim().parse().expect("the daemon's pid on stdout");
    let _reaper = KillOnDrop(pid);
    assert_eq!(std::fs::read_to_string(dir.path().join("seawall.pid")).unwrap(), format!("{pid}\n"));
    assert!(alive(pid));
    // Exit 0 means serving: no wait before the first request.
    assert!(admin_get(admin, "/readyz").starts_with("HTTP/1.1 200"));
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/slow")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let log = std::fs::read_to_string(dir.path().join("seawall.log")).unwrap();
    assert!(log.contains("listening (http)"), "the daemon logs to its log file: {log}");

    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "the daemon did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!dir.path().join("seawall.pid").exists(), "pid file left behind");
}

#[test]
fn run_daemon_that_cannot_start_exits_as_the_foreground_would() {
    let busy = common::listen_unreserved();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, port, free_port(), "127.0.0.1:9".parse().unwrap(), 1);
    let output = run_daemon(&config, &dir);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{stderr}");
    assert!(output.stdout.is_empty(), "no pid printed: {}", String::from_utf8_lossy(&output.stdout));
    assert!(!dir.path().join("seawall.pid").exists(), "pid file left behind");

    // An unusable log file is bad input: exit 1, before any fork.
    let output = Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["run", "--daemon", "-c"])
        .arg(&config)
        .arg("--log-file")
        .arg(dir.path().join("no-such-dir/seawall.log"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot open the log file"));

    // A bad config is refused before any fork, with its errors and exit 1.
    std::fs::write(&config, "listeners: []\nadmin: { address: nowhere }\n").unwrap();
    let output = run_daemon(&config, &dir);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`listeners`: required"));
}

#[test]
fn run_daemon_refuses_to_start_over_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, free_port(), free_port(), "127.0.0.1:9".parse().unwrap(), 1);
    // This test's own process stands for the running daemon.
    let pid_file = dir.path().join("seawall.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let output = run_daemon(&config, &dir);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("already running as pid {}", std::process::id())), "{stderr}");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{}\n", std::process::id()), "pid file kept");

    // A daemon starting at the same moment has not written its pid yet, but holds the file's
    // lock: the second one is refused by the lock, and leaves the file alone.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(&pid_file, format!("{}\n", gone.id())).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&pid_file).unwrap();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let output = run_daemon(&config, &dir);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is locked"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{}\n", gone.id()), "pid file kept");
    drop(lock);
}
