//! Test harness: the real gateway in-process on ephemeral loopback ports, and real HTTP backends
//! (hyper) that record what they receive. Nothing of Seawall's own is mocked.
#![allow(dead_code)]

pub mod certs;
pub mod databases;
pub mod tls_client;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use seawall::lifecycle::ShutdownHandle;

/// The sections every gateway under test shares: two threads, no access log, one plain
/// listener and the admin listener on the free ports `TestGateway::start` fills in.
pub const BASE: &str = r#"
server: { threads: 2 }
logging: { access_log: false }
listeners: [{ name: public, address: "127.0.0.1:${PORT}" }]
admin: { address: "127.0.0.1:${ADMIN_PORT}" }
"#;

/// Ports handed out in this test binary, by [`free_port`] or to a [`Backend`].
static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Takes `port` for this caller; `false` when someone in this test binary has it already.
fn take_port(port: u16) -> bool {
    GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port)
}

/// A free loopback port (bound, read, released), never the same twice in one test binary: the
/// kernel may hand a just-released ephemeral port out again, and a listener and an admin port
/// that collide make a config invalid.
pub fn free_port() -> u16 {
    loop {
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if take_port(port) {
            return port;
        }
    }
}

/// [`bind_unreserved`], blocking: a listener a test holds (a port in use, a server of its own).
pub fn listen_unreserved() -> StdListener {
    loop {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        if take_port(listener.local_addr().unwrap().port()) {
            return listener;
        }
    }
}

/// A loopback listener on a port no one else in this test binary holds. The kernel may give a
/// fresh listener the port [`free_port`] just released for a gateway that has not bound it yet;
/// that gateway would then fail to bind while its readiness check saw this listener's socket.
pub async fn bind_unreserved() -> tokio::net::TcpListener {
    loop {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        if take_port(listener.local_addr().unwrap().port()) {
            return listener;
        }
    }
}

/// A running gateway; dropping it stops it.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The running gateway's state (to reload files as SIGHUP does).
    pub gateway: Arc<seawall::gateway::Gateway>,
    shutdown: Option<ShutdownHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway from YAML in which `${PORT}` and `${ADMIN_PORT}` are filled with free
    /// ports and `vars` give the other variables (backend addresses). Waits until ready.
    pub fn start(yaml: &str, vars: &[(&str, String)]) -> TestGateway {
        let port = free_port();
        let admin_port = free_port();
        let mut env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        env.insert("PORT".into(), port.to_string());
        env.insert("ADMIN_PORT".into(), admin_port.to_string());
        let lookup = move |name: &str| env.get(name).cloned();
        let config = seawall::config::load_str(yaml, &lookup)
            .unwrap_or_else(|errors| panic!("test config invalid: {:#?}", errors));
        let built = seawall::build(config).unwrap_or_else(|e| panic!("build failed: {e:?}"));
        let gateway = built.gateway.clone();
        let built_gateway = built.gateway.clone();
        let (handle, watch) = ShutdownHandle::new();
        let thread = std::thread::spawn(move || built.run(Box::new(watch)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gateway.is_ready() {
            assert!(Instant::now() < deadline, "gateway not ready within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        TestGateway {
            addr: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], admin_port).into(),
            gateway: built_gateway,
            shutdown: Some(handle),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin)).await.unwrap().text().await.unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(handle) = self.shutdown.take() {
            handle.shutdown(false);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a backend received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: HashMap<String, Vec<String>>,
    pub body: Bytes,
    pub peer: SocketAddr,
    /// The common name of the certificate the client presented (TLS backends only).
    pub client_cert_cn: Option<String>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

pub type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// A TLS server's settings with `cert` (Mozilla's intermediate profile).
fn tls_acceptor(cert: &certs::Issued) -> openssl::ssl::SslAcceptorBuilder {
    use openssl::ssl::{SslAcceptor, SslMethod};
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    acceptor.set_certificate(&cert.cert).unwrap();
    acceptor.set_private_key(&cert.key).unwrap();
    acceptor
}

/// A real HTTP/1.1 backend on an ephemeral loopback port that records complete requests.
pub struct Backend {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests whose head arrived (counted before the body is read).
    started: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Backend {
        Backend::start_with(handler, None).await
    }

    /// The same over TLS with the given server certificate.
    pub async fn start_tls(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
        cert: &certs::Issued,
    ) -> Backend {
        Backend::start_with(handler, Some(tls_acceptor(cert).build())).await
    }

    /// The same, but the handshake fails unless the client presents a certificate that chains
    /// to `client_ca` (what a backend that requires mutual TLS does).
    pub async fn start_mtls(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
        cert: &certs::Issued,
        client_ca: &certs::Issued,
    ) -> Backend {
        use openssl::ssl::SslVerifyMode;
        let mut acceptor = tls_acceptor(cert);
        acceptor.cert_store_mut().add_cert(client_ca.cert.clone()).unwrap();
        acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        Backend::start_with(handler, Some(acceptor.build())).await
    }

    async fn start_with(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
        tls: Option<openssl::ssl::SslAcceptor>,
    ) -> Backend {
        let tls = tls.map(Arc::new);
        let listener = bind_unreserved().await;
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(Mutex::new(0));
        let handler: Handler = Arc::new(handler);
        let (rec, st) = (received.clone(), started.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let (rec, st, handler, tls) = (rec.clone(), st.clone(), handler.clone(), tls.clone());
                tokio::spawn(async move {
                    // Set by the TLS handshake when the client shows a certificate.
                    let client_cert_cn = Arc::new(std::sync::OnceLock::<String>::new());
                    let cn = client_cert_cn.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (rec, st, handler, cn) = (rec.clone(), st.clone(), handler.clone(), cn.clone());
                        async move {
                            *st.lock().unwrap() += 1;
                            let (parts, body) = req.into_parts();
                            let body = match body.collect().await {
                                Ok(b) => b.to_bytes(),
                                Err(_) => return Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))),
                            };
                            let mut headers: HashMap<String, Vec<String>> = HashMap::new();
                            for (k, v) in parts.headers.iter() {
                                headers
                                    .entry(k.as_str().to_string())
                                    .or_default()
                                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                            }
                            let r = Received {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers,
                                body,
                                peer,
                                client_cert_cn: cn.get().cloned(),
                            };
                            rec.lock().unwrap().push(r.clone());
                            Ok::<_, Infallible>(handler(&r).await)
                        }
                    });
                    match tls {
                        None => {
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            let Ok(ssl) = openssl::ssl::Ssl::new(acceptor.context()) else { return };
                            let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, stream) else { return };
                            if Pin::new(&mut stream).accept().await.is_err() {
                                return;
                            }
                            if let Some(cert) = stream.ssl().peer_certificate() {
                                let _ = client_cert_cn.set(seawall::tls::client_cert::common_name(&cert));
                            }
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Backend { addr, received, started, task }
    }

    /// Answers 200 with a small JSON body naming the path it got.
    pub async fn ok() -> Backend {
        Backend::start(|r| {
            let body = format!("{{\"uri\":\"{}\"}}", r.uri);
            Box::pin(async move { json(200, &body) })
        })
        .await
    }

    /// Answers 200 after `delay`.
    pub async fn slow(delay: Duration) -> Backend {
        Backend::start(move |_| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                json(200, "{\"slow\":true}")
            })
        })
        .await
    }

    /// Gives `off` until the test sets the returned switch, then `on` (a backend that falls
    /// sick, hangs or heals on cue).
    pub async fn switched(off: Canned, on: Canned) -> (Backend, Arc<std::sync::atomic::AtomicBool>) {
        let switch = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = switch.clone();
        let backend = Backend::start(move |_| {
            let answer = if flag.load(std::sync::atomic::Ordering::SeqCst) { on } else { off };
            Box::pin(async move {
                tokio::time::sleep(answer.delay).await;
                json(answer.status, answer.body)
            })
        })
        .await;
        (backend, switch)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn started(&self) -> usize {
        *self.started.lock().unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One answer of [`Backend::switched`]: status, JSON body, and how long it takes.
#[derive(Debug, Clone, Copy)]
pub struct Canned {
    pub status: u16,
    pub body: &'static str,
    pub delay: Duration,
}

impl Canned {
    pub fn new(status: u16, body: &'static str) -> Canned {
        Canned { status, body, delay: Duration::ZERO }
    }

    pub fn after(self, delay: Duration) -> Canned {
        Canned { delay, ..self }
    }
}

pub fn json(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Sends raw bytes and reads the whole answer (the gateway closes or the answer is complete).
pub async fn raw_request(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for part in parts {
        if stream.write_all(part).await.is_err() {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if response_complete(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response_complete(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>()))
        .and_then(Result::ok);
    length.is_some_and(|n| body.len() >= n)
}

/// The problem+json `code` of an answer body.
pub fn problem_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["code"].as_str().unwrap_or_default().to_string()
}
