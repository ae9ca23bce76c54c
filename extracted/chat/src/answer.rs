//! The bodies of GraphQL answers in the monolith's shape, shared by HTTP ([`crate::http`]) and
//! graphql-ws ([`crate::ws`]): errors formatted as Apollo formats them, `errors` before `data`.

use async_graphql::{ServerError, Value as AgValue};

use crate::{graphqljs, shape};

/// The `errors` of a response in the monolith's shape: each error's own `extensions.code`, or the
/// code graphql-js gives a request-level error, or a masked internal error.
/// A resolver's error extension that moves the error's location (graphql-js points some errors at
/// an argument, not the field); [`format_errors`] applies and removes it.
pub const LOCATION_EXTENSION: &str = "x-strangler-location";

pub(crate) fn format_errors(mut errors: Vec<ServerError>, request_level: Option<&str>) -> Vec<ServerError> {
    for e in &mut errors {
        if let Some(ext) = e.extensions.as_mut() {
            if let Some(AgValue::List(at)) = ext.get(LOCATION_EXTENSION).cloned() {
                if let [AgValue::Number(l), AgValue::Number(c)] = at.as_slice() {
                    let (line, column) = (l.as_u64().unwrap_or(0) as usize, c.as_u64().unwrap_or(0) as usize);
                    e.locations = vec![async_graphql::Pos { line, column }];
                }
                ext.unset(LOCATION_EXTENSION);
            }
        }
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
/// (`message`, `locations`, `path`, `extensions`; data as selected). Apollo ends it with a
/// newline.
pub fn render(errors: &[ServerError], data: Option<&async_graphql::Value>) -> Vec<u8> {
    let mut s = render_payload(errors, data);
    s.push(b'\n');
    s
}

/// [`render`] without the newline: a graphql-ws message's `payload`.
pub fn render_payload(errors: &[ServerError], data: Option<&async_graphql::Value>) -> Vec<u8> {
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

/// Whether an operation ran (else it did not validate or its variables did not coerce: no
/// `data` at all, only request-level errors).
pub(crate) fn ran(r: &async_graphql::Response) -> bool {
    !(r.data == async_graphql::Value::Null && !r.errors.is_empty() && r.errors.iter().all(|e| e.path.is_empty()))
}

pub(crate) fn code_of(e: &ServerError) -> Option<AgValue> {
    e.extensions.as_ref().and_then(|x| x.get("code").cloned())
}

/// What graphql-ws sends for an operation that never ran: `Ok`, the payload of one `next` (its
/// variables did not coerce; `complete` follows), or `Err`, the payload of an `error` message
/// (graphql-js's errors as they are, without codes).
pub(crate) fn refused_ws(model: &shape::Model, query: &str, errors: Vec<ServerError>) -> Result<Vec<u8>, Vec<u8>> {
    let first = errors.first().and_then(code_of);
    if first == Some(AgValue::from(graphqljs::BAD_USER_INPUT)) {
        return Ok(render_payload(&errors, None));
    }
    let errors: Vec<ServerError> = if first == Some(AgValue::from(graphqljs::OPERATION_RESOLUTION_FAILURE)) {
        vec![ServerError::new("Unable to identify operation", None)]
    } else {
        errors
            .into_iter()
            .map(|e| {
                let mut e = graphqljs::translate(model, query, e);
                e.extensions = None;
                e
            })
            .collect()
    };
    Err(serde_json::to_vec(&errors).expect("errors serialise"))
}
