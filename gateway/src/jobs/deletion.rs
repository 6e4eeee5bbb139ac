//! Background deletion: removes the executions of jobs in `DELETION_IN_PROGRESS`, then the job itself.
//!
//! DeleteJob answers as soon as the job is marked; the work happens here, one bounded batch of executions
//! per store transaction, so a job with 100,000 executions never holds the store's write lock for long and
//! a crash loses at most the batch being written (which the transaction then never wrote). Each batch also
//! updates the job's execution counts in the same transaction, so `sprig store check` holds at every step.
//! Each step reads, asks [`super::transitions`] for the change and commits it through the engine, which
//! announces it: the engine stays the one writer. The worker takes job ids from the engine's channel; at start-up the engine re-sends every job still in
//! `DELETION_IN_PROGRESS`, which is how an interrupted deletion finishes after a restart. Once the last
//! execution is gone the job record goes too, and its `jobId` may be used again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::clock::now_ms;
use super::engine::Engine;
use super::transitions;
use crate::model::JobStatus;
use crate::store::StoreError;

/// What one step of a deletion did.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Removed this many executions; more may remain.
    Removed { count: usize },
    /// The job is gone (or was not being deleted).
    Finished,
}

impl Engine {
    /// Removes up to `batch` executions of `job_id`, or the job itself once it has none left.
    pub fn delete_step(&self, job_id: &str, batch: usize) -> Result<Step, StoreError> {
        let store = self.store();
        let _writer = store.lock_writes();
        let Some(job) = store.job(job_id)? else {
            return Ok(Step::Finished);
        };
        if job.status != JobStatus::DeletionInProgress {
            return Ok(Step::Finished);
        }
        let executions = store.executions_of_job(job_id, None, batch)?;
        if executions.is_empty() {
            self.commit(&job, transitions::remove_deleted_job())?;
            return Ok(Step::Finished);
        }
        let count = executions.len();
        let routed = |e: &crate::model::Execution| self.is_routed(&job, e);
        let removed = transitions::delete_executions(&job, executions, now_ms(), routed);
        self.commit(&job, removed)?;
        Ok(Step::Removed { count })
    }
}

/// Runs deletions until `shutdown` turns true. Each job id received is deleted in its own task; an id that
/// is already being worked on is ignored.
pub async fn run(
    engine: Arc<Engine>,
    batch: usize,
    mut jobs: mpsc::UnboundedReceiver<String>,
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
                crate::metrics::get().deletions_in_progress.inc();
                let (engine, active, shutdown) = (engine.clone(), active.clone(), shutdown.clone());
                tasks.spawn(async move {
                    delete_job(engine, &job_id, batch, shutdown).await;
                    active.lock().unwrap_or_else(|p| p.into_inner()).remove(&job_id);
                    crate::metrics::get().deletions_in_progress.dec();
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Let running batches commit; what is left resumes at the next start.
    while tasks.join_next().await.is_some() {}
}

async fn delete_job(
    engine: Arc<Engine>,
    job_id: &str,
    batch: usize,
    shutdown: watch::Receiver<bool>,
) {
    let started = std::time::Instant::now();
    let mut removed = 0;
    while !*shutdown.borrow() {
        let id = job_id.to_owned();
        let step = engine
            .on_blocking_pool(move |engine| engine.delete_step(&id, batch))
            .await;
        match step {
            Ok(Ok(Step::Removed { count })) => {
                removed += count;
                crate::metrics::get()
                    .executions_removed
                    .inc_by(count as u64);
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
