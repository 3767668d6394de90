//! `Runtime`: the current [`Snapshot`] behind an `ArcSwap`, and the state
//! that outlives any one snapshot (generated keys, the verified-token cache,
//! reload counters). Reloading is in [`crate::reload`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::ConfigSource;
use crate::keys::remote::JwksRegistry;
use crate::keys::{local, Algorithm, LocalKey};
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::reload::{self, SourceScan};
use crate::snapshot::Snapshot;
use crate::token::throttle::Throttle;
use crate::token_cache::TokenCache;

/// `generate: true` keys, made once per process and reused by every snapshot
/// that names the same kid and algorithm (so a reload never invalidates the
/// tokens a demo gateway has issued).
#[derive(Debug, Default)]
pub struct GeneratedKeys(Mutex<HashMap<(String, Algorithm), Arc<LocalKey>>>);

impl GeneratedKeys {
    pub fn get_or_generate(&self, kid: &str, alg: Algorithm) -> Result<Arc<LocalKey>, String> {
        let mut keys = lock(&self.0);
        if let Some(key) = keys.get(&(kid.to_owned(), alg)) {
            return Ok(key.clone());
        }
        let key = Arc::new(local::generate(kid, alg)?);
        keys.insert((kid.to_owned(), alg), key.clone());
        Ok(key)
    }
}

/// Shared by every connection for the life of the process.
pub struct Runtime {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// The config file as the user named it; `None` for the embedded demo.
    pub(crate) config_path: Option<PathBuf>,
    /// The `listen` and `admin` the process started with: changing them
    /// needs a restart, which a reload says in its log line.
    pub(crate) started_listen: SocketAddr,
    pub(crate) started_admin: SocketAddr,
    /// Whether the public listener started with `tls:`; adding or removing
    /// it needs a restart too.
    pub(crate) started_tls: bool,
    pub generated: GeneratedKeys,
    /// `jwks:` providers, kept across reloads while their entry is unchanged.
    pub jwks: JwksRegistry,
    /// Where providers' background fetches run; set when serving starts.
    background: OnceLock<tokio::runtime::Handle>,
    /// Held for the whole of a reload (so a SIGHUP and a file event never
    /// build at once); holds what the last attempt read, so a file event
    /// that changed no content is a no-op.
    pub(crate) last_scan: Mutex<SourceScan>,
    /// Every metric; reload counts included.
    pub metrics: Metrics,
    /// Failed token-endpoint authentications, kept across reloads.
    pub throttle: Throttle,
    /// Tokens whose signature was checked; emptied by every reload.
    pub token_cache: TokenCache,
    /// Set when shutdown starts: `/readyz` answers 503 from then on.
    draining: AtomicBool,
    /// The last load or reload attempt (the status page shows it).
    pub(crate) last_reload: Mutex<reload::LastReload>,
}

impl Runtime {
    /// Builds the first snapshot; fails with the config error.
    pub fn load(source: ConfigSource) -> Result<Arc<Runtime>, String> {
        // Scanned before building: if a file changes in between, the next
        // event sees a different hash and reloads, so nothing is missed.
        let scan = reload::scan(source.path.as_deref());
        let generated = GeneratedKeys::default();
        let jwks = JwksRegistry::default();
        let snapshot = Snapshot::build(&source, &generated, &jwks).map_err(|e| e.to_string())?;
        jwks.first_config_loaded();
        let metrics = Metrics::new().map_err(|e| format!("cannot register metrics: {e}"))?;
        metrics.add_routes(&snapshot.routes);
        metrics.last_reload_success.set(reload::unix_now_secs());
        let token_cache = TokenCache::new(&snapshot.token_cache);
        let started_tls = snapshot.tls.is_some();
        crate::tls::warn_if_cleartext_token_endpoint(&snapshot, started_tls);
        Ok(Arc::new(Runtime {
            started_listen: snapshot.listen,
            started_admin: snapshot.admin,
            started_tls,
            snapshot: ArcSwap::from_pointee(snapshot),
            config_path: source.path,
            generated,
            jwks,
            background: OnceLock::new(),
            last_scan: Mutex::new(scan),
            metrics,
            throttle: Throttle::default(),
            token_cache,
            draining: AtomicBool::new(false),
            last_reload: Mutex::new(reload::LastReload {
                result: "initial",
                at_unix_secs: reload::unix_now_secs(),
                error: None,
            }),
        }))
    }

    /// The current snapshot. Each request loads it once and keeps it to the
    /// end, so a swap never changes the rules under a request in flight.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// From now on `/readyz` answers 503 (shutdown has started).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the gateway should get new traffic: a config and its keys are
    /// loaded (a `Runtime` always has them; `jwks:` sets of the starting
    /// config once fetched) and it is not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.snapshot().keys.remote.values().all(|p| p.is_ready())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts background work (remote key set refreshes) on `handle`, and
    /// waits up to `first_fetch_wait` for each provider's first fetch, so a
    /// gateway starts serving with its key sets when the providers answer.
    pub async fn start_background(
        &self,
        handle: tokio::runtime::Handle,
        first_fetch_wait: Duration,
    ) {
        let _ = self.background.set(handle);
        self.start_key_set_refreshes();
        let snapshot = self.snapshot();
        for provider in snapshot.keys.remote.values() {
            if !provider.first_fetch_done(first_fetch_wait).await {
                tracing::warn!(
                    issuer = provider.issuer(),
                    "serving before the JWKS provider answered; its tokens are refused \
                     and /readyz says 503 until it does"
                );
            }
        }
    }

    /// Starts the refresh task of every provider of the current snapshot
    /// not yet running (after a reload added one).
    pub(crate) fn start_key_set_refreshes(&self) {
        let Some(handle) = self.background.get() else {
            return;
        };
        for provider in self.snapshot().keys.remote.values() {
            provider.start(handle, self.metrics.jwks_counters(provider.issuer()));
        }
    }

    /// The config file being served, `None` for the embedded demo.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }
}
