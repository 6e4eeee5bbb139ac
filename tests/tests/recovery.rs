//! Recovery plugins end to end: the real gateway loads the real plugins of `plugins/`, a job is
//! force-deleted (or force-canceled) under a device that was executing it, and the device is brought back
//! by its handler — at once, after it reconnects, after a SIGKILL — while misbehaving handlers are
//! contained and the gateway keeps serving devices. rollback and reset run in plugin host processes (the
//! default isolation); the misbehaving ones here run in-process, which is what these tests are about
//! (`isolation.rs` has them in host processes).

use std::time::Duration;

use serde_json::{json, Value};
use sprig_tests::device::{Device, Protocol};
use sprig_tests::{
    metric, plugin_path, run_a_job_end_to_end, start_job, wait_for_recovery, Gateway,
};

/// `[[recovery]]` routes: rollback for `roll-*`, reset for `reset-*` (in host processes), and the
/// misbehaving plugin, in-process, for `panic-*`, `hang-*`, `garbage-*`, `error-*`.
fn config_with_routes(config: String) -> String {
    let rollback = plugin_path("sprig-plugin-rollback");
    let reset = plugin_path("sprig-plugin-reset");
    let misbehave = plugin_path("sprig-plugin-misbehave");
    let mut text = format!(
        r#"{config}
[[recovery]]
things = "roll-*"
plugin = {rollback:?}
ack_topic = "$aws/things/{{thing}}/rollback/ack"
[recovery.config]
topic = "$aws/things/{{thing}}/rollback"
payload = "{{\"jobId\":\"{{jobId}}\",\"action\":\"rollback\"}}"
ack_timeout_ms = 1500
max_attempts = 10

[[recovery]]
things = "reset-*"
plugin = {reset:?}
[recovery.config]
status_details = {{ state = "reset", job = "{{jobId}}" }}
"#
    );
    for mode in ["panic", "hang", "garbage", "error"] {
        // With RUST_BACKTRACE set, a panic symbolizes its backtrace from the debug build's debug info,
        // which can take longer than 300 ms on a loaded machine: the panic route has time for it.
        let budget_ms = if mode == "panic" { 20_000 } else { 300 };
        text.push_str(&format!(
            "\n[[recovery]]\nthings = \"{mode}-*\"\nplugin = {misbehave:?}\nisolation = \"in-process\"\nbudget_ms = {budget_ms}\nmax_failures = 2\nretry_backoff_ms = 100\n[recovery.config]\nmode = \"{mode}\"\nhang_ms = 5000\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_force_deleted_device_receives_its_rollback_and_acknowledges_it() {
    let gateway = Gateway::start_with(config_with_routes);
    let mut op = gateway.operator().await;
    let mut device = start_job(&gateway, &mut op, "roll-1", "fw-1").await;

    op.request("DeleteJob", json!({"jobId": "fw-1", "force": true}))
        .await
        .unwrap();
    let command = device
        .expect_message("$aws/things/roll-1/rollback", Duration::from_secs(10))
        .await;
    assert_eq!(command, json!({"jobId": "fw-1", "action": "rollback"}));
    let pending = wait_for_recovery(&mut op, "roll-1", Duration::from_secs(5), |r| {
        r["attempts"] == 1
    })
    .await;
    assert_eq!(
        (pending["status"].as_str(), pending["reason"].as_str()),
        (Some("PENDING"), Some("JOB_DELETED"))
    );
    assert_eq!(pending["executionStatus"], "IN_PROGRESS");

    device
        .publish("$aws/things/roll-1/rollback/ack", "{}")
        .await;
    let done = wait_for_recovery(&mut op, "roll-1", Duration::from_secs(10), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(done["status"], "RECOVERED", "{done}");
    assert_eq!(done["attempts"], 2);
    let described = op
        .request(
            "DescribeRecovery",
            json!({"recoveryId": done["recoveryId"]}),
        )
        .await
        .unwrap();
    assert_eq!(described["recovery"], done);

    // The CLI shows the same.
    let out = gateway.cli(&[
        "list-recoveries",
        "--thing-name",
        "roll-1",
        "--status",
        "RECOVERED",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["recoveries"][0]["recoveryId"], done["recoveryId"]);
    let id = done["recoveryId"].as_str().unwrap();
    let out = gateway.cli(&["describe-recovery", "--recovery-id", id]);
    let described: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(described["recovery"]["status"], "RECOVERED");
}

/// A device that answers the rollback command with `{"status":"FAILED","reason":…}` fails its recovery,
/// with its reason in the record; what it said is kept in the store, so it reaches the handler even when
/// the gateway is killed between the acknowledgement and the handler's next attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_negative_acknowledgement_fails_the_recovery_with_the_devices_reason_even_after_a_sigkill(
) {
    let mut gateway = Gateway::start_with(config_with_routes);
    let mut op = gateway.operator().await;
    let mut device = start_job(&gateway, &mut op, "roll-3", "fw-3").await;
    op.request("DeleteJob", json!({"jobId": "fw-3", "force": true}))
        .await
        .unwrap();
    device
        .expect_message("$aws/things/roll-3/rollback", Duration::from_secs(10))
        .await;
    let asked = wait_for_recovery(&mut op, "roll-3", Duration::from_secs(5), |r| {
        r["attempts"] == 1
    })
    .await;
    device.disconnect().await;

    // Back, but not listening (no subscription since it connected): the acknowledgement is recorded
    // and the handler is not called yet.
    let flushes = |gateway: &Gateway| {
        let scrape = gateway.scrape();
        metric(&scrape, "sprig_store_flush_duration_seconds_count", &[])
    };
    let flushed_before = flushes(&gateway);
    let device = Device::connect(gateway.addr, "roll-3", Protocol::V311).await;
    device
        .publish(
            "$aws/things/roll-3/rollback/ack",
            r#"{"status":"FAILED","reason":"flash is read-only"}"#,
        )
        .await;
    let acknowledged = wait_for_recovery(&mut op, "roll-3", Duration::from_secs(10), |r| {
        r["lastUpdatedAt"] != asked["lastUpdatedAt"]
    })
    .await;
    // Readable as soon as it is written, durable once the flush that follows is done: the SIGKILL below
    // comes after that.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while flushes(&gateway) <= flushed_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the acknowledgement was not flushed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (
            acknowledged["status"].as_str(),
            acknowledged["attempts"].as_u64()
        ),
        (Some("PENDING"), Some(1)),
        "{acknowledged}"
    );
    drop((device, op));
    gateway.kill9();
    gateway.spawn();

    let mut op = gateway.operator().await;
    let mut device = Device::connect(gateway.addr, "roll-3", Protocol::V311).await;
    device.subscribe(&["$aws/things/roll-3/rollback"]).await;
    let done = wait_for_recovery(&mut op, "roll-3", Duration::from_secs(10), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let error = done["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("flash is read-only") && error.contains("roll-3"),
        "{error}"
    );
    // The plugin said so in the gateway's log too, at warn, through the sdk's log callback.
    let line = gateway.wait_for_log("could not roll back fw-3", Duration::from_secs(5));
    assert!(
        line.contains("WARN") && line.contains("sprig-plugin-rollback"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_device_is_recovered_when_it_comes_back_even_after_a_sigkill() {
    let mut gateway = Gateway::start_with(config_with_routes);
    let mut op = gateway.operator().await;
    let device = start_job(&gateway, &mut op, "roll-2", "fw-2").await;
    device.disconnect().await;

    op.request("DeleteJob", json!({"jobId": "fw-2", "force": true}))
        .await
        .unwrap();
    let pending = wait_for_recovery(&mut op, "roll-2", Duration::from_secs(10), |r| {
        r["status"] == "PENDING"
    })
    .await;
    assert_eq!(
        pending["attempts"], 0,
        "nothing runs while the device is away: {pending}"
    );
    // And nothing runs later either: a witness proves the runner has since looked at every open recovery.
    // Its handler (the `error-*` route) fails twice, 100 ms apart; only one of those attempts can follow
    // the witness's subscription, so the other ran in a pass over all open recoveries, which takes them
    // in id order: roll-2's, older, came first in it.
    let _witness = start_job(&gateway, &mut op, "error-2", "witness").await;
    op.request("DeleteJob", json!({"jobId": "witness", "force": true}))
        .await
        .unwrap();
    let witness = wait_for_recovery(&mut op, "error-2", Duration::from_secs(20), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(witness["failures"], 2, "{witness}");
    let still = wait_for_recovery(&mut op, "roll-2", Duration::from_secs(1), |_| true).await;
    assert_eq!(still["attempts"], 0, "{still}");

    // The gateway dies between the force-delete and the recovery; the recovery is durable.
    drop(op);
    gateway.kill9();
    gateway.spawn();
    let mut op = gateway.operator().await;
    assert_eq!(op.job_status("fw-2").await, "ResourceNotFoundException");

    let mut device = Device::connect(gateway.addr, "roll-2", Protocol::V5).await;
    device.subscribe(&["$aws/things/roll-2/rollback"]).await;
    let command = device
        .expect_message("$aws/things/roll-2/rollback", Duration::from_secs(10))
        .await;
    assert_eq!(command["jobId"], "fw-2");
    device
        .publish("$aws/things/roll-2/rollback/ack", "{}")
        .await;
    let done = wait_for_recovery(&mut op, "roll-2", Duration::from_secs(10), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(done["status"], "RECOVERED", "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_force_canceled_device_has_its_state_reset() {
    let gateway = Gateway::start_with(config_with_routes);
    let mut op = gateway.operator().await;
    let _device = start_job(&gateway, &mut op, "reset-1", "cfg-1").await;
    op.request("CancelJob", json!({"jobId": "cfg-1", "force": true}))
        .await
        .unwrap();
    let done = wait_for_recovery(&mut op, "reset-1", Duration::from_secs(10), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(done["status"], "RECOVERED", "{done}");
    assert_eq!(done["reason"], "JOB_FORCE_CANCELED");
    assert_eq!(
        done["recordedStatusDetails"],
        json!({"state": "reset", "job": "cfg-1"})
    );
}

/// CancelJobExecution and DeleteJobExecution with force leave one device unable to report on its job,
/// as CancelJob and DeleteJob do: its handler runs the same way, with the operation's own reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_whose_execution_alone_is_force_canceled_or_deleted_has_its_state_reset() {
    let gateway = Gateway::start_with(config_with_routes);
    let mut op = gateway.operator().await;
    let _canceled = start_job(&gateway, &mut op, "reset-1", "cfg-1").await;
    let _deleted = start_job(&gateway, &mut op, "reset-2", "cfg-2").await;
    op.request(
        "CancelJobExecution",
        json!({"jobId": "cfg-1", "thingName": "reset-1", "force": true}),
    )
    .await
    .unwrap();
    op.request(
        "DeleteJobExecution",
        json!({"jobId": "cfg-2", "thingName": "reset-2", "executionNumber": 1, "force": true}),
    )
    .await
    .unwrap();
    for (thing, job, reason) in [
        ("reset-1", "cfg-1", "EXECUTION_FORCE_CANCELED"),
        ("reset-2", "cfg-2", "EXECUTION_DELETED"),
    ] {
        let done = wait_for_recovery(&mut op, thing, Duration::from_secs(10), |r| {
            r["status"] != "PENDING"
        })
        .await;
        assert_eq!(
            (&done["status"], &done["reason"], &done["executionStatus"]),
            (&json!("RECOVERED"), &json!(reason), &json!("IN_PROGRESS")),
            "{done}"
        );
        assert_eq!(
            done["recordedStatusDetails"],
            json!({"state": "reset", "job": job})
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehaving_handlers_are_contained_and_the_gateway_keeps_serving() {
    let gateway = Gateway::start_with(config_with_routes);
    let mut op = gateway.operator().await;
    let mut devices = Vec::new();
    for mode in ["panic", "hang", "garbage", "error"] {
        devices.push(
            start_job(
                &gateway,
                &mut op,
                &format!("{mode}-1"),
                &format!("job-{mode}"),
            )
            .await,
        );
        op.request(
            "DeleteJob",
            json!({"jobId": format!("job-{mode}"), "force": true}),
        )
        .await
        .unwrap();
    }
    for (mode, expected) in [
        ("panic", "panicked"),
        ("hang", "300"),
        ("garbage", "garbage"),
        ("error", ""),
    ] {
        let thing = format!("{mode}-1");
        let done = wait_for_recovery(&mut op, &thing, Duration::from_secs(20), |r| {
            r["status"] != "PENDING"
        })
        .await;
        assert_eq!(done["status"], "FAILED", "{done}");
        assert_eq!(done["failures"], 2, "{done}");
        let error = done["lastError"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            error.contains("misbehave") && error.contains(expected),
            "{mode}: {error}"
        );
    }

    // Throughout, the gateway serves devices: a fresh device runs a whole job.
    run_a_job_end_to_end(&gateway, &mut op, "ok-1", "after").await;

    // And `/metrics` counted each failure by its kind, the calls' latencies, and the recoveries' ends.
    let scrape = gateway.scrape();
    let misbehave = "sprig-plugin-misbehave";
    for outcome in ["panicked", "timed_out", "garbage", "failed"] {
        let labels = [("plugin", misbehave), ("outcome", outcome)];
        let calls = metric(&scrape, "sprig_plugin_calls_total", &labels);
        assert!(calls >= 1.0, "{outcome}: {calls}");
    }
    let timed = metric(
        &scrape,
        "sprig_plugin_call_duration_seconds_count",
        &[("plugin", misbehave)],
    );
    assert!(timed >= 8.0, "{timed}");
    let failed = [("state", "FAILED")];
    assert!(metric(&scrape, "sprig_recoveries_ended_total", &failed) >= 4.0);
    assert!(metric(&scrape, "sprig_recoveries", &failed) >= 4.0);
}

/// A plugin loaded in-process that aborts the process (what a panic does in a plugin built with
/// `panic = "abort"`) takes the gateway down with it; every attempt is written to disk before the call, so after `max_attempts`
/// restarts the recovery ends FAILED, saying so, instead of crashing the gateway after every restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_aborts_the_gateway_ends_at_max_attempts_instead_of_a_crash_loop() {
    let misbehave = plugin_path("sprig-plugin-misbehave");
    let mut gateway = Gateway::start_with(|config| {
        format!(
            "{config}\n[[recovery]]\nthings = \"abort-*\"\nplugin = {misbehave:?}\nisolation = \"in-process\"\nmax_attempts = 2\n[recovery.config]\nmode = \"abort\"\n"
        )
    });
    let mut op = gateway.operator().await;
    let device = start_job(&gateway, &mut op, "abort-1", "job-abort").await;
    op.request("DeleteJob", json!({"jobId": "job-abort", "force": true}))
        .await
        .unwrap();
    let status = gateway.wait_for_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "the plugin's abort ends the process: {status:?}"
    );
    drop((device, op));

    // Each restart: the device comes back, the handler is called again and aborts again, until the
    // attempts are used up.
    // The last device stays connected: a recovery runs only for a device that is attached.
    let mut _attached = None;
    for restart in 1..=2 {
        gateway.spawn();
        let mut device = Device::connect(gateway.addr, "abort-1", Protocol::V311).await;
        device.subscribe(&["$aws/things/abort-1/rollback"]).await;
        if restart == 2 {
            _attached = Some(device);
            break;
        }
        let status = gateway.wait_for_exit(Duration::from_secs(20));
        assert!(!status.success(), "restart {restart}: {status:?}");
    }
    let mut op = gateway.operator().await;
    let done = wait_for_recovery(&mut op, "abort-1", Duration::from_secs(10), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let error = done["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("never returned"), "{error}");
    // And the gateway goes on serving.
    assert_eq!(
        op.job_status("job-abort").await,
        "ResourceNotFoundException"
    );
}

/// A plugin that refuses its route's `[recovery.config]` leaves that route out of service, reported at
/// startup naming the config file, the route and the key; the gateway serves meanwhile, and the route's
/// recoveries fail with that message (per its policy), in either isolation.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_whose_plugin_refuses_its_config_is_reported_and_its_recoveries_fail_saying_why() {
    let rollback = plugin_path("sprig-plugin-rollback");
    let gateway = Gateway::start_with(|config| {
        format!(
            r#"{config}
[[recovery]]
name = "pumps"
things = "pump-*"
plugin = {rollback:?}
max_failures = 1
[recovery.config]
topic = 5
payload = "{{}}"

[[recovery]]
name = "valves"
things = "valve-*"
plugin = {rollback:?}
isolation = "in-process"
max_failures = 1
[recovery.config]
topic = "$aws/things/{{thing}}/rollback"
payload = "{{}}"
qos = 2
"#
        )
    });
    let pumps =
        "gateway.toml: [[recovery]] \"pumps\" (recovery[0]) [recovery.config] topic: invalid \
                 type: integer `5`, expected a string (plugin sprig-plugin-rollback)";
    let valves =
        "gateway.toml: [[recovery]] \"valves\" (recovery[1]) [recovery.config] refused by \
                  plugin sprig-plugin-rollback: rollback: `qos` is 2, must be 0 or 1";
    for message in [pumps, valves] {
        let line = gateway.wait_for_log(message, Duration::from_secs(5));
        assert!(line.contains("out of service"), "{line}");
    }

    let mut op = gateway.operator().await;
    for (thing, job, message) in [("pump-1", "fw-p", pumps), ("valve-1", "fw-v", valves)] {
        let _device = start_job(&gateway, &mut op, thing, job).await;
        op.request("DeleteJob", json!({"jobId": job, "force": true}))
            .await
            .unwrap();
        let done = wait_for_recovery(&mut op, thing, Duration::from_secs(10), |r| {
            r["status"] != "PENDING"
        })
        .await;
        assert_eq!(done["status"], "FAILED", "{done}");
        let error = done["lastError"].as_str().unwrap_or_default();
        assert!(error.ends_with(message), "{thing}: {error}");
    }
    run_a_job_end_to_end(&gateway, &mut op, "ok-1", "after").await;
}
