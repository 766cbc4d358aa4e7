//! Quotas per principal (SPEC §8): bytes produced and consumed per second,
//! requests per second, concurrent connections in use and streams.
//!
//! Rates are token buckets that may go into debt, as Kafka's quotas do: a
//! request within budget is let through whole even when it takes more than is
//! left, and the debt it leaves is what later requests wait out. REST requests
//! meeting a debt are refused (`429 quota_exceeded` with `Retry-After`); stream
//! and Kafka clients are delayed by it instead ([`Throttle`]). Time comes from
//! tokio's clock, so the tests run on paused time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One `[[quotas]]` entry, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaSettings {
    /// `User:NAME`, or `User:*` for every principal without an entry of its own.
    pub principal: String,
    pub produce_bytes_per_sec: Option<u64>,
    pub consume_bytes_per_sec: Option<u64>,
    pub requests_per_sec: Option<u64>,
    /// Requests in flight and streams open at once.
    pub max_connections: Option<u32>,
    /// WebSocket streams open at once.
    pub max_streams: Option<u32>,
}

/// How a transport takes a quota's debt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Throttle {
    /// Refuse while in debt (REST: 429 with `Retry-After`).
    #[default]
    Reject,
    /// Wait the debt out, then go on (streams, Kafka clients).
    Delay,
}

/// A rate: `rate` units per second, with a burst of one second's worth.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    state: parking_lot::Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(per_sec: u64) -> Bucket {
        let rate = per_sec.max(1) as f64;
        Bucket { rate, state: parking_lot::Mutex::new((rate, Instant::now())) }
    }

    fn refill(&self, state: &mut (f64, Instant)) {
        let now = Instant::now();
        let earned = now.duration_since(state.1).as_secs_f64() * self.rate;
        state.0 = (state.0 + earned).min(self.rate);
        state.1 = now;
    }

    /// How long until the bucket is out of debt (zero when it is not in debt).
    pub fn debt(&self) -> Duration {
        let mut state = self.state.lock();
        self.refill(&mut state);
        if state.0 >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-state.0 / self.rate) }
    }

    /// Takes `n` units, going into debt if need be; returns the debt left.
    pub fn take(&self, n: u64) -> Duration {
        let mut state = self.state.lock();
        self.refill(&mut state);
        state.0 -= n as f64;
        if state.0 >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-state.0 / self.rate) }
    }
}

/// A count with a ceiling (connections in use, streams open).
#[derive(Debug)]
pub struct Limit {
    max: u32,
    used: Arc<AtomicU32>,
}

/// Holds one place under a [`Limit`] until dropped.
#[derive(Debug)]
pub struct Slot(Option<Arc<AtomicU32>>);

impl Slot {
    /// A slot of nothing: no limit applies.
    pub fn free() -> Slot {
        Slot(None)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(used) = &self.0 {
            used.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Limit {
    fn new(max: u32) -> Limit {
        Limit { max, used: Arc::new(AtomicU32::new(0)) }
    }

    /// A place, or `None` when all are taken.
    pub fn acquire(&self) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Slot(Some(self.used.clone())))
    }
}

/// The quotas of one principal.
#[derive(Debug, Default)]
pub struct PrincipalQuota {
    pub produce: Option<Bucket>,
    pub consume: Option<Bucket>,
    pub requests: Option<Bucket>,
    pub connections: Option<Limit>,
    pub streams: Option<Limit>,
}

impl PrincipalQuota {
    fn new(s: &QuotaSettings) -> PrincipalQuota {
        PrincipalQuota {
            produce: s.produce_bytes_per_sec.map(Bucket::new),
            consume: s.consume_bytes_per_sec.map(Bucket::new),
            requests: s.requests_per_sec.map(Bucket::new),
            connections: s.max_connections.map(Limit::new),
            streams: s.max_streams.map(Limit::new),
        }
    }
}

/// Every principal's quotas. A `User:*` entry gives each principal without an
/// entry of its own the same limits, counted separately per principal.
#[derive(Debug, Default)]
pub struct Quotas {
    named: HashMap<String, Arc<PrincipalQuota>>,
    everyone: Option<QuotaSettings>,
    /// Per-principal state made from the `User:*` entry, on first use.
    others: parking_lot::Mutex<HashMap<String, Arc<PrincipalQuota>>>,
}

/// Principals tracked under `User:*` before the oldest state is dropped.
const MAX_TRACKED: usize = 100_000;

impl Quotas {
    pub fn new(entries: &[QuotaSettings]) -> Quotas {
        let mut q = Quotas::default();
        for e in entries {
            if e.principal == "User:*" {
                q.everyone = Some(e.clone());
            } else {
                q.named.insert(e.principal.clone(), Arc::new(PrincipalQuota::new(e)));
            }
        }
        q
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.everyone.is_none()
    }

    /// The quotas that apply to `principal`, if any.
    pub fn of(&self, principal: &str) -> Option<Arc<PrincipalQuota>> {
        if let Some(q) = self.named.get(principal) {
            return Some(q.clone());
        }
        let everyone = self.everyone.as_ref()?;
        let mut others = self.others.lock();
        if others.len() >= MAX_TRACKED && !others.contains_key(principal) {
            others.clear();
        }
        Some(others.entry(principal.to_owned()).or_insert_with(|| Arc::new(PrincipalQuota::new(everyone))).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn buckets_lend_then_make_later_takers_wait() {
        let b = Bucket::new(1000);
        assert_eq!(b.take(600), Duration::ZERO, "within the one-second burst");
        assert_eq!(b.take(900), Duration::from_millis(500), "500 in debt at 1000/s: half a second");
        assert_eq!(b.debt(), Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(b.debt(), Duration::from_millis(200), "paid back as time passes");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(b.debt(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.take(1000), Duration::ZERO, "no more than one second of burst is saved up");
        assert_eq!(b.take(1), Duration::from_millis(1));
    }

    #[test]
    fn limits_count_places_and_free_them_on_drop() {
        let l = Limit::new(2);
        let a = l.acquire().unwrap();
        let _b = l.acquire().unwrap();
        assert!(l.acquire().is_none());
        drop(a);
        assert!(l.acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn everyone_gets_the_default_counted_separately() {
        let q = Quotas::new(&[
            QuotaSettings { principal: "User:*".into(), requests_per_sec: Some(1), ..Default::default() },
            QuotaSettings { principal: "User:big".into(), requests_per_sec: Some(100), ..Default::default() },
        ]);
        let a = q.of("User:a").unwrap();
        let b = q.of("User:b").unwrap();
        assert_eq!(a.requests.as_ref().unwrap().take(1), Duration::ZERO);
        assert!(a.requests.as_ref().unwrap().take(1) > Duration::ZERO, "a is over");
        assert_eq!(b.requests.as_ref().unwrap().take(1), Duration::ZERO, "b has its own budget");
        assert_eq!(q.of("User:big").unwrap().requests.as_ref().unwrap().take(50), Duration::ZERO);
        assert!(Quotas::new(&[]).of("User:a").is_none());
    }
}
