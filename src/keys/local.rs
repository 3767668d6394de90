//! Keys from PEM files or generated in memory: `keys:` entries and `keygen`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
};

use super::{kind_name, pem, Algorithm, KeyKind, LocalKey, Signer, Verifier};

/// The smallest RSA modulus accepted, in bits (RFC 8725 §3.5).
pub const MIN_RSA_BITS: usize = 2048;

/// A parsed private key.
pub(crate) enum KeyPair {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl KeyPair {
    /// The public half in the form `Verifier::new` takes.
    fn public_key_bytes(&self) -> Vec<u8> {
        match self {
            KeyPair::Rsa(pair) => pair.public_key().as_ref().to_vec(),
            KeyPair::Ecdsa(pair) => pair.public_key().as_ref().to_vec(),
            KeyPair::Ed25519(pair) => pair.public_key().as_ref().to_vec(),
        }
    }

    pub(crate) fn sign(
        &self,
        alg: Algorithm,
        rng: &SystemRandom,
        message: &[u8],
    ) -> Result<Vec<u8>, String> {
        match self {
            KeyPair::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    Algorithm::Rs256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::Rs384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::Rs512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::Ps256 => &signature::RSA_PSS_SHA256,
                    Algorithm::Ps384 => &signature::RSA_PSS_SHA384,
                    Algorithm::Ps512 => &signature::RSA_PSS_SHA512,
                    other => return Err(format!("an RSA key cannot sign {other}")),
                };
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(padding, rng, message, &mut out)
                    .map_err(|_| "RSA signing failed".to_owned())?;
                Ok(out)
            }
            KeyPair::Ecdsa(pair) => pair
                .sign(rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_owned()),
            KeyPair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

fn ecdsa_signing(kind: KeyKind) -> &'static EcdsaSigningAlgorithm {
    if kind == KeyKind::EcP384 {
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING
    }
}

/// Parses a private key (PKCS#8, or the PKCS#1 / SEC1 legacy forms) for `alg`.
pub(crate) fn parse_private_pem(text: &str, alg: Algorithm) -> Result<KeyPair, String> {
    parse_private_der(&pem::decode(text)?, alg)
}

/// Parses one decoded PEM block as a private key for `alg`.
fn parse_private_der(block: &pem::PemBlock, alg: Algorithm) -> Result<KeyPair, String> {
    let kind = alg.key_kind();
    let wrong = |e: &dyn std::fmt::Display| {
        format!(
            "`{}` is not a {} private key usable for {alg}: {e}",
            block.label,
            kind_name(kind)
        )
    };
    let pair = match (kind, block.label.as_str()) {
        (KeyKind::Rsa, "PRIVATE KEY") => {
            KeyPair::Rsa(RsaKeyPair::from_pkcs8(&block.der).map_err(|e| wrong(&e))?)
        }
        (KeyKind::Rsa, "RSA PRIVATE KEY") => {
            KeyPair::Rsa(RsaKeyPair::from_der(&block.der).map_err(|e| wrong(&e))?)
        }
        (KeyKind::EcP256 | KeyKind::EcP384, "PRIVATE KEY" | "EC PRIVATE KEY") => KeyPair::Ecdsa(
            EcdsaKeyPair::from_private_key_der(ecdsa_signing(kind), &block.der)
                .map_err(|e| wrong(&e))?,
        ),
        (KeyKind::Ed25519, "PRIVATE KEY") => KeyPair::Ed25519(
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&block.der).map_err(|e| wrong(&e))?,
        ),
        (_, label) => {
            return Err(format!(
                "a PEM block labelled `{label}` is not a {} private key (expected `PRIVATE KEY`)",
                kind_name(kind)
            ))
        }
    };
    if let KeyPair::Rsa(rsa) = &pair {
        check_rsa_bits(rsa.public_modulus_len() * 8)?;
    }
    Ok(pair)
}

pub(crate) fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits is too small (at least {MIN_RSA_BITS} bits)"
        ));
    }
    Ok(())
}

/// Parses a public key PEM (`PUBLIC KEY`, SPKI; or `RSA PUBLIC KEY`, PKCS#1).
pub fn parse_public_pem(text: &str, alg: Algorithm) -> Result<Vec<u8>, String> {
    let block = pem::decode(text)?;
    match (alg.key_kind(), block.label.as_str()) {
        (_, "PUBLIC KEY") | (KeyKind::Rsa, "RSA PUBLIC KEY") => Ok(block.der),
        (_, label) => Err(format!(
            "a PEM block labelled `{label}` is not a public key (expected `PUBLIC KEY`)"
        )),
    }
}

/// Builds the verifier (and signer) for a parsed key pair.
pub(crate) fn local_key_from_pair(
    kid: &str,
    alg: Algorithm,
    pair: KeyPair,
    source: String,
) -> Result<LocalKey, String> {
    let verifier = Verifier::new(kid, alg, &pair.public_key_bytes())?.with_source(source);
    Ok(LocalKey {
        verifier: Arc::new(verifier),
        signer: Some(Arc::new(Signer::new(kid, alg, pair))),
    })
}

/// A key pair generated in memory; returns its PKCS#8 DER so `keygen` can
/// write it.
pub fn generate_pkcs8(alg: Algorithm) -> Result<Vec<u8>, String> {
    let rng = SystemRandom::new();
    let der = match alg.key_kind() {
        KeyKind::Rsa => {
            let pair =
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| "RSA key generation failed")?;
            let der: Pkcs8V1Der = pair.as_der().map_err(|_| "RSA key encoding failed")?;
            der.as_ref().to_vec()
        }
        kind @ (KeyKind::EcP256 | KeyKind::EcP384) => {
            EcdsaKeyPair::generate_pkcs8(ecdsa_signing(kind), &rng)
                .map_err(|_| "EC key generation failed")?
                .as_ref()
                .to_vec()
        }
        KeyKind::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "Ed25519 key generation failed")?
            .as_ref()
            .to_vec(),
    };
    Ok(der)
}

/// A fresh in-memory key (`generate: true`).
pub fn generate(kid: &str, alg: Algorithm) -> Result<LocalKey, String> {
    let block = pem::PemBlock {
        label: "PRIVATE KEY".to_owned(),
        der: generate_pkcs8(alg)?,
    };
    local_key_from_pair(
        kid,
        alg,
        parse_private_der(&block, alg)?,
        "generated in memory at start (generate: true)".to_owned(),
    )
}

/// Loads a `private_key:` file.
pub fn load_private(kid: &str, alg: Algorithm, path: &Path) -> Result<LocalKey, String> {
    let text = read_key_file(path)?;
    let pair = parse_private_pem(&text, alg).map_err(|e| format!("{}: {e}", path.display()))?;
    local_key_from_pair(kid, alg, pair, format!("private_key {}", path.display()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads a `public_key:` file (verify only).
pub fn load_public(kid: &str, alg: Algorithm, path: &Path) -> Result<LocalKey, String> {
    let text = read_key_file(path)?;
    let der = parse_public_pem(&text, alg).map_err(|e| format!("{}: {e}", path.display()))?;
    let verifier = Verifier::new(kid, alg, &der)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .with_source(format!("public_key {}", path.display()));
    Ok(LocalKey {
        verifier: Arc::new(verifier),
        signer: None,
    })
}

fn read_key_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// The two files `jwtgate keygen` writes.
#[derive(Debug)]
pub struct KeygenOutput {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
}

/// Writes `DIR/KID.pem` (PKCS#8, mode 0600) and `DIR/KID.pub.pem` (SPKI).
/// Refuses to overwrite an existing key.
pub fn keygen(alg: Algorithm, kid: &str, dir: &Path) -> Result<KeygenOutput, String> {
    if kid.is_empty()
        || !kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || kid.starts_with('.')
    {
        return Err(format!(
            "kid `{kid}` must be letters, digits, `-`, `_` or `.` (it names the files)"
        ));
    }
    let block = pem::PemBlock {
        label: "PRIVATE KEY".to_owned(),
        der: generate_pkcs8(alg)?,
    };
    let pair = parse_private_der(&block, alg)?;
    let private_pem = pem::encode(&block.label, &block.der);
    let spki = spki_der(&pair)?;
    let private_path = dir.join(format!("{kid}.pem"));
    let public_path = dir.join(format!("{kid}.pub.pem"));
    for path in [&private_path, &public_path] {
        if path.exists() {
            return Err(format!(
                "{}: already exists (refusing to overwrite a key)",
                path.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    write_new(&private_path, private_pem.as_bytes(), 0o600)?;
    let public = write_new(
        &public_path,
        pem::encode("PUBLIC KEY", &spki).as_bytes(),
        0o644,
    );
    if let Err(e) = public {
        // Never leave half a pair behind.
        let _ = std::fs::remove_file(&private_path);
        return Err(e);
    }
    Ok(KeygenOutput {
        private_path,
        public_path,
    })
}

fn spki_der(pair: &KeyPair) -> Result<Vec<u8>, String> {
    use aws_lc_rs::encoding::PublicKeyX509Der;
    let der: Result<PublicKeyX509Der, _> = match pair {
        KeyPair::Rsa(p) => p.public_key().as_der(),
        KeyPair::Ecdsa(p) => p.public_key().as_der(),
        KeyPair::Ed25519(p) => p.public_key().as_der(),
    };
    der.map(|d| d.as_ref().to_vec())
        .map_err(|_| "public key encoding failed".to_owned())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_signs_and_verifies() {
        for alg in [
            Algorithm::Rs256,
            Algorithm::Ps256,
            Algorithm::Es256,
            Algorithm::Es384,
            Algorithm::EdDsa,
        ] {
            let key = generate("k", alg).unwrap();
            let signer = key.signer.as_ref().unwrap();
            let sig = signer.sign(b"hello").unwrap();
            assert!(key.verifier.verify(b"hello", &sig), "{alg}");
            assert!(!key.verifier.verify(b"hellO", &sig), "{alg}");
        }
    }

    #[test]
    fn a_key_of_one_family_is_refused_for_another() {
        let pem_text = pem::encode("PRIVATE KEY", &generate_pkcs8(Algorithm::Es256).unwrap());
        assert!(parse_private_pem(&pem_text, Algorithm::Rs256).is_err());
        assert!(parse_private_pem(&pem_text, Algorithm::EdDsa).is_err());
        assert!(parse_private_pem(&pem_text, Algorithm::Es384).is_err());
        assert!(parse_private_pem(&pem_text, Algorithm::Es256).is_ok());
    }
}
