//! Reading PEM files named by the config (listener and upstream TLS), with errors that name the
//! file and say what is wrong with it.

use std::path::Path;

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

/// Every PEM certificate in a file; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<X509>, String> {
    let certs = X509::stack_from_pem(&read(path)?)
        .map_err(|e| format!("`{}` is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

pub fn read_private_key(path: &Path) -> Result<PKey<Private>, String> {
    PKey::private_key_from_pem(&read(path)?).map_err(|e| format!("`{}` is not a PEM private key: {e}", path.display()))
}
