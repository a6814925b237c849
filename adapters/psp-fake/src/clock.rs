//! The fake's clock: every `created` / `updated` timestamp and every stored
//! idempotency key's age come from it, so tests can place objects in the
//! past and age keys without sleeping.
//!
//! **Guarantees:** [`ManualClock`] only moves when told; clones share it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// A source of "now" for the fake.
pub trait FakeClock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl FakeClock for WallClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from(std::time::SystemTime::now())
    }
}

/// A clock that moves only when told. Cheap to clone; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Starts at the current wall-clock time.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(WallClock.now())
    }

    /// Now, in unix seconds (Stripe's `created`).
    pub fn now_unix(&self) -> i64 {
        self.lock().timestamp()
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.lock() = to;
    }

    pub fn advance(&self, by: Duration) {
        let by = TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX);
        let mut now = self.lock();
        *now = now.checked_add_signed(by).unwrap_or(*now);
    }

    pub fn rewind(&self, by: Duration) {
        let by = TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX);
        let mut now = self.lock();
        *now = now.checked_sub_signed(by).unwrap_or(*now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FakeClock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}
