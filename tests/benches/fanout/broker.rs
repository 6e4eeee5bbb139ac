//! The brokers under test as child processes: sprig's release binary, Debian's mosquitto, or this
//! benchmark's own floor server, each on a free loopback port with a config and a data directory of its
//! own, waited for until it accepts connections, its resident memory and CPU time read from `/proc`, and
//! killed (its log kept if `SPRIG_FANOUT_LOGS` says so) when dropped.

use super::*;
use sprig_tests::bench::spawn_broker;

#[derive(Clone)]
pub(super) enum BrokerKind {
    Sprig(PathBuf),
    Mosquitto(PathBuf),
    /// This benchmark's own binary as the floor server (see the `floor` module).
    Floor(PathBuf),
}

impl BrokerKind {
    pub(super) fn name(&self) -> &'static str {
        match self {
            BrokerKind::Sprig(_) => "sprig",
            BrokerKind::Mosquitto(_) => "mosquitto",
            BrokerKind::Floor(_) => "floor",
        }
    }
}

/// A broker process on a free loopback port, killed when dropped.
pub(super) struct Broker {
    /// `sprig-1000`, `mosquitto-10000`: names the log kept in `SPRIG_FANOUT_LOGS`.
    pub(super) label: String,
    pub(super) child: Child,
    pub(super) addr: SocketAddr,
    pub(super) dir: tempfile::TempDir,
    pub(super) log_path: PathBuf,
}

impl Broker {
    pub(super) fn start(kind: &BrokerKind, n: usize) -> Broker {
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
                // The routed population's filters (see `Subscription::Routed`).
                let config = format!(
                    "{config}\n[[auth.topic_rules]]\nthings = [\"*\"]\nsubscribe = [\"cmd/${{thing}}/#\"]\n"
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
        let child = spawn_broker(&mut command, dir.path(), log, kind.name());
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

    pub(super) fn wait_until_ready(&mut self, kind: &BrokerKind) {
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

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// VmRSS in KiB.
    pub(super) fn rss_kb(&self) -> u64 {
        sprig_tests::bench::rss_kb(self.child.id())
    }

    /// CPU time of the broker's live threads so far (nanosecond counters of `/proc/{pid}/task/*/schedstat`).
    pub(super) fn cpu_time(&self) -> Duration {
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
    pub(super) fn cpu_by_thread(&self) -> std::collections::BTreeMap<String, u64> {
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

    pub(super) fn local_credential(&self) -> (String, String) {
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
