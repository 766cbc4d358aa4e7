//! The console's charts: sampling the backend into [`crate::history::History`] and
//! answering for it, authorized like the things it describes.
//!
//! The embedded backend is sampled always (everything sampled is in memory). The Kafka
//! backend costs the cluster requests per sample (ListOffsets per topic, OffsetFetch per
//! group), so a replica samples it only while someone has asked for history within
//! [`KAFKA_SAMPLE_WHILE_READ`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Backend, Operation, RequestCtx, Service};
use crate::error::{Error, Result};
use crate::group::CommittedInfo;
use crate::history::{GroupHistory, INTERVAL, ProduceHistory, Snapshot, TopicHistory, TopicsHistory};

/// How long after the last history request a Kafka-backend replica keeps sampling.
pub const KAFKA_SAMPLE_WHILE_READ: Duration = Duration::from_secs(600);
/// Most groups sampled per sample (in listing order).
const MAX_GROUPS: usize = 1_000;
/// Most topics a Kafka-backend replica samples (two ListOffsets each).
const MAX_KAFKA_TOPICS: usize = 200;
/// Most groups a Kafka-backend replica samples (an OffsetFetch and ListOffsets each).
const MAX_KAFKA_GROUPS: usize = 100;

impl Service {
    /// Samples every [`INTERVAL`] until `stop` is cancelled.
    pub async fn run_history(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if matches!(self.0.backend, Backend::Kafka { .. }) && !self.0.history.recently_read(KAFKA_SAMPLE_WHILE_READ)
            {
                continue;
            }
            match self.snapshot().await {
                Ok(snapshot) => self.0.history.push(crate::log::now_ms(), snapshot),
                // The next tick tries again; the gap shows as missing points.
                Err(e) => tracing::debug!(error = %e, "sampling the history failed"),
            }
        }
    }

    /// Everything one sample holds: end offsets of every partition and every group's lag.
    async fn snapshot(&self) -> Result<Snapshot> {
        let mut snap = Snapshot::default();
        let (groups, max_groups) = match &self.0.backend {
            Backend::Embedded { log, groups } => {
                for t in log.topics() {
                    for p in t.partitions().iter() {
                        snap.ends.push((t.name.to_string(), p.index, p.end()));
                    }
                }
                (groups.list(), MAX_GROUPS)
            }
            Backend::Kafka { cluster } => {
                for (topic, count) in cluster.topic_names().await?.into_iter().take(MAX_KAFKA_TOPICS) {
                    let partitions: Vec<u32> = (0..count).collect();
                    match cluster.watermarks(&topic, &partitions).await {
                        Ok(w) => snap.ends.extend(w.iter().enumerate().map(|(p, w)| (topic.clone(), p as u32, w.end))),
                        // A gap in this topic's series; the others are sampled.
                        Err(e) => tracing::debug!(error = %e, topic, "sampling a topic's end offsets failed"),
                    }
                }
                // A broker without ListGroups (librdkafka's mock) still has the groups
                // someone asked about sampled.
                let groups = cluster.list_groups().await.unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "listing groups for the history failed");
                    Vec::new()
                });
                (groups, MAX_KAFKA_GROUPS)
            }
        };
        let mut groups: Vec<String> = groups.into_iter().take(max_groups).collect();
        for g in self.0.history.watched(KAFKA_SAMPLE_WHILE_READ) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        for group in groups {
            match self.group_lag(&group).await {
                Ok(lags) => {
                    for (tp, committed, end) in lags {
                        snap.lags.push((group.clone(), tp.topic, tp.partition, end.saturating_sub(committed)));
                    }
                }
                Err(Error::UnknownGroup(_)) => {}
                // A gap in this group's series; the others are sampled.
                Err(e) => tracing::debug!(error = %e, group, "sampling a group's lag failed"),
            }
        }
        Ok(snap)
    }

    /// (partition, committed, end) of every partition `group` committed an offset for.
    async fn group_lag(&self, group: &str) -> Result<Vec<(crate::group::TopicPartition, u64, u64)>> {
        match &self.0.backend {
            Backend::Embedded { groups, .. } => Ok(groups
                .describe(group)
                .await?
                .offsets
                .into_iter()
                .filter_map(|CommittedInfo { tp, committed, end_offset, .. }| Some((tp, committed?, end_offset)))
                .collect()),
            Backend::Kafka { cluster } => cluster.group_lag(group).await,
        }
    }

    /// Records per second of every topic the principal may describe.
    pub fn topics_history(&self, ctx: &RequestCtx) -> Result<TopicsHistory> {
        self.authorize(ctx, Operation::ListTopics)?;
        self.0.history.touch();
        Ok(self.0.history.topics(|name| self.may(ctx, Operation::DescribeTopic(name))))
    }

    /// One topic's partitions over the window (`describe` on the topic).
    pub async fn topic_history(&self, ctx: &RequestCtx, topic: &str) -> Result<TopicHistory> {
        self.authorize(ctx, Operation::DescribeTopic(topic))?;
        self.0.history.touch();
        match &self.0.backend {
            Backend::Embedded { log, .. } => {
                log.topic(topic)?;
            }
            Backend::Kafka { cluster } => {
                cluster.partition_count(topic).await?;
            }
        }
        Ok(self.0.history.topic(topic).unwrap_or_else(|| TopicHistory::empty(self.0.history.times())))
    }

    /// One group's lag over the window (`describe` on the group).
    pub async fn group_history(&self, ctx: &RequestCtx, group: &str) -> Result<GroupHistory> {
        self.authorize(ctx, Operation::DescribeGroup(group))?;
        self.0.history.touch();
        if let Some(h) = self.0.history.group(group) {
            self.0.history.watch(group);
            return Ok(h);
        }
        // No lag sampled: an unknown group is a 404, a known one an empty history (and
        // sampled from now on, listed by its backend or not). On the Kafka backend a group
        // is known by its members or its committed offsets; a broker without DescribeGroups
        // (librdkafka's mock) shows it by the latter.
        match self.group_info(group).await {
            Ok(_) => {}
            Err(Error::Unsupported(_)) => {
                if self.group_lag(group).await?.is_empty() {
                    return Err(Error::UnknownGroup(group.to_owned()));
                }
            }
            Err(e) => return Err(e),
        }
        self.0.history.watch(group);
        Ok(GroupHistory::empty(self.0.history.times()))
    }

    /// Produce latency per interval (`describe` on the cluster, as `/metrics`).
    pub fn produce_history(&self, ctx: &RequestCtx) -> Result<ProduceHistory> {
        self.authorize(ctx, Operation::DescribeCluster)?;
        self.0.history.touch();
        Ok(self.0.history.produce())
    }
}
