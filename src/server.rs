//! The listeners: accept, serve HTTP/1.1 connections (and HTTP/2 over TLS,
//! chosen by ALPN) with the configured limits, and shut down in order —
//! stop accepting on the public listener, mark not ready, drain requests in
//! flight up to `limits.drain_timeout`, then stop the admin listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::forward::{self, UpstreamClient};
use crate::gateway::{self, Connection};
use crate::keys::remote::FETCH_TIMEOUT;
use crate::metrics::Counted;
use crate::parking::ListenerHandles;
use crate::runtime::Runtime;
use crate::tls::PeerIdentity;
use crate::watch::ConfigWatcher;

/// Binds `addr`; the error names the address and which listener it is for.
pub async fn bind(addr: SocketAddr, listener: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({listener}): {e}"))
}

/// Accepts connections and hands each to `serve` until `shutdown` turns
/// `true`; then drops nothing itself (the caller owns the listener).
pub(crate) async fn accept_until(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer),
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the public listener until `shutdown` turns `true`, then closes it
/// (new connections are refused) and lets open connections finish, up to
/// the `limits.drain_timeout` of the config current at that moment. Returns
/// whether every connection finished in time.
///
/// The listener speaks TLS when `listener_tls` is set: the `tls:` of the
/// snapshot current when serving was started, read by the caller before it
/// spawns this future, so that a reload racing the first poll cannot change
/// the listener's protocol. Each new connection takes the TLS config of the
/// snapshot current when it is accepted (a renewed certificate reaches the
/// next connection; open ones keep theirs). A reload that drops `tls:` needs a restart: until
/// then the last TLS config is kept.
pub async fn serve_public(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    upstream_client: UpstreamClient,
    mut listener_tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let graceful = GracefulShutdown::new();
    let stop = shutdown.clone();
    accept_until(&listener, &mut shutdown, |stream, peer| {
        let _ = stream.set_nodelay(true);
        let Some(tls) = listener_tls.as_mut() else {
            let connection = Connection::new(peer, "http", None);
            let service = gateway_service(&runtime, &upstream_client, connection);
            // Each stay in hyper takes the limits current when it starts.
            let (limits_of, timeout_of) = (runtime.clone(), runtime.clone());
            tokio::spawn(crate::parking::serve(
                stream,
                peer,
                move || http1_builder(&limits_of.snapshot().limits),
                move || timeout_of.snapshot().limits.header_read_timeout.0,
                service,
                ListenerHandles {
                    shutdown: stop.clone(),
                    drain: graceful.watcher(),
                    gauges: runtime.metrics.connections.clone(),
                },
            ));
            return;
        };
        let snapshot = runtime.snapshot();
        let limits = snapshot.limits.clone();
        if let Some(current) = &snapshot.tls {
            *tls = current.clone();
        }
        let acceptor = TlsAcceptor::from(tls.clone());
        let watcher = graceful.watcher();
        let (runtime, upstream_client) = (runtime.clone(), upstream_client.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout.0, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let _active = Counted::in_gauge(&runtime.metrics.connections.active);
            let identity = PeerIdentity::of(stream.get_ref().1);
            let connection = Connection::new(peer, "https", identity.client_subject);
            let service = gateway_service(&runtime, &upstream_client, connection);
            let io = TokioIo::new(stream);
            // ALPN decides; a client that offers none gets HTTP/1.1.
            let served = if identity.http2 {
                let served = http2_builder(&limits).serve_connection(io, service);
                watcher.watch(served).await
            } else {
                let served = http1_builder(&limits).serve_connection(io, service);
                watcher.watch(served).await
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    })
    .await;
    drop(listener);
    let drain = runtime.snapshot().limits.drain_timeout.0;
    tokio::select! {
        _ = graceful.shutdown() => true,
        _ = tokio::time::sleep(drain) => false,
    }
}

/// One request's handling, from [`gateway_service`].
type GatewayFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<hyper::Response<crate::body::Body>, Infallible>>
            + Send,
    >,
>;

/// Every request of one connection goes to [`gateway::handle`].
fn gateway_service(
    runtime: &Arc<Runtime>,
    upstream_client: &UpstreamClient,
    connection: Connection,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = hyper::Response<crate::body::Body>,
    Error = Infallible,
    Future = GatewayFuture,
> + Clone {
    let (runtime, upstream_client) = (runtime.clone(), upstream_client.clone());
    service_fn(move |request: Request<Incoming>| {
        let runtime = runtime.clone();
        let upstream_client = upstream_client.clone();
        let connection = connection.clone();
        // Boxed: hyper and the wrappers around this service move the
        // future several times before its first poll, and the request's
        // whole state machine (routing, policies, the upstream exchange) is
        // kilobytes; moving a pointer instead saved thousands of
        // instructions of `memcpy` a request (callgrind).
        let handled: GatewayFuture = Box::pin(async move {
            let request = request.map(|body| body.map_err(Into::into).boxed());
            Ok::<_, Infallible>(
                gateway::handle(&runtime, &upstream_client, request, connection).await,
            )
        });
        handled
    })
}

fn http1_builder(limits: &Limits) -> http1::Builder {
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
    builder
}

/// HTTP/2 (over TLS only) with bounded work per connection: at most
/// `limits.h2_max_concurrent_streams` streams, a header list bounded like
/// HTTP/1.1's head (the gateway answers a JSON 431 between the limit and
/// twice it), and streams reset by the client before they are served, or
/// reset by the server for protocol errors, capped (rapid reset,
/// CVE-2023-44487: past the cap the connection is closed with GOAWAY).
fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    let header_list = u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    builder
}

/// Streams a client may open and reset before the server accepts them
/// (hyper's default is 20).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for the client's protocol errors before
/// closing the connection (hyper's default is 1024).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Where the public listener's connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// On the caller's tokio runtime (tests, benches).
    Shared,
    /// On this many threads, each with its own single-threaded runtime and
    /// upstream connection pool, accepting from the same listening socket.
    /// A request, its upstream exchange and its connection's tasks then stay
    /// on one thread: no cross-thread wake-ups on the hot path (measured in
    /// the README's Performance section).
    PerThread(usize),
}

/// The public listener's serving loops.
enum PublicServing {
    Task(JoinHandle<bool>),
    Threads(Vec<std::thread::JoinHandle<bool>>),
}

impl PublicServing {
    fn start(
        listener: TcpListener,
        runtime: &Arc<Runtime>,
        serving: Serving,
        stop: watch::Receiver<bool>,
    ) -> Result<PublicServing, String> {
        // Plain or TLS is decided here, once, from the starting snapshot.
        let listener_tls = runtime.snapshot().tls.clone();
        let threads = match serving {
            Serving::Shared => {
                let task = serve_public(
                    listener,
                    runtime.clone(),
                    forward::client(),
                    listener_tls,
                    stop,
                );
                return Ok(PublicServing::Task(tokio::spawn(task)));
            }
            Serving::PerThread(threads) => threads.max(1),
        };
        let listener = listener
            .into_std()
            .map_err(|e| format!("cannot share the listening socket: {e}"))?;
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let listener = listener
                .try_clone()
                .map_err(|e| format!("cannot share the listening socket: {e}"))?;
            let (runtime, stop) = (runtime.clone(), stop.clone());
            let listener_tls = listener_tls.clone();
            let handle = std::thread::Builder::new()
                .name(format!("jwtgate-serve-{i}"))
                .spawn(move || {
                    let local = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(local) => local,
                        Err(e) => {
                            tracing::error!("serving thread {i}: cannot start a runtime: {e}");
                            return true;
                        }
                    };
                    local.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let client = forward::client();
                                serve_public(listener, runtime, client, listener_tls, stop).await
                            }
                            Err(e) => {
                                tracing::error!("serving thread {i}: {e}");
                                true
                            }
                        }
                    })
                })
                .map_err(|e| format!("cannot start a serving thread: {e}"))?;
            handles.push(handle);
        }
        Ok(PublicServing::Threads(handles))
    }

    /// Waits for the drain; whether every connection finished in time.
    async fn finished(self) -> bool {
        match self {
            PublicServing::Task(task) => task.await.unwrap_or(false),
            PublicServing::Threads(handles) => tokio::task::spawn_blocking(move || {
                // Join every thread, even after one reports a cut-off.
                let drained: Vec<bool> = handles
                    .into_iter()
                    .map(|handle| handle.join().unwrap_or(false))
                    .collect();
                drained.into_iter().all(|d| d)
            })
            .await
            .unwrap_or(false),
        }
    }
}

/// A gateway started in-process (by `jwtgate run`, tests and benches).
pub struct RunningGateway {
    /// The bound public address (useful with `listen: 127.0.0.1:0`).
    pub addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    pub runtime: Arc<Runtime>,
    /// Reloads on config file changes; `None` for the embedded demo.
    _watcher: Option<ConfigWatcher>,
    stop_public: watch::Sender<bool>,
    public: PublicServing,
    stop_admin: watch::Sender<bool>,
    admin: JoinHandle<()>,
}

impl RunningGateway {
    /// [`RunningGateway::start_with`] on the caller's runtime.
    pub async fn start(source: crate::config::ConfigSource) -> Result<RunningGateway, String> {
        RunningGateway::start_with(source, Serving::Shared).await
    }

    /// Loads the config, binds `listen` and `admin`, starts serving both
    /// and starts watching the config files.
    pub async fn start_with(
        source: crate::config::ConfigSource,
        serving: Serving,
    ) -> Result<RunningGateway, String> {
        let runtime = Runtime::load(source)?;
        let snapshot = runtime.snapshot();
        let public_listener = bind(snapshot.listen, "listen").await?;
        let admin_listener = bind(snapshot.admin, "admin").await?;
        let addr = local_addr(&public_listener)?;
        let admin_addr = local_addr(&admin_listener)?;
        tracing::info!(listener = "public", "listening on {addr}");
        tracing::info!(listener = "admin", "listening on {admin_addr}");

        let (stop_admin, stop) = watch::channel(false);
        let admin = tokio::spawn(crate::admin::serve_admin(
            admin_listener,
            runtime.clone(),
            stop,
        ));
        // `jwks:` providers are fetched before the first request is accepted
        // (connections wait in the backlog meanwhile), for a bounded time;
        // `/readyz` on the admin listener says 503 until they have answered.
        runtime
            .start_background(
                tokio::runtime::Handle::current(),
                FETCH_TIMEOUT + Duration::from_secs(1),
            )
            .await;
        let (stop_public, stop) = watch::channel(false);
        let public = PublicServing::start(public_listener, &runtime, serving, stop)?;
        Ok(RunningGateway {
            addr,
            admin_addr,
            _watcher: crate::watch::spawn(runtime.clone()),
            runtime,
            stop_public,
            public,
            stop_admin,
            admin,
        })
    }

    /// Graceful shutdown: `/readyz` turns 503, the public listener closes,
    /// requests in flight finish (up to `limits.drain_timeout`), then the
    /// admin listener closes.
    pub async fn shutdown(self) {
        self.runtime.start_draining();
        let _ = self.stop_public.send(true);
        if self.public.finished().await {
            tracing::info!("all connections drained");
        } else {
            let drain = self.runtime.snapshot().limits.drain_timeout.0;
            tracing::warn!(
                "drain timeout ({}s) reached; closing the remaining connections",
                drain.as_secs_f64()
            );
        }
        let _ = self.stop_admin.send(true);
        let _ = self.admin.await;
    }
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, String> {
    listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))
}
