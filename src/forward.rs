//! Building the upstream request, removing hop-by-hop headers, and sending
//! it over the pooled client with the body streamed both ways.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue, CONNECTION, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, BodyState, BoxError};
use crate::error::GatewayError;
use crate::lock::lock;
use crate::policy::Verdict;
use crate::tls::{UpstreamTls, UpstreamTlsKey};
use crate::upstream_pool::{Http1Pool, SendError};

/// Where a route forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Http(HttpUpstream),
    /// The built-in demo upstream, which answers from the injected headers
    /// (these two; the route's jwt policy sets their names).
    Demo {
        subject_header: HeaderName,
        scopes_header: HeaderName,
    },
}

/// `http(s)://host:port/base`, parsed once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUpstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Without a trailing `/`; empty for none.
    pub base_path: String,
    /// `Host` for upstream requests (the authority), made once at load.
    pub host_header: HeaderValue,
    /// Roots and protocol for this upstream (the route's `ca:`, `http2:`).
    pub tls: UpstreamTls,
}

impl Upstream {
    /// A real upstream (with connections that can fail), not `demo`.
    pub fn is_http(&self) -> bool {
        matches!(self, Upstream::Http(_))
    }

    pub fn parse(text: &str) -> Result<Upstream, String> {
        if text == "demo" {
            return Ok(Upstream::Demo {
                subject_header: HeaderName::from_static("x-auth-subject"),
                scopes_header: HeaderName::from_static("x-auth-scopes"),
            });
        }
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "`{text}` must be an http:// or https:// URL or `demo`"
                ))
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{text}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{text}` must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(format!("`{text}` must not have a query string"));
        }
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("`{text}` has an invalid host"))?;
        Ok(Upstream::Http(HttpUpstream {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            host_header,
            tls: UpstreamTls::build(None, false)?,
        }))
    }
}

/// One pooled keep-alive client (plain HTTP and TLS).
pub type PooledClient = Client<HttpsConnector<HttpConnector>, Body>;

/// The upstream clients of one serving thread (or of the shared runtime):
/// one pooled client per distinct [`UpstreamTlsKey`], made on first use
/// and kept across reloads, so routes with the same settings share
/// connections and a reload that keeps a route's `ca:` keeps its pool.
#[derive(Clone, Default)]
pub struct UpstreamClient {
    /// Routes without `ca:` or `http2:` (nearly all): no lookup per request.
    default: Arc<OnceLock<PooledClient>>,
    others: Arc<Mutex<HashMap<UpstreamTlsKey, PooledClient>>>,
    /// Plain-HTTP/1.1 upstreams (no `http2:`).
    pub http1: Arc<Http1Pool>,
}

/// Past this many distinct settings (`ca:` files replaced by reloads),
/// every other client is dropped; the current routes' clients are made
/// again on their next request (their pools start afresh).
const MAX_CLIENTS: usize = 64;

impl UpstreamClient {
    /// The pooled client for `tls`.
    pub fn pooled(&self, tls: &UpstreamTls) -> Cow<'_, PooledClient> {
        if tls.key == UpstreamTlsKey::DEFAULT {
            return Cow::Borrowed(self.default.get_or_init(|| pooled_client(tls)));
        }
        let mut clients = lock(&self.others);
        if let Some(client) = clients.get(&tls.key) {
            return Cow::Owned(client.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let client = pooled_client(tls);
        clients.insert(tls.key, client.clone());
        Cow::Owned(client)
    }
}

pub fn client() -> UpstreamClient {
    UpstreamClient::default()
}

fn pooled_client(tls: &UpstreamTls) -> PooledClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // https:// URLs reach the TLS layer around this connector.
    connector.enforce_http(false);
    // SNI and certificate checks use the URL's host.
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http();
    let connector = if tls.key.http2 {
        builder.enable_http2().wrap_connector(connector)
    } else {
        builder.enable_http1().wrap_connector(connector)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .http2_only(tls.key.http2)
        .build(connector)
}

/// RFC 9110 §7.6.1 hop-by-hop headers, always removed in both directions,
/// along with every header the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// One of [`HOP_BY_HOP`] or `Upgrade`; the length test first (2, 7, 10,
/// 16 to 19 are the only lengths these names have) rules out most names
/// without comparing them nine times.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19)
        && (name == header::UPGRADE || HOP_BY_HOP.contains(name))
}

pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Runs twice per request; most messages carry none of these, and one
    // pass over the few names present is cheaper than ten removals. Most
    // names are ruled out by their length alone.
    let any = headers.keys().any(is_hop_by_hop);
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        // `Connection: keep-alive` names one of the list below: nothing to
        // collect (and no allocation) for the usual values.
        .filter(|name| !HOP_BY_HOP.contains(name))
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// What the gateway knows of the client, for `X-Forwarded-*`.
pub struct ClientInfo<'a> {
    /// The peer's IP address as a header value ([`peer_ip_header`]).
    pub peer_ip: &'a HeaderValue,
    /// `http` or `https` on the public listener.
    pub proto: &'static str,
    /// The client's `Host` (with port), if it sent one.
    pub host: Option<&'a HeaderValue>,
}

/// Turns the client's request into the upstream's: hop-by-hop headers
/// removed, then `Authorization` (unless forwarded), then the identity
/// headers injected *after* removal, so a `Connection:` header naming them
/// cannot drop them.
pub fn upstream_request(
    mut request: Request<Body>,
    target: Option<&HttpUpstream>,
    path: &str,
    verdict: Verdict,
    client: &ClientInfo<'_>,
) -> Result<Request<Body>, GatewayError> {
    let query = request.uri().query().map(str::to_owned);
    let headers = request.headers_mut();
    remove_hop_by_hop(headers);
    if !verdict.forward_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    let xff = forwarded_for(headers, client.peer_ip);
    headers.insert(HeaderName::from_static("x-forwarded-for"), xff);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(client.proto),
    );
    match client.host {
        Some(host) => headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone()),
        None => headers.remove(HeaderName::from_static("x-forwarded-host")),
    };
    for (name, value) in verdict.inject {
        headers.insert(name, value);
    }

    let base = target.map_or("", |t| t.base_path.as_str());
    // Pushed, not `format!`ed: the formatting machinery costs more than
    // the copy.
    let query_len = query.as_ref().map_or(0, |q| q.len() + 1);
    let mut path_and_query = String::with_capacity(base.len() + path.len() + query_len);
    path_and_query.push_str(base);
    path_and_query.push_str(path);
    if let Some(q) = &query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    // From the owned bytes: `parse` would copy them once more.
    let path_and_query = PathAndQuery::from_maybe_shared(bytes::Bytes::from(path_and_query))
        .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded"))?;
    // Origin-form, as it goes on the wire to an HTTP/1.1 upstream;
    // [`send`] adds the scheme and authority where its client needs them.
    *request.uri_mut() = Uri::from(path_and_query);
    if let Some(target) = target {
        request
            .headers_mut()
            .insert(HOST, target.host_header.clone());
    }
    *request.version_mut() = Version::HTTP_11;
    Ok(request)
}

/// The peer's IP address as a header value: made once per connection, as
/// formatting an address costs more than the rest of `X-Forwarded-*`.
pub fn peer_ip_header(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.ip().to_string()))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// The client's `X-Forwarded-For` (all copies, comma-joined) with the peer
/// appended. The gateway itself never acts on the client's value.
fn forwarded_for(headers: &HeaderMap, peer_ip: &HeaderValue) -> HeaderValue {
    if !headers.contains_key("x-forwarded-for") {
        // The common case: the peer alone, without a copy.
        return peer_ip.clone();
    }
    let peer = peer_ip.to_str().unwrap_or("unknown");
    let mut parts: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    parts.push(peer);
    let joined = parts.join(", ");
    // Every part came from a valid header value or an IP address, so the
    // join is valid too; fall back to the peer alone rather than fail.
    HeaderValue::from_str(&joined).unwrap_or_else(|_| peer_ip.clone())
}

/// Sends the request to `target`; `upstream_timeout` covers connecting
/// and waiting for the response head, not the streaming of the body.
/// `body_state` is the request's [`crate::body::LimitedBody`]'s: a failure
/// caused by the client's body is the client's (413 or 400), not the
/// upstream's.
///
/// Plain-HTTP/1.1 upstreams go through the serving thread's
/// [`Http1Pool`]; https and HTTP/2 ones through hyper-util's pooled client
/// for their TLS settings.
pub async fn send(
    client: &UpstreamClient,
    target: &HttpUpstream,
    request: Request<Body>,
    timeout: Duration,
    body_state: &BodyState,
) -> Result<Response<Body>, GatewayError> {
    let exchange = async {
        if target.scheme == Scheme::HTTP && !target.tls.key.http2 {
            return match client.http1.send(&target.authority, request).await {
                Ok(response) => Ok(response.map(|body| body.map_err(Into::into).boxed())),
                Err(SendError::Connect(error)) => Err(Failure::Connect(error.into())),
                Err(SendError::Http(error)) => Err(Failure::Http(error.into())),
            };
        }
        let request = with_absolute_uri(request, target)?;
        match client.pooled(&target.tls).request(request).await {
            Ok(response) => Ok(response.map(|body| body.map_err(Into::into).boxed())),
            Err(error) if error.is_connect() => Err(Failure::Connect(error.into())),
            Err(error) => Err(Failure::Http(error.into())),
        }
    };
    let response = match tokio::time::timeout(timeout, exchange).await {
        Err(_elapsed) => return Err(GatewayError::UpstreamTimeout),
        Ok(Err(_)) if body_state.exceeded() => return Err(GatewayError::BodyTooLarge),
        Ok(Err(_)) if body_state.client_failed() => {
            return Err(GatewayError::BadRequest(
                "the request body could not be read",
            ))
        }
        Ok(Err(failure)) => return Err(failure.classify()),
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    // An HTTP/2 upstream's response goes back in the client's protocol.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, body))
}

/// hyper-util's client takes the upstream from the URI: absolute-form.
fn with_absolute_uri(
    mut request: Request<Body>,
    target: &HttpUpstream,
) -> Result<Request<Body>, Failure> {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| Failure::Target)?;
    Ok(request)
}

/// Why an upstream exchange failed, before the client's body is ruled out.
enum Failure {
    /// No connection (refused, unreachable, TLS refused while connecting).
    Connect(BoxError),
    /// The connection failed after it was made.
    Http(BoxError),
    /// The route's upstream and the request's path make no URI.
    Target,
}

impl Failure {
    /// Connect, or protocol (hyper could not parse the answer), or reset.
    /// The cause (a TLS alert, a refused connection) is logged; the
    /// client's answer says no more than 502.
    fn classify(self) -> GatewayError {
        let error = match self {
            Failure::Target => {
                return GatewayError::BadRequest("request target cannot be forwarded")
            }
            Failure::Connect(error) => {
                tracing::debug!(error = %ErrorChain(&*error), "upstream connection failed");
                return GatewayError::UpstreamConnect;
            }
            Failure::Http(error) => error,
        };
        tracing::debug!(error = %ErrorChain(&*error), "upstream request failed");
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        while let Some(cause) = source {
            if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
                if hyper_error.is_parse() || hyper_error.is_parse_status() || hyper_error.is_user()
                {
                    return GatewayError::UpstreamProtocol;
                }
            }
            source = cause.source();
        }
        GatewayError::UpstreamReset
    }
}

/// An error and its sources, `: `-separated.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_parse_with_base_paths() {
        let Upstream::Http(u) = Upstream::parse("http://127.0.0.1:3000/api/v1/").unwrap() else {
            panic!("not http")
        };
        assert_eq!(u.authority.as_str(), "127.0.0.1:3000");
        assert_eq!(u.base_path, "/api/v1");
        assert!(matches!(
            Upstream::parse("demo").unwrap(),
            Upstream::Demo { .. }
        ));
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("http://u:p@x").is_err());
        assert!(Upstream::parse("/relative").is_err());
    }

    #[test]
    fn every_hop_by_hop_name_passes_the_length_test() {
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "host",
            "user-agent",
            "x-forwarded-for",
            "authorization",
            "te-x",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("close, X-Secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }
}
