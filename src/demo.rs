//! The built-in `demo` upstream: answers with what the gateway injected, so
//! the tutorial shows exactly what a real upstream would see.

use http::{HeaderMap, HeaderName, Request, Response};
use serde_json::json;

use crate::body::{full, Body};

/// `{"client": <subject header>, "scopes": <scopes header>}` (JSON `null`
/// for a header that was not injected).
pub fn respond(
    request: &Request<Body>,
    subject_header: &HeaderName,
    scopes_header: &HeaderName,
) -> Response<Body> {
    let text = |headers: &HeaderMap, name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = json!({
        "client": text(request.headers(), subject_header),
        "scopes": text(request.headers(), scopes_header),
    });
    let mut response = Response::new(full(body.to_string()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
