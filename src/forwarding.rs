//! What a reverse proxy changes in the headers it forwards: `Host`, `X-Forwarded-*`,
//! `X-Request-Id` on the way up (`upstream_request_filter`), hop-by-hop fields on the way down
//! (`upstream_response_filter`). Request-side hop-by-hop fields are stripped by Pingora's
//! standard upstream request policy (`upstream::Upstream::peer`).

use std::fmt::Write;
use std::net::IpAddr;

use http::HeaderValue;
use pingora::Result;
use pingora_http::{RequestHeader, ResponseHeader};

/// Response fields that describe the upstream connection, not the answer.
const HOP_BY_HOP_RESPONSE: &[&str] = &["keep-alive", "proxy-connection", "proxy-authenticate", "upgrade", "te"];

/// Facts about the caller's request that the upstream request carries.
pub struct Forwarded<'a> {
    /// The caller's `Host`, passed on as `X-Forwarded-Host`.
    pub original_host: Option<&'a HeaderValue>,
    /// The socket peer, appended to `X-Forwarded-For`.
    pub peer_ip: Option<IpAddr>,
    pub request_id: &'a HeaderValue,
    /// The upstream's own `host:port`.
    pub upstream_host: &'a HeaderValue,
    /// The caller came over TLS: `X-Forwarded-Proto: https`.
    pub tls: bool,
}

/// Sets the forwarding headers on the upstream request. What the caller sent in
/// `X-Forwarded-For` is kept (the socket peer is appended) but never trusted here.
pub fn upstream_request(req: &mut RequestHeader, f: &Forwarded<'_>) -> Result<()> {
    if let Some(host) = f.original_host {
        req.insert_header("x-forwarded-host", host.clone())?;
    }
    req.insert_header(http::header::HOST, f.upstream_host.clone())?;
    if let Some(ip) = f.peer_ip {
        let mut value = String::with_capacity(48);
        for previous in req.headers.get_all("x-forwarded-for") {
            if let Ok(previous) = previous.to_str() {
                value.push_str(previous);
                value.push_str(", ");
            }
        }
        let _ = write!(value, "{ip}");
        req.insert_header("x-forwarded-for", value)?;
    }
    req.insert_header("x-forwarded-proto", if f.tls { "https" } else { "http" })?;
    req.insert_header("x-request-id", f.request_id.clone())?;
    Ok(())
}

/// Drops hop-by-hop fields, and those the upstream named in `Connection`, from its answer
/// (Pingora writes the caller's own `Connection` field).
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let nominated: Vec<String> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
        .collect();
    for name in HOP_BY_HOP_RESPONSE.iter().copied().chain(nominated.iter().map(String::as_str)) {
        resp.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_the_peer_and_sets_host_and_ids() {
        let mut req = RequestHeader::build("GET", b"/a", None).unwrap();
        req.append_header("x-forwarded-for", "203.0.113.1").unwrap();
        req.append_header("x-forwarded-for", "198.51.100.2").unwrap();
        let host = HeaderValue::from_static("gw.example.com");
        let id = HeaderValue::from_static("id-1");
        let upstream = HeaderValue::from_static("10.0.0.1:8080");
        let f = Forwarded {
            original_host: Some(&host),
            peer_ip: Some("192.0.2.7".parse().unwrap()),
            request_id: &id,
            upstream_host: &upstream,
            tls: false,
        };
        upstream_request(&mut req, &f).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.1, 198.51.100.2, 192.0.2.7");
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(req.headers["host"], "10.0.0.1:8080");
        assert_eq!(req.headers["x-forwarded-host"], "gw.example.com");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-request-id"], "id-1");
    }

    #[test]
    fn strips_hop_by_hop_and_nominated_fields() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "close, X-Internal").unwrap();
        resp.insert_header("x-internal", "1").unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("x-kept", "1").unwrap();
        strip_hop_by_hop(&mut resp);
        assert!(resp.headers.get("x-internal").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert_eq!(resp.headers["x-kept"], "1");
    }
}
