//! The status page and its JSON API on the admin listener, when
//! `admin_ui: true`:
//!
//! - `GET /` (with `/ui.js`, `/ui.css`): one self-contained page served
//!   from the binary (no CDN, no external fonts, works offline) under a
//!   strict Content-Security-Policy;
//! - `GET /api/status`: the loaded config (routes, keys, JWKS providers),
//!   the last reload and per-route counters;
//! - `POST /api/explain` `{"token": "…", "route": "name"}`: the same
//!   explanation as `jwtgate explain` ([`crate::explain`]).
//!
//! Every one of them answers only a request whose `Host` is the admin
//! address (or `localhost:PORT`, or any IP literal with the admin port when
//! the listener is bound to a wildcard address), and `/api/explain` only one
//! with no `Origin` or the page's own: a web page elsewhere can reach
//! neither through DNS rebinding nor by a cross-site POST.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{collect_limited, full, Body, CollectError};
use crate::explain::{self, KeyInfo, RouteQuery};
use crate::policy::Policy;
use crate::router::Route;
use crate::runtime::Runtime;
use crate::snapshot::Snapshot;

/// The largest `/api/explain` body read (a token is at most 8 KiB).
pub const MAX_EXPLAIN_BODY: usize = 16 * 1024;

/// `default-src 'none'` and same-origin script, style and fetches only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

const INDEX_HTML: &str = include_str!("ui/index.html");
const UI_JS: &str = include_str!("ui/ui.js");
const UI_CSS: &str = include_str!("ui/ui.css");

/// Whether `path` is served by the UI (when it is on).
pub fn is_ui_path(path: &str) -> bool {
    matches!(
        path,
        "/" | "/ui.js" | "/ui.css" | "/api/status" | "/api/explain"
    )
}

/// Serves one UI request; `admin` is the admin listener's bound address.
pub async fn handle<B>(runtime: &Runtime, admin: SocketAddr, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    use http_body_util::BodyExt;
    let path = request.uri().path().to_owned();
    let Some(host) = allowed_host(request.headers(), admin) else {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the Host header must be the admin listener's address",
        );
    };
    let method = request.method().clone();
    if path == "/api/explain" {
        if method != Method::POST {
            return method_not_allowed("POST");
        }
        if !origin_allowed(request.headers(), &host) {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "cross-origin requests are refused",
            );
        }
        if !is_json(request.headers()) {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send Content-Type: application/json",
            );
        }
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_EXPLAIN_BODY as u64) {
            return too_large();
        }
        let body = request.into_body().map_err(Into::into).boxed();
        return match collect_limited(body, MAX_EXPLAIN_BODY).await {
            Ok(bytes) => explain_response(runtime, &bytes),
            Err(CollectError::TooLarge) => too_large(),
            Err(CollectError::Read(_)) => error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
            ),
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    match path.as_str() {
        "/" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/ui.js" => asset(UI_JS, "text/javascript; charset=utf-8"),
        "/ui.css" => asset(UI_CSS, "text/css; charset=utf-8"),
        _ => respond(StatusCode::OK, status(runtime, admin)),
    }
}

/// The `Host` value when it names the admin listener; `None` otherwise.
fn allowed_host(headers: &HeaderMap, admin: SocketAddr) -> Option<String> {
    let mut values = headers.get_all(HOST).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let host = value.to_str().ok()?.to_ascii_lowercase();
    let allowed = host == admin.to_string()
        || host == format!("localhost:{}", admin.port())
        // Bound to a wildcard address: any IP literal with the admin port
        // (an IP literal cannot be rebound by DNS).
        || (admin.ip().is_unspecified()
            && host
                .parse::<SocketAddr>()
                .is_ok_and(|addr| addr.port() == admin.port()));
    allowed.then_some(host)
}

/// No `Origin` (curl, scripts) or exactly the page's own origin.
fn origin_allowed(headers: &HeaderMap, host: &str) -> bool {
    let mut values = headers.get_all(ORIGIN).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(origin), None) => origin
            .to_str()
            .is_ok_and(|o| o.eq_ignore_ascii_case(&format!("http://{host}"))),
        _ => false,
    }
}

/// `application/json`, parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn explain_response(runtime: &Runtime, body: &[u8]) -> Response<Body> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ExplainRequest {
        token: String,
        route: String,
    }
    let Ok(request) = serde_json::from_slice::<ExplainRequest>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected {\"token\": \"…\", \"route\": \"name\"}",
        );
    };
    let snapshot = runtime.snapshot();
    let route = match explain::find_route(&snapshot, &RouteQuery::Name(&request.route)) {
        Ok(route) => route,
        Err(why) => return error(StatusCode::NOT_FOUND, "unknown_route", &why),
    };
    let token = request.token.trim();
    let explanation = explain::explain(&snapshot, route, token, unix_now());
    match serde_json::to_value(&explanation) {
        Ok(value) => respond(StatusCode::OK, value),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the explanation could not be encoded",
        ),
    }
}

/// The `/api/status` document. `jwks` is a list, one entry per provider:
/// `{"issuer", "url", "keys": [{"kid", "alg"}], "last_refresh": {"result",
/// "at", "error"} | null, "age_secs"}`; empty, it says "no JWKS providers
/// configured".
pub fn status(runtime: &Runtime, admin: SocketAddr) -> Value {
    let snapshot = runtime.snapshot();
    let now = unix_now();
    let last = runtime.last_reload();
    let stats = runtime.reload_stats();
    let keys: Vec<Value> = snapshot
        .keys
        .iter()
        .map(|key| {
            let mut info = serde_json::to_value(KeyInfo::of(&key.verifier)).unwrap_or_default();
            info["signing"] = json!(key.signer.is_some());
            info
        })
        .collect();
    json!({
        "source": snapshot.source,
        "listen": snapshot.listen.to_string(),
        "admin": admin.to_string(),
        "now": now,
        "reload": {
            "result": last.result,
            "at": last.at_unix_secs as u64,
            "age_secs": now.saturating_sub(last.at_unix_secs as u64),
            "error": last.error,
            "successes": stats.success,
            "failures": stats.failure,
        },
        "routes": snapshot.routes.iter().map(route_json).collect::<Vec<_>>(),
        "keys": keys,
        "jwks": jwks_json(&snapshot),
        "token_endpoint": token_endpoint_json(&snapshot),
        "counters": runtime.metrics.route_counters(),
    })
}

/// One entry per `jwks:` provider, by issuer.
fn jwks_json(snapshot: &Snapshot) -> Vec<Value> {
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let mut providers: Vec<_> = snapshot.keys.remote.values().collect();
    providers.sort_by(|a, b| a.issuer().cmp(b.issuer()));
    providers
        .into_iter()
        .map(|provider| {
            let status = provider.status();
            let keys: Vec<Value> = provider
                .keys()
                .describe()
                .into_iter()
                .map(|(kid, algs)| {
                    json!({
                        "kid": kid.unwrap_or("(no kid)"),
                        "alg": algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(" "),
                    })
                })
                .collect();
            let last_refresh = status.last_attempt.map(|at| {
                let failed = status.last_error.is_some();
                json!({
                    "result": if failed { "failure" } else { "success" },
                    "at": secs(at),
                    "error": status.last_error,
                })
            });
            let age = status
                .last_success
                .and_then(|at| at.elapsed().ok())
                .map(|d| d.as_secs());
            json!({
                "issuer": provider.issuer(),
                "url": provider.settings().source(),
                "keys": keys,
                "last_refresh": last_refresh,
                "age_secs": age,
            })
        })
        .collect()
}

fn route_json(route: &Route) -> Value {
    let policies: Vec<Value> = route
        .policies
        .iter()
        .map(|policy| match policy {
            Policy::Jwt(jwt) => {
                let rules = jwt.rules();
                json!({
                    "kind": "jwt",
                    "audiences": rules.audiences,
                    "issuer": rules.issuer,
                    "scopes": jwt.required_scopes(),
                    "leeway_secs": rules.leeway_secs,
                    "typ": rules.typ,
                    "scope_claim": rules.scope_claim,
                    "forward_token": jwt.forward_token(),
                })
            }
        })
        .collect();
    json!({
        "name": route.name,
        "path_prefix": route.matcher.path_prefix,
        "methods": route.matcher.methods.as_ref().map(|m| m.iter().map(Method::as_str).collect::<Vec<_>>()),
        "host": route.matcher.host,
        "upstream": explain::upstream_text(&route.upstream),
        "strip_prefix": route.strip_prefix,
        "policies": policies,
    })
}

fn token_endpoint_json(snapshot: &Snapshot) -> Value {
    match &snapshot.token_endpoint {
        Some(endpoint) => json!({
            "path": endpoint.path,
            "issuer": endpoint.issuer,
            "signing_key": endpoint.signer.kid,
            "audience": endpoint.audience,
        }),
        None => Value::Null,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Headers every UI answer carries.
fn secure(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(response)
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    secure(response)
}

fn error(code: StatusCode, error: &str, description: &str) -> Response<Body> {
    respond(
        code,
        json!({"error": error, "error_description": description}),
    )
}

fn too_large() -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is over 16 KiB",
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
