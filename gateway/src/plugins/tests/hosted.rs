//! Plugins in host processes (`sprig plugin-host`, the binary built by cargo on first use): answers as
//! in-process, and crashes and overruns contained in the host, which is killed, reaped and restarted.

use sprig_test_support::build::sprig_bin;

use super::*;
use crate::plugins::supervisor::FIRST_RESTART_DELAY;

fn options(name: &str, config: Value, budget: Duration) -> HostOptions {
    HostOptions {
        // The `sprig` binary serves as the plugin host.
        program: sprig_bin().to_owned(),
        library: plugin(name),
        config,
        budget,
        label: "test".into(),
    }
}

async fn hosted(name: &str, config: Value, budget: Duration) -> HostedInstance {
    HostedInstance::start(options(name, config, budget))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a process with this id exists (a zombie counts: it was not reaped).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn a_hosted_instance_answers_as_an_in_process_one_does() {
    let config = json!({
        "topic": "$aws/things/{thing}/rollback",
        "payload": "{\"jobId\":\"{jobId}\"}",
    });
    let rollback = hosted("rollback", config.clone(), GENEROUS).await;
    assert_eq!(rollback.name(), "sprig-plugin-rollback");
    assert_eq!(rollback.descriptor(), load("rollback").descriptor());
    let pid = rollback.pid().await.expect("a live host");
    assert_ne!(pid, std::process::id());
    let in_process = instance("rollback", config).await.unwrap();
    let answer = rollback.recover(&context()).await.unwrap();
    assert_eq!(answer, in_process.recover(&context()).await.unwrap());
    assert_eq!(
        answer.actions,
        vec![Action::Publish {
            topic: "$aws/things/sensor-7/rollback".into(),
            payload: r#"{"jobId":"fw-42"}"#.into(),
            qos: 1,
        }]
    );
    // One host serves every call.
    rollback.recover(&context()).await.unwrap();
    assert_eq!(rollback.pid().await, Some(pid));
    let stats = rollback.stats();
    assert_eq!(
        (stats.calls, stats.succeeded),
        (3, 3),
        "create and two recovers: {stats:?}"
    );
}

#[tokio::test]
async fn a_plugin_that_prints_to_stdout_does_not_disturb_the_protocol() {
    let printing = hosted("misbehave", json!({"mode": "ok", "print": true}), GENEROUS).await;
    for _ in 0..3 {
        let answer = printing.recover(&context()).await.unwrap();
        assert_eq!(answer.outcome, Outcome::Recovered);
    }
    assert_eq!(printing.restarts(), 0);
}

#[tokio::test]
async fn errors_panics_and_garbage_are_judged_as_in_process_and_the_host_lives_on() {
    let failing = hosted("misbehave", json!({"mode": "error"}), GENEROUS).await;
    let pid = failing.pid().await;
    let error = failing.recover(&context()).await.unwrap_err();
    assert_eq!(
        error,
        PluginError::Failed {
            plugin: "sprig-plugin-misbehave".into(),
            message: "misbehave: failing for sensor-7 as configured".into(),
        }
    );
    assert_eq!(failing.pid().await, pid);

    let panicky = hosted("misbehave", json!({"mode": "panic"}), GENEROUS).await;
    let pid = panicky.pid().await;
    for _ in 0..2 {
        let error = panicky.recover(&context()).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Panicked, "{error}");
        assert!(
            error.to_string().contains("panicking for sensor-7"),
            "{error}"
        );
    }
    assert_eq!(panicky.pid().await, pid, "the shim caught the panic");
    assert_eq!(panicky.restart_delay(), None);

    for (garbage, expected) in [
        ("non-utf8", "not UTF-8"),
        ("wrong-shape", "not a recovery"),
        ("bad-topic", "not an MQTT topic name"),
    ] {
        let plugin = hosted(
            "misbehave",
            json!({"mode": "garbage", "garbage": garbage}),
            GENEROUS,
        )
        .await;
        let error = plugin.recover(&context()).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Garbage, "{garbage}: {error}");
        assert!(error.to_string().contains(expected), "{garbage}: {error}");
    }
}

#[tokio::test]
async fn a_crash_ends_only_the_host_names_the_signal_and_a_new_host_serves_the_next_call() {
    for (mode, signal) in [("segfault", "SIGSEGV"), ("abort", "SIGABRT")] {
        let crashing = hosted("misbehave", json!({"mode": mode}), GENEROUS).await;
        let first = crashing.pid().await.unwrap();
        let error = crashing.recover(&context()).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Crashed, "{mode}: {error}");
        let text = error.to_string();
        assert!(
            text.contains("sprig-plugin-misbehave")
                && text.contains(&format!("killed by {signal}")),
            "{mode}: {text}"
        );
        assert!(!exists(first), "{mode}: the dead host was reaped");
        assert_eq!(crashing.pid().await, None, "{mode}: restarted lazily");
        let delay = crashing.restart_delay().expect("a restart delay");
        assert!(delay <= FIRST_RESTART_DELAY, "{mode}: {delay:?}");

        // The next call waits out the delay, starts a new host (which crashes again), and the delay doubles.
        let started = Instant::now();
        let error = crashing.recover(&context()).await.unwrap_err();
        assert!(
            started.elapsed() >= delay,
            "{mode}: waited for the restart delay"
        );
        assert_eq!(error.kind(), FailureKind::Crashed, "{mode}: {error}");
        assert_eq!(crashing.restarts(), 1);
        let delay = crashing.restart_delay().expect("a restart delay");
        assert!(
            delay > FIRST_RESTART_DELAY && delay <= 2 * FIRST_RESTART_DELAY,
            "{mode}: {delay:?}"
        );
        let stats = crashing.stats();
        assert_eq!(
            (stats.calls, stats.succeeded, stats.crashed),
            (4, 2, 2),
            "{mode}: two hosts, each created and crashed: {stats:?}"
        );
    }
}

#[tokio::test]
async fn an_overrun_kills_the_host_within_the_budget() {
    for mode in ["spin", "hang"] {
        let stuck = hosted("misbehave", json!({"mode": mode}), BUDGET).await;
        let pid = stuck.pid().await.unwrap();
        let started = Instant::now();
        let error = stuck.recover(&context()).await.unwrap_err();
        let waited = started.elapsed();
        assert_eq!(
            error,
            PluginError::HostKilled {
                plugin: "sprig-plugin-misbehave".into(),
                budget: BUDGET,
            }
        );
        assert_eq!(
            error.to_string(),
            "plugin sprig-plugin-misbehave overran its budget of 200 ms; host killed"
        );
        assert!(
            waited >= BUDGET && waited < BUDGET + Duration::from_secs(2),
            "{mode}: waited {waited:?}"
        );
        assert!(!exists(pid), "{mode}: the host was killed and reaped");
        assert_eq!(stuck.stats().timed_out, 1);
    }
}

#[tokio::test]
async fn a_library_the_host_refuses_or_a_config_the_plugin_refuses_fail_the_start() {
    let mut refused = options("misbehave", json!({"mode": "ok"}), GENEROUS);
    refused.library = wrong_abi_plugin().to_owned();
    let error = HostedInstance::start(refused).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, StartError::Load(_)), "{error:?}");
    assert!(
        text.contains(&format!("ABI version {}", sprig_sdk::ABI_VERSION + 1))
            && text.contains(&format!("ABI version {}", sprig_sdk::ABI_VERSION)),
        "{text}"
    );

    let error = HostedInstance::start(options("rollback", json!({"payload": "x"}), GENEROUS))
        .await
        .unwrap_err();
    let StartError::Create(error) = error else {
        panic!("{error:?}");
    };
    assert_eq!(error.kind(), FailureKind::Failed);
    assert!(error.to_string().contains("topic"), "{error}");

    let error = HostedInstance::start(options(
        "misbehave",
        json!({"mode": "ok", "panic_in_new": true}),
        GENEROUS,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(&error, StartError::Create(e) if e.kind() == FailureKind::Panicked),
        "{error:?}"
    );
}

#[tokio::test]
async fn shutdown_and_drop_end_the_host() {
    let hosted_reset = hosted(
        "reset",
        json!({"status_details": {"state": "reset"}}),
        GENEROUS,
    )
    .await;
    let pid = hosted_reset.pid().await.unwrap();
    hosted_reset.shutdown().await;
    assert!(!exists(pid), "shut down: killed and reaped");
    // A later call starts a new host at once (a shutdown is no failure).
    assert_eq!(hosted_reset.restart_delay(), None);
    let answer = hosted_reset.recover(&context()).await.unwrap();
    assert_eq!(answer.outcome, Outcome::Recovered);
    let pid = hosted_reset.pid().await.unwrap();
    drop(hosted_reset);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(pid).is_some_and(|state| state != 'Z') {
        assert!(
            Instant::now() < deadline,
            "the dropped host is still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state letter of a process (`R`, `S`, `Z`, …), if it exists.
fn status_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_interrupts_a_stuck_call_and_starts_a_new_host_at_once() {
    let stuck = Arc::new(
        hosted(
            "misbehave",
            json!({"mode": "hang", "hang_ms": 60_000}),
            Duration::from_secs(60),
        )
        .await,
    );
    let HostPhase::Running { pid: first } = stuck.status().phase else {
        panic!("{:?}", stuck.status())
    };
    let call = tokio::spawn({
        let stuck = stuck.clone();
        async move { stuck.recover(&context()).await }
    });
    // The call is in the host (the status is read without waiting for it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while stuck.status().call_since.is_none() {
        assert!(Instant::now() < deadline, "the call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stuck.status().phase, HostPhase::Running { pid: first });

    let started = Instant::now();
    stuck.restart_now().await.unwrap();
    let error = call.await.unwrap().unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 60 s call was cut short"
    );
    assert_eq!(error.kind(), FailureKind::Crashed, "{error}");
    assert!(error.to_string().contains("sprig plugin reset"), "{error}");
    let status = stuck.status();
    let HostPhase::Running { pid: second } = status.phase else {
        panic!("{status:?}")
    };
    assert_ne!(first, second);
    assert!(!exists(first), "the old host was reaped");
    // The reset forgot the loss: no restart delay, nothing lost in a row.
    assert_eq!((status.restart_delay, status.lost_in_a_row), (None, 0));
    assert_eq!(status.restarts, 1);
    assert_eq!(status.call_since, None);
}

#[tokio::test]
async fn the_status_shows_a_lost_host_backing_off_then_stopped() {
    let crashy = hosted("misbehave", json!({"mode": "segfault"}), GENEROUS).await;
    let error = crashy.recover(&context()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Crashed, "{error}");
    let status = crashy.status();
    assert_eq!(status.phase, HostPhase::Down { start_error: None });
    assert_eq!(status.lost_in_a_row, 1);
    assert!(status
        .restart_delay
        .is_some_and(|d| d <= FIRST_RESTART_DELAY));
    tokio::time::sleep(FIRST_RESTART_DELAY).await;
    assert_eq!(crashy.status().restart_delay, None);

    // A reset of a lost host starts one.
    crashy.restart_now().await.unwrap();
    assert!(matches!(crashy.status().phase, HostPhase::Running { .. }));
}
