//! systemd's notify protocol, as `config/sprig.service` (`Type=notify`, `WatchdogSec`) uses it: the test
//! plays the service manager, with a datagram socket of its own as `NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use sprig_tests::{config_for, free_port, sprig_bin};

/// The next message on `socket` (10 s at most).
fn next_message(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 512];
    let n = socket
        .recv(&mut buffer)
        .expect("a message from sprig within 10 s");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn ready_is_said_once_clients_are_taken_and_the_watchdog_is_pinged_while_the_store_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = dir.path().join("gateway.toml");
    let listen = format!("127.0.0.1:{}", free_port());
    std::fs::write(&config, config_for(&listen, &dir.path().join("data"))).unwrap();
    let mut sprig = Command::new(sprig_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        // A watchdog of 400 ms: sprig pings every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let first = next_message(&socket);
    assert_eq!(first.trim(), "READY=1");
    // Clients are taken once ready was said.
    assert!(std::net::TcpStream::connect(&listen).is_ok());
    for _ in 0..3 {
        assert_eq!(next_message(&socket).trim(), "WATCHDOG=1");
    }
    sprig.kill().unwrap();
    sprig.wait().unwrap();
}
