//! Certificate expiry: the `seawall_certificate_expiry_timestamp_seconds` gauge and a log warning
//! from 30 days before a certificate ends (Genesys rotates its client certificates yearly; a CA
//! or server certificate that lapses refuses every caller). Time is passed in, so tests need no
//! clock.

use openssl::asn1::Asn1Time;
use openssl::x509::X509Ref;

/// Warn from this long before expiry.
pub const WARN_BEFORE_SECS: i64 = 30 * 86_400;

/// A certificate (or CRL) the gateway depends on, by a stable name (`LISTENER/server`,
/// `LISTENER/ca/CN`, `LISTENER/crl/ISSUER-CN`, `upstream/NAME/ca/CN`, `upstream/NAME/client`;
/// a name seen twice, such as an old and a new CA with one CN, gets `#2`, `#3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCertificate {
    pub name: String,
    /// `notAfter` as Unix seconds.
    pub not_after: i64,
}

impl NamedCertificate {
    pub fn new(name: String, cert: &X509Ref) -> NamedCertificate {
        NamedCertificate { name, not_after: unix_seconds(cert.not_after()) }
    }
}

/// An ASN.1 time as Unix seconds.
pub fn unix_seconds(time: &openssl::asn1::Asn1TimeRef) -> i64 {
    // Asn1Time has no direct conversion: measure from the epoch.
    let epoch = Asn1Time::from_unix(0).expect("the epoch is a valid time");
    match epoch.diff(time) {
        Ok(d) => i64::from(d.days) * 86_400 + i64::from(d.secs),
        Err(_) => 0,
    }
}

/// What to say about a certificate at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpiryNotice {
    Expired { name: String, since_days: i64 },
    ExpiresSoon { name: String, in_days: i64 },
}

/// The certificates that expired or expire within [`WARN_BEFORE_SECS`] of `now`.
pub fn notices(certs: &[NamedCertificate], now: i64) -> Vec<ExpiryNotice> {
    certs
        .iter()
        .filter_map(|c| {
            let left = c.not_after - now;
            if left <= 0 {
                Some(ExpiryNotice::Expired { name: c.name.clone(), since_days: -left / 86_400 })
            } else if left <= WARN_BEFORE_SECS {
                Some(ExpiryNotice::ExpiresSoon { name: c.name.clone(), in_days: left / 86_400 })
            } else {
                None
            }
        })
        .collect()
}

/// Logs each notice: an error for an expired certificate, a warning for one expiring soon.
pub fn log_notices(certs: &[NamedCertificate], now: i64) {
    for notice in notices(certs, now) {
        match notice {
            ExpiryNotice::Expired { name, since_days } => {
                tracing::error!(certificate = %name, since_days, "certificate has expired: replace it and send SIGHUP");
            }
            ExpiryNotice::ExpiresSoon { name, in_days } => {
                tracing::warn!(certificate = %name, in_days, "certificate expires soon: renew it and send SIGHUP");
            }
        }
    }
}

/// How often a running gateway says again what expires soon, so it warns in time.
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(12 * 3_600);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_certs;

    #[test]
    fn reads_not_after_and_warns_from_thirty_days_before() {
        let ca = dev_certs::ca("Expiry CA").unwrap();
        let cert = NamedCertificate::new("public/ca/Expiry CA".into(), &ca.cert);
        let now = crate::auth::jwt::unix_now() as i64;
        // dev CAs are valid for 365 days from now.
        assert!((cert.not_after - (now + 365 * 86_400)).abs() < 120, "{}", cert.not_after);

        let at = |days_left: i64| cert.not_after - days_left * 86_400;
        assert!(notices(std::slice::from_ref(&cert), at(31)).is_empty());
        assert_eq!(
            notices(std::slice::from_ref(&cert), at(30)),
            vec![ExpiryNotice::ExpiresSoon { name: cert.name.clone(), in_days: 30 }]
        );
        assert_eq!(
            notices(std::slice::from_ref(&cert), at(-2)),
            vec![ExpiryNotice::Expired { name: cert.name.clone(), since_days: 2 }]
        );
    }
}
