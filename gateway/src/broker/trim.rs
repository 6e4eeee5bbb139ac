//! Gives the memory of closed connections back to the operating system.
//!
//! Every connection costs the heap well over 100 KB of address space (rumqttd preallocates its router
//! buffers: outgoing notifications 200 x 248 bytes plus the link's 100 x 248, acks 100 x 2, in-flight
//! 100...), of which it writes only a fraction. Once freed, the pages it wrote stay with the allocator:
//! jemalloc (the process's allocator, see `main.rs`) gives its dirty pages back only some seconds later,
//! and only when something allocates. With glibc's malloc, which sprig used first, the freed blocks lay
//! between blocks still in use and none came back at all: RSS grew ~8 KiB per connect/disconnect (+835 MiB
//! over 10 cycles of 10,000 devices) while the bytes in use stayed flat.
//!
//! So, shortly after many connections close (at least [`WORTH_TRIMMING`] since the last trim, once a
//! burst of disconnections has settled, and at most once per [`SETTLE`]), the broker has the allocator
//! release the free pages of every arena at once. Without jemalloc (not Linux) this does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// How long disconnections must have stopped before trimming; also the least time between two trims.
const SETTLE: Duration = Duration::from_millis(500);
/// Closed connections that make a trim worth its cost. The pages a trim releases fault back in at the
/// next allocations, while a few closed connections free a few hundred KB: an operator's CLI call, one
/// per request, would otherwise trim the heap under every fan-out it causes (with glibc, whose trim
/// walked the whole heap, that was 15 % of a 10,000-device fan-out's CPU).
const WORTH_TRIMMING: u64 = 64;
/// A steady stream of disconnections is trimmed at least this often.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Counts closed connections and wakes the trimming task.
#[derive(Debug, Default)]
pub(crate) struct Trimmer {
    closed: AtomicU64,
    wake: Notify,
}

impl Trimmer {
    /// A connection closed (called from `Drop`: never blocks).
    pub(crate) fn closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Trims after closed connections until shutdown.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut trimmed_at = 0;
        loop {
            tokio::select! {
                () = super::stopped(&mut shutdown) => return,
                () = self.wake.notified() => {}
            }
            if self.closed.load(Ordering::Relaxed) < trimmed_at + WORTH_TRIMMING {
                // Too few closed since the last trim (or a wake-up stored during the last round, whose
                // closings that round covered): wait for more.
                continue;
            }
            // Let the burst finish: trimming while connections are still closing would be wasted.
            let started = tokio::time::Instant::now();
            let mut seen = self.closed.load(Ordering::Relaxed);
            loop {
                tokio::time::sleep(SETTLE).await;
                let now = self.closed.load(Ordering::Relaxed);
                if now == seen || started.elapsed() >= MAX_WAIT {
                    break;
                }
                seen = now;
            }
            trimmed_at = self.closed.load(Ordering::Relaxed);
            let took = tokio::task::spawn_blocking(|| {
                let started = std::time::Instant::now();
                release_free_memory();
                started.elapsed()
            })
            .await;
            if let Ok(took) = took {
                tracing::debug!(?took, "returned free heap memory to the OS");
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn release_free_memory() {
    // `arena.<MALLCTL_ARENAS_ALL>.purge`: purges the unused dirty pages of every arena (jemalloc 5).
    let purge_all = c"arena.4096.purge";
    // SAFETY: a NUL-terminated control name and no values in or out, as jemalloc documents for `purge`;
    // jemalloc takes its own locks and may be called from any thread.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            purge_all.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if status != 0 {
        tracing::debug!(status, "jemalloc refused to purge its arenas");
    }
}

#[cfg(not(target_os = "linux"))]
fn release_free_memory() {}
