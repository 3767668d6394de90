//! The public documents: the JWK Set (RFC 7517) and the authorization server
//! metadata (RFC 8414), rendered once per snapshot.

use bytes::Bytes;
use serde_json::json;

use crate::keys::KeySet;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// `{"keys":[…]}` with every public key the gateway holds, signing and
/// verify-only, in file order.
pub fn jwks_document(keys: &KeySet) -> Bytes {
    let keys: Vec<_> = keys.iter().map(|key| key.verifier.jwk.clone()).collect();
    Bytes::from(json!({ "keys": keys }).to_string())
}

/// RFC 8414 metadata; only served when the token endpoint has an `issuer`.
pub fn metadata_document(issuer: &str, token_path: &str) -> Bytes {
    let base = issuer.trim_end_matches('/');
    Bytes::from(
        json!({
            "issuer": issuer,
            "token_endpoint": format!("{base}{token_path}"),
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
        })
        .to_string(),
    )
}
