//! Plain HTTP/1.1 keep-alive connections, parked while idle.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB
//! write buffer and keeps both for as long as the connection lives, so
//! 10,000 idle keep-alive clients held over 200 MiB. Here a connection that
//! has been idle for [`PARK_AFTER`] leaves hyper: hyper is shown an
//! end-of-stream at a moment when it is waiting for the next request head
//! with nothing buffered and nothing left to send, so it ends the
//! connection cleanly, frees its buffers and hands the socket back (its
//! shutdown of the socket is skipped). The parked connection is then just
//! the socket and this task, waiting for the next request's first bytes;
//! when they come, a fresh hyper connection serves them.
//!
//! The end-of-stream is only shown when all of these hold, so no request or
//! response byte is ever lost:
//! - every request hyper handed to the service has a response whose body
//!   hyper has finished with ([`InFlight`] guards, dropped with the body);
//! - hyper has flushed everything it wrote since then;
//! - the bytes read so far end with `\r\n\r\n`, the end of a request head or
//!   of a chunked body: hyper parses what it holds before it reads again,
//!   so it holds nothing (a client that sent half a head is never parked;
//!   nor, until its next request, is a connection whose last request had a
//!   `Content-Length` body, as its end cannot be told from half a head);
//! - the socket has nothing to read, and has had nothing for `PARK_AFTER`.
//!
//! A busy connection (oha, a client pool) never waits that long between
//! requests and stays with hyper; measured in the README's Memory section.
//! Only plain HTTP/1.1 is parked: TLS and HTTP/2 connections keep their
//! buffers in rustls and h2 as before.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::metrics::{ConnectionGauges, Counted};

/// How long a connection waits for its next request inside hyper before it
/// is parked. Far longer than the gap a busy client leaves between
/// requests (under a millisecond with `oha -c 64`), so re-entering hyper is
/// paid only by connections that were really idle.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// What a parked-or-served connection holds of its listener.
pub(crate) struct ListenerHandles {
    /// Turns `true` when the listener drains: a parked connection closes,
    /// one in hyper is asked to finish gracefully.
    pub shutdown: watch::Receiver<bool>,
    /// Held until the connection ends, so the listener's drain waits for it.
    pub drain: Watcher,
    /// Count the connection as idle while parked and active while in hyper.
    pub gauges: ConnectionGauges,
}

/// Serves one plain HTTP/1.1 connection until it closes, parking it between
/// requests once idle. `header_read_timeout()` (read when the wait starts, so
/// a reload applies to parked connections) bounds a wait for a request head,
/// parked or not, as hyper's own timer does inside hyper; `builder()` makes
/// each stay's hyper connection, with the limits current then.
pub(crate) async fn serve<S>(
    mut stream: TcpStream,
    peer: SocketAddr,
    builder: impl Fn() -> http1::Builder,
    header_read_timeout: impl Fn() -> Duration,
    service: S,
    listener: ListenerHandles,
) where
    S: Service<Request<Incoming>, Response = Response<crate::body::Body>, Error = Infallible>
        + Clone
        + Send,
    S::Future: Send,
{
    let ListenerHandles {
        mut shutdown,
        drain: _drain,
        gauges,
    } = listener;
    let state = Arc::new(ParkState::default());
    let mut park_timer = pin!(tokio::time::sleep(PARK_AFTER));
    // A new connection waits like a parked one: no hyper buffers until the
    // client has sent something.
    let mut wait = header_read_timeout();
    let mut probe = [0u8; 1];
    loop {
        let idle = Counted::in_gauge(&gauges.idle);
        tokio::select! {
            biased;
            _ = stopping(&mut shutdown) => return,
            // A peek, not `readable()`: that may wake without data, and a
            // client that closed is seen here without entering hyper.
            peeked = stream.peek(&mut probe) => {
                if !matches!(peeked, Ok(1..)) {
                    return;
                }
            }
            _ = tokio::time::sleep(wait) => {
                tracing::debug!(%peer, "idle keep-alive connection timed out");
                return;
            }
        }

        drop(idle);
        let _active = Counted::in_gauge(&gauges.active);

        state.parked.store(false, Ordering::Relaxed);
        let io = ParkableIo {
            stream: &mut stream,
            state: state.clone(),
            park_timer: park_timer.as_mut(),
            idle_armed: false,
            read_waits_for_flush: false,
            // Nothing buffered: what the client sends next starts a message.
            tail: *b"\r\n\r\n",
        };
        let service = track_in_flight(service.clone(), state.clone());
        // Boxed so that the parked task does not carry hyper's connection
        // state (the request future included) in its own size.
        let mut connection = Box::pin(builder().serve_connection(TokioIo::new(io), service));
        let served = tokio::select! {
            served = connection.as_mut() => served,
            _ = stopping(&mut shutdown) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
            return;
        }
        if !state.parked.load(Ordering::Relaxed) {
            return; // the client closed it, or hyper did (Connection: close)
        }
        wait = header_read_timeout().saturating_sub(PARK_AFTER);
    }
}

/// Resolves once `shutdown` is `true` (without holding its lock after).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What the IO wrapper, the service and the response bodies of one
/// connection share.
#[derive(Debug, Default)]
struct ParkState {
    /// Requests handed to the service whose response body hyper still holds.
    in_flight: AtomicUsize,
    /// A response ended after hyper's last completed flush.
    unflushed: AtomicBool,
    /// The wrapper showed hyper an end-of-stream to park the connection.
    parked: AtomicBool,
}

/// The socket as hyper sees it during one stay in hyper.
struct ParkableIo<'a> {
    stream: &'a mut TcpStream,
    state: Arc<ParkState>,
    park_timer: Pin<&'a mut Sleep>,
    /// The park timer runs for the current idle wait.
    idle_armed: bool,
    /// A read found the connection idle but a response not yet flushed.
    read_waits_for_flush: bool,
    /// The last four bytes read.
    tail: [u8; 4],
}

impl ParkableIo<'_> {
    fn note_received(&mut self, bytes: &[u8]) {
        self.idle_armed = false;
        if bytes.len() >= 4 {
            self.tail.copy_from_slice(&bytes[bytes.len() - 4..]);
        } else {
            for &byte in bytes {
                self.tail.rotate_left(1);
                self.tail[3] = byte;
            }
        }
    }

    /// Whether hyper, which just found nothing to read, can be shown an
    /// end-of-stream (see the module's doc). Arms the park timer on the
    /// first idle read, so the task is woken when `PARK_AFTER` is up.
    fn may_park(&mut self, cx: &mut Context<'_>) -> bool {
        if self.state.in_flight.load(Ordering::Acquire) != 0 || self.tail != *b"\r\n\r\n" {
            return false;
        }
        if self.state.unflushed.load(Ordering::Acquire) {
            self.read_waits_for_flush = true;
            return false;
        }
        if !self.idle_armed {
            self.idle_armed = true;
            self.park_timer.as_mut().reset(Instant::now() + PARK_AFTER);
        }
        self.park_timer.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for ParkableIo<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut *this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.note_received(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.may_park(cx) => {
                this.state.parked.store(true, Ordering::Relaxed);
                Poll::Ready(Ok(())) // nothing read: end-of-stream
            }
            other => other,
        }
    }
}

impl AsyncWrite for ParkableIo<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    /// hyper flushes after writing out all it buffered: whatever response
    /// ended before this has left the process.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut *this.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.state.unflushed.store(false, Ordering::Release);
            if std::mem::take(&mut this.read_waits_for_flush) {
                // hyper polled its read while a response was still
                // unflushed and will not poll it again by itself: one more
                // turn lets the park timer start. (Usually hyper flushes
                // before it reads again, and no extra turn is needed.)
                cx.waker().wake_by_ref();
            }
        }
        flushed
    }

    /// Skipped when parking: the socket goes back to the parked task open.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.parked.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.stream).poll_shutdown(cx)
    }
}

/// The gateway's service, counting the requests whose responses hyper has
/// not finished with.
fn track_in_flight<S>(
    inner: S,
    state: Arc<ParkState>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<TrackedBody<crate::body::Body>>,
    Error = Infallible,
    Future: Send,
>
where
    S: Service<Request<Incoming>, Response = Response<crate::body::Body>, Error = Infallible>,
    S::Future: Send,
{
    hyper::service::service_fn(move |request: Request<Incoming>| {
        // Entered when hyper hands the request over, not when the future
        // first runs.
        let guard = InFlight::enter(&state);
        let response = inner.call(request);
        async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _guard: guard,
            }))
        }
    })
}

/// Counts one request as in flight until dropped (with its response body,
/// or with the request future if no response came).
struct InFlight(Arc<ParkState>);

impl InFlight {
    fn enter(state: &Arc<ParkState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Set before the count drops, so that a zero count never hides an
        // unflushed end.
        self.0.unflushed.store(true, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body holding its request's [`InFlight`] guard.
struct TrackedBody<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
