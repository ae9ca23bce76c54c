//! `strangler check`: exit codes and what a reviewer reads.

use std::process::Command;

fn strangler(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strangler")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const GOOD: &str = "[upstreams.legacy]\nurl = \"http://127.0.0.1:3000\"\n[upstreams.auth]\nurl = \"http://127.0.0.1:4001\"\n\n[[routes]]\nname = \"auth\"\nmatch = { path_prefix = \"/auth\" }\ntarget = \"auth\"\nmode = \"shadow\"\n";

#[test]
fn check_accepts_a_valid_file_and_prints_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "routes.toml", GOOD);
    let (code, out, _) = strangler(&["check", &f]);
    assert_eq!(code, 0);
    assert!(out.contains("ok (1 routes, 2 upstreams)"), "{out}");
    assert!(out.contains("auth") && out.contains("path_prefix = /auth"), "{out}");
}

#[test]
fn check_reports_every_error_with_location_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let f =
        write(dir.path(), "routes.toml", &format!("{GOOD}mdoe = \"x\"\npercent = 101\n\n[[routes]]\nname = \"auth\"\ntarget = \"chat\"\n"));
    let (code, _, err) = strangler(&["check", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("routes.toml:11:1: error: unknown key `mdoe`"), "{err}");
    assert!(err.contains("routes.toml:12:11: error: `percent` is 101"), "{err}");
    assert!(err.contains("route name `auth` is used twice"), "{err}");
    assert!(err.contains("unknown upstream `chat`"), "{err}");
    assert!(err.contains("4 errors found"), "{err}");
    let (code, out, _) = strangler(&["check", &f, "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["errors"].as_array().unwrap().len(), 4);
    assert_eq!(v["errors"][0]["line"], 11);
}

#[test]
fn check_against_prints_what_changes() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.toml", GOOD);
    let new = write(dir.path(), "new.toml", &GOOD.replace("mode = \"shadow\"", "mode = \"canary\"\npercent = 5"));
    let (code, out, _) = strangler(&["check", &new, "--against", &old]);
    assert_eq!(code, 0);
    assert!(out.contains("~ route `auth`: mode shadow → canary; percent 0 → 5"), "{out}");
}

/// `--against <(git show main:routes.toml)`: the old version has no folder, so the files it
/// names (a GraphQL schema) are read beside the new one.
#[test]
fn check_against_a_version_elsewhere_reads_its_files_beside_the_new_table() {
    let repo = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("chat.graphql"), "type Query { chats: [ID!]! chat: ID }\ntype Mutation { sendMessage: ID }\n").unwrap();
    let table = |fields: &str| {
        format!(
            "[graphql]\nschema = \"chat.graphql\"\n[upstreams.legacy]\nurl = \"http://127.0.0.1:3000\"\n[upstreams.chat]\nurl = \"http://127.0.0.1:4002\"\n\
             [[routes]]\nname = \"chat\"\nmatch = {{ path = \"/graphql\", graphql_fields = {fields} }}\ntarget = \"chat\"\nmode = \"extracted\"\n"
        )
    };
    let old = write(elsewhere.path(), "routes.toml", &table(r#"["chats"]"#));
    let new = write(repo.path(), "routes.toml", &table(r#"["chats", "chat"]"#));
    let (code, out, err) = strangler(&["check", &new, "--against", &old]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("invalid"), "{err}");
    assert!(out.contains("~ GraphQL field `chat` on /graphql: the default upstream → route `chat`"), "{out}");
}

/// The other way round (a generated table checked against the repository's): the new table's
/// folder lacks the schema, the old one's own folder has it.
#[test]
fn check_against_a_table_in_its_own_folder_reads_its_files_there() {
    let repo = tempfile::tempdir().unwrap();
    let generated = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("chat.graphql"), "type Query { chats: [ID!]! chat: ID }\ntype Mutation { sendMessage: ID }\n").unwrap();
    let table = |schema: &str, mode: &str| {
        format!(
            "[graphql]\nschema = \"{schema}\"\n[upstreams.legacy]\nurl = \"http://127.0.0.1:3000\"\n[upstreams.chat]\nurl = \"http://127.0.0.1:4002\"\n\
             [[routes]]\nname = \"chat\"\nmatch = {{ path = \"/graphql\", graphql_fields = [\"chats\"] }}\ntarget = \"chat\"\nmode = \"{mode}\"\n"
        )
    };
    let old = write(repo.path(), "routes.toml", &table("chat.graphql", "extracted"));
    let schema = repo.path().join("chat.graphql");
    let new = write(generated.path(), "routes.toml", &table(&schema.to_string_lossy(), "legacy"));
    let (code, out, err) = strangler(&["check", &new, "--against", &old]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("invalid"), "{err}");
    assert!(out.contains("route `chat`: mode extracted → legacy"), "{out}");
}

#[test]
fn unreadable_file_exits_2() {
    let (code, _, err) = strangler(&["check", "/nonexistent/routes.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("reading /nonexistent/routes.toml"), "{err}");
}

/// `strangler schema` prints what docs/routes.schema.json holds (the unit tests in
/// config/json_schema.rs hold that file to the compiler).
#[test]
fn schema_prints_the_json_schema_the_repository_keeps() {
    let (code, out, err) = strangler(&["schema"]);
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/routes.schema.json")).unwrap();
    assert_eq!(out, committed);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["$schema"], "http://json-schema.org/draft-07/schema#");
    assert!(v["definitions"]["Route"]["properties"]["mode"]["enum"].as_array().is_some_and(|m| m.len() == 4), "{v}");
}

/// `--format markdown`: the comment a pull request gets; the same exit codes as the text.
#[test]
fn check_against_prints_markdown_for_a_pull_request() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.toml", GOOD);
    let new = write(dir.path(), "new.toml", &GOOD.replace("mode = \"shadow\"", "mode = \"canary\"\npercent = 5"));
    let (code, out, err) = strangler(&["check", &new, "--against", &old, "--format", "markdown"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("### `{new}`: 1 route changes\n")), "{out}");
    assert!(out.contains("| ~ | `auth` | `auth` · shadow | **`auth` · canary 5%** | mode shadow → canary; percent 0 → 5 |"), "{out}");
    assert!(err.is_empty(), "{err}");

    let broken = write(dir.path(), "broken.toml", &format!("{GOOD}mdoe = \"x\"\n"));
    let (code, out, _) = strangler(&["check", &broken, "--against", &old, "--format", "markdown"]);
    assert_eq!(code, 1);
    assert!(out.contains(&format!("- **`{broken}:11:1`** unknown key `mdoe` in routes[1]")), "{out}");
    assert!(out.contains("  hint: did you mean `mode`?"), "{out}");

    let (code, _, err) = strangler(&["check", &new, "--json", "--format", "markdown"]);
    assert_eq!(code, 2, "{err}");
}
