//! The jobs store: jobs and their executions in a sled database on disk, with the indexes the engine needs.
//!
//! Eight trees: `jobs` (job id → job, without its targets), `job_targets` (job id → its targets, written
//! once, when its creation ends, so that the record every change of one of its executions rewrites stays
//! small), `executions` (job id ∖0 thing → execution), and five indexes,
//! `by_thing` (thing ∖0 job id → execution status, for pending executions only: what devices ask for is
//! their pending work, and a thing's history of finished executions only grows), `thing_executions`
//! (thing ∖0 job id, for every execution: an operator's ListJobExecutionsForThing, kept apart so that the
//! devices' walks never step over a thing's history; written when an execution is created or removed,
//! never when it changes), `by_status` (status byte, job id), `by_namespace` (namespace ∖0 job id) and
//! `by_deadline` (step deadline, job id ∖0 thing); plus `recoveries` (id → durable recovery) and `open_recoveries` (thing ∖0 id of those still PENDING); and, apart, the broker's persistent
//! MQTT sessions ([`sessions`]). Every state change is one
//! [`Change`], applied as one sled transaction over all the trees, so a crash at any moment leaves records and indexes agreeing; [`Store::check`] proves it
//! after the fact. sled transactions cannot scan, so callers find what to change first, under
//! [`Store::lock_writes`], and commit after: the lock makes read-check-write sequences atomic without
//! putting scans inside transactions. All calls block (sled does I/O): run them off the async runtime.
//! A write that fails (a full disk) takes the database out of service until it can be reopened from the
//! disk, so that nothing written after the last flush is ever read (`handle`); [`Store::health`] tells
//! the daemon.
//! [`Store`] here is the facade, each call run on the database open at the time; the work is in one module
//! per concern: [`codec`] (the layout of records and keys), `commit` (the one write path), `reads`,
//! `walk` (batched reads of an index), `check` (the consistency check), `upgrade` (older formats),
//! `damage` and `manifest` (a damaged or rolled-back store refused at open), `meta` (the account of
//! entries per tree), [`backup`], and [`sessions`] (the broker's tree).

pub mod backup;
mod check;
pub mod codec;
mod commit;
mod damage;
mod handle;
mod manifest;
mod meta;
mod pending;
mod reads;
pub mod sessions;
#[cfg(test)]
mod tests;
mod upgrade;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::{Execution, Job, JobStatus, RecoveryRecord};
use codec::CodecError;
use handle::{Background, Handle, Trees};
use meta::TreeIx;

pub use check::CheckReport;
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
    /// sled cannot read it, or it no longer holds what it held (see `damage`).
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
    /// Is the store out of service (see `handle`)? Its failure was logged once, when it happened.
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

    /// The bytes of the store's files on disk (as sled counts them: its log, snapshots and blobs).
    pub fn size_on_disk(&self) -> Result<u64> {
        self.handle.run(|t| Ok(t.db.size_on_disk()?))
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

    /// A job's record, without its targets (`targets` is empty: they are kept apart, as every change of
    /// one of its executions rewrites the record; [`Store::job_targets`] reads them).
    pub fn job(&self, job_id: &str) -> Result<Option<Job>> {
        self.handle.run(|t| t.job(job_id))
    }

    /// A job's targets, in the order given (`None`: no such job, or one still being created).
    pub fn job_targets(&self, job_id: &str) -> Result<Option<Vec<String>>> {
        self.handle.run(|t| t.job_targets(job_id))
    }

    pub fn execution(&self, job_id: &str, thing_name: &str) -> Result<Option<Execution>> {
        self.handle.run(|t| t.execution(job_id, thing_name))
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

    /// Jobs in id order, starting after `after`, without their targets. `namespace`: `None` = every job; `Some(None)` = standard
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

    /// The job ids of `thing_name`'s pending executions (QUEUED or IN_PROGRESS), in no particular order.
    pub fn pending_job_ids_of_thing(&self, thing_name: &str) -> Result<Vec<String>> {
        let pending = self.pending_executions_of_things(&[thing_name])?;
        let executions = pending.into_iter().flatten();
        Ok(executions.map(|e| e.job_id).collect())
    }

    /// Each thing's pending executions (QUEUED or IN_PROGRESS), in the things' order, each thing's in no
    /// particular order. Read from memory ([`pending`]: built on first use, kept up to date by every
    /// commit), not from the trees: a notification to 10,000 things asks this for every one of them.
    pub fn pending_executions_of_things(&self, things: &[&str]) -> Result<Vec<Vec<Execution>>> {
        self.handle.run(|t| t.pending.of_things(t, things))
    }

    /// The job ids of every execution of `thing_name`, pending or finished, in job id order, starting
    /// after `after` (from the `thing_executions` index: no execution is read).
    pub fn job_ids_of_thing_after<'a>(
        &'a self,
        thing_name: &str,
        after: Option<&str>,
    ) -> Box<dyn Iterator<Item = Result<String>> + 'a> {
        match self.handle.trees() {
            Ok(trees) => {
                let ids = trees.job_ids_of_thing_after(thing_name, after);
                Box::new(ids.map(move |id| self.handle.checked(&trees, id)))
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
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
    /// manifest. A panic in sled is reported as damage (see `damage::quietly`).
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
