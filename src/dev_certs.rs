//! Development certificates made in-process with OpenSSL: a CA, the server and client
//! certificates it signs, and CRLs. `seawall demo` and the tests use them; production
//! certificates come from files (`certs/make-dev-certs.sh` makes the same kind with the CLI).

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::CrlNumber;
use openssl::x509::{X509Crl, X509CrlBuilder, X509NameBuilder, X509RevokedBuilder, X509};

/// A certificate and its private key.
pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Issued {
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("a built certificate encodes")
    }

    pub fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().expect("a generated key encodes")
    }

    /// Writes `NAME.pem` and `NAME.key` (mode 0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, self.cert_pem())?;
        write_private(&key, &self.key_pem())?;
        Ok((cert, key))
    }
}

/// Writes a private key readable by this user only (mode 0600).
pub fn write_private(path: &Path, pem: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(pem)
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// Validity in days relative to now: `(-1, 90)` is "from yesterday for 90 days".
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub from_days: i64,
    pub to_days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Validity { from_days: -1, to_days: 90 }
    }
}

/// A fresh ECDSA P-256 key (ES256 token signing, certificates).
pub fn signing_key() -> Result<PKey<Private>, ErrorStack> {
    p256_key()
}

fn p256_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn builder(cn: &str, key: &PKey<Private>, validity: Validity) -> Result<openssl::x509::X509Builder, ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(128, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    let now = now_unix();
    let (not_before, not_after) = (
        Asn1Time::from_unix(now + validity.from_days * 86_400)?,
        Asn1Time::from_unix(now + validity.to_days * 86_400)?,
    );
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    Ok(b)
}

/// A self-signed CA (ECDSA P-256), valid from yesterday for a year.
pub fn ca(cn: &str) -> Result<Issued, ErrorStack> {
    let key = p256_key()?;
    let mut b = builder(cn, &key, Validity { from_days: -1, to_days: 365 })?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    b.set_issuer_name(&name.build())?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    let key_id = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(key_id)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok(Issued { cert: b.build(), key })
}

/// A leaf certificate signed by `ca` for `dns` names and 127.0.0.1.
pub fn leaf(ca: &Issued, cn: &str, dns: &[&str], usage: Usage, validity: Validity) -> Result<Issued, ErrorStack> {
    let key = p256_key()?;
    let mut b = builder(cn, &key, validity)?;
    b.set_issuer_name(ca.cert.subject_name())?;
    let mut san = SubjectAlternativeName::new();
    for name in dns {
        san.dns(name);
    }
    san.ip("127.0.0.1");
    let san = san.build(&b.x509v3_context(Some(&ca.cert), None))?;
    b.append_extension(san)?;
    b.append_extension(BasicConstraints::new().build()?)?;
    let mut eku = ExtendedKeyUsage::new();
    match usage {
        Usage::Server => eku.server_auth(),
        Usage::Client => eku.client_auth(),
    };
    b.append_extension(eku.build()?)?;
    b.sign(&ca.key, MessageDigest::sha256())?;
    Ok(Issued { cert: b.build(), key })
}

/// A CRL of `ca` revoking `revoked`, current from yesterday for `valid_days`.
pub fn crl(ca: &Issued, revoked: &[&X509], valid_days: i64) -> Result<X509Crl, ErrorStack> {
    let now = now_unix();
    let mut b = X509CrlBuilder::new()?;
    b.set_issuer_name(ca.cert.subject_name())?;
    let (last, next) = (Asn1Time::from_unix(now - 86_400)?, Asn1Time::from_unix(now + valid_days * 86_400)?);
    b.set_last_update(&last)?;
    b.set_next_update(&next)?;
    // The extensions RFC 5280 requires of a CRL: the CA's key id and a CRL number.
    let context_holder = X509::builder()?;
    let authority =
        AuthorityKeyIdentifier::new().keyid(true).build(&context_holder.x509v3_context(Some(&ca.cert), None))?;
    b.append_extension(authority)?;
    b.append_extension(CrlNumber::new(BigNum::from_u32(1)?)?.build()?)?;
    for cert in revoked {
        let mut entry = X509RevokedBuilder::new()?;
        entry.set_serial_number(cert.serial_number())?;
        let revoked_at = Asn1Time::from_unix(now - 3_600)?;
        entry.set_revocation_date(&revoked_at)?;
        b.add_revoked(entry.build())?;
    }
    b.sign(&ca.key, MessageDigest::sha256())?;
    b.build()
}
