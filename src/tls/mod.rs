//! TLS listeners (OpenSSL): the server certificate and the client certificate policy of each,
//! loaded from files at start-up and swapped in on SIGHUP, and the Pingora handshake callbacks
//! that apply the current files to every new connection.
//!
//! Each load builds one OpenSSL context (Mozilla "intermediate": TLS 1.2 and 1.3, forward-secret
//! AEAD ciphers) holding the certificate chain, the key, the client CA store with its CRLs and the
//! verify mode. The certificate callback switches each new connection to the context current at
//! that moment, so a reload never touches connections already open. Session resumption is off on
//! listeners with client certificates: a resumed session would skip the revocation check of a
//! CRL loaded since.

pub mod client_cert;
pub mod expiry;
pub mod pem;

use std::any::Any;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use openssl::ssl::{
    select_next_proto, AlpnError, SslAcceptor, SslContext, SslFiletype, SslMethod, SslOptions, SslSessionCacheMode,
    SslVerifyMode,
};
use openssl::stack::Stack;
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Crl, X509Name, X509};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;

use crate::config::{ClientAuthMode, ListenerTlsConfig};
use crate::metrics::{AuthLayer, Metrics};
use client_cert::ClientCertificate;
use expiry::NamedCertificate;
use pem::{read, read_certificates, read_private_key};

/// HTTP/2 first, then HTTP/1.1 (ALPN wire format).
const ALPN_H2_H1: &[u8] = b"\x02h2\x08http/1.1";

/// One load of a listener's TLS files.
struct ServerTls {
    context: SslContext,
    client_auth: Option<ClientPolicy>,
    certificates: Vec<NamedCertificate>,
}

/// What a client certificate must be, beyond chaining to a CA (checked by OpenSSL).
struct ClientPolicy {
    mode: ClientAuthMode,
    allowed_names: Vec<String>,
    pinned_sha256: Vec<[u8; 32]>,
}

/// A TLS listener: its files as last loaded, swapped on reload.
pub struct ListenerTls {
    name: String,
    config: ListenerTlsConfig,
    current: ArcSwap<ServerTls>,
    metrics: Arc<Metrics>,
}

impl ListenerTls {
    /// Loads the listener's files; the error says which file is wrong and why.
    pub fn new(name: &str, config: &ListenerTlsConfig, metrics: Arc<Metrics>) -> Result<ListenerTls, String> {
        let current = ServerTls::load(name, config)?;
        if let Some(auth) = &config.client_auth {
            if auth.allowed_names.is_empty() && auth.pinned_sha256.is_empty() {
                // Genesys may have its certificate signed by DigiCert, whose CA signs anyone's.
                tracing::warn!(
                    listener = name,
                    "client certificates are checked against the CA only: any certificate it signs is accepted; \
                     with a public CA (DigiCert) name the caller in `client_auth.allowed_names`"
                );
            }
        }
        Ok(ListenerTls {
            name: name.to_string(),
            config: config.clone(),
            current: ArcSwap::from_pointee(current),
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the files again. On any error the current material stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = ServerTls::load(&self.name, &self.config)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    /// The server certificate and every client CA, as last loaded.
    pub fn certificates(&self) -> Vec<NamedCertificate> {
        self.current.load().certificates.clone()
    }

    /// Pingora listener settings whose handshakes use this listener's current material.
    pub fn settings(self: &Arc<Self>) -> Result<TlsSettings, String> {
        let mut settings = TlsSettings::with_callbacks(Box::new(Handshake(Arc::clone(self))))
            .map_err(|e| format!("listener `{}`: cannot set up TLS: {e}", self.name))?;
        settings.enable_h2();
        if self.config.client_auth.is_some() {
            settings.set_session_cache_mode(SslSessionCacheMode::OFF);
            settings.set_options(SslOptions::NO_TICKET);
            settings.set_num_tickets(0).map_err(|e| format!("listener `{}`: {e}", self.name))?;
        }
        Ok(settings)
    }
}

/// The handshake callbacks of one listener.
struct Handshake(Arc<ListenerTls>);

#[async_trait]
impl TlsAccept for Handshake {
    /// Switches the connection to the current context and, with client certificates on, counts
    /// every certificate OpenSSL refuses.
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let listener = &self.0;
        let tls = listener.current.load();
        if let Err(e) = ssl.set_ssl_context(&tls.context) {
            // The handshake then fails for want of a certificate; nothing else can be done here.
            tracing::error!(listener = %listener.name, error = %e, "TLS: cannot apply the listener's certificate");
            return;
        }
        if let Some(policy) = &tls.client_auth {
            let metrics = Arc::clone(&listener.metrics);
            let name = listener.name.clone();
            ssl.set_verify_callback(verify_mode(policy.mode), move |preverified, store| {
                if !preverified {
                    let error = store.error();
                    let reason = client_cert::refusal_reason(error);
                    let subject = store.current_cert().map(client_cert::common_name).unwrap_or_default();
                    metrics.auth_rejection(AuthLayer::Mtls, reason);
                    tracing::info!(listener = %name, reason, subject = %subject, depth = store.error_depth(),
                        detail = %error, "client certificate refused in the TLS handshake");
                }
                preverified
            });
        }
    }

    /// With client certificates on, records whether the verified certificate is allowed by
    /// name and pin; the request path reads the verdict from the connection's digest.
    async fn handshake_complete_callback(&self, ssl: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        let tls = self.0.current.load();
        let policy = tls.client_auth.as_ref()?;
        let peer = ssl.peer_certificate();
        let verdict = client_cert::check(peer.as_deref(), &policy.allowed_names, &policy.pinned_sha256);
        let subject = peer.as_deref().map(client_cert::common_name);
        Some(Arc::new(ClientCertificate { verdict, subject, required: policy.mode == ClientAuthMode::Required }))
    }
}

fn verify_mode(mode: ClientAuthMode) -> SslVerifyMode {
    match mode {
        ClientAuthMode::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        ClientAuthMode::Optional => SslVerifyMode::PEER,
    }
}

impl ServerTls {
    fn load(listener: &str, config: &ListenerTlsConfig) -> Result<ServerTls, String> {
        let chain = read_certificates(&config.cert)?;
        let key = read_private_key(&config.key)?;

        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
            .map_err(|e| format!("cannot create a TLS context: {e}"))?;
        builder.set_certificate(&chain[0]).map_err(|e| format!("`{}`: {e}", config.cert.display()))?;
        for extra in &chain[1..] {
            builder.add_extra_chain_cert(extra.clone()).map_err(|e| format!("`{}`: {e}", config.cert.display()))?;
        }
        let mismatch = |_| {
            format!(
                "`{}` is not the private key of the certificate in `{}`",
                config.key.display(),
                config.cert.display()
            )
        };
        builder.set_private_key(&key).map_err(mismatch)?;
        builder.check_private_key().map_err(mismatch)?;
        builder.set_alpn_select_callback(|_, offered| select_next_proto(ALPN_H2_H1, offered).ok_or(AlpnError::NOACK));

        let mut certificates = vec![NamedCertificate::new(format!("{listener}/server"), &chain[0])];
        let client_auth = match &config.client_auth {
            None => None,
            Some(auth) => {
                let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
                let mut names = Stack::<X509Name>::new().map_err(|e| e.to_string())?;
                let mut cas = Vec::new();
                for path in &auth.ca {
                    for ca in read_certificates(path)? {
                        certificates.push(NamedCertificate::new(
                            format!("{listener}/ca/{}", client_cert::common_name(&ca)),
                            &ca,
                        ));
                        names
                            .push(ca.subject_name().to_owned().map_err(|e| e.to_string())?)
                            .map_err(|e| e.to_string())?;
                        store.add_cert(ca.clone()).map_err(|e| format!("`{}`: {e}", path.display()))?;
                        cas.push(ca);
                    }
                }
                if !auth.crl.is_empty() {
                    for path in &auth.crl {
                        for (issuer, next_update) in check_crls(path, &cas)? {
                            certificates.push(NamedCertificate {
                                name: format!("{listener}/crl/{issuer}"),
                                not_after: next_update,
                            });
                        }
                        let lookup = store.add_lookup(X509Lookup::file()).map_err(|e| e.to_string())?;
                        lookup
                            .load_crl_file(path, SslFiletype::PEM)
                            .map_err(|e| format!("`{}` is not a PEM CRL: {e}", path.display()))?;
                    }
                    store.set_flags(X509VerifyFlags::CRL_CHECK).map_err(|e| e.to_string())?;
                }
                builder.set_cert_store(store.build());
                builder.set_client_ca_list(names);
                builder.set_verify(verify_mode(auth.mode));
                builder.set_session_id_context(listener.as_bytes()).map_err(|e| e.to_string())?;
                Some(ClientPolicy {
                    mode: auth.mode,
                    allowed_names: auth.allowed_names.clone(),
                    pinned_sha256: auth.pinned_sha256.clone(),
                })
            }
        };
        Ok(ServerTls { context: builder.build().into_context(), client_auth, certificates })
    }
}

/// Every CRL in a file must be signed by one of the client CAs and still current: OpenSSL
/// refuses every client certificate of a CA whose CRL is unusable, so such a file is an error at
/// load time. Returns each CRL's issuer (common name) and `nextUpdate` (Unix seconds), which the
/// expiry gauge and warnings watch like a certificate's end.
fn check_crls(path: &std::path::Path, cas: &[X509]) -> Result<Vec<(String, i64)>, String> {
    const END: &str = "-----END X509 CRL-----";
    let text = String::from_utf8(read(path)?).map_err(|_| format!("`{}` is not a PEM CRL file", path.display()))?;
    let blocks: Vec<&str> = text.split_inclusive(END).filter(|b| b.contains(END)).collect();
    if blocks.is_empty() {
        return Err(format!("`{}` holds no PEM CRL", path.display()));
    }
    blocks.iter().map(|block| check_crl(path, block.as_bytes(), cas)).collect()
}

fn check_crl(path: &std::path::Path, pem: &[u8], cas: &[X509]) -> Result<(String, i64), String> {
    let crl = X509Crl::from_pem(pem).map_err(|e| format!("`{}` is not a PEM CRL: {e}", path.display()))?;
    let issuer = cas
        .iter()
        .find(|ca| ca.subject_name().try_cmp(crl.issuer_name()).is_ok_and(|o| o.is_eq()))
        .ok_or_else(|| format!("`{}` is not issued by any of the listener's client CAs", path.display()))?;
    let key = issuer.public_key().map_err(|e| e.to_string())?;
    if !crl.verify(&key).unwrap_or(false) {
        return Err(format!("`{}`: the signature does not verify with its CA's key", path.display()));
    }
    if let Some(next) = crl.next_update() {
        let now = openssl::asn1::Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
        if next.compare(&now).is_ok_and(|o| o.is_lt()) {
            return Err(format!(
                "`{}` expired at {next} (its nextUpdate): every client certificate of its CA would be refused",
                path.display()
            ));
        }
    }
    let next_update = crl.next_update().map(expiry::unix_seconds).unwrap_or(i64::MAX);
    Ok((client_cert::common_name(issuer), next_update))
}
