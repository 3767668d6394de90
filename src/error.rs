//! One error enum for every answer the gateway makes itself, and the one
//! place ([`GatewayError::into_response`]) that picks its status,
//! `WWW-Authenticate` challenge and JSON body.

use http::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use serde_json::json;

use crate::body::{full, Body};
use crate::jws::{AuthFailure, Rejection};

/// The realm of every challenge.
pub const REALM: &str = "jwtgate";

/// RFC 6749 §5.2 error codes of the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidScope,
    UnsupportedGrantType,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
        }
    }
}

/// Everything the gateway can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No route matches host, method and path.
    NoRoute,
    /// A request the gateway will not interpret (path not in normal form,
    /// two `Host` headers, …).
    BadRequest(&'static str),
    /// A `/.well-known/*` document asked for with another method than GET/HEAD.
    WellKnownMethodNotAllowed,
    HeadersTooLarge,
    BodyTooLarge,
    /// No `Authorization` header at all (RFC 6750 §3.1: no error code).
    MissingToken,
    /// An `Authorization` header that is not one `Bearer <token>`.
    MalformedAuthorization(&'static str),
    /// The token was refused (bad signature, expired, wrong audience, …).
    InvalidToken(Rejection),
    /// A valid token without every scope the route requires.
    InsufficientScope {
        required: String,
    },
    UpstreamConnect,
    UpstreamTimeout,
    UpstreamReset,
    UpstreamProtocol,
    /// A token endpoint error (RFC 6749 §5.2).
    OAuth {
        code: OAuthErrorCode,
        description: &'static str,
    },
    /// The token endpoint asked for with another method than POST.
    TokenMethodNotAllowed,
    /// Too many failed client authentications; retry after this many seconds.
    Throttled {
        retry_after_secs: u64,
    },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::WellKnownMethodNotAllowed | GatewayError::TokenMethodNotAllowed => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::MissingToken => StatusCode::UNAUTHORIZED,
            GatewayError::MalformedAuthorization(_) => StatusCode::BAD_REQUEST,
            GatewayError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            GatewayError::UpstreamConnect
            | GatewayError::UpstreamReset
            | GatewayError::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::OAuth { code, .. } => match code {
                OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
                OAuthErrorCode::InvalidRequest
                | OAuthErrorCode::InvalidScope
                | OAuthErrorCode::UnsupportedGrantType => StatusCode::BAD_REQUEST,
            },
            GatewayError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The JSON body's `error` and `error_description`.
    fn error_and_description(&self) -> (&'static str, &'static str) {
        match self {
            GatewayError::NoRoute => ("not_found", "no route matches this request"),
            GatewayError::BadRequest(why) => ("invalid_request", why),
            GatewayError::WellKnownMethodNotAllowed => ("method_not_allowed", "use GET or HEAD"),
            GatewayError::HeadersTooLarge => (
                "request_header_fields_too_large",
                "request headers exceed the configured limit",
            ),
            GatewayError::BodyTooLarge => (
                "payload_too_large",
                "request body exceeds the configured limit",
            ),
            GatewayError::MissingToken => ("missing_token", "a bearer token is required"),
            GatewayError::MalformedAuthorization(why) => ("invalid_request", why),
            GatewayError::InvalidToken(rejection) => ("invalid_token", rejection.description),
            GatewayError::InsufficientScope { .. } => {
                ("insufficient_scope", "the token lacks a required scope")
            }
            GatewayError::UpstreamConnect => ("bad_gateway", "the upstream could not be reached"),
            GatewayError::UpstreamReset => ("bad_gateway", "the upstream closed the connection"),
            GatewayError::UpstreamProtocol => {
                ("bad_gateway", "the upstream sent an invalid response")
            }
            GatewayError::UpstreamTimeout => {
                ("gateway_timeout", "the upstream did not answer in time")
            }
            GatewayError::OAuth { code, description } => (code.as_str(), description),
            GatewayError::TokenMethodNotAllowed => {
                ("invalid_request", "the token endpoint accepts POST only")
            }
            GatewayError::Throttled { .. } => {
                ("slow_down", "too many failed authentications; retry later")
            }
        }
    }

    /// The `WWW-Authenticate` challenge, if this answer carries one.
    fn challenge(&self) -> Option<String> {
        match self {
            GatewayError::MissingToken => Some(format!("Bearer realm=\"{REALM}\"")),
            GatewayError::MalformedAuthorization(why) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{why}\""
            )),
            GatewayError::InvalidToken(rejection) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                rejection.description
            )),
            GatewayError::InsufficientScope { required } => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"{required}\""
            )),
            // RFC 9110 §15.5.2: a 401 always carries a challenge.
            GatewayError::OAuth {
                code: OAuthErrorCode::InvalidClient,
                ..
            } => Some(format!("Basic realm=\"{REALM}\"")),
            GatewayError::NoRoute
            | GatewayError::BadRequest(_)
            | GatewayError::WellKnownMethodNotAllowed
            | GatewayError::HeadersTooLarge
            | GatewayError::BodyTooLarge
            | GatewayError::UpstreamConnect
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamReset
            | GatewayError::UpstreamProtocol
            | GatewayError::OAuth { .. }
            | GatewayError::TokenMethodNotAllowed
            | GatewayError::Throttled { .. } => None,
        }
    }

    /// The auth failure reason for metrics and logs, when this is one.
    pub fn auth_failure(&self) -> Option<AuthFailure> {
        match self {
            GatewayError::MissingToken => Some(AuthFailure::MissingToken),
            GatewayError::MalformedAuthorization(_) => Some(AuthFailure::Malformed),
            GatewayError::InvalidToken(rejection) => Some(rejection.reason),
            GatewayError::InsufficientScope { .. } => Some(AuthFailure::InsufficientScope),
            _ => None,
        }
    }

    /// The only place an error becomes an HTTP response.
    pub fn into_response(self) -> Response<Body> {
        let (error, description) = self.error_and_description();
        let body = json!({"error": error, "error_description": description}).to_string();
        let mut response = Response::new(full(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.challenge() {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(WWW_AUTHENTICATE, value);
            }
        }
        match &self {
            GatewayError::TokenMethodNotAllowed => {
                headers.insert(ALLOW, HeaderValue::from_static("POST"));
            }
            GatewayError::WellKnownMethodNotAllowed => {
                headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            GatewayError::Throttled { retry_after_secs } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(reason: AuthFailure) -> Rejection {
        Rejection {
            reason,
            description: "token has expired",
        }
    }

    /// Every variant's status, body `error` and challenge, pinned.
    #[test]
    fn every_variant_maps_to_its_documented_answer() {
        let table: Vec<(GatewayError, u16, &str, Option<&str>)> = vec![
            (GatewayError::NoRoute, 404, "not_found", None),
            (GatewayError::BadRequest("x"), 400, "invalid_request", None),
            (GatewayError::WellKnownMethodNotAllowed, 405, "method_not_allowed", None),
            (GatewayError::HeadersTooLarge, 431, "request_header_fields_too_large", None),
            (GatewayError::BodyTooLarge, 413, "payload_too_large", None),
            (GatewayError::MissingToken, 401, "missing_token", Some("Bearer realm=\"jwtgate\"")),
            (
                GatewayError::MalformedAuthorization("bad"),
                400,
                "invalid_request",
                Some("Bearer realm=\"jwtgate\", error=\"invalid_request\", error_description=\"bad\""),
            ),
            (
                GatewayError::InvalidToken(rejection(AuthFailure::Expired)),
                401,
                "invalid_token",
                Some("Bearer realm=\"jwtgate\", error=\"invalid_token\", error_description=\"token has expired\""),
            ),
            (
                GatewayError::InsufficientScope { required: "read write".into() },
                403,
                "insufficient_scope",
                Some("Bearer realm=\"jwtgate\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"read write\""),
            ),
            (GatewayError::UpstreamConnect, 502, "bad_gateway", None),
            (GatewayError::UpstreamReset, 502, "bad_gateway", None),
            (GatewayError::UpstreamProtocol, 502, "bad_gateway", None),
            (GatewayError::UpstreamTimeout, 504, "gateway_timeout", None),
            (GatewayError::OAuth { code: OAuthErrorCode::InvalidRequest, description: "d" }, 400, "invalid_request", None),
            (GatewayError::OAuth { code: OAuthErrorCode::InvalidClient, description: "d" }, 401, "invalid_client", Some("Basic realm=\"jwtgate\"")),
            (GatewayError::OAuth { code: OAuthErrorCode::InvalidScope, description: "d" }, 400, "invalid_scope", None),
            (GatewayError::OAuth { code: OAuthErrorCode::UnsupportedGrantType, description: "d" }, 400, "unsupported_grant_type", None),
            (GatewayError::TokenMethodNotAllowed, 405, "invalid_request", None),
            (GatewayError::Throttled { retry_after_secs: 7 }, 429, "slow_down", None),
        ];
        for (error, status, code, challenge) in table {
            let label = format!("{error:?}");
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{label}");
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                "application/json",
                "{label}"
            );
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store", "{label}");
            assert_eq!(
                response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap()),
                challenge,
                "{label}"
            );
            let body = futures_body(response);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"], code, "{label}");
            assert!(json["error_description"].is_string(), "{label}");
        }
    }

    fn futures_body(response: Response<Body>) -> bytes::Bytes {
        use http_body_util::BodyExt;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes()
    }
}
