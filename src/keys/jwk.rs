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

/// A usable key read from a remote JWK Set: one verifier per algorithm it
/// may be used with (a JWK without `alg` may serve several).
#[derive(Debug)]
pub struct RemoteJwk {
    pub kid: Option<String>,
    pub verifiers: Vec<std::sync::Arc<super::Verifier>>,
}

/// Reads one member of a JWK Set's `keys` (RFC 7517 §4, RFC 7518 §6,
/// RFC 8037). `allowed` narrows the algorithms (the `jwks:` entry's
/// `algorithms`); `None` means each key type's usual algorithm.
///
/// Refused (the caller skips the key and uses the rest of the set): a `use`
/// other than `sig`, `key_ops` without `verify`, an `alg` jwtgate does not
/// verify or that `allowed` excludes, an unknown `kty` or curve, RSA under
/// 2048 bits, and malformed key material.
pub fn parse_remote_jwk(
    jwk: &Value,
    allowed: Option<&[Algorithm]>,
    source: &str,
) -> Result<RemoteJwk, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{name}` is not a string")),
        }
    };
    let kid = text("kid")?;
    if let Some(usage) = text("use")? {
        if usage != "sig" {
            return Err(format!("`use` is `{usage}`, not `sig`"));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err("`key_ops` does not include `verify`".to_owned());
        }
    }
    let kty = text("kty")?.ok_or("no `kty`")?;
    let (kind, public_key) = match kty {
        "RSA" => (KeyKind::Rsa, rsa_public_key_der(jwk)?),
        "EC" => match text("crv")? {
            Some("P-256") => (KeyKind::EcP256, ec_point(jwk, 32)?),
            Some("P-384") => (KeyKind::EcP384, ec_point(jwk, 48)?),
            other => return Err(format!("unsupported EC curve {other:?}")),
        },
        "OKP" => match text("crv")? {
            Some("Ed25519") => {
                let x = coordinate(jwk, "x")?;
                if x.len() != 32 {
                    return Err("Ed25519 `x` is not 32 bytes".to_owned());
                }
                (KeyKind::Ed25519, x)
            }
            other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        other => return Err(format!("unsupported key type `{other}`")),
    };
    if kind == KeyKind::Rsa {
        let key = aws_lc_rs::rsa::PublicKey::from_der(&public_key)
            .map_err(|e| format!("not a valid RSA public key: {e}"))?;
        check_rsa_bits(key.modulus_len() * 8)?;
    }
    let algorithms = algorithms_for(kind, text("alg")?, allowed)?;
    let mut verifiers = Vec::with_capacity(algorithms.len());
    for alg in algorithms {
        let verifier =
            super::Verifier::new(kid.unwrap_or(""), alg, &public_key)?.with_source(source);
        verifiers.push(std::sync::Arc::new(verifier));
    }
    Ok(RemoteJwk {
        kid: kid.map(str::to_owned),
        verifiers,
    })
}

/// The algorithms a key of `kind` serves: its own `alg` when it names one,
/// else the entry's list (those fitting the key type), else the type's
/// usual algorithm (SPEC §3).
fn algorithms_for(
    kind: KeyKind,
    own: Option<&str>,
    allowed: Option<&[Algorithm]>,
) -> Result<Vec<Algorithm>, String> {
    if let Some(name) = own {
        let alg = Algorithm::from_name(name).ok_or_else(|| {
            format!("`alg` `{name}` is not a signature algorithm jwtgate verifies")
        })?;
        if alg.key_kind() != kind {
            return Err(format!("`alg` `{name}` does not fit the key type"));
        }
        if allowed.is_some_and(|list| !list.contains(&alg)) {
            return Err(format!("`alg` `{name}` is not in the entry's `algorithms`"));
        }
        return Ok(vec![alg]);
    }
    let algorithms: Vec<Algorithm> = match allowed {
        Some(list) => list
            .iter()
            .copied()
            .filter(|alg| alg.key_kind() == kind)
            .collect(),
        None => vec![match kind {
            KeyKind::Rsa => Algorithm::Rs256,
            KeyKind::EcP256 => Algorithm::Es256,
            KeyKind::EcP384 => Algorithm::Es384,
            KeyKind::Ed25519 => Algorithm::EdDsa,
        }],
    };
    if algorithms.is_empty() {
        return Err("no algorithm in the entry's `algorithms` fits the key type".to_owned());
    }
    Ok(algorithms)
}

fn coordinate(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("`{name}` is not unpadded base64url"))
}

/// The uncompressed point `04 || x || y`, each coordinate of exactly `len`
/// bytes (RFC 7518 §6.2.1.2).
fn ec_point(jwk: &Value, len: usize) -> Result<Vec<u8>, String> {
    let (x, y) = (coordinate(jwk, "x")?, coordinate(jwk, "y")?);
    if x.len() != len || y.len() != len {
        return Err(format!("EC coordinates are not {len} bytes"));
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent
/// INTEGER }` in DER, from the JWK's `n` and `e`.
fn rsa_public_key_der(jwk: &Value) -> Result<Vec<u8>, String> {
    let n = coordinate(jwk, "n")?;
    let e = coordinate(jwk, "e")?;
    if n.is_empty() || e.is_empty() || n.len() > 2048 || e.len() > 16 {
        return Err("RSA `n` or `e` has an impossible length".to_owned());
    }
    let mut body = der_unsigned_integer(&n);
    body.extend(der_unsigned_integer(&e));
    Ok(der_tagged(0x30, &body))
}

fn der_unsigned_integer(big_endian: &[u8]) -> Vec<u8> {
    let start = big_endian
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(big_endian.len() - 1);
    let digits = &big_endian[start..];
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits[0] & 0x80 != 0 {
        content.push(0); // keeps the integer positive
    }
    content.extend_from_slice(digits);
    der_tagged(0x02, &content)
}

fn der_tagged(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::local;

    /// A key pair's public JWK, as jwtgate publishes it, and a signature.
    fn published(alg: Algorithm) -> (Value, Vec<u8>) {
        let key = local::generate("k", alg).unwrap();
        let signature = key.signer.as_ref().unwrap().sign(b"input").unwrap();
        (key.verifier.jwk.clone(), signature)
    }

    #[test]
    fn published_keys_of_every_type_read_back_and_verify() {
        for alg in [
            Algorithm::Rs256,
            Algorithm::Es256,
            Algorithm::Es384,
            Algorithm::EdDsa,
        ] {
            let (jwk, signature) = published(alg);
            let key = parse_remote_jwk(&jwk, None, "test").unwrap();
            assert_eq!(key.kid.as_deref(), Some("k"));
            assert_eq!(key.verifiers.len(), 1);
            assert_eq!(key.verifiers[0].alg, alg);
            assert!(key.verifiers[0].verify(b"input", &signature), "{alg}");
            assert!(!key.verifiers[0].verify(b"other", &signature), "{alg}");
        }
    }

    #[test]
    fn without_alg_a_key_serves_its_type_default_or_the_entry_list() {
        let (mut jwk, _) = published(Algorithm::Rs256);
        jwk.as_object_mut().unwrap().remove("alg");
        let algs = |allowed: Option<&[Algorithm]>| -> Vec<Algorithm> {
            parse_remote_jwk(&jwk, allowed, "test")
                .unwrap()
                .verifiers
                .iter()
                .map(|v| v.alg)
                .collect()
        };
        assert_eq!(algs(None), [Algorithm::Rs256]);
        assert_eq!(
            algs(Some(&[
                Algorithm::Ps256,
                Algorithm::Es256,
                Algorithm::Rs512
            ])),
            [Algorithm::Ps256, Algorithm::Rs512]
        );
        assert!(parse_remote_jwk(&jwk, Some(&[Algorithm::Es256]), "test").is_err());
    }

    #[test]
    fn unusable_keys_are_refused_with_a_reason() {
        let (jwk, _) = published(Algorithm::Es256);
        let with = |name: &str, value: Value| {
            let mut changed = jwk.clone();
            changed[name] = value;
            parse_remote_jwk(&changed, None, "test").unwrap_err()
        };
        assert!(with("use", json!("enc")).contains("`use`"));
        assert!(with("key_ops", json!(["encrypt"])).contains("key_ops"));
        assert!(with("alg", json!("HS256")).contains("HS256"));
        assert!(with("alg", json!("none")).contains("none"));
        assert!(with("alg", json!("RS256")).contains("does not fit"));
        assert!(with("kty", json!("oct")).contains("oct"));
        assert!(with("crv", json!("P-521")).contains("P-521"));
        assert!(with("x", json!("AAAA")).contains("32 bytes"));
        assert!(with("x", json!("not base64!")).contains("base64url"));
        assert!(with("kid", json!(7)).contains("kid"));
        // The algorithm list of the entry excludes the key's own alg.
        assert!(parse_remote_jwk(&jwk, Some(&[Algorithm::Es384]), "test")
            .unwrap_err()
            .contains("algorithms"));
        // A point not on the curve.
        let mut off_curve = jwk.clone();
        off_curve["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(parse_remote_jwk(&off_curve, None, "test").is_err());
    }

    #[test]
    fn rsa_keys_under_2048_bits_are_refused() {
        // A 1024-bit odd modulus: the size check refuses it, whatever else.
        let mut n = vec![0xC3u8; 128];
        n[127] |= 1;
        let jwk = json!({
            "kty": "RSA",
            "kid": "small",
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": "AQAB",
        });
        let error = parse_remote_jwk(&jwk, None, "test").unwrap_err();
        assert!(
            error.contains("too small") || error.contains("not a valid RSA"),
            "{error}"
        );
        let (big, _) = published(Algorithm::Rs256);
        assert!(parse_remote_jwk(&big, None, "test").is_ok());
    }

    #[test]
    fn der_integers_stay_positive_and_minimal() {
        assert_eq!(der_unsigned_integer(&[0, 0, 1]), [0x02, 1, 1]);
        assert_eq!(der_unsigned_integer(&[0x80]), [0x02, 2, 0, 0x80]);
        assert_eq!(der_unsigned_integer(&[0]), [0x02, 1, 0]);
        let long = der_tagged(0x30, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x30, 0x82, 0x01, 0x2C]);
    }
}
