//! DeleteJob on a job with 100,000 executions: the engine and the sled store in-process, on disk.
//!
//! Prints, per run and summarized: CreateJob time for the 100,000-execution job, DeleteJob call latency
//! (the call returns once the job is DELETION_IN_PROGRESS and flushed), and the time until the background
//! deletion has removed every execution and the job. `SPRIG_BENCH_RUNS` (default 10) and
//! `SPRIG_BENCH_EXECUTIONS` (default 100000) change the size. Run with `cargo bench -p sprig-gateway`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sprig_gateway::auth::Grants;
use sprig_gateway::jobs::api::{CreateJobRequest, DeleteJobRequest, DescribeJobRequest};
use sprig_gateway::jobs::{Engine, Limits};
use sprig_gateway::store::Store;
use sprig_test_support::settings::env_or;
use tokio::sync::{mpsc, watch};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let runs = env_or("SPRIG_BENCH_RUNS", 10);
    let executions = env_or("SPRIG_BENCH_EXECUTIONS", 100_000);
    let batch = sprig_gateway::config::Config::default()
        .jobs
        .deletion_batch_size;
    let dir = tempfile::tempdir().unwrap();
    let cache = sprig_gateway::config::Config::default().jobs.store_cache_mb << 20;
    let store = Arc::new(Store::open(dir.path(), cache).unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let limits = Limits {
        max_concurrent_deletions: 10,
        per_namespace: Default::default(),
    };
    // Notifications are not measured here: their events are drained.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let engine = Arc::new(Engine::new(store.clone(), limits, "bench", tx, events_tx));
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(sprig_gateway::jobs::deletion::run(
        engine.clone(),
        batch,
        rx,
        shutdown,
    ));
    let targets: Vec<String> = (0..executions).map(|i| format!("device-{i:06}")).collect();

    println!("sprig DeleteJob benchmark: {executions} executions per job, deletion batch {batch}, {runs} runs");
    println!(
        "{:>4} {:>14} {:>14} {:>16}",
        "run", "CreateJob", "DeleteJob", "deletion done"
    );
    let (mut creates, mut deletes, mut completions) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let job_id = format!("bench-{run}");
        let request = CreateJobRequest {
            job_id: job_id.clone(),
            targets: targets.clone(),
            document: Some(r#"{"operation":"bench"}"#.into()),
            document_source: None,
            description: None,
            target_selection: None,
            namespace_id: Some("bench".into()),
        };
        let started = Instant::now();
        engine.create_job(Grants::all(), request).await.unwrap();
        let create = started.elapsed();

        let started = Instant::now();
        let delete = DeleteJobRequest {
            job_id: job_id.clone(),
            force: true,
            namespace_id: Some("bench".into()),
        };
        engine.delete_job(Grants::all(), delete).await.unwrap();
        let delete = started.elapsed();
        loop {
            let describe = DescribeJobRequest {
                job_id: job_id.clone(),
                before_substitution: None,
            };
            if engine.describe_job(Grants::all(), describe).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let done = started.elapsed();
        println!(
            "{run:>4} {:>14} {:>14} {:>16}",
            ms(create),
            ms(delete),
            ms(done)
        );
        creates.push(create);
        deletes.push(delete);
        completions.push(done);
    }
    for v in [&mut creates, &mut deletes, &mut completions] {
        v.sort();
    }
    println!();
    println!("| measure ({executions} executions) | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| CreateJob | {} | {} |",
        ms(percentile(&creates, 0.5)),
        ms(percentile(&creates, 0.99))
    );
    println!(
        "| DeleteJob call | {} | {} |",
        ms(percentile(&deletes, 0.5)),
        ms(percentile(&deletes, 0.99))
    );
    println!(
        "| until deletion completes | {} | {} |",
        ms(percentile(&completions, 0.5)),
        ms(percentile(&completions, 0.99))
    );
    let report = store.check().unwrap();
    assert!(report.is_consistent(), "{report}");
}
