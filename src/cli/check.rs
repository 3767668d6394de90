//! `jwtgate check -c FILE`: validate a config and every key it names.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use jwtgate::config::ConfigSource;
use jwtgate::keys::remote::JwksRegistry;
use jwtgate::runtime::GeneratedKeys;
use jwtgate::snapshot::Snapshot;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file.
    #[arg(short = 'c', long = "config", env = "JWTGATE_CONFIG")]
    config: PathBuf,
}

pub fn check(args: CheckArgs) -> Result<ExitCode, String> {
    use std::fmt::Write;
    let source = ConfigSource::read(&args.config).map_err(|e| e.to_string())?;
    let snapshot = Snapshot::build(&source, &GeneratedKeys::default(), &JwksRegistry::default())
        .map_err(|e| e.to_string())?;
    let signing = snapshot.keys.iter().filter(|k| k.signer.is_some()).count();
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", snapshot.source);
    let _ = writeln!(
        out,
        "  listen {}, admin {}",
        snapshot.listen, snapshot.admin
    );
    let _ = writeln!(
        out,
        "  {} key(s) ({} signing, {} verify-only)",
        snapshot.keys.len(),
        signing,
        snapshot.keys.len() - signing
    );
    let mut providers: Vec<_> = snapshot.keys.remote.values().collect();
    providers.sort_by(|a, b| a.issuer().cmp(b.issuer()));
    for provider in providers {
        let settings = provider.settings();
        let source = settings.source();
        // Not fetched: `check` never opens a connection.
        let _ = writeln!(
            out,
            "  jwks for issuer {}: {source}, refresh {}s (not fetched by check)",
            settings.issuer,
            settings.refresh.as_secs()
        );
    }
    match &snapshot.token_endpoint {
        Some(endpoint) => {
            let _ = writeln!(
                out,
                "  token endpoint {} signing with `{}`{}",
                endpoint.path,
                endpoint.signer.kid,
                if endpoint.any_client {
                    " (any_client demo mode)"
                } else {
                    ""
                }
            );
        }
        None => {
            let _ = writeln!(out, "  no token endpoint");
        }
    }
    let _ = writeln!(out, "  {} route(s)", snapshot.routes.len());
    for route in &snapshot.routes {
        let _ = writeln!(
            out,
            "    {} {} ({} polic{})",
            route.name,
            route.matcher.path_prefix,
            route.policies.len(),
            if route.policies.len() == 1 {
                "y"
            } else {
                "ies"
            }
        );
    }
    super::print(&out);
    Ok(ExitCode::SUCCESS)
}
