//! Topic rules (`[[auth.topic_rules]]`) end to end: devices and operators exchanging ordinary MQTT traffic
//! through the real gateway's router on the topics the config grants them, and nothing else.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use rumqttc::v5;
use serde_json::{json, Value};
use sprig_tests::device::{Device, Login, Protocol, Qos};
use sprig_tests::raw::{packet, put_str, read_packet};
use sprig_tests::{config_for, hash_password, run_refusing, Gateway};

/// How long a message that should arrive may take.
const ARRIVES_WITHIN: Duration = Duration::from_secs(10);

/// Every device sends its own telemetry and hears its own commands; monitors read everyone's telemetry;
/// pumps share a status channel; the local operator commands any device and reads all telemetry.
const RULES: &str = r#"
[[auth.topic_rules]]
publish = ["dt/${thing}/#"]
subscribe = ["cmd/${thing}/#", "dt/${thing}/#", "fleet/broadcast"]

[[auth.topic_rules]]
things = ["monitor-*"]
subscribe = ["dt/#"]

[[auth.topic_rules]]
things = ["pump-*"]
publish = ["pumps/${thing}/status"]
subscribe = ["pumps/#"]

[[auth.topic_rules]]
things = []
operators = ["sprig-local"]
publish = ["cmd/+/#", "fleet/broadcast"]
subscribe = ["dt/#", "ops/${client_id}/#", "ops/${thing}/#"]
"#;

fn gateway_with_rules() -> Gateway {
    Gateway::start_with(|config| config + RULES)
}

/// Asserts that nothing matching `filter` was received and not yet taken, without waiting: the test has
/// already seen a message arrive that was sent after the one it rules out, so that one would be here.
async fn nothing_else_on(device: &mut Device, filter: &str) {
    device.expect_no_message(filter, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_granted_publish_reaches_a_device_subscribed_to_a_granted_filter() {
    let gateway = gateway_with_rules();
    let pairs = [
        (Protocol::V311, Protocol::V311),
        (Protocol::V5, Protocol::V5),
        (Protocol::V311, Protocol::V5),
        (Protocol::V5, Protocol::V311),
    ];
    for (i, (sending, receiving)) in pairs.into_iter().enumerate() {
        let mut monitor = Device::connect(gateway.addr, &format!("monitor-{i}"), receiving).await;
        assert_eq!(monitor.subscribe(&["dt/+/#"]).await, [1]);
        let sensor = Device::connect(gateway.addr, &format!("sensor-{i}"), sending).await;
        let topic = format!("dt/sensor-{i}/temperature");
        for qos in [Qos::AtMostOnce, Qos::AtLeastOnce] {
            let reading = json!({"celsius": 21.5, "qos": format!("{qos:?}")});
            sensor.publish_with(qos, &topic, reading.to_string()).await;
            let received = monitor.expect_message(&topic, ARRIVES_WITHIN).await;
            assert_eq!(received, reading, "{sending:?} -> {receiving:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_may_subscribe_to_its_own_telemetry_but_not_to_everyones() {
    let gateway = gateway_with_rules();
    // `dt/+/#` is not within `dt/${thing}/#`; the device's own filters are, in the same SUBSCRIBE.
    let filters = |thing: &str| {
        [
            "dt/+/#".to_owned(),
            format!("dt/{thing}/#"),
            "dt/#".to_owned(),
            "#".to_owned(),
        ]
    };

    let mut meter = Device::connect(gateway.addr, "meter-1", Protocol::V311).await;
    let asked = filters("meter-1");
    let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
    assert_eq!(meter.subscribe(&asked).await, [0x80, 1, 0x80, 0x80]);
    // The granted filter works: the device hears its own telemetry back.
    meter.publish("dt/meter-1/power", "{\"watts\": 40}").await;
    assert_eq!(
        meter
            .expect_message("dt/meter-1/power", ARRIVES_WITHIN)
            .await,
        json!({"watts": 40})
    );

    // MQTT 5 over a raw socket: rumqttc's MQTT 5 client ends its connection on a SUBACK refusing anything.
    let addr = gateway.addr;
    tokio::task::spawn_blocking(move || {
        let mut meter = RawV5::connect(addr, "meter-2");
        assert_eq!(meter.subscribe(&filters("meter-2")), [0x87, 0, 0x87, 0x87]);
        meter.publish_qos0("dt/meter-2/power", b"45");
        assert_eq!(
            meter.next_publish(),
            ("dt/meter-2/power".to_owned(), b"45".to_vec())
        );
    })
    .await
    .unwrap();
}

/// A minimal MQTT 5 client on a blocking socket, for what rumqttc's MQTT 5 client does not show.
struct RawV5 {
    stream: TcpStream,
}

impl RawV5 {
    fn connect(addr: std::net::SocketAddr, client_id: &str) -> RawV5 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(ARRIVES_WITHIN)).unwrap();
        // "MQTT", level 5, clean start, keep-alive 30 s, no properties; then the client id.
        let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0];
        put_str(&mut connect, client_id.as_bytes());
        stream.write_all(&packet(0x10, &connect)).unwrap();
        let (header, body) = read_packet(&mut stream);
        assert_eq!((header, body[1]), (0x20, 0), "CONNACK, success");
        RawV5 { stream }
    }

    /// Subscribes to `filters` at QoS 0 (packet id 1); the SUBACK's reason codes.
    fn subscribe(&mut self, filters: &[String]) -> Vec<u8> {
        let mut subscribe = vec![0, 1, 0];
        for filter in filters {
            put_str(&mut subscribe, filter.as_bytes());
            subscribe.push(0x00);
        }
        self.stream.write_all(&packet(0x82, &subscribe)).unwrap();
        let (header, body) = read_packet(&mut self.stream);
        assert_eq!((header, &body[..2]), (0x90, &[0u8, 1][..]), "SUBACK");
        let properties = usize::from(body[2]);
        body[3 + properties..].to_vec()
    }

    fn publish_qos0(&mut self, topic: &str, payload: &[u8]) {
        let mut publish = Vec::new();
        put_str(&mut publish, topic.as_bytes());
        publish.push(0); // no properties
        publish.extend_from_slice(payload);
        self.stream.write_all(&packet(0x30, &publish)).unwrap();
    }

    /// The next PUBLISH (QoS 0): its topic and payload.
    fn next_publish(&mut self) -> (String, Vec<u8>) {
        let (header, body) = read_packet(&mut self.stream);
        assert_eq!(header & 0xF6, 0x30, "a QoS 0 PUBLISH");
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).unwrap();
        let properties = usize::from(body[2 + topic_len]);
        (topic, body[3 + topic_len + properties..].to_vec())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_outside_the_rules_is_dropped_and_logged_and_the_connection_kept() {
    let gateway = gateway_with_rules();
    let mut monitor = Device::connect(gateway.addr, "monitor-1", Protocol::V5).await;
    assert_eq!(monitor.subscribe(&["dt/#"]).await, [1]);
    // (Over MQTT 5 only QoS 0 here: rumqttc ends the connection on a refused QoS 1 publish, see below.)
    let senders = [
        ("sensor-a", Protocol::V311, Qos::AtLeastOnce),
        ("sensor-b", Protocol::V311, Qos::AtMostOnce),
        ("sensor-c", Protocol::V5, Qos::AtMostOnce),
    ];
    for (thing, protocol, qos) in senders {
        let sensor = Device::connect(gateway.addr, thing, protocol).await;
        let spoofed = format!("dt/valve-1/{thing}");
        sensor.publish_with(qos, &spoofed, "\"spoofed\"").await;
        // The next message on the same connection arrives; had the spoofed one been routed, it would have
        // arrived first.
        let own = format!("dt/{thing}/temperature");
        sensor.publish_with(qos, &own, "\"genuine\"").await;
        assert_eq!(
            monitor.expect_message(&own, ARRIVES_WITHIN).await,
            json!("genuine")
        );
        nothing_else_on(&mut monitor, "dt/#").await;
        let denied = gateway.log_lines("publish denied");
        assert!(
            denied
                .iter()
                .any(|l| l.contains(thing) && l.contains(&spoofed)),
            "{denied:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt5_qos1_publish_outside_the_rules_gets_puback_not_authorized() {
    use v5::mqttbytes::v5::{Packet, PubAckReason};
    use v5::mqttbytes::QoS;

    let gateway = gateway_with_rules();
    let options = v5::MqttOptions::new("sensor-5", "127.0.0.1", gateway.addr.port());
    let (client, mut events) = v5::AsyncClient::new(options, 16);
    loop {
        if let v5::Event::Incoming(Packet::ConnAck(_)) =
            next_v5(&mut events).await.expect("connects")
        {
            break;
        }
    }

    client
        .publish("dt/sensor-5/temperature", QoS::AtLeastOnce, false, "21")
        .await
        .unwrap();
    let granted = loop {
        if let v5::Event::Incoming(Packet::PubAck(ack)) =
            next_v5(&mut events).await.expect("granted")
        {
            break ack;
        }
    };
    assert!(
        matches!(
            granted.reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ),
        "{granted:?}"
    );

    client
        .publish("dt/valve-1/temperature", QoS::AtLeastOnce, false, "99")
        .await
        .unwrap();
    // rumqttc reports a PUBACK with a failure reason as an error of the event loop.
    let refusal = loop {
        match next_v5(&mut events).await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            refusal,
            v5::ConnectionError::MqttState(v5::StateError::PubAckFail {
                reason: PubAckReason::NotAuthorized
            })
        ),
        "{refusal:?}"
    );
}

/// The next event of an MQTT 5 client's event loop, within [`ARRIVES_WITHIN`].
async fn next_v5(events: &mut v5::EventLoop) -> Result<v5::Event, v5::ConnectionError> {
    tokio::time::timeout(ARRIVES_WITHIN, events.poll())
        .await
        .expect("an event within 10 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn only_operators_named_in_a_rule_may_use_it() {
    let hash = hash_password("other-secret");
    let gateway = Gateway::start_with(|config| {
        config
            + RULES
            + &format!(
                "\n[[auth.operators]]\nusername = \"other-ops\"\npassword_hash = \"{hash}\"\n\
                 namespaces = [\"*\"]\n"
            )
    });
    let operator = |client_id: &str, (username, password): (String, String)| {
        Login::anonymous(client_id, Protocol::V311).with_credentials(&username, &password)
    };
    let mut local =
        Device::connect_with(gateway.addr, operator("dash-1", gateway.local_credential()))
            .await
            .expect("the local operator connects");
    let mut other = Device::connect_with(
        gateway.addr,
        operator("dash-2", ("other-ops".into(), "other-secret".into())),
    )
    .await
    .expect("the other operator connects");

    // `ops/${thing}/#` never applies to an operator: it has no thing.
    assert_eq!(
        local
            .subscribe(&["dt/#", "ops/dash-1/#", "ops/sprig-local/#"])
            .await,
        [1, 1, 0x80]
    );
    assert_eq!(
        other.subscribe(&["dt/#", "ops/dash-2/#"]).await,
        [0x80, 0x80]
    );

    // The named operator commands a device and reads its telemetry.
    let mut pump = Device::connect(gateway.addr, "pump-1", Protocol::V5).await;
    assert_eq!(pump.subscribe(&["cmd/pump-1/#"]).await, [1]);
    local.publish("cmd/pump-1/speed", "{\"rpm\": 900}").await;
    assert_eq!(
        pump.expect_message("cmd/pump-1/speed", ARRIVES_WITHIN)
            .await,
        json!({"rpm": 900})
    );
    pump.publish("dt/pump-1/speed", "{\"rpm\": 880}").await;
    assert_eq!(
        local
            .expect_message("dt/pump-1/speed", ARRIVES_WITHIN)
            .await,
        json!({"rpm": 880})
    );

    // The other one may not: its command is dropped (logged before its next packet is answered).
    other.publish("cmd/pump-1/speed", "{\"rpm\": 0}").await;
    assert_eq!(other.subscribe(&["fleet/broadcast"]).await, [0x80]);
    let denied = gateway.log_lines("publish denied");
    assert!(
        denied
            .iter()
            .any(|l| l.contains("dash-2") && l.contains("cmd/pump-1/speed")),
        "{denied:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_for_pump_things_applies_to_pumps_and_not_to_valves() {
    let gateway = gateway_with_rules();
    let mut pump_1 = Device::connect(gateway.addr, "pump-1", Protocol::V311).await;
    let pump_2 = Device::connect(gateway.addr, "pump-2", Protocol::V5).await;
    let mut valve = Device::connect(gateway.addr, "valve-1", Protocol::V311).await;
    assert_eq!(pump_1.subscribe(&["pumps/#"]).await, [1]);

    valve.publish("pumps/valve-1/status", "\"open\"").await;
    // A connection's packets are handled in order: once this SUBACK is here, the publish was refused and
    // logged (had it been let through, it would have reached the router before pump-2's below).
    assert_eq!(valve.subscribe(&["pumps/#"]).await, [0x80]);
    let denied = gateway.log_lines("publish denied");
    assert!(
        denied
            .iter()
            .any(|l| l.contains("valve-1") && l.contains("pumps/valve-1/status")),
        "{denied:?}"
    );

    pump_2.publish("pumps/pump-2/status", "\"running\"").await;
    assert_eq!(
        pump_1
            .expect_message("pumps/pump-2/status", ARRIVES_WITHIN)
            .await,
        json!("running")
    );
    nothing_else_on(&mut pump_1, "pumps/valve-1/#").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_last_will_on_a_granted_topic_is_delivered() {
    let gateway = gateway_with_rules();
    let mut monitor = Device::connect(gateway.addr, "monitor-1", Protocol::V311).await;
    assert_eq!(monitor.subscribe(&["dt/+/status"]).await, [1]);

    let mut options = rumqttc::MqttOptions::new("sensor-w", "127.0.0.1", gateway.addr.port());
    options.set_last_will(rumqttc::LastWill::new(
        "dt/sensor-w/status",
        "\"offline\"",
        rumqttc::QoS::AtMostOnce,
        false,
    ));
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 4);
    loop {
        let event = tokio::time::timeout(ARRIVES_WITHIN, events.poll())
            .await
            .expect("CONNACK within 10 s")
            .expect("connects");
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) = event {
            break;
        }
    }
    // Gone without DISCONNECT: the gateway publishes the will.
    drop(events);
    let will: Value = monitor
        .expect_message("dt/sensor-w/status", ARRIVES_WITHIN)
        .await;
    assert_eq!(will, json!("offline"));
}

#[test]
fn a_bad_topic_rule_refuses_the_start_with_its_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for("127.0.0.1:0", &dir.path().join("data"))
        + "\n[[auth.topic_rules]]\npublish = [\"dt/${thing}/#\", \"dt/x${thing}\"]\n";
    let out = run_refusing(&dir.path().join("gateway.toml"), &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("auth.topic_rules[0].publish[1]") && stderr.contains("whole level"),
        "{stderr}"
    );
}

/// MQTT 4.7.2: a filter that starts with a wildcard never matches a topic that starts with `$`. A device
/// granted `#` sees every device's ordinary traffic, never another's `$aws/things/...` requests.
#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_subscription_never_receives_dollar_topics() {
    let gateway = Gateway::start_with(|config| {
        config + "\n[[auth.topic_rules]]\npublish = [\"#\"]\nsubscribe = [\"#\"]\n"
    });
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut snoop =
            Device::connect(gateway.addr, &format!("snoop-{protocol:?}"), protocol).await;
        assert_eq!(snoop.subscribe(&["#", "+/things/#"]).await, [1, 1]);
        let victim = Device::connect(gateway.addr, &format!("victim-{protocol:?}"), protocol).await;
        victim
            .publish(&victim.jobs_topic("get"), r#"{"clientToken":"secret"}"#)
            .await;
        victim.publish("plain/after", "marker").await;
        // The plain message was published after the `$` one: had that matched, it would be here first.
        snoop.expect_message("plain/after", ARRIVES_WITHIN).await;
        nothing_else_on(&mut snoop, "$aws/#").await;
        nothing_else_on(&mut snoop, "#").await;
        victim.disconnect().await;
        snoop.disconnect().await;
    }
}
