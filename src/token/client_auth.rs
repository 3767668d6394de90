//! OAuth2 client authentication: secret hashes and the client registry.
//!
//! Secrets are stored only as hashes and compared in constant time. An
//! unknown client id is checked against a dummy credential with the same
//! cost as a real one, so "no such client" and "wrong secret" take the same
//! path and the same time.

use std::collections::HashMap;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::config::ClientConfig;

/// A stored client secret: `sha256:<64 hex>` or an argon2id PHC string.
#[derive(Debug, Clone)]
pub enum SecretHash {
    Sha256([u8; 32]),
    /// The PHC string, validated at load.
    Argon2id(String),
}

impl SecretHash {
    pub fn parse(text: &str) -> Result<SecretHash, String> {
        if let Some(hex) = text.strip_prefix("sha256:") {
            let bytes = decode_hex(hex)
                .filter(|b| b.len() == 32)
                .ok_or("a sha256: hash must be 64 hex digits")?;
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes);
            return Ok(SecretHash::Sha256(out));
        }
        if text.starts_with("$argon2id$") {
            PasswordHash::new(text).map_err(|e| format!("not a valid argon2id PHC string: {e}"))?;
            return Ok(SecretHash::Argon2id(text.to_owned()));
        }
        Err("must be `sha256:<hex>` or an argon2id PHC string (`$argon2id$…`); run `jwtgate hash-secret`".to_owned())
    }

    /// Constant-time check of a presented secret.
    pub fn verify(&self, secret: &[u8]) -> bool {
        match self {
            SecretHash::Sha256(expected) => {
                let actual = digest(&SHA256, secret);
                verify_slices_are_equal(actual.as_ref(), expected).is_ok()
            }
            SecretHash::Argon2id(phc) => match PasswordHash::new(phc) {
                Ok(hash) => Argon2::default().verify_password(secret, &hash).is_ok(),
                Err(_) => false,
            },
        }
    }

    fn is_argon2(&self) -> bool {
        matches!(self, SecretHash::Argon2id(_))
    }
}

/// `sha256:<hex>` of a secret (what `jwtgate hash-secret` prints).
pub fn sha256_secret_hash(secret: &[u8]) -> String {
    format!("sha256:{}", encode_hex(digest(&SHA256, secret).as_ref()))
}

/// An argon2id PHC string with a random salt and the crate's default
/// (OWASP-recommended) parameters.
pub fn argon2id_secret_hash(secret: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness available")?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(secret, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One configured client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    secret: SecretHash,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
}

/// The clients of the token endpoint.
#[derive(Debug)]
pub struct ClientRegistry {
    clients: HashMap<String, Client>,
    /// Checked instead of a real credential for unknown ids.
    dummy: SecretHash,
    /// When any client uses argon2id, every authentication costs one argon2id
    /// verification (sha256 clients run this one too), so timing does not
    /// tell which kind of client an id is, or whether it exists.
    argon2_pad: Option<SecretHash>,
}

impl ClientRegistry {
    /// `Err((field, message))` names the offending client field.
    pub fn build(configs: &[ClientConfig]) -> Result<ClientRegistry, (String, String)> {
        let mut clients = HashMap::new();
        let mut argon2_pad = None;
        for (i, config) in configs.iter().enumerate() {
            let field = |name: &str| format!("clients[{i}].{name}");
            if !is_valid_client_id(&config.id) {
                return Err((field("id"), "must be 1 to 256 printable characters".into()));
            }
            let secret =
                SecretHash::parse(&config.secret_hash).map_err(|e| (field("secret_hash"), e))?;
            if secret.is_argon2() && argon2_pad.is_none() {
                argon2_pad = Some(secret.clone());
            }
            for scope in &config.scopes {
                if !is_valid_scope(scope) {
                    return Err((
                        field("scopes"),
                        format!("`{scope}` is not a valid scope token"),
                    ));
                }
            }
            let client = Client {
                id: config.id.clone(),
                secret,
                scopes: config.scopes.clone(),
                audience: config.audience.clone(),
            };
            if clients.insert(config.id.clone(), client).is_some() {
                return Err((field("id"), format!("duplicate client id `{}`", config.id)));
            }
        }
        let mut random = [0u8; 32];
        SystemRandom::new().fill(&mut random).map_err(|_| {
            (
                String::from("clients"),
                String::from("no randomness available"),
            )
        })?;
        Ok(ClientRegistry {
            clients,
            dummy: argon2_pad.clone().unwrap_or(SecretHash::Sha256(random)),
            argon2_pad,
        })
    }

    /// Whether authenticating may be slow (argon2id), so callers move it off
    /// the async workers.
    pub fn is_expensive(&self) -> bool {
        self.argon2_pad.is_some()
    }

    /// The client, if `id` exists and `secret` is its secret. Exactly one
    /// credential check runs for every call, known id or not, plus the
    /// argon2id pad for sha256 clients when the registry holds argon2id ones.
    pub fn authenticate(&self, id: &str, secret: &[u8]) -> Option<&Client> {
        let client = self.clients.get(id);
        let credential = client.map_or(&self.dummy, |c| &c.secret);
        let matches = credential.verify(secret);
        if let Some(pad) = &self.argon2_pad {
            if !credential.is_argon2() {
                pad.verify(secret);
            }
        }
        client.filter(|_| matches)
    }
}

/// RFC 6749 Appendix A.1: VSCHAR, here also capped in length.
pub fn is_valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.chars().all(|c| (' '..='~').contains(&c))
}

/// RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\`.
pub fn is_valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .chars()
            .all(|c| ('!'..='~').contains(&c) && c != '"' && c != '\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, hash: String) -> ClientConfig {
        ClientConfig {
            id: id.into(),
            secret_hash: hash,
            scopes: vec!["read".into()],
            audience: None,
        }
    }

    #[test]
    fn sha256_hashes_verify_and_reject() {
        let hash = sha256_secret_hash(b"s3cret");
        assert_eq!(hash.len(), 7 + 64);
        let parsed = SecretHash::parse(&hash).unwrap();
        assert!(parsed.verify(b"s3cret"));
        assert!(!parsed.verify(b"s3cret "));
        assert!(SecretHash::parse("sha256:abcd").is_err());
        assert!(SecretHash::parse("plain").is_err());
        assert!(SecretHash::parse("$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$Zm9v").is_err());
    }

    #[test]
    fn argon2id_hashes_verify_and_pad_the_registry() {
        let hash = argon2id_secret_hash(b"pw").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let registry =
            ClientRegistry::build(&[client("a", hash), client("b", sha256_secret_hash(b"pw2"))])
                .unwrap();
        assert!(registry.is_expensive());
        assert_eq!(
            registry.authenticate("a", b"pw").map(|c| c.id.as_str()),
            Some("a")
        );
        assert!(registry.authenticate("a", b"nope").is_none());
        assert_eq!(
            registry.authenticate("b", b"pw2").map(|c| c.id.as_str()),
            Some("b")
        );
        assert!(registry.authenticate("ghost", b"pw").is_none());
    }

    #[test]
    fn unknown_clients_and_wrong_secrets_are_the_same_answer() {
        let registry = ClientRegistry::build(&[client("a", sha256_secret_hash(b"pw"))]).unwrap();
        assert!(!registry.is_expensive());
        assert!(registry.authenticate("a", b"wrong").is_none());
        assert!(registry.authenticate("b", b"pw").is_none());
        assert!(registry.authenticate("a", b"pw").is_some());
        let dup = ClientRegistry::build(&[
            client("a", sha256_secret_hash(b"x")),
            client("a", sha256_secret_hash(b"y")),
        ]);
        assert_eq!(dup.unwrap_err().0, "clients[1].id");
    }
}
