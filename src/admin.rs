//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `GET /config` (the running config,
//! secrets redacted, and its hash) and `DELETE /cache/{route}` (purge).
//! Served by its own Pingora service on `admin.address`, never on a public listener (validation
//! refuses sharing an address).

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
    // The admin API is for operators: a refused purge says why (public answers never do).
    let detail = match &problem {
        Problem::BadRequest { reason } => Some(reason.as_str()),
        _ => None,
    };
    let (header, body) = problem.response_with_detail(id, detail);
    let mut response = Response::new(body.to_vec());
    *response.status_mut() = header.status;
    *response.headers_mut() = header.headers.clone();
    response
}

impl AdminApp {
    /// `DELETE /cache/{route}`: every entry of the route; with a query, the one entry it names.
    fn purge(&self, route_id: &str, query: &str, id: &HeaderValue) -> Response<Vec<u8>> {
        let config = &self.gateway.config;
        let Some((index, route)) = config.routes.iter().enumerate().find(|(_, r)| r.id == route_id) else {
            return problem(Problem::RouteNotFound, id);
        };
        let (Some(cache), Some(cache_config)) = (&self.gateway.cache, &route.cache) else {
            return problem(Problem::BadRequest { reason: format!("route `{route_id}` has no cache") }, id);
        };
        let purged = if query.is_empty() {
            cache.store.purge_route(index)
        } else {
            match crate::cache::key::purge_keys(route_id, cache_config, query) {
                Ok(keys) => keys.iter().filter(|k| cache.store.purge_key(k)).count(),
                Err(reason) => return problem(Problem::BadRequest { reason }, id),
            }
        };
        tracing::info!(route = route_id, query, purged, "cache purged");
        let body = serde_json::json!({ "route": route_id, "purged": purged }).to_string();
        text(StatusCode::OK, "application/json", body.into_bytes(), id)
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let id = request_id::from_request(req);
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        if let Some(route) = path.strip_prefix("/cache/") {
            if method != Method::DELETE {
                return problem(Problem::MethodNotAllowed { allow: "DELETE".into() }, &id);
            }
            let query = req.uri.query().unwrap_or("").to_string();
            return self.purge(route, &query, &id);
        }
        if method != Method::GET && method != Method::HEAD {
            return problem(Problem::MethodNotAllowed { allow: "GET, HEAD".into() }, &id);
        }
        match path.as_str() {
            "/metrics" => {
                if let Some(cache) = &self.gateway.cache {
                    self.gateway.metrics.cache_stored_bytes(cache.store.stored_bytes());
                }
                text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.gateway.metrics.render(), &id)
            }
            "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", b"ok\n".to_vec(), &id),
            "/config" => {
                let source = &self.gateway.config.source;
                let body = serde_json::json!({ "hash": source.hash, "config": source.redacted });
                text(StatusCode::OK, "application/json", body.to_string().into_bytes(), &id)
            }
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
