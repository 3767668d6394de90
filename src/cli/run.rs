//! `jwtgate run`: serve until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use jwtgate::config::ConfigSource;
use jwtgate::server::RunningGateway;

use super::RunArgs;

pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    let source = match &args.config {
        Some(path) => ConfigSource::read(path).map_err(|e| e.to_string())?,
        None => ConfigSource::demo(),
    };
    let is_demo = args.config.is_none();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let gateway = RunningGateway::start(source).await?;
        if is_demo {
            print_demo_commands(gateway.addr);
        }
        wait_for_shutdown_signal().await;
        tracing::info!("shutting down: no longer accepting connections");
        gateway.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The tutorial of SPEC §1, with the address actually bound.
fn print_demo_commands(addr: std::net::SocketAddr) {
    println!(
        "jwtgate demo: serving the embedded demo config on http://{addr}\n\n\
         Get a token (any client id and secret work in the demo):\n\n  \
         curl -X POST http://{addr}/demo/oauth2/token \\\n    \
         -H \"Content-Type: application/x-www-form-urlencoded\" \\\n    \
         -u \"my-client:my-secret\" -d \"grant_type=client_credentials\"\n\n\
         Call the protected demo resource with it:\n\n  \
         curl -H \"Authorization: Bearer <access_token>\" http://{addr}/demo/resource\n"
    );
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // SIGHUP's default action would kill the gateway; until hot reload
        // exists, say so and keep serving.
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::warn!("SIGHUP received: this build cannot reload; restart to apply config changes");
                }
            });
        }
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
