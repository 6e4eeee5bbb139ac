//! The operators' reads: DescribeJob, GetJobDocument, ListJobs, DescribeJobExecution,
//! ListJobExecutionsForJob, ListJobExecutionsForThing and sprig's ListRecoveries, DescribeRecovery and the
//! jobs' part of DescribeGateway.
//! Each answers only what the caller's grants let it see; the lists page as AWS's do (`maxResults`, and
//! a `nextToken` naming the last item returned).

use std::sync::Arc;

use super::api::*;
use super::engine::{is_visible, Engine};
use super::{validate, Grants, JobsError};
use crate::model::{ExecutionStatus, JobStatus, RecoveryRecord, RecoveryState};

type Result<T> = std::result::Result<T, JobsError>;

/// A request's `status` filter, parsed by `parse`; `names` lists the values allowed, for the error.
fn status_filter<S>(
    status: Option<&str>,
    parse: impl Fn(&str) -> Option<S>,
    names: &str,
) -> Result<Option<S>> {
    status
        .map(|s| {
            parse(s).ok_or_else(|| {
                JobsError::InvalidRequest(format!("status: must be one of {names}; got \"{s}\""))
            })
        })
        .transpose()
}

/// The `status` filter of the execution listings.
fn execution_status_filter(status: Option<&str>) -> Result<Option<ExecutionStatus>> {
    status_filter(
        status,
        ExecutionStatus::parse,
        "QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED, CANCELED",
    )
}

/// The first `limit` of `items` that pass `wanted`, and the `nextToken` (`token_of` the last one
/// returned) if more follow. Reads at most one item past the page.
fn page<T, E>(
    items: impl IntoIterator<Item = std::result::Result<T, E>>,
    limit: usize,
    wanted: impl Fn(&T) -> bool,
    token_of: impl Fn(&T) -> String,
) -> std::result::Result<(Vec<T>, Option<String>), E> {
    let mut found = Vec::new();
    for item in items {
        let item = item?;
        if wanted(&item) {
            found.push(item);
            if found.len() > limit {
                break;
            }
        }
    }
    let next_token = (found.len() > limit).then(|| token_of(&found[limit - 1]));
    found.truncate(limit);
    Ok((found, next_token))
}

impl Engine {
    pub async fn describe_job(
        self: &Arc<Self>,
        grants: Grants,
        request: DescribeJobRequest,
    ) -> Result<DescribeJobResponse> {
        validate::job_id("jobId", &request.job_id)?;
        self.blocking(move |engine| {
            let mut job = engine.visible_job(&grants, &request.job_id)?;
            job.targets = engine.store().job_targets(&job.job_id)?.unwrap_or_default();
            Ok(DescribeJobResponse {
                job: engine.arns.job_view(&job),
            })
        })
        .await
    }

    /// The job's document, as CreateJob was given it.
    pub async fn get_job_document(
        self: &Arc<Self>,
        grants: Grants,
        request: GetJobDocumentRequest,
    ) -> Result<GetJobDocumentResponse> {
        validate::job_id("jobId", &request.job_id)?;
        self.blocking(move |engine| {
            let job = engine.visible_job(&grants, &request.job_id)?;
            Ok(GetJobDocumentResponse {
                document: job.document,
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
        let status = status_filter(
            request.status.as_deref(),
            JobStatus::parse,
            "IN_PROGRESS, CANCELED, COMPLETED, DELETION_IN_PROGRESS",
        )?;
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
            let jobs = engine
                .store()
                .jobs_after(request.next_token.as_deref(), namespace);
            let (jobs, next_token) = page(
                jobs,
                limit,
                |job| is_visible(job, &grants) && status.is_none_or(|s| s == job.status),
                |job| job.job_id.clone(),
            )?;
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
                .store()
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
        let status = execution_status_filter(request.status.as_deref())?;
        if let Some(token) = &request.next_token {
            validate::thing_name("nextToken", token)?;
        }
        self.blocking(move |engine| {
            engine.visible_job(&grants, &request.job_id)?;
            let executions = engine.executions_of(&request.job_id, request.next_token.clone());
            let (found, next_token) = page(
                executions,
                limit,
                |e| status.is_none_or(|s| s == e.status),
                |e| e.thing_name.clone(),
            )?;
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

    /// The thing's executions, pending or finished, of the jobs the caller may see (of `namespaceId`'s
    /// only, if given), in job id order; `nextToken` names the last job returned. sprig keeps no registry
    /// of things: a thing without executions has an empty list, not a ResourceNotFoundException.
    pub async fn list_job_executions_for_thing(
        self: &Arc<Self>,
        grants: Grants,
        request: ListJobExecutionsForThingRequest,
    ) -> Result<ListJobExecutionsForThingResponse> {
        validate::thing_name("thingName", &request.thing_name)?;
        let limit = validate::max_results(request.max_results)?;
        let status = execution_status_filter(request.status.as_deref())?;
        if let Some(ns) = &request.namespace_id {
            validate::namespace_id(ns)?;
            if !grants.may_see(Some(ns)) {
                return Err(JobsError::ResourceNotFound(format!(
                    "Namespace {ns} does not exist"
                )));
            }
        }
        if let Some(job_id) = &request.job_id {
            validate::job_id("jobId", job_id)?;
        }
        if let Some(token) = &request.next_token {
            validate::job_id("nextToken", token)?;
        }
        self.blocking(move |engine| {
            let store = engine.store();
            let thing = request.thing_name.as_str();
            let after = request.next_token.as_deref();
            let job_ids = match request.job_id.as_deref() {
                // One job: its execution, unless the token is past it.
                Some(job_id) => Box::new(
                    after
                        .is_none_or(|after| after < job_id)
                        .then(|| Ok(job_id.to_owned()))
                        .into_iter(),
                ),
                None => store.job_ids_of_thing_after(thing, after),
            };
            let namespace = request.namespace_id.as_deref();
            let executions = job_ids
                .map(|job_id| {
                    let job_id = job_id?;
                    let Some(job) = store.job(&job_id)? else {
                        return Ok(None);
                    };
                    let in_scope =
                        namespace.is_none_or(|ns| job.namespace_id.as_deref() == Some(ns));
                    if !is_visible(&job, &grants) || !in_scope {
                        return Ok(None);
                    }
                    store.execution(&job_id, thing)
                })
                .filter_map(std::result::Result::transpose);
            let (found, next_token) = page(
                executions,
                limit,
                |e| status.is_none_or(|s| s == e.status),
                |e| e.job_id.clone(),
            )?;
            Ok(ListJobExecutionsForThingResponse {
                execution_summaries: found.iter().map(ExecutionSummaryForThing::of).collect(),
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
        let state = status_filter(
            request.status.as_deref(),
            RecoveryState::parse,
            "PENDING, RECOVERED, FAILED",
        )?;
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
            let wanted = |recovery: &RecoveryRecord| {
                grants.may_see(recovery.namespace_id.as_deref())
                    && state.is_none_or(|s| s == recovery.state)
                    && request
                        .thing_name
                        .as_ref()
                        .is_none_or(|t| *t == recovery.thing_name)
                    && request
                        .job_id
                        .as_ref()
                        .is_none_or(|j| *j == recovery.job_id)
            };
            let recoveries = engine.store().recoveries_after(after);
            let (found, next_token) = page(recoveries, limit, wanted, |r| r.id.to_string())?;
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
                .store()
                .recovery(id)?
                .filter(|r| grants.may_see(r.namespace_id.as_deref()))
                .ok_or(not_found)?;
            Ok(DescribeRecoveryResponse {
                recovery: engine.recovery_view(&recovery),
            })
        })
        .await
    }

    /// DescribeGateway's counts (the engine's own, no walk) and its store's size and account. Counts of
    /// every namespace: the caller lets only an operator granted everything ask.
    pub async fn describe_gateway_jobs(self: &Arc<Self>) -> Result<GatewayJobs> {
        let store = self
            .blocking(|engine| {
                let store = engine.store();
                let summary = store.summary()?;
                Ok(StoreStatus {
                    size_bytes: store.size_on_disk()?,
                    jobs: summary.jobs,
                    executions: summary.executions,
                })
            })
            .await?;
        Ok(GatewayJobs::of(&self.tally(), store))
    }

    /// A recovery as operators see it, with the route that runs it.
    fn recovery_view(&self, recovery: &RecoveryRecord) -> RecoveryView {
        let route = self
            .routes
            .route_for(&recovery.thing_name, recovery.namespace_id.as_deref())
            .and_then(|index| self.routes.name(index));
        RecoveryView::of(recovery, route)
    }
}
