//! Body types shared by the server, the gateway and the forwarder, and the
//! streaming request-size limit.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body jwtgate sends or receives, boxed so the forwarder can stream
/// an upstream body and the gateway can answer with its own bytes alike.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Why [`collect_limited`] gave up.
#[derive(Debug)]
pub enum CollectError {
    TooLarge,
    Read(BoxError),
}

/// Reads a whole (small) body, refusing it as soon as it passes `limit`.
pub async fn collect_limited(mut body: Body, limit: usize) -> Result<Bytes, CollectError> {
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(CollectError::Read)?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > limit {
                return Err(CollectError::TooLarge);
            }
            collected.extend_from_slice(data);
        }
    }
    Ok(collected.freeze())
}

/// Wraps a request body and fails it once more than `limit` bytes have
/// passed, so a chunked body cannot grow past `max_body_bytes` on its way to
/// the upstream. Its [`BodyState`] tells the caller why an upstream request
/// failed: the body was too large, or the client's body itself broke
/// (malformed chunks, a client gone) — neither is the upstream's fault.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    state: Arc<BodyState>,
}

/// What happened to a [`LimitedBody`] while it streamed.
#[derive(Debug, Default)]
pub struct BodyState {
    exceeded: AtomicBool,
    client_failed: AtomicBool,
}

impl BodyState {
    /// More than the limit arrived.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    /// Reading the client's body failed (bad chunked framing, a reset).
    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::SeqCst)
    }
}

/// The error a [`LimitedBody`] yields past its limit.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds the configured limit")
    }
}

impl std::error::Error for BodyTooLarge {}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64) -> (Self, Arc<BodyState>) {
        let state = Arc::new(BodyState::default());
        (
            LimitedBody {
                inner,
                remaining: limit,
                state: state.clone(),
            },
            state,
        )
    }
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.state.exceeded.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.client_failed.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn limited_body_fails_past_the_limit_and_says_so() {
        let chunks = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"12345"))),
            Ok(Frame::data(Bytes::from_static(b"678"))),
        ];
        let (body, state) = LimitedBody::new(StreamBody::new(futures_stream(chunks)), 7);
        assert!(body.collect().await.is_err());
        assert!(state.exceeded() && !state.client_failed());

        let chunks = vec![Ok::<_, BoxError>(Frame::data(Bytes::from_static(
            b"1234567",
        )))];
        let (body, state) = LimitedBody::new(StreamBody::new(futures_stream(chunks)), 7);
        assert_eq!(
            body.collect().await.unwrap().to_bytes(),
            Bytes::from_static(b"1234567")
        );
        assert!(!state.exceeded() && !state.client_failed());

        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![Err("bad chunk size".into())];
        let (body, state) = LimitedBody::new(StreamBody::new(futures_stream(chunks)), 7);
        assert!(body.collect().await.is_err());
        assert!(state.client_failed() && !state.exceeded());
    }

    fn futures_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Unpin {
        struct Iter<T>(std::vec::IntoIter<T>);
        impl<T: Unpin> futures_core::Stream for Iter<T> {
            type Item = T;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
                Poll::Ready(self.0.next())
            }
        }
        Iter(items.into_iter())
    }
}
