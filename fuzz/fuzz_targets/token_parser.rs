//! The compact-JWS parser and the claim checks, on any bytes: they must
//! never panic, and whatever they accept must be a token they could have
//! produced the fields of.
#![no_main]

use jwtgate::jws::{self, ClaimRules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = jws::parse(token) else {
        return;
    };
    // Accepted tokens are within the size cap and have three segments.
    assert!(token.len() <= jws::MAX_TOKEN_BYTES);
    assert_eq!(token.split('.').count(), 3);
    let rules = ClaimRules {
        audiences: vec!["orders".into()],
        issuer: Some("https://issuer.example".into()),
        leeway_secs: 30,
        typ: Some("at+jwt".into()),
        scope_claim: None,
    };
    if let Ok(identity) = jws::check_claims(&parsed, &rules, 1_700_000_000) {
        // What goes into upstream headers is header-safe.
        if let Some(subject) = &identity.subject {
            assert!(jws::is_header_safe(subject));
        }
        for scope in &identity.scopes {
            assert!(jws::is_header_safe(scope));
        }
    }
});
