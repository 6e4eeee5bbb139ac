//! Loading and calling the real plugins of `plugins/`, built by cargo on first use: in-process here, in
//! plugin host processes in [`hosted`].

mod hosted;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sprig_sdk::{Action, Outcome, RecoveryContext};
use sprig_test_support::build::{plugin_path, wrong_abi_plugin};

use super::*;

/// The budget of the hang tests.
const BUDGET: Duration = Duration::from_millis(200);
/// The budget of every other call: generous, since a panic with `RUST_BACKTRACE=1` symbolizes a backtrace
/// of a debug build (hundreds of milliseconds), and builds may load the machine.
const GENEROUS: Duration = Duration::from_secs(20);

/// A plugin of `plugins/` (`rollback`, `reset`, `misbehave`), built on first use.
fn plugin(name: &str) -> PathBuf {
    plugin_path(&format!("sprig-plugin-{name}"))
}

fn load(name: &str) -> Arc<PluginLibrary> {
    PluginLibrary::load(plugin(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn context() -> RecoveryContext {
    RecoveryContext::example()
}

async fn instance(name: &str, config: Value) -> Result<PluginInstance, PluginError> {
    PluginInstance::new(load(name), config, GENEROUS).await
}

async fn misbehave(config: Value) -> PluginInstance {
    instance("misbehave", config).await.unwrap()
}

#[test]
fn descriptor_of_a_real_plugin() {
    let library = load("rollback");
    let descriptor = library.descriptor();
    assert_eq!(descriptor.name, "sprig-plugin-rollback");
    assert_eq!(descriptor.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(descriptor.sdk_version, sprig_sdk::abi::SDK_VERSION);
    assert_eq!(descriptor.abi_version, sprig_sdk::ABI_VERSION);
    assert!(descriptor.path.is_absolute());
    // Loading again is the same library.
    assert!(Arc::ptr_eq(&library, &load("rollback")));
}

#[tokio::test]
async fn rollback_renders_its_templates_and_waits_for_the_acknowledgement() {
    let config = json!({
        "topic": "$aws/things/{thing}/rollback",
        "payload": "{\"jobId\":\"{jobId}\",\"action\":\"rollback\",\"was\":\"{status}\",\"ns\":\"{namespace}\"}",
        "ack_timeout_ms": 5000,
        "max_attempts": 2
    });
    let rollback = instance("rollback", config).await.unwrap();
    let mut ctx = context();
    let answer = rollback.recover(&ctx).await.unwrap();
    assert_eq!(
        answer.actions,
        vec![Action::Publish {
            topic: "$aws/things/sensor-7/rollback".into(),
            payload: r#"{"jobId":"fw-42","action":"rollback","was":"IN_PROGRESS","ns":""}"#.into(),
            qos: 1,
        }]
    );
    assert_eq!(answer.outcome, Outcome::RetryLater { after_ms: 5000 });
    // Acknowledged: recovered, nothing more to publish.
    ctx.attempt = 2;
    ctx.acknowledged = true;
    let answer = rollback.recover(&ctx).await.unwrap();
    assert!(answer.actions.is_empty());
    assert_eq!(answer.outcome, Outcome::Recovered);
    // Never acknowledged: gives up after max_attempts.
    ctx.attempt = 3;
    ctx.acknowledged = false;
    let answer = rollback.recover(&ctx).await.unwrap();
    assert!(
        matches!(&answer.outcome, Outcome::Failed { reason } if reason.contains("sensor-7")),
        "{answer:?}"
    );
}

#[tokio::test]
async fn rollback_refuses_a_bad_config_naming_itself() {
    let error = instance("rollback", json!({"payload": "x"}))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::Failed);
    let text = error.to_string();
    assert!(
        text.contains("sprig-plugin-rollback") && text.contains("topic"),
        "{text}"
    );
}

#[tokio::test]
async fn reset_returns_its_configured_details() {
    let config = json!({"status_details": {"state": "reset", "job": "{jobId}"}});
    let reset = instance("reset", config).await.unwrap();
    let answer = reset.recover(&context()).await.unwrap();
    assert_eq!(
        answer.actions,
        vec![Action::SetStatusDetails {
            status_details: BTreeMap::from([
                ("state".into(), "reset".into()),
                ("job".into(), "fw-42".into()),
            ]),
        }]
    );
    assert_eq!(answer.outcome, Outcome::Recovered);
}

#[tokio::test]
async fn a_panic_is_contained_and_a_fresh_instance_works() {
    let panicky = misbehave(json!({"mode": "panic"})).await;
    let error = panicky.recover(&context()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Panicked, "{error}");
    assert_eq!(error.plugin(), "sprig-plugin-misbehave");
    assert!(
        error.to_string().contains("panicking for sensor-7"),
        "{error}"
    );
    // The instance is not quarantined: the shim caught the panic, the next call runs (and panics again).
    assert!(!panicky.is_quarantined());
    let error = panicky.recover(&context()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Panicked);
    // The library still serves fresh instances.
    let fine = misbehave(json!({"mode": "ok"})).await;
    assert_eq!(
        fine.recover(&context()).await.unwrap().outcome,
        Outcome::Recovered
    );
    // A panic while creating is contained as well.
    let error = instance("misbehave", json!({"mode": "ok", "panic_in_new": true}))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::Panicked, "{error}");
}

#[tokio::test]
async fn an_error_is_failed() {
    let failing = misbehave(json!({"mode": "error"})).await;
    let error = failing.recover(&context()).await.unwrap_err();
    assert_eq!(
        error,
        PluginError::Failed {
            plugin: "sprig-plugin-misbehave".into(),
            message: "misbehave: failing for sensor-7 as configured".into(),
        }
    );
    // Errors do not quarantine.
    assert_eq!(
        failing.recover(&context()).await.unwrap_err().kind(),
        FailureKind::Failed
    );
}

#[tokio::test]
async fn garbage_answers_are_refused() {
    for (garbage, expected) in [
        ("non-utf8", "not UTF-8"),
        ("not-json", "not a recovery"),
        ("wrong-shape", "not a recovery"),
        ("bad-topic", "not an MQTT topic name"),
    ] {
        let plugin = misbehave(json!({"mode": "garbage", "garbage": garbage})).await;
        let error = plugin.recover(&context()).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Garbage, "{garbage}: {error}");
        let text = error.to_string();
        assert!(
            text.contains(expected) && text.contains("sprig-plugin-misbehave"),
            "{garbage}: {text}"
        );
    }
}

#[tokio::test]
async fn a_hang_times_out_within_the_budget_then_quarantines() {
    let stuck = PluginInstance::new(load("misbehave"), json!({"mode": "hang"}), BUDGET)
        .await
        .unwrap();
    let started = Instant::now();
    let error = stuck.recover(&context()).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(
        error,
        PluginError::TimedOut {
            plugin: "sprig-plugin-misbehave".into(),
            budget: BUDGET,
        }
    );
    assert!(
        waited >= BUDGET && waited < BUDGET + Duration::from_secs(2),
        "waited {waited:?}"
    );
    assert!(stuck.is_quarantined());
    let started = Instant::now();
    let error = stuck.recover(&context()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Quarantined, "{error}");
    assert!(started.elapsed() < BUDGET, "quarantined calls fail fast");
    assert!(error.to_string().contains("quarantined"));
    // The process is up, and other instances of the same library are unaffected.
    let fine = misbehave(json!({"mode": "ok"})).await;
    assert!(fine.recover(&context()).await.is_ok());
}

#[tokio::test]
async fn a_group_counts_its_instances_calls_and_the_threads_they_left_running() {
    let group = Arc::new(InstanceGroup::default());
    let config = json!({"mode": "hang", "hang_ms": 1_500});
    let stuck =
        PluginInstance::new_in_group(load("misbehave"), config, BUDGET, group.clone(), None)
            .await
            .unwrap();
    assert_eq!(group.running_threads(), 1);
    let error = stuck.recover(&context()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::TimedOut);
    drop(stuck);
    // The abandoned thread still sleeps in the plugin: it cannot be ended, only waited for.
    assert_eq!(group.running_threads(), 1);
    let fine = PluginInstance::new_in_group(
        load("misbehave"),
        json!({"mode": "ok"}),
        GENEROUS,
        group.clone(),
        None,
    )
    .await
    .unwrap();
    fine.recover(&context()).await.unwrap();
    assert_eq!(group.running_threads(), 2);
    let stats = group.stats();
    assert_eq!(
        (stats.calls, stats.succeeded, stats.timed_out),
        (4, 3, 1),
        "two creates, two recovers: {stats:?}"
    );
    // Once its call returns, the abandoned thread ends; a dropped instance's thread ends at once.
    drop(fine);
    let deadline = Instant::now() + Duration::from_secs(10);
    while group.running_threads() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} threads left",
            group.running_threads()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_hang_does_not_stall_the_runtime() {
    // On a current-thread runtime, a blocking call would stop the ticker task below.
    let config = json!({"mode": "hang", "hang_ms": 60_000});
    let stuck = PluginInstance::new(load("misbehave"), config, BUDGET)
        .await
        .unwrap();
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let _ = stuck.recover(&context()).await;
    ticker.abort();
    assert!(
        ticks.load(std::sync::atomic::Ordering::Relaxed) >= 5,
        "the runtime kept running while the plugin hung"
    );
}

#[tokio::test]
async fn counters_count_calls_by_kind() {
    let library = load("misbehave");
    let before = library.stats();
    let ok = misbehave(json!({"mode": "ok"})).await;
    ok.recover(&context()).await.unwrap();
    let failing = misbehave(json!({"mode": "error"})).await;
    let _ = failing.recover(&context()).await;
    let after = library.stats();
    // Other tests call the same library concurrently: only lower bounds hold.
    assert!(after.calls >= before.calls + 4, "{before:?} → {after:?}");
    assert!(
        after.succeeded >= before.succeeded + 3,
        "{before:?} → {after:?}"
    );
    assert!(after.failed > before.failed, "{before:?} → {after:?}");
}

#[test]
fn the_wrong_abi_is_refused_naming_both_versions_and_the_file() {
    let path = wrong_abi_plugin();
    let error = PluginLibrary::load(path).unwrap_err();
    assert!(
        matches!(error, LoadError::AbiMismatch { found, expected, .. }
            if found == sprig_sdk::ABI_VERSION + 1 && expected == sprig_sdk::ABI_VERSION),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!("ABI version {}", sprig_sdk::ABI_VERSION + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!("ABI version {}", sprig_sdk::ABI_VERSION)),
        "{text}"
    );
    assert!(
        text.contains(path.canonicalize().unwrap().to_str().unwrap()),
        "{text}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libnot.so");
    std::fs::write(&path, "#!/bin/sh\necho I am not a library\n").unwrap();
    let error = PluginLibrary::load(&path).unwrap_err();
    assert!(matches!(error, LoadError::NotALibrary { .. }), "{error:?}");
    assert!(error.to_string().contains("libnot.so"), "{error}");

    let missing = dir.path().join("missing.so");
    let error = PluginLibrary::load(&missing).unwrap_err();
    assert!(matches!(error, LoadError::Unreadable { .. }), "{error:?}");
    assert!(error.to_string().contains("missing.so"), "{error}");

    let error = PluginLibrary::load(dir.path()).unwrap_err();
    assert!(matches!(error, LoadError::Unreadable { .. }), "{error:?}");
}

/// A shared library every Linux system has, without a descriptor.
fn system_library() -> Option<PathBuf> {
    let dirs = [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ];
    dirs.iter()
        .flat_map(|dir| ["libm.so.6", "libc.so.6"].map(|name| Path::new(dir).join(name)))
        .find(|path| path.is_file())
}

#[test]
fn a_library_without_the_descriptor_is_refused() {
    let Some(path) = system_library() else {
        eprintln!("no libm.so.6 or libc.so.6 found; skipped");
        return;
    };
    let error = PluginLibrary::load(&path).unwrap_err();
    assert!(matches!(error, LoadError::NoDescriptor { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("SPRIG_PLUGIN_DESCRIPTOR") && text.contains(".so.6"),
        "{text}"
    );
}

#[test]
fn a_direct_instance_calls_on_this_thread() {
    let library = load("reset");
    let mut direct =
        DirectInstance::new(&library, &json!({"status_details": {"state": "reset"}})).unwrap();
    let answer = direct.recover(&context()).unwrap();
    assert_eq!(answer.outcome, Outcome::Recovered);
    let error = DirectInstance::new(&library, &json!({"status_details": 3})).unwrap_err();
    assert!(error.to_string().contains("invalid config"), "{error}");
}

#[test]
fn toml_config_is_the_json_the_plugin_reads() {
    let table: toml::Table = toml::from_str(
        r#"
        topic = "$aws/things/{thing}/rollback"
        max_attempts = 3
        ratio = 0.5
        enabled = true
        since = 2024-05-01T10:00:00Z
        list = [1, "two"]
        status_details = { state = "reset" }
        "#,
    )
    .unwrap();
    assert_eq!(
        toml_config(&table),
        json!({
            "topic": "$aws/things/{thing}/rollback",
            "max_attempts": 3,
            "ratio": 0.5,
            "enabled": true,
            "since": "2024-05-01T10:00:00Z",
            "list": [1, "two"],
            "status_details": {"state": "reset"}
        })
    );
}

#[test]
fn instances_can_be_shared_between_tasks() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: T) {}
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let instance = runtime.block_on(misbehave(json!({"mode": "ok"})));
    assert_send_sync(&instance);
    let ctx = context();
    assert_send(instance.recover(&ctx));
}

#[test]
fn a_failed_create_reads_as_a_refusal_of_the_routes_config() {
    let at = "gw.toml: [[recovery]] \"pumps\" (recovery[1])";
    let failed = |message: &str| PluginError::Failed {
        plugin: "p".into(),
        message: message.into(),
    };
    assert_eq!(
        failed("invalid config: topic: invalid type: integer `5`, expected a string")
            .refusing_config_at(at),
        "gw.toml: [[recovery]] \"pumps\" (recovery[1]) [recovery.config] topic: invalid type: \
         integer `5`, expected a string (plugin p)"
    );
    assert_eq!(
        failed("`topic` must not be empty").refusing_config_at(at),
        "gw.toml: [[recovery]] \"pumps\" (recovery[1]) [recovery.config] refused by plugin p: \
         `topic` must not be empty"
    );
    let panicked = PluginError::Panicked {
        plugin: "p".into(),
        message: "boom".into(),
    };
    assert_eq!(
        panicked.refusing_config_at(at),
        "gw.toml: [[recovery]] \"pumps\" (recovery[1]): the plugin instance cannot be created: \
         plugin p panicked: boom"
    );
}
