//! `jwtgate run`: serve until SIGTERM or Ctrl-C, then drain (a second
//! signal exits at once, with status 1); reload on SIGHUP.

use std::process::ExitCode;
use std::sync::Arc;

use jwtgate::config::ConfigSource;
use jwtgate::reload::Trigger;
use jwtgate::runtime::Runtime;
use jwtgate::server::{RunningGateway, Serving};

use super::RunArgs;

pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    let source = match &args.config {
        Some(path) => ConfigSource::read(path).map_err(|e| e.to_string())?,
        None => ConfigSource::demo(),
    };
    let is_demo = args.config.is_none();
    let threads = match args.threads {
        Some(0) => return Err("--threads must be at least 1".into()),
        Some(threads) => threads,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    // The public listener runs on its own threads (see `Serving`); this
    // runtime has the admin listener, the config watcher and the signals.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(async move {
        // Before anything else: SIGHUP's default action kills the process,
        // so a reload sent just after start must find the handler in place.
        let hangups = HangupSignals::install();
        // Likewise SIGTERM and Ctrl-C: caught once for the whole run, so a
        // second signal during the drain is never lost between two waits.
        let mut shutdown = ShutdownSignals::install();
        let gateway = RunningGateway::start_with(source, Serving::PerThread(threads)).await?;
        hangups.reload_on_each(gateway.runtime.clone());
        if is_demo {
            print_demo_commands(gateway.addr, gateway.admin_addr);
        }
        shutdown.next().await;
        tracing::info!("shutting down: no longer accepting connections, draining");
        tokio::select! {
            () = gateway.shutdown() => Ok(ExitCode::SUCCESS),
            () = shutdown.next() => {
                tracing::warn!("second signal: exiting without waiting for requests in flight");
                Ok(ExitCode::FAILURE)
            }
        }
    });
    // After a second signal the drain is still running on other threads:
    // exit without waiting for it.
    runtime.shutdown_background();
    result
}

/// The tutorial of SPEC §1, with the addresses actually bound.
fn print_demo_commands(addr: std::net::SocketAddr, admin: std::net::SocketAddr) {
    println!(
        "jwtgate demo: serving the embedded demo config on http://{addr}\n\n\
         Get a token (any client id and secret work in the demo):\n\n  \
         curl -X POST http://{addr}/demo/oauth2/token \\\n    \
         -H \"Content-Type: application/x-www-form-urlencoded\" \\\n    \
         -u \"my-client:my-secret\" -d \"grant_type=client_credentials\"\n\n\
         Call the protected demo resource with it:\n\n  \
         curl -H \"Authorization: Bearer <access_token>\" http://{addr}/demo/resource\n\n\
         Status page and token inspector (\"why was I refused?\"): http://{admin}/\n"
    );
}

/// `SIGHUP`, caught from the start of `run`.
struct HangupSignals {
    #[cfg(unix)]
    stream: Option<tokio::signal::unix::Signal>,
}

impl HangupSignals {
    fn install() -> HangupSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let stream = signal(SignalKind::hangup())
                .map_err(|e| {
                    tracing::warn!("cannot catch SIGHUP ({e}); reload by editing the config file")
                })
                .ok();
            HangupSignals { stream }
        }
        #[cfg(not(unix))]
        HangupSignals {}
    }

    /// Every `SIGHUP` from now on runs a full reload (counted even when
    /// nothing changed, SPEC §5).
    fn reload_on_each(self, runtime: Arc<Runtime>) {
        #[cfg(unix)]
        if let Some(mut stream) = self.stream {
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    let reloading = runtime.clone();
                    let _ = tokio::task::spawn_blocking(move || reloading.reload(Trigger::Signal))
                        .await;
                }
            });
        }
        #[cfg(not(unix))]
        let _ = runtime;
    }
}

/// SIGTERM and SIGINT (Ctrl-C), each caught from the start of `run`.
struct ShutdownSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn install() -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            ShutdownSignals {
                terminate: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// The next SIGTERM or SIGINT (a signal that cannot be caught never
    /// comes).
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.terminate) => {}
                () = recv(&mut self.interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
