//! The reads of the jobs trees on one open database: records by key, what the indexes answer, and the
//! iterators that page through jobs and recoveries. [`Store`](super::Store) runs each on the database open
//! at the time, so a read never touches one taken out of service; the methods live on `Trees` for that. Many
//! keys at once are read with one ordered walk ([`super::walk`]), not a scan per key.

use std::sync::Arc;

use super::codec::IndexCode;
use super::codec::{self, is_pending_status};
use super::handle::Trees;
use super::walk::{in_key_order, IndexWalk, SEEK_AFTER};
use super::{Result, StoreError};
use crate::model::{Execution, Job, JobStatus, RecoveryRecord};

impl Trees {
    pub(super) fn job(&self, job_id: &str) -> Result<Option<Job>> {
        self.jobs
            .get(codec::job_key(job_id))?
            .map(|v| decode(&v, || format!("job {job_id}")))
            .transpose()
    }

    /// A job's targets, kept apart from its record (`None`: no such job, or one still being created).
    pub(super) fn job_targets(&self, job_id: &str) -> Result<Option<Vec<String>>> {
        self.job_targets
            .get(codec::job_key(job_id))?
            .map(|v| decode(&v, || format!("the targets of job {job_id}")))
            .transpose()
    }

    pub(super) fn execution(&self, job_id: &str, thing_name: &str) -> Result<Option<Execution>> {
        let key = codec::execution_key(job_id, thing_name);
        self.executions
            .get(key)?
            .map(|v| decode(&v, || format!("execution {job_id}/{thing_name}")))
            .transpose()
    }

    /// The executions at many (job id, thing name) pairs, in their order: one ordered walk of the
    /// executions tree, not a scan per pair (sled starts every scan by copying the whole leaf it lands
    /// on, so N scans that land on the same few leaves cost N copies; see `walk`).
    pub(super) fn executions(&self, pairs: &[(&str, &str)]) -> Result<Vec<Option<Execution>>> {
        // A walk starts by copying a leaf; one record is cheaper to get.
        if let [(job_id, thing)] = pairs {
            return Ok(vec![self.execution(job_id, thing)?]);
        }
        let keys: Vec<Vec<u8>> = pairs
            .iter()
            .map(|(job_id, thing)| codec::execution_key(job_id, thing))
            .collect();
        let mut walk = IndexWalk::new(&self.executions);
        in_key_order(&keys, |key| {
            walk.seek_within(key, SEEK_AFTER)?;
            let name = || {
                format!(
                    "execution {}",
                    String::from_utf8_lossy(key).replace('\0', "/")
                )
            };
            walk.take_if(|k| k == key)?
                .map(|(_, v)| decode(&v, name))
                .transpose()
        })
    }

    pub(super) fn executions_of_job(
        &self,
        job_id: &str,
        after_thing: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>> {
        let prefix = codec::executions_prefix(job_id);
        let iter = match after_thing {
            Some(thing) => {
                let mut start = codec::execution_key(job_id, thing);
                start.push(0); // the smallest key greater than `start`
                self.executions.range(start..)
            }
            None => self.executions.range(prefix.clone()..),
        };
        let mut found = Vec::new();
        for entry in iter.take(limit) {
            let (key, value) = entry?;
            if !key.starts_with(&prefix) {
                break;
            }
            found.push(decode(&value, || {
                format!("execution {}", String::from_utf8_lossy(&key))
            })?);
        }
        Ok(found)
    }

    pub(super) fn job_ids_with_status(&self, status: JobStatus) -> Result<Vec<String>> {
        self.by_status
            .scan_prefix([status.index_code()])
            .map(|entry| Ok(String::from_utf8_lossy(&entry?.0[1..]).into_owned()))
            .collect()
    }

    pub(super) fn jobs_after(
        self: &Arc<Self>,
        after: Option<&str>,
        namespace: Option<Option<&str>>,
    ) -> Box<dyn Iterator<Item = Result<Job>>> {
        let start = |mut key: Vec<u8>| {
            key.push(0);
            key
        };
        match namespace {
            None => {
                let iter = match after {
                    Some(id) => self.jobs.range(start(codec::job_key(id))..),
                    None => self.jobs.iter(),
                };
                Box::new(iter.map(|entry| {
                    let (key, value) = entry?;
                    decode(&value, || format!("job {}", String::from_utf8_lossy(&key)))
                }))
            }
            Some(ns) => {
                let prefix = codec::namespace_key(ns, "");
                let iter = match after {
                    Some(id) => self
                        .by_namespace
                        .range(start(codec::namespace_key(ns, id))..),
                    None => self.by_namespace.range(prefix.clone()..),
                };
                Box::new(
                    iter.take_while(move |entry| {
                        entry
                            .as_ref()
                            .map_or(true, |(key, _)| key.starts_with(&prefix))
                    })
                    .filter_map({
                        let trees = self.clone();
                        move |entry| match entry {
                            Err(e) => Some(Err(e.into())),
                            Ok((key, _)) => {
                                let job_id =
                                    String::from_utf8_lossy(codec::last_part(&key)).into_owned();
                                trees.job(&job_id).transpose()
                            }
                        }
                    }),
                )
            }
        }
    }

    pub(super) fn due_deadlines(&self, now: i64, limit: usize) -> Result<Vec<(String, String)>> {
        let end = (now.max(0) as u64 + 1).to_be_bytes();
        let mut due = Vec::new();
        for entry in self.by_deadline.range(..end.to_vec()).take(limit) {
            let (key, _) = entry?;
            if let Some((_, job_id, thing)) = codec::parse_deadline_key(&key) {
                due.push((job_id, thing));
            }
        }
        Ok(due)
    }

    /// Calls `each` with the (thing name, job id) of every pending execution, from the thing index alone,
    /// in key order, `CHUNK` at a time: what the [`PendingIndex`](super::pending::PendingIndex) is built
    /// from, without holding every pair at once.
    pub(super) fn pending_pairs(
        &self,
        mut each: impl FnMut(&[(String, String)]) -> Result<()>,
    ) -> Result<()> {
        const CHUNK: usize = 1024;
        let mut pairs = Vec::with_capacity(CHUNK);
        for entry in self.by_thing.iter() {
            let (key, status) = entry?;
            if is_pending_status(&status) {
                pairs.extend(codec::split_pair(&key));
            }
            if pairs.len() == CHUNK {
                each(&pairs)?;
                pairs.clear();
            }
        }
        each(&pairs)
    }

    /// The job ids of every execution of `thing_name` (pending or not), in job id order, after `after`.
    pub(super) fn job_ids_of_thing_after(
        &self,
        thing_name: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<String>> {
        let prefix = codec::thing_key(thing_name, "");
        let start = match after {
            Some(job_id) => {
                let mut key = codec::thing_key(thing_name, job_id);
                key.push(0); // the smallest key greater than `key`
                key
            }
            None => prefix.clone(),
        };
        let skip = prefix.len();
        self.thing_executions
            .range(start..)
            .take_while(move |entry| {
                entry
                    .as_ref()
                    .map_or(true, |(key, _)| key.starts_with(&prefix))
            })
            .map(move |entry| Ok(String::from_utf8_lossy(&entry?.0[skip..]).into_owned()))
    }

    pub(super) fn next_recovery_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()? + 1)
    }

    pub(super) fn recovery(&self, id: u64) -> Result<Option<RecoveryRecord>> {
        self.recoveries
            .get(id.to_be_bytes())?
            .map(|v| decode_recovery(&v, || format!("recovery {id}")))
            .transpose()
    }

    pub(super) fn open_recoveries(&self, thing_name: Option<&str>) -> Result<Vec<RecoveryRecord>> {
        let prefix = thing_name
            .map(|t| codec::thing_key(t, ""))
            .unwrap_or_default();
        let mut found = Vec::new();
        for entry in self.open_recoveries.scan_prefix(prefix) {
            let (key, _) = entry?;
            let Some(id) = codec::recovery_id_of_open_key(&key) else {
                continue;
            };
            if let Some(recovery) = self.recovery(id)? {
                found.push(recovery);
            }
        }
        found.sort_by_key(|r| r.id);
        Ok(found)
    }

    pub(super) fn recoveries_after(
        &self,
        after: Option<u64>,
    ) -> impl Iterator<Item = Result<RecoveryRecord>> {
        let start = after.map_or(0, |id| id.saturating_add(1)).to_be_bytes();
        self.recoveries.range(start..).map(|entry| {
            let (key, value) = entry?;
            decode_recovery(&value, || {
                format!("recovery {}", String::from_utf8_lossy(&key))
            })
        })
    }
}

pub(super) fn decode_recovery(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<RecoveryRecord> {
    codec::decode_recovery(bytes).map_err(|source| StoreError::Codec {
        what: what(),
        source,
    })
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T> {
    codec::decode(bytes).map_err(|source| StoreError::Codec {
        what: what(),
        source,
    })
}
