//! The device side of the jobs engine: what a thing may read and change about its own executions.
//!
//! This is AWS IoT's Jobs data plane (GetPendingJobExecutions, StartNextPendingJobExecution,
//! DescribeJobExecution, UpdateJobExecution): each command reads the device's execution in the request's
//! scope, applies the rules of [`super::transitions`] and commits through the engine. A request is
//! scoped: on the plain topics a device sees its jobs without a namespace, on the `namespace-{ns}` topics
//! only that namespace's jobs; a job being deleted is invisible to devices, as AWS documents. `snapshot`
//! reads what the notifier tells devices, and `timer` runs the step timeouts.

mod batch;
mod snapshot;
mod timer;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::clock::now_ms;
use super::engine::Engine;
use super::transitions::{self, DeviceUpdate};
use super::wire::{device_execution, document};
use batch::Write;

pub use super::error::{DeviceError, DeviceErrorCode};
pub use super::transitions::MAX_STEP_TIMEOUT_MINUTES;
pub use super::wire::{
    DeviceExecution, DeviceSummary, ExecutionState, JobDocument, JobTarget, PendingJobs,
    ThingSnapshot, UpdateExecution, UpdateOutcome,
};
pub(crate) use batch::DeviceWrites;
pub use snapshot::JobCache;
pub use timer::run_step_timeouts;

type Result<T> = std::result::Result<T, DeviceError>;

/// `statusDetails` as AWS IoT Jobs accepts them; the rules are the sdk's, so that a recovery plugin's
/// `Recovery::validate` applies the very same ones.
pub fn validate_status_details(details: &BTreeMap<String, String>) -> Result<()> {
    sprig_sdk::validate_status_details(details).map_err(|why| {
        DeviceError::new(
            DeviceErrorCode::InvalidRequest,
            format!("statusDetails: {why}"),
        )
    })
}

impl Engine {
    /// GetPendingJobExecutions.
    pub async fn device_pending(
        self: &Arc<Self>,
        thing: String,
        namespace: Option<String>,
    ) -> Result<PendingJobs> {
        self.device_blocking(move |engine| {
            Ok(engine
                .snapshot(&thing, namespace.as_deref(), &mut JobCache::default())?
                .pending)
        })
        .await
    }

    /// DescribeJobExecution; `Ok(None)` for `$next` when nothing is pending.
    pub async fn device_describe(
        self: &Arc<Self>,
        thing: String,
        namespace: Option<String>,
        target: JobTarget,
        execution_number: Option<i64>,
        include_document: bool,
    ) -> Result<Option<DeviceExecution>> {
        self.device_blocking(move |engine| {
            let ns = namespace.as_deref();
            let now = now_ms();
            let (execution, job) = match target {
                JobTarget::Next => match engine.next_pending(&thing, ns)? {
                    Some(found) => found,
                    None => return Ok(None),
                },
                JobTarget::Id(job_id) => engine.device_execution_of(&thing, ns, &job_id)?,
            };
            if execution_number.is_some_and(|n| n != execution.execution_number) {
                return Err(DeviceError::not_found(&execution.job_id, &thing));
            }
            if execution.status.is_terminal() {
                return Err(DeviceError::new(
                    DeviceErrorCode::TerminalStateReached,
                    format!(
                        "Job execution {} for thing {thing} is {}",
                        execution.job_id,
                        execution.status.as_str()
                    ),
                )
                .with_state(&execution));
            }
            Ok(Some(device_execution(
                &execution,
                &job,
                include_document,
                now,
            )))
        })
        .await
    }

    /// StartNextPendingJobExecution: the next pending execution, moved to IN_PROGRESS if it was QUEUED.
    pub async fn device_start_next(
        self: &Arc<Self>,
        thing: String,
        namespace: Option<String>,
        status_details: Option<BTreeMap<String, String>>,
        step_timeout_in_minutes: Option<i64>,
    ) -> Result<Option<DeviceExecution>> {
        if let Some(details) = &status_details {
            validate_status_details(details)?;
        }
        self.device_blocking(move |engine| {
            let now = now_ms();
            let step_deadline = transitions::step_deadline(step_timeout_in_minutes, now)?;
            let written = engine.device_write(Write::StartNext {
                thing,
                namespace,
                status_details,
                step_deadline,
            })?;
            Ok(written.map(|(execution, job)| device_execution(&execution, &job, true, now)))
        })
        .await
    }

    /// UpdateJobExecution.
    pub async fn device_update(
        self: &Arc<Self>,
        thing: String,
        namespace: Option<String>,
        job_id: String,
        request: UpdateExecution,
    ) -> Result<UpdateOutcome> {
        let status = transitions::device_status(&request.status)?;
        if let Some(details) = &request.status_details {
            validate_status_details(details)?;
        }
        self.device_blocking(move |engine| {
            let now = now_ms();
            let update = DeviceUpdate {
                status,
                status_details: request.status_details,
                expected_version: request.expected_version,
                execution_number: request.execution_number,
                step_deadline: transitions::step_deadline(request.step_timeout_in_minutes, now)?,
            };
            let written = engine.device_write(Write::Update {
                thing,
                namespace,
                job_id,
                update,
            })?;
            let Some((execution, job)) = written else {
                unreachable!("an update is answered with its execution or an error")
            };
            Ok(UpdateOutcome {
                execution_state: request
                    .include_job_execution_state
                    .then(|| ExecutionState::of(&execution)),
                job_document: request.include_job_document.then(|| document(&job)),
            })
        })
        .await
    }
}

impl Engine {
    /// Runs device work on the blocking pool, refusing it once the gateway is shutting down.
    async fn device_blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> Result<T> + Send + 'static,
    {
        if self.is_closing() {
            return Err(DeviceError::new(
                DeviceErrorCode::InternalError,
                "the gateway is shutting down",
            ));
        }
        self.on_blocking_pool(work).await.unwrap_or_else(|_| {
            Err(DeviceError::new(
                DeviceErrorCode::InternalError,
                "internal error",
            ))
        })
    }
}

#[cfg(test)]
mod tests;
