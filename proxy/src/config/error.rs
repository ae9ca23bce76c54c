//! Configuration errors that point at the file, line and column of the problem and say what
//! to do about it.
//!
//! Each error carries a [`Location`] computed from the byte span toml gave us, plus a one-line
//! snippet of the raw text with a caret underline, so an engineer can fix the file without
//! opening it. Hints live with the error kind, so every place that raises one gets the same
//! advice.

use std::fmt;
use std::ops::Range;

/// `routes.toml:14:10`: a place in a configuration file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The text of a configuration file, with its name, for turning spans into locations.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Self {
        Source { name, text }
    }

    pub fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        Location { file: self.name.to_string(), line, column }
    }

    /// The source line containing `span.start`, with a caret underline of the span.
    fn snippet(&self, span: &Range<usize>) -> String {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let line = &self.text[line_start..line_end];
        let loc = self.locate(start);
        let width = self.text[start..span.end.clamp(start, line_end)].chars().count().max(1);
        let gutter = loc.line.to_string();
        format!(
            "{gutter} | {line}\n{pad} | {space}{carets}",
            pad = " ".repeat(gutter.len()),
            space = " ".repeat(loc.column - 1),
            carets = "^".repeat(width)
        )
    }

    pub fn error(&self, span: Range<usize>, kind: ConfigErrorKind) -> ConfigError {
        ConfigError { at: self.locate(span.start), snippet: self.snippet(&span), kind }
    }
}

/// What is wrong. Messages are lowercase without a trailing period; [`ConfigErrorKind::hint`]
/// says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    #[error("{0}")]
    Syntax(String),
    #[error("unknown key `{key}` in {section}")]
    UnknownKey { key: String, section: String, suggestion: Option<String>, allowed: Vec<String> },
    #[error("{0}")]
    Type(String),
    #[error("route `{route}` targets unknown upstream `{name}`")]
    UnknownUpstream { route: String, name: String, known: Vec<String> },
    #[error("default upstream `{name}` is not defined")]
    UnknownDefaultUpstream { name: String, known: Vec<String> },
    #[error("no default upstream: unmatched requests would have nowhere to go")]
    NoDefaultUpstream,
    #[error("route name `{name}` is used twice (first at line {first_line})")]
    DuplicateRoute { name: String, first_line: usize },
    #[error("route name `{0}` is not valid")]
    BadRouteName(String),
    #[error("`percent` is {got}; expected 0..=100")]
    PercentOutOfRange { got: i64 },
    #[error("mode `canary` needs `percent`")]
    CanaryWithoutPercent,
    #[error("unknown mode `{0}`")]
    UnknownMode(String),
    #[error("bad upstream url `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("bad {what} `{value}`: {reason}")]
    BadValue { what: &'static str, value: String, reason: String },
    #[error("`{key}` is {got}; expected {expected}")]
    OutOfRange { key: &'static str, got: i64, expected: &'static str },
    #[error("route `{route}` can never match: route `{by}` (line {by_line}) matches everything it does and comes first")]
    Unreachable { route: String, by: String, by_line: usize },
    #[error("route `{0}` sets both `path` and `path_prefix`")]
    BothPaths(String),
    #[error("unknown sticky key `{0}`")]
    BadSticky(String),
    #[error("listener address `{0}` is used twice")]
    DuplicateListener(String),
    #[error("the admin listener `{0}` is not on loopback and no `token_env` is set")]
    AdminNeedsToken(String),
    #[error("shadow store `postgres` needs `database_url_env`")]
    StoreNeedsDatabase,
    #[error("route `{route}` would send dry-run copies of writes to upstream `{upstream}`, which does not declare `dry_run = true`")]
    DryRunUnsupported { route: String, upstream: String, why: &'static str },
    #[error("route `{0}` claims GraphQL fields without an exact `path`")]
    GraphQlNeedsPath(String),
    #[error("route `{0}` claims GraphQL fields and also matches on methods, host or headers")]
    GraphQlWithConditions(String),
    #[error("cannot use the GraphQL schema `{file}`: {reason}")]
    SchemaUnreadable { file: String, reason: String },
    #[error("GraphQL field `{field}` of route `{route}` is already claimed by route `{by}` (line {by_line})")]
    FieldClaimedTwice { field: String, route: String, by: String, by_line: usize },
    #[error("`{field}` is not a root field of the schema `{schema}`")]
    UnknownField { field: String, schema: String, suggestion: Option<String> },
    #[error("routes `{by}` and `{route}` both claim subscription fields on `{path}`, but a WebSocket can only go to one")]
    TwoWebSocketOwners { path: String, route: String, by: String },
    #[error("route `{route}` names stage `{stage}`, which [plan] does not declare")]
    UnknownStage { route: String, stage: String, suggestion: Option<String>, known: Vec<String> },
    #[error("stage `{name}` is declared twice (first at line {first_line})")]
    DuplicateStage { name: String, first_line: usize },
}

impl ConfigErrorKind {
    pub fn hint(&self) -> Option<String> {
        use ConfigErrorKind::*;
        Some(match self {
            Syntax(_) => "fix the TOML syntax at this place".into(),
            UnknownKey { suggestion: Some(s), .. } => format!("did you mean `{s}`?"),
            UnknownKey { allowed, .. } => format!("allowed keys here: {}", allowed.join(", ")),
            Type(_) => "fix the value's type (strings are quoted, numbers are not)".into(),
            UnknownUpstream { name, known, .. } if known.is_empty() => format!("add [upstreams.{name}] with its url"),
            UnknownUpstream { name, known, .. } => {
                format!("add [upstreams.{name}] or use one of: {}", known.join(", "))
            }
            UnknownDefaultUpstream { name, known } => {
                format!("add [upstreams.{name}] or set [server] default_upstream to one of: {}", known.join(", "))
            }
            NoDefaultUpstream => "set [server] default_upstream, or define an upstream named `legacy`".into(),
            DuplicateRoute { .. } => "route names appear in metrics and reports: give each route its own".into(),
            BadRouteName(_) => "use letters, digits, `-`, `_` and `.` (it becomes a metric label)".into(),
            PercentOutOfRange { .. } => "use a whole number from 0 to 100".into(),
            CanaryWithoutPercent => "add `percent = 5` (the share of users sent to the extracted service)".into(),
            UnknownMode(_) => "use one of: legacy, shadow, canary, extracted".into(),
            BadUrl { .. } => "write it as http://host:port or https://host:port".into(),
            BadValue { .. } | OutOfRange { .. } => return None,
            Unreachable { by, .. } => {
                format!("move this route above `{by}`, or make `{by}` narrower (methods, host, headers)")
            }
            BothPaths(_) => "keep `path` for one exact path or `path_prefix` for a subtree".into(),
            BadSticky(_) => "use jwt_sub, client_ip, header:NAME or cookie:NAME".into(),
            DuplicateListener(_) => "remove one of the [[listeners]] entries".into(),
            AdminNeedsToken(_) => "set [admin] token_env = \"STRANGLER_ADMIN_TOKEN\" (and that variable), or bind it to 127.0.0.1".into(),
            StoreNeedsDatabase => {
                "add database_url_env = \"STRANGLER_SHADOW_DATABASE_URL\" and set that variable to the database URL".into()
            }
            GraphQlNeedsPath(_) => {
                "write `match = { path = \"/graphql\", graphql_fields = [...] }`: fields are claimed on one endpoint".into()
            }
            GraphQlWithConditions(_) => {
                "drop `methods`, `host` and `headers`: a GraphQL route is chosen by the operation's root fields (GET and POST alike)".into()
            }
            SchemaUnreadable { .. } => {
                "fix `[graphql] schema` (a path relative to this file, to an SDL file such as docs/api/chat.graphql)".into()
            }
            FieldClaimedTwice { by, .. } => format!("a root field has one owner: remove it from this route or from `{by}`"),
            UnknownField { suggestion: Some(s), .. } => format!("did you mean `{s}`?"),
            UnknownField { .. } => "claim only root fields of Query, Mutation or Subscription".into(),
            TwoWebSocketOwners { .. } => "claim all subscription fields of one endpoint in one route".into(),
            UnknownStage { suggestion: Some(s), .. } => format!("did you mean `{s}`?"),
            UnknownStage { stage, known, .. } if known.is_empty() => {
                format!("declare the plan's stages in order: [plan] stages = [{{ name = \"{stage}\", services = [\"…\"] }}, …]")
            }
            UnknownStage { known, .. } => format!("use one of: {}, or add the stage to [plan] stages", known.join(", ")),
            DuplicateStage { .. } => "each stage appears once in [plan] stages, in the order the migration runs".into(),
            DryRunUnsupported { upstream, why, .. } => format!(
                "{why}; an upstream that ignores the dry-run header would run each copy for real (a second write). \
                 Set `dry_run = true` on [upstreams.{upstream}] only if it rolls dry runs back (services built on \
                 bm-common do), or use writes = \"skip\""
            ),
        })
    }
}

/// One error, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub at: Location,
    pub snippet: String,
    pub kind: ConfigErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}\n{}", self.at, self.kind, self.snippet)?;
        if let Some(hint) = self.kind.hint() {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every error of one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{e}")?;
        }
        write!(f, "{} error{} found", self.0.len(), if self.0.len() == 1 { "" } else { "s" })
    }
}

impl std::error::Error for ConfigErrors {}

/// Something that is valid but probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub at: Location,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.at, self.message)
    }
}
