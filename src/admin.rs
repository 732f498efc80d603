//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Served by its own Pingora service on
//! `admin.address`, never on a public listener (validation refuses sharing an address).

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderValue, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::gateway::Gateway;
use crate::problem::Problem;
use crate::request_id;

pub struct AdminApp {
    gateway: Arc<Gateway>,
}

impl AdminApp {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        AdminApp { gateway }
    }
}

fn text(status: StatusCode, content_type: &str, body: Vec<u8>, id: &HeaderValue) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-request-id", id.clone())
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

fn problem(problem: Problem, id: &HeaderValue) -> Response<Vec<u8>> {
    let (header, body) = problem.response(id);
    let mut response = Response::new(body.to_vec());
    *response.status_mut() = header.status;
    *response.headers_mut() = header.headers.clone();
    response
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let id = request_id::from_request(req);
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        if method != Method::GET && method != Method::HEAD {
            return problem(Problem::MethodNotAllowed { allow: "GET, HEAD".into() }, &id);
        }
        match path.as_str() {
            "/metrics" => {
                text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.gateway.metrics.render(), &id)
            }
            "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", b"ok\n".to_vec(), &id),
            "/readyz" if self.gateway.is_ready() => {
                text(StatusCode::OK, "text/plain; charset=utf-8", b"ready\n".to_vec(), &id)
            }
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {}\n", self.gateway.not_ready_reason()).into_bytes(),
                &id,
            ),
            _ => problem(Problem::RouteNotFound, &id),
        }
    }
}
