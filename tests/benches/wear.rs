//! SD-card wear: the bytes the release `sprig` sends to its disk per unit of work, read from the kernel's
//! account of the process (`write_bytes` in `/proc/PID/io`: a page counts when the process dirties it, so
//! a page rewritten before it reached the disk counts once, and one rewritten after each fsync counts
//! each time, as the card sees it; the ext4 journal's own writes are the kernel's, not counted).
//!
//! Each scenario starts its own gateway (its data dir in a fresh temporary directory: set `TMPDIR` to put
//! it on the file system to measure, e.g. the SD card), waits until the counter stands still (sled's flush
//! every half second, the manifest after it, the spool's fsync every 100 ms have run), does its work,
//! and waits again:
//!
//! - **lifecycle**: CreateJob with `SPRIG_WEAR_EXECUTIONS` targets (control API over MQTT), each of those
//!   devices (raw MQTT clients) updates its execution to IN_PROGRESS, then to SUCCEEDED (all at once, or
//!   `SPRIG_WEAR_RATE` updates a second in all), then DeleteJob until the job is gone: bytes per execution,
//!   each phase apart. Target: at most 4 KiB per execution.
//! - **notify**: the same CreateJob for devices that listen to `$aws/things/{thing}/jobs/notify`, against
//!   one for devices that do not, in turn, `SPRIG_WEAR_ROUNDS` each; what is written from the CreateJob's
//!   reply (its writes are on disk by then) until the counter stands still: the difference per
//!   notification.
//! - **session**: a subscriber with a persistent session (clean_session = false) goes away;
//!   `SPRIG_WEAR_MESSAGES` QoS 1 messages are published for it (all at once, then again at
//!   `SPRIG_WEAR_MESSAGE_RATE` a second) and it comes back for them: bytes per message.
//! - **uplink**: the same messages on a bridged `out` topic, with the fleet broker (Debian's mosquitto) up,
//!   then down (spooled, then sent when it is back): bytes per message.
//! - **idle**: a gateway that has created and deleted a job of `SPRIG_WEAR_EXECUTIONS` targets, with
//!   devices connected (clean and persistent sessions, a pending job each, pinging every 20 s) and its
//!   uplink up, and no traffic, for `SPRIG_WEAR_IDLE_S` seconds, extrapolated to an hour. Target: 0.
//!
//! `cargo bench -p sprig-tests --bench wear`. Environment: `SPRIG_WEAR_EXECUTIONS=1000`,
//! `SPRIG_WEAR_RATE=0`, `SPRIG_WEAR_ROUNDS=4` (made even), `SPRIG_WEAR_MESSAGES=100` (the default bound of a
//! session's backlog), `SPRIG_WEAR_MESSAGE_RATE=10`, `SPRIG_WEAR_IDLE_S=60`,
//! `SPRIG_WEAR_SCENARIOS=lifecycle,notify,session,uplink,idle`, `SPRIG_WEAR_WINDOW_MS` and
//! `SPRIG_WEAR_CACHE_MB` (the gateway's `jobs.device_write_window_ms` and `jobs.store_cache_mb`, 50 and 32
//! by default), `SPRIG_BIN` (a prebuilt sprig instead of
//! `cargo build --release`), `MOSQUITTO`, `TMPDIR`. The README's Benchmarks section has the figures.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use sprig_test_support::settings::env_or;
use sprig_tests::bench::{connected, find_mosquitto, raise_nofile, sprig_release_bin, subscribe};
use sprig_tests::mosquitto::Mosquitto;
use sprig_tests::raw::{self, read_packet_async};
use sprig_tests::{create_job, procfs, with_setting, without_publish_quotas, Gateway};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[path = "wear/devices.rs"]
mod devices;

use devices::*;

/// The counter must stand still this long to count as settled: four of the store's flush ticks.
const QUIET: Duration = Duration::from_secs(2);
/// A wait for the counter to settle gives up after this (the table then marks the row).
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
/// The messages of the session and uplink scenarios: 64 bytes, as telemetry.
const PAYLOAD: &[u8; 64] = &[b'x'; 64];

struct Settings {
    executions: usize,
    rate: usize,
    rounds: usize,
    messages: usize,
    message_rate: usize,
    idle: Duration,
    scenarios: Vec<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let scenarios = std::env::var("SPRIG_WEAR_SCENARIOS")
            .unwrap_or_else(|_| "lifecycle,notify,session,uplink,idle".into());
        Settings {
            executions: env_or("SPRIG_WEAR_EXECUTIONS", 1000).max(1),
            rate: env_or("SPRIG_WEAR_RATE", 0),
            // Even: each kind goes first in half of them (what sled's flusher writes after a CreateJob
            // grows with what the ones before it left).
            rounds: env_or("SPRIG_WEAR_ROUNDS", 4).max(1).next_multiple_of(2),
            messages: env_or("SPRIG_WEAR_MESSAGES", 100).max(1),
            message_rate: env_or("SPRIG_WEAR_MESSAGE_RATE", 10).max(1),
            idle: Duration::from_secs(env_or("SPRIG_WEAR_IDLE_S", 60).max(1) as u64),
            scenarios: scenarios.split(',').map(|s| s.trim().to_owned()).collect(),
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

/// One line of the table.
struct Row {
    scenario: String,
    ops: f64,
    unit: &'static str,
    /// Signed: a difference of two measurements may come out below zero.
    bytes: i64,
    /// Most bytes per operation allowed, if the issue sets a target.
    target: Option<f64>,
    /// Every wait for the counter ended with it standing still.
    settled: bool,
}

impl Row {
    fn per_op(&self) -> f64 {
        self.bytes as f64 / self.ops
    }
}

/// The gateway's `write_bytes` once it stands still, read off the runtime's threads.
async fn settle(pid: u32) -> procfs::Settled {
    tokio::task::spawn_blocking(move || procfs::settled_write_bytes(pid, QUIET, SETTLE_WITHIN))
        .await
        .unwrap()
}

/// Measures a stretch of work: `write_bytes` settled before it, and after each phase; and the store's
/// transactions meanwhile (its generation, from the manifest the gateway writes after each flush).
struct Meter {
    pid: u32,
    last: u64,
    settled: bool,
    data_dir: PathBuf,
    generation: u64,
}

impl Meter {
    async fn start(gateway: &Gateway) -> Meter {
        let pid = gateway.pid();
        let first = settle(pid).await;
        let data_dir = gateway.data_dir();
        Meter {
            pid,
            last: first.bytes,
            settled: first.settled,
            generation: generation(&data_dir),
            data_dir,
        }
    }

    /// Store transactions since the last call (or the start).
    fn transactions(&mut self) -> u64 {
        let now = generation(&self.data_dir);
        std::mem::replace(&mut self.generation, now).abs_diff(now)
    }

    /// Bytes written since the last call (or the start), once the counter settled.
    async fn phase(&mut self) -> i64 {
        let now = settle(self.pid).await;
        self.settled &= now.settled;
        self.since(now.bytes)
    }

    /// Bytes written since the last call (or the start), as the counter stands now.
    fn now(&mut self) -> i64 {
        let now = procfs::write_bytes(self.pid).unwrap_or(self.last);
        self.since(now)
    }

    fn since(&mut self, now: u64) -> i64 {
        let bytes = now.saturating_sub(self.last);
        self.last = now;
        bytes as i64
    }
}

/// The store's generation (its transactions so far) as its manifest last recorded it.
fn generation(data_dir: &Path) -> u64 {
    let manifest =
        std::fs::read(data_dir.join("store").join("sprig-manifest.json")).unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|m| m["generation"].as_u64())
        .unwrap_or(0)
}

/// The default config with `edit` applied, room for `clients` connections, and the per-connection
/// publish quotas lifted (the benchmark's publishers go as fast as the gateway takes them).
fn gateway(bin: &Path, clients: usize, extra: &str) -> Site {
    let extra = extra.to_owned();
    let window = std::env::var("SPRIG_WEAR_WINDOW_MS").ok();
    let cache = std::env::var("SPRIG_WEAR_CACHE_MB").ok();
    let data = tempfile::tempdir().unwrap();
    // The log (and config) on a tmpfs, if there is one: under systemd the log goes to journald, whose
    // writes are not the gateway's.
    let logs = tempfile::tempdir_in(LOG_DIR).unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let data_dir = data.path().join("data");
    let gateway = Gateway::start_in(bin, logs, data_dir, move |config| {
        let config = match window {
            Some(ms) => with_setting(
                &config,
                "device_write_window_ms = 50",
                &format!("device_write_window_ms = {ms}"),
            ),
            None => config,
        };
        let config = match cache {
            Some(mb) => with_setting(
                &config,
                "store_cache_mb = 32",
                &format!("store_cache_mb = {mb}"),
            ),
            None => config,
        };
        let config = with_setting(
            &config,
            "max_connections = 1024",
            &format!("max_connections = {}", clients.max(1024) + 64),
        );
        without_publish_quotas(&config) + &extra
    });
    Site {
        gateway,
        _data: data,
    }
}

/// Where the gateways' logs go: a tmpfs, whose writes the kernel does not count.
const LOG_DIR: &str = "/dev/shm";

/// A gateway and its data dir, removed after the gateway is stopped.
struct Site {
    gateway: Gateway,
    _data: tempfile::TempDir,
}

impl std::ops::Deref for Site {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.gateway
    }
}

/// Devices may publish and subscribe under `dt/`.
const TELEMETRY_RULE: &str =
    "\n[[auth.topic_rules]]\nthings = [\"*\"]\npublish = [\"dt/#\"]\nsubscribe = [\"dt/#\"]\n";

/// An `[uplink]` to the fleet broker on `port`, bridging `dt/#` out at QoS 1.
fn uplink(port: u16) -> String {
    format!(
        "\n[uplink]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"site-7\"\nprefix = \"sprig/site-7\"\n\
         reconnect_max_s = 1\n\n[[uplink.topics]]\npattern = \"dt/#\"\ndirection = \"out\"\nqos = 1\n\
         remote_prefix = \"sites/site-7/\"\n"
    )
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:05}")).collect()
}

/// (a) A job's whole life, per execution, and each phase apart.
async fn lifecycle(bin: &Path, settings: &Settings) -> Vec<Row> {
    let n = settings.executions;
    let gateway = gateway(bin, n, "");
    let things = names("wear", n);
    let mut devices = connect_devices(gateway.addr, &things, |thing| {
        vec![format!("$aws/things/{thing}/jobs/wear/update/+")]
    })
    .await;
    let mut op = gateway.operator().await;
    let mut meter = Meter::start(&gateway).await;
    // (phase, bytes, store transactions)
    let mut phases: Vec<(String, i64, u64)> = Vec::new();

    let targets: Vec<&str> = things.iter().map(String::as_str).collect();
    op.request("CreateJob", create_job("wear", None, &targets))
        .await
        .expect("CreateJob");
    phases.push((
        "CreateJob".into(),
        meter.phase().await,
        meter.transactions(),
    ));
    for status in ["IN_PROGRESS", "SUCCEEDED"] {
        let timer = Instant::now();
        let body = json!({ "status": status });
        let latencies;
        (devices, latencies) = every_device(devices, "wear/update", body, settings.rate).await;
        let answered = format!(
            "{status}, all answered in {:.1} s, each in {:.0} ms (p50) / {:.0} ms (p99)",
            timer.elapsed().as_secs_f64(),
            quantile_ms(&latencies, 0.5),
            quantile_ms(&latencies, 0.99),
        );
        phases.push((answered, meter.phase().await, meter.transactions()));
    }
    // A fresh operator: the first one pings only while it is polled, and the updates may take longer
    // than its keep-alive.
    drop(op);
    let mut op = gateway.operator().await;
    assert_eq!(op.job_status("wear").await, "COMPLETED");
    op.request("DeleteJob", json!({"jobId": "wear"}))
        .await
        .expect("DeleteJob");
    op.wait_until_deleted("wear", Duration::from_secs(120))
        .await;
    phases.push((
        "DeleteJob".into(),
        meter.phase().await,
        meter.transactions(),
    ));
    drop(devices);

    let paced = match settings.rate {
        0 => "all devices at once".to_owned(),
        rate => format!("{rate} updates/s"),
    };
    let row = |scenario: String, bytes: i64, target: Option<f64>| Row {
        scenario,
        ops: n as f64,
        unit: "executions",
        bytes,
        target,
        settled: meter.settled,
    };
    let whole = phases.iter().map(|(_, bytes, _)| bytes).sum();
    let mut rows = vec![row(
        format!("job lifecycle, N = {n} ({paced}): whole life"),
        whole,
        Some(4096.0),
    )];
    for (phase, bytes, transactions) in phases {
        rows.push(row(
            format!("· {phase} ({transactions} store transactions)"),
            bytes,
            None,
        ));
    }
    rows
}

/// (b) Notifications: what the gateway writes from a CreateJob's reply (which follows the fsync of its
/// writes) until it stands still again, for devices that listen to `…/jobs/notify` and for devices that
/// do not, in turn; the difference is what the notifications wrote.
async fn notify(bin: &Path, settings: &Settings) -> Vec<Row> {
    let n = settings.executions;
    let gateway = gateway(bin, 2 * n, "");
    let (deaf, listening) = (names("deaf", n), names("ear", n));
    let mut deaf_devices = connect_devices(gateway.addr, &deaf, |_| Vec::new()).await;
    let mut listeners = connect_devices(gateway.addr, &listening, |thing| {
        vec![format!("$aws/things/{thing}/jobs/notify")]
    })
    .await;
    let mut op = gateway.operator().await;
    let mut meter = Meter::start(&gateway).await;
    // [deaf, listening]: bytes up to the reply, and after it.
    let (mut created, mut after) = ([0i64; 2], [0i64; 2]);
    let mut notifications = 0;
    for round in 0..settings.rounds {
        // Each round in the other order, so that neither kind always meets the larger store.
        for listen in [round % 2 == 0, round % 2 == 1] {
            let (things, job) = match listen {
                true => (&listening, format!("heard-{round}")),
                false => (&deaf, format!("unheard-{round}")),
            };
            let targets: Vec<&str> = things.iter().map(String::as_str).collect();
            let mut waiting = JoinSet::new();
            if listen {
                for mut device in listeners.drain(..) {
                    waiting.spawn(async move {
                        let got = device.receive(1, PATIENCE).await;
                        (device, got)
                    });
                }
            }
            meter.phase().await;
            op.request("CreateJob", create_job(&job, None, &targets))
                .await
                .expect("CreateJob");
            created[listen as usize] += meter.now();
            while let Some(done) = waiting.join_next().await {
                let (device, got) = done.unwrap();
                notifications += got;
                listeners.push(device);
            }
            after[listen as usize] += meter.phase().await;
        }
    }
    deaf_devices.clear();
    let rounds = settings.rounds as i64;
    let row = |scenario: String, ops: f64, unit, bytes| Row {
        scenario,
        ops,
        unit,
        bytes,
        target: None,
        settled: meter.settled,
    };
    vec![
        row(
            format!(
                "notification (N = {n}: from CreateJob's reply on, devices listening − not listening)"
            ),
            notifications as f64,
            "notifications",
            after[1] - after[0],
        ),
        row(
            format!("· from the reply on, N devices listening ({rounds} rounds, mean)"),
            n as f64,
            "executions",
            after[1] / rounds,
        ),
        row(
            format!("· from the reply on, N devices not listening ({rounds} rounds, mean)"),
            n as f64,
            "executions",
            after[0] / rounds,
        ),
        row(
            format!("· CreateJob up to its reply ({rounds} × 2 rounds, mean)"),
            n as f64,
            "executions",
            (created[0] + created[1]) / (2 * rounds),
        ),
    ]
}

/// Publishes `count` QoS 1 messages on `topic` from `client`, all at once (`rate` 0) or `rate` a second.
async fn publish_all(client: &mut Client, topic: &str, count: usize, rate: usize) {
    let started = tokio::time::Instant::now();
    for i in 0..count {
        if rate > 0 {
            let at = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(at).await;
        }
        client.publish(topic, PAYLOAD).await;
    }
}

fn pace(rate: usize) -> String {
    match rate {
        0 => "at once".to_owned(),
        rate => format!("{rate}/s"),
    }
}

/// (c) Messages for a persistent session while its client is away, then delivered when it is back.
async fn session(bin: &Path, settings: &Settings, rate: usize) -> Row {
    let m = settings.messages;
    let gateway = gateway(bin, 2, TELEMETRY_RULE);
    let mut sink = Client::connect_keeping_session(gateway.addr, "sink").await;
    sink.subscribe(&["dt/#".to_owned()]).await;
    sink.disconnect().await;
    let mut publisher = Client::connect(gateway.addr, "pub").await;
    let mut meter = Meter::start(&gateway).await;
    publish_all(&mut publisher, "dt/pub/temp", m, rate).await;
    let queued = meter.phase().await;
    let mut sink = Client::connect_keeping_session(gateway.addr, "sink").await;
    let got = sink.receive(m, Duration::from_secs(5)).await;
    let delivered = meter.phase().await;
    assert_eq!(got, m, "the persistent session's client got {got} of {m}");
    Row {
        scenario: format!(
            "persistent-session message ({m} QoS 1 {}; queued {queued} B, delivered {delivered} B)",
            pace(rate)
        ),
        ops: m as f64,
        unit: "messages",
        bytes: queued + delivered,
        target: None,
        settled: meter.settled,
    }
}

/// The number after `name ` in the gateway's `/metrics`.
fn metric(gateway: &Gateway, name: &str) -> Option<f64> {
    let (_, body) = gateway.metrics_get("/metrics");
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until the spool holds nothing the fleet has not acknowledged.
async fn spool_drained(gateway: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(gateway, "sprig_uplink_spool_messages") != Some(0.0) {
        assert!(Instant::now() < deadline, "the spool did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (d) Messages on a bridged `out` topic, the fleet broker up or down (then back).
async fn uplinked(bin: &Path, mosquitto: &Path, settings: &Settings, rate: usize, up: bool) -> Row {
    let m = settings.messages;
    let mut fleet = Mosquitto::start(mosquitto.to_owned());
    let gateway = gateway(bin, 1, &(uplink(fleet.port) + TELEMETRY_RULE));
    gateway.wait_for_log(
        "uplink: connected to the fleet broker",
        Duration::from_secs(30),
    );
    if !up {
        fleet.kill();
        gateway.wait_for_log("uplink: lost the fleet broker", Duration::from_secs(30));
    }
    let mut publisher = Client::connect(gateway.addr, "pub").await;
    let mut meter = Meter::start(&gateway).await;
    publish_all(&mut publisher, "dt/pub/temp", m, rate).await;
    if up {
        spool_drained(&gateway).await;
    }
    let spooled = meter.phase().await;
    let mut sent_later = 0;
    if !up {
        fleet.spawn();
        spool_drained(&gateway).await;
        sent_later = meter.phase().await;
    }
    let scenario = match up {
        true => format!("uplink-spooled message, fleet up ({m} QoS 1 {})", pace(rate)),
        false => format!(
            "uplink-spooled message, fleet down then back ({m} QoS 1 {}; spooled {spooled} B, sent {sent_later} B)",
            pace(rate)
        ),
    };
    Row {
        scenario,
        ops: m as f64,
        unit: "messages",
        bytes: spooled + sent_later,
        target: None,
        settled: meter.settled,
    }
}

/// (e) Nothing happening: devices connected, a job pending for each, the uplink up.
async fn idle(bin: &Path, mosquitto: Option<&Path>, settings: &Settings) -> Row {
    let fleet = mosquitto.map(|bin| Mosquitto::start(bin.to_owned()));
    let extra = fleet.as_ref().map(|f| uplink(f.port)).unwrap_or_default();
    let gateway = gateway(bin, 20, &(extra + TELEMETRY_RULE));
    if fleet.is_some() {
        gateway.wait_for_log(
            "uplink: connected to the fleet broker",
            Duration::from_secs(30),
        );
    }
    let (clean, kept) = (names("idle", 10), names("kept", 10));
    let mut devices = Vec::new();
    for thing in &clean {
        let mut device = Client::connect_pinging(gateway.addr, thing, true).await;
        device
            .subscribe(&[format!("$aws/things/{thing}/jobs/notify-next")])
            .await;
        devices.push(device);
    }
    for thing in &kept {
        let mut device = Client::connect_pinging(gateway.addr, thing, false).await;
        device
            .subscribe(&[
                format!("$aws/things/{thing}/jobs/notify-next"),
                "dt/#".to_owned(),
            ])
            .await;
        devices.push(device);
    }
    let pinging: Vec<_> = devices
        .into_iter()
        .map(|device| device.keep_alive(Duration::from_secs(20)))
        .collect();
    let mut op = gateway.operator().await;
    // Work before the quiet: a job of `executions` targets created and deleted leaves sled segments to
    // clean, which it does on its flusher's ticks.
    let gone = names("gone", settings.executions);
    let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
    op.request("CreateJob", create_job("gone", None, &gone))
        .await
        .expect("CreateJob");
    op.request("DeleteJob", json!({"jobId": "gone", "force": true}))
        .await
        .expect("DeleteJob");
    op.wait_until_deleted("gone", Duration::from_secs(120))
        .await;
    let targets: Vec<&str> = clean.iter().chain(&kept).map(String::as_str).collect();
    op.request("CreateJob", create_job("pending", None, &targets))
        .await
        .expect("CreateJob");
    // The operator's client pings only while it is polled: it leaves now, not in the window.
    drop(op);
    let mut meter = Meter::start(&gateway).await;
    tokio::time::sleep(settings.idle).await;
    let bytes = meter.now();
    pinging.iter().for_each(|task| task.abort());
    let hours = settings.idle.as_secs_f64() / 3600.0;
    let uplink = if fleet.is_some() { ", uplink up" } else { "" };
    Row {
        scenario: format!(
            "idle, 20 devices connected (10 persistent sessions){uplink}, {} s window, per hour (extrapolated)",
            settings.idle.as_secs()
        ),
        ops: hours,
        unit: "hours",
        bytes,
        target: Some(0.0),
        settled: meter.settled,
    }
}

/// Whether this process's own `write_bytes` moves when it writes and fsyncs a file in `dir` (it does not
/// on a tmpfs, for instance): then the gateway's, with its data dir there, can be measured.
fn counts_writes(dir: &Path) -> bool {
    use std::io::Write;
    let me = std::process::id();
    let before = procfs::write_bytes(me).unwrap_or(0);
    let path = dir.join(format!("sprig-wear-probe-{me}"));
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&[1; 100]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let after = procfs::write_bytes(me).unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    after > before
}

/// The file system holding `dir`, from `/proc/mounts`: (device, type, mount point).
fn file_system(dir: &Path) -> (String, String, PathBuf) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let point = PathBuf::from(fields.get(1)?);
            dir.starts_with(&point)
                .then(|| (fields[0].to_owned(), fields[2].to_owned(), point))
        })
        .max_by_key(|(_, _, point)| point.as_os_str().len())
        .unwrap_or_else(|| ("?".into(), "?".into(), PathBuf::from("/")))
}

fn print_table(rows: &[Row]) {
    println!("| scenario | operations | bytes written | bytes per op | target | met? |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let ops = match row.unit {
            "hours" => format!("{:.3} hours", row.ops),
            unit => format!("{} {unit}", row.ops as u64),
        };
        let (target, met) = match row.target {
            Some(target) => (
                format!("≤ {target:.0} B"),
                if row.per_op() <= target {
                    "yes"
                } else {
                    "**no**"
                },
            ),
            None => ("—".to_owned(), ""),
        };
        let unsettled = if row.settled { "" } else { " (did not settle)" };
        println!(
            "| {}{unsettled} | {ops} | {} | {:.0} | {target} | {met} |",
            row.scenario,
            row.bytes,
            row.per_op()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let settings = Settings::from_env();
    raise_nofile(2 * settings.executions as u64 + 512);
    let bin = sprig_release_bin();
    let temp = std::env::temp_dir();
    let (device, kind, point) = file_system(&temp);
    println!(
        "data dirs under {} ({device}, {kind}, mounted on {})",
        temp.display(),
        point.display()
    );
    if !counts_writes(&temp) {
        eprintln!(
            "write_bytes in /proc/PID/io did not move for a write and an fsync in {} ({kind}): the kernel \
             does not count this file system's writes (a tmpfs, an overlay). Set TMPDIR to a directory on \
             a disk-backed file system.",
            temp.display()
        );
        std::process::exit(1);
    }
    let mosquitto = find_mosquitto();
    let mut rows = Vec::new();
    if settings.runs("lifecycle") {
        rows.extend(lifecycle(&bin, &settings).await);
    }
    if settings.runs("notify") {
        rows.extend(notify(&bin, &settings).await);
    }
    if settings.runs("session") {
        rows.push(session(&bin, &settings, 0).await);
        rows.push(session(&bin, &settings, settings.message_rate).await);
    }
    if settings.runs("uplink") {
        match &mosquitto {
            Some(mosquitto) => {
                for (rate, up) in [(0, true), (settings.message_rate, true), (0, false)] {
                    rows.push(uplinked(&bin, mosquitto, &settings, rate, up).await);
                }
            }
            None => eprintln!("SKIPPED uplink: no mosquitto (apt-get install mosquitto)"),
        }
    }
    if settings.runs("idle") {
        rows.push(idle(&bin, mosquitto.as_deref(), &settings).await);
    }
    print_table(&rows);
}
