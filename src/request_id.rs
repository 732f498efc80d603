//! `X-Request-Id`: the caller's when sane, else a fresh random one. Called in `request_filter`.

use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

/// The field, typed (looked up and set without parsing and lowering a string first).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-supplied id passed through.
pub const MAX_LEN: usize = 128;

/// The caller's id if it is 1..=128 characters of `[A-Za-z0-9._:+/=-]`, else a new one.
/// A header value, so passing it on costs a reference count, not a copy.
pub fn from_request(req: &RequestHeader) -> HeaderValue {
    match req.headers.get(X_REQUEST_ID) {
        Some(id) if is_sane(id.as_bytes()) => id.clone(),
        _ => generate(),
    }
}

fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'+' | b'/' | b'=' | b'-'))
}

/// 128 random bits as 32 lowercase hex digits.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
}

/// The id as text (ids are ASCII by construction).
pub fn as_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(id) = id {
            r.insert_header("x-request-id", id).unwrap();
        }
        r
    }

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        assert_eq!(from_request(&req(Some("abc-123_x.y:z"))), "abc-123_x.y:z");
        for bad in ["", "has space", "<script>", &"x".repeat(MAX_LEN + 1)] {
            let id = from_request(&req(Some(bad)));
            let id = as_str(&id);
            assert_eq!(id.len(), 32, "{bad:?} -> {id}");
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        }
        assert_ne!(from_request(&req(None)), from_request(&req(None)));
    }
}
