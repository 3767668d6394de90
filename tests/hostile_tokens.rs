//! Hostile tokens (issue "Security hardening"): forged, confused, malformed
//! and oversized tokens and Authorization headers drawn from RFC 8725,
//! jwt_tool, PortSwigger's JWT labs and known CVEs (CVE-2015-9235 alg
//! confusion, CVE-2018-0114 embedded `jwk`, CVE-2022-21449 "psychic"
//! ECDSA signatures, …), each built at run time and sent to one gateway.
//!
//! Every case asserts the exact RFC 6750 answer of SPEC §3 (status,
//! `WWW-Authenticate`, JSON body), that the recording upstream saw nothing,
//! and — read from the admin `/metrics` after each request — that exactly
//! one `jwtgate_auth_failures_total{route,reason}` series moved, by one, and
//! whether a signature was checked at all (`jwtgate_token_cache_requests_total
//! {result="miss"}`): a token refused as malformed, for its key or for its
//! algorithm must cost no signature work.
//!
//! Cases marked `SPEC:` assert the contract where the gateway was found to
//! deviate from it; they fail until the gateway is fixed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use jsonwebtoken::{Algorithm as Jwa, EncodingKey};
use jwtgate::keys::{local, Algorithm, Verifier};
use serde_json::{json, Value};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The `orders` route: audience `orders`, scope `read`, default leeway
/// (30 s), `tenant` copied into `X-Tenant`.
const ORDERS: &str = "orders";
/// The `strict` route: an issuer, two audiences, scope `read`, leeway 45 s
/// (not the default, so the boundary cases show the route's own leeway is
/// used).
const STRICT: &str = "strict";
const ISSUER: &str = "https://issuer.example";
const LEEWAY: u64 = 30;
const STRICT_LEEWAY: u64 = 45;
/// 2^53: the largest NumericDate SPEC §3 allows.
const MAX_NUMERIC_DATE: u64 = 1 << 53;
/// The order of P-256 (big-endian).
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// The order L of the Ed25519 group (little-endian).
const ED25519_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

/// What the gateway must answer to one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expect {
    status: u16,
    /// The `error=` code of the challenge; `None` for a missing token.
    code: Option<&'static str>,
    /// The body's `error`.
    error: &'static str,
    /// The `reason` label of `jwtgate_auth_failures_total`.
    reason: &'static str,
    /// Verifications that reach the signature step — a signature check, or
    /// a verified-token cache hit for the same token and key: 0 when the
    /// token must be refused before any signature work.
    signature_checks: u64,
}

const fn invalid_token(reason: &'static str, signature_checks: u64) -> Expect {
    Expect {
        status: 401,
        code: Some("invalid_token"),
        error: "invalid_token",
        reason,
        signature_checks,
    }
}

const MISSING: Expect = Expect {
    status: 401,
    code: None,
    error: "missing_token",
    reason: "missing_token",
    signature_checks: 0,
};
const BAD_HEADER: Expect = Expect {
    status: 400,
    code: Some("invalid_request"),
    error: "invalid_request",
    reason: "malformed",
    signature_checks: 0,
};
const FORBIDDEN: Expect = Expect {
    status: 403,
    code: Some("insufficient_scope"),
    error: "insufficient_scope",
    reason: "insufficient_scope",
    signature_checks: 1,
};
/// Not a refusal: the request must be forwarded (`200`).
const ACCEPTED: Expect = Expect {
    status: 200,
    code: None,
    error: "",
    reason: "",
    signature_checks: 1,
};
const MALFORMED: Expect = invalid_token("malformed", 0);
const UNKNOWN_KEY: Expect = invalid_token("unknown_key", 0);
const ALG_NOT_ALLOWED: Expect = invalid_token("algorithm_not_allowed", 0);
/// A signature segment that decodes to no bytes: refused before verifying.
const NO_SIGNATURE: Expect = invalid_token("invalid_signature", 0);
const BAD_SIGNATURE: Expect = invalid_token("invalid_signature", 1);
const EXPIRED: Expect = invalid_token("expired", 1);
const NOT_YET_VALID: Expect = invalid_token("not_yet_valid", 1);
const WRONG_AUDIENCE: Expect = invalid_token("wrong_audience", 1);
const WRONG_ISSUER: Expect = invalid_token("wrong_issuer", 1);
const INVALID_CLAIMS: Expect = invalid_token("invalid_claims", 1);

/// One request: its route and `Authorization` header values (raw bytes,
/// so non-ASCII and repeated headers can be sent), and any other headers.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    route: &'static str,
    /// Appended to the route's path (`?access_token=…`).
    query: String,
    authorization: Vec<Vec<u8>>,
    /// Headers other than `Authorization` (a token where none is read).
    others: Vec<(&'static str, String)>,
    expect: Expect,
}

impl Case {
    fn path(&self) -> String {
        format!("/{}/resource{}", self.route, self.query)
    }
}

/// Cases in the order they are written.
#[derive(Default)]
struct Table(Vec<Case>);

impl Table {
    fn on(&mut self, route: &'static str, name: &str, token: &str, expect: Expect) {
        self.0.push(Case {
            name: name.to_owned(),
            route,
            query: String::new(),
            authorization: vec![format!("Bearer {token}").into_bytes()],
            others: vec![],
            expect,
        });
    }

    /// `Authorization: Bearer <token>` on the `orders` route.
    fn token(&mut self, name: &str, token: &str, expect: Expect) {
        self.on(ORDERS, name, token, expect);
    }

    /// `Authorization: Bearer <token>` on the `strict` route.
    fn strict(&mut self, name: &str, token: &str, expect: Expect) {
        self.on(STRICT, name, token, expect);
    }

    /// Any `Authorization` header values on the `orders` route.
    fn header(&mut self, name: &str, values: &[&[u8]], expect: Expect) {
        self.0.push(Case {
            name: name.to_owned(),
            route: ORDERS,
            query: String::new(),
            authorization: values.iter().map(|v| v.to_vec()).collect(),
            others: vec![],
            expect,
        });
    }

    /// A token somewhere other than `Authorization` (query or another
    /// header), which must count as no token at all.
    fn elsewhere(&mut self, name: &str, query: String, others: Vec<(&'static str, String)>) {
        self.0.push(Case {
            name: name.to_owned(),
            route: ORDERS,
            query,
            authorization: vec![],
            others,
            expect: MISSING,
        });
    }
}

// ---------------------------------------------------------------------------
// Keys and token construction

/// An Ed25519 key (kid `ed`), generated once per test binary.
fn ed_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = local::keygen(Algorithm::EdDsa, "ed", dir.path()).unwrap();
        KeyPair {
            private_pem: std::fs::read_to_string(out.private_path).unwrap(),
            public_pem: std::fs::read_to_string(out.public_path).unwrap(),
        }
    })
}

/// The private keys parsed once, for the independent `jsonwebtoken` signer.
struct EncodingKeys {
    gw: EncodingKey,
    rogue: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
}

fn encoding_keys() -> &'static EncodingKeys {
    static KEYS: OnceLock<EncodingKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let k = keys();
        EncodingKeys {
            gw: EncodingKey::from_rsa_pem(k.rsa.private_pem.as_bytes()).unwrap(),
            rogue: EncodingKey::from_rsa_pem(k.rogue_rsa.private_pem.as_bytes()).unwrap(),
            ec: EncodingKey::from_ec_pem(k.ec.private_pem.as_bytes()).unwrap(),
            ed: EncodingKey::from_ed_pem(ed_key().private_pem.as_bytes()).unwrap(),
        }
    })
}

/// How a token's signature segment is made.
enum Sign<'a> {
    /// The gateway's `gw` RSA key, with this JWA (RS*/PS*).
    Gw(Jwa),
    /// An RSA key the gateway does not hold (RS256).
    Rogue,
    /// The `ec` P-256 key (ES256).
    Ec,
    /// The `ed` Ed25519 key (EdDSA).
    Ed,
    /// An HMAC with this secret.
    Hmac(Jwa, &'a [u8]),
    /// These exact signature bytes.
    Bytes(Vec<u8>),
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(segment: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(segment).unwrap()
}

fn sign_bytes(input: &[u8], how: &Sign) -> Vec<u8> {
    let k = encoding_keys();
    let signed =
        |key: &EncodingKey, alg: Jwa| unb64(&jsonwebtoken::crypto::sign(input, key, alg).unwrap());
    match how {
        Sign::Gw(alg) => signed(&k.gw, *alg),
        Sign::Rogue => signed(&k.rogue, Jwa::RS256),
        Sign::Ec => signed(&k.ec, Jwa::ES256),
        Sign::Ed => signed(&k.ed, Jwa::EdDSA),
        Sign::Hmac(alg, secret) => signed(&EncodingKey::from_secret(secret), *alg),
        Sign::Bytes(bytes) => bytes.clone(),
    }
}

/// A compact JWS of already-encoded header and payload segments, the
/// signature computed over exactly `header.payload`.
fn jws_segments(header: &str, payload: &str, how: Sign) -> String {
    let input = format!("{header}.{payload}");
    let signature = sign_bytes(input.as_bytes(), &how);
    format!("{input}.{}", b64(signature))
}

/// A compact JWS of this header and payload text (any bytes).
fn jws(header: impl AsRef<[u8]>, payload: impl AsRef<[u8]>, how: Sign) -> String {
    jws_segments(&b64(header), &b64(payload), how)
}

const GW_HEADER: &str = r#"{"alg":"RS256","kid":"gw"}"#;

/// `claims(extra)` (valid for `orders`; a null in `extra` removes a claim)
/// as JSON text.
fn payload(extra: Value) -> String {
    claims(extra).to_string()
}

/// Valid claims with `name` set to `value`, null included.
fn payload_with(name: &str, value: Value) -> String {
    let mut claims = claims(json!({}));
    claims[name] = value;
    claims.to_string()
}

/// Valid claims for the `strict` route, overridden by `extra`.
fn strict_payload(extra: Value) -> String {
    let mut all = json!({"iss": ISSUER});
    all.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    payload(all)
}

/// A `gw` RS256 token of this payload text.
fn gw(payload: &str) -> String {
    jws(GW_HEADER, payload, Sign::Gw(Jwa::RS256))
}

/// A `gw` RS256 token of the default claims overridden by `extra`.
fn gw_claims(extra: Value) -> String {
    gw(&payload(extra))
}

fn segments(token: &str) -> Vec<&str> {
    token.split('.').collect()
}

/// Replaces the signature segment.
fn with_signature(token: &str, signature: &str) -> String {
    let s = segments(token);
    format!("{}.{}.{signature}", s[0], s[1])
}

/// The same bytes, but the unused low bits of the last base64 character set
/// (a lenient decoder reads the identical bytes).
fn noncanonical(segment: &str) -> String {
    assert!(matches!(segment.len() % 4, 2 | 3), "no trailing bits");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *segment.as_bytes().last().unwrap();
    let index = alphabet.iter().position(|&c| c == last).unwrap();
    assert_eq!(index & 1, 0, "trailing bits already set");
    let changed = format!(
        "{}{}",
        &segment[..segment.len() - 1],
        alphabet[index | 1] as char
    );
    let lenient = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
    );
    assert_eq!(lenient.decode(&changed).unwrap(), unb64(segment));
    changed
}

/// An ASN.1 DER INTEGER of a big-endian unsigned number.
fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    let mut value = bytes[start..].to_vec();
    if value[0] & 0x80 != 0 {
        value.insert(0, 0);
    }
    let mut out = vec![0x02, value.len() as u8];
    out.extend(value);
    out
}

/// A fixed-size `r || s` ECDSA signature re-encoded as DER (what X.509 and
/// most libraries use, not JWS).
fn ecdsa_der(fixed: &[u8]) -> Vec<u8> {
    let half = fixed.len() / 2;
    let mut body = der_integer(&fixed[..half]);
    body.extend(der_integer(&fixed[half..]));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// `s + L` for an Ed25519 signature's `S` half (little-endian): a
/// non-canonical `S` that a lax verifier reduces mod L and accepts.
fn ed25519_s_plus_order(signature: &[u8]) -> Vec<u8> {
    let mut out = signature.to_vec();
    let mut carry = 0u16;
    for (i, order_byte) in ED25519_ORDER.iter().enumerate() {
        let sum = out[32 + i] as u16 + *order_byte as u16 + carry;
        out[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// A valid `gw` token of exactly `size` bytes (claims padded by `pad`).
fn sized_gw_token(size: usize) -> String {
    let signature_len = b64(sign_bytes(b"x", &Sign::Gw(Jwa::RS256))).len();
    for header_pad in 0..4 {
        let header = format!(
            r#"{{"alg":"RS256","kid":"gw","x":"{}"}}"#,
            "h".repeat(header_pad)
        );
        let header_len = b64(&header).len();
        let unpadded = payload(json!({ "pad": "" }));
        for pad in 0..size {
            let payload_len = (4 * (unpadded.len() + pad)).div_ceil(3);
            let total = header_len + 1 + payload_len + 1 + signature_len;
            if total == size {
                let body =
                    unpadded.replace(r#""pad":"""#, &format!(r#""pad":"{}""#, "p".repeat(pad)));
                let token = jws(&header, &body, Sign::Gw(Jwa::RS256));
                assert_eq!(token.len(), size);
                return token;
            }
            if total > size {
                break;
            }
        }
    }
    panic!("no token of {size} bytes");
}

/// The public-key forms an attacker would try as an HMAC secret.
struct PublicKeyForms {
    pem: Vec<u8>,
    pem_trimmed: Vec<u8>,
    pem_crlf: Vec<u8>,
    base64_body: Vec<u8>,
    der: Vec<u8>,
}

fn public_key_forms(pem: &str, alg: Algorithm) -> PublicKeyForms {
    assert!(pem.ends_with('\n'));
    PublicKeyForms {
        pem: pem.as_bytes().to_vec(),
        pem_trimmed: pem.trim_end().as_bytes().to_vec(),
        pem_crlf: pem.replace('\n', "\r\n").into_bytes(),
        base64_body: pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
            .into_bytes(),
        der: local::parse_public_pem(pem, alg).unwrap(),
    }
}

// ---------------------------------------------------------------------------
// The tables

/// Every hostile case, built now (time claims are relative to `now()`).
fn hostile_cases() -> Vec<Case> {
    let k = keys();
    let now = now();
    let mut t = Table::default();
    let valid = gw_claims(json!({}));
    let valid_payload = payload(json!({}));
    let p = valid_payload.as_str();

    // --- The Authorization header itself (RFC 6750 §2.1).
    t.header("no Authorization header", &[], MISSING);
    t.elsewhere(
        "a valid token in the query only",
        format!("?access_token={valid}"),
        vec![],
    );
    t.elsewhere(
        "a valid token in a cookie only",
        String::new(),
        vec![("cookie", format!("access_token={valid}"))],
    );
    t.elsewhere(
        "a valid token in Proxy-Authorization only",
        String::new(),
        vec![("proxy-authorization", format!("Bearer {valid}"))],
    );
    t.elsewhere(
        "a valid token in X-Access-Token only",
        String::new(),
        vec![("x-access-token", valid.clone())],
    );
    t.header("an empty Authorization header", &[b""], BAD_HEADER);
    t.header("`Bearer` alone", &[b"Bearer"], BAD_HEADER);
    t.header("`Bearer ` and nothing", &[b"Bearer "], BAD_HEADER);
    t.header("`Bearer` and spaces only", &[b"Bearer     "], BAD_HEADER);
    t.header("Basic credentials", &[b"Basic dXNlcjpwYXNz"], BAD_HEADER);
    let token_scheme = format!("Token {valid}");
    t.header("another scheme", &[token_scheme.as_bytes()], BAD_HEADER);
    let glued = format!("Bearer{valid}");
    t.header("no space after the scheme", &[glued.as_bytes()], BAD_HEADER);
    let tabbed = format!("Bearer\t{valid}");
    t.header("a tab after the scheme", &[tabbed.as_bytes()], BAD_HEADER);
    let bearer_valid = format!("Bearer {valid}");
    t.header(
        "two Authorization headers",
        &[bearer_valid.as_bytes(), bearer_valid.as_bytes()],
        BAD_HEADER,
    );
    let joined = format!("Bearer {valid},Bearer {valid}");
    t.header(
        "two credentials in one header",
        &[joined.as_bytes()],
        BAD_HEADER,
    );
    t.header("a space inside the token", &[b"Bearer a b"], BAD_HEADER);
    let s = segments(&valid);
    let spaced = format!("Bearer {}.{} .{}", s[0], s[1], s[2]);
    t.header(
        "a space inside a valid token",
        &[spaced.as_bytes()],
        BAD_HEADER,
    );
    let tab_inside = format!("Bearer {}.{}\t.{}", s[0], s[1], s[2]);
    t.header(
        "a tab inside a valid token",
        &[tab_inside.as_bytes()],
        BAD_HEADER,
    );
    let mut non_ascii = format!("Bearer {valid}").into_bytes();
    non_ascii.extend_from_slice("é".as_bytes());
    t.header(
        "a non-ASCII byte after the token",
        &[&non_ascii],
        BAD_HEADER,
    );
    t.token("a quoted token", &format!("\"{valid}\""), MALFORMED);

    // --- `alg: none` (CVE-2015-9235) and a missing or mistyped `alg`.
    for none in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{none}","kid":"gw"}}"#);
        let unsigned = format!("{}.{}.", b64(&header), b64(p));
        t.token(
            &format!("alg {none}, empty signature"),
            &unsigned,
            NO_SIGNATURE,
        );
        // The signature is a real RS256 one over the same input.
        let signed = jws(&header, p, Sign::Gw(Jwa::RS256));
        t.token(
            &format!("alg {none}, RS256 signature"),
            &signed,
            ALG_NOT_ALLOWED,
        );
    }
    t.token(
        "alg none, no kid",
        &jws(r#"{"alg":"none"}"#, p, Sign::Bytes(b"x".to_vec())),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "alg missing",
        &jws(r#"{"kid":"gw"}"#, p, Sign::Gw(Jwa::RS256)),
        MALFORMED,
    );
    for (what, alg) in [
        ("a number", "256"),
        ("null", "null"),
        ("an array", r#"["RS256"]"#),
        ("an object", r#"{"RS256":1}"#),
    ] {
        t.token(
            &format!("alg is {what}"),
            &jws(
                format!(r#"{{"alg":{alg},"kid":"gw"}}"#),
                p,
                Sign::Gw(Jwa::RS256),
            ),
            MALFORMED,
        );
    }
    for (what, alg) in [
        ("empty", ""),
        ("lowercase rs256", "rs256"),
        ("`RS256 `", "RS256 "),
    ] {
        t.token(
            &format!("alg {what}"),
            &jws(
                format!(r#"{{"alg":"{alg}","kid":"gw"}}"#),
                p,
                Sign::Gw(Jwa::RS256),
            ),
            ALG_NOT_ALLOWED,
        );
    }

    // --- HMAC key confusion: the public key used as the MAC secret.
    let rsa = public_key_forms(&k.rsa.public_pem, Algorithm::Rs256);
    let hs = |alg: Jwa, kid: Option<&str>, secret: &[u8]| {
        let name = format!("{alg:?}");
        let header = match kid {
            Some(kid) => format!(r#"{{"alg":"{name}","kid":"{kid}","typ":"JWT"}}"#),
            None => format!(r#"{{"alg":"{name}","typ":"JWT"}}"#),
        };
        jws(header, p, Sign::Hmac(alg, secret))
    };
    for (form, secret) in [
        ("the public PEM", &rsa.pem),
        ("the PEM without its final newline", &rsa.pem_trimmed),
        ("the PEM with CRLF line ends", &rsa.pem_crlf),
        ("the PEM's base64 body", &rsa.base64_body),
        ("the public key DER", &rsa.der),
    ] {
        t.token(
            &format!("HS256 keyed with {form}, kid gw"),
            &hs(Jwa::HS256, Some("gw"), secret),
            ALG_NOT_ALLOWED,
        );
    }
    t.token(
        "HS384 keyed with the public PEM",
        &hs(Jwa::HS384, Some("gw"), &rsa.pem),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "HS512 keyed with the public PEM",
        &hs(Jwa::HS512, Some("gw"), &rsa.pem),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "HS256 keyed with the public PEM, no kid",
        &hs(Jwa::HS256, None, &rsa.pem),
        ALG_NOT_ALLOWED,
    );
    let ec_forms = public_key_forms(&k.ec.public_pem, Algorithm::Es256);
    t.token(
        "HS256 keyed with the EC public PEM, kid ec",
        &hs(Jwa::HS256, Some("ec"), &ec_forms.pem),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "HS256 with kid /dev/null and an empty secret (jwt_tool)",
        &jws(
            r#"{"alg":"HS256","kid":"/dev/null"}"#,
            p,
            Sign::Hmac(Jwa::HS256, b""),
        ),
        ALG_NOT_ALLOWED,
    );

    // --- An algorithm that is not the key's, with a signature by that key.
    for alg in [Jwa::RS384, Jwa::RS512, Jwa::PS256] {
        t.token(
            &format!("{alg:?} by the gw key, kid gw (an RS256 key)"),
            &jws(
                format!(r#"{{"alg":"{alg:?}","kid":"gw"}}"#),
                p,
                Sign::Gw(alg),
            ),
            ALG_NOT_ALLOWED,
        );
    }
    t.token(
        "ES256 by the ec key, kid gw",
        &jws(r#"{"alg":"ES256","kid":"gw"}"#, p, Sign::Ec),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "EdDSA by the ed key, kid gw",
        &jws(r#"{"alg":"EdDSA","kid":"gw"}"#, p, Sign::Ed),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "RS256 by the gw key, kid ec",
        &jws(r#"{"alg":"RS256","kid":"ec"}"#, p, Sign::Gw(Jwa::RS256)),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "ES384 (96-byte signature), kid ec",
        &jws(r#"{"alg":"ES384","kid":"ec"}"#, p, Sign::Bytes(vec![7; 96])),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "RS256 by the gw key, kid ed",
        &jws(r#"{"alg":"RS256","kid":"ed"}"#, p, Sign::Gw(Jwa::RS256)),
        ALG_NOT_ALLOWED,
    );
    t.token(
        "alg Ed25519 (RFC 9864 name, not configured), kid ed",
        &jws(r#"{"alg":"Ed25519","kid":"ed"}"#, p, Sign::Ed),
        ALG_NOT_ALLOWED,
    );

    // --- kid.
    t.token(
        "no kid while several keys exist",
        &jws(r#"{"alg":"RS256"}"#, p, Sign::Gw(Jwa::RS256)),
        UNKNOWN_KEY,
    );
    let kid = |kid: &Value| {
        jws(
            json!({"alg": "RS256", "kid": kid}).to_string(),
            p,
            Sign::Gw(Jwa::RS256),
        )
    };
    for (what, value) in [
        ("unknown", json!("nope")),
        ("of another case", json!("GW")),
        ("a path traversal", json!("../../keys/gw")),
        ("a key file path", json!("keys/gw.pub.pem")),
        ("SQL injection", json!("' OR '1'='1")),
        ("SQL comment", json!("gw' --")),
        ("with a NUL", json!("gw\u{0}")),
        ("with a zero-width space", json!("gw\u{200b}")),
        ("256 bytes long", json!("k".repeat(256))),
    ] {
        t.token(&format!("kid {what}"), &kid(&value), UNKNOWN_KEY);
    }
    for (what, value) in [
        ("empty", json!("")),
        ("257 bytes long", json!("k".repeat(257))),
        ("300 bytes long", json!("g".repeat(300))),
        ("a number", json!(7)),
        ("null", Value::Null),
        ("an object", json!({"kid": "gw"})),
        ("an array", json!(["gw"])),
        (
            "10 KiB long (token over 8 KiB)",
            json!("k".repeat(10 * 1024)),
        ),
    ] {
        t.token(&format!("kid {what}"), &kid(&value), MALFORMED);
    }

    // --- Headers that name a key elsewhere: never fetched, never trusted.
    let rogue_der = local::parse_public_pem(&k.rogue_rsa.public_pem, Algorithm::Rs256).unwrap();
    let rogue_jwk = Verifier::new("gw", Algorithm::Rs256, &rogue_der)
        .unwrap()
        .jwk;
    for (what, extra) in [
        ("jku", json!({"jku": "http://127.0.0.1:1/jwks.json"})),
        ("x5u", json!({"x5u": "http://127.0.0.1:1/cert.pem"})),
        ("jwk (CVE-2018-0114)", json!({"jwk": rogue_jwk})),
        ("x5c", json!({"x5c": [STANDARD.encode(&rogue_der)]})),
    ] {
        let mut header = json!({"alg": "RS256", "kid": "gw"});
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        t.token(
            &format!("{what} naming the attacker's key, kid gw, signed by it"),
            &jws(header.to_string(), p, Sign::Rogue),
            BAD_SIGNATURE,
        );
    }
    let mut attacker_jwk = rogue_jwk.clone();
    attacker_jwk["kid"] = json!("attacker");
    t.token(
        "embedded jwk, no kid, signed by it",
        &jws(
            json!({"alg": "RS256", "jwk": attacker_jwk}).to_string(),
            p,
            Sign::Rogue,
        ),
        UNKNOWN_KEY,
    );
    t.token(
        "embedded jwk and its own kid, signed by it",
        &jws(
            json!({"alg": "RS256", "kid": "attacker", "jwk": attacker_jwk}).to_string(),
            p,
            Sign::Rogue,
        ),
        UNKNOWN_KEY,
    );

    // --- crit and b64 (RFC 7515 §4.1.11, RFC 7797), validly signed.
    for (what, header) in [
        (
            "crit [exp]",
            r#"{"alg":"RS256","kid":"gw","crit":["exp"],"exp":1}"#,
        ),
        ("crit []", r#"{"alg":"RS256","kid":"gw","crit":[]}"#),
        (
            "crit [b64], b64 false",
            r#"{"alg":"RS256","kid":"gw","crit":["b64"],"b64":false}"#,
        ),
        (
            "crit not an array",
            r#"{"alg":"RS256","kid":"gw","crit":"b64"}"#,
        ),
    ] {
        t.token(what, &jws(header, p, Sign::Gw(Jwa::RS256)), MALFORMED);
    }
    // RFC 7797 without `crit`; the payload has no space so that the header
    // is a well-formed `Bearer <token>` and the JWS parser decides.
    let unencoded = payload(json!({"scopes": "read"}));
    assert!(!unencoded.contains(' '));
    t.token(
        "b64 false, unencoded payload, signed over it",
        &jws_segments(
            &b64(r#"{"alg":"RS256","kid":"gw","b64":false}"#),
            &unencoded,
            Sign::Gw(Jwa::RS256),
        ),
        MALFORMED,
    );
    t.token(
        "cty JWT, the payload a nested JWT (a JSON string)",
        &jws(
            r#"{"alg":"RS256","kid":"gw","cty":"JWT"}"#,
            format!("\"{valid}\""),
            Sign::Gw(Jwa::RS256),
        ),
        MALFORMED,
    );
    t.token(
        "typ a number",
        &jws(
            r#"{"alg":"RS256","kid":"gw","typ":7}"#,
            p,
            Sign::Gw(Jwa::RS256),
        ),
        MALFORMED,
    );

    // --- Not a compact JWS.
    let jwe = [
        b64(r#"{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"gw"}"#),
        b64([1u8; 256]),
        b64([2u8; 12]),
        b64(p),
        b64([3u8; 16]),
    ]
    .join(".");
    t.token("JWE (five segments)", &jwe, MALFORMED);
    let json_jws = json!({
        "payload": s[1],
        "signatures": [{"protected": s[0], "signature": s[2]}],
    })
    .to_string();
    t.token(
        "JWS JSON serialisation of a valid token",
        &json_jws,
        MALFORMED,
    );
    t.token("two segments", &format!("{}.{}", s[0], s[1]), MALFORMED);
    t.token(
        "four segments (valid token + .AAAA)",
        &format!("{valid}.AAAA"),
        MALFORMED,
    );
    t.token("only dots", "..", MALFORMED);
    t.token(
        "empty header and payload",
        &format!("..{}", s[2]),
        MALFORMED,
    );
    t.token("one garbage segment", "not-a-token", MALFORMED);

    // --- The signature segment.
    let signature = unb64(s[2]);
    t.token(
        "empty signature",
        &format!("{}.{}.", s[0], s[1]),
        NO_SIGNATURE,
    );
    t.token(
        "signature truncated by 3 bytes",
        &with_signature(&valid, &b64(&signature[..signature.len() - 3])),
        BAD_SIGNATURE,
    );
    t.token(
        "signature with its last character dropped",
        &with_signature(&valid, &s[2][..s[2].len() - 1]),
        MALFORMED,
    );
    let mut flipped = signature.clone();
    flipped[100] ^= 0x01;
    t.token(
        "signature with one bit flipped",
        &with_signature(&valid, &b64(&flipped)),
        BAD_SIGNATURE,
    );
    let mut longer = signature.clone();
    longer.push(0);
    t.token(
        "signature with a byte appended",
        &with_signature(&valid, &b64(&longer)),
        BAD_SIGNATURE,
    );
    let other = gw_claims(json!({"sub": "mallory"}));
    t.token(
        "the signature of another token",
        &with_signature(&valid, segments(&other)[2]),
        BAD_SIGNATURE,
    );
    t.token(
        "signed by a key the gateway does not hold, kid gw",
        &jws(GW_HEADER, p, Sign::Rogue),
        BAD_SIGNATURE,
    );
    t.token(
        "valid signature with base64 padding",
        &format!("{valid}{}", "=".repeat((4 - s[2].len() % 4) % 4)),
        MALFORMED,
    );
    // A valid signature whose base64url text has `-` or `_`, re-encoded in
    // the standard alphabet (`+`, `/`): a lenient decoder would accept it.
    let standard = (0..)
        .map(|i| gw_claims(json!({"jti": i})))
        .find(|t| segments(t)[2].contains(['-', '_']))
        .unwrap();
    let std_segments = segments(&standard);
    t.token(
        "valid signature in the standard base64 alphabet",
        &with_signature(&standard, &STANDARD_NO_PAD.encode(unb64(std_segments[2]))),
        MALFORMED,
    );
    t.token(
        "valid signature with non-canonical trailing bits",
        &with_signature(&valid, &noncanonical(s[2])),
        MALFORMED,
    );
    // The signature is valid over the altered text: only strict decoding
    // of the header segment refuses it.
    t.token(
        "header with non-canonical trailing bits, signed as sent",
        &jws_segments(
            &noncanonical(&b64(GW_HEADER)),
            &b64(p),
            Sign::Gw(Jwa::RS256),
        ),
        MALFORMED,
    );
    let padded_header = format!("{}=", b64(GW_HEADER));
    assert_eq!(padded_header.len() % 4, 0, "one `=` is the right padding");
    t.token(
        "header segment with base64 padding, signed as sent",
        &jws_segments(&padded_header, &b64(p), Sign::Gw(Jwa::RS256)),
        MALFORMED,
    );

    // --- Header and payload contents.
    t.token(
        "header not base64url",
        &jws_segments("!!!!", &b64(p), Sign::Gw(Jwa::RS256)),
        MALFORMED,
    );
    for (what, header) in [
        ("an array", r#"[{"alg":"RS256","kid":"gw"}]"#),
        ("a string", r#""RS256""#),
        ("a number", "256"),
        ("null", "null"),
        (
            "prefixed by a BOM",
            "\u{feff}{\"alg\":\"RS256\",\"kid\":\"gw\"}",
        ),
        ("followed by garbage", r#"{"alg":"RS256","kid":"gw"} x"#),
        (
            "two alg members",
            r#"{"alg":"RS256","kid":"gw","alg":"none"}"#,
        ),
        (
            "two alg members, one escaped",
            r#"{"alg":"RS256","kid":"gw","a\u006cg":"HS256"}"#,
        ),
        (
            "two kid members",
            r#"{"alg":"RS256","kid":"nope","kid":"gw"}"#,
        ),
        ("not JSON", "alg=RS256"),
    ] {
        t.token(
            &format!("header {what}"),
            &jws(header, p, Sign::Gw(Jwa::RS256)),
            MALFORMED,
        );
    }
    let exp = now + 300;
    let nested = format!(r#"{{"aud":"orders","exp":{exp},"x":{}}}"#, "[".repeat(5000));
    let mut invalid_utf8 = format!(r#"{{"aud":"orders","exp":{exp},"sub":""#).into_bytes();
    invalid_utf8.extend_from_slice(b"\xff\xfe\"}");
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("an array", br#"[{"aud":"orders"}]"#.to_vec()),
        ("a string", br#""orders""#.to_vec()),
        ("null", b"null".to_vec()),
        ("empty", Vec::new()),
        ("invalid UTF-8", invalid_utf8),
        ("5000 nested arrays", nested.into_bytes()),
        (
            "two exp members",
            format!(r#"{{"aud":"orders","exp":1,"scopes":"read","exp":{exp}}}"#).into_bytes(),
        ),
        (
            "two sub members",
            format!(
                r#"{{"aud":"orders","exp":{exp},"scopes":"read","sub":"alice","sub":"admin"}}"#
            )
            .into_bytes(),
        ),
        (
            "two sub members, one escaped",
            format!(
                r#"{{"aud":"orders","exp":{exp},"scopes":"read","sub":"alice","s\u0075b":"admin"}}"#
            )
            .into_bytes(),
        ),
        (
            "two aud members",
            format!(r#"{{"aud":"billing","exp":{exp},"scopes":"read","aud":"orders"}}"#)
                .into_bytes(),
        ),
        (
            "followed by a second object",
            format!(r#"{{"aud":"orders","exp":{exp},"scopes":"read"}}{{}}"#).into_bytes(),
        ),
    ];
    for (what, body) in payloads {
        t.token(
            &format!("payload {what}, validly signed"),
            &jws(GW_HEADER, body, Sign::Gw(Jwa::RS256)),
            MALFORMED,
        );
    }

    // --- Time claims (the orders route's leeway is 30 s).
    for (what, value) in [
        ("missing", Value::Null),
        ("a string", json!("9999999999")),
        ("1e300", json!(1e300)),
        ("negative", json!(-1)),
        ("2^53 + 2", json!(MAX_NUMERIC_DATE + 2)),
        ("true", json!(true)),
        ("an object", json!({"$date": exp})),
        ("an array", json!([exp])),
    ] {
        let body = if value.is_null() {
            payload(json!({"exp": null}))
        } else {
            payload_with("exp", value)
        };
        t.token(&format!("exp {what}"), &gw(&body), INVALID_CLAIMS);
    }
    t.token(
        "exp null",
        &gw(&payload_with("exp", Value::Null)),
        INVALID_CLAIMS,
    );
    // SPEC: NumericDates must be in 0…2^53. 2^53 + 1 as an f64 rounds to
    // 2^53 (in range), so integers must be compared exactly (they once
    // were not: this pair caught it).
    t.token(
        "SPEC: exp 2^53 + 1",
        &gw(&payload_with("exp", json!(MAX_NUMERIC_DATE + 1))),
        INVALID_CLAIMS,
    );
    t.token(
        "SPEC: iat 2^53 + 1",
        &gw(&payload_with("iat", json!(MAX_NUMERIC_DATE + 1))),
        INVALID_CLAIMS,
    );
    // Written as JSON text: `json!` cannot produce these numbers.
    let raw_exp = |exp: &str| {
        gw(&format!(
            r#"{{"sub":"alice","aud":"orders","scopes":"read","exp":{exp}}}"#
        ))
    };
    t.token("exp -0", &raw_exp("-0"), EXPIRED);
    // Valid JSON grammar, but no JSON parser of f64s can hold it: the
    // payload is unparsable (SPEC: "an unparsable token counts as
    // malformed"), unlike 1e300 above, which parses and is out of range.
    t.token("exp 1e400 (beyond an f64)", &raw_exp("1e400"), MALFORMED);
    t.token(
        "nbf a string",
        &gw(&payload_with("nbf", json!(now.to_string()))),
        INVALID_CLAIMS,
    );
    t.token(
        "nbf negative",
        &gw(&payload_with("nbf", json!(-5))),
        INVALID_CLAIMS,
    );
    t.token(
        "iat a string",
        &gw(&payload_with("iat", json!("now"))),
        INVALID_CLAIMS,
    );
    t.token(
        "iat negative",
        &gw(&payload_with("iat", json!(-5))),
        INVALID_CLAIMS,
    );
    t.token(
        "iat null",
        &gw(&payload_with("iat", Value::Null)),
        INVALID_CLAIMS,
    );
    t.token("exp 0", &gw(&payload_with("exp", json!(0))), EXPIRED);
    t.token(
        "exp past the leeway by 2 s",
        &gw_claims(json!({"exp": now - LEEWAY - 2, "nbf": null, "iat": null})),
        EXPIRED,
    );
    t.token(
        "nbf beyond the leeway by 5 s",
        &gw_claims(json!({"nbf": now + LEEWAY + 5})),
        NOT_YET_VALID,
    );
    t.strict(
        "exp past the route's 45 s leeway by 2 s",
        &gw(&strict_payload(
            json!({"exp": now - STRICT_LEEWAY - 2, "nbf": null, "iat": null}),
        )),
        EXPIRED,
    );
    t.strict(
        "nbf beyond the route's 45 s leeway by 5 s",
        &gw(&strict_payload(json!({"nbf": now + STRICT_LEEWAY + 5}))),
        NOT_YET_VALID,
    );

    // --- aud.
    for (what, value) in [
        ("another audience", json!("billing")),
        ("a list without the route's", json!(["billing", "payments"])),
        ("missing", Value::Null),
        ("an empty list", json!([])),
        ("of another case", json!("Orders")),
        ("with a trailing space", json!("orders ")),
        ("a prefix", json!("order")),
    ] {
        let body = if value.is_null() {
            payload(json!({"aud": null}))
        } else {
            payload_with("aud", value)
        };
        t.token(&format!("aud {what}"), &gw(&body), WRONG_AUDIENCE);
    }
    for (what, value) in [
        ("a number", json!(7)),
        ("a list with a number", json!(["orders", 7])),
        ("a list with null", json!(["orders", null])),
        ("an object", json!({"orders": true})),
        ("null", Value::Null),
    ] {
        t.token(
            &format!("aud {what}"),
            &gw(&payload_with("aud", value)),
            INVALID_CLAIMS,
        );
    }

    // --- iss.
    for (what, value) in [
        ("another issuer", json!("https://evil.example")),
        ("missing", Value::Null),
        ("with a trailing slash", json!("https://issuer.example/")),
        ("of another case", json!("https://ISSUER.example")),
    ] {
        t.strict(
            &format!("iss {what}"),
            &gw(&strict_payload(json!({"iss": value}))),
            WRONG_ISSUER,
        );
    }
    t.strict(
        "iss a number",
        &gw(&strict_payload(json!({"iss": 7}))),
        INVALID_CLAIMS,
    );
    t.strict(
        "iss a list",
        &gw(&strict_payload(json!({"iss": [ISSUER]}))),
        INVALID_CLAIMS,
    );
    t.token(
        "iss a number where no issuer is required",
        &gw(&payload_with("iss", json!(7))),
        INVALID_CLAIMS,
    );
    t.strict(
        "wrong issuer on the strict route, audience billing",
        &gw(&strict_payload(
            json!({"iss": "https://evil.example", "aud": "billing"}),
        )),
        WRONG_ISSUER,
    );
    t.strict(
        "aud not among the strict route's",
        &gw(&strict_payload(json!({"aud": "payments"}))),
        WRONG_AUDIENCE,
    );

    // --- Claims copied into upstream headers.
    for (what, sub) in [
        ("CRLF header injection", "alice\r\nX-Auth-Scopes: admin"),
        ("LF", "alice\nx"),
        ("CR", "alice\rx"),
        ("NUL", "alice\u{0}"),
        ("U+0001", "alice\u{1}"),
        ("DEL", "alice\u{7f}"),
        ("NEL (U+0085)", "alice\u{85}"),
        ("a tab", "alice\tadmin"),
    ] {
        t.token(
            &format!("sub with {what}"),
            &gw_claims(json!({ "sub": sub })),
            INVALID_CLAIMS,
        );
    }
    t.token(
        "sub of 1025 bytes",
        &gw_claims(json!({"sub": "a".repeat(1025)})),
        INVALID_CLAIMS,
    );
    for (what, value) in [
        ("a number", json!(7)),
        ("an object", json!({"name": "alice"})),
        ("a list", json!(["alice"])),
        ("null", Value::Null),
    ] {
        t.token(
            &format!("sub {what}"),
            &gw(&payload_with("sub", value)),
            INVALID_CLAIMS,
        );
    }
    for (what, value) in [
        ("with CRLF", json!("read\r\nX-Auth-Subject: root")),
        ("with a NUL", json!("read\u{0}")),
        ("with DEL", json!("read\u{7f}")),
        ("a number", json!(7)),
        ("an object", json!({"read": true})),
        ("a list with a number", json!(["read", 7])),
        ("a list with a spaced item", json!(["read write"])),
        ("a list with an empty item", json!(["read", ""])),
        ("a list with a control character", json!(["read", "a\nb"])),
        ("a list over 1 KiB in all", json!(vec!["read"; 300])),
        (
            "a string over 1 KiB",
            json!(format!("read {}", "x".repeat(1024))),
        ),
        ("null", Value::Null),
        ("true", json!(true)),
    ] {
        t.token(
            &format!("scopes {what}"),
            &gw(&payload_with("scopes", value)),
            INVALID_CLAIMS,
        );
    }
    t.token(
        "scope (second name) with a control character",
        &gw_claims(json!({"scopes": null, "scope": "read\u{1b}[31m"})),
        INVALID_CLAIMS,
    );
    t.token(
        "scp (third name) a number",
        &gw_claims(json!({"scopes": null, "scp": 1})),
        INVALID_CLAIMS,
    );
    t.token(
        "an injected claim (tenant) with CRLF",
        &gw_claims(json!({"tenant": "acme\r\nX-Auth-Subject: root"})),
        INVALID_CLAIMS,
    );
    t.token(
        "an injected claim (tenant) of 2000 bytes",
        &gw_claims(json!({"tenant": "t".repeat(2000)})),
        INVALID_CLAIMS,
    );

    // --- ECDSA (CVE-2022-21449 "psychic signatures") and EdDSA forgeries.
    const EC_HEADER: &str = r#"{"alg":"ES256","kid":"ec"}"#;
    let ec_signature = sign_bytes(
        format!("{}.{}", b64(EC_HEADER), b64(p)).as_bytes(),
        &Sign::Ec,
    );
    assert_eq!(ec_signature.len(), 64);
    let (r, s_half) = ec_signature.split_at(32);
    let ecdsa: Vec<(&str, Vec<u8>)> = vec![
        ("r = s = 0", vec![0; 64]),
        ("r = 0", [&[0; 32][..], s_half].concat()),
        ("s = 0", [r, &[0; 32][..]].concat()),
        ("r = s = n", [P256_ORDER, P256_ORDER].concat()),
        ("r = n", [&P256_ORDER[..], s_half].concat()),
        ("s = n", [r, &P256_ORDER[..]].concat()),
        ("all 0xff", vec![0xff; 64]),
        ("a valid one, DER-encoded", ecdsa_der(&ec_signature)),
        ("a valid one, 63 bytes", ec_signature[..63].to_vec()),
        (
            "a valid one and a zero byte",
            [&ec_signature[..], &[0u8]].concat(),
        ),
        ("a valid one, r and s swapped", [s_half, r].concat()),
    ];
    for (what, bytes) in ecdsa {
        t.token(
            &format!("ES256 signature {what}"),
            &jws(EC_HEADER, p, Sign::Bytes(bytes)),
            BAD_SIGNATURE,
        );
    }
    const ED_HEADER: &str = r#"{"alg":"EdDSA","kid":"ed"}"#;
    let ed_signature = sign_bytes(
        format!("{}.{}", b64(ED_HEADER), b64(p)).as_bytes(),
        &Sign::Ed,
    );
    t.token(
        "EdDSA signature all zero",
        &jws(ED_HEADER, p, Sign::Bytes(vec![0; 64])),
        BAD_SIGNATURE,
    );
    t.token(
        "EdDSA signature with S + L (non-canonical)",
        &jws(
            ED_HEADER,
            p,
            Sign::Bytes(ed25519_s_plus_order(&ed_signature)),
        ),
        BAD_SIGNATURE,
    );

    // --- Size: refused before any signature work.
    t.token(
        "a validly signed token of 8193 bytes",
        &sized_gw_token(8 * 1024 + 1),
        MALFORMED,
    );
    t.token(
        "a validly signed token of 12 KiB",
        &gw_claims(json!({"pad": "p".repeat(9 * 1024)})),
        MALFORMED,
    );

    // --- Valid tokens lacking the required scope `read`.
    for (what, extra) in [
        ("only write", json!({"scopes": "write"})),
        ("READ", json!({"scopes": "READ"})),
        ("readwrite", json!({"scopes": "readwrite"})),
        ("read, (comma)", json!({"scopes": "read,"})),
        ("a list without read", json!({"scopes": ["write", "admin"]})),
        (
            "empty scopes, read in scope",
            json!({"scopes": "", "scope": "read"}),
        ),
        ("no scope claim", json!({"scopes": null})),
        (
            "read only under permissions",
            json!({"scopes": null, "permissions": "read"}),
        ),
    ] {
        t.token(&format!("scopes {what}"), &gw_claims(extra), FORBIDDEN);
    }
    t.strict(
        "strict route, scopes only write",
        &gw(&strict_payload(
            json!({"scopes": "write", "aud": ["payments", "billing"]}),
        )),
        FORBIDDEN,
    );
    t.0
}

/// Tokens at the edges that must be accepted (each forwarded once).
fn accepted_cases() -> Vec<Case> {
    let now = now();
    let mut t = Table::default();
    let valid = gw_claims(json!({}));
    let p = payload(json!({}));
    for (what, header) in [
        ("lowercase scheme", format!("bearer {valid}")),
        ("uppercase scheme", format!("BEARER {valid}")),
        ("two spaces after the scheme", format!("Bearer  {valid}")),
        (
            "many spaces after the scheme",
            format!("Bearer      {valid}"),
        ),
        // RFC 9110 §5.5: a field value has no trailing whitespace.
        ("a space after the token", format!("Bearer {valid} ")),
    ] {
        t.header(what, &[header.as_bytes()], ACCEPTED);
    }
    t.token(
        "exp 5 s inside the leeway",
        &gw_claims(json!({"exp": now - LEEWAY + 5, "nbf": null, "iat": null})),
        ACCEPTED,
    );
    t.token(
        "nbf 5 s inside the leeway",
        &gw_claims(json!({"nbf": now + LEEWAY - 5})),
        ACCEPTED,
    );
    t.strict(
        "exp 5 s inside the route's 45 s leeway",
        &gw(&strict_payload(
            json!({"exp": now - STRICT_LEEWAY + 5, "nbf": null, "iat": null}),
        )),
        ACCEPTED,
    );
    t.strict(
        "nbf 5 s inside the route's 45 s leeway",
        &gw(&strict_payload(json!({"nbf": now + STRICT_LEEWAY - 5}))),
        ACCEPTED,
    );
    t.strict(
        "second audience, as a list",
        &gw(&strict_payload(json!({"aud": ["payments", "billing"]}))),
        ACCEPTED,
    );
    t.token(
        "exp exactly 2^53",
        &gw_claims(json!({"exp": MAX_NUMERIC_DATE})),
        ACCEPTED,
    );
    t.token(
        "exp a fraction",
        &gw_claims(json!({"exp": now as f64 + 300.5})),
        ACCEPTED,
    );
    t.token(
        "a token of exactly 8 KiB",
        &sized_gw_token(8 * 1024),
        ACCEPTED,
    );
    t.token(
        "sub of exactly 1024 bytes",
        &gw_claims(json!({"sub": "a".repeat(1024)})),
        ACCEPTED,
    );
    t.token(
        "sub with non-ASCII text",
        &gw_claims(json!({"sub": "zoë"})),
        ACCEPTED,
    );
    t.token(
        "a jku header is ignored, not fetched",
        &jws(
            r#"{"alg":"RS256","kid":"gw","jku":"http://127.0.0.1:1/jwks.json"}"#,
            &p,
            Sign::Gw(Jwa::RS256),
        ),
        ACCEPTED,
    );
    t.token(
        "ES256, kid ec",
        &jws(r#"{"alg":"ES256","kid":"ec"}"#, &p, Sign::Ec),
        ACCEPTED,
    );
    t.token(
        "EdDSA, kid ed",
        &jws(r#"{"alg":"EdDSA","kid":"ed"}"#, &p, Sign::Ed),
        ACCEPTED,
    );
    t.0
}

// ---------------------------------------------------------------------------
// The gateway and what it reports

struct Fixture {
    gateway: Gateway,
    upstream: Upstream,
    client: HttpClient,
    /// Holds the `ed` public key the config names by absolute path.
    _ed_dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let upstream = Upstream::start().await;
        let ed_dir = tempfile::tempdir().unwrap();
        let ed_path = ed_dir.path().join("ed.pub.pem");
        std::fs::write(&ed_path, &ed_key().public_pem).unwrap();
        let up = upstream.url();
        let gateway = Gateway::start(&format!(
            r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
limits: {{max_header_bytes: 65536}}
keys:
  - {{kid: gw, alg: RS256, public_key: keys/gw.pub.pem}}
  - {{kid: ec, alg: ES256, public_key: keys/ec.pub.pem}}
  - {{kid: ed, alg: EdDSA, public_key: "{ed}"}}
routes:
  - name: {ORDERS}
    match: {{path_prefix: /{ORDERS}}}
    upstream: {up}
    policies:
      - jwt: {{audience: orders, scopes: [read], inject: {{claims: {{tenant: X-Tenant}}}}}}
  - name: {STRICT}
    match: {{path_prefix: /{STRICT}}}
    upstream: {up}
    policies:
      - jwt:
          audience: [orders, billing]
          issuer: "{ISSUER}"
          leeway: {STRICT_LEEWAY}s
          scopes: [read]
"#,
            ed = ed_path.display()
        ))
        .await;
        Fixture {
            gateway,
            upstream,
            client: client(),
            _ed_dir: ed_dir,
        }
    }

    async fn send(&self, client: &HttpClient, case: &Case) -> Answer {
        let mut builder = Request::get(self.gateway.url(&case.path()));
        for (name, value) in &case.others {
            builder = builder.header(*name, value.as_str());
        }
        for value in &case.authorization {
            builder = builder.header("authorization", HeaderValue::from_bytes(value).unwrap());
        }
        let request = builder.body(Full::new(Bytes::new())).unwrap();
        let response = tokio::time::timeout(DEADLINE, client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{}: timed out", case.name))
            .unwrap_or_else(|e| panic!("{}: request failed: {e}", case.name));
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .unwrap_or_else(|_| panic!("{}: body timed out", case.name))
            .unwrap()
            .to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn scrape(&self) -> Scrape {
        let answer = get(&self.gateway.admin_url("/metrics"), &[]).await;
        assert_eq!(answer.status, 200);
        Scrape::parse(std::str::from_utf8(&answer.body).unwrap())
    }
}

/// The metrics these tests read.
#[derive(Debug, Default, Clone, PartialEq)]
struct Scrape {
    /// `(route, reason)` → count, every exported series.
    auth_failures: BTreeMap<(String, String), u64>,
    signature_checks: u64,
    resident_memory_bytes: f64,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, label_map(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            match name {
                "jwtgate_auth_failures_total" => {
                    scrape.auth_failures.insert(
                        (labels["route"].clone(), labels["reason"].clone()),
                        value.parse().unwrap(),
                    );
                }
                // Both results: a hit stands for a signature checked before.
                "jwtgate_token_cache_requests_total" => {
                    scrape.signature_checks += value.parse::<u64>().unwrap();
                }
                "process_resident_memory_bytes" => {
                    scrape.resident_memory_bytes = value.parse().unwrap();
                }
                _ => {}
            }
        }
        scrape
    }

    fn failures(&self, route: &str, reason: &str) -> u64 {
        self.auth_failures
            .get(&(route.to_owned(), reason.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

fn label_map(labels: &str) -> BTreeMap<String, String> {
    labels
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// Everything a refusal must show the client; each deviation as a line.
fn refusal_problems(case: &Case, answer: &Answer) -> Vec<String> {
    let expect = case.expect;
    let body = String::from_utf8_lossy(&answer.body);
    if answer.status.as_u16() != expect.status {
        return vec![format!(
            "status {} (expected {}): {body}",
            answer.status, expect.status
        )];
    }
    let mut problems = Vec::new();
    let mut check = |ok: bool, problem: String| {
        if !ok {
            problems.push(problem);
        }
    };
    check(
        answer.header("content-type") == Some("application/json"),
        format!("content-type {:?}", answer.header("content-type")),
    );
    let json: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    check(
        json["error"] == expect.error,
        format!("body error {} (expected {})", json["error"], expect.error),
    );
    let description = json["error_description"].as_str().unwrap_or_default();
    check(!description.is_empty(), "no error_description".into());
    let challenge = answer.header("www-authenticate").unwrap_or_default();
    let expected_challenge = match expect.code {
        None => r#"Bearer realm="jwtgate""#.to_owned(),
        Some(code) => {
            let challenge = format!(
                r#"Bearer realm="jwtgate", error="{code}", error_description="{description}""#
            );
            if code == "insufficient_scope" {
                format!(r#"{challenge}, scope="read""#)
            } else {
                challenge
            }
        }
    };
    check(
        challenge == expected_challenge,
        format!("WWW-Authenticate {challenge:?} (expected {expected_challenge:?})"),
    );
    // Say little to clients: nothing of the token is echoed.
    let others = case.others.iter().map(|(_, v)| v.as_bytes().to_vec());
    for value in case
        .authorization
        .iter()
        .cloned()
        .chain(others)
        .filter(|v| v.len() >= 16)
    {
        let value = String::from_utf8_lossy(&value);
        let token = value.trim_start_matches("Bearer ");
        check(
            !body.contains(token) && !challenge.contains(token),
            "the answer echoes the token".into(),
        );
    }
    problems
}

/// The expected per-(route, reason) increments of `cases`.
fn expected_failures(cases: &[Case], times: u64) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for case in cases {
        *out.entry((case.route.to_owned(), case.expect.reason.to_owned()))
            .or_default() += times;
    }
    out
}

fn delta(before: &Scrape, after: &Scrape) -> BTreeMap<(String, String), u64> {
    after
        .auth_failures
        .iter()
        .map(|(key, n)| {
            (
                key.clone(),
                n - before.auth_failures.get(key).copied().unwrap_or(0),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

// ---------------------------------------------------------------------------
// The tests

/// The tests of this file run one at a time: resident memory is the whole
/// process's, so the leak check must not measure a sibling test (with
/// `RUST_BACKTRACE` set, a failing one symbolising its backtrace alone adds
/// ~150 MiB).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn every_hostile_token_is_refused_with_its_reason_and_reaches_no_upstream() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let fx = Fixture::start().await;
    let cases = hostile_cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");

    let start = fx.scrape().await;
    for reason in jwtgate::jws::AuthFailure::ALL {
        for route in [ORDERS, STRICT] {
            assert_eq!(
                start
                    .auth_failures
                    .get(&(route.to_owned(), reason.as_str().to_owned())),
                Some(&0),
                "{route}/{} is exported at 0",
                reason.as_str()
            );
        }
    }
    // Every case runs and every deviation is listed, so one gateway bug
    // does not hide the next.
    let mut problems: Vec<String> = Vec::new();
    let mut before = start.clone();
    for case in &cases {
        let seen = fx.upstream.count();
        let answer = fx.send(&fx.client, case).await;
        let mut found = refusal_problems(case, &answer);
        if fx.upstream.count() != seen {
            found.push("reached the upstream".into());
        }
        let after = fx.scrape().await;
        let moved = delta(&before, &after);
        let wanted = BTreeMap::from([((case.route.to_owned(), case.expect.reason.to_owned()), 1)]);
        if moved != wanted {
            found.push(format!(
                "auth failures moved {moved:?} (expected {wanted:?})"
            ));
        }
        let checks = after.signature_checks - before.signature_checks;
        if checks != case.expect.signature_checks {
            found.push(format!(
                "{checks} signature checks (expected {})",
                case.expect.signature_checks
            ));
        }
        problems.extend(found.into_iter().map(|p| format!("{}: {p}", case.name)));
        before = after;
    }

    // One scrape against the whole table: per (route, reason), and per reason.
    let end = fx.scrape().await;
    let wanted = expected_failures(&cases, 1);
    let moved = delta(&start, &end);
    if moved != wanted {
        problems.push(format!(
            "whole table: auth failures {moved:?} (expected {wanted:?})"
        ));
    }
    let mut per_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for case in &cases {
        *per_reason.entry(case.expect.reason).or_default() += 1;
    }
    for (reason, count) in &per_reason {
        let total = end.failures(ORDERS, reason) + end.failures(STRICT, reason)
            - start.failures(ORDERS, reason)
            - start.failures(STRICT, reason);
        if total != *count {
            problems.push(format!("whole table: {total} {reason} (expected {count})"));
        }
    }
    eprintln!("{} hostile cases: {per_reason:?}", cases.len());

    // A valid token still passes, and is forwarded.
    let leaked = fx.upstream.count();
    let answer = fx.send(&fx.client, &control_case()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(fx.upstream.count(), leaked + 1);
    assert!(
        problems.is_empty(),
        "{} deviations:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(leaked, 0);
}

/// A valid token for the `orders` route.
fn control_case() -> Case {
    Case {
        name: "control".into(),
        route: ORDERS,
        query: String::new(),
        authorization: vec![format!("Bearer {}", gw_claims(json!({}))).into_bytes()],
        others: vec![],
        expect: ACCEPTED,
    }
}

#[tokio::test]
async fn tokens_at_the_edges_are_accepted_and_forwarded_once_each() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let fx = Fixture::start().await;
    let cases = accepted_cases();
    let mut before = fx.scrape().await;
    for (i, case) in cases.iter().enumerate() {
        let answer = fx.send(&fx.client, case).await;
        assert_eq!(answer.status, 200, "{}: {:?}", case.name, answer.body);
        assert_eq!(answer.body, r#"{"upstream":"ok"}"#, "{}", case.name);
        assert_eq!(fx.upstream.count(), i + 1, "{}", case.name);
        let after = fx.scrape().await;
        assert!(delta(&before, &after).is_empty(), "{}", case.name);
        assert_eq!(
            after.signature_checks - before.signature_checks,
            1,
            "{}",
            case.name
        );
        before = after;
    }
    let seen = fx.upstream.requests();
    let long_sub = cases
        .iter()
        .position(|c| c.name == "sub of exactly 1024 bytes")
        .unwrap();
    assert_eq!(
        header_values(&seen[long_sub], "x-auth-subject"),
        vec!["a".repeat(1024)]
    );
    for recorded in &seen {
        assert!(header_values(recorded, "authorization").is_empty());
    }
}

/// The hostile table without the `SPEC:` cases, which pin known gateway
/// deviations (and fail in the table test until fixed): this test is about
/// robustness under load, and a forwarded case would blur its upstream and
/// counter checks.
fn settled_cases() -> Vec<Case> {
    let mut cases = hostile_cases();
    cases.retain(|c| !c.name.starts_with("SPEC:"));
    cases
}

/// Tasks × rounds of the whole hostile table at once against one gateway.
const TASKS: usize = 8;
const ROUNDS: usize = 6;

/// Runs every case of `cases` from each of `clients` concurrently; adds
/// each answer with another status than expected (a 5xx included) to
/// `wrong`, counted.
async fn concurrent_round(
    fx: &Arc<Fixture>,
    clients: &[HttpClient],
    cases: Arc<Vec<Case>>,
    wrong: &mut BTreeMap<String, usize>,
) {
    let mut tasks = Vec::new();
    for client in clients {
        let (fx, client, cases) = (fx.clone(), client.clone(), cases.clone());
        tasks.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            for case in cases.iter() {
                let answer = fx.send(&client, case).await;
                if answer.status.as_u16() != case.expect.status {
                    wrong.push(format!(
                        "{}: {} (expected {})",
                        case.name, answer.status, case.expect.status
                    ));
                }
            }
            wrong
        }));
    }
    for task in tasks {
        for answer in task.await.unwrap() {
            *wrong.entry(answer).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hostile_table_in_parallel_never_fails_the_gateway_nor_grows_its_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let fx = Arc::new(Fixture::start().await);
    let clients: Vec<HttpClient> = (0..TASKS).map(|_| client()).collect();
    let start = fx.scrape().await;

    // Warm-up: connection pools, allocator arenas, lazily built state.
    let warm_cases = Arc::new(settled_cases());
    let per_round = expected_failures(&warm_cases, TASKS as u64);
    let mut wrong = BTreeMap::new();
    concurrent_round(&fx, &clients, warm_cases, &mut wrong).await;
    let warm = fx.scrape().await;

    for _ in 0..ROUNDS {
        // Rebuilt each round: time claims are relative to now.
        let cases = Arc::new(settled_cases());
        concurrent_round(&fx, &clients, cases, &mut wrong).await;
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers (answer → times): {wrong:#?}"
    );
    assert_eq!(
        fx.upstream.count(),
        0,
        "a hostile request reached the upstream"
    );

    let end = fx.scrape().await;
    let mut wanted = per_round.clone();
    for n in wanted.values_mut() {
        *n *= (ROUNDS + 1) as u64;
    }
    assert_eq!(delta(&start, &end), wanted);

    // The gateway still serves, and only the control reaches the upstream.
    assert_eq!(fx.send(&fx.client, &control_case()).await.status, 200);
    assert_eq!(fx.upstream.count(), 1);

    // A coarse leak check only: resident memory of the whole test process
    // after the rounds, against after the warm-up round. The structural
    // guarantee is that the gateway keeps no per-token state: there is no
    // verified-token cache, and metrics labels come from closed sets, never
    // from a token.
    let grown = end.resident_memory_bytes - warm.resident_memory_bytes;
    assert!(
        grown < 32.0 * 1024.0 * 1024.0,
        "resident memory grew by {grown} bytes over {ROUNDS} rounds"
    );
}
