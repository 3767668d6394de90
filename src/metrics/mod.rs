//! Every metric of SPEC §3, by name, in a `Registry` owned by the
//! [`Runtime`](crate::runtime::Runtime) (never the global default registry,
//! so in-process tests don't share counters).
//!
//! Label values come only from route names in the config and the closed
//! sets below — never a token, a subject or a raw path — so no request can
//! add a series. Counters whose label values are known in advance are
//! touched at start (and, for a route, when a config naming it is loaded) so
//! they are exported at 0.

#[cfg(target_os = "linux")]
mod process;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::{GatewayError, OAuthErrorCode};
use crate::jws::AuthFailure;
use crate::keys::remote::{RefreshCounters, RemoteKeySet};
use crate::lock::lock;
use crate::router::Route;

/// The `Content-Type` of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets in seconds: 50 µs to 30 s, dense below 10 ms so the
/// gateway's own sub-millisecond latency is resolved.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Result of a token endpoint request (`jwtgate_token_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenResult {
    Issued,
    InvalidRequest,
    InvalidClient,
    InvalidScope,
    UnsupportedGrantType,
    Throttled,
}

impl TokenResult {
    pub const ALL: [TokenResult; 6] = [
        TokenResult::Issued,
        TokenResult::InvalidRequest,
        TokenResult::InvalidClient,
        TokenResult::InvalidScope,
        TokenResult::UnsupportedGrantType,
        TokenResult::Throttled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenResult::Issued => "issued",
            TokenResult::InvalidRequest => "invalid_request",
            TokenResult::InvalidClient => "invalid_client",
            TokenResult::InvalidScope => "invalid_scope",
            TokenResult::UnsupportedGrantType => "unsupported_grant_type",
            TokenResult::Throttled => "throttled",
        }
    }

    /// How the token endpoint refused a request. Refusals that are not
    /// RFC 6749 error codes (a 405, a 413) are malformed requests.
    pub fn of_error(error: &GatewayError) -> TokenResult {
        match error {
            GatewayError::OAuth { code, .. } => match code {
                OAuthErrorCode::InvalidRequest => TokenResult::InvalidRequest,
                OAuthErrorCode::InvalidClient => TokenResult::InvalidClient,
                OAuthErrorCode::InvalidScope => TokenResult::InvalidScope,
                OAuthErrorCode::UnsupportedGrantType => TokenResult::UnsupportedGrantType,
            },
            GatewayError::Throttled { .. } => TokenResult::Throttled,
            GatewayError::NoRoute
            | GatewayError::BadRequest(_)
            | GatewayError::WellKnownMethodNotAllowed
            | GatewayError::HeadersTooLarge
            | GatewayError::BodyTooLarge
            | GatewayError::MissingToken
            | GatewayError::MalformedAuthorization(_)
            | GatewayError::InvalidToken(_)
            | GatewayError::InsufficientScope { .. }
            | GatewayError::UpstreamConnect
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamReset
            | GatewayError::UpstreamProtocol
            | GatewayError::TokenMethodNotAllowed => TokenResult::InvalidRequest,
        }
    }
}

/// Kind of upstream failure (`jwtgate_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }

    pub fn of_error(error: &GatewayError) -> Option<UpstreamErrorKind> {
        match error {
            GatewayError::UpstreamConnect => Some(UpstreamErrorKind::Connect),
            GatewayError::UpstreamTimeout => Some(UpstreamErrorKind::Timeout),
            GatewayError::UpstreamReset => Some(UpstreamErrorKind::Reset),
            GatewayError::UpstreamProtocol => Some(UpstreamErrorKind::Protocol),
            _ => None,
        }
    }
}

/// The `method` label: the common methods by name, everything else `other`
/// (so a client inventing methods cannot add series).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One route's counters, as the status page shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteCounters {
    pub route: String,
    pub requests: u64,
    pub auth_failures: std::collections::BTreeMap<String, u64>,
}

/// Every jwtgate metric.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    auth_failures: IntCounterVec,
    token_requests: IntCounterVec,
    upstream_errors: IntCounterVec,
    pub(crate) reload_successes: IntCounter,
    pub(crate) reload_failures: IntCounter,
    pub(crate) last_reload_success: Gauge,
    token_cache_hits: IntCounter,
    token_cache_misses: IntCounter,
    jwks_refreshes: IntCounterVec,
    jwks_age: GaugeVec,
    /// Issuers with JWKS series, so a removed one's can be dropped.
    jwks_issuers: Mutex<HashSet<String>>,
    pub(crate) connections: ConnectionGauges,
}

/// `jwtgate_open_connections{state}`: client connections on the public
/// listener, `active` (inside hyper, with its buffers: a request in
/// progress or recently served, and every TLS connection) or `idle` (a
/// plain HTTP/1.1 connection waiting for its next request, parked without
/// buffers).
#[derive(Clone)]
pub(crate) struct ConnectionGauges {
    pub active: IntGauge,
    pub idle: IntGauge,
}

/// Counts one connection in a gauge until dropped.
pub(crate) struct Counted(IntGauge);

impl Counted {
    pub fn in_gauge(gauge: &IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Registers every metric (and the process collector where the platform
    /// has one). Fails only on a programming error (a duplicate or invalid
    /// name), which the unit tests would catch.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let histogram_vec = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let vec = HistogramVec::new(opts, &["route"])?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let requests = counter_vec(
            "jwtgate_requests_total",
            "Requests answered on the public listener, by route, method and status.",
            &["route", "method", "status"],
        )?;
        let request_duration = histogram_vec(
            "jwtgate_request_duration_seconds",
            "Time from a request's arrival to its response headers, by route.",
        )?;
        let upstream_duration = histogram_vec(
            "jwtgate_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers, by route.",
        )?;
        let auth_failures = counter_vec(
            "jwtgate_auth_failures_total",
            "Requests refused by a route's policy chain, by route and reason.",
            &["route", "reason"],
        )?;
        let token_requests = counter_vec(
            "jwtgate_token_requests_total",
            "Token endpoint requests, by result.",
            &["result"],
        )?;
        let upstream_errors = counter_vec(
            "jwtgate_upstream_errors_total",
            "Requests that failed upstream, by route and kind.",
            &["route", "kind"],
        )?;
        let reloads = counter_vec(
            "jwtgate_config_reloads_total",
            "Config reload attempts, by result (file events with unchanged content are not attempts).",
            &["result"],
        )?;
        let last_reload_success = Gauge::new(
            "jwtgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load (the first load included).",
        )?;
        registry.register(Box::new(last_reload_success.clone()))?;
        let token_cache = counter_vec(
            "jwtgate_token_cache_requests_total",
            "Token verifications, by verified-token cache result (miss: the signature was checked).",
            &["result"],
        )?;
        let jwks_refreshes = counter_vec(
            "jwtgate_jwks_refreshes_total",
            "Fetches of remote JWK Sets (the first included), by issuer and result.",
            &["issuer", "result"],
        )?;
        let jwks_age = GaugeVec::new(
            Opts::new(
                "jwtgate_jwks_age_seconds",
                "Seconds since the issuer's key set was last fetched successfully (absent until then).",
            ),
            &["issuer"],
        )?;
        registry.register(Box::new(jwks_age.clone()))?;
        let connections = IntGaugeVec::new(
            Opts::new(
                "jwtgate_open_connections",
                "Client connections on the public listener, by state (active: in hyper with its buffers; idle: plain HTTP/1.1 keep-alive parked without them).",
            ),
            &["state"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(process::ProcessCollector::new()?))?;

        for result in TokenResult::ALL {
            token_requests.with_label_values(&[result.as_str()]);
        }
        Ok(Metrics {
            reload_successes: reloads.with_label_values(&["success"]),
            reload_failures: reloads.with_label_values(&["failure"]),
            token_cache_hits: token_cache.with_label_values(&["hit"]),
            token_cache_misses: token_cache.with_label_values(&["miss"]),
            registry,
            requests,
            request_duration,
            upstream_duration,
            auth_failures,
            token_requests,
            upstream_errors,
            last_reload_success,
            jwks_refreshes,
            jwks_age,
            jwks_issuers: Mutex::default(),
            connections: ConnectionGauges {
                active: connections.with_label_values(&["active"]),
                idle: connections.with_label_values(&["idle"]),
            },
        })
    }

    /// The refresh counters of one `jwks:` issuer (exported at 0 from now).
    /// Issuer label values come from the config only.
    pub fn jwks_counters(&self, issuer: &str) -> RefreshCounters {
        lock(&self.jwks_issuers).insert(issuer.to_owned());
        RefreshCounters {
            success: self.jwks_refreshes.with_label_values(&[issuer, "success"]),
            failure: self.jwks_refreshes.with_label_values(&[issuer, "failure"]),
        }
    }

    /// Drops the JWKS series of issuers a reload removed, and sets each
    /// remaining set's age (called before every scrape).
    pub fn update_jwks(&self, providers: &HashMap<String, Arc<RemoteKeySet>>) {
        lock(&self.jwks_issuers).retain(|issuer| {
            if providers.contains_key(issuer) {
                return true;
            }
            let _ = self.jwks_age.remove_label_values(&[issuer]);
            for result in ["success", "failure"] {
                let _ = self.jwks_refreshes.remove_label_values(&[issuer, result]);
            }
            false
        });
        let now = SystemTime::now();
        for (issuer, provider) in providers {
            if let Some(at) = provider.status().last_success {
                let age = now.duration_since(at).unwrap_or_default();
                self.jwks_age
                    .with_label_values(&[issuer])
                    .set(age.as_secs_f64());
            }
        }
    }

    /// Exports the per-route counters of `routes` at 0 (a new route's series
    /// appear when its config loads, not on its first failure).
    pub fn add_routes(&self, routes: &[Route]) {
        for route in routes {
            if !route.policies.is_empty() {
                for reason in AuthFailure::ALL {
                    self.auth_failures
                        .with_label_values(&[&route.name, reason.as_str()]);
                }
            }
            if route.upstream.is_http() {
                for kind in UpstreamErrorKind::ALL {
                    self.upstream_errors
                        .with_label_values(&[&route.name, kind.as_str()]);
                }
            }
        }
    }

    /// One answered request on the public listener.
    pub fn request(&self, route: &str, method: &Method, status: StatusCode, duration: Duration) {
        self.requests
            .with_label_values(&[route, method_label(method), status.as_str()])
            .inc();
        self.request_duration
            .with_label_values(&[route])
            .observe(duration.as_secs_f64());
    }

    pub fn upstream_duration(&self, route: &str, duration: Duration) {
        self.upstream_duration
            .with_label_values(&[route])
            .observe(duration.as_secs_f64());
    }

    pub fn auth_failure(&self, route: &str, reason: AuthFailure) {
        self.auth_failures
            .with_label_values(&[route, reason.as_str()])
            .inc();
    }

    pub fn token_request(&self, result: TokenResult) {
        self.token_requests
            .with_label_values(&[result.as_str()])
            .inc();
    }

    pub fn upstream_error(&self, route: &str, kind: UpstreamErrorKind) {
        self.upstream_errors
            .with_label_values(&[route, kind.as_str()])
            .inc();
    }

    /// A verification that checked a signature (not in the verified-token
    /// cache, or too long for it).
    pub fn signature_checked(&self) {
        self.token_cache_misses.inc();
    }

    /// A verification answered from the verified-token cache.
    pub fn token_cache_hit(&self) {
        self.token_cache_hits.inc();
    }

    /// Per route: requests answered and auth failures by reason, read from
    /// the registry (for the status page). Routes in name order.
    pub fn route_counters(&self) -> Vec<RouteCounters> {
        use std::collections::BTreeMap;
        let mut routes: BTreeMap<String, RouteCounters> = BTreeMap::new();
        for family in self.registry.gather() {
            let is_requests = family.name() == "jwtgate_requests_total";
            if !is_requests && family.name() != "jwtgate_auth_failures_total" {
                continue;
            }
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                let route = label("route");
                let entry = routes
                    .entry(route.clone())
                    .or_insert_with(|| RouteCounters {
                        route,
                        ..RouteCounters::default()
                    });
                let value = metric.get_counter().get_value() as u64;
                if is_requests {
                    entry.requests += value;
                } else {
                    *entry.auth_failures.entry(label("reason")).or_default() += value;
                }
            }
        }
        routes.into_values().collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec fails only on an invalid metric family, which
        // `new` cannot register.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}
