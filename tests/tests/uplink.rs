//! The fleet uplink end to end: the real `sprig` binary connects out to a real mosquitto (Debian's, started
//! here on a free port) playing the fleet's broker; rumqttc clients on mosquitto play the fleet backend.
//! Skipped, saying so, when no mosquitto binary is installed (`apt-get install mosquitto`; `.ci/run` does).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use sprig_tests::device::{Device, Protocol};
use sprig_tests::{create_job, free_port, Gateway};

const PREFIX: &str = "sprig/site-7";

/// The mosquitto binary, if installed.
fn mosquitto_bin() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A mosquitto broker on a loopback port, anonymous, without persistence; killed when dropped.
struct Mosquitto {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    fn start(bin: PathBuf) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut broker = Mosquitto {
            bin,
            dir,
            port,
            child: None,
        };
        broker.spawn();
        broker
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts mosquitto (again, on the same port) and waits until it accepts connections.
    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n",
                self.port
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_err() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "mosquitto did not start; its log:\n{}",
                std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fleet backend on mosquitto: subscribed to everything under the gateway's prefix.
struct Fleet {
    client: AsyncClient,
    events: EventLoop,
    /// Messages received while waiting for another, oldest first: each is looked at by later waits.
    inbox: Vec<(String, Value)>,
}

impl Fleet {
    async fn connect(addr: SocketAddr, name: &str) -> Fleet {
        let mut options = MqttOptions::new(name, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, events) = AsyncClient::new(options, 64);
        client
            .subscribe(format!("{PREFIX}/#"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut fleet = Fleet {
            client,
            events,
            inbox: Vec::new(),
        };
        fleet.suback().await;
        fleet
    }

    /// Waits (30 s at most) for a message on `topic` whose JSON body satisfies `wanted` (one received
    /// earlier first); its body.
    async fn expect(&mut self, topic: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        self.message(topic, |t, body| t == topic && wanted(body))
            .await
            .1
    }

    /// The first message (received earlier, or within 30 s) that `wanted` accepts: (topic, body).
    async fn message(
        &mut self,
        awaited: &str,
        wanted: impl Fn(&str, &Value) -> bool,
    ) -> (String, Value) {
        if let Some(i) = self.inbox.iter().position(|(t, b)| wanted(t, b)) {
            return self.inbox.remove(i);
        }
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let event = self.events.poll().await.expect("connection to mosquitto");
                if let Event::Incoming(Packet::Publish(p)) = event {
                    let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if wanted(&p.topic, &body) {
                        return (p.topic, body);
                    }
                    self.inbox.push((p.topic, body));
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            let seen: Vec<String> = self.inbox.iter().map(|(t, b)| format!("{t} {b}")).collect();
            panic!(
                "{awaited} did not arrive at the fleet within 30 s; it got:\n{}",
                seen.join("\n")
            )
        })
    }

    /// Waits (30 s at most) for the SUBACK of its subscription.
    async fn suback(&mut self) {
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let event = self.events.poll().await.expect("connection to mosquitto");
                match event {
                    Event::Incoming(Packet::SubAck(_)) => return,
                    Event::Incoming(Packet::Publish(p)) => {
                        let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        self.inbox.push((p.topic, body));
                    }
                    _ => {}
                }
            }
        })
        .await;
        waited.expect("mosquitto acknowledged the fleet's subscription within 30 s");
    }

    /// Sends a control request through the uplink and waits for its reply: (accepted?, body).
    async fn request(&mut self, operation: &str, mut body: Value, token: &str) -> (bool, Value) {
        body["clientToken"] = json!(token);
        let topic = format!("{PREFIX}/control/{operation}");
        self.client
            .publish(&topic, QoS::AtLeastOnce, false, body.to_string())
            .await
            .unwrap();
        let (reply_topic, body) = self
            .message(&format!("{topic}/accepted|rejected"), |t, body| {
                t.starts_with(&format!("{topic}/")) && body["clientToken"] == token
            })
            .await;
        let accepted = reply_topic == format!("{topic}/accepted");
        assert!(
            accepted || reply_topic == format!("{topic}/rejected"),
            "{reply_topic}"
        );
        (accepted, body)
    }
}

fn uplink_config(port: u16) -> String {
    format!(
        "\n[uplink]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"site-7\"\nprefix = \"{PREFIX}\"\n\
         namespaces = [\"acme\"]\nstandard_jobs = false\nreconnect_max_s = 1\n"
    )
}

/// The mosquitto binary, or a loud skip: the test cannot run without a fleet broker.
fn mosquitto_or_skip(test: &str) -> Option<PathBuf> {
    let bin = mosquitto_bin();
    if bin.is_none() {
        eprintln!(
            "SKIPPED {test}: no mosquitto binary (/usr/sbin/mosquitto); install it with \
             `apt-get install mosquitto` (.ci/run does) to run the uplink's end-to-end tests"
        );
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_runs_jobs_through_the_uplink_and_hears_what_happens() {
    let Some(bin) =
        mosquitto_or_skip("the_fleet_runs_jobs_through_the_uplink_and_hears_what_happens")
    else {
        return;
    };
    let mut mosquitto = Mosquitto::start(bin);
    let mut fleet = Fleet::connect(mosquitto.addr(), "fleet-backend").await;
    let port = mosquitto.port;
    let mut gateway = Gateway::start_with(|config| config + &uplink_config(port));

    let status = fleet
        .expect(&format!("{PREFIX}/status"), |b| b["status"] == "online")
        .await;
    assert_eq!(status["clientId"], "site-7");

    // A device on the gateway, listening for its namespaced job.
    let mut device = Device::connect(gateway.addr, "t1", Protocol::V311).await;
    let notify = "$aws/things/t1/jobs/j1/notify-namespace-acme/";
    device.subscribe(&[notify]).await;
    let presence = fleet
        .expect(&format!("{PREFIX}/events/presence/connected/t1"), |_| true)
        .await;
    assert_eq!(presence["clientId"], "t1");

    // The fleet creates a namespaced job: accepted with its token, the device is told, events go up.
    let (accepted, reply) = fleet
        .request("CreateJob", create_job("j1", Some("acme"), &["t1"]), "c1")
        .await;
    assert!(accepted, "{reply}");
    assert_eq!(reply["jobId"], "j1");
    let told = device.expect_message(notify, Duration::from_secs(30)).await;
    assert_eq!(told["event"], "CREATED", "{told}");
    let job = fleet
        .expect(&format!("{PREFIX}/events/jobs/j1"), |b| {
            b["status"] == "IN_PROGRESS"
        })
        .await;
    assert_eq!(job["namespaceId"], "acme");
    let execution = fleet
        .expect(&format!("{PREFIX}/events/executions/j1/t1"), |_| true)
        .await;
    assert_eq!(
        (&execution["status"], &execution["versionNumber"]),
        (&json!("QUEUED"), &json!(1))
    );

    // Force-deleted from the fleet: the device is told, the job goes DELETION_IN_PROGRESS, then DELETED.
    let (accepted, reply) = fleet
        .request(
            "DeleteJob",
            json!({"jobId": "j1", "namespaceId": "acme", "force": true}),
            "c2",
        )
        .await;
    assert!(accepted, "{reply}");
    assert_eq!(reply, json!({"clientToken": "c2"}));
    let told = device.expect_message(notify, Duration::from_secs(30)).await;
    assert_eq!(told["event"], "DELETED", "{told}");
    let jobs = format!("{PREFIX}/events/jobs/j1");
    fleet
        .expect(&jobs, |b| b["status"] == "DELETION_IN_PROGRESS")
        .await;
    fleet.expect(&jobs, |b| b["status"] == "DELETED").await;

    // The fleet's grants are the configured ones: no standard jobs, no other namespace.
    let (accepted, reply) = fleet
        .request("CreateJob", create_job("j2", None, &["t1"]), "c3")
        .await;
    assert!(!accepted, "{reply}");
    assert_eq!(reply["clientToken"], "c3");
    let (accepted, reply) = fleet
        .request("ListJobs", json!({"namespaceId": "other"}), "c4")
        .await;
    assert!(!accepted, "{reply}");
    assert_eq!(reply["code"], "ResourceNotFoundException", "{reply}");

    // The fleet broker dies and comes back: the uplink reconnects and says online again (mosquitto kept
    // nothing: no persistence).
    mosquitto.kill();
    mosquitto.spawn();
    let mut fleet = Fleet::connect(mosquitto.addr(), "fleet-backend-2").await;
    fleet
        .expect(&format!("{PREFIX}/status"), |b| b["status"] == "online")
        .await;
    let (accepted, reply) = fleet
        .request("ListJobs", json!({"namespaceId": "acme"}), "c5")
        .await;
    assert!(accepted, "{reply}");
    assert!(
        !gateway
            .log_lines("uplink: lost the fleet broker")
            .is_empty(),
        "{}",
        gateway.log()
    );

    // A clean shutdown says offline; a gateway killed with -9 leaves it to the will.
    gateway.terminate();
    fleet
        .expect(&format!("{PREFIX}/status"), |b| b["status"] == "offline")
        .await;
    gateway.spawn();
    fleet
        .expect(&format!("{PREFIX}/status"), |b| b["status"] == "online")
        .await;
    gateway.kill9();
    fleet
        .expect(&format!("{PREFIX}/status"), |b| b["status"] == "offline")
        .await;
}
