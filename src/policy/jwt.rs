//! `jwt:` — bearer-token enforcement (RFC 6750) with the pipeline of
//! [`crate::jws`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::{PolicyInput, Verdict};
use crate::config::JwtPolicyConfig;
use crate::error::GatewayError;
use crate::jws::{self, AuthFailure, ClaimRules, NoTrace, Rejection, Step, Trace, ValidityWindow};
use crate::keys::KeySet;
use crate::token::client_auth::is_valid_scope;

/// A policy's verdict on one verified token, remembered with the token in
/// the verified-token cache. Of everything [`JwtPolicy::apply`] decides,
/// only the expiry and not-before checks depend on the time; the type,
/// issuer, audience and scope checks and the identity headers depend on
/// the claims and the policy alone. So a later request with the same token
/// on the same policy re-checks the [`ValidityWindow`] and reuses the rest.
#[derive(Debug)]
pub struct Authorized {
    /// [`JwtPolicy::id`] of the policy that decided: unique per compiled
    /// policy, so a reload's new policy never reuses an old verdict.
    policy: u64,
    window: ValidityWindow,
    inject: Vec<(HeaderName, HeaderValue)>,
    subject: Option<Arc<str>>,
}

/// The next [`JwtPolicy::id`].
static NEXT_POLICY_ID: AtomicU64 = AtomicU64::new(1);

/// A compiled `jwt:` step.
#[derive(Debug)]
pub struct JwtPolicy {
    /// Unique for the process's lifetime (never an address, which a
    /// reload could hand to a new policy).
    id: u64,
    rules: ClaimRules,
    required_scopes: Vec<String>,
    /// `required_scopes` space-joined, for the 403 challenge.
    required_scopes_text: String,
    forward_token: bool,
    subject_header: HeaderName,
    scopes_header: HeaderName,
    /// Claim name → header, in config order.
    claim_headers: Vec<(String, HeaderName)>,
}

impl JwtPolicy {
    /// Compiles the config; `Err` names the offending field relative to the
    /// policy (`inject.subject`, …).
    pub fn build(config: &JwtPolicyConfig) -> Result<JwtPolicy, (String, String)> {
        let audiences = config.audience.clone().into_vec();
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err((
                "audience".into(),
                "must name at least one non-empty audience".into(),
            ));
        }
        for scope in &config.scopes {
            if !is_valid_scope(scope) {
                return Err((
                    "scopes".into(),
                    format!("`{scope}` is not a valid scope token"),
                ));
            }
        }
        let header = |field: &str, name: &str| {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    field.to_owned(),
                    format!("`{name}` is not a valid header name"),
                )
            })
        };
        let subject_header = header("inject.subject", &config.inject.subject)?;
        let scopes_header = header("inject.scopes", &config.inject.scopes)?;
        let mut claim_headers = Vec::new();
        for (claim, name) in &config.inject.claims {
            claim_headers.push((
                claim.clone(),
                header(&format!("inject.claims.{claim}"), name)?,
            ));
        }
        let mut all: Vec<&HeaderName> = vec![&subject_header, &scopes_header];
        all.extend(claim_headers.iter().map(|(_, h)| h));
        for (i, name) in all.iter().enumerate() {
            if is_reserved(name) {
                return Err((
                    "inject".into(),
                    format!("`{name}` cannot be injected (a protocol or gateway header)"),
                ));
            }
            if all[..i].contains(name) {
                return Err(("inject".into(), format!("`{name}` is injected twice")));
            }
        }
        Ok(JwtPolicy {
            id: NEXT_POLICY_ID.fetch_add(1, Ordering::Relaxed),
            rules: ClaimRules {
                audiences,
                issuer: config.issuer.clone(),
                leeway_secs: config.leeway.0.as_secs(),
                typ: config.typ.as_deref().map(jws::normalise_typ),
                scope_claim: config.scope_claim.clone(),
            },
            required_scopes_text: config.scopes.join(" "),
            required_scopes: config.scopes.clone(),
            forward_token: config.forward_token,
            subject_header,
            scopes_header,
            claim_headers,
        })
    }

    pub fn subject_header(&self) -> &HeaderName {
        &self.subject_header
    }

    pub fn scopes_header(&self) -> &HeaderName {
        &self.scopes_header
    }

    pub fn injected_headers(&self) -> Vec<HeaderName> {
        let mut names = vec![self.subject_header.clone(), self.scopes_header.clone()];
        names.extend(self.claim_headers.iter().map(|(_, h)| h.clone()));
        names
    }

    /// Runs when the route is matched, before forwarding: extract the bearer
    /// token, verify it, check the scopes, and record the identity headers.
    pub fn apply(
        &self,
        input: &PolicyInput<'_>,
        verdict: &mut Verdict,
    ) -> Result<(), GatewayError> {
        let token = bearer_token(input)?;
        // The signature (or a cache hit for this exact token and key), then
        // the claims — checked on every request, hit or miss.
        let verified = input
            .token_cache
            .verify(token, input.keys, input.metrics)
            .map_err(GatewayError::InvalidToken)?;
        if let Some(authorized) = &*verified.authorized.load() {
            if authorized.policy == self.id {
                authorized
                    .window
                    .check(input.now)
                    .map_err(GatewayError::InvalidToken)?;
                verdict.inject.extend(authorized.inject.iter().cloned());
                verdict.forward_authorization |= self.forward_token;
                verdict.subject.clone_from(&authorized.subject);
                return Ok(());
            }
        }
        let injected_before = verdict.inject.len();
        self.authorize(
            verified.typ.as_deref(),
            &verified.claims,
            input.now,
            verdict,
            &mut NoTrace,
        )?;
        // Remembered only on a token the cache holds (a fresh one is
        // dropped after this request).
        let cached = Arc::strong_count(&verified) > 1;
        if let Some(window) = ValidityWindow::of(&verified.claims, &self.rules).filter(|_| cached) {
            verified.authorized.store(Some(Arc::new(Authorized {
                policy: self.id,
                window,
                inject: verdict.inject[injected_before..].to_vec(),
                subject: verdict.subject.clone(),
            })));
        }
        Ok(())
    }

    /// What [`JwtPolicy::apply`] would decide for these request headers,
    /// each check reported to `trace`: the same bearer extraction, step
    /// functions and [`JwtPolicy::authorize`], but the signature is always
    /// checked (the verified-token cache is neither read nor filled) and no
    /// metric is touched. For `jwtgate explain` and the admin token
    /// inspector.
    pub fn explain(
        &self,
        headers: &HeaderMap,
        keys: &KeySet,
        now: u64,
        verdict: &mut Verdict,
        trace: &mut impl Trace,
    ) -> Result<(), GatewayError> {
        let token = bearer_token_in(headers);
        let as_rejection = |error: &GatewayError| match error {
            GatewayError::MissingToken => Rejection {
                reason: AuthFailure::MissingToken,
                description: "a bearer token is required",
            },
            GatewayError::MalformedAuthorization(why) => Rejection {
                reason: AuthFailure::Malformed,
                description: why,
            },
            _ => Rejection {
                reason: AuthFailure::Malformed,
                description: "invalid Authorization header",
            },
        };
        match &token {
            Ok(_) => trace.step(Step::Authorization, Ok(()), || {
                "one `Authorization: Bearer <token>` header".to_owned()
            }),
            Err(error) => trace.step(Step::Authorization, Err(&as_rejection(error)), || {
                "the token must be one header value without spaces".to_owned()
            }),
        }
        let (parsed, _) =
            jws::check_signature_traced(token?, keys, trace).map_err(GatewayError::InvalidToken)?;
        self.authorize(parsed.typ.as_deref(), &parsed.claims, now, verdict, trace)
    }

    /// The checks every request gets once the signature is known good (by
    /// a check or a cache hit): the claims, each required scope, and the
    /// identity headers put in `verdict`.
    fn authorize(
        &self,
        typ: Option<&str>,
        claims: &Map<String, Value>,
        now: u64,
        verdict: &mut Verdict,
        trace: &mut impl Trace,
    ) -> Result<(), GatewayError> {
        let identity = jws::check_claim_set_traced(typ, claims, &self.rules, now, trace)
            .map_err(GatewayError::InvalidToken)?;
        let lacking = Rejection {
            reason: AuthFailure::InsufficientScope,
            description: "the token lacks a required scope",
        };
        let mut has_all = true;
        for scope in &self.required_scopes {
            let has = identity.scopes.contains(scope);
            has_all &= has;
            let outcome = if has { Ok(()) } else { Err(&lacking) };
            trace.step(Step::Scope, outcome, || {
                format!(
                    "route requires `{scope}`; token has {}",
                    if identity.scopes.is_empty() {
                        "no scopes".to_owned()
                    } else {
                        format!("`{}`", identity.scopes.join(" "))
                    }
                )
            });
        }
        if !has_all {
            return Err(GatewayError::InsufficientScope {
                required: self.required_scopes_text.clone(),
            });
        }
        let injected = self.inject(identity, claims, verdict);
        match &injected {
            Err(GatewayError::InvalidToken(rejection)) => {
                trace.step(Step::Inject, Err(rejection), || {
                    "a claim cannot be sent as a header value".to_owned()
                })
            }
            _ => trace.step(Step::Inject, Ok(()), || {
                let names: Vec<&str> = verdict.inject.iter().map(|(n, _)| n.as_str()).collect();
                format!("sets {}", names.join(", "))
            }),
        }
        injected
    }

    /// Puts the identity headers in `verdict`.
    fn inject(
        &self,
        identity: jws::Identity,
        claims: &Map<String, Value>,
        verdict: &mut Verdict,
    ) -> Result<(), GatewayError> {
        let invalid_claims = || {
            GatewayError::InvalidToken(Rejection {
                reason: AuthFailure::InvalidClaims,
                description: "token claims cannot be forwarded",
            })
        };
        if let Some(subject) = &identity.subject {
            let value = HeaderValue::from_str(subject).map_err(|_| invalid_claims())?;
            verdict.inject.push((self.subject_header.clone(), value));
        }
        let scopes =
            HeaderValue::from_str(&identity.scopes.join(" ")).map_err(|_| invalid_claims())?;
        verdict.inject.push((self.scopes_header.clone(), scopes));
        for (claim, header) in &self.claim_headers {
            let text = match claims.get(claim) {
                Some(Value::String(s)) if jws::is_header_safe(s) => s.clone(),
                Some(Value::String(_)) => return Err(invalid_claims()),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                // Absent, null, arrays and objects are not forwarded.
                _ => continue,
            };
            let value = HeaderValue::from_str(&text).map_err(|_| invalid_claims())?;
            verdict.inject.push((header.clone(), value));
        }
        verdict.forward_authorization |= self.forward_token;
        verdict.subject = identity.subject.map(Arc::from);
        Ok(())
    }

    /// The steps [`JwtPolicy::explain`] can report, in order (for marking
    /// those a refusal left unreached).
    pub fn planned_steps(&self) -> Vec<Step> {
        let mut steps = vec![
            Step::Authorization,
            Step::Syntax,
            Step::KeySelection,
            Step::Algorithm,
            Step::Signature,
        ];
        if self.rules.typ.is_some() {
            steps.push(Step::Type);
        }
        steps.extend([
            Step::TimeClaims,
            Step::Expiry,
            Step::NotBefore,
            Step::Issuer,
            Step::Audience,
            Step::Subject,
            Step::Scopes,
        ]);
        steps.extend(self.required_scopes.iter().map(|_| Step::Scope));
        steps.push(Step::Inject);
        steps
    }

    /// The route's rules, for the status page.
    pub fn rules(&self) -> &ClaimRules {
        &self.rules
    }

    pub fn required_scopes(&self) -> &[String] {
        &self.required_scopes
    }

    pub fn forward_token(&self) -> bool {
        self.forward_token
    }
}

/// Headers that must never be overwritten by an identity injection.
fn is_reserved(name: &HeaderName) -> bool {
    const RESERVED: [&str; 14] = [
        "host",
        "authorization",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "trailer",
        "keep-alive",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ];
    RESERVED.contains(&name.as_str())
}

/// RFC 6750 §2.1: exactly one `Authorization: Bearer <token>`; the scheme is
/// case-insensitive and may be followed by one or more spaces. A token in the
/// query, a form body or a cookie is not looked at.
fn bearer_token<'h>(input: &PolicyInput<'h>) -> Result<&'h str, GatewayError> {
    bearer_token_in(input.headers)
}

pub(crate) fn bearer_token_in(headers: &HeaderMap) -> Result<&str, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(GatewayError::MissingToken);
    };
    if values.next().is_some() {
        return Err(GatewayError::MalformedAuthorization(
            "several Authorization headers",
        ));
    }
    well_formed_bearer(value.as_bytes()).map_or_else(|| bearer_token_or_why_not(value), Ok)
}

/// The token of `Bearer <token>` when the value is exactly that: the scheme
/// in any case, spaces, then only visible ASCII without blanks. One pass
/// over the token (a fold without early exit, so it vectorises); anything
/// else is left to [`bearer_token_or_why_not`], which names the problem.
fn well_formed_bearer(value: &[u8]) -> Option<&str> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = &rest[rest.iter().position(|&b| b != b' ')?..];
    let visible = token
        .iter()
        .fold(true, |ok, &b| ok & (0x21..0x7f).contains(&b));
    if !visible || token.is_empty() {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// The full check of one `Authorization` value, with the reason it fails.
fn bearer_token_or_why_not(value: &HeaderValue) -> Result<&str, GatewayError> {
    let text = visible_ascii(value.as_bytes()).ok_or(GatewayError::MalformedAuthorization(
        "Authorization header is not ASCII",
    ))?;
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(GatewayError::MalformedAuthorization(
            "Authorization header is not Bearer <token>",
        ));
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(GatewayError::MalformedAuthorization(
            "bearer token is empty",
        ));
    }
    // `[u8]::contains` is memchr (SIMD), not a `char` pattern decoding the
    // token char by char: this runs on every request over hundreds of bytes.
    let bytes = token.as_bytes();
    if bytes.contains(&b' ') || bytes.contains(&b'\t') {
        return Err(GatewayError::MalformedAuthorization(
            "Authorization header is not Bearer <token>",
        ));
    }
    Ok(token)
}

/// The header value as text when every byte is visible ASCII or a tab (what
/// `HeaderValue::to_str` accepts), checked without an early exit so the
/// loop vectorises: a token is hundreds of bytes on every request.
fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    let visible = bytes.iter().fold(true, |ok, &b| {
        ok & ((0x20..0x7f).contains(&b) | (b == b'\t'))
    });
    if visible {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySet;
    use http::HeaderMap;

    fn token_from(headers: &[&str]) -> Result<String, GatewayError> {
        let mut map = HeaderMap::new();
        for h in headers {
            map.append(AUTHORIZATION, HeaderValue::from_str(h).unwrap());
        }
        let keys = KeySet::default();
        let metrics = crate::metrics::Metrics::new().unwrap();
        let token_cache = crate::token_cache::TokenCache::new(&Default::default());
        let input = PolicyInput {
            headers: &map,
            keys: &keys,
            now: 0,
            metrics: &metrics,
            token_cache: &token_cache,
            client_subject: None,
        };
        bearer_token(&input).map(str::to_owned)
    }

    #[test]
    fn a_tab_after_the_scheme_is_refused_by_both_checks() {
        // The case the property below once found (a fast path trimming tabs
        // as well as spaces): `Bearer ` then a tab is not `Bearer <token>`.
        let value = b"Bearer \tB";
        assert_eq!(well_formed_bearer(value), None);
        let header = HeaderValue::from_bytes(value).unwrap();
        assert!(matches!(
            bearer_token_or_why_not(&header),
            Err(GatewayError::MalformedAuthorization(
                "Authorization header is not Bearer <token>"
            ))
        ));
    }

    proptest::proptest! {
        // No regression files: a failure prints its minimal input instead.
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 4096,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// The one-pass check accepts exactly what the full check accepts,
        /// with the same token: values made of the bytes that matter
        /// (the scheme's letters in both cases, blanks, a dot, a control
        /// byte, DEL and non-ASCII).
        #[test]
        fn the_fast_bearer_check_agrees_with_the_full_one(
            value in proptest::collection::vec(
                proptest::sample::select(b"BbEeAaRr \t.x-_\x01\x7f\xc3\xa9".to_vec()),
                0..8,
            ),
            prefix in proptest::sample::select(vec!["", "Bearer ", "bearer  ", "BEARER\t", "Bearer"]),
        ) {
            let mut bytes = prefix.as_bytes().to_vec();
            bytes.extend_from_slice(&value);
            let Ok(header) = HeaderValue::from_bytes(&bytes) else {
                return Ok(());
            };
            let full = bearer_token_or_why_not(&header).ok();
            proptest::prop_assert_eq!(well_formed_bearer(&bytes), full);
        }
    }

    #[test]
    fn bearer_extraction_follows_rfc_6750() {
        assert_eq!(token_from(&["Bearer abc"]), Ok("abc".into()));
        assert_eq!(token_from(&["bEaReR    abc"]), Ok("abc".into()));
        assert_eq!(token_from(&[]), Err(GatewayError::MissingToken));
        for bad in [
            &["Bearer"][..],
            &["Bearer "],
            &["Basic abc"],
            &["Bearerabc"],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
        ] {
            assert!(
                matches!(
                    token_from(bad),
                    Err(GatewayError::MalformedAuthorization(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_ascii_check_accepts_exactly_what_header_value_to_str_accepts() {
        for byte in 0..=255u8 {
            let bytes = [b'a', byte, b'z'];
            let Ok(value) = http::HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            assert_eq!(
                visible_ascii(value.as_bytes()),
                value.to_str().ok(),
                "byte {byte:#04x}"
            );
        }
    }
}
