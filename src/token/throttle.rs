//! Throttling of failed client authentications at the token endpoint
//! (SPEC §3): per (client id, source address) and per source address, in
//! fixed windows that start at the first failure.
//!
//! A key is throttled once its window holds the configured number of
//! failures; from then until the window ends every attempt for it is
//! answered `429 slow_down` with `Retry-After`, before any hashing. Because
//! the per-client key includes the address, correct credentials from an
//! address that has not failed are never refused: nobody can lock a client
//! out from elsewhere. The state lives in the `Runtime` (it survives
//! reloads); each table is bounded, so a flood of random ids or addresses
//! cannot grow memory without limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;
use crate::lock::lock;

/// The most keys a table tracks. Past it, expired windows are dropped, then
/// the oldest windows (see [`Windows::make_room`]).
const MAX_TRACKED: usize = 65_536;

/// The configured limits (part of a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRules {
    pub per_client: u32,
    pub per_address: u32,
    pub window: Duration,
}

impl ThrottleRules {
    /// `Err((field, message))` relative to `token_endpoint.throttle`.
    pub fn build(config: &ThrottleConfig) -> Result<ThrottleRules, (String, String)> {
        if config.per_client == 0 {
            return Err(("per_client".into(), "must be at least 1".into()));
        }
        if config.per_address == 0 {
            return Err(("per_address".into(), "must be at least 1".into()));
        }
        if config.window.0 < Duration::from_secs(1) {
            return Err(("window".into(), "must be at least 1s".into()));
        }
        Ok(ThrottleRules {
            per_client: config.per_client,
            per_address: config.per_address,
            window: config.window.0,
        })
    }
}

/// Failure counts, shared by every snapshot.
#[derive(Debug, Default)]
pub struct Throttle {
    by_client: Mutex<Windows<(String, IpAddr)>>,
    by_address: Mutex<Windows<IpAddr>>,
}

impl Throttle {
    /// `Err(seconds)` to wait when `client_id` from `addr` is throttled.
    pub fn check(
        &self,
        rules: &ThrottleRules,
        client_id: &str,
        addr: IpAddr,
        now: Instant,
    ) -> Result<(), u64> {
        let by_address =
            lock(&self.by_address).retry_after(&addr, rules.per_address, rules.window, now);
        let by_client = lock(&self.by_client).retry_after(
            &(client_id.to_owned(), addr),
            rules.per_client,
            rules.window,
            now,
        );
        match by_address.max(by_client) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Counts a failed authentication (`client_id` is `None` when the
    /// presented credentials were too malformed to name a client).
    pub fn failed(
        &self,
        rules: &ThrottleRules,
        client_id: Option<&str>,
        addr: IpAddr,
        now: Instant,
    ) {
        if lock(&self.by_address).add_failure(addr, rules.window, now) == rules.per_address {
            tracing::info!(%addr, "token endpoint: address throttled after {} failed authentications", rules.per_address);
        }
        if let Some(id) = client_id {
            let key = (id.to_owned(), addr);
            if lock(&self.by_client).add_failure(key, rules.window, now) == rules.per_client {
                tracing::info!(%addr, client_id = id, "token endpoint: client throttled from this address after {} failed authentications", rules.per_client);
            }
        }
    }

    /// A successful authentication forgives that client's failures from that
    /// address (typos); the address's own count stays, so an attacker
    /// cannot reset it with a valid client of their own.
    pub fn succeeded(&self, client_id: &str, addr: IpAddr) {
        lock(&self.by_client).remove(&(client_id.to_owned(), addr));
    }

    /// Keys tracked, for tests of the bound.
    pub fn tracked(&self) -> (usize, usize) {
        (lock(&self.by_client).len(), lock(&self.by_address).len())
    }
}

/// One fixed window per key.
#[derive(Debug)]
struct Windows<K> {
    entries: HashMap<K, Window>,
}

impl<K> Default for Windows<K> {
    fn default() -> Self {
        Windows {
            entries: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    ends: Instant,
    failures: u32,
}

impl<K: Hash + Eq + Clone> Windows<K> {
    /// Seconds until `key` may try again, if it is over `limit`.
    fn retry_after(&self, key: &K, limit: u32, window: Duration, now: Instant) -> Option<u64> {
        let entry = self.entries.get(key)?;
        if entry.ends <= now || entry.failures < limit {
            return None;
        }
        let wait = entry.ends.saturating_duration_since(now);
        // Round up, and never past the window itself.
        Some(
            wait.as_secs_f64()
                .ceil()
                .clamp(1.0, window.as_secs_f64().ceil()) as u64,
        )
    }

    /// Adds a failure and returns the count in the current window.
    fn add_failure(&mut self, key: K, window: Duration, now: Instant) -> u32 {
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_TRACKED {
            self.make_room(now);
        }
        let entry = self.entries.entry(key).or_insert(Window {
            ends: now + window,
            failures: 0,
        });
        if entry.ends <= now {
            *entry = Window {
                ends: now + window,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.failures
    }

    fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Makes room for new keys when the table is full: drops expired
    /// windows and, if that leaves it more than 7/8 full, the windows that
    /// end first down to 7/8. Freeing a batch keeps the cost amortised: a
    /// flood of new keys pays one pass per [`MAX_TRACKED`]/8 inserts, not
    /// one per insert.
    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, w| w.ends > now);
        let keep = MAX_TRACKED - MAX_TRACKED / 8;
        if self.entries.len() <= keep {
            return;
        }
        let mut ends: Vec<Instant> = self.entries.values().map(|w| w.ends).collect();
        let drop = ends.len() - keep;
        let (_, cutoff, _) = ends.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        self.entries.retain(|_, w| w.ends > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: ThrottleRules = ThrottleRules {
        per_client: 3,
        per_address: 5,
        window: Duration::from_secs(60),
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_is_throttled_from_one_address_only_until_the_window_ends() {
        let throttle = Throttle::default();
        let start = Instant::now();
        let (attacker, elsewhere) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for _ in 0..3 {
            assert_eq!(throttle.check(&RULES, "c1", attacker, start), Ok(()));
            throttle.failed(&RULES, Some("c1"), attacker, start);
        }
        assert_eq!(throttle.check(&RULES, "c1", attacker, start), Err(60));
        let later = start + Duration::from_millis(59_500);
        assert_eq!(throttle.check(&RULES, "c1", attacker, later), Err(1));
        // The same client from another address, another client from this
        // address: not throttled.
        assert_eq!(throttle.check(&RULES, "c1", elsewhere, start), Ok(()));
        assert_eq!(throttle.check(&RULES, "c2", attacker, start), Ok(()));
        // The window ends: allowed again.
        let after = start + Duration::from_secs(60);
        assert_eq!(throttle.check(&RULES, "c1", attacker, after), Ok(()));
    }

    #[test]
    fn an_address_is_throttled_for_every_client_after_its_own_limit() {
        let throttle = Throttle::default();
        let now = Instant::now();
        let attacker = ip("2001:db8::1");
        for i in 0..5 {
            throttle.failed(&RULES, Some(&format!("guess-{i}")), attacker, now);
        }
        assert_eq!(throttle.check(&RULES, "anyone", attacker, now), Err(60));
        assert_eq!(
            throttle.check(&RULES, "anyone", ip("2001:db8::2"), now),
            Ok(())
        );
        // A success does not reset the address count.
        throttle.succeeded("guess-0", attacker);
        assert_eq!(throttle.check(&RULES, "anyone", attacker, now), Err(60));
    }

    #[test]
    fn a_success_forgives_that_clients_typos() {
        let throttle = Throttle::default();
        let now = Instant::now();
        let addr = ip("198.51.100.7");
        for _ in 0..2 {
            throttle.failed(&RULES, Some("c1"), addr, now);
        }
        throttle.succeeded("c1", addr);
        throttle.failed(&RULES, Some("c1"), addr, now);
        throttle.failed(&RULES, Some("c1"), addr, now);
        assert_eq!(throttle.check(&RULES, "c1", addr, now), Ok(()));
    }

    #[test]
    fn the_tables_stay_bounded_under_a_flood_of_random_ids() {
        let throttle = Throttle::default();
        let now = Instant::now();
        let rules = ThrottleRules {
            per_address: u32::MAX,
            ..RULES
        };
        for i in 0..(MAX_TRACKED * 2) {
            let at = now + Duration::from_micros(i as u64);
            throttle.failed(&rules, Some(&format!("id-{i}")), ip("203.0.113.9"), at);
            assert!(throttle.tracked().0 <= MAX_TRACKED);
        }
        // Room is made in batches: never more than full, never less than 7/8.
        let tracked = throttle.tracked().0;
        assert!(tracked > MAX_TRACKED - MAX_TRACKED / 8, "{tracked}");
        assert_eq!(throttle.tracked().1, 1);
        // The oldest keys went first.
        assert!(!lock(&throttle.by_client)
            .entries
            .contains_key(&("id-0".to_owned(), ip("203.0.113.9"))));
        // The newest keys are the ones kept.
        let last = format!("id-{}", MAX_TRACKED * 2 - 1);
        assert!(lock(&throttle.by_client)
            .entries
            .contains_key(&(last, ip("203.0.113.9"))));
    }
}
