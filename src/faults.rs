//! Faults injected at run time, for the tests that prove failures are not silent:
//! a store write that fails, a staging step that fails, a writer reply that is
//! lost. Always compiled, off by default; off, each check is one relaxed atomic load.
//!
//! A failed write is a real RocksDB error: the write is issued with options
//! RocksDB refuses (a synced write without a WAL), so everything from the store
//! call upwards runs exactly as it would for a disk error.

use std::sync::atomic::{AtomicU32, Ordering};

/// Counters of faults still to inject; each injection uses one up.
#[derive(Debug, Default)]
pub struct Faults {
    /// Store writes (`Store::write`) to fail, from the next one on.
    fail_writes: AtomicU32,
    /// Appends to a write being built to let through before one fails (0 = off).
    fail_append_after: AtomicU32,
    /// Writer replies to drop without answering (as a writer bug or death would).
    drop_replies: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter.load(Ordering::Relaxed) > 0
        && counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
}

impl Faults {
    /// Fails the next `n` store writes.
    pub fn fail_writes(&self, n: u32) {
        self.fail_writes.store(n, Ordering::Release);
    }

    /// Lets `ok` appends through, then fails the next one.
    pub fn fail_append_after(&self, ok: u32) {
        self.fail_append_after.store(ok + 1, Ordering::Release);
    }

    /// Drops the writer's next `n` replies.
    pub fn drop_replies(&self, n: u32) {
        self.drop_replies.store(n, Ordering::Release);
    }

    pub(crate) fn write_fails(&self) -> bool {
        take(&self.fail_writes)
    }

    pub(crate) fn append_fails(&self) -> bool {
        if self.fail_append_after.load(Ordering::Relaxed) == 0 {
            return false;
        }
        // Counts down to 1, which is the failing append; then off.
        matches!(self.fail_append_after.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)), Ok(1))
    }

    pub(crate) fn reply_dropped(&self) -> bool {
        take(&self.drop_replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_inject_exactly_what_was_asked() {
        let f = Faults::default();
        assert!(!f.write_fails() && !f.append_fails() && !f.reply_dropped(), "off by default");
        f.fail_writes(2);
        assert!(f.write_fails() && f.write_fails() && !f.write_fails());
        f.fail_append_after(2);
        assert_eq!(
            [f.append_fails(), f.append_fails(), f.append_fails(), f.append_fails()],
            [false, false, true, false]
        );
        f.drop_replies(1);
        assert!(f.reply_dropped() && !f.reply_dropped());
    }
}
