//! The fuzzer's short run (`sprig_tests::fuzz`): a few thousand mutated sessions of devices and operators,
//! MQTT 3.1.1 and 5, several connections at once, against the real binary. Afterwards nothing in the log
//! says a thread panicked, no connection was left hanging, the gateway still serves devices, operators and
//! the CLI, its memory is back near where it started, and its store is consistent after a clean stop.
//!
//! Replay a run with the `SPRIG_FUZZ_SEED` it prints (and `SPRIG_FUZZ_FIRST`/`SPRIG_FUZZ_CASES` to play a
//! range, down to one case); `SPRIG_FUZZ_CONCURRENCY=1` plays the cases one after the other.

use std::sync::Arc;
use std::time::Duration;

use sprig_tests::fuzz::{self, drive, Generator, Settings};
use sprig_tests::Gateway;

/// Cases in the short run: 6-15 s of cases in a debug build on 2 cores (shared with other work).
const CASES: u64 = 2500;
/// Connections at once.
const CONCURRENCY: usize = 8;
/// Cases played before the baseline is measured.
const WARM_UP: std::ops::Range<u64> = 1 << 40..(1 << 40) + 300;
/// The longest a wait on the gateway may take before the case counts as stuck.
const BOUND: Duration = Duration::from_secs(15);
/// How far resident memory may stay above its level before the run once the run is over. What the run
/// may legitimately leave behind is bounded and small in the fuzzing config (`fuzz::start_gateway`): the
/// store's page cache (8 MiB), the router's logs of the fixed topics and filters (64 KiB x 2 each, plus
/// one message that overflows a segment), sessions of a fixed pool of client ids, memory the allocator
/// keeps for reuse. Measured (debug build): +8-11 MiB over the 2,500 cases after the warm-up; over 16,000
/// cases it levels off 25-30 MiB above the level before any case. Each leak the fuzzer found added 5 KiB
/// or more per connection and grew without end (the benchmark `benches/fuzz.rs` is the long run).
const RSS_GROWTH_KIB: u64 = 32 * 1024;
/// How far the peak may rise above the peak before the run: argon2 checks (19 MiB each, at most
/// `min(cores, 4)` at once), `max_payload_size` (2 MiB) packets buffered by several connections at once,
/// and the allocator's slack.
const PEAK_GROWTH_KIB: u64 = 96 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn fuzzed_sessions_leave_the_gateway_serving_without_panics_or_growth() {
    let settings = Settings::from_env(CASES, CONCURRENCY);
    eprintln!(
        "fuzz: {} SPRIG_FUZZ_CONCURRENCY={}",
        settings.replay(),
        settings.concurrency
    );
    let (mut gateway, ids) = fuzz::start_gateway(sprig_tests::sprig_bin());
    let generator = Arc::new(Generator::new(settings.seed, ids));
    let options = drive::Options {
        addr: gateway.addr,
        concurrency: settings.concurrency,
        bound: BOUND,
    };
    // A warm-up (cases far from the run's) so that one-off allocations (worker threads, the store's
    // trees, the router's filters for the fixed topics) are in the baseline, not counted as growth.
    drive::run(generator.clone(), WARM_UP, &options).await;
    still_serves(&gateway, "fuzz-check-0").await;
    let (rss_before, peak_before) = (gateway.rss_kb(), gateway.peak_rss_kb());

    let stats = drive::run(generator.clone(), settings.indices(), &options).await;
    eprintln!("fuzz: {}", stats.summary());

    let log = gateway.log();
    let panics = fuzz::panic_lines(&log);
    assert!(
        panics.is_empty(),
        "the gateway panicked; replay with {}:\n{}",
        settings.replay(),
        panics.join("\n")
    );
    assert!(
        gateway.exited().is_none(),
        "the gateway exited; replay with {}; log:\n{log}",
        settings.replay()
    );
    let stuck: Vec<String> = (stats.stuck.iter().take(5))
        .map(|(i, wait)| format!("{wait}: {}", generator.case(*i).describe()))
        .collect();
    assert!(
        stuck.is_empty(),
        "{} cases waited {BOUND:?} on the gateway; replay with {}:\n{}",
        stats.stuck.len(),
        settings.replay(),
        stuck.join("\n")
    );
    assert!(stats.connections == stats.cases && stats.accepted > stats.cases / 2);
    assert!(
        stats.replies > 0 && stats.replies_owed > 0,
        "{}",
        stats.summary()
    );

    still_serves(&gateway, "fuzz-check-1").await;
    let (rss_after, peak_after) = (gateway.rss_kb(), gateway.peak_rss_kb());
    eprintln!(
        "fuzz: VmRSS {} -> {} MiB, VmHWM {} -> {} MiB",
        rss_before / 1024,
        rss_after / 1024,
        peak_before / 1024,
        peak_after / 1024
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_KIB,
        "VmRSS grew from {rss_before} to {rss_after} KiB; replay with {}",
        settings.replay()
    );
    assert!(
        peak_after <= peak_before + PEAK_GROWTH_KIB,
        "VmHWM grew from {peak_before} to {peak_after} KiB; replay with {}",
        settings.replay()
    );

    assert_eq!(gateway.terminate(), Some(0), "{}", gateway.log());
    let check = gateway.cli(&["store", "check"]);
    assert!(
        check.status.success(),
        "store check after the run ({}):\n{}{}",
        settings.replay(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// A well-behaved device gets a Jobs API reply, an operator a control reply, and the CLI its answer.
async fn still_serves(gateway: &Gateway, thing: &str) {
    fuzz::still_serves(gateway, thing).await;
    let list = gateway.cli(&["list-jobs"]);
    assert!(
        list.status.success(),
        "sprig list-jobs: {}",
        String::from_utf8_lossy(&list.stderr)
    );
}

/// The fuzzer's operations are the ones the gateway serves: the list in `fuzz::payload` is checked against
/// the gateway's own (`control::OPERATIONS`, which its answer to an unknown operation names), so an
/// operation added to the gateway is fuzzed too.
#[tokio::test(flavor = "multi_thread")]
async fn the_fuzzer_plays_every_operation_the_gateway_serves() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let (code, message) = op
        .request("NoSuchOperation", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(code, "InvalidRequestException", "{message}");
    let served = message
        .split_once("sprig serves ")
        .map(|(_, list)| list.split(", ").collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no list of operations in {message:?}"));
    let mut fuzzed = fuzz::payload::OPERATIONS.to_vec();
    let mut served = served;
    fuzzed.sort_unstable();
    served.sort_unstable();
    assert_eq!(fuzzed, served);
}
