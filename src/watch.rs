//! The config file watcher: turns file-system events in the directories of
//! the config and of every file it names into debounced
//! [`Runtime::reload`]s.
//!
//! Directories are watched, not files: editors replace files by rename,
//! Kubernetes swaps a `..data` symlink to a new directory and deletes the
//! old one, and a watch on the old file would see none of that. Only events
//! that name a watched file, a watched directory or a Kubernetes `..`-entry
//! count (a log file written beside the config must not cause rescans), and
//! each leads to a rescan whose content hash decides whether anything
//! changed (a `touch` costs a hash and nothing more).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::lock::lock;
use crate::reload::{SourceScan, Trigger};
use crate::runtime::Runtime;

/// A burst of events (an editor's save, a `..data` swap) is one reload: wait
/// until the files have been quiet this long…
const QUIET: Duration = Duration::from_millis(150);
/// …but no longer than this after the first event, so a file rewritten in a
/// loop still gets reloaded.
const MAX_SETTLE: Duration = Duration::from_secs(1);
/// When a directory cannot be watched (it does not exist yet, or the
/// system's watch limit is reached), rescan this often instead.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Watches while alive; dropping it stops the watching.
pub struct ConfigWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the runtime's config; `None` for the embedded demo
/// (there is no file to watch).
pub fn spawn(runtime: Arc<Runtime>) -> Option<ConfigWatcher> {
    runtime.config_path()?;
    Some(ConfigWatcher {
        task: tokio::spawn(watch_loop(runtime)),
    })
}

async fn watch_loop(runtime: Arc<Runtime>) {
    let wake = Arc::new(Notify::new());
    let first = runtime.last_scan();
    let relevant = Arc::new(Mutex::new(RelevantPaths::from(&first)));
    let mut watcher = match new_watcher(wake.clone(), relevant.clone()) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(
                "cannot watch the config files ({e}); checking them every {}s instead",
                POLL_INTERVAL.as_secs()
            );
            None
        }
    };
    let mut watched = WatchedDirs::default();
    let mut all_watched = watched.sync(&mut watcher, &first.dirs).complete;
    // A change made between the first load and the watches being in place
    // would otherwise wait for the next event: rescan once now.
    wake.notify_one();
    loop {
        if all_watched {
            wake.notified().await;
        } else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
        settle(&wake).await;
        let reloading = runtime.clone();
        let Ok((_, scan)) =
            tokio::task::spawn_blocking(move || reloading.reload_and_scan(Trigger::FileChange))
                .await
        else {
            continue;
        };
        *lock(&relevant) = RelevantPaths::from(&scan);
        let synced = watched.sync(&mut watcher, &scan.dirs);
        all_watched = synced.complete;
        if synced.moved {
            // A directory now resolves elsewhere (its symlink was swapped
            // after our scan): rescan through the new watch.
            wake.notify_one();
        }
    }
}

/// Waits until no event has arrived for [`QUIET`], or [`MAX_SETTLE`] passed.
async fn settle(wake: &Notify) {
    let give_up = Instant::now() + MAX_SETTLE;
    loop {
        let quiet_until = (Instant::now() + QUIET).min(give_up);
        tokio::select! {
            _ = wake.notified() => {
                if Instant::now() >= give_up {
                    return;
                }
            }
            _ = tokio::time::sleep_until(quiet_until) => return,
        }
    }
}

fn new_watcher(
    wake: Arc<Notify>,
    relevant: Arc<Mutex<RelevantPaths>>,
) -> notify::Result<RecommendedWatcher> {
    notify::recommended_watcher(move |event: notify::Result<Event>| {
        // An error (say, an event queue overflow) may hide a change: rescan.
        let matters = match &event {
            Ok(event) => is_a_change(event) && lock(&relevant).any_in(&event.paths),
            Err(_) => true,
        };
        if matters {
            wake.notify_one();
        }
    })
}

/// Reads (ours included) change nothing; everything else may.
fn is_a_change(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The paths whose events lead to a rescan.
#[derive(Debug, Default)]
struct RelevantPaths(HashSet<PathBuf>);

impl From<&SourceScan> for RelevantPaths {
    fn from(scan: &SourceScan) -> Self {
        RelevantPaths(scan.files.iter().chain(&scan.dirs).cloned().collect())
    }
}

impl RelevantPaths {
    /// An event without paths may be about anything; Kubernetes' atomic
    /// writer moves `..data` and `..<timestamp>` entries, never the files.
    fn any_in(&self, paths: &[PathBuf]) -> bool {
        paths.is_empty()
            || paths.iter().any(|path| {
                self.0.contains(path) || path.file_name().is_some_and(is_kubernetes_entry)
            })
    }
}

fn is_kubernetes_entry(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b"..")
}

/// The directories being watched, each with what it was when the watch was
/// placed: a directory reached through a swapped symlink, or deleted and
/// made again, is a different directory and must be watched again.
#[derive(Default)]
struct WatchedDirs(HashMap<PathBuf, DirIdentity>);

/// Where a directory path resolves to and, on Unix, its inode.
#[derive(Debug, PartialEq, Eq)]
struct DirIdentity {
    resolved: PathBuf,
    inode: u64,
}

impl DirIdentity {
    fn of(dir: &std::path::Path) -> std::io::Result<DirIdentity> {
        let resolved = std::fs::canonicalize(dir)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&resolved)?);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(DirIdentity { resolved, inode })
    }
}

struct Synced {
    /// Every wanted directory is watched.
    complete: bool,
    /// A directory already watched now resolves somewhere else.
    moved: bool,
}

impl WatchedDirs {
    fn sync(&mut self, watcher: &mut Option<RecommendedWatcher>, wanted: &[PathBuf]) -> Synced {
        let Some(watcher) = watcher else {
            return Synced {
                complete: false,
                moved: false,
            };
        };
        let mut synced = Synced {
            complete: true,
            moved: false,
        };
        self.0.retain(|dir, _| {
            let keep = wanted.contains(dir);
            if !keep {
                let _ = watcher.unwatch(dir);
            }
            keep
        });
        for dir in wanted {
            let Ok(identity) = DirIdentity::of(dir) else {
                synced.complete = false;
                self.0.remove(dir);
                continue;
            };
            match self.0.get(dir) {
                Some(watched) if *watched == identity => continue,
                Some(_) => {
                    synced.moved = true;
                    let _ = watcher.unwatch(dir);
                }
                None => {}
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.0.insert(dir.clone(), identity);
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot watch {} ({e}); checking it every {}s instead",
                        dir.display(),
                        POLL_INTERVAL.as_secs()
                    );
                    self.0.remove(dir);
                    synced.complete = false;
                }
            }
        }
        synced
    }
}

impl Runtime {
    /// What the last load or reload attempt read.
    fn last_scan(&self) -> SourceScan {
        lock(&self.last_scan).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_about_watched_files_or_kubernetes_entries_matter() {
        let relevant = RelevantPaths(HashSet::from([
            PathBuf::from("/etc/gw"),
            PathBuf::from("/etc/gw/gw.yaml"),
            PathBuf::from("/etc/gw/keys/a.pem"),
        ]));
        let matters = |paths: &[&str]| {
            let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
            relevant.any_in(&paths)
        };
        assert!(matters(&["/etc/gw/gw.yaml"]));
        assert!(
            matters(&["/etc/gw/gw.yaml.tmp", "/etc/gw/gw.yaml"]),
            "rename over"
        );
        assert!(matters(&["/etc/gw/keys/a.pem"]));
        assert!(matters(&["/etc/gw"]), "the directory itself went away");
        assert!(matters(&["/etc/gw/..data"]));
        assert!(matters(&["/etc/gw/..2026_12_04_17_00_00.1"]));
        assert!(matters(&[]), "an event without paths");
        assert!(!matters(&["/etc/gw/gateway.log"]));
        assert!(!matters(&["/etc/gw/gw.yaml.swp"]));
        assert!(!matters(&["/etc/gw/keys/b.pem"]));
    }
}
