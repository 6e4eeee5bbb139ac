//! The wall clock, read at the edges only: the engine's commands, the device API's and the notifier's
//! timestamps, the recovery runner. The rules ([`super::transitions`]) and the records ([`crate::model`])
//! are handed `now`, so tests give them any time they like.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
