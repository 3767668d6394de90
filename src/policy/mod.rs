//! The per-route policy chain. Each kind is one file with its config
//! compilation, its `apply` and its tests; adding a kind means one file and
//! one enum arm here.

pub mod jwt;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::GatewayError;
use crate::jws::{Step, Trace};
use crate::keys::KeySet;
use crate::metrics::Metrics;
use crate::token_cache::TokenCache;

/// One built step of a route's chain.
#[derive(Debug)]
pub enum Policy {
    Jwt(jwt::JwtPolicy),
}

/// What a policy reads: the request as received (identity headers already
/// stripped), the snapshot's keys and the time; and where it counts.
pub struct PolicyInput<'a> {
    pub headers: &'a HeaderMap,
    pub keys: &'a KeySet,
    /// Seconds since the Unix epoch.
    pub now: u64,
    pub metrics: &'a Metrics,
    pub token_cache: &'a TokenCache,
    /// The verified client certificate's subject on an mTLS listener
    /// (RFC 4514, e.g. `CN=billing,O=Acme`); `None` without one.
    pub client_subject: Option<&'a str>,
}

/// What the chain decided, applied by the forwarder after hop-by-hop removal.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Headers the gateway vouches for, set on the upstream request.
    pub inject: Vec<(HeaderName, HeaderValue)>,
    /// `Authorization` is forwarded only when a policy asks for it.
    pub forward_authorization: bool,
    /// The verified subject, for the access log (shared, not copied, from
    /// a remembered verdict).
    pub subject: Option<Arc<str>>,
}

impl Policy {
    /// Runs this step. `Err` answers the request instead of forwarding it.
    pub fn apply(
        &self,
        input: &PolicyInput<'_>,
        verdict: &mut Verdict,
    ) -> Result<(), GatewayError> {
        match self {
            Policy::Jwt(policy) => policy.apply(input, verdict),
        }
    }

    /// What [`Policy::apply`] would decide for these headers, each check
    /// reported to `trace`, without the verified-token cache or metrics
    /// (`jwtgate explain`, the admin token inspector).
    pub fn explain(
        &self,
        headers: &HeaderMap,
        keys: &KeySet,
        now: u64,
        verdict: &mut Verdict,
        trace: &mut impl Trace,
    ) -> Result<(), GatewayError> {
        match self {
            Policy::Jwt(policy) => policy.explain(headers, keys, now, verdict, trace),
        }
    }

    /// The checks [`Policy::explain`] can report, in order.
    pub fn planned_steps(&self) -> Vec<Step> {
        match self {
            Policy::Jwt(policy) => policy.planned_steps(),
        }
    }

    /// Every header name this step may inject (stripped from all requests).
    pub fn injected_headers(&self) -> Vec<HeaderName> {
        match self {
            Policy::Jwt(policy) => policy.injected_headers(),
        }
    }
}
