//! The devices' commands through the engine, on a real store.

use crate::jobs::test_fixture::{create, delete, fixture, update};
use crate::jobs::Grants;
use crate::jobs::JobEventKind;
use crate::model::{ExecutionStatus, JobStatus};

#[tokio::test]
async fn a_device_runs_its_job_to_completion_and_the_job_completes() {
    use crate::jobs::device::JobTarget;
    let mut f = fixture(10, &[]);
    f.engine
        .create_job(Grants::all(), create("j1", None, &["t1", "t2"]))
        .await
        .unwrap();
    let created = f.events.recv().await.unwrap();
    assert_eq!(
        (created.kind, created.things.len()),
        (JobEventKind::Created, 2)
    );

    let pending = f.engine.device_pending("t1".into(), None).await.unwrap();
    assert_eq!(pending.queued_jobs.len(), 1);
    let started = f
        .engine
        .device_start_next("t1".into(), None, None, Some(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((started.status, started.version_number), ("IN_PROGRESS", 2));
    assert_eq!(
        started.job_document.map(|d| d.value()),
        Some(serde_json::json!({"op": "update"}))
    );
    assert!(started
        .approximate_seconds_before_timed_out
        .is_some_and(|s| s > 290 && s <= 300));
    assert_eq!(
        f.events.recv().await.unwrap().kind,
        JobEventKind::ExecutionChanged
    );

    let mut stale = update("SUCCEEDED");
    stale.expected_version = Some(1);
    let err = f
        .engine
        .device_update("t1".into(), None, "j1".into(), stale)
        .await
        .unwrap_err();
    assert_eq!(err.code.as_str(), "VersionMismatch");
    assert_eq!(err.execution_state.unwrap().version_number, 2);

    let done = f
        .engine
        .device_update("t1".into(), None, "j1".into(), update("SUCCEEDED"))
        .await
        .unwrap();
    assert_eq!(done.execution_state.unwrap().status, "SUCCEEDED");
    let again = f
        .engine
        .device_update("t1".into(), None, "j1".into(), update("IN_PROGRESS"))
        .await
        .unwrap_err();
    assert_eq!(again.code.as_str(), "InvalidStateTransition");
    assert_eq!(again.execution_state.unwrap().status, "SUCCEEDED");
    let described = f
        .engine
        .device_describe("t1".into(), None, JobTarget::Id("j1".into()), None, true)
        .await;
    assert_eq!(described.unwrap_err().code.as_str(), "TerminalStateReached");
    assert_eq!(
        f.engine
            .device_describe("t1".into(), None, JobTarget::Next, None, true)
            .await
            .unwrap(),
        None
    );

    // QUEUED straight to a terminal status is allowed; the last one completes the job.
    f.engine
        .device_update("t2".into(), None, "j1".into(), update("REJECTED"))
        .await
        .unwrap();
    let job = f.store.job("j1").unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert!(job.completed_at.is_some());
    assert!(f.store.check().unwrap().is_consistent());
    // A completed job deletes without force.
    f.engine
        .delete_job(Grants::all(), delete("j1", false, None))
        .await
        .unwrap();
}

#[tokio::test]
async fn devices_see_only_their_scope_and_never_a_job_being_deleted() {
    let f = fixture(10, &[]);
    f.engine
        .create_job(Grants::all(), create("plain", None, &["t1"]))
        .await
        .unwrap();
    f.engine
        .create_job(
            Grants::all(),
            create("gg", Some("aws-gg-deployment"), &["t1"]),
        )
        .await
        .unwrap();
    let plain = f.engine.device_pending("t1".into(), None).await.unwrap();
    assert_eq!(
        plain
            .queued_jobs
            .iter()
            .map(|j| j.job_id.as_str())
            .collect::<Vec<_>>(),
        ["plain"]
    );
    let gg = f
        .engine
        .device_pending("t1".into(), Some("aws-gg-deployment".into()))
        .await
        .unwrap();
    assert_eq!(
        gg.queued_jobs
            .iter()
            .map(|j| j.job_id.as_str())
            .collect::<Vec<_>>(),
        ["gg"]
    );
    let wrong_scope = f
        .engine
        .device_update("t1".into(), None, "gg".into(), update("IN_PROGRESS"))
        .await;
    assert_eq!(wrong_scope.unwrap_err().code.as_str(), "ResourceNotFound");
    let other_thing = f
        .engine
        .device_update("t2".into(), None, "plain".into(), update("IN_PROGRESS"))
        .await;
    assert_eq!(other_thing.unwrap_err().code.as_str(), "ResourceNotFound");

    f.engine
        .device_start_next("t1".into(), None, None, None)
        .await
        .unwrap()
        .unwrap();
    f.engine
        .delete_job(Grants::all(), delete("plain", true, None))
        .await
        .unwrap();
    assert!(f
        .engine
        .device_pending("t1".into(), None)
        .await
        .unwrap()
        .in_progress_jobs
        .is_empty());
    let gone = f
        .engine
        .device_update("t1".into(), None, "plain".into(), update("SUCCEEDED"))
        .await;
    assert_eq!(gone.unwrap_err().code.as_str(), "ResourceNotFound");
}

#[tokio::test]
async fn a_step_timeout_times_the_execution_out() {
    let mut f = fixture(10, &[]);
    f.engine
        .create_job(Grants::all(), create("j1", None, &["t1"]))
        .await
        .unwrap();
    f.engine
        .device_start_next("t1".into(), None, None, Some(1))
        .await
        .unwrap();
    let now = crate::jobs::clock::now_ms();
    assert_eq!(f.engine.expire_step_timeouts(now).unwrap(), 0);
    assert_eq!(f.engine.expire_step_timeouts(now + 61_000).unwrap(), 1);
    let execution = f.store.execution("j1", "t1").unwrap().unwrap();
    assert_eq!(
        (execution.status, execution.step_deadline),
        (ExecutionStatus::TimedOut, None)
    );
    assert_eq!(
        f.store.job("j1").unwrap().unwrap().status,
        JobStatus::Completed
    );
    assert!(f.store.check().unwrap().is_consistent());
    let kinds: Vec<_> = std::iter::from_fn(|| f.events.try_recv().ok())
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            JobEventKind::Created,
            JobEventKind::ExecutionChanged,
            JobEventKind::ExecutionChanged
        ]
    );
}

#[tokio::test]
async fn bad_device_input_is_an_invalid_request() {
    let f = fixture(10, &[]);
    f.engine
        .create_job(Grants::all(), create("j1", None, &["t1"]))
        .await
        .unwrap();
    for status in ["QUEUED", "CANCELED", "DONE"] {
        let err = f
            .engine
            .device_update("t1".into(), None, "j1".into(), update(status))
            .await
            .unwrap_err();
        assert_eq!(err.code.as_str(), "InvalidRequest", "{status}");
    }
    let mut bad_details = update("IN_PROGRESS");
    bad_details.status_details = Some([("bad key".to_owned(), "v".to_owned())].into());
    let err = f
        .engine
        .device_update("t1".into(), None, "j1".into(), bad_details)
        .await
        .unwrap_err();
    assert!(err.message.starts_with("statusDetails:"), "{err}");
    let err = f
        .engine
        .device_start_next("t1".into(), None, None, Some(0))
        .await
        .unwrap_err();
    assert!(err.message.starts_with("stepTimeoutInMinutes:"), "{err}");
}

/// Holds the store's write lock, on a thread of its own, until the returned sender is dropped.
fn hold_writes(f: &crate::jobs::test_fixture::Fixture) -> std::sync::mpsc::Sender<()> {
    let store = f.store.clone();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, holding) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _writer = store.lock_writes();
        held.send(()).unwrap();
        let _ = released.recv();
    });
    holding.recv().unwrap();
    release
}

/// Waits until `count` device writes are queued behind the store's write lock.
async fn queued(f: &crate::jobs::test_fixture::Fixture, count: usize) {
    while f.engine.device_writes.len() < count {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn device_writes_queued_behind_a_write_are_committed_together_each_answered() {
    let f = fixture(10, &[]);
    let things: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    let targets: Vec<&str> = things.iter().map(String::as_str).collect();
    f.engine
        .create_job(Grants::all(), create("j1", None, &targets))
        .await
        .unwrap();
    let changes_before = f.store.summary().unwrap().generation;

    let writer = hold_writes(&f);
    let mut answers = Vec::new();
    for (i, thing) in things.iter().enumerate() {
        let engine = f.engine.clone();
        let thing = thing.clone();
        answers.push(tokio::spawn(async move {
            match i % 2 {
                0 => engine
                    .device_start_next(thing, None, None, None)
                    .await
                    .map(|e| e.unwrap().status),
                _ => engine
                    .device_update(thing, None, "j1".into(), update("SUCCEEDED"))
                    .await
                    .map(|o| o.execution_state.unwrap().status),
            }
        }));
    }
    // One more for a job that is not there: refused alone, the others go on.
    let engine = f.engine.clone();
    let missing = tokio::spawn(async move {
        engine
            .device_update("t0".into(), None, "nope".into(), update("SUCCEEDED"))
            .await
    });
    queued(&f, 41).await;
    drop(writer);

    for (i, answer) in answers.into_iter().enumerate() {
        let status = answer.await.unwrap().unwrap();
        assert_eq!(
            status,
            if i % 2 == 0 {
                "IN_PROGRESS"
            } else {
                "SUCCEEDED"
            }
        );
    }
    let refused = missing.await.unwrap().unwrap_err();
    assert_eq!(refused.code.as_str(), "ResourceNotFound");
    // The 40 executions in one transaction (two if t0's second request was queued before its first).
    assert!(
        f.store.summary().unwrap().generation - changes_before <= 2,
        "{} transactions",
        f.store.summary().unwrap().generation - changes_before
    );
    let job = f.store.job("j1").unwrap().unwrap();
    let counts = (
        job.counts.get(ExecutionStatus::InProgress),
        job.counts.get(ExecutionStatus::Succeeded),
    );
    assert_eq!((counts, job.status), ((20, 20), JobStatus::InProgress));
    assert!(f.store.check().unwrap().is_consistent());
}

#[tokio::test]
async fn a_things_second_write_waits_for_the_next_group_and_sees_the_first() {
    let mut f = fixture(10, &[]);
    f.engine
        .create_job(Grants::all(), create("j1", None, &["t1", "t2"]))
        .await
        .unwrap();
    let writer = hold_writes(&f);
    let mut answers = Vec::new();
    for (thing, status) in [
        ("t1", "IN_PROGRESS"),
        ("t1", "SUCCEEDED"),
        ("t2", "SUCCEEDED"),
    ] {
        let engine = f.engine.clone();
        answers.push(tokio::spawn(async move {
            engine
                .device_update(thing.into(), None, "j1".into(), update(status))
                .await
        }));
        queued(&f, answers.len()).await;
    }
    drop(writer);
    let versions: Vec<i64> = futures_versions(answers).await;
    assert_eq!(versions, [2, 3, 2]);
    let job = f.store.job("j1").unwrap().unwrap();
    assert_eq!(
        (job.counts.get(ExecutionStatus::Succeeded), job.status),
        (2, JobStatus::Completed)
    );
    assert!(f.store.check().unwrap().is_consistent());
    // Every change announced, in the order of the requests: the job's creation, then the three.
    let kinds: Vec<_> = std::iter::from_fn(|| f.events.try_recv().ok())
        .map(|e| (e.kind, e.things))
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(kinds[1].1, ["t1"]);
    assert_eq!(kinds[2].1, ["t2"]);
    assert_eq!(kinds[3].1, ["t1"]);
}

/// The execution versions the updates were answered with, in their order.
async fn futures_versions(
    answers: Vec<
        tokio::task::JoinHandle<
            Result<crate::jobs::device::UpdateOutcome, crate::jobs::device::DeviceError>,
        >,
    >,
) -> Vec<i64> {
    let mut versions = Vec::new();
    for answer in answers {
        let outcome = answer.await.unwrap().unwrap();
        versions.push(outcome.execution_state.unwrap().version_number);
    }
    versions
}

#[tokio::test]
async fn step_timeouts_of_one_job_are_written_in_one_transaction() {
    let f = fixture(10, &[]);
    for (job, things) in [("j1", &["t1", "t2", "t3"][..]), ("j2", &["t4"][..])] {
        f.engine
            .create_job(Grants::all(), create(job, None, things))
            .await
            .unwrap();
    }
    for thing in ["t1", "t2", "t3", "t4"] {
        f.engine
            .device_start_next(thing.into(), None, None, Some(1))
            .await
            .unwrap()
            .unwrap();
    }
    let changes_before = f.store.summary().unwrap().generation;
    let later = crate::jobs::clock::now_ms() + 61_000;
    assert_eq!(f.engine.expire_step_timeouts(later).unwrap(), 4);
    assert_eq!(f.store.summary().unwrap().generation - changes_before, 2);
    let job = f.store.job("j1").unwrap().unwrap();
    assert_eq!(
        (job.counts.get(ExecutionStatus::TimedOut), job.status),
        (3, JobStatus::Completed)
    );
    assert!(f.store.check().unwrap().is_consistent());
}
