//! The token pipeline: strict compact-JWS parsing, key selection, signature
//! check and claim checks.
//!
//! Each step is its own function returning `Result<_, Rejection>`, so the
//! enforcement path, metrics and diagnostics read the same reasons. Nothing in
//! the token chooses how it is verified: the key is found by `kid` in the
//! gateway's own set, and the token's `alg` must equal the key's algorithm.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::keys::{Algorithm, KeySelectionError, KeySet, Verifier};

/// Tokens longer than this are refused before any decoding or signature work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The longest `kid` looked up.
const MAX_KID_BYTES: usize = 256;
/// The longest subject or scope list copied into a header.
pub const MAX_IDENTITY_BYTES: usize = 1024;
/// NumericDate values must fit in an IEEE double exactly (2^53).
const MAX_NUMERIC_DATE: f64 = 9_007_199_254_740_992.0;

/// Why a token was refused: a closed set, used as the metrics `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    MissingToken,
    Malformed,
    InvalidSignature,
    UnknownKey,
    AlgorithmNotAllowed,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    InsufficientScope,
    InvalidClaims,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 11] = [
        AuthFailure::MissingToken,
        AuthFailure::Malformed,
        AuthFailure::InvalidSignature,
        AuthFailure::UnknownKey,
        AuthFailure::AlgorithmNotAllowed,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::WrongAudience,
        AuthFailure::WrongIssuer,
        AuthFailure::InsufficientScope,
        AuthFailure::InvalidClaims,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::Malformed => "malformed",
            AuthFailure::InvalidSignature => "invalid_signature",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::InsufficientScope => "insufficient_scope",
            AuthFailure::InvalidClaims => "invalid_claims",
        }
    }
}

/// A refused token: the reason and a short client-safe description (never
/// containing the token or claim values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: AuthFailure,
    pub description: &'static str,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.description)
    }
}

fn reject<T>(reason: AuthFailure, description: &'static str) -> Result<T, Rejection> {
    Err(Rejection {
        reason,
        description,
    })
}

/// One check of the token pipeline, in the order the checks run. The names
/// (`as_str`) are what `jwtgate explain` and the admin API report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Exactly one `Authorization: Bearer <token>`.
    Authorization,
    /// Compact serialisation, base64url JSON header and payload.
    Syntax,
    /// The key, by `kid`, in the gateway's key set.
    KeySelection,
    /// The token's `alg` against the key's algorithm.
    Algorithm,
    Signature,
    /// The route's required `typ`, when it sets one.
    Type,
    /// `exp` present; `exp`, `nbf`, `iat` numbers in 0…2^53.
    TimeClaims,
    Expiry,
    NotBefore,
    Issuer,
    Audience,
    Subject,
    /// The scope claim is a string or a list of strings.
    Scopes,
    /// One required scope (reported once per scope).
    Scope,
    /// The identity headers can be built from the claims.
    Inject,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Authorization => "authorization",
            Step::Syntax => "syntax",
            Step::KeySelection => "key",
            Step::Algorithm => "algorithm",
            Step::Signature => "signature",
            Step::Type => "typ",
            Step::TimeClaims => "time_claims",
            Step::Expiry => "exp",
            Step::NotBefore => "nbf",
            Step::Issuer => "iss",
            Step::Audience => "aud",
            Step::Subject => "sub",
            Step::Scopes => "scopes",
            Step::Scope => "scope",
            Step::Inject => "inject",
        }
    }
}

/// Observes each check as it runs: enforcement passes [`NoTrace`] (every
/// call compiles away, `detail` is never built), `explain` passes a
/// recorder. Checks report in order and enforcement still stops at the first
/// failure, so a recorder sees exactly the checks a request would run.
pub trait Trace {
    /// `outcome` is the check's result; `detail` says what was compared
    /// (claim values, times relative to now, leeway) and is only called by
    /// recorders.
    fn step(
        &mut self,
        step: Step,
        outcome: Result<(), &Rejection>,
        detail: impl FnOnce() -> String,
    );
}

/// The enforcement path's trace: records nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn step(&mut self, _: Step, _: Result<(), &Rejection>, _: impl FnOnce() -> String) {}
}

/// Reports `result` as `step` and passes it on.
pub fn traced<T>(
    trace: &mut impl Trace,
    step: Step,
    result: Result<T, Rejection>,
    detail: impl FnOnce() -> String,
) -> Result<T, Rejection> {
    trace.step(step, result.as_ref().map(|_| ()), detail);
    result
}

/// `seconds` as `5m 3s ago` / `in 2h 1m`, relative to now.
pub fn relative_time(seconds: f64, now: u64) -> String {
    let delta = seconds - now as f64;
    let span = human_duration(delta.abs());
    if delta < 0.0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// `3725` → `1h 2m 5s`.
pub fn human_duration(seconds: f64) -> String {
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// A compact JWS split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct ParsedToken<'a> {
    /// `BASE64URL(header) '.' BASE64URL(payload)`: what the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
}

/// Step 1: the compact serialisation, strictly (RFC 7515 §7.1).
pub fn parse(token: &str) -> Result<ParsedToken<'_>, Rejection> {
    use AuthFailure::Malformed;
    if token.len() > MAX_TOKEN_BYTES {
        return reject(Malformed, "token is too large");
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return reject(Malformed, "token is not a compact JWS (three segments)");
    };
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    let header = decode_object(header_b64).ok_or(Rejection {
        reason: Malformed,
        description: "token header is not a base64url JSON object",
    })?;
    let claims = decode_object(payload_b64).ok_or(Rejection {
        reason: Malformed,
        description: "token payload is not a base64url JSON object",
    })?;
    let signature = decode_segment(signature_b64).ok_or(Rejection {
        reason: Malformed,
        description: "token signature is not base64url",
    })?;
    if signature.is_empty() {
        return reject(AuthFailure::InvalidSignature, "token has no signature");
    }

    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return reject(Malformed, "token header has no alg"),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_BYTES => {
            Some(kid.clone())
        }
        Some(_) => return reject(Malformed, "token kid is not a short non-empty string"),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.clone()),
        Some(_) => return reject(Malformed, "token typ is not a string"),
    };
    // No extension is understood, so any `crit` makes the token unusable
    // (RFC 7515 §4.1.11). `jku`, `x5u`, `jwk`, `x5c` are simply never read.
    if header.contains_key("crit") {
        return reject(Malformed, "token has critical header extensions");
    }
    Ok(ParsedToken {
        signing_input,
        signature,
        alg,
        kid,
        typ,
        claims,
    })
}

/// Unpadded base64url only, with canonical trailing bits.
fn decode_segment(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
}

fn decode_object(segment: &str) -> Option<Map<String, Value>> {
    if segment.is_empty() {
        return None;
    }
    let bytes = decode_segment(segment)?;
    serde_json::from_slice::<UniqueObject>(&bytes)
        .ok()
        .map(|o| o.0)
}

/// A JSON object that refuses duplicate member names (RFC 8725 §3.11: a
/// parser that keeps the last one lets two components disagree).
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some((name, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&name) {
                        return Err(de::Error::custom("duplicate member name"));
                    }
                    map.insert(name, value);
                }
                Ok(UniqueObject(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Step 2: the key, by the token's `iss` (a `jwks:` issuer's set, else the
/// gateway's own keys) and `kid`, and the algorithm bound to it.
pub fn select_key(token: &ParsedToken<'_>, keys: &KeySet) -> Result<Arc<Verifier>, Rejection> {
    let Some(alg) = Algorithm::from_name(&token.alg) else {
        return reject(
            AuthFailure::AlgorithmNotAllowed,
            "token algorithm is not allowed",
        );
    };
    let issuer = token.claims.get("iss").and_then(Value::as_str);
    keys.select_for(issuer, token.kid.as_deref(), alg)
        .map_err(|e| match e {
            KeySelectionError::UnknownKid => Rejection {
                reason: AuthFailure::UnknownKey,
                description: "token key id is unknown",
            },
            KeySelectionError::NoKidAndAmbiguous => Rejection {
                reason: AuthFailure::UnknownKey,
                description: "token has no key id and several keys apply",
            },
            KeySelectionError::AlgorithmMismatch => Rejection {
                reason: AuthFailure::AlgorithmNotAllowed,
                description: "token algorithm does not match its key",
            },
        })
}

/// Step 3: the signature.
pub fn check_signature(token: &ParsedToken<'_>, verifier: &Verifier) -> Result<(), Rejection> {
    if verifier.verify(token.signing_input.as_bytes(), &token.signature) {
        Ok(())
    } else {
        reject(AuthFailure::InvalidSignature, "token signature is invalid")
    }
}

/// What a route requires of a token's claims (everything but scopes, which
/// the policy compares).
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// The token's `aud` must name one of these.
    pub audiences: Vec<String>,
    pub issuer: Option<String>,
    pub leeway_secs: u64,
    /// Required `typ`, already normalised by [`normalise_typ`].
    pub typ: Option<String>,
    /// Where scopes are read; `None` means `scopes`, `scope`, `scp`.
    pub scope_claim: Option<String>,
}

/// The identity a verified token vouches for.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub subject: Option<String>,
    pub scopes: Vec<String>,
}

/// `typ` compared case-insensitively, an `application/` prefix ignored
/// (RFC 7515 §4.1.9, RFC 9068 §2.1).
pub fn normalise_typ(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// Step 4: the claims, at time `now` (seconds since the epoch).
pub fn check_claims(
    token: &ParsedToken<'_>,
    rules: &ClaimRules,
    now: u64,
) -> Result<Identity, Rejection> {
    check_claim_set(token.typ.as_deref(), &token.claims, rules, now)
}

/// Step 4 on a token's `typ` and claims alone: what a verified-token cache
/// hit re-checks, by the same code as a miss.
pub fn check_claim_set(
    typ: Option<&str>,
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: u64,
) -> Result<Identity, Rejection> {
    check_claim_set_traced(typ, claims, rules, now, &mut NoTrace)
}

/// [`check_claim_set`], reporting each check to `trace` as it runs (and
/// stopping at the first failure, as enforcement does).
pub fn check_claim_set_traced(
    typ: Option<&str>,
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: u64,
    trace: &mut impl Trace,
) -> Result<Identity, Rejection> {
    use AuthFailure::InvalidClaims;
    if let Some(required) = &rules.typ {
        let result = if typ.map(normalise_typ).as_deref() != Some(required.as_str()) {
            reject(InvalidClaims, "token type is not the one required")
        } else {
            Ok(())
        };
        traced(trace, Step::Type, result, || {
            format!(
                "route requires typ `{required}`; token has {}",
                typ.map_or("no typ".to_owned(), |t| format!("`{t}`"))
            )
        })?;
    }
    let times = (|| {
        let exp = match numeric_date(claims, "exp")? {
            Some(exp) => exp,
            None => return reject(InvalidClaims, "token has no exp claim"),
        };
        let nbf = numeric_date(claims, "nbf")?;
        numeric_date(claims, "iat")?;
        Ok((exp, nbf))
    })();
    let (exp, nbf) = traced(trace, Step::TimeClaims, times, || {
        "exp is required; exp, nbf and iat must be numbers in 0…2^53".to_owned()
    })?;
    let leeway = rules.leeway_secs as f64;
    let now_secs = now as f64;
    let expired = check_expiry(exp, leeway, now_secs);
    traced(trace, Step::Expiry, expired, || {
        format!(
            "exp {} ({}), leeway {}s, now {}",
            utc_time(exp),
            relative_time(exp, now),
            rules.leeway_secs,
            utc_time(now_secs)
        )
    })?;
    match nbf {
        Some(nbf) => {
            let early = check_not_before(nbf, leeway, now_secs);
            traced(trace, Step::NotBefore, early, || {
                format!(
                    "nbf {} ({}), leeway {}s",
                    utc_time(nbf),
                    relative_time(nbf, now),
                    rules.leeway_secs
                )
            })?;
        }
        None => trace.step(Step::NotBefore, Ok(()), || "no nbf claim".to_owned()),
    }

    let issuer = match claims.get("iss") {
        None => Ok(None),
        Some(Value::String(iss)) => Ok(Some(iss.as_str())),
        Some(_) => reject(InvalidClaims, "token iss is not a string"),
    };
    let issuer_checked = issuer.clone().and_then(|issuer| match &rules.issuer {
        Some(required) if issuer != Some(required.as_str()) => {
            reject(AuthFailure::WrongIssuer, "token issuer is not accepted")
        }
        _ => Ok(()),
    });
    traced(trace, Step::Issuer, issuer_checked, || {
        let token = match issuer {
            Ok(Some(iss)) => format!("token iss `{iss}`"),
            Ok(None) => "token has no iss".to_owned(),
            Err(_) => format!(
                "token iss is {}",
                claims.get("iss").map_or(String::new(), |v| v.to_string())
            ),
        };
        match &rules.issuer {
            Some(required) => format!("route requires iss `{required}`; {token}"),
            None => format!("route requires no issuer; {token}"),
        }
    })?;

    let audience_matches = (|| {
        let matches = match claims.get("aud") {
            None => false,
            Some(Value::String(aud)) => rules.audiences.iter().any(|a| a == aud),
            Some(Value::Array(auds)) => {
                let mut any = false;
                for aud in auds {
                    let Value::String(aud) = aud else {
                        return reject(
                            InvalidClaims,
                            "token aud is not a string or a list of strings",
                        );
                    };
                    any |= rules.audiences.iter().any(|a| a == aud);
                }
                any
            }
            Some(_) => {
                return reject(
                    InvalidClaims,
                    "token aud is not a string or a list of strings",
                )
            }
        };
        if !matches {
            return reject(AuthFailure::WrongAudience, "token audience is not accepted");
        }
        Ok(())
    })();
    traced(trace, Step::Audience, audience_matches, || {
        format!(
            "route accepts aud {}; token aud {}",
            quoted_list(&rules.audiences),
            claims
                .get("aud")
                .map_or("absent".to_owned(), Value::to_string)
        )
    })?;

    let subject = match claims.get("sub") {
        None => Ok(None),
        Some(Value::String(sub)) if is_header_safe(sub) => Ok(Some(sub.clone())),
        Some(_) => reject(InvalidClaims, "token sub is not a short printable string"),
    };
    let subject = traced(trace, Step::Subject, subject, || match claims.get("sub") {
        None => "no sub claim".to_owned(),
        Some(Value::String(sub)) if is_header_safe(sub) => format!("sub `{sub}`"),
        Some(_) => "sub must be a printable string of at most 1024 bytes".to_owned(),
    })?;
    let scopes = scopes(claims, rules.scope_claim.as_deref());
    let scopes = traced(trace, Step::Scopes, scopes, || match &rules.scope_claim {
        Some(name) => format!("scopes read from `{name}`"),
        None => "scopes read from the first of `scopes`, `scope`, `scp`".to_owned(),
    })?;
    Ok(Identity { subject, scopes })
}

/// `a`, `b` → "`a` or `b`".
fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Seconds since the epoch as `2026-12-04T20:01:02Z` (UTC, proleptic
/// Gregorian; fractions dropped).
pub fn utc_time(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    let days = (total / 86_400) as i64;
    let rem = total % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn check_expiry(exp: f64, leeway: f64, now_secs: f64) -> Result<(), Rejection> {
    if now_secs > exp + leeway {
        reject(AuthFailure::Expired, "token has expired")
    } else {
        Ok(())
    }
}

fn check_not_before(nbf: f64, leeway: f64, now_secs: f64) -> Result<(), Rejection> {
    if now_secs + leeway < nbf {
        reject(AuthFailure::NotYetValid, "token is not valid yet")
    } else {
        Ok(())
    }
}

/// The time claims of a token that passed [`check_claim_set`] under some
/// rules: of all its checks, the only ones whose answer changes with time.
/// A policy that remembers its verdict for a cached token re-checks these
/// alone, with the same rejections.
#[derive(Debug, Clone, Copy)]
pub struct ValidityWindow {
    exp: f64,
    nbf: Option<f64>,
    leeway: f64,
}

impl ValidityWindow {
    /// `None` for claims [`check_claim_set`] would refuse whatever the time.
    pub fn of(claims: &Map<String, Value>, rules: &ClaimRules) -> Option<ValidityWindow> {
        Some(ValidityWindow {
            exp: numeric_date(claims, "exp").ok()??,
            nbf: numeric_date(claims, "nbf").ok()?,
            leeway: rules.leeway_secs as f64,
        })
    }

    /// The expiry, then the not-before check of [`check_claim_set`].
    pub fn check(&self, now: u64) -> Result<(), Rejection> {
        let now_secs = now as f64;
        check_expiry(self.exp, self.leeway, now_secs)?;
        match self.nbf {
            Some(nbf) => check_not_before(nbf, self.leeway, now_secs),
            None => Ok(()),
        }
    }
}

/// A NumericDate claim: absent, or a number in 0…2^53.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        // Integers are compared exactly: as an f64, 2^53 + 1 rounds to 2^53
        // and would pass.
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(whole), _, _) if whole <= MAX_NUMERIC_DATE as u64 => Ok(Some(whole as f64)),
            (None, None, Some(v)) if (0.0..=MAX_NUMERIC_DATE).contains(&v) => Ok(Some(v)),
            _ => reject(
                AuthFailure::InvalidClaims,
                "token time claim is out of range",
            ),
        },
        Some(_) => reject(
            AuthFailure::InvalidClaims,
            "token time claim is not a number",
        ),
    }
}

/// Scopes from the route's `scope_claim`, else the first present of `scopes`,
/// `scope`, `scp`: a space-separated string or an array of strings.
fn scopes(
    claims: &Map<String, Value>,
    scope_claim: Option<&str>,
) -> Result<Vec<String>, Rejection> {
    let invalid = || Rejection {
        reason: AuthFailure::InvalidClaims,
        description: "token scopes are not a string or a list of strings",
    };
    let value = match scope_claim {
        Some(name) => claims.get(name),
        None => ["scopes", "scope", "scp"]
            .iter()
            .find_map(|name| claims.get(*name)),
    };
    let scopes: Vec<String> = match value {
        None => Vec::new(),
        Some(Value::String(list)) => {
            if !is_header_safe(list) {
                return Err(invalid());
            }
            list.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }
        Some(Value::Array(items)) => {
            let mut total = 0;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) if !s.is_empty() && !s.contains(' ') && is_header_safe(s) => {
                        total += s.len() + 1;
                        out.push(s.clone());
                    }
                    _ => return Err(invalid()),
                }
            }
            if total > MAX_IDENTITY_BYTES {
                return Err(invalid());
            }
            out
        }
        Some(_) => return Err(invalid()),
    };
    Ok(scopes)
}

/// Printable, header-safe text of sane length: no control characters (CR, LF,
/// NUL, DEL…), so a claim can never split or smuggle a header.
pub fn is_header_safe(text: &str) -> bool {
    text.len() <= MAX_IDENTITY_BYTES && !text.chars().any(char::is_control)
}

/// All steps in order, for one token against one key set. The parsed token
/// is returned beside the identity so callers can read further claims.
/// `on_signature_check` runs just before the signature is checked (metrics
/// count verifications that cost a signature check).
pub fn verify<'t>(
    token: &'t str,
    keys: &KeySet,
    rules: &ClaimRules,
    now: u64,
    on_signature_check: impl FnOnce(),
) -> Result<(ParsedToken<'t>, Identity), Rejection> {
    let parsed = parse(token)?;
    let verifier = select_key(&parsed, keys)?;
    on_signature_check();
    check_signature(&parsed, &verifier)?;
    let identity = check_claims(&parsed, rules, now)?;
    Ok((parsed, identity))
}

/// Steps 1–3 for `explain`: syntax, key, algorithm and signature, each
/// reported to `trace`, by the step functions enforcement runs ([`parse`],
/// [`select_key`], [`check_signature`]). Never touches the verified-token
/// cache or the metrics.
pub fn check_signature_traced<'t>(
    token: &'t str,
    keys: &KeySet,
    trace: &mut impl Trace,
) -> Result<(ParsedToken<'t>, Arc<Verifier>), Rejection> {
    let parsed = traced(trace, Step::Syntax, parse(token), || {
        format!(
            "{} bytes; compact JWS of base64url JSON header and payload (at most {MAX_TOKEN_BYTES} bytes, no crit)",
            token.len()
        )
    })?;
    let selected = select_key(&parsed, keys);
    let issuer = parsed.claims.get("iss").and_then(Value::as_str);
    let candidates = keys.candidates_for(issuer);
    let kid = || {
        parsed
            .kid
            .as_deref()
            .map_or("no kid".to_owned(), |k| format!("kid `{k}`"))
    };
    match &selected {
        Ok(verifier) => {
            trace.step(Step::KeySelection, Ok(()), || {
                format!(
                    "{} in {} → {}",
                    kid(),
                    candidates.set,
                    describe_key(verifier)
                )
            });
            trace.step(Step::Algorithm, Ok(()), || {
                format!("token alg `{}` is the key's algorithm", parsed.alg)
            });
        }
        Err(rejection) if rejection.reason == AuthFailure::UnknownKey => {
            trace.step(Step::KeySelection, Err(rejection), || {
                let held: Vec<String> =
                    candidates.keys.iter().map(|(kid, _)| kid.clone()).collect();
                format!(
                    "{}; {} holds {}",
                    kid(),
                    candidates.set,
                    if held.is_empty() {
                        "no keys".to_owned()
                    } else {
                        quoted_list(&held).replace(" or ", ", ")
                    }
                )
            });
        }
        Err(rejection) => {
            // `select_key` refuses an unknown algorithm name before looking
            // for the key, and a mismatch after finding it.
            let wanted = parsed.kid.as_deref().unwrap_or("");
            let key = candidates.keys.iter().find(|(kid, _)| {
                kid == wanted || (parsed.kid.is_none() && candidates.keys.len() == 1)
            });
            let known_alg = Algorithm::from_name(&parsed.alg).is_some();
            if let (true, Some((found, _))) = (known_alg, key) {
                trace.step(Step::KeySelection, Ok(()), || {
                    format!("{} in {} → key `{found}`", kid(), candidates.set)
                });
            }
            trace.step(Step::Algorithm, Err(rejection), || match key {
                Some((found, algs)) if known_alg => {
                    format!(
                    "token alg `{}`, but key `{found}` is {} (the algorithm is bound to the key)",
                    parsed.alg,
                    algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(" or ")
                )
                }
                _ => format!(
                    "token alg `{}` is not one of {} (none and HMAC are never accepted)",
                    parsed.alg,
                    Algorithm::ALL.map(Algorithm::name).join(" ")
                ),
            });
        }
    }
    let verifier = selected?;
    traced(
        trace,
        Step::Signature,
        check_signature(&parsed, &verifier),
        || {
            format!(
                "{} signature checked with key `{}`",
                verifier.alg, verifier.kid
            )
        },
    )?;
    Ok((parsed, verifier))
}

/// `RS256 key `gw` (private_key keys/gw.pem)`.
pub fn describe_key(verifier: &Verifier) -> String {
    format!(
        "{} key `{}` ({})",
        verifier.alg,
        verifier.kid,
        if verifier.source.is_empty() {
            "source unknown"
        } else {
            &verifier.source
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn parse_refuses_non_compact_shapes() {
        let h = b64(r#"{"alg":"RS256"}"#);
        let p = b64(r#"{"exp":1}"#);
        let reason = |t: &str| parse(t).unwrap_err().reason;
        assert_eq!(reason(&format!("{h}.{p}")), AuthFailure::Malformed);
        assert_eq!(reason(&format!("{h}.{p}.AA.AA.AA")), AuthFailure::Malformed);
        assert_eq!(reason(&format!("{h}.{p}.")), AuthFailure::InvalidSignature);
        assert_eq!(reason(&format!("{h}=.{p}.AAAA")), AuthFailure::Malformed);
        assert_eq!(reason(&format!("{h}.{p}.AA+/")), AuthFailure::Malformed);
        assert_eq!(
            reason(&format!("{}.{p}.AAAA", b64("[1]"))),
            AuthFailure::Malformed
        );
        assert_eq!(
            reason(&format!(
                "{}.{p}.AAAA",
                b64(r#"{"alg":"RS256","alg":"none"}"#)
            )),
            AuthFailure::Malformed
        );
        assert_eq!(
            reason(&format!(
                "{}.{p}.AAAA",
                b64(r#"{"alg":"RS256","crit":["exp"]}"#)
            )),
            AuthFailure::Malformed
        );
        assert_eq!(
            reason(&format!("{}.{p}.AAAA", b64(r#"{"alg":"RS256","kid":7}"#))),
            AuthFailure::Malformed
        );
        assert_eq!(
            reason(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            AuthFailure::Malformed
        );
        let text = format!("{h}.{p}.AAAA");
        let ok = parse(&text).unwrap();
        assert_eq!(ok.alg, "RS256");
        assert_eq!(ok.signing_input, format!("{h}.{p}"));
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            audiences: vec!["api".into()],
            issuer: None,
            leeway_secs: 30,
            typ: None,
            scope_claim: None,
        }
    }

    fn claims_result(payload: &str, rules: &ClaimRules) -> Result<Identity, AuthFailure> {
        let token = format!(
            "{}.{}.AAAA",
            b64(r#"{"alg":"RS256","typ":"at+JWT"}"#),
            b64(payload)
        );
        let parsed = parse(&token).unwrap();
        check_claims(&parsed, rules, 1_000_000).map_err(|r| r.reason)
    }

    #[test]
    fn time_claims_use_leeway_at_exact_boundaries() {
        let r = rules();
        let at = |exp: i64, nbf: i64| {
            claims_result(&format!(r#"{{"aud":"api","exp":{exp},"nbf":{nbf}}}"#), &r).map(|_| ())
        };
        assert_eq!(at(1_000_000 - 30, 0), Ok(()));
        assert_eq!(at(1_000_000 - 31, 0), Err(AuthFailure::Expired));
        assert_eq!(at(2_000_000, 1_000_030), Ok(()));
        assert_eq!(at(2_000_000, 1_000_031), Err(AuthFailure::NotYetValid));
        assert_eq!(
            claims_result(r#"{"aud":"api"}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":"2000000"}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":1e300}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":-1}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":2000000,"iat":true}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
    }

    #[test]
    fn audience_issuer_scopes_and_typ() {
        let mut r = rules();
        let ok = claims_result(
            r#"{"aud":["x","api"],"exp":2000000,"scp":["a","b"],"sub":"me"}"#,
            &r,
        )
        .unwrap();
        assert_eq!(ok.scopes, vec!["a", "b"]);
        assert_eq!(ok.subject.as_deref(), Some("me"));
        assert_eq!(
            claims_result(r#"{"aud":"x","exp":2000000}"#, &r).unwrap_err(),
            AuthFailure::WrongAudience
        );
        assert_eq!(
            claims_result(r#"{"exp":2000000}"#, &r).unwrap_err(),
            AuthFailure::WrongAudience
        );
        assert_eq!(
            claims_result(r#"{"aud":["api",1],"exp":2000000}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":2000000,"scopes":{"a":1}}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":2000000,"sub":"a\r\nX-Evil: 1"}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":2000000,"scope":"a\u0000b"}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        // `scopes` wins over `scope` when both are present.
        let first = claims_result(
            r#"{"aud":"api","exp":2000000,"scopes":"a","scope":"b"}"#,
            &r,
        )
        .unwrap();
        assert_eq!(first.scopes, vec!["a"]);
        r.issuer = Some("https://gw".into());
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":2000000}"#, &r).unwrap_err(),
            AuthFailure::WrongIssuer
        );
        assert!(claims_result(r#"{"aud":"api","exp":2000000,"iss":"https://gw"}"#, &r).is_ok());
        r.typ = Some(normalise_typ("application/AT+jwt"));
        assert!(claims_result(r#"{"aud":"api","exp":2000000,"iss":"https://gw"}"#, &r).is_ok());
        r.typ = Some(normalise_typ("JWT"));
        assert_eq!(
            claims_result(r#"{"aud":"api","exp":2000000,"iss":"https://gw"}"#, &r).unwrap_err(),
            AuthFailure::InvalidClaims
        );
        r.typ = None;
        r.scope_claim = Some("permissions".into());
        let custom = claims_result(
            r#"{"aud":"api","exp":2000000,"iss":"https://gw","scope":"x","permissions":["p:1"]}"#,
            &r,
        )
        .unwrap();
        assert_eq!(custom.scopes, vec!["p:1"]);
    }

    /// Records steps, for the tests below.
    #[derive(Default)]
    struct Steps(Vec<(Step, Option<AuthFailure>, String)>);

    impl Trace for Steps {
        fn step(
            &mut self,
            step: Step,
            outcome: Result<(), &Rejection>,
            detail: impl FnOnce() -> String,
        ) {
            self.0
                .push((step, outcome.err().map(|r| r.reason), detail()));
        }
    }

    /// The traced claim checks decide exactly as the untraced ones, and the
    /// last step recorded is the one that failed (checks stop there).
    #[test]
    fn the_trace_sees_the_enforced_decision_and_stops_at_the_failure() {
        let mut r = rules();
        r.issuer = Some("https://gw".into());
        r.typ = Some(normalise_typ("at+jwt"));
        for (payload, failing) in [
            (
                r#"{"aud":"api","exp":2000000,"iss":"https://gw","sub":"me"}"#,
                None,
            ),
            (
                r#"{"aud":"api","iss":"https://gw"}"#,
                Some(Step::TimeClaims),
            ),
            (
                r#"{"aud":"api","exp":999000,"iss":"https://gw"}"#,
                Some(Step::Expiry),
            ),
            (
                r#"{"aud":"api","exp":2000000,"nbf":1000031,"iss":"https://gw"}"#,
                Some(Step::NotBefore),
            ),
            (r#"{"aud":"api","exp":2000000,"iss":7}"#, Some(Step::Issuer)),
            (
                r#"{"aud":"api","exp":2000000,"iss":"https://evil"}"#,
                Some(Step::Issuer),
            ),
            (
                r#"{"aud":"x","exp":2000000,"iss":"https://gw"}"#,
                Some(Step::Audience),
            ),
            (
                r#"{"aud":"api","exp":2000000,"iss":"https://gw","sub":5}"#,
                Some(Step::Subject),
            ),
            (
                r#"{"aud":"api","exp":2000000,"iss":"https://gw","scp":7}"#,
                Some(Step::Scopes),
            ),
        ] {
            let token = format!(
                "{}.{}.AAAA",
                b64(r#"{"alg":"RS256","typ":"at+jwt"}"#),
                b64(payload)
            );
            let parsed = parse(&token).unwrap();
            let enforced = check_claim_set(parsed.typ.as_deref(), &parsed.claims, &r, 1_000_000);
            let mut steps = Steps::default();
            let traced = check_claim_set_traced(
                parsed.typ.as_deref(),
                &parsed.claims,
                &r,
                1_000_000,
                &mut steps,
            );
            assert_eq!(enforced, traced, "{payload}");
            let (last, reason, _) = steps.0.last().unwrap();
            match failing {
                None => assert!(steps.0.iter().all(|(_, r, _)| r.is_none()), "{payload}"),
                Some(step) => {
                    assert_eq!(*last, step, "{payload}");
                    assert_eq!(*reason, Some(enforced.unwrap_err().reason), "{payload}");
                    let failures = steps.0.iter().filter(|(_, r, _)| r.is_some()).count();
                    assert_eq!(failures, 1, "{payload}");
                }
            }
        }
        // Times are explained relative to now, with the leeway.
        let token = format!(
            "{}.{}.AAAA",
            b64(r#"{"alg":"RS256","typ":"at+jwt"}"#),
            b64(r#"{"aud":"api","exp":999900,"iss":"https://gw"}"#)
        );
        let parsed = parse(&token).unwrap();
        let mut steps = Steps::default();
        let _ = check_claim_set_traced(
            parsed.typ.as_deref(),
            &parsed.claims,
            &r,
            1_000_000,
            &mut steps,
        );
        let exp = &steps
            .0
            .iter()
            .find(|(s, _, _)| *s == Step::Expiry)
            .unwrap()
            .2;
        assert_eq!(
            exp,
            "exp 1970-01-12T13:45:00Z (1m 40s ago), leeway 30s, now 1970-01-12T13:46:40Z"
        );
    }

    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(utc_time(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(1_796_414_539.0), "2026-12-04T20:02:19Z");
        assert_eq!(human_duration(3725.0), "1h 2m 5s");
        assert_eq!(relative_time(90.0, 100), "10s ago");
        assert_eq!(relative_time(160.0, 100), "in 1m 0s");
    }

    #[test]
    fn a_validity_window_answers_as_the_full_claim_check_at_every_time() {
        // What a remembered verdict re-checks must give the full check's
        // answer (same reason, same description) for every time, leeway,
        // nbf present or not, and fractional dates.
        for leeway_secs in [0, 30] {
            let rules = ClaimRules {
                leeway_secs,
                ..rules()
            };
            for nbf in [None, Some("150"), Some("150.5")] {
                let mut claims = serde_json::json!({"aud": "api", "exp": 200});
                if let Some(nbf) = nbf {
                    claims["nbf"] = serde_json::from_str(nbf).unwrap();
                }
                let Value::Object(claims) = claims else {
                    unreachable!()
                };
                let window = ValidityWindow::of(&claims, &rules).expect("exp present");
                for now in (0..=300).step_by(5).chain([119, 120, 121, 229, 230, 231]) {
                    let full = check_claim_set(None, &claims, &rules, now).map(|_| ());
                    assert_eq!(
                        window.check(now),
                        full,
                        "now {now}, nbf {nbf:?}, leeway {leeway_secs}"
                    );
                }
            }
        }
        let no_exp = serde_json::Map::new();
        assert!(ValidityWindow::of(&no_exp, &rules()).is_none());
    }
}
