//! Recoveries per second for 1,000 devices: one forced DeleteJob interrupts every device's IN_PROGRESS
//! execution, and the gateway recovers them all through a real `[[recovery]]` plugin.
//!
//! The RELEASE `sprig` binary and the release plugins are built first (`cargo build --release -p
//! sprig-gateway --bin sprig`, then `cargo build --release -p sprig-plugin-reset -p
//! sprig-plugin-rollback`: in one command `--bin` would filter the plugins out) and started with a temporary
//! data dir on a free 127.0.0.1 port, `broker.max_connections` raised to fit the devices and the
//! operator's request rate raised so the polling below is never throttled. N devices (`dev-0000`, …)
//! connect anonymously (minimal rumqttc clients, in parallel batches) and subscribe to their rollback topic
//! and `jobs/start-next/accepted|rejected` (the runner only runs a device's recovery once it has subscribed
//! since connecting). Each run: one CreateJob targeting all N devices, every device does
//! `$aws/things/{thing}/jobs/start-next` (its execution is then IN_PROGRESS), then ONE
//! `DeleteJob force=true`. Measured from DeleteJob's reply until every recovery of the job is RECOVERED,
//! i.e. to the largest `lastUpdatedAt` that `ListRecoveries` reports (polled every 50 ms with
//! `{"jobId", "status":"PENDING"}`, then counted with `status RECOVERED`, `maxResults` 250 and `nextToken`).
//! Per-recovery latency is `lastUpdatedAt − createdAt` (the recovery is created in the deletion batch that
//! removes the execution).
//!
//! Two plugins, each in both isolations: for each plugin, one gateway per isolation, side by side with
//! their own devices, their runs interleaved (A B, B A, …) so that both see the same load of a shared
//! machine; a summary gives each one's median and best run.
//! - `reset`: `sprig-plugin-reset`, no device round trip. Measures the gateway's recovery path: store,
//!   runner, plugin call (through the pipe to the plugin host process, or in-process through the C ABI
//!   and the instance's worker thread), recording the outcome.
//! - `rollback+ack`: `sprig-plugin-rollback` with an `ack_topic`: the first attempt publishes the rollback
//!   command to the device, the device acknowledges it on `$aws/things/{thing}/rollback/ack`, the second
//!   attempt records RECOVERED. Measures the full round trip with the device.
//!
//! Run: `cargo bench -p sprig-tests --bench recovery`. Environment:
//! - `SPRIG_RECOVERY_DEVICES` (default 1000): devices, one execution each;
//! - `SPRIG_RECOVERY_RUNS` (default 3): runs per plugin, each with a new job id;
//! - `SPRIG_RECOVERY_PLUGINS` (default `reset,rollback`): which plugins;
//! - `SPRIG_RECOVERY_ISOLATION` (default `process,in-process`): which `isolation` for each plugin;
//! - `SPRIG_RECOVERY_TIMEOUT_S` (default 300): bound on one run's wait for its recoveries.
//!
//! Every wait is bounded; a bench that cannot finish panics with what it saw. The gateway's log is kept
//! in its temporary dir and printed (its tail) on failure.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter};
use serde_json::{json, Value};
use sprig_test_support::build::{plugin_path_in, release_bin, Profile};
use sprig_test_support::settings::env_or;
use sprig_tests::{config_for, free_port, procfs, with_setting, Operator};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const CONNECT_BATCH: usize = 100;
const POLL: Duration = Duration::from_millis(50);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
const ACK_TOPIC: &str = "$aws/things/{thing}/rollback/ack";

/// The release binary and plugins, built now (cargo makes this a no-op when they are fresh).
struct Artifacts {
    sprig: PathBuf,
    reset: PathBuf,
    rollback: PathBuf,
}

fn build_release() -> Artifacts {
    Artifacts {
        sprig: release_bin().to_owned(),
        reset: plugin_path_in(Profile::Release, "sprig-plugin-reset"),
        rollback: plugin_path_in(Profile::Release, "sprig-plugin-rollback"),
    }
}

/// Which plugin a gateway routes `dev-*` to.
#[derive(Clone, Copy, PartialEq)]
enum Plugin {
    Reset,
    Rollback,
}

impl Plugin {
    fn label(self) -> &'static str {
        match self {
            Plugin::Reset => "reset",
            Plugin::Rollback => "rollback+ack",
        }
    }

    /// Handler calls a recovery takes when nothing goes wrong.
    fn attempts(self) -> u64 {
        match self {
            Plugin::Reset => 1,
            Plugin::Rollback => 2,
        }
    }

    fn route(self, artifacts: &Artifacts, isolation: &str) -> String {
        match self {
            Plugin::Reset => format!(
                r#"
[[recovery]]
things = "dev-*"
plugin = {:?}
isolation = "{isolation}"
[recovery.config]
status_details = {{ state = "reset", job = "{{jobId}}" }}
"#,
                artifacts.reset
            ),
            // A lost acknowledgement would show as a retry after ack_timeout_ms (counted in `attempts`).
            Plugin::Rollback => format!(
                r#"
[[recovery]]
things = "dev-*"
plugin = {:?}
isolation = "{isolation}"
ack_topic = "{ACK_TOPIC}"
[recovery.config]
topic = "$aws/things/{{thing}}/rollback"
payload = "{{\"jobId\":\"{{jobId}}\",\"action\":\"rollback\"}}"
ack_timeout_ms = 10000
max_attempts = 10
"#,
                artifacts.rollback
            ),
        }
    }
}

/// `sprig run` (release) on a free loopback port with a temporary data dir; killed when dropped.
struct BenchGateway {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    child: Child,
}

impl BenchGateway {
    fn start(
        artifacts: &Artifacts,
        plugin: Plugin,
        isolation: &str,
        devices: usize,
    ) -> BenchGateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let data_dir = dir.path().join("data");
        let mut config = config_for(&format!("127.0.0.1:{port}"), &data_dir);
        for (from, to) in [
            (
                "max_connections = 1024".to_owned(),
                format!("max_connections = {}", (devices + 64).max(5000)),
            ),
            (
                "requests_per_second = 50".to_owned(),
                "requests_per_second = 1000".to_owned(),
            ),
            (
                "request_burst = 100".to_owned(),
                "request_burst = 1000".to_owned(),
            ),
        ] {
            config = with_setting(&config, &from, &to);
        }
        config.push_str(&plugin.route(artifacts, isolation));
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("sprig.log")).unwrap();
        let child = Command::new(&artifacts.sprig)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info,rumqttd=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the release sprig");
        let mut gateway = BenchGateway {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = gateway.child.try_wait().unwrap() {
                gateway.fail(&format!(
                    "sprig run exited with {status} before it was ready"
                ));
            }
            if TcpStream::connect_timeout(&gateway.addr, Duration::from_millis(100)).is_ok()
                && gateway.log().contains("ready")
            {
                return gateway;
            }
            if Instant::now() > deadline {
                gateway.fail("sprig run was not ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sprig.log")).unwrap_or_default()
    }

    /// CPU time used so far by the gateway and its live children (plugin hosts), in seconds. A host's
    /// time is lost if it ends between two readings (none does here).
    fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id();
        let ticks: u64 = procfs::stat(pid)
            .into_iter()
            .chain(procfs::children(pid))
            .map(|s| s.cpu_ticks)
            .sum();
        ticks as f64 / procfs::ticks_per_second() as f64
    }

    /// Log lines containing `needle`.
    /// The log lines that contain `needle`.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::File::open(self.dir.path().join("sprig.log"))
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| l.contains(needle))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn fail(&self, why: &str) -> ! {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{why}; gateway log (tail):\n{}", tail.join("\n"));
    }

    async fn operator(&self) -> Operator {
        let text =
            std::fs::read_to_string(self.dir.path().join("data/local-operator.json")).unwrap();
        let credential: Value = serde_json::from_str(&text).unwrap();
        Operator::connect(
            self.addr,
            credential["username"].as_str().unwrap(),
            credential["password"].as_str().unwrap(),
        )
        .await
        .expect("the local operator connects")
    }
}

impl Drop for BenchGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a device's event loop passes on to the bench.
enum Seen {
    SubAck,
    StartNext(usize, bool, Value),
    Closed(usize, String),
}

/// A minimal device: a rumqttc client whose event loop task answers rollback commands with an
/// acknowledgement (when `ack` is set) and forwards SUBACKs and start-next replies.
struct Fleet {
    clients: Vec<AsyncClient>,
    pollers: Vec<tokio::task::JoinHandle<()>>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Rollback commands received, all devices together.
    commands: Arc<AtomicU64>,
}

fn thing(i: usize) -> String {
    format!("dev-{i:04}")
}

async fn connect_one(addr: SocketAddr, i: usize) -> Result<(AsyncClient, EventLoop), String> {
    let mut options = MqttOptions::new(thing(i), addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let connack = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return match ack.code {
                        rumqttc::ConnectReturnCode::Success => Ok(()),
                        code => Err(format!("{code:?}")),
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), connack)
        .await
        .map_err(|_| "no CONNACK within 10 s".to_owned())??;
    Ok((client, eventloop))
}

async fn poll_device(
    i: usize,
    client: AsyncClient,
    mut eventloop: EventLoop,
    seen: mpsc::UnboundedSender<Seen>,
    ack: bool,
    commands: Arc<AtomicU64>,
) {
    let thing = thing(i);
    let rollback = format!("$aws/things/{thing}/rollback");
    let ack_topic = ACK_TOPIC.replace("{thing}", &thing);
    let start_next = format!("$aws/things/{thing}/jobs/start-next/");
    loop {
        let event = match eventloop.poll().await {
            Ok(event) => event,
            Err(e) => {
                let _ = seen.send(Seen::Closed(i, e.to_string()));
                return;
            }
        };
        match event {
            Event::Incoming(Packet::Publish(p)) if p.topic == rollback => {
                commands.fetch_add(1, Ordering::Relaxed);
                // try_publish: the event loop is what drains the request channel, so never wait on it here.
                if ack {
                    if let Err(e) = client.try_publish(&ack_topic, QoS::AtLeastOnce, false, "{}") {
                        let _ = seen.send(Seen::Closed(i, format!("ack not sent: {e}")));
                    }
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                if let Some(kind) = p.topic.strip_prefix(&start_next) {
                    let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    let _ = seen.send(Seen::StartNext(i, kind == "accepted", body));
                }
            }
            Event::Incoming(Packet::SubAck(suback)) => {
                let granted = suback
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
                if !granted {
                    let _ = seen.send(Seen::Closed(i, format!("subscription refused: {suback:?}")));
                }
                let _ = seen.send(Seen::SubAck);
            }
            _ => {}
        }
    }
}

impl Fleet {
    /// Connects `n` devices in parallel batches and subscribes each; returns once every SUBACK is in.
    async fn connect(addr: SocketAddr, n: usize, ack: bool) -> Fleet {
        let (tx, seen) = mpsc::unbounded_channel();
        let commands = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::with_capacity(n);
        let mut pollers = Vec::with_capacity(n);
        for start in (0..n).step_by(CONNECT_BATCH) {
            let mut batch = JoinSet::new();
            for i in start..(start + CONNECT_BATCH).min(n) {
                batch.spawn(async move { (i, connect_one(addr, i).await) });
            }
            let mut connected: Vec<_> = Vec::new();
            while let Some(joined) = batch.join_next().await {
                let (i, result) = joined.unwrap();
                let (client, eventloop) =
                    result.unwrap_or_else(|e| panic!("{} could not connect: {e}", thing(i)));
                connected.push((i, client, eventloop));
            }
            connected.sort_by_key(|(i, ..)| *i);
            for (i, client, eventloop) in connected {
                let thing = thing(i);
                let filters = [
                    format!("$aws/things/{thing}/rollback"),
                    format!("$aws/things/{thing}/jobs/start-next/accepted"),
                    format!("$aws/things/{thing}/jobs/start-next/rejected"),
                ]
                .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                client.subscribe_many(filters).await.unwrap();
                pollers.push(tokio::spawn(poll_device(
                    i,
                    client.clone(),
                    eventloop,
                    tx.clone(),
                    ack,
                    commands.clone(),
                )));
                clients.push(client);
            }
        }
        let mut fleet = Fleet {
            clients,
            pollers,
            seen,
            commands,
        };
        fleet
            .collect("SUBACKs", n, |s| matches!(s, Seen::SubAck).then_some(()))
            .await;
        fleet
    }

    /// Waits (bounded) for `n` events that `wanted` takes; a closed device fails the bench.
    async fn collect(&mut self, what: &str, n: usize, mut wanted: impl FnMut(Seen) -> Option<()>) {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        let mut got = 0;
        while got < n {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(Seen::Closed(i, e))) => panic!("{}: {e}", thing(i)),
                Ok(Some(seen)) => {
                    if wanted(seen).is_some() {
                        got += 1;
                    }
                }
                Ok(None) => unreachable!("the bench holds a sender"),
                Err(_) => panic!("{what}: {got} of {n} within {REPLY_TIMEOUT:?}"),
            }
        }
    }

    /// Every device does `jobs/start-next`; checks that each started `job_id` (IN_PROGRESS).
    async fn start_next(&mut self, job_id: &str) {
        for (i, client) in self.clients.iter().enumerate() {
            let topic = format!("$aws/things/{}/jobs/start-next", thing(i));
            let body = json!({ "clientToken": format!("{job_id}-{i}") });
            client
                .publish(topic, QoS::AtLeastOnce, false, body.to_string())
                .await
                .unwrap();
        }
        let n = self.clients.len();
        self.collect("start-next replies", n, |seen| match seen {
            Seen::StartNext(i, accepted, body) => {
                let execution = &body["execution"];
                assert!(
                    accepted
                        && execution["jobId"] == job_id
                        && execution["status"] == "IN_PROGRESS",
                    "{}: start-next answered {body}",
                    thing(i)
                );
                Some(())
            }
            _ => None,
        })
        .await;
    }

    async fn disconnect(self) {
        for client in &self.clients {
            let _ = client.try_disconnect();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for poller in self.pollers {
            poller.abort();
        }
    }
}

/// Recoveries of `job_id` with `status`, every page.
async fn list_recoveries(op: &mut Operator, job_id: &str, status: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut body = json!({ "jobId": job_id, "status": status, "maxResults": 250 });
        if let Some(token) = &next {
            body["nextToken"] = json!(token);
        }
        let page = op
            .request("ListRecoveries", body)
            .await
            .unwrap_or_else(|e| panic!("ListRecoveries refused: {e:?}"));
        all.extend(page["recoveries"].as_array().cloned().unwrap_or_default());
        match page["nextToken"].as_str() {
            Some(token) => next = Some(token.to_owned()),
            None => return all,
        }
    }
}

fn epoch_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct RunResult {
    /// The plugin and its isolation: `reset (process)`.
    label: String,
    run: usize,
    devices: usize,
    /// DeleteJob's reply → the last recovery's `lastUpdatedAt`, seconds.
    elapsed: f64,
    /// First → last recovery's `lastUpdatedAt`, seconds: the runner's pace once it has started.
    spread: f64,
    /// DeleteJob's reply → the poll that saw them all RECOVERED.
    observed: Duration,
    delete_call: Duration,
    p50: f64,
    p99: f64,
    max: f64,
    /// Handler calls beyond the nominal ones (retries).
    extra_attempts: u64,
    /// CPU time the gateway and its plugin hosts used from DeleteJob to the last RECOVERED seen, seconds:
    /// what the work costs, whatever else the machine runs (wall-clock rates depend on that).
    cpu: f64,
}

async fn run_once(
    gateway: &BenchGateway,
    op: &mut Operator,
    fleet: &mut Fleet,
    plugin: Plugin,
    label: &str,
    run: usize,
    timeout: Duration,
) -> RunResult {
    let n = fleet.clients.len();
    let job_id = format!("rec-{}-{run}", plugin.label().replace('+', "-"));
    let targets: Vec<String> = (0..n).map(thing).collect();
    let create =
        json!({ "jobId": job_id, "targets": targets, "document": "{\"action\":\"update\"}" });
    op.request("CreateJob", create)
        .await
        .unwrap_or_else(|e| panic!("CreateJob refused: {e:?}"));
    fleet.start_next(&job_id).await;
    let commands_before = fleet.commands.load(Ordering::Relaxed);
    let cpu_before = gateway.cpu_seconds();

    let called = Instant::now();
    op.request("DeleteJob", json!({ "jobId": job_id, "force": true }))
        .await
        .unwrap_or_else(|e| panic!("DeleteJob refused: {e:?}"));
    let replied = Instant::now();
    let replied_epoch = epoch_s();
    let delete_call = replied - called;

    let deadline = replied + timeout;
    let (recovered, observed) = loop {
        let pending = op
            .request(
                "ListRecoveries",
                json!({ "jobId": job_id, "status": "PENDING", "maxResults": 1 }),
            )
            .await
            .unwrap_or_else(|e| panic!("ListRecoveries refused: {e:?}"));
        let none_pending = pending["recoveries"].as_array().is_none_or(Vec::is_empty);
        if none_pending {
            // Recoveries are created by the background deletion: none PENDING may also mean none yet.
            let recovered = list_recoveries(op, &job_id, "RECOVERED").await;
            let observed = replied.elapsed();
            if recovered.len() == n {
                break (recovered, observed);
            }
            let failed = list_recoveries(op, &job_id, "FAILED").await;
            if !failed.is_empty() {
                gateway.fail(&format!(
                    "{label}: {} recoveries FAILED, e.g. {}",
                    failed.len(),
                    failed[0]
                ));
            }
        }
        if Instant::now() > deadline {
            gateway.fail(&format!(
                "{label}: not every recovery of {job_id} RECOVERED within {timeout:?}: {pending}"
            ));
        }
        tokio::time::sleep(POLL).await;
    };

    let cpu = gateway.cpu_seconds() - cpu_before;
    let number = |r: &Value, key: &str| {
        r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("recovery without {key}: {r}"))
    };
    let last = recovered
        .iter()
        .map(|r| number(r, "lastUpdatedAt"))
        .fold(f64::MIN, f64::max);
    let first = recovered
        .iter()
        .map(|r| number(r, "lastUpdatedAt"))
        .fold(f64::MAX, f64::min);
    let mut latencies: Vec<f64> = recovered
        .iter()
        .map(|r| number(r, "lastUpdatedAt") - number(r, "createdAt"))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let attempts: u64 = recovered
        .iter()
        .map(|r| r["attempts"].as_u64().unwrap_or(0))
        .sum();
    if plugin == Plugin::Rollback {
        let commands = fleet.commands.load(Ordering::Relaxed) - commands_before;
        assert!(
            commands >= n as u64,
            "{commands} rollback commands reached the {n} devices"
        );
    }
    RunResult {
        label: label.to_owned(),
        run,
        devices: n,
        elapsed: (last - replied_epoch).max(0.0),
        spread: last - first,
        observed,
        delete_call,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        max: *latencies.last().unwrap(),
        extra_attempts: attempts.saturating_sub(plugin.attempts() * n as u64),
        cpu,
    }
}

/// Recoveries per second over `seconds` (timestamps have millisecond resolution).
fn rate(recoveries: usize, seconds: f64) -> String {
    format!("{:.0}", recoveries as f64 / seconds.max(0.001))
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

#[tokio::main]
async fn main() {
    let devices = env_or("SPRIG_RECOVERY_DEVICES", 1000).max(1);
    let runs = env_or("SPRIG_RECOVERY_RUNS", 3).max(1);
    let timeout = Duration::from_secs(env_or("SPRIG_RECOVERY_TIMEOUT_S", 300) as u64);
    let plugins: Vec<Plugin> = std::env::var("SPRIG_RECOVERY_PLUGINS")
        .unwrap_or_else(|_| "reset,rollback".into())
        .split(',')
        .map(|p| match p.trim() {
            "reset" => Plugin::Reset,
            "rollback" => Plugin::Rollback,
            other => panic!("SPRIG_RECOVERY_PLUGINS: unknown plugin `{other}` (reset, rollback)"),
        })
        .collect();

    let isolations: Vec<String> = std::env::var("SPRIG_RECOVERY_ISOLATION")
        .unwrap_or_else(|_| "process,in-process".into())
        .split(',')
        .map(|i| match i.trim() {
            isolation @ ("process" | "in-process") => isolation.to_owned(),
            other => panic!(
                "SPRIG_RECOVERY_ISOLATION: unknown isolation `{other}` (process, in-process)"
            ),
        })
        .collect();

    let artifacts = build_release();
    println!(
        "sprig recovery benchmark: {devices} devices, {runs} runs per plugin and isolation, release build, 127.0.0.1"
    );
    let mut results = Vec::new();
    for plugin in plugins {
        // One gateway per isolation, side by side, their runs interleaved (the order turning each run):
        // on a machine shared with other work, paired runs see the same load; one after the other they
        // would not.
        let mut sides = Vec::new();
        for isolation in &isolations {
            let label = format!("{} ({isolation})", plugin.label());
            let gateway = BenchGateway::start(&artifacts, plugin, isolation, devices);
            let op = gateway.operator().await;
            let connecting = Instant::now();
            let fleet = Fleet::connect(gateway.addr, devices, plugin == Plugin::Rollback).await;
            println!(
                "{label}: {devices} devices connected and subscribed in {:.2} s",
                connecting.elapsed().as_secs_f64()
            );
            sides.push((label, gateway, op, fleet));
        }
        for run in 0..runs {
            let turn = sides.len();
            for k in 0..turn {
                let (label, gateway, op, fleet) = &mut sides[(k + run) % turn];
                let result = run_once(gateway, op, fleet, plugin, label, run, timeout).await;
                println!(
                    "{label} run {run}: DeleteJob call {:.1} ms, all RECOVERED after {} (seen by polling after {} ms), {} recoveries/s; first to last RECOVERED {} ({}/s); latency p50 {} p99 {} max {}, {} retries; CPU {:.0} µs per recovery",
                    result.delete_call.as_secs_f64() * 1000.0,
                    ms(result.elapsed),
                    result.observed.as_millis(),
                    rate(devices, result.elapsed),
                    ms(result.spread),
                    rate(devices - 1, result.spread),
                    ms(result.p50),
                    ms(result.p99),
                    ms(result.max),
                    result.extra_attempts,
                    result.cpu / devices as f64 * 1e6,
                );
                results.push(result);
            }
        }
        for (label, gateway, op, fleet) in sides {
            let warnings = gateway.log_lines("WARN");
            if !warnings.is_empty() {
                let n = warnings.len();
                println!("{label}: the gateway logged {n} warnings, the first:");
                for line in warnings.iter().take(3) {
                    println!("  {line}");
                }
            }
            fleet.disconnect().await;
            drop(op);
            drop(gateway);
        }
    }

    println!();
    println!("| plugin | devices | run | DeleteJob reply → all RECOVERED | recoveries/s | first → last RECOVERED | recoveries/s (runner pace) | latency p50 | latency p99 | retries |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.devices,
            r.run,
            ms(r.elapsed),
            rate(r.devices, r.elapsed),
            ms(r.spread),
            rate(r.devices - 1, r.spread),
            ms(r.p50),
            ms(r.p99),
            r.extra_attempts
        );
    }

    // Per plugin and isolation: the median and the best run (the least disturbed by other work).
    println!();
    println!("| plugin | runs | recoveries/s median | recoveries/s best | latency p50 median | latency p99 median | CPU per recovery median (gateway + host) |");
    println!("|---|---|---|---|---|---|---|");
    let mut labels: Vec<&str> = Vec::new();
    for r in &results {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    for label in labels {
        let of = |value: fn(&RunResult) -> f64| {
            let mut values: Vec<f64> = results
                .iter()
                .filter(|r| r.label == label)
                .map(value)
                .collect();
            values.sort_by(f64::total_cmp);
            values
        };
        let rates = of(|r| r.devices as f64 / r.elapsed.max(0.001));
        println!(
            "| {label} | {} | {:.0} | {:.0} | {} | {} | {:.0} µs |",
            rates.len(),
            percentile(&rates, 0.5),
            rates.last().copied().unwrap_or_default(),
            ms(percentile(&of(|r| r.p50), 0.5)),
            ms(percentile(&of(|r| r.p99), 0.5)),
            percentile(&of(|r| r.cpu / r.devices as f64), 0.5) * 1e6,
        );
    }
}
