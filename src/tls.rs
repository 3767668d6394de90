//! TLS on both sides, on the aws-lc-rs provider the rest of the crypto uses.
//!
//! Listener side: [`server_config`] turns `tls:` into a rustls
//! `ServerConfig` when a [`crate::snapshot::Snapshot`] is built, so a broken
//! or mismatched certificate fails the reload and the old snapshot (and its
//! certificate) keeps serving. The listener reads the current snapshot's
//! config for every new connection: a renewed certificate is served to the
//! next connection while open ones keep theirs.
//!
//! Upstream side: [`UpstreamTls`] is a route's trust settings (`ca:`,
//! `http2:`); routes with equal settings share one pooled client
//! ([`crate::forward::UpstreamClient`]).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use aws_lc_rs::digest;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

use crate::config::{ConfigSource, TlsConfig};
use crate::snapshot::Snapshot;

/// TLS 1.3 and 1.2 only (rustls has nothing older).
const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// ALPN ids the listener offers, preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Builds the listener's TLS config from `tls:`. `Err((field, message))`
/// relative to `tls`, the message naming the file at fault.
pub fn server_config(
    source: &ConfigSource,
    config: &TlsConfig,
) -> Result<Arc<ServerConfig>, (String, String)> {
    let cert_path = source.resolve(&config.cert);
    let key_path = source.resolve(&config.key);
    let chain = read_certificates(&cert_path).map_err(|m| ("cert".to_owned(), m))?;
    let key_pem = read(&key_path).map_err(|m| ("key".to_owned(), m))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            "key".to_owned(),
            format!(
                "{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                key_path.display()
            ),
        )
    })?;
    let provider = provider();
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        (
            "key".to_owned(),
            format!("{}: unsupported private key: {e}", key_path.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        (
            "key".to_owned(),
            format!(
                "{} does not match the certificate in {} ({e})",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&VERSIONS)
        .map_err(|e| ("cert".to_owned(), format!("TLS setup failed: {e}")))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_path = source.resolve(ca);
            let roots = root_store(&ca_path).map_err(|m| ("client_ca".to_owned(), m))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    (
                        "client_ca".to_owned(),
                        format!("{}: unusable as client CA: {e}", ca_path.display()),
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(server))
}

/// Client secrets travel in token requests (RFC 6749 §2.3.1 requires TLS):
/// a token endpoint served in plain HTTP on a non-loopback address is
/// worth a warning, at start and when a reload adds the endpoint.
pub fn warn_if_cleartext_token_endpoint(snapshot: &Snapshot, listener_tls: bool) {
    if snapshot.token_endpoint.is_some() && !listener_tls && !snapshot.listen.ip().is_loopback() {
        tracing::warn!(
            "{}: the token endpoint is served without TLS on {}: client secrets would cross \
             the network in clear text (RFC 6749 §2.3.1 requires TLS). Configure `tls:` or \
             terminate TLS in front of jwtgate",
            snapshot.source,
            snapshot.listen
        );
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM CERTIFICATE in it", path.display()));
    }
    Ok(certificates)
}

/// A root store holding exactly the certificates of one PEM file.
fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots
            .add(certificate)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// What a completed handshake says about the client.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    /// The verified client certificate's subject (mTLS), as an RFC 4514
    /// string such as `CN=billing,O=Acme`.
    pub client_subject: Option<Arc<str>>,
    /// Whether ALPN chose `h2`.
    pub http2: bool,
}

impl PeerIdentity {
    /// Read once per connection, after the handshake. Certificates reach
    /// this only after the verifier accepted them.
    pub fn of(connection: &ServerConnection) -> PeerIdentity {
        let client_subject = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject_dn(leaf.as_ref()))
            .map(Arc::from);
        PeerIdentity {
            client_subject,
            http2: connection.alpn_protocol() == Some(ALPN_H2),
        }
    }
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    let (contents, rest) = rest.split_at_checked(length)?;
    Some((tag, contents, rest))
}

/// The subject of a DER certificate as an RFC 4514 string (last RDN first);
/// `None` if it cannot be read or is empty.
pub fn subject_dn(certificate: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = der(certificate)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = der(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = der(rest)? else {
        return None;
    };
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (0x31, mut set, after) = der(name)? else {
            return None;
        };
        name = after;
        let mut attributes = Vec::new();
        while !set.is_empty() {
            let (SEQUENCE, attribute, after) = der(set)? else {
                return None;
            };
            set = after;
            let (0x06, oid, value) = der(attribute)? else {
                return None;
            };
            attributes.push(format!(
                "{}={}",
                attribute_name(oid),
                attribute_value(value)?
            ));
        }
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    let dn = rdns.join(",");
    (!dn.is_empty()).then_some(dn)
}

/// RFC 4514 §3 short names, else the dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x09] => "STREET".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        _ => dotted_oid(oid),
    }
}

fn dotted_oid(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut current: u64 = 0;
    for &byte in oid {
        current = (current << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (current / 40).min(2);
                arcs.extend([first, current - first * 40]);
            } else {
                arcs.push(current);
            }
            current = 0;
        }
    }
    let arcs: Vec<String> = arcs.iter().map(u64::to_string).collect();
    arcs.join(".")
}

/// A string value escaped per RFC 4514 §2.4 (control characters too, so
/// the result is safe in a log line); any other type as `#` + hex DER.
fn attribute_value(value: &[u8]) -> Option<String> {
    let (tag, contents, _) = der(value)?;
    let text = match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => std::str::from_utf8(contents).ok(),
        _ => None,
    };
    let Some(text) = text else {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        return Some(format!("#{hex}"));
    };
    let count = text.chars().count();
    let mut escaped = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i + 1 == count && c == ' ');
        if c.is_control() {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                escaped.push_str(&format!("\\{byte:02x}"));
            }
        } else {
            if special {
                escaped.push('\\');
            }
            escaped.push(c);
        }
    }
    Some(escaped)
}

/// A route's TLS settings towards its upstream. Routes with equal settings
/// share one pooled client, also across reloads that leave them unchanged.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub key: UpstreamTlsKey,
    /// The rustls client config the route's client is built with.
    pub config: Arc<ClientConfig>,
}

/// What makes two routes' upstream clients interchangeable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamTlsKey {
    /// SHA-256 of the route's `ca:` file; `None` for the default roots.
    pub ca: Option<[u8; 32]>,
    /// `http2: true`: HTTP/2 only (ALPN `h2`, or prior knowledge over
    /// plain HTTP).
    pub http2: bool,
}

impl UpstreamTlsKey {
    /// No `ca:`, no `http2:`: the default roots, HTTP/1.1.
    pub const DEFAULT: UpstreamTlsKey = UpstreamTlsKey {
        ca: None,
        http2: false,
    };
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for UpstreamTls {}

impl UpstreamTls {
    /// The route's settings: `ca` (a PEM file, resolved) replaces the
    /// default roots; `http2` asks for HTTP/2.
    pub fn build(ca: Option<&Path>, http2: bool) -> Result<UpstreamTls, String> {
        let Some(ca) = ca else {
            return Ok(UpstreamTls {
                key: UpstreamTlsKey { ca: None, http2 },
                config: default_client_config()?,
            });
        };
        let roots = root_store(ca)?;
        let bytes = read(ca)?;
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest::digest(&digest::SHA256, &bytes).as_ref());
        Ok(UpstreamTls {
            key: UpstreamTlsKey {
                ca: Some(fingerprint),
                http2,
            },
            config: client_config(roots)?,
        })
    }
}

fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&VERSIONS)
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Mozilla's roots (webpki-roots, so a distroless image needs no CA
/// bundle) plus the platform's store, loaded once per process.
fn default_client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            if !native.errors.is_empty() {
                tracing::debug!(errors = ?native.errors, "some platform root certificates could not be loaded");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, ignored, "platform root certificates loaded");
            client_config(roots)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn certificate(subject: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_subject_reads_last_rdn_first_with_short_names() {
        let der = certificate(&[
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Acme"),
            (DnType::OrganizationalUnitName, "Payments"),
            (DnType::CommonName, "billing"),
        ]);
        assert_eq!(
            subject_dn(&der).as_deref(),
            Some("CN=billing,OU=Payments,O=Acme,C=DE")
        );
        let der = certificate(&[(DnType::CustomDnType(vec![2, 5, 4, 5]), "0042")]);
        assert_eq!(subject_dn(&der).as_deref(), Some("2.5.4.5=0042"));
    }

    #[test]
    fn subject_values_are_escaped_and_control_characters_never_pass() {
        let der = certificate(&[(DnType::CommonName, " a,b+c\"d\\e<f>g;h\n#")]);
        assert_eq!(
            subject_dn(&der).as_deref(),
            Some(r#"CN=\ a\,b\+c\"d\\e\<f\>g\;h\0a#"#)
        );
        let der = certificate(&[(DnType::CommonName, "#lead trail ")]);
        assert_eq!(subject_dn(&der).as_deref(), Some(r"CN=\#lead trail\ "));
    }

    #[test]
    fn an_empty_or_unreadable_subject_is_none() {
        assert_eq!(subject_dn(&certificate(&[])), None);
        assert_eq!(subject_dn(b""), None);
        assert_eq!(subject_dn(&[0x30, 0x82, 0xff]), None);
        let der = certificate(&[(DnType::CommonName, "x")]);
        for cut in [1, 10, der.len() / 2, der.len() - 1] {
            // Truncated: the outer length no longer fits, never a panic.
            assert_eq!(subject_dn(&der[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn dotted_oids_decode_multi_byte_arcs() {
        assert_eq!(
            dotted_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
        assert_eq!(dotted_oid(&[0x55, 0x04, 0x03]), "2.5.4.3");
    }
}
