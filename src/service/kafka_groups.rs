//! The service calls behind Kafka's group APIs (classic protocol): each authorizes as
//! Kafka's broker does (the group: Read to be a member or commit, Describe to look;
//! each topic: Read to commit, Describe to fetch offsets) and calls the groups.

use bytes::Bytes;

use super::{Operation, RequestCtx, Service};
use crate::error::Result;
pub use crate::group::classic::{ClassicError, JoinRequest, JoinResult};
pub use crate::group::kafka::{CommitOutcome, KafkaGroupView};

type ClassicResult<T> = std::result::Result<T, ClassicError>;

/// A group's committed offsets per topic: (partition, offset) for each, or why the topic's
/// may not be seen.
pub type CommittedOffsets = Vec<(String, Result<Vec<(u32, Option<u64>)>>)>;

impl Service {
    pub async fn kafka_join_group(&self, ctx: &RequestCtx, group: &str, req: JoinRequest) -> ClassicResult<JoinResult> {
        self.authorize(ctx, Operation::ConsumeGroup(group))?;
        self.groups()?.kafka_join(group, req).await
    }

    pub async fn kafka_sync_group(
        &self,
        ctx: &RequestCtx,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> ClassicResult<Bytes> {
        self.authorize(ctx, Operation::ConsumeGroup(group))?;
        self.groups()?.kafka_sync(group, member, generation, assignments).await
    }

    pub async fn kafka_heartbeat(
        &self,
        ctx: &RequestCtx,
        group: &str,
        member: &str,
        generation: i32,
    ) -> ClassicResult<()> {
        self.authorize(ctx, Operation::ConsumeGroup(group))?;
        self.groups()?.kafka_heartbeat(group, member, generation).await
    }

    pub async fn kafka_leave_group(
        &self,
        ctx: &RequestCtx,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> ClassicResult<Vec<ClassicResult<()>>> {
        self.authorize(ctx, Operation::ConsumeGroup(group))?;
        self.groups()?.kafka_leave(group, members).await
    }

    /// Commits offsets (topic, partition, offset); a topic the principal may not read is
    /// refused for its partitions only.
    pub async fn kafka_commit(
        &self,
        ctx: &RequestCtx,
        group: &str,
        member: &str,
        generation: i32,
        offsets: &[(String, u32, u64)],
    ) -> ClassicResult<CommitOutcome> {
        self.authorize(ctx, Operation::ConsumeGroup(group))?;
        let mut allowed = Vec::with_capacity(offsets.len());
        let mut denied = Vec::new();
        for (t, p, o) in offsets {
            match self.authorize(ctx, Operation::ReadTopic(t)) {
                Ok(()) => allowed.push((t.clone(), *p, *o)),
                Err(e) => denied.push((t.clone(), *p, Err(e))),
            }
        }
        let mut outcome = if allowed.is_empty() {
            Vec::new()
        } else {
            self.groups()?.kafka_commit(group, member, generation, &allowed).await?
        };
        outcome.extend(denied);
        Ok(outcome)
    }

    /// Committed offsets of `topics` (every topic the principal may describe, if `None`),
    /// per topic: each partition's offset (`None`: nothing committed), or why the topic
    /// may not be seen.
    pub async fn kafka_committed(
        &self,
        ctx: &RequestCtx,
        group: &str,
        topics: Option<Vec<(String, Vec<u32>)>>,
    ) -> Result<CommittedOffsets> {
        self.authorize(ctx, Operation::DescribeGroup(group))?;
        let mut out: CommittedOffsets = Vec::new();
        let wanted = match topics {
            None => {
                let all = self.groups()?.kafka_committed(group, None).await;
                let mut by_topic: std::collections::BTreeMap<String, Vec<(u32, Option<u64>)>> = Default::default();
                for (t, p, o) in all {
                    by_topic.entry(t).or_default().push((p, o));
                }
                for (t, parts) in by_topic {
                    if self.authorize(ctx, Operation::DescribeTopic(&t)).is_ok() {
                        out.push((t, Ok(parts)));
                    }
                }
                return Ok(out);
            }
            Some(topics) => topics,
        };
        let mut allowed = Vec::with_capacity(wanted.len());
        for (t, ps) in wanted {
            match self.authorize(ctx, Operation::DescribeTopic(&t)) {
                Ok(()) => allowed.push((t, ps)),
                Err(e) => out.push((t, Err(e))),
            }
        }
        let found = self.groups()?.kafka_committed(group, Some(&allowed)).await;
        for (t, _) in &allowed {
            let parts = found.iter().filter(|(ft, _, _)| ft == t).map(|(_, p, o)| (*p, *o)).collect();
            out.push((t.clone(), Ok(parts)));
        }
        Ok(out)
    }

    /// Groups the principal may describe, as ListGroups shows them.
    pub async fn kafka_list_groups(&self, ctx: &RequestCtx) -> Result<Vec<KafkaGroupView>> {
        self.authorize(ctx, Operation::ListGroups)?;
        let all = self.groups()?.kafka_list().await;
        Ok(all.into_iter().filter(|g| self.authorize(ctx, Operation::DescribeGroup(&g.group)).is_ok()).collect())
    }

    /// A group as DescribeGroups shows it (`None`: it does not exist).
    pub async fn kafka_describe_group(&self, ctx: &RequestCtx, group: &str) -> Result<Option<KafkaGroupView>> {
        self.authorize(ctx, Operation::DescribeGroup(group))?;
        Ok(self.groups()?.kafka_describe(group).await)
    }
}
