//! The Pingora edge: one [`Edge`] implements `ProxyHttp`, each phase does one job.
//!
//! - [`h1::EdgeApp`] runs the connections: it reads HTTP/1.x request heads strictly before
//!   Pingora does (malformed request lines, bad `Host`, conflicting lengths → `400`) and answers
//!   pipelined requests in order; HTTP/2 goes to Pingora directly.
//! - `request_filter` decides once per request and stores it in [`RequestCtx`]: the path is
//!   normalised (RFC 3986, `routing::path`) and the normalised path is both matched and
//!   forwarded; then route, side and breaker. The table `Arc` it loads stays with the request,
//!   so a reload never changes a request mid-flight.
//! - `upstream_peer` only turns that decision into a peer.
//! - `upstream_request_filter` / `upstream_response_filter` / `response_filter` keep headers
//!   honest: hop-by-hop headers dropped (RFC 9110 §7.6.1), `X-Forwarded-*` and `X-Request-Id`
//!   set, `traceparent` passed through untouched.
//! - Failover (`extracted` and `canary` routes with `fallback = true`): a request that never
//!   reached the service — connection refused or timed out, or held back by an open breaker —
//!   goes to the monolith whatever its method; an idempotent request whose connection failed
//!   before any answer byte, or that got 502/503/504, is retried there once. A non-idempotent
//!   request that may have reached the service is never replayed. A GraphQL mutation never
//!   falls back: it gets a GraphQL-shaped error from its owner's side.
//! - `fail_to_proxy` answers errors in the monolith's error shape, unless the answer's head is
//!   already out: then the client's response is aborted (HTTP/1.1: the connection closes short
//!   of its length or final chunk; h2: `RST_STREAM`), never completed with bytes the upstream
//!   did not send.
//! - `logging` records the access log line and the metrics.

mod h1;
pub mod head;
mod headers;
mod lean;
pub(crate) mod wire;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorType, RetryType};
use tracing::{info, warn};

use crate::breaker::{Admit, BreakerState};
use crate::config::{Mode, Route, RouteTable, Upstream, Writes};
use crate::metrics as m;
use crate::reload::LiveState;
use crate::routing::{decide, host_of, RequestFacts, Side};
use crate::shadow::tee::{Capture, RawHeads, Tee};
use crate::shadow::Exchange;

pub use h1::EdgeApp;
pub use headers::{DRY_RUN_HEADER, REQUEST_ID_HEADER};

pub struct Edge {
    state: Arc<LiveState>,
    tee: Arc<Tee>,
    /// Bodies larger than this are not shadowed.
    shadow_max_body: usize,
}

impl Edge {
    pub fn new(state: Arc<LiveState>, tee: Arc<Tee>, shadow_max_body: usize) -> Self {
        Edge { state, tee, shadow_max_body }
    }
}

/// Per-request facts, decided in `request_filter` and read by later phases.
pub struct RequestCtx {
    started: Instant,
    table: Option<Arc<RouteTable>>,
    route: Option<Arc<Route>>,
    /// The side the route chose; `upstream` is where the request goes now.
    side: Side,
    upstream: Option<Arc<Upstream>>,
    /// The request may go to the monolith if the service turns out to be unreachable.
    fallback_ok: bool,
    /// Why the request went to the monolith instead of the extracted service.
    fell_back: Option<&'static str>,
    /// Whether the breaker must be told how the extracted attempt went.
    breaker_pending: bool,
    /// The route's breaker, once the request was admitted to the extracted service.
    breaker: Option<Arc<crate::breaker::Cell>>,
    request_id: String,
    /// A number the proxy draws per request (0..10,000) for shadow sampling: not the client's
    /// request id, so clients cannot choose what is copied or compared.
    sample: u32,
    client_ip: Option<IpAddr>,
    upstream_started: Option<Instant>,
    upstream_status: Option<u16>,
    /// Set when this request is to be copied to the other side.
    shadow: Option<ShadowCtx>,
    /// The route is a canary demoted to shadow at run time.
    demoted: bool,
    /// The response was cut short after its head went out, and why.
    aborted: Option<&'static str>,
    /// The request is on a GraphQL path: the proxy's own errors are GraphQL-shaped.
    graphql: bool,
    /// The kind of the GraphQL operation read from the request, when one was: a query is
    /// idempotent and safe whatever the method, a mutation is neither.
    operation: Option<crate::graphql::OperationKind>,
    /// That operation's root fields (moved out of the parse, not copied): what the monolith
    /// answered, when it did, is counted per field (`crate::progress`).
    graphql_root: Option<std::collections::BTreeSet<String>>,
}

/// What is captured for the shadow copy while the request is served.
struct ShadowCtx {
    other: Arc<Upstream>,
    dry_run: bool,
    sample_noise: bool,
    headers: Vec<(String, String)>,
    /// The lean path's heads as bytes (the Pingora path fills `headers` and `response.headers`).
    raw: Option<RawHeads>,
    body: Vec<u8>,
    response: Exchange,
    /// A body passed the bound: nothing is shadowed.
    too_large: bool,
    answered: bool,
}

impl ShadowCtx {
    fn append(buf: &mut Vec<u8>, chunk: &[u8], max: usize, too_large: &mut bool) {
        if buf.len() + chunk.len() > max {
            *too_large = true;
            *buf = Vec::new();
        } else if !*too_large {
            buf.extend_from_slice(chunk);
        }
    }
}

/// The `route` label of requests no route matched, and the `target` of those no upstream was
/// chosen for, as shared names (lent, never cloned, per request).
static DEFAULT_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("default"));
static NO_TARGET: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("none"));

impl RequestCtx {
    fn route_label(&self) -> String {
        self.route_name().to_string()
    }
    fn route_name(&self) -> &Arc<str> {
        self.route.as_ref().map_or(&DEFAULT_ROUTE, |r| &r.name.0)
    }
    fn target_name(&self) -> &Arc<str> {
        self.upstream.as_ref().map_or(&NO_TARGET, |u| &u.name.0)
    }
    fn mode_label(&self) -> &'static str {
        if self.demoted {
            return "demoted";
        }
        self.route.as_ref().map_or("default", |r| r.mode.as_str())
    }
    /// The request is on its first, extracted attempt (not yet sent to the monolith instead).
    fn on_extracted_attempt(&self) -> bool {
        self.side == Side::Extracted && self.fell_back.is_none()
    }
    /// Whether the request may be sent again (a GraphQL query may, whatever its method).
    fn idempotent(&self, method: &http::Method) -> bool {
        match self.operation {
            Some(k) => k == crate::graphql::OperationKind::Query,
            None => method.is_idempotent(),
        }
    }
    /// Whether the request changes nothing (a GraphQL query does not, whatever its method).
    fn safe(&self, method: &http::Method) -> bool {
        match self.operation {
            Some(k) => k == crate::graphql::OperationKind::Query,
            None => method.is_safe(),
        }
    }
}

/// A NestJS-shaped error body, so clients parse proxy errors like the monolith's.
fn error_body(status: u16, message: &str) -> Bytes {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    Bytes::from(serde_json::json!({ "statusCode": status, "message": message, "error": reason }).to_string())
}

/// Writes an error answer in the monolith's shape with `extra` headers and `Connection: close`
/// (the caller closes). For answers the proxy gives before or instead of an upstream's on the
/// connection loop (`h1`'s refusals, the lean path's errors).
async fn write_error(stream: &mut pingora::protocols::Stream, status: u16, message: &str, extra: &[(&str, &str)]) -> std::io::Result<()> {
    let body = error_body(status, message);
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let mut out =
        format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in extra {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    tokio::io::AsyncWriteExt::write_all(stream, &out).await?;
    tokio::io::AsyncWriteExt::flush(stream).await
}

/// A GraphQL-shaped error body (`{"errors":[…],"data":null}`), for the proxy's own answers on a
/// GraphQL path: clients read `errors[].extensions.code` there, not a REST error.
fn graphql_error_body(status: u16, message: &str, code: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code, "statusCode": status } }], "data": null })
            .to_string(),
    )
}

fn graphql_code(status: u16) -> &'static str {
    match status {
        400 => "BAD_REQUEST",
        502 => "BAD_GATEWAY",
        503 => "SERVICE_UNAVAILABLE",
        504 => "GATEWAY_TIMEOUT",
        _ => "INTERNAL_SERVER_ERROR",
    }
}

/// An error answer in the shape the client of this path expects: the monolith's REST error, or
/// a GraphQL error on a GraphQL path.
async fn respond_error(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    message: &str,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let body = if ctx.graphql { graphql_error_body(status, message, graphql_code(status)) } else { error_body(status, message) };
    respond_body(session, status, body, extra).await
}

async fn respond_json(session: &mut Session, status: u16, message: &str, extra: &[(&'static str, String)]) -> Result<()> {
    respond_body(session, status, error_body(status, message), extra).await
}

async fn respond_body(session: &mut Session, status: u16, body: Bytes, extra: &[(&'static str, String)]) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    for (k, v) in extra {
        resp.insert_header(*k, v)?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// `Content-Length: 5, 5` (or the header twice with one value) is forwarded as one value; the
/// reader has already refused lists that disagree.
fn normalize_content_length(req: &mut RequestHeader) -> Result<()> {
    let values = req.headers.get_all(http::header::CONTENT_LENGTH);
    let mut iter = values.iter();
    let (Some(first), second) = (iter.next(), iter.next()) else { return Ok(()) };
    if second.is_none() && !first.as_bytes().contains(&b',') {
        return Ok(());
    }
    let one = first.to_str().ok().and_then(|v| v.split(',').next()).map(|v| v.trim().to_string());
    match one {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => req.insert_header(http::header::CONTENT_LENGTH, v),
        _ => Error::e_explain(ErrorType::InvalidHTTPHeader, "invalid Content-Length"),
    }
}

impl Edge {
    /// Decides whether this request is copied to the other side, and to which upstream.
    fn plan_shadow(&self, session: &Session, ctx: &mut RequestCtx, table: &RouteTable) {
        let req = session.req_header();
        let safe = ctx.safe(&req.method);
        let declared = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        self.plan_shadow_for(ctx, table, safe, declared);
    }

    /// [`Edge::plan_shadow`] for a request that changes nothing (`safe`) or may, with the body
    /// length it declared: sets `ctx.shadow` when the request is to be copied.
    fn plan_shadow_for(&self, ctx: &mut RequestCtx, table: &RouteTable, safe: bool, declared: Option<usize>) {
        let Some(route) = ctx.route.clone() else { return };
        let Some(other) = shadow_other(&route, ctx.side, table) else { return };
        // sampling: the leading digits of the request's draw (noise sampling uses the last two,
        // so the two choices are independent)
        if ctx.sample / 100 >= u32::from(route.shadow.sample_percent) {
            // a metric only: reports count copies made, not requests left out by design
            m::per_request::shadow_dropped(&route.name.0, "not_sampled");
            return;
        }
        if !safe && route.shadow.writes == Writes::Skip {
            self.tee.dropped(&route.name, "unsafe_method");
            return;
        }
        if !safe && !other.dry_run {
            // compile refuses such a table; kept so a copy of a write can never reach an
            // upstream that would run it for real
            self.tee.dropped(&route.name, "no_dry_run_support");
            return;
        }
        if declared.is_some_and(|n| n > self.shadow_max_body) {
            self.tee.dropped(&route.name, "too_large");
            return;
        }
        let sample_noise = ctx.sample % 100 < u32::from(route.shadow.noise_sample_percent);
        ctx.shadow = Some(ShadowCtx {
            other,
            dry_run: !safe,
            sample_noise,
            headers: Vec::new(),
            raw: None,
            body: Vec::new(),
            response: Exchange::default(),
            too_large: false,
            answered: false,
        });
    }

    /// Hands the captured exchange to the tee once the client's exchange is complete.
    fn finish_shadow(&self, session: &Session, ctx: &mut RequestCtx, failed: bool) {
        if ctx.shadow.is_none() {
            return;
        }
        let req = session.req_header();
        let uri = req.uri.path_and_query().map_or_else(|| req.uri.path(), |pq| pq.as_str());
        self.dispatch_shadow(&req.method, uri, ctx, failed);
    }

    /// [`Edge::finish_shadow`] for a request by its method and target (path and query).
    fn dispatch_shadow(&self, method: &http::Method, uri: &str, ctx: &mut RequestCtx, failed: bool) {
        let Some(shadow) = ctx.shadow.take() else { return };
        let Some(route) = ctx.route.clone() else { return };
        if failed || !shadow.answered || ctx.fell_back.is_some() {
            return;
        }
        if shadow.too_large {
            self.tee.dropped(&route.name, "too_large");
            return;
        }
        let Some(table) = ctx.table.as_ref() else { return };
        self.tee.dispatch(Capture {
            request_id: ctx.request_id.clone(),
            method: method.clone(),
            uri: uri.to_string(),
            headers: shadow.headers,
            raw: shadow.raw,
            body: shadow.body,
            primary_is_legacy: ctx.side == Side::Legacy,
            primary: shadow.response,
            other: shadow.other,
            legacy: table.default_upstream().clone(),
            dry_run: shadow.dry_run,
            sample_noise: shadow.sample_noise,
            route,
        });
    }

    /// Tells the route's breaker how the extracted attempt went, once.
    fn record_breaker(&self, ctx: &mut RequestCtx, success: bool) {
        if !std::mem::take(&mut ctx.breaker_pending) {
            return;
        }
        let (Some(route), Some(cell)) = (&ctx.route, &ctx.breaker) else { return };
        if let Some(t) = cell.record(success, Instant::now) {
            note_breaker(route, t.to);
        }
    }

    fn fall_back(&self, ctx: &mut RequestCtx, reason: &'static str) {
        let route = ctx.route_label();
        ctx.fell_back = Some(reason);
        ctx.upstream = ctx.table.as_ref().map(|t| t.default_upstream().clone());
        metrics::counter!(m::FALLBACKS_TOTAL, "route" => route.clone(), "reason" => reason).increment(1);
        warn!(route = %route, reason, request_id = %ctx.request_id, "extracted upstream unavailable; serving from legacy");
    }

    /// The breaker's word on a request the route sends to the extracted service, and whether it
    /// may fall back to the monolith (`ctx.fallback_ok`, `ctx.breaker_pending`, or already sent
    /// there with `ctx.fell_back`). Requests served by the monolith pass untouched.
    fn admit(&self, ctx: &mut RequestCtx, table: &RouteTable, idempotent: bool) -> Admission {
        let (Side::Extracted, Some(route)) = (ctx.side, ctx.route.clone()) else { return Admission::Go { replayable: false } };
        // the monolith still serves these routes until it is switched off: a request the
        // service never saw can go there instead
        ctx.fallback_ok = matches!(route.mode, Mode::Extracted | Mode::Canary)
            && route.fallback
            && table.default_upstream != route.target
            // A GraphQL mutation stays with the owner of its fields, even when the service
            // never saw it: the owner's store is where the data lives (or will, once the data
            // moves), so the client gets a GraphQL error and retries (its mutations are
            // idempotent by client id) rather than a write on the monolith's side.
            && ctx.operation != Some(crate::graphql::OperationKind::Mutation);
        let cell = self.state.breakers.cell(&route.name, route.breaker);
        if cell.first_use() {
            metrics::gauge!(m::BREAKER_STATE, "route" => route.name.to_string()).set(cell.state().gauge());
        }
        // the request's arrival is its admission's time (one clock read fewer)
        let (admit, changed) = cell.admit(ctx.started);
        if let Some(t) = changed {
            note_breaker(&route, t.to);
        }
        ctx.breaker = Some(cell);
        match admit {
            Admit::Yes | Admit::Probe => {
                ctx.breaker_pending = true;
                Admission::Go { replayable: ctx.fallback_ok && idempotent }
            }
            Admit::No if ctx.fallback_ok => {
                self.fall_back(ctx, "breaker_open");
                Admission::Go { replayable: false }
            }
            Admit::No => {
                metrics::counter!(m::FALLBACKS_TOTAL, "route" => route.name.to_string(), "reason" => "breaker_rejected").increment(1);
                Admission::Refuse(route.breaker.cooldown.as_secs().max(1).to_string())
            }
        }
    }

    /// Normalises the request's path in place; `Err` is the reason to refuse it.
    fn normalize_path(session: &mut Session, table: &RouteTable) -> std::result::Result<(), crate::routing::PathError> {
        let req = session.req_header();
        let normalized = match crate::routing::normalize(req.uri.path(), table.server.encoded_slash)? {
            Cow::Borrowed(_) => return Ok(()),
            Cow::Owned(p) => p,
        };
        let uri = match req.uri.query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        // the normalised path is made of characters the original URI already had
        if let Ok(uri) = uri.parse::<http::Uri>() {
            session.req_header_mut().set_uri(uri);
        }
        Ok(())
    }
}

/// The upstream a request on `route`, served by `side`, is copied to (before sampling), if any.
fn shadow_other(route: &Route, side: Side, table: &RouteTable) -> Option<Arc<Upstream>> {
    match (route.mode, side) {
        (Mode::Shadow, _) | (Mode::Canary, Side::Legacy) => Some(table.upstream(&route.target).clone()),
        (Mode::Canary, Side::Extracted) => Some(table.default_upstream().clone()),
        (Mode::Extracted, _) if route.shadow.reverse => Some(table.default_upstream().clone()),
        _ => None,
    }
}

/// What the extracted service's breaker and the route's fallback make of a request.
enum Admission {
    /// Proxy it (to the service, or to the monolith when the breaker is open and the route
    /// falls back). `replayable`: it may be sent to the monolith after a failed attempt, so a
    /// body must be kept.
    Go { replayable: bool },
    /// Answer 503 with this `Retry-After` (seconds): the breaker is open and there is no fallback.
    Refuse(String),
}

/// Where a request on a GraphQL path goes.
enum GraphQlPick {
    /// The route (index into the table) that owns every root field.
    Route(usize),
    /// The path's ordinary routing (the monolith for unclaimed, mixed or unreadable operations).
    Default,
    /// Refused: the operation spans owners and `[graphql] mixed = "reject"`.
    Reject(String),
}

impl Edge {
    /// Reads the operation of a request on a GraphQL path and finds its owner. A POST body is
    /// read only when it is JSON of a known length within `max_body_bytes`; it is kept (Pingora's
    /// retry buffer) and sent on to whichever upstream serves the request. WebSocket upgrades go
    /// to the route owning the subscription fields.
    async fn graphql_owner(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        table: &RouteTable,
        gql: &crate::config::GraphQlPath,
    ) -> Result<GraphQlPick> {
        use crate::graphql::{owner, request_operation, root_fields, Owner, Unreadable};
        let count = |outcome: &'static str, reason: &'static str| {
            metrics::counter!(m::GRAPHQL_OPERATIONS_TOTAL, "outcome" => outcome, "reason" => reason).increment(1);
        };
        if session.is_upgrade_req() {
            count("websocket", "");
            return Ok(gql.websocket.map_or(GraphQlPick::Default, GraphQlPick::Route));
        }
        let req = session.req_header();
        let settings = &table.graphql;
        let read = match req.method {
            http::Method::GET => request_operation(req.uri.query(), None),
            http::Method::POST => {
                let json = req
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
                let length = req
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<usize>().ok());
                match (json, length) {
                    (false, _) => Err(Unreadable::NotGraphQl),
                    // no length (chunked, or h2 without content-length): it could outgrow the buffer
                    (true, None) => Err(Unreadable::TooLarge),
                    (true, Some(n)) if n > settings.max_body_bytes => Err(Unreadable::TooLarge),
                    (true, Some(_)) => {
                        // kept as it is read, and sent on from there to the chosen upstream
                        session.enable_retry_buffering();
                        let mut body = Vec::new();
                        while let Some(chunk) = session.read_request_body().await? {
                            body.extend_from_slice(&chunk);
                        }
                        if session.as_ref().retry_buffer_truncated() {
                            return Error::e_explain(ErrorType::InternalError, "GraphQL body outgrew the retry buffer");
                        }
                        request_operation(None, Some(&body))
                    }
                }
            }
            _ => Err(Unreadable::NotGraphQl),
        };
        let fields = read.and_then(|op| root_fields(&op.query, op.operation_name.as_deref(), settings.limits));
        let fields = match fields {
            Ok(f) => f,
            Err(why) => {
                count("unread", why.as_str());
                return Ok(GraphQlPick::Default);
            }
        };
        ctx.operation = Some(fields.kind);
        let pick = match owner(&fields.fields, &gql.claims) {
            Owner::Route(i) => {
                count("owned", "");
                GraphQlPick::Route(i)
            }
            Owner::Unclaimed => {
                count("unclaimed", "");
                GraphQlPick::Default
            }
            Owner::Mixed => match settings.mixed {
                crate::config::MixedOperations::Legacy => {
                    count("mixed", "");
                    GraphQlPick::Default
                }
                crate::config::MixedOperations::Reject => {
                    count("rejected", "");
                    let by = |f: &String| gql.claims.get(f).map_or("the monolith".to_string(), |&i| format!("`{}`", table.routes[i].name));
                    let list: Vec<String> = fields.fields.iter().map(|f| format!("{f} ({})", by(f))).collect();
                    GraphQlPick::Reject(format!(
                        "This operation asks for root fields served by different services: {}. Send them as separate operations.",
                        list.join(", ")
                    ))
                }
            },
        };
        if !matches!(pick, GraphQlPick::Reject(_)) {
            ctx.graphql_root = Some(fields.fields);
        }
        Ok(pick)
    }

    /// Counts the request for the migration's progress (`crate::progress`): who answered it,
    /// and, when the monolith did, under which endpoint template (a GraphQL operation: under
    /// each of its root fields). Atomic counters only; a template's text is built the first
    /// time it is seen.
    fn count_progress(&self, method: &str, path: &str, ctx: &RequestCtx, now: Instant) {
        use crate::progress::monolith::{graphql_template, graphql_template_key, Named};
        use crate::progress::Backend;
        // an answer the proxy gave itself (a refused request, an open breaker without
        // fallback) is no backend's
        if ctx.upstream_started.is_none() {
            return;
        }
        let backend = match (ctx.fell_back, ctx.side) {
            (Some(_), _) => Backend::Fallback,
            (None, Side::Extracted) => Backend::Target,
            (None, Side::Legacy) => Backend::Legacy,
        };
        let progress = &self.state.progress;
        let route = ctx.route.as_ref().map(|r| &r.name);
        progress.record(route, backend, now);
        if backend == Backend::Target {
            return;
        }
        match (&ctx.graphql_root, ctx.operation) {
            (Some(fields), Some(kind)) => {
                for field in fields {
                    let key = graphql_template_key(path, kind.as_str(), field);
                    progress.record_monolith(key, now, || Named {
                        template: graphql_template(path, kind.as_str(), field).into(),
                        route: route.cloned(),
                    });
                }
            }
            _ => {
                let key = crate::shadow::template::endpoint_template_key(method, path);
                progress.record_monolith(key, now, || Named {
                    template: crate::shadow::endpoint_template(method, path).into(),
                    route: route.cloned(),
                });
            }
        }
    }
}

/// A breaker's change of state: the gauge, the transitions counter and a log line.
fn note_breaker(route: &Route, after: BreakerState) {
    metrics::gauge!(m::BREAKER_STATE, "route" => route.name.to_string()).set(after.gauge());
    metrics::counter!(m::BREAKER_TRANSITIONS_TOTAL, "route" => route.name.to_string(), "state" => after.as_str()).increment(1);
    match after {
        BreakerState::Open => {
            warn!(route = %route.name, target = %route.target, cooldown_secs = route.breaker.cooldown.as_secs(), "circuit breaker opened")
        }
        _ => info!(route = %route.name, target = %route.target, state = after.as_str(), "circuit breaker state changed"),
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            table: None,
            route: None,
            side: Side::Legacy,
            upstream: None,
            fallback_ok: false,
            fell_back: None,
            breaker_pending: false,
            breaker: None,
            request_id: String::new(),
            sample: fastrand::u32(..crate::routing::BUCKETS),
            client_ip: None,
            upstream_started: None,
            upstream_status: None,
            shadow: None,
            demoted: false,
            aborted: None,
            graphql: false,
            operation: None,
            graphql_root: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        ctx.request_id = headers::ensure_request_id(session.req_header_mut());

        let table = self.state.table.load_full();
        ctx.table = Some(table.clone());
        if let Err(e) = Self::normalize_path(session, &table) {
            metrics::counter!(m::REQUESTS_REFUSED_TOTAL, "reason" => e.as_str()).increment(1);
            respond_json(session, 400, &format!("bad request: {e}"), &[(REQUEST_ID_HEADER, ctx.request_id.clone())]).await?;
            return Ok(true);
        }
        normalize_content_length(session.req_header_mut())?;
        // a GraphQL path: the operation's root fields choose the route
        let mut chosen = None;
        if let Some(gql) = table.graphql_paths.get(session.req_header().uri.path()) {
            ctx.graphql = true;
            match self.graphql_owner(session, ctx, &table, gql).await? {
                GraphQlPick::Route(i) => chosen = Some(table.routes[i].clone()),
                GraphQlPick::Default => {}
                GraphQlPick::Reject(message) => {
                    let body = graphql_error_body(400, &message, "OPERATION_SPANS_SERVICES");
                    respond_body(session, 400, body, &[(REQUEST_ID_HEADER, ctx.request_id.clone())]).await?;
                    return Ok(true);
                }
            }
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(host_of)
            .or_else(|| req.uri.host().map(|h| h.to_ascii_lowercase()));
        let facts = RequestFacts { method: &req.method, path: req.uri.path(), host: host.as_deref(), headers: &req.headers };
        let mut decision = match &chosen {
            Some(route) => crate::routing::decide_for(route, &facts, ctx.client_ip),
            None => decide(&table, &facts, ctx.client_ip),
        };
        if let Some(route) = &decision.route {
            // A demoted canary serves everyone from the monolith and keeps comparing.
            if route.mode == Mode::Canary && self.state.demoter.is_demoted(&route.name) {
                decision.side = Side::Legacy;
                ctx.demoted = true;
            }
        }
        let idempotent = ctx.idempotent(&req.method);
        ctx.route = decision.route;
        ctx.side = decision.side;
        ctx.upstream = Some(match (decision.side, &ctx.route) {
            (Side::Extracted, Some(route)) => table.upstream(&route.target).clone(),
            _ => table.default_upstream().clone(),
        });
        self.plan_shadow(session, ctx, &table);

        match self.admit(ctx, &table, idempotent) {
            Admission::Go { replayable } => {
                if replayable && !session.is_body_empty() {
                    // Keep a copy of the body (up to Pingora's retry buffer) for a retry after a
                    // failure mid-request.
                    session.enable_retry_buffering();
                }
            }
            Admission::Refuse(retry_after) => {
                respond_error(session, ctx, 503, "service temporarily unavailable", &[("retry-after", retry_after)]).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let u = ctx.upstream.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        let addr = u.addr.ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream address unresolved"))?;
        let mut peer = HttpPeer::new(addr, u.tls, u.host.clone());
        peer.options.connection_timeout = Some(u.connect_timeout);
        peer.options.read_timeout = Some(u.read_timeout);
        peer.options.write_timeout = Some(u.write_timeout);
        peer.options.idle_timeout = Some(u.idle_timeout);
        if let Some(ca) = &u.ca {
            peer.options.ca = Some(ca.certs.clone());
        }
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        headers::prepare_upstream_request(upstream_request, ctx.client_ip, tls, session.is_upgrade_req())?;
        if let Some(shadow) = ctx.shadow.as_mut() {
            shadow.headers = upstream_request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
        }
        Ok(())
    }

    async fn request_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, _end: bool, ctx: &mut RequestCtx) -> Result<()> {
        if let Some(s) = ctx.shadow.as_mut() {
            ShadowCtx::append(&mut s.body, body.as_deref().unwrap_or_default(), self.shadow_max_body, &mut s.too_large);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(s) = ctx.shadow.as_mut() {
            ShadowCtx::append(&mut s.response.body, body.as_deref().unwrap_or_default(), self.shadow_max_body, &mut s.too_large);
        }
        Ok(None)
    }

    fn fail_to_connect(&self, _session: &mut Session, _peer: &HttpPeer, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        if ctx.breaker_pending && ctx.on_extracted_attempt() {
            self.record_breaker(ctx, false);
            if ctx.fallback_ok {
                // the service never saw the request: safe to send it elsewhere, whatever its
                // method (its body has not been read yet)
                self.fall_back(ctx, "connect_error");
                e.set_retry(true);
            } else {
                // A request that is not replayable must not be retried, even on the same peer.
                e.set_retry(false);
            }
        }
        e
    }

    async fn upstream_response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        let status = resp.status.as_u16();
        if resp.status.is_informational() && status != 101 {
            return Ok(());
        }
        ctx.upstream_status = Some(status);
        if let (Some(start), Some(route)) = (ctx.upstream_started, &ctx.route) {
            m::per_request::upstream_duration(&route.name.0, ctx.target_name(), start.elapsed().as_secs_f64());
        }
        if ctx.breaker_pending && ctx.on_extracted_attempt() {
            let failed = matches!(status, 502..=504);
            self.record_breaker(ctx, !failed);
            if failed && ctx.fallback_ok && ctx.idempotent(&session.req_header().method) {
                self.fall_back(ctx, "bad_status");
                let mut e =
                    Error::explain(ErrorType::HTTPStatus(status), "extracted upstream answered a gateway error; retrying on legacy");
                e.retry = RetryType::Decided(true);
                return Err(e);
            }
        }
        headers::clean_upstream_response(resp, session.is_upgrade_req() && status == 101)?;
        if let Some(s) = ctx.shadow.as_mut() {
            s.answered = status != 101;
            s.response.status = status;
            s.response.headers =
                resp.headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        if !resp.headers.contains_key(REQUEST_ID_HEADER) {
            resp.insert_header(REQUEST_ID_HEADER, &ctx.request_id)?;
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let replayable = ctx.idempotent(&session.req_header().method) && !session.as_ref().retry_buffer_truncated();
        // Our own fallback signal: replay the (idempotent, buffered) request on legacy.
        if ctx.fell_back == Some("bad_status") && matches!(e.etype(), ErrorType::HTTPStatus(_)) && replayable {
            e.set_retry(true);
            return e;
        }
        // The service's connection failed before any answer (reset, closed, killed): an
        // idempotent request is retried on the monolith; one that may have changed something is
        // not. A timeout is not retried: the service may still be working on it.
        let before_answer = ctx.upstream_status.is_none() && session.response_written().is_none();
        let timed_out = matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout);
        if ctx.breaker_pending && ctx.on_extracted_attempt() && *e.esource() == pingora::ErrorSource::Upstream {
            self.record_breaker(ctx, false);
            if before_answer && !timed_out && replayable && ctx.fallback_ok {
                self.fall_back(ctx, "upstream_reset");
                e.set_retry(true);
                return e;
            }
        }
        if !replayable {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        if let Some(sent) = session.response_written().map(|r| r.status.as_u16()) {
            // The head is out: the only honest thing left is to cut the response short, so the
            // client sees a truncated answer (HTTP/1.1: connection closed short of its length or
            // last chunk; h2: RST_STREAM), never an error body appended to a 200.
            let reason = match (e.esource(), e.etype()) {
                (pingora::ErrorSource::Downstream, _) => "downstream",
                (_, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => "timeout",
                _ => "upstream",
            };
            ctx.aborted = Some(reason);
            metrics::counter!(m::RESPONSES_ABORTED_TOTAL, "route" => ctx.route_label(), "reason" => reason).increment(1);
            session.as_downstream_mut().shutdown().await;
            return FailToProxy { error_code: sent, can_reuse_downstream: false };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => {
                    if matches!(e.etype(), ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout) {
                        504
                    } else {
                        502
                    }
                }
                pingora::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if code > 0 {
            let message = match code {
                400 => "bad request",
                502 => "upstream unavailable",
                504 => "upstream timed out",
                _ => "proxy error",
            };
            let id = ctx.request_id.clone();
            if let Err(err) = respond_error(session, ctx, code, message, &[(REQUEST_ID_HEADER, id)]).await {
                warn!(error = %err, "could not send the error response");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish_shadow(session, ctx, e.is_some());
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        self.finish_request(req.method.as_str(), req.uri.path(), status, e.map(|e| e as &dyn std::fmt::Display), ctx);
    }
}

impl Edge {
    /// The end of every request, whichever path served it: the breaker's last word, the
    /// canary's demotion signal, the progress counters, the metrics and the access line.
    fn finish_request(&self, method: &str, path: &str, status: u16, e: Option<&dyn std::fmt::Display>, ctx: &mut RequestCtx) {
        if ctx.breaker_pending {
            // The extracted attempt failed in a way no other phase saw (e.g. read timeout).
            self.record_breaker(ctx, e.is_none());
        }
        if let (Some(route), Side::Extracted, None) = (&ctx.route, ctx.side, ctx.fell_back) {
            if let (Mode::Canary, Some(limits)) = (route.mode, route.demote) {
                let failed = e.is_some() || status >= 500;
                self.state.demoter.observe(&route.name, limits, crate::demote::Signal::Answer(failed), Instant::now());
            }
        }
        let now = Instant::now();
        self.count_progress(method, path, ctx, now);
        let route = ctx.route_name();
        let target = ctx.target_name();
        let mode = ctx.mode_label();
        let elapsed = now.saturating_duration_since(ctx.started);
        let status_label = if ctx.aborted.is_some() { "aborted" } else { m::status_class(status) };
        m::per_request::count_request(route, target, mode, status_label);
        m::per_request::request_duration(route, elapsed.as_secs_f64());
        crate::accesslog::AccessLine {
            request_id: &ctx.request_id,
            method,
            path,
            route,
            target_upstream: target,
            mode,
            side: ctx.side.as_str(),
            fallback: ctx.fell_back.unwrap_or(""),
            status,
            aborted: ctx.aborted.unwrap_or(""),
            upstream_status: ctx.upstream_status.unwrap_or(0),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            client: ctx.client_ip,
            error: e,
        }
        .log();
    }
}

/// Retries allowed per request: one fallback plus Pingora's stale-connection retries.
pub const MAX_RETRIES: usize = 3;
