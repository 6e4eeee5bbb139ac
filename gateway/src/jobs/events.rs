//! What the jobs engine tells the rest of the gateway after a change: which things' pending executions
//! changed, and why. The notifier turns these into MQTT notifications; recovery builds on them too.

/// Why things' executions changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEventKind {
    /// CreateJob queued an execution for each thing.
    Created,
    /// CancelJob canceled the things' executions.
    Canceled,
    /// The job was deleted: the things' pending executions are gone.
    Deleted,
    /// A device (or a step timeout) changed the status of its execution.
    ExecutionChanged,
}

impl JobEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobEventKind::Created => "CREATED",
            JobEventKind::Canceled => "CANCELED",
            JobEventKind::Deleted => "DELETED",
            JobEventKind::ExecutionChanged => "EXECUTION_CHANGED",
        }
    }
}

/// One change of one job, affecting `things`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub kind: JobEventKind,
    pub job_id: String,
    pub namespace_id: Option<String>,
    pub things: Vec<String>,
}
