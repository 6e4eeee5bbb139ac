//! The uplink's bridged topics and its durable spool end to end: the real `sprig` binary bridges
//! `[[uplink.topics]]` to a real mosquitto (Debian's, started here) playing the fleet's broker; devices
//! and the fleet are rumqttc clients. Skipped, saying so, when no mosquitto is installed.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use sprig_tests::device::{Device, Protocol};
use sprig_tests::mosquitto::{self, Mosquitto};
use sprig_tests::{with_setting, Gateway};
use tokio::sync::watch;

/// The uplink on `port`, bridging telemetry out and commands in, and the topic rules that let devices
/// use those topics; no publish quota (the spool test sends 10,000 messages from one device).
fn bridge_config(config: String, port: u16) -> String {
    let config = with_setting(
        &config,
        "max_publishes_per_second = 100",
        "max_publishes_per_second = 0",
    );
    config
        + &format!(
            "\n[uplink]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"site-7\"\n\
             prefix = \"sprig/site-7\"\nreconnect_max_s = 1\n\n\
             [[uplink.topics]]\npattern = \"dt/#\"\ndirection = \"out\"\nremote_prefix = \"sites/site-7/\"\n\n\
             [[uplink.topics]]\npattern = \"cmd/#\"\ndirection = \"in\"\nremote_prefix = \"sites/site-7/\"\n\n\
             [[uplink.topics]]\npattern = \"broadcast\"\ndirection = \"in\"\nlocal_prefix = \"fleet/\"\n\
             remote_prefix = \"all/\"\n\n\
             [[auth.topic_rules]]\nthings = [\"*\"]\npublish = [\"dt/${{thing}}/#\"]\n\
             subscribe = [\"cmd/${{thing}}/#\", \"fleet/broadcast\"]\n"
        )
}

/// A client on the fleet broker, subscribed to `filters`; returns once mosquitto acknowledged them.
async fn fleet_client(addr: SocketAddr, id: &str, filters: &[&str]) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 64);
    for filter in filters {
        client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
    }
    let mut acked = 0;
    while acked < filters.len() {
        if let Event::Incoming(Packet::SubAck(_)) = poll(&mut events).await {
            acked += 1;
        }
    }
    (client, events)
}

/// The next event (30 s at most).
async fn poll(events: &mut EventLoop) -> Event {
    tokio::time::timeout(Duration::from_secs(30), events.poll())
        .await
        .expect("an event from mosquitto within 30 s")
        .expect("connection to mosquitto")
}

/// The next message on the fleet broker: (topic, payload).
async fn next_message(events: &mut EventLoop) -> (String, Vec<u8>) {
    loop {
        if let Event::Incoming(Packet::Publish(p)) = poll(events).await {
            return (p.topic, p.payload.to_vec());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_topics_flow_out_and_in_with_their_prefixes() {
    let Some(bin) = mosquitto::bin_or_skip("bridged_topics_flow_out_and_in_with_their_prefixes")
    else {
        return;
    };
    let mosquitto = Mosquitto::start(bin);
    let status = "sprig/site-7/status";
    let (fleet, mut fleet_events) =
        fleet_client(mosquitto.addr(), "fleet", &["sites/site-7/dt/#", status]).await;
    let port = mosquitto.port;
    let gateway = Gateway::start_with(|config| bridge_config(config, port));
    // Online is said after the uplink subscribed to its `in` topics (one connection, in order).
    loop {
        let (topic, body) = next_message(&mut fleet_events).await;
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        if topic == status && body["status"] == "online" {
            break;
        }
    }

    let mut device = Device::connect(gateway.addr, "t1", Protocol::V311).await;
    device.subscribe(&["cmd/t1/#", "fleet/broadcast"]).await;

    // Out: dt/t1/temp goes up as sites/site-7/dt/t1/temp.
    device.publish("dt/t1/temp", r#"{"c":21.5}"#).await;
    let (topic, payload) = next_message(&mut fleet_events).await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("sites/site-7/dt/t1/temp", &br#"{"c":21.5}"#[..])
    );

    // In: the fleet's sites/site-7/cmd/t1/reboot reaches the device as cmd/t1/reboot, and all/broadcast
    // as fleet/broadcast (the local prefix).
    let reboot = json!({"at": "now"}).to_string();
    fleet
        .publish(
            "sites/site-7/cmd/t1/reboot",
            QoS::AtLeastOnce,
            false,
            reboot,
        )
        .await
        .unwrap();
    fleet
        .publish("all/broadcast", QoS::AtLeastOnce, false, r#"{"hello":1}"#)
        .await
        .unwrap();
    // The fleet's client is polled meanwhile, so that its publishes go out.
    let fleet_polling = tokio::spawn(async move { while fleet_events.poll().await.is_ok() {} });
    let cmd = device
        .expect_message("cmd/t1/reboot", Duration::from_secs(30))
        .await;
    let broadcast = device
        .expect_message("fleet/broadcast", Duration::from_secs(30))
        .await;
    fleet_polling.abort();
    let got = (cmd, broadcast);
    assert_eq!(got, (json!({"at": "now"}), json!({"hello": 1})));
    drop(gateway);
}

/// What the fleet's sink received: per topic, the message numbers in arrival order.
#[derive(Default)]
struct Received {
    by_topic: BTreeMap<String, Vec<u32>>,
    distinct: HashSet<u32>,
}

/// Receives everything under `sites/site-7/dt/` on a persistent session (mosquitto keeps its queue while
/// it is stopped and the sink is away), reconnecting as the broker comes and goes.
fn spawn_sink(addr: SocketAddr, received: Arc<Mutex<Received>>, count: watch::Sender<usize>) {
    tokio::spawn(async move {
        let mut options = MqttOptions::new("fleet-sink", addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(false);
        let (client, mut events) = AsyncClient::new(options, 64);
        client
            .subscribe("sites/site-7/dt/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let n: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                    let mut received = received.lock().unwrap();
                    received.by_topic.entry(p.topic).or_default().push(n);
                    received.distinct.insert(n);
                    count.send_replace(received.distinct.len());
                }
                Ok(_) => {}
                // The broker is down: try again shortly (rumqttc reconnects on the next poll).
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
}

/// A device publishing `total` QoS 1 messages, numbered, round-robin on four topics; it reconnects (and
/// rumqttc resends what was not acknowledged) when the gateway restarts. Counts the PUBACKs.
fn spawn_publisher(addr: SocketAddr, total: u32, acked: watch::Sender<usize>) {
    tokio::spawn(async move {
        let mut options = MqttOptions::new("t1", addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 256);
        tokio::spawn(async move {
            for n in 0..total {
                let topic = format!("dt/t1/{}", n % 4);
                client
                    .publish(topic, QoS::AtLeastOnce, false, n.to_string())
                    .await
                    .unwrap();
            }
        });
        let mut count = 0;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    count += 1;
                    acked.send_replace(count);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
}

/// Waits for `event`, `secs` seconds at most.
async fn within<T>(secs: u64, what: &str, event: impl std::future::Future<Output = T>) {
    if tokio::time::timeout(Duration::from_secs(secs), event)
        .await
        .is_err()
    {
        panic!("no {what} within {secs} s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_fleet_broker_dies_and_the_gateway_is_killed_mid_stream() {
    let test = "nothing_is_lost_when_the_fleet_broker_dies_and_the_gateway_is_killed_mid_stream";
    let Some(bin) = mosquitto::bin_or_skip(test) else {
        return;
    };
    const TOTAL: u32 = 10_000;
    let mut mosquitto = Mosquitto::start_persistent(bin);
    let received = Arc::new(Mutex::new(Received::default()));
    let (count_tx, mut delivered) = watch::channel(0);
    spawn_sink(mosquitto.addr(), received.clone(), count_tx);
    let port = mosquitto.port;
    let mut gateway = Gateway::start_with(|config| bridge_config(config, port));

    let (acked_tx, mut acked) = watch::channel(0);
    spawn_publisher(gateway.addr, TOTAL, acked_tx);

    // The fleet broker goes away after the first thousand arrived...
    let first = delivered.wait_for(|n| *n >= 1_000);
    within(60, "1,000 messages at the fleet", first).await;
    mosquitto.stop();
    // ... the device goes on publishing into the spool, and the gateway is killed in the middle.
    let acked_before = *acked.borrow();
    let middle = acked.wait_for(|n| *n >= acked_before + 3_000);
    within(60, "3,000 more PUBACKs while the fleet is down", middle).await;
    gateway.kill9();
    gateway.spawn();
    mosquitto.spawn();

    // Every one of the 10,000 reaches the fleet.
    let all = delivered.wait_for(|n| *n >= TOTAL as usize);
    if tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .is_err()
    {
        let received = received.lock().unwrap();
        let missing: Vec<u32> = (0..TOTAL)
            .filter(|n| !received.distinct.contains(n))
            .take(20)
            .collect();
        panic!(
            "the fleet got {} of {TOTAL} within 120 s; first missing: {missing:?}\nsprig's log:\n{}",
            received.distinct.len(),
            gateway.log_lines("uplink").join("\n")
        );
    }
    let received = received.lock().unwrap();
    let mut duplicates = 0;
    for (topic, numbers) in &received.by_topic {
        // In order per topic: each number's first arrival comes after the previous number's.
        let mut seen = HashSet::new();
        let firsts: Vec<u32> = numbers
            .iter()
            .copied()
            .filter(|n| seen.insert(*n))
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "{topic}: out of order: {:?}",
            firsts.windows(2).find(|w| w[0] >= w[1])
        );
        duplicates += numbers.len() - firsts.len();
    }
    assert_eq!(received.distinct.len(), TOTAL as usize);
    eprintln!(
        "the fleet received all {TOTAL} messages, {duplicates} duplicates (resent from the spool's \
         window in flight, or by the device after the gateway was killed)"
    );
    assert!(
        duplicates < 1_000,
        "{duplicates} duplicates: more than the windows in flight can explain"
    );
}
