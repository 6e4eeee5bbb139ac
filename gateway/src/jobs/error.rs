//! The exceptions of the AWS IoT control plane, as sprig raises them.

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
            JobsError::Throttling(_) => "ThrottlingException",
            JobsError::ServiceUnavailable(_) => "ServiceUnavailableException",
            JobsError::Unauthorized(_) => "UnauthorizedException",
        }
    }
}

impl From<crate::store::StoreError> for JobsError {
    fn from(e: crate::store::StoreError) -> Self {
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
