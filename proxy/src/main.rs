//! The `strangler` binary: `serve`, `check`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use strangler::cli::stored::StoredRecords;
use strangler::config::{RouteTable, Source};

// mimalloc: the proxy allocates and frees small buffers per request; glibc malloc was ~20% of
// CPU under load (perf, docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an invalid configuration.
const EXIT_INVALID: u8 = 1;
/// Exit code when the command could not run at all (unreadable file, bad arguments).
const EXIT_FAILURE: u8 = 2;

#[derive(Parser)]
#[command(name = "strangler", version, about = "Edge proxy that strangles a monolith one route at a time")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STRANGLER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Markdown,
    Junit,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where stored comparisons are read from: exactly one of the three.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct StoreSource {
    /// The JSONL shadow store folder (or one JSONL file).
    #[arg(long)]
    store: Option<PathBuf>,
    /// The environment variable holding the Postgres URL of the shared store
    /// (`[shadow] store = "postgres"`).
    #[arg(long, value_name = "NAME")]
    database_url_env: Option<String>,
    /// The Postgres URL of the shared store (prefer --database-url-env: command lines are
    /// visible to other users of the machine).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

impl StoreSource {
    fn open(self) -> anyhow::Result<StoredRecords> {
        use strangler::shadow::store::postgres::Database;
        Ok(match (self.store, self.database_url_env, self.database_url) {
            (Some(dir), None, None) => StoredRecords::Jsonl(dir),
            (None, Some(var), None) => StoredRecords::Postgres(Box::new(Database::from_env(&var)?)),
            (None, None, Some(url)) => StoredRecords::Postgres(Box::new(Database::from_url(&url).context("--database-url")?)),
            _ => anyhow::bail!("give exactly one of --store, --database-url-env, --database-url"),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the route table; reloads on file change, SIGHUP and POST /reload.
    Serve {
        /// The route table.
        #[arg(long, short, default_value = "routes.toml", env = "STRANGLER_CONFIG")]
        config: PathBuf,
        /// How often the file is re-read in case a file-system event was missed.
        #[arg(long, default_value_t = 2)]
        poll_interval_secs: u64,
        /// Write the addresses the listeners and the admin API got (JSON) to this file once they
        /// are known: with `addr = "127.0.0.1:0"` in the file, the port the system chose.
        #[arg(long, value_name = "FILE")]
        bound_addrs_file: Option<PathBuf>,
    },
    /// Summarise stored shadow comparisons: parity per route, mismatching fields, noise.
    Report {
        #[command(flatten)]
        source: StoreSource,
        /// Only comparisons recorded at or after this time (RFC 3339, e.g. 2025-01-31T00:00:00Z).
        #[arg(long, value_parser = parse_since)]
        since: Option<strangler::shadow::store::Since>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
        format: ReportFormat,
        /// Routes below this parity (percent) fail: exit 1, failing JUnit test case.
        #[arg(long, default_value_t = 100.0)]
        min_parity: f64,
        /// Write the report here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Replay a cut-over corpus (shadow-tests/<cut-over>/) through the monolith and the
    /// candidate; write reports; exit 1 below the folder's parity threshold.
    Replay {
        dir: PathBuf,
        /// The monolith's base URL (default: legacy_url in parity.toml).
        #[arg(long)]
        legacy: Option<String>,
        /// The candidate's base URL (default: candidate_url in parity.toml).
        #[arg(long)]
        candidate: Option<String>,
        /// Where report.md, report.junit.xml and report.json go (default: print Markdown).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Extract a route's recorded requests from a shadow store as a replay corpus (JSONL).
    Corpus {
        #[command(flatten)]
        source: StoreSource,
        #[arg(long)]
        route: String,
        /// Also keep this route's requests, marked as setup: replayed to the monolith only,
        /// not compared (a session's sign-in before the route's requests). Repeatable.
        #[arg(long)]
        setup: Vec<String>,
    },
    /// Print the JSON Schema of routes.toml, for editors (docs/routes.schema.json is a copy;
    /// docs/routes.md says how an editor picks it up).
    Schema,
    /// Validate a route table and print it; with --against, print what it changes.
    Check {
        file: PathBuf,
        /// The previous version (e.g. from `git show main:routes.toml`): print the routing diff.
        #[arg(long)]
        against: Option<PathBuf>,
        /// text for a terminal, json for tools, markdown for a pull-request comment (a table of
        /// the routes that change, before and after; errors with file:line:col).
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
        /// Same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
    },
    /// The migration's progress: per stage of the plan and per route, who answered the requests
    /// (service, monolith, fallback), each mode and since when, parity, breakers, demotions, and
    /// the endpoints the monolith still answers. From a running proxy (--admin), or from a route
    /// table and a shadow store (--config with --store or --database-url-env: no traffic).
    Plan {
        /// The proxy's admin API, e.g. http://127.0.0.1:9901.
        #[arg(long, value_name = "URL", required_unless_present = "config")]
        admin: Option<String>,
        /// The environment variable holding the admin token, when the proxy's [admin] has
        /// token_env (read only if set).
        #[arg(long, value_name = "NAME", default_value = "STRANGLER_ADMIN_TOKEN")]
        token_env: String,
        /// Without --admin: the route table to report on.
        #[arg(long, value_name = "FILE", conflicts_with = "admin")]
        config: Option<PathBuf>,
        #[command(flatten)]
        store: PlanStore,
        /// Only comparisons recorded at or after this time (RFC 3339), with a store.
        #[arg(long, value_parser = parse_since)]
        since: Option<strangler::shadow::store::Since>,
        /// Print JSON (the admin API's GET /plan) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Where `strangler plan` reads parity from instead of the proxy's own: at most one store.
#[derive(Args)]
#[group(required = false, multiple = false)]
struct PlanStore {
    /// A JSONL shadow store folder (or one JSONL file).
    #[arg(long = "store", value_name = "DIR")]
    plan_store: Option<PathBuf>,
    /// The environment variable holding the Postgres URL of the shared store.
    #[arg(long = "database-url-env", value_name = "NAME")]
    plan_database_url_env: Option<String>,
}

impl PlanStore {
    fn open(self) -> anyhow::Result<Option<StoredRecords>> {
        use strangler::shadow::store::postgres::Database;
        Ok(match (self.plan_store, self.plan_database_url_env) {
            (Some(dir), _) => Some(StoredRecords::Jsonl(dir)),
            (None, Some(var)) => Some(StoredRecords::Postgres(Box::new(Database::from_env(&var)?))),
            (None, None) => None,
        })
    }
}

/// Logs to stderr, filtered by `STRANGLER_LOG` (default `info`), through the buffered
/// [`strangler::accesslog`] (lines dropped and counted under pressure, access lines first, never
/// waited for). Colours only on a terminal. Keep the guard until the process ends: it flushes.
fn init_logging(format: LogFormat) -> strangler::accesslog::Guard {
    use std::io::IsTerminal;
    use strangler::accesslog::is_access;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("STRANGLER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (log, guard) = strangler::accesslog::start(std::io::stderr());
    strangler::accesslog::install_direct(&log, matches!(format, LogFormat::Json));
    let (access, other) = (log.access(), log.other());
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(other).with_filter(filter_fn(|m| !is_access(m))))
            .with(fmt::layer().with_ansi(ansi).with_writer(access).with_filter(filter_fn(is_access)))
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_writer(other).with_filter(filter_fn(|m| !is_access(m))))
            .with(fmt::layer().json().flatten_event(true).with_writer(access).with_filter(filter_fn(is_access)))
            .init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log = init_logging(cli.log_format);
    match cli.command {
        Command::Serve { config, poll_interval_secs, bound_addrs_file } => {
            let opts =
                strangler::serve::ServeOptions { config, poll_interval: Duration::from_secs(poll_interval_secs.max(1)), bound_addrs_file };
            match strangler::serve::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is::<strangler::serve::StartupConfigError>() => {
                    eprintln!("{e}\nstrangler: not starting: the configuration is invalid");
                    ExitCode::from(EXIT_INVALID)
                }
                Err(e) => {
                    eprintln!("strangler: {e:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Report { source, since, format, min_parity, out } => match report(source, since, format, min_parity, out.as_deref()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("strangler: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Replay { dir, legacy, candidate, out } => match replay(&dir, legacy, candidate, out.as_deref()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("strangler: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Corpus { source, route, setup } => match corpus(source, &route, &setup) {
            Ok(lines) => match print_out(&lines.iter().map(|l| format!("{l}\n")).collect::<String>()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strangler: {e:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            },
            Err(e) => {
                eprintln!("strangler: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Schema => match print_out(&strangler::config::routes_schema_text()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strangler: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Check { file, against, format, json } => {
            match check(&file, against.as_deref(), if json { CheckFormat::Json } else { format }) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("strangler: {e:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Plan { admin, token_env, config, store, since, json } => match plan(admin, &token_env, config, store, since, json) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("strangler: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}

fn plan(
    admin: Option<String>,
    token_env: &str,
    config: Option<PathBuf>,
    store: PlanStore,
    since: Option<strangler::shadow::store::Since>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use strangler::shadow::store::Filter;
    let store = store.open()?;
    let report = block_on(async {
        let stored = match &store {
            Some(s) => Some(s.summarize(&Filter { since, route: None }).await.context("reading the shadow store")?.0),
            None => None,
        };
        let report = match (&admin, &config) {
            (Some(admin), _) => {
                let token = std::env::var(token_env).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
                strangler::cli::plan::fetch(admin, token.as_deref(), token_env).await?
            }
            (None, Some(path)) => {
                let table = match compile(path, None)? {
                    Ok(c) => c.table,
                    Err(errors) => anyhow::bail!("{errors}"),
                };
                if stored.is_none() {
                    eprintln!("note: no --store or --database-url-env: parity is not known without a running proxy");
                }
                strangler::cli::plan::offline(&table, &path.display().to_string(), &stored.clone().unwrap_or_default())
            }
            (None, None) => anyhow::bail!("give --admin URL (a running proxy) or --config FILE"),
        };
        Ok(match &stored {
            Some(summary) => report.with_parity(summary),
            None => report,
        })
    })?;
    if json {
        print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        print_out(&report.text())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_since(s: &str) -> Result<strangler::shadow::store::Since, String> {
    sqlx::types::chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&sqlx::types::chrono::Utc))
        .map_err(|e| format!("{e}; expected RFC 3339, such as 2025-01-31T00:00:00Z"))
}

/// A current-thread runtime for the database readers.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn corpus(source: StoreSource, route: &str, setup: &[String]) -> anyhow::Result<Vec<String>> {
    let store = source.open()?;
    block_on(store.corpus(route, setup))
}

fn report(
    source: StoreSource,
    since: Option<strangler::shadow::store::Since>,
    format: ReportFormat,
    min_parity: f64,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use strangler::shadow::{report, store::Filter};
    let store = source.open()?;
    let (summary, read, bad) = block_on(store.summarize(&Filter { since, route: None })).context("reading the shadow store")?;
    if bad > 0 {
        eprintln!("note: skipped {bad} unreadable record(s) of {}", read + bad);
    }
    let text = match format {
        ReportFormat::Markdown => report::markdown(&summary, min_parity),
        ReportFormat::Junit => report::junit(&summary, min_parity),
        ReportFormat::Json => report::json(&summary, min_parity),
    };
    match out {
        Some(path) => std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?,
        None => print_out(&text)?,
    }
    let failing: Vec<&String> = summary.routes.iter().filter(|(_, r)| r.parity() < min_parity).map(|(k, _)| k).collect();
    if failing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("parity below {min_parity}% on: {}", failing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
        Ok(ExitCode::from(EXIT_INVALID))
    }
}

fn replay(dir: &Path, legacy: Option<String>, candidate: Option<String>, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    use strangler::shadow::report;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let key = strangler::serve::dry_run_key(strangler::config::DEFAULT_DRY_RUN_SECRET_ENV)?;
    let (summary, min_parity) = runtime.block_on(strangler::cli::replay::replay(dir, legacy, candidate, key))?;
    match out {
        Some(out) => {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            std::fs::write(out.join("report.md"), report::markdown(&summary, min_parity))?;
            std::fs::write(out.join("report.junit.xml"), report::junit(&summary, min_parity))?;
            std::fs::write(out.join("report.json"), report::json(&summary, min_parity))?;
            eprintln!("reports written to {}", out.display());
        }
        None => print_out(&report::markdown(&summary, min_parity))?,
    }
    let failing = summary.routes.values().any(|r| r.parity() < min_parity);
    Ok(if failing { ExitCode::from(EXIT_INVALID) } else { ExitCode::SUCCESS })
}

fn compile(path: &Path, files_from: Option<&Path>) -> anyhow::Result<Result<strangler::config::Compiled, strangler::config::ConfigErrors>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // the same compile the proxy runs, reading the files the configuration names beside it (or
    // beside `files_from`)
    let folder = |p: &Path| p.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| ".".into());
    let base = folder(files_from.unwrap_or(path));
    let files = strangler::reload::files_beside(&base);
    let compiled = RouteTable::compile_with(Source::new(&path.display().to_string(), &text), &files);
    Ok(compiled)
}

fn check(file: &Path, against: Option<&Path>, format: CheckFormat) -> anyhow::Result<ExitCode> {
    use strangler::config::CheckReport;
    let (name, against_name) = (file.display().to_string(), against.map(|p| p.display().to_string()));
    let new = match compile(file, None)? {
        Ok(c) => c,
        Err(errors) => {
            match format {
                CheckFormat::Json => {
                    let v = serde_json::json!({ "valid": false, "errors": errors.0.iter().map(|e| serde_json::json!({
                        "file": e.at.file, "line": e.at.line, "column": e.at.column,
                        "message": e.kind.to_string(), "hint": e.kind.hint(),
                    })).collect::<Vec<_>>() });
                    print_out(&(serde_json::to_string_pretty(&v)? + "\n"))?;
                }
                CheckFormat::Markdown => {
                    print_out(&CheckReport { file: &name, new: Err(&errors), against: against_name.as_deref(), old: None }.markdown())?
                }
                CheckFormat::Text => eprintln!("{errors}"),
            }
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    // the old version may have no folder of its own (`<(git show main:routes.toml)`): the files
    // it names (the GraphQL schema) are read beside the new one, else beside itself
    let old = match against {
        None => None,
        Some(old_path) => Some(match compile(old_path, Some(file))? {
            Err(beside_new) => compile(old_path, None)?.map_err(|_| beside_new),
            ok => ok,
        }),
    };
    if let CheckFormat::Markdown = format {
        let old = old.as_ref().map(|o| o.as_ref().map(|c| &c.table));
        print_out(&CheckReport { file: &name, new: Ok(&new), against: against_name.as_deref(), old }.markdown())?;
        return Ok(ExitCode::SUCCESS);
    }
    let old = match old {
        None => None,
        Some(Ok(c)) => Some(c.table),
        Some(Err(errors)) => {
            eprintln!("{errors}\nnote: the --against file is itself invalid; showing the new table only");
            None
        }
    };
    let mut out = String::new();
    if let CheckFormat::Json = format {
        let mut v = serde_json::json!({ "valid": true, "table": new.table.to_json(), "warnings": new.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>() });
        if let Some(old) = &old {
            v["changes"] = serde_json::to_value(RouteTable::diff(old, &new.table))?;
        }
        out = serde_json::to_string_pretty(&v)? + "\n";
    } else {
        for w in &new.warnings {
            eprintln!("{w}");
        }
        let _ = writeln!(out, "{}: ok ({} routes, {} upstreams)\n", file.display(), new.table.routes.len(), new.table.upstreams.len());
        let _ = writeln!(out, "{}", new.table.summary());
        if let (Some(old), Some(old_path)) = (&old, against) {
            let _ = writeln!(out, "\nrouting changes from {}:", old_path.display());
            for line in RouteTable::diff(old, &new.table).to_string().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout; a closed pipe (`strangler check … | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
