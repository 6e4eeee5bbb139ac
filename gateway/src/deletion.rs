//! Background deletion: removes the executions of jobs in `DELETION_IN_PROGRESS`, then the job itself.
//!
//! DeleteJob answers as soon as the job is marked; the work happens here, one bounded batch of executions
//! per store transaction, so a job with 100,000 executions never holds the store's write lock for long and
//! a crash loses at most the batch being written (which the transaction then never wrote). Each batch also
//! updates the job's execution counts in the same transaction, so `sprig store check` holds at every step.
//! The worker takes job ids from the engine's channel; at start-up the engine re-sends every job still in
//! `DELETION_IN_PROGRESS`, which is how an interrupted deletion finishes after a restart. Once the last
//! execution is gone the job record goes too, and its `jobId` may be used again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::jobs::model::{now_ms, ExecutionStatus, Job, JobStatus, RecoveryReason, RecoveryRecord};
use crate::jobs::{JobEvent, JobEventKind};
use crate::recovery::Routes;
use crate::store::{Change, Store, StoreError};

/// What one step of a deletion did.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Removed this many executions; more may remain. `pending_things` had a QUEUED or IN_PROGRESS
    /// execution among them: their devices are to be told.
    Removed {
        count: usize,
        pending_things: Vec<String>,
        job: Box<Job>,
    },
    /// The job is gone (or was not being deleted).
    Finished,
}

/// Removes up to `batch` executions of `job_id`, or the job itself once it has none left.
pub fn delete_step(
    store: &Store,
    routes: &Routes,
    job_id: &str,
    batch: usize,
) -> Result<Step, StoreError> {
    let _writer = store.lock_writes();
    let Some(job) = store.job(job_id)? else {
        return Ok(Step::Finished);
    };
    if job.status != JobStatus::DeletionInProgress {
        return Ok(Step::Finished);
    }
    let executions = store.executions_of_job(job_id, None, batch)?;
    if executions.is_empty() {
        store.commit(&Change {
            job_before: Some(&job),
            ..Default::default()
        })?;
        return Ok(Step::Finished);
    }
    let mut remaining = job.clone();
    executions
        .iter()
        .for_each(|e| remaining.counts.remove(e.status));
    remaining.last_updated_at = now_ms();
    // A device interrupted in the middle of its execution is to be recovered: the recovery is created in
    // the same transaction that removes the execution, so neither can exist without the other.
    let now = now_ms();
    let mut recoveries = Vec::new();
    for execution in executions
        .iter()
        .filter(|e| e.status == ExecutionStatus::InProgress)
    {
        if routes
            .route_for(&execution.thing_name, job.namespace_id.as_deref())
            .is_some()
        {
            let mut recovery =
                RecoveryRecord::for_execution(&job, execution, RecoveryReason::JobDeleted, now);
            recovery.id = store.next_recovery_id()?;
            recoveries.push(recovery);
        }
    }
    store.commit(&Change {
        job_before: Some(&job),
        job_after: Some(&remaining),
        delete_executions: &executions,
        put_recoveries: &recoveries,
        ..Default::default()
    })?;
    if !recoveries.is_empty() {
        routes.announce();
    }
    let pending_things = executions
        .iter()
        .filter(|e| !e.status.is_terminal())
        .map(|e| e.thing_name.clone())
        .collect();
    Ok(Step::Removed {
        count: executions.len(),
        pending_things,
        job: Box::new(remaining),
    })
}

/// Runs deletions until `shutdown` turns true. Each job id received is deleted in its own task; an id that
/// is already being worked on is ignored.
pub async fn run(
    store: Arc<Store>,
    routes: Arc<Routes>,
    batch: usize,
    mut jobs: mpsc::UnboundedReceiver<String>,
    events: mpsc::UnboundedSender<JobEvent>,
    shutdown: watch::Receiver<bool>,
) {
    let mut stop = shutdown.clone();
    let active = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            received = jobs.recv() => {
                let Some(job_id) = received else { break };
                if !active.lock().unwrap_or_else(|p| p.into_inner()).insert(job_id.clone()) {
                    continue;
                }
                let (store, active, shutdown) = (store.clone(), active.clone(), shutdown.clone());
                let routes = routes.clone();
                let events = events.clone();
                tasks.spawn(async move {
                    delete_job(store, routes, &job_id, batch, events, shutdown).await;
                    active.lock().unwrap_or_else(|p| p.into_inner()).remove(&job_id);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Let running batches commit; what is left resumes at the next start.
    while tasks.join_next().await.is_some() {}
}

async fn delete_job(
    store: Arc<Store>,
    routes: Arc<Routes>,
    job_id: &str,
    batch: usize,
    events: mpsc::UnboundedSender<JobEvent>,
    shutdown: watch::Receiver<bool>,
) {
    let started = std::time::Instant::now();
    let mut removed = 0;
    while !*shutdown.borrow() {
        let (store, routes, id) = (store.clone(), routes.clone(), job_id.to_owned());
        let step =
            tokio::task::spawn_blocking(move || delete_step(&store, &routes, &id, batch)).await;
        match step {
            Ok(Ok(Step::Removed {
                count,
                pending_things,
                job,
            })) => {
                removed += count;
                if !pending_things.is_empty() {
                    let kind = JobEventKind::Deleted;
                    let _ = events.send(JobEvent {
                        kind,
                        job_id: job.job_id,
                        namespace_id: job.namespace_id,
                        things: pending_things,
                    });
                }
                // Let other work use the store and the blocking pool between batches.
                tokio::task::yield_now().await;
            }
            Ok(Ok(Step::Finished)) => {
                tracing::info!(
                    job_id,
                    executions = removed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "job deleted"
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(job_id, error = %e, "deletion step failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(job_id, error = %e, "deletion task failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::info!(
        job_id,
        executions = removed,
        "deletion paused by shutdown; it resumes at the next start"
    );
}
