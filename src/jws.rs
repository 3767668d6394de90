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
    use AuthFailure::InvalidClaims;
    if let Some(required) = &rules.typ {
        if typ.map(normalise_typ).as_deref() != Some(required.as_str()) {
            return reject(InvalidClaims, "token type is not the one required");
        }
    }
    let exp = match numeric_date(claims, "exp")? {
        Some(exp) => exp,
        None => return reject(InvalidClaims, "token has no exp claim"),
    };
    let nbf = numeric_date(claims, "nbf")?;
    numeric_date(claims, "iat")?;
    let now = now as f64;
    let leeway = rules.leeway_secs as f64;
    if now > exp + leeway {
        return reject(AuthFailure::Expired, "token has expired");
    }
    if let Some(nbf) = nbf {
        if now + leeway < nbf {
            return reject(AuthFailure::NotYetValid, "token is not valid yet");
        }
    }

    let issuer = match claims.get("iss") {
        None => None,
        Some(Value::String(iss)) => Some(iss.as_str()),
        Some(_) => return reject(InvalidClaims, "token iss is not a string"),
    };
    if let Some(required) = &rules.issuer {
        if issuer != Some(required.as_str()) {
            return reject(AuthFailure::WrongIssuer, "token issuer is not accepted");
        }
    }

    let audience_matches = match claims.get("aud") {
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
    if !audience_matches {
        return reject(AuthFailure::WrongAudience, "token audience is not accepted");
    }

    let subject = match claims.get("sub") {
        None => None,
        Some(Value::String(sub)) if is_header_safe(sub) => Some(sub.clone()),
        Some(_) => return reject(InvalidClaims, "token sub is not a short printable string"),
    };
    let scopes = scopes(claims, rules.scope_claim.as_deref())?;
    Ok(Identity { subject, scopes })
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
}
