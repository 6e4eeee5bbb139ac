//! The rules of AWS IoT Jobs, applied to the store.
//!
//! Every operation validates its input first (cheap, on the caller's task), then runs its store work on
//! tokio's blocking pool: sled does disk I/O and a CreateJob with thousands of targets is many
//! transactions ([`super::creation`]). Writers hold the store's write lock from their first read to their
//! commit, so checks such as "fewer than 10 deletions in progress" cannot race. DeleteJob only flips the job
//! to `DELETION_IN_PROGRESS` (flushed to disk before it answers) and hands the job id to the deletion worker.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::api::*;
use super::model::{
    now_ms, DeletionInfo, ExecutionCounts, ExecutionStatus, Job, JobStatus, RecoveryReason,
    RecoveryRecord, RecoveryState,
};
use super::{creation, validate, JobEvent, JobEventKind, JobsError};
use crate::auth::Grants;
use crate::recovery::Routes;
use crate::store::{Change, Store};

type Result<T> = std::result::Result<T, JobsError>;

/// The largest job document accepted (AWS IoT's limit).
pub const MAX_DOCUMENT_BYTES: usize = 32 * 1024;

/// Executions CreateJob writes per store transaction, unless configured (`jobs.creation_batch_size`).
pub const CREATION_BATCH: usize = 500;

/// Limits on concurrent deletions: one for the gateway, optionally lower ones per namespace.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_concurrent_deletions: usize,
    pub per_namespace: BTreeMap<String, usize>,
}

impl Limits {
    pub fn from_config(jobs: &crate::config::JobsConfig) -> Limits {
        Limits {
            max_concurrent_deletions: jobs.max_concurrent_deletions,
            per_namespace: jobs
                .namespaces
                .iter()
                .filter_map(|(ns, l)| l.max_concurrent_deletions.map(|n| (ns.clone(), n)))
                .collect(),
        }
    }
}

/// The jobs engine. Share it behind an `Arc`.
pub struct Engine {
    pub(super) store: Arc<Store>,
    limits: Limits,
    arns: Arns,
    deletions: UnboundedSender<String>,
    pub(super) events: UnboundedSender<JobEvent>,
    routes: Arc<Routes>,
    creation_batch: usize,
    closing: AtomicBool,
}

impl Engine {
    /// `deletions` receives the id of every job that enters DELETION_IN_PROGRESS.
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
            routes: Arc::new(Routes::default()),
            creation_batch: CREATION_BATCH,
            closing: AtomicBool::new(false),
        }
    }

    /// Devices matched by `routes` get a durable recovery when a forced CancelJob interrupts their
    /// IN_PROGRESS execution.
    pub fn with_recovery_routes(mut self, routes: Arc<Routes>) -> Engine {
        self.routes = routes;
        self
    }

    /// CreateJob writes `batch` executions per store transaction (and undoes as many per transaction).
    pub fn with_creation_batch_size(mut self, batch: usize) -> Engine {
        self.creation_batch = batch.max(1);
        self
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

    pub async fn create_job(
        self: &Arc<Self>,
        grants: Grants,
        request: CreateJobRequest,
    ) -> Result<JobRef> {
        let plan = plan_create(&request, &grants)?;
        self.blocking(move |engine| engine.create_job_blocking(plan))
            .await
    }

    pub async fn delete_job(
        self: &Arc<Self>,
        grants: Grants,
        request: DeleteJobRequest,
    ) -> Result<()> {
        validate::job_id("jobId", &request.job_id)?;
        if let Some(ns) = &request.namespace_id {
            validate::namespace_id(ns)?;
        }
        self.blocking(move |engine| engine.delete_job_blocking(&grants, request))
            .await
    }

    pub async fn cancel_job(
        self: &Arc<Self>,
        grants: Grants,
        request: CancelJobRequest,
    ) -> Result<JobRef> {
        validate::job_id("jobId", &request.job_id)?;
        if let Some(code) = &request.reason_code {
            validate::reason_code(code)?;
        }
        if let Some(comment) = &request.comment {
            validate::text("comment", comment, 2028)?;
        }
        self.blocking(move |engine| engine.cancel_job_blocking(&grants, request))
            .await
    }

    pub async fn describe_job(
        self: &Arc<Self>,
        grants: Grants,
        request: DescribeJobRequest,
    ) -> Result<DescribeJobResponse> {
        validate::job_id("jobId", &request.job_id)?;
        self.blocking(move |engine| {
            let job = engine.visible_job(&grants, &request.job_id)?;
            Ok(DescribeJobResponse {
                job: engine.arns.job_view(&job),
            })
        })
        .await
    }

    pub async fn list_jobs(
        self: &Arc<Self>,
        grants: Grants,
        request: ListJobsRequest,
    ) -> Result<ListJobsResponse> {
        let limit = validate::max_results(request.max_results)?;
        let status = request
            .status
            .as_deref()
            .map(|s| {
                JobStatus::parse(s).ok_or_else(|| {
                    JobsError::InvalidRequest(format!(
                        "status: must be one of IN_PROGRESS, CANCELED, COMPLETED, DELETION_IN_PROGRESS; got \"{s}\""
                    ))
                })
            })
            .transpose()?;
        match request.target_selection.as_deref() {
            None | Some("SNAPSHOT") => {}
            Some("CONTINUOUS") => {
                return Ok(ListJobsResponse {
                    jobs: vec![],
                    next_token: None,
                })
            }
            Some(other) => {
                return Err(JobsError::InvalidRequest(format!(
                    "targetSelection: must be SNAPSHOT or CONTINUOUS; got \"{other}\""
                )))
            }
        }
        if request.thing_group_name.is_some() || request.thing_group_id.is_some() {
            return Err(JobsError::InvalidRequest(
                "thingGroupName/thingGroupId: sprig has no thing groups; jobs target things".into(),
            ));
        }
        if let Some(ns) = &request.namespace_id {
            validate::namespace_id(ns)?;
            if !grants.may_see(Some(ns)) {
                return Err(JobsError::ResourceNotFound(format!(
                    "Namespace {ns} does not exist"
                )));
            }
        }
        if let Some(token) = &request.next_token {
            validate::job_id("nextToken", token)?;
        }
        self.blocking(move |engine| {
            let namespace = request.namespace_id.as_deref().map(Some);
            let mut jobs = Vec::new();
            for job in engine
                .store
                .jobs_after(request.next_token.as_deref(), namespace)
            {
                let job = job?;
                if is_visible(&job, &grants) && status.is_none_or(|s| s == job.status) {
                    jobs.push(job);
                    if jobs.len() > limit {
                        break;
                    }
                }
            }
            let next_token = (jobs.len() > limit).then(|| jobs[limit - 1].job_id.clone());
            jobs.truncate(limit);
            Ok(ListJobsResponse {
                jobs: jobs.iter().map(|j| engine.arns.job_summary(j)).collect(),
                next_token,
            })
        })
        .await
    }

    pub async fn describe_job_execution(
        self: &Arc<Self>,
        grants: Grants,
        request: DescribeJobExecutionRequest,
    ) -> Result<DescribeJobExecutionResponse> {
        validate::job_id("jobId", &request.job_id)?;
        validate::thing_name("thingName", &request.thing_name)?;
        self.blocking(move |engine| {
            engine.visible_job(&grants, &request.job_id)?;
            let execution = engine
                .store
                .execution(&request.job_id, &request.thing_name)?
                .filter(|e| {
                    request
                        .execution_number
                        .is_none_or(|n| n == e.execution_number)
                })
                .ok_or_else(|| {
                    JobsError::ResourceNotFound(format!(
                        "Job execution {} for thing {} does not exist",
                        request.job_id, request.thing_name
                    ))
                })?;
            Ok(DescribeJobExecutionResponse {
                execution: engine.arns.execution_view(&execution),
            })
        })
        .await
    }

    pub async fn list_job_executions_for_job(
        self: &Arc<Self>,
        grants: Grants,
        request: ListJobExecutionsForJobRequest,
    ) -> Result<ListJobExecutionsForJobResponse> {
        validate::job_id("jobId", &request.job_id)?;
        let limit = validate::max_results(request.max_results)?;
        let status = request
            .status
            .as_deref()
            .map(|s| {
                ExecutionStatus::parse(s).ok_or_else(|| {
                    JobsError::InvalidRequest(format!(
                        "status: must be one of QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED, CANCELED; got \"{s}\""
                    ))
                })
            })
            .transpose()?;
        if let Some(token) = &request.next_token {
            validate::thing_name("nextToken", token)?;
        }
        self.blocking(move |engine| {
            engine.visible_job(&grants, &request.job_id)?;
            let mut found = Vec::new();
            let mut after = request.next_token.clone();
            // Scan in pages so a status filter over a large job does not load it whole.
            'scan: loop {
                let page =
                    engine
                        .store
                        .executions_of_job(&request.job_id, after.as_deref(), 1000)?;
                let Some(last) = page.last() else { break };
                after = Some(last.thing_name.clone());
                for execution in page {
                    if status.is_none_or(|s| s == execution.status) {
                        found.push(execution);
                        if found.len() > limit {
                            break 'scan;
                        }
                    }
                }
            }
            let next_token = (found.len() > limit).then(|| found[limit - 1].thing_name.clone());
            found.truncate(limit);
            Ok(ListJobExecutionsForJobResponse {
                execution_summaries: found
                    .iter()
                    .map(|e| engine.arns.execution_summary(e))
                    .collect(),
                next_token,
            })
        })
        .await
    }

    pub async fn list_recoveries(
        self: &Arc<Self>,
        grants: Grants,
        request: ListRecoveriesRequest,
    ) -> Result<ListRecoveriesResponse> {
        let limit = validate::max_results(request.max_results)?;
        let state = request
            .status
            .as_deref()
            .map(|s| {
                RecoveryState::parse(s).ok_or_else(|| {
                    JobsError::InvalidRequest(format!(
                        "status: must be one of PENDING, RECOVERED, FAILED; got \"{s}\""
                    ))
                })
            })
            .transpose()?;
        if let Some(thing) = &request.thing_name {
            validate::thing_name("thingName", thing)?;
        }
        if let Some(job_id) = &request.job_id {
            validate::job_id("jobId", job_id)?;
        }
        let after = request
            .next_token
            .as_deref()
            .map(|t| {
                t.parse::<u64>().map_err(|_| {
                    JobsError::InvalidRequest(format!(
                        "nextToken: not a token this gateway issued; got \"{t}\""
                    ))
                })
            })
            .transpose()?;
        self.blocking(move |engine| {
            let mut found = Vec::new();
            for recovery in engine.store.recoveries_after(after) {
                let recovery = recovery?;
                let wanted = grants.may_see(recovery.namespace_id.as_deref())
                    && state.is_none_or(|s| s == recovery.state)
                    && request
                        .thing_name
                        .as_ref()
                        .is_none_or(|t| *t == recovery.thing_name)
                    && request
                        .job_id
                        .as_ref()
                        .is_none_or(|j| *j == recovery.job_id);
                if wanted {
                    found.push(recovery);
                    if found.len() > limit {
                        break;
                    }
                }
            }
            let next_token = (found.len() > limit).then(|| found[limit - 1].id.to_string());
            found.truncate(limit);
            Ok(ListRecoveriesResponse {
                recoveries: found.iter().map(|r| engine.recovery_view(r)).collect(),
                next_token,
            })
        })
        .await
    }

    pub async fn describe_recovery(
        self: &Arc<Self>,
        grants: Grants,
        request: DescribeRecoveryRequest,
    ) -> Result<DescribeRecoveryResponse> {
        let missing = || {
            JobsError::ResourceNotFound(format!("Recovery {} does not exist", request.recovery_id))
        };
        let id: u64 = request.recovery_id.parse().map_err(|_| missing())?;
        let not_found = missing();
        self.blocking(move |engine| {
            let recovery = engine
                .store
                .recovery(id)?
                .filter(|r| grants.may_see(r.namespace_id.as_deref()))
                .ok_or(not_found)?;
            Ok(DescribeRecoveryResponse {
                recovery: engine.recovery_view(&recovery),
            })
        })
        .await
    }

    /// A recovery as operators see it, with the route that runs it.
    fn recovery_view(&self, recovery: &RecoveryRecord) -> RecoveryView {
        let route = self
            .routes
            .route_for(&recovery.thing_name, recovery.namespace_id.as_deref())
            .and_then(|index| self.routes.name(index));
        RecoveryView::of(recovery, route)
    }

    /// Runs store work on the blocking pool, refusing it once the gateway is shutting down.
    async fn blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> Result<T> + Send + 'static,
    {
        if self.closing.load(Ordering::SeqCst) {
            return Err(shutting_down());
        }
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "a jobs engine task failed");
                Err(JobsError::ServiceUnavailable(
                    "internal error; the request was not applied".into(),
                ))
            })
    }

    /// The job, if it exists (is not still being created) and the caller may see its namespace; otherwise
    /// ResourceNotFoundException, the same answer for all so a caller never learns of another tenant's jobs.
    fn visible_job(&self, grants: &Grants, job_id: &str) -> Result<Job> {
        self.store
            .job(job_id)?
            .filter(|job| is_visible(job, grants))
            .ok_or_else(|| JobsError::ResourceNotFound(format!("Job {job_id} does not exist")))
    }

    fn create_job_blocking(&self, plan: CreatePlan) -> Result<JobRef> {
        let _writer = self.store.lock_writes();
        let job_id = plan.job.job_id.clone();
        if self.store.job(&job_id)?.is_some() {
            return Err(JobsError::ResourceAlreadyExists(format!(
                "Job {job_id} already exists"
            )));
        }
        let started = std::time::Instant::now();
        let mut job = match creation::write(&self.store, plan.job, self.creation_batch) {
            Ok(job) => job,
            Err(e) => {
                if let Err(undo) = creation::undo(&self.store, &job_id, self.creation_batch) {
                    tracing::error!(job_id, error = %undo, "cannot undo a failed creation; it is undone at the next start");
                }
                return Err(e.into());
            }
        };
        self.store.flush()?;
        let executions = job.targets.len();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(job_id, namespace = ?job.namespace_id, executions, elapsed_ms, "job created");
        let reply = self.arns.job_ref(&job);
        let things = std::mem::take(&mut job.targets);
        self.emit(JobEventKind::Created, &job, things);
        Ok(reply)
    }

    fn delete_job_blocking(&self, grants: &Grants, request: DeleteJobRequest) -> Result<()> {
        let _writer = self.store.lock_writes();
        let job = self.visible_job(grants, &request.job_id)?;
        if request.namespace_id.is_some() && request.namespace_id != job.namespace_id {
            // The job exists, but not in the namespace the caller named: to that caller it does not exist.
            return Err(JobsError::ResourceNotFound(format!(
                "Job {} does not exist in namespace {}",
                request.job_id,
                request.namespace_id.as_deref().unwrap_or_default()
            )));
        }
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
        self.check_deletion_limits(&job)?;
        let now = now_ms();
        let mut deleting = job.clone();
        deleting.status = JobStatus::DeletionInProgress;
        deleting.last_updated_at = now;
        deleting.deletion = Some(DeletionInfo {
            forced: request.force,
            status_before: job.status,
            requested_at: now,
        });
        self.store.commit(&Change {
            job_before: Some(&job),
            job_after: Some(&deleting),
            ..Default::default()
        })?;
        // The caller is told the deletion is under way: it must survive a crash from here on.
        self.store.flush()?;
        tracing::info!(job_id = %job.job_id, namespace = ?job.namespace_id, force = request.force, "job deletion started");
        let _ = self.deletions.send(job.job_id);
        Ok(())
    }

    fn check_deletion_limits(&self, job: &Job) -> Result<()> {
        let deleting = self
            .store
            .job_ids_with_status(JobStatus::DeletionInProgress)?;
        let limit = self.limits.max_concurrent_deletions;
        if deleting.len() >= limit {
            return Err(JobsError::LimitExceeded(format!(
                "{} jobs are already in DELETION_IN_PROGRESS; at most {limit} may be deleted at the same time",
                deleting.len()
            )));
        }
        let Some(ns) = job.namespace_id.as_deref() else {
            return Ok(());
        };
        let Some(&ns_limit) = self.limits.per_namespace.get(ns) else {
            return Ok(());
        };
        let mut in_namespace = 0;
        for id in &deleting {
            if self
                .store
                .job(id)?
                .is_some_and(|j| j.namespace_id.as_deref() == Some(ns))
            {
                in_namespace += 1;
            }
        }
        if in_namespace >= ns_limit {
            return Err(JobsError::LimitExceeded(format!(
                "{in_namespace} jobs of namespace {ns} are already in DELETION_IN_PROGRESS; at most {ns_limit} may be deleted at the same time in this namespace"
            )));
        }
        Ok(())
    }

    fn cancel_job_blocking(&self, grants: &Grants, request: CancelJobRequest) -> Result<JobRef> {
        let _writer = self.store.lock_writes();
        let job = self.visible_job(grants, &request.job_id)?;
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
        let now = now_ms();
        let mut canceled = job.clone();
        canceled.status = JobStatus::Canceled;
        canceled.last_updated_at = now;
        canceled.force_canceled |= request.force;
        canceled.reason_code = request.reason_code.or(job.reason_code.clone());
        canceled.comment = request.comment.or(job.comment.clone());
        let mut changed = Vec::new();
        let mut recoveries = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .executions_of_job(&job.job_id, after.as_deref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.thing_name.clone());
            for mut execution in page {
                let cancel = match execution.status {
                    ExecutionStatus::Queued => true,
                    ExecutionStatus::InProgress => request.force,
                    _ => false,
                };
                if cancel {
                    let routed = self
                        .routes
                        .route_for(&execution.thing_name, job.namespace_id.as_deref());
                    if execution.status == ExecutionStatus::InProgress && routed.is_some() {
                        let reason = RecoveryReason::JobForceCanceled;
                        let mut recovery =
                            RecoveryRecord::for_execution(&job, &execution, reason, now);
                        recovery.id = self.store.next_recovery_id()?;
                        recoveries.push(recovery);
                    }
                    canceled
                        .counts
                        .shift(execution.status, ExecutionStatus::Canceled);
                    execution.force_canceled = execution.status == ExecutionStatus::InProgress;
                    execution.status = ExecutionStatus::Canceled;
                    execution.step_deadline = None;
                    execution.last_updated_at = now;
                    execution.version_number += 1;
                    changed.push(execution);
                }
            }
        }
        self.store.commit(&Change {
            job_before: Some(&job),
            job_after: Some(&canceled),
            put_executions: &changed,
            put_recoveries: &recoveries,
            ..Default::default()
        })?;
        self.store.flush()?;
        if !recoveries.is_empty() {
            self.routes.announce();
        }
        tracing::info!(job_id = %job.job_id, force = request.force, executions = changed.len(), "job canceled");
        self.emit(
            JobEventKind::Canceled,
            &canceled,
            changed.iter().map(|e| e.thing_name.clone()).collect(),
        );
        Ok(self.arns.job_ref(&canceled))
    }
}

fn shutting_down() -> JobsError {
    JobsError::ServiceUnavailable("the gateway is shutting down; retry when it is back".into())
}

/// Whether an operator with `grants` sees `job`: of a namespace it may see, and created (not CREATING).
fn is_visible(job: &Job, grants: &Grants) -> bool {
    job.status != JobStatus::Creating && grants.may_see(job.namespace_id.as_deref())
}

/// A validated CreateJob: the job, IN_PROGRESS with its targets, ready to write ([`creation::write`]
/// makes one QUEUED execution per target and counts them).
struct CreatePlan {
    job: Job,
}

fn plan_create(request: &CreateJobRequest, grants: &Grants) -> Result<CreatePlan> {
    validate::job_id("jobId", &request.job_id)?;
    if let Some(ns) = &request.namespace_id {
        validate::namespace_id(ns)?;
    }
    if !grants.may_see(request.namespace_id.as_deref()) {
        return Err(JobsError::ResourceNotFound(match &request.namespace_id {
            Some(ns) => format!("Namespace {ns} does not exist"),
            None => "this operator may not create jobs without a namespace".into(),
        }));
    }
    match request.target_selection.as_deref() {
        None | Some("SNAPSHOT") => {}
        Some("CONTINUOUS") => {
            return Err(JobsError::InvalidRequest(
                "targetSelection: CONTINUOUS jobs need thing groups, which sprig does not have; use SNAPSHOT".into(),
            ))
        }
        Some(other) => {
            return Err(JobsError::InvalidRequest(format!("targetSelection: must be SNAPSHOT or CONTINUOUS; got \"{other}\"")))
        }
    }
    if request.document_source.is_some() {
        return Err(JobsError::InvalidRequest(
            "documentSource: documents in S3 are not reachable from the gateway; pass the document itself".into(),
        ));
    }
    let document = request
        .document
        .clone()
        .ok_or_else(|| JobsError::InvalidRequest("document: is required".into()))?;
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(JobsError::InvalidRequest(format!(
            "document: must be at most {MAX_DOCUMENT_BYTES} bytes; got {}",
            document.len()
        )));
    }
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&document) {
        return Err(JobsError::InvalidRequest(format!(
            "document: must be a JSON document ({e})"
        )));
    }
    if let Some(description) = &request.description {
        validate::text("description", description, 2028)?;
    }
    if request.targets.is_empty() {
        return Err(JobsError::InvalidRequest(
            "targets: must name at least one thing".into(),
        ));
    }
    let mut seen = HashSet::with_capacity(request.targets.len());
    let mut targets = Vec::with_capacity(request.targets.len());
    for (i, target) in request.targets.iter().enumerate() {
        let name = Arns::thing_name_of(target);
        validate::thing_name(&format!("targets[{i}]"), name)?;
        if seen.insert(name) {
            targets.push(name.to_owned());
        }
    }
    let now = now_ms();
    let job = Job {
        job_id: request.job_id.clone(),
        namespace_id: request.namespace_id.clone(),
        status: JobStatus::InProgress,
        document,
        description: request.description.clone(),
        targets,
        created_at: now,
        last_updated_at: now,
        completed_at: None,
        force_canceled: false,
        reason_code: None,
        comment: None,
        counts: ExecutionCounts::default(),
        deletion: None,
    };
    Ok(CreatePlan { job })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deletion::{delete_step, Step};
    use tokio::sync::mpsc;

    struct Fixture {
        _dir: tempfile::TempDir,
        engine: Arc<Engine>,
        store: Arc<Store>,
        deletions: mpsc::UnboundedReceiver<String>,
        events: mpsc::UnboundedReceiver<JobEvent>,
    }

    fn fixture(limit: usize, per_namespace: &[(&str, usize)]) -> Fixture {
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
        let engine = Arc::new(Engine::new(store.clone(), limits, "gw", tx, events_tx));
        Fixture {
            _dir: dir,
            engine,
            store,
            deletions,
            events,
        }
    }

    fn create(job_id: &str, namespace: Option<&str>, things: &[&str]) -> CreateJobRequest {
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

    fn delete(job_id: &str, force: bool, namespace: Option<&str>) -> DeleteJobRequest {
        DeleteJobRequest {
            job_id: job_id.into(),
            force,
            namespace_id: namespace.map(str::to_owned),
        }
    }

    fn finish_deletion(store: &Store, job_id: &str) {
        while delete_step(store, &Routes::default(), job_id, 2).unwrap() != Step::Finished {}
    }

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

        finish_deletion(&f.store, "j1");
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
        finish_deletion(&f.store, "j0");
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
        let plan = plan_create(&create("half", None, &["t1", "t2", "t3"]), &all).unwrap();
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

    fn update(status: &str) -> crate::jobs::device::UpdateExecution {
        crate::jobs::device::UpdateExecution {
            status: status.into(),
            include_job_execution_state: true,
            ..Default::default()
        }
    }

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
        let now = crate::jobs::model::now_ms();
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
}
