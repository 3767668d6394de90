//! `Snapshot`: the compiled, immutable runtime model built from one config.
//!
//! Everything a request needs — parsed keys, the signer, client hashes,
//! routes with built policy chains, header names, the public documents — is
//! made here once, so the request path only reads. A snapshot is built whole
//! or not at all: any error leaves the caller with the previous one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, Method};

use crate::client_addr::Cidr;
use crate::config::{
    ConfigError, ConfigSource, FileConfig, KeyConfig, Limits, PolicyConfig, RouteConfig,
    TokenCacheConfig,
};
use crate::forward::Upstream;
use crate::keys::remote::{JwksRegistry, ProviderSettings};
use crate::keys::{local, Algorithm, KeySet, LocalKey};
use crate::policy::jwt::JwtPolicy;
use crate::policy::Policy;
use crate::router::{self, Route, RouteMatch};
use crate::runtime::GeneratedKeys;
use crate::tls::UpstreamTls;
use crate::token::discovery;
use crate::token::endpoint::TokenEndpoint;

/// One loaded configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The config file (or `<embedded demo config>`), for logs.
    pub source: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The listener's TLS config (`tls:`); `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: Limits,
    pub keys: KeySet,
    pub token_endpoint: Option<TokenEndpoint>,
    pub routes: Vec<Route>,
    /// Every header any route injects: removed from every request first.
    pub injected_headers: Vec<HeaderName>,
    pub jwks_document: Bytes,
    /// `None` without a token endpoint issuer (then 404).
    pub metadata_document: Option<Bytes>,
    /// Peers whose `X-Forwarded-For` the token endpoint's throttle believes.
    pub trusted_proxies: Vec<Cidr>,
    pub token_cache: TokenCacheConfig,
    /// The status page and its JSON API on the admin listener.
    pub admin_ui: bool,
}

impl Snapshot {
    /// Parses and compiles `source`, reading every key file it names.
    /// `generated` keeps `generate: true` keys for the life of the process,
    /// `providers` the `jwks:` key sets (nothing is fetched here: a provider
    /// starts when its snapshot is put in service).
    pub fn build(
        source: &ConfigSource,
        generated: &GeneratedKeys,
        providers: &JwksRegistry,
    ) -> Result<Snapshot, ConfigError> {
        let config = source.parse()?;
        let file = source.display_name();
        let error = |field: String, message: String| ConfigError {
            file: file.clone(),
            field,
            message,
        };
        check_demo_features_on_loopback(&config).map_err(|(f, m)| error(f, m))?;
        check_limits(&config.limits).map_err(|(f, m)| error(f, m))?;
        let tls = match &config.tls {
            Some(tls) => Some(
                crate::tls::server_config(source, tls)
                    .map_err(|(f, m)| error(format!("tls.{f}"), m))?,
            ),
            None => None,
        };

        let mut keys = KeySet::default();
        for (i, key_config) in config.keys.iter().enumerate() {
            let key = load_key(source, key_config, generated)
                .map_err(|(f, m)| error(format!("keys[{i}].{f}"), m))?;
            keys.insert(key)
                .map_err(|m| error(format!("keys[{i}].kid"), m))?;
        }

        for (i, jwks_config) in config.jwks.iter().enumerate() {
            let settings = ProviderSettings::build(jwks_config, source)
                .map_err(|(f, m)| error(format!("jwks[{i}].{f}"), m))?;
            if keys.remote.contains_key(&settings.issuer) {
                return Err(error(
                    format!("jwks[{i}].issuer"),
                    format!("duplicate issuer `{}`", settings.issuer),
                ));
            }
            let provider = providers.get_or_create(settings);
            keys.remote.insert(provider.issuer().to_owned(), provider);
        }

        let token_endpoint = match &config.token_endpoint {
            Some(endpoint) => Some(
                TokenEndpoint::build(endpoint, &keys)
                    .map_err(|(f, m)| error(format!("token_endpoint.{f}"), m))?,
            ),
            None => None,
        };

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut names = HashSet::new();
        for (i, route_config) in config.routes.iter().enumerate() {
            let route = build_route(source, route_config)
                .map_err(|(f, m)| error(format!("routes[{i}].{f}"), m))?;
            if !names.insert(route.name.clone()) {
                return Err(error(
                    format!("routes[{i}].name"),
                    format!("duplicate route name `{}`", route.name),
                ));
            }
            routes.push(route);
        }

        let mut injected_headers: Vec<HeaderName> = Vec::new();
        for route in &routes {
            let mut names: Vec<HeaderName> = route
                .policies
                .iter()
                .flat_map(Policy::injected_headers)
                .collect();
            if let Upstream::Demo {
                subject_header,
                scopes_header,
            } = &route.upstream
            {
                names.extend([subject_header.clone(), scopes_header.clone()]);
            }
            for name in names {
                if !injected_headers.contains(&name) {
                    injected_headers.push(name);
                }
            }
        }

        let mut trusted_proxies = Vec::with_capacity(config.trusted_proxies.len());
        for (i, text) in config.trusted_proxies.iter().enumerate() {
            trusted_proxies
                .push(Cidr::parse(text).map_err(|m| error(format!("trusted_proxies[{i}]"), m))?);
        }

        let metadata_document = token_endpoint.as_ref().and_then(|e| {
            e.issuer
                .as_deref()
                .map(|issuer| discovery::metadata_document(issuer, &e.path))
        });
        Ok(Snapshot {
            source: file.clone(),
            listen: config.listen,
            admin: config.admin,
            tls,
            limits: config.limits.clone(),
            jwks_document: discovery::jwks_document(&keys),
            keys,
            token_endpoint,
            routes,
            injected_headers,
            metadata_document,
            trusted_proxies,
            token_cache: config.token_cache,
            admin_ui: config.admin_ui,
        })
    }
}

/// `any_client` and `generate: true` are demo features: refused unless the
/// public listener is on loopback.
fn check_demo_features_on_loopback(config: &FileConfig) -> Result<(), (String, String)> {
    if config.listen.ip().is_loopback() {
        return Ok(());
    }
    if config.token_endpoint.as_ref().is_some_and(|e| e.any_client) {
        return Err((
            "token_endpoint.any_client".into(),
            format!(
                "demo feature refused on non-loopback listen {}",
                config.listen
            ),
        ));
    }
    if let Some(i) = config.keys.iter().position(|k| k.generate) {
        return Err((
            format!("keys[{i}].generate"),
            format!(
                "demo feature refused on non-loopback listen {}",
                config.listen
            ),
        ));
    }
    Ok(())
}

fn check_limits(limits: &Limits) -> Result<(), (String, String)> {
    if limits.max_header_bytes < 1024 {
        return Err((
            "limits.max_header_bytes".into(),
            "must be at least 1024".into(),
        ));
    }
    if limits.max_headers == 0 {
        return Err(("limits.max_headers".into(), "must be at least 1".into()));
    }
    if limits.upstream_timeout.0.is_zero() {
        return Err((
            "limits.upstream_timeout".into(),
            "must be more than 0s".into(),
        ));
    }
    if limits.header_read_timeout.0.is_zero() {
        return Err((
            "limits.header_read_timeout".into(),
            "must be more than 0s".into(),
        ));
    }
    if limits.tls_handshake_timeout.0.is_zero() {
        return Err((
            "limits.tls_handshake_timeout".into(),
            "must be more than 0s".into(),
        ));
    }
    if limits.h2_max_concurrent_streams == 0 {
        return Err((
            "limits.h2_max_concurrent_streams".into(),
            "must be at least 1".into(),
        ));
    }
    Ok(())
}

/// One `keys:` entry; `Err((field, message))` relative to the entry.
fn load_key(
    source: &ConfigSource,
    config: &KeyConfig,
    generated: &GeneratedKeys,
) -> Result<Arc<LocalKey>, (String, String)> {
    if config.kid.is_empty() || config.kid.len() > 256 {
        return Err(("kid".into(), "must be 1 to 256 characters".into()));
    }
    let alg = Algorithm::from_name(&config.alg).ok_or_else(|| {
        let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        (
            "alg".to_owned(),
            format!("`{}` is not one of {}", config.alg, names.join(" ")),
        )
    })?;
    let sources = usize::from(config.generate)
        + usize::from(config.private_key.is_some())
        + usize::from(config.public_key.is_some());
    if sources != 1 {
        return Err((
            "kid".into(),
            format!(
                "key `{}` needs exactly one of generate, private_key, public_key",
                config.kid
            ),
        ));
    }
    if config.generate {
        return generated
            .get_or_generate(&config.kid, alg)
            .map_err(|m| ("generate".into(), m));
    }
    if let Some(path) = &config.private_key {
        return local::load_private(&config.kid, alg, &source.resolve(path))
            .map(Arc::new)
            .map_err(|m| ("private_key".into(), m));
    }
    let path = config
        .public_key
        .as_ref()
        .ok_or(("public_key".to_owned(), "missing".to_owned()))?;
    local::load_public(&config.kid, alg, &source.resolve(path))
        .map(Arc::new)
        .map_err(|m| ("public_key".into(), m))
}

/// One route; `Err((field, message))` relative to the route.
fn build_route(source: &ConfigSource, config: &RouteConfig) -> Result<Route, (String, String)> {
    if config.name.is_empty()
        || !config
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err((
            "name".into(),
            "must be letters, digits, `-`, `_` or `.` (it is a metrics label)".into(),
        ));
    }
    if config.name == "none" || config.name == "token" {
        // Logs and metrics use these for "no route" and the token endpoint.
        return Err(("name".into(), format!("`{}` is reserved", config.name)));
    }
    let prefix = &config.matcher.path_prefix;
    if router::check_normal_form(prefix).is_err() || prefix.contains('?') {
        return Err((
            "match.path_prefix".into(),
            format!("`{prefix}` must be an absolute path in normal form"),
        ));
    }
    let path_prefix = match prefix.trim_end_matches('/') {
        "" => "/".to_owned(),
        trimmed => trimmed.to_owned(),
    };
    let methods = match &config.matcher.methods {
        None => None,
        Some(list) => {
            let mut methods = Vec::with_capacity(list.len());
            for name in list {
                let method =
                    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        (
                            "match.methods".to_owned(),
                            format!("`{name}` is not an HTTP method"),
                        )
                    })?;
                methods.push(method);
            }
            Some(methods)
        }
    };
    let host = match &config.matcher.host {
        Some(host) if host.is_empty() || host.contains(['/', ' ']) => {
            return Err(("match.host".into(), format!("`{host}` is not a host name")))
        }
        Some(host) => Some(router::host_for_matching(host).into_owned()),
        None => None,
    };
    let mut upstream = Upstream::parse(&config.upstream).map_err(|m| ("upstream".to_owned(), m))?;
    match &mut upstream {
        Upstream::Http(target) => {
            if config.ca.is_some() && target.scheme != http::uri::Scheme::HTTPS {
                return Err(("ca".into(), "applies to https:// upstreams only".into()));
            }
            let ca = config.ca.as_deref().map(|ca| source.resolve(ca));
            target.tls = UpstreamTls::build(ca.as_deref(), config.http2)
                .map_err(|m| (if ca.is_some() { "ca" } else { "upstream" }.to_owned(), m))?;
        }
        Upstream::Demo { .. } if config.ca.is_some() || config.http2 => {
            return Err((
                if config.ca.is_some() { "ca" } else { "http2" }.into(),
                "does not apply to the `demo` upstream".into(),
            ));
        }
        Upstream::Demo { .. } => {}
    }
    let mut policies = Vec::with_capacity(config.policies.len());
    for (i, policy) in config.policies.iter().enumerate() {
        let PolicyConfig { jwt } = policy;
        let Some(jwt) = jwt else {
            return Err((
                format!("policies[{i}]"),
                "names no policy kind (expected `jwt:`)".into(),
            ));
        };
        let built =
            JwtPolicy::build(jwt).map_err(|(f, m)| (format!("policies[{i}].jwt.{f}"), m))?;
        if let Upstream::Demo {
            subject_header,
            scopes_header,
        } = &mut upstream
        {
            *subject_header = built.subject_header().clone();
            *scopes_header = built.scopes_header().clone();
        }
        policies.push(Policy::Jwt(built));
    }
    Ok(Route {
        name: config.name.clone(),
        matcher: RouteMatch {
            path_prefix,
            methods,
            host,
        },
        upstream,
        strip_prefix: config.strip_prefix,
        policies,
    })
}
