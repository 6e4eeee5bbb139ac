//! The jobs engine: the one writer to the jobs store, and the edge where the clock is read.
//!
//! Every command validates its input first (cheap, on the caller's task), then runs its store work on
//! tokio's blocking pool (`Engine::on_blocking_pool`): sled does disk I/O and a CreateJob with thousands
//! of targets is many transactions ([`super::creation`]). A writer holds the store's write lock from its
//! first read to its commit, so checks such as "fewer than 10 deletions in progress" cannot race: it reads,
//! asks [`super::transitions`] for the change, and commits it through `Engine::commit`, which writes the
//! change and its recoveries in one transaction and then announces the [`JobEvent`]. The operators'
//! commands are in `commands`, their queries in `queries`, the devices' in
//! [`super::device`], the deletion worker's steps in [`super::deletion`] and the recovery runner's records
//! in `recoveries`. Each commit also moves the engine's counts ([`super::tally`]), which the gateway's
//! status and gauges read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use super::api::Arns;
use super::clock::now_ms;
use super::device::DeviceWrites;
use super::routes::Routes;
use super::tally::{Gauges, Tally};
use super::transitions::{ExecutionChange, Limits, Transition};
use super::{creation, events, Grants, JobEvent, JobEventKind, JobsError, StatusChange};
use crate::model::{Execution, Job, JobStatus, RecoveryState};
use crate::store::{Change, Health, Store, StoreError};

type Result<T> = std::result::Result<T, JobsError>;

/// Executions CreateJob writes per store transaction, unless configured (`jobs.creation_batch_size`).
pub const CREATION_BATCH: usize = 500;

/// Executions read per store walk over a job's executions.
const EXECUTIONS_PAGE: usize = 1000;

/// The jobs engine. Share it behind an `Arc`.
pub struct Engine {
    store: Arc<Store>,
    pub(super) limits: Limits,
    pub(super) arns: Arns,
    pub(super) deletions: UnboundedSender<String>,
    events: UnboundedSender<JobEvent>,
    /// The events of changes that created recoveries, for the recovery runner.
    recovery_events: Option<UnboundedSender<JobEvent>>,
    /// Every committed status change, for the uplink (see [`StatusChange`]).
    status_changes: Option<UnboundedSender<StatusChange>>,
    pub(super) routes: Arc<Routes>,
    pub(super) creation_batch: usize,
    /// Devices' writes waiting to be committed together ([`super::device`]).
    pub(super) device_writes: DeviceWrites,
    closing: AtomicBool,
    /// Jobs, executions, deletions and recoveries counted (see [`super::tally`]).
    tally: Mutex<Tally>,
    gauges: Gauges,
}

/// Changes of executions of one job, of distinct things, each made from the job as the one before it
/// left it: committed in one transaction by [`Engine::commit_execution_group`].
#[derive(Debug)]
pub(super) struct ExecutionGroup {
    /// The job after the last change.
    pub job: Job,
    pub executions: Vec<Execution>,
    pub events: Vec<JobEvent>,
}

impl ExecutionGroup {
    /// No change yet of `before`.
    pub fn new(before: &Job) -> ExecutionGroup {
        ExecutionGroup {
            job: before.clone(),
            executions: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Adds a change made from [`ExecutionGroup::job`].
    pub fn push(&mut self, change: ExecutionChange) {
        self.job = change.job;
        self.executions.push(change.execution);
        self.events.extend(change.event);
    }

    pub fn is_empty(&self) -> bool {
        self.executions.is_empty()
    }
}

impl Engine {
    /// `deletions` receives the id of every job that enters DELETION_IN_PROGRESS; `events` every change.
    pub fn new(
        store: Arc<Store>,
        limits: Limits,
        gateway_id: &str,
        deletions: UnboundedSender<String>,
        events: UnboundedSender<JobEvent>,
    ) -> Engine {
        Engine {
            store,
            limits,
            arns: Arns::new(gateway_id),
            deletions,
            events,
            recovery_events: None,
            status_changes: None,
            routes: Arc::new(Routes::default()),
            creation_batch: CREATION_BATCH,
            device_writes: DeviceWrites::default(),
            closing: AtomicBool::new(false),
            tally: Mutex::new(Tally::default()),
            gauges: Gauges::new(),
        }
    }

    /// Devices matched by `routes` get a durable recovery when a deletion or a forced CancelJob
    /// interrupts their IN_PROGRESS execution; `created` hears of each change that created some.
    pub fn with_recovery_routes(
        mut self,
        routes: Arc<Routes>,
        created: UnboundedSender<JobEvent>,
    ) -> Engine {
        self.routes = routes;
        self.recovery_events = Some(created);
        self
    }

    /// `changes` hears of every committed status change of a job or an execution, in commit order, and of
    /// every recovery's end.
    pub fn with_status_changes(mut self, changes: UnboundedSender<StatusChange>) -> Engine {
        self.status_changes = Some(changes);
        self
    }

    /// CreateJob writes `batch` executions per store transaction (and undoes as many per transaction).
    pub fn with_creation_batch_size(mut self, batch: usize) -> Engine {
        self.creation_batch = batch.max(1);
        self
    }

    /// Devices' writes wait up to `window` for others to share their store transaction with
    /// (`jobs.device_write_window_ms`), or until `writers` of them (as many as can be in flight at once)
    /// are waiting; see [`super::device`].
    pub fn with_device_writes(mut self, window: std::time::Duration, writers: usize) -> Engine {
        self.device_writes = DeviceWrites::new(window, writers);
        self
    }

    /// The store, for the engine's reads (writes go through `Engine::commit`).
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// From now on every request is answered ServiceUnavailableException.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Hands every job found in DELETION_IN_PROGRESS to the deletion worker (at start-up, after a crash).
    pub async fn resume_deletions(self: &Arc<Self>) -> Result<usize> {
        let ids = self
            .blocking(|engine| {
                Ok(engine
                    .store
                    .job_ids_with_status(JobStatus::DeletionInProgress)?)
            })
            .await?;
        for id in &ids {
            tracing::info!(job_id = %id, "resuming an unfinished deletion");
            let _ = self.deletions.send(id.clone());
        }
        Ok(ids.len())
    }

    /// Removes every job a crash (or a store error) left in CREATING, with its executions: at start-up,
    /// before anything is served. Their CreateJob was never answered (see [`creation`]).
    pub async fn undo_unfinished_creations(self: &Arc<Self>) -> Result<usize> {
        self.blocking(|engine| {
            let _writer = engine.store.lock_writes();
            let ids = engine.store.job_ids_with_status(JobStatus::Creating)?;
            for id in &ids {
                let removed = creation::undo(&engine.store, id, engine.creation_batch)?;
                tracing::warn!(job_id = id.as_str(), executions = removed, "removed a job whose creation was interrupted; its CreateJob was never answered");
            }
            Ok(ids.len())
        })
        .await
    }

    /// Commits `transition` of `before` (the job as read under the write lock) in one store
    /// transaction, its recoveries numbered, then announces its event. Returns the job as stored.
    pub(super) fn commit(
        &self,
        before: &Job,
        transition: Transition,
    ) -> std::result::Result<Option<Job>, StoreError> {
        self.write(before, transition, false)
    }

    /// [`commit`](Self::commit), made durable before it is announced: for a change the caller is told of.
    pub(super) fn commit_durably(
        &self,
        before: &Job,
        transition: Transition,
    ) -> std::result::Result<Option<Job>, StoreError> {
        self.write(before, transition, true)
    }

    fn write(
        &self,
        before: &Job,
        mut transition: Transition,
        flush: bool,
    ) -> std::result::Result<Option<Job>, StoreError> {
        for recovery in &mut transition.recoveries {
            recovery.id = self.store.next_recovery_id()?;
        }
        self.store.commit(&Change {
            job_before: Some(before),
            job_after: transition.job.as_ref(),
            put_executions: &transition.put_executions,
            delete_executions: &transition.delete_executions,
            put_recoveries: &transition.recoveries,
        })?;
        self.counted(
            Some(before),
            transition.job.as_ref(),
            transition.recoveries.len(),
        );
        if flush {
            self.store.flush()?;
        }
        log_completion(before, transition.job.as_ref());
        self.report(|| {
            events::status_changes(
                before,
                transition.job.as_ref(),
                &transition.put_executions,
                &transition.delete_executions,
                now_ms(),
            )
        });
        self.announce(transition.event, !transition.recoveries.is_empty());
        Ok(transition.job)
    }

    /// Commits `group`, the changes of executions of the job `before`, in one transaction, then announces
    /// their events in their order. Returns the job and the executions as stored.
    pub(super) fn commit_execution_group(
        &self,
        before: &Job,
        group: ExecutionGroup,
    ) -> std::result::Result<(Job, Vec<Execution>), StoreError> {
        let ExecutionGroup {
            job,
            executions,
            events: announced,
        } = group;
        self.store.commit(&Change {
            job_before: Some(before),
            job_after: Some(&job),
            put_executions: &executions,
            ..Default::default()
        })?;
        self.counted(Some(before), Some(&job), 0);
        log_completion(before, Some(&job));
        self.report(|| events::status_changes(before, Some(&job), &executions, &[], now_ms()));
        for event in announced {
            self.announce(Some(event), false);
        }
        Ok((job, executions))
    }

    /// Tells the notifier, and the recovery runner if the change created recoveries.
    fn announce(&self, event: Option<JobEvent>, created_recoveries: bool) {
        let Some(event) = event else { return };
        if created_recoveries {
            if let Some(runner) = &self.recovery_events {
                let _ = runner.send(event.clone());
            }
        }
        let _ = self.events.send(event);
    }

    /// Hands the status changes of a commit to whoever listens for them (computed only if someone does).
    pub(super) fn report(&self, changes: impl FnOnce() -> Vec<StatusChange>) {
        if let Some(listener) = &self.status_changes {
            for change in changes() {
                let _ = listener.send(change);
            }
        }
    }

    /// Announces a job's creation (its writes are [`creation`]'s, in steps).
    pub(super) fn announce_created(&self, job: &Job, things: Vec<String>) {
        self.report(|| events::created(job, &things));
        if !things.is_empty() {
            self.announce(
                Some(JobEvent {
                    kind: JobEventKind::Created,
                    job_id: job.job_id.clone(),
                    namespace_id: job.namespace_id.clone(),
                    things,
                }),
                false,
            );
        }
    }

    /// Moves the counts by a change just committed: `before` to `after`, with `recoveries` new ones.
    pub(super) fn counted(&self, before: Option<&Job>, after: Option<&Job>, recoveries: usize) {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        tally.apply(before, after);
        if recoveries > 0 {
            tally.recoveries_created(recoveries);
        }
        self.gauges.publish_change(&tally, before, after);
    }

    /// Moves the counts by a recovery's state just recorded (`before`: as it was stored, if it was).
    pub(super) fn counted_recovery(&self, before: Option<RecoveryState>, after: RecoveryState) {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        tally.recovery_recorded(before, after);
        self.gauges.publish_recoveries(&tally);
    }

    /// The counts as they stand (see [`super::tally`]).
    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts the jobs, executions and recoveries in the store afresh, under the write lock: at start-up,
    /// before anything is served, and when the store is back in service ([`Engine::keep_count`]).
    pub async fn count(self: &Arc<Self>) -> Result<()> {
        self.blocking(|engine| {
            let started = std::time::Instant::now();
            let _writer = engine.store.lock_writes();
            let counted = Tally::of_store(&engine.store)?;
            let mut tally = engine.tally.lock().unwrap_or_else(|p| p.into_inner());
            *tally = counted;
            engine.gauges.publish_all(&tally);
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "jobs and recoveries counted"
            );
            Ok(())
        })
        .await
    }

    /// Counts afresh each time the store comes back into service (it lost what it had not flushed, which
    /// the counts had counted), until the gateway shuts down.
    pub async fn keep_count(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut health = self.store.health();
        let mut serving = *health.borrow_and_update() == Health::Serving;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let now_serving = *health.borrow_and_update() == Health::Serving;
            if now_serving && !serving {
                if let Err(e) = self.count().await {
                    tracing::warn!(error = %e, "cannot count the jobs again after the store was reopened");
                }
            }
            serving = now_serving;
        }
    }

    /// Runs `work` with the engine on tokio's blocking pool; `Err` if it panicked.
    pub(super) async fn on_blocking_pool<T, F>(
        self: &Arc<Self>,
        work: F,
    ) -> std::result::Result<T, tokio::task::JoinError>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> T + Send + 'static,
    {
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&engine)).await
    }

    /// Runs an operator's store work on the blocking pool, refusing it once the gateway is shutting down.
    pub(super) async fn blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> Result<T> + Send + 'static,
    {
        if self.is_closing() {
            return Err(shutting_down());
        }
        self.on_blocking_pool(work).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "a jobs engine task failed");
            Err(JobsError::ServiceUnavailable(
                "internal error; the request was not applied".into(),
            ))
        })
    }
}

/// A job whose last pending execution just ended is worth a line in the log.
fn log_completion(before: &Job, after: Option<&Job>) {
    let completed = |job: &Job| job.status == JobStatus::Completed;
    if after.is_some_and(completed) && !completed(before) {
        tracing::info!(job_id = %before.job_id, "job COMPLETED: every execution has ended");
    }
}

fn shutting_down() -> JobsError {
    JobsError::ServiceUnavailable("the gateway is shutting down; retry when it is back".into())
}

impl Engine {
    /// Every execution of `job_id` after the thing `after`, in thing order, read a page at a time so a
    /// large job is never in memory whole.
    pub(super) fn executions_of<'a>(
        &'a self,
        job_id: &'a str,
        after: Option<String>,
    ) -> impl Iterator<Item = std::result::Result<Execution, StoreError>> + 'a {
        let mut after = after;
        let mut page = Vec::new().into_iter();
        let mut done = false;
        std::iter::from_fn(move || loop {
            if let Some(execution) = page.next() {
                return Some(Ok(execution));
            }
            if done {
                return None;
            }
            match self
                .store
                .executions_of_job(job_id, after.as_deref(), EXECUTIONS_PAGE)
            {
                Ok(next) => {
                    done = next.is_empty();
                    after = next.last().map(|e| e.thing_name.clone());
                    page = next.into_iter();
                }
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        })
    }

    /// Does the device of `execution` (of `job`) have a recovery route (a recovery when it is interrupted)?
    pub(super) fn is_routed(&self, job: &Job, execution: &Execution) -> bool {
        let namespace = job.namespace_id.as_deref();
        self.routes
            .route_for(&execution.thing_name, namespace)
            .is_some()
    }

    /// The job, if it exists (is not still being created) and the caller may see its namespace; otherwise
    /// ResourceNotFoundException, the same answer for all so a caller never learns of another tenant's jobs.
    pub(super) fn visible_job(&self, grants: &Grants, job_id: &str) -> Result<Job> {
        self.store
            .job(job_id)?
            .filter(|job| is_visible(job, grants))
            .ok_or_else(|| JobsError::ResourceNotFound(format!("Job {job_id} does not exist")))
    }
}

/// Whether an operator with `grants` sees `job`: of a namespace it may see, and created (not CREATING).
pub(super) fn is_visible(job: &Job, grants: &Grants) -> bool {
    job.status != JobStatus::Creating && grants.may_see(job.namespace_id.as_deref())
}
