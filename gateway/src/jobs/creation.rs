//! CreateJob's writes: a job and its executions in bounded store transactions, hidden until complete.
//!
//! One sled transaction over all of a job's executions costs memory in proportion to its writes times the
//! size of the leaves they land in: sled copies a leaf on every insert and frees the old copy only once no
//! thread is pinned to its epoch, and a transaction stays pinned from its first write to its last. Bounded
//! transactions keep that bounded (README, Benchmarks: "CreateJob's memory"). So a job is written in steps,
//! each one transaction, after each of which the store agrees with itself (`sprig store check`):
//!
//! 1. the job record in [`JobStatus::Creating`], with no targets and no executions counted;
//! 2. its QUEUED executions, `batch` at a time, each batch counted in the job record it rewrites (which has
//!    no targets yet, so the rewrite is small);
//! 3. the job flipped to IN_PROGRESS, with its targets.
//!
//! A job in CREATING exists for no one: operators get ResourceNotFoundException, devices do not see it
//! among their jobs, and the notifier hears of it after step 3. Its creator holds the store's write lock
//! from step 1 to step 3, so no other writer ever meets one. A creation that stops before step 3 (a crash,
//! SIGTERM, a store error) is undone: its executions are removed in batches, then its record. CreateJob
//! answers only after step 3 is on disk, so an undone job is a request that was never answered and did not
//! happen; retrying it with the same job id succeeds. The engine undoes at once on a store error, and at
//! start-up, before anything is served, whatever a crash left ([`super::Engine::undo_unfinished_creations`]).
//! Step 3 writes the targets apart from the record (the store keeps them so): large, so sled may keep
//! them in a blob file; should that file be lost, sled serves the store without them, and the store
//! refuses to open (its account and the job's status say otherwise) rather than hide, or undo, a job
//! whose CreateJob was answered.

use crate::model::{Execution, ExecutionCounts, Job, JobStatus};
use crate::store::{Change, Store, StoreError};

/// Writes `job` (IN_PROGRESS, with its targets) and one QUEUED execution per target, `batch` executions
/// per transaction, and returns it as stored, its executions counted. Hold the store's write lock. On an
/// error the job may be left in CREATING: [`undo`] it.
pub fn write(store: &Store, job: Job, batch: usize) -> Result<Job, StoreError> {
    let mut creation = Creation::begin(store, job, batch)?;
    while creation.step(store)? {}
    creation.finish(store)
}

/// A job being written, one transaction per step.
#[derive(Debug)]
pub struct Creation {
    /// The record as stored: CREATING, no targets, the executions written so far counted.
    stored: Job,
    status: JobStatus,
    targets: Vec<String>,
    written: usize,
    batch: usize,
}

impl Creation {
    /// Step 1: the job record in CREATING.
    pub fn begin(store: &Store, mut job: Job, batch: usize) -> Result<Creation, StoreError> {
        let targets = std::mem::take(&mut job.targets);
        let status = std::mem::replace(&mut job.status, JobStatus::Creating);
        job.counts = ExecutionCounts::default();
        store.commit(&Change {
            job_after: Some(&job),
            ..Default::default()
        })?;
        if targets.len() > batch {
            // On disk before the log says so: from this line on, a crash leaves a job the next start
            // finds and undoes (one fsync more, for jobs of more than one batch only).
            store.flush()?;
            let executions = targets.len();
            tracing::info!(
                job_id = job.job_id.as_str(),
                executions,
                batch,
                "job creation started"
            );
        }
        Ok(Creation {
            stored: job,
            status,
            targets,
            written: 0,
            batch: batch.max(1),
        })
    }

    /// Step 2: the next batch of executions; false once there were none left to write.
    pub fn step(&mut self, store: &Store) -> Result<bool, StoreError> {
        let end = self.targets.len().min(self.written + self.batch);
        let job = &self.stored;
        let executions: Vec<Execution> = self.targets[self.written..end]
            .iter()
            .map(|thing| Execution::queued(&job.job_id, thing, job.created_at))
            .collect();
        if executions.is_empty() {
            return Ok(false);
        }
        let mut counted = job.clone();
        executions.iter().for_each(|e| counted.counts.add(e.status));
        store.commit(&Change {
            job_before: Some(job),
            job_after: Some(&counted),
            put_executions: &executions,
            ..Default::default()
        })?;
        self.stored = counted;
        self.written = end;
        Ok(true)
    }

    /// Step 3, once every batch is written: the job visible, with its targets.
    pub fn finish(self, store: &Store) -> Result<Job, StoreError> {
        debug_assert_eq!(
            self.written,
            self.targets.len(),
            "finish after the last step"
        );
        let mut job = self.stored.clone();
        job.status = self.status;
        job.targets = self.targets;
        store.commit(&Change {
            job_before: Some(&self.stored),
            job_after: Some(&job),
            ..Default::default()
        })?;
        Ok(job)
    }
}

/// Removes a job left in CREATING, `batch` executions per transaction, then its record; returns how many
/// executions it removed. Leaves a job in any other status alone. Hold the store's write lock.
pub fn undo(store: &Store, job_id: &str, batch: usize) -> Result<usize, StoreError> {
    let mut removed = 0;
    loop {
        let Some(job) = store
            .job(job_id)?
            .filter(|j| j.status == JobStatus::Creating)
        else {
            return Ok(removed);
        };
        let executions = store.executions_of_job(job_id, None, batch.max(1))?;
        if executions.is_empty() {
            store.commit(&Change {
                job_before: Some(&job),
                ..Default::default()
            })?;
            return Ok(removed);
        }
        let mut remaining = job.clone();
        executions
            .iter()
            .for_each(|e| remaining.counts.remove(e.status));
        store.commit(&Change {
            job_before: Some(&job),
            job_after: Some(&remaining),
            delete_executions: &executions,
            ..Default::default()
        })?;
        removed += executions.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExecutionStatus;
    use crate::store::codec;

    fn job(id: &str, things: usize) -> Job {
        let targets = (0..things).map(|i| format!("t{i:03}")).collect();
        Job::created(id, Some("acme"), "{}".into(), targets, 7)
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        (dir, store)
    }

    fn assert_consistent(store: &Store) -> crate::store::CheckReport {
        let report = store.check().unwrap();
        assert!(report.is_consistent(), "{report}");
        report
    }

    #[test]
    fn a_job_written_in_batches_has_every_execution_queued_and_counted() {
        let (_dir, store) = open();
        let written = write(&store, job("j", 25), 10).unwrap();
        assert_eq!(written.status, JobStatus::InProgress);
        assert_eq!(written.targets.len(), 25);
        assert_eq!(written.counts.get(ExecutionStatus::Queued), 25);
        assert_eq!(
            store.job_targets("j").unwrap().as_ref(),
            Some(&written.targets)
        );
        let record = Job {
            targets: Vec::new(),
            ..written
        };
        assert_eq!(store.job("j").unwrap(), Some(record));
        let executions = store.executions_of_job("j", None, 100).unwrap();
        assert_eq!(executions.len(), 25);
        assert!(executions
            .iter()
            .all(|e| *e == Execution::queued("j", &e.thing_name, 7)));
        assert_eq!(store.pending_job_ids_of_thing("t024").unwrap(), vec!["j"]);
        let report = assert_consistent(&store);
        assert_eq!((report.jobs, report.executions), (1, 25));
    }

    /// A crash may stop a creation after any of its transactions: the store agrees with itself at each,
    /// the job is in CREATING until the last, and undoing leaves nothing of it behind.
    #[test]
    fn a_creation_stopped_after_any_step_is_consistent_and_undone_completely() {
        let (_dir, store) = open();
        write(&store, job("other", 3), 2).unwrap();
        // 25 targets in batches of 10: begin, three batches, and the step that finds none left.
        for steps in 0..=4 {
            let mut creation = Creation::begin(&store, job("j", 25), 10).unwrap();
            for _ in 0..steps {
                creation.step(&store).unwrap();
            }
            let stored = store.job("j").unwrap().unwrap();
            assert_eq!(stored.status, JobStatus::Creating);
            assert!(stored.targets.is_empty());
            let report = assert_consistent(&store);
            let written = (steps * 10).min(25);
            assert_eq!(report.executions, 3 + written as u64, "after {steps} steps");
            drop(creation);

            assert_eq!(undo(&store, "j", 4).unwrap(), written);
            assert_eq!(store.job("j").unwrap(), None);
            assert_eq!(store.pending_job_ids_of_thing("t000").unwrap(), ["other"]);
            let report = assert_consistent(&store);
            assert_eq!((report.jobs, report.executions), (1, 3));
        }
        // A created job is not undone.
        assert_eq!(undo(&store, "other", 4).unwrap(), 0);
        assert_eq!(store.executions_of_job("other", None, 10).unwrap().len(), 3);
    }

    /// The targets of a job this large are a blob file of sled's: with its blobs lost, sled serves the
    /// store as it was before they were written. The store is refused as damaged, naming the blob,
    /// instead of opening with an IN_PROGRESS job that has no targets.
    #[test]
    fn a_created_job_whose_targets_blob_is_lost_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        let mut big = job("big", 0);
        big.targets = (0..8000)
            .map(|i| format!("thing-with-a-long-name-{i:06}"))
            .collect();
        write(&store, big, 500).unwrap();
        store.close().unwrap();
        drop(store);
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!blobs.is_empty(), "the job's targets are not a blob");
        blobs.iter().for_each(|b| std::fs::remove_file(b).unwrap());

        let text = match Store::open(dir.path(), 8 << 20) {
            Err(e @ StoreError::Damaged { .. }) => e.to_string(),
            Err(other) => panic!("not damage: {other}"),
            Ok(_) => panic!("the store opened without the blob"),
        };
        assert!(
            text.contains("job_targets: 0 entries, 1 counted")
                && text.contains("blobs/")
                && text.contains("is missing")
                && text.contains("sprig store restore --from"),
            "{text}"
        );
    }

    /// Records store an enum variant by its position: CREATING came last, the others kept theirs.
    #[test]
    fn job_statuses_keep_their_stored_positions() {
        let stored = |status| codec::encode(&status)[1..].to_vec();
        assert_eq!(stored(JobStatus::InProgress), [0]);
        assert_eq!(stored(JobStatus::DeletionInProgress), [3]);
        assert_eq!(stored(JobStatus::Creating), [4]);
        assert_eq!(
            crate::store::codec::job_status_of_code(5),
            Some(JobStatus::Creating)
        );
    }
}
