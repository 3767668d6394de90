//! The OAuth2 token endpoint: client credentials grant (RFC 6749 §4.4) with
//! `client_secret_basic` and `client_secret_post` authentication.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::{HeaderMap, Method, Request, Response};
use serde::Serialize;

use super::client_auth::{is_valid_client_id, is_valid_scope, ClientRegistry};
use super::mint::{self, AccessClaims};
use super::throttle::{Throttle, ThrottleRules};
use crate::body::{collect_limited, full, Body, CollectError};
use crate::config::TokenEndpointConfig;
use crate::error::{GatewayError, OAuthErrorCode};
use crate::keys::{KeySet, Signer};

/// The largest token request body read (a client-credentials request is a
/// few hundred bytes); larger ones are refused before any hashing.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

/// `token_endpoint:`, compiled.
#[derive(Debug)]
pub struct TokenEndpoint {
    pub path: String,
    pub issuer: Option<String>,
    pub signer: Arc<Signer>,
    pub ttl_secs: u64,
    pub not_before_skew_secs: u64,
    pub audience: String,
    pub any_client: bool,
    pub default_scopes: Vec<String>,
    pub clients: Arc<ClientRegistry>,
    pub throttle: ThrottleRules,
}

/// Who is asking, for the throttle of failed authentications.
pub struct Caller<'a> {
    /// The client address (see [`crate::client_addr`]).
    pub addr: IpAddr,
    pub throttle: &'a Throttle,
}

impl TokenEndpoint {
    /// `Err((field, message))`, the field relative to `token_endpoint`.
    pub fn build(
        config: &TokenEndpointConfig,
        keys: &KeySet,
    ) -> Result<TokenEndpoint, (String, String)> {
        if !config.path.starts_with('/') || crate::router::check_normal_form(&config.path).is_err()
        {
            return Err((
                "path".into(),
                format!("`{}` must be an absolute path in normal form", config.path),
            ));
        }
        let key = keys.get(&config.signing_key).ok_or_else(|| {
            (
                "signing_key".to_owned(),
                format!("no key with kid `{}` under keys:", config.signing_key),
            )
        })?;
        let signer = key.signer.clone().ok_or_else(|| {
            (
                "signing_key".to_owned(),
                format!(
                    "key `{}` has no private key (it is verify-only)",
                    config.signing_key
                ),
            )
        })?;
        if config.audience.is_empty() {
            return Err(("audience".into(), "must not be empty".into()));
        }
        if config.ttl.0.as_secs() == 0 {
            return Err(("ttl".into(), "must be at least 1s".into()));
        }
        for scope in &config.default_scopes {
            if !is_valid_scope(scope) {
                return Err((
                    "default_scopes".into(),
                    format!("`{scope}` is not a valid scope token"),
                ));
            }
        }
        let clients = match (&config.clients, config.any_client) {
            (Some(clients), _) => clients.as_slice(),
            (None, true) => &[],
            (None, false) => {
                return Err((
                    "clients".into(),
                    "required unless any_client is true".into(),
                ))
            }
        };
        let clients = ClientRegistry::build(clients)?;
        let throttle = ThrottleRules::build(&config.throttle)
            .map_err(|(f, m)| (format!("throttle.{f}"), m))?;
        Ok(TokenEndpoint {
            path: config.path.clone(),
            issuer: config.issuer.clone(),
            signer,
            ttl_secs: config.ttl.0.as_secs(),
            not_before_skew_secs: config.not_before_skew.0.as_secs(),
            audience: config.audience.clone(),
            any_client: config.any_client,
            default_scopes: config.default_scopes.clone(),
            clients: Arc::new(clients),
            throttle,
        })
    }

    /// Handles one request to the token endpoint path, any method. `now` is
    /// seconds since the epoch.
    pub async fn handle(
        &self,
        request: Request<Body>,
        now: u64,
        caller: &Caller<'_>,
    ) -> Result<Response<Body>, GatewayError> {
        if request.method() != Method::POST {
            return Err(GatewayError::TokenMethodNotAllowed);
        }
        if let Some(query) = request.uri().query() {
            if form_urlencoded::parse(query.as_bytes())
                .any(|(k, _)| k == "client_id" || k == "client_secret")
            {
                return Err(invalid_request(
                    "client credentials must not be sent in the query string",
                ));
            }
        }
        if !is_form_content_type(request.headers()) {
            return Err(invalid_request(
                "content type must be application/x-www-form-urlencoded",
            ));
        }
        let (parts, body) = request.into_parts();
        let body = collect_limited(body, MAX_TOKEN_REQUEST_BYTES)
            .await
            .map_err(|e| match e {
                CollectError::TooLarge => GatewayError::BodyTooLarge,
                CollectError::Read(_) => invalid_request("the request body could not be read"),
            })?;
        let form = Form::parse(&body)?;

        match form.get("grant_type") {
            None => return Err(invalid_request("grant_type is required")),
            Some("client_credentials") => {}
            Some(_) => {
                return Err(GatewayError::OAuth {
                    code: OAuthErrorCode::UnsupportedGrantType,
                    description: "only client_credentials is supported",
                })
            }
        }
        let (id, secret) = match client_credentials(&parts.headers, &form) {
            Ok(credentials) => credentials,
            Err(CredentialProblem::Refused(error)) => return Err(error),
            Err(CredentialProblem::BadGuess) => {
                // Garbage credentials are a failed guess too, but name no
                // client: only the address counts.
                self.check_throttle("", caller)?;
                if !self.any_client {
                    caller
                        .throttle
                        .failed(&self.throttle, None, caller.addr, Instant::now());
                }
                return Err(invalid_client("client authentication failed"));
            }
        };

        let (subject, audience, allowed) = if self.any_client {
            // Demo mode: any id and secret; the id becomes the subject.
            (id, self.audience.clone(), self.default_scopes.clone())
        } else {
            // Before any hashing: a throttled caller costs nothing.
            self.check_throttle(&id, caller)?;
            let presented_id = id.clone();
            let registry = self.clients.clone();
            let authenticate = move || {
                registry
                    .authenticate(&id, secret.as_bytes())
                    .map(|c| (c.id.clone(), c.audience.clone(), c.scopes.clone()))
            };
            let client = if self.clients.is_expensive() {
                tokio::task::spawn_blocking(authenticate)
                    .await
                    .ok()
                    .flatten()
            } else {
                authenticate()
            };
            let Some((id, audience, scopes)) = client else {
                caller.throttle.failed(
                    &self.throttle,
                    Some(&presented_id),
                    caller.addr,
                    Instant::now(),
                );
                return Err(invalid_client("client authentication failed"));
            };
            caller.throttle.succeeded(&id, caller.addr);
            (
                id,
                audience.unwrap_or_else(|| self.audience.clone()),
                scopes,
            )
        };

        let granted = granted_scopes(form.get("scope"), &allowed)?;
        let claims = AccessClaims::new(
            &subject,
            &audience,
            &granted,
            self.issuer.as_deref(),
            now,
            self.ttl_secs,
            self.not_before_skew_secs,
        )
        .map_err(|_| invalid_request("the token could not be issued"))?;
        let access_token = mint::sign(&self.signer, &claims)
            .map_err(|_| invalid_request("the token could not be issued"))?;
        Ok(token_response(&TokenResponse {
            access_token: &access_token,
            token_type: "bearer",
            expires_in: self.ttl_secs,
            scope: &claims.scopes,
        }))
    }
}

impl TokenEndpoint {
    /// `429 slow_down` when `client_id` from the caller's address has failed
    /// too often (an empty id checks the address alone). The demo's
    /// `any_client` authenticates nobody, so nothing is throttled there.
    fn check_throttle(&self, client_id: &str, caller: &Caller<'_>) -> Result<(), GatewayError> {
        if self.any_client {
            return Ok(());
        }
        caller
            .throttle
            .check(&self.throttle, client_id, caller.addr, Instant::now())
            .map_err(|retry_after_secs| GatewayError::Throttled { retry_after_secs })
    }
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

fn token_response(body: &TokenResponse<'_>) -> Response<Body> {
    let mut response = Response::new(full(serde_json::to_vec(body).unwrap_or_default()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn invalid_request(description: &'static str) -> GatewayError {
    GatewayError::OAuth {
        code: OAuthErrorCode::InvalidRequest,
        description,
    }
}

fn invalid_client(description: &'static str) -> GatewayError {
    GatewayError::OAuth {
        code: OAuthErrorCode::InvalidClient,
        description,
    }
}

/// `application/x-www-form-urlencoded`, parameters such as `charset` allowed.
fn is_form_content_type(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let media_type = text.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// The request parameters; RFC 6749 §3.2: none may appear twice.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Result<Form, GatewayError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(body) {
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(invalid_request("a parameter is repeated"));
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Form(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Client id and secret from HTTP Basic (RFC 6749 §2.3.1, both parts
/// form-url-decoded) or from the body. A body secret beside Basic is refused;
/// a body `client_id` equal to the Basic one is tolerated.
/// Why no (id, secret) pair came out of a request.
enum CredentialProblem {
    /// A malformed request, or no credentials at all: answered as is.
    Refused(GatewayError),
    /// Credentials that cannot be right (malformed Basic, an id or secret
    /// too long or not printable): a failed authentication, refused before
    /// any hashing.
    BadGuess,
}

fn client_credentials(
    headers: &HeaderMap,
    form: &Form,
) -> Result<(String, String), CredentialProblem> {
    use CredentialProblem::{BadGuess, Refused};
    let mut authorizations = headers.get_all(AUTHORIZATION).iter();
    let authorization = authorizations.next();
    if authorizations.next().is_some() {
        return Err(Refused(invalid_request("several Authorization headers")));
    }
    let (id, secret) = match authorization {
        Some(value) => {
            let (id, secret) = basic_credentials(value).ok_or(BadGuess)?;
            if form.get("client_secret").is_some() {
                return Err(Refused(invalid_request(
                    "use one client authentication method",
                )));
            }
            if form.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(Refused(invalid_request(
                    "client_id does not match the Basic credentials",
                )));
            }
            (id, secret)
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (id.to_owned(), secret.to_owned()),
            _ => return Err(Refused(invalid_client("client authentication is required"))),
        },
    };
    if !is_valid_client_id(&id) || secret.len() > 1024 {
        return Err(BadGuess);
    }
    Ok((id, secret))
}

fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim_start_matches(' ')).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space,
/// `%XX` a byte; the result must be UTF-8.
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The requested scopes if all are allowed (absent: all allowed ones).
fn granted_scopes(
    requested: Option<&str>,
    allowed: &[String],
) -> Result<Vec<String>, GatewayError> {
    let invalid_scope = |description| GatewayError::OAuth {
        code: OAuthErrorCode::InvalidScope,
        description,
    };
    let Some(requested) = requested else {
        return Ok(allowed.to_vec());
    };
    let mut granted: Vec<String> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !is_valid_scope(scope) || !allowed.iter().any(|a| a == scope) {
            return Err(invalid_scope(
                "a requested scope is not allowed for this client",
            ));
        }
        if !granted.iter().any(|g| g == scope) {
            granted.push(scope.to_owned());
        }
    }
    if granted.is_empty() {
        return Err(invalid_scope("the scope parameter is empty"));
    }
    Ok(granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_url_decoded() {
        let header =
            |raw: &str| HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).unwrap();
        assert_eq!(
            basic_credentials(&header("my%20client:p%3Aw+d")),
            Some(("my client".into(), "p:w d".into()))
        );
        assert_eq!(
            basic_credentials(&header("a:b:c")),
            Some(("a".into(), "b:c".into()))
        );
        assert_eq!(basic_credentials(&header("nocolon")), None);
        assert_eq!(basic_credentials(&header("a%zz:b")), None);
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Basic !!!")),
            None
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Bearer abc")),
            None
        );
        assert_eq!(
            basic_credentials(
                &HeaderValue::from_str(&format!("bAsIc {}", STANDARD.encode("a:b"))).unwrap()
            ),
            Some(("a".into(), "b".into()))
        );
    }

    #[test]
    fn scopes_are_a_subset_of_the_allowed_ones() {
        let allowed = vec!["read".to_owned(), "write".to_owned()];
        assert_eq!(granted_scopes(None, &allowed).unwrap(), allowed);
        assert_eq!(
            granted_scopes(Some("write"), &allowed).unwrap(),
            vec!["write"]
        );
        assert_eq!(
            granted_scopes(Some("write read write"), &allowed).unwrap(),
            vec!["write", "read"]
        );
        assert!(granted_scopes(Some("admin"), &allowed).is_err());
        assert!(granted_scopes(Some(" "), &allowed).is_err());
    }

    #[test]
    fn content_types_with_parameters_are_accepted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        );
        assert!(is_form_content_type(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_form_content_type(&headers));
        assert!(!is_form_content_type(&HeaderMap::new()));
    }
}
