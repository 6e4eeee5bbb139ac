//! Clients that break the protocol: the gateway closes them with a protocol error, says so to whoever
//! watches (presence `disconnected`, the last will), and goes on serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use sprig_tests::device::{Device, Login, Protocol};
use sprig_tests::raw::{packet, put_str, read_packet};
use sprig_tests::{Gateway, Operator};

const WAIT: Duration = Duration::from_secs(10);

/// A raw CONNECT as `client_id` with a last will (`will/{client_id}`, QoS 0) at protocol `level`.
fn connect_with_will(gateway: &Gateway, client_id: &str, level: u8) -> TcpStream {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(level);
    body.push(0x02 | 0x04); // clean session, will flag (QoS 0, not retained)
    body.extend_from_slice(&30u16.to_be_bytes());
    if level == 5 {
        body.push(0); // CONNECT properties
    }
    put_str(&mut body, client_id.as_bytes());
    if level == 5 {
        body.push(0); // will properties
    }
    put_str(&mut body, format!("will/{client_id}").as_bytes());
    put_str(&mut body, b"gone");
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(&packet(0x10, &body)).unwrap();
    let (header, ack) = read_packet(&mut stream);
    assert_eq!((header, &ack[..2]), (0x20, &[0u8, 0][..]), "accepted");
    stream
}

/// Reads until the gateway closes the socket; returns what it sent last (MQTT 5: a DISCONNECT).
fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .expect("closed, not timed out");
    received
}

#[tokio::test(flavor = "multi_thread")]
async fn packets_only_a_server_sends_close_the_client_with_its_will_and_presence() {
    let gateway = Gateway::start_with(|config| {
        config + "\n[[auth.topic_rules]]\npublish = [\"will/${thing}\"]\nsubscribe = [\"will/+\"]\n"
    });
    let mut watcher = Device::connect(gateway.addr, "watcher", Protocol::V311).await;
    watcher.subscribe(&["will/+"]).await;
    let (username, password) = gateway.local_credential();
    let operator =
        Login::anonymous("presence-console", Protocol::V311).with_credentials(&username, &password);
    let mut console = Device::connect_with(gateway.addr, operator).await.unwrap();
    console
        .subscribe(&["$aws/events/presence/disconnected/+"])
        .await;

    // (client id, protocol level, the packet): UNSUBACK and CONNACK from an MQTT 5 client made rumqttd's
    // codec panic; SUBACK, PINGRESP, a reserved type and reserved flag bits on MQTT 3.1.1.
    let attacks: [(&str, u8, &[u8]); 6] = [
        ("bad-unsuback", 5, &[0xb0, 0x03, 0x00, 0x01, 0x00]),
        ("bad-connack", 5, &[0x20, 0x03, 0x00, 0x00, 0x00]),
        ("bad-suback", 4, &[0x90, 0x03, 0x00, 0x01, 0x00]),
        ("bad-pingresp", 4, &[0xd0, 0x00]),
        ("bad-reserved", 4, &[0xf0, 0x00]),
        ("bad-flags", 4, &[0xc1, 0x00]),
    ];
    for (client_id, level, attack) in attacks {
        let mut stream = connect_with_will(&gateway, client_id, level);
        stream.write_all(attack).unwrap();
        let last = until_closed(&mut stream);
        if level == 5 {
            // DISCONNECT, reason 0x82 (protocol error), as long as its remaining length says.
            assert_eq!(
                (last.first(), last.get(2)),
                (Some(&0xe0), Some(&0x82)),
                "{client_id}: {last:?}"
            );
            assert_eq!(
                last.len(),
                2 + usize::from(last[1]),
                "{client_id}: {last:?}"
            );
        }
        let will = watcher
            .expect_message(&format!("will/{client_id}"), WAIT)
            .await;
        assert_eq!(will, json!("gone"));
        let event = console
            .expect_message(
                &format!("$aws/events/presence/disconnected/{client_id}"),
                WAIT,
            )
            .await;
        assert_eq!(event["eventType"], "disconnected", "{event}");
    }
    // The gateway still serves.
    let mut device = Device::connect(gateway.addr, "after-attacks", Protocol::V5).await;
    let (accepted, _) = device.request("get", json!({})).await;
    assert!(accepted);
    assert!(!gateway.log().contains("panicked"), "{}", gateway.log());
}

/// A PUBACK for nothing in flight (a duplicate, or made up) is ignored: passed to rumqttd's router it
/// was taken for its oldest publish's acknowledgement, logged as an error and the client dropped, so a
/// client could fill the log one connection at a time. A real acknowledgement still reaches the router:
/// the next QoS 1 message flows.
#[tokio::test(flavor = "multi_thread")]
async fn a_puback_for_nothing_in_flight_is_ignored() {
    let gateway = Gateway::start_with(|config| {
        config + "\n[[auth.topic_rules]]\npublish = [\"dt/${thing}/#\"]\nsubscribe = [\"dt/${thing}/#\"]\n"
    });
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(&sprig_tests::raw::connect("stray-acker", None))
        .unwrap();
    assert_eq!(read_packet(&mut stream).0, 0x20, "CONNACK");
    let mut subscribe = vec![0, 1];
    put_str(&mut subscribe, b"dt/stray-acker/#");
    subscribe.push(1);
    stream.write_all(&packet(0x82, &subscribe)).unwrap();
    assert_eq!(read_packet(&mut stream), (0x90, vec![0, 1, 1]), "SUBACK");
    for pkid in [5u16, 1, 77, 300] {
        stream
            .write_all(&packet(0x40, &pkid.to_be_bytes()))
            .unwrap();
    }
    // Two QoS 1 messages through the router, each acknowledged (the second comes only once the router
    // had the first one's acknowledgement, its window being the client's), the first twice.
    for n in 1..=2u16 {
        let mut publish = Vec::new();
        put_str(&mut publish, b"dt/stray-acker/x");
        publish.extend_from_slice(&(10 + n).to_be_bytes());
        publish.extend_from_slice(b"hello");
        stream.write_all(&packet(0x32, &publish)).unwrap();
        let mut got = [read_packet(&mut stream), read_packet(&mut stream)];
        got.sort_by_key(|(header, _)| *header);
        assert_eq!(got[1], (0x40, (10 + n).to_be_bytes().to_vec()), "PUBACK");
        let (header, body) = &got[0];
        assert_eq!(header & 0xf6, 0x32, "the message, at QoS 1: {got:?}");
        let pkid = body[body.len() - 7..body.len() - 5].to_vec();
        stream.write_all(&packet(0x40, &pkid)).unwrap();
        stream.write_all(&packet(0x40, &pkid)).unwrap();
    }
    stream.write_all(&packet(0xC0, &[])).unwrap();
    assert_eq!(read_packet(&mut stream), (0xD0, vec![]), "still connected");
    let log = gateway.log();
    assert!(!log.contains("Unsolicited"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wildcards_in_a_publish_topic_close_the_client_and_malformed_filters_are_refused() {
    let gateway = Gateway::start_with(|config| {
        config + "\n[[auth.topic_rules]]\npublish = [\"#\"]\nsubscribe = [\"#\"]\n"
    });
    let mut device = Device::connect(gateway.addr, "sloppy", Protocol::V311).await;
    assert_eq!(
        device.subscribe(&["a/#/b", "a+", "will/+"]).await,
        [0x80, 0x80, 1]
    );

    let mut stream = connect_with_will(&gateway, "wild-publisher", 4);
    let mut publish = Vec::new();
    put_str(&mut publish, b"a/+/b");
    publish.extend_from_slice(b"x");
    stream.write_all(&packet(0x30, &publish)).unwrap();
    until_closed(&mut stream);
    // Closed for a protocol violation, so its will is published (logged before it is sent).
    device.expect_message("will/wild-publisher", WAIT).await;
    let reason = gateway.log_lines("PUBLISH to `a/+/b`, which is not a topic name");
    assert_eq!(reason.len(), 1, "{}", gateway.log());
}

/// 200 wrong passwords for the local operator's (public) username, all at once from one address: the
/// operator, from another address, gets in and is answered while most of them still wait, instead of
/// queueing behind every one (20 s for 600 before).
#[tokio::test(flavor = "multi_thread")]
async fn a_login_flood_from_one_address_does_not_hold_up_the_operator() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FLOOD: usize = 200;
    // A configured operator's password is a person's: argon2, checked a few at a time.
    let hash = sprig_tests::hash_password("s3cret");
    let gateway = Gateway::start_with(|config| {
        format!("{config}\n[[auth.operators]]\nusername = \"ops\"\npassword_hash = \"{hash}\"\n")
    });
    let mut attackers = Vec::new();
    for i in 0..FLOOD {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(gateway.addr).await.unwrap();
        let connect = sprig_tests::raw::connect(&format!("flood-{i}"), Some(("ops", "wrong")));
        stream.write_all(&connect).await.unwrap();
        attackers.push(stream);
    }
    let (username, password) = gateway.local_credential();
    let mut op = sprig_tests::Operator::connect(gateway.addr, &username, &password)
        .await
        .expect("the operator gets in during the flood");
    op.request("ListJobs", json!({}))
        .await
        .expect("and is answered");

    // How many of the flood's logins were decided by then (each gets a CONNACK refusal).
    let mut answered = 0;
    for stream in &mut attackers {
        let mut byte = [0u8; 1];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, stream.read(&mut byte)).await {
            answered += usize::from(n > 0);
        }
    }
    assert!(
        answered < FLOOD / 2,
        "{answered} of {FLOOD} flood logins were checked before the operator's"
    );
    // Logged per burst, not per attempt.
    let lines = gateway.log_lines("failed logins from this address");
    assert!(
        !lines.is_empty() && lines.len() <= 8,
        "{} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    drop(attackers);
}

/// The local operator's password is a generated token, compared in place: a flood of wrong passwords for
/// its public username is refused at once, with no password check to queue behind, and the CLI gets in.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_on_the_local_operators_username_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FLOOD: usize = 300;
    let gateway = Gateway::start();
    let before = gateway.rss_kb();
    let mut attackers = Vec::new();
    for i in 0..FLOOD {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let connect =
            sprig_tests::raw::connect(&format!("flood-{i}"), Some(("sprig-local", "wrong")));
        stream.write_all(&connect).await.unwrap();
        attackers.push(stream);
    }
    for (i, stream) in attackers.iter_mut().enumerate() {
        let mut connack = [0u8; 4];
        tokio::time::timeout(WAIT, stream.read_exact(&mut connack))
            .await
            .unwrap_or_else(|_| panic!("login {i} not answered within {WAIT:?}"))
            .unwrap();
        assert_eq!(
            connack,
            [0x20, 2, 0, 4],
            "login {i}: refused, bad username or password"
        );
    }
    let out = gateway.cli(&["list-jobs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grew_kb = gateway.peak_rss_kb().saturating_sub(before);
    assert!(
        grew_kb < 16 * 1024,
        "the flood and the CLI raised the peak by {grew_kb} KiB"
    );
}

/// When devices fill the connections, the few kept for operators still let an operator in; one more
/// device is refused.
#[tokio::test(flavor = "multi_thread")]
async fn operators_get_in_when_devices_fill_the_connections() {
    let gateway = Gateway::start_with(|config| {
        let config =
            sprig_tests::with_setting(&config, "max_connections = 1024", "max_connections = 6");
        sprig_tests::with_setting(
            &config,
            "reserved_operator_connections = 4",
            "reserved_operator_connections = 2",
        )
    });
    let mut devices = Vec::new();
    for i in 0..4 {
        devices.push(Device::connect(gateway.addr, &format!("filler-{i}"), Protocol::V311).await);
    }
    let refused =
        Device::connect_with(gateway.addr, Login::anonymous("filler-4", Protocol::V5)).await;
    let code = refused.err().expect("a fifth device is refused");
    assert!(code.contains("ServerUnavailable"), "{code}");
    let (username, password) = gateway.local_credential();
    let mut op = sprig_tests::Operator::connect(gateway.addr, &username, &password)
        .await
        .expect("an operator takes a kept connection");
    op.request("ListJobs", json!({}))
        .await
        .expect("and is answered");
}

/// A connection holds at most `max_subscriptions_per_connection` filters (AWS IoT Core: 50): one that
/// tries to subscribe to thousands keeps 50, and the gateway keeps nothing of the rest.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_per_connection_are_capped() {
    let gateway = Gateway::start();
    let mut device = Device::connect(gateway.addr, "greedy-1", Protocol::V311).await;
    let filters: Vec<String> = (0..60)
        .map(|i| format!("$aws/things/greedy-1/f/{i}"))
        .collect();
    let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let codes = device.subscribe(&refs).await;
    assert_eq!(codes[..50], [1; 50]);
    assert_eq!(codes[50..], [0x80; 10]);
    // One it holds already is granted again; a new one is not.
    assert_eq!(
        device
            .subscribe(&[refs[0], "$aws/things/greedy-1/new"])
            .await,
        [1, 0x80]
    );
    // A new (clean) connection starts afresh: its Jobs API subscriptions are granted again.
    device.disconnect().await;
    let mut device = Device::connect(gateway.addr, "greedy-1", Protocol::V311).await;
    let (accepted, _) = device.request("get", json!({})).await;
    assert!(accepted);
}

/// A client that stops reading is disconnected once a write to it has waited `write_stall_timeout_ms`: what
/// was queued for it is freed, and the will and the presence event go out as for any lost connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let gateway = Gateway::start_with(|config| {
        // No byte quota: the publisher floods at loopback speed.
        let config = sprig_tests::with_setting(
            &config,
            "max_publish_bytes_per_second = 524288",
            "max_publish_bytes_per_second = 0",
        );
        sprig_tests::with_setting(
            &config,
            "write_stall_timeout_ms = 30000",
            "write_stall_timeout_ms = 1000",
        ) + "\n[[auth.topic_rules]]\npublish = [\"dt/+/#\"]\nsubscribe = [\"dt/${thing}/#\"]\n"
    });
    let (username, password) = gateway.local_credential();
    let operator =
        Login::anonymous("stall-console", Protocol::V311).with_credentials(&username, &password);
    let mut console = Device::connect_with(gateway.addr, operator).await.unwrap();
    console
        .subscribe(&["$aws/events/presence/disconnected/+"])
        .await;

    // The reader that never reads, with a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(gateway.addr).await.unwrap();
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]); // 3.1.1, clean session, no keep-alive
    put_str(&mut body, b"stuck-1");
    stuck.write_all(&packet(0x10, &body)).await.unwrap();
    let mut subscribe = vec![0, 1];
    put_str(&mut subscribe, b"dt/stuck-1/#");
    subscribe.push(0);
    stuck.write_all(&packet(0x82, &subscribe)).await.unwrap();

    // 32 MiB for it, far more than the socket buffers hold; published QoS 0 from another device (in 8 KiB
    // messages: rumqttc's own packet limit is 10 KiB).
    let sender = Device::connect(gateway.addr, "firehose-1", Protocol::V311).await;
    let chunk = vec![b'x'; 8 * 1024];
    let mut disconnected = std::pin::pin!(console.expect_message(
        "$aws/events/presence/disconnected/stuck-1",
        Duration::from_secs(60)
    ));
    for _ in 0..4096 {
        sender
            .publish_with(
                sprig_tests::device::Qos::AtMostOnce,
                "dt/stuck-1/bulk",
                chunk.clone(),
            )
            .await;
    }
    let event = disconnected.as_mut().await;
    assert_eq!(event["clientId"], "stuck-1", "{event}");
    let reason = gateway.log_lines("the client read nothing for 1000 ms");
    assert!(!reason.is_empty(), "{}", gateway.log());
    drop(stuck);
}

/// What `$` traffic costs the gateway now: the average growth of its resident memory per round, in KiB.
async fn growth_per_round_kb(gateway: &Gateway, rounds: usize) -> f64 {
    let (username, password) = gateway.local_credential();
    let mut device = Device::connect(gateway.addr, "lister", Protocol::V311).await;
    device.subscribe(&["$aws/things/lister/jobs/+/get/+"]).await;
    let start = gateway.rss_kb();
    for round in 0..rounds {
        // A CLI invocation's worth: a fresh client id, its two reply filters, a request and its reply.
        let mut operator = Operator::connect(gateway.addr, &username, &password)
            .await
            .unwrap();
        assert!(operator.request("ListJobs", json!({})).await.is_ok());
        drop(operator);
        // A device asking after a job it has never heard of: a topic of its own no one asked for before.
        for n in 0..10 {
            let topic = device.jobs_topic(&format!("job-{round}-{n}/get"));
            device.publish(&topic, b"{}".to_vec()).await;
            device
                .expect_message(&format!("{topic}/rejected"), WAIT)
                .await;
        }
    }
    (gateway.rss_kb() as f64 - start as f64) / rounds as f64
}

/// The control API's and the device API's `$` topics never reach rumqttd's router, which keeps every
/// filter and every matched topic forever: each CLI invocation (its own client id and reply filters) and
/// each (thing, job) request topic used to cost memory that never came back (800 `sprig describe-job`
/// calls: 10.5 -> 24.2 MB, ~17 KiB each). Now a round of both costs a small fraction of that (0.4-0.5
/// KiB; 1.1 KiB while the router also kept a record of each client id, see `broker::links`), and the
/// growth does not go on.
#[tokio::test(flavor = "multi_thread")]
async fn control_and_device_api_topics_leave_nothing_behind() {
    // No publish quota: the device makes 5,000 requests as fast as they are answered; nor a control
    // request rate: 500 CLI calls come in a few seconds.
    let gateway = Gateway::start_with(|config| {
        let config = sprig_tests::with_setting(
            &config,
            "max_publishes_per_second = 100",
            "max_publishes_per_second = 0",
        );
        sprig_tests::with_setting(
            &config,
            "requests_per_second = 50",
            "requests_per_second = 10000",
        )
    });
    // Warm up: the allocator's arenas, the store's caches, the runtime's buffers.
    growth_per_round_kb(&gateway, 100).await;
    let growth = growth_per_round_kb(&gateway, 400).await;
    eprintln!("each round kept {growth:.2} KiB");
    assert!(
        growth < 2.0,
        "each round of a CLI call and 10 new device request topics kept {growth:.1} KiB"
    );
}

/// A device's requests never pass through the router, so sprig completes their QoS handshakes itself:
/// PUBACK for QoS 1, PUBREC then PUBCOMP for QoS 2, and each request is answered once.
#[test]
fn requests_on_gateway_topics_are_acknowledged_at_each_qos() {
    let gateway = Gateway::start();
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    put_str(&mut connect, b"acker");
    stream.write_all(&packet(0x10, &connect)).unwrap();
    assert_eq!(read_packet(&mut stream).0, 0x20, "CONNACK");
    let mut subscribe = vec![0, 1];
    put_str(&mut subscribe, b"$aws/things/acker/jobs/get/+");
    subscribe.push(0);
    stream.write_all(&packet(0x82, &subscribe)).unwrap();
    assert_eq!(read_packet(&mut stream), (0x90, vec![0, 1, 0]), "SUBACK");

    let request = |pkid: u16| {
        let mut body = Vec::new();
        put_str(&mut body, b"$aws/things/acker/jobs/get");
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(br#"{"clientToken":"t"}"#);
        body
    };
    // QoS 1: the PUBACK, and the reply (in either order: the reply may be written first).
    stream.write_all(&packet(0x32, &request(7))).unwrap();
    let mut got = [read_packet(&mut stream), read_packet(&mut stream)];
    got.sort_by_key(|(header, _)| *header);
    assert_eq!(got[0].0, 0x30, "the reply, at QoS 0");
    assert_eq!(got[1], (0x40, vec![0, 7]), "PUBACK");

    // QoS 2: PUBREC, and after the PUBREL a PUBCOMP; the request is answered once.
    stream.write_all(&packet(0x34, &request(8))).unwrap();
    let mut got = [read_packet(&mut stream), read_packet(&mut stream)];
    got.sort_by_key(|(header, _)| *header);
    assert_eq!(got[0].0, 0x30, "the reply");
    assert_eq!(got[1], (0x50, vec![0, 8]), "PUBREC");
    stream.write_all(&packet(0x62, &[0, 8])).unwrap();
    assert_eq!(read_packet(&mut stream), (0x70, vec![0, 8]), "PUBCOMP");
    // Nothing else follows: a PINGREQ is answered next.
    stream.write_all(&packet(0xC0, &[])).unwrap();
    assert_eq!(read_packet(&mut stream), (0xD0, vec![]), "PINGRESP");
}

/// rumqttd's router never frees a filter, so clients reconnecting with ever new ones (each connection
/// within its own cap) are held to `max_router_filters` distinct filters in all: a new one beyond is
/// refused, one the router knows is still granted, and `$` filters (sprig's own) never count.
#[tokio::test(flavor = "multi_thread")]
async fn the_routers_filters_are_capped_across_connections() {
    let gateway = Gateway::start_with(|config| {
        sprig_tests::with_setting(
            &config,
            "max_router_filters = 10000",
            "max_router_filters = 4",
        ) + "\n[[auth.topic_rules]]\npublish = [\"dt/${thing}/#\"]\nsubscribe = [\"dt/${thing}/#\"]\n"
    });
    let mut first = Device::connect(gateway.addr, "churn-1", Protocol::V311).await;
    let codes = first.subscribe(&["dt/churn-1/a", "dt/churn-1/b"]).await;
    assert_eq!(codes, [1, 1]);
    first.disconnect().await;
    // (rumqttc's MQTT 5 client takes a refused filter for an error: 3.1.1 here, whose code is 0x80.)
    let mut second = Device::connect(gateway.addr, "churn-1", Protocol::V311).await;
    let codes = second
        .subscribe(&[
            "dt/churn-1/c",
            "dt/churn-1/d",
            "dt/churn-1/e",
            "dt/churn-1/a",
        ])
        .await;
    assert_eq!(
        codes,
        [1, 1, 0x80, 1],
        "the fifth distinct filter is over the cap"
    );
    let codes = second.subscribe(&["$aws/things/churn-1/jobs/notify"]).await;
    assert_eq!(codes, [1], "sprig's own filters never reach the router");
    let mut other = Device::connect(gateway.addr, "churn-2", Protocol::V311).await;
    assert_eq!(other.subscribe(&["dt/churn-2/x"]).await, [0x80]);
    gateway.wait_for_log("the router holds broker.max_router_filters filters", WAIT);
    // Still served: the Jobs API answers.
    let (accepted, _) = other.request("get", json!({})).await;
    assert!(accepted);
}

/// Messages the gateway keeps (the router's log holds every request for the device API) own their bytes:
/// they used to be slices of their connection's read buffer and kept all of it alive. 300 devices that
/// each sent a 64 KiB publish and a small Jobs request in one write held 300 read buffers of 64 KiB or
/// more (+20 MiB; found by the fuzzer, `tests/tests/fuzz.rs`, as ~5 KiB per connection).
#[tokio::test(flavor = "multi_thread")]
async fn kept_messages_do_not_hold_their_connections_read_buffers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DEVICES: usize = 300;
    let gateway = Gateway::start();
    let before = gateway.rss_kb();
    for i in 0..DEVICES {
        let thing = format!("buffer-{}", i % 20);
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let mut connect = Vec::new();
        put_str(&mut connect, b"MQTT");
        connect.extend_from_slice(&[4, 0x02, 0, 0]);
        put_str(&mut connect, thing.as_bytes());
        let mut big = Vec::new();
        put_str(
            &mut big,
            format!("$aws/things/{thing}/shadow/bulk").as_bytes(),
        );
        big.extend(vec![b'x'; 64 * 1024]);
        let mut request = Vec::new();
        put_str(
            &mut request,
            format!("$aws/things/{thing}/jobs/get").as_bytes(),
        );
        request.extend_from_slice(&[0, 1]); // packet id
        request.extend_from_slice(b"{}");
        let bytes = [
            packet(0x10, &connect),
            packet(0x30, &big),
            packet(0x32, &request),
            packet(0xe0, &[]),
        ]
        .concat();
        stream.write_all(&bytes).await.unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
            .await
            .expect("closed after the DISCONNECT")
            .unwrap();
        assert_eq!(
            received.get(..4),
            Some(&[0x20, 2, 0, 0][..]),
            "{received:?}"
        );
    }
    // Answered after the router has taken in every request before it.
    let mut device = Device::connect(gateway.addr, "buffer-check", Protocol::V311).await;
    let (accepted, _) = device.request("get", json!({})).await;
    assert!(accepted);
    let after = gateway.rss_kb();
    assert!(
        after < before + 8 * 1024,
        "VmRSS {before} -> {after} KiB after {DEVICES} devices sent one request each"
    );
}

/// A retained message on a `$` topic reaches no one but the gateway's service for that topic (clients'
/// subscriptions there are the gateway's own), so it is delivered as an ordinary message and not kept: a
/// device that published 1,000 retained 16 KiB messages to topics of its own once held 16 MiB for good
/// (found by the fuzzer, when `$` topics went through the router). Retained messages elsewhere are kept as
/// MQTT says.
#[tokio::test(flavor = "multi_thread")]
async fn retained_messages_on_reserved_topics_are_not_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = Gateway::start_with(|config| {
        config + "\n[[auth.topic_rules]]\npublish = [\"kept/#\"]\nsubscribe = [\"kept/#\"]\n"
    });
    let before = gateway.rss_kb();
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let mut connect = Vec::new();
    put_str(&mut connect, b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 0]);
    put_str(&mut connect, b"keeper-1");
    stream.write_all(&packet(0x10, &connect)).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    let publish = |topic: &str, pkid: u16, size: usize| {
        let mut body = Vec::new();
        put_str(&mut body, topic.as_bytes());
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend(vec![b'x'; size]);
        packet(0x33, &body) // QoS 1, retained
    };
    for i in 1..=1000u16 {
        let topic = format!("$aws/things/keeper-1/kept/{i}");
        stream
            .write_all(&publish(&topic, i, 16 * 1024))
            .await
            .unwrap();
        let mut puback = [0u8; 4];
        stream.read_exact(&mut puback).await.unwrap();
        assert_eq!(puback, [0x40, 2, (i >> 8) as u8, i as u8]);
    }
    let after = gateway.rss_kb();
    assert!(
        after < before + 6 * 1024,
        "VmRSS {before} -> {after} KiB after 1,000 retained 16 KiB messages on $aws/things/keeper-1/"
    );
    // Elsewhere a retained message is still kept for whoever subscribes later.
    stream
        .write_all(&publish("kept/keeper-1", 1001, 2))
        .await
        .unwrap();
    let mut puback = [0u8; 4];
    stream.read_exact(&mut puback).await.unwrap();
    let mut device = Device::connect(gateway.addr, "later-1", Protocol::V311).await;
    device.subscribe(&["kept/#"]).await;
    assert_eq!(
        device.expect_message("kept/keeper-1", WAIT).await,
        json!("xx")
    );
}
