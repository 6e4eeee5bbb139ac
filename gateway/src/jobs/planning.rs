//! CreateJob's planning: the request checked against AWS's rules (ids, targets, document, namespace the
//! caller may use) and turned into the job to write. Pure: the caller passes `now`.

use std::collections::HashSet;

use super::api::{Arns, CreateJobRequest};
use super::{validate, Grants, JobsError};
use crate::model::Job;

type Result<T> = std::result::Result<T, JobsError>;

/// The largest job document accepted (AWS IoT's limit).
pub const MAX_DOCUMENT_BYTES: usize = 32 * 1024;

/// A validated CreateJob: the job, IN_PROGRESS with its targets, ready to write ([`creation::write`]
/// makes one QUEUED execution per target and counts them).
pub(super) struct CreatePlan {
    pub(super) job: Job,
}

/// CreateJob's request checked and turned into the job to write, created `now`.
pub(super) fn plan_create(
    request: &CreateJobRequest,
    grants: &Grants,
    now: i64,
) -> Result<CreatePlan> {
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
    let job = Job {
        description: request.description.clone(),
        ..Job::created(
            &request.job_id,
            request.namespace_id.as_deref(),
            document,
            targets,
            now,
        )
    };
    Ok(CreatePlan { job })
}
