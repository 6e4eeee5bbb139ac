//! The one way the jobs trees change: a [`Change`] applied as one sled transaction over every tree it
//! touches and the store's account, so that records, indexes and counts agree after a crash at any moment.
//! sled transactions cannot scan, so what to change is found before, under
//! [`Store::lock_writes`](super::Store::lock_writes). A recovery's new state is written the same way;
//! [`committed`] is shared with the session tree.

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use super::codec;
use super::codec::IndexCode;
use super::handle::Trees;
use super::meta::{self, Counted, TreeIx};
use super::{Change, Result};
use crate::model::{Execution, Job, JobStatus, RecoveryRecord, RecoveryState};

impl Trees {
    /// Commits `change`, and then applies it to the pending index, which is held meanwhile.
    pub(super) fn commit(&self, change: &Change<'_>) -> Result<()> {
        let pending = self.pending.updating();
        self.commit_trees(change)?;
        pending.apply(change);
        Ok(())
    }

    fn commit_trees(&self, change: &Change<'_>) -> Result<()> {
        let account: &Tree = &self.db;
        let trees = (
            &self.jobs,
            &self.executions,
            &self.by_thing,
            &self.by_status,
            &self.by_namespace,
            &self.by_deadline,
            &self.recoveries,
            &self.open_recoveries,
            &self.thing_executions,
            &self.job_targets,
            account,
        );
        let outcome = trees.transaction(
            |(
                jobs,
                executions,
                by_thing,
                by_status,
                by_namespace,
                by_deadline,
                recoveries,
                open,
                thing_executions,
                job_targets,
                account,
            )| {
                let jobs = Counted::new(jobs, TreeIx::Jobs);
                let executions = Counted::new(executions, TreeIx::Executions);
                let by_thing = Counted::new(by_thing, TreeIx::ByThing);
                let by_status = Counted::new(by_status, TreeIx::ByStatus);
                let by_namespace = Counted::new(by_namespace, TreeIx::ByNamespace);
                let by_deadline = Counted::new(by_deadline, TreeIx::ByDeadline);
                let recoveries = Counted::new(recoveries, TreeIx::Recoveries);
                let open = Counted::new(open, TreeIx::OpenRecoveries);
                let thing_executions = Counted::new(thing_executions, TreeIx::ThingExecutions);
                let job_targets = Counted::new(job_targets, TreeIx::JobTargets);
                if let Some(after) = change.job_after {
                    jobs.insert(after.key(), codec::encode_job(after))?;
                    write_targets(&job_targets, change.job_before, after)?;
                }
                write_job_indexes(
                    &by_status,
                    &by_namespace,
                    change.job_before,
                    change.job_after,
                )?;
                for execution in change.put_executions {
                    // A transaction may read (not scan): the old record says which deadline entry to drop.
                    let old = executions.insert(execution.key(), codec::encode(execution))?;
                    if old.is_none() {
                        thing_executions.insert(execution.thing_key(), &[])?;
                    }
                    let old_deadline = old
                        .and_then(|bytes| codec::decode::<Execution>(&bytes).ok()?.deadline_key());
                    if old_deadline != execution.deadline_key() {
                        if let Some(key) = old_deadline {
                            by_deadline.remove(key)?;
                        }
                        if let Some(key) = execution.deadline_key() {
                            by_deadline.insert(key, &[])?;
                        }
                    }
                    if execution.status.is_terminal() {
                        by_thing.remove(execution.thing_key())?;
                    } else {
                        by_thing.insert(execution.thing_key(), &[execution.status.index_code()])?;
                    }
                }
                for execution in change.delete_executions {
                    executions.remove(execution.key())?;
                    by_thing.remove(execution.thing_key())?;
                    thing_executions.remove(execution.thing_key())?;
                    if let Some(key) = execution.deadline_key() {
                        by_deadline.remove(key)?;
                    }
                }
                if let (Some(before), None) = (change.job_before, change.job_after) {
                    jobs.remove(before.key())?;
                    job_targets.remove(before.key())?;
                }
                for recovery in change.put_recoveries {
                    write_recovery(&recoveries, &open, recovery)?;
                }
                meta::record(
                    account,
                    &[
                        &jobs,
                        &executions,
                        &by_thing,
                        &by_status,
                        &by_namespace,
                        &by_deadline,
                        &recoveries,
                        &open,
                        &thing_executions,
                        &job_targets,
                    ],
                )
            },
        );
        committed(outcome)
    }

    pub(super) fn update_recovery(&self, recovery: &RecoveryRecord) -> Result<()> {
        let account: &Tree = &self.db;
        let outcome = (&self.recoveries, &self.open_recoveries, account).transaction(
            |(recoveries, open, account)| {
                let recoveries = Counted::new(recoveries, TreeIx::Recoveries);
                let open = Counted::new(open, TreeIx::OpenRecoveries);
                write_recovery(&recoveries, &open, recovery)?;
                meta::record(account, &[&recoveries, &open])
            },
        );
        committed(outcome)
    }
}

/// A store transaction's result: its closures never abort, so only storage errors remain.
pub(super) fn committed(outcome: std::result::Result<(), TransactionError<()>>) -> Result<()> {
    match outcome {
        Ok(()) => Ok(()),
        Err(TransactionError::Storage(e)) => Err(e.into()),
        Err(TransactionError::Abort(())) => unreachable!("store transactions never abort"),
    }
}

pub(super) fn write_recovery(
    recoveries: &Counted<'_>,
    open: &Counted<'_>,
    recovery: &RecoveryRecord,
) -> std::result::Result<(), ConflictableTransactionError<()>> {
    recoveries.insert(&recovery.id.to_be_bytes(), codec::encode_recovery(recovery))?;
    if recovery.state == RecoveryState::Pending {
        open.insert(codec::open_recovery_key(recovery), &[])?;
    } else {
        open.remove(codec::open_recovery_key(recovery))?;
    }
    Ok(())
}

/// A job's targets, apart from its record (which every change of one of its executions rewrites): written
/// once, by the change that makes the job visible (the last step of its creation), and never from a
/// record as read, which has none.
fn write_targets(
    job_targets: &Counted<'_>,
    before: Option<&Job>,
    after: &Job,
) -> std::result::Result<(), ConflictableTransactionError<()>> {
    let creating = |job: &Job| job.status == JobStatus::Creating;
    if creating(after) || before.is_some_and(|b| !creating(b)) {
        return Ok(());
    }
    job_targets.insert(after.key(), codec::encode(&after.targets))?;
    Ok(())
}

pub(super) fn write_job_indexes(
    by_status: &Counted<'_>,
    by_namespace: &Counted<'_>,
    before: Option<&Job>,
    after: Option<&Job>,
) -> std::result::Result<(), ConflictableTransactionError<()>> {
    let status_of = |job: Option<&Job>| job.map(|j| codec::status_key(j.status, &j.job_id));
    let namespace_of =
        |job: Option<&Job>| job.map(|j| codec::namespace_key(j.namespace_id.as_deref(), &j.job_id));
    for (tree, old, new) in [
        (by_status, status_of(before), status_of(after)),
        (by_namespace, namespace_of(before), namespace_of(after)),
    ] {
        if old == new {
            continue;
        }
        if let Some(old) = old {
            tree.remove(old)?;
        }
        if let Some(new) = new {
            tree.insert(new, &[])?;
        }
    }
    Ok(())
}
