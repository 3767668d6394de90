//! Property tests (proptest) of the three pieces a hostile client shapes
//! directly: the identity-header sanitiser, the path normal-form check, and
//! the token parser.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use jwtgate::body::{full, Body};
use jwtgate::forward::{self, ClientInfo};
use jwtgate::gateway::strip_identity_headers;
use jwtgate::jws::{self, ClaimRules};
use jwtgate::policy::Verdict;
use jwtgate::router::check_normal_form;
use proptest::prelude::*;

const SUBJECT: &str = "x-auth-subject";
const SCOPES: &str = "x-auth-scopes";

fn injected() -> Vec<HeaderName> {
    vec![
        HeaderName::from_static(SUBJECT),
        HeaderName::from_static(SCOPES),
    ]
}

/// `name` with each `-` independently kept or turned into `_`, and each
/// letter independently upper- or lower-case.
fn spelling_of(name: &'static str) -> impl Strategy<Value = String> {
    let len = name.len();
    (
        proptest::collection::vec(any::<bool>(), len),
        proptest::collection::vec(any::<bool>(), len),
    )
        .prop_map(move |(underscore, upper)| {
            name.chars()
                .zip(underscore.iter().zip(&upper))
                .map(|(c, (&u, &up))| match c {
                    '-' if u => '_',
                    c if up => c.to_ascii_uppercase(),
                    c => c,
                })
                .collect()
        })
}

/// A header a client might send: a spoofed identity header, a header
/// naming others in `Connection`, or anything else.
fn client_header() -> impl Strategy<Value = (String, String)> {
    let value = "[ -~]{0,20}";
    prop_oneof![
        (spelling_of(SUBJECT), value).prop_map(|(n, v)| (n, v)),
        (spelling_of(SCOPES), value).prop_map(|(n, v)| (n, v)),
        (spelling_of(SUBJECT)).prop_map(|n| ("connection".to_owned(), n)),
        (spelling_of(SCOPES)).prop_map(|n| ("Connection".to_owned(), format!("keep-alive, {n}"))),
        ("x-[a-z0-9]{1,12}", value).prop_map(|(n, v)| (n, v)),
    ]
}

/// The same name, spelt with `_` for `-` and in any case.
fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            x.eq_ignore_ascii_case(&y) || matches!((x, y), (b'_', b'-') | (b'-', b'_'))
        })
}

fn client_info(peer_ip: &HeaderValue) -> ClientInfo<'_> {
    ClientInfo {
        peer_ip,
        proto: "http",
        host: None,
    }
}

proptest! {
    // No regression files: a failure prints its minimal input instead.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// For any header list: the client's copies of identity headers (any
    /// case, `_` for `-`, named in `Connection` or not) never reach the
    /// upstream; the gateway's injected values always do, exactly once;
    /// other end-to-end headers pass unchanged.
    #[test]
    fn identity_headers_from_clients_never_survive_and_injected_ones_always_do(
        headers in proptest::collection::vec(client_header(), 0..12)
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        strip_identity_headers(&mut map, &injected());
        let mut request = Request::new(full(""));
        *request.headers_mut() = map;
        let verdict = Verdict {
            inject: vec![
                (HeaderName::from_static(SUBJECT), HeaderValue::from_static("alice")),
                (HeaderName::from_static(SCOPES), HeaderValue::from_static("read")),
            ],
            forward_authorization: false,
            subject: Some("alice".into()),
        };
        let peer = forward::peer_ip_header("127.0.0.1:5000".parse().unwrap());
        let forwarded: Request<Body> =
            forward::upstream_request(request, None, "/x", verdict, &client_info(&peer)).unwrap();
        let out = forwarded.headers();

        for (name, expected) in [(SUBJECT, "alice"), (SCOPES, "read")] {
            let values: Vec<_> = out.get_all(name).iter().collect();
            prop_assert_eq!(values, vec![expected]);
        }
        for name in out.keys() {
            for identity in [SUBJECT, SCOPES] {
                prop_assert!(
                    name.as_str() == identity || !same_header(name.as_str(), identity),
                    "a client spelling {} survived", name
                );
            }
        }
        prop_assert!(out.get("connection").is_none());
        // Other end-to-end headers arrive as sent.
        for (name, value) in &headers {
            if name.starts_with("x-") && !same_header(name, SUBJECT) && !same_header(name, SCOPES) {
                let named_in_connection = headers.iter().any(|(n, v)| {
                    n.eq_ignore_ascii_case("connection")
                        && v.split(',').any(|t| t.trim().eq_ignore_ascii_case(name))
                });
                if !named_in_connection {
                    prop_assert!(out.get_all(name.as_str()).iter().any(|v| v == value.as_str()));
                }
            }
        }
    }

    /// A path the check accepts has no dot-segment, empty segment,
    /// backslash or NUL, plain or percent-encoded, and is forwarded exactly
    /// as it was matched (never normalised).
    #[test]
    fn accepted_paths_are_normal_and_forwarded_unchanged(
        segments in proptest::collection::vec(
            prop_oneof![
                Just("a".to_owned()), Just("b".to_owned()), Just(".".to_owned()),
                Just("..".to_owned()), Just("%2e".to_owned()), Just("%2E%2e".to_owned()),
                Just(".%2E".to_owned()), Just("%2f".to_owned()), Just("%2F".to_owned()),
                Just("%5c".to_owned()), Just("%5C".to_owned()), Just("\\".to_owned()),
                Just("%00".to_owned()), Just(String::new()), Just("x%20y".to_owned()),
                Just("%41".to_owned()), Just("%zz".to_owned()), Just("%".to_owned()),
                Just("...".to_owned()), Just("a.b".to_owned()), "[a-z%.]{1,6}",
            ],
            1..6,
        )
    ) {
        let path = format!("/{}", segments.join("/"));
        if check_normal_form(&path).is_ok() {
            prop_assert!(!path.contains('\\') && !path.contains('\0'));
            let segments: Vec<&str> = path[1..].split('/').collect();
            for (i, segment) in segments.iter().enumerate() {
                let decoded = percent_decode(segment).expect("valid percent-encoding");
                prop_assert!(decoded != b"." && decoded != b"..", "dot-segment in {}", path);
                prop_assert!(!decoded.contains(&b'/') && !decoded.contains(&b'\\'));
                prop_assert!(!decoded.contains(&0));
                // A trailing slash is meaningful (`/orders/`); an empty
                // segment anywhere else is not normal.
                prop_assert!(!segment.is_empty() || i == segments.len() - 1, "empty segment in {}", path);
            }
            let peer = forward::peer_ip_header("127.0.0.1:5000".parse().unwrap());
            let request = Request::builder().uri(&path).body(full("")).unwrap();
            let forwarded = forward::upstream_request(
                request, None, &path, Verdict::default(), &client_info(&peer),
            ).unwrap();
            prop_assert_eq!(forwarded.uri().path(), path.as_str());
        } else {
            let raw_dots = path[1..].split('/').any(|s| s == "." || s == "..");
            prop_assert!(raw_dots || path.contains("//") || path.contains('%') || path.contains('\\'),
                "{} refused for no reason", path);
        }
        let climbing = format!("{}/..", path);
        prop_assert!(check_normal_form(&climbing).is_err());
    }

    /// The parser and the claim checks never panic, whatever the bytes.
    #[test]
    fn the_token_parser_never_panics_on_any_string(token in ".{0,300}") {
        if let Ok(parsed) = jws::parse(&token) {
            let _ = jws::check_claims(&parsed, &rules(), 1_700_000_000);
        }
    }

    #[test]
    fn the_token_parser_never_panics_on_any_segments(
        header in proptest::collection::vec(any::<u8>(), 0..64),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&signature),
        );
        if let Ok(parsed) = jws::parse(&token) {
            let _ = jws::check_claims(&parsed, &rules(), 1_700_000_000);
        }
    }

    /// Well-formed JSON of any shape in the header and the claims.
    #[test]
    fn the_claim_checks_never_panic_on_any_json(header in json(), payload in json()) {
        let token = format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
        );
        if let Ok(parsed) = jws::parse(&token) {
            let _ = jws::check_claims(&parsed, &rules(), 1_700_000_000);
        }
    }
}

fn rules() -> ClaimRules {
    ClaimRules {
        audiences: vec!["orders".into()],
        issuer: Some("https://issuer.example".into()),
        leeway_secs: 30,
        typ: None,
        scope_claim: None,
    }
}

/// JSON values biased towards the claim names the checks read.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("exp".to_owned()),
                        Just("nbf".to_owned()),
                        Just("iat".to_owned()),
                        Just("aud".to_owned()),
                        Just("iss".to_owned()),
                        Just("sub".to_owned()),
                        Just("scope".to_owned()),
                        Just("scopes".to_owned()),
                        Just("scp".to_owned()),
                        Just("alg".to_owned()),
                        Just("kid".to_owned()),
                        Just("crit".to_owned()),
                        Just("typ".to_owned()),
                        "[a-z]{1,5}",
                    ],
                    inner,
                ),
                0..8,
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}
