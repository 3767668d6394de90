//! The access log: one structured `tracing` event per request, target
//! `jwtgate::access`, written when the response body has been sent (or
//! abandoned), so it carries the bytes sent and the whole duration.
//!
//! Fields: `route`, `method`, `path` (never the query string, where tokens
//! are sometimes put), `status`, `duration_ms`, `upstream_ms`, `subject`,
//! `bytes`, `reason` (the auth failure), `request_id`, `peer`,
//! `client_subject` (the verified client certificate's subject, mTLS only),
//! `completed`.
//! The token and the other request headers are never logged.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};

pub const TARGET: &str = "jwtgate::access";

/// Whether access log lines are written at all (`RUST_LOG` may turn them
/// off; then the response body is not wrapped).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Everything the line says except what the body adds.
#[derive(Debug)]
pub struct AccessRecord {
    pub route: String,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    pub upstream: Option<Duration>,
    pub subject: Option<Arc<str>>,
    pub reason: Option<&'static str>,
    pub request_id: HeaderValue,
    pub peer: SocketAddr,
    /// The verified client certificate's subject (mTLS).
    pub client_subject: Option<std::sync::Arc<str>>,
}

impl AccessRecord {
    fn write(&self, bytes: u64, completed: bool) {
        tracing::info!(
            target: TARGET,
            route = %self.route,
            method = %self.method,
            path = %self.path,
            status = self.status,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            upstream_ms = self.upstream.map(|d| d.as_secs_f64() * 1000.0),
            subject = self.subject.as_deref(),
            bytes,
            reason = self.reason,
            request_id = self.request_id.to_str().unwrap_or(""),
            peer = %self.peer,
            client_subject = self.client_subject.as_deref(),
            completed,
        );
    }

    /// Wraps `response`'s body so the line is written when it ends.
    pub fn attach(self, response: Response<Body>) -> Response<Body> {
        response.map(|inner| {
            LoggedBody {
                inner,
                record: Some(self),
                bytes: 0,
            }
            .boxed()
        })
    }
}

/// A response body that counts the bytes it yields and writes the access
/// line once, at its end or when dropped (a client that went away).
struct LoggedBody {
    inner: Body,
    record: Option<AccessRecord>,
    bytes: u64,
}

impl LoggedBody {
    fn finish(&mut self, completed: bool) {
        if let Some(record) = self.record.take() {
            record.write(self.bytes, completed);
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(None) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says the body is done.
        let completed = self.inner.is_end_stream();
        self.finish(completed);
    }
}
