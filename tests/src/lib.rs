//! Harness for sprig's end-to-end tests: the real `sprig` binary on a free port with a temporary data dir,
//! driven through its real CLI and through raw MQTT with rumqttc.
//!
//! [`Gateway::start`] builds the binary (once per test process, through cargo, so it is never stale), writes
//! a config derived from `config/gateway.toml`, starts `sprig run` and waits until it accepts connections.
//! [`Operator`] speaks the control protocol of CONTRACT section 4 directly.

pub mod bench;
pub mod device;
pub mod fuzz;
pub mod mosquitto;
pub mod procfs;
pub mod tmpfs;

/// The build paths, raw MQTT packets and test certificates live in `sprig-test-support`, which the
/// gateway's unit tests and benchmarks use too; re-exported so that the end-to-end tests find everything
/// here.
pub use sprig_test_support::build::{
    cargo_build, plugin_path, release_bin, sprig_bin, target_dir, workspace, wrong_abi_plugin,
};
pub use sprig_test_support::{certs, raw};

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

/// The default configuration file of the repository.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/gateway.toml");

/// The default config listening on `listen` only, with its data in `data_dir`, and its HTTP API on a free
/// loopback port (read it back with [`api_addr`]): many gateways run at once in the tests.
pub fn config_for(listen: &str, data_dir: &Path) -> String {
    let api = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    DEFAULT_CONFIG
        .replace(
            "listen = [\"127.0.0.1:1883\"]",
            &format!("listen = [\"{listen}\"]"),
        )
        .replace(
            "listen = [\"127.0.0.1:8080\"]",
            &format!("listen = [\"{api}\"]"),
        )
        .replace(
            "listen = [\"127.0.0.1:9464\"]",
            &format!("listen = [\"{metrics}\"]"),
        )
        .replace(
            "data_dir = \"./sprig-data\"",
            &format!("data_dir = {:?}", data_dir.display().to_string()),
        )
}

/// The first plain HTTP API listener of `config` (`[api] listen`), if any.
pub fn api_addr(config: &str) -> Option<SocketAddr> {
    first_listener(config, "api")
}

/// The first metrics listener of `config` (`[metrics] listen`), if any.
pub fn metrics_addr(config: &str) -> Option<SocketAddr> {
    first_listener(config, "metrics")
}

fn first_listener(config: &str, section: &str) -> Option<SocketAddr> {
    let config: toml::Value = toml::from_str(config).ok()?;
    let listen = config.get(section)?.get("listen")?.as_array()?;
    listen.first()?.as_str()?.parse().ok()
}

/// `config` with the setting `from` (a line as `config/gateway.toml` writes it) changed to `to`. Panics when
/// the line is missing, so a renamed default fails loudly instead of leaving the setting unchanged.
pub fn with_setting(config: &str, from: &str, to: &str) -> String {
    assert!(config.contains(from), "config/gateway.toml has no `{from}`");
    config.replace(from, to)
}

/// `config` with the per-connection publish quotas lifted (`max_publishes_per_second` and
/// `max_publish_bytes_per_second` 0): a benchmark's publishers go as fast as the gateway takes them.
pub fn without_publish_quotas(config: &str) -> String {
    let config = with_setting(
        config,
        "max_publishes_per_second = 100",
        "max_publishes_per_second = 0",
    );
    with_setting(
        &config,
        "max_publish_bytes_per_second = 524288",
        "max_publish_bytes_per_second = 0",
    )
}

/// Writes `config` to `path` and runs `sprig run --config path` to its end (for configs it must refuse).
pub fn run_refusing(path: &Path, config: &str) -> Output {
    std::fs::write(path, config).unwrap();
    Command::new(sprig_bin())
        .arg("run")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap()
}

/// Runs `sprig ARGS --config config` and waits for it to exit by itself (for a `sprig run` that must
/// refuse to start, or a maintenance command); kills it and panics after `within`.
pub fn run_to_exit(args: &[&str], config: &Path, within: Duration) -> Output {
    let child = Command::new(sprig_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(within) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("sprig {args:?} did not exit within {within:?}");
        }
    }
}

/// A port nobody listens on right now, and one this process has not handed out before: the port is free
/// again once this returns, and a test running in parallel could otherwise be given it too before the
/// gateway it was meant for binds it (that gateway then fails to start, resetting its early clients).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// An argon2 hash of `password`, made by `sprig hash-password`.
pub fn hash_password(password: &str) -> String {
    hash_password_with(sprig_bin(), password)
}

/// An argon2 hash of `password`, made by `bin hash-password`.
pub fn hash_password_with(bin: &Path, password: &str) -> String {
    let out = Command::new(bin)
        .args(["hash-password", "--password", password])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hash-password failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A running `sprig run`, killed when dropped.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    /// The `sprig` binary it runs (and runs the CLI with).
    bin: PathBuf,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    log_path: PathBuf,
    data_dir: PathBuf,
}

impl Gateway {
    /// Starts a gateway on the default config with `extra` appended (more sections, or overrides through
    /// [`Gateway::start_with`]).
    pub fn start() -> Gateway {
        Gateway::start_with(|config| config)
    }

    /// Starts a gateway whose config is the default one passed through `edit` (after the listen address and
    /// data dir are set).
    pub fn start_with(edit: impl FnOnce(String) -> String) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Gateway::start_in(sprig_bin(), dir, data_dir, edit)
    }

    /// [`Gateway::start_with`] with another `sprig` binary (e.g. [`release_bin`], for benchmarks).
    pub fn start_bin_with(bin: &Path, edit: impl FnOnce(String) -> String) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Gateway::start_in(bin, dir, data_dir, edit)
    }

    /// Starts a gateway whose data dir is `data_dir` (for instance on a small file system), its config
    /// passed through `edit`.
    pub fn start_with_data_dir(data_dir: &Path, edit: impl FnOnce(String) -> String) -> Gateway {
        Gateway::start_in(
            sprig_bin(),
            tempfile::tempdir().unwrap(),
            data_dir.to_owned(),
            edit,
        )
    }

    /// Starts `bin` with its config and log in `dir` and its data in `data_dir` (which may be on another
    /// file system: a benchmark measuring the data dir's writes keeps the log apart).
    pub fn start_in(
        bin: &Path,
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        edit: impl FnOnce(String) -> String,
    ) -> Gateway {
        let port = free_port();
        let config = config_for(&format!("127.0.0.1:{port}"), &data_dir);
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, edit(config)).unwrap();
        let mut gateway = Gateway {
            bin: bin.to_owned(),
            log_path: dir.path().join("sprig.log"),
            dir,
            config_path,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            data_dir,
        };
        gateway.spawn();
        gateway
    }

    /// Starts `sprig run` again on the same config and data dir.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let readies_before = self.ready_lines();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info,rumqttd=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn sprig run");
        self.child = Some(child);
        self.wait_until_ready(readies_before);
    }

    /// Waits for this run's "ready" line (the log had `readies_before` of them): the log is appended to
    /// across restarts, and a gateway listens before its services take requests (a request sent in
    /// between is not answered).
    fn wait_until_ready(&mut self, readies_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sprig run exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            if self.ready_lines() > readies_before
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sprig run was not ready within 30 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many times the gateway said it was ready (once per run).
    fn ready_lines(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(" ready ") && line.contains("sprig "))
            .count()
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Lines of the log containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        BufReader::new(std::fs::File::open(&self.log_path).unwrap())
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit and returns its status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.as_ref()?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        self.wait_for_exit(Duration::from_secs(20)).code()
    }

    /// Waits until the gateway exits by itself (panicking after `within`, with its log).
    pub fn wait_for_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("sprig is running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sprig did not exit within {within:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the gateway (SIGTERM, which must exit 0) and checks its store with `sprig store check`, which
    /// must call it consistent and count `counts` (e.g. `"2 jobs, 51 executions"`).
    pub fn stop_and_check_store(&mut self, counts: &str) {
        assert_eq!(self.terminate(), Some(0));
        let check = self.cli(&["store", "check"]);
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success(), "{report}");
        assert!(
            report.contains(counts) && report.contains("consistent"),
            "{report}"
        );
    }

    /// Waits until the gateway logs a line containing `needle` and returns it (panicking after `within`,
    /// with the log).
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.log_lines(needle).pop() {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "sprig did not log {needle:?} within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sprig is running").id()
    }

    /// The most resident memory the running gateway has had (`VmHWM`), in KiB.
    pub fn peak_rss_kb(&self) -> u64 {
        self.status_kb("VmHWM:")
    }

    /// The running gateway's resident memory now (`VmRSS`), in KiB.
    pub fn rss_kb(&self) -> u64 {
        self.status_kb("VmRSS:")
    }

    /// Makes the gateway's peak resident memory (`VmHWM`) its current one, so that a later
    /// [`peak_rss_kb`](Self::peak_rss_kb) measures from now (Linux: `/proc/PID/clear_refs`).
    pub fn reset_peak_rss(&self) {
        let pid = self.pid();
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    }

    fn status_kb(&self, field: &str) -> u64 {
        let pid = self.pid();
        bench::status_kb(pid, field).unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }

    /// Whether `sprig run` has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// The local operator's credential, as `sprig run` wrote it.
    pub fn local_credential(&self) -> (String, String) {
        let text = std::fs::read_to_string(self.data_dir().join("local-operator.json")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        (
            v["username"].as_str().unwrap().to_owned(),
            v["password"].as_str().unwrap().to_owned(),
        )
    }

    /// Runs the CLI against this gateway: `sprig <args> --config <this config>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .unwrap()
    }

    /// `GET path` on the gateway's `[metrics]` listener: (status line, body).
    pub fn metrics_get(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let config = std::fs::read_to_string(&self.config_path).unwrap();
        let addr = metrics_addr(&config).expect("a [metrics] listener");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        )
    }

    /// `/metrics`, parsed as Prometheus parses its text format.
    pub fn scrape(&self) -> prometheus_parse::Scrape {
        let (status, body) = self.metrics_get("/metrics");
        assert!(status.contains("200"), "{status}");
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("Prometheus text format")
    }

    /// An operator client logged in as the local operator.
    pub async fn operator(&self) -> Operator {
        let (username, password) = self.local_credential();
        Operator::connect(self.addr, &username, &password)
            .await
            .expect("local operator connects")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what the gateway was doing: its assertion rarely says.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- the gateway's last log lines ---");
            tail.iter().rev().for_each(|line| eprintln!("{line}"));
        }
    }
}

/// What a control request got back: the accepted body, or the rejection's code and message.
pub type Reply = Result<Value, (String, String)>;

/// A raw MQTT control client, as a fleet backend would write one.
pub struct Operator {
    pub client_id: String,
    client: AsyncClient,
    events: EventLoop,
}

impl Operator {
    /// Connects and subscribes to its reply topics; `Err` if the gateway refuses the connection.
    pub async fn connect(
        addr: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Operator, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let client_id = format!(
            "op-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut options = MqttOptions::new(&client_id, addr.ip().to_string(), addr.port());
        options
            .set_credentials(username, password)
            .set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut events) = AsyncClient::new(options, 64);
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await
        .map_err(|_| "no CONNACK within 10 s".to_owned())??;
        if connected.code != rumqttc::ConnectReturnCode::Success {
            return Err(format!("{:?}", connected.code));
        }
        // Replies only: `…/#` would also match (and echo back) our own requests.
        let replies = ["accepted", "rejected"].map(|kind| {
            rumqttc::SubscribeFilter::new(
                format!("$sprig/control/{client_id}/+/{kind}"),
                QoS::AtLeastOnce,
            )
        });
        client.subscribe_many(replies).await.unwrap();
        let mut operator = Operator {
            client_id,
            client,
            events,
        };
        operator.wait_for(|p| matches!(p, Packet::SubAck(_))).await;
        Ok(operator)
    }

    async fn wait_for(&mut self, mut wanted: impl FnMut(&Packet) -> bool) -> Packet {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Event::Incoming(packet) =
                    self.events.poll().await.expect("connection to the gateway")
                {
                    if wanted(&packet) {
                        return packet;
                    }
                }
            }
        })
        .await
        .expect("the gateway answered within 30 s")
    }

    /// Sends one request (a fresh clientToken is added) and waits for its reply.
    pub async fn request(&mut self, operation: &str, mut body: Value) -> Reply {
        static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let token = format!(
            "t{}",
            TOKENS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        body["clientToken"] = json!(token);
        self.request_raw(operation, serde_json::to_vec(&body).unwrap(), Some(&token))
            .await
    }

    /// Sends `payload` as is, and waits for the reply carrying `token` (or for any reply if `None`).
    pub async fn request_raw(
        &mut self,
        operation: &str,
        payload: Vec<u8>,
        token: Option<&str>,
    ) -> Reply {
        let topic = format!("$sprig/control/{}/{operation}", self.client_id);
        self.client
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        loop {
            let Packet::Publish(reply) = self.wait_for(|p| matches!(p, Packet::Publish(_))).await
            else {
                unreachable!()
            };
            let mut body: Value = serde_json::from_slice(&reply.payload).expect("replies are JSON");
            if token.is_some_and(|t| body["clientToken"] != json!(t)) {
                continue;
            }
            if let Some(map) = body.as_object_mut() {
                map.remove("clientToken");
            }
            return if reply.topic == format!("{topic}/accepted") {
                Ok(body)
            } else {
                assert_eq!(reply.topic, format!("{topic}/rejected"));
                Err((
                    body["code"].as_str().unwrap_or_default().to_owned(),
                    body["message"].as_str().unwrap_or_default().to_owned(),
                ))
            };
        }
    }

    /// DescribeJob's `job.status`, or the error code.
    pub async fn job_status(&mut self, job_id: &str) -> String {
        match self
            .request("DescribeJob", json!({ "jobId": job_id }))
            .await
        {
            Ok(v) => v["job"]["status"].as_str().unwrap().to_owned(),
            Err((code, _)) => code,
        }
    }

    /// Polls DescribeJob until the job satisfies `wanted`, for at most `within`, and returns its `job`.
    pub async fn wait_for_job(
        &mut self,
        job_id: &str,
        within: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let described = self
                .request("DescribeJob", json!({ "jobId": job_id }))
                .await;
            if let Ok(described) = &described {
                if wanted(&described["job"]) {
                    return described["job"].clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} not as expected within {within:?}: {described:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the job is gone (ResourceNotFoundException), for at most `within`.
    pub async fn wait_until_deleted(&mut self, job_id: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.job_status(job_id).await != "ResourceNotFoundException" {
            assert!(
                Instant::now() < deadline,
                "job {job_id} was not deleted within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A device that has started its execution of the new job `job_id` (it is IN_PROGRESS), and subscribed
/// to `$aws/things/{thing}/rollback` (recoveries run for devices that subscribed since they connected).
pub async fn start_job(
    gateway: &Gateway,
    op: &mut Operator,
    thing: &str,
    job_id: &str,
) -> device::Device {
    op.request("CreateJob", create_job(job_id, None, &[thing]))
        .await
        .unwrap();
    let mut device = device::Device::connect(gateway.addr, thing, device::Protocol::V311).await;
    device
        .subscribe(&[&format!("$aws/things/{thing}/rollback")])
        .await;
    let (accepted, body) = device.request("start-next", json!({})).await;
    assert!(accepted, "{body}");
    assert_eq!(body["execution"]["status"], "IN_PROGRESS");
    device
}

/// Polls ListRecoveries for `thing` until its one recovery satisfies `done`, and returns it.
pub async fn wait_for_recovery(
    op: &mut Operator,
    thing: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let listed = op
            .request("ListRecoveries", json!({ "thingName": thing }))
            .await
            .unwrap();
        if let Some(recovery) = listed["recoveries"].as_array().and_then(|r| r.first()) {
            if done(recovery) {
                return recovery.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{thing}: recovery not as expected within {within:?}: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A device runs a new job from start-next to SUCCEEDED, and the job completes: the gateway serves.
pub async fn run_a_job_end_to_end(gateway: &Gateway, op: &mut Operator, thing: &str, job_id: &str) {
    op.request("CreateJob", create_job(job_id, None, &[thing]))
        .await
        .unwrap();
    let mut device = device::Device::connect(gateway.addr, thing, device::Protocol::V311).await;
    let (accepted, body) = device.request("start-next", json!({})).await;
    assert!(accepted && body["execution"]["jobId"] == job_id, "{body}");
    let (accepted, body) = device
        .request(&format!("{job_id}/update"), json!({"status": "SUCCEEDED"}))
        .await;
    assert!(accepted, "{body}");
    assert_eq!(op.job_status(job_id).await, "COMPLETED");
}

/// A CreateJob body for `things`, optionally in a namespace.
pub fn create_job(job_id: &str, namespace: Option<&str>, things: &[&str]) -> Value {
    let mut body =
        json!({ "jobId": job_id, "targets": things, "document": "{\"action\":\"update\"}" });
    if let Some(ns) = namespace {
        body["namespaceId"] = json!(ns);
    }
    body
}

/// The sum of `metric`'s samples in `scrape` whose labels include `labels` (0 if there are none).
pub fn metric(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
