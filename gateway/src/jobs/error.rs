//! The errors of the jobs engine as AWS names them: the control plane's exceptions ([`JobsError`]) and
//! the device API's rejections ([`DeviceError`]). Both are answers to a caller; a store failure becomes
//! the one its caller can act on (retry later), logged once here.

use super::wire::ExecutionState;
use crate::model::Execution;
use crate::store::StoreError;

/// An exception, named as AWS names it; the message says which field or rule was at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobsError {
    /// Malformed input: a bad id, a wrong type, an unknown field.
    #[error("{0}")]
    InvalidRequest(String),
    /// The job's state does not allow this (not terminal without force; already being deleted).
    #[error("{0}")]
    InvalidStateTransition(String),
    /// No such job, or one the caller may not see.
    #[error("{0}")]
    ResourceNotFound(String),
    /// CreateJob with a job id that is taken (also while the old job is still being deleted).
    #[error("{0}")]
    ResourceAlreadyExists(String),
    /// Too many deletions in progress.
    #[error("{0}")]
    LimitExceeded(String),
    /// `expectedVersion` is not the execution's current version.
    #[error("{0}")]
    VersionConflict(String),
    /// Over the caller's request rate.
    #[error("{0}")]
    Throttling(String),
    /// The store failed, or the gateway is shutting down.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// The request did not come from an authenticated operator.
    #[error("{0}")]
    Unauthorized(String),
}

impl JobsError {
    /// The AWS error code, e.g. `InvalidStateTransitionException`.
    pub fn code(&self) -> &'static str {
        match self {
            JobsError::InvalidRequest(_) => "InvalidRequestException",
            JobsError::InvalidStateTransition(_) => "InvalidStateTransitionException",
            JobsError::ResourceNotFound(_) => "ResourceNotFoundException",
            JobsError::ResourceAlreadyExists(_) => "ResourceAlreadyExistsException",
            JobsError::LimitExceeded(_) => "LimitExceededException",
            JobsError::VersionConflict(_) => "VersionConflictException",
            JobsError::Throttling(_) => "ThrottlingException",
            JobsError::ServiceUnavailable(_) => "ServiceUnavailableException",
            JobsError::Unauthorized(_) => "UnauthorizedException",
        }
    }
}

impl From<StoreError> for JobsError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            // The store logged the failure once; every request meanwhile would only repeat it.
            return JobsError::ServiceUnavailable(format!(
                "{e}; sprig puts it back in service as soon as it can write to it: retry later"
            ));
        }
        tracing::error!(error = %e, "store error");
        JobsError::ServiceUnavailable(format!("the jobs store failed: {e}"))
    }
}

/// An error of the device API, with AWS's codes (`rejected` payloads carry them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DeviceError {
    pub code: DeviceErrorCode,
    pub message: String,
    /// The execution's current state, for VersionMismatch and InvalidStateTransition.
    pub execution_state: Option<ExecutionState>,
}

/// The `code` of a device API rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceErrorCode {
    InvalidTopic,
    InvalidJson,
    InvalidRequest,
    InvalidStateTransition,
    ResourceNotFound,
    VersionMismatch,
    InternalError,
    RequestThrottled,
    TerminalStateReached,
}

impl DeviceErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceErrorCode::InvalidTopic => "InvalidTopic",
            DeviceErrorCode::InvalidJson => "InvalidJson",
            DeviceErrorCode::InvalidRequest => "InvalidRequest",
            DeviceErrorCode::InvalidStateTransition => "InvalidStateTransition",
            DeviceErrorCode::ResourceNotFound => "ResourceNotFound",
            DeviceErrorCode::VersionMismatch => "VersionMismatch",
            DeviceErrorCode::InternalError => "InternalError",
            DeviceErrorCode::RequestThrottled => "RequestThrottled",
            DeviceErrorCode::TerminalStateReached => "TerminalStateReached",
        }
    }
}

impl DeviceError {
    pub fn new(code: DeviceErrorCode, message: impl Into<String>) -> DeviceError {
        DeviceError {
            code,
            message: message.into(),
            execution_state: None,
        }
    }

    /// The thing has no execution of the job (in the request's scope).
    pub(crate) fn not_found(job_id: &str, thing: &str) -> DeviceError {
        DeviceError::new(
            DeviceErrorCode::ResourceNotFound,
            format!("Job execution {job_id} for thing {thing} does not exist"),
        )
    }

    /// The rejection carries the execution's current state.
    pub(crate) fn with_state(mut self, execution: &Execution) -> DeviceError {
        self.execution_state = Some(ExecutionState::of(execution));
        self
    }
}

impl From<StoreError> for DeviceError {
    fn from(e: StoreError) -> Self {
        // A store out of service logged why once; every request meanwhile would only repeat it.
        if !e.is_unavailable() {
            tracing::error!(error = %e, "store error");
        }
        DeviceError::new(DeviceErrorCode::InternalError, "the jobs store failed")
    }
}
