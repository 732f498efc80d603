//! `X-Request-Id`: the caller's when sane, else a fresh random one. Called in `request_filter`.

use pingora_http::RequestHeader;

/// Longest caller-supplied id passed through.
pub const MAX_LEN: usize = 128;

/// The caller's id if it is 1..=128 characters of `[A-Za-z0-9._:+/=-]`, else a new one.
pub fn from_request(req: &RequestHeader) -> String {
    match req.headers.get("x-request-id").map(|v| v.as_bytes()) {
        Some(id) if is_sane(id) => String::from_utf8_lossy(id).into_owned(),
        _ => generate(),
    }
}

fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'+' | b'/' | b'=' | b'-')
        })
}

/// 128 random bits as 32 lowercase hex digits.
pub fn generate() -> String {
    format!("{:032x}", fastrand::u128(..))
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
            assert_eq!(id.len(), 32, "{bad:?} -> {id}");
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        }
        assert_ne!(from_request(&req(None)), from_request(&req(None)));
    }
}
