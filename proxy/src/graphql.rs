//! Reading GraphQL operations at the edge: which root fields an operation asks for, so a route
//! can claim fields (`match = { path = "/graphql", graphql_fields = [...] }`) and one endpoint
//! can be split between the monolith and extracted services.
//!
//! Pure: text in, answer out. [`request_operation`] takes what a client sent (a GET query string
//! or a POST JSON body, as Apollo Server 4 accepts them) to the operation's text and name;
//! [`root_fields`] parses it (apollo-parser, with recursion and token limits) and lists the root
//! fields of the operation that will run, fragments on the root type included; [`Schema`] reads
//! an SDL for the root fields it defines (to check `routes.toml` against, and to know which fields
//! are subscriptions). What cannot be read is an [`Unreadable`] with a fixed reason; the edge then
//! sends the request to the monolith and counts it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use apollo_parser::cst;
use serde::Deserialize;

/// What kind of operation will run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperationKind {
    Query,
    Mutation,
    Subscription,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Query => "query",
            OperationKind::Mutation => "mutation",
            OperationKind::Subscription => "subscription",
        }
    }
}

/// Bounds on the parse: past them the operation is not read (the monolith gets it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nesting depth of selection sets.
    pub max_depth: usize,
    /// Lexical tokens in the document.
    pub max_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 64, max_tokens: 15_000 }
    }
}

/// The root fields of the operation that will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFields {
    pub kind: OperationKind,
    /// Field names (not aliases), sorted, without `__typename`; introspection fields
    /// (`__schema`, `__type`) are kept, so no route can claim them.
    pub fields: BTreeSet<String>,
}

/// Why an operation was not read. A fixed label for metrics comes from [`Self::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("the request carries no operation")]
    NoQuery,
    #[error("the body is not a GraphQL request")]
    NotGraphQl,
    #[error("a batch of operations")]
    Batch,
    #[error("the body is over the parse limit")]
    TooLarge,
    #[error("the operation is over the depth or token limit")]
    OverLimit,
    #[error("the operation does not parse")]
    Syntax,
    #[error("no operation named `{0}`")]
    UnknownOperation(String),
    #[error("several operations and no operationName")]
    AmbiguousOperation,
    #[error("fragment `{0}` is not defined")]
    UnknownFragment(String),
}

impl Unreadable {
    pub fn as_str(&self) -> &'static str {
        match self {
            Unreadable::NoQuery => "no_query",
            Unreadable::NotGraphQl => "not_graphql",
            Unreadable::Batch => "batch",
            Unreadable::TooLarge => "too_large",
            Unreadable::OverLimit => "over_limit",
            Unreadable::Syntax => "syntax",
            Unreadable::UnknownOperation(_) | Unreadable::AmbiguousOperation => "operation_name",
            Unreadable::UnknownFragment(_) => "unknown_fragment",
        }
    }
}

/// The operation a request asks to run: its text and (optional) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationText {
    pub query: String,
    pub operation_name: Option<String>,
}

#[derive(Deserialize)]
struct JsonRequest {
    query: Option<serde_json::Value>,
    #[serde(rename = "operationName")]
    operation_name: Option<serde_json::Value>,
}

/// The operation of a request, as Apollo Server 4 reads it: a GET query string (`query`,
/// `operationName`) or a POST JSON object (`query`, `operationName`, `variables`, …). A JSON array
/// is a batch (the monolith has batching off and answers it itself); a persisted-query request
/// without its text cannot be read.
pub fn request_operation(query_string: Option<&str>, json_body: Option<&[u8]>) -> Result<OperationText, Unreadable> {
    let (query, name) = match json_body {
        Some(body) => {
            let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| Unreadable::NotGraphQl)?;
            if value.is_array() {
                return Err(Unreadable::Batch);
            }
            let req: JsonRequest = serde_json::from_value(value).map_err(|_| Unreadable::NotGraphQl)?;
            let text = |v: Option<serde_json::Value>| match v {
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(_) => Err(Unreadable::NotGraphQl),
            };
            (text(req.query)?, text(req.operation_name)?)
        }
        None => {
            let mut query = None;
            let mut name = None;
            for (k, v) in url::form_urlencoded::parse(query_string.unwrap_or("").as_bytes()) {
                match k.as_ref() {
                    "query" => query = Some(v.into_owned()),
                    "operationName" => name = Some(v.into_owned()),
                    _ => {}
                }
            }
            (query, name)
        }
    };
    let query = query.filter(|q| !q.trim().is_empty()).ok_or(Unreadable::NoQuery)?;
    Ok(OperationText { query, operation_name: name.filter(|n| !n.is_empty()) })
}

fn kind_of(t: Option<cst::OperationType>) -> OperationKind {
    match t {
        Some(t) if t.mutation_token().is_some() => OperationKind::Mutation,
        Some(t) if t.subscription_token().is_some() => OperationKind::Subscription,
        _ => OperationKind::Query,
    }
}

/// The root fields of the operation that will run (`operation_name` chooses among several).
pub fn root_fields(query: &str, operation_name: Option<&str>, limits: Limits) -> Result<RootFields, Unreadable> {
    let tree = apollo_parser::Parser::new(query).recursion_limit(limits.max_depth).token_limit(limits.max_tokens).parse();
    if let Some(e) = tree.errors().next() {
        return Err(if e.is_limit() { Unreadable::OverLimit } else { Unreadable::Syntax });
    }
    let doc = tree.document();
    let mut operations = Vec::new();
    let mut fragments: HashMap<String, cst::SelectionSet> = HashMap::new();
    for def in doc.definitions() {
        match def {
            cst::Definition::OperationDefinition(op) => operations.push(op),
            cst::Definition::FragmentDefinition(f) => {
                if let (Some(name), Some(set)) = (f.fragment_name().and_then(|n| n.name()), f.selection_set()) {
                    fragments.insert(name.text().to_string(), set);
                }
            }
            // type definitions in an executable document: graphql-js refuses it, so does the edge
            _ => return Err(Unreadable::Syntax),
        }
    }
    let op = match operation_name {
        Some(wanted) => operations
            .into_iter()
            .find(|op| op.name().is_some_and(|n| n.text() == wanted))
            .ok_or_else(|| Unreadable::UnknownOperation(wanted.to_string()))?,
        None if operations.len() == 1 => operations.pop().expect("one operation"),
        None => return Err(Unreadable::AmbiguousOperation),
    };
    let mut fields = BTreeSet::new();
    let set = op.selection_set().ok_or(Unreadable::Syntax)?;
    collect(&set, &fragments, &mut Vec::new(), &mut fields)?;
    Ok(RootFields { kind: kind_of(op.operation_type()), fields })
}

/// Root fields of a selection set, through fragment spreads and inline fragments (which, on the
/// root type, can only select root fields). `seen` guards against fragment cycles.
fn collect(
    set: &cst::SelectionSet,
    fragments: &HashMap<String, cst::SelectionSet>,
    seen: &mut Vec<String>,
    out: &mut BTreeSet<String>,
) -> Result<(), Unreadable> {
    for selection in set.selections() {
        match selection {
            cst::Selection::Field(f) => {
                let name = f.name().ok_or(Unreadable::Syntax)?.text().to_string();
                if name != "__typename" {
                    out.insert(name);
                }
            }
            cst::Selection::InlineFragment(i) => collect(&i.selection_set().ok_or(Unreadable::Syntax)?, fragments, seen, out)?,
            cst::Selection::FragmentSpread(s) => {
                let name = s.fragment_name().and_then(|n| n.name()).ok_or(Unreadable::Syntax)?.text().to_string();
                if seen.contains(&name) {
                    continue;
                }
                let set = fragments.get(&name).ok_or_else(|| Unreadable::UnknownFragment(name.clone()))?;
                seen.push(name);
                collect(set, fragments, seen, out)?;
            }
        }
    }
    Ok(())
}

/// The root fields a schema (SDL) defines, by operation kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    pub root_fields: BTreeMap<String, OperationKind>,
}

impl Schema {
    /// Reads the root types' fields from an SDL (`schema { … }` names them, else `Query`,
    /// `Mutation`, `Subscription`); type extensions count.
    pub fn parse(sdl: &str) -> Result<Schema, String> {
        let tree = apollo_parser::Parser::new(sdl).parse();
        if let Some(e) = tree.errors().next() {
            return Err(format!("{} at byte {}", e.message(), e.index()));
        }
        let doc = tree.document();
        let mut roots: HashMap<String, OperationKind> =
            [("Query", OperationKind::Query), ("Mutation", OperationKind::Mutation), ("Subscription", OperationKind::Subscription)]
                .into_iter()
                .map(|(n, k)| (n.to_string(), k))
                .collect();
        for def in doc.definitions() {
            if let cst::Definition::SchemaDefinition(s) = def {
                roots.clear();
                for r in s.root_operation_type_definitions() {
                    if let Some(name) = r.named_type().and_then(|t| t.name()) {
                        roots.insert(name.text().to_string(), kind_of(r.operation_type()));
                    }
                }
            }
        }
        let mut root_fields = BTreeMap::new();
        for def in doc.definitions() {
            let (name, fields) = match &def {
                cst::Definition::ObjectTypeDefinition(t) => (t.name(), t.fields_definition()),
                cst::Definition::ObjectTypeExtension(t) => (t.name(), t.fields_definition()),
                _ => continue,
            };
            let Some(kind) = name.and_then(|n| roots.get(n.text().as_str()).copied()) else { continue };
            for f in fields.iter().flat_map(|f| f.field_definitions()) {
                if let Some(n) = f.name() {
                    root_fields.insert(n.text().to_string(), kind);
                }
            }
        }
        if root_fields.is_empty() {
            return Err("no root fields (no Query, Mutation or Subscription type)".into());
        }
        Ok(Schema { root_fields })
    }

    pub fn kind_of(&self, field: &str) -> Option<OperationKind> {
        self.root_fields.get(field).copied()
    }
}

/// Who serves an operation, given the root fields each route claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner<R> {
    /// Every root field belongs to this route.
    Route(R),
    /// No route claims any of them: the path's default (the monolith).
    Unclaimed,
    /// They belong to different owners (or some to none): the operation cannot go to one service.
    Mixed,
}

/// The owner of `fields` (introspection fields belong to no route). An empty set (only
/// `__typename`) is unclaimed.
pub fn owner<R: Copy + PartialEq>(fields: &BTreeSet<String>, claims: &HashMap<String, R>) -> Owner<R> {
    let mut owners = fields.iter().map(|f| claims.get(f).copied());
    let Some(first) = owners.next() else { return Owner::Unclaimed };
    if !owners.all(|o| o == first) {
        return Owner::Mixed;
    }
    match first {
        Some(r) => Owner::Route(r),
        None => Owner::Unclaimed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(q: &str, name: Option<&str>) -> Result<(OperationKind, Vec<String>), Unreadable> {
        root_fields(q, name, Limits::default()).map(|r| (r.kind, r.fields.into_iter().collect()))
    }

    fn set(names: &[&str]) -> (OperationKind, Vec<String>) {
        (OperationKind::Query, names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn root_fields_of_the_operation_that_runs() {
        assert_eq!(fields("{ chats { id } }", None), Ok(set(&["chats"])));
        assert_eq!(
            fields("query Q($c: ID!) { a: chat(id: $c) { id } messages(chatId: $c) { edges { cursor } } __typename }", None),
            Ok(set(&["chat", "messages"]))
        );
        assert_eq!(
            fields("mutation M($i: SendMessageInput!) { sendMessage(input: $i) { id } }", None),
            Ok((OperationKind::Mutation, vec!["sendMessage".into()]))
        );
        assert_eq!(
            fields("subscription { messageAdded(chatId: \"x\") { id } }", None),
            Ok((OperationKind::Subscription, vec!["messageAdded".into()]))
        );
        // the named one of several
        let doc = "query A { chats { id } } mutation B { markRead(chatId: \"1\", messageId: \"2\") { id } }";
        assert_eq!(fields(doc, Some("B")), Ok((OperationKind::Mutation, vec!["markRead".into()])));
        assert_eq!(fields(doc, None), Err(Unreadable::AmbiguousOperation));
        assert_eq!(fields(doc, Some("C")), Err(Unreadable::UnknownOperation("C".into())));
    }

    #[test]
    fn fragments_on_the_root_type_count() {
        let q = "query { ...Root ... on Query { me } ... @include(if: true) { chat(id: 1) { id } } } fragment Root on Query { chats { ...C } ...More } fragment More on Query { messages(chatId: 1) { pageInfo { hasNextPage } } } fragment C on Chat { id }";
        assert_eq!(fields(q, None), Ok(set(&["chat", "chats", "me", "messages"])));
        // a cycle does not loop; an unknown fragment is unreadable
        assert_eq!(fields("{ ...A } fragment A on Query { x ...A }", None), Ok(set(&["x"])));
        assert_eq!(fields("{ ...Nope }", None), Err(Unreadable::UnknownFragment("Nope".into())));
    }

    #[test]
    fn what_cannot_be_read() {
        assert_eq!(fields("{ chats { id }", None), Err(Unreadable::Syntax));
        assert_eq!(fields("type Query { x: Int }", None), Err(Unreadable::Syntax));
        let deep = format!("{{ chats {} id {} }}", "{ members ".repeat(100), "}".repeat(100));
        assert_eq!(fields(&deep, None), Err(Unreadable::OverLimit));
        let wide = format!("{{ {} }}", "chats { id } ".repeat(10_000));
        assert_eq!(fields(&wide, None), Err(Unreadable::OverLimit));
        assert_eq!(fields("{ __schema { types { name } } }", None), Ok(set(&["__schema"])));
    }

    #[test]
    fn requests_as_apollo_server_reads_them() {
        let op = |q: &str, n: Option<&str>| Ok(OperationText { query: q.into(), operation_name: n.map(Into::into) });
        assert_eq!(request_operation(None, Some(br#"{"query":"{ chats { id } }","variables":{}}"#)), op("{ chats { id } }", None));
        assert_eq!(request_operation(None, Some(br#"{"query":"query A { x }","operationName":"A"}"#)), op("query A { x }", Some("A")));
        assert_eq!(
            request_operation(Some("query=%7B%20chats%20%7B%20id%20%7D%20%7D&operationName=&x=1"), None),
            op("{ chats { id } }", None)
        );
        assert_eq!(request_operation(None, Some(br#"[{"query":"{ x }"}]"#)), Err(Unreadable::Batch));
        assert_eq!(request_operation(None, Some(b"query { x }")), Err(Unreadable::NotGraphQl));
        assert_eq!(request_operation(None, Some(br#"{"query": 5}"#)), Err(Unreadable::NotGraphQl));
        // a persisted query by hash only
        let apq = br#"{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"ab"}}}"#;
        assert_eq!(request_operation(None, Some(apq)), Err(Unreadable::NoQuery));
        assert_eq!(request_operation(Some(""), None), Err(Unreadable::NoQuery));
    }

    #[test]
    fn schema_root_fields() {
        let s = Schema::parse(include_str!("../../docs/api/chat.graphql")).unwrap();
        assert_eq!(s.kind_of("chats"), Some(OperationKind::Query));
        assert_eq!(s.kind_of("sendMessage"), Some(OperationKind::Mutation));
        assert_eq!(s.kind_of("messageAdded"), Some(OperationKind::Subscription));
        assert_eq!(s.kind_of("body"), None, "fields of other types are not root fields");
        let custom = Schema::parse("schema { query: Q } type Q { a: Int } extend type Q { b: Int } type Query { c: Int }").unwrap();
        assert_eq!(custom.root_fields.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(Schema::parse("type Query {").is_err());
    }

    #[test]
    fn owners() {
        let claims: HashMap<String, u8> = [("chats", 1), ("chat", 1), ("me", 2)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let f = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(owner(&f(&["chats", "chat"]), &claims), Owner::Route(1));
        assert_eq!(owner(&f(&["chats", "me"]), &claims), Owner::Mixed);
        assert_eq!(owner(&f(&["chats", "payments"]), &claims), Owner::Mixed);
        assert_eq!(owner(&f(&["payments", "__schema"]), &claims), Owner::Unclaimed);
        assert_eq!(owner(&f(&[]), &claims), Owner::Unclaimed);
    }

    proptest! {
        /// The root fields do not depend on aliases, order or spelling through fragments.
        #[test]
        fn the_same_fields_however_written(picks in proptest::collection::vec(0usize..4, 1..6), via_fragment in any::<bool>()) {
            let names = ["chats", "chat", "messages", "me"];
            let chosen: BTreeSet<String> = picks.iter().map(|&i| names[i].to_string()).collect();
            let body: String = picks.iter().enumerate().map(|(n, &i)| format!("a{n}: {} {{ id }} ", names[i])).collect();
            let q = if via_fragment { format!("{{ ...F }} fragment F on Query {{ {body} }}") } else { format!("{{ {body} }}") };
            prop_assert_eq!(root_fields(&q, None, Limits::default()).unwrap().fields, chosen);
        }

        /// Whatever a client sends, reading it ends (with an answer or a reason), never panics.
        #[test]
        fn never_panics(q in ".{0,200}") {
            let _ = root_fields(&q, None, Limits::default());
            let _ = request_operation(Some(&q), None);
            let _ = request_operation(None, Some(q.as_bytes()));
        }
    }
}
