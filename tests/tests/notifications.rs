//! Job notifications end to end: real devices (rumqttc, client id = thing name, anonymous on loopback)
//! subscribe to their own `$aws/things/{thing}/jobs/...` topics and see what CreateJob, CancelJob and
//! DeleteJob tell them, on the right topics only.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde_json::{json, Value};
use sprig_tests::{create_job, Gateway, Operator};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);
/// Numbers the witness jobs (see [`Device::expect_nothing_before_a_witness`]).
static WITNESSES: AtomicUsize = AtomicUsize::new(0);

/// A device: its client and every publish it receives, as (topic, JSON body).
struct Device {
    name: String,
    client: AsyncClient,
    publishes: mpsc::UnboundedReceiver<(String, Value)>,
    subacks: mpsc::UnboundedReceiver<()>,
}

impl Device {
    async fn connect(addr: SocketAddr, name: &str) -> Device {
        let mut options = MqttOptions::new(name, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 64);
        let connected = tokio::time::timeout(WAIT, async {
            loop {
                if let Event::Incoming(Packet::ConnAck(ack)) = events.poll().await.unwrap() {
                    return ack;
                }
            }
        })
        .await
        .expect("CONNACK in time");
        assert_eq!(connected.code, rumqttc::ConnectReturnCode::Success);
        let (publish_tx, publishes) = mpsc::unbounded_channel();
        let (suback_tx, subacks) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        let body =
                            serde_json::from_slice(&p.payload).expect("notifications are JSON");
                        if publish_tx.send((p.topic, body)).is_err() {
                            return;
                        }
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = suback_tx.send(());
                    }
                    _ => {}
                }
            }
        });
        Device {
            name: name.to_owned(),
            client,
            publishes,
            subacks,
        }
    }

    /// Subscribes to `$aws/things/{name}/jobs/{suffix}` for each suffix and waits for the SUBACK.
    async fn subscribe(&mut self, suffixes: &[&str]) {
        let filters = suffixes.iter().map(|s| {
            SubscribeFilter::new(
                format!("$aws/things/{}/jobs/{s}", self.name),
                QoS::AtLeastOnce,
            )
        });
        self.client.subscribe_many(filters).await.unwrap();
        tokio::time::timeout(WAIT, self.subacks.recv())
            .await
            .expect("SUBACK in time")
            .expect("connected");
    }

    /// The next publish, within `within`.
    async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(within, self.publishes.recv())
            .await
            .ok()
            .flatten()
    }

    /// The topic relative to this device's jobs prefix: `$aws/things/d1/jobs/notify` -> `notify`.
    fn short<'a>(&self, topic: &'a str) -> &'a str {
        let prefix = format!("$aws/things/{}/jobs/", self.name);
        topic.strip_prefix(&prefix).unwrap_or(topic)
    }

    /// Receives exactly the messages on `suffixes` (any order); anything else that arrives first fails.
    async fn expect_exactly(&mut self, suffixes: &[&str]) -> Vec<Value> {
        let mut bodies: Vec<Option<Value>> = vec![None; suffixes.len()];
        while bodies.iter().any(Option::is_none) {
            let Some((topic, body)) = self.next(WAIT).await else {
                panic!("{}: expected {suffixes:?}, got {bodies:?} only", self.name);
            };
            let short = self.short(&topic).to_owned();
            let slot = suffixes
                .iter()
                .position(|s| *s == short)
                .filter(|&i| bodies[i].is_none())
                .unwrap_or_else(|| panic!("{}: unexpected {short}: {body}", self.name));
            bodies[slot] = Some(body);
        }
        bodies.into_iter().map(Option::unwrap).collect()
    }

    /// Checks that nothing more is on its way to this device from what happened so far, without waiting
    /// for a quiet spell: a witness job, created now for this device alone in `namespace`, must be the
    /// next thing it is told, on `suffixes` (`{job}` stands for the witness's id). The notifier handles
    /// the engine's events one at a time, in order, and a device's messages reach its connection in the
    /// order they were queued, so a message still due from an earlier event would come first.
    async fn expect_nothing_before_a_witness(
        &mut self,
        op: &mut Operator,
        namespace: Option<&str>,
        suffixes: &[&str],
    ) {
        let n = WITNESSES.fetch_add(1, Ordering::Relaxed);
        let witness = format!("witness-{}-{n}", self.name);
        op.request("CreateJob", create_job(&witness, namespace, &[&self.name]))
            .await
            .unwrap();
        let suffixes: Vec<String> = suffixes
            .iter()
            .map(|s| s.replace("{job}", &witness))
            .collect();
        let suffixes: Vec<&str> = suffixes.iter().map(String::as_str).collect();
        self.expect_exactly(&suffixes).await;
    }
}

fn assert_timestamp(body: &Value) {
    assert!(
        body["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000),
        "{body}"
    );
}

/// Checks a job's own namespace notification.
fn assert_job_event(body: &Value, job_id: &str, event: &str, pending: bool) {
    assert_timestamp(body);
    assert_eq!(body["jobId"], job_id, "{body}");
    assert_eq!(body["event"], event, "{body}");
    match pending {
        true => assert_eq!(body["execution"]["jobId"], job_id, "{body}"),
        false => assert!(body.get("execution").is_none(), "{body}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaced_jobs_are_notified_on_their_namespace_topics_only() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let mut devices = Vec::new();
    for name in ["d1", "d2", "d3"] {
        let mut device = Device::connect(gateway.addr, name).await;
        // Everything under the device's jobs topics: the plain ones and every namespace's.
        device.subscribe(&["#"]).await;
        devices.push(device);
    }
    let acme_job = "j1/notify-namespace-acme/";
    let acme_next = "notify-next-namespace-acme";

    // CreateJob: d1 and d2 are told on acme's topics; d3, not targeted, hears nothing.
    op.request("CreateJob", create_job("j1", Some("acme"), &["d1", "d2"]))
        .await
        .unwrap();
    for device in &mut devices[..2] {
        let bodies = device.expect_exactly(&[acme_job, acme_next]).await;
        assert_job_event(&bodies[0], "j1", "CREATED", true);
        assert_eq!(bodies[0]["execution"]["status"], "QUEUED");
        assert_eq!(bodies[0]["jobs"]["QUEUED"][0]["jobId"], "j1");
        assert_timestamp(&bodies[1]);
        let execution = &bodies[1]["execution"];
        assert_eq!(execution["jobId"], "j1");
        assert_eq!(execution["thingName"], device.name);
        assert_eq!(execution["status"], "QUEUED");
        assert_eq!(execution["jobDocument"], json!({"action": "update"}));
    }
    // d3's next message is its own witness job's: nothing of j1's came before it.
    devices[2]
        .expect_nothing_before_a_witness(&mut op, Some("w1"), WITNESS_TOPICS_W1)
        .await;

    // CancelJob: CANCELED, and nothing is next any more.
    op.request("CancelJob", json!({"jobId": "j1"}))
        .await
        .unwrap();
    for device in &mut devices[..2] {
        let bodies = device.expect_exactly(&[acme_job, acme_next]).await;
        assert_job_event(&bodies[0], "j1", "CANCELED", false);
        assert_eq!(bodies[0]["jobs"], json!({}));
        assert!(bodies[1].get("execution").is_none(), "{}", bodies[1]);
    }

    // A second namespaced job, force-deleted while pending: DELETED to its targets.
    op.request("CreateJob", create_job("j2", Some("acme"), &["d1", "d3"]))
        .await
        .unwrap();
    let (j2_job, j2_targets) = ("j2/notify-namespace-acme/", [0, 2]);
    for i in j2_targets {
        let bodies = devices[i].expect_exactly(&[j2_job, acme_next]).await;
        assert_job_event(&bodies[0], "j2", "CREATED", true);
    }
    let delete = json!({"jobId": "j2", "force": true, "namespaceId": "acme"});
    op.request("DeleteJob", delete).await.unwrap();
    for i in j2_targets {
        let bodies = devices[i].expect_exactly(&[j2_job, acme_next]).await;
        assert_job_event(&bodies[0], "j2", "DELETED", false);
        assert!(bodies[1].get("execution").is_none(), "{}", bodies[1]);
    }
    // Nothing more for anyone: each device's next message is its own witness job's.
    for device in &mut devices {
        device
            .expect_nothing_before_a_witness(&mut op, Some("w2"), WITNESS_TOPICS_W2)
            .await;
    }
}

/// What a device subscribed to `#` under its jobs topics is told of a witness job in namespace w1 / w2.
const WITNESS_TOPICS_W1: &[&str] = &["{job}/notify-namespace-w1/", "notify-next-namespace-w1"];
const WITNESS_TOPICS_W2: &[&str] = &["{job}/notify-namespace-w2/", "notify-next-namespace-w2"];

#[tokio::test(flavor = "multi_thread")]
async fn standard_jobs_are_notified_on_notify_and_notify_next() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let mut d1 = Device::connect(gateway.addr, "d1").await;
    d1.subscribe(&["notify", "notify-next", "notify-next-namespace-acme"])
        .await;
    // Subscribing changes no job: nothing is sent (as AWS IoT does). The witness, acme's only job, is
    // next on acme's notify-next.
    d1.expect_nothing_before_a_witness(&mut op, Some("acme"), &["notify-next-namespace-acme"])
        .await;

    op.request("CreateJob", create_job("s1", None, &["d1"]))
        .await
        .unwrap();
    let bodies = d1.expect_exactly(&["notify", "notify-next"]).await;
    assert_timestamp(&bodies[0]);
    let queued = &bodies[0]["jobs"]["QUEUED"];
    assert_eq!(queued.as_array().unwrap().len(), 1, "{}", bodies[0]);
    assert_eq!(queued[0]["jobId"], "s1");
    assert_eq!(queued[0]["executionNumber"], 1);
    assert!(bodies[0]["jobs"].get("IN_PROGRESS").is_none());
    assert_eq!(bodies[1]["execution"]["jobId"], "s1");

    // A second job queues behind the first: the list changed, the next did not.
    op.request("CreateJob", create_job("s2", None, &["d1"]))
        .await
        .unwrap();
    let bodies = d1.expect_exactly(&["notify"]).await;
    let ids: Vec<&str> = bodies[0]["jobs"]["QUEUED"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s1", "s2"]);
    // A standard witness queues behind them: the list changes, the next (s1) does not.
    d1.expect_nothing_before_a_witness(&mut op, None, &["notify"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_update_is_notified_as_in_progress() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let mut d1 = Device::connect(gateway.addr, "d1").await;
    d1.subscribe(&["notify"]).await;
    op.request("CreateJob", create_job("s1", None, &["d1"]))
        .await
        .unwrap();
    d1.expect_exactly(&["notify"]).await;
    d1.client
        .publish(
            "$aws/things/d1/jobs/s1/update",
            QoS::AtLeastOnce,
            false,
            r#"{"status":"IN_PROGRESS"}"#,
        )
        .await
        .unwrap();
    let bodies = d1.expect_exactly(&["notify"]).await;
    assert_eq!(bodies[0]["jobs"]["IN_PROGRESS"][0]["jobId"], "s1");
    assert!(bodies[0]["jobs"].get("QUEUED").is_none());
    d1.expect_nothing_before_a_witness(&mut op, None, &["notify"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_job_for_200_devices_notifies_every_one() {
    const DEVICES: usize = 200;
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let names: Vec<String> = (0..DEVICES).map(|i| format!("fan-{i}")).collect();
    let mut devices = Vec::new();
    for name in &names {
        let mut device = Device::connect(gateway.addr, name).await;
        device.subscribe(&["+/notify-namespace-acme/"]).await;
        devices.push(device);
    }
    let targets: Vec<&str> = names.iter().map(String::as_str).collect();
    let started = Instant::now();
    op.request("CreateJob", create_job("fan", Some("acme"), &targets))
        .await
        .unwrap();
    let deadline = started + Duration::from_secs(5);
    let mut notified = HashSet::new();
    for device in &mut devices {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some((topic, body)) = device.next(left).await {
            assert_eq!(
                topic,
                format!(
                    "$aws/things/{}/jobs/fan/notify-namespace-acme/",
                    device.name
                )
            );
            assert_job_event(&body, "fan", "CREATED", true);
            notified.insert(device.name.clone());
        }
    }
    let elapsed = started.elapsed();
    let missing: Vec<&String> = names.iter().filter(|n| !notified.contains(*n)).collect();
    assert!(missing.is_empty(), "not notified within 5 s: {missing:?}");
    eprintln!("{DEVICES} devices notified within {elapsed:?} of CreateJob");
}
