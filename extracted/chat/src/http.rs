//! `/graphql` as Apollo Server 4 behind NestJS serves it (docs/api/chat.md "Endpoint" and
//! "Errors"): GET and POST, the same request checks and messages, HTTP 400 for an operation that
//! does not parse or validate and 200 for everything that runs, errors before `data`, and the
//! WebSocket (`graphql-transport-ws`) with the token in `connection_init`, closing `4403
//! Forbidden` without a valid one.

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{ServerError, Variables};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bm_common::dryrun::RequestTx;
use bm_common::nest::{json_bytes, JsonBody};
use serde_json::{json, Value};

use crate::schema::Caller;
use crate::shape;
use crate::Endpoint;

/// A GraphQL-over-HTTP error answer (`{"errors":[{message, extensions:{code}}]}`).
fn request_error(status: StatusCode, message: &str, with_cache_control: bool) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": "BAD_REQUEST" } }] });
    let mut res = json_bytes(status, serde_json::to_vec(&body).expect("json"));
    if with_cache_control {
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

const NO_QUERY: &str = "GraphQL operations must contain a non-empty `query` or a `persistedQuery` extension.";
const NO_BODY: &str = "POST body missing, invalid Content-Type, or JSON object has no keys.";

/// What a client asked to run.
struct Operation {
    query: String,
    operation_name: Option<String>,
    variables: Value,
}

/// The operation of a GET (query string) or POST (JSON body), with Apollo Server's checks.
#[allow(clippy::result_large_err)] // an answer, built once per bad request
fn read_operation(method: &Method, uri: &Uri, body: Option<JsonBody>) -> Result<Operation, Response> {
    let (query, operation_name, variables) = match *method {
        Method::GET => {
            let mut q = None;
            let mut name = None;
            let mut variables = None;
            for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
                match k.as_ref() {
                    "query" => q = Some(v.into_owned()),
                    "operationName" => name = Some(v.into_owned()),
                    "variables" => variables = Some(v.into_owned()),
                    _ => {}
                }
            }
            let variables = match variables {
                None => Value::Null,
                Some(text) => serde_json::from_str(&text)
                    .map_err(|_| request_error(StatusCode::BAD_REQUEST, "`variables` in a GET request must be valid JSON.", true))?,
            };
            (q, name, variables)
        }
        Method::POST => {
            let body = body.map(|b| b.value).unwrap_or(Value::Null);
            let Some(obj) = body.as_object().filter(|o| !o.is_empty()) else {
                if body.is_array() {
                    return Err(request_error(StatusCode::BAD_REQUEST, "Operation batching disabled.", false));
                }
                return Err(request_error(StatusCode::BAD_REQUEST, NO_BODY, false));
            };
            if obj.get("variables").is_some_and(Value::is_string) {
                let m = "`variables` in a POST body should be provided as an object, not a recursively JSON-encoded string.";
                return Err(request_error(StatusCode::BAD_REQUEST, m, false));
            }
            let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
            (text("query"), text("operationName"), obj.get("variables").cloned().unwrap_or(Value::Null))
        }
        _ => {
            let mut res = request_error(StatusCode::METHOD_NOT_ALLOWED, "Apollo Server supports only GET/POST requests.", false);
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            return Err(res);
        }
    };
    let query = query.filter(|q| !q.is_empty()).ok_or_else(|| request_error(StatusCode::BAD_REQUEST, NO_QUERY, true))?;
    Ok(Operation { query, operation_name: operation_name.filter(|n| !n.is_empty()), variables })
}

/// The `errors` of a response in the monolith's shape: each error's own `extensions.code`, or the
/// code graphql-js gives a request-level error, or a masked internal error.
pub(crate) fn format_errors(mut errors: Vec<ServerError>, request_level: Option<&str>) -> Vec<ServerError> {
    for e in &mut errors {
        let has_code = e.extensions.as_ref().is_some_and(|x| x.get("code").is_some());
        if has_code {
            continue;
        }
        let mut ext = async_graphql::ErrorExtensionValues::default();
        match request_level {
            Some(code) => ext.set("code", code),
            None => {
                // not one of ours: a bug, never shown
                tracing::error!(error = %e.message, "unexpected GraphQL error");
                e.message = "Internal server error".into();
                ext.set("code", "INTERNAL_SERVER_ERROR");
            }
        }
        e.extensions = Some(ext);
    }
    errors
}

/// Apollo's response body: `errors` (when any) before `data`; no `data` for a request that never
/// ran (it did not validate, or its variables did not coerce). Keys in graphql-js's order
/// (`message`, `locations`, `path`, `extensions`; data as selected).
pub(crate) fn render(errors: &[ServerError], data: Option<&async_graphql::Value>) -> Vec<u8> {
    let mut s = Vec::with_capacity(256);
    s.push(b'{');
    if !errors.is_empty() {
        s.extend_from_slice(b"\"errors\":");
        serde_json::to_writer(&mut s, errors).expect("errors serialise");
    }
    if let Some(d) = data {
        if !errors.is_empty() {
            s.push(b',');
        }
        s.extend_from_slice(b"\"data\":");
        serde_json::to_writer(&mut s, d).expect("data serialises");
    }
    s.push(b'}');
    s
}

fn answer(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut res = json_bytes(status, bytes);
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Whether an error that stopped the request from running is a variable coercion problem
/// (graphql-js: `BAD_USER_INPUT`, HTTP 200) rather than a validation failure (400).
pub(crate) fn is_coercion(e: &ServerError) -> bool {
    let m = &e.message;
    m.starts_with("Variable \"$") && !m.contains("is not defined") && !m.contains("is never used")
        || m.starts_with("Invalid value for argument")
}

/// Whether an operation ran (else it did not validate or its variables did not coerce: no
/// `data` at all, only request-level errors).
pub(crate) fn ran(r: &async_graphql::Response) -> bool {
    !(r.data == async_graphql::Value::Null && !r.errors.is_empty() && r.errors.iter().all(|e| e.path.is_empty()))
}

/// Where the document selects `__schema` or `__type` (Apollo refuses them in production).
fn introspection_fields(doc: &ExecutableDocument) -> Vec<async_graphql::Pos> {
    fn walk(set: &SelectionSet, out: &mut Vec<async_graphql::Pos>) {
        for sel in &set.items {
            match &sel.node {
                Selection::Field(f) => {
                    if matches!(f.node.name.node.as_str(), "__schema" | "__type") {
                        out.push(f.pos);
                    }
                    walk(&f.node.selection_set.node, out);
                }
                Selection::InlineFragment(i) => walk(&i.node.selection_set.node, out),
                Selection::FragmentSpread(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    for (_, op) in doc.operations.iter() {
        walk(&op.node.selection_set.node, &mut out);
    }
    for frag in doc.fragments.values() {
        walk(&frag.node.selection_set.node, &mut out);
    }
    out.sort_by_key(|p| (p.line, p.column));
    out
}

const INTROSPECTION_DISABLED: &str = "GraphQL introspection is not allowed by Apollo Server, but the query contained __schema or __type. To enable introspection, pass introspection: true to ApolloServer in production";

/// `GET|POST /graphql`.
pub async fn graphql(State(s): State<Endpoint>, method: Method, uri: Uri, headers: HeaderMap, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let tx = parts.extensions.get::<RequestTx>().cloned();
    let json_body = if method == Method::POST {
        let req = axum::extract::Request::from_parts(parts, body);
        match <JsonBody as axum::extract::FromRequest<()>>::from_request(req, &()).await {
            Ok(b) => Some(b),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let op = match read_operation(&method, &uri, json_body) {
        Ok(op) => op,
        Err(res) => return res,
    };

    let doc = match async_graphql::parser::parse_query(&op.query) {
        Ok(d) => d,
        Err(e) => {
            let mut err = ServerError::new(format!("Syntax Error: {e}"), e.positions().next());
            let mut ext = async_graphql::ErrorExtensionValues::default();
            ext.set("code", "GRAPHQL_PARSE_FAILED");
            err.extensions = Some(ext);
            return answer(StatusCode::BAD_REQUEST, render(&[err], None));
        }
    };
    if method == Method::GET {
        let kind = shape::operation(&doc, op.operation_name.as_deref()).map(|o| o.node.ty);
        if kind == Some(OperationType::Mutation) {
            let mut res =
                request_error(StatusCode::METHOD_NOT_ALLOWED, "GET requests only support query operations, not mutation operations", true);
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return res;
        }
    }
    if !s.app.cfg.introspection {
        let found = introspection_fields(&doc);
        if !found.is_empty() {
            let errors: Vec<ServerError> = found
                .into_iter()
                .map(|pos| {
                    let mut e = ServerError::new(INTROSPECTION_DISABLED, Some(pos));
                    let mut ext = async_graphql::ErrorExtensionValues::default();
                    ext.set("validationErrorCode", "INTROSPECTION_DISABLED");
                    ext.set("code", "GRAPHQL_VALIDATION_FAILED");
                    e.extensions = Some(ext);
                    e
                })
                .collect();
            return answer(StatusCode::BAD_REQUEST, render(&errors, None));
        }
    }

    let caller = Caller(match bm_common::jwt::bearer(&headers) {
        Some(token) => s.app.verifier.verify(token).await.ok().and_then(|c| c.sub.parse().ok()),
        None => None,
    });
    let mut request = async_graphql::Request::new(op.query).variables(Variables::from_json(op.variables.clone())).data(caller);
    if let Some(name) = &op.operation_name {
        request = request.operation_name(name);
    }
    if let Some(tx) = tx {
        request = request.data(tx);
    }
    let response = s.schema.execute(request).await;
    if ran(&response) {
        let data = shape::shape(shape::Model::recorded(), &doc, op.operation_name.as_deref(), &op.variables, &response.data)
            .unwrap_or(response.data);
        return answer(StatusCode::OK, render(&format_errors(response.errors, None), Some(&data)));
    }
    // it never ran: variables that did not coerce (200) or an operation that did not validate (400)
    if response.errors.iter().all(is_coercion) {
        answer(StatusCode::OK, render(&format_errors(response.errors, Some("BAD_USER_INPUT")), None))
    } else {
        answer(StatusCode::BAD_REQUEST, render(&format_errors(response.errors, Some("GRAPHQL_VALIDATION_FAILED")), None))
    }
}

/// `GET /graphql` with `Upgrade: websocket`: `graphql-transport-ws` ([`crate::ws`]).
async fn websocket(s: Endpoint, ws: WebSocketUpgrade, headers: &HeaderMap) -> Response {
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == "graphql-transport-ws"));
    ws.protocols(["graphql-transport-ws"]).on_upgrade(move |socket| crate::ws::serve(socket, s, offered))
}

/// An upgrade request goes to the WebSocket, anything else to [`graphql`].
pub async fn endpoint(State(s): State<Endpoint>, req: axum::extract::Request) -> Response {
    let is_upgrade = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_upgrade && req.method() == Method::GET {
        let (mut parts, _) = req.into_parts();
        let headers = parts.headers.clone();
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => websocket(s, ws, &headers).await,
            Err(e) => e.into_response(),
        };
    }
    let (method, uri, headers) = (req.method().clone(), req.uri().clone(), req.headers().clone());
    graphql(State(s), method, uri, headers, req).await
}
