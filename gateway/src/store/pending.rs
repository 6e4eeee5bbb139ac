//! Each thing's pending executions (QUEUED or IN_PROGRESS), kept in memory beside one open database, so
//! that what a device is told and asked (its notifications, `jobs/get`, start-next) is read without a
//! walk of the trees: a fan-out to 10,000 things spent an eighth of its time in those walks.
//!
//! The index belongs to one [`Trees`](super::handle::Trees): it is built from them on first use and follows
//! every [`Change`] they commit, and a database reopened after a failure (which may have lost what was
//! never flushed) starts a new one. It is updated under its write lock held across the transaction, so
//! its changes land in the trees' order and a reader sees a state the trees had. Its size follows the
//! pending executions, not the things or the finished ones.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockWriteGuard};

use super::handle::Trees;
use super::{Change, Result};
use crate::model::Execution;

/// thing -> its pending executions, in no particular order. `None` until first used.
#[derive(Debug, Default)]
pub(super) struct PendingIndex {
    things: RwLock<Option<HashMap<String, Vec<Execution>>>>,
}

/// The index held for a commit: the change is applied once the transaction has succeeded.
pub(super) struct Updating<'a>(RwLockWriteGuard<'a, Option<HashMap<String, Vec<Execution>>>>);

impl PendingIndex {
    /// Each thing's pending executions, in the things' order (built from `trees` on first use).
    pub(super) fn of_things(&self, trees: &Trees, things: &[&str]) -> Result<Vec<Vec<Execution>>> {
        {
            let index = self.things.read().unwrap_or_else(|e| e.into_inner());
            if let Some(index) = index.as_ref() {
                return Ok(pending_of(index, things));
            }
        }
        let mut index = self.things.write().unwrap_or_else(|e| e.into_inner());
        if index.is_none() {
            *index = Some(build(trees)?);
        }
        Ok(pending_of(index.as_ref().expect("built above"), things))
    }

    /// Holds the index while a change is committed (readers wait for the change to be applied or not).
    pub(super) fn updating(&self) -> Updating<'_> {
        Updating(self.things.write().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Updating<'_> {
    /// Applies a change the trees have committed (nothing, if the index was not built yet: it will be
    /// built from trees that hold the change).
    pub(super) fn apply(mut self, change: &Change<'_>) {
        let Some(index) = self.0.as_mut() else {
            return;
        };
        for execution in change.put_executions {
            if execution.status.is_terminal() {
                forget(index, execution);
            } else {
                remember(index, execution.clone());
            }
        }
        for execution in change.delete_executions {
            forget(index, execution);
        }
    }
}

fn pending_of(index: &HashMap<String, Vec<Execution>>, things: &[&str]) -> Vec<Vec<Execution>> {
    let of = |thing: &&str| index.get(*thing).cloned().unwrap_or_default();
    things.iter().map(of).collect()
}

/// Records a pending execution: the thing's list gets it, or its older state is replaced. Most things
/// have one pending execution: a new list is allocated for exactly one (a vector's first push would
/// make room for four).
fn remember(index: &mut HashMap<String, Vec<Execution>>, execution: Execution) {
    let Some(pending) = index.get_mut(&execution.thing_name) else {
        index.insert(execution.thing_name.clone(), vec![execution]);
        return;
    };
    match pending.iter_mut().find(|e| e.job_id == execution.job_id) {
        Some(known) => *known = execution,
        None => pending.push(execution),
    }
}

fn forget(index: &mut HashMap<String, Vec<Execution>>, execution: &Execution) {
    let Some(pending) = index.get_mut(&execution.thing_name) else {
        return;
    };
    pending.retain(|e| e.job_id != execution.job_id);
    if pending.is_empty() {
        index.remove(&execution.thing_name);
    }
}

/// The index of what `trees` hold: the thing index (`by_thing`, pending executions only), then those
/// executions, read a chunk of the thing index at a time.
fn build(trees: &Trees) -> Result<HashMap<String, Vec<Execution>>> {
    let mut index = HashMap::new();
    trees.pending_pairs(|pairs| {
        let wanted: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(thing, job_id)| (job_id.as_str(), thing.as_str()))
            .collect();
        for execution in trees.executions(&wanted)?.into_iter().flatten() {
            if !execution.status.is_terminal() {
                remember(&mut index, execution);
            }
        }
        Ok(())
    })?;
    Ok(index)
}
