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
//! Run it with `bash tests/bench/fanout.sh` (installs mosquitto if needed, raises `ulimit -n`, builds the
//! release binary of sprig and runs `cargo bench -p sprig-tests --bench fanout`). Environment:
//! `SPRIG_FANOUT_SIZES=1000,10000`, `SPRIG_FANOUT_RUNS=5`, `SPRIG_FANOUT_CYCLES=10`,
//! `SPRIG_FANOUT_RUN_TIMEOUT_S=60`, `SPRIG_FANOUT_DEADLINE_S=1800`, `SPRIG_FANOUT_LOGS=DIR` (keep the
//! brokers' logs there), `SPRIG_FANOUT_QOS` (mosquitto's publish QoS when sprig delivered nothing to copy
//! it from; default 0, sprig's notifier QoS), `SPRIG_BIN` (a prebuilt sprig instead of
//! `cargo build --release`), `MOSQUITTO` (path of the mosquitto binary).

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sprig_tests::bench::{find_mosquitto, mib, percentile, raise_nofile, sprig_release_bin};
use sprig_tests::raw::{packet, publish, put_str, read_packet_async as read_packet};
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

#[path = "fanout/floor.rs"]
mod floor;

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
    let mut results = Vec::new();
    runtime.block_on(async {
        for &n in &sizes {
            eprintln!("fanout: N = {n}, sprig");
            let sprig_result =
                bench_broker(BrokerKind::Sprig(sprig.clone()), n, &settings, None).await;
            let copied = sprig_result.payload;
            results.push(sprig_result);
            if let Some(path) = &mosquitto {
                eprintln!("fanout: N = {n}, mosquitto");
                let payload =
                    copied.unwrap_or((estimated_notification_len(n), settings.default_qos));
                let mosquitto_result = bench_broker(
                    BrokerKind::Mosquitto(path.clone()),
                    n,
                    &settings,
                    Some((payload.0, payload.1, copied.is_some())),
                )
                .await;
                results.push(mosquitto_result);
            }
            eprintln!("fanout: N = {n}, floor");
            let payload = copied.unwrap_or((estimated_notification_len(n), 0));
            let floor = BrokerKind::Floor(std::env::current_exe().unwrap());
            let floor_result =
                bench_broker(floor, n, &settings, Some((payload.0, 0, copied.is_some()))).await;
            results.push(floor_result);
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    print_table(&results, &settings);
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

// ---------------------------------------------------------------------------------------------------------
// Brokers

#[derive(Clone)]
enum BrokerKind {
    Sprig(PathBuf),
    Mosquitto(PathBuf),
    /// This benchmark's own binary as the floor server (see the `floor` module).
    Floor(PathBuf),
}

impl BrokerKind {
    fn name(&self) -> &'static str {
        match self {
            BrokerKind::Sprig(_) => "sprig",
            BrokerKind::Mosquitto(_) => "mosquitto",
            BrokerKind::Floor(_) => "floor",
        }
    }
}

/// A broker process on a free loopback port, killed when dropped.
struct Broker {
    /// `sprig-1000`, `mosquitto-10000`: names the log kept in `SPRIG_FANOUT_LOGS`.
    label: String,
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl Broker {
    fn start(kind: &BrokerKind, n: usize) -> Broker {
        let max_connections = n * 2 + 100;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = dir.path().join("broker.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = match kind {
            BrokerKind::Sprig(bin) => {
                let data_dir = dir.path().join("data");
                let config = with_setting(
                    &config_for(&addr.to_string(), &data_dir),
                    "max_connections = 1024",
                    &format!("max_connections = {max_connections}"),
                );
                let config_path = dir.path().join("gateway.toml");
                std::fs::write(&config_path, config).unwrap();
                let mut command = Command::new(bin);
                command
                    .args(["run", "--config"])
                    .arg(&config_path)
                    .env("RUST_LOG", "info,rumqttd=warn");
                command
            }
            BrokerKind::Mosquitto(bin) => {
                let config_path = dir.path().join("mosquitto.conf");
                std::fs::write(
                    &config_path,
                    format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n\
                         persistence false\n"
                    ),
                )
                .unwrap();
                let mut command = Command::new(bin);
                command.arg("-c").arg(&config_path);
                command
            }
            BrokerKind::Floor(bin) => {
                let mut command = Command::new(bin);
                command.env("SPRIG_FANOUT_FLOOR_PORT", port.to_string());
                command
            }
        };
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", kind.name()));
        CHILDREN.lock().unwrap().push(child.id());
        let mut broker = Broker {
            label: format!("{}-{n}", kind.name()),
            child,
            addr,
            dir,
            log_path,
        };
        broker.wait_until_ready(kind);
        broker
    }

    fn wait_until_ready(&mut self, kind: &BrokerKind) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before it was ready; log:\n{}",
                    kind.name(),
                    self.log()
                );
            }
            let accepts =
                StdTcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok();
            let ready = match kind {
                BrokerKind::Sprig(_) => accepts && self.log().contains("ready"),
                BrokerKind::Mosquitto(_) | BrokerKind::Floor(_) => accepts,
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} was not ready within {START_TIMEOUT:?}; log:\n{}",
                kind.name(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// VmRSS in KiB.
    fn rss_kb(&self) -> u64 {
        sprig_tests::bench::rss_kb(self.child.id())
    }

    /// CPU time of the broker's live threads so far (nanosecond counters of `/proc/{pid}/task/*/schedstat`).
    fn cpu_time(&self) -> Duration {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return Duration::ZERO;
        };
        let ns: u64 = tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(ns)
    }

    /// CPU time so far per thread name (`SPRIG_FANOUT_THREADS=1` prints where each run's time went).
    fn cpu_by_thread(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by_name = std::collections::BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return by_name;
        };
        for task in tasks.flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            *by_name.entry(name.trim().to_owned()).or_insert(0) += ns;
        }
        by_name
    }

    fn local_credential(&self) -> (String, String) {
        let text =
            std::fs::read_to_string(self.dir.path().join("data").join("local-operator.json"))
                .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (
            v["username"].as_str().unwrap().to_owned(),
            v["password"].as_str().unwrap().to_owned(),
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        sprig_tests::bench::stop_broker(
            &mut self.child,
            &self.log_path,
            &self.label,
            "SPRIG_FANOUT_LOGS",
        );
        CHILDREN.lock().unwrap().retain(|&p| p != self.child.id());
    }
}

// ---------------------------------------------------------------------------------------------------------
// One broker, one N

struct RunResult {
    delivered: usize,
    /// Time to the last delivery, if all N were delivered.
    elapsed: Option<Duration>,
    /// sprig only: CreateJob request to accepted reply.
    request: Option<Duration>,
    /// Messages that were not a first delivery of the current run (duplicates, stale runs).
    stray: usize,
    error: Option<String>,
    /// CPU time spent while the run was timed: (by the broker, by this process's devices).
    cpu: Option<(Duration, Duration)>,
}

struct BrokerResult {
    broker: &'static str,
    n: usize,
    connected: usize,
    connect_failures: Vec<String>,
    connect_time: Option<Duration>,
    rss_idle_kb: u64,
    rss_connected_kb: u64,
    rss_cycles_kb: Vec<u64>,
    runs: Vec<RunResult>,
    /// (payload bytes, QoS) of the deliveries; for mosquitto also whether it was copied from sprig's.
    payload: Option<(usize, u8)>,
    payload_measured: bool,
    note: Option<String>,
}

async fn bench_broker(
    kind: BrokerKind,
    n: usize,
    settings: &Settings,
    mosquitto_payload: Option<(usize, u8, bool)>,
) -> BrokerResult {
    let broker = Broker::start(&kind, n);
    let mut result = BrokerResult {
        broker: kind.name(),
        n,
        connected: 0,
        connect_failures: Vec::new(),
        connect_time: None,
        rss_idle_kb: 0,
        rss_connected_kb: 0,
        rss_cycles_kb: Vec::new(),
        runs: Vec::new(),
        payload: mosquitto_payload.map(|(len, qos, _)| (len, qos)),
        payload_measured: mosquitto_payload.is_some_and(|p| p.2),
        note: None,
    };
    let is_sprig = matches!(kind, BrokerKind::Sprig(_));
    let tally = Arc::new(Tally::new(is_sprig));
    tokio::time::sleep(SETTLE).await;
    result.rss_idle_kb = broker.rss_kb();

    // Memory: N idle devices, then connect/disconnect cycles.
    for cycle in 1..=settings.cycles.max(1) {
        let started = Instant::now();
        let fleet = Fleet::connect(broker.addr, n, is_sprig, tally.clone()).await;
        if cycle == 1 {
            result.connect_time = Some(started.elapsed());
            result.connected = fleet.connected;
            result.connect_failures = fleet.failures.clone();
            tokio::time::sleep(SETTLE).await;
            result.rss_connected_kb = broker.rss_kb();
        }
        let connected = fleet.connected;
        fleet.disconnect().await;
        tokio::time::sleep(SETTLE).await;
        result.rss_cycles_kb.push(broker.rss_kb());
        eprintln!(
            "fanout:   cycle {cycle}: {} of {n} connected, RSS after disconnect {} KiB",
            connected,
            result.rss_cycles_kb.last().unwrap()
        );
    }

    // Fan-out.
    let fleet = Fleet::connect(broker.addr, n, is_sprig, tally.clone()).await;
    if fleet.connected < n {
        result.note = Some(format!(
            "fan-out fleet: only {} of {n} devices connected",
            fleet.connected
        ));
    }
    for run in 1..=settings.runs {
        let tag = NEXT_TAG.fetch_add(1, Ordering::SeqCst);
        let outcome = match &kind {
            BrokerKind::Sprig(_) => sprig_run(&broker, n, run, tag, &tally, settings).await,
            BrokerKind::Mosquitto(_) | BrokerKind::Floor(_) => {
                let (len, qos) = result.payload.expect("mosquitto payload");
                mosquitto_run(&broker, n, tag, len, qos, &tally, settings).await
            }
        };
        eprintln!(
            "fanout:   run {run}: delivered {} of {n}, {}{}",
            outcome.delivered,
            outcome
                .elapsed
                .map_or("timed out".into(), |d| format!("{:.1} ms", ms(d))),
            outcome
                .error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
        if is_sprig && result.payload.is_none() && tally.payload_len.load(Ordering::SeqCst) > 0 {
            result.payload = Some((
                tally.payload_len.load(Ordering::SeqCst),
                tally.qos.load(Ordering::SeqCst),
            ));
            result.payload_measured = true;
        }
        let nothing = outcome.delivered == 0;
        result.runs.push(outcome);
        if nothing {
            result.note = Some(format!(
                "run {run} delivered nothing: remaining runs skipped"
            ));
            break;
        }
    }
    fleet.disconnect().await;
    if tally.lost.load(Ordering::SeqCst) {
        let lost = "the broker closed some device connections";
        result.note = Some(match result.note.take() {
            Some(note) => format!("{note}; {lost}"),
            None => lost.into(),
        });
    }
    drop(broker);
    result
}

static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

/// Deliveries of the current run, shared by all devices of a fleet.
struct Tally {
    sprig: bool,
    /// Tag of the current run (0: none); a device counts a message once per tag.
    current: AtomicU64,
    reached: AtomicUsize,
    stray: AtomicUsize,
    /// Nanoseconds since `base` of the latest first delivery.
    last_ns: AtomicU64,
    base: Instant,
    payload_len: AtomicUsize,
    qos: AtomicU8,
    /// A device's read loop ended on an error (not on our disconnect).
    lost: AtomicBool,
}

impl Tally {
    fn new(sprig: bool) -> Tally {
        Tally {
            sprig,
            current: AtomicU64::new(0),
            reached: AtomicUsize::new(0),
            stray: AtomicUsize::new(0),
            last_ns: AtomicU64::new(0),
            base: Instant::now(),
            payload_len: AtomicUsize::new(0),
            qos: AtomicU8::new(0),
            lost: AtomicBool::new(false),
        }
    }

    fn start(&self, tag: u64) {
        self.reached.store(0, Ordering::SeqCst);
        self.stray.store(0, Ordering::SeqCst);
        self.last_ns.store(0, Ordering::SeqCst);
        self.current.store(tag, Ordering::SeqCst);
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The run a message belongs to: sprig's job id ends in `-{tag}`; mosquitto's payload starts with it.
    fn tag_of(&self, topic: &[u8], payload: &[u8]) -> Option<u64> {
        if self.sprig {
            let topic = std::str::from_utf8(topic).ok()?;
            let job_id = topic.split('/').nth(4)?;
            job_id.rsplit('-').next()?.parse().ok()
        } else {
            std::str::from_utf8(payload.get(..20)?).ok()?.parse().ok()
        }
    }

    /// Called by a device for each PUBLISH; `seen` is the device's last counted tag.
    fn delivered(&self, seen: &mut u64, topic: &[u8], payload: &[u8], qos: u8) {
        let now = self.now_ns();
        let current = self.current.load(Ordering::SeqCst);
        match self.tag_of(topic, payload) {
            Some(tag) if tag == current && *seen != tag => {
                *seen = tag;
                self.last_ns.fetch_max(now, Ordering::SeqCst);
                let _ = self.payload_len.compare_exchange(
                    0,
                    payload.len(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                self.qos.fetch_max(qos, Ordering::SeqCst);
                self.reached.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                self.stray.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Waits until `n` devices got the current run, or `timeout`.
    async fn wait(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.reached.load(Ordering::SeqCst) < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

async fn sprig_run(
    broker: &Broker,
    n: usize,
    run: usize,
    tag: u64,
    tally: &Arc<Tally>,
    settings: &Settings,
) -> RunResult {
    let job_id = format!("fanout-n{n}-run{run}-{tag}");
    let things: Vec<String> = (0..n).map(thing).collect();
    let body = json!({
        "jobId": job_id,
        "namespaceId": NAMESPACE,
        "targets": things,
        "document": "{\"action\":\"update\"}",
    });
    let (user, pass) = broker.local_credential();
    let addr = broker.addr;
    tally.start(tag);
    // In a task of its own: the harness's Operator panics on a lost connection or a 30 s silence, and that
    // must end this run, not the benchmark.
    let create = tokio::spawn(async move {
        let mut operator = Operator::connect(addr, &user, &pass).await?;
        let sent = Instant::now();
        let reply = operator.request("CreateJob", body).await;
        let accepted = Instant::now();
        reply.map_err(|(code, message)| format!("CreateJob: {code}: {message}"))?;
        Ok::<_, String>((operator, sent, accepted))
    });
    let (mut operator, sent, accepted) = match create.await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => return failed_run(tally, e),
        Err(e) => return failed_run(tally, format!("CreateJob: {e}")),
    };
    let cpu = cpu_now(broker);
    let threads = broker.cpu_by_thread();
    let complete = tally.wait(n, settings.run_timeout).await;
    let mut outcome = finish_run(tally, complete, accepted, Some(accepted - sent), n);
    outcome.cpu = Some(cpu_since(broker, cpu));
    if std::env::var_os("SPRIG_FANOUT_THREADS").is_some() {
        let after = broker.cpu_by_thread();
        let spent: Vec<String> = after
            .iter()
            .map(|(name, ns)| {
                (
                    name,
                    ns.saturating_sub(threads.get(name).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, ns)| *ns >= 1_000_000)
            .map(|(name, ns)| format!("{name} {:.1} ms", ns as f64 / 1e6))
            .collect();
        eprintln!("fanout:   run {run} CPU by thread: {}", spent.join(", "));
    }

    // Cancel the job so the next run's notification is the same size (the namespace's pending jobs are in
    // it), and let the cancel notifications pass before the next run starts.
    let stray_before = tally.stray.load(Ordering::SeqCst);
    let cancel = tokio::spawn(async move {
        operator
            .request("CancelJob", json!({ "jobId": job_id }))
            .await
            .map_err(|(code, message)| format!("CancelJob: {code}: {message}"))
    });
    match cancel.await {
        Ok(Ok(_)) => {
            if outcome.delivered > 0 {
                let deadline = Instant::now() + settings.run_timeout;
                while tally.stray.load(Ordering::SeqCst) < stray_before + outcome.delivered
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(Err(e)) => eprintln!("fanout:   {e}"),
        Err(e) => eprintln!("fanout:   CancelJob: {e}"),
    }
    outcome
}

async fn mosquitto_run(
    broker: &Broker,
    n: usize,
    tag: u64,
    payload_len: usize,
    qos: u8,
    tally: &Arc<Tally>,
    settings: &Settings,
) -> RunResult {
    // All N publishes encoded beforehand: the timed part is the broker's work, not the encoding.
    let mut bytes = Vec::with_capacity(n * (payload_len + 32));
    let mut payload = format!("{tag:020}").into_bytes();
    payload.resize(payload_len.max(20), b'x');
    for i in 0..n {
        let pkid = (i % 65535) as u16 + 1;
        bytes.extend_from_slice(&publish(&notify_topic(i), qos, pkid, &payload));
    }
    let (reader, mut writer) = match connect_client(broker.addr, "bench-publisher", None).await {
        Ok(pair) => pair,
        Err(e) => return failed_run(tally, format!("publisher: {e}")),
    };
    // Drain PUBACKs (QoS 1) so the broker never blocks on the publisher's socket.
    let drain = tokio::spawn(async move {
        let mut reader = reader;
        while read_packet(&mut reader).await.is_ok() {}
    });
    tally.start(tag);
    let cpu = cpu_now(broker);
    let started = Instant::now();
    let result = match writer.write_all(&bytes).await {
        Ok(()) => {
            let complete = tally.wait(n, settings.run_timeout).await;
            let mut outcome = finish_run(tally, complete, started, None, n);
            outcome.cpu = Some(cpu_since(broker, cpu));
            outcome
        }
        Err(e) => failed_run(tally, format!("publisher: {e}")),
    };
    let _ = writer.write_all(&[0xE0, 0x00]).await;
    let _ = writer.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    result
}

fn finish_run(
    tally: &Tally,
    complete: bool,
    from: Instant,
    request: Option<Duration>,
    n: usize,
) -> RunResult {
    let delivered = tally.reached.load(Ordering::SeqCst).min(n);
    let elapsed = complete.then(|| {
        let from_ns = from.duration_since(tally.base).as_nanos() as u64;
        // A delivery may precede the reply that started the clock (sprig notifies while it answers).
        Duration::from_nanos(tally.last_ns.load(Ordering::SeqCst).saturating_sub(from_ns))
    });
    RunResult {
        delivered,
        elapsed,
        request,
        stray: tally.stray.load(Ordering::SeqCst),
        error: None,
        cpu: None,
    }
}

fn failed_run(tally: &Tally, error: String) -> RunResult {
    RunResult {
        delivered: tally.reached.load(Ordering::SeqCst),
        elapsed: None,
        request: None,
        stray: 0,
        error: Some(error),
        cpu: None,
    }
}

/// CPU time used so far: (by the broker's threads, by this process).
fn cpu_now(broker: &Broker) -> (Duration, Duration) {
    (broker.cpu_time(), own_cpu_time())
}

/// CPU used since `before` (from [`cpu_now`]).
fn cpu_since(broker: &Broker, before: (Duration, Duration)) -> (Duration, Duration) {
    let now = cpu_now(broker);
    (
        now.0.saturating_sub(before.0),
        now.1.saturating_sub(before.1),
    )
}

fn own_cpu_time() -> Duration {
    // SAFETY: getrusage writes one plain struct that we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

// ---------------------------------------------------------------------------------------------------------
// Devices: a minimal MQTT 3.1.1 client

fn thing(i: usize) -> String {
    format!("dev{i:05}")
}

fn notify_topic(i: usize) -> String {
    format!("bench/dev{i:05}/notify")
}

struct Fleet {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    connected: usize,
    /// The first few connection failures.
    failures: Vec<String>,
}

impl Fleet {
    /// Connects `n` devices, `CONNECT_BATCH` at a time, each subscribed to its own topic.
    async fn connect(addr: SocketAddr, n: usize, sprig: bool, tally: Arc<Tally>) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let mut fleet = Fleet {
            stop,
            tasks: JoinSet::new(),
            connected: 0,
            failures: Vec::new(),
        };
        let deadline = Instant::now() + FLEET_TIMEOUT;
        let mut failed = 0;
        for batch in (0..n).collect::<Vec<_>>().chunks(CONNECT_BATCH) {
            if Instant::now() >= deadline {
                failed += n - batch[0];
                fleet
                    .failures
                    .push(format!("fleet not connected within {FLEET_TIMEOUT:?}"));
                break;
            }
            let mut connecting = JoinSet::new();
            for &i in batch {
                let filter = if sprig {
                    format!(
                        "$aws/things/{}/jobs/+/notify-namespace-{NAMESPACE}/",
                        thing(i)
                    )
                } else {
                    notify_topic(i)
                };
                connecting.spawn(async move {
                    tokio::time::timeout(
                        DEVICE_TIMEOUT,
                        connect_client(addr, &thing(i), Some(&filter)),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("{}: no answer within {DEVICE_TIMEOUT:?}", thing(i)))
                    })
                });
            }
            while let Some(joined) = connecting.join_next().await {
                match joined {
                    Ok(Ok((reader, writer))) => {
                        fleet.connected += 1;
                        let tally = tally.clone();
                        let stop = stop_rx.clone();
                        fleet.tasks.spawn(device_loop(reader, writer, tally, stop));
                    }
                    Ok(Err(e)) => {
                        failed += 1;
                        if fleet.failures.len() < 5 {
                            fleet.failures.push(e);
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if fleet.failures.len() < 5 {
                            fleet.failures.push(e.to_string());
                        }
                    }
                }
            }
        }
        if failed > 0 {
            eprintln!(
                "fanout:   {failed} of {n} devices failed to connect: {:?}",
                fleet.failures
            );
        }
        fleet
    }

    /// Every device sends DISCONNECT and closes its socket.
    async fn disconnect(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(FLEET_TIMEOUT, all).await.is_err() {
            eprintln!("fanout:   devices did not disconnect within {FLEET_TIMEOUT:?}");
            self.tasks.abort_all();
        }
    }
}

/// Reads PUBLISHes (acknowledging QoS 1) and counts them until told to stop or the connection ends.
async fn device_loop(
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = 0u64;
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = writer.write_all(&[0xE0, 0x00]).await;
                let _ = writer.shutdown().await;
                return;
            }
            packet = read_packet(&mut reader) => {
                let Ok((header, body)) = packet else {
                    tally.lost.store(true, Ordering::SeqCst);
                    return;
                };
                if header >> 4 != 3 {
                    continue;
                }
                let Some((topic, qos, pkid, payload)) = parse_publish(header, &body) else {
                    continue;
                };
                tally.delivered(&mut seen, topic, payload, qos);
                if qos == 1 {
                    let [hi, lo] = pkid.to_be_bytes();
                    if writer.write_all(&[0x40, 0x02, hi, lo]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// CONNECT (clean session, no keep-alive) and, with a filter, SUBSCRIBE at QoS 1; both acknowledged.
async fn connect_client(
    addr: SocketAddr,
    client_id: &str,
    filter: Option<&str>,
) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{client_id}: connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(2048, read);
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    put_str(&mut connect, client_id.as_bytes());
    write
        .write_all(&packet(0x10, &connect))
        .await
        .map_err(|e| format!("{client_id}: CONNECT: {e}"))?;
    let (header, body) = read_packet(&mut reader)
        .await
        .map_err(|e| format!("{client_id}: CONNACK: {e}"))?;
    if header != 0x20 || body.len() != 2 || body[1] != 0 {
        return Err(format!("{client_id}: refused: {header:#x} {body:?}"));
    }
    if let Some(filter) = filter {
        let mut subscribe = vec![0, 1];
        put_str(&mut subscribe, filter.as_bytes());
        subscribe.push(1);
        write
            .write_all(&packet(0x82, &subscribe))
            .await
            .map_err(|e| format!("{client_id}: SUBSCRIBE: {e}"))?;
        let (header, body) = read_packet(&mut reader)
            .await
            .map_err(|e| format!("{client_id}: SUBACK: {e}"))?;
        if header != 0x90 || body.len() != 3 || body[2] > 2 {
            return Err(format!(
                "{client_id}: subscription to {filter} refused: {header:#x} {body:?}"
            ));
        }
    }
    Ok((reader, write))
}

/// (topic, QoS, packet id, payload) of a PUBLISH body.
fn parse_publish(header: u8, body: &[u8]) -> Option<(&[u8], u8, u16, &[u8])> {
    let qos = (header >> 1) & 0x03;
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let topic = body.get(2..2 + topic_len)?;
    let mut at = 2 + topic_len;
    let mut pkid = 0;
    if qos > 0 {
        pkid = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    Some((topic, qos, pkid, body.get(at..)?))
}

// ---------------------------------------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Percentiles over all runs made; a run that did not deliver everything within the run timeout counts as
/// `INFINITY` (it took longer than the timeout), so a censored percentile shows as "> timeout".
struct Summary {
    p50: Option<f64>,
    p99: Option<f64>,
    /// Messages per second at p50; for a censored p50, the upper bound N / timeout.
    rate: Option<f64>,
    rate_is_bound: bool,
}

fn summarize(result: &BrokerResult, timeout: Duration) -> Summary {
    let mut times: Vec<f64> = result
        .runs
        .iter()
        .map(|r| r.elapsed.map_or(f64::INFINITY, ms))
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    if times.iter().all(|t| t.is_infinite()) && result.runs.iter().all(|r| r.delivered == 0) {
        // Nothing delivered at all: no bound worth printing.
        return Summary {
            p50: None,
            p99: None,
            rate: None,
            rate_is_bound: false,
        };
    }
    let p50 = percentile(&times, 0.50);
    let rate_is_bound = p50.is_some_and(f64::is_infinite);
    let p50_ms = if rate_is_bound {
        ms(timeout)
    } else {
        p50.unwrap_or(0.0)
    };
    Summary {
        p50,
        p99: percentile(&times, 0.99),
        rate: p50.map(|_| result.n as f64 / (p50_ms.max(0.001) / 1000.0)),
        rate_is_bound,
    }
}

fn fmt_ms(v: Option<f64>, timeout: Duration) -> String {
    match v {
        None => "—".into(),
        Some(t) if t.is_infinite() => format!("> {:.0}", ms(timeout)),
        Some(t) => format!("{t:.1}"),
    }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("—".into(), f)
}

fn print_table(results: &[BrokerResult], settings: &Settings) {
    let mut out = String::new();
    let header: Vec<String> = results
        .iter()
        .map(|r| format!("{} N={}", r.broker, r.n))
        .collect();
    out.push_str(&format!("\n| | {} |\n", header.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---|".repeat(results.len())));
    let timeout = settings.run_timeout;
    let summaries: Vec<Summary> = results.iter().map(|r| summarize(r, timeout)).collect();
    let mut row = |name: &str, cells: Vec<String>| {
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row(
        "devices connected + subscribed",
        results
            .iter()
            .map(|r| {
                format!(
                    "{} of {} in {}",
                    r.connected,
                    r.n,
                    fmt_opt(r.connect_time.map(|d| d.as_secs_f64()), |s| format!(
                        "{s:.2} s"
                    ))
                )
            })
            .collect(),
    );
    row(
        "delivered per run",
        results
            .iter()
            .map(|r| {
                let runs: Vec<String> = r.runs.iter().map(|x| x.delivered.to_string()).collect();
                format!("{} of {}", runs.join(", "), r.n)
            })
            .collect(),
    );
    row(
        "complete runs",
        results
            .iter()
            .map(|r| {
                let done = r.runs.iter().filter(|x| x.elapsed.is_some()).count();
                let skipped = settings.runs - r.runs.len();
                if skipped > 0 {
                    format!("{done} of {} ({skipped} skipped)", r.runs.len())
                } else {
                    format!("{done} of {}", r.runs.len())
                }
            })
            .collect(),
    );
    row(
        "fan-out time p50 (ms)",
        summaries.iter().map(|s| fmt_ms(s.p50, timeout)).collect(),
    );
    row(
        "fan-out time p99 (ms)",
        summaries.iter().map(|s| fmt_ms(s.p99, timeout)).collect(),
    );
    row(
        "fan-out rate at p50 (msgs/s)",
        summaries
            .iter()
            .map(|s| {
                let bound = if s.rate_is_bound { "< " } else { "" };
                fmt_opt(s.rate, |v| format!("{bound}{v:.0}"))
            })
            .collect(),
    );
    row(
        "sprig rate / mosquitto rate",
        results
            .iter()
            .zip(&summaries)
            .map(|(r, s)| {
                if r.broker != "sprig" {
                    return String::new();
                }
                let other = results
                    .iter()
                    .zip(&summaries)
                    .find(|(o, _)| o.broker == "mosquitto" && o.n == r.n)
                    .and_then(|(_, os)| (!os.rate_is_bound).then_some(os.rate).flatten());
                let bound = if s.rate_is_bound { "< " } else { "" };
                match (s.rate, other) {
                    (Some(a), Some(b)) => format!("{bound}{:.3}×", a / b),
                    _ => "—".into(),
                }
            })
            .collect(),
    );
    row(
        "rate / the floor's rate",
        results
            .iter()
            .zip(&summaries)
            .map(|(r, s)| {
                let floor = results
                    .iter()
                    .zip(&summaries)
                    .find(|(o, _)| o.broker == "floor" && o.n == r.n)
                    .and_then(|(_, fs)| (!fs.rate_is_bound).then_some(fs.rate).flatten());
                match (s.rate, floor, r.broker) {
                    (_, _, "floor") => String::new(),
                    (Some(a), Some(b), _) => format!("{:.0} %", 100.0 * a / b),
                    _ => "—".into(),
                }
            })
            .collect(),
    );
    row(
        "CPU while timed, per run: broker / devices (ms, p50)",
        results
            .iter()
            .map(|r| {
                let median = |pick: fn(&(Duration, Duration)) -> Duration| {
                    let mut v: Vec<f64> = r
                        .runs
                        .iter()
                        .filter_map(|x| x.cpu.as_ref().map(|c| ms(pick(c))))
                        .collect();
                    v.sort_by(|a, b| a.total_cmp(b));
                    percentile(&v, 0.5)
                };
                match (median(|c| c.0), median(|c| c.1)) {
                    (Some(b), Some(d)) => format!("{b:.1} / {d:.1}"),
                    _ => "—".into(),
                }
            })
            .collect(),
    );
    row(
        "CreateJob accepted after (ms, p50)",
        results
            .iter()
            .map(|r| {
                let mut v: Vec<f64> = r.runs.iter().filter_map(|x| x.request.map(ms)).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                if r.broker == "sprig" {
                    fmt_opt(percentile(&v, 0.5), |x| format!("{x:.1}"))
                } else {
                    "n/a".into()
                }
            })
            .collect(),
    );
    row(
        "payload bytes, QoS delivered",
        results
            .iter()
            .map(|r| match r.payload {
                Some((len, qos)) => format!(
                    "{len}, {qos}{}",
                    if r.payload_measured {
                        ""
                    } else {
                        " (estimated)"
                    }
                ),
                None => "—".into(),
            })
            .collect(),
    );
    row(
        "RSS idle, no clients (MiB)",
        results.iter().map(|r| mib(r.rss_idle_kb)).collect(),
    );
    row(
        "RSS with N idle devices (MiB)",
        results.iter().map(|r| mib(r.rss_connected_kb)).collect(),
    );
    row(
        "per idle device (KiB)",
        results
            .iter()
            .map(|r| {
                format!(
                    "{:.1}",
                    (r.rss_connected_kb as f64 - r.rss_idle_kb as f64) / r.n.max(1) as f64
                )
            })
            .collect(),
    );
    row(
        &format!(
            "RSS after connect/disconnect cycle 1 → {} (MiB)",
            settings.cycles
        ),
        results
            .iter()
            .map(
                |r| match (r.rss_cycles_kb.first(), r.rss_cycles_kb.last()) {
                    (Some(&a), Some(&b)) => format!("{} → {}", mib(a), mib(b)),
                    _ => "—".into(),
                },
            )
            .collect(),
    );
    row(
        "RSS growth, cycle 1 → last (KiB)",
        results
            .iter()
            .map(
                |r| match (r.rss_cycles_kb.first(), r.rss_cycles_kb.last()) {
                    (Some(&a), Some(&b)) => format!("{:+}", b as i64 - a as i64),
                    _ => "—".into(),
                },
            )
            .collect(),
    );
    println!("{out}");
    for r in results {
        let cycles: Vec<String> = r.rss_cycles_kb.iter().map(|&k| mib(k)).collect();
        println!(
            "{} N={}: RSS after each cycle (MiB): {}",
            r.broker,
            r.n,
            cycles.join(", ")
        );
        for (i, run) in r.runs.iter().enumerate() {
            if let Some(e) = &run.error {
                println!("{} N={} run {}: {e}", r.broker, r.n, i + 1);
            }
            if run.stray > 0 {
                println!(
                    "{} N={} run {}: {} messages were not a first delivery of that run",
                    r.broker,
                    r.n,
                    i + 1,
                    run.stray
                );
            }
        }
        if let Some(note) = &r.note {
            println!("{} N={}: {note}", r.broker, r.n);
        }
        if !r.connect_failures.is_empty() {
            println!(
                "{} N={}: connection failures: {:?}",
                r.broker, r.n, r.connect_failures
            );
        }
    }
    let _ = std::io::stdout().flush();
}
