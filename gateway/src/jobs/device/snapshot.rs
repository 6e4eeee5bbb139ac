//! What a device's jobs look like now, read for the device API and the notifier: its pending executions
//! in a scope, oldest first, and the next one. Reads only; a thing's pending executions come from the
//! store's in-memory index, and a batch of things decodes each job once ([`JobCache`]).

use std::sync::Arc;

use crate::jobs::clock::now_ms;
use crate::jobs::engine::Engine;
use crate::jobs::error::DeviceError;
use crate::jobs::wire::{
    device_execution, pick_next, snapshot_of, sort_oldest_first, DeviceExecution, Pending,
    ThingSnapshot,
};
use crate::model::{Execution, Job, JobStatus};
use crate::store::{Store, StoreError};

/// Jobs read for a batch of snapshots, each read and decoded once, not once per thing; the notifier keeps
/// one cache per batch, so the jobs it reads are as fresh as the batch.
#[derive(Debug, Default)]
pub struct JobCache {
    jobs: std::collections::HashMap<String, Option<Arc<Job>>>,
}

impl JobCache {
    fn get(
        &mut self,
        store: &Store,
        job_id: &str,
    ) -> std::result::Result<Option<Arc<Job>>, StoreError> {
        if let Some(job) = self.jobs.get(job_id) {
            return Ok(job.clone());
        }
        let job = store.job(job_id)?.map(Arc::new);
        self.jobs.insert(job_id.to_owned(), job.clone());
        Ok(job)
    }
}

impl Engine {
    /// The pending executions and the next one of `thing` in a scope (blocking: for the notifier's batches).
    pub fn snapshot(
        &self,
        thing: &str,
        namespace: Option<&str>,
        jobs: &mut JobCache,
    ) -> std::result::Result<ThingSnapshot, StoreError> {
        let pending = self.pending_in_scope(thing, namespace, jobs)?;
        Ok(snapshot_of(&pending, now_ms()))
    }

    /// [`snapshot`](Self::snapshot) of many things in one scope, in their order, from the store's index of
    /// pending executions ([`Store::pending_executions_of_things`](crate::store::Store::pending_executions_of_things)).
    pub fn snapshots(
        &self,
        things: &[String],
        namespace: Option<&str>,
        jobs: &mut JobCache,
    ) -> std::result::Result<Vec<ThingSnapshot>, StoreError> {
        let names: Vec<&str> = things.iter().map(String::as_str).collect();
        let now = now_ms();
        Ok(self
            .pending_of(&names, namespace, jobs)?
            .iter()
            .map(|pending| snapshot_of(pending, now))
            .collect())
    }

    /// The thing's execution of `job_id` if it is pending and the job is in the scope and not being deleted
    /// (blocking: for the notifier, which names it in a job's own notification).
    pub fn pending_execution(
        &self,
        thing: &str,
        namespace: Option<&str>,
        job_id: &str,
        jobs: &mut JobCache,
    ) -> std::result::Result<Option<DeviceExecution>, StoreError> {
        let Some(job) = jobs
            .get(self.store(), job_id)?
            .filter(|j| in_scope(j, namespace))
        else {
            return Ok(None);
        };
        let execution = self
            .store()
            .execution(job_id, thing)?
            .filter(|e| !e.status.is_terminal());
        Ok(execution.map(|e| device_execution(&e, &job, true, now_ms())))
    }

    /// The thing's execution of `job_id`, if the job is in the scope and not being deleted.
    pub(super) fn device_execution_of(
        &self,
        thing: &str,
        namespace: Option<&str>,
        job_id: &str,
    ) -> Result<(Execution, Arc<Job>), DeviceError> {
        let job = self
            .store()
            .job(job_id)?
            .map(Arc::new)
            .filter(|j| in_scope(j, namespace))
            .ok_or_else(|| DeviceError::not_found(job_id, thing))?;
        let execution = self
            .store()
            .execution(job_id, thing)?
            .ok_or_else(|| DeviceError::not_found(job_id, thing))?;
        Ok((execution, job))
    }

    pub(super) fn next_pending(
        &self,
        thing: &str,
        namespace: Option<&str>,
    ) -> std::result::Result<Option<(Execution, Arc<Job>)>, StoreError> {
        let pending = self.pending_in_scope(thing, namespace, &mut JobCache::default())?;
        Ok(pick_next(&pending).cloned())
    }

    /// The thing's pending executions in the scope, oldest first, with their jobs.
    fn pending_in_scope(
        &self,
        thing: &str,
        namespace: Option<&str>,
        jobs: &mut JobCache,
    ) -> std::result::Result<Vec<(Execution, Arc<Job>)>, StoreError> {
        Ok(self
            .pending_of(&[thing], namespace, jobs)?
            .pop()
            .unwrap_or_default())
    }

    /// Each thing's pending executions in the scope, oldest first, in the things' order (from the store's
    /// pending index: no walk of the trees).
    fn pending_of(
        &self,
        things: &[&str],
        namespace: Option<&str>,
        jobs: &mut JobCache,
    ) -> std::result::Result<Vec<Vec<Pending>>, StoreError> {
        let executions = self.store().pending_executions_of_things(things)?;
        let mut pending: Vec<Vec<Pending>> = Vec::with_capacity(things.len());
        for executions in executions {
            let mut mine = Vec::with_capacity(executions.len());
            for execution in executions {
                if let Some(job) = jobs
                    .get(self.store(), &execution.job_id)?
                    .filter(|j| in_scope(j, namespace))
                {
                    mine.push((execution, job));
                }
            }
            sort_oldest_first(&mut mine);
            pending.push(mine);
        }
        Ok(pending)
    }
}

/// Is `job` one of the scope's jobs that devices see (created, and not being deleted)?
fn in_scope(job: &Job, namespace: Option<&str>) -> bool {
    job.namespace_id.as_deref() == namespace
        && !matches!(
            job.status,
            JobStatus::DeletionInProgress | JobStatus::Creating
        )
}
