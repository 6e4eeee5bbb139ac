//! Per-connection publish quotas, as AWS IoT Core sets them (100 publishes and 512 KiB per second per
//! connection; `broker.max_publishes_per_second`, `max_publish_bytes_per_second`). A client over its quota
//! is slowed down, not refused: its connection's reader waits before it takes the next packet, so TCP
//! pushes back on the client (EMQX's rate limiter does the same). Whatever a client does, it brings in
//! at most its quota's worth of messages to route, queue and hold for slow readers.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Token buckets for one connection's publishes: messages and bytes (topic and payload).
pub(crate) struct PublishQuota {
    messages: Option<DefaultDirectRateLimiter>,
    bytes: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    /// Whether this connection has been slowed down yet (logged once).
    slowed: bool,
}

impl PublishQuota {
    /// Quotas of `per_second` publishes and `bytes_per_second` bytes (0: none). The byte bucket holds at
    /// least `largest` (the largest packet accepted), so that any one publish can pass.
    pub(crate) fn new(per_second: u32, bytes_per_second: u32, largest: usize) -> PublishQuota {
        let messages =
            NonZeroU32::new(per_second).map(|rate| RateLimiter::direct(Quota::per_second(rate)));
        let bytes = NonZeroU32::new(bytes_per_second).map(|rate| {
            let largest = u32::try_from(largest).unwrap_or(u32::MAX);
            let burst = NonZeroU32::new(largest.max(rate.get())).unwrap_or(rate);
            (
                RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                burst,
            )
        });
        PublishQuota {
            messages,
            bytes,
            slowed: false,
        }
    }

    /// Waits until one more publish of `size` bytes fits the quotas, and takes it from them.
    pub(crate) async fn admit(&mut self, client_id: &str, size: usize) {
        if let Some(messages) = &self.messages {
            if messages.check().is_err() {
                Self::note_slowed(&mut self.slowed, client_id);
                messages.until_ready().await;
            }
        }
        if let Some((bytes, burst)) = &self.bytes {
            let size = u32::try_from(size)
                .unwrap_or(u32::MAX)
                .clamp(1, burst.get());
            let size = NonZeroU32::new(size).unwrap_or(NonZeroU32::MIN);
            if !matches!(bytes.check_n(size), Ok(Ok(()))) {
                Self::note_slowed(&mut self.slowed, client_id);
                // Cannot fail: `size` is at most the burst.
                let _ = bytes.until_n_ready(size).await;
            }
        }
    }

    fn note_slowed(slowed: &mut bool, client_id: &str) {
        if !*slowed {
            *slowed = true;
            tracing::info!(
                client_id,
                "publishing faster than its quota allows: slowed down"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_client_over_its_message_quota_waits() {
        let mut quota = PublishQuota::new(20, 0, 1024);
        let start = Instant::now();
        for _ in 0..30 {
            quota.admit("fast", 10).await;
        }
        // 20 at once (the bucket starts full), then 10 more at 20 per second: half a second.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(quota.slowed);
    }

    #[tokio::test]
    async fn a_client_over_its_byte_quota_waits_and_a_large_publish_still_passes() {
        let mut quota = PublishQuota::new(0, 1000, 4000);
        let start = Instant::now();
        quota.admit("big", 4000).await; // the whole bucket, at once
        assert!(start.elapsed() < Duration::from_millis(200));
        assert!(!quota.slowed);
        quota.admit("big", 500).await; // half a second's worth more
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(quota.slowed);
    }

    #[tokio::test]
    async fn no_quota_never_waits() {
        let mut quota = PublishQuota::new(0, 0, 1024);
        for _ in 0..10_000 {
            quota.admit("free", 1_000_000).await;
        }
        assert!(!quota.slowed);
    }
}
