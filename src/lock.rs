//! Locking a `std::sync::Mutex` whose last holder panicked.
//!
//! Every mutex here guards data a panic cannot leave half-written in a way
//! that matters (counters, caches, failure tables, the last reload's scan):
//! taking the data is better than spreading one panic to every later
//! request, so a poisoned lock is simply taken.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
