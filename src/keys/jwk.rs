//! Public keys as RFC 7517 JWKs, for `/.well-known/jwks.json`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::local::check_rsa_bits;
use super::{Algorithm, KeyKind};

/// The public JWK of a key: `kty`, the key material, `kid`, `alg`, `use: sig`.
///
/// `public_key` is SPKI DER or the raw form (PKCS#1 for RSA, an uncompressed
/// point for EC, 32 bytes for Ed25519); it has already been accepted by
/// aws-lc-rs for `alg`, so only the well-known fixed layouts are read here.
pub fn public_jwk(kid: &str, alg: Algorithm, public_key: &[u8]) -> Result<Value, String> {
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let mut jwk = match alg.key_kind() {
        KeyKind::Rsa => {
            let key = aws_lc_rs::rsa::PublicKey::from_der(public_key)
                .map_err(|e| format!("not a valid RSA public key: {e}"))?;
            check_rsa_bits(key.modulus_len() * 8)?;
            json!({
                "kty": "RSA",
                "n": b64(key.modulus().big_endian_without_leading_zero()),
                "e": b64(key.exponent().big_endian_without_leading_zero()),
            })
        }
        KeyKind::EcP256 => ec_jwk("P-256", 32, public_key)?,
        KeyKind::EcP384 => ec_jwk("P-384", 48, public_key)?,
        KeyKind::Ed25519 => {
            let x = trailing(public_key, 32, 44)?;
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(x)})
        }
    };
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg.name());
    jwk["use"] = json!("sig");
    Ok(jwk)
}

fn ec_jwk(curve: &str, coordinate_len: usize, public_key: &[u8]) -> Result<Value, String> {
    let point_len = 1 + 2 * coordinate_len;
    // SPKI for P-256 is 91 bytes, for P-384 120: a fixed prefix and the point.
    let spki_len = if coordinate_len == 32 { 91 } else { 120 };
    let point = trailing(public_key, point_len, spki_len)?;
    if point[0] != 0x04 {
        return Err("EC public key is not an uncompressed point".to_owned());
    }
    let (x, y) = point[1..].split_at(coordinate_len);
    Ok(json!({
        "kty": "EC",
        "crv": curve,
        "x": URL_SAFE_NO_PAD.encode(x),
        "y": URL_SAFE_NO_PAD.encode(y),
    }))
}

/// The raw key: the whole input when it has the raw length, else the tail of
/// an SPKI of the expected length.
fn trailing(bytes: &[u8], raw_len: usize, spki_len: usize) -> Result<&[u8], String> {
    match bytes.len() {
        len if len == raw_len => Ok(bytes),
        len if len == spki_len => Ok(&bytes[len - raw_len..]),
        len => Err(format!("unexpected public key length {len}")),
    }
}
