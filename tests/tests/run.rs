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
