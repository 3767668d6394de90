//! The public listener: accept, serve HTTP/1.1 connections with the
//! configured limits, drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::gateway::{self, Connection};
use crate::runtime::Runtime;
use crate::watch::ConfigWatcher;

/// How long connections may take to finish once shutdown starts.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// Binds `addr`; the error names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Serves the public listener until `shutdown` turns `true`, then stops
/// accepting and lets open connections finish (up to `drain`).
pub async fn serve_public(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let runtime = runtime.clone();
        let limits = runtime.snapshot().limits.clone();
        let connection = Connection {
            peer,
            proto: "http",
        };
        let service = service_fn(move |request: Request<Incoming>| {
            let runtime = runtime.clone();
            async move {
                let request = request.map(|body| body.map_err(Into::into).boxed());
                Ok::<_, Infallible>(gateway::handle(&runtime, request, connection).await)
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout.0)
            // hyper answers a bare 431 past twice the limit (bounding memory);
            // between the limit and that, the gateway answers with JSON.
            .max_header_size(limits.max_header_bytes.saturating_mul(2));
        // Same for the header count. (Above hyper's default of 100 this
        // costs a heap allocation per request; a JSON 431 is worth it.)
        builder.max_headers(limits.max_headers.saturating_mul(2));
        let served = builder.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// A gateway started in-process (by `jwtgate run`, tests and benches).
pub struct RunningGateway {
    /// The bound public address (useful with `listen: 127.0.0.1:0`).
    pub addr: SocketAddr,
    pub runtime: Arc<Runtime>,
    /// Reloads on config file changes; `None` for the embedded demo.
    _watcher: Option<ConfigWatcher>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Loads the config, binds `listen`, starts serving and starts watching
    /// the config files.
    pub async fn start(source: crate::config::ConfigSource) -> Result<RunningGateway, String> {
        let runtime = Runtime::load(source).map_err(|e| e.to_string())?;
        let listener = bind(runtime.snapshot().listen).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        tracing::info!("listening on {addr}");
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(serve_public(listener, runtime.clone(), stop, DEFAULT_DRAIN));
        Ok(RunningGateway {
            addr,
            _watcher: crate::watch::spawn(runtime.clone()),
            runtime,
            shutdown,
            task,
        })
    }

    /// Stops accepting and waits for the drain.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}
