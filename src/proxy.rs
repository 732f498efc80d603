//! `impl ProxyHttp`: calls the modules in phase order and holds no policy of its own.
//!
//! Phase map (see pingora-proxy/src/proxy_trait.rs for each phase's contract):
//! - `request_filter`: request id, route match (404/405/400), deadline, client IP and allowlist
//!   (403), bearer token (401) and scopes (403), declared body size (413), `client` and `ip`
//!   usage plans (429); a mediation route's declared inputs (400 `invalid_input`).
//! - `request_cache_filter` / `cache_key_callback`: GET and HEAD on a cached route use the cache,
//!   keyed after auth (route, method, `vary` parts, principal).
//! - `proxy_upstream_filter`: after a miss (at once on uncached routes), what guards the
//!   backend: the deadline (504), the `route` usage plan (429), breaker and bulkhead (503, or a
//!   stale entry). A mediation route's backend call (SOAP or SQL) is made and answered here:
//!   Pingora proxies nothing for it.
//! - `response_cache_filter` / `should_serve_stale`: what is stored; stale entries for
//!   revalidation and backend failures.
//! - `upstream_peer`: next target; every timeout capped by what is left of the deadline.
//! - `fail_to_connect` / `error_while_proxy`: retry only idempotent requests, inside the deadline.
//! - `upstream_request_filter`: path rewrite, `Host`, `X-Forwarded-*`, `X-Request-Id`.
//! - `request_body_filter`: streamed body bounded by `max_body_bytes` (413).
//! - `upstream_response_filter` / `upstream_response_body_filter`: deadline re-checked; response
//!   hop-by-hop headers dropped.
//! - `response_filter`: `X-Request-Id` on proxied and cached answers, `Cache-Status`.
//! - `fail_to_proxy`: the error, classified by its *source*, becomes one [`Problem`] answer.
//! - `logging`: metrics and the access-log line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use pingora_cache::key::CacheKey;
use pingora_cache::{NoCacheReason, RespCacheable};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::auth;
use crate::auth::issuer::{self, TokenIssuer};
use crate::auth::jwt::{self, Principal, TokenError};
use crate::cache::{self, CacheResult};
use crate::config::RateLimitKey;
use crate::config::RouteConfig;
use crate::forwarding::{self, Forwarded};
use crate::gateway::{ActiveRequest, Gateway};
use crate::mediation::inputs::{self, Inputs, RawRequest};
use crate::mediation::{Backend, Call, Mediation};
use crate::metrics::{AuthLayer, InflightGuard, UpstreamOutcome, ISSUER_ROUTE, NO_ROUTE};
use crate::problem::{answer_header, is_timeout, Problem};
use crate::request_id;
use crate::routing::{has_dot_segment, PathParams, RouteMatch};
use crate::throttle::Caller;
use crate::tls::client_cert::{ClientCertificate, Verdict};
use crate::upstream::{Deadline, UpstreamPass};

/// The shortest per-write timeout towards the caller.
const MIN_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct SeawallProxy {
    gateway: Arc<Gateway>,
}

impl SeawallProxy {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        SeawallProxy { gateway }
    }
}

/// Per-request state, shared by the phases.
pub struct RequestCtx {
    start: Instant,
    request_id: HeaderValue,
    route: Option<usize>,
    /// Path parameters, decoded, for later phases (auth, cache keys, mediation).
    pub params: PathParams,
    deadline: Option<Deadline>,
    /// The socket peer (appended to `X-Forwarded-For`).
    peer_ip: Option<IpAddr>,
    /// The caller as policy sees it: the peer, or what trusted proxies say it is.
    client_ip: Option<IpAddr>,
    /// Who the bearer token says called (routes with `auth.jwt`).
    pub principal: Option<Arc<Principal>>,
    /// Answered by the built-in token issuer.
    issuer_request: bool,
    /// A background refresh of a stale entry (stale-while-revalidate), made by the gateway: its
    /// upstream call counts, but it is no caller's request.
    refresh: bool,
    attempts: u32,
    stale_connection_retried: bool,
    body_bytes: u64,
    body_complete: bool,
    upstream_started: Option<Instant>,
    upstream_status: Option<u16>,
    upstream_inflight: Option<InflightGuard>,
    /// The bulkhead slot and breaker admission of this request's upstream call.
    upstream_pass: Option<UpstreamPass>,
    /// The route's cache was turned on for this request (GET/HEAD on a cached route).
    cache_enabled: bool,
    /// The request's cache key, made once after auth (`request_filter`).
    cache_key: Option<CacheKey>,
    /// Answered from a fresh entry in `request_filter`, without Pingora's cache phases.
    fresh_hit: bool,
    /// A mediation route's inputs, read and checked in `request_filter`.
    inputs: Option<Inputs>,
    /// Set by the phase that refuses the request; `fail_to_proxy` answers with it.
    problem: Option<Problem>,
    /// The status the caller got (499: the caller went away first).
    status: u16,
    _active: ActiveRequest,
}

impl RequestCtx {
    /// Whether the route allows another attempt now: idempotent, inside the deadline, within
    /// `retries`. [`Self::take_retry`] also charges the upstream's retry budget.
    fn may_retry(&self, gateway: &Gateway, session: &Session) -> bool {
        let Some(route) = self.route.map(|r| &gateway.config.routes[r]) else {
            return false;
        };
        let idempotent = session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        let time_left = self.deadline.is_some_and(|d| !d.expired(Instant::now()));
        idempotent && time_left && self.attempts <= route.retries
    }

    /// Takes a retry from the upstream's budget; `false` when it is spent.
    fn take_retry(&self, gateway: &Gateway) -> bool {
        self.route.is_some_and(|r| gateway.upstreams[gateway.config.routes[r].upstream].retry_budget.withdraw())
    }
}

/// The error for a phase that set `ctx.problem`: only its presence matters to Pingora.
fn refused(problem: &Problem) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(problem.status()), problem.to_string())
}

impl SeawallProxy {
    /// Writes a problem answer, or the route's degraded answer for it (`on_error`). The
    /// connection is closed when the request body was not read, so unread bytes can never be
    /// taken for the next request.
    async fn respond(&self, session: &mut Session, ctx: &mut RequestCtx, problem: &Problem) {
        let degraded = ctx
            .route
            .and_then(|r| self.gateway.config.routes[r].on_error.as_ref())
            .and_then(|d| d.answer(problem, &ctx.request_id));
        let (header, body) = degraded.unwrap_or_else(|| problem.response(&ctx.request_id));
        write_answer(session, ctx, header, body).await;
    }

    /// The built-in token issuer's two endpoints; answers are RFC 6749 JSON, not problem+json.
    async fn serve_issuer(&self, session: &mut Session, ctx: &mut RequestCtx, issuer: &TokenIssuer) {
        let req = session.req_header();
        let (status, body, challenge) = if req.uri.path() == issuer::JWKS_PATH {
            if req.method != http::Method::GET && req.method != http::Method::HEAD {
                let problem = Problem::MethodNotAllowed { allow: "GET, HEAD".into() };
                self.respond(session, ctx, &problem).await;
                return;
            }
            (200, issuer.jwks().to_string(), false)
        } else {
            let method = req.method.clone();
            let authorization =
                req.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(String::from);
            let answer = match read_body(session, issuer::MAX_BODY_BYTES).await {
                Ok(body) => {
                    ctx.body_complete = true;
                    issuer.token(
                        &method,
                        authorization.as_deref(),
                        &body,
                        ctx.client_ip,
                        jwt::unix_now(),
                        Instant::now(),
                    )
                }
                Err(_) => issuer::TokenAnswer {
                    status: 400,
                    body: r#"{"error":"invalid_request"}"#.into(),
                    basic_challenge: false,
                },
            };
            match answer.status {
                401 => self.gateway.metrics.auth_rejection(AuthLayer::Issuer, "invalid_client"),
                429 => self.gateway.metrics.auth_rejection(AuthLayer::Issuer, "throttled"),
                _ => {}
            }
            (answer.status, answer.body, answer.basic_challenge)
        };
        let header = (|| {
            let mut header = answer_header(status, "application/json", body.len());
            header.insert_header("x-request-id", ctx.request_id.clone())?;
            if status == 200 && body.starts_with(r#"{"keys""#) {
                header.insert_header("cache-control", "public, max-age=300")?;
            } else {
                header.insert_header("cache-control", "no-store")?;
                header.insert_header("pragma", "no-cache")?;
            }
            if challenge {
                header.insert_header("www-authenticate", r#"Basic realm="seawall""#)?;
            }
            Ok::<_, Box<Error>>(header)
        })();
        match header {
            Ok(header) => write_answer(session, ctx, header, Bytes::from(body)).await,
            Err(e) => {
                let problem = Problem::Internal { reason: e.to_string() };
                self.respond(session, ctx, &problem).await;
            }
        }
    }

    /// The route's bearer token requirement (after the cheaper checks of [`Self::admit`]). A
    /// token naming a key we do not know may trigger one JWKS refetch, shared by concurrent
    /// requests, before it is refused.
    async fn authenticate(&self, session: &Session, ctx: &mut RequestCtx, route: &RouteConfig) -> Result<(), Problem> {
        let Some((auth, provider_index)) = route.auth.as_ref().and_then(|a| Some((a, a.provider?))) else {
            return Ok(());
        };
        let provider = &self.gateway.jwt_providers[provider_index];
        let token = jwt::bearer_token(&session.req_header().headers);
        let mut verified = token.and_then(|t| provider.verify(t, jwt::unix_now()));
        if let (Err(TokenError::UnknownKey), Some(source), Ok(t)) =
            (&verified, &self.gateway.jwks_sources[provider_index], token)
        {
            source.refetch_for_unknown_kid(provider, &self.gateway.metrics).await;
            verified = provider.verify(t, jwt::unix_now());
        }
        let principal = verified.map_err(|e| {
            self.gateway.metrics.auth_rejection(AuthLayer::Jwt, e.reason());
            Problem::InvalidToken { reason: e.reason() }
        })?;
        let missing = jwt::missing_scope(&principal, &auth.scopes_any, &auth.scopes_all);
        ctx.principal = Some(principal);
        if let Some(scope) = missing {
            self.gateway.metrics.auth_rejection(AuthLayer::Jwt, "insufficient_scope");
            return Err(Problem::InsufficientScope { scope });
        }
        Ok(())
    }

    /// Takes a token from the route's usage plan (after auth: a refused caller spends nothing,
    /// and `client` keys need the principal). A `route` plan guards the backend, so it is
    /// charged only on the way there (`backend_bound`: after a cache miss); `client` and `ip`
    /// plans guard the API and are charged for every request, cache hits included.
    fn charge_usage_plan(&self, ctx: &RequestCtx, backend_bound: bool) -> Result<(), Problem> {
        let Some(route) = ctx.route else { return Ok(()) };
        let Some(plan) = &self.gateway.usage_plans[route] else { return Ok(()) };
        if (plan.key == RateLimitKey::Route) != backend_bound {
            return Ok(());
        }
        let caller = match plan.key {
            RateLimitKey::Route => Caller::Route,
            RateLimitKey::Client => match ctx.principal.as_ref().and_then(|p| p.client_id.as_deref()) {
                Some(client) => Caller::Client(client.into()),
                None => Caller::Route,
            },
            RateLimitKey::Ip => match ctx.client_ip {
                Some(ip) => Caller::Ip(ip),
                None => Caller::Route,
            },
        };
        plan.check(&caller).map_err(|limited| {
            self.gateway.metrics.rate_limited(route);
            Problem::RateLimited(limited)
        })
    }

    /// The upstream's breaker and bulkhead, last: only a request about to be proxied takes a
    /// slot or a half-open probe.
    fn admit_to_upstream(&self, ctx: &mut RequestCtx, route: &RouteConfig) -> Result<(), Problem> {
        ctx.upstream_pass = Some(self.gateway.upstreams[route.upstream].admit()?);
        Ok(())
    }

    /// The client certificate, where the listener (`client_auth.mode: required`) or the route
    /// (`auth.client_cert: required`) asks for one: verified in the handshake, and allowed by
    /// the listener's names and pins. `route: None` checks only the listener's own requirement.
    fn check_client_certificate(&self, session: &Session, route: Option<&RouteConfig>) -> Result<(), Problem> {
        let certificate = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|tls| tls.extension.get::<ClientCertificate>());
        let route_requires = route.and_then(|r| r.auth.as_ref()).is_some_and(|a| a.client_cert);
        if !route_requires && !certificate.is_some_and(|c| c.required) {
            return Ok(());
        }
        let verdict = certificate.map_or(Verdict::Missing, |c| c.verdict);
        if verdict == Verdict::Allowed {
            return Ok(());
        }
        let reason = verdict.reason();
        self.gateway.metrics.auth_rejection(AuthLayer::Mtls, reason);
        let subject = certificate.and_then(|c| c.subject.as_deref()).unwrap_or("");
        let route = route.map(|r| r.id.as_str()).unwrap_or("");
        tracing::info!(route, reason, subject, "client certificate not allowed");
        Err(Problem::ClientCertRejected { reason })
    }

    /// The request's cache key, for a route with a cache (after auth: it may hold the principal).
    fn cache_key(&self, session: &Session, ctx: &RequestCtx) -> Option<CacheKey> {
        let route = &self.gateway.config.routes[ctx.route?];
        let config = route.cache.as_ref()?;
        Some(cache::key::request_key(&route.id, config, session.req_header(), &ctx.params, ctx.principal.as_deref()))
    }

    /// Answers a plain GET from a fresh entry, if there is one; `false`: carry on (Pingora's
    /// cache phases then handle misses, waits, stale entries, ranges and conditionals).
    async fn answer_fresh_hit(&self, session: &mut Session, ctx: &mut RequestCtx, route: &RouteConfig) -> bool {
        let (Some(cache), Some(_)) = (&self.gateway.cache, &route.cache) else {
            return false;
        };
        if session.req_header().method != http::Method::GET || ctx.refresh {
            return false;
        }
        ctx.cache_key = self.cache_key(session, ctx);
        let Some((header, body)) = ctx
            .cache_key
            .as_ref()
            .and_then(|key| cache::fresh_answer(cache, session.req_header(), key, &ctx.request_id))
        else {
            return false;
        };
        ctx.fresh_hit = true;
        write_answer(session, ctx, header, body).await;
        true
    }

    /// A mediation's declared inputs, from the path, query, headers and (when it reads one)
    /// the flat JSON body: 400 `invalid_input` before any backend is touched.
    async fn read_inputs(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &RouteConfig,
        mediation: &Mediation,
    ) -> std::result::Result<(), Problem> {
        let body = if mediation.reads_body {
            let body = read_body(session, route.max_body_bytes as usize).await?;
            ctx.body_complete = true;
            Some(body)
        } else if !session.is_body_empty() {
            return Err(Problem::InvalidInput { input: "body".into(), reason: "not a declared input" });
        } else {
            None
        };
        let req = session.req_header();
        let raw =
            RawRequest { params: &ctx.params, query: req.uri.query(), headers: &req.headers, body: body.as_deref() };
        let inputs = inputs::extract(&mediation.inputs, &raw)
            .map_err(|e| Problem::InvalidInput { input: e.input, reason: e.reason })?;
        ctx.inputs = Some(inputs);
        Ok(())
    }

    /// A mediation route's backend call (admitted by `proxy_upstream_filter`): the mapped JSON
    /// answer, stored as this request's cache fill on a cached route, or the problem (mapped
    /// fault, bad answer, timeout) for the caller to answer.
    async fn mediate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &RouteConfig,
        mediation: &Mediation,
    ) -> std::result::Result<(ResponseHeader, Bytes), Problem> {
        let upstream = &self.gateway.upstreams[route.upstream];
        ctx.upstream_started = Some(Instant::now());
        ctx.upstream_inflight = Some(self.gateway.metrics.inflight(route.upstream));
        let inputs = ctx.inputs.take().unwrap_or_default();
        let request_id = ctx.request_id.clone();
        let original_host = session.req_header().headers.get(http::header::HOST).cloned();
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let idempotent = session.req_header().method.is_idempotent();
        let outcome = loop {
            ctx.attempts += 1;
            let time_left = ctx.deadline.map_or(route.timeout, |d| d.remaining(Instant::now()));
            let backend = match route.database {
                Some(database) => Backend::Database(&self.gateway.databases[database]),
                None => Backend::Upstream {
                    upstream,
                    client: &self.gateway.upstream_client,
                    forwarded: Forwarded {
                        original_host: original_host.as_ref(),
                        peer_ip: ctx.peer_ip,
                        request_id: &request_id,
                        upstream_host: upstream.host_header(),
                        tls,
                    },
                },
            };
            let outcome = mediation.run(&inputs, Call { backend, time_left, idempotent }).await;
            // As for proxied calls: only a call that got no answer at all is tried again
            // (idempotent, inside the deadline, within `retries` and the retry budget).
            let unanswered =
                outcome.backend_status.is_none() && matches!(outcome.result, Err(Problem::UpstreamUnavailable { .. }));
            if unanswered && ctx.may_retry(&self.gateway, session) && ctx.take_retry(&self.gateway) {
                continue;
            }
            break outcome;
        };
        ctx.upstream_status = outcome.backend_status;
        let body = outcome.result?;
        let mut header = answer_header(200, "application/json", body.len());
        if let (true, Some(config)) = (ctx.cache_enabled, &route.cache) {
            if !cache::fill(&mut session.cache, config, &header, body.clone()).await {
                session.cache.disable(NoCacheReason::OriginNotCache);
            }
            let status = cache::cache_status(&session.cache);
            header
                .insert_header(cache::CACHE_STATUS, status)
                .map_err(|e| Problem::Internal { reason: e.to_string() })?;
        }
        header
            .insert_header("x-request-id", ctx.request_id.clone())
            .map_err(|e| Problem::Internal { reason: e.to_string() })?;
        Ok((header, body))
    }

    /// Route match and every check that needs no I/O, cheapest refusal first: path, route,
    /// caller address, declared body size. Runs in `request_filter`, before any upstream work.
    fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> Result<&RouteConfig, Problem> {
        let config = &self.gateway.config;
        let req = session.req_header();
        let path = req.uri.path();
        if has_dot_segment(path) {
            return Err(Problem::BadRequest { reason: "dot segment in path".into() });
        }
        let (route_index, params) = match config.router.find(&req.method, path) {
            RouteMatch::Found { route, params } => (route, params),
            RouteMatch::NotFound => return Err(Problem::RouteNotFound),
            RouteMatch::MethodNotAllowed { allow } => return Err(Problem::MethodNotAllowed { allow }),
            RouteMatch::BadParam { reason } => return Err(Problem::BadRequest { reason }),
        };
        ctx.route = Some(route_index);
        ctx.params = params;
        let route = &config.routes[route_index];
        ctx.deadline = Some(Deadline::after(ctx.start, route.timeout));

        if let Some(allowed) = self.gateway.allowlists().for_route(route_index) {
            if !ctx.client_ip.is_some_and(|ip| allowed.contains(ip)) {
                self.gateway.metrics.auth_rejection(AuthLayer::Ip, "not_allowed");
                return Err(Problem::IpNotAllowed);
            }
        }
        self.check_client_certificate(session, Some(route))?;

        // A declared length over the limit is refused before any upstream is touched.
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > route.max_body_bytes) {
            return Err(Problem::RequestTooLarge { limit: route.max_body_bytes });
        }
        Ok(route)
    }
}

#[async_trait]
impl ProxyHttp for SeawallProxy {
    /// Boxed: Pingora keeps the context inside its per-connection future, which it moves into
    /// a box of its own on every request; a pointer there moves 8 bytes instead of ~500.
    type CTX = Box<RequestCtx>;

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // No downstream modules (Pingora adds a disabled compression module by default, which
        // still runs its filters on every request): answers pass as the backend made them.
    }

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx {
            start: Instant::now(),
            request_id: HeaderValue::from_static(""),
            route: None,
            params: PathParams::default(),
            deadline: None,
            peer_ip: None,
            client_ip: None,
            principal: None,
            issuer_request: false,
            refresh: false,
            attempts: 0,
            stale_connection_retried: false,
            body_bytes: 0,
            body_complete: false,
            upstream_started: None,
            upstream_status: None,
            upstream_inflight: None,
            upstream_pass: None,
            cache_enabled: false,
            cache_key: None,
            fresh_hit: false,
            inputs: None,
            problem: None,
            status: 0,
            _active: self.gateway.active_request(),
        })
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.request_id = request_id::from_request(session.req_header());
        ctx.peer_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        // Before the token issuer: its failure throttle keys on the caller, not on a trusted
        // load balancer every caller shares.
        let trusted = &self.gateway.config.trusted_proxies;
        ctx.client_ip = ctx.peer_ip.map(|peer| auth::ip::client_ip(peer, trusted, &session.req_header().headers));
        ctx.body_complete = session.is_body_empty();
        // A `client_auth.mode: required` listener refuses a certificate it does not allow before
        // anything else answers (routes, 404s, the token issuer).
        if let Err(problem) = self.check_client_certificate(session, None) {
            self.respond(session, ctx, &problem).await;
            ctx.problem = Some(problem);
            return Ok(true);
        }
        if let Some(issuer) = &self.gateway.token_issuer {
            let path = session.req_header().uri.path();
            if path == issuer.path || path == issuer::JWKS_PATH {
                ctx.issuer_request = true;
                self.serve_issuer(session, ctx, issuer).await;
                return Ok(true);
            }
        }
        // A background refresh of a stale entry (stale-while-revalidate) repeats its parent's
        // checks but was paid for by it.
        ctx.refresh = session.subrequest_ctx.is_some();
        let admitted = match self.admit(session, ctx) {
            Ok(route) => match self.authenticate(session, ctx, route).await {
                Ok(()) if ctx.refresh => Ok(route),
                Ok(()) => self.charge_usage_plan(ctx, false).map(|()| route),
                Err(problem) => Err(problem),
            },
            Err(problem) => Err(problem),
        };
        match admitted {
            Ok(route) => {
                // A caller that stops reading must not hold the upstream's bulkhead slot (or a
                // circuit probe) for good: no single write may wait longer than the deadline.
                session.set_write_timeout(Some(route.timeout.max(MIN_WRITE_TIMEOUT)));
                if self.answer_fresh_hit(session, ctx, route).await {
                    return Ok(true);
                }
                if let Some(index) = route.mediation {
                    let mediation = &self.gateway.config.mediations[index];
                    if let Err(problem) = self.read_inputs(session, ctx, route, mediation).await {
                        self.respond(session, ctx, &problem).await;
                        ctx.problem = Some(problem);
                        return Ok(true);
                    }
                }
                // (A mediation has read its body already, and Pingora proxies nothing for it.)
                if route.retries > 0 && route.mediation.is_none() {
                    session.enable_retry_buffering();
                }
                Ok(false)
            }
            Err(problem) => {
                self.respond(session, ctx, &problem).await;
                ctx.problem = Some(problem);
                Ok(true)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        // After `request_filter`: a cached answer never skips a check.
        let (Some(cache), Some(route), Some(deadline)) = (&self.gateway.cache, ctx.route, ctx.deadline) else {
            return Ok(());
        };
        let method = &session.req_header().method;
        if self.gateway.config.routes[route].cache.is_none()
            || (method != http::Method::GET && method != http::Method::HEAD)
        {
            return Ok(());
        }
        // A request waiting for another's fill gives up with its deadline (then answers 504).
        cache.enable(&mut session.cache, deadline.remaining(Instant::now()));
        ctx.cache_enabled = true;
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        match ctx.cache_key.take().or_else(|| self.cache_key(session, ctx)) {
            Some(key) => Ok(key),
            None => Error::e_explain(ErrorType::InternalError, "cache key asked for a route without a cache"),
        }
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // Runs after a cache miss (or at once on uncached routes): what guards the backend, so a
        // cache hit is never charged, and only a request about to reach the backend takes a
        // bulkhead slot or a half-open probe.
        let Some(route) = ctx.route.map(|r| &self.gateway.config.routes[r]) else {
            return Ok(true);
        };
        let refusal = if ctx.deadline.is_some_and(|d| d.expired(Instant::now())) {
            // Waited on another request's fill until the deadline: never on to the backend.
            Err(Problem::UpstreamTimeout)
        } else {
            self.charge_usage_plan(ctx, true).and_then(|()| self.admit_to_upstream(ctx, route))
        };
        let problem = match (refusal, route.mediation) {
            (Ok(()), None) => return Ok(true),
            (Ok(()), Some(index)) => {
                // The gateway makes the backend call itself and answers (`Ok(false)`: Pingora
                // proxies nothing); a failure is answered as a refusal is, below.
                match self.mediate(session, ctx, route, &self.gateway.config.mediations[index]).await {
                    Ok((header, body)) => {
                        write_answer(session, ctx, header, body).await;
                        return Ok(false);
                    }
                    Err(problem) => problem,
                }
            }
            (Err(problem), _) => problem,
        };
        if problem.is_backend_failure() && session.cache.can_serve_stale_error() {
            // Answered from the stale entry by Pingora's error path (`upstream_peer` fails at
            // once), after which it drops the connection: the answer says so.
            session.set_keepalive(None);
            ctx.problem = Some(problem);
            return Ok(true);
        }
        self.respond(session, ctx, &problem).await;
        ctx.problem = Some(problem);
        Ok(false)
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        response: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        let config = ctx.route.and_then(|r| self.gateway.config.routes[r].cache.as_ref());
        Ok(match config {
            Some(config) => cache::cacheability(config, response),
            None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    fn should_serve_stale(&self, _session: &mut Session, ctx: &mut Self::CTX, error: Option<&Error>) -> bool {
        // Pingora has checked the entry's window (`stale_while_revalidate_secs` or
        // `stale_if_error_secs`); what is left is whether this failure is the backend's.
        let Some(error) = error else {
            return true;
        };
        if ctx.problem.is_none() {
            // The failure behind the stale answer, for the access log and the upstream's
            // outcome (a timeout counts as one): `fail_to_proxy` will not run.
            let deadline_passed = ctx.deadline.is_some_and(|d| d.expired(Instant::now()));
            ctx.problem = Problem::from_proxy_error(error, ctx.body_complete, deadline_passed);
        }
        // (No problem at all: the caller went away.)
        ctx.problem.as_ref().is_some_and(Problem::is_backend_failure)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(deadline)) = (ctx.route, ctx.deadline) else {
            let problem = Problem::Internal { reason: "no route at upstream_peer".into() };
            let e = refused(&problem);
            ctx.problem = Some(problem);
            return Err(e);
        };
        if let Some(problem) = &ctx.problem {
            // Refused in `proxy_upstream_filter` with a stale entry to answer from instead.
            return Err(refused(problem).into_up());
        }
        let upstream_index = self.gateway.config.routes[route].upstream;
        let upstream = &self.gateway.upstreams[upstream_index];
        let now = Instant::now();
        let remaining = deadline.remaining(now);
        if remaining.is_zero() {
            ctx.problem = Some(Problem::UpstreamTimeout);
            return Err(Error::explain(ErrorType::ConnectTimedout, "route deadline passed before connecting").into_up());
        }
        ctx.attempts += 1;
        if ctx.upstream_started.is_none() {
            ctx.upstream_started = Some(now);
            ctx.upstream_inflight = Some(self.gateway.metrics.inflight(upstream_index));
        }
        Ok(Box::new(upstream.peer(remaining)))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the backend, but the retry still has to fit the route's budget.
        e.set_retry(ctx.may_retry(&self.gateway, session) && ctx.take_retry(&self.gateway));
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        // A pooled connection the backend had already closed fails at once: one free retry.
        e.retry.decide_reuse(client_reused);
        let stale_connection = e.retry() && client_reused && !ctx.stale_connection_retried;
        let may_retry = ctx.may_retry(&self.gateway, session);
        let idempotent = session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        let time_left = ctx.deadline.is_some_and(|d| !d.expired(Instant::now()));
        let retry = if stale_connection && idempotent && time_left {
            ctx.stale_connection_retried = true;
            ctx.attempts = ctx.attempts.saturating_sub(1);
            true
        } else {
            may_retry && !is_timeout(e.etype()) && ctx.problem.is_none() && ctx.take_retry(&self.gateway)
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(route_index) = ctx.route else {
            return Ok(());
        };
        let route = &self.gateway.config.routes[route_index];
        let upstream = &self.gateway.upstreams[route.upstream];
        if let Some(rewrite) = &route.upstream_path {
            let query = if route.forward_query { upstream_request.uri.query() } else { None };
            let target = rewrite.render(&ctx.params, query);
            let uri = target.parse::<http::Uri>().map_err(|e| {
                Error::because(ErrorType::InternalError, "rewritten upstream path is not a valid URI", e)
            })?;
            upstream_request.set_uri(uri);
        }
        let forwarded = Forwarded {
            original_host: session.req_header().headers.get(http::header::HOST),
            peer_ip: ctx.peer_ip,
            request_id: &ctx.request_id,
            upstream_host: upstream.host_header(),
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        };
        forwarding::upstream_request(upstream_request, &forwarded)?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(chunk), Some(route)) = (body.as_ref(), ctx.route) {
            ctx.body_bytes += chunk.len() as u64;
            let limit = self.gateway.config.routes[route].max_body_bytes;
            if ctx.body_bytes > limit {
                let problem = Problem::RequestTooLarge { limit };
                let e = refused(&problem);
                ctx.problem = Some(problem);
                return Err(e);
            }
        }
        if end_of_stream {
            ctx.body_complete = true;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if ctx.deadline.is_some_and(|d| d.expired(Instant::now())) {
            ctx.problem = Some(Problem::UpstreamTimeout);
            return Err(
                Error::explain(ErrorType::ReadTimedout, "route deadline passed while reading the answer").into_up()
            );
        }
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        // A route that degrades the backend's own 5xx answers (`on_error.codes: [upstream_error]`)
        // answers with its degraded body instead (or a stale entry, as for any backend failure).
        let degrades = |route: usize| {
            let on_error = self.gateway.config.routes[route].on_error.as_ref();
            on_error.is_some_and(|d| d.covers(crate::problem::UPSTREAM_ERROR))
        };
        if status >= 500 && ctx.route.is_some_and(degrades) {
            ctx.problem = Some(Problem::UpstreamError { status });
            return Err(Error::explain(ErrorType::HTTPStatus(status), "upstream answered with an error").into_up());
        }
        forwarding::strip_hop_by_hop(upstream_response);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        // A backend that trickles its body past the deadline is cut off (the caller already has
        // the status line, so it sees a truncated answer rather than waiting on).
        if ctx.deadline.is_some_and(|d| d.expired(Instant::now())) {
            ctx.problem = Some(Problem::UpstreamTimeout);
            return Err(
                Error::explain(ErrorType::ReadTimedout, "route deadline passed while reading the body").into_up()
            );
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        upstream_response.insert_header("x-request-id", ctx.request_id.clone())?;
        if ctx.cache_enabled {
            let status = cache::cache_status(&session.cache);
            upstream_response.insert_header(cache::CACHE_STATUS, status)?;
        }
        ctx.status = upstream_response.status.as_u16();
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Self::CTX) -> FailToProxy {
        if ctx.request_id.is_empty() {
            // Failed before `request_filter` ran.
            ctx.request_id = request_id::generate();
        }
        let deadline_passed = ctx.deadline.is_some_and(|d| d.expired(Instant::now()));
        let problem = ctx.problem.clone().or_else(|| Problem::from_proxy_error(e, ctx.body_complete, deadline_passed));
        let answered = session.response_written().is_some();
        // Pingora drops the caller's connection after a failed proxy (we answer
        // `can_reuse_downstream: false`, and a failed upstream call is never reused): say
        // `Connection: close` so the caller does not send its next request on a closing connection.
        session.set_keepalive(None);
        match (&problem, answered) {
            (Some(problem), false) => {
                self.respond(session, ctx, problem).await;
            }
            // Headers already went out (a body cut off mid-way) or the caller is gone.
            (Some(_), true) => {}
            (None, _) => ctx.status = 499,
        }
        ctx.problem = problem;

        FailToProxy { error_code: ctx.status, can_reuse_downstream: false }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        // The access log carries every failure with its reason and request id.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let now = Instant::now();
        if ctx.status == 0 {
            ctx.status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(499);
        }
        let config = &self.gateway.config;
        let route = ctx.route.map(|r| &config.routes[r]);
        let route_id = match route {
            Some(r) => r.id.as_str(),
            None if ctx.issuer_request => ISSUER_ROUTE,
            None => NO_ROUTE,
        };
        let metrics = &self.gateway.metrics;
        let seconds = now.duration_since(ctx.start).as_secs_f64();
        let cache_result = match (ctx.fresh_hit, ctx.cache_enabled) {
            (true, _) => Some(CacheResult::Hit),
            (false, true) => Some(CacheResult::of(&session.cache)),
            (false, false) => None,
        };
        if ctx.issuer_request {
            metrics.observe_issuer(ctx.status, seconds);
        } else if !ctx.refresh {
            metrics.observe_request(ctx.route, ctx.status, seconds);
            if let (Some(route), Some(result)) = (ctx.route, cache_result) {
                metrics.cache_lookup(route, result);
            }
        }

        let mut upstream_name = "";
        let mut upstream_ms = None;
        if let (Some(started), Some(route)) = (ctx.upstream_started, route) {
            upstream_name = &self.gateway.upstreams[route.upstream].name;
            let caller_failed = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
            let outcome = UpstreamOutcome::of(ctx.problem.as_ref(), ctx.upstream_status, e.is_some(), caller_failed);
            let seconds = now.duration_since(started).as_secs_f64();
            if let Some(outcome) = outcome {
                metrics.observe_upstream(route.upstream, outcome, seconds);
            }
            if let Some(pass) = ctx.upstream_pass.take() {
                self.gateway.upstreams[route.upstream].finish(pass, outcome.map(|o| o == UpstreamOutcome::Ok));
            }
            upstream_ms = Some(seconds * 1000.0);
        }
        if let (Some(pass), Some(route)) = (ctx.upstream_pass.take(), route) {
            // Admitted, but never reached the upstream (the caller failed first).
            self.gateway.upstreams[route.upstream].finish(pass, None);
        }
        ctx.upstream_inflight = None;

        if self.gateway.access_log {
            let cache = match (ctx.refresh, cache_result) {
                (true, _) => "refresh",
                (false, Some(result)) => result.label(),
                (false, None) => "",
            };
            let req = session.req_header();
            tracing::info!(
                target: "seawall::access",
                request_id = request_id::as_str(&ctx.request_id),
                client_ip = %ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                method = %req.method,
                path = %req.uri.path(),
                route = route_id,
                client = ctx.principal.as_ref().and_then(|p| p.client_id.as_deref()).unwrap_or(""),
                status = ctx.status,
                code = ctx.problem.as_ref().map(Problem::code).unwrap_or(""),
                duration_ms = now.duration_since(ctx.start).as_secs_f64() * 1000.0,
                upstream = upstream_name,
                upstream_status = ctx.upstream_status.unwrap_or(0),
                upstream_ms = upstream_ms.unwrap_or(0.0),
                attempts = ctx.attempts,
                cache,
                reason = %ctx.problem.as_ref().map(|p| p.to_string()).or_else(|| e.map(|e| e.to_string())).unwrap_or_default(),
            );
        }
    }
}

/// Writes an answer the gateway makes itself; the connection is closed when the request body
/// was not read, so unread bytes can never be taken for the next request. A caller gone before
/// it could be written is logged as 499.
async fn write_answer(session: &mut Session, ctx: &mut RequestCtx, header: ResponseHeader, body: Bytes) {
    ctx.status = header.status.as_u16();
    if !ctx.body_complete {
        session.set_keepalive(None);
    }
    let written = match session.write_response_header(Box::new(header), false).await {
        Ok(()) => session.write_response_body(Some(body), true).await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::debug!(request_id = request_id::as_str(&ctx.request_id), error = %e, "could not write the answer");
        ctx.status = 499;
    }
}

/// The whole request body; refused when it is larger than `limit` (413) or unreadable.
async fn read_body(session: &mut Session, limit: usize) -> std::result::Result<Vec<u8>, Problem> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= limit => body.extend_from_slice(&chunk),
            Ok(Some(_)) => return Err(Problem::RequestTooLarge { limit: limit as u64 }),
            Err(e) => return Err(Problem::BadRequest { reason: format!("request body unreadable: {e}") }),
            Ok(None) => return Ok(body),
        }
    }
}
