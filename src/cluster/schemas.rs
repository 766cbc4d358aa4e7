//! The Schema Registry's log on the Kafka backend: the cluster's `_schemas` topic (one
//! partition, kept forever), holding the registry's entries as records keyed as the embedded
//! store keys them (`g/s/…`, `g/v/…`, `g/c/…`; a delete is a tombstone).
//!
//! Every replica follows the topic into its own registry ([`follow`]); writes append and wait
//! for the follower to apply them (`registry::state`), so any replica answers for any other.

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use crate::error::{Error, Result};
use crate::log::Acks;
use crate::record::{Blob, Format, NewRecord};
use crate::registry::Registry;
use crate::service::Produced;
use crate::topic::TopicConfigPatch;

/// The topic, as Confluent's registry names its own.
pub const TOPIC: &str = "_schemas";

/// Makes the topic unless it exists (another replica, or an earlier run, made it).
async fn ensure_topic(cluster: &Cluster) -> Result<()> {
    match cluster.partition_count(TOPIC).await {
        Ok(_) => return Ok(()),
        Err(Error::UnknownTopic(_)) => {}
        Err(e) => return Err(e),
    }
    let patch = TopicConfigPatch { retention_ms: Some(-1), ..Default::default() };
    match cluster.create_topic(TOPIC, 1, &patch).await {
        Ok(_) | Err(Error::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The topic's end offset: what a write must have applied before it decides.
pub async fn end(cluster: &Cluster) -> Result<u64> {
    ensure_topic(cluster).await?;
    Ok(cluster.watermarks(TOPIC, &[0]).await?.first().map_or(0, |w| w.end))
}

/// Appends entries in order: the offset of the last.
pub async fn append(cluster: &Cluster, changes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<u64> {
    ensure_topic(cluster).await?;
    let records: Vec<NewRecord<'_>> = changes
        .iter()
        .map(|(key, value)| NewRecord {
            key: Some(Blob::new(Format::Binary, key.as_slice())),
            value: value.as_deref().map(|v| Blob::new(Format::Binary, v)),
            headers: Vec::new(),
            timestamp: None,
            partition: Some(0),
        })
        .collect();
    match cluster.produce(TOPIC, &records, Some(0), Acks::All).await? {
        Produced::Written(meta) => {
            meta.iter().map(|m| m.offset).max().ok_or_else(|| Error::Internal("an empty _schemas append".into()))
        }
        Produced::Accepted { .. } => Err(Error::Internal("a _schemas append was not acknowledged".into())),
    }
}

/// Reads `_schemas` into `registry`, from its beginning and then as it grows, until shutdown.
pub async fn follow(cluster: Arc<Cluster>, registry: Arc<Registry>) {
    let stop = cluster.shutdown.clone();
    let mut next = 0u64;
    let mut ready = false;
    let pause = || async {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => {}
        }
    };
    while !stop.is_cancelled() {
        if !ready {
            match ensure_topic(&cluster).await {
                Ok(()) => ready = true,
                Err(e) => {
                    tracing::debug!(error = %e, "the _schemas topic is not reachable yet");
                    pause().await;
                    continue;
                }
            }
        }
        let read = tokio::select! {
            read = cluster.read(TOPIC, 0, next, 1000, 1 << 20, Duration::from_secs(5)) => read,
            () = stop.cancelled() => return,
        };
        match read {
            Ok(read) => {
                let end = read.end_offset;
                match read.records() {
                    Ok(records) if records.is_empty() => {
                        // Nothing (more) up to the end; compaction or retention may leave a gap.
                        next = next.max(end);
                    }
                    Ok(records) => {
                        for (offset, record) in records {
                            next = offset + 1;
                            if let Some(key) = &record.key {
                                registry.apply_logged(&key.bytes, record.value.as_ref().map(|v| &*v.bytes), next);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, offset = next, "_schemas records do not decode");
                        pause().await;
                        continue;
                    }
                }
                if next >= end {
                    registry.applied_to(end);
                }
            }
            Err(Error::OffsetOutOfRange { beginning, .. }) if next < beginning => next = beginning,
            Err(e) => {
                tracing::warn!(error = %e, "reading _schemas failed");
                pause().await;
            }
        }
    }
}
