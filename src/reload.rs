//! Hot reload (SPEC §5): build a whole new [`Snapshot`] off to the side and
//! swap it in only when every part of it is valid.
//!
//! Two triggers call [`Runtime::reload`]: `SIGHUP` (always a full reload,
//! always counted) and the file watcher ([`crate::watch`]), whose events are
//! a no-op when the content of the config and every file it names hashes the
//! same as at the last attempt (a `touch`, an editor saving unchanged text,
//! the watcher seeing its own reads).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;

use crate::config::{ConfigError, ConfigSource};
use crate::lock::lock;
use crate::runtime::Runtime;
use crate::snapshot::Snapshot;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `SIGHUP`: reload even if nothing changed.
    Signal,
    /// A watched file or directory changed: reload only if content changed.
    FileChange,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// The result of one [`Runtime::reload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new snapshot is serving.
    Applied,
    /// A file event, but the content was the same as at the last attempt.
    Unchanged,
    /// The running snapshot is kept.
    Failed(ConfigError),
}

/// A copy of the reload counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReloadStats {
    pub success: u64,
    pub failure: u64,
    pub last_success_unix_secs: f64,
}

/// The last load or reload attempt, for the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct LastReload {
    /// `initial` (the first load), `success` or `failure`.
    pub result: &'static str,
    pub at_unix_secs: f64,
    /// Why a failed reload failed.
    pub error: Option<String>,
}

/// What one pass over the config and the files it names found: a hash of
/// all their bytes, and where to watch for changes to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceScan {
    fingerprint: Vec<u8>,
    /// The directories to watch: each file's directory as named, and the
    /// directory it resolves to through symlinks (the config's first).
    pub dirs: Vec<PathBuf>,
    /// The paths whose events matter: each file as named (joined to its
    /// watched directory, the way watch events name it) and as resolved.
    pub files: Vec<PathBuf>,
}

impl SourceScan {
    /// Hashes one file's bytes (or why they could not be read) and notes
    /// where to watch it; returns the bytes.
    fn add(&mut self, hash: &mut digest::Context, file: &Path) -> Option<Vec<u8>> {
        let bytes = std::fs::read(file);
        hash.update(file.as_os_str().as_encoded_bytes());
        match &bytes {
            Ok(content) => {
                hash.update(&[1]);
                hash.update(&(content.len() as u64).to_be_bytes());
                hash.update(content);
            }
            Err(e) => {
                hash.update(&[0]);
                hash.update(e.kind().to_string().as_bytes());
            }
        }
        let named_dir = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        if let Some(name) = file.file_name() {
            self.note(named_dir.clone(), named_dir.join(name));
        }
        // A file reached through a symlink into another directory changes
        // there: watch that directory too.
        if let Ok(resolved) = std::fs::canonicalize(file) {
            if let Some(resolved_dir) = resolved.parent() {
                self.note(resolved_dir.to_owned(), resolved.clone());
            }
        }
        bytes.ok()
    }

    fn note(&mut self, dir: PathBuf, file: PathBuf) {
        if !self.dirs.contains(&dir) {
            self.dirs.push(dir);
        }
        if !self.files.contains(&file) {
            self.files.push(file);
        }
    }
}

/// Hashes the config file at `path` and every file it names (a missing or
/// unreadable file hashes as such), and lists where to watch them. Never
/// fails: a config that does not parse is hashed alone, and the build that
/// follows reports what is wrong with it.
pub fn scan(path: Option<&Path>) -> SourceScan {
    let mut scan = SourceScan::default();
    let Some(path) = path else {
        return scan;
    };
    let mut hash = digest::Context::new(&digest::SHA256);
    let text = scan
        .add(&mut hash, path)
        .and_then(|bytes| String::from_utf8(bytes).ok());
    if let Some(text) = text {
        let source = ConfigSource {
            path: Some(path.to_owned()),
            text,
        };
        if let Ok(config) = source.parse() {
            for named in config.named_files() {
                scan.add(&mut hash, &source.resolve(named));
            }
        }
    }
    scan.fingerprint = hash.finish().as_ref().to_vec();
    scan
}

impl Runtime {
    /// Reloads the config: parse, validate, read and parse every key,
    /// compile every route; store the new snapshot only if all of it
    /// worked. Logs one line either way. Blocking (file reads, key parsing):
    /// call it from `spawn_blocking` in async code.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        self.reload_and_scan(trigger).0
    }

    /// [`Runtime::reload`], also returning what the watcher should watch
    /// from now on.
    pub(crate) fn reload_and_scan(&self, trigger: Trigger) -> (Outcome, SourceScan) {
        let mut last = lock(&self.last_scan);
        let scan = scan(self.config_path.as_deref());
        if trigger == Trigger::FileChange && scan == *last {
            return (Outcome::Unchanged, scan);
        }
        *last = scan.clone();
        let source = match &self.config_path {
            Some(path) => ConfigSource::read(path),
            None => Ok(ConfigSource::demo()),
        };
        let built = source.and_then(|source| Snapshot::build(&source, &self.generated, &self.jwks));
        let outcome = match built {
            Ok(snapshot) => {
                self.warn_about_restart_only_changes(&snapshot);
                if self.snapshot().token_endpoint.is_none() {
                    crate::tls::warn_if_cleartext_token_endpoint(&snapshot, self.started_tls);
                }
                let file = snapshot.source.clone();
                self.metrics.add_routes(&snapshot.routes);
                let cache_config = snapshot.token_cache;
                self.snapshot.store(Arc::new(snapshot));
                self.start_key_set_refreshes();
                // After the swap: an entry a request on the old snapshot adds
                // later is still refused unless its key is in the new set.
                self.token_cache.reset(&cache_config);
                self.metrics.reload_successes.inc();
                self.metrics.last_reload_success.set(unix_now_secs());
                *lock(&self.last_reload) = LastReload {
                    result: "success",
                    at_unix_secs: unix_now_secs(),
                    error: None,
                };
                tracing::info!(trigger = trigger.as_str(), "config reloaded from {file}");
                Outcome::Applied
            }
            Err(error) => {
                self.metrics.reload_failures.inc();
                *lock(&self.last_reload) = LastReload {
                    result: "failure",
                    at_unix_secs: unix_now_secs(),
                    error: Some(error.to_string()),
                };
                tracing::error!(
                    trigger = trigger.as_str(),
                    "config reload failed, still serving the previous config: {error}"
                );
                Outcome::Failed(error)
            }
        };
        (outcome, scan)
    }

    /// The last load or reload attempt.
    pub fn last_reload(&self) -> LastReload {
        lock(&self.last_reload).clone()
    }

    /// The reload counts so far.
    pub fn reload_stats(&self) -> ReloadStats {
        ReloadStats {
            success: self.metrics.reload_successes.get(),
            failure: self.metrics.reload_failures.get(),
            last_success_unix_secs: self.metrics.last_reload_success.get(),
        }
    }

    fn warn_about_restart_only_changes(&self, new: &Snapshot) {
        let changes = [
            ("listen", self.started_listen, new.listen),
            ("admin", self.started_admin, new.admin),
        ];
        for (field, running, wanted) in changes {
            if running != wanted {
                tracing::warn!(
                    "{}: `{field}` changed from {running} to {wanted}: restart to apply it \
                     (the rest of the reload applies)",
                    new.source
                );
            }
        }
        if self.started_tls != new.tls.is_some() {
            let (running, wanted) = match self.started_tls {
                true => ("HTTPS", "plain HTTP"),
                false => ("plain HTTP", "HTTPS"),
            };
            tracing::warn!(
                "{}: `tls` changed the listener from {running} to {wanted}: restart to apply it \
                 (the rest of the reload applies; the listener keeps serving {running})",
                new.source
            );
        }
    }
}

/// Now, as fractional Unix seconds (the Prometheus timestamp convention).
pub(crate) fn unix_now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_hashes_the_config_and_every_file_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gw.yaml");
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(
            &config,
            "keys:\n  - {kid: a, alg: ES256, public_key: keys/a.pub.pem}\n",
        )
        .unwrap();
        let missing = scan(Some(&config));
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let mut dirs = vec![dir.path().to_owned(), dir.path().join("keys")];
        if real != dir.path() {
            dirs.insert(1, real.clone());
        }
        assert_eq!(missing.dirs, dirs);
        assert!(missing.files.contains(&dir.path().join("keys/a.pub.pem")));

        std::fs::write(dir.path().join("keys/a.pub.pem"), "one").unwrap();
        let one = scan(Some(&config));
        assert_ne!(one, missing, "a named file appearing changes the hash");
        assert_eq!(scan(Some(&config)), one, "same bytes, same hash");

        std::fs::write(dir.path().join("keys/a.pub.pem"), "two").unwrap();
        assert_ne!(scan(Some(&config)), one, "a named file's bytes count");
        std::fs::write(dir.path().join("unrelated"), "x").unwrap();
        std::fs::write(dir.path().join("keys/a.pub.pem"), "one").unwrap();
        assert_eq!(scan(Some(&config)), one, "unrelated files do not count");
    }

    #[test]
    fn an_unparsable_config_is_hashed_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gw.yaml");
        std::fs::write(&config, "keys: [").unwrap();
        let broken = scan(Some(&config));
        assert_eq!(broken.dirs[0], dir.path().to_owned());
        assert_eq!(broken.files[0], config);
        std::fs::write(&config, "keys: []").unwrap();
        assert_ne!(scan(Some(&config)), broken);
    }
}
