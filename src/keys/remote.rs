//! Remote JWK Sets (`jwks:`): an external issuer's keys, fetched over HTTP(S),
//! refreshed in the background, and refreshed once more when a token names a
//! kid the set does not hold (the provider has rotated).
//!
//! What keeps users from being locked out, and the provider from being
//! hammered:
//! - **Last good set.** A failed fetch (down, timeout, garbage, an empty or
//!   unusable set) keeps serving the previous keys; it is logged and counted,
//!   and retried with a backoff from 1 s up to min(`refresh`, 10 s).
//! - **Unknown kid → one refresh.** [`RemoteKeySet::refresh_for_unknown_kid`]
//!   asks the background task for a fetch that *starts after* the request
//!   arrived; every request that arrives while it is pending waits for that
//!   same fetch (single flight) and is then answered from the refreshed set.
//!   After it, kid misses are not refreshed for [`KID_MISS_COOLDOWN`], so a
//!   flood of random kids costs the provider one fetch per cooldown.
//! - **Verifiers kept across refreshes.** A key whose JWK did not change keeps
//!   its `Verifier` (the same `Arc`), so the verified-token cache keeps its
//!   entries; a key removed from the set stops verifying at once.
//!
//! One background task per provider runs on the runtime handle given to
//! [`RemoteKeySet::start`]; it stops when the last snapshot holding the
//! provider is dropped (a reload removed it).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use rustls::ClientConfig;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use super::jwk::{parse_remote_jwk, RemoteJwk};
use super::{Algorithm, KeySelectionError, Verifier};
use crate::config::{ConfigSource, JwksConfig};
use crate::lock::lock;
use crate::tls::UpstreamTls;

/// Each fetch (discovery included) must finish within this (SPEC §4).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two refreshes triggered by unknown kids.
pub const KID_MISS_COOLDOWN: Duration = Duration::from_secs(5);
/// The first retry after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A provider's `Cache-Control: max-age` may shorten `refresh`, never below
/// this.
const MIN_MAX_AGE: Duration = Duration::from_secs(30);
/// A JWK Set or metadata document larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

type FetchClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A `jwks:` entry, checked and with its files read. Equal settings mean the
/// same provider: a reload that leaves an entry unchanged keeps its keys and
/// its background task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderSettings {
    pub issuer: String,
    /// `None` with `discovery: true`.
    pub url: Option<Uri>,
    pub discovery: bool,
    pub refresh: Duration,
    pub insecure_http: bool,
    pub algorithms: Option<Vec<Algorithm>>,
    /// The `ca:` file and its bytes (trusted instead of the default roots).
    pub ca: Option<(PathBuf, Vec<u8>)>,
}

impl ProviderSettings {
    /// Where the set comes from, for people: its URL, or `discovery`.
    pub fn source(&self) -> String {
        match &self.url {
            Some(url) => url.to_string(),
            None => "discovery".to_owned(),
        }
    }

    /// Checks one entry; errors are `(field, message)`.
    pub fn build(
        config: &JwksConfig,
        source: &ConfigSource,
    ) -> Result<ProviderSettings, (String, String)> {
        let field = |name: &str, message: String| (name.to_owned(), message);
        if config.issuer.is_empty() {
            return Err(field("issuer", "must not be empty".to_owned()));
        }
        let url = match (&config.url, config.discovery) {
            (Some(_), true) => {
                return Err(field(
                    "url",
                    "give `url` or `discovery: true`, not both".to_owned(),
                ))
            }
            (None, false) => {
                return Err(field(
                    "url",
                    "required (or `discovery: true` to find it in the issuer's metadata)"
                        .to_owned(),
                ))
            }
            (Some(text), false) => {
                Some(checked_url(text, config.insecure_http).map_err(|m| field("url", m))?)
            }
            (None, true) => {
                checked_url(&config.issuer, config.insecure_http)
                    .map_err(|m| field("issuer", format!("cannot be discovered: {m}")))?;
                None
            }
        };
        if config.refresh.0 < Duration::from_secs(1) {
            return Err(field("refresh", "must be at least 1s".to_owned()));
        }
        let algorithms = match &config.algorithms {
            None => None,
            Some(names) if names.is_empty() => {
                return Err(field("algorithms", "must not be empty".to_owned()))
            }
            Some(names) => Some(
                names
                    .iter()
                    .map(|name| {
                        Algorithm::from_name(name).ok_or_else(|| {
                            field(
                                "algorithms",
                                format!("`{name}` is not one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let ca = match &config.ca {
            None => None,
            Some(relative) => {
                let path = source.resolve(relative);
                let bytes = std::fs::read(&path)
                    .map_err(|e| field("ca", format!("cannot read {}: {e}", path.display())))?;
                UpstreamTls::build(Some(&path), false).map_err(|m| field("ca", m))?;
                Some((path, bytes))
            }
        };
        Ok(ProviderSettings {
            issuer: config.issuer.clone(),
            url,
            discovery: config.discovery,
            refresh: config.refresh.0,
            insecure_http: config.insecure_http,
            algorithms,
            ca,
        })
    }
}

/// `https://…`, or `http://…` to a loopback host (or anywhere with
/// `insecure_http: true`).
fn checked_url(text: &str, insecure_http: bool) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    let Some(host) = uri.host() else {
        return Err(format!("`{text}` has no host"));
    };
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if insecure_http || is_loopback_host(host) => Ok(uri),
        Some("http") => Err(format!(
            "`{text}` is plain http to a non-loopback host: keys could be replaced in \
             transit (use https, or `insecure_http: true` for a test rig)"
        )),
        _ => Err(format!("`{text}` is not an http(s) URL")),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One fetched key set: the usable keys, by kid.
#[derive(Debug, Default)]
pub struct JwkSet {
    keys: Vec<RemoteJwk>,
    by_kid: HashMap<String, usize>,
    /// Why keys of the document were skipped (for logs and the status page).
    pub skipped: Vec<String>,
}

impl JwkSet {
    /// Parses a JWK Set document. Unusable keys are skipped; a document with
    /// no usable key is an error (the last good set is kept). Keys whose JWK
    /// is unchanged from `previous` keep their verifiers.
    /// `source` names the set in each key's [`Verifier::source`].
    pub fn parse(
        body: &[u8],
        allowed: Option<&[Algorithm]>,
        previous: &JwkSet,
        source: &str,
    ) -> Result<JwkSet, String> {
        let document: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let Some(members) = document.get("keys").and_then(Value::as_array) else {
            return Err("not a JWK Set (no `keys` array)".to_owned());
        };
        let mut set = JwkSet::default();
        for (i, member) in members.iter().enumerate() {
            let mut key = match parse_remote_jwk(member, allowed, source) {
                Ok(key) => key,
                Err(why) => {
                    set.skipped.push(format!("keys[{i}]: {why}"));
                    continue;
                }
            };
            if let Some(kid) = &key.kid {
                if set.by_kid.contains_key(kid) {
                    set.skipped.push(format!(
                        "keys[{i}]: duplicate kid `{kid}` (the first is used)"
                    ));
                    continue;
                }
            }
            previous.keep_unchanged_verifiers(&mut key);
            if let Some(kid) = &key.kid {
                set.by_kid.insert(kid.clone(), set.keys.len());
            }
            set.keys.push(key);
        }
        if set.keys.is_empty() {
            let why = if set.skipped.is_empty() {
                "the set holds no keys".to_owned()
            } else {
                format!("no usable key ({})", set.skipped.join("; "))
            };
            return Err(why);
        }
        Ok(set)
    }

    fn keep_unchanged_verifiers(&self, key: &mut RemoteJwk) {
        let old = match &key.kid {
            Some(kid) => self.by_kid.get(kid).map(|&i| &self.keys[i]),
            None => self.keys.iter().find(|k| k.kid.is_none()),
        };
        let Some(old) = old else { return };
        for verifier in &mut key.verifiers {
            if let Some(same) = old
                .verifiers
                .iter()
                .find(|v| v.alg == verifier.alg && v.jwk == verifier.jwk)
            {
                *verifier = same.clone();
            }
        }
    }

    /// The key for a token: by kid (never tried in turn); without a kid only
    /// when the set holds exactly one key. Then the verifier for the token's
    /// algorithm, if the key may be used with it.
    pub fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<Verifier>, KeySelectionError> {
        let key = match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .map(|&i| &self.keys[i])
                .ok_or(KeySelectionError::UnknownKid)?,
            None if self.keys.len() == 1 => &self.keys[0],
            None => return Err(KeySelectionError::NoKidAndAmbiguous),
        };
        key.verifiers
            .iter()
            .find(|v| v.alg == alg)
            .cloned()
            .ok_or(KeySelectionError::AlgorithmMismatch)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Each usable key: its kid and the algorithms it serves.
    pub fn describe(&self) -> Vec<(Option<&str>, Vec<Algorithm>)> {
        self.keys
            .iter()
            .map(|k| {
                (
                    k.kid.as_deref(),
                    k.verifiers.iter().map(|v| v.alg).collect(),
                )
            })
            .collect()
    }
}

/// What the background task has done so far.
#[derive(Debug, Clone, Default)]
pub struct FetchStatus {
    /// Fetches begun and finished, numbered from 1.
    pub started: u64,
    pub completed: u64,
    pub successes: u64,
    pub last_attempt: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    /// The last failure's reason, cleared by a success.
    pub last_error: Option<String>,
}

/// Counters the background task increments (`jwtgate_jwks_refreshes_total`).
#[derive(Debug, Clone)]
pub struct RefreshCounters {
    pub success: IntCounter,
    pub failure: IntCounter,
}

/// A provider's keys and its refresh machinery. Snapshots hold it by `Arc`;
/// when the last one goes, its background task stops.
pub struct RemoteKeySet {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ProviderSettings,
    keys: ArcSwap<JwkSet>,
    status: watch::Sender<FetchStatus>,
    /// Wakes the background task early (a kid miss, or shutdown).
    wake: Notify,
    stopped: AtomicBool,
    started: AtomicBool,
    miss_gate: Mutex<MissGate>,
    /// `/readyz` waits for this provider's first success when set (providers
    /// of the config the process started with).
    required_for_readiness: bool,
    client: OnceLock<Result<FetchClient, String>>,
    /// The `jwks_uri` found by discovery, kept until a fetch fails.
    discovered: Mutex<Option<Uri>>,
}

#[derive(Debug, Default)]
struct MissGate {
    /// When the last kid-miss refresh was asked for.
    last_request: Option<Instant>,
    /// The fetch number that refresh waits for.
    awaiting: u64,
}

impl fmt::Debug for RemoteKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKeySet")
            .field("issuer", &self.inner.settings.issuer)
            .field("keys", &self.inner.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteKeySet {
    fn drop(&mut self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }
}

impl RemoteKeySet {
    fn new(settings: ProviderSettings, required_for_readiness: bool) -> RemoteKeySet {
        RemoteKeySet {
            inner: Arc::new(Inner {
                settings,
                keys: ArcSwap::from_pointee(JwkSet::default()),
                status: watch::Sender::new(FetchStatus::default()),
                wake: Notify::new(),
                stopped: AtomicBool::new(false),
                started: AtomicBool::new(false),
                miss_gate: Mutex::default(),
                required_for_readiness,
                client: OnceLock::new(),
                discovered: Mutex::new(None),
            }),
        }
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.inner.settings
    }

    pub fn issuer(&self) -> &str {
        &self.inner.settings.issuer
    }

    /// The current keys (empty until the first successful fetch).
    pub fn keys(&self) -> arc_swap::Guard<Arc<JwkSet>> {
        self.inner.keys.load()
    }

    pub fn status(&self) -> FetchStatus {
        self.inner.status.borrow().clone()
    }

    /// Whether `/readyz` may say ready as far as this provider goes.
    pub fn is_ready(&self) -> bool {
        !self.inner.required_for_readiness || self.inner.status.borrow().successes > 0
    }

    /// Starts the background task (once; later calls do nothing).
    pub fn start(&self, runtime: &tokio::runtime::Handle, counters: RefreshCounters) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        runtime.spawn(refresh_loop(self.inner.clone(), counters));
    }

    /// Waits until the first fetch has finished (either way), up to
    /// `timeout`. Returns whether it finished.
    pub async fn first_fetch_done(&self, timeout: Duration) -> bool {
        let mut status = self.inner.status.subscribe();
        let waited = tokio::time::timeout(timeout, status.wait_for(|s| s.completed >= 1)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Called when a token names a kid this set lacks. Returns `true` once a
    /// fetch that started after the call has finished (the caller then
    /// selects again), `false` when no refresh is made (cooldown, or the
    /// background task is not running).
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        if !self.inner.started.load(Ordering::SeqCst) || self.inner.stopped.load(Ordering::SeqCst) {
            return false;
        }
        let target = {
            let status = self.inner.status.borrow().clone();
            let mut gate = lock(&self.inner.miss_gate);
            if gate.awaiting > status.completed {
                // A kid-miss refresh is pending: wait for that one.
                gate.awaiting
            } else if gate
                .last_request
                .is_some_and(|at| at.elapsed() < KID_MISS_COOLDOWN)
            {
                return false;
            } else {
                gate.last_request = Some(Instant::now());
                // The next fetch to start: one in flight may predate the kid.
                gate.awaiting = status.started + 1;
                self.inner.wake.notify_one();
                gate.awaiting
            }
        };
        let mut status = self.inner.status.subscribe();
        let waited = tokio::time::timeout(
            FETCH_TIMEOUT + Duration::from_secs(1),
            status.wait_for(|s| s.completed >= target),
        )
        .await;
        matches!(waited, Ok(Ok(_)))
    }
}

/// The background task: fetch, then sleep until the next refresh (or a
/// kid-miss wake-up), until the provider is dropped.
async fn refresh_loop(inner: Arc<Inner>, counters: RefreshCounters) {
    let mut failures: u32 = 0;
    while !inner.stopped.load(Ordering::SeqCst) {
        inner.status.send_modify(|s| {
            s.started += 1;
            s.last_attempt = Some(SystemTime::now());
        });
        let result = match tokio::time::timeout(FETCH_TIMEOUT, inner.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
        };
        let issuer = &inner.settings.issuer;
        let next = match result {
            Ok((set, max_age)) => {
                failures = 0;
                counters.success.inc();
                log_new_set(issuer, &inner.keys.load(), &set);
                inner.keys.store(Arc::new(set));
                inner.status.send_modify(|s| {
                    s.completed += 1;
                    s.successes += 1;
                    s.last_success = Some(SystemTime::now());
                    s.last_error = None;
                });
                next_refresh(inner.settings.refresh, max_age)
            }
            Err(why) => {
                failures = failures.saturating_add(1);
                counters.failure.inc();
                *lock(&inner.discovered) = None;
                let held = inner.keys.load().len();
                tracing::warn!(
                    issuer = issuer.as_str(),
                    "JWKS fetch failed, still using the last good set ({held} keys): {why}"
                );
                inner.status.send_modify(|s| {
                    s.completed += 1;
                    s.last_error = Some(why);
                });
                backoff(failures, inner.settings.refresh)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = inner.wake.notified() => {}
        }
    }
}

fn log_new_set(issuer: &str, old: &JwkSet, new: &JwkSet) {
    let kids = |set: &JwkSet| -> Vec<String> {
        set.keys
            .iter()
            .map(|k| k.kid.clone().unwrap_or_else(|| "(no kid)".to_owned()))
            .collect()
    };
    let (before, after) = (kids(old), kids(new));
    if before == after && old.skipped == new.skipped {
        tracing::debug!(issuer, "JWKS refreshed, unchanged");
        return;
    }
    tracing::info!(
        issuer,
        "JWKS loaded: {} usable keys [{}]",
        after.len(),
        after.join(", ")
    );
    for skipped in &new.skipped {
        tracing::warn!(issuer, "JWKS key skipped: {skipped}");
    }
}

/// After a success: `refresh`, or sooner when the provider's `max-age` says
/// so (never sooner than [`MIN_MAX_AGE`]).
fn next_refresh(refresh: Duration, max_age: Option<Duration>) -> Duration {
    match max_age {
        Some(age) => age.max(MIN_MAX_AGE).min(refresh),
        None => refresh,
    }
}

/// After the `failures`th failure in a row: 1 s, 2 s, 4 s, … capped at
/// min(`refresh`, 10 s).
fn backoff(failures: u32, refresh: Duration) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(refresh.min(MAX_BACKOFF))
}

impl Inner {
    fn client(&self) -> Result<&FetchClient, String> {
        self.client
            .get_or_init(|| {
                // The same trust as an https upstream: `ca:` replaces the
                // default roots (Mozilla's and the platform's).
                let ca = self.settings.ca.as_ref().map(|(path, _)| path.as_path());
                let tls = UpstreamTls::build(ca, false)?;
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(FETCH_TIMEOUT));
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(ClientConfig::clone(&tls.config))
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                Ok(Client::builder(TokioExecutor::new()).build(connector))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    async fn fetch(&self) -> Result<(JwkSet, Option<Duration>), String> {
        let url = match &self.settings.url {
            Some(url) => url.clone(),
            None => self.discover().await?,
        };
        let (body, max_age) = self.get(&url).await?;
        let previous = self.keys.load();
        let source = format!("JWKS {url} of issuer {}", self.settings.issuer);
        let set = JwkSet::parse(
            &body,
            self.settings.algorithms.as_deref(),
            &previous,
            &source,
        )
        .map_err(|why| format!("{url}: {why}"))?;
        Ok((set, max_age))
    }

    /// `jwks_uri` from the issuer's OpenID Connect metadata, else its RFC 8414
    /// metadata; the document must name the configured issuer exactly
    /// (RFC 8414 §3.3), so a look-alike cannot hand out its own keys.
    async fn discover(&self) -> Result<Uri, String> {
        if let Some(url) = lock(&self.discovered).clone() {
            return Ok(url);
        }
        let issuer = &self.settings.issuer;
        let mut errors = Vec::new();
        for candidate in metadata_urls(issuer)? {
            match self.get(&candidate).await {
                Ok((body, _)) => {
                    let url = jwks_uri_from_metadata(&body, issuer, self.settings.insecure_http)
                        .map_err(|why| format!("{candidate}: {why}"))?;
                    *lock(&self.discovered) = Some(url.clone());
                    return Ok(url);
                }
                Err(why) => errors.push(why),
            }
        }
        Err(format!("discovery failed: {}", errors.join("; ")))
    }

    /// One GET: 200 only (redirects are not followed), at most
    /// [`MAX_DOCUMENT_BYTES`]; returns the body and `Cache-Control: max-age`.
    async fn get(&self, url: &Uri) -> Result<(Bytes, Option<Duration>), String> {
        let request = Request::get(url.clone())
            .header(ACCEPT, "application/json, application/jwk-set+json")
            .header(USER_AGENT, concat!("jwtgate/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let response = self
            .client()?
            .request(request)
            .await
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        if response.status() != StatusCode::OK {
            return Err(format!("{url}: status {}", response.status()));
        }
        let max_age = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{url}: body: {e}"))?
            .to_bytes();
        Ok((body, max_age))
    }
}

/// The error and its sources on one line (hyper's outer error alone says
/// only "client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// OpenID Connect Discovery §4 (`{issuer}/.well-known/openid-configuration`),
/// then RFC 8414 §3 (the well-known segment inserted before the issuer's
/// path).
fn metadata_urls(issuer: &str) -> Result<Vec<Uri>, String> {
    let trimmed = issuer.trim_end_matches('/');
    let oidc = format!("{trimmed}/.well-known/openid-configuration");
    let parsed: Uri = issuer
        .parse()
        .map_err(|e| format!("issuer is not a URL: {e}"))?;
    let authority = parsed.authority().ok_or("issuer has no host")?;
    let scheme = parsed.scheme_str().unwrap_or("https");
    let path = parsed.path().trim_end_matches('/');
    let rfc8414 = format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}");
    [oidc, rfc8414]
        .into_iter()
        .map(|u| u.parse().map_err(|e| format!("{u}: {e}")))
        .collect()
}

fn jwks_uri_from_metadata(body: &[u8], issuer: &str, insecure_http: bool) -> Result<Uri, String> {
    let metadata: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    match metadata.get("issuer").and_then(Value::as_str) {
        Some(named) if named == issuer => {}
        Some(named) => {
            return Err(format!(
                "metadata names issuer `{named}`, not the configured `{issuer}`"
            ))
        }
        None => return Err("metadata has no `issuer`".to_owned()),
    }
    let jwks_uri = metadata
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or("metadata has no `jwks_uri`")?;
    checked_url(jwks_uri, insecure_http)
}

/// `max-age` in seconds from a `Cache-Control` value; `no-cache` and
/// `no-store` read as 0 (then [`MIN_MAX_AGE`] applies).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        seconds
            .trim()
            .trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

/// Providers by settings, kept across reloads: an entry a reload leaves
/// unchanged keeps its keys, status and task. Only weak references, so a
/// provider no snapshot holds any more stops.
#[derive(Debug, Default)]
pub struct JwksRegistry {
    providers: Mutex<HashMap<ProviderSettings, Weak<RemoteKeySet>>>,
    /// Set once the first config is serving: providers created from then on
    /// (added by a reload) do not hold `/readyz` back, since every replica
    /// going unready at once for one new provider would be an outage.
    first_config_loaded: AtomicBool,
}

impl JwksRegistry {
    /// The provider for `settings`: the running one, or a new, not yet
    /// started one.
    pub fn get_or_create(&self, settings: ProviderSettings) -> Arc<RemoteKeySet> {
        let initial = !self.first_config_loaded.load(Ordering::SeqCst);
        let mut providers = lock(&self.providers);
        providers.retain(|_, provider| provider.strong_count() > 0);
        if let Some(provider) = providers.get(&settings).and_then(Weak::upgrade) {
            return provider;
        }
        let provider = Arc::new(RemoteKeySet::new(settings.clone(), initial));
        providers.insert(settings, Arc::downgrade(&provider));
        provider
    }

    /// Called when the first snapshot is in place.
    pub fn first_config_loaded(&self) {
        self.first_config_loaded.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_unless_loopback_or_allowed() {
        assert!(checked_url("https://idp.example.com/certs", false).is_ok());
        assert!(checked_url("http://127.0.0.1:9/certs", false).is_ok());
        assert!(checked_url("http://[::1]:9/certs", false).is_ok());
        assert!(checked_url("http://localhost/certs", false).is_ok());
        let refused = checked_url("http://idp.example.com/certs", false).unwrap_err();
        assert!(refused.contains("insecure_http"), "{refused}");
        assert!(checked_url("http://idp.example.com/certs", true).is_ok());
        assert!(checked_url("ftp://idp.example.com/certs", true).is_err());
        assert!(checked_url("/certs", true).is_err());
    }

    #[test]
    fn max_age_is_read_and_bounded() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        let refresh = Duration::from_secs(600);
        assert_eq!(next_refresh(refresh, None), refresh);
        assert_eq!(
            next_refresh(refresh, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(next_refresh(refresh, Some(Duration::ZERO)), MIN_MAX_AGE);
        assert_eq!(
            next_refresh(refresh, Some(Duration::from_secs(86_400))),
            refresh
        );
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds_or_refresh() {
        let refresh = Duration::from_secs(600);
        let secs = |n| backoff(n, refresh).as_secs();
        assert_eq!(
            [secs(1), secs(2), secs(3), secs(4), secs(5), secs(40)],
            [1, 2, 4, 8, 10, 10]
        );
        assert_eq!(backoff(3, Duration::from_secs(3)), Duration::from_secs(3));
    }

    #[test]
    fn metadata_urls_follow_oidc_then_rfc8414() {
        let urls = metadata_urls("https://idp.example.com/realms/acme").unwrap();
        assert_eq!(
            urls[0].to_string(),
            "https://idp.example.com/realms/acme/.well-known/openid-configuration"
        );
        assert_eq!(
            urls[1].to_string(),
            "https://idp.example.com/.well-known/oauth-authorization-server/realms/acme"
        );
    }

    #[test]
    fn metadata_must_name_the_configured_issuer() {
        let good = br#"{"issuer":"https://idp","jwks_uri":"https://idp/certs"}"#;
        assert_eq!(
            jwks_uri_from_metadata(good, "https://idp", false).unwrap(),
            "https://idp/certs"
        );
        let other = br#"{"issuer":"https://evil","jwks_uri":"https://evil/certs"}"#;
        assert!(jwks_uri_from_metadata(other, "https://idp", false).is_err());
        let plain = br#"{"issuer":"https://idp","jwks_uri":"http://idp/certs"}"#;
        assert!(jwks_uri_from_metadata(plain, "https://idp", false).is_err());
    }

    fn es_jwk(kid: &str) -> Value {
        let key = crate::keys::local::generate(kid, Algorithm::Es256).unwrap();
        key.verifier.jwk.clone()
    }

    #[test]
    fn a_set_skips_unusable_keys_and_selects_by_kid_then_alg() {
        let mut enc = es_jwk("enc");
        enc["use"] = serde_json::json!("enc");
        let good = es_jwk("a");
        let duplicate = es_jwk("a");
        let body = serde_json::json!({"keys": [enc, good, duplicate, es_jwk("b")]});
        let set = JwkSet::parse(
            body.to_string().as_bytes(),
            None,
            &JwkSet::default(),
            "test",
        )
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.skipped.len(), 2, "{:?}", set.skipped);
        assert!(set.skipped[0].contains("keys[0]") && set.skipped[1].contains("duplicate"));
        assert_eq!(set.select(Some("a"), Algorithm::Es256).unwrap().jwk, good);
        assert_eq!(
            set.select(Some("a"), Algorithm::Rs256).unwrap_err(),
            KeySelectionError::AlgorithmMismatch
        );
        assert_eq!(
            set.select(Some("enc"), Algorithm::Es256).unwrap_err(),
            KeySelectionError::UnknownKid
        );
        assert_eq!(
            set.select(None, Algorithm::Es256).unwrap_err(),
            KeySelectionError::NoKidAndAmbiguous
        );
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error_and_unchanged_keys_keep_their_verifier() {
        let empty = JwkSet::parse(br#"{"keys":[]}"#, None, &JwkSet::default(), "test");
        assert!(empty.unwrap_err().contains("no keys"));
        assert!(JwkSet::parse(b"[]", None, &JwkSet::default(), "test").is_err());
        assert!(JwkSet::parse(b"<html>", None, &JwkSet::default(), "test").is_err());

        let (a, b) = (es_jwk("a"), es_jwk("b"));
        let first = serde_json::json!({"keys": [a.clone()]}).to_string();
        let first = JwkSet::parse(first.as_bytes(), None, &JwkSet::default(), "test").unwrap();
        let second = serde_json::json!({"keys": [a, b]}).to_string();
        let second = JwkSet::parse(second.as_bytes(), None, &first, "test").unwrap();
        let before = first.select(Some("a"), Algorithm::Es256).unwrap();
        let after = second.select(Some("a"), Algorithm::Es256).unwrap();
        assert!(Arc::ptr_eq(&before, &after), "same JWK, same verifier");
        // A kid reused for a different key gets a new verifier.
        let reused = serde_json::json!({"keys": [es_jwk("a")]}).to_string();
        let third = JwkSet::parse(reused.as_bytes(), None, &second, "test").unwrap();
        let replaced = third.select(Some("a"), Algorithm::Es256).unwrap();
        assert!(!Arc::ptr_eq(&after, &replaced));
        // Without a kid, only when the set holds exactly one key.
        assert!(third.select(None, Algorithm::Es256).is_ok());
    }
}
