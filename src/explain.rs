//! Why was a token accepted or refused: `jwtgate explain` and the admin
//! token inspector (`POST /api/explain`).
//!
//! Nothing here re-implements a check. The route's chain runs through
//! [`Policy::explain`], which is the enforcement path ([`crate::jws`]'s step
//! functions and the policy's own claim and scope checks) with a recording
//! [`Trace`] instead of the no-op one, and without the verified-token cache
//! or metrics. The answer a refusal would get comes from
//! [`GatewayError::into_response`], the injected headers from the policy's
//! [`Verdict`].

use std::collections::HashMap;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method};
use serde::Serialize;
use serde_json::Value;

use crate::error::GatewayError;
use crate::forward::Upstream;
use crate::jws::{self, Rejection, Step, Trace};
use crate::keys::{KeySet, Verifier};
use crate::policy::{Policy, Verdict};
use crate::router::{self, Route};
use crate::snapshot::Snapshot;

/// How the route to explain is chosen.
#[derive(Debug, Clone)]
pub enum RouteQuery<'a> {
    /// By `routes[].name`.
    Name(&'a str),
    /// Through the router, as a request would be.
    Request {
        method: &'a Method,
        path: &'a str,
        host: Option<&'a str>,
    },
}

/// Finds the route a query names; `Err` says why there is none.
pub fn find_route<'s>(snapshot: &'s Snapshot, query: &RouteQuery<'_>) -> Result<&'s Route, String> {
    match query {
        RouteQuery::Name(name) => snapshot
            .routes
            .iter()
            .find(|route| route.name == *name)
            .ok_or_else(|| {
                let names: Vec<&str> = snapshot.routes.iter().map(|r| r.name.as_str()).collect();
                format!(
                    "no route named `{name}` (routes: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            }),
        RouteQuery::Request { method, path, host } => {
            router::check_normal_form(path).map_err(|why| format!("{why} (answered 400)"))?;
            if snapshot
                .token_endpoint
                .as_ref()
                .is_some_and(|e| e.path == *path)
            {
                return Err(format!("{path} is the token endpoint, not a route"));
            }
            let host = host.map(router::host_for_matching);
            router::find(&snapshot.routes, host.as_deref(), method, path).ok_or_else(|| {
                format!(
                    "no route matches {method} {path}{} (answered 404)",
                    host.map_or(String::new(), |h| format!(" on host {h}"))
                )
            })
        }
    }
}

/// One check as explained.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StepReport {
    /// Index of the policy in the route's chain.
    pub policy: usize,
    /// [`Step::as_str`].
    pub step: &'static str,
    /// `pass`, `fail` or `not_reached`.
    pub result: &'static str,
    /// The metrics `reason` of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The client-facing description of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'static str>,
    /// What was compared.
    pub detail: String,
}

/// A key as shown to operators: never key material.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: &'static str,
    pub source: String,
    /// Seconds since the key was loaded.
    pub age_secs: u64,
}

impl KeyInfo {
    pub fn of(verifier: &Verifier) -> KeyInfo {
        KeyInfo {
            kid: verifier.kid.clone(),
            alg: verifier.alg.name(),
            source: verifier.source.clone(),
            age_secs: SystemTime::now()
                .duration_since(verifier.loaded_at)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// The answer a refused request gets, from the gateway's one error mapping.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: Value,
}

/// A header set on the upstream request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HeaderReport {
    pub name: String,
    pub value: String,
}

/// Everything `explain` says about one token on one route.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Explanation {
    pub route: String,
    pub upstream: String,
    /// The time the checks used (seconds since the epoch).
    pub now: u64,
    /// The token's header and claims, decoded for display (`null` when a
    /// segment is not base64url JSON).
    pub header: Option<Value>,
    pub claims: Option<Value>,
    /// The key that verifies (or would verify) the token.
    pub key: Option<KeyInfo>,
    /// Why no key applies, when none does.
    pub key_problem: Option<String>,
    pub steps: Vec<StepReport>,
    pub accepted: bool,
    /// `accepted`, or the refusal's metrics reason (`expired`, …).
    pub verdict: &'static str,
    /// The first step that failed.
    pub failed_step: Option<&'static str>,
    /// The gateway's own answer on refusal; `None` when forwarded.
    pub refusal: Option<Refusal>,
    /// Headers the gateway sets on the upstream request when it forwards.
    pub upstream_headers: Vec<HeaderReport>,
    /// Whether `Authorization` is forwarded (`forward_token: true`).
    pub forward_authorization: bool,
    pub notes: Vec<String>,
}

/// Records every step into [`StepReport`]s.
struct Recorder {
    policy: usize,
    steps: Vec<StepReport>,
}

impl Trace for Recorder {
    fn step(
        &mut self,
        step: Step,
        outcome: Result<(), &Rejection>,
        detail: impl FnOnce() -> String,
    ) {
        self.steps.push(StepReport {
            policy: self.policy,
            step: step.as_str(),
            result: if outcome.is_ok() { "pass" } else { "fail" },
            reason: outcome.err().map(|r| r.reason.as_str()),
            description: outcome.err().map(|r| r.description),
            detail: detail(),
        });
    }
}

/// Explains what the gateway would do with `Authorization: Bearer <token>`
/// on `route` of `snapshot` at time `now`. Reads nothing but the snapshot;
/// sends nothing anywhere; touches no cache and no metric.
pub fn explain(snapshot: &Snapshot, route: &Route, token: &str, now: u64) -> Explanation {
    let mut notes = Vec::new();
    let mut headers = HeaderMap::new();
    // As received: HTTP drops whitespace around a header value.
    let value = format!("Bearer {token}");
    match HeaderValue::from_str(value.trim_end_matches([' ', '\t'])) {
        Ok(value) => {
            headers.insert(AUTHORIZATION, value);
        }
        Err(_) => notes.push(
            "the token contains characters an HTTP header cannot carry: \
             a client could not send it at all"
                .to_owned(),
        ),
    }
    let mut recorder = Recorder {
        policy: 0,
        steps: Vec::new(),
    };
    let mut verdict = Verdict::default();
    let mut result = Ok(());
    for (i, policy) in route.policies.iter().enumerate() {
        recorder.policy = i;
        result = policy.explain(&headers, &snapshot.keys, now, &mut verdict, &mut recorder);
        if result.is_err() {
            break;
        }
    }
    let mut steps = recorder.steps;
    mark_not_reached(&mut steps, &route.policies);

    let failed = steps.iter().find(|s| s.result == "fail");
    let failed_step = failed.map(|s| s.step);
    let (key, key_problem) = key_of(token, &snapshot.keys, &steps);
    let (accepted, verdict_label, refusal) = match result {
        Ok(()) => (true, "accepted", None),
        Err(error) => {
            let label = error.auth_failure().map_or("refused", |f| f.as_str());
            (false, label, Some(refusal_of(error)))
        }
    };
    if route.policies.is_empty() {
        notes.push("the route has no policies: every request is forwarded".to_owned());
    }
    if accepted {
        notes.push(match &route.upstream {
            Upstream::Demo { .. } => {
                "forwarded to the built-in demo upstream, which answers 200".to_owned()
            }
            Upstream::Http(_) => "forwarded: the status is the upstream's; X-Request-Id and \
                 X-Forwarded-For/-Proto/-Host are set too"
                .to_owned(),
        });
    }
    Explanation {
        route: route.name.clone(),
        upstream: upstream_text(&route.upstream),
        now,
        header: decode_segment(token, 0),
        claims: decode_segment(token, 1),
        key,
        key_problem,
        steps,
        accepted,
        verdict: verdict_label,
        failed_step,
        refusal,
        upstream_headers: if accepted {
            verdict
                .inject
                .iter()
                .map(|(name, value)| HeaderReport {
                    name: name.as_str().to_owned(),
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                })
                .collect()
        } else {
            Vec::new()
        },
        forward_authorization: accepted && verdict.forward_authorization,
        notes,
    }
}

/// Appends the planned steps a refusal left unrun, as `not_reached`.
fn mark_not_reached(steps: &mut Vec<StepReport>, policies: &[Policy]) {
    for (i, policy) in policies.iter().enumerate() {
        let mut seen: HashMap<&'static str, usize> = HashMap::new();
        for step in steps.iter().filter(|s| s.policy == i) {
            *seen.entry(step.step).or_default() += 1;
        }
        for planned in policy.planned_steps() {
            let name = planned.as_str();
            match seen.get_mut(name) {
                Some(count) if *count > 0 => *count -= 1,
                _ => steps.push(StepReport {
                    policy: i,
                    step: name,
                    result: "not_reached",
                    reason: None,
                    description: None,
                    detail: String::new(),
                }),
            }
        }
    }
}

/// The key the token selects, by the same [`jws::select_key`] enforcement
/// uses; else why none does (from the failing step).
fn key_of(token: &str, keys: &KeySet, steps: &[StepReport]) -> (Option<KeyInfo>, Option<String>) {
    let selected = jws::parse(token)
        .ok()
        .and_then(|parsed| jws::select_key(&parsed, keys).ok().map(|v| KeyInfo::of(&v)));
    if selected.is_some() {
        return (selected, None);
    }
    let problem = steps
        .iter()
        .find(|s| s.result == "fail" && matches!(s.step, "syntax" | "key" | "algorithm"))
        .map(|s| format!("{}: {}", s.description.unwrap_or(""), s.detail))
        .or_else(|| {
            steps
                .iter()
                .find(|s| s.result == "fail" && s.step == "authorization")
                .map(|_| "no token could be read".to_owned())
        });
    (None, problem)
}

/// The response the gateway makes for `error`: status, challenge and body,
/// read from [`GatewayError::into_response`].
fn refusal_of(error: GatewayError) -> Refusal {
    let response = error.into_response();
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_ready_body(response.into_body());
    Refusal {
        status,
        www_authenticate,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

/// The bytes of a body that is already complete in memory (the gateway's
/// own JSON answers), without an async runtime.
fn read_ready_body(mut body: crate::body::Body) -> Vec<u8> {
    use http_body::Body as _;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    let mut context = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut context) {
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(data);
        }
    }
    out
}

/// A JSON object segment of the token, for display only (the checks use
/// [`jws::parse`], which is stricter).
fn decode_segment(token: &str, index: usize) -> Option<Value> {
    let segment = token.trim().split('.').nth(index)?;
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

/// `http://host:port/base` or `demo`.
pub fn upstream_text(upstream: &Upstream) -> String {
    match upstream {
        Upstream::Http(target) => format!(
            "{}://{}{}",
            target.scheme, target.authority, target.base_path
        ),
        Upstream::Demo { .. } => "demo".to_owned(),
    }
}
