//! The cost of one recovery-handler call through the plugin ABI, in nanoseconds.
//!
//! Builds `plugins/rollback` in release, loads it, and times `recover` calls (rendering two templates,
//! one Publish action): directly through the descriptor on this thread ([`DirectInstance`]: context
//! JSON out, answer JSON back, validation), and through a [`PluginInstance`] (the same plus the channel
//! to the instance's thread, the oneshot back and the Tokio timeout). `SPRIG_BENCH_CALLS` (default
//! 100000) changes the number of calls. Run with `cargo bench -p sprig-gateway --bench plugin_call`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sprig_gateway::plugins::{DirectInstance, PluginInstance, PluginLibrary};
use sprig_sdk::{Reason, RecoveryContext};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rollback_release_build() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "sprig-plugin-rollback",
        ])
        .current_dir(workspace)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build of the rollback plugin failed"
    );
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("release")
        .join("libsprig_plugin_rollback.so")
}

fn report(label: &str, calls: usize, elapsed: Duration) {
    let ns = elapsed.as_nanos() as f64 / calls as f64;
    println!("{label:<48} {ns:>10.0} ns/call  ({calls} calls in {elapsed:.2?})");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let calls = env_or("SPRIG_BENCH_CALLS", 100_000);
    let library = PluginLibrary::load(rollback_release_build()).unwrap();
    let config = json!({
        "topic": "$aws/things/{thing}/rollback",
        "payload": "{\"jobId\":\"{jobId}\",\"action\":\"rollback\"}",
    });
    let ctx = RecoveryContext {
        thing_name: "sensor-0007".into(),
        job_id: "firmware-update-42".into(),
        namespace_id: None,
        job_document: json!({"operation": "update", "url": "https://example.com/fw.bin"}),
        execution_status: "IN_PROGRESS".into(),
        status_details: BTreeMap::from([("step".into(), "flashing".into())]),
        reason: Reason::ForceDeleted,
        attempt: 1,
        acknowledged: false,
    };
    let context_json = serde_json::to_vec(&ctx).unwrap();

    let mut direct = DirectInstance::new(&library, &config).unwrap();
    for _ in 0..calls / 10 {
        direct.recover_json(&context_json).unwrap();
    }
    let started = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(direct.recover_json(&context_json).unwrap());
    }
    report("direct, through the descriptor", calls, started.elapsed());

    let started = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(direct.recover(&ctx).unwrap());
    }
    report(
        "direct, serializing the context each call",
        calls,
        started.elapsed(),
    );

    let instance = PluginInstance::new(library.clone(), config, Duration::from_secs(5))
        .await
        .unwrap();
    for _ in 0..calls / 10 {
        instance.recover(&ctx).await.unwrap();
    }
    let started = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(instance.recover(&ctx).await.unwrap());
    }
    report(
        "instance thread (channel, oneshot, timeout)",
        calls,
        started.elapsed(),
    );
    println!("{:?}", library.stats());
}
