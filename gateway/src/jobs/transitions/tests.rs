//! The AWS IoT Jobs rules, one by one, on plain values; then the invariants over random command
//! sequences (property tests).

use super::*;
use crate::model::{ExecutionCounts, RecoveryState};

const T0: i64 = 1_000_000;

fn job(status: JobStatus, namespace: Option<&str>, executions: &[&Execution]) -> Job {
    let mut counts = ExecutionCounts::default();
    executions.iter().for_each(|e| counts.add(e.status));
    let targets = executions.iter().map(|e| e.thing_name.clone()).collect();
    let document = r#"{"op":"update"}"#.into();
    Job {
        status,
        counts,
        ..Job::created("j1", namespace, document, targets, T0)
    }
}

fn execution(thing: &str, status: ExecutionStatus) -> Execution {
    let mut execution = Execution::queued("j1", thing, T0);
    execution.status = status;
    execution
}

fn limits(max: usize, per_namespace: &[(&str, usize)]) -> Limits {
    Limits {
        max_concurrent_deletions: max,
        per_namespace: per_namespace
            .iter()
            .map(|(ns, n)| (ns.to_string(), *n))
            .collect(),
    }
}

fn delete_request(force: bool, namespace: Option<&str>) -> DeleteJobRequest {
    DeleteJobRequest {
        job_id: "j1".into(),
        force,
        namespace_id: namespace.map(str::to_owned),
    }
}

fn cancel_request(force: bool) -> CancelJobRequest {
    CancelJobRequest {
        job_id: "j1".into(),
        reason_code: Some("OBSOLETE".into()),
        comment: None,
        force,
    }
}

fn update(status: ExecutionStatus) -> DeviceUpdate {
    DeviceUpdate {
        status,
        status_details: None,
        expected_version: None,
        execution_number: None,
        step_deadline: None,
    }
}

fn code(error: JobsError) -> &'static str {
    error.code()
}

// --- DeleteJob ---------------------------------------------------------------------------------------

#[test]
fn only_a_terminal_job_deletes_without_force() {
    let no_load = DeletionLoad::default();
    for status in [JobStatus::Completed, JobStatus::Canceled] {
        let deleted = start_deletion(
            &job(status, None, &[]),
            &delete_request(false, None),
            no_load,
            &limits(10, &[]),
            T0 + 5,
        )
        .unwrap();
        let deleting = deleted.job.unwrap();
        assert_eq!(deleting.status, JobStatus::DeletionInProgress);
        assert_eq!(deleting.last_updated_at, T0 + 5);
        assert_eq!(
            deleting.deletion,
            Some(DeletionInfo {
                forced: false,
                status_before: status,
                requested_at: T0 + 5
            })
        );
        assert_eq!((deleted.event, deleted.recoveries.len()), (None, 0));
    }
    let in_progress = job(JobStatus::InProgress, None, &[]);
    let refused = start_deletion(
        &in_progress,
        &delete_request(false, None),
        no_load,
        &limits(10, &[]),
        T0,
    )
    .unwrap_err();
    assert_eq!(code(refused.clone()), "InvalidStateTransitionException");
    assert!(refused.to_string().contains("unless force is true"));
    let forced = start_deletion(
        &in_progress,
        &delete_request(true, None),
        no_load,
        &limits(10, &[]),
        T0,
    );
    assert!(forced.unwrap().job.unwrap().deletion.unwrap().forced);
}

#[test]
fn a_job_being_deleted_cannot_be_deleted_again_even_with_force() {
    let deleting = job(JobStatus::DeletionInProgress, None, &[]);
    let again = start_deletion(
        &deleting,
        &delete_request(true, None),
        DeletionLoad::default(),
        &limits(10, &[]),
        T0,
    );
    assert_eq!(code(again.unwrap_err()), "InvalidStateTransitionException");
}

#[test]
fn a_delete_naming_another_namespace_finds_no_job() {
    let acme = job(JobStatus::Completed, Some("acme"), &[]);
    let err = start_deletion(
        &acme,
        &delete_request(true, Some("other")),
        DeletionLoad::default(),
        &limits(10, &[]),
        T0,
    )
    .unwrap_err();
    assert_eq!(code(err), "ResourceNotFoundException");
    let plain = job(JobStatus::Completed, None, &[]);
    let err = start_deletion(
        &plain,
        &delete_request(true, Some("acme")),
        DeletionLoad::default(),
        &limits(10, &[]),
        T0,
    );
    assert_eq!(code(err.unwrap_err()), "ResourceNotFoundException");
    // Naming no namespace finds a job of any.
    let ok = start_deletion(
        &acme,
        &delete_request(true, None),
        DeletionLoad::default(),
        &limits(10, &[]),
        T0,
    );
    assert!(ok.is_ok());
}

#[test]
fn deletions_are_limited_for_the_gateway_and_per_namespace() {
    let small = job(JobStatus::Completed, Some("small"), &[]);
    let plain = job(JobStatus::Completed, None, &[]);
    let limits = limits(10, &[("small", 1)]);
    let load = |deleting, deleting_in_namespace| DeletionLoad {
        deleting,
        deleting_in_namespace,
    };
    let request = delete_request(false, None);
    let at = |job: &Job, l| start_deletion(job, &request, l, &limits, T0).map(|_| ());
    assert!(at(&plain, load(9, 0)).is_ok());
    let full = at(&plain, load(10, 0)).unwrap_err();
    assert_eq!(code(full.clone()), "LimitExceededException");
    assert!(full.to_string().starts_with("10 jobs are already"));
    assert!(at(&small, load(3, 0)).is_ok());
    let namespace_full = at(&small, load(3, 1)).unwrap_err();
    assert!(namespace_full.to_string().contains("namespace small"));
    // A namespace without a limit of its own is counted against the gateway's only.
    let big = job(JobStatus::Completed, Some("big"), &[]);
    assert!(at(&big, load(9, 9)).is_ok());
}

#[test]
fn a_deletion_batch_uncounts_its_executions_recovers_interrupted_devices_and_tells_pending_ones() {
    let executions = [
        execution("queued", ExecutionStatus::Queued),
        execution("running", ExecutionStatus::InProgress),
        execution("unrouted", ExecutionStatus::InProgress),
        execution("done", ExecutionStatus::Succeeded),
    ];
    let mut deleting = job(
        JobStatus::DeletionInProgress,
        Some("acme"),
        &executions.iter().collect::<Vec<_>>(),
    );
    deleting.counts.add(ExecutionStatus::Queued); // one more, not in this batch
    let routed = |e: &Execution| e.thing_name != "unrouted";
    let batch = delete_executions(&deleting, executions.to_vec(), T0 + 9, routed);
    let remaining = batch.job.as_ref().unwrap();
    assert_eq!(remaining.counts.total(), 1);
    assert_eq!(remaining.last_updated_at, T0 + 9);
    assert_eq!(batch.delete_executions.len(), 4);
    let recovered: Vec<_> = batch.recoveries.iter().map(|r| &r.thing_name).collect();
    assert_eq!(recovered, ["running"]);
    let recovery = &batch.recoveries[0];
    assert_eq!(
        (
            recovery.reason,
            recovery.state,
            recovery.execution_status,
            recovery.namespace_id.as_deref(),
            recovery.next_attempt_at
        ),
        (
            RecoveryReason::JobDeleted,
            RecoveryState::Pending,
            ExecutionStatus::InProgress,
            Some("acme"),
            T0 + 9
        )
    );
    let event = batch.event.unwrap();
    assert_eq!(event.kind, JobEventKind::Deleted);
    assert_eq!(event.things, ["queued", "running", "unrouted"]);
    assert_eq!(remove_deleted_job().job, None);
}

#[test]
fn a_batch_of_ended_executions_tells_no_device() {
    let done = execution("done", ExecutionStatus::Failed);
    let deleting = job(JobStatus::DeletionInProgress, None, &[&done]);
    let batch = delete_executions(&deleting, vec![done], T0, |_| true);
    assert_eq!((batch.event, batch.recoveries.len()), (None, 0));
}

// --- CancelJob ---------------------------------------------------------------------------------------

fn cancel(job: &Job, force: bool, executions: &[Execution]) -> Result<Transition, JobsError> {
    let mut cancellation = cancel_job(job, &cancel_request(force), T0 + 7)?;
    for execution in executions {
        cancellation.execution(execution.clone(), |e| e.thing_name != "unrouted");
    }
    Ok(cancellation.finish())
}

#[test]
fn cancel_cancels_queued_executions_and_in_progress_ones_only_with_force() {
    let executions = [
        execution("queued", ExecutionStatus::Queued),
        execution("running", ExecutionStatus::InProgress),
        execution("unrouted", ExecutionStatus::InProgress),
        execution("done", ExecutionStatus::Succeeded),
    ];
    let in_progress = job(
        JobStatus::InProgress,
        None,
        &executions.iter().collect::<Vec<_>>(),
    );
    let gentle = cancel(&in_progress, false, &executions).unwrap();
    let canceled = gentle.job.as_ref().unwrap();
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert_eq!(canceled.reason_code.as_deref(), Some("OBSOLETE"));
    assert!(!canceled.force_canceled);
    let things: Vec<_> = gentle
        .put_executions
        .iter()
        .map(|e| &e.thing_name)
        .collect();
    assert_eq!(things, ["queued"]);
    let queued = &gentle.put_executions[0];
    assert_eq!(
        (
            queued.status,
            queued.version_number,
            queued.force_canceled,
            queued.last_updated_at
        ),
        (ExecutionStatus::Canceled, 2, false, T0 + 7)
    );
    assert_eq!(canceled.counts.get(ExecutionStatus::Canceled), 1);
    assert_eq!(canceled.counts.get(ExecutionStatus::InProgress), 2);
    assert!(gentle.recoveries.is_empty());

    let forced = cancel(&in_progress, true, &executions).unwrap();
    let things: Vec<_> = forced
        .put_executions
        .iter()
        .map(|e| &e.thing_name)
        .collect();
    assert_eq!(things, ["queued", "running", "unrouted"]);
    assert!(forced.put_executions[1].force_canceled);
    assert_eq!(forced.put_executions[1].step_deadline, None);
    let recovered: Vec<_> = forced.recoveries.iter().map(|r| &r.thing_name).collect();
    assert_eq!(recovered, ["running"]);
    assert_eq!(
        forced.recoveries[0].reason,
        RecoveryReason::JobForceCanceled
    );
    assert_eq!(
        forced.event.unwrap().things,
        things_of(&forced.put_executions)
    );
    assert_eq!(forced.job.unwrap().counts.get(ExecutionStatus::Canceled), 3);
}

fn things_of(executions: &[Execution]) -> Vec<String> {
    executions.iter().map(|e| e.thing_name.clone()).collect()
}

#[test]
fn what_cannot_be_canceled() {
    let refused = |status, force| code(cancel(&job(status, None, &[]), force, &[]).unwrap_err());
    assert_eq!(
        refused(JobStatus::DeletionInProgress, true),
        "InvalidStateTransitionException"
    );
    assert_eq!(
        refused(JobStatus::Completed, true),
        "InvalidStateTransitionException"
    );
    assert_eq!(
        refused(JobStatus::Canceled, false),
        "InvalidStateTransitionException"
    );
    // A canceled job is canceled again with force, to cancel its IN_PROGRESS executions.
    let running = execution("running", ExecutionStatus::InProgress);
    let canceled = job(JobStatus::Canceled, None, &[&running]);
    let again = cancel(&canceled, true, &[running]).unwrap();
    assert_eq!(again.put_executions.len(), 1);
    assert!(again.job.unwrap().force_canceled);
}

#[test]
fn a_cancel_that_changes_no_execution_tells_no_device() {
    let done = execution("done", ExecutionStatus::Succeeded);
    let transition = cancel(&job(JobStatus::InProgress, None, &[&done]), true, &[done]).unwrap();
    assert_eq!(transition.event, None);
    assert_eq!(transition.job.unwrap().status, JobStatus::Canceled);
}

// --- UpdateJob ---------------------------------------------------------------------------------------

fn update_job_request(description: Option<&str>, namespace: Option<&str>) -> UpdateJobRequest {
    UpdateJobRequest {
        job_id: "j1".into(),
        description: description.map(str::to_owned),
        namespace_id: namespace.map(str::to_owned),
        ..Default::default()
    }
}

#[test]
fn update_job_sets_the_description_of_a_job_in_any_state() {
    let queued = execution("t1", ExecutionStatus::Queued);
    for status in [
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Canceled,
        JobStatus::DeletionInProgress,
    ] {
        let before = job(status, Some("acme"), &[&queued]);
        let request = update_job_request(Some("new firmware"), Some("acme"));
        let updated = update_job(&before, &request, T0 + 8).unwrap().unwrap();
        let job = updated.job.unwrap();
        assert_eq!(
            (job.description.as_deref(), job.last_updated_at, job.status),
            (Some("new firmware"), T0 + 8, status)
        );
        assert_eq!(job.counts, before.counts);
        // No device sees a description: none is told.
        assert_eq!(updated.event, None);
        assert!(updated.put_executions.is_empty() && updated.recoveries.is_empty());
    }
}

#[test]
fn update_job_without_a_change_changes_nothing_and_another_namespace_finds_nothing() {
    let acme = job(JobStatus::InProgress, Some("acme"), &[]);
    assert_eq!(
        update_job(&acme, &update_job_request(None, None), T0),
        Ok(None)
    );
    let other = update_job(&acme, &update_job_request(Some("d"), Some("other")), T0);
    assert_eq!(code(other.unwrap_err()), "ResourceNotFoundException");
    let plain = job(JobStatus::InProgress, None, &[]);
    let named = update_job(&plain, &update_job_request(Some("d"), Some("acme")), T0);
    assert_eq!(code(named.unwrap_err()), "ResourceNotFoundException");
}

#[test]
fn update_job_names_the_configuration_sprig_does_not_have() {
    assert_eq!(update_job_request(Some("d"), None).unsupported(), None);
    let with_timeout = UpdateJobRequest {
        timeout_config: Some(serde_json::json!({"inProgressTimeoutInMinutes": 5})),
        ..update_job_request(None, None)
    };
    assert_eq!(with_timeout.unsupported().unwrap().0, "timeoutConfig");
    let with_abort = UpdateJobRequest {
        abort_config: Some(serde_json::json!({})),
        ..update_job_request(None, None)
    };
    assert_eq!(with_abort.unsupported().unwrap().0, "abortConfig");
}

// --- CancelJobExecution ------------------------------------------------------------------------------

fn cancel_execution_request(
    force: bool,
    expected_version: Option<i64>,
) -> CancelJobExecutionRequest {
    CancelJobExecutionRequest {
        job_id: "j1".into(),
        thing_name: "t1".into(),
        force,
        expected_version,
        status_details: None,
    }
}

#[test]
fn cancel_execution_cancels_a_queued_execution_and_tells_its_device() {
    let queued = execution("t1", ExecutionStatus::Queued);
    let other = execution("t2", ExecutionStatus::Queued);
    let before = job(JobStatus::InProgress, Some("acme"), &[&queued, &other]);
    let mut request = cancel_execution_request(false, Some(1));
    let details: BTreeMap<String, String> = [("why".to_owned(), "replaced".to_owned())].into();
    request.status_details = Some(details.clone());
    let canceled = cancel_execution(&before, &queued, &request, |_| true, T0 + 3).unwrap();
    let [execution] = &canceled.put_executions[..] else {
        panic!("{canceled:?}")
    };
    assert_eq!(
        (
            execution.status,
            execution.version_number,
            execution.force_canceled,
            execution.last_updated_at
        ),
        (ExecutionStatus::Canceled, 2, false, T0 + 3)
    );
    assert_eq!(execution.status_details, details);
    let job = canceled.job.as_ref().unwrap();
    assert_eq!(job.status, JobStatus::InProgress);
    assert_eq!(
        (
            job.counts.get(ExecutionStatus::Canceled),
            job.counts.get(ExecutionStatus::Queued)
        ),
        (1, 1)
    );
    let event = canceled.event.unwrap();
    assert_eq!(
        (event.kind, event.things, event.namespace_id.as_deref()),
        (JobEventKind::Canceled, vec!["t1".to_owned()], Some("acme"))
    );
    assert!(canceled.recoveries.is_empty() && canceled.delete_executions.is_empty());
}

#[test]
fn cancel_execution_needs_force_for_an_in_progress_execution_and_recovers_its_device() {
    let mut running = execution("t1", ExecutionStatus::InProgress);
    running.step_deadline = Some(T0 + 60_000);
    running.status_details = [("step".to_owned(), "flashing".to_owned())].into();
    let before = job(JobStatus::InProgress, None, &[&running]);
    let refused = cancel_execution(
        &before,
        &running,
        &cancel_execution_request(false, None),
        |_| true,
        T0,
    )
    .unwrap_err();
    assert_eq!(code(refused.clone()), "InvalidStateTransitionException");
    assert!(
        refused.to_string().contains("unless force is true"),
        "{refused}"
    );

    let forced = cancel_execution(
        &before,
        &running,
        &cancel_execution_request(true, None),
        |_| true,
        T0 + 1,
    )
    .unwrap();
    let canceled = &forced.put_executions[0];
    assert!(canceled.force_canceled);
    assert_eq!(canceled.step_deadline, None);
    // Without new status details, the device's last ones stay.
    assert_eq!(canceled.status_details, running.status_details);
    // Its last pending execution ended: the job is COMPLETED.
    let job = forced.job.unwrap();
    assert_eq!(
        (job.status, job.completed_at),
        (JobStatus::Completed, Some(T0 + 1))
    );
    let [recovery] = &forced.recoveries[..] else {
        panic!("{:?}", forced.recoveries)
    };
    assert_eq!(
        (
            recovery.reason,
            recovery.execution_status,
            &recovery.status_details
        ),
        (
            RecoveryReason::ExecutionForceCanceled,
            ExecutionStatus::InProgress,
            &running.status_details
        )
    );
    let unrouted = cancel_execution(
        &before,
        &running,
        &cancel_execution_request(true, None),
        |_| false,
        T0 + 1,
    );
    assert!(unrouted.unwrap().recoveries.is_empty());
}

#[test]
fn what_cancel_execution_refuses() {
    let queued = execution("t1", ExecutionStatus::Queued);
    let refused = |job: &Job, execution: &Execution, request| {
        code(cancel_execution(job, execution, &request, |_| true, T0).unwrap_err())
    };
    // Every terminal status, even with force.
    for status in ExecutionStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        let ended = execution("t1", status);
        let before = job(JobStatus::InProgress, None, &[&ended, &queued]);
        assert_eq!(
            refused(&before, &ended, cancel_execution_request(true, None)),
            "InvalidStateTransitionException",
            "{status:?}"
        );
    }
    // The version the caller expects must be the execution's.
    let before = job(JobStatus::InProgress, None, &[&queued]);
    let stale = cancel_execution(
        &before,
        &queued,
        &cancel_execution_request(false, Some(2)),
        |_| true,
        T0,
    )
    .unwrap_err();
    assert_eq!(code(stale.clone()), "VersionConflictException");
    assert!(stale.to_string().contains("current version 1"), "{stale}");
    // A job being deleted.
    let deleting = job(JobStatus::DeletionInProgress, None, &[&queued]);
    assert_eq!(
        refused(&deleting, &queued, cancel_execution_request(true, None)),
        "InvalidStateTransitionException"
    );
    // A canceled job's IN_PROGRESS execution is canceled with force; the job stays CANCELED.
    let running = execution("t1", ExecutionStatus::InProgress);
    let canceled = job(JobStatus::Canceled, None, &[&running]);
    let forced = cancel_execution(
        &canceled,
        &running,
        &cancel_execution_request(true, None),
        |_| true,
        T0,
    );
    assert_eq!(forced.unwrap().job.unwrap().status, JobStatus::Canceled);
}

// --- DeleteJobExecution ------------------------------------------------------------------------------

fn delete_execution_request(force: bool, namespace: Option<&str>) -> DeleteJobExecutionRequest {
    DeleteJobExecutionRequest {
        job_id: "j1".into(),
        thing_name: "t1".into(),
        execution_number: 1,
        force,
        namespace_id: namespace.map(str::to_owned),
    }
}

#[test]
fn delete_execution_removes_a_terminal_execution_and_uncounts_it() {
    for status in ExecutionStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        let ended = execution("t1", status);
        let queued = execution("t2", ExecutionStatus::Queued);
        let before = job(JobStatus::InProgress, Some("acme"), &[&ended, &queued]);
        let request = delete_execution_request(false, Some("acme"));
        let deleted = delete_execution(&before, &ended, &request, |_| true, T0 + 4).unwrap();
        assert_eq!(
            deleted.delete_executions,
            std::slice::from_ref(&ended),
            "{status:?}"
        );
        assert!(deleted.put_executions.is_empty() && deleted.recoveries.is_empty());
        let job = deleted.job.unwrap();
        assert_eq!(
            (
                job.status,
                job.counts.total(),
                job.counts.get(status),
                job.last_updated_at
            ),
            (JobStatus::InProgress, 1, 0, T0 + 4)
        );
        // Its device had nothing pending to lose: it is not told.
        assert_eq!(deleted.event, None);
    }
}

#[test]
fn delete_execution_needs_force_for_a_pending_execution_and_recovers_an_interrupted_device() {
    for status in [ExecutionStatus::Queued, ExecutionStatus::InProgress] {
        let pending = execution("t1", status);
        let before = job(JobStatus::InProgress, None, &[&pending]);
        let refused = delete_execution(
            &before,
            &pending,
            &delete_execution_request(false, None),
            |_| true,
            T0,
        )
        .unwrap_err();
        assert_eq!(code(refused.clone()), "InvalidStateTransitionException");
        assert!(
            refused.to_string().contains("unless force is true"),
            "{refused}"
        );

        let forced = delete_execution(
            &before,
            &pending,
            &delete_execution_request(true, None),
            |_| true,
            T0 + 2,
        )
        .unwrap();
        let event = forced.event.unwrap();
        assert_eq!(
            (event.kind, event.things),
            (JobEventKind::Deleted, vec!["t1".to_owned()])
        );
        // The job's last pending execution is gone: COMPLETED.
        let job = forced.job.unwrap();
        assert_eq!(
            (job.status, job.completed_at, job.counts.total()),
            (JobStatus::Completed, Some(T0 + 2), 0)
        );
        let reasons: Vec<_> = forced.recoveries.iter().map(|r| r.reason).collect();
        let expected = match status {
            ExecutionStatus::InProgress => vec![RecoveryReason::ExecutionDeleted],
            _ => vec![],
        };
        assert_eq!(reasons, expected, "{status:?}");
    }
    let running = execution("t1", ExecutionStatus::InProgress);
    let before = job(JobStatus::InProgress, None, &[&running]);
    let unrouted = delete_execution(
        &before,
        &running,
        &delete_execution_request(true, None),
        |_| false,
        T0,
    );
    assert!(unrouted.unwrap().recoveries.is_empty());
}

#[test]
fn what_delete_execution_does_not_find_or_refuses() {
    let done = execution("t1", ExecutionStatus::Succeeded);
    let acme = job(JobStatus::Completed, Some("acme"), &[&done]);
    let outcome = |job: &Job, request: DeleteJobExecutionRequest| {
        delete_execution(job, &done, &request, |_| true, T0).map_err(code)
    };
    // Another namespace than the job's, or another execution number: not found.
    let other = outcome(&acme, delete_execution_request(true, Some("other")));
    assert_eq!(other.unwrap_err(), "ResourceNotFoundException");
    let plain = job(JobStatus::Completed, None, &[&done]);
    let named = outcome(&plain, delete_execution_request(true, Some("acme")));
    assert_eq!(named.unwrap_err(), "ResourceNotFoundException");
    let mut second = delete_execution_request(true, None);
    second.execution_number = 2;
    assert_eq!(
        outcome(&acme, second).unwrap_err(),
        "ResourceNotFoundException"
    );
    // Naming no namespace finds the execution of a job of any; a COMPLETED job stays so.
    let deleted = outcome(&acme, delete_execution_request(false, None)).unwrap();
    assert_eq!(deleted.job.unwrap().status, JobStatus::Completed);
    // A job being deleted: its executions go with it.
    let deleting = job(JobStatus::DeletionInProgress, None, &[&done]);
    assert_eq!(
        outcome(&deleting, delete_execution_request(true, None)).unwrap_err(),
        "InvalidStateTransitionException"
    );
}

// --- Devices -----------------------------------------------------------------------------------------

#[test]
fn devices_report_only_their_statuses() {
    for ok in ["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"] {
        assert_eq!(device_status(ok).unwrap().as_str(), ok);
    }
    for refused in ["QUEUED", "CANCELED", "TIMED_OUT", "REMOVED", "DONE", ""] {
        assert_eq!(
            device_status(refused).unwrap_err().code,
            DeviceErrorCode::InvalidRequest,
            "{refused}"
        );
    }
}

#[test]
fn step_timeouts_are_between_a_minute_and_a_week() {
    assert_eq!(step_deadline(None, T0).unwrap(), None);
    assert_eq!(step_deadline(Some(1), T0).unwrap(), Some(T0 + 60_000));
    assert_eq!(
        step_deadline(Some(MAX_STEP_TIMEOUT_MINUTES), T0).unwrap(),
        Some(T0 + MAX_STEP_TIMEOUT_MINUTES * 60_000)
    );
    for bad in [0, -1, MAX_STEP_TIMEOUT_MINUTES + 1] {
        let err = step_deadline(Some(bad), T0).unwrap_err();
        assert!(err.message.starts_with("stepTimeoutInMinutes:"), "{bad}");
    }
}

#[test]
fn start_next_moves_a_queued_execution_to_in_progress_and_leaves_a_running_one() {
    let queued = execution("t1", ExecutionStatus::Queued);
    let before = job(JobStatus::InProgress, None, &[&queued]);
    let details: BTreeMap<String, String> = [("step".to_owned(), "1".to_owned())].into();
    let started = start_execution(
        &before,
        &queued,
        Some(details.clone()),
        Some(T0 + 60),
        T0 + 1,
    )
    .unwrap();
    let running = &started.execution;
    assert_eq!(
        (
            running.status,
            running.version_number,
            running.started_at,
            running.step_deadline
        ),
        (ExecutionStatus::InProgress, 2, Some(T0 + 1), Some(T0 + 60))
    );
    assert_eq!(running.status_details, details);
    assert_eq!(started.job.counts.get(ExecutionStatus::InProgress), 1);
    assert_eq!(started.event.unwrap().kind, JobEventKind::ExecutionChanged);
    assert_eq!(
        start_execution(&started.job, running, None, None, T0 + 2),
        None
    );
}

#[test]
fn expected_version_guards_against_lost_updates() {
    let running = execution("t1", ExecutionStatus::InProgress);
    let before = job(JobStatus::InProgress, None, &[&running]);
    let mut stale = update(ExecutionStatus::Succeeded);
    stale.expected_version = Some(7);
    let err = update_execution(&before, &running, &stale, T0).unwrap_err();
    assert_eq!(err.code, DeviceErrorCode::VersionMismatch);
    assert_eq!(err.execution_state.unwrap().version_number, 1);
    stale.expected_version = Some(1);
    let done = update_execution(&before, &running, &stale, T0).unwrap();
    assert_eq!(done.execution.version_number, 2);
}

#[test]
fn another_execution_number_is_not_found() {
    let running = execution("t1", ExecutionStatus::InProgress);
    let before = job(JobStatus::InProgress, None, &[&running]);
    let mut other = update(ExecutionStatus::Succeeded);
    other.execution_number = Some(2);
    let err = update_execution(&before, &running, &other, T0).unwrap_err();
    assert_eq!(err.code, DeviceErrorCode::ResourceNotFound);
}

#[test]
fn a_terminal_execution_cannot_change() {
    for status in ExecutionStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        let ended = execution("t1", status);
        let before = job(JobStatus::InProgress, None, &[&ended]);
        let err = update_execution(&before, &ended, &update(ExecutionStatus::InProgress), T0)
            .unwrap_err();
        assert_eq!(
            err.code,
            DeviceErrorCode::InvalidStateTransition,
            "{status:?}"
        );
        assert_eq!(err.execution_state.unwrap().status, status.as_str());
        assert_eq!(time_out(&before, &ended, T0 + 1), None);
    }
}

#[test]
fn the_last_pending_execution_to_end_completes_the_job() {
    let first = execution("t1", ExecutionStatus::InProgress);
    let second = execution("t2", ExecutionStatus::Queued);
    let before = job(JobStatus::InProgress, None, &[&first, &second]);
    let one =
        update_execution(&before, &first, &update(ExecutionStatus::Succeeded), T0 + 1).unwrap();
    assert_eq!(
        (one.job.status, one.job.completed_at),
        (JobStatus::InProgress, None)
    );
    // QUEUED straight to a terminal status is allowed.
    let two = update_execution(
        &one.job,
        &second,
        &update(ExecutionStatus::Rejected),
        T0 + 2,
    )
    .unwrap();
    assert_eq!(
        (two.job.status, two.job.completed_at),
        (JobStatus::Completed, Some(T0 + 2))
    );
    // A canceled job stays canceled when its forced-on executions end.
    let running = execution("t3", ExecutionStatus::InProgress);
    let canceled = job(JobStatus::Canceled, None, &[&running]);
    let ended =
        update_execution(&canceled, &running, &update(ExecutionStatus::Failed), T0).unwrap();
    assert_eq!(ended.job.status, JobStatus::Canceled);
}

#[test]
fn an_update_keeps_or_sets_the_step_timer_only_while_in_progress() {
    let mut running = execution("t1", ExecutionStatus::InProgress);
    running.started_at = Some(T0);
    running.step_deadline = Some(T0 + 100);
    let before = job(JobStatus::InProgress, None, &[&running]);
    let same = update_execution(
        &before,
        &running,
        &update(ExecutionStatus::InProgress),
        T0 + 1,
    )
    .unwrap();
    assert_eq!(same.execution.step_deadline, Some(T0 + 100));
    assert_eq!(same.execution.started_at, Some(T0));
    // Status details alone change nothing devices are told of.
    assert_eq!(same.event, None);
    let mut longer = update(ExecutionStatus::InProgress);
    longer.step_deadline = Some(T0 + 500);
    let extended = update_execution(&before, &running, &longer, T0 + 1).unwrap();
    assert_eq!(extended.execution.step_deadline, Some(T0 + 500));
    let done = update_execution(
        &before,
        &running,
        &update(ExecutionStatus::Succeeded),
        T0 + 1,
    )
    .unwrap();
    assert_eq!(done.execution.step_deadline, None);
    assert!(done.event.is_some());
}

#[test]
fn a_step_timer_that_ran_out_times_the_execution_out() {
    let mut running = execution("t1", ExecutionStatus::InProgress);
    running.step_deadline = Some(T0 + 60_000);
    let before = job(JobStatus::InProgress, None, &[&running]);
    assert_eq!(time_out(&before, &running, T0 + 59_999), None);
    let timed_out = time_out(&before, &running, T0 + 60_000).unwrap();
    assert_eq!(
        (
            timed_out.execution.status,
            timed_out.execution.step_deadline,
            timed_out.execution.version_number
        ),
        (ExecutionStatus::TimedOut, None, 2)
    );
    assert_eq!(timed_out.job.status, JobStatus::Completed);
    running.step_deadline = None;
    assert_eq!(time_out(&before, &running, T0 + 1_000_000), None);
}

#[test]
fn the_lifecycle_aws_allows() {
    use ExecutionStatus::*;
    assert!(execution_may_move(Queued, InProgress));
    assert!(execution_may_move(Queued, Succeeded));
    assert!(execution_may_move(InProgress, InProgress));
    assert!(execution_may_move(InProgress, TimedOut));
    assert!(!execution_may_move(Queued, TimedOut));
    assert!(!execution_may_move(Queued, Queued));
    assert!(!execution_may_move(InProgress, Queued));
    for terminal in ExecutionStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        for to in ExecutionStatus::ALL {
            assert!(!execution_may_move(terminal, to), "{terminal:?} -> {to:?}");
        }
    }
}

mod properties;
