//! The operators' commands and queries through the engine, on a real store.

use super::api::*;
use super::creation;
use super::planning::plan_create;
use super::test_fixture::{create, delete, finish_deletion, fixture, update};
use super::{Grants, JobEventKind};
use crate::model::ExecutionStatus;

#[tokio::test]
async fn delete_needs_force_unless_terminal_and_marks_deletion_in_progress() {
    let mut f = fixture(10, &[]);
    let all = Grants::all();
    f.engine
        .create_job(all.clone(), create("j1", None, &["t1", "t2", "t3"]))
        .await
        .unwrap();
    let err = f
        .engine
        .delete_job(all.clone(), delete("j1", false, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidStateTransitionException", "{err}");
    assert!(err.to_string().contains("unless force is true"), "{err}");

    f.engine
        .delete_job(all.clone(), delete("j1", true, None))
        .await
        .unwrap();
    assert_eq!(f.deletions.recv().await.as_deref(), Some("j1"));
    let described = f.engine.describe_job(
        all.clone(),
        DescribeJobRequest {
            job_id: "j1".into(),
            before_substitution: None,
        },
    );
    assert_eq!(described.await.unwrap().job.status, "DELETION_IN_PROGRESS");

    let again = f
        .engine
        .delete_job(all.clone(), delete("j1", true, None))
        .await
        .unwrap_err();
    assert_eq!(again.code(), "InvalidStateTransitionException");
    let cancel = CancelJobRequest {
        job_id: "j1".into(),
        reason_code: None,
        comment: None,
        force: true,
    };
    assert_eq!(
        f.engine
            .cancel_job(all.clone(), cancel)
            .await
            .unwrap_err()
            .code(),
        "InvalidStateTransitionException"
    );
    let reuse = f
        .engine
        .create_job(all.clone(), create("j1", None, &["t1"]))
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), "ResourceAlreadyExistsException");

    finish_deletion(&f.engine, "j1");
    assert!(f.store.check().unwrap().is_consistent());
    f.engine
        .create_job(all.clone(), create("j1", None, &["t9"]))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_canceled_job_deletes_without_force() {
    let f = fixture(10, &[]);
    let all = Grants::all();
    f.engine
        .create_job(all.clone(), create("j1", Some("acme"), &["t1"]))
        .await
        .unwrap();
    let cancel = CancelJobRequest {
        job_id: "j1".into(),
        reason_code: Some("OBSOLETE".into()),
        comment: None,
        force: false,
    };
    f.engine.cancel_job(all.clone(), cancel).await.unwrap();
    let execution = f.store.execution("j1", "t1").unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Canceled);
    f.engine
        .delete_job(all, delete("j1", false, Some("acme")))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_eleventh_concurrent_deletion_is_refused_and_namespaces_have_their_own_limit() {
    let f = fixture(10, &[("small", 1)]);
    let all = Grants::all();
    for i in 0..11 {
        f.engine
            .create_job(all.clone(), create(&format!("j{i}"), None, &["t"]))
            .await
            .unwrap();
    }
    for i in 0..10 {
        f.engine
            .delete_job(all.clone(), delete(&format!("j{i}"), true, None))
            .await
            .unwrap();
    }
    let err = f
        .engine
        .delete_job(all.clone(), delete("j10", true, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "LimitExceededException", "{err}");
    finish_deletion(&f.engine, "j0");
    f.engine
        .delete_job(all.clone(), delete("j10", true, None))
        .await
        .unwrap();

    let f = fixture(10, &[("small", 1)]);
    for id in ["a", "b"] {
        f.engine
            .create_job(all.clone(), create(id, Some("small"), &["t"]))
            .await
            .unwrap();
    }
    f.engine
        .create_job(all.clone(), create("c", Some("big"), &["t"]))
        .await
        .unwrap();
    f.engine
        .delete_job(all.clone(), delete("a", true, None))
        .await
        .unwrap();
    let err = f
        .engine
        .delete_job(all.clone(), delete("b", true, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "LimitExceededException");
    assert!(err.to_string().contains("namespace small"), "{err}");
    f.engine
        .delete_job(all, delete("c", true, None))
        .await
        .unwrap();
}

#[tokio::test]
async fn callers_never_see_jobs_of_namespaces_they_lack() {
    let f = fixture(10, &[]);
    let acme = Grants {
        namespaces: ["acme".to_owned()].into(),
        ..Default::default()
    };
    let other = Grants {
        namespaces: ["other".to_owned()].into(),
        ..Default::default()
    };
    f.engine
        .create_job(acme.clone(), create("j1", Some("acme"), &["t1"]))
        .await
        .unwrap();
    let denied = f
        .engine
        .create_job(acme.clone(), create("j2", None, &["t1"]))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), "ResourceNotFoundException");

    let hidden = f
        .engine
        .delete_job(other.clone(), delete("j1", true, None))
        .await
        .unwrap_err();
    let missing = f
        .engine
        .delete_job(other.clone(), delete("nope", true, None))
        .await
        .unwrap_err();
    assert_eq!(
        (hidden.code(), missing.code()),
        ("ResourceNotFoundException", "ResourceNotFoundException")
    );
    let listed = f
        .engine
        .list_jobs(other.clone(), ListJobsRequest::default())
        .await
        .unwrap();
    assert!(listed.jobs.is_empty());
    let wrong_ns = f
        .engine
        .delete_job(acme.clone(), delete("j1", true, Some("other")))
        .await
        .unwrap_err();
    assert_eq!(wrong_ns.code(), "ResourceNotFoundException");
    let listed = f
        .engine
        .list_jobs(acme.clone(), ListJobsRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.jobs.len(), 1);
}

#[tokio::test]
async fn listing_pages_with_next_token() {
    let f = fixture(10, &[]);
    let all = Grants::all();
    for i in 0..5 {
        f.engine
            .create_job(
                all.clone(),
                create(&format!("j{i}"), None, &["a", "b", "c"]),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let request = ListJobsRequest {
            max_results: Some(2),
            next_token: token.clone(),
            ..Default::default()
        };
        let page = f.engine.list_jobs(all.clone(), request).await.unwrap();
        seen.extend(page.jobs.into_iter().map(|j| j.job_id));
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, vec!["j0", "j1", "j2", "j3", "j4"]);
    let request = ListJobExecutionsForJobRequest {
        job_id: "j0".into(),
        status: None,
        max_results: Some(2),
        next_token: None,
    };
    let page = f
        .engine
        .list_job_executions_for_job(all, request)
        .await
        .unwrap();
    assert_eq!(page.execution_summaries.len(), 2);
    assert_eq!(page.next_token.as_deref(), Some("b"));
}

/// What a crash in the middle of a CreateJob leaves: a job in CREATING with some of its executions.
#[tokio::test]
async fn a_job_being_created_is_seen_by_no_one_and_undone_at_start_up() {
    let mut f = fixture(10, &[]);
    let all = Grants::all();
    f.engine
        .create_job(all.clone(), create("done", None, &["t1"]))
        .await
        .unwrap();
    let plan = plan_create(&create("half", None, &["t1", "t2", "t3"]), &all, 0).unwrap();
    let mut creation = creation::Creation::begin(&f.store, plan.job, 2).unwrap();
    creation.step(&f.store).unwrap();
    drop(creation);
    assert_eq!(
        f.store.executions_of_job("half", None, 10).unwrap().len(),
        2
    );

    let describe = DescribeJobRequest {
        job_id: "half".into(),
        before_substitution: None,
    };
    let described = f.engine.describe_job(all.clone(), describe).await;
    assert_eq!(described.unwrap_err().code(), "ResourceNotFoundException");
    let executions = ListJobExecutionsForJobRequest {
        job_id: "half".into(),
        status: None,
        max_results: None,
        next_token: None,
    };
    let listed = f
        .engine
        .list_job_executions_for_job(all.clone(), executions);
    assert_eq!(
        listed.await.unwrap_err().code(),
        "ResourceNotFoundException"
    );
    let jobs = f.engine.list_jobs(all.clone(), ListJobsRequest::default());
    let ids: Vec<String> = jobs
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(ids, ["done"]);
    let pending = f.engine.device_pending("t1".into(), None).await.unwrap();
    let ids: Vec<&str> = pending
        .queued_jobs
        .iter()
        .map(|j| j.job_id.as_str())
        .collect();
    assert_eq!(ids, ["done"]);
    let update = f
        .engine
        .device_update("t2".into(), None, "half".into(), update("IN_PROGRESS"))
        .await;
    assert_eq!(update.unwrap_err().code.as_str(), "ResourceNotFound");
    let again = f
        .engine
        .create_job(all.clone(), create("half", None, &["t9"]))
        .await;
    assert_eq!(again.unwrap_err().code(), "ResourceAlreadyExistsException");

    assert_eq!(f.engine.undo_unfinished_creations().await.unwrap(), 1);
    let report = f.store.check().unwrap();
    assert!(report.is_consistent(), "{report}");
    assert_eq!((report.jobs, report.executions), (1, 1));
    // The CreateJob that was never answered did not happen: retried, it succeeds.
    f.engine
        .create_job(all.clone(), create("half", None, &["t1", "t2", "t3"]))
        .await
        .unwrap();
    let kinds: Vec<_> = std::iter::from_fn(|| f.events.try_recv().ok())
        .map(|e| (e.job_id, e.things.len()))
        .collect();
    assert_eq!(kinds, [("done".into(), 1), ("half".into(), 3)]);
    assert!(f.store.check().unwrap().is_consistent());
}

/// CancelJobExecution and DeleteJobExecution change one execution: the device is told, the fleet hears
/// of the execution's new status (DeleteJobExecution's as none: it is gone) and of the job's completion,
/// and the store agrees with itself; a caller without the job's namespace finds nothing.
#[tokio::test]
async fn one_execution_is_canceled_then_deleted_and_each_change_is_announced() {
    use super::StatusChange;
    use crate::model::JobStatus;
    let mut f = fixture(10, &[]);
    let all = Grants::all();
    f.engine
        .create_job(all.clone(), create("j1", Some("acme"), &["t1"]))
        .await
        .unwrap();
    while f.changes.try_recv().is_ok() {}
    while f.events.try_recv().is_ok() {}
    let cancel = CancelJobExecutionRequest {
        job_id: "j1".into(),
        thing_name: "t1".into(),
        ..Default::default()
    };
    let stranger = Grants {
        namespaces: ["other".to_owned()].into(),
        ..Default::default()
    };
    let hidden = f.engine.cancel_job_execution(stranger, cancel.clone());
    assert_eq!(
        hidden.await.unwrap_err().code(),
        "ResourceNotFoundException"
    );
    f.engine
        .cancel_job_execution(all.clone(), cancel)
        .await
        .unwrap();
    let changes: Vec<_> = std::iter::from_fn(|| f.changes.try_recv().ok()).collect();
    assert!(
        matches!(
            &changes[..],
            [
                StatusChange::Job {
                    status: Some(JobStatus::Completed),
                    ..
                },
                StatusChange::Execution {
                    status: Some(ExecutionStatus::Canceled),
                    version_number: 2,
                    ..
                },
            ]
        ),
        "{changes:?}"
    );
    let event = f.events.try_recv().unwrap();
    assert_eq!(
        (event.kind, event.things),
        (JobEventKind::Canceled, vec!["t1".into()])
    );

    let delete = DeleteJobExecutionRequest {
        job_id: "j1".into(),
        thing_name: "t1".into(),
        execution_number: 1,
        force: false,
        namespace_id: Some("acme".into()),
    };
    f.engine
        .delete_job_execution(all.clone(), delete)
        .await
        .unwrap();
    let changes: Vec<_> = std::iter::from_fn(|| f.changes.try_recv().ok()).collect();
    assert!(
        matches!(
            &changes[..],
            [StatusChange::Execution { status: None, thing_name, .. }] if thing_name == "t1"
        ),
        "{changes:?}"
    );
    // A canceled execution was not pending: its device is not told again.
    assert!(f.events.try_recv().is_err());
    let report = f.store.check().unwrap();
    assert!(report.is_consistent(), "{report}");
    assert_eq!((report.jobs, report.executions), (1, 0));
}

#[tokio::test]
async fn a_closing_engine_answers_service_unavailable() {
    let f = fixture(10, &[]);
    f.engine.close();
    let err = f
        .engine
        .create_job(Grants::all(), create("j1", None, &["t"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ServiceUnavailableException");
}

/// The counts a tally holds, less where each deletion started (a fresh count starts it from what is left).
fn counted(tally: &super::tally::Tally) -> String {
    let jobs: Vec<_> = tally.jobs().filter(|(_, _, n)| *n > 0).collect();
    let executions: Vec<_> = tally.executions().filter(|(_, n)| *n > 0).collect();
    let deletions: Vec<_> = tally
        .deletions()
        .iter()
        .map(|(id, d)| (id, d.executions_remaining))
        .collect();
    let recoveries: Vec<_> = tally.recoveries().collect();
    format!("jobs {jobs:?}; executions {executions:?}; deletions {deletions:?}; recoveries {recoveries:?}")
}

/// After every kind of change the engine's counts are what a count of the store finds, and an engine
/// started again on the same store (a restart) counts the same.
#[tokio::test]
async fn the_counts_follow_every_change_and_survive_a_restart() {
    use super::routes::{Route, Routes};
    use super::tally::Tally;
    use super::Engine;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::Store::open(dir.path(), 8 << 20).unwrap());
    let engine_on = |store: &Arc<crate::store::Store>| {
        let (deletions, _) = tokio::sync::mpsc::unbounded_channel();
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let (recoveries, _) = tokio::sync::mpsc::unbounded_channel();
        let route = Route {
            name: "all".into(),
            things: "*".into(),
            namespace: None,
        };
        let limits = super::Limits {
            max_concurrent_deletions: 10,
            per_namespace: Default::default(),
        };
        let engine = Engine::new(store.clone(), limits, "gw", deletions, events);
        Arc::new(engine.with_recovery_routes(Arc::new(Routes::new(&[route])), recoveries))
    };
    let engine = engine_on(&store);
    let all = Grants::all();
    let agrees = |engine: &Engine, step: &str| {
        let fresh = Tally::of_store(&store).unwrap();
        assert_eq!(counted(&engine.tally()), counted(&fresh), "after {step}");
    };

    engine
        .create_job(all.clone(), create("std", None, &["t1", "t2", "t3"]))
        .await
        .unwrap();
    engine
        .create_job(all.clone(), create("a1", Some("acme"), &["t1", "t2"]))
        .await
        .unwrap();
    engine
        .create_job(all.clone(), create("a2", Some("acme"), &["t3"]))
        .await
        .unwrap();
    agrees(&engine, "create");
    let tally = engine.tally();
    assert_eq!(tally.jobs_in(crate::model::JobStatus::InProgress), 3);
    assert_eq!(
        tally
            .executions()
            .find(|(s, _)| *s == ExecutionStatus::Queued),
        Some((ExecutionStatus::Queued, 6))
    );

    engine
        .device_start_next("t1".into(), None, None, None)
        .await
        .unwrap();
    engine
        .device_update("t2".into(), None, "std".into(), update("IN_PROGRESS"))
        .await
        .unwrap();
    engine
        .device_update("t2".into(), None, "std".into(), update("SUCCEEDED"))
        .await
        .unwrap();
    agrees(&engine, "device updates");

    let cancel = |job_id: &str, force| CancelJobRequest {
        job_id: job_id.into(),
        reason_code: None,
        comment: None,
        force,
    };
    engine
        .cancel_job(all.clone(), cancel("a2", false))
        .await
        .unwrap();
    agrees(&engine, "cancel");
    engine
        .delete_job(all.clone(), delete("a2", false, Some("acme")))
        .await
        .unwrap();
    agrees(&engine, "delete");
    finish_deletion(&engine, "a2");
    agrees(&engine, "the deletion's end");

    // A forced deletion of a job with an IN_PROGRESS execution on a route: a recovery is created.
    engine
        .delete_job(all.clone(), delete("std", true, None))
        .await
        .unwrap();
    let deletion = engine.tally().deletions()["std"].clone();
    assert_eq!(
        (deletion.executions_at_start, deletion.executions_removed()),
        (3, 0)
    );
    assert_eq!(
        engine.delete_step("std", 2).unwrap(),
        super::deletion::Step::Removed { count: 2 }
    );
    agrees(&engine, "a batch of a forced deletion");
    let deletion = engine.tally().deletions()["std"].clone();
    assert_eq!(
        (deletion.executions_removed(), deletion.executions_remaining),
        (2, 1)
    );
    let pending = engine.open_recoveries(None).await.unwrap();
    assert_eq!(pending.len(), 1, "t1's IN_PROGRESS execution was removed");
    let mut recovery = pending[0].clone();
    recovery.state = crate::model::RecoveryState::Recovered;
    assert!(engine.record_recovery(recovery, false).await);
    agrees(&engine, "a recovery's outcome");

    // A restart: another engine on the same store counts what the first one kept.
    let before = counted(&engine.tally());
    drop(engine);
    let restarted = engine_on(&store);
    restarted.count().await.unwrap();
    assert_eq!(counted(&restarted.tally()), before);
    assert!(before.contains("deletions [(\"std\", 1)]"), "{before}");
    assert!(before.contains("(Recovered, 1)"), "{before}");
    finish_deletion(&restarted, "std");
    agrees(&restarted, "the resumed deletion's end");
}
