//! Partition assignors as pure functions: `range`, `roundrobin` and
//! `cooperative-sticky`, with Kafka's meanings.
//!
//! Input: the members (by id, in any order) with their subscriptions and the
//! partitions they own now, and the partition count of every subscribed topic.
//! Output: the target owner of every partition of every subscribed topic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

/// Groups partitions by topic, partitions in order: how assignments are shown.
pub fn by_topic<'a>(tps: impl IntoIterator<Item = &'a TopicPartition>) -> BTreeMap<&'a str, Vec<u32>> {
    let mut map: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in tps {
        map.entry(&tp.topic).or_default().push(tp.partition);
    }
    for parts in map.values_mut() {
        parts.sort_unstable();
    }
    map
}

/// Which assignor a group uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions (Kafka's `RangeAssignor`).
    #[serde(rename = "range")]
    Range,
    /// All partitions dealt out in turn (Kafka's `RoundRobinAssignor`).
    #[serde(rename = "roundrobin")]
    RoundRobin,
    /// Balanced, moving as few partitions as possible (Kafka's `CooperativeStickyAssignor`). The default.
    #[default]
    #[serde(rename = "cooperative-sticky")]
    CooperativeSticky,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// One member as the assignor sees it.
#[derive(Debug, Clone, Default)]
pub struct MemberSpec {
    pub topics: BTreeSet<String>,
    pub owned: BTreeSet<TopicPartition>,
}

/// Target owner of each partition.
pub type Assignment = BTreeMap<TopicPartition, String>;

/// Computes the target assignment. `partitions` gives the partition count of each
/// topic; subscribed topics missing from it are skipped.
pub fn assign(
    kind: Assignor,
    members: &BTreeMap<String, MemberSpec>,
    partitions: &BTreeMap<String, u32>,
) -> Assignment {
    match kind {
        Assignor::Range => range(members, partitions),
        Assignor::RoundRobin => round_robin(members, partitions),
        Assignor::CooperativeSticky => sticky(members, partitions),
    }
}

fn subscribers<'a>(members: &'a BTreeMap<String, MemberSpec>, topic: &str) -> Vec<&'a String> {
    members.iter().filter(|(_, m)| m.topics.contains(topic)).map(|(id, _)| id).collect()
}

fn subscribed_topics(members: &BTreeMap<String, MemberSpec>, partitions: &BTreeMap<String, u32>) -> BTreeSet<String> {
    members.values().flat_map(|m| m.topics.iter()).filter(|t| partitions.contains_key(*t)).cloned().collect()
}

fn range(members: &BTreeMap<String, MemberSpec>, partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut out = Assignment::new();
    for topic in subscribed_topics(members, partitions) {
        let subs = subscribers(members, &topic);
        let n = partitions.get(&topic).copied().unwrap_or(0) as usize;
        let (per, extra) = (n / subs.len(), n % subs.len());
        let mut next = 0;
        for (i, member) in subs.iter().enumerate() {
            let take = per + usize::from(i < extra);
            for p in next..next + take {
                out.insert(TopicPartition::new(&topic, p as u32), (*member).clone());
            }
            next += take;
        }
    }
    out
}

fn round_robin(members: &BTreeMap<String, MemberSpec>, partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut out = Assignment::new();
    let ids: Vec<&String> = members.keys().collect();
    let mut cursor = 0;
    for topic in subscribed_topics(members, partitions) {
        for p in 0..partitions.get(&topic).copied().unwrap_or(0) {
            // Kafka's circular iterator: the next member (in order) subscribed to this topic.
            for step in 0..ids.len() {
                let id = ids[(cursor + step) % ids.len()];
                if members[id].topics.contains(&topic) {
                    out.insert(TopicPartition::new(&topic, p), id.clone());
                    cursor = (cursor + step + 1) % ids.len();
                    break;
                }
            }
        }
    }
    out
}

fn sticky(members: &BTreeMap<String, MemberSpec>, partitions: &BTreeMap<String, u32>) -> Assignment {
    let all: BTreeSet<TopicPartition> = subscribed_topics(members, partitions)
        .into_iter()
        .flat_map(|t| (0..partitions.get(&t).copied().unwrap_or(0)).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect();
    if members.is_empty() {
        return Assignment::new();
    }
    // Keep what each member owns and may still own, each partition once.
    let mut load: BTreeMap<&String, Vec<TopicPartition>> = members.keys().map(|id| (id, Vec::new())).collect();
    let mut taken = BTreeSet::new();
    for (id, m) in members {
        for tp in &m.owned {
            if all.contains(tp) && m.topics.contains(&tp.topic) && taken.insert(tp.clone()) {
                load.entry(id).or_default().push(tp.clone());
            }
        }
    }
    // When every member has the same subscription, the balanced loads are known:
    // floor(P/M) each, and P % M members get one more. Those extra slots go to the
    // members that already own the most, which minimises movement.
    let first = members.values().next().map(|m| &m.topics);
    let same_subscriptions = members.values().all(|m| Some(&m.topics) == first);
    if same_subscriptions {
        let (count, n) = (all.len(), members.len());
        let (quota, extra) = (count / n, count % n);
        let mut order: Vec<&String> = members.keys().collect();
        order.sort_by_key(|id| (std::cmp::Reverse(load[*id].len()), (*id).clone()));
        for (rank, id) in order.iter().enumerate() {
            let max = quota + usize::from(rank < extra);
            if let Some(owned) = load.get_mut(*id)
                && owned.len() > max
            {
                for tp in owned.split_off(max) {
                    taken.remove(&tp);
                }
            }
        }
    }
    // Hand out the rest, each to the least-loaded member subscribed to its topic.
    for tp in all.iter().filter(|tp| !taken.contains(*tp)) {
        let target = load
            .iter()
            .filter(|(id, _)| members[**id].topics.contains(&tp.topic))
            .min_by_key(|(id, owned)| (owned.len(), (**id).clone()))
            .map(|(id, _)| *id);
        if let Some(id) = target {
            load.entry(id).or_default().push(tp.clone());
        }
    }
    // With differing subscriptions, move partitions from the most to the least
    // loaded eligible member until no move narrows a gap of more than one.
    let rounds = if same_subscriptions { 0 } else { all.len() * members.len() };
    for _ in 0..rounds {
        let mut best: Option<(&String, &String, usize)> = None;
        for (from, owned) in &load {
            for (i, tp) in owned.iter().enumerate() {
                for (to, other) in &load {
                    if owned.len() > other.len() + 1
                        && members[*to].topics.contains(&tp.topic)
                        && best.is_none_or(|(f, t, _)| owned.len() - other.len() > load[f].len() - load[t].len())
                    {
                        best = Some((from, to, i));
                    }
                }
            }
        }
        let Some((from, to, i)) = best else { break };
        let (from, to) = (from.clone(), to.clone());
        let tp = load.get_mut(&from).map(|v| v.remove(i));
        if let (Some(tp), Some((k, _))) = (tp, members.get_key_value(&to)) {
            load.entry(k).or_default().push(tp);
        }
    }
    load.into_iter().flat_map(|(id, tps)| tps.into_iter().map(move |tp| (tp, id.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(topics: &[&str], owned: &[(&str, u32)]) -> MemberSpec {
        MemberSpec {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().map(|(t, p)| TopicPartition::new(*t, *p)).collect(),
        }
    }

    fn loads(a: &Assignment) -> BTreeMap<String, usize> {
        let mut l = BTreeMap::new();
        for id in a.values() {
            *l.entry(id.clone()).or_default() += 1;
        }
        l
    }

    #[test]
    fn range_gives_contiguous_ranges_extra_to_the_first() {
        let members = BTreeMap::from([("a".to_string(), spec(&["t"], &[])), ("b".to_string(), spec(&["t"], &[]))]);
        let a = assign(Assignor::Range, &members, &BTreeMap::from([("t".to_string(), 5)]));
        let owners: Vec<_> = (0..5).map(|p| a[&TopicPartition::new("t", p)].as_str()).collect();
        assert_eq!(owners, ["a", "a", "a", "b", "b"]);
    }

    #[test]
    fn roundrobin_deals_in_turn() {
        let members = BTreeMap::from([("a".to_string(), spec(&["t"], &[])), ("b".to_string(), spec(&["t"], &[]))]);
        let a = assign(Assignor::RoundRobin, &members, &BTreeMap::from([("t".to_string(), 4)]));
        let owners: Vec<_> = (0..4).map(|p| a[&TopicPartition::new("t", p)].as_str()).collect();
        assert_eq!(owners, ["a", "b", "a", "b"]);
    }

    #[test]
    fn sticky_keeps_owners_when_a_member_joins() {
        let members = BTreeMap::from([
            ("a".to_string(), spec(&["t"], &[("t", 0), ("t", 1), ("t", 2)])),
            ("b".to_string(), spec(&["t"], &[("t", 3), ("t", 4), ("t", 5)])),
            ("c".to_string(), spec(&["t"], &[])),
        ]);
        let a = assign(Assignor::CooperativeSticky, &members, &BTreeMap::from([("t".to_string(), 6)]));
        assert_eq!(loads(&a).values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        let moved = members
            .iter()
            .flat_map(|(id, m)| m.owned.iter().map(move |tp| (tp, id)))
            .filter(|(tp, id)| a[*tp] != **id)
            .count();
        assert_eq!(moved, 2, "only what the newcomer needs moves");
    }

    fn arb_group() -> impl Strategy<Value = (BTreeMap<String, MemberSpec>, BTreeMap<String, u32>)> {
        (1usize..6, proptest::collection::vec(1u32..9, 1..4), any::<u64>()).prop_map(|(nmembers, counts, seed)| {
            let topics: BTreeMap<String, u32> = counts.iter().enumerate().map(|(i, c)| (format!("t{i}"), *c)).collect();
            let mut members = BTreeMap::new();
            let mut s = seed;
            for m in 0..nmembers {
                let mut spec = MemberSpec::default();
                for (t, count) in &topics {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if (s >> 33) % 4 != 0 || spec.topics.is_empty() {
                        spec.topics.insert(t.clone());
                    }
                    for p in 0..*count {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        if (s >> 33) % 3 == 0 {
                            spec.owned.insert(TopicPartition::new(t.clone(), p));
                        }
                    }
                }
                members.insert(format!("m{m}"), spec);
            }
            (members, topics)
        })
    }

    fn every_partition_once(members: &BTreeMap<String, MemberSpec>, topics: &BTreeMap<String, u32>, a: &Assignment) {
        for (t, count) in topics {
            let subscribed = members.values().any(|m| m.topics.contains(t));
            for p in 0..*count {
                let owner = a.get(&TopicPartition::new(t.clone(), p));
                assert_eq!(owner.is_some(), subscribed, "{t}/{p}");
                if let Some(o) = owner {
                    assert!(members[o].topics.contains(t), "{o} is not subscribed to {t}");
                }
            }
        }
        assert!(a.keys().all(|tp| topics.get(&tp.topic).is_some_and(|c| tp.partition < *c)));
    }

    proptest! {
        #[test]
        fn every_assignor_assigns_each_partition_to_exactly_one_subscriber((members, topics) in arb_group()) {
            for kind in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
                every_partition_once(&members, &topics, &assign(kind, &members, &topics));
            }
        }

        #[test]
        fn balanced_within_one_when_subscriptions_match((members, topics) in arb_group()) {
            let all: BTreeSet<String> = topics.keys().cloned().collect();
            let members: BTreeMap<_, _> = members.into_iter().map(|(id, mut m)| { m.topics = all.clone(); (id, m) }).collect();
            for kind in [Assignor::RoundRobin, Assignor::CooperativeSticky] {
                let a = assign(kind, &members, &topics);
                let mut l: Vec<usize> = members.keys().map(|id| loads(&a).get(id).copied().unwrap_or(0)).collect();
                l.sort();
                prop_assert!(l[l.len() - 1] - l[0] <= 1, "{kind:?} loads {l:?}");
            }
        }

        #[test]
        fn sticky_moves_the_minimum((members, topics) in arb_group()) {
            let all: BTreeSet<String> = topics.keys().cloned().collect();
            // Same subscriptions; ownership made disjoint (as it is in a live group).
            let mut seen = BTreeSet::new();
            let members: BTreeMap<_, _> = members.into_iter().map(|(id, mut m)| {
                m.topics = all.clone();
                m.owned.retain(|tp| seen.insert(tp.clone()));
                (id, m)
            }).collect();
            let a = assign(Assignor::CooperativeSticky, &members, &topics);
            let moved = members.iter()
                .flat_map(|(id, m)| m.owned.iter().map(move |tp| (tp, id)))
                .filter(|(tp, id)| a.get(*tp) != Some(*id))
                .count();
            // The fewest moves any balanced assignment needs: give the larger quotas
            // to the members owning most, and each member gives up what exceeds its quota.
            let total: u32 = topics.values().sum();
            let n = members.len();
            let (quota, extra) = (total as usize / n, total as usize % n);
            let mut owned: Vec<usize> = members.values().map(|m| m.owned.len()).collect();
            owned.sort_by(|a, b| b.cmp(a));
            let minimum: usize = owned.iter().enumerate().map(|(i, o)| o.saturating_sub(quota + usize::from(i < extra))).sum();
            prop_assert_eq!(moved, minimum);
        }
    }
}
