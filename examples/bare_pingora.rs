//! The smallest Pingora 0.9 reverse proxy, built with Seawall's profile and allocator: the
//! baseline that `loadtest/` measures Seawall against to tell Pingora's own per-request cost
//! from Seawall's. `cargo build --release --example bare_pingora`, then
//!
//! ```text
//! bare_pingora LISTEN UPSTREAM [--tls LISTEN CERT KEY] [--answer FILE]
//! ```
//!
//! - `--tls`: the same proxy on an HTTPS listener too (Pingora's intermediate settings, HTTP/2
//!   offered in ALPN, as Seawall's listeners do).
//! - `--answer FILE`: `GET /cached` is answered from memory with FILE's bytes, in
//!   `request_filter`: the least any cache hit served by Pingora can cost.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora_http::ResponseHeader;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: bare_pingora LISTEN UPSTREAM [--tls LISTEN CERT KEY] [--answer FILE]";

struct Bare {
    upstream: String,
    /// What `GET /cached` answers (`--answer`).
    answer: Option<Bytes>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let Some(answer) = &self.answer else {
            return Ok(false);
        };
        if session.req_header().uri.path() != "/cached" {
            return Ok(false);
        }
        let mut header = ResponseHeader::build_no_case(200, Some(4))?;
        header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        header.insert_header(http::header::CONTENT_LENGTH, answer.len())?;
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(answer.clone()), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

struct Args {
    listen: String,
    upstream: String,
    /// Address, certificate and key of the HTTPS listener.
    tls: Option<(String, String, String)>,
    answer: Option<Bytes>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err(USAGE.into());
    };
    let mut parsed = Args { listen, upstream, tls: None, answer: None };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--tls" => {
                let (Some(listen), Some(cert), Some(key)) = (args.next(), args.next(), args.next()) else {
                    return Err(format!("--tls needs LISTEN CERT KEY\n{USAGE}"));
                };
                parsed.tls = Some((listen, cert, key));
            }
            "--answer" => {
                let path = args.next().ok_or_else(|| format!("--answer needs FILE\n{USAGE}"))?;
                let body = std::fs::read(&path).map_err(|e| format!("--answer {path}: {e}"))?;
                parsed.answer = Some(Bytes::from(body));
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(parsed)
}

fn main() {
    let args = parse_args(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let conf = ServerConf { threads: 1, upstream_keepalive_pool_size: 1024, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let bare = Bare { upstream: args.upstream, answer: args.answer };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(&args.listen);
    if let Some((listen, cert, key)) = &args.tls {
        let mut settings = TlsSettings::intermediate(cert, key).unwrap_or_else(|e| {
            eprintln!("--tls {cert} {key}: {e}");
            std::process::exit(2);
        });
        settings.enable_h2();
        proxy.add_tls_with_settings(listen, None, settings);
    }
    server.add_service(proxy);
    server.run_forever();
}
