//! The YAML file format: the *outside* shape of a configuration.
//!
//! Everything here is plain serde with `deny_unknown_fields` (an unknown key is
//! almost always a typo, so it is an error). Meaning — paths resolved, keys
//! read, routes compiled — is given by [`crate::snapshot`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// The embedded demo configuration (`jwtgate` with no arguments). A copy is
/// kept in `config/demo.yaml`; a test checks that both are the same.
pub const DEMO_YAML: &str = include_str!("../config/demo.yaml");

/// A configuration file, as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// HTTPS (and HTTP/2 by ALPN) on `listen`; plain HTTP without it.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Key sets of external issuers, fetched over HTTP(S) and refreshed.
    #[serde(default)]
    pub jwks: Vec<JwksConfig>,
    #[serde(default)]
    pub token_endpoint: Option<TokenEndpointConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Peers (CIDRs) whose `X-Forwarded-For` names the client address the
    /// token endpoint's throttle uses; nobody's by default.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    /// Serve the status page, `/api/status` and the token inspector
    /// (`/api/explain`) on the admin listener.
    #[serde(default)]
    pub admin_ui: bool,
}

/// `token_cache`: the verified-token cache. `max_entries: 0` turns it off.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenCacheConfig {
    pub max_entries: usize,
    /// Longer tokens are verified every time, never cached.
    pub max_token_bytes: usize,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        TokenCacheConfig {
            max_entries: 4096,
            max_token_bytes: 4096,
        }
    }
}

impl FileConfig {
    /// Every file this config names, as written (relative to the config's
    /// directory). Hot reload watches them and hashes their contents; a
    /// feature that reads a file must list it here.
    pub fn named_files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = self
            .keys
            .iter()
            .flat_map(|key| [key.private_key.as_deref(), key.public_key.as_deref()])
            .chain(self.jwks.iter().map(|jwks| jwks.ca.as_deref()))
            .flatten()
            .collect();
        if let Some(tls) = &self.tls {
            files.extend([tls.cert.as_path(), tls.key.as_path()]);
            files.extend(tls.client_ca.as_deref());
        }
        files.extend(self.routes.iter().filter_map(|route| route.ca.as_deref()));
        files
    }
}

/// `tls:` on the public listener: PEM files, relative to the config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that sign client certificates: with it, every client
    /// must present a valid certificate (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// Request limits of the public listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request line plus all header lines; more is answered `431`.
    pub max_header_bytes: usize,
    /// Header count; more is answered `431`.
    pub max_headers: usize,
    /// Request body bytes; more is answered `413`.
    pub max_body_bytes: u64,
    /// Connecting to the upstream plus waiting for its response headers.
    pub upstream_timeout: ConfigDuration,
    /// Time a client has to send a complete request head (slowloris guard).
    pub header_read_timeout: ConfigDuration,
    /// On SIGTERM, how long requests in flight may take to finish before
    /// their connections are closed.
    pub drain_timeout: ConfigDuration,
    /// Time a client has to complete the TLS handshake.
    pub tls_handshake_timeout: ConfigDuration,
    /// Streams one HTTP/2 connection may have open at once.
    pub h2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            upstream_timeout: ConfigDuration(Duration::from_secs(30)),
            header_read_timeout: ConfigDuration(Duration::from_secs(10)),
            drain_timeout: ConfigDuration(Duration::from_secs(30)),
            tls_handshake_timeout: ConfigDuration(Duration::from_secs(10)),
            h2_max_concurrent_streams: 100,
        }
    }
}

/// One entry of `jwks:`: an external issuer's JWK Set (RFC 7517), used only
/// for tokens whose `iss` equals `issuer`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// The JWK Set URL; may be left out with `discovery: true`.
    #[serde(default)]
    pub url: Option<String>,
    pub issuer: String,
    #[serde(default = "default_jwks_refresh")]
    pub refresh: ConfigDuration,
    /// A PEM file of CA certificates trusted for this provider instead of
    /// the platform's and Mozilla's roots (as a route's `ca:`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Allows `http://` to a non-loopback host (keys could be swapped in
    /// transit: for test rigs only).
    #[serde(default)]
    pub insecure_http: bool,
    /// Find `jwks_uri` in the issuer's OpenID Connect or RFC 8414 metadata.
    #[serde(default)]
    pub discovery: bool,
    /// Algorithms the set's keys may be used with (a JWK's own `alg`, when
    /// present, must be one of them). Default: each key type's usual one.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
}

fn default_jwks_refresh() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(600))
}

/// One entry of `keys:`. Exactly one of `generate`, `private_key`,
/// `public_key` says where the key comes from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub kid: String,
    pub alg: String,
    #[serde(default)]
    pub generate: bool,
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    #[serde(default)]
    pub public_key: Option<PathBuf>,
}

/// `token_endpoint:` — the built-in OAuth2 client-credentials endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpointConfig {
    pub path: String,
    #[serde(default)]
    pub issuer: Option<String>,
    pub signing_key: String,
    #[serde(default = "default_ttl")]
    pub ttl: ConfigDuration,
    #[serde(default = "default_not_before_skew")]
    pub not_before_skew: ConfigDuration,
    pub audience: String,
    #[serde(default)]
    pub any_client: bool,
    #[serde(default)]
    pub default_scopes: Vec<String>,
    #[serde(default)]
    pub clients: Option<Vec<ClientConfig>>,
    #[serde(default)]
    pub throttle: ThrottleConfig,
}

/// `token_endpoint.throttle`: failed client authentications allowed per
/// window, per (client id, source address) and per source address.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    pub per_client: u32,
    pub per_address: u32,
    pub window: ConfigDuration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            per_client: 10,
            per_address: 30,
            window: ConfigDuration(Duration::from_secs(60)),
        }
    }
}

fn default_ttl() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

fn default_not_before_skew() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(120))
}

/// One OAuth2 client of the token endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub id: String,
    pub secret_hash: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub audience: Option<String>,
}

/// One entry of `routes:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// A PEM file of CA certificates: the only roots trusted for this
    /// route's `https://` upstream.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Speak HTTP/2 to the upstream (ALPN `h2` over TLS, prior knowledge
    /// over plain HTTP).
    #[serde(default)]
    pub http2: bool,
}

/// `routes[].match`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub host: Option<String>,
}

/// One step of a route's policy chain: a one-key map whose key names the
/// kind (`- jwt: {...}`). A struct of options rather than an enum because
/// serde_yaml 0.9 reads enums from YAML tags (`!jwt`), not one-key maps;
/// the snapshot checks that exactly one kind is given.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub jwt: Option<JwtPolicyConfig>,
}

/// `policies: - jwt: {...}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtPolicyConfig {
    /// Required: a token must name one of these in `aud` (RFC 8725 §3.9).
    pub audience: OneOrMany,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway: ConfigDuration,
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default)]
    pub inject: InjectConfig,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub scope_claim: Option<String>,
}

fn default_leeway() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

/// Which headers carry the verified identity to the upstream.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InjectConfig {
    pub subject: String,
    pub scopes: String,
    pub claims: BTreeMap<String, String>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            subject: "X-Auth-Subject".to_owned(),
            scopes: "X-Auth-Scopes".to_owned(),
            claims: BTreeMap::new(),
        }
    }
}

/// A string or a list of strings (`audience: a` or `audience: [a, b]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// A duration written `300s`, `5m`, `1h`, `500ms` (or `2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit (write e.g. 300s, 5m, 1h)"))?;
        let (number, unit) = text.split_at(split);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration (write e.g. 300s, 5m, 1h)"))?;
        let millis_per_unit = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "`{text}` has an unknown unit `{unit}` (use ms, s, m, h or d)"
                ))
            }
        };
        value
            .checked_mul(millis_per_unit)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("`{text}` is too long"))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 300s, 5m or 1h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
                ConfigDuration::parse(v)
                    .map(ConfigDuration)
                    .map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Where a configuration came from: the paths it names are relative to
/// `base_dir`, and errors name `display_name`.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file as the user named it (never canonicalised: Kubernetes mounts
    /// a ConfigMap as `..data` symlinks, and paths must resolve beside the
    /// name the user gave, not beside the symlink's target).
    pub path: Option<PathBuf>,
    pub text: String,
}

impl ConfigSource {
    /// The embedded demo config.
    pub fn demo() -> Self {
        ConfigSource {
            path: None,
            text: DEMO_YAML.to_owned(),
        }
    }

    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Ok(ConfigSource {
            path: Some(path.to_owned()),
            text,
        })
    }

    pub fn display_name(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "<embedded demo config>".to_owned(),
        }
    }

    /// The directory that relative paths in this config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.as_ref().and_then(|p| p.parent()) {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    pub fn resolve(&self, relative: &Path) -> PathBuf {
        if relative.is_absolute() {
            relative.to_owned()
        } else {
            self.base_dir().join(relative)
        }
    }

    /// Parse the YAML; syntax and shape errors keep serde_yaml's field path
    /// and line. An empty document (nothing but whitespace and comments) is
    /// refused: every key has a default, so it would otherwise be a valid
    /// gateway with no keys and no routes — and a file caught half-way
    /// through a truncate-and-write during hot reload looks exactly like it.
    pub fn parse(&self) -> Result<FileConfig, ConfigError> {
        if matches!(
            serde_yaml::from_str::<serde_yaml::Value>(&self.text),
            Ok(serde_yaml::Value::Null)
        ) {
            return Err(ConfigError {
                file: self.display_name(),
                field: String::new(),
                message: "the config is empty".to_owned(),
            });
        }
        serde_yaml::from_str(&self.text).map_err(|e| ConfigError {
            file: self.display_name(),
            field: String::new(),
            message: e.to_string(),
        })
    }
}

/// A configuration problem: which file, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// A field path such as `routes[1].policies[0].jwt.audience`, a key id or
    /// a file; empty when the message carries its own location (YAML errors).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(ConfigDuration::parse("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(ConfigDuration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(ConfigDuration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(
            ConfigDuration::parse("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert!(ConfigDuration::parse("300")
            .unwrap_err()
            .contains("no unit"));
        assert!(ConfigDuration::parse("3y")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(ConfigDuration::parse("s").is_err());
    }

    #[test]
    fn an_empty_config_is_an_error() {
        for text in ["", "  \n", "# only a comment\n", "---\n"] {
            let source = ConfigSource {
                path: Some(PathBuf::from("gw.yaml")),
                text: text.to_owned(),
            };
            assert_eq!(
                source.parse().unwrap_err().to_string(),
                "gw.yaml: the config is empty",
                "{text:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let source = ConfigSource {
            path: Some(PathBuf::from("/etc/jwtgate/gw.yaml")),
            text: "routes:\n  - name: a\n    match: {path_prefx: /a}\n    upstream: demo\n"
                .to_owned(),
        };
        let error = source.parse().unwrap_err().to_string();
        assert!(
            error.starts_with("/etc/jwtgate/gw.yaml: routes[0].match: unknown field `path_prefx`"),
            "{error}"
        );
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn relative_paths_resolve_beside_the_named_file() {
        let source = ConfigSource {
            path: Some(PathBuf::from("/etc/jwtgate/..data/gw.yaml")),
            text: String::new(),
        };
        assert_eq!(
            source.resolve(Path::new("keys/a.pem")),
            PathBuf::from("/etc/jwtgate/..data/keys/a.pem")
        );
        let bare = ConfigSource {
            path: Some(PathBuf::from("gw.yaml")),
            text: String::new(),
        };
        assert_eq!(bare.resolve(Path::new("k.pem")), PathBuf::from("./k.pem"));
    }
}
