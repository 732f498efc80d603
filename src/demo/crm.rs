//! The demo's simulated legacy CRM: a few ms per lookup, slower beyond its capacity, one
//! account that hangs, and a count of the queries it served (so the demo can show what reached
//! the backend). It also speaks SOAP 1.1 (`POST /CustomerService.svc`, `GetCustomer`, with a
//! Client fault for customers it does not know), for the demo's SOAP mediation. Served by a
//! Pingora service on its own loopback port.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// Concurrent lookups the CRM handles at full speed.
pub const CAPACITY: usize = 8;
/// Added per lookup over capacity: the CRM slows down instead of refusing, like real ones do.
const OVERLOAD_PENALTY: Duration = Duration::from_millis(25);
/// The account whose lookup never finishes (in demo time).
pub const HANGING_ACCOUNT: &str = "hang";
const HANG: Duration = Duration::from_secs(120);
const MAX_NOTE_BYTES: usize = 64 * 1024;
/// The SOAP service's path, and the first customer id it does not know.
pub const SOAP_PATH: &str = "/CustomerService.svc";
pub const FIRST_UNKNOWN_CUSTOMER: u64 = 9000;
const SOAP_ENVELOPE: &str = "http://schemas.xmlsoap.org/soap/envelope/";

#[derive(Default)]
pub struct CrmStats {
    pub queries: AtomicU64,
    pub inflight: AtomicUsize,
}

pub struct SimulatedCrm {
    pub stats: Arc<CrmStats>,
}

struct InflightGuard<'a>(&'a AtomicUsize);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

/// A stable, made-up account for a numeric id.
fn account(id: &str) -> serde_json::Value {
    let n: u64 = id.bytes().fold(7, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let names = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Edsger Dijkstra"];
    serde_json::json!({
        "accountId": id,
        "name": names[(n % names.len() as u64) as usize],
        "balance": format!("{}.{:02}", n % 10_000, n % 100),
        "currency": "USD",
        "tier": n % 4,
    })
}

fn xml(status: StatusCode, body: String) -> Response<Vec<u8>> {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "text/xml; charset=utf-8")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

fn soap_fault(code: &str, reason: &str) -> Response<Vec<u8>> {
    xml(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_ENVELOPE}"><soap:Body><soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{reason}</faultstring></soap:Fault></soap:Body></soap:Envelope>"#
        ),
    )
}

/// `GetCustomer`: the customer id read from the envelope (by namespace, as any SOAP service),
/// a made-up customer with one to three accounts, or a Client fault.
fn get_customer(envelope: &[u8]) -> Response<Vec<u8>> {
    use crate::mediation::xml::{Document, Selector, XmlLimits};
    let limits = XmlLimits { max_bytes: MAX_NOTE_BYTES, max_depth: 16 };
    let namespaces = [("s".to_string(), SOAP_ENVELOPE.to_string()), ("c".to_string(), "urn:crm".to_string())];
    let id = Document::parse(envelope, limits).ok().and_then(|doc| {
        let selector = Selector::parse("s:Envelope/s:Body/c:GetCustomer/c:CustomerId", &namespaces.into()).ok()?;
        doc.select(Document::ROOT, &selector).first().and_then(|id| id.parse::<u64>().ok())
    });
    let Some(id) = id else {
        return soap_fault("Client.BadRequest", "GetCustomer needs a numeric CustomerId");
    };
    if id >= FIRST_UNKNOWN_CUSTOMER {
        return soap_fault("Client.NotFound", &format!("Customer {id} not found"));
    }
    let customer = account(&id.to_string());
    let accounts: String =
        (0..1 + id % 3).map(|n| format!("<Account><Number>ACC-{}</Number></Account>", id * 10 + n)).collect();
    xml(
        StatusCode::OK,
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_ENVELOPE}"><soap:Body><GetCustomerResponse xmlns="urn:crm"><Customer vip="{}"><Name>{}</Name><Tier>{}</Tier><Accounts>{accounts}</Accounts></Customer></GetCustomerResponse></soap:Body></soap:Envelope>"#,
            id % 5 == 0,
            customer["name"].as_str().unwrap_or_default(),
            customer["tier"],
        ),
    )
}

#[async_trait]
impl ServeHttp for SimulatedCrm {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        if path == "/crm/stats" {
            return json(
                StatusCode::OK,
                serde_json::json!({
                    "queries": self.stats.queries.load(Ordering::Relaxed),
                    "inflight": self.stats.inflight.load(Ordering::Relaxed),
                }),
            );
        }
        if path == SOAP_PATH {
            self.stats.queries.fetch_add(1, Ordering::Relaxed);
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = session.read_request_body().await {
                if body.len() + chunk.len() > MAX_NOTE_BYTES {
                    return soap_fault("Client.TooLarge", "envelope too large");
                }
                body.extend_from_slice(&chunk);
            }
            tokio::time::sleep(Duration::from_millis(3 + fastrand::u64(..5))).await;
            return get_customer(&body);
        }
        if path.starts_with("/crm/ledger/") {
            // The ledger database is down: every call fails, as a sick backend does.
            self.stats.queries.fetch_add(1, Ordering::Relaxed);
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "ledger database unavailable"}),
            );
        }
        let Some(rest) = path.strip_prefix("/crm/accounts/") else {
            return json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such resource"}));
        };
        let (id, notes) = match rest.split_once('/') {
            Some((id, "notes")) => (id.to_string(), true),
            Some(_) => return json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such resource"})),
            None => (rest.to_string(), false),
        };

        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let inflight = self.stats.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        let _guard = InflightGuard(&self.stats.inflight);
        let over = inflight.saturating_sub(CAPACITY) as u32;
        let work = Duration::from_millis(3 + fastrand::u64(..5)) + OVERLOAD_PENALTY * over;
        if id == HANGING_ACCOUNT {
            tokio::time::sleep(HANG).await;
        }
        tokio::time::sleep(work).await;

        match (method, notes) {
            (Method::GET, false) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => {
                json(StatusCode::OK, account(&id))
            }
            (Method::GET, false) => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "account not found"})),
            (Method::POST, true) => {
                let mut body = Vec::new();
                loop {
                    match session.read_request_body().await {
                        Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_NOTE_BYTES => body.extend_from_slice(&chunk),
                        Ok(Some(_)) => {
                            return json(StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({"error": "note too long"}))
                        }
                        Ok(None) => break,
                        Err(_) => {
                            return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": "unreadable body"}))
                        }
                    }
                }
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(note) => json(StatusCode::CREATED, serde_json::json!({"accountId": id, "stored": note})),
                    Err(_) => json(StatusCode::BAD_REQUEST, serde_json::json!({"error": "body is not JSON"})),
                }
            }
            _ => json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({"error": "method not allowed"})),
        }
    }
}
