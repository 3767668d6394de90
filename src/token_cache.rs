//! The verified-token cache (Envoy calls it `jwt_cache`): a token whose
//! signature was checked against a key is remembered, so the next request
//! with the same token skips the signature — and only the signature.
//!
//! - Keyed by the whole token: a hit is the exact bytes that were verified.
//! - A hit still re-checks, by the same code as a miss
//!   ([`jws::check_claim_set`]), `exp`/`nbf` at the current time and the
//!   route's audience, issuer, type and scopes.
//! - A hit counts only while the key that verified it is the one the current
//!   key set selects for that token (compared by `Arc` identity): a key
//!   removed or replaced invalidates its entries at once, even ones a request
//!   on an older snapshot inserted after a reload emptied the cache.
//! - Bounded in entries and in token size; the oldest entries go first.
//!   Only tokens with a valid signature are stored, so garbage cannot fill it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use serde_json::{Map, Value};

use crate::config::TokenCacheConfig;
use crate::jws::{self, Rejection};
use crate::keys::{KeySet, Verifier};
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::policy::jwt::Authorized;

/// Independent locks, so concurrent requests rarely wait on each other.
const SHARDS: usize = 16;

/// A token whose signature checked out: what the claim checks and the
/// identity headers need, and the key that verified it.
#[derive(Debug)]
pub struct VerifiedToken {
    pub kid: Option<String>,
    pub verifier: Arc<Verifier>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    /// The last `jwt:` policy's verdict on this token, for a cache hit to
    /// reuse (re-checking only the time claims); see
    /// [`crate::policy::jwt::Authorized`].
    pub authorized: ArcSwapOption<Authorized>,
}

/// Shared by every snapshot; sized by the current config.
#[derive(Debug)]
pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    max_entries: AtomicUsize,
    max_token_bytes: AtomicUsize,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<Arc<str>, Arc<VerifiedToken>, TokenHashing>,
    /// Insertion order, for eviction (each key once).
    order: VecDeque<Arc<str>>,
}

impl TokenCache {
    pub fn new(config: &TokenCacheConfig) -> TokenCache {
        let cache = TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_entries: AtomicUsize::new(0),
            max_token_bytes: AtomicUsize::new(0),
        };
        cache.reset(config);
        cache
    }

    /// Applies a (re)loaded config and empties the cache: a reload may have
    /// removed or replaced keys.
    pub fn reset(&self, config: &TokenCacheConfig) {
        self.max_entries
            .store(config.max_entries, Ordering::Relaxed);
        self.max_token_bytes
            .store(config.max_token_bytes, Ordering::Relaxed);
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.entries.clear();
            shard.order.clear();
        }
    }

    /// Entries held, for tests of the bound.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The token's verified content: from the cache when the same token was
    /// verified before by the key `keys` still selects for it, else by
    /// parsing, selecting the key and checking the signature (and then
    /// remembered). Claims are not checked here; see [`jws::check_claim_set`].
    pub fn verify(
        &self,
        token: &str,
        keys: &KeySet,
        metrics: &Metrics,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        let max_entries = self.max_entries.load(Ordering::Relaxed);
        let cacheable =
            max_entries > 0 && token.len() <= self.max_token_bytes.load(Ordering::Relaxed);
        let shard = &self.shards[shard_of(token)];
        if cacheable {
            let hit = lock(shard).entries.get(token).cloned();
            if let Some(hit) = hit {
                let issuer = hit.claims.get("iss").and_then(Value::as_str);
                let same_key = keys
                    .select_for(issuer, hit.kid.as_deref(), hit.verifier.alg)
                    .is_ok_and(|current| Arc::ptr_eq(&current, &hit.verifier));
                if same_key {
                    metrics.token_cache_hit();
                    return Ok(hit);
                }
            }
        }

        let parsed = jws::parse(token)?;
        let verifier = jws::select_key(&parsed, keys)?;
        metrics.signature_checked();
        jws::check_signature(&parsed, &verifier)?;
        let verified = Arc::new(VerifiedToken {
            kid: parsed.kid,
            verifier,
            typ: parsed.typ,
            claims: parsed.claims,
            authorized: ArcSwapOption::empty(),
        });
        if cacheable {
            let per_shard = max_entries.div_ceil(SHARDS);
            lock(shard).insert(token, verified.clone(), per_shard);
        }
        Ok(verified)
    }
}

impl Shard {
    fn insert(&mut self, token: &str, verified: Arc<VerifiedToken>, capacity: usize) {
        if let Some(existing) = self.entries.get_mut(token) {
            // Re-verified (its key was replaced): same place in the order.
            *existing = verified;
            return;
        }
        while self.entries.len() >= capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        let key: Arc<str> = Arc::from(token);
        self.order.push_back(key.clone());
        self.entries.insert(key, verified);
    }
}

/// The shard of a token: from the last bytes of its signature, which are
/// random for any token worth caching (no second hash of the whole token).
/// The cache's hash: SipHash (std's default) spends about 5 instructions a
/// byte, and every request hashes its whole token. This one takes 8 bytes
/// a step, seeded per process. It need not resist chosen collisions: only
/// tokens with a valid signature are ever inserted, so an attacker cannot
/// fill a bucket, and a lookup walks only what is there.
#[derive(Debug, Clone, Copy)]
struct TokenHashing {
    seed: u64,
}

impl Default for TokenHashing {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            use std::hash::BuildHasher;
            std::hash::RandomState::new().hash_one(0u64)
        });
        TokenHashing { seed }
    }
}

impl std::hash::BuildHasher for TokenHashing {
    type Hasher = TokenHasher;
    fn build_hasher(&self) -> TokenHasher {
        TokenHasher {
            state: self.seed,
            len: 0,
        }
    }
}

struct TokenHasher {
    state: u64,
    len: u64,
}

impl std::hash::Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.state = (self.state ^ u64::from_le_bytes(word))
                .wrapping_mul(MULTIPLIER)
                .rotate_left(31);
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut word = [0u8; 8];
            word[..tail.len()].copy_from_slice(tail);
            self.state = (self.state ^ u64::from_le_bytes(word))
                .wrapping_mul(MULTIPLIER)
                .rotate_left(31);
        }
        self.len = self.len.wrapping_add(bytes.len() as u64);
    }

    /// MurmurHash3's finaliser, so every input bit reaches every output bit.
    fn finish(&self) -> u64 {
        let mut h = self.state ^ self.len;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

fn shard_of(token: &str) -> usize {
    let tail = &token.as_bytes()[token.len().saturating_sub(4)..];
    tail.iter().fold(0usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(*b))
    }) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{local, Algorithm};
    use crate::token::mint::{self, AccessClaims};

    fn key_set(key: &Arc<crate::keys::LocalKey>) -> KeySet {
        let mut keys = KeySet::default();
        keys.insert(key.clone()).unwrap();
        keys
    }

    /// A request on an old snapshot can insert an entry after a reload
    /// emptied the cache; the entry must not count under a key set where the
    /// same kid is another key.
    #[test]
    fn an_entry_counts_only_for_the_key_that_verified_it() {
        let metrics = Metrics::new().unwrap();
        let cache = TokenCache::new(&TokenCacheConfig::default());
        let original = Arc::new(local::generate("k", Algorithm::Es256).unwrap());
        let claims = AccessClaims::new("s", "orders", &[], None, 1_800_000_000, 300, 0).unwrap();
        let token = mint::sign(original.signer.as_ref().unwrap(), &claims).unwrap();

        let old_keys = key_set(&original);
        assert!(cache.verify(&token, &old_keys, &metrics).is_ok());
        assert!(cache.verify(&token, &old_keys, &metrics).is_ok());

        // Same kid, another key: the cached entry is ignored and the
        // signature (made by the original key) fails.
        let replacement = Arc::new(local::generate("k", Algorithm::Es256).unwrap());
        let new_keys = key_set(&replacement);
        let refused = cache.verify(&token, &new_keys, &metrics).unwrap_err();
        assert_eq!(refused.reason, jws::AuthFailure::InvalidSignature);
        // The very key that verified it, in another set: the entry counts.
        let same_key = key_set(&original);
        assert!(cache.verify(&token, &same_key, &metrics).is_ok());
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains("jwtgate_token_cache_requests_total{result=\"hit\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("jwtgate_token_cache_requests_total{result=\"miss\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn the_token_hash_spreads_similar_tokens() {
        use std::hash::BuildHasher;
        let hashing = TokenHashing::default();
        let mut seen = std::collections::HashSet::new();
        // Tokens differing in one character, as JWTs from one issuer do.
        for i in 0..20_000u32 {
            let token = format!("eyJhbGciOiJSUzI1NiJ9.eyJqdGkiOiI{i:08}In0.c2ln");
            seen.insert(hashing.hash_one(token.as_str()));
        }
        assert_eq!(seen.len(), 20_000, "no 64-bit collisions");
        // The low bits, which pick the bucket, are spread too.
        let buckets: std::collections::HashSet<u64> = seen.iter().map(|h| h & 0x3ff).collect();
        assert_eq!(buckets.len(), 1024);
        // Length counts: a prefix does not hash like the whole.
        assert_ne!(hashing.hash_one("abc\0"), hashing.hash_one("abc"));
    }
}
