//! The session layer devices meet before the Jobs API: CONNECT as AWS's SDKs send it, no unsolicited
//! notifications, persistent sessions (MQTT 3.1.1 `clean_session = false`, MQTT 5 `clean_start = false`
//! with a Session Expiry Interval), and sessions that belong to the principal that made them.

use std::time::Duration;

use serde_json::json;
use sprig_tests::device::{Device, Login, Protocol};
use sprig_tests::{create_job, hash_password, Gateway, Operator};

const WAIT: Duration = Duration::from_secs(10);
/// What AWS's CRT-based device SDKs append to the CONNECT username (their usage metrics).
const SDK_METRICS: &str = "?SDK=IoTDeviceSDK/Python&Platform=Unix&Metadata=(CRTVersion=0.36.0)";

fn both_protocols() -> [Protocol; 2] {
    [Protocol::V311, Protocol::V5]
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_metrics_in_the_username_are_ignored_as_aws_iot_does() {
    let hash = hash_password("s3cret!");
    let gateway = Gateway::start_with(|config| {
        config
            + &format!(
                "\n[[auth.devices]]\nthing_name = \"secure-1\"\npassword_hash = \"{hash}\"\n"
            )
    });
    for protocol in both_protocols() {
        // No username but the metrics: an anonymous device.
        let anonymous = Login::anonymous("thing-9", protocol).with_credentials(SDK_METRICS, "");
        let mut device = Device::connect_with(gateway.addr, anonymous)
            .await
            .expect("the SDK's default CONNECT is accepted");
        let (accepted, _) = device.request("get", json!({})).await;
        assert!(accepted);
        device.disconnect().await;

        // A username and the metrics: the username before `?` logs in.
        let login = Login::anonymous("secure-1", protocol)
            .with_credentials(&format!("secure-1{SDK_METRICS}"), "s3cret!");
        let device = Device::connect_with(gateway.addr, login)
            .await
            .expect("username before the metrics logs in");
        device.disconnect().await;
        let wrong = Login::anonymous("secure-1", protocol)
            .with_credentials(&format!("secure-1{SDK_METRICS}"), "wrong");
        assert!(Device::connect_with(gateway.addr, wrong).await.is_err());
    }
}

/// AWS IoT sends notify and notify-next only when they change. AWS's jobs sample answers a notify-next by
/// publishing start-next, so one sent on SUBSCRIBE (before the sample subscribed to the reply) hangs it.
#[tokio::test(flavor = "multi_thread")]
async fn subscribing_sends_no_notification() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    // The creations' own notifications are sent after CreateJob answers: a device subscribed beforehand
    // sees the last one arrive, so none of them can reach the devices below.
    let mut watcher = Device::connect(gateway.addr, "d4", Protocol::V311).await;
    let watched = watcher.jobs_topic("notify");
    watcher.subscribe(&[&watched]).await;
    op.request("CreateJob", create_job("j1", Some("acme"), &["d4"]))
        .await
        .unwrap();
    op.request("CreateJob", create_job("s1", None, &["d4"]))
        .await
        .unwrap();
    let told = watcher.expect_message(&watched, WAIT).await;
    assert_eq!(told["jobs"]["QUEUED"][0]["jobId"], "s1");
    watcher.disconnect().await;
    for protocol in both_protocols() {
        let mut device = Device::connect(gateway.addr, "d4", protocol).await;
        let notify = device.jobs_topic("notify");
        let next = device.jobs_topic("notify-next");
        let next_ns = device.jobs_topic("notify-next-namespace-acme");
        let all = device.jobs_topic("#");
        device.subscribe(&[&notify, &next, &next_ns, &all]).await;
        // The reply comes through the same queue as notifications would: anything sent on SUBSCRIBE
        // would have arrived before it.
        let (accepted, body) = device.request("get", json!({})).await;
        assert!(accepted);
        assert_eq!(body["queuedJobs"][0]["jobId"], "s1");
        let per_job = device.jobs_topic("+/notify-namespace-acme/");
        for topic in [&notify, &next, &next_ns, &per_job] {
            device.expect_no_message(topic, Duration::ZERO).await;
        }
        device.disconnect().await;
    }
}

/// A persistent session keeps its subscriptions: the device reconnects without SUBSCRIBE and gets the
/// notifications it missed while offline (the latest per topic), then later ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_session_gets_what_it_missed_and_later_notifications() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    for protocol in both_protocols() {
        let thing = format!("persist-{protocol:?}");
        let login = Login::anonymous(&thing, protocol).persistent(3600);
        let mut device = Device::connect_with(gateway.addr, login.clone())
            .await
            .unwrap();
        assert!(!device.session_present, "a new session is not present");
        let next = device.jobs_topic("notify-next");
        let next_ns = device.jobs_topic("notify-next-namespace-acme");
        device.subscribe(&[&next, &next_ns]).await;
        device.disconnect().await;

        // While it is away: two standard jobs (notify-next changes once: the first stays next) and a
        // namespaced one.
        let (s1, s2, n1) = (
            format!("{thing}-s1"),
            format!("{thing}-s2"),
            format!("{thing}-n1"),
        );
        for (job, ns) in [(&s1, None), (&s2, None), (&n1, Some("acme"))] {
            op.request("CreateJob", create_job(job, ns, &[&thing]))
                .await
                .unwrap();
        }

        let mut device = Device::connect_with(gateway.addr, login.clone())
            .await
            .unwrap();
        assert!(device.session_present, "{thing}: the session is present");
        let body = device.expect_message(&next, WAIT).await;
        assert_eq!(body["execution"]["jobId"], s1.as_str(), "{body}");
        let body = device.expect_message(&next_ns, WAIT).await;
        assert_eq!(body["execution"]["jobId"], n1.as_str(), "{body}");
        // Only the latest state per topic was kept: one notify-next, not one per job.
        let (accepted, _) = device.request("get", json!({})).await;
        assert!(accepted);
        device.expect_no_message(&next, Duration::ZERO).await;

        // Still subscribed without a SUBSCRIBE: a later change arrives too.
        op.request("CancelJob", json!({"jobId": s1})).await.unwrap();
        let body = device.expect_message(&next, WAIT).await;
        assert_eq!(body["execution"]["jobId"], s2.as_str(), "{body}");
        device.disconnect().await;

        // A clean session discards it all.
        let clean = Login::anonymous(&thing, protocol);
        let device = Device::connect_with(gateway.addr, clean.clone())
            .await
            .unwrap();
        assert!(!device.session_present);
        device.disconnect().await;
        let mut device = Device::connect_with(gateway.addr, login).await.unwrap();
        assert!(
            !device.session_present,
            "a clean connection ended the session"
        );
        let (accepted, _) = device.request("get", json!({})).await;
        assert!(accepted);
        device.expect_no_message(&next, Duration::ZERO).await;
    }
}

/// Sessions are kept in the store: a gateway that restarts (a Pi that reboots) does not make its devices
/// deaf. One device was away during the restart, one was connected when the gateway stopped.
#[tokio::test(flavor = "multi_thread")]
async fn persistent_sessions_survive_a_gateway_restart() {
    let mut gateway = Gateway::start();
    let mut logins = Vec::new();
    for (thing, protocol) in [("away-1", Protocol::V311), ("online-1", Protocol::V5)] {
        let login = Login::anonymous(thing, protocol).persistent(3600);
        let mut device = Device::connect_with(gateway.addr, login.clone())
            .await
            .unwrap();
        let next = device.jobs_topic("notify-next");
        device.subscribe(&[&next]).await;
        if thing == "away-1" {
            device.disconnect().await;
        } else {
            // Stays connected until the gateway goes.
            std::mem::forget(device);
        }
        logins.push((login, next));
    }
    assert_eq!(gateway.terminate(), Some(0));
    gateway.spawn();
    let mut op = gateway.operator().await;
    op.request(
        "CreateJob",
        create_job("after-restart", None, &["away-1", "online-1"]),
    )
    .await
    .unwrap();
    let mut devices = Vec::new();
    for (login, next) in logins {
        let mut device = Device::connect_with(gateway.addr, login).await.unwrap();
        assert!(
            device.session_present,
            "{}: session kept across the restart",
            device.thing
        );
        let body = device.expect_message(&next, WAIT).await;
        assert_eq!(body["execution"]["jobId"], "after-restart", "{body}");
        devices.push((device, next));
    }
    // Still subscribed, without a SUBSCRIBE: later changes arrive too.
    op.request("CancelJob", json!({"jobId": "after-restart"}))
        .await
        .unwrap();
    for (mut device, next) in devices {
        let body = device.expect_message(&next, WAIT).await;
        assert!(body.get("execution").is_none(), "{body}");
        device.disconnect().await;
    }
}

/// MQTT 5: a Session Expiry Interval of 0 (the default) ends the session when the connection closes.
#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt5_session_with_expiry_zero_ends_with_its_connection() {
    let gateway = Gateway::start();
    let login = Login::anonymous("short-lived", Protocol::V5).persistent(0);
    let mut device = Device::connect_with(gateway.addr, login.clone())
        .await
        .unwrap();
    let next = device.jobs_topic("notify-next");
    device.subscribe(&[&next]).await;
    device.disconnect().await;
    let device = Device::connect_with(gateway.addr, login).await.unwrap();
    assert!(!device.session_present);
}

/// A client id belongs to the principal that holds it: an operator cannot take a device's connection or
/// session, nor inherit what it subscribed to.
#[tokio::test(flavor = "multi_thread")]
async fn another_principal_cannot_take_over_a_client_id() {
    let hash = hash_password("s3cret!");
    let gateway = Gateway::start_with(|config| {
        config
            + &format!(
                "\n[[auth.devices]]\nthing_name = \"victim-1\"\npassword_hash = \"{hash}\"\n"
            )
    });
    let (username, password) = gateway.local_credential();
    for protocol in both_protocols() {
        let victim = Login::anonymous("victim-1", protocol)
            .with_credentials("victim-1", "s3cret!")
            .persistent(3600);
        let mut device = Device::connect_with(gateway.addr, victim.clone())
            .await
            .unwrap();
        let next = device.jobs_topic("notify-next");
        device.subscribe(&[&next]).await;

        // The operator presents the device's client id: refused, and the device stays connected.
        let as_operator = Login::anonymous("victim-1", protocol)
            .with_credentials(&username, &password)
            .persistent(3600);
        let refused = Device::connect_with(gateway.addr, as_operator.clone()).await;
        let code = refused
            .err()
            .expect("an operator cannot use a device's client id");
        assert!(code.contains("NotAuthorized"), "{code}");
        let (accepted, _) = device.request("get", json!({})).await;
        assert!(accepted, "the device is still connected");

        // Nor while the device is offline with its session kept.
        device.disconnect().await;
        let refused = Device::connect_with(gateway.addr, as_operator).await;
        assert!(
            refused.is_err(),
            "the device's session is not the operator's"
        );
        let device = Device::connect_with(gateway.addr, victim).await.unwrap();
        assert!(device.session_present, "the device's session is intact");
        device.disconnect().await;
    }
}

/// An anonymous device cannot inherit an operator's session (its presence subscription).
#[tokio::test(flavor = "multi_thread")]
async fn a_device_cannot_inherit_an_operators_session() {
    let gateway = Gateway::start();
    let (username, password) = gateway.local_credential();
    let operator = Login::anonymous("ops-console", Protocol::V311)
        .with_credentials(&username, &password)
        .persistent(3600);
    let mut console = Device::connect_with(gateway.addr, operator).await.unwrap();
    let codes = console.subscribe(&["$aws/events/presence/#"]).await;
    assert_eq!(codes, [1]);
    console.disconnect().await;

    let as_device = Login::anonymous("ops-console", Protocol::V311).persistent(3600);
    assert!(
        Device::connect_with(gateway.addr, as_device).await.is_err(),
        "a device took the operator's session"
    );
    // The operator's session still watches presence: another device's connection is announced to it.
    let operator = Login::anonymous("ops-console", Protocol::V311)
        .with_credentials(&username, &password)
        .persistent(3600);
    let mut console = Device::connect_with(gateway.addr, operator).await.unwrap();
    assert!(console.session_present);
    let other = Device::connect(gateway.addr, "d7", Protocol::V311).await;
    console
        .expect_message("$aws/events/presence/connected/d7", WAIT)
        .await;
    other.disconnect().await;
}

/// A configured device's thing name is never an operator's client id, even while the device is away.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_cannot_use_a_configured_devices_thing_name() {
    let hash = hash_password("s3cret!");
    let gateway = Gateway::start_with(|config| {
        config
            + &format!("\n[[auth.devices]]\nthing_name = \"pump-7\"\npassword_hash = \"{hash}\"\n")
    });
    let (username, password) = gateway.local_credential();
    let as_operator =
        Login::anonymous("pump-7", Protocol::V5).with_credentials(&username, &password);
    let refused = Device::connect_with(gateway.addr, as_operator).await;
    assert!(refused.is_err(), "an operator connected as pump-7");
    // Operators connect as usual under their own client ids.
    Operator::connect(gateway.addr, &username, &password)
        .await
        .expect("the operator connects under its own client id");
}

/// A raw CONNECT with an empty client id: (protocol level, clean session) -> the CONNACK's body.
fn connect_without_client_id(gateway: &Gateway, level: u8, clean: bool) -> Vec<u8> {
    raw_connect(gateway, level, clean, b"").1
}

/// A raw CONNECT: (protocol level, clean session, client id) -> the connection and the CONNACK's body.
fn raw_connect(
    gateway: &Gateway,
    level: u8,
    clean: bool,
    client_id: &[u8],
) -> (std::net::TcpStream, Vec<u8>) {
    use sprig_tests::raw::{packet, put_str, read_packet};
    use std::io::Write;
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(level);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&30u16.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    put_str(&mut body, client_id);
    let mut stream = std::net::TcpStream::connect(gateway.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(&packet(0x10, &body)).unwrap();
    let (header, ack) = read_packet(&mut stream);
    assert_eq!(header, 0x20, "a CONNACK");
    (stream, ack)
}

/// A second connection with a client id that is connected takes the session over (MQTT 3.1.4): the
/// first is closed, an MQTT 5 one told why (DISCONNECT 0x8E, session taken over), and the newcomer
/// serves on; the device's presence event says DUPLICATE_CLIENTID, as AWS IoT's does.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    use sprig_tests::raw::{packet, read_packet};
    use std::io::{Read, Write};
    let gateway = Gateway::start();
    let (mut first, ack) = raw_connect(&gateway, 5, true, b"twin-1");
    assert_eq!(&ack[..2], [0, 0]);
    let (mut second, ack) = raw_connect(&gateway, 5, true, b"twin-1");
    assert_eq!(&ack[..2], [0, 0]);
    let (header, body) = read_packet(&mut first);
    assert_eq!((header, body.first()), (0xE0, Some(&0x8E)), "{body:?}");
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, Vec::<u8>::new(), "then closed");
    second.write_all(&packet(0xC0, &[])).unwrap();
    assert_eq!(
        read_packet(&mut second),
        (0xD0, vec![]),
        "the newcomer serves on"
    );

    let (mut old, _) = raw_connect(&gateway, 4, true, b"twin-2");
    let (_new, ack) = raw_connect(&gateway, 4, true, b"twin-2");
    assert_eq!(ack, [0, 0]);
    assert_eq!(
        old.read(&mut [0; 1]).unwrap(),
        0,
        "3.1.1: closed, no DISCONNECT"
    );
}

/// A client that sends DISCONNECT and connects again at once, before the gateway has read its DISCONNECT,
/// finds its session as the DISCONNECT left it: a clean session is over (session present = 0), and the
/// old connection ends as the client asked (no DISCONNECT 0x8E "session taken over"). Paho's MQTT 5
/// session-expiry scenario does exactly this; it failed now and then under load before the old
/// connection read what it had been sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_disconnect_followed_at_once_by_a_connect_is_read_first() {
    use sprig_tests::raw::{packet, put_str};
    use std::io::{Read, Write};
    let gateway = Gateway::start();
    for level in [4u8, 5] {
        for round in 0..10 {
            let client_id = format!("quick-{level}-{round}");
            let (mut first, ack) = raw_connect(&gateway, level, true, client_id.as_bytes());
            assert_eq!(&ack[..2], [0, 0]);
            let filter = format!("$aws/things/{client_id}/jobs/notify");
            let mut subscribe = 1u16.to_be_bytes().to_vec();
            if level == 5 {
                subscribe.push(0); // no properties
            }
            put_str(&mut subscribe, filter.as_bytes());
            subscribe.push(1);
            first.write_all(&packet(0x82, &subscribe)).unwrap();
            let (header, _) = sprig_tests::raw::read_packet(&mut first);
            assert_eq!(header, 0x90, "a SUBACK");
            // DISCONNECT, and the socket stays open: only the packet says the client is done.
            let disconnect = if level == 5 {
                packet(0xE0, &[0, 0])
            } else {
                packet(0xE0, &[])
            };
            first.write_all(&disconnect).unwrap();
            let (_second, ack) = raw_connect(&gateway, level, false, client_id.as_bytes());
            assert_eq!(
                &ack[..2],
                [0, 0],
                "level {level}, round {round}: the clean session ended with its DISCONNECT"
            );
            let mut rest = Vec::new();
            first.read_to_end(&mut rest).unwrap();
            assert_eq!(
                rest,
                Vec::<u8>::new(),
                "level {level}, round {round}: closed, nothing said"
            );
        }
    }
}

/// MQTT lets a client leave its id to the server with a clean session; sprig assigns one (a device of that
/// name, anonymously on loopback) and tells an MQTT 5 client which. A persistent session needs an id.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_client_id_gets_one_assigned_with_a_clean_session_only() {
    let gateway = Gateway::start();
    assert_eq!(connect_without_client_id(&gateway, 4, true), [0, 0]);
    assert_eq!(
        connect_without_client_id(&gateway, 4, false),
        [0, 0x02],
        "3.1.1: identifier rejected"
    );
    let ack = connect_without_client_id(&gateway, 5, true);
    assert_eq!(&ack[..2], [0, 0], "{ack:?}");
    // Properties: Assigned Client Identifier (0x12) with the id.
    let assigned = ack
        .windows(7)
        .position(|w| w[0] == 0x12 && &w[3..7] == b"auto")
        .map(|i| {
            let len = usize::from(u16::from_be_bytes([ack[i + 1], ack[i + 2]]));
            String::from_utf8(ack[i + 3..i + 3 + len].to_vec()).unwrap()
        })
        .expect("an Assigned Client Identifier");
    assert!(assigned.starts_with("auto-"), "{assigned}");
    assert_eq!(connect_without_client_id(&gateway, 5, false)[1], 0x85);
}

/// Messages between devices (through the router) at QoS 1 wait for a persistent session too.
#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_session_gets_the_qos1_messages_published_while_it_was_away() {
    let gateway = Gateway::start_with(|config| {
        config
            + "\n[[auth.topic_rules]]\npublish = [\"cmd/+/#\"]\nsubscribe = [\"cmd/${thing}/#\"]\n"
    });
    for protocol in both_protocols() {
        let thing = format!("listener-{protocol:?}");
        let topic = format!("cmd/{thing}/reboot");
        let login = Login::anonymous(&thing, protocol).persistent(3600);
        let mut device = Device::connect_with(gateway.addr, login.clone())
            .await
            .unwrap();
        let filter = format!("cmd/{thing}/#");
        assert_eq!(device.subscribe(&[&filter]).await, [1]);
        device.disconnect().await;

        let sender_thing = format!("sender-{protocol:?}");
        let mut sender = Device::connect(gateway.addr, &sender_thing, protocol).await;
        let echo = format!("cmd/{sender_thing}/echo");
        sender.subscribe(&[&echo]).await;
        for n in 1..=3 {
            sender.publish(&topic, format!("{{\"n\":{n}}}")).await;
        }
        // The router takes one client's publishes in order: once the sender's echo is back, the three
        // messages are in the router while the device is still away.
        sender.publish(&echo, "{}").await;
        sender.expect_message(&echo, WAIT).await;
        sender.disconnect().await;

        let mut device = Device::connect_with(gateway.addr, login).await.unwrap();
        assert!(device.session_present);
        for n in 1..=3 {
            let body = device.expect_message(&topic, WAIT).await;
            assert_eq!(body["n"], n, "{body}");
        }
        device.disconnect().await;
    }
}

/// What other devices publish (QoS 1) for a device that is away waits in its session, in the store: it
/// arrives when the device is back, whether published before the gateway restarted or after.
#[tokio::test(flavor = "multi_thread")]
async fn qos1_messages_for_an_absent_device_survive_a_gateway_restart() {
    let mut gateway = Gateway::start_with(|config| {
        config
            + "\n[[auth.topic_rules]]\npublish = [\"cmd/+/#\"]\nsubscribe = [\"cmd/${thing}/#\"]\n"
    });
    let login = Login::anonymous("far-away", Protocol::V311).persistent(3600);
    let mut device = Device::connect_with(gateway.addr, login.clone())
        .await
        .unwrap();
    assert_eq!(device.subscribe(&["cmd/far-away/#"]).await, [1]);
    device.disconnect().await;

    /// Publishes `n` for far-away and waits until the router has it (the sender's own echo after it).
    async fn send(gateway: &Gateway, n: u32) {
        let mut sender = Device::connect(gateway.addr, "sender-1", Protocol::V5).await;
        sender.subscribe(&["cmd/sender-1/echo"]).await;
        sender
            .publish("cmd/far-away/reboot", format!("{{\"n\":{n}}}"))
            .await;
        sender.publish("cmd/sender-1/echo", "{}").await;
        sender.expect_message("cmd/sender-1/echo", WAIT).await;
        sender.disconnect().await;
    }
    send(&gateway, 1).await;
    assert_eq!(gateway.terminate(), Some(0));
    gateway.spawn();
    send(&gateway, 2).await;

    let mut device = Device::connect_with(gateway.addr, login).await.unwrap();
    assert!(device.session_present);
    for n in 1..=2 {
        let body = device.expect_message("cmd/far-away/reboot", WAIT).await;
        assert_eq!(body["n"], n, "{body}");
    }
    // Still subscribed, through the router link it took back.
    send(&gateway, 3).await;
    let body = device.expect_message("cmd/far-away/reboot", WAIT).await;
    assert_eq!(body["n"], 3, "{body}");
}
