//! The `sprig` binary: everything happens in [`sprig_gateway::cli`].
//!
//! On Linux the process allocates with jemalloc, which replaces glibc's `malloc` for Rust and C code
//! alike (the `tikv-jemalloc-sys` crate, linked here). The gateway's memory is mostly connections that
//! come and go: rumqttd sizes every connection's buffers far beyond what it writes, and glibc's heap,
//! where those buffers and long-lived small objects interleave, fragmented so that RSS grew with every
//! connect/disconnect cycle of a fleet. jemalloc keeps small objects apart from large buffers and leaves
//! untouched capacity unbacked: at 10,000 devices, 41 KiB instead of 54 KiB per idle device, and RSS
//! that stops growing (README, "Notification fan-out and memory").
//!
//! jemalloc replaces the symbol `malloc` rather than serving Rust's global allocator: the compiler turns
//! an allocation followed by zeroing into `calloc` only for the C allocator, and sled zeroes 21 MB of
//! histograms at start-up that, through `calloc`, stay unbacked pages.

#[cfg(target_os = "linux")]
use tikv_jemalloc_sys as _;

/// jemalloc's options, read before `main`; the `MALLOC_CONF` environment variable overrides them.
///
/// - `narenas:2`: jemalloc would make 4 arenas per CPU; each keeps its own free pages, so a connection
///   opened on one worker thread and closed on another leaves memory behind in two. The gateway's
///   allocations come from a few threads (two runtime workers, the router, blocking calls): two arenas
///   keep lock contention low and fragmentation lower.
/// - `tcache_max:8192,tcache_nslots_small_max:16`: per-thread caches, small ones. Without a cache every
///   allocation and free takes its arena's lock: forwarding messages to the uplink, a quarter of the
///   gateway's CPU went to those locks (15.5 instead of 22 µs per QoS 1 message, 7.5 instead of 9.5 at
///   QoS 0; README, "The uplink"). Caches as jemalloc sizes them by default (up to 200 blocks of each
///   size class up to 32 KiB per thread) were what kept memory: the blocking pool's threads (hundreds
///   during a connect storm) each held one full of blocks they no longer used, and RSS after the
///   connect/disconnect cycles of 10,000 devices was 11 MiB higher. So at most 16 blocks of each class
///   are cached. Classes up to 8 KiB, not 1 KiB: a connection handles each packet in a boxed future of
///   ~4.3 KB (kept out of the connection's long-lived state, see `broker::connection`), and with only
///   classes up to 1 KiB cached each of those took the arena's lock: the uplink's local CPU per message
///   went from 4.5 to 8.0 µs at QoS 0 (one run of its benchmark; 4.5 again with 8 KiB), for no change in
///   the fan-out benchmark's memory (per idle device, after the cycles). `MALLOC_CONF=narenas:2,tcache:false`
///   turns them off.
#[cfg(target_os = "linux")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static malloc_conf: MallocConf =
    MallocConf(c"narenas:2,tcache_max:8192,tcache_nslots_small_max:16".as_ptr());

/// jemalloc reads `malloc_conf` as a C `const char *`.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable, NUL-terminated string.
unsafe impl Sync for MallocConf {}

fn main() -> std::process::ExitCode {
    sprig_gateway::cli::main()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::ffi::{c_void, CStr};

    /// Reads a jemalloc option through `mallctl`.
    fn option<T: Default>(name: &CStr) -> T {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: `value` is a `T` of `len` bytes, the type jemalloc documents for the option asked.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&mut value as *mut T).cast::<c_void>(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(status, 0, "mallctl {name:?}");
        value
    }

    #[test]
    fn jemalloc_is_the_allocator_with_the_gateways_options() {
        if std::env::var_os("MALLOC_CONF").is_some() {
            return; // an operator's override wins, by design
        }
        assert_eq!(option::<u32>(c"opt.narenas"), 2);
        assert!(option::<bool>(c"opt.tcache"));
        assert_eq!(option::<usize>(c"opt.tcache_max"), 8192);
        assert_eq!(option::<u32>(c"opt.tcache_nslots_small_max"), 16);
        // The C allocator is jemalloc's: a block from libc's `malloc` is one jemalloc knows.
        // SAFETY: malloc/free of a small block; `malloc_usable_size` reads only the allocator's metadata.
        unsafe {
            let block = libc_malloc(100);
            assert!(!block.is_null());
            assert_eq!(tikv_jemalloc_sys::malloc_usable_size(block), 112);
            libc_free(block);
        }
    }

    extern "C" {
        #[link_name = "malloc"]
        fn libc_malloc(size: usize) -> *mut c_void;
        #[link_name = "free"]
        fn libc_free(block: *mut c_void);
    }
}
