//! `jwtgate token -c FILE --sub SUB [--scope "a b"] [--aud AUD] [--ttl 300s]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use jwtgate::config::{ConfigDuration, ConfigSource};
use jwtgate::keys::remote::JwksRegistry;
use jwtgate::runtime::GeneratedKeys;
use jwtgate::snapshot::Snapshot;
use jwtgate::token::mint::{self, AccessClaims};

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The config whose token_endpoint.signing_key signs.
    #[arg(short = 'c', long = "config", env = "JWTGATE_CONFIG")]
    config: PathBuf,
    /// The subject (`sub`).
    #[arg(long)]
    sub: String,
    /// Space-separated scopes (default: none).
    #[arg(long, default_value = "")]
    scope: String,
    /// The audience (default: token_endpoint.audience).
    #[arg(long)]
    aud: Option<String>,
    /// Lifetime (default: token_endpoint.ttl).
    #[arg(long, value_parser = ConfigDuration::parse)]
    ttl: Option<std::time::Duration>,
}

pub fn token(args: TokenArgs) -> Result<ExitCode, String> {
    let source = ConfigSource::read(&args.config).map_err(|e| e.to_string())?;
    let snapshot = Snapshot::build(&source, &GeneratedKeys::default(), &JwksRegistry::default())
        .map_err(|e| e.to_string())?;
    let endpoint = snapshot.token_endpoint.as_ref().ok_or_else(|| {
        format!(
            "{}: token_endpoint: required to know the signing key",
            snapshot.source
        )
    })?;
    let scopes: Vec<String> = args
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ttl = args.ttl.map_or(endpoint.ttl_secs, |d| d.as_secs());
    let audience = args.aud.as_deref().unwrap_or(&endpoint.audience);
    let claims = AccessClaims::new(
        &args.sub,
        audience,
        &scopes,
        endpoint.issuer.as_deref(),
        now,
        ttl,
        endpoint.not_before_skew_secs,
    )?;
    super::print(&format!("{}\n", mint::sign(&endpoint.signer, &claims)?));
    Ok(ExitCode::SUCCESS)
}
