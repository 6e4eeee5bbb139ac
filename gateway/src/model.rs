//! The records of the jobs store: a job, its executions (one per thing), and their statuses.
//!
//! These are sprig's own types, stored (see `store::codec`) and turned into AWS response shapes by the
//! jobs engine (`jobs::api`). A leaf: plain data depending on no other module of the gateway, so the store
//! that keeps them and the engine that changes them both build on it. Times are milliseconds since the
//! Unix epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A job's status, as AWS IoT names it, plus sprig's own `Creating`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    InProgress,
    Canceled,
    Completed,
    DeletionInProgress,
    /// CreateJob is still writing the job's executions (see `jobs::creation`): the job exists for no
    /// one, operators and devices alike, and a crash leaves it to be removed at the next start. Never
    /// shown, so not in [`JobStatus::ALL`]; last in the enum, as records store a variant's position.
    Creating,
}

impl JobStatus {
    /// The statuses AWS IoT has (and operators may filter by).
    pub const ALL: [JobStatus; 4] = [
        JobStatus::InProgress,
        JobStatus::Canceled,
        JobStatus::Completed,
        JobStatus::DeletionInProgress,
    ];

    /// The AWS name, e.g. `DELETION_IN_PROGRESS`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Canceled => "CANCELED",
            JobStatus::Completed => "COMPLETED",
            JobStatus::DeletionInProgress => "DELETION_IN_PROGRESS",
            JobStatus::Creating => "CREATING",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }

    /// A terminal job may be deleted without `force`.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Canceled | JobStatus::Completed)
    }
}

/// A job execution's status, as AWS IoT names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExecutionStatus {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Removed,
    Canceled,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 8] = [
        ExecutionStatus::Queued,
        ExecutionStatus::InProgress,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Rejected,
        ExecutionStatus::Removed,
        ExecutionStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "QUEUED",
            ExecutionStatus::InProgress => "IN_PROGRESS",
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
            ExecutionStatus::Rejected => "REJECTED",
            ExecutionStatus::Removed => "REMOVED",
            ExecutionStatus::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<ExecutionStatus> {
        ExecutionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }

    /// QUEUED and IN_PROGRESS executions are pending; every other status is final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecutionStatus::Queued | ExecutionStatus::InProgress)
    }

    /// This status's slot in [`ExecutionStatus::ALL`] (and in [`ExecutionCounts`]).
    fn slot(self) -> usize {
        ExecutionStatus::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or_default()
    }
}

/// How many of a job's executions are in each status (AWS's `jobProcessDetails`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionCounts([u64; 8]);

impl ExecutionCounts {
    pub fn get(&self, status: ExecutionStatus) -> u64 {
        self.0[status.slot()]
    }

    pub fn add(&mut self, status: ExecutionStatus) {
        self.0[status.slot()] += 1;
    }

    pub fn remove(&mut self, status: ExecutionStatus) {
        let slot = &mut self.0[status.slot()];
        *slot = slot.saturating_sub(1);
    }

    /// Moves one execution from `from` to `to`.
    pub fn shift(&mut self, from: ExecutionStatus, to: ExecutionStatus) {
        self.remove(from);
        self.add(to);
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn pending(&self) -> u64 {
        self.get(ExecutionStatus::Queued) + self.get(ExecutionStatus::InProgress)
    }
}

/// A job: a document sent to a set of things.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    /// `None` for a standard job; `Some("aws-gg-deployment")` for a Greengrass deployment, etc.
    pub namespace_id: Option<String>,
    pub status: JobStatus,
    /// The job document, JSON text as the caller gave it.
    pub document: String,
    pub description: Option<String>,
    /// Thing names, in the order given. Empty in a job read from the store, which keeps them apart from
    /// the record (`Store::job_targets`).
    pub targets: Vec<String>,
    pub created_at: i64,
    pub last_updated_at: i64,
    pub completed_at: Option<i64>,
    pub force_canceled: bool,
    pub reason_code: Option<String>,
    pub comment: Option<String>,
    pub counts: ExecutionCounts,
    /// Set when the job enters DELETION_IN_PROGRESS: how it got there, for the devices told about it.
    pub deletion: Option<DeletionInfo>,
}

/// What a deletion was asked to do, recorded when it starts so a restart finishes it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionInfo {
    pub forced: bool,
    pub status_before: JobStatus,
    pub requested_at: i64,
}

/// One thing's execution of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub job_id: String,
    pub thing_name: String,
    pub status: ExecutionStatus,
    pub status_details: BTreeMap<String, String>,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub last_updated_at: i64,
    pub execution_number: i64,
    pub version_number: i64,
    pub force_canceled: bool,
    /// When an IN_PROGRESS execution with a step timeout times out (epoch ms), unless updated before.
    pub step_deadline: Option<i64>,
}

impl Job {
    /// A new job, IN_PROGRESS since `now`, with no description and no executions counted yet: what
    /// CreateJob plans (the counts follow as its executions are written).
    pub fn created(
        job_id: &str,
        namespace_id: Option<&str>,
        document: String,
        targets: Vec<String>,
        now: i64,
    ) -> Job {
        Job {
            job_id: job_id.to_owned(),
            namespace_id: namespace_id.map(str::to_owned),
            status: JobStatus::InProgress,
            document,
            description: None,
            targets,
            created_at: now,
            last_updated_at: now,
            completed_at: None,
            force_canceled: false,
            reason_code: None,
            comment: None,
            counts: ExecutionCounts::default(),
            deletion: None,
        }
    }
}

impl Execution {
    /// A fresh QUEUED execution, as CreateJob makes one per target.
    pub fn queued(job_id: &str, thing_name: &str, now: i64) -> Execution {
        Execution {
            job_id: job_id.to_owned(),
            thing_name: thing_name.to_owned(),
            status: ExecutionStatus::Queued,
            status_details: BTreeMap::new(),
            queued_at: now,
            started_at: None,
            last_updated_at: now,
            execution_number: 1,
            version_number: 1,
            force_canceled: false,
            step_deadline: None,
        }
    }
}

/// Why a device needs recovering. Records store a variant's position: new ones go last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryReason {
    /// Its IN_PROGRESS execution was removed by a deletion of the job.
    JobDeleted,
    /// Its IN_PROGRESS execution was canceled by a forced CancelJob.
    JobForceCanceled,
    /// Its IN_PROGRESS execution alone was canceled, by a forced CancelJobExecution.
    ExecutionForceCanceled,
    /// Its IN_PROGRESS execution alone was removed, by a forced DeleteJobExecution.
    ExecutionDeleted,
}

impl RecoveryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryReason::JobDeleted => "JOB_DELETED",
            RecoveryReason::JobForceCanceled => "JOB_FORCE_CANCELED",
            RecoveryReason::ExecutionForceCanceled => "EXECUTION_FORCE_CANCELED",
            RecoveryReason::ExecutionDeleted => "EXECUTION_DELETED",
        }
    }
}

/// Where a recovery stands. PENDING until it ends in exactly one of the other two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryState {
    Pending,
    Recovered,
    Failed,
}

impl RecoveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryState::Pending => "PENDING",
            RecoveryState::Recovered => "RECOVERED",
            RecoveryState::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<RecoveryState> {
        [
            RecoveryState::Pending,
            RecoveryState::Recovered,
            RecoveryState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// A durable recovery: a device whose job execution was interrupted, to be brought back to a valid state
/// by its plugin. Created in the same transaction that interrupts the execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    pub id: u64,
    pub thing_name: String,
    pub job_id: String,
    pub namespace_id: Option<String>,
    /// The job document (JSON text) the device was executing.
    pub job_document: String,
    /// The execution as it was when interrupted.
    pub execution_status: ExecutionStatus,
    pub status_details: BTreeMap<String, String>,
    pub reason: RecoveryReason,
    pub state: RecoveryState,
    /// Handler calls started so far (recorded before each call, so a crash mid-call is counted).
    pub attempts: u32,
    /// Handler calls that failed (panic, error, garbage, overrun).
    pub failures: u32,
    /// The device acknowledged what the last attempt sent.
    pub acknowledged: bool,
    /// Not before this time (epoch ms) is the next attempt made.
    pub next_attempt_at: i64,
    /// The last failure or the reason of the final outcome.
    pub last_error: Option<String>,
    /// Status details the handler asked to record for the device.
    pub recorded_status_details: Option<BTreeMap<String, String>>,
    pub created_at: i64,
    pub updated_at: i64,
    /// What the device said when it acknowledged since the last attempt: the JSON text the handler's
    /// context carries as `acknowledgement` (see `recovery::runner::acknowledgement_of`). The last field:
    /// the store's recovery format 2 added it (`store::codec::decode_recovery`).
    pub acknowledgement: Option<String>,
}

impl RecoveryRecord {
    /// A new PENDING recovery for an interrupted execution (`id` is set by the store).
    pub fn for_execution(
        job: &Job,
        execution: &Execution,
        reason: RecoveryReason,
        now: i64,
    ) -> RecoveryRecord {
        RecoveryRecord {
            id: 0,
            thing_name: execution.thing_name.clone(),
            job_id: job.job_id.clone(),
            namespace_id: job.namespace_id.clone(),
            job_document: job.document.clone(),
            execution_status: execution.status,
            status_details: execution.status_details.clone(),
            reason,
            state: RecoveryState::Pending,
            attempts: 0,
            failures: 0,
            acknowledged: false,
            next_attempt_at: now,
            last_error: None,
            recorded_status_details: None,
            created_at: now,
            updated_at: now,
            acknowledgement: None,
        }
    }
}
