//! `sprig plugin check PATH`: the real binary on the real plugins of `plugins/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sprig_tests::{sprig_bin, target_dir, wrong_abi_plugin};

fn rollback_plugin() -> PathBuf {
    sprig_tests::plugin_path("sprig-plugin-rollback")
}

fn check(path: &Path) -> (Output, String, String) {
    let out = Command::new(sprig_bin())
        .args(["plugin", "check"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn a_good_plugin_prints_its_descriptor() {
    let (out, stdout, stderr) = check(&rollback_plugin());
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("name:        sprig-plugin-rollback"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("version:     {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(stdout.contains("sdk version: "), "{stdout}");
    assert!(stdout.contains("ABI version: 1"), "{stdout}");
    assert!(stdout.contains("libsprig_plugin_rollback.so"), "{stdout}");
}

#[test]
fn the_wrong_abi_is_refused_naming_both_versions() {
    let path = wrong_abi_plugin();
    let (out, stdout, stderr) = check(path);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("plugin refused"), "{stderr}");
    assert!(
        stderr.contains("ABI version 2") && stderr.contains("ABI version 1"),
        "{stderr}"
    );
    assert!(stderr.contains("wrong-abi"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libfake.so");
    std::fs::write(&path, "not an ELF file\n").unwrap();
    let (out, _, stderr) = check(&path);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("libfake.so") && stderr.contains("not a loadable shared library"),
        "{stderr}"
    );

    let (out, _, stderr) = check(&dir.path().join("missing.so"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing.so") && stderr.contains("cannot open plugin"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_recovery_route_whose_plugin_has_the_wrong_abi() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", sprig_tests::free_port());
    let config = format!(
        "{}\n[[recovery]]\nplugin = {:?}\n",
        sprig_tests::config_for(&listen, &dir.path().join("data")),
        wrong_abi_plugin()
    );
    let out = sprig_tests::run_refusing(&dir.path().join("gateway.toml"), &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("recovery[0]"), "{stderr}");
    assert!(
        stderr.contains("ABI version 2") && stderr.contains("ABI version 1"),
        "{stderr}"
    );
}

/// A plugin built with `panic = "abort"` would abort the gateway on its first panic: `export_plugin!`
/// refuses to compile it, saying why.
#[test]
fn a_plugin_built_with_panic_abort_does_not_compile() {
    let dir = target_dir().join("panic-abort");
    let out = Command::new(env!("CARGO"))
        .args(["build", "-p", "sprig-plugin-reset", "--target-dir"])
        .arg(&dir)
        .args(["--config", "profile.dev.panic=\"abort\""])
        .current_dir(sprig_tests::workspace())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it compiled:\n{stderr}");
    assert!(
        stderr.contains("sprig plugins must be built with `panic = \"unwind\"`"),
        "{stderr}"
    );
}

/// `sprig plugin check PATH ARGS` with `stdin`: its exit code, stdout and stderr.
fn check_with(path: &Path, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = Command::new(sprig_bin())
        .args(["plugin", "check"])
        .arg(path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config file of `[[recovery]]` routes only (the dry run reads nothing else), in `dir`.
fn routes_file(dir: &Path) -> PathBuf {
    let path = dir.join("gateway.toml");
    let mut text = String::from(
        r#"
[[recovery]]
name = "pumps"
plugin = "libsprig_plugin_rollback.so"
[recovery.config]
topic = "$aws/things/{thing}/rollback"
payload = "{\"jobId\":\"{jobId}\",\"action\":\"rollback\"}"
ack_timeout_ms = 1500

[[recovery]]
name = "elsewhere"
plugin = "libsprig_plugin_rollback.so"
[recovery.config]
topic = "devices/{thing}/rollback"
payload = "{}"

[[recovery]]
name = "typo"
plugin = "libsprig_plugin_rollback.so"
[recovery.config]
topic = 5
payload = "{}"

[[recovery]]
name = "bad-details"
plugin = "libsprig_plugin_reset.so"
[recovery.config]
status_details = { "bad key" = "x" }
"#,
    );
    for mode in ["garbage", "panic", "segfault", "hang"] {
        // With RUST_BACKTRACE set, a panic symbolizes its backtrace from the debug build's debug info,
        // which can take longer than the hang's budget on a loaded machine.
        let budget_ms = if mode == "panic" { 20_000 } else { 500 };
        text.push_str(&format!(
            "\n[[recovery]]\nname = \"{mode}\"\nplugin = \"libsprig_plugin_misbehave.so\"\n\
             budget_ms = {budget_ms}\n[recovery.config]\nmode = \"{mode}\"\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_dry_run_prints_the_answer_the_gateway_would_accept() {
    let dir = tempfile::tempdir().unwrap();
    let config = routes_file(dir.path());
    let context = dir.path().join("context.json");
    std::fs::write(&context, r#"{"thingName": "pump-1", "jobId": "fw-9"}"#).unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--route",
        "pumps",
        "--context",
        context.to_str().unwrap(),
    ];
    let (code, stdout, stderr) = check_with(&rollback_plugin(), &args, "");
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("plugin:  sprig-plugin-rollback ")
            && stdout.contains(
                "[[recovery]] \"pumps\" (recovery[0]) [recovery.config] accepted; budget 2000 ms"
            )
            && stdout.contains("\"thingName\":\"pump-1\",\"jobId\":\"fw-9\"")
            && stdout.contains("answer:  accepted"),
        "{stdout}"
    );
    let answer: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find("\n{").unwrap()..]).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({
            "actions": [{"type": "publish", "topic": "$aws/things/pump-1/rollback",
                         "payload": "{\"jobId\":\"fw-9\",\"action\":\"rollback\"}", "qos": 1}],
            "outcome": {"type": "retryLater", "afterMs": 1500}
        })
    );

    // The same context on standard input; fields left out take the sample's values.
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--route",
        "pumps",
        "--context",
        "-",
    ];
    let (code, stdout, stderr) =
        check_with(&rollback_plugin(), &args, r#"{"thingName": "pump-2"}"#);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("\"topic\": \"$aws/things/pump-2/rollback\"") && stdout.contains("fw-42"),
        "{stdout}"
    );

    // --generate-context prints that sample, a context the dry run takes as it is.
    let out = Command::new(sprig_bin())
        .args(["plugin", "check", "--generate-context"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let sample: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&sample["thingName"], &sample["reason"]),
        (
            &serde_json::json!("sensor-7"),
            &serde_json::json!("forceDeleted")
        )
    );
}

#[test]
fn a_dry_run_prints_the_refusal_the_gateway_would_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = routes_file(dir.path());
    let rollback = rollback_plugin();
    let reset = sprig_tests::plugin_path("sprig-plugin-reset");
    let misbehave = sprig_tests::plugin_path("sprig-plugin-misbehave");
    let cases: [(&Path, &str, &str); 7] = [
        (
            &rollback,
            "elsewhere",
            "sprig: refused: garbage answer: action 0: publish to `devices/sensor-7/rollback`, \
             outside the device's own topics ($aws/things/sensor-7/…)",
        ),
        (
            &rollback,
            "typo",
            "[[recovery]] \"typo\" (recovery[2]) [recovery.config] topic: invalid type: integer `5`, \
             expected a string (plugin sprig-plugin-rollback)",
        ),
        (
            &reset,
            "bad-details",
            "plugin sprig-plugin-reset answered garbage: action 0: statusDetails: key \"bad key\" \
             must be 1-128 characters of [a-zA-Z0-9:_-]",
        ),
        (
            &misbehave,
            "garbage",
            "plugin sprig-plugin-misbehave answered garbage: the answer is not UTF-8",
        ),
        (
            &misbehave,
            "panic",
            "plugin sprig-plugin-misbehave panicked: misbehave: panicking for sensor-7 as configured",
        ),
        (
            &misbehave,
            "segfault",
            "plugin sprig-plugin-misbehave crashed: its host process was killed by SIGSEGV",
        ),
        (
            &misbehave,
            "hang",
            "plugin sprig-plugin-misbehave overran its budget of 500 ms; host killed",
        ),
    ];
    for (plugin, route, refusal) in cases {
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--route",
            route,
            "--context",
            "-",
        ];
        let (code, stdout, stderr) = check_with(plugin, &args, "{}");
        assert_eq!(code, Some(1), "{route}: stdout: {stdout}\nstderr: {stderr}");
        assert!(stderr.contains(refusal), "{route}: {stderr}");
        // Past the config, the verdict follows what was sent.
        if route != "typo" {
            assert!(stdout.contains("answer:  refused"), "{route}: {stdout}");
        }
    }
}

#[test]
fn a_dry_run_names_the_routes_to_choose_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = routes_file(dir.path());
    let config = config.to_str().unwrap();
    let (code, _, stderr) = check_with(&rollback_plugin(), &["--config", config], "");
    assert_eq!(code, Some(252), "{stderr}");
    assert!(
        stderr.contains("has 8 [[recovery]] routes (pumps, elsewhere, typo, bad-details, garbage, panic, segfault, hang): choose one with --route NAME"),
        "{stderr}"
    );
    let (code, _, stderr) = check_with(
        &rollback_plugin(),
        &["--config", config, "--route", "valves"],
        "",
    );
    assert_eq!(code, Some(252), "{stderr}");
    assert!(
        stderr.contains("no [[recovery]] route named \"valves\"; its routes: pumps, elsewhere"),
        "{stderr}"
    );
    // Without --context: the instance is made from the route's config, and that is all.
    let (code, stdout, stderr) = check_with(
        &rollback_plugin(),
        &["--config", config, "--route", "pumps"],
        "",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("[recovery.config] accepted"), "{stdout}");
    assert!(!stdout.contains("answer:"), "{stdout}");
}
