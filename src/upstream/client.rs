//! Calls the gateway makes itself to an upstream (a mediation's SOAP request), over Pingora's
//! HTTP/1.1 connector with its own keep-alive pool. The peer comes from [`super::Upstream::peer`],
//! so target choice, TLS material and timeouts are the proxied requests' own; the whole call,
//! connect to last body byte, is bounded by what is left of the route deadline.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::v1::Connector;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::problem::{is_timeout, Problem};

/// The backend's answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// One shared connector (and pool) for every call the gateway makes itself.
pub struct UpstreamClient {
    connector: Connector,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        UpstreamClient { connector: Connector::new(None) }
    }
}

impl UpstreamClient {
    /// Sends `request` with `body` to `peer` and reads the answer, at most `max_answer_bytes` of
    /// body, all within `time_left`. A connection is pooled again only after a complete answer.
    /// `idempotent`: a pooled connection the backend had closed may be retried once.
    pub async fn call(
        &self,
        peer: &HttpPeer,
        request: RequestHeader,
        body: Bytes,
        max_answer_bytes: usize,
        time_left: Duration,
        idempotent: bool,
    ) -> Result<Answer, Problem> {
        let exchange = self.exchange(peer, request, body, max_answer_bytes, idempotent);
        match tokio::time::timeout(time_left, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(Problem::UpstreamTimeout),
        }
    }

    async fn exchange(
        &self,
        peer: &HttpPeer,
        request: RequestHeader,
        body: Bytes,
        max_answer_bytes: usize,
        idempotent: bool,
    ) -> Result<Answer, Problem> {
        let (mut session, reused) = self.connector.get_http_session(peer).await.map_err(failed)?;
        let header = match send(&mut session, &request, &body).await {
            Ok(header) => header,
            Err(mut e) => {
                // A pooled connection the backend had closed meanwhile: once more on a new one,
                // when Pingora says the request cannot have reached the backend.
                e.retry.decide_reuse(reused);
                if !(idempotent && e.retry()) {
                    return Err(failed(e));
                }
                let (fresh, _) = self.connector.get_http_session(peer).await.map_err(failed)?;
                session = fresh;
                send(&mut session, &request, &body).await.map_err(failed)?
            }
        };
        let mut answer = BytesMut::new();
        while let Some(chunk) = session.read_body_ref().await.map_err(failed)? {
            if answer.len() + chunk.len() > max_answer_bytes {
                return Err(Problem::UpstreamBadAnswer {
                    reason: format!("answer body over the {max_answer_bytes}-byte limit"),
                });
            }
            answer.extend_from_slice(chunk);
        }
        self.connector.release_http_session(session, peer, peer.options.idle_timeout).await;
        Ok(Answer { status: header.status.as_u16(), body: answer.freeze() })
    }
}

/// Writes the request and its body, and reads the answer's header.
async fn send(session: &mut HttpSession, request: &RequestHeader, body: &[u8]) -> pingora::Result<Box<ResponseHeader>> {
    session.write_request_header(Box::new(request.clone())).await?;
    session.write_body(body).await?;
    session.finish_body().await?;
    session.read_resp_header_parts().await
}

/// What a failed call means for the caller, as for proxied calls: a connect attempt that timed
/// out (with time left) is an unreachable backend, and may be retried; any other timeout is 504.
fn failed(e: Box<pingora::Error>) -> Problem {
    match e.etype() {
        ErrorType::ConnectTimedout => Problem::UpstreamUnavailable { reason: e.to_string() },
        etype if is_timeout(etype) => Problem::UpstreamTimeout,
        _ => Problem::UpstreamUnavailable { reason: e.to_string() },
    }
}
