//! The jobs store: jobs and their executions in a sled database on disk, with the indexes the engine needs.
//!
//! Six trees: `jobs` (job id → job), `executions` (job id ∖0 thing → execution), and four indexes,
//! `by_thing` (thing ∖0 job id → execution status, for pending executions only: what devices ask for is
//! their pending work, and a thing's history of finished executions only grows), `by_status` (status
//! byte, job id), `by_namespace` (namespace ∖0 job id) and `by_deadline` (step deadline, job id ∖0 thing); plus `recoveries` (id → durable
//! recovery) and `open_recoveries` (thing ∖0 id of those still PENDING); and, apart, the broker's persistent
//! MQTT sessions ([`sessions`]). Every state change is one
//! [`Change`], applied as one sled transaction over all the trees, so a crash at any moment leaves records and indexes agreeing; [`Store::check`] proves it
//! after the fact. sled transactions cannot scan, so callers find what to change first, under
//! [`Store::lock_writes`], and commit after: the lock makes read-check-write sequences atomic without
//! putting scans inside transactions. All calls block (sled does I/O): run them off the async runtime.
//!
//! A write that fails (a full disk) takes the database out of service until it can be reopened from the
//! disk, so that nothing written after the last flush is ever read ([`handle`]); [`Store::health`] tells
//! the daemon.

pub mod backup;
pub mod codec;
mod damage;
mod handle;
mod manifest;
mod meta;
pub mod sessions;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use crate::model::{
    Execution, ExecutionCounts, ExecutionStatus, Job, JobStatus, RecoveryRecord, RecoveryState,
};
use codec::{CodecError, IndexCode};
use handle::{Background, Handle, Trees};
use meta::{Counted, TreeIx};

pub use handle::Health;

/// The store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {}", handle::describe(.0))]
    Sled(#[from] sled::Error),
    #[error("cannot read {what}: {source}")]
    Codec { what: String, source: CodecError },
    #[error("the store at {path} was written by a newer sprig (store format {found}, this release reads {supported})")]
    TooNew {
        path: String,
        found: u8,
        supported: u8,
    },
    /// Out of service after a failed write, until sprig can reopen it.
    #[error("the jobs store in {} is out of service ({cause})", path.display())]
    Unavailable { path: PathBuf, cause: String },
    /// sled cannot read it, or it no longer holds what it held (see [`damage`]).
    #[error(
        "the jobs store in {} is damaged: {damage}\n\
         to recover, with the gateway stopped: restore the last backup with \
         `sprig store restore --from DIR --force` (the damaged store is moved aside, not deleted), or \
         move {} away to start with an empty store",
        path.display(),
        path.display()
    )]
    Damaged { path: PathBuf, damage: String },
    /// Another process (a running gateway) holds sled's lock.
    #[error("the jobs store in {} is in use by another process (a running `sprig run`?): stop the gateway first", path.display())]
    InUse { path: PathBuf },
    /// A file operation of the store's own (the manifest, a backup) failed.
    #[error("{what}: {source}")]
    Files {
        what: String,
        source: std::io::Error,
    },
    /// `sprig store restore --from` a directory that holds no backup.
    #[error("{} is not a store backup (it has no {missing}): give the directory that `sprig store backup --to` made", dir.display())]
    NotABackup { dir: PathBuf, missing: &'static str },
    /// `sprig store restore` over a store, without `--force`.
    #[error("the jobs store in {} exists; `sprig store restore` replaces it only with --force (it is then moved aside, not deleted)", path.display())]
    WouldReplace { path: PathBuf },
    /// `sprig store restore --from` a backup that does not open whole.
    #[error("the backup in {} is damaged: {damage}; the store was left as it was: restore an older backup", dir.display())]
    BackupDamaged { dir: PathBuf, damage: String },
    /// `sprig store backup --to` a directory with something in it.
    #[error("{} exists and is not empty: give --to a new or empty directory", dir.display())]
    TargetNotEmpty { dir: PathBuf },
}

impl StoreError {
    /// Is the store out of service (see [`handle`])? Its failure was logged once, when it happened.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// One atomic state change. `job_after: None` with `job_before: Some` removes the job.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub job_before: Option<&'a Job>,
    pub job_after: Option<&'a Job>,
    pub put_executions: &'a [Execution],
    pub delete_executions: &'a [Execution],
    /// Recoveries created by this change (ids from [`Store::next_recovery_id`]).
    pub put_recoveries: &'a [RecoveryRecord],
}

/// The jobs store. Cheap to share behind an `Arc`.
pub struct Store {
    handle: Arc<Handle>,
    writes: Mutex<()>,
    /// Flushes periodically and reopens the store after a failure; stopped by [`Store::close`].
    background: Mutex<Option<Background>>,
}

impl Store {
    /// Opens (or creates) the store in `dir` for a gateway, with a page cache of at most `cache_bytes`:
    /// proved whole first (a damaged store is refused with [`StoreError::Damaged`]), then flushed
    /// periodically with its manifest kept up to date.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let handle = Arc::new(Handle::open(dir, cache_bytes, true)?);
        Ok(Store {
            background: Mutex::new(Some(Background::start(handle.clone()))),
            handle,
            writes: Mutex::new(()),
        })
    }

    /// Opens the store in `dir` for a maintenance command (`sprig store …`): proved whole like
    /// [`Store::open`], but nothing is written in the background (neither sled's flusher nor the
    /// manifest), so that its files stay as they are while they are read or copied.
    pub fn open_for_maintenance(dir: &Path, cache_bytes: u64) -> Result<Store> {
        Ok(Store {
            handle: Arc::new(Handle::open(dir, cache_bytes, false)?),
            writes: Mutex::new(()),
            background: Mutex::new(None),
        })
    }

    /// Serializes writers: hold this guard from the first read of a read-check-write until its commit.
    pub fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // A writer that panicked left no partial change behind (commits are transactions): carry on.
        self.writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The broker's persistent MQTT sessions (see [`sessions`]).
    pub fn sessions(&self) -> sessions::SessionTree {
        sessions::SessionTree::new(self.handle.clone())
    }

    /// Whether the store can serve; changes when a write fails and when the store is back.
    pub fn health(&self) -> tokio::sync::watch::Receiver<Health> {
        self.handle.health()
    }

    /// Makes every committed change durable (fsync).
    pub fn flush(&self) -> Result<()> {
        self.handle.flush()
    }

    /// Makes every committed change durable and records the store's account in its manifest.
    pub fn checkpoint(&self) -> Result<()> {
        self.handle.checkpoint()
    }

    /// Jobs, executions and changes, from the store's account (no walk).
    pub fn summary(&self) -> Result<backup::Summary> {
        self.handle.run(|t| {
            let meta = t.meta()?;
            Ok(backup::Summary {
                jobs: meta.counts.get(TreeIx::Jobs),
                executions: meta.counts.get(TreeIx::Executions),
                generation: meta.generation,
            })
        })
    }

    /// Stops the background work and makes everything durable, for shutdown. A store out of service is
    /// reopened first if it can be; if it cannot, the error says why.
    pub fn close(&self) -> Result<()> {
        drop(
            self.background
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        self.handle.close()
    }

    pub fn job(&self, job_id: &str) -> Result<Option<Job>> {
        self.handle.run(|t| t.job(job_id))
    }

    pub fn execution(&self, job_id: &str, thing_name: &str) -> Result<Option<Execution>> {
        self.handle.run(|t| t.execution(job_id, thing_name))
    }

    /// The executions at many (job id, thing name) pairs, in their order: one ordered walk of the
    /// executions tree (see [`pending_job_ids_of_things`](Self::pending_job_ids_of_things) for why).
    pub fn executions(&self, pairs: &[(&str, &str)]) -> Result<Vec<Option<Execution>>> {
        self.handle.run(|t| t.executions(pairs))
    }

    /// Up to `limit` executions of `job_id`, in thing-name order, starting after `after_thing`.
    pub fn executions_of_job(
        &self,
        job_id: &str,
        after_thing: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>> {
        self.handle
            .run(|t| t.executions_of_job(job_id, after_thing, limit))
    }

    /// The ids of every job in `status`.
    pub fn job_ids_with_status(&self, status: JobStatus) -> Result<Vec<String>> {
        self.handle.run(|t| t.job_ids_with_status(status))
    }

    /// Jobs in id order, starting after `after`. `namespace`: `None` = every job; `Some(None)` = standard
    /// jobs only; `Some(Some(ns))` = jobs of namespace `ns` only.
    pub fn jobs_after<'a>(
        &'a self,
        after: Option<&str>,
        namespace: Option<Option<&str>>,
    ) -> Box<dyn Iterator<Item = Result<Job>> + 'a> {
        match self.handle.trees() {
            Ok(trees) => {
                let jobs = Trees::jobs_after(&trees, after, namespace);
                Box::new(jobs.map(move |job| self.handle.checked(&trees, job)))
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Applies one change atomically: job record, its indexes, and any executions with theirs.
    pub fn commit(&self, change: &Change<'_>) -> Result<()> {
        self.handle.run(|t| t.commit(change))
    }

    /// (job id, thing name) of executions whose step deadline is at or before `now` (epoch ms), oldest first.
    pub fn due_deadlines(&self, now: i64, limit: usize) -> Result<Vec<(String, String)>> {
        self.handle.run(|t| t.due_deadlines(now, limit))
    }

    /// The job ids of `thing_name`'s pending executions (QUEUED or IN_PROGRESS), from the thing index alone.
    pub fn pending_job_ids_of_thing(&self, thing_name: &str) -> Result<Vec<String>> {
        Ok(self
            .pending_job_ids_of_things(&[thing_name])?
            .pop()
            .unwrap_or_default())
    }

    /// [`pending_job_ids_of_thing`](Self::pending_job_ids_of_thing) for many things at once, in their order.
    ///
    /// One ordered walk of the `by_thing` index instead of a prefix scan per thing: sled starts every scan
    /// by copying the whole leaf it lands on, so N scans that land on the same few leaves cost N copies
    /// (a notification for 10,000 things spent most of its time there). The walk visits the things in key
    /// order and seeks again, as a fresh scan would, when more than `SEEK_AFTER` entries of things not asked
    /// for lie between two asked ones: never much worse than one scan per thing.
    pub fn pending_job_ids_of_things(&self, things: &[&str]) -> Result<Vec<Vec<String>>> {
        self.handle.run(|t| t.pending_job_ids_of_things(things))
    }

    /// A fresh, never reused recovery id.
    pub fn next_recovery_id(&self) -> Result<u64> {
        self.handle.run(|t| t.next_recovery_id())
    }

    pub fn recovery(&self, id: u64) -> Result<Option<RecoveryRecord>> {
        self.handle.run(|t| t.recovery(id))
    }

    /// Writes a recovery's new state (and moves it out of the open index once it has ended).
    pub fn update_recovery(&self, recovery: &RecoveryRecord) -> Result<()> {
        self.handle.run(|t| t.update_recovery(recovery))
    }

    /// The PENDING recoveries, of one thing or of all, in id order.
    pub fn open_recoveries(&self, thing_name: Option<&str>) -> Result<Vec<RecoveryRecord>> {
        self.handle.run(|t| t.open_recoveries(thing_name))
    }

    /// Recoveries in id order, starting after `after`.
    pub fn recoveries_after(
        &self,
        after: Option<u64>,
    ) -> Box<dyn Iterator<Item = Result<RecoveryRecord>> + '_> {
        match self.handle.trees() {
            Ok(trees) => {
                let recoveries = trees.recoveries_after(after);
                Box::new(recoveries.map(move |r| self.handle.checked(&trees, r)))
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Verifies that every index entry matches a record and every record has its index entries, and that
    /// each job's execution counts match its executions. Reads everything: for `sprig store check`.
    /// Also compares the entries of every tree with the store's account, and the account with the
    /// manifest. A panic in sled is reported as damage (see [`damage::quietly`]).
    pub fn check(&self) -> Result<CheckReport> {
        let path = self.handle.path().to_owned();
        self.handle.run(|t| {
            damage::quietly(|| t.check(&path)).unwrap_or_else(|panic| {
                Err(StoreError::Damaged {
                    path: path.clone(),
                    damage: format!("sled gave up reading it ({panic})"),
                })
            })
        })
    }

    /// The open database, for tests that write around [`Store::commit`].
    #[cfg(test)]
    fn trees(&self) -> Arc<Trees> {
        self.handle.trees().expect("the store is open")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The background thread holds the handle: stop it, so that the database closes with the store.
        drop(self.background.get_mut().ok().and_then(Option::take));
    }
}

/// The reads and the commit themselves, on one open database ([`Store`] runs each on the current one).
impl Trees {
    fn job(&self, job_id: &str) -> Result<Option<Job>> {
        self.jobs
            .get(codec::job_key(job_id))?
            .map(|v| decode(&v, || format!("job {job_id}")))
            .transpose()
    }

    fn execution(&self, job_id: &str, thing_name: &str) -> Result<Option<Execution>> {
        let key = codec::execution_key(job_id, thing_name);
        self.executions
            .get(key)?
            .map(|v| decode(&v, || format!("execution {job_id}/{thing_name}")))
            .transpose()
    }

    fn executions(&self, pairs: &[(&str, &str)]) -> Result<Vec<Option<Execution>>> {
        // A walk starts by copying a leaf; one record is cheaper to get (the device API asks for one).
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

    fn executions_of_job(
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

    fn job_ids_with_status(&self, status: JobStatus) -> Result<Vec<String>> {
        self.by_status
            .scan_prefix([status.index_code()])
            .map(|entry| Ok(String::from_utf8_lossy(&entry?.0[1..]).into_owned()))
            .collect()
    }

    fn jobs_after(
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

    fn commit(&self, change: &Change<'_>) -> Result<()> {
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
                if let Some(after) = change.job_after {
                    jobs.insert(after.key(), codec::encode(after))?;
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
                    if let Some(key) = execution.deadline_key() {
                        by_deadline.remove(key)?;
                    }
                }
                if let (Some(before), None) = (change.job_before, change.job_after) {
                    jobs.remove(before.key())?;
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
                    ],
                )
            },
        );
        committed(outcome)
    }

    fn due_deadlines(&self, now: i64, limit: usize) -> Result<Vec<(String, String)>> {
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

    fn pending_job_ids_of_things(&self, things: &[&str]) -> Result<Vec<Vec<String>>> {
        let prefixes: Vec<Vec<u8>> = things.iter().map(|t| codec::thing_key(t, "")).collect();
        let mut walk = IndexWalk::new(&self.by_thing);
        in_key_order(&prefixes, |prefix| {
            walk.seek_within(prefix, SEEK_AFTER)?;
            let mut ids = Vec::new();
            while let Some((key, status)) = walk.take_if(|key| key.starts_with(prefix))? {
                if is_pending_status(&status) {
                    ids.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
                }
            }
            Ok(ids)
        })
    }

    fn next_recovery_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()? + 1)
    }

    fn recovery(&self, id: u64) -> Result<Option<RecoveryRecord>> {
        self.recoveries
            .get(id.to_be_bytes())?
            .map(|v| decode_recovery(&v, || format!("recovery {id}")))
            .transpose()
    }

    fn update_recovery(&self, recovery: &RecoveryRecord) -> Result<()> {
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

    fn open_recoveries(&self, thing_name: Option<&str>) -> Result<Vec<RecoveryRecord>> {
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

    fn recoveries_after(&self, after: Option<u64>) -> impl Iterator<Item = Result<RecoveryRecord>> {
        let start = after.map_or(0, |id| id.saturating_add(1)).to_be_bytes();
        self.recoveries.range(start..).map(|entry| {
            let (key, value) = entry?;
            decode_recovery(&value, || {
                format!("recovery {}", String::from_utf8_lossy(&key))
            })
        })
    }

    fn check(&self, dir: &Path) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        self.check_account(dir, &mut report)?;
        self.check_jobs(&mut report)?;
        for entry in self.executions.iter() {
            let (key, value) = entry?;
            report.executions += 1;
            let name = String::from_utf8_lossy(&key).replace('\0', "/");
            let execution: Execution = match codec::decode(&value) {
                Ok(e) => e,
                Err(e) => {
                    report.problem(format!("execution {name}: {e}"));
                    continue;
                }
            };
            if execution.key() != key.as_ref() {
                report.problem(format!("execution {name}: stored under the wrong key"));
            }
            let indexed = self.by_thing.get(execution.thing_key())?;
            let expected = (!execution.status.is_terminal()).then(|| execution.status.index_code());
            if indexed.as_deref() != expected.as_ref().map(std::slice::from_ref) {
                report.problem(format!("execution {name}: thing index missing or stale"));
            }
            if let Some(key) = execution.deadline_key() {
                if !self.by_deadline.contains_key(key)? {
                    report.problem(format!("execution {name}: missing from the deadline index"));
                }
            }
        }
        for entry in self.by_thing.iter() {
            let (key, _) = entry?;
            let job_id = String::from_utf8_lossy(codec::last_part(&key)).into_owned();
            let thing = String::from_utf8_lossy(&key[..key.len() - job_id.len() - 1]).into_owned();
            if !self
                .executions
                .contains_key(codec::execution_key(&job_id, &thing))?
            {
                report.problem(format!("thing index: {thing}/{job_id} has no execution"));
            }
        }
        for entry in self.recoveries.iter() {
            let (_, value) = entry?;
            let recovery = match codec::decode_recovery(&value) {
                Ok(r) => r,
                Err(e) => {
                    report.problem(format!("recovery: {e}"));
                    continue;
                }
            };
            let indexed = self
                .open_recoveries
                .contains_key(codec::open_recovery_key(&recovery))?;
            if indexed != (recovery.state == RecoveryState::Pending) {
                report.problem(format!(
                    "recovery {}: open index disagrees with state {}",
                    recovery.id,
                    recovery.state.as_str()
                ));
            }
        }
        for entry in self.open_recoveries.iter() {
            let (key, _) = entry?;
            match codec::recovery_id_of_open_key(&key)
                .map(|id| self.recovery(id))
                .transpose()?
            {
                Some(Some(r)) if r.state == RecoveryState::Pending => {}
                _ => report
                    .problem("open recoveries index: an entry without a PENDING recovery".into()),
            }
        }
        for entry in self.by_deadline.iter() {
            let (key, _) = entry?;
            let Some((deadline, job_id, thing)) = codec::parse_deadline_key(&key) else {
                report.problem("deadline index: a malformed key".into());
                continue;
            };
            if self
                .execution(&job_id, &thing)?
                .and_then(|e| e.step_deadline)
                != Some(deadline)
            {
                report.problem(format!(
                    "deadline index: {job_id}/{thing} has no execution with that deadline"
                ));
            }
        }
        Ok(report)
    }
}

impl Trees {
    /// Every job record against what the transactions that wrote it wrote beside it: its entries in the
    /// status and namespace indexes and its executions' counts; and every entry of those indexes, and
    /// every execution, against a job. Also run whenever the store is opened ([`damage`]): the record
    /// of a job with many targets is large enough for sled to keep in a blob file, and sled reads a lost
    /// blob as a write torn by a crash, falling back to the record's earlier version (another status,
    /// older counts) without a word; the account counts the same entries, and only the indexes and
    /// executions written with the later version tell. One walk of the executions, a count per job.
    fn check_jobs(&self, report: &mut CheckReport) -> Result<()> {
        let mut counted: BTreeMap<Vec<u8>, ExecutionCounts> = BTreeMap::new();
        for entry in self.executions.iter() {
            let (key, value) = entry?;
            let job_key = key.split(|&b| b == 0).next().unwrap_or_default();
            match codec::decode::<Execution>(&value) {
                Ok(execution) => counted
                    .entry(job_key.to_vec())
                    .or_default()
                    .add(execution.status),
                // Named by the walk of the executions in `check`; here it counts for nothing.
                Err(_) => {
                    counted.entry(job_key.to_vec()).or_default();
                }
            }
        }
        for entry in self.jobs.iter() {
            let (key, value) = entry?;
            report.jobs += 1;
            let name = String::from_utf8_lossy(&key).into_owned();
            let executions = counted.remove(key.as_ref()).unwrap_or_default();
            let job: Job = match codec::decode(&value) {
                Ok(job) => job,
                Err(e) => {
                    report.problem(format!("job {name}: {e}"));
                    continue;
                }
            };
            if !self
                .by_status
                .contains_key(codec::status_key(job.status, &job.job_id))?
            {
                report.problem(format!(
                    "job {name}: its record says {}, but the status index does not",
                    job.status.as_str()
                ));
            }
            if !self.by_namespace.contains_key(codec::namespace_key(
                job.namespace_id.as_deref(),
                &job.job_id,
            ))? {
                report.problem(format!("job {name}: missing from the namespace index"));
            }
            if executions != job.counts {
                report.problem(format!(
                    "job {name}: counts {:?} but executions {:?}",
                    job.counts, executions
                ));
            }
        }
        for (job_key, executions) in counted {
            report.problem(format!(
                "{} executions of job {}, which does not exist",
                executions.total(),
                String::from_utf8_lossy(&job_key)
            ));
        }
        for entry in self.by_status.iter() {
            let (key, _) = entry?;
            let job_id = String::from_utf8_lossy(&key[1..]).into_owned();
            let indexed = codec::job_status_of_code(key[0])
                .map_or_else(|| format!("code {}", key[0]), |s| s.as_str().to_owned());
            match self.job(&job_id)? {
                Some(job) if job.status.index_code() == key[0] => {}
                Some(job) => report.problem(format!(
                    "status index: {job_id} is {indexed}, but its record says {}",
                    job.status.as_str()
                )),
                None => report.problem(format!(
                    "status index: {job_id} is {indexed}, but there is no such job"
                )),
            }
        }
        for entry in self.by_namespace.iter() {
            let (key, _) = entry?;
            let job_id = String::from_utf8_lossy(codec::last_part(&key)).into_owned();
            let ns = String::from_utf8_lossy(&key[..key.len() - job_id.len() - 1]).into_owned();
            match self.job(&job_id)? {
                Some(job) if job.namespace_id.as_deref().unwrap_or("") == ns => {}
                _ => report.problem(format!("namespace index: {ns}/{job_id} has no such job")),
            }
        }
        Ok(())
    }

    /// The account against a walk of every tree, and against the manifest in `dir`.
    fn check_account(&self, dir: &Path, report: &mut CheckReport) -> Result<()> {
        let meta = match self.meta() {
            Ok(meta) => meta,
            Err(e) => {
                report.problem(e.to_string());
                return Ok(());
            }
        };
        report.generation = meta.generation;
        for (tree, found, kept) in self.walk_counts()?.differences(&meta.counts) {
            report.problem(format!(
                "{tree}: {found} entries, but the store's account says {kept}"
            ));
        }
        report.manifest = match manifest::read(dir) {
            Ok(None) => "none yet (the gateway writes one when it runs)".into(),
            Err(why) => {
                report.problem(format!("{}: {why}", manifest::FILE));
                "unreadable".into()
            }
            Ok(Some(recorded)) => match manifest::judge(&meta, &recorded) {
                Ok(manifest::Standing::Matches) => "matches".into(),
                Ok(manifest::Standing::Ahead(changes)) => format!(
                    "{changes} changes behind the store (made after its last write; the gateway \
                     brings it up to date when it runs)"
                ),
                Err(mismatch) => {
                    report.problem(mismatch.to_string());
                    "does not match".into()
                }
            },
        };
        Ok(())
    }
}

/// A store transaction's result: its closures never abort, so only storage errors remain.
fn committed(outcome: std::result::Result<(), TransactionError<()>>) -> Result<()> {
    match outcome {
        Ok(()) => Ok(()),
        Err(TransactionError::Storage(e)) => Err(e.into()),
        Err(TransactionError::Abort(())) => unreachable!("store transactions never abort"),
    }
}

fn write_recovery(
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

fn write_job_indexes(
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

fn decode_recovery(bytes: &[u8], what: impl FnOnce() -> String) -> Result<RecoveryRecord> {
    codec::decode_recovery(bytes).map_err(|source| StoreError::Codec {
        what: what(),
        source,
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T> {
    codec::decode(bytes).map_err(|source| StoreError::Codec {
        what: what(),
        source,
    })
}

/// What [`Store::check`] found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub jobs: u64,
    pub executions: u64,
    /// Changes the store has had ([`meta::Meta::generation`]).
    pub generation: u64,
    /// How the store stands to its manifest, in words.
    pub manifest: String,
    pub problems: Vec<String>,
}

impl CheckReport {
    fn problem(&mut self, text: String) {
        self.problems.push(text);
    }

    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} jobs, {} executions", self.jobs, self.executions)?;
        writeln!(
            f,
            "{} changes; manifest: {}",
            self.generation, self.manifest
        )?;
        if self.problems.is_empty() {
            return write!(f, "store is consistent");
        }
        for problem in &self.problems {
            writeln!(f, "problem: {problem}")?;
        }
        write!(f, "store is INCONSISTENT: {} problems", self.problems.len())
    }
}

/// Format 1 → 2: the thing index keeps pending executions only. Idempotent, so a crash part-way through
/// (the format key is written after) just runs it again on the next open.
fn drop_finished_from_thing_index(by_thing: &Tree) -> Result<()> {
    for entry in by_thing.iter() {
        let (key, status) = entry?;
        if !is_pending_status(&status) {
            by_thing.remove(key)?;
        }
    }
    Ok(())
}

/// Is a thing-index value (one status code byte) that of a pending (QUEUED or IN_PROGRESS) execution?
fn is_pending_status(value: &[u8]) -> bool {
    value
        .first()
        .and_then(|&code| ExecutionStatus::ALL.iter().find(|s| s.index_code() == code))
        .is_some_and(|status| !status.is_terminal())
}

/// `read(key)` for every key, in the keys' order (so that `read` can walk a tree forwards), each distinct
/// key read once; the answers come back in the caller's order.
fn in_key_order<T: Clone>(
    keys: &[Vec<u8>],
    mut read: impl FnMut(&[u8]) -> Result<T>,
) -> Result<Vec<T>> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
    let mut found: Vec<Option<T>> = vec![None; keys.len()];
    let mut previous: Option<usize> = None;
    for i in order {
        found[i] = match previous.filter(|&p| keys[p] == keys[i]) {
            Some(p) => found[p].clone(),
            None => Some(read(&keys[i])?),
        };
        previous = Some(i);
    }
    Ok(found.into_iter().flatten().collect())
}

/// Entries of other keys a [`IndexWalk`] steps over before it seeks instead.
const SEEK_AFTER: usize = 32;

/// A forward walk over an index tree that can move on to a later key, stepping or seeking.
struct IndexWalk<'a> {
    tree: &'a Tree,
    iter: Option<sled::Iter>,
    /// The entry the walk is on (not yet taken).
    current: Option<(sled::IVec, sled::IVec)>,
}

impl<'a> IndexWalk<'a> {
    fn new(tree: &'a Tree) -> IndexWalk<'a> {
        IndexWalk {
            tree,
            iter: None,
            current: None,
        }
    }

    /// Moves to the first entry at or after `key`: by stepping, unless that takes more than `max_steps`
    /// entries (or the walk has not started), then by a fresh seek. Never moves backwards.
    fn seek_within(&mut self, key: &[u8], max_steps: usize) -> Result<()> {
        if self.iter.is_some() {
            for _ in 0..=max_steps {
                match &self.current {
                    Some((k, _)) if k.as_ref() < key => self.advance()?,
                    _ => return Ok(()),
                }
            }
            if self.current.as_ref().is_none_or(|(k, _)| k.as_ref() >= key) {
                return Ok(());
            }
        }
        self.iter = Some(self.tree.range(key..));
        self.advance()
    }

    /// The current entry, and a step past it, if its key satisfies `wanted`.
    fn take_if(
        &mut self,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<(sled::IVec, sled::IVec)>> {
        if !self.current.as_ref().is_some_and(|(k, _)| wanted(k)) {
            return Ok(None);
        }
        let taken = self.current.take();
        self.advance()?;
        Ok(taken)
    }

    fn advance(&mut self) -> Result<()> {
        self.current = match self.iter.as_mut().and_then(Iterator::next) {
            Some(entry) => Some(entry?),
            None => None,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::handle::{FORMAT_KEY, STORE_FORMAT};
    use super::*;
    use crate::model::{ExecutionStatus, JobStatus};

    /// Commits a new job (or a new version of it) with `executions` added.
    fn put_job(store: &Store, job: &Job, executions: &[Execution]) {
        store
            .commit(&Change {
                job_after: Some(job),
                put_executions: executions,
                ..Default::default()
            })
            .unwrap();
    }

    fn job(id: &str, namespace: Option<&str>, things: &[&str]) -> (Job, Vec<Execution>) {
        let executions: Vec<Execution> =
            things.iter().map(|t| Execution::queued(id, t, 1)).collect();
        let mut counts = ExecutionCounts::default();
        executions.iter().for_each(|e| counts.add(e.status));
        let job = Job {
            job_id: id.into(),
            namespace_id: namespace.map(str::to_owned),
            status: JobStatus::InProgress,
            document: "{}".into(),
            description: None,
            targets: things.iter().map(|t| t.to_string()).collect(),
            created_at: 1,
            last_updated_at: 1,
            completed_at: None,
            force_canceled: false,
            reason_code: None,
            comment: None,
            counts,
            deletion: None,
        };
        (job, executions)
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        (dir, store)
    }

    /// A format-1 store (finished executions in the thing index) opens as format 2 without them.
    #[test]
    fn a_format_1_store_drops_finished_executions_from_the_thing_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8 << 20).unwrap();
            let (mut j, mut execs) = job("j1", None, &["t1", "t2"]);
            execs[0].status = ExecutionStatus::Succeeded;
            j.counts = ExecutionCounts::default();
            execs.iter().for_each(|e| j.counts.add(e.status));
            let change = Change {
                job_after: Some(&j),
                put_executions: &execs,
                ..Default::default()
            };
            store.commit(&change).unwrap();
            // What format 1 wrote: the finished execution indexed too.
            let code = [ExecutionStatus::Succeeded.index_code()];
            store
                .trees()
                .by_thing
                .insert(execs[0].thing_key(), &code)
                .unwrap();
            store.trees().db.insert(FORMAT_KEY, &[1]).unwrap();
            assert!(!store.check().unwrap().is_consistent());
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(
            store.trees().db.get(FORMAT_KEY).unwrap().unwrap().as_ref(),
            &[STORE_FORMAT]
        );
        assert_eq!(store.check().unwrap().problems, Vec::<String>::new());
        assert_eq!(
            store.pending_job_ids_of_thing("t1").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(store.pending_job_ids_of_thing("t2").unwrap(), vec!["j1"]);
    }

    /// The batched reads answer what one read per thing answers: in the callers' order, for things that
    /// share a prefix (`t1`, `t10`), that are asked twice, that have nothing, and across gaps long enough
    /// that the walk seeks instead of stepping.
    #[test]
    fn batched_reads_answer_like_one_read_per_thing() {
        let (_dir, store) = open();
        let many: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        for (id, things) in [
            ("j1", &names[..]),
            ("j2", &names[..3]),
            ("j3", &names[150..]),
        ] {
            let (j, execs) = job(id, None, things);
            let change = Change {
                job_after: Some(&j),
                put_executions: &execs,
                ..Default::default()
            };
            store.commit(&change).unwrap();
        }
        // j1 is done on t1: no longer pending there.
        let mut done = store.execution("j1", "t1").unwrap().unwrap();
        done.status = ExecutionStatus::Succeeded;
        let (j1, _) = job("j1", None, &names);
        put_job(&store, &j1, std::slice::from_ref(&done));

        let asked = [
            "t199", "t1", "t10", "nobody", "t1", "t0", "t2", "t151", "t100",
        ];
        let batched = store.pending_job_ids_of_things(&asked).unwrap();
        let one_by_one: Vec<Vec<String>> = asked
            .iter()
            .map(|t| store.pending_job_ids_of_thing(t).unwrap())
            .collect();
        assert_eq!(batched, one_by_one);
        assert_eq!(batched[0], vec!["j1", "j3"]);
        assert_eq!(batched[1], vec!["j2"]);
        assert_eq!(batched[3], Vec::<String>::new());
        assert_eq!(batched[4], batched[1]);

        let pairs = [
            ("j3", "t199"),
            ("j1", "t1"),
            ("j2", "t150"),
            ("j1", "t0"),
            ("j1", "t1"),
            ("j9", "t1"),
        ];
        let batched = store.executions(&pairs).unwrap();
        let one_by_one: Vec<Option<Execution>> = pairs
            .iter()
            .map(|(j, t)| store.execution(j, t).unwrap())
            .collect();
        assert_eq!(batched, one_by_one);
        assert_eq!(
            batched[1].as_ref().unwrap().status,
            ExecutionStatus::Succeeded
        );
        assert!(batched[2].is_none() && batched[5].is_none());
        assert_eq!(batched[4], batched[1]);
    }

    #[test]
    fn a_committed_job_is_found_by_id_status_namespace_and_thing() {
        let (_dir, store) = open();
        let (j, execs) = job("j1", Some("acme"), &["t1", "t2"]);
        put_job(&store, &j, &execs);
        let (other, other_execs) = job("j2", None, &["t1"]);
        put_job(&store, &other, &other_execs);

        assert_eq!(store.job("j1").unwrap(), Some(j.clone()));
        assert_eq!(
            store.job_ids_with_status(JobStatus::InProgress).unwrap(),
            vec!["j1", "j2"]
        );
        let acme: Vec<_> = store
            .jobs_after(None, Some(Some("acme")))
            .map(|j| j.unwrap().job_id)
            .collect();
        assert_eq!(acme, vec!["j1"]);
        let standard: Vec<_> = store
            .jobs_after(None, Some(None))
            .map(|j| j.unwrap().job_id)
            .collect();
        assert_eq!(standard, vec!["j2"]);
        let page = store.executions_of_job("j1", Some("t1"), 10).unwrap();
        assert_eq!(
            page.iter()
                .map(|e| e.thing_name.as_str())
                .collect::<Vec<_>>(),
            vec!["t2"]
        );
        assert!(store.check().unwrap().is_consistent());
    }

    #[test]
    fn status_changes_move_the_index_and_removal_clears_everything() {
        let (_dir, store) = open();
        let (j, execs) = job("j1", None, &["t1", "t2", "t3"]);
        put_job(&store, &j, &execs);
        let mut deleting = j.clone();
        deleting.status = JobStatus::DeletionInProgress;
        store
            .commit(&Change {
                job_before: Some(&j),
                job_after: Some(&deleting),
                ..Default::default()
            })
            .unwrap();
        assert!(store
            .job_ids_with_status(JobStatus::InProgress)
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .job_ids_with_status(JobStatus::DeletionInProgress)
                .unwrap(),
            vec!["j1"]
        );

        let mut fewer = deleting.clone();
        execs[..2]
            .iter()
            .for_each(|e| fewer.counts.remove(e.status));
        store
            .commit(&Change {
                job_before: Some(&deleting),
                job_after: Some(&fewer),
                delete_executions: &execs[..2],
                ..Default::default()
            })
            .unwrap();
        assert!(store.check().unwrap().is_consistent());
        assert_eq!(store.executions_of_job("j1", None, 10).unwrap().len(), 1);

        store
            .commit(&Change {
                job_before: Some(&fewer),
                delete_executions: &execs[2..],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.job("j1").unwrap(), None);
        let report = store.check().unwrap();
        assert!(report.is_consistent(), "{report}");
        assert_eq!((report.jobs, report.executions), (0, 0));
    }

    #[test]
    fn check_reports_an_index_that_disagrees_with_its_record() {
        let (_dir, store) = open();
        let (j, mut execs) = job("j1", None, &["t1"]);
        put_job(&store, &j, &execs);
        execs[0].status = ExecutionStatus::Succeeded;
        // Write the record alone, bypassing commit: the thing index and the job counts are now stale.
        store
            .trees()
            .executions
            .insert(execs[0].key(), codec::encode(&execs[0]))
            .unwrap();
        let report = store.check().unwrap();
        assert!(!report.is_consistent());
        assert!(
            report.to_string().contains("thing index missing or stale"),
            "{report}"
        );
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (j, execs) = job("j1", Some("ns"), &["t1"]);
        {
            let store = Store::open(dir.path(), 8 << 20).unwrap();
            put_job(&store, &j, &execs);
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(store.job("j1").unwrap(), Some(j));
    }

    #[test]
    fn recoveries_are_indexed_while_pending() {
        use crate::model::{RecoveryReason, RecoveryRecord, RecoveryState};
        let (_dir, store) = open();
        let (j, mut execs) = job("j1", None, &["t1", "t2"]);
        execs[0].status = ExecutionStatus::InProgress;
        let mut recovery =
            RecoveryRecord::for_execution(&j, &execs[0], RecoveryReason::JobDeleted, 5);
        recovery.id = store.next_recovery_id().unwrap();
        let mut counts = ExecutionCounts::default();
        execs.iter().for_each(|e| counts.add(e.status));
        let j = Job { counts, ..j };
        store
            .commit(&Change {
                job_after: Some(&j),
                put_executions: &execs,
                put_recoveries: std::slice::from_ref(&recovery),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            store.open_recoveries(Some("t1")).unwrap(),
            vec![recovery.clone()]
        );
        assert!(store.open_recoveries(Some("t2")).unwrap().is_empty());
        assert!(store.check().unwrap().is_consistent());

        recovery.state = RecoveryState::Recovered;
        store.update_recovery(&recovery).unwrap();
        assert!(store.open_recoveries(None).unwrap().is_empty());
        assert_eq!(store.recovery(recovery.id).unwrap(), Some(recovery));
        let report = store.check().unwrap();
        assert!(report.is_consistent(), "{report}");
    }

    /// A store with jobs `j0`…, one change each, closed (so its manifest is written).
    fn store_with_jobs(dir: &Path, count: usize) {
        let store = Store::open(dir, 8 << 20).unwrap();
        for i in store.summary().unwrap().jobs as usize..count {
            let (j, execs) = job(&format!("j{i}"), None, &["t1"]);
            put_job(&store, &j, &execs);
        }
        store.close().unwrap();
    }

    fn copy_files(from: &Path, to: &Path) {
        std::fs::create_dir_all(to.join("blobs")).unwrap();
        for name in manifest::sled_files(from).into_keys() {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    }

    fn damage_of(result: Result<Store>) -> String {
        match result {
            Err(StoreError::Damaged { damage, .. }) => damage,
            Err(other) => panic!("not damage: {other}"),
            Ok(_) => panic!("a damaged store opened"),
        }
    }

    #[test]
    fn a_store_behind_its_manifest_is_refused_and_one_ahead_of_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (store_dir, older) = (dir.path().join("store"), dir.path().join("older"));
        store_with_jobs(&store_dir, 2);
        copy_files(&store_dir, &older);
        let early_manifest = std::fs::read(manifest::path(&store_dir)).unwrap();
        store_with_jobs(&store_dir, 5);

        // The store's files as they were at 2 jobs, beside the manifest of 5: changes are gone.
        std::fs::copy(manifest::path(&store_dir), manifest::path(&older)).unwrap();
        let damage = damage_of(Store::open(&older, 8 << 20));
        assert!(
            damage.contains("it has lost data: it holds 2 changes")
                && damage.contains("recorded 5")
                && damage.contains("jobs: 2 now, 5 then"),
            "{damage}"
        );

        // The store of 5 beside the manifest of 2 (killed between a flush and the manifest write).
        std::fs::write(manifest::path(&store_dir), early_manifest).unwrap();
        let store = Store::open_for_maintenance(&store_dir, 8 << 20).unwrap();
        let report = store.check().unwrap();
        assert!(report.is_consistent(), "{report}");
        assert!(report.manifest.starts_with("3 changes behind"), "{report}");
        drop(store);
        let store = Store::open(&store_dir, 8 << 20).unwrap();
        drop(store);
        let store = Store::open_for_maintenance(&store_dir, 8 << 20).unwrap();
        assert_eq!(store.check().unwrap().manifest, "matches");
    }

    #[test]
    fn records_that_do_not_match_the_stores_account_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        store_with_jobs(dir.path(), 1);
        {
            let store = Store::open_for_maintenance(dir.path(), 8 << 20).unwrap();
            // A record that no change counted, as if sled had kept a write it should not have.
            store.trees().jobs.insert("stray", b"x".as_slice()).unwrap();
            // On disk before the store closes (sled's own flusher may not have run yet).
            store.trees().jobs.flush().unwrap();
        }
        let damage = damage_of(Store::open(dir.path(), 8 << 20));
        assert!(
            damage.contains("do not match its own account")
                && damage.contains("jobs: 2 entries, 1 counted"),
            "{damage}"
        );
    }

    /// What sled does when it loses the blob file that held a job record's latest version: it serves
    /// the version before, which the account does not see (same entries) but the indexes and the
    /// executions written with the later version do.
    #[test]
    fn a_job_record_older_than_its_indexes_and_executions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8 << 20).unwrap();
            let (older, mut execs) = job("j1", None, &["t1", "t2"]);
            put_job(&store, &older, &execs);
            let mut canceled = older.clone();
            canceled.status = JobStatus::Canceled;
            execs[0].status = ExecutionStatus::Canceled;
            canceled
                .counts
                .shift(ExecutionStatus::Queued, ExecutionStatus::Canceled);
            store
                .commit(&Change {
                    job_before: Some(&older),
                    job_after: Some(&canceled),
                    put_executions: &execs[..1],
                    ..Default::default()
                })
                .unwrap();
            // The record goes back to its version before the cancel; the rest of the store does not.
            store
                .trees()
                .jobs
                .insert(codec::job_key("j1"), codec::encode(&older))
                .unwrap();
            store.close().unwrap();
        }
        let damage = damage_of(Store::open(dir.path(), 8 << 20));
        assert!(
            damage.starts_with("its job records do not agree with the indexes and executions")
                && damage
                    .contains("job j1: its record says IN_PROGRESS, but the status index does not")
                && damage.contains("job j1: counts")
                && damage.contains("status index: j1 is CANCELED, but its record says IN_PROGRESS")
                && damage.contains("sled falls back to an earlier version of a job record"),
            "{damage}"
        );
        let damage = damage_of(Store::open_for_maintenance(dir.path(), 8 << 20));
        assert!(damage.contains("job j1"), "{damage}");
    }

    #[test]
    fn a_missing_db_is_refused_and_not_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        store_with_jobs(dir.path(), 1);
        std::fs::remove_file(dir.path().join("db")).unwrap();
        let damage = damage_of(Store::open(dir.path(), 8 << 20));
        assert!(damage.starts_with("db is missing"), "{damage}");
        assert!(!dir.path().join("db").exists());
    }

    #[test]
    fn a_store_in_use_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let _running = Store::open(dir.path(), 8 << 20).unwrap();
        let refused = Store::open_for_maintenance(dir.path(), 8 << 20)
            .err()
            .unwrap();
        assert!(matches!(refused, StoreError::InUse { .. }), "{refused}");
        assert!(refused.to_string().contains("stop the gateway first"));
    }

    #[test]
    fn a_store_without_an_account_gets_one_from_its_records() {
        let dir = tempfile::tempdir().unwrap();
        store_with_jobs(dir.path(), 3);
        {
            // What format 2 wrote: no account, no manifest.
            let store = Store::open_for_maintenance(dir.path(), 8 << 20).unwrap();
            store.trees().db.remove(meta::META_KEY).unwrap();
            store.trees().db.insert(FORMAT_KEY, &[2]).unwrap();
            store.trees().db.flush().unwrap();
        }
        std::fs::remove_file(manifest::path(dir.path())).unwrap();
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        let summary = store.summary().unwrap();
        assert_eq!((summary.jobs, summary.executions), (3, 3));
        assert_eq!(
            store.trees().db.get(FORMAT_KEY).unwrap().unwrap().as_ref(),
            &[STORE_FORMAT]
        );
        store.close().unwrap();
        assert!(manifest::read(dir.path()).unwrap().is_some());
    }
}
