//! The fleet uplink end to end: the real `sprig` binary connects out to a real mosquitto (Debian's, started
//! here on a free port) playing the fleet's broker, over plain MQTT or TLS with client certificates;
//! rumqttc clients on mosquitto play the fleet backend. Skipped, saying so, when no mosquitto binary is
//! installed (`apt-get install mosquitto`; `.ci/run` does).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use sprig_tests::certs::{self, Issued};
use sprig_tests::device::{Device, Protocol};
use sprig_tests::mosquitto::{self, Mosquitto};
use sprig_tests::{create_job, plugin_path, Gateway};

const PREFIX: &str = "sprig/site-7";

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

    /// Waits until everything mosquitto had for the fleet is in its inbox: it publishes a marker and waits
    /// for it to come back, after whatever was published before it (mosquitto delivers in order).
    async fn catch_up(&mut self, marker: &str) {
        let topic = format!("{PREFIX}/test-marker");
        self.client
            .publish(&topic, QoS::AtLeastOnce, false, json!(marker).to_string())
            .await
            .unwrap();
        self.expect(&topic, |body| body == marker).await;
    }

    /// Messages on `topic` received so far and not yet waited for.
    fn received(&self, topic: &str) -> Vec<&Value> {
        self.inbox
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, body)| body)
            .collect()
    }
}

/// `[uplink]` to the fleet broker at `url`, as site-7, granted the namespace acme only.
fn uplink_config(url: &str) -> String {
    format!(
        "\n[uplink]\nurl = \"{url}\"\nclient_id = \"site-7\"\nprefix = \"{PREFIX}\"\n\
         namespaces = [\"acme\"]\nstandard_jobs = false\nreconnect_max_s = 1\n"
    )
}

/// `[uplink]` keys for mutual TLS: the fleet broker's certificate must chain to `ca`, and the gateway
/// presents `identity`; the files are written into `dir`.
fn tls_keys(dir: &Path, ca: &Issued, identity: &Issued) -> String {
    let ca_file = dir.join("fleet-ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let (cert_file, key_file) = identity.write(dir, "site-7");
    format!("ca_file = {ca_file:?}\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\n")
}

/// A `[[recovery]]` route: the reset plugin (it records status details and answers RECOVERED) for
/// `reset-*`, in every namespace.
fn reset_route() -> String {
    let reset = plugin_path("sprig-plugin-reset");
    format!(
        "\n[[recovery]]\nthings = \"reset-*\"\nplugin = {reset:?}\n[recovery.config]\n\
         status_details = {{ state = \"reset\", job = \"{{jobId}}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_runs_jobs_through_the_uplink_and_hears_what_happens() {
    let Some(bin) =
        mosquitto::bin_or_skip("the_fleet_runs_jobs_through_the_uplink_and_hears_what_happens")
    else {
        return;
    };
    let mut mosquitto = Mosquitto::start(bin);
    let mut fleet = Fleet::connect(mosquitto.addr(), "fleet-backend").await;
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let mut gateway = Gateway::start_with(|config| config + &uplink_config(&url));

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

    // One execution removed on its own: its events topic says DELETED, and its job, left with nothing
    // pending, COMPLETED.
    let (accepted, reply) = fleet
        .request("CreateJob", create_job("j3", Some("acme"), &["t1"]), "c6")
        .await;
    assert!(accepted, "{reply}");
    let delete = json!({"jobId": "j3", "thingName": "t1", "executionNumber": 1, "force": true});
    let (accepted, reply) = fleet.request("DeleteJobExecution", delete, "c7").await;
    assert!(accepted, "{reply}");
    let removed = fleet
        .expect(&format!("{PREFIX}/events/executions/j3/t1"), |b| {
            b["status"] == "DELETED"
        })
        .await;
    assert_eq!(removed["versionNumber"], 1, "{removed}");
    fleet
        .expect(&format!("{PREFIX}/events/jobs/j3"), |b| {
            b["status"] == "COMPLETED"
        })
        .await;

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

/// Mutual TLS, as AWS IoT Core requires it: mosquitto's TLS listener lets in only clients with a
/// certificate its CA signed; the gateway trusts that CA through `ca_file` and presents its own
/// certificate (`cert_file`, `key_file`). It says online, and the fleet's control requests and the events
/// they cause travel over that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_logs_in_over_tls_with_its_client_certificate() {
    let Some(bin) =
        mosquitto::bin_or_skip("the_uplink_logs_in_over_tls_with_its_client_certificate")
    else {
        return;
    };
    let ca = certs::ca("fleet CA");
    let mosquitto = Mosquitto::start_tls(bin, &ca);
    let mut fleet = Fleet::connect(mosquitto.addr(), "fleet-backend").await;
    let files = tempfile::tempdir().unwrap();
    let keys = tls_keys(files.path(), &ca, &certs::client_cert(&ca, "site-7"));
    let url = mosquitto.tls_url();
    let gateway = Gateway::start_with(|config| config + &uplink_config(&url) + &keys);

    let status = fleet
        .expect(&format!("{PREFIX}/status"), |b| b["status"] == "online")
        .await;
    assert_eq!(status["clientId"], "site-7");
    let connected = gateway.log_lines("uplink: connected to the fleet broker");
    assert!(
        connected.iter().any(|line| line.contains(&url)),
        "{}",
        gateway.log()
    );

    let (accepted, reply) = fleet
        .request("CreateJob", create_job("j1", Some("acme"), &["t1"]), "c1")
        .await;
    assert!(accepted, "{reply}");
    fleet
        .expect(&format!("{PREFIX}/events/jobs/j1"), |b| {
            b["status"] == "IN_PROGRESS"
        })
        .await;
    let (accepted, reply) = fleet
        .request("ListJobs", json!({"namespaceId": "acme"}), "c2")
        .await;
    assert!(accepted, "{reply}");
    assert_eq!(reply["jobs"][0]["jobId"], "j1", "{reply}");
}

/// A gateway whose client certificate another CA signed is refused by the TLS handshake: the uplink logs
/// its failure to reach the fleet broker (and keeps trying), and the fleet never hears it say online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_certificate_the_fleet_broker_does_not_trust_is_refused() {
    let Some(bin) = mosquitto::bin_or_skip(
        "a_gateway_whose_certificate_the_fleet_broker_does_not_trust_is_refused",
    ) else {
        return;
    };
    let ca = certs::ca("fleet CA");
    let mosquitto = Mosquitto::start_tls(bin, &ca);
    let mut fleet = Fleet::connect(mosquitto.addr(), "fleet-backend").await;
    let files = tempfile::tempdir().unwrap();
    let rogue = certs::ca("rogue CA");
    let keys = tls_keys(files.path(), &ca, &certs::client_cert(&rogue, "site-7"));
    let url = mosquitto.tls_url();
    let gateway = Gateway::start_with(|config| config + &uplink_config(&url) + &keys);

    let failed = gateway.wait_for_log(
        "uplink: cannot reach the fleet broker",
        Duration::from_secs(30),
    );
    // The line says what to check: the broker resets a TLS connection whose certificate it refuses.
    assert!(
        failed.contains(&url) && failed.contains("cert_file"),
        "{failed}\nmosquitto's log:\n{}",
        mosquitto.log()
    );
    // Whatever the gateway's attempt published would have reached mosquitto before the marker.
    fleet.catch_up("after the refused attempt").await;
    assert_eq!(
        fleet.received(&format!("{PREFIX}/status")),
        Vec::<&Value>::new(),
        "{}",
        gateway.log()
    );
    assert!(
        gateway
            .log_lines("uplink: connected to the fleet broker")
            .is_empty(),
        "{}",
        gateway.log()
    );
}

/// A device's execution is IN_PROGRESS when the fleet force-deletes its job; its `[[recovery]]` route's
/// plugin (reset) brings it back, and the fleet hears the recovery end on
/// `{prefix}/events/recoveries/{recoveryId}`, the same recovery ListRecoveries shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_hears_a_recovery_end() {
    let Some(bin) = mosquitto::bin_or_skip("the_fleet_hears_a_recovery_end") else {
        return;
    };
    let mosquitto = Mosquitto::start(bin);
    let mut fleet = Fleet::connect(mosquitto.addr(), "fleet-backend").await;
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let gateway = Gateway::start_with(|config| config + &uplink_config(&url) + &reset_route());
    fleet
        .expect(&format!("{PREFIX}/status"), |b| b["status"] == "online")
        .await;

    let (accepted, reply) = fleet
        .request(
            "CreateJob",
            create_job("j1", Some("acme"), &["reset-1"]),
            "c1",
        )
        .await;
    assert!(accepted, "{reply}");
    // Recoveries run for devices that subscribed since they connected.
    let mut device = Device::connect(gateway.addr, "reset-1", Protocol::V311).await;
    device
        .subscribe(&["$aws/things/reset-1/jobs/j1/notify-namespace-acme/"])
        .await;
    // A namespaced job's execution is updated on its namespace's topic (CONTRACT).
    let (accepted, body) = device
        .request("j1/namespace-acme/update", json!({"status": "IN_PROGRESS"}))
        .await;
    assert!(accepted, "{body}");

    let (accepted, reply) = fleet
        .request(
            "DeleteJob",
            json!({"jobId": "j1", "namespaceId": "acme", "force": true}),
            "c2",
        )
        .await;
    assert!(accepted, "{reply}");
    let recoveries = format!("{PREFIX}/events/recoveries/");
    let (topic, ended) = fleet
        .message(&format!("{recoveries}+"), |t, _| t.starts_with(&recoveries))
        .await;
    let id = ended["recoveryId"].as_str().expect("a recoveryId");
    assert_eq!(topic, format!("{recoveries}{id}"));
    assert_eq!(
        (&ended["jobId"], &ended["thingName"], &ended["namespaceId"]),
        (&json!("j1"), &json!("reset-1"), &json!("acme")),
        "{ended}"
    );
    assert_eq!(
        (&ended["reason"], &ended["status"], &ended["attempts"]),
        (&json!("JOB_DELETED"), &json!("RECOVERED"), &json!(1)),
        "{ended}"
    );
    assert!(ended["timestamp"].is_i64(), "{ended}");

    let (accepted, listed) = fleet
        .request("ListRecoveries", json!({"thingName": "reset-1"}), "c3")
        .await;
    assert!(accepted, "{listed}");
    let recovery = &listed["recoveries"][0];
    assert_eq!(
        (&recovery["recoveryId"], &recovery["status"]),
        (&ended["recoveryId"], &ended["status"]),
        "{listed}"
    );
    // One event per recovery: none for its PENDING record before.
    fleet.catch_up("after the recovery").await;
    let more: Vec<_> = fleet
        .inbox
        .iter()
        .filter(|(t, _)| t.starts_with(&recoveries))
        .collect();
    assert!(more.is_empty(), "{more:?}");
}
