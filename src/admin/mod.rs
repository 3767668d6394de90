//! The admin listener (SPEC §3, default `127.0.0.1:9901`): `/metrics`,
//! `/healthz`, `/readyz`. Plain HTTP/1.1, GET and HEAD only; every answer
//! but the metrics text is JSON. With `admin_ui: true` it also serves the
//! status page and its JSON API ([`ui`]). It keeps serving while the public listener
//! drains, so `/readyz` can say 503 to load balancers until the end.

pub mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{full, Body};
use crate::metrics::TEXT_FORMAT;
use crate::runtime::Runtime;
use crate::server::accept_until;

/// A scrape or probe must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until `shutdown` turns `true`.
pub async fn serve_admin(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(admin) = listener.local_addr() else {
        tracing::error!("cannot read the admin listener's address");
        return;
    };
    accept_until(&listener, &mut shutdown, |stream, _peer| {
        let runtime = runtime.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let runtime = runtime.clone();
            async move { Ok::<_, Infallible>(handle_request(&runtime, admin, request).await) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    })
    .await;
}

/// Every admin request: the status page and its API when `admin_ui` is on,
/// else [`handle`]. `admin` is the listener's bound address (the `Host`
/// the UI accepts). Public so tests can call it without a socket.
pub async fn handle_request<B>(
    runtime: &Runtime,
    admin: SocketAddr,
    request: Request<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    if ui::is_ui_path(request.uri().path()) && runtime.snapshot().admin_ui {
        return ui::handle(runtime, admin, request).await;
    }
    handle(runtime, request.method(), request.uri().path())
}

/// The admin endpoints. Public so tests can call it without a socket.
pub fn handle(runtime: &Runtime, method: &Method, path: &str) -> Response<Body> {
    let endpoint = match path {
        "/metrics" => Endpoint::Metrics,
        "/healthz" => Endpoint::Health,
        "/readyz" => Endpoint::Ready,
        _ => return json(StatusCode::NOT_FOUND, "not_found", "no admin endpoint here"),
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = json(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET or HEAD",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match endpoint {
        Endpoint::Metrics => {
            runtime.metrics.update_jwks(&runtime.snapshot().keys.remote);
            let mut response = Response::new(full(runtime.metrics.render()));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Endpoint::Health => status(StatusCode::OK, "alive"),
        Endpoint::Ready if runtime.is_ready() => status(StatusCode::OK, "ready"),
        Endpoint::Ready if runtime.is_draining() => {
            status(StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        // A `jwks:` provider of the starting config has not answered yet.
        Endpoint::Ready => status(StatusCode::SERVICE_UNAVAILABLE, "waiting_for_key_sets"),
    }
}

enum Endpoint {
    Metrics,
    Health,
    Ready,
}

/// `{"status": …}`.
fn status(code: StatusCode, status: &str) -> Response<Body> {
    respond(code, serde_json::json!({ "status": status }))
}

/// The gateway's usual error shape.
fn json(code: StatusCode, error: &str, description: &str) -> Response<Body> {
    respond(
        code,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

fn respond(code: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
