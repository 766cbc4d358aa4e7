//! The bounds of what one request may ask for, checked once for every transport.

use std::time::Duration;

use crate::error::{Error, Result};

/// The most records one read, poll or stream frame returns.
pub const MAX_RECORDS: u32 = 10_000;
/// The most bytes one read may ask for.
pub const MAX_READ_BYTES: usize = 64 * 1024 * 1024;
/// The most bytes of records in one WebSocket frame.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// The longest a read or poll may long-poll.
pub const MAX_WAIT_MS: u64 = 60_000;
/// The longest a stream may linger to fill a frame.
pub const MAX_LINGER_MS: u64 = 1_000;

/// How long a WebSocket group member may hold records back (no credit) before
/// it leaves its group: Kafka's `max.poll.interval.ms`, default and bounds.
pub const DEFAULT_MAX_POLL_INTERVAL_MS: u64 = 300_000;
pub const MIN_MAX_POLL_INTERVAL_MS: u64 = 1_000;
pub const MAX_MAX_POLL_INTERVAL_MS: u64 = 86_400_000;

/// A `max_poll_interval_ms` within its bounds, the default when absent.
pub fn max_poll_interval(value: Option<u64>) -> Result<Duration> {
    match value.unwrap_or(DEFAULT_MAX_POLL_INTERVAL_MS) {
        ms @ MIN_MAX_POLL_INTERVAL_MS..=MAX_MAX_POLL_INTERVAL_MS => Ok(Duration::from_millis(ms)),
        _ => Err(Error::parameter(
            "max_poll_interval_ms",
            format!("max_poll_interval_ms must be between {MIN_MAX_POLL_INTERVAL_MS} and {MAX_MAX_POLL_INTERVAL_MS}"),
        )),
    }
}

/// A record count within `1..=MAX_RECORDS`, `default` when absent.
pub fn max_records(field: &str, value: Option<u32>, default: u32) -> Result<u32> {
    match value.unwrap_or(default) {
        n @ 1..=MAX_RECORDS => Ok(n),
        _ => Err(Error::parameter(field, format!("{field} must be between 1 and {MAX_RECORDS}"))),
    }
}

/// A byte count within `1..=max`, `default` when absent.
pub fn max_bytes(field: &str, value: Option<usize>, default: usize, max: usize) -> Result<usize> {
    match value.unwrap_or(default) {
        n if n >= 1 && n <= max => Ok(n),
        _ => Err(Error::parameter(field, format!("{field} must be between 1 and {max}"))),
    }
}

/// A wait of at most `max_ms`, zero when absent.
pub fn wait(field: &str, value: Option<u64>, max_ms: u64) -> Result<Duration> {
    match value.unwrap_or(0) {
        ms if ms <= max_ms => Ok(Duration::from_millis(ms)),
        _ => Err(Error::parameter(field, format!("{field} is at most {max_ms}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_errors_name_the_parameter() {
        assert_eq!(max_records("limit", None, 100).unwrap(), 100);
        assert_eq!(max_records("limit", Some(MAX_RECORDS), 100).unwrap(), MAX_RECORDS);
        for bad in [0, MAX_RECORDS + 1] {
            let e = max_records("limit", Some(bad), 100).unwrap_err();
            assert!(matches!(&e, Error::InvalidParameter { field: Some(f), .. } if f == "limit"), "{e}");
        }
        assert!(max_bytes("max_bytes", Some(0), 1, 10).is_err());
        assert_eq!(max_bytes("max_bytes", Some(10), 1, 10).unwrap(), 10);
        assert_eq!(wait("wait_ms", Some(MAX_WAIT_MS), MAX_WAIT_MS).unwrap(), Duration::from_secs(60));
        assert!(wait("wait_ms", Some(MAX_WAIT_MS + 1), MAX_WAIT_MS).is_err());
    }
}
