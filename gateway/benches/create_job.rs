//! Memory of one large CreateJob: the control API's parsing, the engine and the sled store in-process, on
//! disk, with the gateway's allocator settings (jemalloc, two arenas, no thread caches).
//!
//! Each size runs in a fresh child process (this executable again, `SPRIG_BENCH_CHILD=N`), so that one
//! size's heap and sled cache do not flatter or burden the next. The child opens a store with the default
//! cache (`jobs.store_cache_mb`), makes the request body a fleet backend would send (`t-00000` … as thing
//! names: 50,000 targets are a 500 KB body, within the control API's 512 KiB), records its RSS, resets its
//! peak (`/proc/self/clear_refs`), then parses the body as the control API does
//! ([`sprig_gateway::control::parse_request`]) and runs [`Engine::create_job`] to its reply, with the
//! `Created` event taken by a receiver as the notifier would take it (the notifier's own work, reading
//! each thing's state to notify it, is measured end to end by `tests/tests/create_job.rs`). It reports,
//! above what the process held before the request:
//! - peak RSS (`VmHWM`) and RSS once the call has returned (`VmRSS`, before jemalloc's decay returns
//!   freed pages; what the kernel sees the gateway hold);
//! - the peak and the final heap bytes in use (a counting global allocator over jemalloc): what the
//!   request itself kept, apart from pages the allocator has not returned yet;
//! - the CreateJob call's time.
//!
//! `SPRIG_BENCH_TARGETS` (default `1000,20000,50000`) chooses the sizes, `SPRIG_BENCH_BATCH` the
//! executions written per store transaction (default: `jobs.creation_batch_size`'s). Run with
//! `cargo bench -p sprig-gateway --bench create_job`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use sprig_gateway::auth::Grants;
use sprig_gateway::control::parse_request;
use sprig_gateway::jobs::api::CreateJobRequest;
use sprig_gateway::jobs::Engine;
use sprig_gateway::store::Store;
use tokio::sync::mpsc;

// The gateway's allocator and options (see `gateway/src/main.rs`).
#[cfg(target_os = "linux")]
use tikv_jemalloc_sys as _;

#[cfg(target_os = "linux")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static malloc_conf: MallocConf = MallocConf(c"narenas:2,tcache:false".as_ptr());

#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable, NUL-terminated string.
unsafe impl Sync for MallocConf {}

/// Counts the heap bytes in use, and their peak, over the system allocator (jemalloc's `malloc`).
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = IN_USE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed on unchanged to `System`; only counters are kept beside.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Relaxed);
        System.dealloc(p, layout)
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, size);
        if !q.is_null() {
            if size >= layout.size() {
                grew(size - layout.size());
            } else {
                IN_USE.fetch_sub(layout.size() - size, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A field of `/proc/self/status`, in KiB.
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1048576.0)
}

const CHILD: &str = "SPRIG_BENCH_CHILD";

fn main() {
    match std::env::var(CHILD) {
        Ok(n) => child(n.parse().expect("SPRIG_BENCH_CHILD=N")),
        Err(_) => parent(),
    }
}

fn parent() {
    let sizes: Vec<usize> = std::env::var("SPRIG_BENCH_TARGETS")
        .unwrap_or_else(|_| "1000,20000,50000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("SPRIG_BENCH_TARGETS: numbers, comma-separated")
        })
        .collect();
    let me = std::env::current_exe().expect("the bench executable");
    println!("sprig CreateJob memory benchmark: one request per fresh process, above what it held before");
    println!();
    println!("| targets (body) | peak RSS | RSS after | heap peak | heap after | CreateJob |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let out = Command::new(&me)
            .env(CHILD, n.to_string())
            .output()
            .expect("run the bench child");
        assert!(
            out.status.success(),
            "the child for {n} targets failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn child(targets: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = sprig_gateway::config::Config::default();
    let store = Arc::new(Store::open(dir.path(), config.jobs.store_cache_mb << 20).unwrap());
    let (deletions, _deletions) = mpsc::unbounded_channel();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let batch = std::env::var("SPRIG_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(config.jobs.creation_batch_size);
    let engine = Arc::new(
        Engine::new(
            store,
            sprig_gateway::daemon::engine_limits(&config.jobs),
            "bench",
            deletions,
            events_tx,
        )
        .with_creation_batch_size(batch),
    );
    let names: Vec<String> = (0..targets).map(|i| format!("t-{i:05}")).collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "jobId": "big",
        "targets": names,
        "document": "{\"operation\":\"firmware-update\"}",
        "clientToken": "bench",
    }))
    .unwrap();
    drop(names);

    let rss_before = status_kb("VmRSS:");
    let heap_before = IN_USE.load(Relaxed);
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (/proc/self/clear_refs)");
    PEAK.store(heap_before, Relaxed);

    let started = Instant::now();
    let things = runtime.block_on(async {
        let (_token, request) = parse_request::<CreateJobRequest>(&body).unwrap();
        engine.create_job(Grants::all(), request).await.unwrap();
        events.recv().await.expect("the Created event").things.len()
    });
    let took = started.elapsed();
    assert_eq!(things, targets);

    let kib = |kb: u64| kb as f64 * 1024.0;
    let heap = |bytes: usize| bytes as f64 - heap_before as f64;
    println!(
        "| {targets} ({} KB) | {} | {} | {} | {} | {:.0} ms |",
        body.len() / 1000,
        mib(kib(status_kb("VmHWM:")) - kib(rss_before)),
        mib(kib(status_kb("VmRSS:")) - kib(rss_before)),
        mib(heap(PEAK.load(Relaxed))),
        mib(heap(IN_USE.load(Relaxed))),
        took.as_secs_f64() * 1000.0
    );
}
