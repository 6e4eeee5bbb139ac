//! Hostile clients: what one attacker costs the broker and the operator beside it, sprig next to Debian's
//! mosquitto, on this machine, loopback only, one broker at a time, each on its defaults (sprig:
//! `config/gateway.toml` with its own port and data dir; mosquitto: its built-in defaults with a loopback
//! listener and no persistence).
//!
//! Each attack gets a fresh broker. Before it, a few probes (below) warm it up, then VmRSS is read
//! ("before"). While the attack lasts (at least `SPRIG_HOSTILE_WINDOW_S`; its traffic is cut off after
//! 30 s, 1b's sessions after 120 s) the probe runs again and again, one at a time, starting at most every
//! 100 ms. When the attack is over every attacking socket is closed; VmRSS is read `SPRIG_HOSTILE_SETTLE_S`
//! later ("settled"). The peak is the larger of
//! VmHWM (restarted through `/proc/PID/clear_refs` when the attack starts) and VmRSS sampled every 10 ms,
//! from the attack's start to the settled reading.
//!
//! The probe is what an operator does meanwhile, on a fresh connection each time: for sprig the real CLI,
//! `sprig list-jobs --config …` (a new process, a login with the local operator's password, which sprig
//! checks with argon2, one request and its reply); for mosquitto a raw MQTT 3.1.1 client in this process
//! (connect, subscribe to its own topic, publish to it, receive it, disconnect).
//!
//! The attacks (sprig's and mosquitto's sides where they differ):
//! - 1a filters: one client subscribes to `SPRIG_HOSTILE_FILTERS` distinct filters, 100 per SUBSCRIBE, all
//!   sent at once; the SUBACK codes are counted (sprig: `$aws/things/greedy-1/f/{i}` as an anonymous
//!   loopback device, refused beyond `max_subscriptions_per_connection`; mosquitto: `a/{i}`).
//! - 1b sessions: then, on the same broker, `SPRIG_HOSTILE_SESSIONS` short sessions with fresh client ids,
//!   4 at a time from 127.0.0.3 (sprig: what one CLI call does: the local operator's login, its two reply
//!   filters, one ListJobs and its reply; mosquitto: the probe's round trip).
//! - 2 slow readers: `SPRIG_HOSTILE_SLOW_READERS` devices, each subscribed to its own topic with a 4 KiB
//!   receive buffer, publish 1 MiB QoS 0 messages to that topic as fast as the broker takes them and never
//!   read, each at most `SPRIG_HOSTILE_SLOW_MIB` MiB (sprig: a topic rule grants `dt/${thing}/#`, and
//!   `write_stall_timeout_ms` is lowered to `SPRIG_HOSTILE_WRITE_STALL_MS` so that the disconnection falls
//!   within the attack; it slows each publisher to `max_publish_bytes_per_second`).
//! - 3 login flood: `SPRIG_HOSTILE_FLOOD` CONNECTs at once from 127.0.0.2 with a wrong password for the
//!   operator's username (sprig: the local operator's; mosquitto: a `password_file` made with
//!   `mosquitto_passwd` and `allow_anonymous false` for this run, its probe logging in with the right one).
//! - 4 protocol violations (sprig only): `SPRIG_HOSTILE_VIOLATIONS` connections, 50 at a time, each sending
//!   a packet a client must never send (CONNACK and UNSUBACK on MQTT 5, SUBACK, PINGRESP, the reserved
//!   type 15 and PINGREQ with reserved flags on 3.1.1, as `tests/tests/hostile.rs`) and waiting to be closed.
//! - 5 large CreateJob (sprig only): one operator sends one CreateJob with `SPRIG_HOSTILE_TARGETS` targets.
//!
//! Printed per attack and broker: RSS before, peak and settled; the peak's growth beyond what the probe
//! alone raises it by (its baseline row: on sprig, the 19 MiB of one argon2 check) per attacking connection
//! open at once, and what stayed per attacking connection in all; the probe's p50 and p99; what happened;
//! and the targets of issue 11: a connection raises RSS by at most 16 MiB, the probe's p99 stays under
//! 200 ms, RSS settles within 10 % of before (and 1a: refused at the cap, not absorbed). The first rows are
//! the probe on an idle broker, where the per-connection growth is the probe's own.
//!
//! Run it with `bash tests/bench/hostile.sh` (installs mosquitto if needed, builds sprig's release binary,
//! runs `cargo bench -p sprig-tests --bench hostile`). Environment: `SPRIG_HOSTILE_ATTACKS` (a subset of
//! `filters,slow,flood,violations,createjob`, the default), `SPRIG_HOSTILE_FILTERS=100000`,
//! `SPRIG_HOSTILE_SESSIONS=1000`, `SPRIG_HOSTILE_SLOW_READERS=4`, `SPRIG_HOSTILE_SLOW_MIB=16`,
//! `SPRIG_HOSTILE_WRITE_STALL_MS=10000`, `SPRIG_HOSTILE_FLOOD=600`, `SPRIG_HOSTILE_VIOLATIONS=3000`,
//! `SPRIG_HOSTILE_TARGETS=50000`, `SPRIG_HOSTILE_WINDOW_S=20`, `SPRIG_HOSTILE_SETTLE_S=10`,
//! `SPRIG_HOSTILE_BASELINE_S=10`, `SPRIG_HOSTILE_DEADLINE_S=1200`, `SPRIG_HOSTILE_LOGS=DIR` (keep the
//! brokers' logs there), `SPRIG_BIN` (a prebuilt sprig instead of `cargo build --release`), `MOSQUITTO`
//! (path of the mosquitto binary; a path that is no file: sprig only).

use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sprig_tests::bench::{
    find_mosquitto, find_program, mib, peak_rss_kb, percentile, raise_nofile, reset_peak_rss,
    rss_kb, spawn_broker, sprig_release_bin,
};
use sprig_tests::raw::{self, read_packet_async as read_packet};
use sprig_tests::{config_for, create_job, free_port, with_setting, Operator, DEFAULT_CONFIG};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// A broker must accept connections within this after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Probes run before each measurement, so the probe's own first-time costs are in "before".
const WARMUP_PROBES: usize = 5;
/// The probe starts at most this often (an operator's pace; one at a time, so a slow probe delays the next).
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Quiet time between the warm-up and the "before" reading.
const BEFORE_SETTLE: Duration = Duration::from_secs(2);
/// One probe or one attacking session gives up after this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// An attack's traffic is cut off after this, however far it got.
const ATTACK_LIMIT: Duration = Duration::from_secs(30);
/// 1b's sessions are cut off after this: each is a password login, which sprig checks with argon2, a few
/// at a time, so on two busy cores 1,000 of them take longer than an attack.
const SESSIONS_LIMIT: Duration = Duration::from_secs(120);
/// VmRSS sampling period while an attack runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Filters per SUBSCRIBE in attack 1a.
const FILTERS_PER_SUBSCRIBE: usize = 100;
/// Sessions at once in attack 1b.
const SESSIONS_AT_ONCE: usize = 4;
/// Violating connections at once in attack 4 (below both brokers' listen backlogs).
const VIOLATIONS_AT_ONCE: usize = 50;
/// A violating connection must be closed within this.
const VIOLATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the login flood comes from, and where 1b's sessions come from: not the probe's 127.0.0.1.
const FLOOD_FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const SESSIONS_FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// mosquitto's operator account in the login-flood run.
const MOSQUITTO_OPERATOR: (&str, &str) = ("operator", "operator-secret");

/// Issue 11's targets.
const MOST_PER_CONNECTION_KB: f64 = 16.0 * 1024.0;
const MOST_P99_MS: f64 = 200.0;
const MOST_SETTLED_GROWTH: f64 = 0.10;

/// PIDs of the brokers started, killed by the deadline watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Client ids of probes and sessions are unique over the whole run.
static NEXT_CLIENT: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let settings = Settings::from_env();
    let deadline = settings.deadline;
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("hostile: deadline of {deadline:?} reached, stopping");
        for pid in CHILDREN.lock().unwrap().iter() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::process::exit(2);
    });
    let nofile = raise_nofile(settings.flood as u64 + 1024);
    let bins = Bins {
        sprig: sprig_release_bin(),
        mosquitto: find_mosquitto(),
        mosquitto_passwd: find_program("mosquitto_passwd"),
    };
    eprintln!(
        "hostile: RLIMIT_NOFILE = {nofile}, sprig {}, mosquitto {}",
        bins.sprig.display(),
        bins.mosquitto
            .as_ref()
            .map_or("not found: sprig only".into(), |p| p.display().to_string())
    );
    let mut kinds = vec![Kind::Sprig];
    if bins.mosquitto.is_some() {
        kinds.push(Kind::Mosquitto);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut rows = Vec::new();
    runtime.block_on(async {
        for &kind in &kinds {
            let broker = Broker::start(kind, &bins, "baseline", Variant::Plain, &settings);
            rows.push(
                measure(
                    &broker,
                    &settings,
                    "0 baseline: no attack",
                    settings.baseline,
                    |end| async move {
                        tokio::time::sleep_until(end.into()).await;
                        Outcome::probe_alone()
                    },
                )
                .await,
            );
        }
        for &attack in &settings.attacks {
            for &kind in &kinds {
                if kind == Kind::Mosquitto
                    && matches!(attack, Attack::Violations | Attack::CreateJob)
                {
                    continue;
                }
                if kind == Kind::Mosquitto
                    && attack == Attack::Flood
                    && bins.mosquitto_passwd.is_none()
                {
                    eprintln!(
                        "hostile: mosquitto_passwd not found: no login flood against mosquitto"
                    );
                    continue;
                }
                rows.extend(run_attack(attack, kind, &bins, &settings).await);
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    print_table(&rows, &settings, started.elapsed());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    Filters,
    Slow,
    Flood,
    Violations,
    CreateJob,
}

struct Settings {
    attacks: Vec<Attack>,
    filters: usize,
    sessions: usize,
    slow_readers: usize,
    slow_mib: usize,
    write_stall_ms: u64,
    flood: usize,
    violations: usize,
    targets: usize,
    window: Duration,
    settle: Duration,
    baseline: Duration,
    deadline: Duration,
    /// sprig's `max_subscriptions_per_connection`, as `config/gateway.toml` sets it.
    subscription_cap: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let attacks = std::env::var("SPRIG_HOSTILE_ATTACKS")
            .unwrap_or_else(|_| "filters,slow,flood,violations,createjob".into())
            .split(',')
            .map(|a| match a.trim() {
                "filters" => Attack::Filters,
                "slow" => Attack::Slow,
                "flood" => Attack::Flood,
                "violations" => Attack::Violations,
                "createjob" => Attack::CreateJob,
                other => panic!(
                    "SPRIG_HOSTILE_ATTACKS: unknown attack `{other}` (filters, slow, flood, violations, \
                     createjob)"
                ),
            })
            .collect();
        let subscription_cap = DEFAULT_CONFIG
            .lines()
            .find_map(|l| l.strip_prefix("max_subscriptions_per_connection = "))
            .and_then(|v| v.trim().parse().ok())
            .expect("config/gateway.toml sets max_subscriptions_per_connection");
        Settings {
            attacks,
            filters: env_num("SPRIG_HOSTILE_FILTERS", 100_000),
            sessions: env_num("SPRIG_HOSTILE_SESSIONS", 1000),
            slow_readers: env_num("SPRIG_HOSTILE_SLOW_READERS", 4),
            slow_mib: env_num("SPRIG_HOSTILE_SLOW_MIB", 16),
            write_stall_ms: env_num("SPRIG_HOSTILE_WRITE_STALL_MS", 10_000),
            flood: env_num("SPRIG_HOSTILE_FLOOD", 600),
            violations: env_num("SPRIG_HOSTILE_VIOLATIONS", 3000),
            targets: env_num("SPRIG_HOSTILE_TARGETS", 50_000),
            window: Duration::from_secs(env_num("SPRIG_HOSTILE_WINDOW_S", 20)),
            settle: Duration::from_secs(env_num("SPRIG_HOSTILE_SETTLE_S", 10)),
            baseline: Duration::from_secs(env_num("SPRIG_HOSTILE_BASELINE_S", 10)),
            deadline: Duration::from_secs(env_num("SPRIG_HOSTILE_DEADLINE_S", 1200)),
            subscription_cap,
        }
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: `{v}` is not a number")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Brokers

struct Bins {
    sprig: PathBuf,
    mosquitto: Option<PathBuf>,
    mosquitto_passwd: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sprig,
    Mosquitto,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sprig => "sprig",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

/// What differs from the defaults in one run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    /// sprig: the topic rule the slow readers need and a shorter `write_stall_timeout_ms`.
    SlowReaders,
    /// sprig: no control request rate for its operators (1b's sessions are one operator's, as fast as
    /// they come: the limit of 50 a second would refuse most of their requests, and the probe's, which
    /// is not what 1b measures).
    Sessions,
    /// mosquitto: a password file with the operator and no anonymous clients.
    Passwords,
}

/// A broker process on a free loopback port, killed when dropped.
struct Broker {
    kind: Kind,
    label: String,
    child: Child,
    addr: SocketAddr,
    /// sprig's config file (the CLI reads its listener and data dir from it).
    config_path: PathBuf,
    log_path: PathBuf,
    /// The operator's username and password: sprig's local operator; mosquitto's in a password run.
    credentials: Option<(String, String)>,
    sprig: PathBuf,
    dir: tempfile::TempDir,
}

impl Broker {
    fn start(
        kind: Kind,
        bins: &Bins,
        attack: &str,
        variant: Variant,
        settings: &Settings,
    ) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = dir.path().join("broker.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut credentials = None;
        let (mut command, config_path) = match kind {
            Kind::Sprig => {
                let data_dir = dir.path().join("data");
                let mut config = config_for(&addr.to_string(), &data_dir);
                if variant == Variant::Sessions {
                    config = with_setting(
                        &config,
                        "requests_per_second = 50",
                        "requests_per_second = 100000",
                    );
                }
                if variant == Variant::SlowReaders {
                    config = with_setting(
                        &config,
                        "write_stall_timeout_ms = 30000",
                        &format!("write_stall_timeout_ms = {}", settings.write_stall_ms),
                    ) + "\n[[auth.topic_rules]]\npublish = [\"dt/${thing}/#\"]\n\
                         subscribe = [\"dt/${thing}/#\"]\n";
                }
                let config_path = dir.path().join("gateway.toml");
                std::fs::write(&config_path, config).unwrap();
                let mut command = Command::new(&bins.sprig);
                command
                    .args(["run", "--config"])
                    .arg(&config_path)
                    .env("RUST_LOG", "info,rumqttd=warn");
                (command, config_path)
            }
            Kind::Mosquitto => {
                let mut config = format!("listener {port} 127.0.0.1\npersistence false\n");
                if variant == Variant::Passwords {
                    let passwords = dir.path().join("passwords");
                    let passwd = bins.mosquitto_passwd.as_ref().expect("mosquitto_passwd");
                    let (user, password) = MOSQUITTO_OPERATOR;
                    let status = Command::new(passwd)
                        .args(["-c", "-b"])
                        .arg(&passwords)
                        .args([user, password])
                        .status()
                        .expect("run mosquitto_passwd");
                    assert!(status.success(), "mosquitto_passwd failed");
                    config += &format!(
                        "allow_anonymous false\npassword_file {}\n",
                        passwords.display()
                    );
                    credentials = Some((user.to_owned(), password.to_owned()));
                } else {
                    config += "allow_anonymous true\n";
                }
                let config_path = dir.path().join("mosquitto.conf");
                std::fs::write(&config_path, config).unwrap();
                let mut command = Command::new(bins.mosquitto.as_ref().expect("mosquitto"));
                command.arg("-c").arg(&config_path);
                (command, config_path)
            }
        };
        let child = spawn_broker(&mut command, dir.path(), log, kind.name());
        CHILDREN.lock().unwrap().push(child.id());
        let mut broker = Broker {
            kind,
            label: format!("{}-{attack}", kind.name()),
            child,
            addr,
            config_path,
            log_path,
            credentials,
            sprig: bins.sprig.clone(),
            dir,
        };
        broker.wait_until_ready();
        if kind == Kind::Sprig {
            let text =
                std::fs::read_to_string(broker.dir.path().join("data").join("local-operator.json"))
                    .unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            broker.credentials = Some((
                v["username"].as_str().unwrap().to_owned(),
                v["password"].as_str().unwrap().to_owned(),
            ));
        }
        broker
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before it was ready; log:\n{}",
                    self.label,
                    self.log()
                );
            }
            let accepts =
                StdTcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok();
            if accepts && (self.kind == Kind::Mosquitto || self.log().contains("ready")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} was not ready within {START_TIMEOUT:?}; log:\n{}",
                self.label,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    fn probe(&self) -> Probe {
        match self.kind {
            Kind::Sprig => Probe::Cli {
                bin: self.sprig.clone(),
                config: self.config_path.clone(),
            },
            Kind::Mosquitto => Probe::RoundTrip {
                addr: self.addr,
                credentials: self.credentials.clone(),
            },
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        sprig_tests::bench::stop_broker(
            &mut self.child,
            &self.log_path,
            &self.label,
            "SPRIG_HOSTILE_LOGS",
        );
        CHILDREN.lock().unwrap().retain(|&p| p != self.child.id());
    }
}

// ---------------------------------------------------------------------------------------------------------
// The probe, and the memory watch

/// An operator's round trip on a fresh connection.
#[derive(Clone)]
enum Probe {
    /// `sprig list-jobs --config CONFIG`: a new process each time.
    Cli { bin: PathBuf, config: PathBuf },
    /// Connect, subscribe to an own topic, publish there, receive it, disconnect.
    RoundTrip {
        addr: SocketAddr,
        credentials: Option<(String, String)>,
    },
}

impl Probe {
    /// One round trip: its wall time in ms, or why it failed.
    fn once(&self, runtime: &tokio::runtime::Runtime) -> Result<f64, String> {
        let started = Instant::now();
        match self {
            Probe::Cli { bin, config } => {
                let out = Command::new(bin)
                    .args(["list-jobs", "--config"])
                    .arg(config)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("run sprig: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "sprig list-jobs: {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
            Probe::RoundTrip { addr, credentials } => {
                let exchange = Exchange::echo(&client_id("probe"), credentials.clone());
                runtime
                    .block_on(exchange.run(*addr, None))
                    .map_err(|e| format!("probe: {e}"))?;
            }
        }
        Ok(ms(started.elapsed()))
    }
}

fn client_id(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT_CLIENT.fetch_add(1, Ordering::Relaxed))
}

fn probe_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The probe, over and over on a thread of its own, until stopped.
struct ProbeLoop {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Result<f64, String>>>,
}

impl ProbeLoop {
    fn start(probe: Probe) -> ProbeLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = probe_runtime();
            let mut samples = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                let next = Instant::now() + PROBE_EVERY;
                samples.push(probe.once(&runtime));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            samples
        });
        ProbeLoop { stop, thread }
    }

    /// Stops after the probe under way; what every probe took.
    fn stop(self) -> Vec<Result<f64, String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("probe thread")
    }
}

/// The peak of a process's resident memory from now on: VmHWM restarted now, and VmRSS sampled.
struct RssWatch {
    pid: u32,
    hwm_restarted: bool,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let hwm_restarted = reset_peak_rss(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !stopped.load(Ordering::SeqCst) {
                most = most.max(rss_kb(pid));
                std::thread::sleep(SAMPLE_EVERY);
            }
            most
        });
        RssWatch {
            pid,
            hwm_restarted,
            stop,
            thread,
        }
    }

    /// The peak in KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let sampled = self.thread.join().expect("RSS sampler");
        if self.hwm_restarted {
            sampled.max(peak_rss_kb(self.pid))
        } else {
            sampled
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// One measurement

/// What an attack did, as the attacker saw it.
struct Outcome {
    /// Attacking connections open at once at most, and in all.
    at_once: usize,
    in_all: usize,
    what: String,
    /// 1a only: refused at the cap, not absorbed.
    capped: Option<bool>,
    /// The baseline: no attacker; the one connection at a time is the probe's.
    probe_alone: bool,
}

impl Outcome {
    /// The baseline: no attacker, the probe's own connection one at a time.
    fn probe_alone() -> Outcome {
        Outcome {
            at_once: 1,
            in_all: 0,
            what: format!(
                "no attack: the probe alone, every {} ms",
                PROBE_EVERY.as_millis()
            ),
            capped: None,
            probe_alone: true,
        }
    }
}

struct Row {
    attack: String,
    broker: &'static str,
    before_kb: u64,
    peak_kb: u64,
    settled_kb: u64,
    probes: Vec<Result<f64, String>>,
    outcome: Outcome,
    took: Duration,
}

impl Row {
    fn latencies(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.probes.iter().filter_map(|p| p.clone().ok()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    fn failures(&self) -> Vec<&String> {
        self.probes
            .iter()
            .filter_map(|p| p.as_ref().err())
            .collect()
    }
}

/// Warms the broker up, reads "before", runs `attack` (given when its window ends; it returns once every
/// attacking socket is closed) with the probe looping beside it, and reads "settled" after the settle time.
async fn measure<F, Fut>(
    broker: &Broker,
    settings: &Settings,
    attack: &str,
    window: Duration,
    run: F,
) -> Row
where
    F: FnOnce(Instant) -> Fut,
    Fut: Future<Output = Outcome>,
{
    eprintln!("hostile: {} — {attack}", broker.kind.name());
    let probe = broker.probe();
    let warm = probe.clone();
    tokio::task::spawn_blocking(move || {
        let runtime = probe_runtime();
        for _ in 0..WARMUP_PROBES {
            if let Err(e) = warm.once(&runtime) {
                eprintln!("hostile:   warm-up probe failed: {e}");
            }
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(BEFORE_SETTLE).await;
    let before_kb = rss_kb(broker.pid());
    let watch = RssWatch::start(broker.pid());
    let probes = ProbeLoop::start(probe);
    let started = Instant::now();
    let outcome = run(started + window).await;
    let left = Instant::now();
    let probes = tokio::task::spawn_blocking(move || probes.stop())
        .await
        .unwrap();
    tokio::time::sleep_until((left + settings.settle).into()).await;
    let settled_kb = rss_kb(broker.pid());
    let peak_kb = watch.stop();
    let row = Row {
        attack: attack.to_owned(),
        broker: broker.kind.name(),
        before_kb,
        peak_kb,
        settled_kb,
        probes,
        outcome,
        took: left - started,
    };
    let lat = row.latencies();
    eprintln!(
        "hostile:   {} in {:.1} s; RSS {} → peak {} → settled {} KiB; probe p50 {} p99 {} ms ({} ok, {} failed)",
        row.outcome.what,
        row.took.as_secs_f64(),
        before_kb,
        peak_kb,
        settled_kb,
        fmt_ms(percentile(&lat, 0.5)),
        fmt_ms(percentile(&lat, 0.99)),
        lat.len(),
        row.failures().len()
    );
    if let Some(first) = row.failures().first() {
        eprintln!("hostile:   first probe failure: {first}");
    }
    row
}

async fn run_attack(attack: Attack, kind: Kind, bins: &Bins, settings: &Settings) -> Vec<Row> {
    let window = settings.window;
    match attack {
        Attack::Filters => {
            let broker = Broker::start(kind, bins, "filters", Variant::Sessions, settings);
            let filters = measure(
                &broker,
                settings,
                &format!(
                    "1a filters: {} from one client",
                    thousands(settings.filters)
                ),
                window,
                |end| filters_attack(&broker, settings, end),
            )
            .await;
            let sessions = measure(
                &broker,
                settings,
                &format!(
                    "1b sessions: {} with fresh client ids, after 1a",
                    thousands(settings.sessions)
                ),
                window,
                |end| sessions_attack(&broker, settings.sessions, end),
            )
            .await;
            vec![filters, sessions]
        }
        Attack::Slow => {
            let broker = Broker::start(kind, bins, "slow", Variant::SlowReaders, settings);
            let name = format!(
                "2 slow readers: {} publishing 1 MiB messages to themselves",
                settings.slow_readers
            );
            vec![
                measure(&broker, settings, &name, window, |end| {
                    slow_attack(&broker, settings, end)
                })
                .await,
            ]
        }
        Attack::Flood => {
            let variant = match kind {
                Kind::Sprig => Variant::Plain,
                Kind::Mosquitto => Variant::Passwords,
            };
            let broker = Broker::start(kind, bins, "flood", variant, settings);
            let name = format!(
                "3 login flood: {} wrong passwords at once",
                thousands(settings.flood)
            );
            vec![
                measure(&broker, settings, &name, window, |end| {
                    flood_attack(&broker, settings.flood, end)
                })
                .await,
            ]
        }
        Attack::Violations => {
            let broker = Broker::start(kind, bins, "violations", Variant::Plain, settings);
            let name = format!(
                "4 protocol violations: {} connections",
                thousands(settings.violations)
            );
            vec![
                measure(&broker, settings, &name, window, |end| {
                    violations_attack(&broker, settings.violations, end)
                })
                .await,
            ]
        }
        Attack::CreateJob => {
            let broker = Broker::start(kind, bins, "createjob", Variant::Plain, settings);
            let name = format!("5 large CreateJob: {} targets", thousands(settings.targets));
            vec![
                measure(&broker, settings, &name, window, |end| {
                    createjob_attack(&broker, settings.targets, end)
                })
                .await,
            ]
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The attacks

/// 1a: one client, `settings.filters` distinct filters, 100 per SUBSCRIBE, all sent without waiting.
async fn filters_attack(broker: &Broker, settings: &Settings, end: Instant) -> Outcome {
    let n = settings.filters;
    let thing = "greedy-1";
    let kind = broker.kind;
    let filter = move |i: usize| match kind {
        Kind::Sprig => format!("$aws/things/{thing}/f/{i}"),
        Kind::Mosquitto => format!("a/{i}"),
    };
    let started = Instant::now();
    let failed = |what: String| Outcome {
        at_once: 1,
        in_all: 1,
        what,
        capped: Some(false),
        probe_alone: false,
    };
    let (mut reader, mut writer) = match open_session(broker.addr, None, None, thing, None).await {
        Ok(halves) => halves,
        Err(e) => return failed(e),
    };
    let packets = n.div_ceil(FILTERS_PER_SUBSCRIBE);
    let counter = tokio::spawn(async move {
        let (mut granted, mut refused, mut acks) = (0usize, 0usize, 0usize);
        while acks < packets {
            match read_packet(&mut reader).await {
                Ok((0x90, body)) => {
                    acks += 1;
                    for &code in body.get(2..).unwrap_or_default() {
                        if code < 0x80 {
                            granted += 1;
                        } else {
                            refused += 1;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (granted, refused, acks, started.elapsed())
    });
    for k in 0..packets {
        let filters: Vec<String> = (k * FILTERS_PER_SUBSCRIBE
            ..((k + 1) * FILTERS_PER_SUBSCRIBE).min(n))
            .map(filter)
            .collect();
        let pkid = (k % 65535) as u16 + 1;
        if writer
            .write_all(&raw::subscribe(pkid, &filters, 0))
            .await
            .is_err()
        {
            break;
        }
    }
    let limit = started + ATTACK_LIMIT;
    let counted = tokio::time::timeout_at(limit.into(), counter).await;
    tokio::time::sleep_until(end.into()).await;
    let _ = writer.write_all(&[0xE0, 0x00]).await;
    let _ = writer.shutdown().await;
    drop(writer);
    let (granted, refused, acks, took) = match counted {
        Ok(Ok(counts)) => counts,
        Ok(Err(e)) => return failed(format!("SUBACK reader: {e}")),
        Err(_) => return failed(format!("SUBACKs not all in within {ATTACK_LIMIT:?}")),
    };
    Outcome {
        at_once: 1,
        in_all: 1,
        what: format!(
            "granted {}, refused {} of {} ({acks} of {packets} SUBACKs in {:.2} s)",
            thousands(granted),
            thousands(refused),
            thousands(n),
            took.as_secs_f64()
        ),
        capped: Some(granted <= settings.subscription_cap && granted + refused == n),
        probe_alone: false,
    }
}

/// 1b: `n` short sessions with fresh client ids, [`SESSIONS_AT_ONCE`] at a time.
async fn sessions_attack(broker: &Broker, n: usize, end: Instant) -> Outcome {
    let started = Instant::now();
    let limit = started + SESSIONS_LIMIT;
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..SESSIONS_AT_ONCE {
        let (next, failures, ok) = (next.clone(), failures.clone(), ok.clone());
        let (kind, addr, credentials) = (broker.kind, broker.addr, broker.credentials.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n && Instant::now() < limit {
                let id = client_id("session");
                let exchange = match kind {
                    Kind::Sprig => Exchange::list_jobs(&id, credentials.clone()),
                    Kind::Mosquitto => Exchange::echo(&id, None),
                };
                match exchange.run(addr, Some(SESSIONS_FROM)).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let took = started.elapsed();
    tokio::time::sleep_until(end.into()).await;
    let ok = ok.load(Ordering::SeqCst);
    let failures = failures.lock().unwrap();
    let mut what = format!(
        "{} of {} sessions done in {:.1} s",
        thousands(ok),
        thousands(n),
        took.as_secs_f64()
    );
    if let Some(first) = failures.first() {
        what += &format!("; {} failed (first: {first})", failures.len());
    }
    Outcome {
        at_once: SESSIONS_AT_ONCE,
        in_all: ok + failures.len(),
        what,
        capped: None,
        probe_alone: false,
    }
}

/// What one slow reader saw.
struct SlowReader {
    sent_mib: usize,
    /// When a write failed because the broker had closed the connection.
    closed_after: Option<Duration>,
    /// Closed by the broker by the end of the attack.
    closed: bool,
    error: Option<String>,
}

/// 2: devices that publish 1 MiB messages to their own topic and never read.
async fn slow_attack(broker: &Broker, settings: &Settings, end: Instant) -> Outcome {
    let started = Instant::now();
    let budget = settings.slow_mib;
    let mut readers = JoinSet::new();
    for i in 0..settings.slow_readers {
        let addr = broker.addr;
        readers.spawn(async move {
            let thing = format!("slow-{i}");
            let topic = format!("dt/{thing}/bulk");
            let filter = format!("dt/{thing}/#");
            let mut result = SlowReader {
                sent_mib: 0,
                closed_after: None,
                closed: false,
                error: None,
            };
            let (mut reader, mut writer) =
                match open_session(addr, None, Some(4096), &thing, None).await {
                    Ok(halves) => halves,
                    Err(e) => {
                        result.error = Some(e);
                        return result;
                    }
                };
            if let Err(e) = subscribe_to(&mut reader, &mut writer, &[filter]).await {
                result.error = Some(e);
                return result;
            }
            let publish = raw::publish(&topic, 0, 0, &vec![b'x'; 1 << 20]);
            while result.sent_mib < budget && Instant::now() < end {
                match tokio::time::timeout_at(end.into(), writer.write_all(&publish)).await {
                    Ok(Ok(())) => result.sent_mib += 1,
                    Ok(Err(_)) => {
                        result.closed_after = Some(started.elapsed());
                        break;
                    }
                    Err(_) => break,
                }
            }
            tokio::time::sleep_until(end.into()).await;
            result.closed = result.closed_after.is_some() || closed_by_peer(&mut reader).await;
            result
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = readers.join_next().await {
        results.push(joined.expect("slow reader task"));
    }
    let sent: Vec<usize> = results.iter().map(|r| r.sent_mib).collect();
    let closed = results.iter().filter(|r| r.closed).count();
    let mut after: Vec<f64> = results
        .iter()
        .filter_map(|r| r.closed_after.map(|d| d.as_secs_f64()))
        .collect();
    after.sort_by(|a, b| a.total_cmp(b));
    let mut what = format!(
        "wrote {}–{} MiB each into its socket{}; {closed} of {} disconnected",
        sent.iter().min().unwrap_or(&0),
        sent.iter().max().unwrap_or(&0),
        if sent.iter().all(|&s| s >= budget) {
            " (all the bench allows)"
        } else {
            ""
        },
        results.len()
    );
    if let (Some(first), Some(last)) = (after.first(), after.last()) {
        what += &format!(" (writes failing after {first:.1}–{last:.1} s)");
    }
    if let Some(e) = results.iter().find_map(|r| r.error.as_ref()) {
        what += &format!("; error: {e}");
    }
    Outcome {
        at_once: settings.slow_readers,
        in_all: settings.slow_readers,
        what,
        capped: None,
        probe_alone: false,
    }
}

/// Whether the peer has closed the connection: reads (and discards) what waits, for at most 2 s.
async fn closed_by_peer(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_millis(200), reader.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) if Instant::now() < deadline => {}
            Ok(Ok(_)) | Err(_) => return false,
        }
    }
}

/// 3: `n` CONNECTs at once from [`FLOOD_FROM`] with a wrong password for the operator's username; each
/// waits for its CONNACK until the attack ends.
async fn flood_attack(broker: &Broker, n: usize, end: Instant) -> Outcome {
    let (username, _) = broker.credentials().expect("the operator's username");
    let started = Instant::now();
    let mut attempts = JoinSet::new();
    for i in 0..n {
        let addr = broker.addr;
        let connect = raw::connect(&format!("flood-{i}"), Some((username, "wrong-password")));
        attempts.spawn(async move {
            let attempt = async {
                let mut stream = connect_from(addr, Some(FLOOD_FROM), None)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                stream
                    .write_all(&connect)
                    .await
                    .map_err(|e| format!("CONNECT: {e}"))?;
                match read_packet(&mut stream).await {
                    Ok((0x20, body)) => Ok(Some(body.get(1).copied().unwrap_or(0xff))),
                    Ok(_) | Err(_) => Ok(None),
                }
            };
            match tokio::time::timeout_at(end.into(), attempt).await {
                Ok(Ok(code)) => FloodAttempt::Answered(code, started.elapsed()),
                Ok(Err(e)) => FloodAttempt::Failed(e),
                Err(_) => FloodAttempt::Waiting,
            }
        });
    }
    let (mut refused, mut accepted, mut closed, mut waiting) = (0, 0, 0, 0);
    let mut last = Duration::ZERO;
    let mut failures = Vec::new();
    while let Some(joined) = attempts.join_next().await {
        match joined.expect("flood task") {
            FloodAttempt::Answered(code, after) => {
                last = last.max(after);
                match code {
                    Some(0) => accepted += 1,
                    Some(_) => refused += 1,
                    None => closed += 1,
                }
            }
            FloodAttempt::Failed(e) => failures.push(e),
            FloodAttempt::Waiting => waiting += 1,
        }
    }
    tokio::time::sleep_until(end.into()).await;
    let mut what = format!(
        "{} refused (the last after {:.1} s)",
        thousands(refused),
        last.as_secs_f64()
    );
    if waiting > 0 {
        what += &format!(
            ", {} still waiting when the attacker left",
            thousands(waiting)
        );
    }
    if closed > 0 {
        what += &format!(", {closed} closed without CONNACK");
    }
    if accepted > 0 {
        what += &format!(", {accepted} ACCEPTED");
    }
    if let Some(first) = failures.first() {
        what += &format!(", {} failed (first: {first})", failures.len());
    }
    Outcome {
        at_once: n,
        in_all: n,
        what,
        capped: None,
        probe_alone: false,
    }
}

enum FloodAttempt {
    /// The CONNACK's return code (`None`: closed without one), and when.
    Answered(Option<u8>, Duration),
    Failed(String),
    Waiting,
}

/// The packets of `tests/tests/hostile.rs`: (name, protocol level of the CONNECT, the packet).
const VIOLATIONS: [(&str, u8, &[u8]); 6] = [
    ("bad-unsuback", 5, &[0xb0, 0x03, 0x00, 0x01, 0x00]),
    ("bad-connack", 5, &[0x20, 0x03, 0x00, 0x00, 0x00]),
    ("bad-suback", 4, &[0x90, 0x03, 0x00, 0x01, 0x00]),
    ("bad-pingresp", 4, &[0xd0, 0x00]),
    ("bad-reserved", 4, &[0xf0, 0x00]),
    ("bad-flags", 4, &[0xc1, 0x00]),
];

/// 4: `n` connections, [`VIOLATIONS_AT_ONCE`] at a time, each sending one of [`VIOLATIONS`].
async fn violations_attack(broker: &Broker, n: usize, end: Instant) -> Outcome {
    let started = Instant::now();
    let limit = started + ATTACK_LIMIT;
    let (mut closed, mut open, mut done) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    let all: Vec<usize> = (0..n).collect();
    for batch in all.chunks(VIOLATIONS_AT_ONCE) {
        if Instant::now() >= limit {
            break;
        }
        let mut connections = JoinSet::new();
        for &i in batch {
            connections.spawn(violation(broker.addr, i));
        }
        while let Some(joined) = connections.join_next().await {
            done += 1;
            match joined.expect("violation task") {
                Ok(true) => closed += 1,
                Ok(false) => open += 1,
                Err(e) => failures.push(e),
            }
        }
    }
    let took = started.elapsed();
    tokio::time::sleep_until(end.into()).await;
    let mut what = format!(
        "{} of {} closed by the broker ({:.1} s)",
        thousands(closed),
        thousands(done),
        took.as_secs_f64()
    );
    if open > 0 {
        what += &format!(", {open} still open after {VIOLATION_TIMEOUT:?}");
    }
    if let Some(first) = failures.first() {
        what += &format!(", {} failed (first: {first})", failures.len());
    }
    Outcome {
        at_once: VIOLATIONS_AT_ONCE,
        in_all: done,
        what,
        capped: None,
        probe_alone: false,
    }
}

/// One violating connection: accepted, sends its packet, and is it closed within [`VIOLATION_TIMEOUT`]?
async fn violation(addr: SocketAddr, i: usize) -> Result<bool, String> {
    let (name, level, packet) = VIOLATIONS[i % VIOLATIONS.len()];
    let client_id = format!("{name}-{i}");
    let mut stream = connect_from(addr, None, None)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(&connect_at(level, &client_id))
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    match read_packet(&mut stream).await {
        Ok((0x20, body)) if body.get(1) == Some(&0) => {}
        other => return Err(format!("{client_id}: not accepted: {other:?}")),
    }
    stream
        .write_all(packet)
        .await
        .map_err(|e| format!("{client_id}: write: {e}"))?;
    let mut sink = [0u8; 256];
    let closed = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    Ok(tokio::time::timeout(VIOLATION_TIMEOUT, closed)
        .await
        .is_ok())
}

/// A CONNECT (clean session, anonymous) at protocol `level` 4 (3.1.1) or 5.
fn connect_at(level: u8, client_id: &str) -> Vec<u8> {
    if level == 4 {
        return raw::connect(client_id, None);
    }
    let mut body = Vec::new();
    raw::put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 30, 0]); // level, clean start, keep-alive, no properties
    raw::put_str(&mut body, client_id.as_bytes());
    raw::packet(0x10, &body)
}

/// 5: one operator, one CreateJob with `targets` targets.
async fn createjob_attack(broker: &Broker, targets: usize, end: Instant) -> Outcome {
    let (username, password) = broker.credentials.clone().expect("local operator");
    let things: Vec<String> = (0..targets).map(|i| format!("t-{i:05}")).collect();
    let refs: Vec<&str> = things.iter().map(String::as_str).collect();
    let body = create_job("large-1", None, &refs);
    let size = serde_json::to_vec(&body).unwrap().len();
    let addr = broker.addr;
    // In a task: the harness's Operator panics on a lost connection or a 30 s silence.
    let request = tokio::spawn(async move {
        let mut operator = Operator::connect(addr, &username, &password).await?;
        let sent = Instant::now();
        let reply = operator.request("CreateJob", body).await;
        Ok::<_, String>((operator, sent.elapsed(), reply))
    });
    let answered = tokio::time::timeout(ATTACK_LIMIT, request).await;
    let what = match &answered {
        Ok(Ok(Ok((_, took, Ok(_))))) => format!(
            "body {} KiB, accepted after {:.2} s",
            size / 1024,
            took.as_secs_f64()
        ),
        Ok(Ok(Ok((_, _, Err((code, message)))))) => {
            format!("body {} KiB, rejected: {code}: {message}", size / 1024)
        }
        Ok(Ok(Err(e))) => format!("operator refused: {e}"),
        Ok(Err(e)) => format!("CreateJob failed: {e}"),
        Err(_) => format!("no reply within {ATTACK_LIMIT:?}"),
    };
    tokio::time::sleep_until(end.into()).await;
    drop(answered);
    Outcome {
        at_once: 1,
        in_all: 1,
        what,
        capped: None,
        probe_alone: false,
    }
}

// ---------------------------------------------------------------------------------------------------------
// A minimal MQTT 3.1.1 client

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = tokio::net::tcp::OwnedWriteHalf;

async fn connect_from(
    addr: SocketAddr,
    from: Option<IpAddr>,
    receive_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// CONNECT, and the CONNACK accepting it.
async fn open_session(
    addr: SocketAddr,
    from: Option<IpAddr>,
    receive_buffer: Option<u32>,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<(Reader, Writer), String> {
    let stream = connect_from(addr, from, receive_buffer)
        .await
        .map_err(|e| format!("{client_id}: connect: {e}"))?;
    let (read, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read);
    writer
        .write_all(&raw::connect(client_id, credentials))
        .await
        .map_err(|e| format!("{client_id}: CONNECT: {e}"))?;
    match read_packet(&mut reader).await {
        Ok((0x20, body)) if body.get(1) == Some(&0) => Ok((reader, writer)),
        Ok((header, body)) => Err(format!("{client_id}: refused: {header:#x} {body:?}")),
        Err(e) => Err(format!("{client_id}: CONNACK: {e}")),
    }
}

/// SUBSCRIBE at QoS 0, and a SUBACK granting every filter.
async fn subscribe_to(
    reader: &mut Reader,
    writer: &mut Writer,
    filters: &[String],
) -> Result<(), String> {
    writer
        .write_all(&raw::subscribe(1, filters, 0))
        .await
        .map_err(|e| format!("SUBSCRIBE: {e}"))?;
    loop {
        match read_packet(reader).await {
            Ok((0x90, body)) if body.iter().skip(2).all(|&c| c < 0x80) => return Ok(()),
            Ok((0x90, body)) => return Err(format!("SUBACK refused: {body:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("SUBACK: {e}")),
        }
    }
}

/// One short session: connect, subscribe, publish a request (QoS 1), wait for its answer, disconnect.
struct Exchange {
    client_id: String,
    credentials: Option<(String, String)>,
    filters: Vec<String>,
    topic: String,
    payload: Vec<u8>,
    /// The answer's topic; a message on any other subscribed topic is a failure.
    answer: String,
}

impl Exchange {
    /// The mosquitto probe: its own message back.
    fn echo(client_id: &str, credentials: Option<(String, String)>) -> Exchange {
        let topic = format!("probe/{client_id}");
        Exchange {
            client_id: client_id.to_owned(),
            credentials,
            filters: vec![topic.clone()],
            topic: topic.clone(),
            payload: b"ping".to_vec(),
            answer: topic,
        }
    }

    /// What `sprig list-jobs` does on the wire.
    fn list_jobs(client_id: &str, credentials: Option<(String, String)>) -> Exchange {
        let base = format!("$sprig/control/{client_id}");
        Exchange {
            client_id: client_id.to_owned(),
            credentials,
            filters: vec![format!("{base}/+/accepted"), format!("{base}/+/rejected")],
            topic: format!("{base}/ListJobs"),
            payload: br#"{"clientToken":"bench"}"#.to_vec(),
            answer: format!("{base}/ListJobs/accepted"),
        }
    }

    async fn run(&self, addr: SocketAddr, from: Option<IpAddr>) -> Result<(), String> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(addr, from))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {EXCHANGE_TIMEOUT:?}")))
    }

    async fn exchange(&self, addr: SocketAddr, from: Option<IpAddr>) -> Result<(), String> {
        let credentials = self
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        let (mut reader, mut writer) =
            open_session(addr, from, None, &self.client_id, credentials).await?;
        subscribe_to(&mut reader, &mut writer, &self.filters).await?;
        writer
            .write_all(&raw::publish(&self.topic, 1, 1, &self.payload))
            .await
            .map_err(|e| format!("PUBLISH: {e}"))?;
        loop {
            let (header, body) = read_packet(&mut reader)
                .await
                .map_err(|e| format!("waiting for the answer: {e}"))?;
            if header >> 4 != 3 {
                continue;
            }
            let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let topic = String::from_utf8_lossy(&body[2..2 + len]);
            if topic == self.answer {
                break;
            }
            let at = 2 + len + if header & 0x06 != 0 { 2 } else { 0 };
            return Err(format!(
                "answer on {topic}: {}",
                String::from_utf8_lossy(&body[at..])
            ));
        }
        let _ = writer.write_all(&[0xE0, 0x00]).await;
        let _ = writer.shutdown().await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v < 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

/// A signed difference in KiB, as MiB.
fn delta_mib(kb: i64) -> String {
    format!("{:+.1}", kb as f64 / 1024.0)
}

/// KiB per connection, in the unit that reads best.
fn per_connection(kb: f64) -> String {
    if kb.abs() >= 1024.0 {
        format!("{:+.1} MiB", kb / 1024.0)
    } else {
        format!("{kb:+.1} KiB")
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string().into_bytes();
    let groups: Vec<&str> = digits
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap())
        .collect();
    groups.join(",")
}

fn check(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

fn print_table(rows: &[Row], settings: &Settings, took: Duration) {
    let mut out = String::new();
    out.push_str(
        "\n| attack | broker | RSS before (MiB) | peak (Δ) | settled +10 s (Δ) | peak Δ per attacking \
         connection beyond the probe's own (at once) | kept per attacking connection (in all) | probe \
         p50 / p99 ms (n) | what happened | ≤ 16 MiB per connection | p99 < 200 ms | settled within \
         10 % |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    // What the probe alone raises the peak by, per broker (its baseline row).
    let probe_peak = |broker: &str| {
        rows.iter()
            .find(|r| r.broker == broker && r.outcome.probe_alone)
            .map_or(0, |r| r.peak_kb as i64 - r.before_kb as i64)
    };
    for row in rows {
        let lat = row.latencies();
        let failures = row.failures().len();
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        let peak = row.peak_kb as i64 - row.before_kb as i64;
        let kept = row.settled_kb as i64 - row.before_kb as i64;
        let o = &row.outcome;
        let per_conn = if o.probe_alone {
            peak as f64
        } else {
            (peak - probe_peak(row.broker)).max(0) as f64 / o.at_once.max(1) as f64
        };
        let per_conn_cell = if o.probe_alone {
            format!("{} (the probe's)", per_connection(per_conn))
        } else {
            format!("{} ({})", per_connection(per_conn), o.at_once)
        };
        let kept_per_conn = (o.in_all > 0).then(|| kept as f64 / o.in_all as f64);
        let probe = format!(
            "{} / {} ({}{})",
            fmt_ms(p50),
            fmt_ms(p99),
            lat.len(),
            if failures > 0 {
                format!(", {failures} failed")
            } else {
                String::new()
            }
        );
        let p99_ok = p99.is_some_and(|p| p < MOST_P99_MS) && failures == 0;
        let settled_ok =
            row.settled_kb as f64 <= row.before_kb as f64 * (1.0 + MOST_SETTLED_GROWTH);
        let mut what = o.what.clone();
        if let Some(capped) = o.capped {
            what += &format!(
                "; refused at the cap of {}, not absorbed: {}",
                settings.subscription_cap,
                check(capped)
            );
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} ({}) | {} ({}) | {per_conn_cell} | {} | {probe} | {what} | {} | {} | {} |\n",
            row.attack,
            row.broker,
            mib(row.before_kb),
            mib(row.peak_kb),
            delta_mib(peak),
            mib(row.settled_kb),
            delta_mib(kept),
            kept_per_conn.map_or("—".into(), |kb| format!(
                "{} ({})",
                per_connection(kb),
                o.in_all
            )),
            check(per_conn <= MOST_PER_CONNECTION_KB),
            check(p99_ok),
            if o.probe_alone { "—" } else { check(settled_ok) },
        ));
    }
    println!("{out}");
    println!(
        "window {} s per attack, settled read {} s after the attacker left; sprig's slow-reader run: \
         write_stall_timeout_ms = {}; whole run {:.0} s",
        settings.window.as_secs(),
        settings.settle.as_secs(),
        settings.write_stall_ms,
        took.as_secs_f64()
    );
    for row in rows {
        let failures = row.failures();
        if let Some(first) = failures.first() {
            println!(
                "{} / {}: {} probes failed; first: {first}",
                row.attack,
                row.broker,
                failures.len()
            );
        }
    }
    let _ = std::io::stdout().flush();
}
