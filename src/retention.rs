//! The retention task: on a timer, asks the log to drop batches past each topic's
//! `retention_ms` / `retention_bytes`. The decisions live in `Log::apply_retention`
//! (which takes `now`); this file is only the clock. The same tick compacts away what
//! was removed (`Store::reclaim_removed`) and turns the store's blob garbage collection
//! on and off (`Store::tend_blob_gc`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::log::{Log, now_ms};

/// Runs until `stop` is cancelled.
pub async fn run(log: Arc<Log>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = log.apply_retention(now_ms()).await;
        if report.moved > 0 {
            tracing::info!(partitions = report.moved, "retention removed old records");
        }
        for (topic, partition, e) in &report.failed {
            tracing::error!(topic, partition, error = %e, "retention failed for a partition; it keeps its records");
        }
        // What deleted topics and these cuts removed is compacted away, so its space comes
        // back on a store that nothing is written to as well.
        match log.reclaim_removed().await {
            Ok(Some(r)) => tracing::info!(topics = r.topics, removed_bytes = r.bytes, "compacted removed records away"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "compacting removed records away failed"),
        }
        // Blob files that retention left part garbage are collected while that pays.
        match log.tend_blob_gc().await {
            Ok(space) if space.changed => tracing::info!(
                collecting = space.collecting,
                garbage_bytes = space.garbage,
                blob_bytes = space.bytes,
                "blob garbage collection {}",
                if space.collecting { "started" } else { "stopped" }
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "checking blob garbage failed"),
        }
        // Idempotency keys past their window are forgotten on the same timer.
        if let Err(e) = log.expire_idempotency_keys(now_ms()).await {
            tracing::error!(error = %e, "expiring idempotency keys failed");
        }
        // And idempotent producers that stopped sending.
        match log.expire_producers(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(states = n, "forgot idempotent producers past their expiry"),
            Err(e) => tracing::error!(error = %e, "expiring idempotent producers failed"),
        }
    }
}
