//! Client certificates: why OpenSSL refused one (the `reason` label), and whether one that
//! verified is allowed by the listener's `allowed_names` and `pinned_sha256`.

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::x509::{X509Ref, X509VerifyResult};

/// What the handshake learned about the caller's certificate, kept with the connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub verdict: Verdict,
    /// The certificate's common name, for logs.
    pub subject: Option<String>,
    /// The listener's `client_auth.mode` is `required`: every request needs an allowed
    /// certificate, whatever its route says.
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Verified (by OpenSSL) and allowed by name and pin.
    Allowed,
    /// No certificate was sent (listeners with `mode: optional`).
    Missing,
    /// Neither the CN nor a DNS SAN is in `allowed_names`.
    NameNotAllowed,
    /// The certificate's SHA-256 fingerprint is not in `pinned_sha256`.
    NotPinned,
}

impl Verdict {
    /// The `reason` label of `seawall_auth_rejections_total{layer="mtls"}`.
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Missing => "no_certificate",
            Verdict::NameNotAllowed => "name_not_allowed",
            Verdict::NotPinned => "not_pinned",
        }
    }

    /// Every refusal reason, handshake ones included, for metrics set up at start-up.
    pub const REASONS: [&'static str; 8] = [
        "no_certificate",
        "name_not_allowed",
        "not_pinned",
        "untrusted_issuer",
        "expired",
        "not_yet_valid",
        "revoked",
        "invalid",
    ];
}

/// Checks a verified certificate against the listener's names and pins (each empty: any).
pub fn check(cert: Option<&X509Ref>, allowed_names: &[String], pinned_sha256: &[[u8; 32]]) -> Verdict {
    let Some(cert) = cert else { return Verdict::Missing };
    if !allowed_names.is_empty() && !names(cert).iter().any(|n| allowed_names.contains(n)) {
        return Verdict::NameNotAllowed;
    }
    if !pinned_sha256.is_empty() {
        let pinned = cert.digest(MessageDigest::sha256()).is_ok_and(|d| pinned_sha256.iter().any(|p| p[..] == d[..]));
        if !pinned {
            return Verdict::NotPinned;
        }
    }
    Verdict::Allowed
}

/// The certificate's common names and DNS subject alternative names, lower-cased.
fn names(cert: &X509Ref) -> Vec<String> {
    let common = cert.subject_name().entries_by_nid(Nid::COMMONNAME).filter_map(|e| e.data().to_string().ok());
    let mut names: Vec<String> = common.map(|n| n.to_ascii_lowercase()).collect();
    if let Some(alt) = cert.subject_alt_names() {
        names.extend(alt.iter().filter_map(|n| n.dnsname()).map(str::to_ascii_lowercase));
    }
    names
}

/// The first common name, or the subject as OpenSSL prints it when there is none.
pub fn common_name(cert: &X509Ref) -> String {
    match cert.subject_name().entries_by_nid(Nid::COMMONNAME).next().and_then(|e| e.data().to_string().ok()) {
        Some(cn) => cn,
        None => format!("{:?}", cert.subject_name()),
    }
}

/// The `reason` label for a certificate OpenSSL refused with `error`.
pub fn refusal_reason(error: X509VerifyResult) -> &'static str {
    reason_for_code(error.as_raw())
}

fn reason_for_code(code: std::ffi::c_int) -> &'static str {
    use openssl_sys as ffi;
    match code {
        ffi::X509_V_ERR_CERT_HAS_EXPIRED => "expired",
        ffi::X509_V_ERR_CERT_NOT_YET_VALID => "not_yet_valid",
        ffi::X509_V_ERR_CERT_REVOKED => "revoked",
        ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        | ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        | ffi::X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        | ffi::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        | ffi::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        | ffi::X509_V_ERR_CERT_SIGNATURE_FAILURE => "untrusted_issuer",
        _ => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_certs;

    #[test]
    fn names_and_pins_restrict_a_verified_certificate() {
        let ca = dev_certs::ca("Test CA").unwrap();
        let name = "dataactions.prod.us-east-1.mypurecloud.com";
        let client =
            dev_certs::leaf(&ca, name, &["alt.example"], dev_certs::Usage::Client, Default::default()).unwrap();
        let cert = client.cert.as_ref();
        let fingerprint: [u8; 32] = cert.digest(MessageDigest::sha256()).unwrap()[..].try_into().unwrap();

        assert_eq!(check(None, &[], &[]), Verdict::Missing);
        assert_eq!(check(Some(cert), &[], &[]), Verdict::Allowed);
        let by_cn = ["dataactions.prod.us-east-1.mypurecloud.com".to_string()];
        assert_eq!(check(Some(cert), &by_cn, &[]), Verdict::Allowed);
        assert_eq!(check(Some(cert), &["alt.example".to_string()], &[]), Verdict::Allowed);
        assert_eq!(check(Some(cert), &["other.example".to_string()], &[]), Verdict::NameNotAllowed);
        assert_eq!(check(Some(cert), &by_cn, &[fingerprint]), Verdict::Allowed);
        assert_eq!(check(Some(cert), &by_cn, &[[0u8; 32]]), Verdict::NotPinned);
        assert_eq!(common_name(cert), "dataactions.prod.us-east-1.mypurecloud.com");
    }

    #[test]
    fn handshake_refusals_have_stable_reasons() {
        assert_eq!(reason_for_code(openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED), "expired");
        assert_eq!(reason_for_code(openssl_sys::X509_V_ERR_CERT_REVOKED), "revoked");
        assert_eq!(reason_for_code(openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY), "untrusted_issuer");
        assert_eq!(reason_for_code(openssl_sys::X509_V_ERR_INVALID_PURPOSE), "invalid");
        for r in ["expired", "revoked", "untrusted_issuer", "invalid", "not_yet_valid"] {
            assert!(Verdict::REASONS.contains(&r));
        }
    }
}
