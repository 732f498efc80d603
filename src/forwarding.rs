//! What a reverse proxy changes in the headers it forwards: `Host`, `X-Forwarded-*`,
//! `X-Request-Id` on the way up (`upstream_request_filter`), hop-by-hop fields on the way down
//! (`upstream_response_filter`). Request-side hop-by-hop fields are stripped by Pingora's
//! standard upstream request policy (`upstream::Upstream::peer`).

use std::fmt::Write;
use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{GetAll, HeaderName};
use http::HeaderValue;
use pingora::Result;
use pingora_http::{RequestHeader, ResponseHeader};

/// Response fields that describe the upstream connection, not the answer.
const HOP_BY_HOP_RESPONSE: &[&str] = &["keep-alive", "proxy-connection", "proxy-authenticate", "upgrade", "te"];

/// The fields added upstream, named as they are sent (Pingora keeps each field's case).
const X_FORWARDED_HOST: &str = "X-Forwarded-Host";
const X_FORWARDED_FOR: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
const X_REQUEST_ID: &str = "X-Request-Id";
/// The same name, typed: looked up without parsing it again.
pub const X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static("x-forwarded-for");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

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
        req.insert_header(X_FORWARDED_HOST, host.clone())?;
    }
    req.insert_header(http::header::HOST, f.upstream_host.clone())?;
    if let Some(ip) = f.peer_ip {
        let value = forwarded_for(req.headers.get_all(X_FORWARDED_FOR_NAME), ip);
        req.insert_header(X_FORWARDED_FOR, value)?;
    }
    req.insert_header(X_FORWARDED_PROTO, if f.tls { HTTPS } else { HTTP })?;
    req.insert_header(X_REQUEST_ID, f.request_id.clone())?;
    Ok(())
}

/// The caller's `X-Forwarded-For` values (those that are text) and `ip`, comma-separated in one
/// value, built in one buffer that the header value then shares.
fn forwarded_for(previous: GetAll<'_, HeaderValue>, ip: IpAddr) -> HeaderValue {
    let mut value = BytesMut::with_capacity(48);
    for previous in previous {
        if previous.to_str().is_ok() {
            value.extend_from_slice(previous.as_bytes());
            value.extend_from_slice(b", ");
        }
    }
    push_ip(&mut value, ip);
    HeaderValue::from_maybe_shared(value.freeze()).expect("text values and an address are a valid header value")
}

/// Writes `ip` as text: an IPv4 address octet by octet (a fifth of what `Display` costs, and
/// this runs on every proxied request), an IPv6 one by `Display`.
fn push_ip(value: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b".");
                }
                value.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(value, "{ip}");
        }
    }
}

/// Drops hop-by-hop fields, and those the upstream named in `Connection`, from its answer
/// (Pingora writes the caller's own `Connection` field). One pass over the fields; most answers
/// carry none, and then nothing is allocated.
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in &resp.headers {
        if HOP_BY_HOP_RESPONSE.contains(&name.as_str()) {
            doomed.push(name.clone());
        } else if name == http::header::CONNECTION {
            doomed.extend(nominated(value).filter_map(|token| HeaderName::from_bytes(token).ok()));
        }
    }
    for name in &doomed {
        resp.remove_header(name);
    }
}

/// The field names a `Connection` value nominates (its tokens but `close` and `keep-alive`).
fn nominated(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|token| {
        !token.is_empty() && !token.eq_ignore_ascii_case(b"close") && !token.eq_ignore_ascii_case(b"keep-alive")
    })
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
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for text in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "127.0.0.1", "192.168.10.200"] {
            let ip: IpAddr = text.parse().unwrap();
            let mut value = BytesMut::new();
            push_ip(&mut value, ip);
            assert_eq!(&value[..], text.as_bytes());
            assert_eq!(&value[..], ip.to_string().as_bytes());
        }
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

    #[test]
    fn an_answer_without_hop_by_hop_fields_is_left_as_it_is() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Connection", "Keep-Alive, close").unwrap();
        resp.insert_header("Content-Type", "application/json").unwrap();
        let before: Vec<_> = resp.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        strip_hop_by_hop(&mut resp);
        let after: Vec<_> = resp.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        assert_eq!(before, after);

        // One hop-by-hop field alone, or one token named in `Connection`, is enough.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Upgrade", "h2c").unwrap();
        strip_hop_by_hop(&mut resp);
        assert!(resp.headers.get("upgrade").is_none());
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Connection", "keep-alive, X-Trace").unwrap();
        resp.insert_header("X-Trace", "1").unwrap();
        strip_hop_by_hop(&mut resp);
        assert!(resp.headers.get("x-trace").is_none());
    }

    #[test]
    fn the_peer_alone_when_the_caller_sent_no_forwarded_for() {
        let mut req = RequestHeader::build("GET", b"/a", None).unwrap();
        let id = HeaderValue::from_static("id-1");
        let upstream = HeaderValue::from_static("10.0.0.1:8080");
        let f = Forwarded {
            original_host: None,
            peer_ip: Some("2001:db8::7".parse().unwrap()),
            request_id: &id,
            upstream_host: &upstream,
            tls: true,
        };
        upstream_request(&mut req, &f).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "2001:db8::7");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert!(req.headers.get("x-forwarded-host").is_none());
        // Sent with the case given here (Pingora keeps each field's case on the wire).
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("X-Forwarded-For: 2001:db8::7\r\n"), "{wire}");
    }
}
