//! `Runtime`: the current [`Snapshot`] behind an `ArcSwap`, and the state
//! that outlives any one snapshot (generated keys, the upstream client).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{ConfigError, ConfigSource};
use crate::forward::{self, UpstreamClient};
use crate::keys::{local, Algorithm, LocalKey};
use crate::snapshot::Snapshot;

/// `generate: true` keys, made once per process and reused by every snapshot
/// that names the same kid and algorithm (so a reload never invalidates the
/// tokens a demo gateway has issued).
#[derive(Debug, Default)]
pub struct GeneratedKeys(Mutex<HashMap<(String, Algorithm), Arc<LocalKey>>>);

impl GeneratedKeys {
    pub fn get_or_generate(&self, kid: &str, alg: Algorithm) -> Result<Arc<LocalKey>, String> {
        let mut keys = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
    snapshot: ArcSwap<Snapshot>,
    pub source: ConfigSource,
    pub generated: GeneratedKeys,
    pub client: UpstreamClient,
}

impl Runtime {
    /// Builds the first snapshot; fails with the config error.
    pub fn load(source: ConfigSource) -> Result<Arc<Runtime>, ConfigError> {
        let generated = GeneratedKeys::default();
        let snapshot = Snapshot::build(&source, &generated)?;
        Ok(Arc::new(Runtime {
            snapshot: ArcSwap::from_pointee(snapshot),
            source,
            generated,
            client: forward::client(),
        }))
    }

    /// The current snapshot. Each request loads it once and keeps it to the
    /// end, so a swap never changes the rules under a request in flight.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
