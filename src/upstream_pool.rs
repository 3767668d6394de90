//! Plain-HTTP/1.1 upstream connections (`http://` routes without
//! `http2:`, nearly all of them), kept alive in a pool of the serving thread
//! and driven by the request that uses them.
//!
//! Why not hyper-util's pooled client, which https and HTTP/2 upstreams
//! still use: it runs every connection as a task of its own, so each
//! request crosses tasks twice (the request over a channel to the
//! connection's task, the response back over another), and its pool, shared
//! behind a lock, SipHashes the pool key several times a request. Here the
//! connection's future is polled by whoever waits on it: the request's own
//! future until the response head arrives, then the response body
//! ([`PooledBody`]) until its end, when the connection goes back to the
//! idle list. No task, no channel hop, one short lock a checkout.
//!
//! A connection is reused only when hyper's dispatcher says it is ready for
//! another request, checked right after the body's end and again at
//! checkout (the second check also notices an upstream that closed it while
//! idle). A response body dropped before its end takes its connection with
//! it, so no unread bytes can ever reach the next request.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::Body;
use crate::lock::lock;

/// An idle connection unused this long is closed (as hyper-util's pool
/// does for the other upstreams).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// How often the idle lists of every upstream are swept of expired
/// connections (those of a route a reload removed are never checked out).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

type UpstreamIo = TokioIo<TcpStream>;

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, name unknown).
    Connect(std::io::Error),
    /// The connection failed after it was made: hyper's error says how.
    Http(hyper::Error),
}

/// The idle connections of one serving thread, by upstream.
#[derive(Debug)]
pub struct Http1Pool {
    idle: Mutex<IdleLists>,
    limits: PoolLimits,
}

/// The pool's bounds (the constants above, smaller in tests).
#[derive(Debug, Clone, Copy)]
struct PoolLimits {
    idle_timeout: Duration,
    max_idle_per_upstream: usize,
    sweep_every: Duration,
}

impl Default for Http1Pool {
    fn default() -> Self {
        Http1Pool::with_limits(PoolLimits {
            idle_timeout: IDLE_TIMEOUT,
            max_idle_per_upstream: MAX_IDLE_PER_UPSTREAM,
            sweep_every: SWEEP_EVERY,
        })
    }
}

#[derive(Debug, Default)]
struct IdleLists {
    /// One entry per upstream with idle connections (a handful): a linear
    /// scan beats hashing the authority.
    by_upstream: Vec<IdleList>,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct IdleList {
    authority: Authority,
    /// Oldest first; checkout takes the newest.
    connections: Vec<(Box<Leased>, Instant)>,
}

/// A connection while a request uses it. Always boxed: it moves in and
/// out of the pool, the request's future and the response body, and is
/// about 700 bytes.
struct Leased {
    sender: SendRequest<Body>,
    connection: Connection<UpstreamIo, Body>,
    /// The connection's future has completed (closed, failed or upgraded);
    /// it must not be polled again, nor reused.
    ended: bool,
}

impl std::fmt::Debug for Leased {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leased")
            .field("ended", &self.ended)
            .finish()
    }
}

impl Leased {
    /// Lets the connection read and write; records when it has ended.
    fn poll_connection(&mut self, cx: &mut Context<'_>) {
        if !self.ended && Pin::new(&mut self.connection).poll(cx).is_ready() {
            self.ended = true;
        }
    }

    /// Whether another request may be sent: the connection is polled once
    /// (without a waker: it is nobody's to wake) so that hyper takes note
    /// of a finished response or of the upstream having closed.
    fn ready_for_next_request(&mut self) -> bool {
        self.poll_connection(&mut Context::from_waker(Waker::noop()));
        !self.ended && self.sender.is_ready()
    }

    /// Sends `request` and drives the connection until the response head
    /// arrives. `Err(Ok(request))` hands the request back unsent (the
    /// connection closed before writing it), so it can go on another.
    async fn send(
        mut self: Box<Self>,
        request: Request<Body>,
    ) -> Result<(Response<Incoming>, Box<Leased>), Result<Request<Body>, hyper::Error>> {
        let mut response = pin!(self.sender.try_send_request(request));
        let result = poll_fn(|cx| {
            self.poll_connection(cx);
            response.as_mut().poll(cx)
        })
        .await;
        match result {
            Ok(response) => Ok((response, self)),
            Err(mut failed) => match failed.take_message() {
                Some(request) => Err(Ok(request)),
                None => Err(Err(failed.into_error())),
            },
        }
    }
}

impl Http1Pool {
    fn with_limits(limits: PoolLimits) -> Http1Pool {
        Http1Pool {
            idle: Mutex::default(),
            limits,
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to the upstream at
    /// `authority`, on an idle connection if one is ready, else on a new
    /// one. A reused connection that turns out closed before the request
    /// was written is dropped and the request goes on a new connection.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        mut request: Request<Body>,
    ) -> Result<Response<PooledBody>, SendError> {
        if let Some(leased) = self.checkout(authority) {
            match leased.send(request).await {
                Ok((response, leased)) => {
                    return Ok(self.pooled_response(authority, response, leased))
                }
                Err(Err(error)) => return Err(SendError::Http(error)),
                Err(Ok(unsent)) => request = unsent,
            }
        }
        let leased = connect(authority).await?;
        match leased.send(request).await {
            Ok((response, leased)) => Ok(self.pooled_response(authority, response, leased)),
            Err(Err(error)) => Err(SendError::Http(error)),
            // A new connection closed before it took the request: the
            // connection failed (`connect`), with a reset as its cause.
            Err(Ok(_unsent)) => Err(SendError::Connect(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
        }
    }

    fn pooled_response(
        self: &Arc<Self>,
        authority: &Authority,
        response: Response<Incoming>,
        leased: Box<Leased>,
    ) -> Response<PooledBody> {
        response.map(|body| PooledBody {
            body,
            lease: Some(Lease {
                leased,
                pool: self.clone(),
                authority: authority.clone(),
            }),
        })
    }

    /// The newest idle connection to `authority` that is ready for a
    /// request; closes the ones found expired or closed on the way.
    fn checkout(&self, authority: &Authority) -> Option<Box<Leased>> {
        let mut idle = lock(&self.idle);
        let list = idle
            .by_upstream
            .iter_mut()
            .find(|list| list.authority == *authority)?;
        let now = Instant::now();
        while let Some((mut leased, since)) = list.connections.pop() {
            if now.duration_since(since) > self.limits.idle_timeout {
                // The newest has expired, so have all the older ones.
                list.connections.clear();
                break;
            }
            if leased.ready_for_next_request() {
                return Some(leased);
            }
        }
        None
    }

    /// Takes a connection back after its response's end, if it can carry
    /// another request.
    fn checkin(&self, authority: &Authority, mut leased: Box<Leased>) {
        // Usually the poll that read the body's end also made hyper ready
        // for the next request; if not, one more poll may.
        if !(leased.sender.is_ready() || leased.ready_for_next_request()) {
            return;
        }
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        if idle
            .last_sweep
            .is_none_or(|last| now.duration_since(last) > self.limits.sweep_every)
        {
            idle.last_sweep = Some(now);
            for list in &mut idle.by_upstream {
                list.connections
                    .retain(|(_, since)| now.duration_since(*since) <= self.limits.idle_timeout);
            }
            idle.by_upstream.retain(|list| !list.connections.is_empty());
        }
        let position = idle
            .by_upstream
            .iter()
            .position(|list| list.authority == *authority);
        let list = match position {
            Some(i) => &mut idle.by_upstream[i],
            None => {
                idle.by_upstream.push(IdleList {
                    authority: authority.clone(),
                    connections: Vec::new(),
                });
                idle.by_upstream.last_mut().expect("just pushed")
            }
        };
        if list.connections.len() < self.limits.max_idle_per_upstream {
            list.connections.push((leased, now));
        }
    }

    /// Idle connections in the pool.
    #[cfg(test)]
    fn idle_connections(&self) -> usize {
        lock(&self.idle)
            .by_upstream
            .iter()
            .map(|list| list.connections.len())
            .sum()
    }
}

/// A new connection to `authority` (name resolved by the system, as
/// hyper-util's connector does), with Nagle off.
async fn connect(authority: &Authority) -> Result<Box<Leased>, SendError> {
    // `[::1]` in an authority is `::1` to the resolver.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(SendError::Connect)?;
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    Ok(Box::new(Leased {
        sender,
        connection,
        ended: false,
    }))
}

/// An upstream response body that drives its connection while it is read,
/// and returns the connection to the pool at its end.
pub struct PooledBody {
    body: Incoming,
    /// Until the connection goes back to the pool (or is dropped with the
    /// body).
    lease: Option<Lease>,
}

/// A response body's connection and where it goes back to.
struct Lease {
    leased: Box<Leased>,
    pool: Arc<Http1Pool>,
    authority: Authority,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.pool.checkin(&lease.authority, lease.leased);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease {
            // The connection reads the body into `body` only when polled.
            lease.leased.poll_connection(cx);
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        if frame.is_none() {
            this.release();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    /// A body with nothing left to read (an empty one hyper never polls, a
    /// `HEAD` answer) still frees its connection for the next request; a
    /// body dropped half-read closes it.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream answering every request `200 ok` on a kept-alive
    /// connection, after `delay`; counts the connections it accepted.
    async fn upstream(delay: Duration) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            tokio::time::sleep(delay).await;
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    /// One GET through the pool, its body read to the end.
    async fn get(pool: &Arc<Http1Pool>, authority: &Authority) {
        let request = Request::builder()
            .uri("/")
            .header("host", authority.as_str())
            .body(crate::body::full(""))
            .unwrap();
        let response = pool.send(authority, request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }

    fn pool(idle_timeout_ms: u64, max_idle: usize, sweep_every_ms: u64) -> Arc<Http1Pool> {
        Arc::new(Http1Pool::with_limits(PoolLimits {
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            max_idle_per_upstream: max_idle,
            sweep_every: Duration::from_millis(sweep_every_ms),
        }))
    }

    #[tokio::test]
    async fn idle_connections_are_capped_per_upstream() {
        // Six requests at once need six connections; two are kept.
        let (authority, accepted) = upstream(Duration::from_millis(200)).await;
        let pool = pool(60_000, 2, 10_000);
        let requests: Vec<_> = (0..6)
            .map(|_| {
                let (pool, authority) = (pool.clone(), authority.clone());
                tokio::spawn(async move { get(&pool, &authority).await })
            })
            .collect();
        for request in requests {
            request.await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
        assert_eq!(pool.idle_connections(), 2);
        // The kept ones are reused.
        get(&pool, &authority).await;
        get(&pool, &authority).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
        assert_eq!(pool.idle_connections(), 2);
    }

    #[tokio::test]
    async fn expired_connections_are_closed_and_unused_upstreams_swept() {
        let (first, first_accepted) = upstream(Duration::ZERO).await;
        let (second, _) = upstream(Duration::ZERO).await;
        let pool = pool(100, 8, 0);
        get(&pool, &first).await;
        get(&pool, &first).await;
        assert_eq!(first_accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_connections(), 1);

        tokio::time::sleep(Duration::from_millis(250)).await;
        // The expired connection is not reused: a new one is made.
        get(&pool, &first).await;
        assert_eq!(first_accepted.load(Ordering::SeqCst), 2);

        tokio::time::sleep(Duration::from_millis(250)).await;
        // A connection coming back sweeps every upstream's expired ones:
        // only the second upstream's fresh connection is left.
        get(&pool, &second).await;
        assert_eq!(pool.idle_connections(), 1);
        assert_eq!(lock(&pool.idle).by_upstream.len(), 1);
        assert_eq!(lock(&pool.idle).by_upstream[0].authority, second);
    }
}
