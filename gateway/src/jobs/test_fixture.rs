//! The engine under test: a fresh store in a temporary directory, with the channels the engine reports
//! on, and the requests the tests send. Shared by the operators' and the devices' tests.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::api::{CreateJobRequest, DeleteJobRequest};
use super::deletion::Step;
use super::{Engine, JobEvent, Limits, StatusChange};
use crate::store::Store;

pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) engine: Arc<Engine>,
    pub(crate) store: Arc<Store>,
    pub(crate) deletions: mpsc::UnboundedReceiver<String>,
    pub(crate) events: mpsc::UnboundedReceiver<JobEvent>,
    pub(crate) changes: mpsc::UnboundedReceiver<StatusChange>,
}

pub(crate) fn fixture(limit: usize, per_namespace: &[(&str, usize)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 8 << 20).unwrap());
    let (tx, deletions) = mpsc::unbounded_channel();
    let limits = Limits {
        max_concurrent_deletions: limit,
        per_namespace: per_namespace
            .iter()
            .map(|(n, l)| (n.to_string(), *l))
            .collect(),
    };
    let (events_tx, events) = mpsc::unbounded_channel();
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let engine = Engine::new(store.clone(), limits, "gw", tx, events_tx);
    let engine = Arc::new(engine.with_status_changes(changes_tx));
    Fixture {
        _dir: dir,
        engine,
        store,
        deletions,
        events,
        changes,
    }
}

pub(crate) fn create(job_id: &str, namespace: Option<&str>, things: &[&str]) -> CreateJobRequest {
    CreateJobRequest {
        job_id: job_id.into(),
        targets: things.iter().map(|t| t.to_string()).collect(),
        document: Some(r#"{"op":"update"}"#.into()),
        document_source: None,
        description: None,
        target_selection: None,
        namespace_id: namespace.map(str::to_owned),
    }
}

pub(crate) fn delete(job_id: &str, force: bool, namespace: Option<&str>) -> DeleteJobRequest {
    DeleteJobRequest {
        job_id: job_id.into(),
        force,
        namespace_id: namespace.map(str::to_owned),
    }
}

pub(crate) fn finish_deletion(engine: &Engine, job_id: &str) {
    while engine.delete_step(job_id, 2).unwrap() != Step::Finished {}
}

/// An UpdateJobExecution to `status`, answering with the execution's state.
pub(crate) fn update(status: &str) -> crate::jobs::device::UpdateExecution {
    crate::jobs::device::UpdateExecution {
        status: status.into(),
        include_job_execution_state: true,
        ..Default::default()
    }
}
