//! Signing access tokens: the header and claims of SPEC §1.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use crate::keys::Signer;

/// The claims of an issued access token, in the order they are written.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub sub: String,
    pub aud: String,
    /// Space-separated.
    pub scopes: String,
    pub iat: u64,
    pub exp: u64,
    pub nbf: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    pub jti: String,
}

impl AccessClaims {
    /// Claims for a token issued at `now`: `exp = now + ttl`, `nbf = now − skew`.
    pub fn new(
        sub: &str,
        aud: &str,
        scopes: &[String],
        iss: Option<&str>,
        now: u64,
        ttl_secs: u64,
        skew_secs: u64,
    ) -> Result<AccessClaims, String> {
        Ok(AccessClaims {
            sub: sub.to_owned(),
            aud: aud.to_owned(),
            scopes: scopes.join(" "),
            iat: now,
            exp: now.saturating_add(ttl_secs),
            nbf: now.saturating_sub(skew_secs),
            iss: iss.map(str::to_owned),
            jti: random_id()?,
        })
    }
}

#[derive(Serialize)]
struct Header<'a> {
    typ: &'static str,
    alg: &'static str,
    kid: &'a str,
}

/// A 128-bit random identifier, base64url.
pub fn random_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness available".to_owned())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A compact JWS `{"typ":"JWT","alg":…,"kid":…}.claims.signature`.
pub fn sign(signer: &Signer, claims: &AccessClaims) -> Result<String, String> {
    let header = Header {
        typ: "JWT",
        alg: signer.alg.name(),
        kid: &signer.kid,
    };
    let header_json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let claims_json = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
    let mut token = URL_SAFE_NO_PAD.encode(header_json);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims_json));
    let signature = signer.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}
