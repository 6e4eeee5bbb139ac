//! How many jobs are in each status (per namespace), how many executions in each status, which jobs are
//! being deleted and how far along, and how many recoveries are in each state: kept by the engine as it
//! commits, so that `DescribeGateway` (`sprig status`) and the `sprig_jobs` and `sprig_job_executions`
//! gauges read them without walking the store.
//!
//! The engine is the only writer, and a job record carries its executions' counts, so the job before
//! and after each commit is all a change takes ([`Tally::apply`]); recoveries are counted as they are
//! created and as their state is recorded. The tally is counted from the store once at start-up, and
//! again whenever the store comes back into service (a store reopened after a failed write has lost what
//! was not flushed): [`Engine::count`](super::Engine::count). A job still being created (CREATING) is
//! counted by no one, as it is seen by no one.

use std::collections::BTreeMap;

use prometheus_client::metrics::gauge::Gauge;

use crate::model::{ExecutionStatus, Job, JobStatus, RecoveryState};
use crate::store::{Store, StoreError};

/// The recovery states, in the order the tally keeps them.
pub const RECOVERY_STATES: [RecoveryState; 3] = [
    RecoveryState::Pending,
    RecoveryState::Recovered,
    RecoveryState::Failed,
];

/// A job in DELETION_IN_PROGRESS and how far its deletion is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub namespace_id: Option<String>,
    /// When DeleteJob was accepted (epoch ms).
    pub requested_at: i64,
    /// Executions the job had when its deletion started, or when this gateway resumed it after a
    /// restart (the count before the restart is not kept).
    pub executions_at_start: u64,
    /// Executions still to remove.
    pub executions_remaining: u64,
}

impl Deletion {
    /// Executions removed so far (since the deletion started, or was resumed).
    pub fn executions_removed(&self) -> u64 {
        self.executions_at_start
            .saturating_sub(self.executions_remaining)
    }
}

/// The counts. Plain data: the engine keeps one behind a lock and publishes it to the gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Jobs by namespace (`None`: jobs without one), by status in the order of [`JobStatus::ALL`].
    jobs: BTreeMap<Option<String>, [u64; JobStatus::ALL.len()]>,
    /// Executions by status, in the order of [`ExecutionStatus::ALL`].
    executions: [u64; ExecutionStatus::ALL.len()],
    /// Jobs being deleted, by job id.
    deletions: BTreeMap<String, Deletion>,
    /// Recoveries by state, in the order of [`RECOVERY_STATES`].
    recoveries: [u64; RECOVERY_STATES.len()],
}

impl Tally {
    /// Counts every job and recovery in `store`: one walk of each tree (at start-up, the store has just
    /// read every entry to prove its account, so this costs decoding the jobs and recoveries again).
    pub fn of_store(store: &Store) -> Result<Tally, StoreError> {
        let mut tally = Tally::default();
        for job in store.jobs_after(None, None) {
            tally.apply(None, Some(&job?));
        }
        for recovery in store.recoveries_after(None) {
            tally.recoveries[recovery_slot(recovery?.state)] += 1;
        }
        Ok(tally)
    }

    /// One committed change of a job: `before` as it was read, `after` as it was written (`None`: it did
    /// not exist, or was removed).
    pub fn apply(&mut self, before: Option<&Job>, after: Option<&Job>) {
        if let Some(job) = before.filter(|job| job.status != JobStatus::Creating) {
            self.count_job(job, false);
        }
        match after.filter(|job| job.status != JobStatus::Creating) {
            Some(job) => {
                self.count_job(job, true);
                self.follow_deletion(job);
            }
            None => {
                if let Some(job) = before {
                    self.deletions.remove(&job.job_id);
                }
            }
        }
    }

    fn count_job(&mut self, job: &Job, add: bool) {
        let move_by = |count: &mut u64, by: u64| {
            *count = if add {
                count.saturating_add(by)
            } else {
                count.saturating_sub(by)
            }
        };
        if let Some(slot) = job_slot(job.status) {
            let counts = self.jobs.entry(job.namespace_id.clone()).or_default();
            move_by(&mut counts[slot], 1);
        }
        for (count, status) in self.executions.iter_mut().zip(ExecutionStatus::ALL) {
            move_by(count, job.counts.get(status));
        }
    }

    /// Keeps the deletion of `job` (as written) up to date: started, progressed, or no longer under way.
    fn follow_deletion(&mut self, job: &Job) {
        if job.status != JobStatus::DeletionInProgress {
            self.deletions.remove(&job.job_id);
            return;
        }
        let remaining = job.counts.total();
        let deletion = self
            .deletions
            .entry(job.job_id.clone())
            .or_insert_with(|| Deletion {
                namespace_id: job.namespace_id.clone(),
                requested_at: job
                    .deletion
                    .as_ref()
                    .map_or(job.last_updated_at, |d| d.requested_at),
                executions_at_start: remaining,
                executions_remaining: remaining,
            });
        deletion.executions_remaining = remaining;
    }

    /// `created` new recoveries, PENDING.
    pub fn recoveries_created(&mut self, created: usize) {
        self.recoveries[recovery_slot(RecoveryState::Pending)] += created as u64;
    }

    /// A recovery recorded in `after`, which was in `before` (`None`: not found in the store).
    pub fn recovery_recorded(&mut self, before: Option<RecoveryState>, after: RecoveryState) {
        if before == Some(after) {
            return;
        }
        if let Some(before) = before {
            let count = &mut self.recoveries[recovery_slot(before)];
            *count = count.saturating_sub(1);
        }
        self.recoveries[recovery_slot(after)] += 1;
    }

    /// (namespace, status, jobs) for every namespace that has had jobs, in namespace order (jobs without
    /// one first) and status in the order of [`JobStatus::ALL`].
    pub fn jobs(&self) -> impl Iterator<Item = (Option<&str>, JobStatus, u64)> + '_ {
        self.jobs.iter().flat_map(|(namespace, counts)| {
            JobStatus::ALL
                .into_iter()
                .zip(counts)
                .map(move |(status, count)| (namespace.as_deref(), status, *count))
        })
    }

    /// Jobs in `status`, in every namespace.
    pub fn jobs_in(&self, status: JobStatus) -> u64 {
        job_slot(status).map_or(0, |slot| self.jobs.values().map(|c| c[slot]).sum())
    }

    /// (status, executions) for every execution status, in the order of [`ExecutionStatus::ALL`].
    pub fn executions(&self) -> impl Iterator<Item = (ExecutionStatus, u64)> + '_ {
        ExecutionStatus::ALL
            .into_iter()
            .zip(self.executions.iter().copied())
    }

    /// The jobs being deleted, by job id.
    pub fn deletions(&self) -> &BTreeMap<String, Deletion> {
        &self.deletions
    }

    /// (state, recoveries) for every recovery state, in the order of [`RECOVERY_STATES`].
    pub fn recoveries(&self) -> impl Iterator<Item = (RecoveryState, u64)> + '_ {
        RECOVERY_STATES
            .into_iter()
            .zip(self.recoveries.iter().copied())
    }
}

fn job_slot(status: JobStatus) -> Option<usize> {
    JobStatus::ALL.iter().position(|s| *s == status)
}

fn recovery_slot(state: RecoveryState) -> usize {
    RECOVERY_STATES
        .iter()
        .position(|s| *s == state)
        .unwrap_or_default()
}

/// The tally's gauges (`sprig_jobs`, `sprig_job_executions`, `sprig_recoveries`), set from it after each
/// change.
pub struct Gauges {
    executions: [Gauge; ExecutionStatus::ALL.len()],
    recoveries: [Gauge; RECOVERY_STATES.len()],
}

impl Gauges {
    pub fn new() -> Gauges {
        let metrics = crate::metrics::get();
        Gauges {
            executions: ExecutionStatus::ALL.map(|s| metrics.job_executions_of(s.as_str())),
            recoveries: RECOVERY_STATES.map(|s| metrics.recoveries_of(s.as_str())),
        }
    }

    /// Sets every gauge from `tally` (after it was counted).
    pub fn publish_all(&self, tally: &Tally) {
        let metrics = crate::metrics::get();
        for (namespace, status, count) in tally.jobs() {
            metrics
                .jobs_of(status.as_str(), namespace)
                .set(count as i64);
        }
        self.publish_executions(tally);
        self.publish_recoveries(tally);
    }

    /// Sets the recoveries' gauges (after a recovery's state was recorded).
    pub fn publish_recoveries(&self, tally: &Tally) {
        for (gauge, count) in self.recoveries.iter().zip(tally.recoveries) {
            gauge.set(count as i64);
        }
    }

    /// Sets the gauges a change from `before` to `after` may have moved.
    pub fn publish_change(&self, tally: &Tally, before: Option<&Job>, after: Option<&Job>) {
        let key = |job: Option<&Job>| job.map(|j| (j.namespace_id.clone(), j.status));
        let (old, new) = (key(before), key(after));
        if old != new {
            let metrics = crate::metrics::get();
            for (namespace, status) in [old, new].into_iter().flatten() {
                if let Some(slot) = job_slot(status) {
                    let count = tally.jobs.get(&namespace).map_or(0, |c| c[slot]);
                    metrics
                        .jobs_of(status.as_str(), namespace.as_deref())
                        .set(count as i64);
                }
            }
        }
        self.publish_executions(tally);
        self.publish_recoveries(tally);
    }

    fn publish_executions(&self, tally: &Tally) {
        for (gauge, count) in self.executions.iter().zip(tally.executions) {
            gauge.set(count as i64);
        }
    }
}

impl Default for Gauges {
    fn default() -> Gauges {
        Gauges::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeletionInfo;

    fn job(id: &str, namespace: Option<&str>, status: JobStatus, queued: u64) -> Job {
        let mut job = Job::created(id, namespace, "{}".into(), vec![], 1_000);
        job.status = status;
        (0..queued).for_each(|_| job.counts.add(ExecutionStatus::Queued));
        job
    }

    fn jobs_of(tally: &Tally, namespace: Option<&str>, status: JobStatus) -> u64 {
        tally
            .jobs()
            .find(|(ns, s, _)| *ns == namespace && *s == status)
            .map_or(0, |(_, _, count)| count)
    }

    fn executions_of(tally: &Tally, status: ExecutionStatus) -> u64 {
        tally.executions().find(|(s, _)| *s == status).unwrap().1
    }

    #[test]
    fn a_change_moves_the_job_and_its_executions_between_counts() {
        let mut tally = Tally::default();
        let created = job("j1", Some("acme"), JobStatus::InProgress, 3);
        tally.apply(None, Some(&created));
        assert_eq!(jobs_of(&tally, Some("acme"), JobStatus::InProgress), 1);
        assert_eq!(executions_of(&tally, ExecutionStatus::Queued), 3);

        let mut started = created.clone();
        started
            .counts
            .shift(ExecutionStatus::Queued, ExecutionStatus::InProgress);
        tally.apply(Some(&created), Some(&started));
        assert_eq!(executions_of(&tally, ExecutionStatus::Queued), 2);
        assert_eq!(executions_of(&tally, ExecutionStatus::InProgress), 1);

        let mut canceled = started.clone();
        canceled.status = JobStatus::Canceled;
        tally.apply(Some(&started), Some(&canceled));
        assert_eq!(jobs_of(&tally, Some("acme"), JobStatus::InProgress), 0);
        assert_eq!(jobs_of(&tally, Some("acme"), JobStatus::Canceled), 1);
        assert_eq!(tally.jobs_in(JobStatus::Canceled), 1);

        tally.apply(Some(&canceled), None);
        assert_eq!(tally.jobs_in(JobStatus::Canceled), 0);
        assert!(tally.executions().all(|(_, count)| count == 0));
    }

    #[test]
    fn a_job_being_created_is_counted_once_it_is_visible() {
        let mut tally = Tally::default();
        let creating = job("j1", None, JobStatus::Creating, 0);
        tally.apply(None, Some(&creating));
        let mut written = creating.clone();
        (0..5).for_each(|_| written.counts.add(ExecutionStatus::Queued));
        tally.apply(Some(&creating), Some(&written));
        assert_eq!(tally, Tally::default(), "nothing of a CREATING job counts");
        let mut visible = written.clone();
        visible.status = JobStatus::InProgress;
        tally.apply(Some(&written), Some(&visible));
        assert_eq!(jobs_of(&tally, None, JobStatus::InProgress), 1);
        assert_eq!(executions_of(&tally, ExecutionStatus::Queued), 5);
    }

    #[test]
    fn a_deletion_is_followed_from_its_start_to_the_removal_of_the_job() {
        let mut tally = Tally::default();
        let job_before = job("j1", Some("acme"), JobStatus::InProgress, 10);
        let mut deleting = job_before.clone();
        deleting.status = JobStatus::DeletionInProgress;
        deleting.deletion = Some(DeletionInfo {
            forced: true,
            status_before: JobStatus::InProgress,
            requested_at: 5_000,
        });
        tally.apply(None, Some(&job_before));
        tally.apply(Some(&job_before), Some(&deleting));
        let mut batch = deleting.clone();
        (0..4).for_each(|_| batch.counts.remove(ExecutionStatus::Queued));
        tally.apply(Some(&deleting), Some(&batch));
        let deletion = &tally.deletions()["j1"];
        assert_eq!(
            (
                deletion.executions_at_start,
                deletion.executions_remaining,
                deletion.executions_removed(),
                deletion.requested_at,
            ),
            (10, 6, 4, 5_000)
        );
        assert_eq!(deletion.namespace_id.as_deref(), Some("acme"));
        assert_eq!(executions_of(&tally, ExecutionStatus::Queued), 6);
        tally.apply(Some(&batch), None);
        assert!(tally.deletions().is_empty());
        assert_eq!(tally.jobs_in(JobStatus::DeletionInProgress), 0);
    }

    #[test]
    fn a_recovery_moves_from_pending_to_its_outcome_once() {
        let mut tally = Tally::default();
        tally.recoveries_created(2);
        tally.recovery_recorded(Some(RecoveryState::Pending), RecoveryState::Pending);
        tally.recovery_recorded(Some(RecoveryState::Pending), RecoveryState::Failed);
        tally.recovery_recorded(Some(RecoveryState::Failed), RecoveryState::Failed);
        let states: Vec<_> = tally.recoveries().map(|(_, n)| n).collect();
        assert_eq!(states, [1, 0, 1]);
    }
}
