//! What the jobs engine tells the rest of the gateway after a change: which things' pending executions
//! changed, and why. The notifier turns these into MQTT notifications; recovery builds on them too.
//! And, for whoever reports the jobs' history outside the gateway (the uplink), each [`StatusChange`],
//! a recovery's end among them.

use std::collections::BTreeMap;

use crate::model::{
    Execution, ExecutionStatus, Job, JobStatus, RecoveryReason, RecoveryRecord, RecoveryState,
};

/// Why things' executions changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEventKind {
    /// CreateJob queued an execution for each thing.
    Created,
    /// CancelJob (or CancelJobExecution) canceled the things' executions.
    Canceled,
    /// The job was deleted (or DeleteJobExecution removed one thing's execution of it): the things'
    /// pending executions are gone.
    Deleted,
    /// A device (or a step timeout) changed the status of its execution.
    ExecutionChanged,
}

impl JobEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobEventKind::Created => "CREATED",
            JobEventKind::Canceled => "CANCELED",
            JobEventKind::Deleted => "DELETED",
            JobEventKind::ExecutionChanged => "EXECUTION_CHANGED",
        }
    }
}

/// One change of one job, affecting `things`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub kind: JobEventKind,
    pub job_id: String,
    pub namespace_id: Option<String>,
    pub things: Vec<String>,
}

/// One status change as it is reported outside the gateway (the uplink's events): unlike a
/// [`JobEvent`], which tells the notifier whom to ask, it carries the new status itself, and it is
/// made for every committed change, including those that concern no device (a job completing, a job
/// removed at the end of its deletion). Timestamps are epoch seconds, as AWS IoT's job events have them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// The job's status changed; `None`: the job is gone (its deletion finished).
    Job {
        job_id: String,
        namespace_id: Option<String>,
        status: Option<JobStatus>,
        timestamp: i64,
    },
    /// An execution was written: its status, its details or its version changed; `status: None`: it was
    /// removed on its own (DeleteJobExecution), as it last was. The executions a job's deletion removes
    /// are not reported one by one: the job's end says it.
    Execution {
        job_id: String,
        namespace_id: Option<String>,
        thing_name: String,
        status: Option<ExecutionStatus>,
        status_details: BTreeMap<String, String>,
        version_number: i64,
        timestamp: i64,
    },
    /// A recovery ended: the runner recorded RECOVERED or FAILED (a PENDING recovery is never reported).
    Recovery {
        recovery_id: u64,
        job_id: String,
        namespace_id: Option<String>,
        thing_name: String,
        reason: RecoveryReason,
        status: RecoveryState,
        attempts: u32,
        failures: u32,
        /// The last failure, or why the recovery failed.
        last_error: Option<String>,
        timestamp: i64,
    },
}

/// The status changes of a commit that turned `before` into `after` (`None`: removed), wrote `executions`
/// and removed `removed`: the job's, if its status changed (first), then each execution's, then each
/// removed one's unless the job is being deleted (or is gone).
pub fn status_changes(
    before: &Job,
    after: Option<&Job>,
    executions: &[Execution],
    removed: &[Execution],
    now_ms: i64,
) -> Vec<StatusChange> {
    let mut changes = Vec::with_capacity(executions.len() + 1);
    let status = after.map(|job| job.status);
    if status != Some(before.status) {
        let at = after.map_or(now_ms, |job| job.last_updated_at);
        changes.push(StatusChange::Job {
            job_id: before.job_id.clone(),
            namespace_id: before.namespace_id.clone(),
            status,
            timestamp: at / 1000,
        });
    }
    let execution_change = |execution: &Execution, status, at: i64| StatusChange::Execution {
        job_id: execution.job_id.clone(),
        namespace_id: before.namespace_id.clone(),
        thing_name: execution.thing_name.clone(),
        status,
        status_details: execution.status_details.clone(),
        version_number: execution.version_number,
        timestamp: at / 1000,
    };
    changes.extend(
        executions
            .iter()
            .map(|e| execution_change(e, Some(e.status), e.last_updated_at)),
    );
    let job_goes_on = after.is_some_and(|job| job.status != JobStatus::DeletionInProgress);
    if job_goes_on {
        let at = after.map_or(now_ms, |job| job.last_updated_at);
        changes.extend(removed.iter().map(|e| execution_change(e, None, at)));
    }
    changes
}

/// The status changes of a job's creation: the job, then each thing's QUEUED execution (version 1).
pub fn created(job: &Job, things: &[String]) -> Vec<StatusChange> {
    let timestamp = job.created_at / 1000;
    let job_change = StatusChange::Job {
        job_id: job.job_id.clone(),
        namespace_id: job.namespace_id.clone(),
        status: Some(job.status),
        timestamp,
    };
    let executions = things.iter().map(|thing| StatusChange::Execution {
        job_id: job.job_id.clone(),
        namespace_id: job.namespace_id.clone(),
        thing_name: thing.clone(),
        status: Some(ExecutionStatus::Queued),
        status_details: BTreeMap::new(),
        version_number: 1,
        timestamp,
    });
    std::iter::once(job_change).chain(executions).collect()
}

/// The status change of recording `recovery` as it now stands: `Some` once it has ended. A recovery ends
/// once, but its end is flushed after it is reported: a crash in between runs its last attempt again
/// after the restart, and reports its end again.
pub fn recovery_ended(recovery: &RecoveryRecord) -> Option<StatusChange> {
    (recovery.state != RecoveryState::Pending).then(|| StatusChange::Recovery {
        recovery_id: recovery.id,
        job_id: recovery.job_id.clone(),
        namespace_id: recovery.namespace_id.clone(),
        thing_name: recovery.thing_name.clone(),
        reason: recovery.reason,
        status: recovery.state,
        attempts: recovery.attempts,
        failures: recovery.failures,
        last_error: recovery.last_error.clone(),
        timestamp: recovery.updated_at / 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: JobStatus) -> Job {
        Job {
            job_id: "j1".into(),
            namespace_id: Some("acme".into()),
            status,
            document: "{}".into(),
            description: None,
            targets: vec!["t1".into()],
            created_at: 1_000,
            last_updated_at: 5_000,
            completed_at: None,
            force_canceled: false,
            reason_code: None,
            comment: None,
            counts: Default::default(),
            deletion: None,
        }
    }

    #[test]
    fn a_job_change_is_reported_only_when_its_status_changes() {
        let before = job(JobStatus::InProgress);
        assert!(status_changes(&before, Some(&before), &[], &[], 9_000).is_empty());
        let deleting = job(JobStatus::DeletionInProgress);
        let changes = status_changes(&before, Some(&deleting), &[], &[], 9_000);
        assert!(
            matches!(
                &changes[..],
                [StatusChange::Job {
                    status: Some(JobStatus::DeletionInProgress),
                    timestamp: 5,
                    ..
                }]
            ),
            "{changes:?}"
        );
        let gone = status_changes(&deleting, None, &[], &[], 9_000);
        assert!(
            matches!(
                &gone[..],
                [StatusChange::Job {
                    status: None,
                    timestamp: 9,
                    ..
                }]
            ),
            "{gone:?}"
        );
    }

    #[test]
    fn an_execution_removed_on_its_own_is_reported_and_those_of_a_deletion_are_not() {
        let execution = Execution::queued("j1", "t1", 1_000);
        let before = job(JobStatus::InProgress);
        let removed = std::slice::from_ref(&execution);
        let changes = status_changes(&before, Some(&before), &[], removed, 9_000);
        assert_eq!(
            changes,
            [StatusChange::Execution {
                job_id: "j1".into(),
                namespace_id: Some("acme".into()),
                thing_name: "t1".into(),
                status: None,
                status_details: BTreeMap::new(),
                version_number: 1,
                timestamp: 5,
            }]
        );
        let deleting = job(JobStatus::DeletionInProgress);
        assert!(status_changes(&deleting, Some(&deleting), &[], removed, 9_000).is_empty());
        assert_eq!(
            status_changes(&deleting, None, &[], removed, 9_000).len(),
            1
        );
    }

    #[test]
    fn only_a_recovery_that_ended_is_reported() {
        let job = job(JobStatus::DeletionInProgress);
        let execution = Execution::queued("j1", "t1", 1_000);
        let mut recovery =
            RecoveryRecord::for_execution(&job, &execution, RecoveryReason::JobDeleted, 2_000);
        recovery.id = 7;
        recovery.attempts = 1;
        assert_eq!(recovery_ended(&recovery), None);
        recovery.state = RecoveryState::Failed;
        recovery.last_error = Some("gave up after 1 attempts".into());
        recovery.updated_at = 6_500;
        assert_eq!(
            recovery_ended(&recovery),
            Some(StatusChange::Recovery {
                recovery_id: 7,
                job_id: "j1".into(),
                namespace_id: Some("acme".into()),
                thing_name: "t1".into(),
                reason: RecoveryReason::JobDeleted,
                status: RecoveryState::Failed,
                attempts: 1,
                failures: 0,
                last_error: Some("gave up after 1 attempts".into()),
                timestamp: 6,
            })
        );
    }

    #[test]
    fn a_creation_reports_the_job_then_each_queued_execution() {
        let changes = created(&job(JobStatus::InProgress), &["t1".into(), "t2".into()]);
        assert_eq!(changes.len(), 3);
        assert!(
            matches!(&changes[2], StatusChange::Execution { thing_name, status: Some(ExecutionStatus::Queued), version_number: 1, .. } if thing_name == "t2")
        );
    }
}
