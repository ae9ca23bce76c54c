//! The answer as graphql-js (the monolith's executor) shapes it, from what async-graphql computed.
//!
//! async-graphql runs the resolvers; three things about its output differ from graphql-js and
//! would be visible to a client comparing answers (and to the shadow diff):
//!
//! * **field order**: it resolves a selection set's fields concurrently and keys them in the
//!   order they finish; graphql-js keys them in the order the operation selects them;
//! * **errors and `null`**: a field whose resolver fails is left out of its object; graphql-js
//!   sets it to `null` and, when its type is non-null, makes the nearest nullable parent `null`
//!   (up to `data: null`);
//! * **introspection**: its meta-schema has its own descriptions, argument types and built-in
//!   types; a client or a code generator that introspects would see another schema.
//!
//! So each answer is re-walked here along the operation's selection sets (fragments, `@skip`,
//! `@include`, aliases) with the types of the monolith's schema — its introspection, recorded in
//! `extracted/chat/schema/introspection.json` by `scripts/chat-schema` — taking data values from
//! async-graphql's result and answering `__schema`, `__type` and `__typename` from that recording,
//! exactly as graphql-js would. A test compares the service and the monolith on introspection
//! queries byte for byte (`legacy/test/chat-service.test.ts`).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, Field, OperationDefinition, Selection, SelectionSet};
use async_graphql::{Name, Positioned, Value};
use serde_json::Value as Json;

/// The monolith's schema as its introspection describes it.
pub struct Model {
    schema: Json,
    types: HashMap<String, Json>,
    query: String,
    mutation: Option<String>,
    subscription: Option<String>,
}

const RECORDED: &str = include_str!("../schema/introspection.json");

impl Model {
    /// The recorded schema (parsed once).
    pub fn recorded() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::parse(RECORDED).expect("schema/introspection.json is a graphql-js introspection result"))
    }

    /// A model from `{"__schema": …}` (the `data` of graphql-js's full introspection query).
    pub fn parse(text: &str) -> Result<Model, String> {
        let doc: Json = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let schema = doc.get("__schema").cloned().ok_or("no __schema")?;
        let mut types = HashMap::new();
        for t in schema["types"].as_array().ok_or("no __schema.types")? {
            let name = t["name"].as_str().ok_or("a type without a name")?;
            types.insert(name.to_string(), t.clone());
        }
        let root = |k: &str| schema[k]["name"].as_str().map(str::to_string);
        let query = root("queryType").ok_or("no queryType")?;
        Ok(Model { mutation: root("mutationType"), subscription: root("subscriptionType"), query, types, schema })
    }

    /// The type reference of `parent.field` (`{kind, name, ofType}`).
    fn field_type(&self, parent: &str, field: &str) -> Option<&Json> {
        self.field(parent, field).map(|f| &f["type"])
    }

    /// The kind (`OBJECT`, `INPUT_OBJECT`, `SCALAR` …) of a named type.
    pub fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name)?["kind"].as_str()
    }

    /// The input fields of an input object type.
    pub fn input_fields(&self, name: &str) -> Vec<&Json> {
        self.types.get(name).and_then(|t| t["inputFields"].as_array()).map(|a| a.iter().collect()).unwrap_or_default()
    }

    /// The field names of an object type, in schema order.
    pub fn field_names(&self, name: &str) -> Vec<&str> {
        self.types
            .get(name)
            .and_then(|t| t["fields"].as_array())
            .map(|a| a.iter().filter_map(|f| f["name"].as_str()).collect())
            .unwrap_or_default()
    }

    fn field(&self, parent: &str, field: &str) -> Option<&Json> {
        self.types.get(parent)?["fields"].as_array()?.iter().find(|f| f["name"] == field)
    }

    /// The argument names of `parent.field`.
    pub fn arg_names(&self, parent: &str, field: &str) -> Vec<&str> {
        self.field(parent, field)
            .and_then(|f| f["args"].as_array())
            .map(|a| a.iter().filter_map(|x| x["name"].as_str()).collect())
            .unwrap_or_default()
    }

    /// The type reference of argument `arg` of `parent.field`.
    pub fn arg_type(&self, parent: &str, field: &str, arg: &str) -> Option<Json> {
        self.field(parent, field)?["args"].as_array()?.iter().find(|a| a["name"] == arg).map(|a| a["type"].clone())
    }

    /// Whether a fragment on `condition` applies to an object of type `object`.
    fn applies(&self, condition: &str, object: &str) -> bool {
        condition == object
            || self.types.get(condition).and_then(|t| t["possibleTypes"].as_array()).is_some_and(|p| p.iter().any(|t| t["name"] == object))
    }

    /// The root type of an operation.
    pub fn root(&self, op: async_graphql::parser::types::OperationType) -> Option<&str> {
        use async_graphql::parser::types::OperationType as T;
        match op {
            T::Query => Some(&self.query),
            T::Mutation => self.mutation.as_deref(),
            T::Subscription => self.subscription.as_deref(),
        }
    }

    /// A type reference resolved to the full type when it names one (wrappers stay as they are).
    fn full<'a>(&'a self, r: &'a Json) -> &'a Json {
        r["name"].as_str().and_then(|n| self.types.get(n)).unwrap_or(r)
    }
}

/// The operation a request runs (`operationName` among several), if it names one that exists.
pub fn operation<'d>(doc: &'d ExecutableDocument, name: Option<&str>) -> Option<&'d Positioned<OperationDefinition>> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(n)) => ops.get(n),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    }
}

/// Where a value comes from: async-graphql's result, or the recorded meta-schema.
#[derive(Clone)]
enum Src<'a> {
    Data(&'a Value),
    Meta(Meta<'a>),
    MetaList(Vec<Meta<'a>>),
    Leaf(Value),
    Null,
}

#[derive(Clone, Copy)]
enum Meta<'a> {
    Schema,
    Type(&'a Json),
    Field(&'a Json),
    InputValue(&'a Json),
    EnumValue(&'a Json),
    Directive(&'a Json),
}

impl Meta<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Meta::Schema => "__Schema",
            Meta::Type(_) => "__Type",
            Meta::Field(_) => "__Field",
            Meta::InputValue(_) => "__InputValue",
            Meta::EnumValue(_) => "__EnumValue",
            Meta::Directive(_) => "__Directive",
        }
    }
}

/// Something the walk does not know (a field the recording lacks): keep async-graphql's answer.
struct Unknown;

enum Fail {
    /// A non-null position came out null: its parent must be null in turn.
    Propagate,
    /// See [`Unknown`].
    Unknown,
}

impl From<Unknown> for Fail {
    fn from(_: Unknown) -> Self {
        Fail::Unknown
    }
}

struct Walk<'a> {
    model: &'a Model,
    doc: &'a ExecutableDocument,
    variables: HashMap<Name, Value>,
}

/// `data` of an operation as graphql-js would answer it; `None` when it cannot tell (then the
/// caller keeps async-graphql's `data`).
pub fn shape(model: &Model, doc: &ExecutableDocument, op_name: Option<&str>, variables: &Value, data: &Value) -> Option<Value> {
    let op = operation(doc, op_name)?;
    let root = model.root(op.node.ty)?;
    let given = match variables {
        Value::Object(m) => Some(m),
        _ => None,
    };
    let mut vars: HashMap<Name, Value> = HashMap::new();
    for def in &op.node.variable_definitions {
        let name = &def.node.name.node;
        match given.and_then(|m| m.get(name)) {
            Some(v) => {
                vars.insert(name.clone(), v.clone());
            }
            None => {
                if let Some(d) = def.node.default_value() {
                    vars.insert(name.clone(), d.clone());
                }
            }
        }
    }
    let walk = Walk { model, doc, variables: vars };
    match walk.object(root, &Src::Data(data), &[&op.node.selection_set.node]) {
        Ok(v) => Some(v),
        Err(Fail::Propagate) => Some(Value::Null),
        Err(Fail::Unknown) => None,
    }
}

impl<'a> Walk<'a> {
    fn arg(&self, field: &Field, name: &str) -> Option<Value> {
        let v = field.get_argument(name)?.node.clone();
        v.into_const_with(|n| self.variables.get(&n).cloned().ok_or(())).ok()
    }

    /// `@skip(if:)` / `@include(if:)`.
    fn included(&self, directives: &[Positioned<async_graphql::parser::types::Directive>]) -> bool {
        directives.iter().all(|d| {
            let cond =
                d.node.get_argument("if").and_then(|v| v.node.clone().into_const_with(|n| self.variables.get(&n).cloned().ok_or(())).ok());
            !matches!((d.node.name.node.as_str(), cond), ("skip", Some(Value::Boolean(true))) | ("include", Some(Value::Boolean(false))))
        })
    }

    /// graphql-js's CollectFields: response keys in selection order, with every field that
    /// answers to each key.
    fn collect(&self, object: &str, sets: &[&'a SelectionSet]) -> IndexMap<String, Vec<&'a Field>> {
        let mut out: IndexMap<String, Vec<&'a Field>> = IndexMap::new();
        let mut seen = HashSet::new();
        for set in sets {
            self.collect_into(object, set, &mut out, &mut seen);
        }
        out
    }

    fn collect_into(&self, object: &str, set: &'a SelectionSet, out: &mut IndexMap<String, Vec<&'a Field>>, seen: &mut HashSet<&'a str>) {
        for sel in &set.items {
            if !self.included(sel.node.directives()) {
                continue;
            }
            match &sel.node {
                Selection::Field(f) => out.entry(f.node.response_key().node.to_string()).or_default().push(&f.node),
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    if !seen.insert(name) {
                        continue;
                    }
                    let Some(frag) = self.doc.fragments.get(name) else { continue };
                    if self.model.applies(frag.node.type_condition.node.on.node.as_str(), object) {
                        self.collect_into(object, &frag.node.selection_set.node, out, seen);
                    }
                }
                Selection::InlineFragment(i) => {
                    let applies = i.node.type_condition.as_ref().is_none_or(|c| self.model.applies(c.node.on.node.as_str(), object));
                    if applies {
                        self.collect_into(object, &i.node.selection_set.node, out, seen);
                    }
                }
            }
        }
    }

    fn object(&self, type_name: &str, src: &Src<'a>, sets: &[&'a SelectionSet]) -> Result<Value, Fail> {
        let mut out = IndexMap::new();
        for (key, fields) in self.collect(type_name, sets) {
            let field = fields[0];
            let name = field.name.node.as_str();
            if name == "__typename" {
                out.insert(Name::new(&key), Value::String(type_name.to_string()));
                continue;
            }
            let sub: Vec<&SelectionSet> = fields.iter().map(|f| &f.selection_set.node).collect();
            let (ty, value): (Json, Src<'a>) = match src {
                Src::Data(_) if type_name == self.model.query && (name == "__schema" || name == "__type") => self.root_meta(field, name),
                Src::Data(data) => {
                    let ty = self.model.field_type(type_name, name).ok_or(Unknown)?.clone();
                    let v = match data {
                        Value::Object(m) => m.get(key.as_str()).map_or(Src::Null, Src::Data),
                        _ => Src::Null,
                    };
                    (ty, v)
                }
                Src::Meta(meta) => {
                    let ty = self.model.field_type(type_name, name).ok_or(Unknown)?.clone();
                    (ty, self.meta_field(*meta, field, name)?)
                }
                _ => return Err(Fail::Unknown),
            };
            let v = self.value(&ty, &value, &sub)?;
            out.insert(Name::new(&key), v);
        }
        Ok(Value::Object(out))
    }

    fn root_meta(&self, field: &Field, name: &str) -> (Json, Src<'a>) {
        if name == "__schema" {
            let ty =
                serde_json::json!({ "kind": "NON_NULL", "name": null, "ofType": { "kind": "OBJECT", "name": "__Schema", "ofType": null } });
            return (ty, Src::Meta(Meta::Schema));
        }
        let ty = serde_json::json!({ "kind": "OBJECT", "name": "__Type", "ofType": null });
        let wanted = match self.arg(field, "name") {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        (ty, self.model.types.get(&wanted).map_or(Src::Null, |t| Src::Meta(Meta::Type(t))))
    }

    /// A meta-schema field, as graphql-js's introspection resolvers answer it.
    fn meta_field(&self, meta: Meta<'a>, field: &Field, name: &str) -> Result<Src<'a>, Unknown> {
        let model = self.model;
        let deprecated_too = matches!(self.arg(field, "includeDeprecated"), Some(Value::Boolean(true)));
        let list = |items: &'a Json, wrap: fn(&'a Json) -> Meta<'a>| -> Src<'a> {
            match items.as_array() {
                None => Src::Null,
                Some(a) => Src::MetaList(a.iter().filter(|i| deprecated_too || i["isDeprecated"] != Json::Bool(true)).map(wrap).collect()),
            }
        };
        let leaf = |j: &Json| Src::Leaf(Value::from_json(j.clone()).unwrap_or(Value::Null));
        Ok(match meta {
            Meta::Schema => {
                let s = &model.schema;
                match name {
                    "description" => leaf(&s["description"]),
                    "types" => Src::MetaList(s["types"].as_array().ok_or(Unknown)?.iter().map(Meta::Type).collect()),
                    "queryType" | "mutationType" | "subscriptionType" => {
                        if s[name].is_null() {
                            Src::Null
                        } else {
                            Src::Meta(Meta::Type(model.full(&s[name])))
                        }
                    }
                    "directives" => Src::MetaList(s["directives"].as_array().ok_or(Unknown)?.iter().map(Meta::Directive).collect()),
                    _ => return Err(Unknown),
                }
            }
            Meta::Type(t) => {
                let t = model.full(t);
                match name {
                    "kind" | "name" | "description" | "specifiedByURL" | "isOneOf" => leaf(&t[name]),
                    "fields" => list(&t["fields"], Meta::Field),
                    "inputFields" => list(&t["inputFields"], Meta::InputValue),
                    "enumValues" => list(&t["enumValues"], Meta::EnumValue),
                    "interfaces" | "possibleTypes" => match t[name].as_array() {
                        None => Src::Null,
                        Some(a) => Src::MetaList(a.iter().map(|r| Meta::Type(model.full(r))).collect()),
                    },
                    "ofType" => {
                        if t["ofType"].is_null() {
                            Src::Null
                        } else {
                            Src::Meta(Meta::Type(model.full(&t["ofType"])))
                        }
                    }
                    _ => return Err(Unknown),
                }
            }
            Meta::Field(f) => match name {
                "name" | "description" | "isDeprecated" | "deprecationReason" => leaf(&f[name]),
                "args" => list(&f["args"], Meta::InputValue),
                "type" => Src::Meta(Meta::Type(model.full(&f["type"]))),
                _ => return Err(Unknown),
            },
            Meta::InputValue(v) => match name {
                "name" | "description" | "defaultValue" | "isDeprecated" | "deprecationReason" => leaf(&v[name]),
                "type" => Src::Meta(Meta::Type(model.full(&v["type"]))),
                _ => return Err(Unknown),
            },
            Meta::EnumValue(v) => match name {
                "name" | "description" | "isDeprecated" | "deprecationReason" => leaf(&v[name]),
                _ => return Err(Unknown),
            },
            Meta::Directive(d) => match name {
                "name" | "description" | "isRepeatable" | "locations" => leaf(&d[name]),
                "args" => list(&d["args"], Meta::InputValue),
                _ => return Err(Unknown),
            },
        })
    }

    /// CompleteValue: `ty` is the field's type reference.
    fn value(&self, ty: &Json, src: &Src<'a>, sets: &[&'a SelectionSet]) -> Result<Value, Fail> {
        match ty["kind"].as_str() {
            Some("NON_NULL") => match self.value(&ty["ofType"], src, sets) {
                Ok(Value::Null) | Err(Fail::Propagate) => Err(Fail::Propagate),
                other => other,
            },
            Some("LIST") => {
                let items: Vec<Src<'a>> = match src {
                    Src::Null | Src::Data(Value::Null) | Src::Leaf(Value::Null) => return Ok(Value::Null),
                    Src::Data(Value::List(l)) => l.iter().map(Src::Data).collect(),
                    Src::Leaf(Value::List(l)) => l.iter().cloned().map(Src::Leaf).collect(),
                    Src::MetaList(l) => l.iter().copied().map(Src::Meta).collect(),
                    _ => return Err(Fail::Unknown),
                };
                let mut out = Vec::with_capacity(items.len());
                for item in &items {
                    match self.value(&ty["ofType"], item, sets) {
                        Ok(v) => out.push(v),
                        // an item that must not be null is: the list is null
                        Err(Fail::Propagate) => return Ok(Value::Null),
                        Err(Fail::Unknown) => return Err(Fail::Unknown),
                    }
                }
                Ok(Value::List(out))
            }
            Some("OBJECT" | "INTERFACE" | "UNION") => {
                let name = match src {
                    Src::Null | Src::Data(Value::Null) | Src::Leaf(Value::Null) => return Ok(Value::Null),
                    Src::Meta(m) => m.type_name(),
                    _ => ty["name"].as_str().ok_or(Fail::Unknown)?,
                };
                match self.object(name, src, sets) {
                    Ok(v) => Ok(v),
                    // a non-null field of this object came out null: the object is null
                    Err(Fail::Propagate) => Ok(Value::Null),
                    Err(Fail::Unknown) => Err(Fail::Unknown),
                }
            }
            Some(_) => Ok(match src {
                Src::Data(v) => (*v).clone(),
                Src::Leaf(v) => v.clone(),
                Src::Null => Value::Null,
                _ => return Err(Fail::Unknown),
            }),
            None => Err(Fail::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(query: &str, variables: Json, data: Json) -> Json {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        let data = Value::from_json(data).unwrap();
        shape(Model::recorded(), &doc, None, &Value::from_json(variables).unwrap(), &data).unwrap().into_json().unwrap()
    }

    fn text(query: &str, data: Json) -> String {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        let v = shape(Model::recorded(), &doc, None, &Value::Null, &Value::from_json(data).unwrap()).unwrap();
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn keys_follow_the_selection_not_the_resolution_order() {
        let q = "{ chats { updatedAt id title } b: chats { id } }";
        let data = json!({ "b": [{ "id": "2" }], "chats": [{ "title": null, "id": "1", "updatedAt": "t" }] });
        assert_eq!(text(q, data), r#"{"chats":[{"updatedAt":"t","id":"1","title":null}],"b":[{"id":"2"}]}"#);
    }

    #[test]
    fn a_failed_non_null_field_nulls_its_nearest_nullable_parent() {
        // chat: Chat! failed (left out by async-graphql): data is null, whatever else resolved
        assert_eq!(run("{ chats { id } chat(id: \"x\") { id } }", json!({}), json!({ "chats": [] })), Json::Null);
        // Chat.lastMessage is nullable: a failed non-null field inside it nulls lastMessage only
        let q = "{ chats { id lastMessage { id body } } }";
        let got = run(q, json!({}), json!({ "chats": [{ "id": "1", "lastMessage": { "id": "m" } }] }));
        assert_eq!(got, json!({ "chats": [{ "id": "1", "lastMessage": null }] }));
        // a nullable field left out is null
        let got = run("{ chats { id title } }", json!({}), json!({ "chats": [{ "id": "1" }] }));
        assert_eq!(got, json!({ "chats": [{ "id": "1", "title": null }] }));
    }

    #[test]
    fn fragments_directives_and_aliases() {
        let q = "query($s: Boolean!, $i: Boolean = true) { ...F chats @skip(if: $s) { id } x: chats @include(if: $i) { ... on Chat { title } } }
                 fragment F on Query { chats { isGroup } }";
        let data = json!({ "chats": [{ "isGroup": true }], "x": [{ "title": "t" }] });
        let doc = async_graphql::parser::parse_query(q).unwrap();
        let v = shape(Model::recorded(), &doc, None, &Value::from_json(json!({ "s": true })).unwrap(), &Value::from_json(data).unwrap())
            .unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"chats":[{"isGroup":true}],"x":[{"title":"t"}]}"#);
    }

    #[test]
    fn introspection_comes_from_the_recording() {
        let got = run(
            r#"{ __type(name: "Chat") { name fields { name } } t: __typename nope: __type(name: "Nope") { name } }"#,
            json!({}),
            json!({}),
        );
        let names: Vec<&str> = got["__type"]["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["createdAt", "id", "isGroup", "lastMessage", "members", "title", "unreadCount", "updatedAt"]);
        assert_eq!(got["t"], "Query");
        assert_eq!(got["nope"], Json::Null);
        let got = run("{ __schema { queryType { name fields { name type { kind ofType { name } } } } } }", json!({}), json!({}));
        assert_eq!(
            got["__schema"]["queryType"]["fields"][0],
            json!({ "name": "chat", "type": { "kind": "NON_NULL", "ofType": { "name": "Chat" } } })
        );
    }

    #[test]
    fn the_recording_is_the_schema_the_service_implements() {
        // every object field of the recorded schema exists in async-graphql's schema with the same
        // type (the service cannot drift from the recording unnoticed)
        let sdl =
            async_graphql::Schema::build(crate::schema::Query, crate::schema::Mutation, crate::schema::SubscriptionRoot).finish().sdl();
        let model = Model::recorded();
        for (name, t) in &model.types {
            if name.starts_with("__") || t["kind"] != "OBJECT" && t["kind"] != "INPUT_OBJECT" {
                continue;
            }
            assert!(sdl.contains(&format!(" {name} ")), "{name} missing from the service's schema:\n{sdl}");
            let fields = t["fields"].as_array().or(t["inputFields"].as_array()).unwrap();
            for f in fields {
                let (field, ty) = (f["name"].as_str().unwrap(), type_sdl(&f["type"]));
                let found = sdl.lines().map(str::trim).any(|l| {
                    (l.starts_with(&format!("{field}:")) || l.starts_with(&format!("{field}("))) && l.ends_with(&format!(": {ty}"))
                });
                assert!(found, "{name}.{field}: {ty} missing from the service's schema:\n{sdl}");
            }
        }
    }

    fn type_sdl(t: &Json) -> String {
        match t["kind"].as_str().unwrap() {
            "NON_NULL" => format!("{}!", type_sdl(&t["ofType"])),
            "LIST" => format!("[{}]", type_sdl(&t["ofType"])),
            _ => t["name"].as_str().unwrap().to_string(),
        }
    }
}
