//! MQTT 3.1.1 and 5 as the specifications say, for what goes through the router (issue 17): each test
//! runs a real broker with real clients (rumqttc, v5 where MQTT 5 is the point) and checks what they see.

use rumqttc::v5::mqttbytes::v5::{Filter as Filter5, Packet as Packet5, Publish as Publish5};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
use sprig_test_support::raw;

use super::*;

/// A broker that grants every device every topic a rule can grant, as the Paho scenarios run it.
async fn start_open() -> Arc<Broker> {
    start_granting("#", |_| {}).await
}

fn options5(broker: &Broker, client_id: &str) -> Options5 {
    let port = broker.local_addrs()[0].port();
    let mut options = Options5::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options
}

/// An MQTT 5 client and every packet it receives after its CONNACK.
struct Client {
    client: Client5,
    rx: mpsc::UnboundedReceiver<Packet5>,
    /// Publishes received while waiting for another packet (a SUBACK), in order.
    held: std::collections::VecDeque<Publish5>,
    /// Runs its event loop: aborted, the connection closes without a DISCONNECT.
    task: tokio::task::JoinHandle<()>,
}

/// [`options5`] for a session that outlives its connection by a minute, resumed if there is one.
fn persistent_options5(broker: &Broker, client_id: &str) -> Options5 {
    use rumqttc::v5::mqttbytes::v5::ConnectProperties;
    let mut options = options5(broker, client_id);
    let mut connect = ConnectProperties::new();
    connect.session_expiry_interval = Some(60);
    options.set_connect_properties(connect);
    options.set_clean_start(false);
    options
}

async fn connect5(options: Options5) -> Client {
    let (client, mut eventloop) = Client5::new(options, 100);
    let connack = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("CONNACK in time")
        .expect("connected");
    assert!(matches!(connack, Event5::Incoming(Packet5::ConnAck(_))));
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event5::Incoming(packet) = event {
                if tx.send(packet).is_err() {
                    break;
                }
            }
        }
    });
    let held = Default::default();
    Client {
        client,
        rx,
        held,
        task,
    }
}

impl Client {
    /// The next packet `wanted` accepts; publishes before it are kept for [`Client::publish`].
    async fn next(&mut self, wanted: impl Fn(&Packet5) -> bool) -> Packet5 {
        let Client { rx, held, .. } = self;
        tokio::time::timeout(WAIT, async {
            loop {
                let packet = rx.recv().await.expect("client still connected");
                if wanted(&packet) {
                    return packet;
                }
                if let Packet5::Publish(p) = packet {
                    held.push_back(p);
                }
            }
        })
        .await
        .expect("expected packet in time")
    }

    async fn subscribed(&mut self) {
        self.next(|p| matches!(p, Packet5::SubAck(_))).await;
    }

    async fn publish(&mut self) -> Publish5 {
        if let Some(p) = self.held.pop_front() {
            return p;
        }
        match self.next(|p| matches!(p, Packet5::Publish(_))).await {
            Packet5::Publish(p) => p,
            _ => unreachable!(),
        }
    }

    async fn puback(&mut self) {
        self.next(|p| matches!(p, Packet5::PubAck(_))).await;
    }
}

#[tokio::test]
async fn a_message_arrives_at_the_lower_of_its_qos_and_the_subscriptions() {
    let broker = start_open().await;
    let mut b = connect5(options5(&broker, "b")).await;
    b.client.subscribe("q/#", QoS5::AtLeastOnce).await.unwrap();
    b.subscribed().await;
    let mut a = connect5(options5(&broker, "a")).await;
    // More QoS 0 messages than the router lets a link have in flight: each is settled with the router as
    // it is written, or the QoS 1 one would wait behind them for good.
    for i in 0..150 {
        let payload = format!("zero {i}");
        (a.client
            .publish("q/0", QoS5::AtMostOnce, false, payload)
            .await)
            .unwrap();
    }
    (a.client
        .publish("q/1", QoS5::AtLeastOnce, false, "one")
        .await)
        .unwrap();
    a.puback().await;
    for i in 0..150 {
        let p = b.publish().await;
        assert_eq!(
            (p.payload, p.qos),
            (format!("zero {i}").into(), QoS5::AtMostOnce)
        );
    }
    let p = b.publish().await;
    assert_eq!((p.payload, p.qos), (Bytes::from("one"), QoS5::AtLeastOnce));

    // A retained QoS 0 message, sent on a new QoS 1 subscription: QoS 0 too, retain flag set.
    (a.client
        .publish("r/0", QoS5::AtMostOnce, true, "kept")
        .await)
        .unwrap();
    (a.client
        .publish("q/1", QoS5::AtLeastOnce, false, "after")
        .await)
        .unwrap();
    assert_eq!(b.publish().await.payload, Bytes::from("after"));
    b.client.subscribe("r/#", QoS5::AtLeastOnce).await.unwrap();
    let p = b.publish().await;
    assert_eq!(
        (p.payload, p.qos, p.retain),
        (Bytes::from("kept"), QoS5::AtMostOnce, true)
    );
}

#[tokio::test]
async fn a_qos0_message_is_not_kept_for_an_absent_session() {
    let broker = start_open().await;
    let mut persistent = options(&broker, "b");
    persistent.set_clean_session(false);
    let (b, mut rx) = connect(persistent.clone()).await;
    b.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut rx).await;
    b.disconnect().await.unwrap();
    gone(&broker, "b").await;

    let (a, mut sent) = connect(options(&broker, "a")).await;
    (a.publish("q/0", QoS::AtMostOnce, false, "zero").await).unwrap();
    (a.publish("q/1", QoS::AtLeastOnce, false, "one").await).unwrap();
    next_matching(&mut sent, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    // The QoS 1 message is in the session (the QoS 0 one came before it, on the same filter).
    tokio::time::timeout(WAIT, async {
        while broker.shared.outlets.waiting("b") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the QoS 1 message kept in time");

    let (_b, mut rx) = connect(persistent).await;
    assert_eq!(publish(&mut rx).await, ("q/1".into(), Bytes::from("one")));
}

fn filter(path: &str, edit: impl FnOnce(&mut Filter5)) -> Filter5 {
    let mut filter = Filter5::new(path, QoS5::AtLeastOnce);
    edit(&mut filter);
    filter
}

impl Client {
    async fn subscribe(&mut self, filter: Filter5) {
        self.client.subscribe_many([filter]).await.unwrap();
        self.subscribed().await;
    }

    async fn send(&mut self, topic: &str, qos: QoS5, retain: bool, payload: &str) {
        let payload = payload.to_owned();
        (self.client.publish(topic, qos, retain, payload).await).unwrap();
        if qos != QoS5::AtMostOnce {
            self.puback().await;
        }
    }
}

#[tokio::test]
async fn a_no_local_subscriber_does_not_get_its_own_messages_back() {
    let broker = start_open().await;
    let mut a = connect5(options5(&broker, "a")).await;
    let mut b = connect5(options5(&broker, "b")).await;
    for client in [&mut a, &mut b] {
        client.subscribe(filter("n/t", |f| f.nolocal = true)).await;
    }
    // More QoS 1 messages than the router has in flight for a link: those not sent are settled.
    for i in 0..120 {
        a.send("n/t", QoS5::AtLeastOnce, false, &format!("a{i}"))
            .await;
    }
    for i in 0..120 {
        assert_eq!(b.publish().await.payload, Bytes::from(format!("a{i}")));
    }
    b.send("n/t", QoS5::AtLeastOnce, false, "b").await;
    // The first message `a` gets is b's: its own 120 came before it on the same filter, and were not sent.
    assert_eq!(a.publish().await.payload, Bytes::from("b"));
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_of_live_messages() {
    let broker = start_open().await;
    let mut a = connect5(options5(&broker, "a")).await;
    let mut b = connect5(options5(&broker, "b")).await;
    a.subscribe(filter("p/t", |f| f.preserve_retain = true))
        .await;
    b.subscribe(filter("p/t", |_| {})).await;
    // Once a message went through b's new subscription, a retained one published now is not taken for
    // one that was there when it subscribed (which rumqttd may send on its first read).
    b.send("p/t", QoS5::AtLeastOnce, false, "first").await;
    for client in [&mut a, &mut b] {
        assert_eq!(client.publish().await.payload, Bytes::from("first"));
    }
    a.send("p/t", QoS5::AtLeastOnce, false, "plain").await;
    a.send("p/t", QoS5::AtLeastOnce, true, "retained").await;
    let flags = |p: Publish5| (p.payload, p.retain);
    assert_eq!(flags(a.publish().await), (Bytes::from("plain"), false));
    assert_eq!(flags(a.publish().await), (Bytes::from("retained"), true));
    // Without the option, a live message has its retain flag cleared (MQTT 5 §3.3.1.3).
    assert_eq!(flags(b.publish().await), (Bytes::from("plain"), false));
    assert_eq!(flags(b.publish().await), (Bytes::from("retained"), false));
    a.send("p/t", QoS5::AtLeastOnce, true, "").await;
}

#[tokio::test]
async fn retain_handling_0_1_and_2_send_retained_messages_on_every_new_or_no_subscribe() {
    use rumqttc::v5::mqttbytes::v5::RetainForwardRule as Rule;

    let broker = start_open().await;
    let mut a = connect5(options5(&broker, "a")).await;
    a.send("r/0", QoS5::AtMostOnce, true, "zero").await;
    a.send("r/1", QoS5::AtLeastOnce, true, "one").await;
    let retained = |mut got: Vec<Publish5>| {
        got.sort_by(|x, y| x.topic.cmp(&y.topic));
        (got.into_iter())
            .map(|p| (p.payload, p.qos, p.retain))
            .collect::<Vec<_>>()
    };
    let expected = vec![
        (Bytes::from("zero"), QoS5::AtMostOnce, true),
        (Bytes::from("one"), QoS5::AtLeastOnce, true),
    ];
    // What arrives after a SUBSCRIBE, up to a marker `c` publishes itself on `r/m` (not retained).
    async fn after(c: &mut Client, rule: Rule) -> Vec<Publish5> {
        c.subscribe(filter("r/+", |f| f.retain_forward_rule = rule))
            .await;
        c.send("r/m", QoS5::AtLeastOnce, false, "marker").await;
        let mut got = Vec::new();
        loop {
            let p = c.publish().await;
            if p.payload == "marker" {
                return got;
            }
            got.push(p);
        }
    }
    let mut c = connect5(options5(&broker, "c")).await;
    assert_eq!(
        retained(after(&mut c, Rule::OnNewSubscribe).await),
        expected
    );
    assert_eq!(retained(after(&mut c, Rule::OnNewSubscribe).await), []);
    // Retain Handling 0 on a subscription held already: rumqttd does not send them, sprig does.
    assert_eq!(
        retained(after(&mut c, Rule::OnEverySubscribe).await),
        expected
    );
    let mut d = connect5(options5(&broker, "d")).await;
    assert_eq!(retained(after(&mut d, Rule::Never).await), []);
    assert_eq!(retained(after(&mut d, Rule::Never).await), []);

    // MQTT 3.1.1 says so too: a SUBSCRIBE that replaces one sends the retained messages again.
    let (e, mut rx) = connect(options(&broker, "e")).await;
    for _ in 0..2 {
        e.subscribe("r/1", QoS::AtLeastOnce).await.unwrap();
        suback(&mut rx).await;
        assert_eq!(publish(&mut rx).await, ("r/1".into(), Bytes::from("one")));
    }
}

/// An MQTT 5 client of hand-made packets, connected (its CONNACK read).
async fn raw5(broker: &Broker, client_id: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(broker.local_addrs()[0])
        .await
        .unwrap();
    socket
        .write_all(&raw::connect_v5(client_id, &[]))
        .await
        .unwrap();
    let (header, _) = read_raw(&mut socket).await.expect("CONNACK");
    assert_eq!(header, 0x20, "CONNACK");
    socket
}

async fn read_raw(socket: &mut tokio::net::TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    tokio::time::timeout(WAIT, raw::read_packet_async(socket))
        .await
        .expect("a packet in time")
}

/// Reads until the server's DISCONNECT and returns its reason code.
async fn disconnect_code(socket: &mut tokio::net::TcpStream) -> u8 {
    loop {
        let (header, body) = read_raw(socket).await.expect("DISCONNECT before the end");
        if header == 0xe0 {
            return body.first().copied().unwrap_or(0);
        }
    }
}

#[tokio::test]
async fn a_publish_larger_than_the_clients_maximum_packet_size_is_not_sent() {
    let broker = start_open().await;
    let mut options = options5(&broker, "b");
    options.set_max_packet_size(Some(64));
    let mut b = connect5(options).await;
    b.subscribe(filter("m/t", |_| {})).await;
    let mut a = connect5(options5(&broker, "a")).await;
    a.send("m/t", QoS5::AtMostOnce, false, &".".repeat(32))
        .await;
    assert_eq!(b.publish().await.payload.len(), 32);
    // More QoS 1 messages than the router has in flight for a link: those not sent are settled.
    for _ in 0..120 {
        a.send("m/t", QoS5::AtLeastOnce, false, &".".repeat(64))
            .await;
    }
    a.send("m/t", QoS5::AtLeastOnce, false, "small").await;
    assert_eq!(b.publish().await.payload, Bytes::from("small"));
}

#[tokio::test]
async fn more_unacknowledged_publishes_than_the_receive_maximum_end_with_disconnect_0x93() {
    use tokio::io::AsyncWriteExt;
    let broker = start_granting("#", |config| config.max_inflight_count = 2).await;
    // A client that keeps to it (rumqttc does) may publish as much as it likes.
    let mut a = connect5(options5(&broker, "a")).await;
    for i in 0..10 {
        a.send("m/t", QoS5::AtLeastOnce, false, &format!("{i}"))
            .await;
    }
    // Three QoS 2 publishes with no PUBREL: the third is one too many.
    let mut c = raw5(&broker, "c").await;
    for pkid in 1..=3 {
        let publish = raw::publish_v5("m/t", 2, pkid, &[], b"x");
        c.write_all(&publish).await.unwrap();
    }
    assert_eq!(disconnect_code(&mut c).await, 0x93);
}

#[tokio::test]
async fn topic_aliases_name_topics_and_a_bad_one_ends_the_connection() {
    use tokio::io::AsyncWriteExt;
    let broker = start_open().await;
    let mut b = connect5(options5(&broker, "b")).await;
    b.subscribe(filter("a/t", |_| {})).await;
    let mut a = raw5(&broker, "a").await;
    let alias = raw::topic_alias(1);
    a.write_all(&raw::publish_v5("a/t", 0, 0, &alias, b"named"))
        .await
        .unwrap();
    a.write_all(&raw::publish_v5("", 0, 0, &alias, b"aliased"))
        .await
        .unwrap();
    for payload in ["named", "aliased"] {
        let p = b.publish().await;
        assert_eq!((p.topic, p.payload), ("a/t".into(), payload.into()));
    }
    // 0 and above the maximum the CONNACK gave: Topic Alias invalid. One never set: a protocol error.
    let bad = [
        ("a/t", 0, 0x94),
        ("a/t", connection::TOPIC_ALIAS_MAX + 1, 0x94),
        ("", 2, 0x82),
    ];
    for (topic, alias, code) in bad {
        let mut c = raw5(&broker, "c").await;
        let publish = raw::publish_v5(topic, 0, 0, &raw::topic_alias(alias), b"x");
        c.write_all(&publish).await.unwrap();
        assert_eq!(disconnect_code(&mut c).await, code, "alias {alias}");
    }
}

/// MQTT 5 options with a will on `topic` held back `delay_s` seconds, and this Session Expiry Interval.
fn with_will(
    broker: &Broker,
    client_id: &str,
    topic: &str,
    delay_s: u32,
    expiry_s: u32,
) -> Options5 {
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, LastWill, LastWillProperties};
    let mut options = options5(broker, client_id);
    let properties = LastWillProperties {
        delay_interval: Some(delay_s),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("k".into(), "v".into())],
    };
    let will = LastWill::new(topic, "gone", QoS5::AtLeastOnce, false, Some(properties));
    options.set_last_will(will);
    let mut connect = ConnectProperties::new();
    connect.session_expiry_interval = Some(expiry_s);
    options.set_connect_properties(connect);
    options
}

impl Client {
    /// Ends the connection without a DISCONNECT, as a client that lost power.
    fn vanish(self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_will_waits_for_its_delay_or_its_sessions_end_whichever_is_first() {
    let broker = start_open().await;
    let mut b = connect5(options5(&broker, "b")).await;
    b.subscribe(filter("w/#", |_| {})).await;
    // (delay, session expiry, when the will should come)
    for (delay_s, expiry_s, expected_ms) in [(1, 60, 1000), (5, 0, 0), (5, 1, 1000)] {
        let topic = format!("w/{delay_s}-{expiry_s}");
        let a = connect5(with_will(&broker, "a", &topic, delay_s, expiry_s)).await;
        let lost = std::time::Instant::now();
        a.vanish();
        let will = b.publish().await;
        let waited = lost.elapsed().as_millis();
        assert_eq!((will.topic, will.payload), (topic.into(), "gone".into()));
        assert!(
            waited + 100 >= expected_ms && waited < expected_ms + 900,
            "delay {delay_s} s, session expiry {expiry_s} s: will after {waited} ms"
        );
        // The will's properties are the publish's.
        let props = will.properties.unwrap_or_default();
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.user_properties, [("k".into(), "v".into())]);
        gone(&broker, "a").await;
    }
}

#[tokio::test]
async fn a_will_is_cancelled_by_a_connection_to_its_session_within_the_delay() {
    let broker = start_open().await;
    let mut b = connect5(options5(&broker, "b")).await;
    b.subscribe(filter("w/#", |_| {})).await;
    let a = connect5(with_will(&broker, "a", "w/cancelled", 1, 60)).await;
    a.vanish();
    gone(&broker, "a").await;
    let mut resumed = with_will(&broker, "a", "w/next", 0, 60);
    resumed.set_clean_start(false);
    let mut a = connect5(resumed).await;
    // Time is the subject: past the first will's delay, nothing came; then the marker is the next message.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.send("w/marker", QoS5::AtLeastOnce, false, "marker").await;
    assert_eq!(b.publish().await.payload, Bytes::from("marker"));

    // A connection that starts a new session ends the old one: its will goes out at once.
    let a = connect5(with_will(&broker, "a", "w/ended", 30, 60)).await;
    a.vanish();
    gone(&broker, "a").await;
    let _a = connect5(options5(&broker, "a")).await;
    assert_eq!(b.publish().await.topic, Bytes::from("w/ended"));
}

#[tokio::test]
async fn a_client_id_that_is_no_thing_name_gets_only_what_the_topic_rules_grant() {
    // Paho's suite cleans retained messages up with a client id holding a space.
    let open = start_open().await;
    let (tool, mut rx) = connect(options(&open, "clean retained")).await;
    tool.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut rx).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    tool.publish("r/x", QoS::AtLeastOnce, false, "cleaned")
        .await
        .unwrap();
    assert_eq!(
        publish(&mut rx).await,
        ("r/x".into(), Bytes::from("cleaned"))
    );

    // Under `state/${thing}/#` it has no thing: nothing is granted, nor any `$aws/things/...` of its name.
    let broker = start().await;
    let (tool, mut rx) = connect(options(&broker, "clean retained")).await;
    let filters = [
        "state/clean retained/#",
        "$aws/things/clean retained/jobs/#",
    ];
    for filter in filters {
        tool.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        assert_eq!(suback(&mut rx).await, [SubscribeReasonCode::Failure]);
    }
}

fn request_properties(expiry_s: Option<u32>) -> rumqttc::v5::mqttbytes::v5::PublishProperties {
    rumqttc::v5::mqttbytes::v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: expiry_s,
        response_topic: Some("p/reply".into()),
        correlation_data: Some(Bytes::from("334")),
        user_properties: vec![("a".into(), "2".into()), ("c".into(), "3".into())],
        content_type: Some("My name".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn mqtt5_properties_travel_with_the_message_and_sprigs_own_do_not() {
    let broker = start_open().await;
    let mut b = connect5(options5(&broker, "b")).await;
    b.subscribe(filter("p/#", |_| {})).await;
    let a = connect5(options5(&broker, "a")).await;
    for qos in [QoS5::AtMostOnce, QoS5::AtLeastOnce] {
        let props = request_properties(None);
        (a.client
            .publish_with_properties("p/req", qos, false, "q", props)
            .await)
            .unwrap();
        let got = b.publish().await;
        assert_eq!(got.qos, qos);
        let mut props = got.properties.expect("properties");
        props.subscription_identifiers.clear();
        assert_eq!(props, request_properties(None), "QoS {qos:?}");
    }
}

#[tokio::test]
async fn a_message_past_its_expiry_is_not_delivered_and_the_others_say_what_is_left() {
    let broker = start_open().await;
    let persistent = persistent_options5(&broker, "b");
    let mut b = connect5(persistent.clone()).await;
    b.subscribe(filter("e/#", |_| {})).await;
    b.client.disconnect().await.unwrap();
    gone(&broker, "b").await;

    let mut a = connect5(options5(&broker, "a")).await;
    for (payload, expiry_s) in [("short", 1), ("long", 60)] {
        let props = request_properties(Some(expiry_s));
        let publish =
            a.client
                .publish_with_properties("e/t", QoS5::AtLeastOnce, false, payload, props);
        publish.await.unwrap();
        a.puback().await;
    }
    tokio::time::timeout(WAIT, async {
        while broker.shared.outlets.waiting("b") < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both kept for the session in time");
    // Time is the subject: past the first one's expiry.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut b = connect5(persistent).await;
    let got = b.publish().await;
    assert_eq!(
        got.payload,
        Bytes::from("long"),
        "the expired one is not sent"
    );
    let props = got.properties.expect("properties kept with the session");
    let left = props.message_expiry_interval.expect("the interval left");
    assert!((58..=59).contains(&left), "{left} s left of 60");
    assert_eq!(props.correlation_data, Some(Bytes::from("334")));
}

#[tokio::test]
async fn a_shared_subscription_gives_each_message_to_one_member_of_its_group() {
    let broker = start_open().await;
    let mut members = Vec::new();
    for id in ["m1", "m2"] {
        let mut member = connect5(options5(&broker, id)).await;
        member.subscribe(filter("$share/g/s/t", |_| {})).await;
        members.push(member);
    }
    // Another group on another filter with the same name is another shared subscription.
    let mut other = connect5(options5(&broker, "m3")).await;
    other.subscribe(filter("$share/g/s/#", |_| {})).await;
    let mut a = connect5(options5(&broker, "a")).await;
    for i in 0..10 {
        a.send("s/t", QoS5::AtLeastOnce, false, &i.to_string())
            .await;
    }
    let mut got: Vec<(usize, Bytes)> = Vec::new();
    while got.len() < 10 {
        let member = got.len() % 2;
        got.push((member, members[member].publish().await.payload));
    }
    let mut payloads: Vec<Bytes> = got.iter().map(|(_, p)| p.clone()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 10, "each message once: {got:?}");
    for i in 0..10 {
        assert_eq!(other.publish().await.payload, Bytes::from(i.to_string()));
    }

    // Under topic rules: granted as the filter inside is, never for a `$` filter.
    let broker = start().await;
    let (device, mut rx) = connect(options(&broker, "d1")).await;
    let cases = [
        (
            "$share/g/state/d1/#",
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
        ),
        ("$share/g/state/d2/#", SubscribeReasonCode::Failure),
        (
            "$share/g/$aws/things/d1/jobs/notify",
            SubscribeReasonCode::Failure,
        ),
    ];
    for (filter, code) in cases {
        device.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        assert_eq!(suback(&mut rx).await, [code], "{filter}");
    }
}

#[tokio::test]
async fn unsubscribing_one_shared_subscription_leaves_the_others() {
    let broker = start_open().await;
    let mut m1 = connect5(options5(&broker, "m1")).await;
    m1.subscribe(filter("$share/g/s/t", |_| {})).await;
    m1.subscribe(filter("$share/h/u/t", |_| {})).await;
    let mut m2 = connect5(options5(&broker, "m2")).await;
    m2.subscribe(filter("$share/h/u/t", |_| {})).await;
    // rumqttd 0.20 takes a link out of every group when it unsubscribes from one: sprig puts it back.
    m1.client.unsubscribe("$share/g/s/t").await.unwrap();
    m1.next(|p| matches!(p, Packet5::UnsubAck(_))).await;
    let mut a = connect5(options5(&broker, "a")).await;
    for i in 0..10 {
        a.send("u/t", QoS5::AtLeastOnce, false, &i.to_string())
            .await;
    }
    for (i, member) in [&mut m1, &mut m2].into_iter().enumerate() {
        let p = member.publish().await;
        assert!(p.topic == "u/t", "member {i}: {p:?}");
    }
}

#[tokio::test]
async fn a_keep_alive_above_the_most_is_capped_and_said_in_the_connack() {
    use rumqttc::v5::mqttbytes::v5::ConnAck as ConnAck5;
    let broker = start_open().await;
    let connack = |keep_alive_s: u64| {
        let mut options = options5(&broker, "k");
        options.set_keep_alive(Duration::from_secs(keep_alive_s));
        async move {
            let (_client, mut eventloop) = Client5::new(options, 10);
            let event = tokio::time::timeout(WAIT, eventloop.poll()).await;
            match event.expect("CONNACK in time").expect("connected") {
                Event5::Incoming(Packet5::ConnAck(ConnAck5 { properties, .. })) => {
                    properties.and_then(|p| p.server_keep_alive)
                }
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(connack(3600).await, Some(connection::MAX_KEEP_ALIVE_S));
    gone(&broker, "k").await;
    assert_eq!(connack(60).await, None);
}

#[tokio::test]
async fn no_more_qos1_messages_are_sent_unacknowledged_than_the_clients_receive_maximum() {
    let broker = start_open().await;
    let mut options = options5(&broker, "b");
    options.set_receive_maximum(Some(2));
    options.set_manual_acks(true);
    let mut b = connect5(options).await;
    b.subscribe(filter("f/t", |_| {})).await;
    b.subscribe(Filter5::new("g/t", QoS5::AtMostOnce)).await;
    let mut a = connect5(options5(&broker, "a")).await;
    for i in 1..=3 {
        a.send("f/t", QoS5::AtLeastOnce, false, &i.to_string())
            .await;
    }
    // At QoS 0 on a QoS 0 subscription: not held back.
    a.send("g/t", QoS5::AtMostOnce, false, "qos 0").await;
    let first = b.publish().await;
    assert_eq!(first.payload, Bytes::from("1"));
    assert_eq!(b.publish().await.payload, Bytes::from("2"));
    // The third waits for an acknowledgement.
    assert_eq!(b.publish().await.payload, Bytes::from("qos 0"));
    b.client.ack(&first).await.unwrap();
    assert_eq!(b.publish().await.payload, Bytes::from("3"));
}

#[tokio::test]
async fn topics_go_as_aliases_to_a_client_that_takes_them() {
    let broker = start_open().await;
    let mut options = options5(&broker, "b");
    options.set_topic_alias_max(Some(1));
    let mut b = connect5(options).await;
    b.subscribe(filter("ta/#", |_| {})).await;
    let mut a = connect5(options5(&broker, "a")).await;
    for (topic, payload) in [("ta/1", "1"), ("ta/1", "2"), ("ta/2", "3"), ("ta/1", "4")] {
        a.send(topic, QoS5::AtLeastOnce, false, payload).await;
    }
    // (rumqttc puts the topic of an alias back, and fails the connection on an alias it does not know.)
    let alias = |p: &Publish5| p.properties.as_ref().and_then(|p| p.topic_alias);
    for (topic, expected) in [
        ("ta/1", Some(1)),
        ("ta/1", Some(1)),
        ("ta/2", None),
        ("ta/1", Some(1)),
    ] {
        let p = b.publish().await;
        assert_eq!((p.topic.clone(), alias(&p)), (topic.into(), expected));
    }
    // A client that takes none gets topics in full.
    let mut c = connect5(options5(&broker, "c")).await;
    c.subscribe(filter("ta/#", |_| {})).await;
    a.send("ta/1", QoS5::AtLeastOnce, false, "5").await;
    assert_eq!(alias(&c.publish().await), None);
}

#[tokio::test]
async fn a_resumed_session_keeps_its_subscription_options() {
    let broker = start_open().await;
    let persistent = persistent_options5(&broker, "b");
    let mut b = connect5(persistent.clone()).await;
    b.subscribe(filter("n/t", |f| f.nolocal = true)).await;
    b.client.disconnect().await.unwrap();
    gone(&broker, "b").await;
    let mut b = connect5(persistent).await;
    b.send("n/t", QoS5::AtLeastOnce, false, "own").await;
    let mut a = connect5(options5(&broker, "a")).await;
    a.send("n/t", QoS5::AtLeastOnce, false, "other").await;
    assert_eq!(b.publish().await.payload, Bytes::from("other"));
}

#[tokio::test]
async fn one_filter_shared_and_not_on_one_connection_is_refused_not_a_router_panic() {
    use tokio::io::AsyncWriteExt;
    let broker = start_open().await;
    let mut c = raw5(&broker, "c").await;
    // (rumqttc ends its event loop on a refused filter: hand-made SUBSCRIBEs, MQTT 5, QoS 1.)
    let cases = [
        ("c/t", 0x01),
        ("$share/g/c/t", 0x83),
        ("$share/g/d/t", 0x01),
        ("$share/h/d/t", 0x83),
        ("d/t", 0x83),
    ];
    for (pkid, (path, expected)) in (1u16..).zip(cases) {
        let mut body = pkid.to_be_bytes().to_vec();
        body.push(0); // no properties
        raw::put_str(&mut body, path.as_bytes());
        body.push(0x01);
        c.write_all(&raw::packet(0x82, &body)).await.unwrap();
        let (header, body) = read_raw(&mut c).await.expect("SUBACK");
        assert_eq!(
            (header, body.last().copied()),
            (0x90, Some(expected)),
            "{path}"
        );
    }
    // The router is still there.
    let mut d = connect5(options5(&broker, "d")).await;
    d.subscribe(filter("c/t", |_| {})).await;
    d.send("c/t", QoS5::AtLeastOnce, false, "alive").await;
    assert_eq!(d.publish().await.payload, Bytes::from("alive"));
}
