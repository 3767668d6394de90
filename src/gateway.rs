//! `handle(request)`: load the snapshot once, check the request's shape,
//! serve the token endpoint and discovery documents, route, run the policy
//! chain, forward. Any `Err` becomes a response in `error.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, Method, Request, Response};
use http_body_util::BodyExt;

use crate::access_log::{self, AccessRecord};
use crate::body::{full, Body, BodyState, LimitedBody};
use crate::client_addr::client_addr;
use crate::error::GatewayError;
use crate::forward::{self, ClientInfo, Upstream, UpstreamClient};
use crate::jws::{self, AuthFailure};
use crate::keys::remote::RemoteKeySet;
use crate::keys::KeySet;
use crate::metrics::{TokenResult, UpstreamErrorKind};
use crate::policy::{PolicyInput, Verdict};
use crate::router;
use crate::runtime::Runtime;
use crate::snapshot::Snapshot;
use crate::token::discovery::{JWKS_PATH, METADATA_PATH};
use crate::token::endpoint::Caller;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How the request reached the gateway.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// `peer`'s IP address for `X-Forwarded-For`, formatted once.
    pub peer_ip: HeaderValue,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The subject of the client certificate the TLS handshake verified
    /// (`tls.client_ca`), e.g. `CN=billing,O=Acme`.
    pub client_subject: Option<Arc<str>>,
}

impl Connection {
    pub fn new(
        peer: SocketAddr,
        proto: &'static str,
        client_subject: Option<Arc<str>>,
    ) -> Connection {
        Connection {
            peer,
            peer_ip: crate::forward::peer_ip_header(peer),
            proto,
            client_subject,
        }
    }
}

/// The `route` label of the token endpoint (a reserved route name).
const TOKEN_ROUTE: &str = "token";
/// The `route` label of requests no route matched (a reserved route name).
const NO_ROUTE: &str = "none";

/// What handling a request found out, for metrics and the access log.
struct Exchange<'s> {
    /// The matched route's name, [`TOKEN_ROUTE`] or [`NO_ROUTE`].
    route: &'s str,
    /// The verified subject.
    subject: Option<Arc<str>>,
    /// Sending upstream until its response headers (or failure).
    upstream: Option<Duration>,
}

/// Handles one request end to end; never fails (errors are responses).
/// Records the request's metrics and attaches its access log line.
pub async fn handle(
    runtime: &Runtime,
    client: &UpstreamClient,
    request: Request<Body>,
    connection: Connection,
) -> Response<Body> {
    let started = Instant::now();
    let snapshot = runtime.snapshot();
    let request_id = request_id(request.headers());
    let method = request.method().clone();
    let logged_path = access_log::enabled().then(|| request.uri().path().to_owned());

    let mut exchange = Exchange {
        route: NO_ROUTE,
        subject: None,
        upstream: None,
    };
    let result = route_and_forward(
        runtime,
        client,
        &snapshot,
        request,
        &connection,
        &request_id,
        &mut exchange,
    )
    .await;
    let metrics = &runtime.metrics;
    let mut reason = None;
    let mut response = match result {
        Ok(response) => {
            if exchange.route == TOKEN_ROUTE {
                metrics.token_request(TokenResult::Issued);
            }
            response
        }
        Err(error) => {
            if exchange.route == TOKEN_ROUTE {
                metrics.token_request(TokenResult::of_error(&error));
            }
            if let Some(failure) = error.auth_failure() {
                metrics.auth_failure(exchange.route, failure);
                reason = Some(failure.as_str());
            }
            if let Some(kind) = UpstreamErrorKind::of_error(&error) {
                metrics.upstream_error(exchange.route, kind);
            }
            tracing::debug!(route = exchange.route, reason, error = ?error, "request refused");
            error.into_response()
        }
    };
    response
        .headers_mut()
        .insert(REQUEST_ID, request_id.clone());
    metrics.request(
        exchange.route,
        &method,
        response.status(),
        started.elapsed(),
    );
    if let Some(upstream) = exchange.upstream {
        metrics.upstream_duration(exchange.route, upstream);
    }
    match logged_path {
        Some(path) => AccessRecord {
            route: exchange.route.to_owned(),
            method,
            path,
            status: response.status().as_u16(),
            started,
            upstream: exchange.upstream,
            subject: exchange.subject,
            reason,
            request_id,
            peer: connection.peer,
            client_subject: connection.client_subject,
        }
        .attach(response),
        None => response,
    }
}

async fn route_and_forward<'s>(
    runtime: &Runtime,
    upstream_client: &UpstreamClient,
    snapshot: &'s Snapshot,
    mut request: Request<Body>,
    connection: &Connection,
    request_id: &HeaderValue,
    exchange: &mut Exchange<'s>,
) -> Result<Response<Body>, GatewayError> {
    // The limits count what the client sent, before the gateway adds its
    // own `X-Request-Id`.
    check_head_limits(&request, snapshot)?;
    request.headers_mut().insert(REQUEST_ID, request_id.clone());
    router::check_normal_form(request.uri().path()).map_err(GatewayError::BadRequest)?;
    let client_host = client_host(&request)?;
    let host = client_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(router::host_for_matching);
    let path = request.uri().path().to_owned();
    let now = unix_now();

    if let Some(endpoint) = &snapshot.token_endpoint {
        if path == endpoint.path {
            exchange.route = TOKEN_ROUTE;
            let caller = Caller {
                addr: client_addr(
                    connection.peer.ip(),
                    request.headers(),
                    &snapshot.trusted_proxies,
                ),
                throttle: &runtime.throttle,
            };
            return endpoint.handle(request, now, &caller).await;
        }
    }
    if path == JWKS_PATH {
        return well_known(request.method(), Some(&snapshot.jwks_document));
    }
    if path == METADATA_PATH {
        return well_known(request.method(), snapshot.metadata_document.as_ref());
    }

    let route = router::find(&snapshot.routes, host.as_deref(), request.method(), &path)
        .ok_or(GatewayError::NoRoute)?;
    exchange.route = route.name.as_str();
    strip_identity_headers(request.headers_mut(), &snapshot.injected_headers);

    let mut verdict = Verdict::default();
    let input = PolicyInput {
        headers: request.headers(),
        keys: &snapshot.keys,
        now,
        metrics: &runtime.metrics,
        token_cache: &runtime.token_cache,
        client_subject: connection.client_subject.as_deref(),
    };
    if let Err(error) = run_chain(route, &input, &mut verdict) {
        // A `jwks:` issuer may have rotated its keys: one refresh of its set
        // (shared with every request waiting on the same set, and rate
        // limited), then the chain once more against the refreshed set.
        let GatewayError::InvalidToken(rejection) = &error else {
            return Err(error);
        };
        if rejection.reason != AuthFailure::UnknownKey {
            return Err(error);
        }
        match remote_key_set_of(request.headers(), &snapshot.keys) {
            Some(set) if set.refresh_for_unknown_kid().await => {
                verdict = Verdict::default();
                run_chain(route, &input, &mut verdict)?;
            }
            _ => return Err(error),
        }
    }
    exchange.subject = verdict.subject.clone();

    let limit = snapshot.limits.max_body_bytes;
    if declared_length(request.headers()).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge);
    }
    let client = ClientInfo {
        peer_ip: &connection.peer_ip,
        proto: connection.proto,
        host: client_host.as_ref(),
    };
    let target_path = if route.strip_prefix {
        route.matcher.strip(&path)
    } else {
        &path
    };
    let (request, body_state) = limit_body(request, limit);
    let target = match &route.upstream {
        Upstream::Http(target) => Some(target),
        Upstream::Demo { .. } => None,
    };
    let upstream_request =
        forward::upstream_request(request, target, target_path, verdict, &client)?;
    match &route.upstream {
        Upstream::Http(target) => {
            let sent = Instant::now();
            let response = forward::send(
                upstream_client,
                target,
                upstream_request,
                snapshot.limits.upstream_timeout.0,
                &body_state,
            )
            .await;
            exchange.upstream = Some(sent.elapsed());
            response
        }
        Upstream::Demo {
            subject_header,
            scopes_header,
        } => Ok(crate::demo::respond(
            &upstream_request,
            subject_header,
            scopes_header,
        )),
    }
}

fn run_chain(
    route: &router::Route,
    input: &PolicyInput<'_>,
    verdict: &mut Verdict,
) -> Result<(), GatewayError> {
    for policy in &route.policies {
        policy.apply(input, verdict)?;
    }
    Ok(())
}

/// The `jwks:` set the request's bearer token is verified against, if its
/// `iss` names one. Only read after a refusal, so the request path does not
/// parse the token twice.
fn remote_key_set_of(headers: &HeaderMap, keys: &KeySet) -> Option<Arc<RemoteKeySet>> {
    if keys.remote.is_empty() {
        return None;
    }
    let token = crate::policy::jwt::bearer_token_in(headers).ok()?;
    let parsed = jws::parse(token).ok()?;
    let issuer = parsed.claims.get("iss")?.as_str()?;
    keys.remote.get(issuer).cloned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(REQUEST_ID).iter();
    if let (Some(value), None) = (values.next(), values.next()) {
        let bytes = value.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic()) {
            return value.clone();
        }
    }
    fresh_request_id()
}

/// A request id unique to this process and run: 8 random bytes drawn once
/// at start, then a counter — 22 base64url characters. Ids identify, they
/// do not authenticate, so a counter is enough and spares the random
/// generator on every request.
fn fresh_request_id() -> HeaderValue {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<[u8; 8]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Without randomness the time of day makes runs distinct enough.
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            bytes = unix_now().to_be_bytes();
        }
        bytes
    });
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(prefix);
    id[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    let mut text = [0u8; 22];
    let written = URL_SAFE_NO_PAD
        .encode_slice(id, &mut text)
        .unwrap_or_default();
    HeaderValue::from_bytes(&text[..written]).unwrap_or(HeaderValue::from_static("unavailable"))
}

/// `limits.max_header_bytes` (request line and header lines, counted as on
/// the wire) and `limits.max_headers`.
fn check_head_limits(request: &Request<Body>, snapshot: &Snapshot) -> Result<(), GatewayError> {
    let headers = request.headers();
    if headers.len() > snapshot.limits.max_headers {
        return Err(GatewayError::HeadersTooLarge);
    }
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri
            .authority()
            .map_or(0, |a| a.as_str().len() + "http://".len());
    let request_line = request.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let header_lines: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + ": ".len() + v.len() + "\r\n".len())
        .sum();
    let bytes = request_line + header_lines;
    if bytes > snapshot.limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    Ok(())
}

/// The client's host (RFC 9112 §3.2): an absolute-form target's authority,
/// else the one `Host` header. Refused with 400: several `Host` headers, a
/// `Host` that is not a valid authority or carries userinfo, and an HTTP/1.1
/// request with no host at all. An empty `Host` means none.
fn client_host(request: &Request<Body>) -> Result<Option<HeaderValue>, GatewayError> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("several Host headers"));
    }
    let header = header.filter(|h| !h.is_empty());
    if let Some(value) = header {
        let valid = http::uri::Authority::try_from(value.as_bytes())
            .is_ok_and(|authority| !authority.as_str().contains('@'));
        if !valid {
            return Err(GatewayError::BadRequest(
                "the Host header is not a valid host",
            ));
        }
    }
    if let Some(authority) = request.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(GatewayError::BadRequest(
                "the request target carries userinfo",
            ));
        }
        return Ok(HeaderValue::from_str(authority.as_str()).ok());
    }
    if header.is_none() && request.version() == http::Version::HTTP_11 {
        return Err(GatewayError::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    Ok(header.cloned())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Removes every header the gateway injects on any route, also when spelt
/// with `_` for `-` (some upstream frameworks treat the two alike).
pub fn strip_identity_headers(headers: &mut HeaderMap, injected: &[HeaderName]) {
    let same = |a: &str, b: &str| {
        a.len() == b.len()
            && a.bytes()
                .zip(b.bytes())
                .all(|(x, y)| x == y || (x == b'_' && y == b'-'))
    };
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| injected.iter().any(|i| same(name.as_str(), i.as_str())))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

fn limit_body(request: Request<Body>, limit: u64) -> (Request<Body>, Arc<BodyState>) {
    let (parts, body) = request.into_parts();
    let (limited, state) = LimitedBody::new(body, limit);
    (Request::from_parts(parts, limited.boxed()), state)
}

fn well_known(
    method: &Method,
    document: Option<&bytes::Bytes>,
) -> Result<Response<Body>, GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::WellKnownMethodNotAllowed);
    }
    let document = document.ok_or(GatewayError::NoRoute)?;
    let mut response = Response::new(full(document.clone()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_stripped_in_any_spelling() {
        let mut headers = HeaderMap::new();
        headers.insert("x-auth-subject", HeaderValue::from_static("admin"));
        headers.insert("x_auth_subject", HeaderValue::from_static("admin"));
        headers.insert("x-auth_scopes", HeaderValue::from_static("all"));
        headers.insert("x-other", HeaderValue::from_static("1"));
        strip_identity_headers(
            &mut headers,
            &[
                HeaderName::from_static("x-auth-subject"),
                HeaderName::from_static("x-auth-scopes"),
            ],
        );
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-other"));
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 22);
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
