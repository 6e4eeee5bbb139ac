//! The store's life: one open sled database at a time, taken out of service when writing to it fails and
//! reopened from the disk when it can be written again.
//!
//! sled 0.34 cannot recover from a failed write in place. Its first I/O error (a full disk, above all)
//! becomes a global error: from then on every write fails, while reads still show what was written in
//! memory and never reached the disk, so a CreateJob refused for want of space stayed visible until a
//! restart. The store therefore takes the database out of service at the first such error: every call
//! answers [`StoreError::Unavailable`] and nothing written since the last successful flush can be read.
//! A background thread reopens the database from the disk once there is room again (sled's recovery keeps
//! a transaction whole or not at all, so it finds the last durable state), proves with a write that it
//! can write, and service resumes without a restart. A store that cannot be reopened for any other reason
//! than I/O (it is damaged) is [`Health::Fatal`]: the daemon then exits non-zero so that the service
//! manager restarts it.
//!
//! The same thread flushes every [`TICK`], on top of sled's own flusher (which also compacts the log), so
//! a flush that fails is noticed within one tick even when no request writes; after each flush that
//! made new changes durable it writes the manifest ([`super::manifest`]).
//!
//! Opening, at start-up and after a failure alike, goes through [`damage::open_verified`]: a store that
//! is damaged, or has lost changes its manifest recorded, is refused with what is wrong.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sled::Tree;
use tokio::sync::watch;

use super::damage::{self, Verified};
use super::manifest::{self, Manifest, Standing};
use super::meta::{Counts, Meta, META_KEY, TREES};
use super::pending::PendingIndex;
use super::{Result, StoreError};

/// How often the background thread flushes, and checks whether a failed store can be reopened.
const TICK: Duration = Duration::from_millis(500);
/// A failed store is reopened only when its file system has at least this much room: sled starts a new
/// 512 KiB segment when it runs out, and a reopened store that fails at once helps nobody.
const ROOM_TO_REOPEN: u64 = 1 << 20;
/// The first wait between two attempts to reopen a failed store; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a reopen waits for the calls still running on the failed database to let go of it.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The store format this release writes, kept in the default tree under [`FORMAT_KEY`]. Format 1 indexed
/// finished executions in `by_thing` too; opening such a store drops those entries. Format 2 had no
/// account of itself ([`Meta`]); opening such a store counts its entries and starts one. A release that
/// reads format 2 only would not keep the account, so it refuses format 3. Format 4 writes recovery
/// records of record format 2 (with the acknowledgement's payload), which a release reading format 3
/// could not decode, so it refuses format 4; a format 3 store needs no rewrite (its recoveries read as
/// having no acknowledgement payload). Format 5 indexes every execution by thing (`thing_executions`,
/// for ListJobExecutionsForThing) and counts that tree in its account: opening an older store builds the
/// index from the executions and carries its account over (`upgrade`); its recoveries may have the
/// reasons of CancelJobExecution and DeleteJobExecution, which a release reading format 4 could not
/// decode. Format 6 keeps a job's targets apart from its record (`job_targets`), so that the record, which
/// every execution's change rewrites, stays small: opening an older store moves them out (`upgrade`),
/// and a release reading format 5 would find jobs without targets, so it refuses format 6.
pub(super) const STORE_FORMAT: u8 = 6;
pub(super) const FORMAT_KEY: &[u8] = b"sprig-store-format";

/// Whether the store can serve, as the daemon watches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Open and writable.
    Serving,
    /// Out of service after a failed write (the cause); sprig reopens it when it can.
    Failed(String),
    /// It cannot be reopened (the cause): the gateway must stop.
    Fatal(String),
}

/// One open sled database and its trees.
pub(super) struct Trees {
    pub db: sled::Db,
    pub jobs: Tree,
    pub executions: Tree,
    pub by_thing: Tree,
    pub by_status: Tree,
    pub by_namespace: Tree,
    pub by_deadline: Tree,
    pub recoveries: Tree,
    pub open_recoveries: Tree,
    pub sessions: Tree,
    pub thing_executions: Tree,
    pub job_targets: Tree,
    /// Each thing's pending executions, as these trees hold them.
    pub pending: PendingIndex,
}

impl Trees {
    /// Opens the database in `dir` (creating it if needed) and brings an older format up to date.
    /// `background`: let sled flush (and compact its log) on its own thread.
    pub fn open(dir: &Path, cache_bytes: u64, background: bool) -> Result<Trees> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(background.then_some(TICK.as_millis() as u64))
            .open()?;
        let trees = Trees {
            jobs: db.open_tree(TREES[0])?,
            executions: db.open_tree(TREES[1])?,
            by_thing: db.open_tree(TREES[2])?,
            by_status: db.open_tree(TREES[3])?,
            by_namespace: db.open_tree(TREES[4])?,
            by_deadline: db.open_tree(TREES[5])?,
            recoveries: db.open_tree(TREES[6])?,
            open_recoveries: db.open_tree(TREES[7])?,
            sessions: db.open_tree(TREES[8])?,
            thing_executions: db.open_tree(TREES[9])?,
            job_targets: db.open_tree(TREES[10])?,
            pending: PendingIndex::default(),
            db,
        };
        trees.bring_up_to_date(dir)?;
        Ok(trees)
    }

    /// Writes the format (and the account) of a new store, or upgrades an older one.
    fn bring_up_to_date(&self, dir: &Path) -> Result<()> {
        match self.db.get(FORMAT_KEY)?.and_then(|f| f.first().copied()) {
            Some(found) if found > STORE_FORMAT => Err(StoreError::TooNew {
                path: dir.display().to_string(),
                found,
                supported: STORE_FORMAT,
            }),
            Some(STORE_FORMAT) => Ok(()),
            None => {
                // A new store. (One that lost its format key but kept records is caught by the walk:
                // its account of zero entries does not match them.)
                self.db
                    .insert(META_KEY, Meta::new(Counts::default()).encode())?;
                self.db.insert(FORMAT_KEY, &[STORE_FORMAT])?;
                Ok(())
            }
            Some(older) => {
                if older == 1 {
                    super::upgrade::drop_finished_from_thing_index(&self.by_thing)?;
                }
                if older <= 4 {
                    super::upgrade::index_executions_by_thing(
                        &self.executions,
                        &self.thing_executions,
                    )?;
                }
                if older <= 5 {
                    super::upgrade::move_targets_out(&self.jobs, &self.job_targets)?;
                }
                // The upgrade is a change of its own; an account already there keeps its store id.
                let mut meta = Meta::new(self.walk_counts()?);
                if let Some(kept) = super::upgrade::kept_meta(&self.db)? {
                    meta.store_id = kept.store_id;
                    meta.generation = kept.generation + 1;
                }
                self.db.insert(META_KEY, meta.encode())?;
                self.db.insert(FORMAT_KEY, &[STORE_FORMAT])?;
                self.db.flush()?;
                Ok(())
            }
        }
    }

    /// Makes every committed change durable (fsync), counting what the flush wrote and how long it took
    /// in the process's metrics.
    pub fn flush(&self) -> Result<()> {
        let started = Instant::now();
        let written = self.db.flush()?;
        if written > 0 {
            let metrics = crate::metrics::get();
            metrics.store_flushed_bytes.inc_by(written as u64);
            metrics
                .store_flush_duration
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// sprig's trees, in the order of [`TREES`].
    pub fn all(&self) -> [&Tree; TREES.len()] {
        [
            &self.jobs,
            &self.executions,
            &self.by_thing,
            &self.by_status,
            &self.by_namespace,
            &self.by_deadline,
            &self.recoveries,
            &self.open_recoveries,
            &self.sessions,
            &self.thing_executions,
            &self.job_targets,
        ]
    }

    /// The entries of every tree, counted by reading them all (which also reads every page sled has).
    pub fn walk_counts(&self) -> Result<Counts> {
        let mut counts = Counts::default();
        for (count, tree) in counts.0.iter_mut().zip(self.all()) {
            for entry in tree.iter() {
                entry?;
                *count += 1;
            }
        }
        Ok(counts)
    }

    /// The store's account ([`Meta`]) as it is kept.
    pub fn meta(&self) -> Result<Meta> {
        let what = || "the store's account of itself (sprig-meta)".to_owned();
        let bytes = self.db.get(META_KEY)?.ok_or_else(|| StoreError::Codec {
            what: what(),
            source: super::codec::CodecError::Empty,
        })?;
        Meta::decode(&bytes).map_err(|source| StoreError::Codec {
            what: what(),
            source,
        })
    }

    /// The account, proved by a walk of every tree; `Ok(Err(damage))` when the records do not match it.
    pub fn account(&self) -> Result<std::result::Result<Meta, String>> {
        let walked = self.walk_counts()?;
        let meta = self.meta()?;
        let differences: Vec<String> = walked
            .differences(&meta.counts)
            .map(|(tree, found, kept)| format!("{tree}: {found} entries, {kept} counted"))
            .collect();
        if differences.is_empty() {
            return Ok(Ok(meta));
        }
        Ok(Err(format!(
            "its records do not match its own account of them ({})",
            differences.join(", ")
        )))
    }
}

/// Where the store is in its life.
enum State {
    Open(Arc<Trees>),
    Failed(Failure),
    /// Cannot be reopened; `cause` says why.
    Fatal(String),
    /// Shut down by [`Handle::close`].
    Closed,
}

/// A store out of service.
struct Failure {
    cause: String,
    /// The failed database, until the reopen lets go of it (sled's file lock goes with the last handle).
    stale: Option<Arc<Trees>>,
    next_attempt: Instant,
    backoff: Duration,
}

/// The open database behind a [`Store`](super::Store) and what shares it (the session tree, the
/// background thread).
pub(super) struct Handle {
    path: PathBuf,
    cache_bytes: u64,
    /// A gateway's store (sled's own flusher and the manifest kept up to date) or a maintenance
    /// command's (nothing written in the background, the manifest written when asked).
    serving: bool,
    /// (store id, generation) of the manifest on disk, so that a flush without new changes does not
    /// write it again.
    manifest_at: Mutex<Option<(u64, u64)>>,
    state: RwLock<State>,
    /// Held by the one reopen under way.
    reopening: Mutex<()>,
    health: watch::Sender<Health>,
}

impl Handle {
    /// Opens the store in `path`, proved whole (see [`damage`]). `serving`: for a gateway, which keeps the
    /// manifest up to date from now on; else for a maintenance command.
    pub fn open(path: &Path, cache_bytes: u64, serving: bool) -> Result<Handle> {
        let started = Instant::now();
        let verified = damage::open_verified(path, cache_bytes, serving)?;
        tracing::info!(
            store = %path.display(),
            changes = verified.meta.generation,
            entries = verified.meta.counts.0.iter().sum::<u64>(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "jobs store opened: every entry read, matching its account"
        );
        let manifest_at = match verified.standing {
            Some(Standing::Matches) => Some((verified.meta.store_id, verified.meta.generation)),
            _ => None,
        };
        note_standing(path, &verified);
        let handle = Handle {
            path: path.to_owned(),
            cache_bytes,
            serving,
            manifest_at: Mutex::new(manifest_at),
            state: RwLock::new(State::Open(Arc::new(verified.trees))),
            reopening: Mutex::new(()),
            health: watch::channel(Health::Serving).0,
        };
        if serving {
            // A new store gets its manifest at once: a db deleted before the first change is caught too.
            handle.checkpoint_lagging_allowed()?;
        }
        Ok(handle)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// The open database, or why there is none.
    pub fn trees(&self) -> Result<Arc<Trees>> {
        match &*self.read_state() {
            State::Open(trees) => Ok(trees.clone()),
            State::Failed(failure) => Err(self.unavailable(&failure.cause)),
            State::Fatal(cause) => Err(self.unavailable(cause)),
            State::Closed => Err(self.unavailable("the store is closed")),
        }
    }

    /// Runs `op` on the open database; a storage failure takes the database out of service.
    pub fn run<T>(&self, op: impl FnOnce(&Arc<Trees>) -> Result<T>) -> Result<T> {
        let trees = self.trees()?;
        let outcome = op(&trees);
        self.checked(&trees, outcome)
    }

    /// `outcome` of a call on `trees`, with a storage failure turned into [`StoreError::Unavailable`]
    /// after taking `trees` out of service.
    pub fn checked<T>(&self, trees: &Arc<Trees>, outcome: Result<T>) -> Result<T> {
        match outcome {
            Err(StoreError::Sled(e)) if is_storage_failure(&e) => {
                let cause = describe(&e);
                self.fail(trees, &cause);
                Err(self.unavailable(&cause))
            }
            other => other,
        }
    }

    /// Makes every committed change durable (fsync).
    pub fn flush(&self) -> Result<()> {
        self.run(|trees| trees.flush())
    }

    /// Makes every committed change durable, then records the store's account in the manifest. The
    /// account is read before the flush, so the manifest never claims a change the disk does not hold.
    pub fn checkpoint(&self) -> Result<()> {
        self.run(|trees| {
            let meta = trees.meta()?;
            trees.flush()?;
            self.write_manifest(&meta)
        })
    }

    /// [`checkpoint`](Self::checkpoint), where a manifest that cannot be written is only logged: the
    /// changes are on disk, and a manifest that lags behind them is one the rule accepts.
    fn checkpoint_lagging_allowed(&self) -> Result<()> {
        self.checkpoint().or_else(|e| match e {
            StoreError::Files { .. } => {
                tracing::warn!(error = %e, "the store's manifest was not brought up to date");
                Ok(())
            }
            other => Err(other),
        })
    }

    fn write_manifest(&self, meta: &Meta) -> Result<()> {
        let mut written = self.manifest_at.lock().unwrap_or_else(|p| p.into_inner());
        if *written == Some((meta.store_id, meta.generation)) {
            return Ok(());
        }
        manifest::write(&self.path, &Manifest::of(meta, &self.path)).map_err(|source| {
            StoreError::Files {
                what: format!("cannot write {}", manifest::path(&self.path).display()),
                source,
            }
        })?;
        *written = Some((meta.store_id, meta.generation));
        Ok(())
    }

    /// Flushes (and writes the manifest) when open; tries to reopen when out of service and due. The
    /// background thread's work.
    fn tick(&self) {
        let failed = matches!(&*self.read_state(), State::Failed(_));
        if !failed {
            // A manifest that cannot be written only lags behind (the rule accepts a store ahead of
            // it); it is written again at the next tick.
            if let Err(e) = self.checkpoint() {
                tracing::debug!(error = %e, "periodic flush failed");
            }
            if let Ok(bytes) = self.run(|trees| Ok(trees.db.size_on_disk()?)) {
                crate::metrics::get().store_size.set(bytes as i64);
            }
            return;
        }
        let due = match &*self.read_state() {
            State::Failed(failure) => Instant::now() >= failure.next_attempt,
            _ => false,
        };
        if due && self.has_room() {
            self.reopen();
        }
    }

    /// Takes `trees` out of service, unless it already was (another call saw the failure first).
    fn fail(&self, trees: &Arc<Trees>, cause: &str) {
        let mut state = self.write_state();
        let State::Open(current) = &*state else {
            return;
        };
        if !Arc::ptr_eq(current, trees) {
            return;
        }
        tracing::error!(
            store = %self.path.display(),
            cause,
            "the jobs store cannot be written: it is out of service (requests get \
             ServiceUnavailableException) until it can be reopened; sprig retries as soon as the file \
             system has room"
        );
        *state = State::Failed(Failure {
            cause: cause.to_owned(),
            stale: Some(trees.clone()),
            next_attempt: Instant::now(),
            backoff: FIRST_BACKOFF,
        });
        self.health.send_replace(Health::Failed(cause.to_owned()));
    }

    /// Reopens a failed store from the disk: waits for the calls still running on the failed database to
    /// let go of it (new calls are refused meanwhile), lets sled close it, and opens it anew. The outcome
    /// is in the state and the health.
    fn reopen(&self) {
        let _one_at_a_time = self.reopening.lock().unwrap_or_else(|p| p.into_inner());
        let stale = match &mut *self.write_state() {
            State::Failed(failure) => failure.stale.take(),
            _ => return,
        };
        if let Some(stale) = stale {
            match release(stale) {
                // sled's own flush on drop fails at once: its global error is set.
                Ok(trees) => drop(trees),
                Err(stale) => {
                    if let State::Failed(failure) = &mut *self.write_state() {
                        failure.stale = Some(stale);
                        postpone(failure);
                    }
                    return;
                }
            }
        }
        let reopened = self.open_and_prove();
        let mut state = self.write_state();
        let State::Failed(failure) = &mut *state else {
            return;
        };
        match reopened {
            Ok(trees) => {
                tracing::info!(store = %self.path.display(), "the jobs store is back in service");
                *state = State::Open(Arc::new(trees));
                self.health.send_replace(Health::Serving);
            }
            Err(e) if is_transient(&e) => {
                tracing::warn!(store = %self.path.display(), error = %e, "the jobs store cannot be reopened yet");
                postpone(failure);
            }
            Err(e) => {
                let cause = e.to_string();
                tracing::error!(store = %self.path.display(), cause, "the jobs store cannot be reopened");
                *state = State::Fatal(cause.clone());
                self.health.send_replace(Health::Fatal(cause));
            }
        }
    }

    /// Opens the database and proves that it can write (a write and a flush), so that a store whose file
    /// system is still full is not declared back in service.
    fn open_and_prove(&self) -> Result<Trees> {
        let verified = damage::open_verified(&self.path, self.cache_bytes, self.serving)?;
        note_standing(&self.path, &verified);
        let trees = verified.trees;
        trees.db.insert(FORMAT_KEY, &[STORE_FORMAT])?;
        trees.db.flush()?;
        Ok(trees)
    }

    /// Makes what was written durable and takes the store out of service for good. A failed store gets a
    /// last chance to be reopened first (space may be back).
    pub fn close(&self) -> Result<()> {
        if matches!(&*self.read_state(), State::Failed(_)) {
            self.reopen();
        }
        let flushed = if self.serving {
            self.checkpoint_lagging_allowed()
        } else {
            self.flush()
        };
        let previous = std::mem::replace(&mut *self.write_state(), State::Closed);
        if let State::Open(trees) = previous {
            // Waits for the calls still running, then lets sled close its files.
            if let Ok(trees) = release(trees) {
                drop(trees);
            }
        }
        flushed
    }

    fn has_room(&self) -> bool {
        fs2::available_space(&self.path).map_or(true, |free| free >= ROOM_TO_REOPEN)
    }

    fn unavailable(&self, cause: &str) -> StoreError {
        StoreError::Unavailable {
            path: self.path.clone(),
            cause: cause.to_owned(),
        }
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // The state is replaced whole; a panic elsewhere cannot leave it half-written.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The next attempt to reopen comes later, each time twice as late, up to [`MAX_BACKOFF`].
fn postpone(failure: &mut Failure) {
    failure.next_attempt = Instant::now() + failure.backoff;
    failure.backoff = (failure.backoff * 2).min(MAX_BACKOFF);
}

/// `trees` once every other holder (a call still running, an iterator) has let go, or back if they have
/// not within [`RELEASE_WAIT`].
fn release(mut trees: Arc<Trees>) -> std::result::Result<Trees, Arc<Trees>> {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        match Arc::try_unwrap(trees) {
            Ok(trees) => return Ok(trees),
            Err(shared) if Instant::now() < deadline => {
                trees = shared;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(shared) => return Err(shared),
        }
    }
}

/// An error that means the database can no longer be trusted to write (as opposed to a bad argument).
fn is_storage_failure(error: &sled::Error) -> bool {
    matches!(
        error,
        sled::Error::Io(_) | sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)
    )
}

/// An error worth retrying a reopen after: I/O (space, a lock not yet released), not damage.
fn is_transient(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Sled(sled::Error::Io(_)) | StoreError::InUse { .. }
    )
}

/// Logs how a store that opened stands to its manifest, where that is worth a line.
fn note_standing(path: &Path, verified: &Verified) {
    match verified.standing {
        None if verified.meta.generation > 0 => tracing::warn!(
            store = %path.display(),
            "the jobs store has no manifest ({}): it was checked against its own account alone (a \
             gateway writes a new manifest)",
            manifest::FILE
        ),
        Some(Standing::Ahead(changes)) => tracing::info!(
            store = %path.display(),
            changes,
            "the jobs store holds changes made after its manifest was last written (the gateway \
             stopped before its next flush)"
        ),
        _ => {}
    }
}

/// sled's error in words. sled wraps an I/O error in another whose message is the first one's `Debug`
/// text; a full disk is by far the likeliest, and is named plainly.
pub(super) fn describe(error: &sled::Error) -> String {
    match error {
        sled::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
            "no space left on the device".to_owned()
        }
        sled::Error::Io(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// The thread that flushes a store every [`TICK`] and reopens it after a failure; stopped when dropped.
pub(super) struct Background {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn start(handle: Arc<Handle>) -> Background {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sprig-store".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    handle.tick();
                }
            })
            .expect("spawn the store's background thread");
        Background {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `key` to sled's default tree, which the store's account does not count.
    fn put(handle: &Handle, key: &str) -> Result<()> {
        handle.run(|trees| {
            trees.db.insert(key, b"x".as_slice())?;
            trees.db.flush()?;
            Ok(())
        })
    }

    fn has(handle: &Handle, key: &str) -> bool {
        handle.run(|trees| Ok(trees.db.contains_key(key)?)).unwrap()
    }

    /// Takes the open database out of service as a failed write would.
    fn fail(handle: &Handle, cause: &str) {
        let trees = handle.trees().unwrap();
        handle.fail(&trees, cause);
    }

    #[test]
    fn a_failed_store_refuses_every_call_until_it_is_reopened_from_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let handle = Handle::open(dir.path(), 1 << 20, true).unwrap();
        put(&handle, "before").unwrap();
        fail(&handle, "no space left on the device");

        let refused = put(&handle, "during").unwrap_err();
        assert!(refused.is_unavailable(), "{refused}");
        assert!(
            refused.to_string().contains("no space left on the device")
                && refused
                    .to_string()
                    .contains(&dir.path().display().to_string()),
            "{refused}"
        );
        assert!(handle.trees().is_err());
        assert_eq!(
            *handle.health().borrow(),
            Health::Failed("no space left on the device".into())
        );

        handle.reopen();
        assert_eq!(*handle.health().borrow(), Health::Serving);
        assert!(has(&handle, "before"));
        assert!(!has(&handle, "during"));
        put(&handle, "after").unwrap();
    }

    #[test]
    fn a_storage_error_takes_the_store_out_of_service_once() {
        let dir = tempfile::tempdir().unwrap();
        let handle = Handle::open(dir.path(), 1 << 20, true).unwrap();
        let trees = handle.trees().unwrap();
        let full = || {
            let error = std::io::Error::new(std::io::ErrorKind::StorageFull, "full");
            Err::<(), _>(StoreError::Sled(sled::Error::Io(error)))
        };
        let first = handle.checked(&trees, full()).unwrap_err();
        assert!(first.is_unavailable(), "{first}");
        // A second call on the same failed database does not fail the store again.
        let other = std::io::Error::other("later");
        let second = handle.checked(
            &trees,
            Err::<(), _>(StoreError::Sled(sled::Error::Io(other))),
        );
        assert!(second.unwrap_err().is_unavailable());
        assert_eq!(
            *handle.health().borrow(),
            Health::Failed("no space left on the device".into())
        );
        // Errors that are not about storage (a record that does not decode) leave it in service.
        drop(trees);
        handle.reopen();
        let trees = handle.trees().unwrap();
        let codec = StoreError::Codec {
            what: "job j".into(),
            source: super::super::codec::CodecError::Empty,
        };
        assert!(!handle
            .checked(&trees, Err::<(), _>(codec))
            .unwrap_err()
            .is_unavailable());
        assert_eq!(*handle.health().borrow(), Health::Serving);
    }

    #[test]
    fn a_store_damaged_while_out_of_service_cannot_continue() {
        let dir = tempfile::tempdir().unwrap();
        let handle = Handle::open(dir.path(), 1 << 20, true).unwrap();
        put(&handle, "before").unwrap();
        fail(&handle, "no space left on the device");
        std::fs::write(dir.path().join("conf"), "segment_size: ??????\n1234").unwrap();

        handle.reopen();
        assert!(
            matches!(&*handle.health().borrow(), Health::Fatal(_)),
            "{:?}",
            *handle.health().borrow()
        );
        assert!(put(&handle, "after").unwrap_err().is_unavailable());
    }

    #[test]
    fn closing_a_failed_store_reopens_it_first_when_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let handle = Handle::open(dir.path(), 1 << 20, true).unwrap();
        put(&handle, "before").unwrap();
        fail(&handle, "no space left on the device");
        handle.close().unwrap();
        assert!(handle.trees().is_err());

        let reopened = Handle::open(dir.path(), 1 << 20, true).unwrap();
        assert!(has(&reopened, "before"));
    }
}
