//! Messages that rumqttd's router skips for a subscriber that fell behind are logged and counted.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sprig_tests::raw::{packet, put_str, read_packet};
use sprig_tests::{with_setting, Gateway};

/// A device that subscribes to a topic of its own (granted by a topic rule: a device's `$aws/things/...`
/// topics never reach the router), floods it far past the router's in-memory log
/// (128 KiB here) without reading, then reads again: the router has dropped the segments its position was
/// in and jumps ahead. sprig logs that, with the running total.
#[test]
fn skipped_messages_for_a_slow_subscriber_are_logged_and_counted() {
    let gateway = Gateway::start_with(|config| {
        let config = with_setting(
            &config,
            "max_segment_size = 262144",
            "max_segment_size = 65536",
        );
        with_setting(&config, "max_segment_count = 4", "max_segment_count = 2")
            + "\n[[auth.topic_rules]]\npublish = [\"dt/${thing}/#\"]\nsubscribe = [\"dt/${thing}/#\"]\n"
    });
    let topic = "dt/slow-1/telemetry";
    let mut device = TcpStream::connect(gateway.addr).unwrap();
    device
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    put_str(&mut connect, b"slow-1");
    device.write_all(&packet(0x10, &connect)).unwrap();
    assert_eq!(read_packet(&mut device).0, 0x20, "CONNACK");
    let mut subscribe = vec![0, 1];
    put_str(&mut subscribe, topic.as_bytes());
    subscribe.push(0);
    device.write_all(&packet(0x82, &subscribe)).unwrap();
    let (header, body) = read_packet(&mut device);
    assert_eq!((header, body[2]), (0x90, 0), "SUBACK granting QoS 0");

    // 48 MiB of its own telemetry, unread: far more than the socket buffers and the router's log hold.
    let mut publish = Vec::new();
    put_str(&mut publish, topic.as_bytes());
    publish.extend_from_slice(&[b'x'; 4096]);
    let publish = packet(0x30, &publish);
    for _ in 0..12_000 {
        device.write_all(&publish).unwrap();
    }

    // Reading again lets the router go on for this subscriber, from where it can.
    device
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = 0usize;
    while gateway.log_lines("the router skipped messages").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no skipped messages reported; log:\n{}",
            gateway.log()
        );
        match device.read(&mut sink) {
            Ok(0) => panic!("sprig closed the connection"),
            Ok(n) => received += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let sent = 12_000 * publish.len();
    assert!(received < sent, "everything arrived: nothing was skipped");
    let report = gateway.log_lines("the router skipped messages").remove(0);
    assert!(
        report.contains("total=") && report.contains("WARN"),
        "{report}"
    );
    // rumqttd's own warning names the filter.
    let jumps = gateway.log_lines("Read cursor start jumped");
    assert!(jumps.iter().any(|l| l.contains(topic)), "{jumps:?}");
}
