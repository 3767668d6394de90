//! `jwtgate check -c FILE`: validate a config and every key it names.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use jwtgate::config::ConfigSource;
use jwtgate::runtime::GeneratedKeys;
use jwtgate::snapshot::Snapshot;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file.
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
}

pub fn check(args: CheckArgs) -> Result<ExitCode, String> {
    let source = ConfigSource::read(&args.config).map_err(|e| e.to_string())?;
    let snapshot =
        Snapshot::build(&source, &GeneratedKeys::default()).map_err(|e| e.to_string())?;
    let signing = snapshot.keys.iter().filter(|k| k.signer.is_some()).count();
    println!("{}: OK", snapshot.source);
    println!("  listen {}, admin {}", snapshot.listen, snapshot.admin);
    println!(
        "  {} key(s) ({} signing, {} verify-only)",
        snapshot.keys.len(),
        signing,
        snapshot.keys.len() - signing
    );
    match &snapshot.token_endpoint {
        Some(endpoint) => println!(
            "  token endpoint {} signing with `{}`{}",
            endpoint.path,
            endpoint.signer.kid,
            if endpoint.any_client {
                " (any_client demo mode)"
            } else {
                ""
            }
        ),
        None => println!("  no token endpoint"),
    }
    println!("  {} route(s)", snapshot.routes.len());
    for route in &snapshot.routes {
        println!(
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
    Ok(ExitCode::SUCCESS)
}
