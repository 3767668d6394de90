//! Keys: the algorithms jwtgate accepts, verifiers (`kid → public key`) and
//! the signer of the token endpoint.
//!
//! The algorithm is a property of the key, fixed when the key is loaded; a
//! token's `alg` header is only ever compared with it, never used to choose
//! how to verify (RFC 8725 §3.1).

pub mod jwk;
pub mod local;
pub mod pem;
pub mod remote;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};

/// A JWS algorithm jwtgate can verify and sign with. Symmetric (HMAC) and
/// `none` are deliberately absent: a gateway that publishes its keys must
/// never accept a MAC made with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

/// The family of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// The exact JWA name (case-sensitive, RFC 7518 §3.1).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    pub fn key_kind(self) -> KeyKind {
        match self {
            Algorithm::Rs256
            | Algorithm::Rs384
            | Algorithm::Rs512
            | Algorithm::Ps256
            | Algorithm::Ps384
            | Algorithm::Ps512 => KeyKind::Rsa,
            Algorithm::Es256 => KeyKind::EcP256,
            Algorithm::Es384 => KeyKind::EcP384,
            Algorithm::EdDsa => KeyKind::Ed25519,
        }
    }

    /// RSA verification accepts 2048- to 8192-bit moduli only: smaller keys
    /// are refused at load time (RFC 8725 §3.5, NIST SP 800-131A).
    fn verification(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Algorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Algorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            // FIXED: JWS carries ECDSA signatures as r||s, not DER.
            Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDsa => &signature::ED25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A public key bound to one algorithm, parsed once at load.
pub struct Verifier {
    pub kid: String,
    pub alg: Algorithm,
    key: ParsedPublicKey,
    /// The public JWK (RFC 7517) published in `/.well-known/jwks.json`.
    pub jwk: serde_json::Value,
    /// Where the key came from, for `explain` and the status page (a file,
    /// `generate: true`, a JWKS URL); set with [`Verifier::with_source`].
    pub source: String,
    /// When the key was parsed (its age on the status page).
    pub loaded_at: std::time::SystemTime,
}

impl Verifier {
    /// `public_key` is SubjectPublicKeyInfo DER, or the raw forms aws-lc-rs
    /// takes (PKCS#1 for RSA, an uncompressed point for EC, 32 bytes for
    /// Ed25519).
    pub fn new(kid: &str, alg: Algorithm, public_key: &[u8]) -> Result<Verifier, String> {
        let key = ParsedPublicKey::new(alg.verification(), public_key).map_err(|e| {
            format!(
                "not a valid {} public key for {alg}: {e}",
                kind_name(alg.key_kind())
            )
        })?;
        let jwk = jwk::public_jwk(kid, alg, public_key)?;
        Ok(Verifier {
            kid: kid.to_owned(),
            alg,
            key,
            jwk,
            source: String::new(),
            loaded_at: std::time::SystemTime::now(),
        })
    }

    /// Names where the key came from (see [`Verifier::source`]).
    pub fn with_source(mut self, source: impl Into<String>) -> Verifier {
        self.source = source.into();
        self
    }

    /// Checks `signature` over `signing_input`. The caller has already
    /// checked that the token's `alg` equals `self.alg`.
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(signing_input, signature).is_ok()
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

pub(crate) fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Rsa => "RSA",
        KeyKind::EcP256 => "EC P-256",
        KeyKind::EcP384 => "EC P-384",
        KeyKind::Ed25519 => "Ed25519",
    }
}

/// A private key parsed once and kept in memory, so issuing a token never
/// re-parses a PEM.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pair: local::KeyPair,
    rng: SystemRandom,
}

impl Signer {
    pub(crate) fn new(kid: &str, alg: Algorithm, pair: local::KeyPair) -> Signer {
        Signer {
            kid: kid.to_owned(),
            alg,
            pair,
            rng: SystemRandom::new(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.pair.sign(self.alg, &self.rng, message)
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A key from `keys:`: always a verifier, a signer too when the private half
/// is known.
#[derive(Debug)]
pub struct LocalKey {
    pub verifier: Arc<Verifier>,
    pub signer: Option<Arc<Signer>>,
}

/// Every key the gateway verifies with: its own (`keys:`), by kid, and the
/// remote sets of external issuers (`jwks:`), by issuer.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<LocalKey>>,
    /// In file order, for the JWKS document.
    order: Vec<String>,
    /// `jwks:` providers by `issuer`: a token whose `iss` is one of these is
    /// verified only against that set.
    pub remote: HashMap<String, Arc<remote::RemoteKeySet>>,
}

/// The keys a token is checked against (see [`KeySet::candidates_for`]).
#[derive(Debug)]
pub struct Candidates {
    /// Which set: `keys:`, or a JWKS and its issuer.
    pub set: String,
    /// Each key's kid and the algorithms it serves.
    pub keys: Vec<(String, Vec<Algorithm>)>,
}

/// Why no verifier could be picked for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySelectionError {
    /// The token names a kid this set does not hold.
    UnknownKid,
    /// The token names no kid and the set does not hold exactly one key.
    NoKidAndAmbiguous,
    /// The key may not be used with the token's algorithm.
    AlgorithmMismatch,
}

impl KeySet {
    pub fn insert(&mut self, key: Arc<LocalKey>) -> Result<(), String> {
        let kid = key.verifier.kid.clone();
        if self.by_kid.contains_key(&kid) {
            return Err(format!("duplicate kid `{kid}`"));
        }
        self.order.push(kid.clone());
        self.by_kid.insert(kid, key);
        Ok(())
    }

    pub fn get(&self, kid: &str) -> Option<&Arc<LocalKey>> {
        self.by_kid.get(kid)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// Keys are picked by kid and never tried in turn; a token without a kid
    /// is accepted only when exactly one key applies (whatever its algorithm).
    /// The `Arc` is the key's identity: the verified-token cache compares it
    /// to tell a key still in the set from one removed or replaced.
    pub fn select(&self, kid: Option<&str>) -> Result<&Arc<Verifier>, KeySelectionError> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .map(|key| &key.verifier)
                .ok_or(KeySelectionError::UnknownKid),
            None if self.by_kid.len() == 1 => Ok(self
                .by_kid
                .values()
                .next()
                .map(|key| &key.verifier)
                .ok_or(KeySelectionError::NoKidAndAmbiguous)?),
            None => Err(KeySelectionError::NoKidAndAmbiguous),
        }
    }

    /// The verifier for a token with this `iss`, `kid` and `alg` (SPEC §3):
    /// the issuer's remote set when `iss` names a `jwks:` issuer, else the
    /// gateway's own keys. The algorithm is the key's; the token's must
    /// equal it.
    pub fn select_for(
        &self,
        issuer: Option<&str>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<Verifier>, KeySelectionError> {
        if let Some(remote) = issuer.and_then(|iss| self.remote.get(iss)) {
            return remote.keys().select(kid, alg);
        }
        let verifier = self.select(kid)?;
        if verifier.alg != alg {
            return Err(KeySelectionError::AlgorithmMismatch);
        }
        Ok(verifier.clone())
    }

    /// The key set a token with this `iss` is checked against, described
    /// for `explain`: its name and each key's kid and algorithms.
    pub fn candidates_for(&self, issuer: Option<&str>) -> Candidates {
        if let Some(remote) = issuer.and_then(|iss| self.remote.get(iss)) {
            let source = remote.settings().source();
            return Candidates {
                set: format!("the JWKS of issuer `{}` ({source})", remote.issuer()),
                keys: remote
                    .keys()
                    .describe()
                    .into_iter()
                    .map(|(kid, algs)| (kid.unwrap_or("").to_owned(), algs))
                    .collect(),
            };
        }
        Candidates {
            set: "`keys:`".to_owned(),
            keys: self
                .iter()
                .map(|k| (k.verifier.kid.clone(), vec![k.verifier.alg]))
                .collect(),
        }
    }

    /// Every key in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LocalKey>> {
        self.order.iter().filter_map(|kid| self.by_kid.get(kid))
    }
}
