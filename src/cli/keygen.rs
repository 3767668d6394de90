//! `jwtgate keygen --alg ALG --kid KID [--out DIR]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use jwtgate::keys::{local, Algorithm};

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// RS256 (2048-bit), RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA.
    #[arg(long)]
    alg: String,
    /// The key id; also names the files.
    #[arg(long)]
    kid: String,
    /// Where to write the two files.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

pub fn keygen(args: KeygenArgs) -> Result<ExitCode, String> {
    let alg = Algorithm::from_name(&args.alg).ok_or_else(|| {
        let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        format!("--alg `{}` is not one of {}", args.alg, names.join(" "))
    })?;
    let written = local::keygen(alg, &args.kid, &args.out)?;
    super::print(&format!(
        "{}\n{}\n",
        written.private_path.display(),
        written.public_path.display()
    ));
    Ok(ExitCode::SUCCESS)
}
