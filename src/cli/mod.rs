//! The command line (SPEC §2): one file per subcommand.

mod check;
mod explain;
mod hash_secret;
mod healthcheck;
mod keygen;
mod run;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "jwtgate",
    version,
    about = "A JWT-enforcing API gateway with a built-in OAuth2 token endpoint"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `jwtgate` with no subcommand is `jwtgate run`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the embedded demo config without -c or JWTGATE_CONFIG).
    Run(RunArgs),
    /// Parse and validate a config and every key it names.
    Check(check::CheckArgs),
    /// Write DIR/KID.pem (PKCS#8, mode 0600) and DIR/KID.pub.pem (SPKI).
    Keygen(keygen::KeygenArgs),
    /// Read a client secret from stdin and print its `secret_hash` value.
    HashSecret(hash_secret::HashSecretArgs),
    /// Mint a token with the config's signing key.
    Token(token::TokenArgs),
    /// Exit 0 when the admin listener's /readyz answers 200, else 1.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Explain, check by check, why a route would accept or refuse a token
    /// (exit 0 accepted, 1 refused, 2 usage or config error).
    Explain(explain::ExplainArgs),
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// The config file.
    #[arg(short = 'c', long = "config", env = "JWTGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text or JSON (on stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Threads serving the public listener, each with its own runtime and
    /// upstream pool (default: one per CPU).
    #[arg(long, env = "JWTGATE_THREADS")]
    threads: Option<usize>,
}

impl Cli {
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Some(Command::Run(args)) => args.log_format,
            None => self.run.log_format,
            Some(_) => LogFormat::Text,
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal: journald and container logs get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes command output to stdout; a closed pipe (`jwtgate check | head -1`)
/// is not an error worth a panic.
pub fn print(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

pub fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        None => run::run(cli.run),
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Check(args)) => check::check(args),
        Some(Command::Keygen(args)) => keygen::keygen(args),
        Some(Command::HashSecret(args)) => hash_secret::hash_secret(args),
        Some(Command::Token(args)) => token::token(args),
        Some(Command::Healthcheck(args)) => healthcheck::healthcheck(args),
        Some(Command::Explain(args)) => explain::explain(args),
    }
}
