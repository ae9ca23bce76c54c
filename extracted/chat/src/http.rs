//! `/graphql` as Apollo Server 4 behind NestJS serves it (docs/api/chat.md "Endpoint" and
//! "Errors"): GET and POST, the same request checks and messages, HTTP 400 for an operation that
//! does not parse or validate and 200 for everything that runs, errors before `data`, and the
//! WebSocket (`graphql-transport-ws`) with the token in `connection_init`, closing `4403
//! Forbidden` without a valid one.

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{ServerError, Value as AgValue, Variables};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bm_common::dryrun::RequestTx;
use bm_common::nest::{json_bytes, JsonBody, RawJson};
use serde_json::Value;

use crate::answer::{code_of, format_errors, ran, render};
use crate::schema::Caller;
use crate::Endpoint;
use crate::{graphqljs, shape};

/// An Apollo error answer: `{"errors":[{message, extensions:{code}}]}`. Errors of the HTTP layer
/// (`runHttpQuery`) carry no `cache-control`; those of the request pipeline carry `no-store`.
fn request_error(status: StatusCode, message: &str, cache_control: Option<&'static str>) -> Response {
    request_error_coded(status, message, "BAD_REQUEST", cache_control)
}

fn request_error_coded(status: StatusCode, message: &str, code: &str, cache_control: Option<&'static str>) -> Response {
    let mut e = ServerError::new(message, None);
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", code);
    e.extensions = Some(ext);
    let mut res = json_bytes(status, render(&[e], None));
    if let Some(cc) = cache_control {
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    }
    res
}

const NO_STORE: Option<&str> = Some("no-store");
const NO_QUERY: &str = "GraphQL operations must contain a non-empty `query` or a `persistedQuery` extension.";
const NO_BODY: &str = "POST body missing, invalid Content-Type, or JSON object has no keys.";

/// What a client asked to run.
struct Operation {
    query: Option<String>,
    operation_name: Option<String>,
    /// as the client ordered them (graphql-js quotes them in that order)
    variables: AgValue,
    extensions: Option<AgValue>,
}

/// The operation of a GET (query string) or POST (JSON body), with Apollo Server's checks
/// (`runHttpQuery`), in its order and words.
#[allow(clippy::result_large_err)] // an answer, built once per bad request
fn read_operation(method: &Method, uri: &Uri, body: Option<(JsonBody, Option<RawJson>)>) -> Result<Operation, Response> {
    let bad = |m: &str| request_error(StatusCode::BAD_REQUEST, m, None);
    match *method {
        Method::GET => {
            let params: Vec<(String, String)> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
            let once = |name: &str| -> Result<Option<String>, Response> {
                let mut values = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone());
                let first = values.next();
                if values.next().is_some() {
                    return Err(bad(&format!("The '{name}' search parameter may only be specified once.")));
                }
                Ok(first)
            };
            let record = |name: &str| -> Result<Option<AgValue>, Response> {
                let Some(text) = once(name)? else { return Ok(None) };
                let v: AgValue =
                    serde_json::from_str(&text).map_err(|_| bad(&format!("The {name} search parameter contains invalid JSON.")))?;
                if !matches!(v, AgValue::Object(_)) {
                    return Err(bad(&format!("The {name} search parameter should contain a JSON-encoded object.")));
                }
                Ok(Some(v))
            };
            Ok(Operation {
                query: once("query")?,
                operation_name: once("operationName")?,
                variables: record("variables")?.unwrap_or(AgValue::Null),
                extensions: record("extensions")?,
            })
        }
        Method::POST => {
            let (body, raw) = body.map(|(b, r)| (b.value, r)).unwrap_or((Value::Null, None));
            let Some(obj) = body.as_object().filter(|o| !o.is_empty()) else {
                if body.is_array() {
                    return Err(bad("Operation batching disabled."));
                }
                return Err(bad(NO_BODY));
            };
            match obj.get("query") {
                None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Bool(false)) => {}
                Some(Value::Number(n)) if n.as_f64() == Some(0.0) => {}
                Some(_) => return Err(bad("GraphQL queries must be strings.")),
            }
            if obj.get("variables").is_some_and(Value::is_string) {
                return Err(bad("`variables` in a POST body should be provided as an object, not a recursively JSON-encoded string."));
            }
            if obj.get("extensions").is_some_and(Value::is_string) {
                return Err(bad("`extensions` in a POST body should be provided as an object, not a recursively JSON-encoded string."));
            }
            if obj.get("extensions").is_some_and(|e| !e.is_null() && !e.is_object()) {
                return Err(bad("`extensions` in a POST body must be an object if provided."));
            }
            if obj.get("variables").is_some_and(|e| !e.is_null() && !e.is_object()) {
                return Err(bad("`variables` in a POST body must be an object if provided."));
            }
            if obj.get("operationName").is_some_and(|e| !e.is_null() && !e.is_string()) {
                return Err(bad("`operationName` in a POST body must be a string if provided."));
            }
            // the variables again, from the bytes, in the client's key order
            #[derive(serde::Deserialize)]
            struct Ordered {
                #[serde(default)]
                variables: Option<AgValue>,
            }
            let variables = match raw.and_then(|r| serde_json::from_slice::<Ordered>(&r.0).ok()).and_then(|o| o.variables) {
                Some(v) => v,
                None => obj.get("variables").cloned().map(AgValue::from_json).transpose().ok().flatten().unwrap_or(AgValue::Null),
            };
            let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
            Ok(Operation {
                query: text("query"),
                operation_name: text("operationName"),
                variables: if matches!(variables, AgValue::Object(_)) { variables } else { AgValue::Null },
                extensions: obj.get("extensions").filter(|e| e.is_object()).cloned().and_then(|e| AgValue::from_json(e).ok()),
            })
        }
        _ => {
            let mut res = request_error(StatusCode::METHOD_NOT_ALLOWED, "Apollo Server supports only GET/POST requests.", None);
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            Err(res)
        }
    }
}

/// Automatic persisted queries, as Apollo Server keeps them by default: a bounded in-memory
/// cache from SHA-256 to query text, per process.
pub struct PersistedQueries(std::sync::Mutex<lru::LruCache<String, String>>);

impl Default for PersistedQueries {
    fn default() -> Self {
        PersistedQueries(std::sync::Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(10_000).expect("non-zero"))))
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The query to run (Apollo's request pipeline: persisted query, then "no query").
#[allow(clippy::result_large_err)]
fn query_of(op: &Operation, apq: &PersistedQueries) -> Result<String, Response> {
    let persisted = op.extensions.as_ref().and_then(|e| match e {
        AgValue::Object(m) => m.get("persistedQuery").filter(|p| !matches!(p, AgValue::Null)),
        _ => None,
    });
    let Some(p) = persisted else {
        return op.query.clone().filter(|q| !q.is_empty()).ok_or_else(|| request_error(StatusCode::BAD_REQUEST, NO_QUERY, NO_STORE));
    };
    let field = |k: &str| match p {
        AgValue::Object(m) => m.get(k).cloned(),
        _ => None,
    };
    if field("version") != Some(AgValue::from(1)) {
        return Err(request_error_coded(StatusCode::BAD_REQUEST, "Unsupported persisted query version", "INTERNAL_SERVER_ERROR", NO_STORE));
    }
    let hash = match field("sha256Hash") {
        Some(AgValue::String(h)) => h,
        _ => String::new(),
    };
    let mut cache = apq.0.lock().unwrap_or_else(|e| e.into_inner());
    match &op.query {
        None => cache.get(&hash).cloned().ok_or_else(|| {
            request_error_coded(
                StatusCode::OK,
                "PersistedQueryNotFound",
                "PERSISTED_QUERY_NOT_FOUND",
                Some("private, no-cache, must-revalidate"),
            )
        }),
        Some(q) => {
            if sha256_hex(q) != hash {
                return Err(request_error_coded(
                    StatusCode::BAD_REQUEST,
                    "provided sha does not match query",
                    "INTERNAL_SERVER_ERROR",
                    NO_STORE,
                ));
            }
            cache.put(hash, q.clone());
            Ok(q.clone())
        }
    }
}

fn answer(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut res = json_bytes(status, bytes);
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
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
    let raw = parts.extensions.get::<RawJson>().cloned();
    let json_body = if method == Method::POST {
        let req = axum::extract::Request::from_parts(parts, body);
        match <JsonBody as axum::extract::FromRequest<()>>::from_request(req, &()).await {
            Ok(b) => Some((b, raw)),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let op = match read_operation(&method, &uri, json_body) {
        Ok(op) => op,
        Err(res) => return res,
    };
    let query = match query_of(&op, &s.persisted) {
        Ok(q) => q,
        Err(res) => return res,
    };

    let doc = match async_graphql::parser::parse_query(&query) {
        Ok(d) => d,
        Err(e) => {
            let mut err = ServerError::new(format!("Syntax Error: {e}"), e.positions().next());
            let mut ext = async_graphql::ErrorExtensionValues::default();
            ext.set("code", "GRAPHQL_PARSE_FAILED");
            err.extensions = Some(ext);
            return answer(StatusCode::BAD_REQUEST, render(&[err], None));
        }
    };
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
    let model = shape::Model::recorded();
    let op_name = op.operation_name.as_deref();
    let kind = shape::operation(&doc, op_name).map(|o| o.node.ty);
    if method == Method::GET && kind == Some(OperationType::Mutation) {
        let mut res =
            request_error(StatusCode::METHOD_NOT_ALLOWED, "GET requests only support query operations, not mutation operations", NO_STORE);
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }

    let caller = Caller(match bm_common::jwt::bearer(&headers) {
        Some(token) => s.app.verifier.verify(token).await.ok().and_then(|c| c.sub.parse().ok()),
        None => None,
    });
    let checks = graphqljs::Prechecks::new(model, &doc, op_name, &op.variables);
    let mut request =
        async_graphql::Request::new(query.clone()).variables(Variables::from_value(op.variables.clone())).data(caller).data(checks);
    if let Some(name) = op_name {
        request = request.operation_name(name);
    }
    if let Some(tx) = tx {
        request = request.data(tx);
    }
    if kind == Some(OperationType::Subscription) {
        return subscription_over_http(&doc, op_name);
    }
    let response = s.schema.execute(request).await;
    if !ran(&response) {
        return refused(model, &query, response.errors);
    }
    let data = shape::shape(model, &doc, op_name, &op.variables, &response.data).unwrap_or(response.data);
    answer(StatusCode::OK, render(&format_errors(response.errors, None), Some(&data)))
}

/// The answer to an operation that never ran: variables that did not coerce (200), an operation
/// name that names nothing, or a document that did not validate (400).
fn refused(model: &shape::Model, query: &str, errors: Vec<ServerError>) -> Response {
    let first = errors.first().and_then(code_of);
    if first == Some(AgValue::from(graphqljs::BAD_USER_INPUT)) {
        return answer(StatusCode::OK, render(&errors, None));
    }
    if first == Some(AgValue::from(graphqljs::OPERATION_RESOLUTION_FAILURE)) {
        return answer(StatusCode::BAD_REQUEST, render(&errors, None));
    }
    let errors: Vec<ServerError> = errors.into_iter().map(|e| graphqljs::translate(model, query, e)).collect();
    answer(StatusCode::BAD_REQUEST, render(&format_errors(errors, Some("GRAPHQL_VALIDATION_FAILED")), None))
}

/// A subscription sent over HTTP: graphql-js executes its root fields as plain fields, which
/// fails inside NestJS; the monolith answers an internal error per field.
fn subscription_over_http(doc: &ExecutableDocument, op_name: Option<&str>) -> Response {
    let mut errors = Vec::new();
    if let Some(op) = shape::operation(doc, op_name) {
        for sel in &op.node.selection_set.node.items {
            if let Selection::Field(f) = &sel.node {
                let mut e = ServerError::new("Internal server error", Some(f.pos));
                e.path = vec![async_graphql::PathSegment::Field(f.node.response_key().node.to_string())];
                let mut ext = async_graphql::ErrorExtensionValues::default();
                ext.set("code", "INTERNAL_SERVER_ERROR");
                e.extensions = Some(ext);
                errors.push(e);
            }
        }
    }
    answer(StatusCode::OK, render(&errors, Some(&AgValue::Null)))
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
