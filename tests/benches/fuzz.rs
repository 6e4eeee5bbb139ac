//! The fuzzer's long run (`sprig_tests::fuzz`): 100,000 mutated sessions of devices and operators against
//! the RELEASE binary, while the CLI asks `sprig list-jobs` over and over. It prints one row per tenth of
//! the run (cases so far, connections, panics in the log, cases stuck, replies, resident memory, the CLI's
//! latency meanwhile) and a summary, and fails (non-zero exit) on a panic, a stuck case, a gateway that
//! stopped serving, or an inconsistent store after a clean stop.
//!
//! Run: `cargo bench -p sprig-tests --bench fuzz` (builds `target/release/sprig` first). Environment: the
//! short run's `SPRIG_FUZZ_SEED`, `SPRIG_FUZZ_FIRST`, `SPRIG_FUZZ_CASES` (default 100000),
//! `SPRIG_FUZZ_CONCURRENCY` (default 8); `SPRIG_FUZZ_ROWS` (default 10).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sprig_tests::bench::{self, mib};
use sprig_tests::fuzz::{self, drive, Generator, Settings};
use sprig_tests::Gateway;

const BOUND: Duration = Duration::from_secs(15);

/// The `p` percentile of sorted latencies, NaN (printed as such) when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    bench::percentile(sorted, p).unwrap_or(f64::NAN)
}

/// `sprig list-jobs` until `stop`: each call's wall time in ms, into `latencies`.
fn ask_the_cli(gateway: &Gateway, stop: &AtomicBool, latencies: &Mutex<Vec<f64>>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let out = gateway.cli(&["list-jobs"]);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert!(
            out.status.success(),
            "sprig list-jobs during the run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        latencies.lock().unwrap().push(ms);
    }
}

fn main() {
    let settings = Settings::from_env(100_000, 8);
    let rows: u64 = std::env::var("SPRIG_FUZZ_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bin = sprig_tests::release_bin();
    let (mut gateway, ids) = fuzz::start_gateway(bin);
    eprintln!(
        "sprig fuzz benchmark: release build, {} SPRIG_FUZZ_CONCURRENCY={}",
        settings.replay(),
        settings.concurrency
    );
    runtime.block_on(fuzz::still_serves(&gateway, "fuzz-bench-0"));
    let rss_before = gateway.rss_kb();
    let generator = Arc::new(Generator::new(settings.seed, ids));
    let options = drive::Options {
        addr: gateway.addr,
        concurrency: settings.concurrency,
        bound: BOUND,
    };

    println!(
        "| cases | connections | panics | stuck | replies (owed) | VmRSS MiB | VmHWM MiB | CLI list-jobs p50 / p99 ms | cases/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let stop = AtomicBool::new(false);
    let latencies = Mutex::new(Vec::new());
    let mut all_latencies = Vec::new();
    let mut total = drive::Stats::default();
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| ask_the_cli(&gateway, &stop, &latencies));
        let per_row = settings.cases.div_ceil(rows);
        let mut first = settings.first;
        let end = settings.first + settings.cases;
        while first < end {
            let last = (first + per_row).min(end);
            let stats = runtime.block_on(drive::run(generator.clone(), first..last, &options));
            first = last;
            let mut row_latencies = std::mem::take(&mut *latencies.lock().unwrap());
            row_latencies.sort_by(f64::total_cmp);
            let panics = fuzz::panic_lines(&gateway.log()).len();
            total.cases += stats.cases;
            total.connections += stats.connections;
            total.replies += stats.replies;
            total.replies_owed += stats.replies_owed;
            total.stuck.extend(stats.stuck.iter().copied());
            println!(
                "| {} | {} | {} | {} | {} ({}) | {} | {} | {:.0} / {:.0} | {:.0} |",
                first - settings.first,
                total.connections,
                panics,
                total.stuck.len(),
                total.replies,
                total.replies_owed,
                mib(gateway.rss_kb()),
                mib(gateway.peak_rss_kb()),
                percentile(&row_latencies, 0.5),
                percentile(&row_latencies, 0.99),
                stats.cases as f64 / stats.elapsed.as_secs_f64(),
            );
            all_latencies.extend(row_latencies);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    all_latencies.sort_by(f64::total_cmp);
    let panics = fuzz::panic_lines(&gateway.log())
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    runtime.block_on(fuzz::still_serves(&gateway, "fuzz-bench-1"));
    let (rss_after, peak) = (gateway.rss_kb(), gateway.peak_rss_kb());
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| cases | {} in {:.0} s |",
        total.cases,
        elapsed.as_secs_f64()
    );
    println!("| connections | {} |", total.connections);
    println!("| panics in the log | {} |", panics.len());
    println!("| cases stuck | {} |", total.stuck.len());
    println!(
        "| replies to clean requests | {} of {} |",
        total.replies, total.replies_owed
    );
    println!(
        "| VmRSS before / peak (VmHWM) / after | {} / {} / {} MiB |",
        mib(rss_before),
        mib(peak),
        mib(rss_after)
    );
    println!(
        "| CLI list-jobs during the run, p50 / p99 ({} calls) | {:.0} / {:.0} ms |",
        all_latencies.len(),
        percentile(&all_latencies, 0.5),
        percentile(&all_latencies, 0.99)
    );

    assert!(
        panics.is_empty(),
        "the gateway panicked; replay with {}:\n{}",
        settings.replay(),
        panics.join("\n")
    );
    assert!(
        total.stuck.is_empty(),
        "cases stuck (replay with {}): {:?}",
        settings.replay(),
        &total.stuck[..total.stuck.len().min(20)]
    );
    assert_eq!(gateway.terminate(), Some(0));
    let check = gateway.cli(&["store", "check"]);
    assert!(
        check.status.success(),
        "store check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}
