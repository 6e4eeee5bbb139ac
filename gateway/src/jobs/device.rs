//! The device side of the jobs engine: what a thing may read and change about its own executions.
//!
//! This is AWS IoT's Jobs data plane (GetPendingJobExecutions, StartNextPendingJobExecution,
//! DescribeJobExecution, UpdateJobExecution) with its rules: a device moves its execution
//! QUEUED → IN_PROGRESS → SUCCEEDED | FAILED | REJECTED (or QUEUED → terminal directly), `expectedVersion`
//! guards against lost updates (`VersionMismatch`), a terminal execution cannot change
//! (`InvalidStateTransition`), and a step timeout turns a forgotten IN_PROGRESS execution into TIMED_OUT.
//! A request is scoped: on the plain topics a device sees its jobs without a namespace, on the
//! `namespace-{ns}` topics only that namespace's jobs. A job being deleted is invisible to devices, as AWS
//! documents. When the last pending execution of an IN_PROGRESS job ends, the job is COMPLETED.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::engine::Engine;
use super::events::{JobEvent, JobEventKind};
use super::model::{now_ms, Execution, ExecutionStatus, Job, JobStatus};
use crate::store::{Change, StoreError};

/// The longest step timeout AWS allows: 7 days, in minutes.
pub const MAX_STEP_TIMEOUT_MINUTES: i64 = 10_080;

/// An error of the device API, with AWS's codes (`rejected` payloads carry them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DeviceError {
    pub code: DeviceErrorCode,
    pub message: String,
    /// The execution's current state, for VersionMismatch and InvalidStateTransition.
    pub execution_state: Option<ExecutionState>,
}

/// The `code` of a device API rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceErrorCode {
    InvalidTopic,
    InvalidJson,
    InvalidRequest,
    InvalidStateTransition,
    ResourceNotFound,
    VersionMismatch,
    InternalError,
    RequestThrottled,
    TerminalStateReached,
}

impl DeviceErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceErrorCode::InvalidTopic => "InvalidTopic",
            DeviceErrorCode::InvalidJson => "InvalidJson",
            DeviceErrorCode::InvalidRequest => "InvalidRequest",
            DeviceErrorCode::InvalidStateTransition => "InvalidStateTransition",
            DeviceErrorCode::ResourceNotFound => "ResourceNotFound",
            DeviceErrorCode::VersionMismatch => "VersionMismatch",
            DeviceErrorCode::InternalError => "InternalError",
            DeviceErrorCode::RequestThrottled => "RequestThrottled",
            DeviceErrorCode::TerminalStateReached => "TerminalStateReached",
        }
    }
}

impl DeviceError {
    pub fn new(code: DeviceErrorCode, message: impl Into<String>) -> DeviceError {
        DeviceError {
            code,
            message: message.into(),
            execution_state: None,
        }
    }

    fn with_state(mut self, execution: &Execution) -> DeviceError {
        self.execution_state = Some(ExecutionState::of(execution));
        self
    }
}

impl From<StoreError> for DeviceError {
    fn from(e: StoreError) -> Self {
        // A store out of service logged why once; every request meanwhile would only repeat it.
        if !e.is_unavailable() {
            tracing::error!(error = %e, "store error");
        }
        DeviceError::new(DeviceErrorCode::InternalError, "the jobs store failed")
    }
}

type Result<T> = std::result::Result<T, DeviceError>;

/// AWS's `JobExecutionSummary` (device API): times in epoch seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSummary {
    pub job_id: String,
    pub queued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    pub last_updated_at: i64,
    pub version_number: i64,
    pub execution_number: i64,
}

/// AWS's `JobExecution` (device API).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceExecution {
    pub job_id: String,
    pub thing_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_document: Option<JobDocument>,
    pub status: &'static str,
    pub status_details: BTreeMap<String, String>,
    pub queued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    pub last_updated_at: i64,
    pub version_number: i64,
    pub execution_number: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approximate_seconds_before_timed_out: Option<i64>,
}

/// A job's document as it goes out in JSON: the stored text, checked once to be JSON and then copied
/// verbatim into each message, never parsed into a tree and serialized again (a notification for 10,000
/// devices did that 20,000 times). A document that is not JSON goes out as a JSON string.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct JobDocument(Box<serde_json::value::RawValue>);

impl JobDocument {
    fn of(text: &str) -> JobDocument {
        let raw = match serde_json::value::RawValue::from_string(text.to_owned()) {
            Ok(raw) => raw,
            // Serializing a string cannot fail.
            Err(_) => serde_json::value::to_raw_value(text).unwrap_or_default(),
        };
        JobDocument(raw)
    }

    /// The document as a JSON value.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for JobDocument {
    fn eq(&self, other: &JobDocument) -> bool {
        self.0.get() == other.0.get()
    }
}

/// AWS's `JobExecutionState`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionState {
    pub status: &'static str,
    pub status_details: BTreeMap<String, String>,
    pub version_number: i64,
}

impl ExecutionState {
    pub fn of(execution: &Execution) -> ExecutionState {
        ExecutionState {
            status: execution.status.as_str(),
            status_details: execution.status_details.clone(),
            version_number: execution.version_number,
        }
    }
}

/// A thing's pending executions in one scope, IN_PROGRESS and QUEUED, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingJobs {
    pub in_progress_jobs: Vec<DeviceSummary>,
    pub queued_jobs: Vec<DeviceSummary>,
}

/// What a thing's notifications are computed from: its pending executions and the next one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThingSnapshot {
    pub pending: PendingJobs,
    pub next: Option<DeviceExecution>,
}

/// Jobs read for a batch of snapshots, each decoded once. A job record carries all its targets, so
/// decoding it for every one of N things would cost N² (a notification for 10,000 devices spent seconds
/// here); the notifier keeps one cache per batch, so the jobs it reads are as fresh as the batch.
#[derive(Debug, Default)]
pub struct JobCache {
    jobs: std::collections::HashMap<String, Option<Arc<Job>>>,
}

impl JobCache {
    fn get(
        &mut self,
        store: &crate::store::Store,
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

/// Which execution a describe names: `$next` or a job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobTarget {
    Next,
    Id(String),
}

/// An UpdateJobExecution request, already parsed.
#[derive(Debug, Clone, Default)]
pub struct UpdateExecution {
    pub status: String,
    pub status_details: Option<BTreeMap<String, String>>,
    pub expected_version: Option<i64>,
    pub execution_number: Option<i64>,
    pub include_job_execution_state: bool,
    pub include_job_document: bool,
    pub step_timeout_in_minutes: Option<i64>,
}

/// What UpdateJobExecution answers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    pub execution_state: Option<ExecutionState>,
    pub job_document: Option<Value>,
}

fn seconds(ms: i64) -> i64 {
    ms / 1000
}

fn summary(execution: &Execution) -> DeviceSummary {
    DeviceSummary {
        job_id: execution.job_id.clone(),
        queued_at: seconds(execution.queued_at),
        started_at: execution.started_at.map(seconds),
        last_updated_at: seconds(execution.last_updated_at),
        version_number: execution.version_number,
        execution_number: execution.execution_number,
    }
}

fn device_execution(
    execution: &Execution,
    job: &Job,
    include_document: bool,
    now: i64,
) -> DeviceExecution {
    DeviceExecution {
        job_id: execution.job_id.clone(),
        thing_name: execution.thing_name.clone(),
        job_document: include_document.then(|| JobDocument::of(&job.document)),
        status: execution.status.as_str(),
        status_details: execution.status_details.clone(),
        queued_at: seconds(execution.queued_at),
        started_at: execution.started_at.map(seconds),
        last_updated_at: seconds(execution.last_updated_at),
        version_number: execution.version_number,
        execution_number: execution.execution_number,
        approximate_seconds_before_timed_out: execution
            .step_deadline
            .map(|d| ((d - now).max(0) + 999) / 1000),
    }
}

fn document(job: &Job) -> Value {
    serde_json::from_str(&job.document).unwrap_or(Value::String(job.document.clone()))
}

fn not_found(job_id: &str, thing: &str) -> DeviceError {
    DeviceError::new(
        DeviceErrorCode::ResourceNotFound,
        format!("Job execution {job_id} for thing {thing} does not exist"),
    )
}

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

fn step_deadline(minutes: Option<i64>, now: i64) -> Result<Option<i64>> {
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
                return Err(not_found(&execution.job_id, &thing));
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
            let deadline = step_deadline(step_timeout_in_minutes, now)?;
            let _writer = engine.store.lock_writes();
            let Some((execution, job)) = engine.next_pending(&thing, namespace.as_deref())? else {
                return Ok(None);
            };
            if execution.status == ExecutionStatus::InProgress {
                return Ok(Some(device_execution(&execution, &job, true, now)));
            }
            let mut started = execution.clone();
            started.status = ExecutionStatus::InProgress;
            started.started_at = Some(now);
            started.last_updated_at = now;
            started.version_number += 1;
            started.step_deadline = deadline;
            if let Some(details) = status_details {
                started.status_details = details;
            }
            let after = engine.apply_execution_change(&job, &execution, &started, now)?;
            engine.emit(JobEventKind::ExecutionChanged, &after, vec![thing]);
            Ok(Some(device_execution(&started, &after, true, now)))
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
        let status = match ExecutionStatus::parse(&request.status) {
            Some(
                s @ (ExecutionStatus::InProgress
                | ExecutionStatus::Succeeded
                | ExecutionStatus::Failed
                | ExecutionStatus::Rejected),
            ) => s,
            _ => {
                return Err(DeviceError::new(
                    DeviceErrorCode::InvalidRequest,
                    format!(
                        "status: must be IN_PROGRESS, SUCCEEDED, FAILED or REJECTED; got \"{}\"",
                        request.status
                    ),
                ))
            }
        };
        if let Some(details) = &request.status_details {
            validate_status_details(details)?;
        }
        self.device_blocking(move |engine| {
            let now = now_ms();
            let deadline = step_deadline(request.step_timeout_in_minutes, now)?;
            let _writer = engine.store.lock_writes();
            let (execution, job) =
                engine.device_execution_of(&thing, namespace.as_deref(), &job_id)?;
            if request
                .execution_number
                .is_some_and(|n| n != execution.execution_number)
            {
                return Err(not_found(&job_id, &thing));
            }
            if request
                .expected_version
                .is_some_and(|v| v != execution.version_number)
            {
                return Err(DeviceError::new(
                    DeviceErrorCode::VersionMismatch,
                    format!(
                        "expectedVersion {} does not match the current version {}",
                        request.expected_version.unwrap_or_default(),
                        execution.version_number
                    ),
                )
                .with_state(&execution));
            }
            if execution.status.is_terminal() {
                return Err(DeviceError::new(
                    DeviceErrorCode::InvalidStateTransition,
                    format!(
                        "Job execution {job_id} for thing {thing} is {} and cannot become {}",
                        execution.status.as_str(),
                        status.as_str()
                    ),
                )
                .with_state(&execution));
            }
            let mut updated = execution.clone();
            updated.status = status;
            updated.last_updated_at = now;
            updated.version_number += 1;
            if let Some(details) = request.status_details.clone() {
                updated.status_details = details;
            }
            if status == ExecutionStatus::InProgress {
                updated.started_at.get_or_insert(now);
                if deadline.is_some() {
                    updated.step_deadline = deadline;
                }
            } else {
                updated.step_deadline = None;
            }
            let after = engine.apply_execution_change(&job, &execution, &updated, now)?;
            if execution.status != updated.status {
                engine.emit(JobEventKind::ExecutionChanged, &after, vec![thing]);
            }
            Ok(UpdateOutcome {
                execution_state: request
                    .include_job_execution_state
                    .then(|| ExecutionState::of(&updated)),
                job_document: request.include_job_document.then(|| document(&after)),
            })
        })
        .await
    }

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

    /// [`snapshot`](Self::snapshot) of many things in one scope, in their order. The thing index and the
    /// executions are each read in one ordered walk for all of them
    /// ([`Store::pending_job_ids_of_things`](crate::store::Store::pending_job_ids_of_things)).
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
            .get(&self.store, job_id)?
            .filter(|j| in_scope(j, namespace))
        else {
            return Ok(None);
        };
        let execution = self
            .store
            .execution(job_id, thing)?
            .filter(|e| !e.status.is_terminal());
        Ok(execution.map(|e| device_execution(&e, &job, true, now_ms())))
    }

    /// Moves every IN_PROGRESS execution whose step timer ran out by `now` to TIMED_OUT; returns how many.
    pub fn expire_step_timeouts(&self, now: i64) -> std::result::Result<usize, StoreError> {
        let _writer = self.store.lock_writes();
        let due = self.store.due_deadlines(now, 1000)?;
        let mut expired = 0;
        for (job_id, thing) in due {
            let (Some(job), Some(execution)) = (
                self.store.job(&job_id)?,
                self.store.execution(&job_id, &thing)?,
            ) else {
                continue;
            };
            if execution.status != ExecutionStatus::InProgress
                || execution.step_deadline.is_none_or(|d| d > now)
            {
                continue;
            }
            let mut timed_out = execution.clone();
            timed_out.status = ExecutionStatus::TimedOut;
            timed_out.step_deadline = None;
            timed_out.last_updated_at = now;
            timed_out.version_number += 1;
            let after = self.apply_execution_change(&job, &execution, &timed_out, now)?;
            tracing::info!(job_id, thing, "step timeout: execution TIMED_OUT");
            self.emit(JobEventKind::ExecutionChanged, &after, vec![thing]);
            expired += 1;
        }
        Ok(expired)
    }

    /// Commits one execution's change with its job's counts (and completion); returns the job as stored.
    fn apply_execution_change(
        &self,
        job: &Job,
        before: &Execution,
        after: &Execution,
        now: i64,
    ) -> std::result::Result<Job, StoreError> {
        let mut updated = job.clone();
        updated.counts.shift(before.status, after.status);
        updated.last_updated_at = now;
        if updated.status == JobStatus::InProgress && updated.counts.pending() == 0 {
            updated.status = JobStatus::Completed;
            updated.completed_at = Some(now);
        }
        self.store.commit(&Change {
            job_before: Some(job),
            job_after: Some(&updated),
            put_executions: std::slice::from_ref(after),
            ..Default::default()
        })?;
        if updated.status == JobStatus::Completed && job.status != JobStatus::Completed {
            tracing::info!(job_id = %job.job_id, "job COMPLETED: every execution has ended");
        }
        Ok(updated)
    }

    /// The thing's execution of `job_id`, if the job is in the scope and not being deleted.
    fn device_execution_of(
        &self,
        thing: &str,
        namespace: Option<&str>,
        job_id: &str,
    ) -> Result<(Execution, Arc<Job>)> {
        let job = self
            .store
            .job(job_id)?
            .map(Arc::new)
            .filter(|j| in_scope(j, namespace))
            .ok_or_else(|| not_found(job_id, thing))?;
        let execution = self
            .store
            .execution(job_id, thing)?
            .ok_or_else(|| not_found(job_id, thing))?;
        Ok((execution, job))
    }

    fn next_pending(
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

    /// Each thing's pending executions in the scope, oldest first, in the things' order. The thing index
    /// and the executions are each read in one ordered walk for all of them.
    fn pending_of(
        &self,
        things: &[&str],
        namespace: Option<&str>,
        jobs: &mut JobCache,
    ) -> std::result::Result<Vec<Vec<Pending>>, StoreError> {
        let pending_ids = self.store.pending_job_ids_of_things(things)?;
        // The (job, thing) pairs whose executions to read: pending per the index, the job in the scope.
        let mut wanted: Vec<(usize, Arc<Job>)> = Vec::with_capacity(things.len());
        for (index, ids) in pending_ids.iter().enumerate() {
            for job_id in ids {
                if let Some(job) = jobs
                    .get(&self.store, job_id)?
                    .filter(|j| in_scope(j, namespace))
                {
                    wanted.push((index, job));
                }
            }
        }
        let pairs: Vec<(&str, &str)> = wanted
            .iter()
            .map(|(index, job)| (job.job_id.as_str(), things[*index]))
            .collect();
        let executions = self.store.executions(&pairs)?;
        let mut pending: Vec<Vec<Pending>> = vec![Vec::new(); things.len()];
        for ((index, job), execution) in wanted.into_iter().zip(executions) {
            if let Some(execution) = execution.filter(|e| !e.status.is_terminal()) {
                pending[index].push((execution, job));
            }
        }
        pending.iter_mut().for_each(|p| sort_oldest_first(p));
        Ok(pending)
    }

    /// Runs device work on the blocking pool.
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
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .unwrap_or_else(|_| {
                Err(DeviceError::new(
                    DeviceErrorCode::InternalError,
                    "internal error",
                ))
            })
    }

    pub(super) fn emit(&self, kind: JobEventKind, job: &Job, things: Vec<String>) {
        if things.is_empty() {
            return;
        }
        let _ = self.events.send(JobEvent {
            kind,
            job_id: job.job_id.clone(),
            namespace_id: job.namespace_id.clone(),
            things,
        });
    }
}

/// Checks step timers every second until `shutdown` turns true.
pub async fn run_step_timeouts(
    engine: Arc<Engine>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let engine = engine.clone();
        match tokio::task::spawn_blocking(move || engine.expire_step_timeouts(now_ms())).await {
            Ok(Ok(_)) => {}
            // A store out of service logged why once; this would repeat it every second.
            Ok(Err(e)) if e.is_unavailable() => {
                tracing::debug!(error = %e, "step timeout check failed")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "step timeout check failed"),
            Err(e) => tracing::error!(error = %e, "step timeout task failed"),
        }
    }
}

/// IN_PROGRESS first (oldest), else the oldest QUEUED: the execution `$next` names.
/// Is `job` one of the scope's jobs that devices see (created, and not being deleted)?
fn in_scope(job: &Job, namespace: Option<&str>) -> bool {
    job.namespace_id.as_deref() == namespace
        && !matches!(
            job.status,
            JobStatus::DeletionInProgress | JobStatus::Creating
        )
}

/// A pending execution with its job.
type Pending = (Execution, Arc<Job>);

/// Oldest first, as AWS lists them; the job id breaks ties so the order is stable.
fn sort_oldest_first(pending: &mut [(Execution, Arc<Job>)]) {
    pending.sort_by(|(a, _), (b, _)| (a.queued_at, &a.job_id).cmp(&(b.queued_at, &b.job_id)));
}

/// A thing's snapshot from its pending executions in a scope, oldest first.
fn snapshot_of(pending: &[(Execution, Arc<Job>)], now: i64) -> ThingSnapshot {
    let next = pick_next(pending).map(|(e, j)| device_execution(e, j, true, now));
    let (in_progress, queued): (Vec<_>, Vec<_>) = pending
        .iter()
        .partition(|(e, _)| e.status == ExecutionStatus::InProgress);
    ThingSnapshot {
        pending: PendingJobs {
            in_progress_jobs: in_progress.into_iter().map(|(e, _)| summary(e)).collect(),
            queued_jobs: queued.into_iter().map(|(e, _)| summary(e)).collect(),
        },
        next,
    }
}

fn pick_next(sorted: &[(Execution, Arc<Job>)]) -> Option<&(Execution, Arc<Job>)> {
    sorted
        .iter()
        .find(|(e, _)| e.status == ExecutionStatus::InProgress)
        .or_else(|| sorted.first())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_goes_out_verbatim_and_one_that_is_not_json_as_a_string() {
        let json = JobDocument::of(r#"{"op":"update","n":[1,2]}"#);
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"op":"update","n":[1,2]}"#
        );
        assert_eq!(
            json.value(),
            serde_json::json!({"op": "update", "n": [1, 2]})
        );
        let text = JobDocument::of("reboot now");
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""reboot now""#);
        assert_eq!(text, JobDocument::of("reboot now"));
    }
}
