//! How records and index keys are laid out in sled.
//!
//! A record is one format byte followed by its postcard encoding. postcard is compact and fast but not
//! self-describing, so any change to a stored type gets a new format byte and a decoder for the old one
//! stays here: a later release must read what this one wrote.
//!
//! Keys are designed for sled's ordered range scans, because a transaction cannot scan: everything a
//! state change needs to find is found with a prefix scan *before* the transaction, under the store's
//! write lock. Ids never contain a NUL byte (their patterns forbid it), so NUL separates key parts.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{Execution, ExecutionStatus, Job, JobStatus, RecoveryRecord};

/// The byte that stands for a status in the store's indexes (`by_status`, `by_thing`): store layout,
/// so it lives here, not in the model. Never reuse a value.
pub trait IndexCode {
    fn index_code(self) -> u8;
}

impl IndexCode for JobStatus {
    fn index_code(self) -> u8 {
        match self {
            JobStatus::InProgress => 1,
            JobStatus::Canceled => 2,
            JobStatus::Completed => 3,
            JobStatus::DeletionInProgress => 4,
            JobStatus::Creating => 5,
        }
    }
}

impl IndexCode for ExecutionStatus {
    fn index_code(self) -> u8 {
        ExecutionStatus::ALL
            .iter()
            .position(|s| *s == self)
            .map_or(0, |i| i as u8 + 1)
    }
}

/// The job status whose index code is `code`.
pub fn job_status_of_code(code: u8) -> Option<JobStatus> {
    JobStatus::ALL
        .into_iter()
        .chain([JobStatus::Creating])
        .find(|status| status.index_code() == code)
}

/// Is a thing-index value (one status code byte) that of a pending (QUEUED or IN_PROGRESS) execution?
pub(super) fn is_pending_status(value: &[u8]) -> bool {
    value
        .first()
        .and_then(|&code| ExecutionStatus::ALL.iter().find(|s| s.index_code() == code))
        .is_some_and(|status| !status.is_terminal())
}

/// The format byte of records written by this release (recoveries excepted: [`RECOVERY_FORMAT_V2`]).
pub const FORMAT_V1: u8 = 1;
/// The format byte of recovery records since they keep the acknowledgement's payload
/// (`RecoveryRecord::acknowledgement`, their last field). Format 1 recoveries are read as having none.
pub const RECOVERY_FORMAT_V2: u8 = 2;

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record has unknown format {0} (written by a newer sprig?)")]
    UnknownFormat(u8),
    #[error("record is empty")]
    Empty,
    #[error("record is corrupt: {0}")]
    Corrupt(#[from] postcard::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_V1];
    // Serializing our own plain structs into a Vec cannot fail.
    bytes.extend(postcard::to_stdvec(value).expect("records serialize"));
    bytes
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
        None => Err(CodecError::Empty),
    }
}

/// A job's record, without its targets (kept apart: see `commit`).
pub fn encode_job(job: &Job) -> Vec<u8> {
    if job.targets.is_empty() {
        return encode(job);
    }
    let record = Job {
        targets: Vec::new(),
        ..job.clone()
    };
    encode(&record)
}

/// A recovery record, in [`RECOVERY_FORMAT_V2`].
pub fn encode_recovery(recovery: &RecoveryRecord) -> Vec<u8> {
    let mut bytes = vec![RECOVERY_FORMAT_V2];
    bytes.extend(postcard::to_stdvec(recovery).expect("records serialize"));
    bytes
}

/// A recovery record of either format.
pub fn decode_recovery(bytes: &[u8]) -> Result<RecoveryRecord, CodecError> {
    match bytes.split_first() {
        Some((&RECOVERY_FORMAT_V2, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&FORMAT_V1, rest)) => {
            // Format 1 is format 2 without the last field, an `Option`: postcard writes `None` as one
            // zero byte, so a format 1 record followed by that byte is the same record in format 2.
            let mut upgraded = Vec::with_capacity(rest.len() + 1);
            upgraded.extend_from_slice(rest);
            upgraded.push(0);
            Ok(postcard::from_bytes(&upgraded)?)
        }
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
        None => Err(CodecError::Empty),
    }
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part);
    }
    key
}

/// `jobs` tree: job id.
pub fn job_key(job_id: &str) -> Vec<u8> {
    job_id.as_bytes().to_vec()
}

/// `executions` tree: job id, NUL, thing name — a job's executions are one prefix.
pub fn execution_key(job_id: &str, thing_name: &str) -> Vec<u8> {
    join(&[job_id.as_bytes(), thing_name.as_bytes()])
}

/// The prefix of every execution of `job_id`.
pub fn executions_prefix(job_id: &str) -> Vec<u8> {
    join(&[job_id.as_bytes(), b""])
}

/// `by_thing` tree: thing name, NUL, job id — a thing's executions are one prefix.
pub fn thing_key(thing_name: &str, job_id: &str) -> Vec<u8> {
    join(&[thing_name.as_bytes(), job_id.as_bytes()])
}

/// `by_status` tree: status code byte, job id.
pub fn status_key(status: JobStatus, job_id: &str) -> Vec<u8> {
    let mut key = vec![status.index_code()];
    key.extend_from_slice(job_id.as_bytes());
    key
}

/// `by_namespace` tree: namespace (empty for standard jobs), NUL, job id.
pub fn namespace_key(namespace_id: Option<&str>, job_id: &str) -> Vec<u8> {
    join(&[namespace_id.unwrap_or("").as_bytes(), job_id.as_bytes()])
}

/// `by_deadline` tree: step deadline (epoch ms, big-endian so keys sort by time), job id, NUL, thing name.
pub fn deadline_key(deadline_ms: i64, job_id: &str, thing_name: &str) -> Vec<u8> {
    let mut key = (deadline_ms.max(0) as u64).to_be_bytes().to_vec();
    key.extend_from_slice(&execution_key(job_id, thing_name));
    key
}

/// The execution a `by_deadline` key points at: (deadline, job id, thing name).
pub fn parse_deadline_key(key: &[u8]) -> Option<(i64, String, String)> {
    let (time, rest) = key.split_at_checked(8)?;
    let deadline = u64::from_be_bytes(time.try_into().ok()?) as i64;
    let text = std::str::from_utf8(rest).ok()?;
    let (job_id, thing) = text.split_once('\0')?;
    Some((deadline, job_id.to_owned(), thing.to_owned()))
}

/// `open_recoveries` tree: thing name, NUL, recovery id (8 bytes, big-endian).
pub fn open_recovery_key(recovery: &crate::model::RecoveryRecord) -> Vec<u8> {
    let mut key = thing_key(&recovery.thing_name, "");
    key.extend_from_slice(&recovery.id.to_be_bytes());
    key
}

/// The recovery id at the end of an `open_recoveries` key.
pub fn recovery_id_of_open_key(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The two ids of a key that joins two (an execution's, a thing index entry's), as text; `None` if it
/// has no NUL (ids never hold one: the first ends the first id).
pub fn split_pair(key: &[u8]) -> Option<(String, String)> {
    let at = key.iter().position(|&b| b == 0)?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Some((text(&key[..at]), text(&key[at + 1..])))
}

/// The last part of a NUL-joined key.
pub fn last_part(key: &[u8]) -> &[u8] {
    key.rsplit(|b| *b == 0).next().unwrap_or(key)
}

impl Job {
    pub fn key(&self) -> Vec<u8> {
        job_key(&self.job_id)
    }
}

impl Execution {
    pub fn key(&self) -> Vec<u8> {
        execution_key(&self.job_id, &self.thing_name)
    }

    pub fn thing_key(&self) -> Vec<u8> {
        thing_key(&self.thing_name, &self.job_id)
    }

    /// Its key in the step-deadline index, if it has a deadline.
    pub fn deadline_key(&self) -> Option<Vec<u8>> {
        self.step_deadline
            .map(|d| deadline_key(d, &self.job_id, &self.thing_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecutionStatus, JobStatus};

    #[test]
    fn records_round_trip_and_carry_their_format() {
        let execution = Execution::queued("job-1", "thing-1", 42);
        let bytes = encode(&execution);
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<Execution>(&bytes).unwrap(), execution);
        assert!(matches!(
            decode::<Execution>(&[9, 1, 2]),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(matches!(decode::<Execution>(&[]), Err(CodecError::Empty)));
    }

    /// A recovery as the release before acknowledgement payloads wrote it (format 1).
    const RECOVERY_V1: &str = "01070670756d702d310466772d31010461636d65087b226f70223a317d0101047374657005666c6173680000020101\
                               80a0abfef962010178008080f4f6905d80d0cfba8560";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn recoveries_of_format_1_read_as_having_no_acknowledgement() {
        use crate::model::{RecoveryReason, RecoveryState};
        let old = decode_recovery(&hex(RECOVERY_V1)).unwrap();
        assert_eq!(
            (old.id, old.thing_name.as_str(), old.namespace_id.as_deref()),
            (7, "pump-1", Some("acme"))
        );
        assert_eq!(
            (old.reason, old.state, old.attempts, old.failures),
            (RecoveryReason::JobDeleted, RecoveryState::Pending, 2, 1)
        );
        assert!(old.acknowledged);
        assert_eq!(old.last_error.as_deref(), Some("x"));
        assert_eq!(old.updated_at, 1_650_000_000_000);
        assert_eq!(old.acknowledgement, None);

        let mut new = old.clone();
        new.acknowledgement = Some(r#"{"status":"FAILED"}"#.into());
        let bytes = encode_recovery(&new);
        assert_eq!(bytes[0], RECOVERY_FORMAT_V2);
        assert_eq!(decode_recovery(&bytes).unwrap(), new);
        assert!(matches!(
            decode_recovery(&[3, 0]),
            Err(CodecError::UnknownFormat(3))
        ));
    }

    #[test]
    fn a_jobs_executions_share_a_prefix_that_no_other_job_shares() {
        let prefix = executions_prefix("job");
        assert!(execution_key("job", "t1").starts_with(&prefix));
        assert!(!execution_key("job-2", "t1").starts_with(&prefix));
        assert_eq!(last_part(&execution_key("job", "t1")), b"t1");
        assert_eq!(
            status_key(JobStatus::Canceled, "j")[0],
            JobStatus::Canceled.index_code()
        );
        assert_ne!(ExecutionStatus::Queued.index_code(), 0);
        let key = deadline_key(1_700_000_000_000, "job", "t1");
        assert_eq!(
            parse_deadline_key(&key),
            Some((1_700_000_000_000, "job".into(), "t1".into()))
        );
        assert!(deadline_key(5, "z", "z") < deadline_key(6, "a", "a"));
    }
}
