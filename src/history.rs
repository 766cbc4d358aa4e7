//! The recent past the console charts: a small in-memory time series, sampled every
//! [`INTERVAL`] and kept for [`POINTS`] samples (ten minutes), of every partition's end
//! offset (so records per second), every group's lag per partition, and the produce
//! latency of each interval.
//!
//! Memory is bounded: at most [`MAX_SERIES`] partition series (topics and groups
//! together) of [`POINTS`] `u64`s each; series beyond that are not kept (counted in
//! `untracked`), and a series with no value left in the window is dropped. Nothing here
//! is stored: a restart starts an empty history.
//!
//! Sampling is the service's (`Service::run_history`); this module only keeps and
//! shapes the figures. Its lock is held for memory work only, never across an await.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::log::now_ms;
use serde::Serialize;
use utoipa::ToSchema;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// [`INTERVAL`] as the answers state it.
const INTERVAL_MS: u64 = INTERVAL.as_millis() as u64;
/// Samples kept per series: ten minutes at [`INTERVAL`].
pub const POINTS: usize = 300;
/// Most partition series kept, topics' and groups' together (about 2.4 KB each).
pub const MAX_SERIES: usize = 10_000;

/// A sample with no value for a series (the partition or group did not exist, or was
/// not sampled).
const GAP: u64 = u64::MAX;

/// Latency buckets: four per doubling of microseconds, from 1 µs to ~70 s.
const BUCKETS: usize = 104;

/// Produce latencies of the current interval, recorded without a lock.
struct LatencyWindow {
    buckets: [AtomicU64; BUCKETS],
    max_us: AtomicU64,
}

impl LatencyWindow {
    fn new() -> LatencyWindow {
        LatencyWindow { buckets: std::array::from_fn(|_| AtomicU64::new(0)), max_us: AtomicU64::new(0) }
    }

    fn bucket(us: u64) -> usize {
        if us <= 1 {
            return 0;
        }
        // log2(us) * 4, from the position of the top bit and the next two bits.
        let top = 63 - us.leading_zeros() as usize;
        let frac = if top >= 2 { ((us >> (top - 2)) & 0b11) as usize } else { ((us << (2 - top)) & 0b11) as usize };
        (top * 4 + frac).min(BUCKETS - 1)
    }

    /// The upper bound of bucket `i`, in µs.
    fn upper_us(i: usize) -> u64 {
        let (top, frac) = (i / 4, (i % 4) as u64);
        // 2^top * (1 + (frac + 1) / 4)
        (1u64 << top) + ((1u64 << top) * (frac + 1)) / 4
    }

    fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[Self::bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The interval's figures, and a fresh interval. (A produce finishing while this runs
    /// may land in either interval: the figures are a picture, not an account.)
    fn take(&self) -> LatencyPoint {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
        let max_us = self.max_us.swap(0, Ordering::Relaxed);
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Option<u64> {
            if total == 0 {
                return None;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Some(Self::upper_us(i).min(max_us));
                }
            }
            Some(max_us)
        };
        LatencyPoint {
            count: total,
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            max_us: (total > 0).then_some(max_us),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct LatencyPoint {
    count: u64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    max_us: Option<u64>,
}

/// What one sample saw.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (topic, partition, end offset)
    pub ends: Vec<(String, u32, u64)>,
    /// (group, topic, partition, lag): partitions with a committed offset.
    pub lags: Vec<(String, String, u32, u64)>,
}

type Series = VecDeque<u64>;

#[derive(Default)]
struct State {
    /// When each sample was taken (ms since the epoch), oldest first; every series has
    /// one value per entry.
    times: VecDeque<u64>,
    ends: BTreeMap<String, BTreeMap<u32, Series>>,
    lags: BTreeMap<String, BTreeMap<(String, u32), Series>>,
    latency: VecDeque<LatencyPoint>,
    series: usize,
    untracked: u64,
}

/// Appends `value` (or a gap) to every series of `map`, adding new ones while under the
/// series bound, and trims each to the window.
fn advance<K: Ord + Clone, I: Ord + Clone>(
    map: &mut BTreeMap<K, BTreeMap<I, Series>>,
    mut seen: BTreeMap<K, BTreeMap<I, u64>>,
    len: usize,
    series: &mut usize,
    untracked: &mut u64,
) {
    for (key, inner) in map.iter_mut() {
        let mut now = seen.remove(key).unwrap_or_default();
        for (index, s) in inner.iter_mut() {
            s.push_back(now.remove(index).unwrap_or(GAP));
        }
        for (index, value) in now {
            add(inner, index, value, len, series, untracked);
        }
    }
    for (key, now) in seen {
        let mut inner = BTreeMap::new();
        for (index, value) in now {
            add(&mut inner, index, value, len, series, untracked);
        }
        if !inner.is_empty() {
            map.insert(key, inner);
        }
    }
    for inner in map.values_mut() {
        inner.retain(|_, s| {
            while s.len() > POINTS {
                s.pop_front();
            }
            let live = s.iter().any(|v| *v != GAP);
            if !live {
                *series -= 1;
            }
            live
        });
    }
    map.retain(|_, inner| !inner.is_empty());
}

fn add<I: Ord>(
    inner: &mut BTreeMap<I, Series>,
    index: I,
    value: u64,
    len: usize,
    series: &mut usize,
    untracked: &mut u64,
) {
    if *series >= MAX_SERIES {
        *untracked += 1;
        return;
    }
    let mut s: Series = std::iter::repeat_n(GAP, len.saturating_sub(1)).collect();
    s.push_back(value);
    inner.insert(index, s);
    *series += 1;
}

/// The time series behind the console's charts.
pub struct History {
    state: Mutex<State>,
    latency: LatencyWindow,
    /// When history was last asked for (ms since the epoch), for backends that sample
    /// only while someone looks.
    last_read_ms: AtomicU64,
    /// Groups whose history was asked for, and when: sampled even where the backend's
    /// group listing leaves them out (a Kafka broker may not list a group that has only
    /// committed offsets). At most [`MAX_WATCHED`].
    watched: Mutex<BTreeMap<String, u64>>,
}

/// Most groups [`History::watch`] remembers.
const MAX_WATCHED: usize = 100;

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

/// A value of a series for JSON: `null` for a gap.
fn value(v: u64) -> Option<u64> {
    (v != GAP).then_some(v)
}

/// Records per second between consecutive samples of `ends` (the first is `null`, and so
/// is any step with a gap on either side).
fn rates(times: &VecDeque<u64>, ends: &Series) -> Vec<Option<f64>> {
    let mut out = Vec::with_capacity(ends.len());
    for i in 0..ends.len() {
        let rate = if i == 0 || ends[i] == GAP || ends[i - 1] == GAP {
            None
        } else {
            let dt = times[i].saturating_sub(times[i - 1]).max(1) as f64 / 1000.0;
            // A topic deleted and created again starts over: not a negative rate.
            Some(round2(ends[i].saturating_sub(ends[i - 1]) as f64 / dt))
        };
        out.push(rate);
    }
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl History {
    pub fn new() -> History {
        History {
            state: Mutex::new(State::default()),
            latency: LatencyWindow::new(),
            last_read_ms: AtomicU64::new(0),
            watched: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one produce's latency (admission to acknowledgement) in the current interval.
    pub fn record_produce(&self, elapsed: Duration) {
        self.latency.record(elapsed);
    }

    /// Notes that someone asked for history now.
    pub fn touch(&self) {
        self.last_read_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Notes that `group`'s history was asked for now.
    pub fn watch(&self, group: &str) {
        let now = now_ms();
        let mut watched = self.watched.lock();
        if watched.len() >= MAX_WATCHED && !watched.contains_key(group) {
            // Forget the one asked for longest ago.
            if let Some(oldest) = watched.iter().min_by_key(|(_, t)| **t).map(|(g, _)| g.clone()) {
                watched.remove(&oldest);
            }
        }
        watched.insert(group.to_owned(), now);
    }

    /// The groups asked for within `within`.
    pub fn watched(&self, within: Duration) -> Vec<String> {
        let since = now_ms().saturating_sub(within.as_millis() as u64);
        let mut watched = self.watched.lock();
        watched.retain(|_, t| *t >= since);
        watched.keys().cloned().collect()
    }

    /// Whether history was asked for within `within`.
    pub fn recently_read(&self, within: Duration) -> bool {
        now_ms().saturating_sub(self.last_read_ms.load(Ordering::Relaxed)) <= within.as_millis() as u64
    }

    /// Adds one sample taken at `at_ms`.
    pub fn push(&self, at_ms: u64, snapshot: Snapshot) {
        let latency = self.latency.take();
        let mut ends: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
        for (topic, partition, end) in snapshot.ends {
            ends.entry(topic).or_default().insert(partition, end.min(GAP - 1));
        }
        let mut lags: BTreeMap<String, BTreeMap<(String, u32), u64>> = BTreeMap::new();
        for (group, topic, partition, lag) in snapshot.lags {
            lags.entry(group).or_default().insert((topic, partition), lag.min(GAP - 1));
        }
        let mut state = self.state.lock();
        let State { times, ends: end_series, lags: lag_series, latency: latencies, series, untracked } = &mut *state;
        times.push_back(at_ms);
        latencies.push_back(latency);
        while times.len() > POINTS {
            times.pop_front();
            latencies.pop_front();
        }
        let len = times.len();
        advance(end_series, ends, len, series, untracked);
        advance(lag_series, lags, len, series, untracked);
    }

    /// When each sample in the window was taken.
    pub fn times(&self) -> Vec<u64> {
        self.state.lock().times.iter().copied().collect()
    }

    /// Records per second of each topic `visible` lets through (sum of its partitions).
    pub fn topics(&self, visible: impl Fn(&str) -> bool) -> TopicsHistory {
        let state = self.state.lock();
        let topics = state
            .ends
            .iter()
            .filter(|(name, _)| visible(name))
            .map(|(name, partitions)| {
                let mut sum: Vec<Option<f64>> = vec![None; state.times.len()];
                for s in partitions.values() {
                    for (i, r) in rates(&state.times, s).into_iter().enumerate() {
                        if let Some(r) = r {
                            sum[i] = Some(round2(sum[i].unwrap_or(0.0) + r));
                        }
                    }
                }
                TopicRate { topic: name.clone(), records_per_second: sum }
            })
            .collect();
        TopicsHistory { interval_ms: INTERVAL_MS, times_ms: state.times.iter().copied().collect(), topics }
    }

    /// One topic's partitions: end offsets and records per second; `None` if the topic
    /// has no history.
    pub fn topic(&self, topic: &str) -> Option<TopicHistory> {
        let state = self.state.lock();
        let partitions = state.ends.get(topic)?;
        Some(TopicHistory {
            interval_ms: INTERVAL_MS,
            times_ms: state.times.iter().copied().collect(),
            partitions: partitions
                .iter()
                .map(|(p, s)| PartitionHistory {
                    partition: *p,
                    end_offset: s.iter().map(|v| value(*v)).collect(),
                    records_per_second: rates(&state.times, s),
                })
                .collect(),
        })
    }

    /// One group's lag per partition and in total; `None` if the group has no history.
    pub fn group(&self, group: &str) -> Option<GroupHistory> {
        let state = self.state.lock();
        let partitions = state.lags.get(group)?;
        let mut total: Vec<Option<u64>> = vec![None; state.times.len()];
        for s in partitions.values() {
            for (i, v) in s.iter().enumerate() {
                if let Some(v) = value(*v) {
                    total[i] = Some(total[i].unwrap_or(0).saturating_add(v));
                }
            }
        }
        Some(GroupHistory {
            interval_ms: INTERVAL_MS,
            times_ms: state.times.iter().copied().collect(),
            total_lag: total,
            partitions: partitions
                .iter()
                .map(|((topic, partition), s)| LagHistory {
                    topic: topic.clone(),
                    partition: *partition,
                    lag: s.iter().map(|v| value(*v)).collect(),
                })
                .collect(),
        })
    }

    /// Produce latency per interval.
    pub fn produce(&self) -> ProduceHistory {
        let state = self.state.lock();
        let ms = |v: Option<u64>| v.map(|us| round2(us as f64 / 1000.0));
        ProduceHistory {
            interval_ms: INTERVAL_MS,
            times_ms: state.times.iter().copied().collect(),
            count: state.latency.iter().map(|l| l.count).collect(),
            p50_ms: state.latency.iter().map(|l| ms(l.p50_us)).collect(),
            p99_ms: state.latency.iter().map(|l| ms(l.p99_us)).collect(),
            max_ms: state.latency.iter().map(|l| ms(l.max_us)).collect(),
            untracked_series: state.untracked,
        }
    }
}

/// Records per second of every topic the caller may describe.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicsHistory {
    /// Time between samples.
    pub interval_ms: u64,
    /// When each sample was taken (ms since the epoch), oldest first.
    pub times_ms: Vec<u64>,
    pub topics: Vec<TopicRate>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopicRate {
    pub topic: String,
    /// Records appended per second up to each sample, all partitions together (`null`
    /// for the first sample and where the topic was not sampled).
    pub records_per_second: Vec<Option<f64>>,
}

/// One topic's partitions over the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicHistory {
    pub interval_ms: u64,
    pub times_ms: Vec<u64>,
    pub partitions: Vec<PartitionHistory>,
}

impl TopicHistory {
    /// A topic with nothing sampled yet.
    pub fn empty(times_ms: Vec<u64>) -> TopicHistory {
        TopicHistory { interval_ms: INTERVAL_MS, times_ms, partitions: Vec::new() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionHistory {
    pub partition: u32,
    /// The partition's end offset at each sample (`null`: not sampled).
    pub end_offset: Vec<Option<u64>>,
    /// Records appended per second up to each sample.
    pub records_per_second: Vec<Option<f64>>,
}

/// A group's lag over the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupHistory {
    pub interval_ms: u64,
    pub times_ms: Vec<u64>,
    /// Lag summed over the partitions with a committed offset.
    pub total_lag: Vec<Option<u64>>,
    pub partitions: Vec<LagHistory>,
}

impl GroupHistory {
    /// A group without a committed offset sampled yet.
    pub fn empty(times_ms: Vec<u64>) -> GroupHistory {
        let total_lag = vec![None; times_ms.len()];
        GroupHistory { interval_ms: INTERVAL_MS, times_ms, total_lag, partitions: Vec::new() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LagHistory {
    pub topic: String,
    pub partition: u32,
    /// End offset minus committed offset at each sample (`null`: nothing committed yet,
    /// or not sampled).
    pub lag: Vec<Option<u64>>,
}

/// Produce latency (admission to acknowledgement, every transport) per interval.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProduceHistory {
    pub interval_ms: u64,
    pub times_ms: Vec<u64>,
    /// Produce requests finished in each interval.
    pub count: Vec<u64>,
    /// Median latency (within 25 %), `null` for an interval without produces.
    pub p50_ms: Vec<Option<f64>>,
    /// 99th percentile latency (within 25 %).
    pub p99_ms: Vec<Option<f64>>,
    pub max_ms: Vec<Option<f64>>,
    /// Partition series not kept because the history holds its most.
    pub untracked_series: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(ends: &[(&str, u32, u64)], lags: &[(&str, &str, u32, u64)]) -> Snapshot {
        Snapshot {
            ends: ends.iter().map(|(t, p, e)| (t.to_string(), *p, *e)).collect(),
            lags: lags.iter().map(|(g, t, p, l)| (g.to_string(), t.to_string(), *p, *l)).collect(),
        }
    }

    #[test]
    fn rates_come_from_end_offsets_and_gaps_are_null() {
        let h = History::new();
        h.push(1_000, snap(&[("a", 0, 10)], &[]));
        h.push(3_000, snap(&[("a", 0, 30), ("a", 1, 5)], &[]));
        h.push(5_000, snap(&[("a", 0, 30), ("a", 1, 25)], &[]));
        let t = h.topic("a").unwrap();
        assert_eq!(t.times_ms, vec![1_000, 3_000, 5_000]);
        assert_eq!(t.partitions[0].records_per_second, vec![None, Some(10.0), Some(0.0)]);
        assert_eq!(t.partitions[1].end_offset, vec![None, Some(5), Some(25)]);
        assert_eq!(t.partitions[1].records_per_second, vec![None, None, Some(10.0)]);
        let all = h.topics(|_| true);
        assert_eq!(all.topics[0].records_per_second, vec![None, Some(10.0), Some(10.0)]);
        assert!(h.topics(|name| name != "a").topics.is_empty());
        assert!(h.topic("b").is_none());
    }

    #[test]
    fn the_window_is_bounded_and_dead_series_go() {
        let h = History::new();
        for i in 0..(POINTS as u64 + 50) {
            let ends: Vec<(&str, u32, u64)> =
                if i < 10 { vec![("gone", 0, i), ("kept", 0, i)] } else { vec![("kept", 0, i)] };
            h.push(i * 2_000, snap(&ends, &[("g", "kept", 0, 100 - i.min(100))]));
        }
        let kept = h.topic("kept").unwrap();
        assert_eq!(kept.times_ms.len(), POINTS);
        assert_eq!(kept.partitions[0].end_offset.len(), POINTS);
        assert_eq!(kept.partitions[0].end_offset.last(), Some(&Some(POINTS as u64 + 49)));
        assert!(h.topic("gone").is_none(), "a topic absent for the whole window is dropped");
        let g = h.group("g").unwrap();
        assert_eq!(g.total_lag.last(), Some(&Some(0)));
        assert_eq!(h.state.lock().series, 2);
    }

    #[test]
    fn series_beyond_the_bound_are_counted_not_kept() {
        let h = History::new();
        let ends: Vec<(String, u32, u64)> = (0..(MAX_SERIES as u32 + 7)).map(|p| ("t".to_string(), p, 1)).collect();
        h.push(0, Snapshot { ends, lags: Vec::new() });
        assert_eq!(h.topic("t").unwrap().partitions.len(), MAX_SERIES);
        assert_eq!(h.produce().untracked_series, 7);
    }

    #[test]
    fn latency_quantiles_are_within_a_bucket() {
        let h = History::new();
        for ms in 1..=100u64 {
            h.record_produce(Duration::from_millis(ms));
        }
        h.push(0, Snapshot::default());
        h.push(2_000, Snapshot::default());
        let p = h.produce();
        assert_eq!(p.count, vec![100, 0]);
        let p50 = p.p50_ms[0].unwrap();
        assert!((50.0..=62.5).contains(&p50), "p50 {p50}");
        let p99 = p.p99_ms[0].unwrap();
        assert!((99.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!(p.max_ms[0], Some(100.0));
        assert_eq!(p.p50_ms[1], None);
    }

    #[test]
    fn buckets_grow_monotonically() {
        let mut last = 0;
        for us in [0u64, 1, 2, 3, 4, 5, 7, 8, 100, 1_000, 65_536, 10_000_000] {
            let b = LatencyWindow::bucket(us);
            assert!(b >= last);
            assert!(LatencyWindow::upper_us(b) >= us, "{us} in bucket {b} bounded by {}", LatencyWindow::upper_us(b));
            last = b;
        }
    }
}
