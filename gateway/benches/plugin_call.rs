//! The cost of one recovery-handler call through the plugin ABI, in nanoseconds.
//!
//! Builds `plugins/rollback` in release, loads it, and times `recover` calls (rendering two templates,
//! one Publish action): directly through the descriptor on this thread ([`DirectInstance`]: context
//! JSON out, answer JSON back, validation), through a [`PluginInstance`] (`isolation = "in-process"`:
//! the same plus the channel to the instance's thread, the oneshot back and the Tokio timeout), and
//! through a [`HostedInstance`] (`isolation = "process"`: the context framed down a pipe to a `sprig
//! plugin-host` process, the call there, the answer framed back and judged, under the Tokio timeout; the
//! host is the release `sprig` that cargo builds for this bench). The async calls run on a multi-thread
//! Tokio runtime with two workers, as `sprig run` has on a 2-core machine. `SPRIG_BENCH_CALLS` (default
//! 100000) changes the number of calls. Run with `cargo bench -p sprig-gateway --bench plugin_call`.

use std::time::{Duration, Instant};

use serde_json::json;
use sprig_gateway::plugins::{
    DirectInstance, HostOptions, HostedInstance, PluginInstance, PluginLibrary,
};
use sprig_sdk::RecoveryContext;
use sprig_test_support::build::{plugin_path_in, Profile};
use sprig_test_support::settings::env_or;

fn report(label: &str, calls: usize, elapsed: Duration) {
    let ns = elapsed.as_nanos() as f64 / calls as f64;
    println!("{label:<48} {ns:>10.0} ns/call  ({calls} calls in {elapsed:.2?})");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls = env_or("SPRIG_BENCH_CALLS", 100_000);
    let path = plugin_path_in(Profile::Release, "sprig-plugin-rollback");
    let library = PluginLibrary::load(&path).unwrap();
    let config = json!({
        "topic": "$aws/things/{thing}/rollback",
        "payload": "{\"jobId\":\"{jobId}\",\"action\":\"rollback\"}",
    });
    let ctx = RecoveryContext {
        thing_name: "sensor-0007".into(),
        job_id: "firmware-update-42".into(),
        job_document: json!({"operation": "update", "url": "https://example.com/fw.bin"}),
        ..RecoveryContext::example()
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

    let instance = PluginInstance::new(library.clone(), config.clone(), Duration::from_secs(5))
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

    let hosted = HostedInstance::start(HostOptions {
        program: env!("CARGO_BIN_EXE_sprig").into(),
        library: path,
        config,
        budget: Duration::from_secs(5),
        label: "bench".into(),
    })
    .await
    .unwrap();
    for _ in 0..calls / 10 {
        hosted.recover(&ctx).await.unwrap();
    }
    let started = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(hosted.recover(&ctx).await.unwrap());
    }
    report(
        "host process (pipe round trip, timeout)",
        calls,
        started.elapsed(),
    );
    println!("{:?}", hosted.stats());
    hosted.shutdown().await;
}
