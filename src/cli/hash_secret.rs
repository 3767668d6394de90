//! `jwtgate hash-secret`: a client secret on stdin → its `secret_hash`.

use std::io::Read;
use std::process::ExitCode;

use clap::Args;
use jwtgate::token::client_auth::{argon2id_secret_hash, sha256_secret_hash};

#[derive(Debug, Args)]
pub struct HashSecretArgs {
    /// Print an argon2id PHC string instead of `sha256:<hex>` (for secrets
    /// chosen by people; slower to check on every token request).
    #[arg(long)]
    argon2id: bool,
}

pub fn hash_secret(args: HashSecretArgs) -> Result<ExitCode, String> {
    let mut secret = Vec::new();
    std::io::stdin()
        .read_to_end(&mut secret)
        .map_err(|e| format!("cannot read the secret from stdin: {e}"))?;
    // One trailing newline (from `echo` or a terminal) is not part of it.
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err("the secret on stdin is empty".to_owned());
    }
    let hash = if args.argon2id {
        argon2id_secret_hash(&secret)?
    } else {
        if secret.len() < 16 {
            eprintln!("jwtgate: warning: a secret under 16 bytes is guessable from a sha256 hash; use a long random secret or --argon2id");
        }
        sha256_secret_hash(&secret)
    };
    super::print(&format!("{hash}\n"));
    Ok(ExitCode::SUCCESS)
}
