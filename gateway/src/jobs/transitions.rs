//! The rules of AWS IoT Jobs as pure functions: the current job and executions, a command and `now` in;
//! the new state, the event to announce and the recoveries to create out, as one [`Transition`].
//!
//! Nothing here reads the store, the clock or a channel, so every rule (which state changes AWS allows,
//! DeleteJob's preconditions and limits, `expectedVersion`, when a job completes, which interrupted device
//! gets a recovery) is a plain unit test, and random command sequences can check the invariants (see the
//! property tests). The engine reads what a command needs, calls a function of this module and commits
//! the transition it answers, whole, in one store transaction ([`super::Engine`]'s commit path).

use std::collections::BTreeMap;

use super::api::{
    CancelJobExecutionRequest, CancelJobRequest, DeleteJobExecutionRequest, DeleteJobRequest,
    UpdateJobRequest,
};
use super::error::{DeviceError, DeviceErrorCode, JobsError};
use super::events::{JobEvent, JobEventKind};
use crate::model::{
    DeletionInfo, Execution, ExecutionStatus, Job, JobStatus, RecoveryReason, RecoveryRecord,
};

/// The longest step timeout AWS allows: 7 days, in minutes.
pub const MAX_STEP_TIMEOUT_MINUTES: i64 = 10_080;

/// Limits on concurrent deletions: one for the gateway, optionally lower ones per namespace. Plain data:
/// the daemon builds it from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_concurrent_deletions: usize,
    pub per_namespace: BTreeMap<String, usize>,
}

impl Limits {
    /// The namespace's own deletion limit, if it has one.
    pub fn of_namespace(&self, namespace: Option<&str>) -> Option<usize> {
        self.per_namespace.get(namespace?).copied()
    }
}

/// What one change of one job writes, committed whole: the job as it becomes (`None`: removed), the
/// executions written and removed, the recoveries created (ids are the store's, given at commit), and
/// what to announce once it is committed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    pub job: Option<Job>,
    pub put_executions: Vec<Execution>,
    pub delete_executions: Vec<Execution>,
    pub recoveries: Vec<RecoveryRecord>,
    pub event: Option<JobEvent>,
}

/// One execution's change (by its device or its step timer) with its job's.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionChange {
    pub job: Job,
    pub execution: Execution,
    pub event: Option<JobEvent>,
}

impl From<ExecutionChange> for Transition {
    fn from(change: ExecutionChange) -> Transition {
        Transition {
            job: Some(change.job),
            put_executions: vec![change.execution],
            event: change.event,
            ..Default::default()
        }
    }
}

/// The event of a change of `job` affecting `things`; none when it affects no thing.
fn event(kind: JobEventKind, job: &Job, things: Vec<String>) -> Option<JobEvent> {
    (!things.is_empty()).then(|| JobEvent {
        kind,
        job_id: job.job_id.clone(),
        namespace_id: job.namespace_id.clone(),
        things,
    })
}

/// May an execution move from `from` to `to`, by any actor (device, CancelJob, step timer)? AWS's
/// lifecycle: QUEUED → IN_PROGRESS → SUCCEEDED | FAILED | REJECTED | TIMED_OUT | CANCELED, QUEUED straight
/// to a terminal status, IN_PROGRESS to itself (new status details); nothing leaves a terminal status.
pub fn execution_may_move(from: ExecutionStatus, to: ExecutionStatus) -> bool {
    use ExecutionStatus::*;
    matches!(
        (from, to),
        (
            Queued,
            InProgress | Succeeded | Failed | Rejected | Canceled | Removed
        ) | (
            InProgress,
            InProgress | Succeeded | Failed | Rejected | TimedOut | Canceled | Removed
        )
    )
}

// ---------------------------------------------------------------------------------------------------
// Operators: DeleteJob, CancelJob and UpdateJob.
// ---------------------------------------------------------------------------------------------------

/// A request that names a namespace finds only a job of that namespace: to the caller, `job` of another
/// does not exist (DeleteJob, UpdateJob, DeleteJobExecution).
fn in_named_namespace(job: &Job, namespace_id: Option<&str>) -> Result<(), JobsError> {
    match namespace_id {
        Some(ns) if job.namespace_id.as_deref() != Some(ns) => Err(JobsError::ResourceNotFound(
            format!("Job {} does not exist in namespace {ns}", job.job_id),
        )),
        _ => Ok(()),
    }
}

/// UpdateJob of `job` (one the caller may see): its new description, or the exception AWS raises;
/// `None` when the request changes nothing. UpdateJob has no state exception in AWS's model: a job in any
/// state may be updated (its devices are not told: nothing they see changes).
pub fn update_job(
    job: &Job,
    request: &UpdateJobRequest,
    now: i64,
) -> Result<Option<Transition>, JobsError> {
    in_named_namespace(job, request.namespace_id.as_deref())?;
    let Some(description) = &request.description else {
        return Ok(None);
    };
    let mut updated = job.clone();
    updated.description = Some(description.clone());
    updated.last_updated_at = now;
    Ok(Some(Transition {
        job: Some(updated),
        ..Default::default()
    }))
}

/// How many jobs are in DELETION_IN_PROGRESS when a DeleteJob arrives: in all, and in the job's
/// namespace (counted only when [`Limits::of_namespace`] gives it a limit; otherwise 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeletionLoad {
    pub deleting: usize,
    pub deleting_in_namespace: usize,
}

/// DeleteJob: `job` (one the caller may see) enters DELETION_IN_PROGRESS, or the exception AWS raises.
pub fn start_deletion(
    job: &Job,
    request: &DeleteJobRequest,
    load: DeletionLoad,
    limits: &Limits,
    now: i64,
) -> Result<Transition, JobsError> {
    in_named_namespace(job, request.namespace_id.as_deref())?;
    if job.status == JobStatus::DeletionInProgress {
        return Err(JobsError::InvalidStateTransition(format!(
            "Job {} is already being deleted (DELETION_IN_PROGRESS)",
            job.job_id
        )));
    }
    if !job.status.is_terminal() && !request.force {
        return Err(JobsError::InvalidStateTransition(format!(
            "Job {} is {}; only a job in a terminal state (COMPLETED or CANCELED) can be deleted unless force is true",
            job.job_id,
            job.status.as_str()
        )));
    }
    check_deletion_limits(job, load, limits)?;
    let mut deleting = job.clone();
    deleting.status = JobStatus::DeletionInProgress;
    deleting.last_updated_at = now;
    deleting.deletion = Some(DeletionInfo {
        forced: request.force,
        status_before: job.status,
        requested_at: now,
    });
    Ok(Transition {
        job: Some(deleting),
        ..Default::default()
    })
}

fn check_deletion_limits(job: &Job, load: DeletionLoad, limits: &Limits) -> Result<(), JobsError> {
    let limit = limits.max_concurrent_deletions;
    if load.deleting >= limit {
        return Err(JobsError::LimitExceeded(format!(
            "{} jobs are already in DELETION_IN_PROGRESS; at most {limit} may be deleted at the same time",
            load.deleting
        )));
    }
    let namespace = job.namespace_id.as_deref();
    if let Some(ns_limit) = limits.of_namespace(namespace) {
        let in_namespace = load.deleting_in_namespace;
        if in_namespace >= ns_limit {
            return Err(JobsError::LimitExceeded(format!(
                "{in_namespace} jobs of namespace {} are already in DELETION_IN_PROGRESS; at most {ns_limit} may be deleted at the same time in this namespace",
                namespace.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// One batch of a deletion: `executions` (of `job`, in DELETION_IN_PROGRESS) removed and uncounted; a
/// device interrupted IN_PROGRESS and given a route by `routed` gets a recovery in the same transaction,
/// so neither can exist without the other; devices that had a pending execution are told.
pub fn delete_executions(
    job: &Job,
    executions: Vec<Execution>,
    now: i64,
    routed: impl Fn(&Execution) -> bool,
) -> Transition {
    let mut remaining = job.clone();
    executions
        .iter()
        .for_each(|e| remaining.counts.remove(e.status));
    remaining.last_updated_at = now;
    let recoveries = executions
        .iter()
        .filter(|e| e.status == ExecutionStatus::InProgress && routed(e))
        .map(|e| RecoveryRecord::for_execution(job, e, RecoveryReason::JobDeleted, now))
        .collect();
    let pending_things = executions
        .iter()
        .filter(|e| !e.status.is_terminal())
        .map(|e| e.thing_name.clone())
        .collect();
    Transition {
        event: event(JobEventKind::Deleted, &remaining, pending_things),
        job: Some(remaining),
        delete_executions: executions,
        recoveries,
        ..Default::default()
    }
}

/// The last step of a deletion: the job record goes, and its `jobId` may be used again.
pub fn remove_deleted_job() -> Transition {
    Transition::default()
}

/// CancelJob under way: the job is CANCELED, and [`Cancellation::execution`] is called with each of its
/// executions (in pages, so a large job is never read whole).
#[derive(Debug)]
pub struct Cancellation {
    force: bool,
    now: i64,
    transition: Transition,
    canceled: Job,
}

/// CancelJob: the job (one the caller may see) becomes CANCELED, or the exception AWS raises.
pub fn cancel_job(
    job: &Job,
    request: &CancelJobRequest,
    now: i64,
) -> Result<Cancellation, JobsError> {
    let refuse = |why: &str| {
        Err(JobsError::InvalidStateTransition(format!(
            "Job {} {why}",
            job.job_id
        )))
    };
    match (job.status, request.force) {
        (JobStatus::DeletionInProgress, _) => {
            return refuse("is being deleted (DELETION_IN_PROGRESS) and cannot be canceled")
        }
        (JobStatus::Completed, _) => return refuse("is COMPLETED and cannot be canceled"),
        (JobStatus::Canceled, false) => {
            return refuse(
                "is already CANCELED; cancel with force to cancel its IN_PROGRESS executions",
            )
        }
        _ => {}
    }
    let mut canceled = job.clone();
    canceled.status = JobStatus::Canceled;
    canceled.last_updated_at = now;
    canceled.force_canceled |= request.force;
    canceled.reason_code = request.reason_code.clone().or(job.reason_code.clone());
    canceled.comment = request.comment.clone().or(job.comment.clone());
    Ok(Cancellation {
        force: request.force,
        now,
        transition: Transition::default(),
        canceled,
    })
}

impl Cancellation {
    /// QUEUED executions are canceled; IN_PROGRESS ones only with force, and then their device gets a
    /// recovery if `routed` gives it a route; terminal ones stay as they are.
    pub fn execution(&mut self, mut execution: Execution, routed: impl Fn(&Execution) -> bool) {
        let cancel = match execution.status {
            ExecutionStatus::Queued => true,
            ExecutionStatus::InProgress => self.force,
            _ => false,
        };
        if !cancel {
            return;
        }
        let interrupted = execution.status == ExecutionStatus::InProgress;
        if interrupted && routed(&execution) {
            let reason = RecoveryReason::JobForceCanceled;
            let recovery =
                RecoveryRecord::for_execution(&self.canceled, &execution, reason, self.now);
            self.transition.recoveries.push(recovery);
        }
        self.canceled
            .counts
            .shift(execution.status, ExecutionStatus::Canceled);
        execution.force_canceled = interrupted;
        execution.status = ExecutionStatus::Canceled;
        execution.step_deadline = None;
        execution.last_updated_at = self.now;
        execution.version_number += 1;
        self.transition.put_executions.push(execution);
    }

    /// The whole change, every execution seen.
    pub fn finish(mut self) -> Transition {
        let things = self
            .transition
            .put_executions
            .iter()
            .map(|e| e.thing_name.clone())
            .collect();
        self.transition.event = event(JobEventKind::Canceled, &self.canceled, things);
        self.transition.job = Some(self.canceled);
        self.transition
    }
}

// ---------------------------------------------------------------------------------------------------
// Operators, one execution: CancelJobExecution and DeleteJobExecution.
// ---------------------------------------------------------------------------------------------------

/// CancelJobExecution of the thing's `execution` of `job` (one the caller may see), or the exception AWS
/// raises: a QUEUED execution is CANCELED; an IN_PROGRESS one only with `force`, and then its device gets
/// a recovery if `routed` gives it a route; a terminal one cannot be canceled; `expectedVersion`, if
/// given, must be the execution's version. `statusDetails`, if given, replace the execution's. The
/// execution's device is told; the last pending execution of an IN_PROGRESS job completes it.
pub fn cancel_execution(
    job: &Job,
    execution: &Execution,
    request: &CancelJobExecutionRequest,
    routed: impl Fn(&Execution) -> bool,
    now: i64,
) -> Result<Transition, JobsError> {
    let refuse = |why: String| {
        Err(JobsError::InvalidStateTransition(format!(
            "Job execution {} for thing {} {why}",
            execution.job_id, execution.thing_name
        )))
    };
    if job.status == JobStatus::DeletionInProgress {
        return refuse(format!(
            "cannot be canceled: job {} is being deleted (DELETION_IN_PROGRESS)",
            job.job_id
        ));
    }
    if let Some(expected) = request
        .expected_version
        .filter(|v| *v != execution.version_number)
    {
        return Err(JobsError::VersionConflict(format!(
            "expectedVersion {expected} does not match the current version {} of job execution {} for thing {}",
            execution.version_number, execution.job_id, execution.thing_name
        )));
    }
    let interrupted = match execution.status {
        ExecutionStatus::Queued => false,
        ExecutionStatus::InProgress if request.force => true,
        ExecutionStatus::InProgress => {
            return refuse(
                "is IN_PROGRESS; only a QUEUED execution can be canceled unless force is true"
                    .into(),
            )
        }
        ended => return refuse(format!("is {} and cannot be canceled", ended.as_str())),
    };
    let mut canceled = execution.clone();
    canceled.status = ExecutionStatus::Canceled;
    canceled.force_canceled = interrupted;
    canceled.step_deadline = None;
    canceled.last_updated_at = now;
    canceled.version_number += 1;
    if let Some(details) = &request.status_details {
        canceled.status_details = details.clone();
    }
    let recoveries = (interrupted && routed(execution))
        .then(|| {
            let reason = RecoveryReason::ExecutionForceCanceled;
            RecoveryRecord::for_execution(job, execution, reason, now)
        })
        .into_iter()
        .collect();
    let change = execution_changed(job, execution, canceled, now);
    Ok(Transition {
        event: event(
            JobEventKind::Canceled,
            &change.job,
            vec![execution.thing_name.clone()],
        ),
        job: Some(change.job),
        put_executions: vec![change.execution],
        recoveries,
        ..Default::default()
    })
}

/// DeleteJobExecution of the thing's `execution` of `job` (one the caller may see), or the exception AWS
/// raises: an execution in a terminal state is removed; a pending one only with `force`, and then, if it
/// was IN_PROGRESS, its device gets a recovery if `routed` gives it a route (it can no longer read or
/// report on it, as when its job is deleted). The job uncounts it, and completes if it was its last
/// pending execution; a pending execution's device is told. `executionNumber` must be the execution's,
/// and a `namespaceId` the job's, else the execution does not exist for the caller.
pub fn delete_execution(
    job: &Job,
    execution: &Execution,
    request: &DeleteJobExecutionRequest,
    routed: impl Fn(&Execution) -> bool,
    now: i64,
) -> Result<Transition, JobsError> {
    let named = || {
        format!(
            "Job execution {} for thing {}",
            execution.job_id, execution.thing_name
        )
    };
    in_named_namespace(job, request.namespace_id.as_deref())?;
    if request.execution_number != execution.execution_number {
        return Err(JobsError::ResourceNotFound(format!(
            "{} with execution number {} does not exist",
            named(),
            request.execution_number
        )));
    }
    if job.status == JobStatus::DeletionInProgress {
        return Err(JobsError::InvalidStateTransition(format!(
            "{} is being removed with its job {} (DELETION_IN_PROGRESS)",
            named(),
            job.job_id
        )));
    }
    let pending = !execution.status.is_terminal();
    if pending && !request.force {
        return Err(JobsError::InvalidStateTransition(format!(
            "{} is {}; only an execution in a terminal state (SUCCEEDED, FAILED, TIMED_OUT, REJECTED, \
             REMOVED or CANCELED) can be deleted unless force is true",
            named(),
            execution.status.as_str()
        )));
    }
    let mut remaining = job.clone();
    remaining.counts.remove(execution.status);
    remaining.last_updated_at = now;
    complete_if_done(&mut remaining, now);
    let interrupted = execution.status == ExecutionStatus::InProgress;
    let recoveries = (interrupted && routed(execution))
        .then(|| {
            let reason = RecoveryReason::ExecutionDeleted;
            RecoveryRecord::for_execution(job, execution, reason, now)
        })
        .into_iter()
        .collect();
    let told = pending.then(|| execution.thing_name.clone());
    Ok(Transition {
        event: event(
            JobEventKind::Deleted,
            &remaining,
            told.into_iter().collect(),
        ),
        job: Some(remaining),
        delete_executions: vec![execution.clone()],
        recoveries,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------------
// Devices: StartNextPendingJobExecution, UpdateJobExecution, and the step timer.
// ---------------------------------------------------------------------------------------------------

/// The statuses a device may report in UpdateJobExecution.
pub fn device_status(status: &str) -> Result<ExecutionStatus, DeviceError> {
    match ExecutionStatus::parse(status) {
        Some(
            s @ (ExecutionStatus::InProgress
            | ExecutionStatus::Succeeded
            | ExecutionStatus::Failed
            | ExecutionStatus::Rejected),
        ) => Ok(s),
        _ => Err(DeviceError::new(
            DeviceErrorCode::InvalidRequest,
            format!("status: must be IN_PROGRESS, SUCCEEDED, FAILED or REJECTED; got \"{status}\""),
        )),
    }
}

/// When a step timer of `minutes` started `now` runs out (none without `minutes`).
pub fn step_deadline(minutes: Option<i64>, now: i64) -> Result<Option<i64>, DeviceError> {
    match minutes {
        None => Ok(None),
        Some(m @ 1..=MAX_STEP_TIMEOUT_MINUTES) => Ok(Some(now + m * 60_000)),
        Some(m) => Err(DeviceError::new(
            DeviceErrorCode::InvalidRequest,
            format!(
                "stepTimeoutInMinutes: must be between 1 and {MAX_STEP_TIMEOUT_MINUTES}; got {m}"
            ),
        )),
    }
}

/// StartNextPendingJobExecution of a QUEUED `execution`: IN_PROGRESS from `now`; `None` if it is already
/// IN_PROGRESS (it is answered as it is).
pub fn start_execution(
    job: &Job,
    execution: &Execution,
    status_details: Option<BTreeMap<String, String>>,
    step_deadline: Option<i64>,
    now: i64,
) -> Option<ExecutionChange> {
    if execution.status != ExecutionStatus::Queued {
        return None;
    }
    let mut started = execution.clone();
    started.status = ExecutionStatus::InProgress;
    started.started_at = Some(now);
    started.last_updated_at = now;
    started.version_number += 1;
    started.step_deadline = step_deadline;
    if let Some(details) = status_details {
        started.status_details = details;
    }
    Some(execution_changed(job, execution, started, now))
}

/// An UpdateJobExecution, its status already one a device may report ([`device_status`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceUpdate {
    pub status: ExecutionStatus,
    pub status_details: Option<BTreeMap<String, String>>,
    pub expected_version: Option<i64>,
    pub execution_number: Option<i64>,
    pub step_deadline: Option<i64>,
}

/// UpdateJobExecution of the device's `execution`, or the rejection AWS answers.
pub fn update_execution(
    job: &Job,
    execution: &Execution,
    update: &DeviceUpdate,
    now: i64,
) -> Result<ExecutionChange, DeviceError> {
    let status = update.status;
    if update
        .execution_number
        .is_some_and(|n| n != execution.execution_number)
    {
        return Err(DeviceError::not_found(
            &execution.job_id,
            &execution.thing_name,
        ));
    }
    if let Some(expected) = update
        .expected_version
        .filter(|v| *v != execution.version_number)
    {
        return Err(DeviceError::new(
            DeviceErrorCode::VersionMismatch,
            format!(
                "expectedVersion {expected} does not match the current version {}",
                execution.version_number
            ),
        )
        .with_state(execution));
    }
    if execution.status.is_terminal() {
        return Err(DeviceError::new(
            DeviceErrorCode::InvalidStateTransition,
            format!(
                "Job execution {} for thing {} is {} and cannot become {}",
                execution.job_id,
                execution.thing_name,
                execution.status.as_str(),
                status.as_str()
            ),
        )
        .with_state(execution));
    }
    let mut updated = execution.clone();
    updated.status = status;
    updated.last_updated_at = now;
    updated.version_number += 1;
    if let Some(details) = update.status_details.clone() {
        updated.status_details = details;
    }
    if status == ExecutionStatus::InProgress {
        updated.started_at.get_or_insert(now);
        if update.step_deadline.is_some() {
            updated.step_deadline = update.step_deadline;
        }
    } else {
        updated.step_deadline = None;
    }
    Ok(execution_changed(job, execution, updated, now))
}

/// The step timer of an IN_PROGRESS `execution` ran out by `now`: TIMED_OUT; `None` if it did not (it
/// was updated, or ended, since it was found due).
pub fn time_out(job: &Job, execution: &Execution, now: i64) -> Option<ExecutionChange> {
    if execution.status != ExecutionStatus::InProgress
        || execution.step_deadline.is_none_or(|d| d > now)
    {
        return None;
    }
    let mut timed_out = execution.clone();
    timed_out.status = ExecutionStatus::TimedOut;
    timed_out.step_deadline = None;
    timed_out.last_updated_at = now;
    timed_out.version_number += 1;
    Some(execution_changed(job, execution, timed_out, now))
}

/// An IN_PROGRESS job with no pending execution left is COMPLETED, from `now`.
fn complete_if_done(job: &mut Job, now: i64) {
    if job.status == JobStatus::InProgress && job.counts.pending() == 0 {
        job.status = JobStatus::Completed;
        job.completed_at = Some(now);
    }
}

/// One execution's change with its job's counts; when the last pending execution of an IN_PROGRESS job
/// ends, the job is COMPLETED. Devices hear of it only if the status changed.
fn execution_changed(job: &Job, before: &Execution, after: Execution, now: i64) -> ExecutionChange {
    let mut updated = job.clone();
    updated.counts.shift(before.status, after.status);
    updated.last_updated_at = now;
    complete_if_done(&mut updated, now);
    let things = if before.status != after.status {
        vec![after.thing_name.clone()]
    } else {
        vec![]
    };
    ExecutionChange {
        event: event(JobEventKind::ExecutionChanged, &updated, things),
        job: updated,
        execution: after,
    }
}

#[cfg(test)]
mod tests;
