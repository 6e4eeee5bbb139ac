//! Gives the memory of closed connections back to the operating system.
//!
//! Every connection costs the heap well over 100 KB of address space (rumqttd preallocates its router
//! buffers: outgoing notifications 200 x 248 bytes plus the link's 100 x 248, acks 100 x 2, in-flight
//! 100...), of which it writes only a fraction. glibc's malloc keeps what is freed and, since the freed
//! blocks lie between blocks still in use, gives none of it back. The next connections get those blocks at
//! other offsets and write other pages of them, so each connect/disconnect cycle makes more of that
//! address space resident: RSS grew ~8 KiB per connect/disconnect (+835 MiB over 10 cycles of 10,000
//! devices) while the bytes in use stayed flat. `MALLOC_ARENA_MAX=1` does not help: one arena fragments
//! just the same.
//!
//! So, shortly after many connections close (at least [`WORTH_TRIMMING`] since the last trim, once a
//! burst of disconnections has settled, and at most once per [`SETTLE`]), the broker asks glibc to
//! release the free pages of every arena (`malloc_trim(0)`, which since glibc 2.8 also releases whole free
//! pages in the middle of a heap). On other platforms this does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// How long disconnections must have stopped before trimming; also the least time between two trims.
const SETTLE: Duration = Duration::from_millis(500);
/// Closed connections that make a trim worth its cost. A trim walks the whole heap (tens of milliseconds
/// with 10,000 devices attached) and the pages it releases fault back in at the next allocations, while
/// a few closed connections free a few hundred KB: an operator's CLI call, one per request, would
/// otherwise trim the heap under every fan-out it causes (15 % of a 10,000-device fan-out's CPU).
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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: `malloc_trim` takes a plain integer, touches only glibc's allocator state (under its locks)
    // and is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}
