//! The fleet uplink side by side with mosquitto's bridge, on this machine, loopback only: how fast what
//! local clients publish reaches the fleet broker, and what an outage of the fleet broker costs.
//!
//! The fleet broker is Debian's mosquitto, persistent and with no bound on what it queues for a session
//! (`Mosquitto::start_persistent`), and a sink client on it (a persistent session) counts what arrives
//! on `sites/site-7/dt/#`. The local sides, one at a time, each with a fresh fleet broker, bridge
//! `dt/q0/#` at QoS 0 and `dt/q1/#` at QoS 1 out under `sites/site-7/` (`sides` has their
//! configurations, which the benchmark prints): sprig's release binary with its uplink, mosquitto's
//! bridge with its queue unbounded and sprig's window in flight, and mosquitto's bridge on the broker's
//! default queue (1,000 messages beyond 20 in flight).
//!
//! For each side:
//! 1. forward: `SPRIG_UPLINK_PUBLISHERS` connections publish `SPRIG_UPLINK_MESSAGES` messages of 64
//!    bytes in all, as fast as the local broker takes them (QoS 1: at most `SPRIG_UPLINK_WINDOW`
//!    unacknowledged per connection), at QoS 0, then at QoS 1, `SPRIG_UPLINK_RUNS` times each. The rate
//!    is the messages that arrived over the time from the first publish to the last arrival at the sink.
//! 2. outage: the fleet broker is stopped (SIGTERM: it saves the sink's session) and, once the local
//!    side's log says the link was lost, `SPRIG_UPLINK_OUTAGE` QoS 1 messages are published and
//!    acknowledged locally: what that cost on disk (the spool's files, and the `write_bytes` of the
//!    process, per message) and in resident memory. Then the fleet broker starts again, the sink
//!    resumes its session, and the sink counts what arrives: how many, duplicates, the drain rate
//!    (first to last arrival), and the time from the restart until the local side said it was connected
//!    again and until the last arrival.
//!
//! A wait for arrivals ends when all arrived, or when nothing arrived for `SPRIG_UPLINK_PATIENCE_S`
//! seconds; the table then says "X of N".
//!
//! `cargo bench -p sprig-tests --bench uplink` (needs Debian's `mosquitto`). Environment:
//! `SPRIG_UPLINK_MESSAGES=20000`, `SPRIG_UPLINK_RUNS=3`, `SPRIG_UPLINK_OUTAGE=100000`,
//! `SPRIG_UPLINK_PUBLISHERS=4`, `SPRIG_UPLINK_WINDOW=100`, `SPRIG_UPLINK_PATIENCE_S=5`,
//! `SPRIG_UPLINK_SIDES=sprig,mosquitto,mosquitto-default` (which local sides, in that order),
//! `SPRIG_UPLINK_LOGS=DIR` (keep the local sides' and the fleet broker's logs there), `SPRIG_BIN` (a
//! prebuilt sprig instead of `cargo build --release`), `MOSQUITTO` (the mosquitto binary).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sprig_test_support::settings::env_or;
use sprig_tests::bench::{connected, find_mosquitto, mib, percentile, rss_kb};
use sprig_tests::bench::{sprig_release_bin, subscribe};
use sprig_tests::mosquitto::Mosquitto;
use sprig_tests::raw::{self, read_packet_async};
use sprig_tests::{procfs, without_publish_quotas, Gateway};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

#[path = "uplink/clients.rs"]
mod clients;
#[path = "uplink/sides.rs"]
mod sides;

use clients::*;
use sides::*;

/// The local side must say it reached the fleet broker, or lost it, within this.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// The publishers of one run must be done within this.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(300);

/// The binaries under test.
pub(crate) struct Bins {
    sprig: PathBuf,
    mosquitto: PathBuf,
}

struct Settings {
    messages: usize,
    runs: usize,
    outage: usize,
    publishers: usize,
    window: usize,
    patience: Duration,
    sides: Vec<Kind>,
}

impl Settings {
    fn from_env() -> Settings {
        let sides = std::env::var("SPRIG_UPLINK_SIDES")
            .unwrap_or_else(|_| "sprig,mosquitto,mosquitto-default".into());
        Settings {
            messages: env_or("SPRIG_UPLINK_MESSAGES", 20_000),
            runs: env_or("SPRIG_UPLINK_RUNS", 3).max(1),
            outage: env_or("SPRIG_UPLINK_OUTAGE", 100_000),
            publishers: env_or("SPRIG_UPLINK_PUBLISHERS", 4).max(1),
            window: env_or("SPRIG_UPLINK_WINDOW", 100).max(1),
            patience: Duration::from_secs(env_or("SPRIG_UPLINK_PATIENCE_S", 5) as u64),
            sides: sides.split(',').map(Kind::parse).collect(),
        }
    }
}

/// One timed run of forwarding.
struct Forward {
    published: Published,
    arrived: RunArrivals,
    started: Instant,
    /// CPU time the local side used during the run.
    cpu: Duration,
}

impl Forward {
    /// Messages per second, first publish to last arrival.
    fn rate(&self) -> Option<f64> {
        let last = self.arrived.last?;
        Some(self.arrived.distinct as f64 / (last - self.started).as_secs_f64())
    }
}

/// The outage: what publishing into it cost, and how the backlog drained.
struct Outage {
    published: Published,
    spool_bytes: Option<u64>,
    written: u64,
    rss_growth_kb: i64,
    restarted: Instant,
    /// When the sink heard that the local side was connected again.
    reconnected: Option<Instant>,
    arrived: RunArrivals,
}

struct SideResult {
    kind: Kind,
    /// Index 0: QoS 0 runs; 1: QoS 1 runs.
    forward: [Vec<Forward>; 2],
    outage: Outage,
    notable: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let settings = Settings::from_env();
    let Some(mosquitto) = find_mosquitto() else {
        eprintln!(
            "SKIPPED uplink bench: no mosquitto (install Debian's `mosquitto`, or set MOSQUITTO): \
             it is the fleet broker"
        );
        return;
    };
    let bins = Bins {
        sprig: sprig_release_bin(),
        mosquitto,
    };
    let mut results = Vec::new();
    for &kind in &settings.sides {
        eprintln!("uplink: {}", kind.label());
        results.push(bench_side(kind, &bins, &settings).await);
    }
    print_table(&results, &settings);
}

/// The fleet broker's settings: it keeps what it queues for the sink across its restart and without
/// bound, and sends the sink as many at once as it has (mosquitto's default of 20 in flight to one
/// subscriber made the sink's pace, not the local side's, the forward rate once a side forwarded faster).
const FLEET_CONFIG: &str = "persistence true\nmax_queued_messages 0\nmax_inflight_messages 0\n";

/// Runs every measure on one local side, with a fresh fleet broker and sink.
async fn bench_side(kind: Kind, bins: &Bins, settings: &Settings) -> SideResult {
    let mut fleet = Mosquitto::start_with(bins.mosquitto.clone(), FLEET_CONFIG);
    let mut sink = Sink::start(fleet.addr()).await.expect("the sink connects");
    let side = Side::start(kind, bins, fleet.port, settings.outage);
    assert!(
        sink.link_up(0, LINK_TIMEOUT).await.is_some(),
        "{} did not reach the fleet broker within {LINK_TIMEOUT:?}; its log:\n{}",
        kind.label(),
        side.log()
    );
    let mut tags = b'a'..;
    let mut forward = [Vec::new(), Vec::new()];
    for qos in [0, 1] {
        for _ in 0..settings.runs {
            let tag = tags.next().expect("a run's tag");
            let run = forward_run(&side, &sink, (tag, qos), settings).await;
            eprintln!(
                "uplink:   QoS {qos}: {} of {} in {:.2?}",
                run.arrived.distinct,
                settings.messages,
                run.arrived
                    .last
                    .map(|l| l - run.started)
                    .unwrap_or_default()
            );
            forward[usize::from(qos)].push(run);
        }
    }
    let outage = outage(&side, &mut fleet, &mut sink, b'O', settings).await;
    keep_logs(kind, &side, &fleet);
    SideResult {
        kind,
        forward,
        outage,
        notable: side.notable_log_lines(),
    }
}

/// One run: `settings.messages` at `qos`, timed from the first publish to the last arrival.
async fn forward_run(side: &Side, sink: &Sink, (tag, qos): (u8, u8), s: &Settings) -> Forward {
    let cpu_before = cpu_time(side.pid());
    let started = Instant::now();
    let publishing = publish(
        side.addr(),
        (tag, qos),
        s.messages,
        s.publishers,
        s.window,
        PUBLISH_TIMEOUT,
    );
    let (published, arrived) = tokio::join!(publishing, sink.until(tag, s.messages, s.patience));
    eprintln!(
        "uplink:   QoS {qos}: {} taken locally in {:.2?}, arrivals ended after {:.2?}",
        published.taken,
        published.elapsed,
        started.elapsed()
    );
    Forward {
        published,
        arrived,
        started,
        cpu: cpu_time(side.pid()).saturating_sub(cpu_before),
    }
}

/// The fleet broker goes away, `s.outage` QoS 1 messages are published locally, the fleet broker comes
/// back and the sink counts what arrives.
async fn outage(
    side: &Side,
    fleet: &mut Mosquitto,
    sink: &mut Sink,
    tag: u8,
    s: &Settings,
) -> Outage {
    let lost_before = side.links_lost();
    fleet.stop();
    assert!(
        side.link_lost(lost_before, LINK_TIMEOUT).await,
        "the local side did not notice the fleet broker had gone; its log:\n{}",
        side.log()
    );
    let pid = side.pid();
    let (written_before, rss_before) = (write_bytes(pid), rss_kb(pid));
    let spool_before = side.spool_bytes();
    let published = publish(
        side.addr(),
        (tag, 1),
        s.outage,
        s.publishers,
        s.window,
        PUBLISH_TIMEOUT,
    )
    .await;
    eprintln!(
        "uplink:   outage: {} of {} acknowledged locally in {:.2?}",
        published.taken, s.outage, published.elapsed
    );
    let written = write_bytes(pid).saturating_sub(written_before);
    let rss_growth_kb = rss_kb(pid) as i64 - rss_before as i64;
    let spool_bytes = side.spool_bytes().zip(spool_before).map(|(a, b)| a - b);
    let links_before = sink.links_up();
    let restarted = Instant::now();
    fleet.spawn();
    sink.resume().await.expect("the sink resumes its session");
    // The local side's reconnection is its own business: the patience starts once it is back.
    let reconnected = sink.link_up(links_before, LINK_TIMEOUT).await;
    let arrived = sink.until(tag, s.outage, s.patience).await;
    eprintln!(
        "uplink:   after the outage: {} of {} in {:.2?}",
        arrived.distinct,
        s.outage,
        arrived.last.map(|l| l - restarted).unwrap_or_default()
    );
    Outage {
        published,
        spool_bytes,
        written,
        rss_growth_kb,
        restarted,
        reconnected,
        arrived,
    }
}

/// With `SPRIG_UPLINK_LOGS=DIR`, the local side's and the fleet broker's logs are kept there.
fn keep_logs(kind: Kind, side: &Side, fleet: &Mosquitto) {
    let Some(dir) = std::env::var_os("SPRIG_UPLINK_LOGS").map(PathBuf::from) else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{}.log", kind.name())), side.log());
    let _ = std::fs::write(dir.join(format!("{}-fleet.log", kind.name())), fleet.log());
}

fn write_bytes(pid: u32) -> u64 {
    procfs::write_bytes(pid).unwrap_or(0)
}

/// CPU time (user and system) of `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let ticks = procfs::stat(pid).map_or(0, |s| s.cpu_ticks);
    Duration::from_secs_f64(ticks as f64 / procfs::ticks_per_second() as f64)
}

/// The median of `values`, and their range.
fn median_and_range(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.sort_by(f64::total_cmp);
    let median = percentile(&values, 0.5)?;
    Some((median, values[0], values[values.len() - 1]))
}

/// `12,345`.
fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The rate row of one QoS: median msg/s and the range over the runs; a run that lost messages counts
/// what arrived, and says so.
fn rate_cell(runs: &[Forward], messages: usize) -> String {
    let rates: Vec<f64> = runs.iter().filter_map(Forward::rate).collect();
    let lossy = if runs.iter().any(|r| r.arrived.distinct < messages) {
        " of what arrived"
    } else {
        ""
    };
    match median_and_range(rates) {
        Some((median, low, high)) if runs.len() > 1 => format!(
            "{} msg/s{lossy} ({}–{})",
            thousands(median),
            thousands(low),
            thousands(high)
        ),
        Some((median, ..)) => format!("{} msg/s{lossy}", thousands(median)),
        None => "nothing arrived".into(),
    }
}

/// The delivery row of one QoS: "all" or the worst run's count, and duplicates.
fn delivered_cell(runs: &[Forward], messages: usize) -> String {
    let complete = runs
        .iter()
        .filter(|r| r.arrived.distinct == messages)
        .count();
    let fewest = runs.iter().map(|r| r.arrived.distinct).min().unwrap_or(0);
    let duplicates: usize = runs.iter().map(|r| r.arrived.duplicates).sum();
    let failures: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.published.failure.as_deref())
        .collect();
    let mut cell = if complete == runs.len() {
        "all, every run".to_owned()
    } else {
        format!(
            "{complete} of {} runs complete; fewest {} of {}",
            runs.len(),
            thousands(fewest as f64),
            thousands(messages as f64)
        )
    };
    if duplicates > 0 {
        cell += &format!(", {duplicates} duplicates");
    }
    if let Some(failure) = failures.first() {
        cell += &format!(" (publisher: {failure})");
    }
    cell
}

/// CPU the local side used per message it took, median over the runs.
fn cpu_cell(runs: &[Forward]) -> String {
    let per_message: Vec<f64> = runs
        .iter()
        .filter(|r| r.published.taken > 0)
        .map(|r| r.cpu.as_secs_f64() * 1e6 / r.published.taken as f64)
        .collect();
    median_and_range(per_message).map_or("—".into(), |(median, ..)| format!("{median:.1} µs"))
}

fn print_table(results: &[SideResult], s: &Settings) {
    let heads: Vec<&str> = results.iter().map(|r| r.kind.label()).collect();
    println!(
        "\n{} messages of 64 B per QoS and run, {} runs, {} publishing connections (QoS 1: {} in flight \
         each); outage: {} QoS 1 messages\n",
        thousands(s.messages as f64),
        s.runs,
        s.publishers,
        s.window,
        thousands(s.outage as f64)
    );
    println!("| | {} |", heads.join(" | "));
    println!("|---|{}", "---|".repeat(heads.len()));
    let row = |name: &str, cell: &dyn Fn(&SideResult) -> String| {
        let cells: Vec<String> = results.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    for qos in [0u8, 1] {
        let q = usize::from(qos);
        row(&format!("QoS {qos}: forward rate, median (range)"), &|r| {
            rate_cell(&r.forward[q], s.messages)
        });
        row(&format!("QoS {qos}: delivered"), &|r| {
            delivered_cell(&r.forward[q], s.messages)
        });
        row(&format!("QoS {qos}: local side's CPU per message"), &|r| {
            cpu_cell(&r.forward[q])
        });
    }
    let outage = s.outage;
    row("outage: acknowledged locally", &|r| {
        let p = &r.outage.published;
        format!(
            "{} of {} in {:.1} s",
            thousands(p.taken as f64),
            thousands(outage as f64),
            p.elapsed.as_secs_f64()
        )
    });
    row(
        "outage: on disk per message (spool files / write_bytes)",
        &|r| {
            let o = &r.outage;
            let taken = o.published.taken.max(1) as f64;
            let files = o
                .spool_bytes
                .map_or("in memory".into(), |b| format!("{:.0} B", b as f64 / taken));
            format!("{files} / {:.0} B", o.written as f64 / taken)
        },
    );
    row("outage: resident memory growth", &|r| {
        let kb = r.outage.rss_growth_kb;
        format!(
            "{}{} MiB",
            if kb < 0 { "-" } else { "+" },
            mib(kb.unsigned_abs())
        )
    });
    row("after the outage: delivered", &|r| {
        let a = &r.outage.arrived;
        let mut cell = format!(
            "{} of {}",
            thousands(a.distinct as f64),
            thousands(outage as f64)
        );
        if a.duplicates > 0 {
            cell += &format!(", {} duplicates", a.duplicates);
        }
        cell
    });
    row(
        "after the outage: drain rate (first → last arrival)",
        &|r| {
            let a = &r.outage.arrived;
            match (a.first, a.last) {
                (Some(first), Some(last)) if last > first => format!(
                    "{} msg/s",
                    thousands(a.distinct as f64 / (last - first).as_secs_f64())
                ),
                _ => "—".into(),
            }
        },
    );
    row("after the outage: fleet back → bridge connected", &|r| {
        let o = &r.outage;
        o.reconnected
            .map_or(format!("not within {LINK_TIMEOUT:?}"), |up| {
                format!("{:.1} s", (up - o.restarted).as_secs_f64())
            })
    });
    row("after the outage: fleet back → last arrival", &|r| {
        let o = &r.outage;
        o.arrived.last.map_or("—".into(), |last| {
            format!("{:.1} s", (last - o.restarted).as_secs_f64())
        })
    });

    println!(
        "\nConfigurations (the fleet broker: port FLEET, `persistence true`, `max_queued_messages 0`, \
         `max_inflight_messages 0`):"
    );
    for result in results {
        println!(
            "\n{}:\n{}",
            result.kind.label(),
            result.kind.config(0, s.outage).replace(":0", ":FLEET")
        );
    }
    for result in results.iter().filter(|r| !r.notable.is_empty()) {
        println!(
            "\n{}: {} notable log lines, the first:",
            result.kind.label(),
            result.notable.len()
        );
        for line in result.notable.iter().take(10) {
            println!("  {line}");
        }
    }
}
