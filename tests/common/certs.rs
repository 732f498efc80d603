//! Test certificates made per run with the `openssl` crate: a CA, and leaf certificates it signs.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};

pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Issued {
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }

    pub fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().unwrap()
    }

    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, self.cert_pem()).unwrap();
        std::fs::write(&key, self.key_pem()).unwrap();
        (cert, key)
    }
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn builder(cn: &str, key: &PKey<Private>, days_valid: (i64, i64)) -> openssl::x509::X509Builder {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(128, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    b.set_not_before(&Asn1Time::from_unix(now + days_valid.0 * 86400).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + days_valid.1 * 86400).unwrap()).unwrap();
    b
}

/// A self-signed CA.
pub fn ca(cn: &str) -> Issued {
    let key = key();
    let mut b = builder(cn, &key, (-1, 365));
    let name = {
        let mut n = X509NameBuilder::new().unwrap();
        n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        n.build()
    };
    b.set_issuer_name(&name).unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
    b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    Issued { cert: b.build(), key }
}

/// A leaf certificate signed by `ca`, for `dns` names (and 127.0.0.1), server or client use.
pub fn leaf(ca: &Issued, cn: &str, dns: &[&str], server: bool) -> Issued {
    let key = key();
    let mut b = builder(cn, &key, (-1, 90));
    b.set_issuer_name(ca.cert.subject_name()).unwrap();
    let mut san = SubjectAlternativeName::new();
    for name in dns {
        san.dns(name);
    }
    san.ip("127.0.0.1");
    let san = san.build(&b.x509v3_context(Some(&ca.cert), None)).unwrap();
    b.append_extension(san).unwrap();
    b.append_extension(BasicConstraints::new().build().unwrap()).unwrap();
    let mut eku = ExtendedKeyUsage::new();
    if server {
        eku.server_auth();
    } else {
        eku.client_auth();
    }
    b.append_extension(eku.build().unwrap()).unwrap();
    b.sign(&ca.key, MessageDigest::sha256()).unwrap();
    Issued { cert: b.build(), key }
}
