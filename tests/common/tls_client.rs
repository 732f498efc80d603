//! A small HTTPS/1.1 client over OpenSSL for TLS listener tests: it can present a client
//! certificate, cap the protocol version, offer ALPN, show the server's certificate, and send
//! several requests on one connection.

use std::net::SocketAddr;
use std::pin::Pin;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::X509;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

#[derive(Default)]
pub struct TlsClient<'a> {
    pub ca: Option<&'a X509>,
    pub identity: Option<(&'a X509, &'a PKey<Private>)>,
    pub max_version: Option<SslVersion>,
    /// ALPN wire format, e.g. `b"\x02h2"`.
    pub alpn: Option<&'a [u8]>,
}

pub struct TlsConnection {
    stream: SslStream<TcpStream>,
}

impl TlsClient<'_> {
    /// Connects and completes the handshake as the client sees it (with TLS 1.3 the server may
    /// still refuse the client certificate after that: the first request then fails).
    pub async fn connect(&self, addr: SocketAddr) -> Result<TlsConnection, String> {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        if let Some(ca) = self.ca {
            builder.cert_store_mut().add_cert(ca.clone()).map_err(|e| e.to_string())?;
        }
        if let Some((cert, key)) = self.identity {
            builder.set_certificate(cert).map_err(|e| e.to_string())?;
            builder.set_private_key(key).map_err(|e| e.to_string())?;
        }
        if let Some(version) = self.max_version {
            builder.set_min_proto_version(None).map_err(|e| e.to_string())?;
            builder.set_max_proto_version(Some(version)).map_err(|e| e.to_string())?;
            builder.set_cipher_list("DEFAULT:@SECLEVEL=0").map_err(|e| e.to_string())?;
        }
        if let Some(alpn) = self.alpn {
            builder.set_alpn_protos(alpn).map_err(|e| e.to_string())?;
        }
        let ssl = builder.build().configure().and_then(|c| c.into_ssl("localhost")).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        Pin::new(&mut stream).connect().await.map_err(|e| format!("handshake: {e}"))?;
        Ok(TlsConnection { stream })
    }

    /// One request on a new connection: its status and body, or why there was none.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        self.connect(addr).await?.get(path).await
    }
}

impl TlsConnection {
    pub fn peer_certificate(&self) -> Option<X509> {
        self.stream.ssl().peer_certificate()
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.ssl().selected_alpn_protocol().map(<[u8]>::to_vec)
    }

    pub fn version(&self) -> &'static str {
        self.stream.ssl().version_str()
    }

    /// Sends a GET with keep-alive and reads the answer (`Content-Length` bodies).
    pub async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")).await
    }

    /// The same with a bearer token.
    pub async fn get_with_token(&mut self, path: &str, token: &str) -> Result<(u16, String), String> {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n")).await
    }

    async fn send(&mut self, request: &str) -> Result<(u16, String), String> {
        self.stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed without an answer".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status line")?;
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                return Err("connection closed inside the body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string()))
    }
}
