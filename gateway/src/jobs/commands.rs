//! The operators' commands that change jobs: CreateJob, DeleteJob, CancelJob and UpdateJob, and of one
//! execution, CancelJobExecution and DeleteJobExecution. Each validates its input, then, under the
//! store's write lock, reads the job (and the execution), asks [`super::transitions`] for the change and
//! commits it through the engine, durably before it answers.

use std::sync::Arc;

use super::api::{
    CancelJobExecutionRequest, CancelJobRequest, CreateJobRequest, DeleteJobExecutionRequest,
    DeleteJobRequest, JobRef, UpdateJobRequest,
};
use super::clock::now_ms;
use super::engine::Engine;
use super::planning::{plan_create, CreatePlan};
use super::transitions::{self, DeletionLoad};
use super::{creation, validate, Grants, JobsError};
use crate::model::{Execution, Job, JobStatus};

type Result<T> = std::result::Result<T, JobsError>;

impl Engine {
    pub async fn create_job(
        self: &Arc<Self>,
        grants: Grants,
        request: CreateJobRequest,
    ) -> Result<JobRef> {
        let plan = plan_create(&request, &grants, now_ms())?;
        self.blocking(move |engine| engine.create_job_blocking(plan))
            .await
    }

    pub async fn delete_job(
        self: &Arc<Self>,
        grants: Grants,
        request: DeleteJobRequest,
    ) -> Result<()> {
        validate::job_id("jobId", &request.job_id)?;
        if let Some(ns) = &request.namespace_id {
            validate::namespace_id(ns)?;
        }
        self.blocking(move |engine| engine.delete_job_blocking(&grants, request))
            .await
    }

    pub async fn cancel_job(
        self: &Arc<Self>,
        grants: Grants,
        request: CancelJobRequest,
    ) -> Result<JobRef> {
        validate::job_id("jobId", &request.job_id)?;
        if let Some(code) = &request.reason_code {
            validate::reason_code(code)?;
        }
        if let Some(comment) = &request.comment {
            validate::text("comment", comment, 2028)?;
        }
        self.blocking(move |engine| engine.cancel_job_blocking(&grants, request))
            .await
    }

    pub async fn update_job(
        self: &Arc<Self>,
        grants: Grants,
        request: UpdateJobRequest,
    ) -> Result<()> {
        validate::job_id("jobId", &request.job_id)?;
        if let Some(ns) = &request.namespace_id {
            validate::namespace_id(ns)?;
        }
        if let Some(description) = &request.description {
            validate::text("description", description, 2028)?;
        }
        if let Some((field, why)) = request.unsupported() {
            return Err(JobsError::InvalidRequest(format!(
                "{field}: not supported: {why}"
            )));
        }
        self.blocking(move |engine| engine.update_job_blocking(&grants, request))
            .await
    }

    pub async fn cancel_job_execution(
        self: &Arc<Self>,
        grants: Grants,
        request: CancelJobExecutionRequest,
    ) -> Result<()> {
        validate::job_id("jobId", &request.job_id)?;
        validate::thing_name("thingName", &request.thing_name)?;
        if let Some(details) = &request.status_details {
            validate::status_details(details)?;
        }
        self.blocking(move |engine| engine.cancel_job_execution_blocking(&grants, request))
            .await
    }

    pub async fn delete_job_execution(
        self: &Arc<Self>,
        grants: Grants,
        request: DeleteJobExecutionRequest,
    ) -> Result<()> {
        validate::job_id("jobId", &request.job_id)?;
        validate::thing_name("thingName", &request.thing_name)?;
        if let Some(ns) = &request.namespace_id {
            validate::namespace_id(ns)?;
        }
        self.blocking(move |engine| engine.delete_job_execution_blocking(&grants, request))
            .await
    }

    fn create_job_blocking(&self, plan: CreatePlan) -> Result<JobRef> {
        let store = self.store();
        let _writer = store.lock_writes();
        let job_id = plan.job.job_id.clone();
        if store.job(&job_id)?.is_some() {
            return Err(JobsError::ResourceAlreadyExists(format!(
                "Job {job_id} already exists"
            )));
        }
        let started = std::time::Instant::now();
        let mut job = match creation::write(store, plan.job, self.creation_batch) {
            Ok(job) => {
                self.counted(None, Some(&job), 0);
                job
            }
            Err(e) => {
                if let Err(undo) = creation::undo(store, &job_id, self.creation_batch) {
                    tracing::error!(job_id, error = %undo, "cannot undo a failed creation; it is undone at the next start");
                }
                return Err(e.into());
            }
        };
        store.flush()?;
        let executions = job.targets.len();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(job_id, namespace = ?job.namespace_id, executions, elapsed_ms, "job created");
        let reply = self.arns.job_ref(&job);
        let things = std::mem::take(&mut job.targets);
        self.announce_created(&job, things);
        Ok(reply)
    }

    fn delete_job_blocking(&self, grants: &Grants, request: DeleteJobRequest) -> Result<()> {
        let _writer = self.store().lock_writes();
        let job = self.visible_job(grants, &request.job_id)?;
        let load = self.deletion_load(&job)?;
        let deleting = transitions::start_deletion(&job, &request, load, &self.limits, now_ms())?;
        // The caller is told the deletion is under way: it must survive a crash from here on.
        self.commit_durably(&job, deleting)?;
        tracing::info!(job_id = %job.job_id, namespace = ?job.namespace_id, force = request.force, "job deletion started");
        let _ = self.deletions.send(job.job_id);
        Ok(())
    }

    /// How many jobs are being deleted, in all and (only if it has its own limit) in `job`'s namespace.
    fn deletion_load(&self, job: &Job) -> Result<DeletionLoad> {
        let store = self.store();
        let deleting = store.job_ids_with_status(JobStatus::DeletionInProgress)?;
        let namespace = job.namespace_id.as_deref();
        let mut deleting_in_namespace = 0;
        // Read the jobs only when the namespace's limit needs counting.
        if self.limits.of_namespace(namespace).is_some() {
            for id in &deleting {
                if store
                    .job(id)?
                    .is_some_and(|j| j.namespace_id.as_deref() == namespace)
                {
                    deleting_in_namespace += 1;
                }
            }
        }
        Ok(DeletionLoad {
            deleting: deleting.len(),
            deleting_in_namespace,
        })
    }

    fn cancel_job_blocking(&self, grants: &Grants, request: CancelJobRequest) -> Result<JobRef> {
        let _writer = self.store().lock_writes();
        let job = self.visible_job(grants, &request.job_id)?;
        let mut cancellation = transitions::cancel_job(&job, &request, now_ms())?;
        let routed = |e: &Execution| self.is_routed(&job, e);
        for execution in self.executions_of(&job.job_id, None) {
            cancellation.execution(execution?, routed);
        }
        let canceled = cancellation.finish();
        let executions = canceled.put_executions.len();
        let canceled = self.commit_durably(&job, canceled)?.unwrap_or(job);
        tracing::info!(job_id = %canceled.job_id, force = request.force, executions, "job canceled");
        Ok(self.arns.job_ref(&canceled))
    }

    fn update_job_blocking(&self, grants: &Grants, request: UpdateJobRequest) -> Result<()> {
        let _writer = self.store().lock_writes();
        let job = self.visible_job(grants, &request.job_id)?;
        if let Some(updated) = transitions::update_job(&job, &request, now_ms())? {
            self.commit_durably(&job, updated)?;
            tracing::info!(job_id = %job.job_id, "job updated");
        }
        Ok(())
    }

    fn cancel_job_execution_blocking(
        &self,
        grants: &Grants,
        request: CancelJobExecutionRequest,
    ) -> Result<()> {
        let _writer = self.store().lock_writes();
        let job = self.visible_job(grants, &request.job_id)?;
        let execution = self.execution_of(&job, &request.thing_name)?;
        let routed = |e: &Execution| self.is_routed(&job, e);
        let canceled = transitions::cancel_execution(&job, &execution, &request, routed, now_ms())?;
        self.commit_durably(&job, canceled)?;
        tracing::info!(job_id = %job.job_id, thing = %execution.thing_name, force = request.force, "job execution canceled");
        Ok(())
    }

    fn delete_job_execution_blocking(
        &self,
        grants: &Grants,
        request: DeleteJobExecutionRequest,
    ) -> Result<()> {
        let _writer = self.store().lock_writes();
        let job = self.visible_job(grants, &request.job_id)?;
        let execution = self.execution_of(&job, &request.thing_name)?;
        let routed = |e: &Execution| self.is_routed(&job, e);
        let deleted = transitions::delete_execution(&job, &execution, &request, routed, now_ms())?;
        self.commit_durably(&job, deleted)?;
        tracing::info!(job_id = %job.job_id, thing = %execution.thing_name, status = execution.status.as_str(), force = request.force, "job execution deleted");
        Ok(())
    }

    /// The thing's execution of `job`; ResourceNotFoundException if it has none.
    fn execution_of(&self, job: &Job, thing_name: &str) -> Result<Execution> {
        self.store()
            .execution(&job.job_id, thing_name)?
            .ok_or_else(|| {
                JobsError::ResourceNotFound(format!(
                    "Job execution {} for thing {thing_name} does not exist",
                    job.job_id
                ))
            })
    }
}
