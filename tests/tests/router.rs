//! A subscriber too slow for what it is sent: QoS 0 messages beyond its queue (`max_queued_bytes`) are
//! dropped, counted and logged, and its memory stays bounded; QoS 1 messages wait in the router, whose
//! in-memory log skips ahead when the subscriber fell too far behind (logged and counted too). Publishers
//! are held to their quotas.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sprig_tests::raw::{packet, put_str, read_packet};
use sprig_tests::{with_setting, Gateway};

/// A gateway whose devices may publish and subscribe under `dt/{thing}/`, with a small router log
/// (128 KiB per filter) and, unless `quotas`, no publish quotas (the tests flood at loopback speed).
fn gateway(quotas: bool) -> Gateway {
    Gateway::start_with(|config| {
        let mut config = with_setting(
            &config,
            "max_segment_size = 262144",
            "max_segment_size = 65536",
        );
        config = with_setting(&config, "max_segment_count = 4", "max_segment_count = 2");
        if !quotas {
            config = with_setting(
                &config,
                "max_publishes_per_second = 100",
                "max_publishes_per_second = 0",
            );
            config = with_setting(
                &config,
                "max_publish_bytes_per_second = 524288",
                "max_publish_bytes_per_second = 0",
            );
        }
        config + "\n[[auth.topic_rules]]\npublish = [\"dt/+/#\"]\nsubscribe = [\"dt/${thing}/#\"]\n"
    })
}

/// A raw MQTT 3.1.1 device `thing`, subscribed to `topic` at `qos`.
fn subscriber(gateway: &Gateway, thing: &str, topic: &str, qos: u8) -> TcpStream {
    subscribe(TcpStream::connect(gateway.addr).unwrap(), thing, topic, qos)
}

/// [`subscriber`] with a 4 KiB receive buffer: what the gateway writes to it waits in the gateway.
fn small_subscriber(gateway: &Gateway, thing: &str, topic: &str) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = runtime.block_on(socket.connect(gateway.addr)).unwrap();
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    subscribe(stream, thing, topic, 0)
}

fn subscribe(mut device: TcpStream, thing: &str, topic: &str, qos: u8) -> TcpStream {
    device
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    put_str(&mut connect, thing.as_bytes());
    device.write_all(&packet(0x10, &connect)).unwrap();
    assert_eq!(read_packet(&mut device).0, 0x20, "CONNACK");
    let mut subscribe = vec![0, 1];
    put_str(&mut subscribe, topic.as_bytes());
    subscribe.push(qos);
    device.write_all(&packet(0x82, &subscribe)).unwrap();
    let (header, body) = read_packet(&mut device);
    assert_eq!((header, body[2]), (0x90, qos), "SUBACK granting QoS {qos}");
    device
}

/// A QoS 0 PUBLISH of 4 KiB on `topic`.
fn publish_4k(topic: &str) -> Vec<u8> {
    let mut publish = Vec::new();
    put_str(&mut publish, topic.as_bytes());
    publish.extend_from_slice(&[b'x'; 4096]);
    packet(0x30, &publish)
}

/// A device sends its own topic 4 MiB of QoS 0 messages (within its publish quota, so the router keeps up)
/// and reads nothing: sprig keeps at most `max_queued_bytes` (256 KiB here) waiting for it and drops the
/// rest, logged with a running total, so the gateway's memory does not follow. Reading again, the device
/// gets what was kept, then the newest messages.
#[test]
fn qos0_messages_beyond_a_slow_readers_queue_are_dropped_and_counted() {
    let gateway = Gateway::start_with(|config| {
        with_setting(
            &config,
            "max_queued_bytes = 1048576",
            "max_queued_bytes = 262144",
        ) + "\n[[auth.topic_rules]]\npublish = [\"dt/+/#\"]\nsubscribe = [\"dt/${thing}/#\"]\n"
    });
    let topic = "dt/slow-0/telemetry";
    let mut device = small_subscriber(&gateway, "slow-0", topic);
    let before = gateway.rss_kb();
    let publish = publish_4k(topic);
    for _ in 0..1_000 {
        device.write_all(&publish).unwrap();
    }
    let report = gateway.wait_for_log("QoS 0 message dropped", Duration::from_secs(30));
    assert!(report.contains("dropped_all_clients="), "{report}");
    let grew_kb = gateway.peak_rss_kb().saturating_sub(before);
    assert!(
        grew_kb < 16 * 1024,
        "4 MiB for a client that does not read raised the gateway's peak RSS by {grew_kb} KiB"
    );

    // Still connected and served: what the gateway kept for it, then what comes next.
    device
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let mut received = 0usize;
    loop {
        match device.read(&mut sink) {
            Ok(0) => panic!("sprig closed the connection"),
            Ok(n) => received += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(
        received > 0 && received < 1_000 * publish.len(),
        "{received}"
    );
    device
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    device.write_all(&publish).unwrap();
    let (header, body) = read_packet(&mut device);
    assert_eq!((header, body.len()), (0x30, 2 + topic.len() + 4096));
}

/// A QoS 1 subscriber that neither reads nor acknowledges while its topic is flooded: the router holds
/// its in-flight window and its in-memory log (128 KiB here) moves on without it. When it reads and
/// acknowledges again, the router jumps ahead; sprig logs that, with the running total.
#[test]
fn skipped_messages_for_a_slow_qos1_subscriber_are_logged_and_counted() {
    let gateway = gateway(false);
    let topic = "dt/slow-1/telemetry";
    let mut device = subscriber(&gateway, "slow-1", topic, 1);
    let publish = publish_4k(topic);
    for _ in 0..12_000 {
        device.write_all(&publish).unwrap();
    }

    // Reading (and acknowledging) again lets the router go on for this subscriber, from where it can.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = 0usize;
    while gateway.log_lines("the router skipped messages").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no skipped messages reported; log:\n{}",
            gateway.log()
        );
        let (header, body) = read_packet(&mut device);
        if header & 0xF0 == 0x30 && header & 0x06 == 0x02 {
            let at = 2 + usize::from(u16::from_be_bytes([body[0], body[1]]));
            device.write_all(&packet(0x40, &body[at..at + 2])).unwrap();
            received += 1;
        }
    }
    assert!(received < 12_000, "everything arrived: nothing was skipped");
    let report = gateway.log_lines("the router skipped messages").remove(0);
    assert!(
        report.contains("total=") && report.contains("WARN"),
        "{report}"
    );
    // rumqttd's own warning names the filter.
    let jumps = gateway.log_lines("Read cursor start jumped");
    assert!(jumps.iter().any(|l| l.contains(topic)), "{jumps:?}");
}

/// With the default quotas (100 publishes per second per connection, as AWS IoT Core), a device that
/// publishes 250 messages at once is slowed down, not refused: they all arrive, over more than a second.
#[test]
fn a_publisher_over_its_quota_is_slowed_down_and_loses_nothing() {
    let gateway = gateway(true);
    let topic = "dt/quick-1/telemetry";
    let mut device = subscriber(&gateway, "quick-1", topic, 0);
    let mut publish = Vec::new();
    put_str(&mut publish, topic.as_bytes());
    publish.extend_from_slice(b"tick");
    let publish = packet(0x30, &publish);
    let start = Instant::now();
    let burst: Vec<u8> = (0..250).flat_map(|_| publish.clone()).collect();
    device.write_all(&burst).unwrap();
    for n in 0..250 {
        let (header, body) = read_packet(&mut device);
        assert_eq!(
            (header, &body[body.len() - 4..]),
            (0x30, &b"tick"[..]),
            "message {n}"
        );
    }
    // The bucket starts full (100), then 100 per second: 150 more take at least 1.5 s.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    gateway.wait_for_log(
        "publishing faster than its quota allows",
        Duration::from_secs(5),
    );
}
