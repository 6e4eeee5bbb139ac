//! `sprig run`: start-up on a config, the local operator credential, refusal of bad configs, clean stop.

use std::os::unix::fs::PermissionsExt;

use sprig_tests::{config_for, run_refusing, Gateway, DEFAULT_CONFIG};

#[test]
fn run_logs_its_listener_and_writes_a_private_local_credential_once() {
    let mut gateway = Gateway::start();
    let ready = gateway.log_lines("ready");
    assert!(
        ready
            .iter()
            .any(|l| l.contains(&format!("mqtt://{}", gateway.addr))),
        "{ready:?}"
    );
    let credential = gateway.data_dir().join("local-operator.json");
    let mode = std::fs::metadata(&credential).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = gateway.local_credential();
    assert_eq!(first.0, "sprig-local");

    // Restart: the credential is kept, not regenerated.
    assert_eq!(gateway.terminate(), Some(0));
    gateway.spawn();
    assert_eq!(gateway.local_credential(), first);
}

#[test]
fn a_bad_config_is_refused_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            DEFAULT_CONFIG.replace("[jobs]\n", "[jobs]\nmax_deletions = 3\n"),
            "max_deletions",
        ),
        (
            DEFAULT_CONFIG.replace("deletion_batch_size = 500", "deletion_batch_size = 0"),
            "jobs.deletion_batch_size",
        ),
        (
            DEFAULT_CONFIG.replace(
                "listen = [\"127.0.0.1:1883\"]",
                "listen = [\"not an address\"]",
            ),
            "listen",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        let out = run_refusing(&path, text);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&path.display().to_string()) && err.contains(key),
            "{err}"
        );
    }
}

#[test]
fn a_taken_port_is_refused_with_the_address() {
    let gateway = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&gateway.addr.to_string(), &dir.path().join("data"));
    let out = run_refusing(&dir.path().join("gateway.toml"), &config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&gateway.addr.to_string()), "{err}");
}

/// A client that connects while the gateway starts is let in only once the gateway serves: its CONNACK
/// comes after the "ready" line, so a request it sends then is answered, not lost to services that had
/// not subscribed yet.
#[test]
fn a_client_connecting_during_start_up_is_answered_once_the_gateway_is_ready() {
    use sprig_tests::raw::connect;
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = sprig_tests::free_port();
    let config = dir.path().join("gateway.toml");
    let data_dir = dir.path().join("data");
    std::fs::write(&config, config_for(&format!("127.0.0.1:{port}"), &data_dir)).unwrap();
    let log_path = dir.path().join("sprig.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(sprig_tests::sprig_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // As early as the listener exists: the kernel completes the TCP handshake from its backlog.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut stream = loop {
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            break stream;
        }
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&connect("early-1", None)).unwrap();
    // The first byte of the answer is enough: a CONNACK's type. A failed read shows sprig's log.
    let mut header = [0u8; 1];
    let answered = stream.read_exact(&mut header);
    let logged = std::fs::read_to_string(&log_path).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        answered.is_ok(),
        "no answer ({answered:?}); sprig's log:\n{logged}"
    );
    assert_eq!(header[0], 0x20, "a CONNACK");
    assert!(
        logged
            .lines()
            .any(|l| l.contains("sprig ") && l.contains(" ready ")),
        "CONNACK before the gateway was ready:\n{logged}"
    );
}
