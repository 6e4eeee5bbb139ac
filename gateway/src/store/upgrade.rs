//! Upgrades of a store written in an earlier format, run when it is opened ([`super::handle`] reads the
//! format key, runs the steps, then writes the current format and a fresh account). Each step is
//! idempotent, so a crash part-way through runs it again on the next open. Kept apart so that the code of
//! the current layout does not carry the history of the old ones.

use serde::{Deserialize, Serialize};
use sled::Tree;

use super::codec::{self, is_pending_status};
use super::meta::{Counts, Meta, META_KEY};
use super::Result;
use crate::model::Job;

/// Format 1 → 2: the thing index keeps pending executions only. Idempotent, so a crash part-way through
/// (the format key is written after) just runs it again on the next open.
pub(super) fn drop_finished_from_thing_index(by_thing: &Tree) -> Result<()> {
    for entry in by_thing.iter() {
        let (key, status) = entry?;
        if !is_pending_status(&status) {
            by_thing.remove(key)?;
        }
    }
    Ok(())
}

/// Format 4 → 5: every execution (job id ∖0 thing) gets its entry in `thing_executions` (thing ∖0 job
/// id). Idempotent: an entry written twice is the same entry.
pub(super) fn index_executions_by_thing(executions: &Tree, thing_executions: &Tree) -> Result<()> {
    for entry in executions.iter() {
        let (key, _) = entry?;
        let Some((job_id, thing)) = codec::split_pair(&key) else {
            continue; // not an execution's key: the walk at open names it
        };
        thing_executions.insert(codec::thing_key(&thing, &job_id), &[])?;
    }
    Ok(())
}

/// Format 5 → 6: each job's targets leave its record for `job_targets`. Idempotent: a record whose
/// targets were moved has none left, and one that still has them is moved again whole.
pub(super) fn move_targets_out(jobs: &Tree, job_targets: &Tree) -> Result<()> {
    for entry in jobs.iter() {
        let (key, value) = entry?;
        // A record that does not decode is named by the checks at open; it is left as it is.
        let Ok(mut job) = codec::decode::<Job>(&value) else {
            continue;
        };
        if job.targets.is_empty() {
            continue;
        }
        job_targets.insert(&key, codec::encode(&std::mem::take(&mut job.targets)))?;
        jobs.insert(key, codec::encode(&job))?;
    }
    Ok(())
}

/// The account of formats 3 and 4, which had two trees fewer (no `thing_executions`, no `job_targets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MetaOfFormat4 {
    pub store_id: u64,
    pub generation: u64,
    pub counts: [u64; 9],
}

/// The account of format 5, which had one tree fewer (no `job_targets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MetaOfFormat5 {
    pub store_id: u64,
    pub generation: u64,
    pub counts: [u64; 10],
}

/// The account an older store kept, in this format or an earlier one (`None` if it has none, as
/// formats 1 and 2 had not): its store id and generation carry over the upgrade, so that the manifest
/// still names this store. postcard writes an array without its length, so an account of fewer trees
/// does not read as one of more (its bytes end first): each layout is tried, the longest first.
pub(super) fn kept_meta(db: &sled::Db) -> Result<Option<Meta>> {
    let Some(bytes) = db.get(META_KEY)? else {
        return Ok(None);
    };
    if let Ok(meta) = Meta::decode(&bytes) {
        return Ok(Some(meta));
    }
    let older = |store_id, generation, old: &[u64]| {
        let mut counts = Counts::default();
        counts.0[..old.len()].copy_from_slice(old);
        Meta {
            store_id,
            generation,
            counts,
        }
    };
    if let Ok(old) = codec::decode::<MetaOfFormat5>(&bytes) {
        return Ok(Some(older(old.store_id, old.generation, &old.counts)));
    }
    Ok(codec::decode::<MetaOfFormat4>(&bytes)
        .ok()
        .map(|old| older(old.store_id, old.generation, &old.counts)))
}
