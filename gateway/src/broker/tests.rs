//! End-to-end tests of the broker with real MQTT clients (rumqttc) on a loopback port.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use rumqttc::{SubscribeFilter, SubscribeReasonCode};
use tokio::sync::mpsc;

use super::*;
use crate::auth::{LocalOperator, Principal, LOCAL_OPERATOR_USERNAME};
use crate::config::Config;

mod conformance;

const WAIT: Duration = Duration::from_secs(2);

async fn start() -> Arc<Broker> {
    // Devices may use their own `state/{thing}/...` topics, which go through the router.
    start_granting("state/${thing}/#", |_| {}).await
}

/// A broker whose one topic rule grants every device `pattern` to publish and subscribe, with the
/// `[broker]` config as `edit` leaves it.
async fn start_granting(pattern: &str, edit: impl FnOnce(&mut BrokerConfig)) -> Arc<Broker> {
    let mut config = Config::default();
    config.broker.listen = vec!["127.0.0.1:0".parse().unwrap()];
    edit(&mut config.broker);
    config
        .auth
        .topic_rules
        .push(crate::config::TopicRuleConfig {
            things: vec!["*".into()],
            operators: Vec::new(),
            publish: vec![pattern.into()],
            subscribe: vec![pattern.into()],
        });
    let local = LocalOperator {
        username: LOCAL_OPERATOR_USERNAME.into(),
        password: "pw".into(),
        access_key: None,
    };
    let auth = Authenticator::new(&config.auth, &local).unwrap();
    Broker::start(&config.broker, Arc::new(auth)).await.unwrap()
}

fn options(broker: &Broker, client_id: &str) -> MqttOptions {
    let port = broker.local_addrs()[0].port();
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options
}

fn operator_options(broker: &Broker, client_id: &str, password: &str) -> MqttOptions {
    let mut options = options(broker, client_id);
    options.set_credentials(LOCAL_OPERATOR_USERNAME, password);
    options
}

/// Connects and returns the client plus a stream of every packet it receives (after the CONNACK).
async fn connect(options: MqttOptions) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let connack = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("CONNACK in time")
        .expect("connected");
    assert!(matches!(connack, Event::Incoming(Packet::ConnAck(_))));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(packet) = event {
                if tx.send(packet).is_err() {
                    break;
                }
            }
        }
    });
    (client, rx)
}

/// The next received packet that `pick` accepts, skipping others; panics after [`WAIT`].
async fn next_matching<T>(
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    mut pick: impl FnMut(Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let packet = rx.recv().await.expect("client still connected");
            if let Some(found) = pick(packet) {
                return found;
            }
        }
    })
    .await
    .expect("expected packet in time")
}

async fn suback(rx: &mut mpsc::UnboundedReceiver<Packet>) -> Vec<SubscribeReasonCode> {
    next_matching(rx, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes),
        _ => None,
    })
    .await
}

async fn next_publish(rx: &mut mpsc::UnboundedReceiver<Packet>) -> rumqttc::Publish {
    next_matching(rx, |p| match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    })
    .await
}

async fn publish(rx: &mut mpsc::UnboundedReceiver<Packet>) -> (String, Bytes) {
    let publish = next_publish(rx).await;
    (publish.topic, publish.payload)
}

async fn next_internal(client: &mut InternalClient) -> (String, Bytes) {
    tokio::time::timeout(WAIT, client.next())
        .await
        .expect("message in time")
        .expect("link open")
}

#[tokio::test]
async fn a_device_receives_what_an_internal_client_publishes_on_its_dollar_topic() {
    let broker = start().await;
    let (device, mut rx) = connect(options(&broker, "d1")).await;
    let topic = "$aws/things/d1/jobs/notify";
    device.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut rx).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut service = broker.internal_client("jobs").await.unwrap();
    service
        .publish(topic, Bytes::from_static(b"{\"jobs\":{}}"))
        .await
        .unwrap();
    assert_eq!(
        publish(&mut rx).await,
        (topic.to_owned(), Bytes::from_static(b"{\"jobs\":{}}"))
    );
}

#[tokio::test]
async fn a_denied_filter_fails_in_its_position_and_the_allowed_one_works() {
    let broker = start().await;
    let (device, mut rx) = connect(options(&broker, "d1")).await;
    let filters = [
        SubscribeFilter::new("$aws/things/d1/jobs/#".into(), QoS::AtLeastOnce),
        SubscribeFilter::new("$aws/things/d2/jobs/#".into(), QoS::AtLeastOnce),
    ];
    device.subscribe_many(filters).await.unwrap();
    assert_eq!(
        suback(&mut rx).await,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure
        ]
    );
    // Only denied filters: answered without the router.
    device
        .subscribe("$aws/things/d2/jobs/notify", QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(suback(&mut rx).await, vec![SubscribeReasonCode::Failure]);
    // Naming the router's internal form directly is denied too.
    device
        .subscribe("~$aws/things/d1/jobs/notify", QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(suback(&mut rx).await, vec![SubscribeReasonCode::Failure]);

    let mut service = broker.internal_client("jobs").await.unwrap();
    service
        .publish("$aws/things/d1/jobs/notify", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(publish(&mut rx).await.0, "$aws/things/d1/jobs/notify");
}

#[tokio::test]
async fn a_device_cannot_publish_to_another_things_topics() {
    let broker = start().await;
    let mut service = broker.internal_client("jobs").await.unwrap();
    service.subscribe("$aws/things/+/jobs/#").await.unwrap();
    let (d1, mut d1_rx) = connect(options(&broker, "d1")).await;
    d1.publish("$aws/things/d2/jobs/get", QoS::AtLeastOnce, false, "stolen")
        .await
        .unwrap();
    // The denied QoS 1 publish is still acknowledged, so the client does not resend it forever.
    next_matching(&mut d1_rx, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    d1.publish("$aws/things/d1/jobs/get", QoS::AtMostOnce, false, "own")
        .await
        .unwrap();
    // Messages of one client keep their order: had the first got through, it would arrive first.
    assert_eq!(
        next_internal(&mut service).await,
        ("$aws/things/d1/jobs/get".into(), Bytes::from_static(b"own"))
    );
}

#[tokio::test]
async fn an_operator_sends_control_requests_and_is_known_by_its_client_id() {
    let broker = start().await;
    let (requests, _) = broker.internal_client("control").await.unwrap().split();
    let mut control = broker.internal_client("control").await.unwrap();
    control.subscribe("$sprig/control/+/+").await.unwrap();
    drop(requests);
    let (operator, _rx) = connect(operator_options(&broker, "cli-1", "pw")).await;
    let topic = "$sprig/control/cli-1/DeleteJob";
    operator
        .publish(topic, QoS::AtLeastOnce, false, r#"{"jobId":"j1"}"#)
        .await
        .unwrap();
    assert_eq!(
        next_internal(&mut control).await,
        (topic.into(), Bytes::from_static(br#"{"jobId":"j1"}"#))
    );
    match broker.sessions().principal("cli-1") {
        Some(Principal::Operator(op)) => assert_eq!(op.username, LOCAL_OPERATOR_USERNAME),
        other => panic!("expected the operator, got {other:?}"),
    }
    assert_eq!(broker.sessions().len(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let broker = start().await;
    let (_client, mut eventloop) = AsyncClient::new(operator_options(&broker, "cli-1", "nope"), 10);
    let result = tokio::time::timeout(WAIT, eventloop.poll()).await.unwrap();
    assert!(
        matches!(
            result,
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword
            ))
        ),
        "{result:?}"
    );
    assert!(broker.sessions().is_empty());
}

#[tokio::test]
async fn keep_alive_zero_is_accepted() {
    let broker = start().await;
    let mut options = options(&broker, "d1");
    options.set_keep_alive(Duration::ZERO);
    let (device, mut rx) = connect(options).await;
    device
        .subscribe("$aws/things/d1/jobs/notify", QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut rx).await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
}

#[tokio::test]
async fn mqtt5_clients_are_served_on_the_same_port() {
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, SubscribeReasonCode as Code5};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    use rumqttc::v5::{ConnectionError as Error5, StateError};

    let broker = start().await;
    let port = broker.local_addrs()[0].port();
    let mut options = Options5::new("d5", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = Client5::new(options, 10);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let stop = event.is_err();
            if tx.send(event).is_err() || stop {
                break;
            }
        }
    });
    let mut service = broker.internal_client("jobs").await.unwrap();
    let topic = "$aws/things/d5/jobs/notify";
    client.subscribe(topic, QoS5::AtLeastOnce).await.unwrap();
    let (codes, received) = tokio::time::timeout(WAIT, async {
        let mut codes = None;
        loop {
            match rx.recv().await.expect("event") {
                Ok(Event5::Incoming(Packet5::SubAck(ack))) => {
                    codes = Some(ack.return_codes);
                    service
                        .publish(topic, Bytes::from_static(b"v5"))
                        .await
                        .unwrap();
                }
                Ok(Event5::Incoming(Packet5::Publish(p))) => return (codes, p.topic),
                Ok(_) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await
    .expect("SUBACK and publish in time");
    assert_eq!(codes, Some(vec![Code5::Success(QoS5::AtLeastOnce)]));
    assert_eq!(received, Bytes::from_static(topic.as_bytes()));

    // rumqttc reports a refused filter as an error of its event loop: the reason is MQTT 5's NotAuthorized.
    client
        .subscribe("$aws/things/d6/jobs/notify", QoS5::AtLeastOnce)
        .await
        .unwrap();
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = rx.recv().await.expect("event") {
                return e;
            }
        }
    })
    .await
    .expect("SUBACK in time");
    assert!(
        matches!(
            refused,
            Error5::MqttState(StateError::SubFail {
                reason: Code5::NotAuthorized
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn more_than_200_messages_flow_to_internal_clients_and_devices() {
    const COUNT: usize = 600;
    let broker = start().await;
    // A topic the router carries (a device's own `$aws/things/...` never reach it).
    let topic = "state/d1/notify";
    let mut receiver = broker.internal_client("receiver").await.unwrap();
    receiver.subscribe(topic).await.unwrap();
    let (device, mut rx) = connect(options(&broker, "d1")).await;
    device.subscribe(topic, QoS::AtMostOnce).await.unwrap();
    suback(&mut rx).await;
    let (sender, _) = broker.internal_client("sender").await.unwrap().split();
    for i in 0..COUNT {
        sender
            .publish(topic, Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    for i in 0..COUNT {
        assert_eq!(next_internal(&mut receiver).await.1, i.to_string());
    }
    for i in 0..COUNT {
        assert_eq!(publish(&mut rx).await.1, i.to_string());
    }
}

#[tokio::test]
async fn operators_see_presence_events() {
    let broker = start().await;
    let (operator, mut rx) = connect(operator_options(&broker, "cli-1", "pw")).await;
    operator
        .subscribe("$aws/events/presence/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    suback(&mut rx).await;
    let (device, _device_rx) = connect(options(&broker, "d1")).await;
    let (topic, body) = publish(&mut rx).await;
    assert_eq!(topic, "$aws/events/presence/connected/d1");
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["clientId"], "d1");
    assert_eq!(event["ipAddress"], "127.0.0.1");
    device.disconnect().await.unwrap();
    let (topic, body) = publish(&mut rx).await;
    assert_eq!(topic, "$aws/events/presence/disconnected/d1");
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
}

#[tokio::test]
async fn a_reconnecting_client_id_replaces_the_old_connection_and_keeps_its_session_entry() {
    let broker = start().await;
    let (_old, mut old_rx) = connect(options(&broker, "d1")).await;
    let (new, mut new_rx) = connect(options(&broker, "d1")).await;
    // The router drops the old connection; its cleanup must not remove the new entry.
    tokio::time::timeout(WAIT, async { while old_rx.recv().await.is_some() {} })
        .await
        .expect("old connection closed");
    assert!(broker.sessions().principal("d1").is_some());
    assert_eq!(broker.sessions().len(), 1);
    new.subscribe("$aws/things/d1/jobs/notify", QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut new_rx).await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
}

#[tokio::test]
async fn a_busy_address_is_an_error_naming_it() {
    let broker = start().await;
    let mut config = Config::default().broker;
    config.listen = broker.local_addrs();
    let local = LocalOperator {
        username: LOCAL_OPERATOR_USERNAME.into(),
        password: "pw".into(),
        access_key: None,
    };
    let auth = Authenticator::new(&Config::default().auth, &local).unwrap();
    let err = Broker::start(&config, Arc::new(auth)).await.err().unwrap();
    let addr = broker.local_addrs()[0].to_string();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {addr}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_disconnects_every_client() {
    let broker = start().await;
    let (_device, mut rx) = connect(options(&broker, "d1")).await;
    assert_eq!(broker.sessions().len(), 1);
    tokio::time::timeout(WAIT, broker.shutdown())
        .await
        .expect("shutdown in time");
    assert!(broker.sessions().is_empty());
    tokio::time::timeout(WAIT, async { while rx.recv().await.is_some() {} })
        .await
        .expect("client disconnected");
    assert!(broker.internal_client("late").await.is_err());
}

/// A raw MQTT 3.1.1 CONNECT for `client_id` with the given keep-alive.
fn raw_connect(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Reads until the server closes the socket; returns everything it sent.
async fn read_to_close(socket: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    tokio::time::timeout(limit, socket.read_to_end(&mut received))
        .await
        .expect("closed in time")
        .ok();
    received
}

#[tokio::test]
async fn garbage_and_unknown_protocol_levels_are_closed_without_harm() {
    use tokio::io::AsyncWriteExt;
    let broker = start().await;
    let addr = broker.local_addrs()[0];
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(read_to_close(&mut socket, WAIT).await.is_empty());

    // MQTT 3.1 (level 3): CONNACK "unacceptable protocol version", then close.
    let mut connect = raw_connect("d1", 5);
    connect[8] = 3;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(&connect).await.unwrap();
    assert_eq!(read_to_close(&mut socket, WAIT).await, vec![0x20, 2, 0, 1]);

    // The broker still serves well-behaved clients.
    let (_device, _rx) = connect_ok(&broker, "d1").await;
}

async fn connect_ok(
    broker: &Broker,
    client_id: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    connect(options(broker, client_id)).await
}

#[tokio::test]
async fn a_client_silent_for_one_and_a_half_keep_alives_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let broker = start().await;
    let mut socket = tokio::net::TcpStream::connect(broker.local_addrs()[0])
        .await
        .unwrap();
    socket.write_all(&raw_connect("d1", 1)).await.unwrap();
    let started = std::time::Instant::now();
    let received = read_to_close(&mut socket, Duration::from_secs(3)).await;
    assert_eq!(received, vec![0x20, 2, 0, 0], "only the CONNACK");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert!(broker.sessions().is_empty());
}

#[tokio::test]
async fn a_denied_qos2_publish_disconnects_the_client() {
    let broker = start().await;
    let (device, mut rx) = connect_ok(&broker, "d1").await;
    device
        .publish("$aws/things/d2/jobs/get", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async { while rx.recv().await.is_some() {} })
        .await
        .expect("disconnected");
}

/// Connects `client_id` with a QoS 0 will "gone" on `topic`; its socket closes, without DISCONNECT, when
/// the returned event loop is dropped.
async fn connect_with_will(broker: &Broker, client_id: &str, topic: &str) -> rumqttc::EventLoop {
    let mut options = options(broker, client_id);
    let will = rumqttc::LastWill::new(topic, "gone", QoS::AtMostOnce, false);
    options.set_last_will(will);
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .unwrap()
        .unwrap();
    eventloop
}

#[tokio::test]
async fn the_last_will_is_published_when_the_connection_is_lost() {
    let broker = start().await;
    let mut service = broker.internal_client("wills").await.unwrap();
    service.subscribe("$aws/things/+/will").await.unwrap();
    let eventloop = connect_with_will(&broker, "d1", "$aws/things/d1/will").await;
    drop(eventloop); // closes the socket without DISCONNECT
    assert_eq!(
        next_internal(&mut service).await,
        ("$aws/things/d1/will".into(), Bytes::from_static(b"gone"))
    );
}

#[tokio::test]
async fn properties_of_mqtt5_publishes_do_not_reach_mqtt311_clients() {
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

    let broker = start().await;
    let topic = "state/d1/now";
    let port = broker.local_addrs()[0].port();
    let (client, mut eventloop) = Client5::new(Options5::new("d1", "127.0.0.1", port), 10);
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    client
        .publish_with_properties(topic, QoS5::AtLeastOnce, true, "{}", properties)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event5::Incoming(Packet5::PubAck(_)) = eventloop.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .expect("PUBACK in time");
    drop(eventloop);

    // The retained message carries MQTT 5 properties; the 3.1.1 session must get it without them.
    let (device, mut rx) = connect_ok(&broker, "d1").await;
    device.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        publish(&mut rx).await,
        (topic.to_owned(), Bytes::from_static(b"{}"))
    );
}

#[tokio::test]
async fn granted_subscriptions_are_reported_after_the_router_acknowledged_them() {
    let broker = start().await;
    let mut subscriptions = broker.subscriptions();
    let mut service = broker.internal_client("notify").await.unwrap();
    let (device, mut rx) = connect(options(&broker, "d1")).await;
    let own = "$aws/things/d1/jobs/notify-next";
    let filters = [
        SubscribeFilter::new("$aws/things/d2/jobs/#".into(), QoS::AtLeastOnce),
        SubscribeFilter::new(own.into(), QoS::AtLeastOnce),
    ];
    device.subscribe_many(filters).await.unwrap();
    let event = tokio::time::timeout(WAIT, subscriptions.recv())
        .await
        .expect("subscribe event in time")
        .unwrap();
    // Only the granted filter, in external form.
    assert_eq!(
        event,
        SubscribeEvent {
            client_id: "d1".into(),
            connection: event.connection,
            filters: vec![own.into()]
        }
    );
    // The subscription is live by the time the event is seen: an immediate publish is delivered.
    service
        .publish(own, Bytes::from_static(b"now"))
        .await
        .unwrap();
    assert_eq!(
        suback(&mut rx).await,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
    assert_eq!(
        publish(&mut rx).await,
        (own.into(), Bytes::from_static(b"now"))
    );

    // A SUBSCRIBE whose filters are all denied is answered without the router and reports nothing.
    device
        .subscribe("$aws/things/d2/jobs/notify", QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(suback(&mut rx).await, vec![SubscribeReasonCode::Failure]);
    assert!(subscriptions.try_recv().is_err());
}

/// Waits until `client_id` has no live session any more.
async fn gone(broker: &Broker, client_id: &str) {
    tokio::time::timeout(WAIT, async {
        while broker.sessions().principal(client_id).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("session ended in time");
}

/// Nothing more is on its way to `client_id`, without waiting for a quiet spell: a witness delivered now
/// on `topic` (one the client holds a filter for) is the next publish it gets, since deliveries to a
/// connection keep their order.
async fn nothing_more(
    broker: &Broker,
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    client_id: &str,
    topic: &str,
) {
    let witness = Bytes::from_static(b"witness");
    assert_eq!(
        broker.deliver(client_id, topic, witness.clone()),
        Delivery::Delivered
    );
    assert_eq!(publish(rx).await, (topic.to_owned(), witness));
}

#[tokio::test]
async fn deliver_reaches_a_connection_only_on_a_matching_filter() {
    let broker = start().await;
    let mut subscriptions = broker.subscriptions();
    let (device, mut rx) = connect(options(&broker, "d1")).await;
    let notify = "$aws/things/d1/jobs/notify";
    let job = "$aws/things/d1/jobs/j1/notify-namespace-acme/";
    let body = Bytes::from_static(b"{}");
    // Connected, not subscribed yet.
    assert_eq!(
        broker.deliver("d1", notify, body.clone()),
        Delivery::NotSubscribed
    );
    device
        .subscribe(
            "$aws/things/d1/jobs/+/notify-namespace-acme/",
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, subscriptions.recv())
        .await
        .expect("subscribe event in time")
        .unwrap();
    // Live by the time the subscription is reported, like a publish through the router.
    assert_eq!(broker.deliver("d1", job, body.clone()), Delivery::Delivered);
    assert_eq!(
        broker.deliver("d1", notify, body.clone()),
        Delivery::NotSubscribed
    );
    assert_eq!(broker.deliver("d2", job, body.clone()), Delivery::Offline);
    suback(&mut rx).await;
    // QoS 0, whatever the subscription asked.
    let received = next_publish(&mut rx).await;
    assert_eq!(
        (received.topic.as_str(), received.qos),
        (job, QoS::AtMostOnce)
    );
    assert_eq!(received.payload, body);
    let witness = "$aws/things/d1/jobs/witness/notify-namespace-acme/";
    nothing_more(&broker, &mut rx, "d1", witness).await;
}

#[tokio::test]
async fn unsubscribe_and_disconnect_stop_direct_delivery() {
    let broker = start().await;
    let (device, mut rx) = connect(options(&broker, "d1")).await;
    let notify = "$aws/things/d1/jobs/notify";
    device.subscribe(notify, QoS::AtMostOnce).await.unwrap();
    suback(&mut rx).await;
    let counts = broker.deliver_many([("d1", notify, Bytes::from_static(b"1"))]);
    assert_eq!(counts.delivered, 1);
    assert_eq!(publish(&mut rx).await.1, Bytes::from_static(b"1"));

    device.unsubscribe(notify).await.unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::UnsubAck(_)).then_some(())).await;
    assert_eq!(
        broker.deliver("d1", notify, Bytes::from_static(b"2")),
        Delivery::NotSubscribed
    );

    device.subscribe(notify, QoS::AtMostOnce).await.unwrap();
    suback(&mut rx).await;
    // The "2" delivered while unsubscribed never comes: the witness is the next publish.
    nothing_more(&broker, &mut rx, "d1", notify).await;
    device.disconnect().await.unwrap();
    gone(&broker, "d1").await;
    assert_eq!(
        broker.deliver("d1", notify, Bytes::from_static(b"3")),
        Delivery::Offline
    );
}

#[tokio::test]
async fn a_session_takeover_moves_direct_delivery_to_the_new_connection() {
    let broker = start().await;
    let notify = "$aws/things/d1/jobs/notify";
    let (old, mut old_rx) = connect(options(&broker, "d1")).await;
    old.subscribe(notify, QoS::AtMostOnce).await.unwrap();
    suback(&mut old_rx).await;
    let (new, mut new_rx) = connect(options(&broker, "d1")).await;
    tokio::time::timeout(WAIT, async { while old_rx.recv().await.is_some() {} })
        .await
        .expect("old connection closed");
    // A clean session: the new connection has not subscribed yet.
    assert_eq!(
        broker.deliver("d1", notify, Bytes::new()),
        Delivery::NotSubscribed
    );
    new.subscribe(notify, QoS::AtMostOnce).await.unwrap();
    suback(&mut new_rx).await;
    assert_eq!(
        broker.deliver("d1", notify, Bytes::from_static(b"new")),
        Delivery::Delivered
    );
    assert_eq!(publish(&mut new_rx).await.1, Bytes::from_static(b"new"));
}

/// The router remembers every name a link had (~1 KiB each, for good): clients that come with ever new
/// client ids reuse a few link names instead, and their router traffic still flows.
#[tokio::test]
async fn clients_with_ever_new_ids_reuse_the_routers_link_names() {
    let broker = start().await;
    for i in 0..20 {
        let id = format!("fresh-{i}");
        let (client, mut rx) = connect_ok(&broker, &id).await;
        let topic = format!("state/{id}/echo");
        client.subscribe(&topic, QoS::AtMostOnce).await.unwrap();
        suback(&mut rx).await;
        client
            .publish(&topic, QoS::AtMostOnce, false, id.clone())
            .await
            .unwrap();
        assert_eq!(publish(&mut rx).await, (topic, Bytes::from(id.clone())));
        client.disconnect().await.unwrap();
        gone(&broker, &id).await;
    }
    let made = broker.shared.link_names.made();
    assert!(
        made <= 2,
        "20 client ids one after the other made {made} link names"
    );
}

#[tokio::test]
async fn mqtt5_clients_get_direct_deliveries() {
    use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

    let broker = start().await;
    let port = broker.local_addrs()[0].port();
    let mut options = Options5::new("d5", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = Client5::new(options, 10);
    let topic = "$aws/things/d5/jobs/notify-next";
    client.subscribe(topic, QoS5::AtLeastOnce).await.unwrap();
    let received = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await.expect("connected") {
                Event5::Incoming(Packet5::SubAck(_)) => {
                    let delivery = broker.deliver("d5", topic, Bytes::from_static(b"v5"));
                    assert_eq!(delivery, Delivery::Delivered);
                }
                Event5::Incoming(Packet5::Publish(p)) => return (p.topic, p.payload, p.qos),
                _ => {}
            }
        }
    })
    .await
    .expect("SUBACK and delivery in time");
    assert_eq!(
        received,
        (
            Bytes::from_static(topic.as_bytes()),
            Bytes::from_static(b"v5"),
            QoS5::AtMostOnce
        )
    );
}

/// A publish no router filter matches is acknowledged by sprig and never reaches the router; once a
/// filter that matches exists (a client's or a service's), the next one goes through it and is delivered,
/// and a retained one always does (the router keeps it for later subscribers).
#[tokio::test]
async fn publishes_nobody_could_receive_skip_the_router_until_someone_subscribes() {
    let broker = start().await;
    let (d1, mut d1_rx) = connect(options(&broker, "d1")).await;
    let puback = |p: Packet| matches!(p, Packet::PubAck(_)).then_some(());

    d1.publish("state/d1/a", QoS::AtLeastOnce, false, "nobody")
        .await
        .unwrap();
    next_matching(&mut d1_rx, puback).await;
    d1.publish("state/d1/kept", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    next_matching(&mut d1_rx, puback).await;

    // A service's subscription: the same topic is routed to it from now on.
    let mut service = broker.internal_client("watcher").await.unwrap();
    service.subscribe("state/+/a").await.unwrap();
    d1.publish("state/d1/a", QoS::AtLeastOnce, false, "watched")
        .await
        .unwrap();
    next_matching(&mut d1_rx, puback).await;
    assert_eq!(
        next_internal(&mut service).await,
        ("state/d1/a".to_owned(), Bytes::from("watched"))
    );

    // A client's: it gets the retained message kept while nobody subscribed, then what follows.
    let (d2, mut d2_rx) = connect(options(&broker, "d2")).await;
    d1.subscribe("state/d1/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(suback(&mut d1_rx).await.len(), 1);
    assert_eq!(
        publish(&mut d1_rx).await,
        ("state/d1/kept".to_owned(), Bytes::from("retained"))
    );
    d1.publish("state/d1/b", QoS::AtMostOnce, false, "own")
        .await
        .unwrap();
    assert_eq!(
        publish(&mut d1_rx).await,
        ("state/d1/b".to_owned(), Bytes::from("own"))
    );
    // Another device's topic stays unmatched: acknowledged, delivered to nobody.
    d2.publish("state/d2/z", QoS::AtLeastOnce, false, "alone")
        .await
        .unwrap();
    next_matching(&mut d2_rx, puback).await;
}

/// A device that only speaks to the gateway (Jobs requests, notifications, pings) never gets a router
/// link; one gets it when it first subscribes to a filter the router serves or publishes where the
/// router must carry it (a subscriber, a retained message), and gives it back when it leaves. What goes
/// through the router is delivered all the same.
#[tokio::test]
async fn only_connections_that_need_the_router_get_a_link() {
    let broker = start_granting("shared/#", |_| {}).await;
    let links = || broker.shared.link_names.held();
    let puback = |p: Packet| matches!(p, Packet::PubAck(_)).then_some(());

    let (jobs, mut jobs_rx) = connect(options(&broker, "jobs-only")).await;
    let notify = "$aws/things/jobs-only/jobs/notify-next";
    jobs.subscribe(notify, QoS::AtLeastOnce).await.unwrap();
    suback(&mut jobs_rx).await;
    jobs.publish("shared/unheard", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    next_matching(&mut jobs_rx, puback).await;
    let delivery = broker.deliver("jobs-only", notify, Bytes::from_static(b"job"));
    assert_eq!(delivery, Delivery::Delivered);
    assert_eq!(publish(&mut jobs_rx).await.1, Bytes::from_static(b"job"));
    assert_eq!(links(), 0, "a Jobs-only device has no router link");

    let (listener, mut listener_rx) = connect(options(&broker, "listener")).await;
    listener
        .subscribe("shared/a", QoS::AtLeastOnce)
        .await
        .unwrap();
    suback(&mut listener_rx).await;
    assert_eq!(links(), 1, "a routed subscription opens one");

    jobs.publish("shared/a", QoS::AtLeastOnce, false, "heard")
        .await
        .unwrap();
    next_matching(&mut jobs_rx, puback).await;
    assert_eq!(
        publish(&mut listener_rx).await,
        ("shared/a".to_owned(), Bytes::from("heard"))
    );
    assert_eq!(links(), 2, "a publish someone subscribed to opens one");

    let (keeper, mut keeper_rx) = connect(options(&broker, "keeper")).await;
    keeper
        .publish("shared/kept", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    next_matching(&mut keeper_rx, puback).await;
    assert_eq!(links(), 3, "a retained publish opens one");

    for (client, id) in [
        (jobs, "jobs-only"),
        (listener, "listener"),
        (keeper, "keeper"),
    ] {
        client.disconnect().await.unwrap();
        gone(&broker, id).await;
    }
    assert_eq!(links(), 0, "every link is closed when its connection ends");
}

/// The will of a connection that never needed the router still reaches the router's subscribers, on a
/// link made for it.
#[tokio::test]
async fn a_will_of_a_connection_without_a_router_link_reaches_routed_subscribers() {
    let broker = start_granting("shared/#", |_| {}).await;
    let (listener, mut listener_rx) = connect(options(&broker, "listener")).await;
    listener
        .subscribe("shared/will", QoS::AtLeastOnce)
        .await
        .unwrap();
    suback(&mut listener_rx).await;

    let eventloop = connect_with_will(&broker, "d1", "shared/will").await;
    assert_eq!(broker.shared.link_names.held(), 1, "only the listener's");
    drop(eventloop); // closes the socket without DISCONNECT
    assert_eq!(
        publish(&mut listener_rx).await,
        ("shared/will".to_owned(), Bytes::from("gone"))
    );
}

/// A connection without a router link answers what the router would have: a PUBREL for an exchange it
/// never started gets its PUBCOMP (3.1.1 has no reason code to say so), and a PINGREQ its PINGRESP.
#[tokio::test]
async fn a_connection_without_a_router_link_answers_pubrel_and_pingreq_itself() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = start().await;
    let mut socket = tokio::net::TcpStream::connect(broker.local_addrs()[0])
        .await
        .unwrap();
    socket.write_all(&raw_connect("no-link", 30)).await.unwrap();
    let mut answer = [0u8; 4];
    async fn read(socket: &mut tokio::net::TcpStream, answer: &mut [u8]) {
        tokio::time::timeout(WAIT, socket.read_exact(answer))
            .await
            .expect("answered in time")
            .unwrap();
    }
    read(&mut socket, &mut answer).await;
    assert_eq!(answer, [0x20, 2, 0, 0], "CONNACK accepted");

    socket.write_all(&[0x62, 2, 0, 7]).await.unwrap();
    read(&mut socket, &mut answer).await;
    assert_eq!(answer, [0x70, 2, 0, 7], "PUBCOMP of packet 7");
    socket.write_all(&[0xc0, 0]).await.unwrap();
    read(&mut socket, &mut answer[..2]).await;
    assert_eq!(answer[..2], [0xd0, 0], "PINGRESP");
    assert_eq!(broker.shared.link_names.held(), 0);
}

/// Deliveries from several threads at once, written to the socket by the deliverers while the writer is
/// idle (see `wire`) and queued while it writes the client's acknowledgements, arrive whole and, per
/// thread, in order: exactly those said delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_and_the_writers_own_packets_never_interleave() {
    let broker = start().await;
    let (device, mut rx) = connect(options(&broker, "d1")).await;
    let notify = "$aws/things/d1/jobs/notify";
    device.subscribe(notify, QoS::AtMostOnce).await.unwrap();
    suback(&mut rx).await;
    device
        .subscribe("state/d1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    suback(&mut rx).await;

    const PER_THREAD: usize = 400;
    let deliverers: Vec<_> = (0..3)
        .map(|thread| {
            let broker = broker.clone();
            std::thread::spawn(move || {
                let mut delivered = 0;
                for i in 0..PER_THREAD {
                    let body = Bytes::from(format!("{thread}:{i}:{}", "x".repeat(i % 300)));
                    if broker.deliver("d1", notify, body) == Delivery::Delivered {
                        delivered += 1;
                    }
                }
                delivered
            })
        })
        .collect();
    // Meanwhile the writer writes PUBACKs and the router's copies of the device's own publishes.
    for i in 0..50 {
        let topic = format!("state/d1/{i}");
        device
            .publish(topic, QoS::AtLeastOnce, false, "own")
            .await
            .unwrap();
    }
    let delivered: usize = deliverers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(delivered > 0);

    let (mut notifications, mut own, mut acks) = (0, 0, 0);
    let mut last = [None::<usize>; 3];
    while notifications < delivered || own < 50 || acks < 50 {
        let packet = next_matching(&mut rx, Some).await;
        match packet {
            Packet::Publish(p) if p.topic == notify => {
                let text = String::from_utf8(p.payload.to_vec()).unwrap();
                let mut parts = text.split(':');
                let thread: usize = parts.next().unwrap().parse().unwrap();
                let i: usize = parts.next().unwrap().parse().unwrap();
                assert_eq!(parts.next().unwrap(), "x".repeat(i % 300), "whole");
                assert!(
                    last[thread] < Some(i),
                    "in order: {last:?}, then {thread}:{i}"
                );
                last[thread] = Some(i);
                notifications += 1;
            }
            Packet::Publish(p) => {
                assert_eq!(p.payload, Bytes::from_static(b"own"));
                own += 1;
            }
            Packet::PubAck(_) => acks += 1,
            _ => {}
        }
    }
    assert_eq!(notifications, delivered);
    nothing_more(&broker, &mut rx, "d1", notify).await;
}

/// Subscribes `client` to `filter` and waits for its SUBACK.
async fn subscribed(
    client: &AsyncClient,
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    filter: &str,
    qos: QoS,
) {
    client.subscribe(filter, qos).await.unwrap();
    suback(rx).await;
}

/// Publishes at QoS 1 and waits for the PUBACK.
async fn published(
    client: &AsyncClient,
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    topic: &str,
    payload: &'static str,
) {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    next_matching(rx, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
}

/// Waits until the broker holds `n` router links.
async fn router_links_become(broker: &Broker, n: usize) {
    tokio::time::timeout(WAIT, async {
        while broker.shared.link_names.held() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} router links in time"));
}

/// A connection gives its router link back once its last routed subscription is gone and the router owes
/// it nothing (here: a QoS 1 message the client has not acknowledged yet keeps it); its direct deliveries
/// go on, and a new routed subscription opens a new link. A publisher keeps its link.
#[tokio::test]
async fn the_last_routed_subscription_gone_the_router_link_is_given_back() {
    let broker = start_granting("shared/#", |_| {}).await;
    let links = || broker.shared.link_names.held();
    let mut manual = options(&broker, "d1");
    manual.set_manual_acks(true);
    let (device, mut rx) = connect(manual).await;
    let notify = "$aws/things/d1/jobs/notify";
    subscribed(&device, &mut rx, notify, QoS::AtMostOnce).await;
    subscribed(&device, &mut rx, "shared/a", QoS::AtLeastOnce).await;
    assert_eq!(links(), 1);

    let (publisher, mut publisher_rx) = connect(options(&broker, "p")).await;
    published(&publisher, &mut publisher_rx, "shared/a", "one").await;
    let one = next_publish(&mut rx).await;
    assert_eq!(
        (one.topic.as_str(), one.qos),
        ("shared/a", QoS::AtLeastOnce)
    );
    assert_eq!(links(), 2, "the publisher's and the device's");

    device.unsubscribe("shared/a").await.unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::UnsubAck(_)).then_some(())).await;
    assert_eq!(
        links(),
        2,
        "kept while the router's message is unacknowledged"
    );
    device.ack(&one).await.unwrap();
    router_links_become(&broker, 1).await;

    // Still served directly, and still a client the router can reach again.
    let body = Bytes::from_static(b"job");
    assert_eq!(
        broker.deliver("d1", notify, body.clone()),
        Delivery::Delivered
    );
    assert_eq!(publish(&mut rx).await, (notify.to_owned(), body));
    subscribed(&device, &mut rx, "shared/a", QoS::AtMostOnce).await;
    assert_eq!(links(), 2, "a new routed subscription opens a new link");
    published(&publisher, &mut publisher_rx, "shared/a", "two").await;
    assert_eq!(
        publish(&mut rx).await,
        ("shared/a".to_owned(), Bytes::from_static(b"two"))
    );
}

/// A persistent session that gave its router link back (its last routed filter unsubscribed) parks no
/// link when its connection ends; what is delivered to its direct filters meanwhile waits for it, and a
/// routed subscription made after it comes back works.
#[tokio::test]
async fn a_persistent_session_without_routed_filters_parks_no_link_and_keeps_its_queue() {
    let broker = start_granting("shared/#", |_| {}).await;
    let links = || broker.shared.link_names.held();
    let mut persistent = options(&broker, "d1");
    persistent.set_clean_session(false);
    let (device, mut rx) = connect(persistent.clone()).await;
    let notify = "$aws/things/d1/jobs/notify";
    subscribed(&device, &mut rx, notify, QoS::AtMostOnce).await;
    subscribed(&device, &mut rx, "shared/a", QoS::AtLeastOnce).await;
    assert_eq!(links(), 1);
    device.unsubscribe("shared/a").await.unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::UnsubAck(_)).then_some(())).await;
    router_links_become(&broker, 0).await;

    device.disconnect().await.unwrap();
    gone(&broker, "d1").await;
    assert_eq!(links(), 0, "nothing parked");
    let body = Bytes::from_static(b"while away");
    assert_eq!(broker.deliver("d1", notify, body.clone()), Delivery::Queued);

    let (device, mut rx) = connect(persistent).await;
    assert_eq!(publish(&mut rx).await, (notify.to_owned(), body));
    assert_eq!(links(), 0);
    subscribed(&device, &mut rx, "shared/a", QoS::AtLeastOnce).await;
    let (publisher, mut publisher_rx) = connect(options(&broker, "p")).await;
    published(&publisher, &mut publisher_rx, "shared/a", "routed").await;
    assert_eq!(
        publish(&mut rx).await,
        ("shared/a".to_owned(), Bytes::from_static(b"routed"))
    );
    assert_eq!(links(), 2);
}
