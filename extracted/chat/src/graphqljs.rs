//! What graphql-js — the monolith's GraphQL engine — tells a client about a bad request, where
//! async-graphql would tell it differently: variable values that do not coerce (graphql-js's
//! `coerceVariableValues`, with its messages, `inspect` formatting and "Did you mean" hints), an
//! operation name that names nothing, and the wording of the common validation errors.
//!
//! Pure functions over the recorded schema ([`Model`]); [`Gate`] hooks them into async-graphql's
//! request pipeline in graphql-js's order: validation, then operation resolution, then variable
//! coercion — before any resolver runs.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::parser::types::{BaseType, ExecutableDocument, OperationDefinition, Type as AstType};
use async_graphql::{Name, Pos, Positioned, ServerError, ValidationResult, Value};
use serde_json::{json, Value as Json};

use crate::shape::Model;

/// `extensions.code` of a variable that did not coerce (HTTP 200, no `data`).
pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
/// `extensions.code` of an operation name that names no operation (HTTP 400).
pub const OPERATION_RESOLUTION_FAILURE: &str = "OPERATION_RESOLUTION_FAILURE";

fn coded(message: String, pos: Option<Pos>, code: &str) -> ServerError {
    let mut e = ServerError::new(message, pos);
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", code);
    e.extensions = Some(ext);
    e
}

/// graphql-js's `inspect`: how a value is quoted in its messages.
pub fn inspect(v: &Value) -> String {
    fmt(v, 0)
}

fn fmt(v: &Value, seen: usize) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).expect("a string serialises"),
        Value::Number(n) => js_number(n),
        Value::Boolean(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Enum(e) => e.to_string(),
        Value::Binary(_) => "[Object]".into(),
        Value::List(items) => {
            if items.is_empty() {
                return "[]".into();
            }
            if seen + 1 > 2 {
                return "[Array]".into();
            }
            let shown = items.len().min(10);
            let mut out: Vec<String> = items[..shown].iter().map(|i| fmt(i, seen + 1)).collect();
            match items.len() - shown {
                0 => {}
                1 => out.push("... 1 more item".into()),
                n => out.push(format!("... {n} more items")),
            }
            format!("[{}]", out.join(", "))
        }
        Value::Object(m) => {
            if m.is_empty() {
                return "{}".into();
            }
            if seen + 1 > 2 {
                return "[Object]".into();
            }
            let props: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {}", fmt(v, seen + 1))).collect();
            format!("{{ {} }}", props.join(", "))
        }
    }
}

/// A JSON number as JavaScript's `String(n)` writes it (integral doubles without a fraction).
fn js_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
        Some(f) => f.to_string(),
        None => n.to_string(),
    }
}

/// graphql-js's `suggestionList`: the options within a lexical distance of about 40% of the
/// input, nearest first, then in natural order.
pub fn suggestion_list(input: &str, options: &[&str]) -> Vec<String> {
    let threshold = input.chars().count() * 2 / 5 + 1;
    let mut found: Vec<(usize, &str)> = options.iter().filter_map(|o| distance(input, o, threshold).map(|d| (d, *o))).collect();
    found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| natural_cmp(a.1, b.1)));
    found.into_iter().map(|(_, o)| o.to_string()).collect()
}

/// Damerau–Levenshtein on lower-cased UTF-16 units; a change of case alone counts 1.
fn distance(input: &str, option: &str, threshold: usize) -> Option<usize> {
    if input == option {
        return Some(0);
    }
    let (il, ol) = (input.to_lowercase(), option.to_lowercase());
    if il == ol {
        return Some(1);
    }
    let mut a: Vec<u16> = ol.encode_utf16().collect();
    let mut b: Vec<u16> = il.encode_utf16().collect();
    if a.len() < b.len() {
        std::mem::swap(&mut a, &mut b);
    }
    if a.len() - b.len() > threshold {
        return None;
    }
    let mut rows = vec![vec![0usize; b.len() + 1]; 3];
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        let mut smallest = i;
        rows[i % 3][0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut cell = (rows[(i - 1) % 3][j] + 1).min(rows[i % 3][j - 1] + 1).min(rows[(i - 1) % 3][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cell = cell.min(rows[(i - 2) % 3][j - 2] + 1);
            }
            smallest = smallest.min(cell);
            rows[i % 3][j] = cell;
        }
        if smallest > threshold {
            return None;
        }
    }
    let d = rows[a.len() % 3][b.len()];
    (d <= threshold).then_some(d)
}

/// graphql-js's `naturalCompare`: digit runs compare as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na: u128 = std::str::from_utf8(&a[si..i]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            let nb: u128 = std::str::from_utf8(&b[sj..j]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            if na != nb {
                return na.cmp(&nb);
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// ` Did you mean "a", "b", or "c"?` (at most five), or nothing.
pub fn did_you_mean(suggestions: &[String]) -> String {
    let quoted: Vec<String> = suggestions.iter().take(5).map(|s| format!("\"{s}\"")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => format!(" Did you mean {}?", quoted[0]),
        2 => format!(" Did you mean {} or {}?", quoted[0], quoted[1]),
        n => format!(" Did you mean {}, or {}?", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

/// `ID!`, `[ID!]!` … of a type reference.
pub fn print_type(t: &Json) -> String {
    match t["kind"].as_str() {
        Some("NON_NULL") => format!("{}!", print_type(&t["ofType"])),
        Some("LIST") => format!("[{}]", print_type(&t["ofType"])),
        _ => t["name"].as_str().unwrap_or("?").to_string(),
    }
}

fn type_ref(model: &Model, t: &AstType) -> Option<Json> {
    let inner = match &t.base {
        BaseType::Named(name) => json!({ "kind": model.kind(name)?, "name": name.as_str(), "ofType": null }),
        BaseType::List(item) => json!({ "kind": "LIST", "name": null, "ofType": type_ref(model, item)? }),
    };
    Some(if t.nullable { inner } else { json!({ "kind": "NON_NULL", "name": null, "ofType": inner }) })
}

#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn print_path(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => format!(".{k}"),
            Seg::Index(i) => format!("[{i}]"),
        })
        .collect()
}

/// graphql-js's `coerceInputValue`: each problem as (path, the invalid value, message).
fn coerce(model: &Model, value: &Value, ty: &Json, path: &mut Vec<Seg>, out: &mut Vec<(Vec<Seg>, Value, String)>) {
    let kind = ty["kind"].as_str().unwrap_or("");
    if kind == "NON_NULL" {
        if matches!(value, Value::Null) {
            out.push((path.clone(), value.clone(), format!("Expected non-nullable type \"{}\" not to be null.", print_type(ty))));
        } else {
            coerce(model, value, &ty["ofType"], path, out);
        }
        return;
    }
    if matches!(value, Value::Null) {
        return;
    }
    let name = ty["name"].as_str().unwrap_or("");
    match kind {
        "LIST" => match value {
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    coerce(model, item, &ty["ofType"], path, out);
                    path.pop();
                }
            }
            // a non-list value is a list of one
            other => coerce(model, other, &ty["ofType"], path, out),
        },
        "INPUT_OBJECT" => {
            let Value::Object(obj) = value else {
                out.push((path.clone(), value.clone(), format!("Expected type \"{name}\" to be an object.")));
                return;
            };
            let fields = model.input_fields(name);
            for f in &fields {
                let fname = f["name"].as_str().unwrap_or("");
                match obj.get(fname) {
                    None => {
                        if f["defaultValue"].is_null() && f["type"]["kind"] == "NON_NULL" {
                            let m = format!("Field \"{fname}\" of required type \"{}\" was not provided.", print_type(&f["type"]));
                            out.push((path.clone(), value.clone(), m));
                        }
                    }
                    Some(v) => {
                        path.push(Seg::Key(fname.to_string()));
                        coerce(model, v, &f["type"], path, out);
                        path.pop();
                    }
                }
            }
            let names: Vec<&str> = fields.iter().filter_map(|f| f["name"].as_str()).collect();
            for key in obj.keys() {
                if !names.contains(&key.as_str()) {
                    let hint = did_you_mean(&suggestion_list(key, &names));
                    out.push((path.clone(), value.clone(), format!("Field \"{key}\" is not defined by type \"{name}\".{hint}")));
                }
            }
        }
        "SCALAR" => {
            if let Some(m) = scalar_problem(name, value) {
                out.push((path.clone(), value.clone(), m));
            }
        }
        _ => {}
    }
}

/// The built-in scalars' `parseValue` errors.
fn scalar_problem(scalar: &str, v: &Value) -> Option<String> {
    let integral = |n: &serde_json::Number| n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.is_finite());
    match scalar {
        "String" => (!matches!(v, Value::String(_))).then(|| format!("String cannot represent a non string value: {}", inspect(v))),
        "Boolean" => (!matches!(v, Value::Boolean(_))).then(|| format!("Boolean cannot represent a non boolean value: {}", inspect(v))),
        "ID" => match v {
            Value::String(_) => None,
            Value::Number(n) if integral(n) => None,
            _ => Some(format!("ID cannot represent value: {}", inspect(v))),
        },
        "Int" => match v {
            Value::Number(n) if integral(n) => {
                let f = n.as_f64().unwrap_or(f64::MAX);
                (f > f64::from(i32::MAX) || f < f64::from(i32::MIN))
                    .then(|| format!("Int cannot represent non 32-bit signed integer value: {}", js_number(n)))
            }
            _ => Some(format!("Int cannot represent non-integer value: {}", inspect(v))),
        },
        "Float" => (!matches!(v, Value::Number(_))).then(|| format!("Float cannot represent non numeric value: {}", inspect(v))),
        _ => None,
    }
}

/// graphql-js's `coerceVariableValues` for an operation: its errors (at most 50, then a last
/// one saying so), each at the variable's definition.
pub fn coerce_variables(model: &Model, op: &OperationDefinition, inputs: &Value) -> Vec<ServerError> {
    const MAX_ERRORS: usize = 50;
    let empty = async_graphql::indexmap::IndexMap::new();
    let given = match inputs {
        Value::Object(m) => m,
        _ => &empty,
    };
    let mut errors = Vec::new();
    for def in &op.variable_definitions {
        let var = def.node.name.node.as_str();
        let Some(ty) = type_ref(model, &def.node.var_type.node) else { continue };
        let mut push = |m: String| {
            if errors.len() >= MAX_ERRORS {
                return false;
            }
            errors.push(coded(m, Some(def.pos), BAD_USER_INPUT));
            true
        };
        let Some(value) = given.get(&Name::new(var)) else {
            if def.node.default_value.is_none() && ty["kind"] == "NON_NULL" {
                push(format!("Variable \"${var}\" of required type \"{}\" was not provided.", print_type(&ty)));
            }
            continue;
        };
        if matches!(value, Value::Null) && ty["kind"] == "NON_NULL" {
            push(format!("Variable \"${var}\" of non-null type \"{}\" must not be null.", print_type(&ty)));
            continue;
        }
        let mut problems = Vec::new();
        coerce(model, value, &ty, &mut Vec::new(), &mut problems);
        for (path, invalid, message) in problems {
            let at = if path.is_empty() { String::new() } else { format!(" at \"{var}{}\"", print_path(&path)) };
            if !push(format!("Variable \"${var}\" got invalid value {}{at}; {message}", inspect(&invalid))) {
                errors.push(coded(
                    "Too many errors processing variables, error limit reached. Execution aborted.".into(),
                    None,
                    BAD_USER_INPUT,
                ));
                return errors;
            }
        }
    }
    errors
}

/// The operation a request names, as graphql-js resolves it, or Apollo's error.
pub fn resolve_operation<'d>(doc: &'d ExecutableDocument, name: Option<&str>) -> Result<&'d Positioned<OperationDefinition>, ServerError> {
    use async_graphql::parser::types::DocumentOperations as Ops;
    match (&doc.operations, name) {
        (Ops::Single(op), None) => Ok(op),
        (Ops::Single(_), Some(n)) => Err(coded(format!("Unknown operation named \"{n}\"."), None, OPERATION_RESOLUTION_FAILURE)),
        (Ops::Multiple(ops), Some(n)) => {
            ops.get(n).ok_or_else(|| coded(format!("Unknown operation named \"{n}\"."), None, OPERATION_RESOLUTION_FAILURE))
        }
        (Ops::Multiple(ops), None) if ops.len() == 1 => Ok(ops.values().next().expect("one operation")),
        (Ops::Multiple(_), None) => {
            Err(coded("Must provide operation name if query contains multiple operations.".into(), None, OPERATION_RESOLUTION_FAILURE))
        }
    }
}

/// A validation error in graphql-js's words, where async-graphql words it differently.
pub fn translate(model: &Model, query: &str, mut e: ServerError) -> ServerError {
    let m = e.message.clone();
    let quoted: Vec<&str> = m.split('"').skip(1).step_by(2).collect();
    let q = |i: usize| quoted.get(i).copied().unwrap_or("");
    if m.starts_with("Unknown field \"") {
        // Unknown field "X" on type "T".
        let (field, ty) = (q(0), q(1));
        let names = model.field_names(ty);
        e.message = format!("Cannot query field \"{field}\" on type \"{ty}\".{}", did_you_mean(&suggestion_list(field, &names)));
    } else if m.starts_with("Unknown argument \"") && m.contains("\" on field \"") {
        // Unknown argument "A" on field "F" of type "T".
        let (arg, field, ty) = (q(0), q(1), q(2));
        let names = model.arg_names(ty, field);
        e.message = format!("Unknown argument \"{arg}\" on field \"{ty}.{field}\".{}", did_you_mean(&suggestion_list(arg, &names)));
    } else if m.starts_with("Field \"") && m.contains("\" argument \"") && m.ends_with("is required but not provided") {
        // Field "F" argument "A" of type "T" is required but not provided (T: the parent type)
        let (field, arg, parent) = (q(0), q(1), q(2));
        let ty = model.arg_type(parent, field, arg).map(|t| print_type(&t)).unwrap_or_default();
        e.message = format!("Field \"{field}\" argument \"{arg}\" of type \"{ty}\" is required, but it was not provided.");
    } else if let Some(rest) = m.strip_prefix("Unknown fragment: ") {
        e.message = format!("Unknown fragment {rest}.");
        // graphql-js points at the fragment's name, after the `...`
        if let Some(p) = e.locations.first_mut() {
            let line = query.lines().nth(p.line.saturating_sub(1)).unwrap_or("");
            let after: String = line.chars().skip(p.column.saturating_sub(1)).collect();
            let skipped = after.len() - after.trim_start_matches('.').trim_start().len();
            p.column += after[..skipped].chars().count();
        }
    } else if m.starts_with("Variable \"$") && m.ends_with("\" is not used") || m.starts_with("Variable \"$") && m.ends_with(" is not used")
    {
        e.message = format!("Variable \"{}\" is never used.", q(0));
    } else if m.starts_with("Variable \"$") && m.ends_with(" is not defined") {
        e.message = format!("Variable \"{}\" is not defined.", q(0));
    } else if m.starts_with("Fragment \"") && m.ends_with("is never used") {
        e.message = format!("Fragment \"{}\" is never used.", q(0));
    }
    e
}

/// What [`Gate`] checks before any resolver runs, prepared by the caller (it has the document
/// and the variables as the client ordered them).
pub struct Prechecks {
    pub resolution: Option<ServerError>,
    pub coercion: Vec<ServerError>,
}

impl Prechecks {
    pub fn new(model: &Model, doc: &ExecutableDocument, operation_name: Option<&str>, variables: &Value) -> Prechecks {
        match resolve_operation(doc, operation_name) {
            Err(e) => Prechecks { resolution: Some(e), coercion: vec![] },
            Ok(op) => Prechecks { resolution: None, coercion: coerce_variables(model, &op.node, variables) },
        }
    }
}

/// An async-graphql extension: after its validation, graphql-js's operation resolution and
/// variable coercion (from the request's [`Prechecks`]), so a request that graphql-js would
/// refuse never reaches a resolver.
pub struct Gate;

impl ExtensionFactory for Gate {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GateExtension)
    }
}

struct GateExtension;

#[async_graphql::async_trait::async_trait]
impl Extension for GateExtension {
    async fn validation(&self, ctx: &ExtensionContext<'_>, next: NextValidation<'_>) -> Result<ValidationResult, Vec<ServerError>> {
        let checks = ctx.data_opt::<Prechecks>();
        let result = next.run(ctx).await;
        let Some(checks) = checks else { return result };
        let later = || -> Option<Vec<ServerError>> {
            if let Some(e) = &checks.resolution {
                return Some(vec![e.clone()]);
            }
            (!checks.coercion.is_empty()).then(|| checks.coercion.clone())
        };
        match result {
            Ok(v) => match later() {
                Some(errors) => Err(errors),
                None => Ok(v),
            },
            // async-graphql also checks variable values while validating; graphql-js coerces
            // them afterwards, with its own messages
            Err(errors) if !checks.coercion.is_empty() && errors.iter().all(|e| e.message.starts_with("Invalid value for argument")) => {
                Err(later().unwrap_or(errors))
            }
            Err(errors) => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(j: Json) -> Value {
        Value::from_json(j).unwrap()
    }

    #[test]
    fn inspect_formats_values_as_graphql_js() {
        assert_eq!(inspect(&v(json!({}))), "{}");
        assert_eq!(inspect(&v(json!("a\"b"))), r#""a\"b""#);
        assert_eq!(inspect(&v(json!({ "a": [1, { "b": { "c": 1 } }], "d": null }))), "{ a: [1, [Object]], d: null }");
        assert_eq!(inspect(&v(json!((0..12).collect::<Vec<_>>()))), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... 2 more items]");
        assert_eq!(inspect(&v(json!(1.0))), "1");
        assert_eq!(inspect(&v(json!(1.5))), "1.5");
    }

    #[test]
    fn suggestions_as_graphql_js() {
        assert_eq!(suggestion_list("chat2", &["chat", "chats", "messages"]), ["chat", "chats"]);
        assert_eq!(did_you_mean(&suggestion_list("chat2", &["chat", "chats"])), " Did you mean \"chat\" or \"chats\"?");
        assert_eq!(suggestion_list("CHATS", &["chats"]), ["chats"]);
        assert_eq!(suggestion_list("xyz", &["chats"]), Vec::<String>::new());
        let many: Vec<String> = ["a1", "a2", "a3", "a4", "a5", "a6"].iter().map(|s| s.to_string()).collect();
        assert_eq!(did_you_mean(&many), " Did you mean \"a1\", \"a2\", \"a3\", \"a4\", or \"a5\"?");
        // graphql-js: suggestionList("a", ["a10", "a9", "b"]) is ["a9", "b"]
        assert_eq!(suggestion_list("a", &["a10", "a9", "b"]), ["a9", "b"]);
        assert_eq!(natural_cmp("a10", "a9"), std::cmp::Ordering::Greater);
    }

    fn coerced(query: &str, vars: Json) -> Vec<String> {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        let op = resolve_operation(&doc, None).unwrap();
        coerce_variables(Model::recorded(), &op.node, &v(vars)).into_iter().map(|e| e.message).collect()
    }

    // Expectations read from the running monolith (graphql 16.15), 2026-12-06.
    #[test]
    fn variables_coerce_with_graphql_js_messages() {
        let q = "query($c: ID!) { chat(id: $c) { id } }";
        assert_eq!(coerced(q, json!({})), ["Variable \"$c\" of required type \"ID!\" was not provided."]);
        assert_eq!(coerced(q, json!({ "c": true })), ["Variable \"$c\" got invalid value true; ID cannot represent value: true"]);
        assert_eq!(coerced(q, json!({ "c": 5 })), Vec::<String>::new());
        assert_eq!(coerced(q, json!({ "c": null })), ["Variable \"$c\" of non-null type \"ID!\" must not be null."]);
        let q = "mutation($i: CreateChatInput!) { createChat(input: $i) { id } }";
        assert_eq!(
            coerced(q, json!({ "i": {} })),
            ["Variable \"$i\" got invalid value {}; Field \"memberIds\" of required type \"[ID!]!\" was not provided."]
        );
        assert_eq!(
            coerced(q, json!({ "i": { "memberIds": [1, null], "titel": "x" } })),
            [
                "Variable \"$i\" got invalid value null at \"i.memberIds[1]\"; Expected non-nullable type \"ID!\" not to be null.",
                "Variable \"$i\" got invalid value { memberIds: [1, null], titel: \"x\" }; Field \"titel\" is not defined by type \"CreateChatInput\". Did you mean \"title\"?"
            ]
        );
        let q = "query($c: ID!, $f: Int) { messages(chatId: $c, first: $f) { pageInfo { hasNextPage } } }";
        assert_eq!(
            coerced(q, json!({ "c": "x", "f": 2147483648u64 })),
            ["Variable \"$f\" got invalid value 2147483648; Int cannot represent non 32-bit signed integer value: 2147483648"]
        );
        assert_eq!(
            coerced(q, json!({ "c": "x", "f": "2" })),
            ["Variable \"$f\" got invalid value \"2\"; Int cannot represent non-integer value: \"2\""]
        );
    }

    #[test]
    fn operations_resolve_as_graphql_js() {
        let doc = async_graphql::parser::parse_query("query A { chats { id } } query B { chats { id } }").unwrap();
        assert_eq!(
            resolve_operation(&doc, None).unwrap_err().message,
            "Must provide operation name if query contains multiple operations."
        );
        assert_eq!(resolve_operation(&doc, Some("C")).unwrap_err().message, "Unknown operation named \"C\".");
        assert!(resolve_operation(&doc, Some("B")).is_ok());
    }

    #[test]
    fn validation_messages_in_graphql_js_words() {
        let model = Model::recorded();
        let t = |m: &str| translate(model, "{ chats { id ...F } }", ServerError::new(m, Some(Pos { line: 1, column: 14 })));
        assert_eq!(
            t("Unknown field \"chat2\" on type \"Query\". Did you mean \"chat\", \"chats\"?").message,
            "Cannot query field \"chat2\" on type \"Query\". Did you mean \"chat\" or \"chats\"?"
        );
        assert_eq!(
            t("Unknown argument \"foo\" on field \"chat\" of type \"Query\".").message,
            "Unknown argument \"foo\" on field \"Query.chat\"."
        );
        assert_eq!(
            t("Field \"chat\" argument \"id\" of type \"Query\" is required but not provided").message,
            "Field \"chat\" argument \"id\" of type \"ID!\" is required, but it was not provided."
        );
        let e = t("Unknown fragment: \"F\"");
        assert_eq!((e.message.as_str(), e.locations[0].column), ("Unknown fragment \"F\".", 17));
        assert_eq!(t("Variable \"$x\" is not used").message, "Variable \"$x\" is never used.");
    }
}
