//! `jwtgate explain -c FILE (--route NAME | --method M --path P [--host H])
//! [TOKEN]`: what the gateway would do with a token on a route, check by
//! check. Exit 0 when it would be accepted, 1 when refused, 2 on usage or
//! config errors. Nothing is sent anywhere.

use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use http::Method;
use jwtgate::config::ConfigSource;
use jwtgate::explain::{self, Explanation, RouteQuery};
use jwtgate::jws;
use jwtgate::keys::remote::{JwksRegistry, RefreshCounters, FETCH_TIMEOUT};
use jwtgate::runtime::GeneratedKeys;
use jwtgate::snapshot::Snapshot;

/// Usage and config errors (clap's own usage errors are 2 too).
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The config file.
    #[arg(short = 'c', long = "config", env = "JWTGATE_CONFIG")]
    config: PathBuf,
    /// The route, by name.
    #[arg(long, conflicts_with_all = ["method", "path", "host"], required_unless_present = "path")]
    route: Option<String>,
    /// The request method, for routing by method, path and host.
    #[arg(long, requires = "path")]
    method: Option<String>,
    /// The request path (routed as a request would be).
    #[arg(long)]
    path: Option<String>,
    /// The request's Host.
    #[arg(long, requires = "path")]
    host: Option<String>,
    /// Print the explanation as JSON (what the admin API answers).
    #[arg(long)]
    json: bool,
    /// The token (read from stdin when absent; one trailing newline is
    /// ignored).
    token: Option<String>,
}

pub fn explain(args: ExplainArgs) -> Result<ExitCode, String> {
    match run(args) {
        Ok(code) => Ok(code),
        Err(message) => {
            eprintln!("jwtgate: {message}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn run(args: ExplainArgs) -> Result<ExitCode, String> {
    let source = ConfigSource::read(&args.config).map_err(|e| e.to_string())?;
    let snapshot = Snapshot::build(&source, &GeneratedKeys::default(), &JwksRegistry::default())
        .map_err(|e| e.to_string())?;
    // Only public key sets are fetched; the token goes nowhere.
    let _fetcher = fetch_key_sets(&snapshot)?;
    let method = match &args.method {
        Some(name) => Method::from_bytes(name.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("--method: `{name}` is not an HTTP method"))?,
        None => Method::GET,
    };
    let query = match (&args.route, &args.path) {
        (Some(name), _) => RouteQuery::Name(name),
        (None, Some(path)) => RouteQuery::Request {
            method: &method,
            path,
            host: args.host.as_deref(),
        },
        (None, None) => return Err("give --route NAME or --path PATH".to_owned()),
    };
    let route = explain::find_route(&snapshot, &query)
        .map_err(|why| format!("{}: {why}", snapshot.source))?;
    let token = match args.token {
        Some(token) => token,
        None => read_token_from_stdin()?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut explanation = explain::explain(&snapshot, route, &token, now);
    for provider in snapshot.keys.remote.values() {
        let status = provider.status();
        explanation
            .notes
            .push(match (status.successes, status.last_error) {
                (0, Some(why)) => format!(
                    "the JWKS of issuer `{}` could not be fetched: {why}",
                    provider.issuer()
                ),
                (0, None) => format!(
                    "the JWKS of issuer `{}` did not answer in time",
                    provider.issuer()
                ),
                _ => format!(
                    "the JWKS of issuer `{}` was fetched just now ({} keys)",
                    provider.issuer(),
                    provider.keys().len()
                ),
            });
    }
    if snapshot
        .keys
        .iter()
        .any(|k| k.verifier.source.contains("generate: true"))
    {
        explanation.notes.push(
            "this config has `generate: true` keys, made afresh by every process: a token \
             issued by a running gateway with them does not verify here (use that \
             gateway's admin token inspector)"
                .to_owned(),
        );
    }
    if args.json {
        let text = serde_json::to_string_pretty(&explanation)
            .map_err(|e| format!("cannot encode the explanation: {e}"))?;
        super::print(&format!("{text}\n"));
    } else {
        super::print(&render(&explanation));
    }
    Ok(if explanation.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Fetches every `jwks:` set once (bounded, like a starting gateway), so
/// tokens of external issuers are explained against their current keys. The
/// runtime is returned to keep the fetch tasks' home alive.
fn fetch_key_sets(snapshot: &Snapshot) -> Result<Option<tokio::runtime::Runtime>, String> {
    if snapshot.keys.remote.is_empty() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        for provider in snapshot.keys.remote.values() {
            let counter = |name: &str| {
                prometheus::IntCounter::new(name, "explain's own count").map_err(|e| e.to_string())
            };
            let counters = RefreshCounters {
                success: counter("success")?,
                failure: counter("failure")?,
            };
            provider.start(&tokio::runtime::Handle::current(), counters);
            provider
                .first_fetch_done(FETCH_TIMEOUT + Duration::from_secs(1))
                .await;
        }
        Ok::<_, String>(())
    })?;
    Ok(Some(runtime))
}

fn read_token_from_stdin() -> Result<String, String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!("jwtgate: reading the token from stdin (end with Ctrl-D)");
    }
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.to_owned())
}

/// The report for people: header, claims, key, each check, the answer.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let policies = e.steps.iter().map(|s| s.policy + 1).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "route    {} → {} ({} polic{})",
        e.route,
        e.upstream,
        policies,
        if policies == 1 { "y" } else { "ies" }
    );
    let _ = writeln!(out, "now      {}", jws::utc_time(e.now as f64));
    let json = |value: &Option<serde_json::Value>| match value {
        Some(v) => serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .replace('\n', "\n         "),
        None => "(not a base64url JSON object)".to_owned(),
    };
    let _ = writeln!(out, "header   {}", json(&e.header));
    let _ = writeln!(out, "claims   {}", json(&e.claims));
    match (&e.key, &e.key_problem) {
        (Some(key), _) => {
            let _ = writeln!(
                out,
                "key      kid `{}`, {}, {} (loaded {} ago)",
                key.kid,
                key.alg,
                key.source,
                jws::human_duration(key.age_secs as f64)
            );
        }
        (None, Some(problem)) => {
            let _ = writeln!(out, "key      none: {problem}");
        }
        (None, None) => {
            let _ = writeln!(out, "key      none");
        }
    }
    let _ = writeln!(out, "\nchecks");
    for step in &e.steps {
        let mark = match step.result {
            "pass" => "✓ PASS",
            "fail" => "✗ FAIL",
            _ => "· ----",
        };
        let mut text = String::new();
        if let Some(description) = step.description {
            text.push_str(description);
            if !step.detail.is_empty() {
                text.push_str(" — ");
            }
        }
        if step.result == "not_reached" {
            text.push_str("not reached");
        }
        text.push_str(&step.detail);
        let _ = writeln!(out, "  {mark}  {:<13} {text}", step.step);
    }
    let _ = writeln!(out);
    match &e.refusal {
        Some(refusal) => {
            let _ = writeln!(
                out,
                "verdict  REFUSED ({}){}",
                e.verdict,
                e.failed_step
                    .map_or(String::new(), |s| format!(" at step `{s}`"))
            );
            let _ = writeln!(
                out,
                "status   {} {}",
                refusal.status,
                http::StatusCode::from_u16(refusal.status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("")
            );
            if let Some(challenge) = &refusal.www_authenticate {
                let _ = writeln!(out, "WWW-Authenticate: {challenge}");
            }
            let _ = writeln!(out, "body     {}", refusal.body);
            let _ = writeln!(out, "nothing is sent upstream");
        }
        None => {
            let _ = writeln!(out, "verdict  ACCEPTED");
            let _ = writeln!(out, "upstream headers set by the gateway:");
            for header in &e.upstream_headers {
                let _ = writeln!(out, "  {}: {}", header.name, header.value);
            }
            let _ = writeln!(
                out,
                "  authorization: {}",
                if e.forward_authorization {
                    "forwarded (forward_token: true)"
                } else {
                    "removed (forward_token: false)"
                }
            );
        }
    }
    for note in &e.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}
