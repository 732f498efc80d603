//! The one error type for answers the gateway makes itself, and THE table from error to status,
//! `code` and problem+json body (RFC 9457). Every phase that refuses a request produces a
//! [`Problem`]; [`Problem::response`] is the only place that turns one into bytes.

use bytes::Bytes;
use http::HeaderValue;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;

/// Why the gateway answered instead of the backend. Messages are for logs; bodies carry only
/// the fixed title and code, never addresses, keys or config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no route matches the path")]
    RouteNotFound,
    #[error("method not allowed (allowed: {allow})")]
    MethodNotAllowed { allow: String },
    #[error("client ip not in the route's allowlists")]
    IpNotAllowed,
    #[error("client certificate missing or not allowed: {reason}")]
    ClientCertRejected { reason: &'static str },
    #[error("bearer token refused: {reason}")]
    InvalidToken { reason: &'static str },
    #[error("token lacks the route's scope ({scope})")]
    InsufficientScope { scope: String },
    #[error("usage plan exhausted: retry in {} s", .0.retry_after_secs)]
    RateLimited(crate::throttle::Limited),
    #[error("request body larger than {limit} bytes")]
    RequestTooLarge { limit: u64 },
    #[error("malformed request: {reason}")]
    BadRequest { reason: String },
    #[error("the client did not send the request in time")]
    RequestTimeout,
    #[error("upstream at its max_inflight")]
    BackendOverloaded,
    #[error("upstream circuit open for {retry_after_secs} s more")]
    CircuitOpen { retry_after_secs: u64 },
    #[error("upstream unavailable: {reason}")]
    UpstreamUnavailable { reason: String },
    #[error("route deadline passed before the upstream answered")]
    UpstreamTimeout,
    #[error("upstream answer not as declared: {reason}")]
    UpstreamBadAnswer { reason: String },
    /// The backend answered with a 5xx of its own. Raised only on a route whose `on_error` lists
    /// `upstream_error`; anywhere else that answer passes through as the backend made it.
    #[error("upstream answered {status}")]
    UpstreamError { status: u16 },
    /// A backend's own failure answer (a SOAP Fault), mapped by the mediation's `faults`.
    #[error("{reason}")]
    Mapped { status: u16, code: &'static str, reason: String },
    /// A mediation input missing, of the wrong type, out of bounds, or not declared.
    #[error("input `{input}` refused: {reason}")]
    InvalidInput { input: String, reason: &'static str },
    #[error("mediation script failed: {reason}")]
    ScriptError { reason: String },
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

/// The fixed, public facts of one problem kind.
struct Entry {
    status: u16,
    code: &'static str,
    title: &'static str,
    retryable: bool,
}

/// The codes a route's `on_error` may turn into a degraded answer: the backend's failures and
/// the gateway's protection of it, never a refusal of the caller.
pub const DEGRADABLE_CODES: [&str; 5] =
    ["rate_limited", "backend_overloaded", "circuit_open", "upstream_timeout", "upstream_unavailable"];
/// A backend's own 5xx answer (`Problem::UpstreamError`): degradable when a route lists it in
/// `on_error.codes`, not by default (by default the backend's answer passes through).
pub const UPSTREAM_ERROR: &str = "upstream_error";

impl Problem {
    fn entry(&self) -> Entry {
        let (status, code, title, retryable) = match self {
            Problem::RouteNotFound => (404, "route_not_found", "No route for this path", false),
            Problem::MethodNotAllowed { .. } => (405, "method_not_allowed", "Method not allowed on this path", false),
            Problem::IpNotAllowed => (403, "ip_not_allowed", "Caller address not allowed", false),
            Problem::ClientCertRejected { .. } => {
                (403, "client_cert_rejected", "Client certificate missing or not allowed", false)
            }
            Problem::InvalidToken { .. } => (401, "invalid_token", "Missing, invalid or expired access token", false),
            Problem::InsufficientScope { .. } => {
                (403, "insufficient_scope", "Access token lacks the required scope", false)
            }
            Problem::RateLimited(_) => (429, "rate_limited", "Too many requests for this route's usage plan", true),
            Problem::RequestTooLarge { .. } => (413, "request_too_large", "Request body too large", false),
            Problem::BadRequest { .. } => (400, "bad_request", "Malformed request", false),
            Problem::RequestTimeout => (408, "request_timeout", "Request not received in time", true),
            Problem::BackendOverloaded => (503, "backend_overloaded", "Backend at capacity", true),
            Problem::CircuitOpen { .. } => (503, "circuit_open", "Backend failing: calls paused", true),
            Problem::UpstreamUnavailable { .. } => (502, "upstream_unavailable", "Upstream unavailable", true),
            Problem::UpstreamTimeout => (504, "upstream_timeout", "Upstream did not respond in time", true),
            Problem::UpstreamBadAnswer { .. } => (502, "upstream_bad_answer", "Upstream answer not understood", true),
            Problem::UpstreamError { status } => (*status, UPSTREAM_ERROR, "Upstream answered with an error", true),
            Problem::Mapped { status, code: "not_found", .. } => (*status, "not_found", "Not found", false),
            Problem::Mapped { status, code, .. } => (*status, *code, "Backend answered with a fault", *status >= 500),
            Problem::InvalidInput { .. } => (400, "invalid_input", "Invalid input", false),
            Problem::ScriptError { .. } => (500, "script_error", "Mediation script failed", false),
            Problem::Internal { .. } => (500, "internal_error", "Internal gateway error", false),
        };
        Entry { status, code, title, retryable }
    }

    pub fn status(&self) -> u16 {
        self.entry().status
    }

    pub fn code(&self) -> &'static str {
        self.entry().code
    }

    /// The backend failed, or its breaker or bulkhead refused the call for its sake: what a
    /// stale cache entry may answer instead.
    pub fn is_backend_failure(&self) -> bool {
        match self {
            Problem::UpstreamTimeout
            | Problem::UpstreamUnavailable { .. }
            | Problem::UpstreamBadAnswer { .. }
            | Problem::UpstreamError { .. }
            | Problem::CircuitOpen { .. }
            | Problem::BackendOverloaded => true,
            // A backend's fault about itself (a SOAP Server fault), not about the request.
            Problem::Mapped { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The problem+json answer: header (with `X-Request-Id`) and body.
    pub fn response(&self, request_id: &HeaderValue) -> (ResponseHeader, Bytes) {
        self.response_with_detail(request_id, None)
    }

    /// The same with an RFC 9457 `detail`: for operators (the admin API) only, as public answers
    /// never carry the reason.
    pub fn response_with_detail(&self, request_id: &HeaderValue, detail: Option<&str>) -> (ResponseHeader, Bytes) {
        let entry = self.entry();
        let mut body = serde_json::json!({
            "type": format!("urn:seawall:problem:{}", entry.code.replace('_', "-")),
            "title": entry.title,
            "status": entry.status,
            "code": entry.code,
            "request_id": crate::request_id::as_str(request_id),
            "retryable": entry.retryable,
        });
        if let Some(detail) = detail {
            body["detail"] = detail.into();
        }
        if let Problem::InvalidInput { input, .. } = self {
            // The input's declared name (or a bounded, sanitized key): never the caller's value.
            body["input"] = input.as_str().into();
        }
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let mut header = answer_header(entry.status, "application/problem+json", body.len());
        // Header values below are fixed strings or validated request ids: inserts cannot fail.
        let _ = header.insert_header("cache-control", "no-store");
        let _ = header.insert_header("x-request-id", request_id.clone());
        match self {
            Problem::MethodNotAllowed { allow } => {
                let _ = header.insert_header("allow", allow.as_str());
            }
            Problem::InvalidToken { .. } => {
                let _ = header.insert_header("www-authenticate", r#"Bearer error="invalid_token""#);
            }
            Problem::RateLimited(limited) => {
                let _ = header.insert_header("retry-after", limited.retry_after_secs.to_string());
                let _ = header.insert_header("ratelimit-policy", limited.policy.as_str());
                let _ = header.insert_header("ratelimit", limited.state.as_str());
            }
            Problem::BackendOverloaded => {
                let _ = header.insert_header("retry-after", "1");
            }
            Problem::CircuitOpen { retry_after_secs } => {
                let _ = header.insert_header("retry-after", retry_after_secs.to_string());
            }
            Problem::InsufficientScope { scope } => {
                // Scopes are validated tokens (no quotes or spaces inside one) at start-up.
                let value = format!(r#"Bearer error="insufficient_scope", scope="{scope}""#);
                let _ = header.insert_header("www-authenticate", value);
            }
            _ => {}
        }
        (header, body)
    }
}

/// The header every answer the gateway makes itself starts with: status, `Content-Type` and
/// `Content-Length`. Callers add `X-Request-Id` and what else the answer needs.
pub fn answer_header(status: u16, content_type: &'static str, length: usize) -> ResponseHeader {
    let mut header = ResponseHeader::build(status, Some(6))
        .unwrap_or_else(|_| ResponseHeader::build(500, Some(6)).expect("500 is a valid status"));
    // A static type and a number: these inserts cannot fail.
    let _ = header.insert_header(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let _ = header.insert_header(http::header::CONTENT_LENGTH, length);
    header
}

impl Problem {
    /// What a proxying error means for the caller, decided by where it came from, so a slow or
    /// vanished caller is never an upstream timeout. `None`: the caller is gone, nobody to answer.
    pub fn from_proxy_error(e: &Error, body_complete: bool, deadline_passed: bool) -> Option<Problem> {
        let reason = || e.to_string();
        match e.esource() {
            ErrorSource::Upstream if is_timeout(e.etype()) => {
                if !body_complete && matches!(e.etype(), ErrorType::ReadTimedout) {
                    // The upstream was waiting for the rest of the caller's body.
                    Some(Problem::RequestTimeout)
                } else if deadline_passed || !matches!(e.etype(), ErrorType::ConnectTimedout) {
                    Some(Problem::UpstreamTimeout)
                } else {
                    // One connect attempt timed out with time left: the backend is unreachable.
                    Some(Problem::UpstreamUnavailable { reason: reason() })
                }
            }
            ErrorSource::Upstream => Some(Problem::UpstreamUnavailable { reason: reason() }),
            ErrorSource::Downstream => match e.etype() {
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => None,
                ErrorType::ReadTimedout => Some(Problem::RequestTimeout),
                _ => Some(Problem::BadRequest { reason: reason() }),
            },
            ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                ErrorType::HTTPStatus(400) | ErrorType::InvalidHTTPHeader => {
                    Some(Problem::BadRequest { reason: reason() })
                }
                _ => Some(Problem::Internal { reason: reason() }),
            },
        }
    }
}

/// Pingora's timeout kinds.
pub fn is_timeout(etype: &ErrorType) -> bool {
    matches!(
        etype,
        ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_follows_the_contract_and_leaks_nothing() {
        let problem = Problem::UpstreamUnavailable { reason: "connect refused 10.1.2.3:8080".into() };
        let (header, body) = problem.response(&HeaderValue::from_static("req-1"));
        assert_eq!(header.status.as_u16(), 502);
        assert_eq!(header.headers["content-type"], "application/problem+json");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "urn:seawall:problem:upstream-unavailable");
        assert_eq!(json["code"], "upstream_unavailable");
        assert_eq!(json["status"], 502);
        assert_eq!(json["request_id"], "req-1");
        assert_eq!(json["retryable"], true);
        assert!(!String::from_utf8_lossy(&body).contains("10.1.2.3"));
    }

    #[test]
    fn errors_are_classified_by_their_source() {
        let up = |t| Error::new_up(t);
        let down = |t| Error::new_down(t);
        let classify =
            |e: &Error, body_complete, passed| Problem::from_proxy_error(e, body_complete, passed).map(|p| p.code());
        assert_eq!(classify(&up(ErrorType::ReadTimedout), true, true), Some("upstream_timeout"));
        assert_eq!(classify(&up(ErrorType::ConnectTimedout), true, true), Some("upstream_timeout"));
        assert_eq!(classify(&up(ErrorType::ConnectTimedout), true, false), Some("upstream_unavailable"));
        assert_eq!(classify(&up(ErrorType::ConnectRefused), true, false), Some("upstream_unavailable"));
        assert_eq!(classify(&up(ErrorType::ReadTimedout), false, true), Some("request_timeout"));
        assert_eq!(classify(&down(ErrorType::ReadTimedout), false, false), Some("request_timeout"));
        assert_eq!(classify(&down(ErrorType::ConnectionClosed), true, true), None);
        assert_eq!(classify(&down(ErrorType::InvalidHTTPHeader), true, false), Some("bad_request"));
        assert_eq!(classify(&Error::new_in(ErrorType::InternalError), true, false), Some("internal_error"));
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let (header, _) =
            Problem::MethodNotAllowed { allow: "GET, HEAD".into() }.response(&HeaderValue::from_static("r"));
        assert_eq!(header.status.as_u16(), 405);
        assert_eq!(header.headers["allow"], "GET, HEAD");
    }
}
