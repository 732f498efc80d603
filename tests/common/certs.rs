//! Test certificates made per run (`seawall::dev_certs`), unwrapped for brevity.

pub use seawall::dev_certs::{Issued, Usage, Validity};

use seawall::dev_certs;

/// A self-signed CA.
pub fn ca(cn: &str) -> Issued {
    dev_certs::ca(cn).unwrap()
}

/// A leaf certificate signed by `ca`, for `dns` names (and 127.0.0.1), valid from yesterday for 90 days.
pub fn leaf(ca: &Issued, cn: &str, dns: &[&str], usage: Usage) -> Issued {
    dev_certs::leaf(ca, cn, dns, usage, Validity::default()).unwrap()
}

/// A leaf certificate with the given validity (days relative to now).
pub fn leaf_valid(ca: &Issued, cn: &str, usage: Usage, from_days: i64, to_days: i64) -> Issued {
    dev_certs::leaf(ca, cn, &[], usage, Validity { from_days, to_days }).unwrap()
}
