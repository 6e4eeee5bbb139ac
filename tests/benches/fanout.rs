//! Fan-out benchmark: sprig against Debian's mosquitto, side by side, on this machine, loopback only.
//!
//! For each N (default 1,000 and 10,000 devices) and each broker, one after the other (never both at once):
//! - memory: VmRSS of the broker idle, then with N devices connected (subscribed, idle), per device;
//!   then cycles of connecting and disconnecting all N devices, VmRSS after each cycle (growth);
//! - fan-out: N devices connected, each subscribed to its own topic; sprig: one namespaced CreateJob
//!   (`namespaceId: "bench"`) targeting all N things, timed from the accepted reply until the last device
//!   got its `$aws/things/{thing}/jobs/{jobId}/notify-namespace-bench/`; mosquitto: one publisher sends N
//!   messages of the same size and QoS to N distinct topics (`bench/dev{i:05}/notify`), timed from the first
//!   publish to the last delivery. Several runs: p50, p99, msgs/s, and sprig's rate over mosquitto's.
//!
//! Devices are a minimal MQTT 3.1.1 client on tokio sockets, the same code for both brokers. Every phase has
//! a timeout and the whole benchmark has a deadline; a run that times out reports "delivered X of N".
//!
//! The parts: `broker` (the broker processes), `fleet` (the raw MQTT devices), `run` (one broker at one
//! size: memory, cycles and the timed runs), `report` (statistics and the table), `floor` (the floor
//! server); this file reads the settings and runs them in turn under the deadline.
//!
//! Run it with `bash tests/bench/fanout.sh` (installs mosquitto if needed, raises `ulimit -n`, builds the
//! release binary of sprig and runs `cargo bench -p sprig-tests --bench fanout`). Environment:
//! `SPRIG_FANOUT_SIZES=1000,10000`, `SPRIG_FANOUT_RUNS=5`, `SPRIG_FANOUT_CYCLES=10`,
//! `SPRIG_FANOUT_ROUNDS=1` (sprig, mosquitto and the floor again, in turn, that many times per size: the
//! table's percentiles span every round's runs, and sprig's rate over the floor's is printed per round
//! with its median, since this machine's speed drifts over minutes), `SPRIG_FANOUT_RUN_TIMEOUT_S=60`,
//! `SPRIG_FANOUT_DEADLINE_S=1800`, `SPRIG_FANOUT_LOGS=DIR` (keep the
//! brokers' logs there), `SPRIG_FANOUT_QOS` (mosquitto's publish QoS when sprig delivered nothing to copy
//! it from; default 0, sprig's notifier QoS), `SPRIG_BIN` (a prebuilt sprig instead of
//! `cargo build --release`), `MOSQUITTO` (path of the mosquitto binary).

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sprig_tests::bench::{find_mosquitto, mib, percentile, raise_nofile, sprig_release_bin};
use sprig_tests::raw::{packet, parse_publish, publish, put_str, read_packet_async as read_packet};
use sprig_tests::{config_for, free_port, with_setting, Operator};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The namespace of the benchmark's jobs.
const NAMESPACE: &str = "bench";
/// Devices connecting at once. Below both brokers' listen backlogs (mosquitto 100, sprig 128 from std's
/// `TcpListener::bind`): a larger burst overflows the accept queue, the kernel drops SYNs and the clients
/// retry after the 1 s SYN timeout, so connect times would measure that timer instead of the broker.
const CONNECT_BATCH: usize = 50;
/// One device's CONNECT + SUBSCRIBE must complete within this.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(20);
/// Connecting (or disconnecting) a whole fleet must complete within this.
const FLEET_TIMEOUT: Duration = Duration::from_secs(180);
/// Wait after connects/disconnects before reading VmRSS, so the broker has finished its bookkeeping.
const SETTLE: Duration = Duration::from_secs(2);
/// A broker must accept connections within this after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// PIDs of the brokers started, killed by the deadline watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[path = "fanout/broker.rs"]
mod broker;
#[path = "fanout/fleet.rs"]
mod fleet;
#[path = "fanout/floor.rs"]
mod floor;
#[path = "fanout/report.rs"]
mod report;
#[path = "fanout/run.rs"]
mod run;

use broker::*;
use fleet::*;
use report::*;
use run::*;

fn main() {
    if let Ok(port) = std::env::var("SPRIG_FANOUT_FLOOR_PORT") {
        floor::serve(port.parse().expect("SPRIG_FANOUT_FLOOR_PORT: a port"));
        return;
    }
    let sizes: Vec<usize> = env_or("SPRIG_FANOUT_SIZES", "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SPRIG_FANOUT_SIZES: numbers"))
        .collect();
    let settings = Settings {
        runs: env_or("SPRIG_FANOUT_RUNS", "5".into()).parse().unwrap(),
        cycles: env_or("SPRIG_FANOUT_CYCLES", "10".into()).parse().unwrap(),
        run_timeout: Duration::from_secs(
            env_or("SPRIG_FANOUT_RUN_TIMEOUT_S", "60".into())
                .parse()
                .unwrap(),
        ),
        default_qos: env_or("SPRIG_FANOUT_QOS", "0".into()).parse().unwrap(),
    };
    assert!(settings.default_qos <= 1, "SPRIG_FANOUT_QOS: 0 or 1");
    let deadline: u64 = env_or("SPRIG_FANOUT_DEADLINE_S", "1800".into())
        .parse()
        .unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(deadline));
        eprintln!("fanout: deadline of {deadline} s reached, stopping");
        for pid in CHILDREN.lock().unwrap().iter() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::process::exit(2);
    });

    let biggest = sizes.iter().copied().max().unwrap_or(0);
    let nofile = raise_nofile(biggest as u64 + 1024);
    eprintln!("fanout: RLIMIT_NOFILE = {nofile}");
    let sprig = sprig_release_bin();
    let mosquitto = find_mosquitto();
    if mosquitto.is_none() {
        eprintln!("fanout: mosquitto not found (install Debian's `mosquitto`, or set MOSQUITTO); sprig only");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds: usize = env_or("SPRIG_FANOUT_ROUNDS", "1".into()).parse().unwrap();
    assert!(rounds >= 1, "SPRIG_FANOUT_ROUNDS: at least 1");
    let mut results = Vec::new();
    let mut ratios: Vec<(usize, Vec<f64>)> = Vec::new();
    runtime.block_on(async {
        for &n in &sizes {
            let mut of_size = Vec::new();
            let mut round_ratios = Vec::new();
            for round in 1..=rounds {
                let made = bench_round(n, round, &sprig, mosquitto.as_ref(), &settings).await;
                if let Some(ratio) = floor_ratio(&made, &settings) {
                    eprintln!(
                        "fanout: N = {n}, round {round}: sprig at {:.0} % of the floor",
                        ratio * 100.0
                    );
                    round_ratios.push(ratio);
                }
                of_size.push(made);
            }
            results.extend(merge_rounds(of_size));
            ratios.push((n, round_ratios));
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    print_table(&results, &settings);
    if rounds > 1 {
        print_round_ratios(&ratios, rounds);
    }
}

/// One round at one size: sprig, mosquitto (if installed), then the floor, one after the other.
async fn bench_round(
    n: usize,
    round: usize,
    sprig: &std::path::Path,
    mosquitto: Option<&PathBuf>,
    settings: &Settings,
) -> Vec<BrokerResult> {
    let mut made = Vec::new();
    eprintln!("fanout: N = {n}, sprig (round {round})");
    let sprig_result = bench_broker(BrokerKind::Sprig(sprig.to_owned()), n, settings, None).await;
    let copied = sprig_result.payload;
    made.push(sprig_result);
    if let Some(path) = mosquitto {
        eprintln!("fanout: N = {n}, mosquitto (round {round})");
        let payload = copied.unwrap_or((estimated_notification_len(n), settings.default_qos));
        let mosquitto_result = bench_broker(
            BrokerKind::Mosquitto(path.clone()),
            n,
            settings,
            Some((payload.0, payload.1, copied.is_some())),
        )
        .await;
        made.push(mosquitto_result);
    }
    eprintln!("fanout: N = {n}, floor (round {round})");
    let payload = copied.unwrap_or((estimated_notification_len(n), 0));
    let floor = BrokerKind::Floor(std::env::current_exe().unwrap());
    made.push(bench_broker(floor, n, settings, Some((payload.0, 0, copied.is_some()))).await);
    made
}

struct Settings {
    runs: usize,
    cycles: usize,
    run_timeout: Duration,
    default_qos: u8,
}

fn env_or(name: &str, default: String) -> String {
    std::env::var(name).unwrap_or(default)
}

/// What sprig's notifier sends for a fresh job (timestamp, jobId, event, the execution, the namespace's
/// pending jobs), used for mosquitto's payload only if sprig delivered nothing to measure.
fn estimated_notification_len(n: usize) -> usize {
    let job_id = format!("fanout-n{n}-run1-1");
    let execution = json!({"jobId": job_id, "thingName": "dev00000", "status": "QUEUED",
        "queuedAt": 1_764_000_000, "lastUpdatedAt": 1_764_000_000, "versionNumber": 1,
        "executionNumber": 1, "jobDocument": {"action": "update"}});
    let summary = json!({"jobId": job_id, "queuedAt": 1_764_000_000, "lastUpdatedAt": 1_764_000_000,
        "versionNumber": 1, "executionNumber": 1});
    json!({"timestamp": 1_764_000_000, "jobId": job_id, "event": "CREATED",
        "execution": execution, "jobs": {"QUEUED": [summary]}})
    .to_string()
    .len()
}
