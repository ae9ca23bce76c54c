//! `strangler check --format markdown`: what `check` finds, as a pull-request comment.
//!
//! The text output is for a terminal; a reviewer reads the same facts on a pull request, where a
//! table says more at a glance: one row per route that changes, with its target and mode before
//! and after, then GraphQL fields that change owner, the other changes (upstreams, settings that
//! need a restart), warnings, and the whole routing after the change, folded. An invalid file
//! gets its errors with `file:line:col`, the quoted line and the hint, as `check` prints them.
//! Pure: it renders values `check` already computed ([`RouteTable::diff`], the compile result).

use std::fmt::Write;

use super::diff::{Change, RoutingDiff};
use super::error::ConfigErrors;
use super::model::{Mode, Route, RouteTable};
use super::Compiled;

/// What `strangler check` found, for rendering.
pub struct CheckReport<'a> {
    /// The file checked, as it was named on the command line.
    pub file: &'a str,
    pub new: Result<&'a Compiled, &'a ConfigErrors>,
    /// The name of the `--against` version.
    pub against: Option<&'a str>,
    /// Its table, or its errors when it does not compile (`None`: not compiled, as while the new
    /// file has errors).
    pub old: Option<Result<&'a RouteTable, &'a ConfigErrors>>,
}

impl CheckReport<'_> {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let file = code(self.file);
        let compiled = match self.new {
            Ok(c) => c,
            Err(errors) => {
                let n = errors.0.len();
                let _ = writeln!(out, "### {file} is invalid: {n} error{}\n", plural(n));
                if let Some(against) = self.against {
                    let _ = writeln!(out, "Nothing is compared with {} until it compiles.\n", code(against));
                }
                errors_list(&mut out, errors);
                return out;
            }
        };
        let table = &compiled.table;
        let shape = format!(
            "{} route{}, {} upstream{}",
            table.routes.len(),
            plural(table.routes.len()),
            table.upstreams.len(),
            plural(table.upstreams.len())
        );
        match (self.against, &self.old) {
            (None, _) | (_, None) => {
                let _ = writeln!(out, "### {file} is valid\n\n{shape}.\n");
                warnings(&mut out, compiled);
                routing(&mut out, table);
            }
            (Some(old), Some(Err(errors))) => {
                let _ = writeln!(out, "### {file} is valid\n\n{shape}.\n");
                let n = errors.0.len();
                let _ = writeln!(
                    out,
                    "> {} does not compile ({n} error{}), so the changes cannot be shown; its first error:\n> `{}: {}`\n",
                    code(old),
                    plural(n),
                    errors.0[0].at,
                    errors.0[0].kind
                );
                warnings(&mut out, compiled);
                routing(&mut out, table);
            }
            (Some(old_name), Some(Ok(old))) => {
                let diff = RouteTable::diff(old, table);
                let (routes, graphql, other) = split(&diff, old, table);
                if diff.is_empty() {
                    let _ = writeln!(out, "### {file}: no routing changes\n");
                } else {
                    let n = routes.len();
                    let _ = writeln!(out, "### {file}: {n} route{} change{}\n", plural(n), if n == 1 { "s" } else { "" });
                }
                let _ = writeln!(out, "Against {}; the new table is valid: {shape}.\n", code(old_name));
                route_changes(&mut out, &routes, old, table);
                graphql_moves(&mut out, &graphql);
                if !other.is_empty() {
                    let _ = writeln!(out, "**Other changes**\n");
                    for c in other {
                        // the words of the text diff and the reload log, its sign set apart
                        let text = c.to_string();
                        let line = match text.split_once(' ') {
                            Some((sign @ ("+" | "-" | "~" | "!"), rest)) => format!("`{sign}` {rest}"),
                            _ => text,
                        };
                        let _ = writeln!(out, "- {}", inline(&line));
                    }
                    out.push('\n');
                }
                warnings(&mut out, compiled);
                let _ = writeln!(out, "<details><summary>The routing after this change</summary>\n");
                routing(&mut out, table);
                let _ = writeln!(out, "</details>");
            }
        }
        out
    }
}

/// What happens to one route: the lines of the diff that name it, in the diff's order.
struct RouteRow<'a> {
    name: &'a str,
    sign: &'static str,
    what: Vec<String>,
}

/// The diff in three parts: per route, GraphQL field moves, and the rest.
fn split<'a>(diff: &'a RoutingDiff, old: &RouteTable, new: &RouteTable) -> (Vec<RouteRow<'a>>, Vec<&'a Change>, Vec<&'a Change>) {
    let mut rows: Vec<RouteRow<'a>> = Vec::new();
    let (mut graphql, mut other) = (Vec::new(), Vec::new());
    for c in &diff.changes {
        let (name, sign, what) = match c {
            Change::RouteAdded { route, summary } => (route, "+", format!("added: {summary}")),
            Change::RouteRemoved { route, .. } => {
                (route, "−", "removed: its requests go to the next matching route or the default upstream".to_string())
            }
            // `[graphql]`, `[plan]`: changes to a table of the file, not to a route
            Change::RouteChanged { route, what } if old.route(route).is_some() && new.route(route).is_some() => {
                (route, "~", what.join("; "))
            }
            Change::RouteMoved { route, from, to } => (route, "~", format!("moved from position {from} to {to}")),
            Change::GraphQlFieldMoved { .. } => {
                graphql.push(c);
                continue;
            }
            _ => {
                other.push(c);
                continue;
            }
        };
        match rows.iter_mut().find(|r| r.name == name.as_str()) {
            Some(row) => row.what.push(what),
            None => rows.push(RouteRow { name, sign, what: vec![what] }),
        }
    }
    (rows, graphql, other)
}

fn route_changes(out: &mut String, rows: &[RouteRow<'_>], old: &RouteTable, new: &RouteTable) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "| | route | before | after | what changes |\n|:-:|---|---|---|---|");
    for row in rows {
        let before = old.route(row.name).map(|r| target_and_mode(r));
        let after = new.route(row.name).map(|r| target_and_mode(r));
        // what the route's requests meet changes: say it loudly
        let after_cell = match (&before, &after) {
            (_, None) => "—".to_string(),
            (Some(b), Some(a)) if a == b => a.clone(),
            (_, Some(a)) => format!("**{a}**"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {after_cell} | {} |",
            row.sign,
            code(row.name),
            before.unwrap_or_else(|| "—".into()),
            cell(&row.what.join("; "))
        );
    }
    out.push('\n');
}

fn graphql_moves(out: &mut String, moves: &[&Change]) {
    if moves.is_empty() {
        return;
    }
    let _ = writeln!(out, "**GraphQL fields that change owner**\n\n| path | field | before | after |\n|---|---|---|---|");
    let owner = |r: &Option<String>| r.as_ref().map_or_else(|| "the default upstream".to_string(), |r| format!("route {}", code(r)));
    for c in moves {
        if let Change::GraphQlFieldMoved { path, field, from, to } = c {
            let _ = writeln!(out, "| {} | {} | {} | {} |", code(path), code(field), owner(from), owner(to));
        }
    }
    out.push('\n');
}

fn warnings(out: &mut String, compiled: &Compiled) {
    if compiled.warnings.is_empty() {
        return;
    }
    let _ = writeln!(out, "**Warnings**\n");
    for w in &compiled.warnings {
        let _ = writeln!(out, "- {} {}", code(&w.at.to_string()), inline(&w.message));
    }
    out.push('\n');
}

fn errors_list(out: &mut String, errors: &ConfigErrors) {
    for e in &errors.0 {
        // as `check` prints it: the place and message, the line with a caret under the problem,
        // the hint, each a paragraph of the list item
        let _ = writeln!(out, "- **{}** {}", code(&e.at.to_string()), inline(&e.kind.to_string()));
        let fence = "`".repeat(3.max(longest_run(&e.snippet, '`') + 1));
        let _ = writeln!(out, "\n  {fence}text");
        for line in e.snippet.lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "  {fence}\n");
        if let Some(hint) = e.kind.hint() {
            let _ = writeln!(out, "  hint: {}\n", inline(&hint));
        }
    }
}

/// Every route in file order, then where the rest goes.
fn routing(out: &mut String, table: &RouteTable) {
    let _ = writeln!(out, "| route | match | target | mode |\n|---|---|---|---|");
    for r in &table.routes {
        let mode = match r.mode {
            Mode::Canary => format!("canary {}% (sticky {})", r.percent.get(), r.sticky),
            Mode::Extracted if !r.fallback => "extracted (no fallback)".to_string(),
            m => m.to_string(),
        };
        let _ = writeln!(out, "| {} | {} | {} | {mode} |", code(r.name.as_str()), code(&r.matcher.to_string()), code(r.target.as_str()));
    }
    let _ = writeln!(out, "| (unmatched) | anything else | {} | |\n", code(table.default_upstream.as_str()));
}

fn target_and_mode(r: &Route) -> String {
    match r.mode {
        Mode::Canary => format!("{} · canary {}%", code(r.target.as_str()), r.percent.get()),
        m => format!("{} · {m}", code(r.target.as_str())),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `text` as a code span, whatever backticks it holds, safe in a table cell.
fn code(text: &str) -> String {
    let ticks = "`".repeat(longest_run(text, '`') + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    cell(&format!("{ticks}{pad}{text}{pad}{ticks}"))
}

/// Text for a table cell: a `|` would end the cell, a line break the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Text on one line of a list item.
fn inline(text: &str) -> String {
    text.replace('\n', " ")
}

fn longest_run(text: &str, c: char) -> usize {
    text.split(|x| x != c).map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::{RouteTable, Source};
    use super::*;

    const UPSTREAMS: &str = "[upstreams.legacy]\nurl = \"http://127.0.0.1:3000\"\n\n[upstreams.auth]\nurl = \"http://127.0.0.1:4001\"\n";

    fn compile(name: &str, text: &str) -> Result<Compiled, ConfigErrors> {
        RouteTable::compile(Source::new(name, text))
    }

    const OLD: &str = r#"
[[routes]]
name = "auth"
match = { path_prefix = "/auth" }
target = "auth"
mode = "shadow"

[[routes]]
name = "users"
match = { path_prefix = "/users" }
target = "auth"

[[routes]]
name = "old"
match = { path = "/old" }
target = "auth"
mode = "extracted"

[[routes]]
name = "chat"
match = { path = "/graphql", graphql_fields = ["chats"] }
target = "chat"
mode = "shadow"
"#;

    const NEW: &str = r#"
[[listeners]]
addr = "0.0.0.0:8080"

[upstreams.chat]
url = "http://127.0.0.1:4002"

[upstreams.pay]
url = "http://127.0.0.1:4003"

[[routes]]
name = "users"
match = { path_prefix = "/users", methods = ["GET"] }
target = "auth"
percent = 10

[[routes]]
name = "auth"
match = { path_prefix = "/auth" }
target = "auth"
mode = "canary"
percent = 5

[[routes]]
name = "chat"
match = { path = "/graphql", graphql_fields = ["chats", "sendMessage"] }
target = "chat"
mode = "shadow"

[[routes]]
name = "pay"
match = { path_prefix = "/pay" }
target = "pay"
mode = "shadow"
"#;

    fn old_text() -> String {
        format!("{UPSTREAMS}\n[upstreams.chat]\nurl = \"http://127.0.0.1:4002\"\n{OLD}")
    }

    fn new_text() -> String {
        format!("{UPSTREAMS}{NEW}")
    }

    #[test]
    fn a_change_reads_as_a_table_of_routes_before_and_after() {
        let (old, new) = (compile("main:routes.toml", &old_text()).unwrap(), compile("routes.toml", &new_text()).unwrap());
        let report = CheckReport { file: "routes.toml", new: Ok(&new), against: Some("main:routes.toml"), old: Some(Ok(&old.table)) };
        insta::assert_snapshot!("changes", report.markdown());
    }

    #[test]
    fn no_change_says_so() {
        let t = compile("routes.toml", &new_text()).unwrap();
        let report = CheckReport { file: "routes.toml", new: Ok(&t), against: Some("main:routes.toml"), old: Some(Ok(&t.table)) };
        insta::assert_snapshot!("no_changes", report.markdown());
    }

    #[test]
    fn without_an_old_version_the_routing_is_shown() {
        let t = compile("routes.toml", &old_text()).unwrap();
        insta::assert_snapshot!("valid", CheckReport { file: "routes.toml", new: Ok(&t), against: None, old: None }.markdown());
    }

    #[test]
    fn errors_come_with_their_place_line_and_hint() {
        let bad = format!("{UPSTREAMS}\n[[routes]]\nname = \"auth\"\nmatch = {{ path_prefx = \"/auth\" }}\ntarget = \"auht\"\nmode = \"canary\"\npercent = 140\n");
        let errors = compile("routes.toml", &bad).unwrap_err();
        let old = compile("main:routes.toml", &old_text()).unwrap();
        let report = CheckReport { file: "routes.toml", new: Err(&errors), against: Some("main:routes.toml"), old: Some(Ok(&old.table)) };
        insta::assert_snapshot!("errors", report.markdown());
    }

    #[test]
    fn an_old_version_that_does_not_compile_is_named() {
        let errors = compile("old.toml", "[[routes]]\nname = \"a\"\ntarget = \"gone\"\n").unwrap_err();
        let t = compile("routes.toml", &old_text()).unwrap();
        let text = CheckReport { file: "routes.toml", new: Ok(&t), against: Some("old.toml"), old: Some(Err(&errors)) }.markdown();
        assert!(text.starts_with("### `routes.toml` is valid\n"), "{text}");
        assert!(text.contains("> `old.toml` does not compile (2 errors), so the changes cannot be shown"), "{text}");
    }

    #[test]
    fn code_spans_hold_backticks_and_pipes() {
        assert_eq!(code("auth"), "`auth`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(code("x-h = a|b"), "`x-h = a\\|b`");
    }
}
