//! Request and response shapes of the control plane, with boto3's names (`jobId`, `namespaceId`, …).
//!
//! Requests reject unknown fields: a misspelt parameter must fail loudly, not be ignored. Responses carry
//! times as epoch seconds (with milliseconds), as the AWS IoT REST API sends them, and ARNs in the form
//! `arn:sprig:iot:local:{gateway id}:job/{jobId}` (`…:thing/{thingName}` for things).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Execution, Job};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJobRequest {
    pub job_id: String,
    pub targets: Vec<String>,
    pub document: Option<String>,
    pub document_source: Option<String>,
    pub description: Option<String>,
    pub target_selection: Option<String>,
    pub namespace_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteJobRequest {
    pub job_id: String,
    #[serde(default)]
    pub force: bool,
    pub namespace_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DescribeJobRequest {
    pub job_id: String,
    pub before_substitution: Option<bool>,
}

/// UpdateJob. The configurations sprig has no model for are read so that they can be refused by name
/// ([`UpdateJobRequest::unsupported`]); a JSON `null` is as good as leaving one out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateJobRequest {
    pub job_id: String,
    pub description: Option<String>,
    pub namespace_id: Option<String>,
    pub timeout_config: Option<serde_json::Value>,
    pub presigned_url_config: Option<serde_json::Value>,
    pub job_executions_rollout_config: Option<serde_json::Value>,
    pub abort_config: Option<serde_json::Value>,
    pub job_executions_retry_config: Option<serde_json::Value>,
}

impl UpdateJobRequest {
    /// The first configuration given that sprig's jobs do not have, and why.
    pub fn unsupported(&self) -> Option<(&'static str, &'static str)> {
        [
            (
                "timeoutConfig",
                self.timeout_config.is_some(),
                "sprig's jobs have no in-progress timer (CreateJob takes none); a device sets a step \
                 timer with stepTimeoutInMinutes",
            ),
            (
                "presignedUrlConfig",
                self.presigned_url_config.is_some(),
                "the gateway presigns no S3 URLs",
            ),
            (
                "jobExecutionsRolloutConfig",
                self.job_executions_rollout_config.is_some(),
                "sprig queues every execution at once and has no rollout configuration",
            ),
            (
                "abortConfig",
                self.abort_config.is_some(),
                "sprig has no abort configuration",
            ),
            (
                "jobExecutionsRetryConfig",
                self.job_executions_retry_config.is_some(),
                "sprig has no retry configuration",
            ),
        ]
        .into_iter()
        .find(|(_, given, _)| *given)
        .map(|(field, _, why)| (field, why))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetJobDocumentRequest {
    pub job_id: String,
    /// sprig's documents have no substitution parameters: the document is the same either way.
    pub before_substitution: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetJobDocumentResponse {
    pub document: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListJobsRequest {
    pub status: Option<String>,
    pub target_selection: Option<String>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
    pub thing_group_name: Option<String>,
    pub thing_group_id: Option<String>,
    pub namespace_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelJobRequest {
    pub job_id: String,
    pub reason_code: Option<String>,
    pub comment: Option<String>,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelJobExecutionRequest {
    pub job_id: String,
    pub thing_name: String,
    #[serde(default)]
    pub force: bool,
    pub expected_version: Option<i64>,
    pub status_details: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteJobExecutionRequest {
    pub job_id: String,
    pub thing_name: String,
    pub execution_number: i64,
    #[serde(default)]
    pub force: bool,
    pub namespace_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DescribeJobExecutionRequest {
    pub job_id: String,
    pub thing_name: String,
    pub execution_number: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListJobExecutionsForJobRequest {
    pub job_id: String,
    pub status: Option<String>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListJobExecutionsForThingRequest {
    pub thing_name: String,
    pub status: Option<String>,
    pub namespace_id: Option<String>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
    pub job_id: Option<String>,
}

/// CreateJob's and CancelJob's response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub job_arn: String,
    pub job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeJobResponse {
    pub job: JobView,
}

/// AWS's `Job` shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_arn: String,
    pub job_id: String,
    pub target_selection: &'static str,
    pub status: &'static str,
    pub force_canceled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub targets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: f64,
    pub last_updated_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<f64>,
    pub job_process_details: JobProcessDetails,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProcessDetails {
    pub number_of_canceled_things: u64,
    pub number_of_succeeded_things: u64,
    pub number_of_failed_things: u64,
    pub number_of_rejected_things: u64,
    pub number_of_queued_things: u64,
    pub number_of_in_progress_things: u64,
    pub number_of_removed_things: u64,
    pub number_of_timed_out_things: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListJobsResponse {
    pub jobs: Vec<JobSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// AWS's `JobSummary` shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub job_arn: String,
    pub job_id: String,
    pub target_selection: &'static str,
    pub status: &'static str,
    pub created_at: f64,
    pub last_updated_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeJobExecutionResponse {
    pub execution: ExecutionView,
}

/// AWS's `JobExecution` shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionView {
    pub job_id: String,
    pub status: &'static str,
    pub force_canceled: bool,
    pub status_details: StatusDetails,
    pub thing_arn: String,
    pub queued_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    pub last_updated_at: f64,
    pub execution_number: i64,
    pub version_number: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    pub details_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListJobExecutionsForJobResponse {
    pub execution_summaries: Vec<ExecutionSummaryForJob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummaryForJob {
    pub thing_arn: String,
    pub job_execution_summary: ExecutionSummary,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListJobExecutionsForThingResponse {
    pub execution_summaries: Vec<ExecutionSummaryForThing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// AWS's `JobExecutionSummaryForThing`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummaryForThing {
    pub job_id: String,
    pub job_execution_summary: ExecutionSummary,
}

/// AWS's `JobExecutionSummary` (sprig has no retry configuration, so never a `retryAttempt`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummary {
    pub status: &'static str,
    pub queued_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    pub last_updated_at: f64,
    pub execution_number: i64,
}

impl ExecutionSummary {
    pub fn of(execution: &Execution) -> ExecutionSummary {
        ExecutionSummary {
            status: execution.status.as_str(),
            queued_at: seconds(execution.queued_at),
            started_at: execution.started_at.map(seconds),
            last_updated_at: seconds(execution.last_updated_at),
            execution_number: execution.execution_number,
        }
    }
}

impl ExecutionSummaryForThing {
    pub fn of(execution: &Execution) -> ExecutionSummaryForThing {
        ExecutionSummaryForThing {
            job_id: execution.job_id.clone(),
            job_execution_summary: ExecutionSummary::of(execution),
        }
    }
}

/// Epoch milliseconds as AWS's epoch seconds.
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Makes this gateway's ARNs.
#[derive(Debug, Clone)]
pub struct Arns {
    prefix: String,
}

impl Arns {
    pub fn new(gateway_id: &str) -> Arns {
        Arns {
            prefix: format!("arn:sprig:iot:local:{gateway_id}"),
        }
    }

    pub fn job(&self, job_id: &str) -> String {
        format!("{}:job/{job_id}", self.prefix)
    }

    pub fn thing(&self, thing_name: &str) -> String {
        format!("{}:thing/{thing_name}", self.prefix)
    }

    pub fn job_ref(&self, job: &Job) -> JobRef {
        JobRef {
            job_arn: self.job(&job.job_id),
            job_id: job.job_id.clone(),
            description: job.description.clone(),
        }
    }

    pub fn job_view(&self, job: &Job) -> JobView {
        use crate::model::ExecutionStatus as S;
        let n = |status| job.counts.get(status);
        JobView {
            job_arn: self.job(&job.job_id),
            job_id: job.job_id.clone(),
            target_selection: "SNAPSHOT",
            status: job.status.as_str(),
            force_canceled: job.force_canceled,
            reason_code: job.reason_code.clone(),
            comment: job.comment.clone(),
            targets: job.targets.iter().map(|t| self.thing(t)).collect(),
            description: job.description.clone(),
            created_at: seconds(job.created_at),
            last_updated_at: seconds(job.last_updated_at),
            completed_at: job.completed_at.map(seconds),
            job_process_details: JobProcessDetails {
                number_of_canceled_things: n(S::Canceled),
                number_of_succeeded_things: n(S::Succeeded),
                number_of_failed_things: n(S::Failed),
                number_of_rejected_things: n(S::Rejected),
                number_of_queued_things: n(S::Queued),
                number_of_in_progress_things: n(S::InProgress),
                number_of_removed_things: n(S::Removed),
                number_of_timed_out_things: n(S::TimedOut),
            },
            namespace_id: job.namespace_id.clone(),
        }
    }

    pub fn job_summary(&self, job: &Job) -> JobSummary {
        JobSummary {
            job_arn: self.job(&job.job_id),
            job_id: job.job_id.clone(),
            target_selection: "SNAPSHOT",
            status: job.status.as_str(),
            created_at: seconds(job.created_at),
            last_updated_at: seconds(job.last_updated_at),
            completed_at: job.completed_at.map(seconds),
        }
    }

    pub fn execution_view(&self, execution: &Execution) -> ExecutionView {
        ExecutionView {
            job_id: execution.job_id.clone(),
            status: execution.status.as_str(),
            force_canceled: execution.force_canceled,
            status_details: StatusDetails {
                details_map: execution.status_details.clone(),
            },
            thing_arn: self.thing(&execution.thing_name),
            queued_at: seconds(execution.queued_at),
            started_at: execution.started_at.map(seconds),
            last_updated_at: seconds(execution.last_updated_at),
            execution_number: execution.execution_number,
            version_number: execution.version_number,
        }
    }

    pub fn execution_summary(&self, execution: &Execution) -> ExecutionSummaryForJob {
        ExecutionSummaryForJob {
            thing_arn: self.thing(&execution.thing_name),
            job_execution_summary: ExecutionSummary::of(execution),
        }
    }

    /// A target as a caller may give it: a thing name, or a thing ARN (`arn:…:thing/NAME`) of any account.
    pub fn thing_name_of(target: &str) -> &str {
        match target.strip_prefix("arn:") {
            Some(rest) => rest.rsplit_once(":thing/").map_or(target, |(_, name)| name),
            None => target,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListRecoveriesRequest {
    pub thing_name: Option<String>,
    pub job_id: Option<String>,
    pub status: Option<String>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DescribeRecoveryRequest {
    pub recovery_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListRecoveriesResponse {
    pub recoveries: Vec<RecoveryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeRecoveryResponse {
    pub recovery: RecoveryView,
}

/// A durable recovery as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryView {
    pub recovery_id: String,
    pub thing_name: String,
    pub job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<String>,
    /// The `[[recovery]]` route whose plugin runs it now (`sprig describe-plugin --route-name`); none if
    /// no route matches the device any more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_name: Option<String>,
    pub reason: &'static str,
    pub status: &'static str,
    pub execution_status: &'static str,
    pub attempts: u32,
    pub failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_status_details: Option<BTreeMap<String, String>>,
    pub created_at: f64,
    pub last_updated_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<f64>,
}

impl RecoveryView {
    pub fn of(r: &crate::model::RecoveryRecord, route_name: Option<&str>) -> RecoveryView {
        let pending = r.state == crate::model::RecoveryState::Pending;
        RecoveryView {
            recovery_id: r.id.to_string(),
            thing_name: r.thing_name.clone(),
            job_id: r.job_id.clone(),
            namespace_id: r.namespace_id.clone(),
            route_name: route_name.map(str::to_owned),
            reason: r.reason.as_str(),
            status: r.state.as_str(),
            execution_status: r.execution_status.as_str(),
            attempts: r.attempts,
            failures: r.failures,
            last_error: r.last_error.clone(),
            recorded_status_details: r.recorded_status_details.clone(),
            created_at: seconds(r.created_at),
            last_updated_at: seconds(r.updated_at),
            next_attempt_at: pending.then(|| seconds(r.next_attempt_at)),
        }
    }
}

/// The part of sprig's DescribeGateway that the engine answers: its counts ([`super::tally`]) and its
/// store. Statuses are keys (`IN_PROGRESS`, …), every status present, zeros included.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayJobs {
    /// Jobs by status, of every namespace.
    pub jobs: BTreeMap<&'static str, u64>,
    /// Jobs by status in each namespace that has jobs (jobs without a namespace first, without
    /// `namespaceId`).
    pub jobs_by_namespace: Vec<NamespaceJobs>,
    /// Job executions by status.
    pub executions: BTreeMap<&'static str, u64>,
    /// The jobs in DELETION_IN_PROGRESS, by job id.
    pub deletions: Vec<DeletionProgress>,
    /// Recoveries by state.
    pub recoveries: BTreeMap<&'static str, u64>,
    pub store: StoreStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceJobs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<String>,
    pub jobs: BTreeMap<&'static str, u64>,
}

/// A deletion under way: executions removed since it started (or since the gateway resumed it after a
/// restart) and still to remove.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletionProgress {
    pub job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<String>,
    pub requested_at: f64,
    pub executions_removed: u64,
    pub executions_remaining: u64,
}

/// The jobs store: its files' bytes on disk, and the jobs and executions its account counts (CREATING
/// jobs and their executions included).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    pub size_bytes: u64,
    pub jobs: u64,
    pub executions: u64,
}

impl GatewayJobs {
    /// The counts of `tally`, with `store`.
    pub fn of(tally: &super::tally::Tally, store: StoreStatus) -> GatewayJobs {
        use crate::model::JobStatus;
        let mut jobs: BTreeMap<&'static str, u64> =
            JobStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut by_namespace: Vec<NamespaceJobs> = Vec::new();
        for (namespace, status, count) in tally.jobs() {
            *jobs.entry(status.as_str()).or_default() += count;
            if by_namespace.last().map(|n| n.namespace_id.as_deref()) != Some(namespace) {
                by_namespace.push(NamespaceJobs {
                    namespace_id: namespace.map(str::to_owned),
                    jobs: BTreeMap::new(),
                });
            }
            if let Some(entry) = by_namespace.last_mut() {
                entry.jobs.insert(status.as_str(), count);
            }
        }
        // A namespace whose jobs are all gone is still counted (at zero); not worth a line.
        by_namespace.retain(|n| n.jobs.values().any(|count| *count > 0));
        let executions = tally.executions().map(|(s, n)| (s.as_str(), n)).collect();
        let deletions = tally
            .deletions()
            .iter()
            .map(|(job_id, d)| DeletionProgress {
                job_id: job_id.clone(),
                namespace_id: d.namespace_id.clone(),
                requested_at: seconds(d.requested_at),
                executions_removed: d.executions_removed(),
                executions_remaining: d.executions_remaining,
            })
            .collect();
        GatewayJobs {
            jobs,
            jobs_by_namespace: by_namespace,
            executions,
            deletions,
            recoveries: tally.recoveries().map(|(s, n)| (s.as_str(), n)).collect(),
            store,
        }
    }
}
