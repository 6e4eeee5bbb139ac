//! Devices' writes (StartNextPendingJobExecution, UpdateJobExecution) committed in groups: the requests
//! that arrive together share one store transaction.
//!
//! Every sled 0.34 transaction writes the log to the disk twice, at once (`pin_log` rolls the log buffer
//! before and after its batch marker, and each buffer write is followed by `sync_file_range`), so one
//! costs at least two pages of the SD card however small it is (README, Benchmarks: "SD-card wear").
//! So a request does not commit by itself. It joins a queue and waits until its group closes: when the
//! group is as large as the writers that can be in flight at once (the device API's workers, each
//! answering its things' requests in order), or `window` after the group's first request, whichever
//! comes first. Then it takes the store's write lock; whoever gets the lock first with its request still
//! queued (the leader) takes every queued request, applies them one after the other (each sees the job
//! as the ones before it left it), and commits the executions of each job with the job's record in one
//! transaction (`Engine::commit_execution_group`), then hands each request its answer. The others find
//! their answer once they have the lock. A group is answered only once it is committed, as a single
//! request was.
//!
//! A group holds at most one request per thing (the thing index and the execution a request reads are
//! then the store's, untouched by the group); a thing's second request waits for the next group.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Result;
use crate::jobs::clock::now_ms;
use crate::jobs::engine::{Engine, ExecutionGroup};
use crate::jobs::error::{DeviceError, DeviceErrorCode};
use crate::jobs::transitions::{self, DeviceUpdate, ExecutionChange};
use crate::model::{Execution, Job};

/// Executions one group's transaction writes at most (sled holds the leaves a transaction rewrites in
/// memory until it commits: README, Benchmarks, "CreateJob's memory").
const MOST_PER_GROUP: usize = 500;

/// A device's write, as queued.
pub(super) enum Write {
    /// StartNextPendingJobExecution.
    StartNext {
        thing: String,
        namespace: Option<String>,
        status_details: Option<std::collections::BTreeMap<String, String>>,
        step_deadline: Option<i64>,
    },
    /// UpdateJobExecution of `job_id`.
    Update {
        thing: String,
        namespace: Option<String>,
        job_id: String,
        update: DeviceUpdate,
    },
}

impl Write {
    fn thing(&self) -> &str {
        match self {
            Write::StartNext { thing, .. } | Write::Update { thing, .. } => thing,
        }
    }
}

/// What a write came to: the execution and its job as stored after it (as they were, for a StartNext
/// whose next execution was already IN_PROGRESS); `None`: StartNext found nothing pending.
pub(super) type Written = Result<Option<(Execution, Arc<Job>)>>;

type Answer = Arc<Mutex<Option<Written>>>;

/// The devices' writes waiting for their group to close and for the store's write lock.
#[derive(Debug, Default)]
pub(crate) struct DeviceWrites {
    queue: Mutex<Queue>,
    /// Rung when a group closes early (it is full) or is taken.
    closed: Condvar,
    /// How long a group stays open after its first write.
    window: Duration,
    /// A group this large closes at once: no more writers can be in flight.
    writers: usize,
}

#[derive(Debug, Default)]
struct Queue {
    writes: Vec<Queued>,
    /// The group the queued writes belong to (counted from the first).
    group: u64,
    /// When it closes.
    closes: Option<Instant>,
}

struct Queued {
    write: Write,
    answer: Answer,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("thing", &self.write.thing())
            .finish()
    }
}

impl DeviceWrites {
    /// A group takes the writes that arrive within `window` of its first (`jobs.device_write_window_ms`),
    /// and closes at once when it has `writers` of them (as many as can be in flight at once).
    pub(crate) fn new(window: Duration, writers: usize) -> DeviceWrites {
        DeviceWrites {
            window,
            writers: writers.max(1),
            ..DeviceWrites::default()
        }
    }

    /// Writes queued and not yet taken by a group.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue().writes.len()
    }

    /// Queues a write and waits until its group closes.
    fn join(&self, queued: Queued) {
        let mut queue = self.queue();
        if queue.writes.is_empty() {
            queue.group += 1;
            queue.closes = Some(Instant::now() + self.window);
        }
        let group = queue.group;
        queue.writes.push(queued);
        if queue.writes.len() >= self.writers {
            queue.closes = Some(Instant::now());
            self.closed.notify_all();
        }
        loop {
            let open_for = match queue.closes {
                Some(closes) if queue.group == group => {
                    closes.saturating_duration_since(Instant::now())
                }
                _ => Duration::ZERO,
            };
            if open_for.is_zero() {
                return;
            }
            queue = self
                .closed
                .wait_timeout(queue, open_for)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Every write queued, for the group that takes them.
    fn take_all(&self) -> Vec<Queued> {
        let mut queue = self.queue();
        queue.closes = None;
        self.closed.notify_all();
        std::mem::take(&mut queue.writes)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Pushes and takes leave the queue whole: carry on after a panic elsewhere.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn take(answer: &Answer) -> Option<Written> {
    answer.lock().unwrap_or_else(|p| p.into_inner()).take()
}

fn give(answer: &Answer, written: Written) {
    *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(written);
}

/// One job's part of a group: its record before the group, its changes, who asked for each.
struct JobGroup {
    before: Arc<Job>,
    changes: ExecutionGroup,
    answers: Vec<Answer>,
}

impl Engine {
    /// Applies `write` with the others queued meanwhile, in one transaction per job (blocking).
    pub(super) fn device_write(&self, write: Write) -> Written {
        let answer: Answer = Arc::default();
        self.device_writes.join(Queued {
            write,
            answer: answer.clone(),
        });
        let _writer = self.store().lock_writes();
        if let Some(written) = take(&answer) {
            return written;
        }
        let mut queued = self.device_writes.take_all();
        while !queued.is_empty() {
            let mut things = HashSet::new();
            let (group, later): (Vec<Queued>, Vec<Queued>) = queued.into_iter().partition(|q| {
                things.len() < MOST_PER_GROUP && things.insert(q.write.thing().to_owned())
            });
            self.apply_group(group);
            queued = later;
        }
        // Taken by a leader that panicked before it answered.
        take(&answer).unwrap_or_else(|| {
            Err(DeviceError::new(
                DeviceErrorCode::InternalError,
                "internal error",
            ))
        })
    }

    /// Works out each write of `group` against the store and the group's earlier writes, commits, answers.
    fn apply_group(&self, group: Vec<Queued>) {
        let now = now_ms();
        let mut jobs: HashMap<String, JobGroup> = HashMap::new();
        let mut order = Vec::new();
        for Queued { write, answer } in group {
            let (before, change) = match self.change_of(write, &jobs, now) {
                Ok(Found::Change(before, change)) => (before, *change),
                Ok(Found::Nothing) => {
                    give(&answer, Ok(None));
                    continue;
                }
                Ok(Found::Unchanged(execution, job)) => {
                    give(&answer, Ok(Some((execution, job))));
                    continue;
                }
                Err(e) => {
                    give(&answer, Err(e));
                    continue;
                }
            };
            let job_id = change.job.job_id.clone();
            let entry = jobs.entry(job_id.clone()).or_insert_with(|| {
                order.push(job_id);
                JobGroup {
                    changes: ExecutionGroup::new(&before),
                    before,
                    answers: Vec::new(),
                }
            });
            entry.changes.push(change);
            entry.answers.push(answer);
        }
        for job_id in order {
            let Some(group) = jobs.remove(&job_id) else {
                continue;
            };
            match self.commit_execution_group(&group.before, group.changes) {
                Ok((job, executions)) => {
                    let job = Arc::new(job);
                    for (answer, execution) in group.answers.iter().zip(executions) {
                        give(answer, Ok(Some((execution, job.clone()))));
                    }
                }
                Err(e) => {
                    let e = DeviceError::from(e);
                    for answer in &group.answers {
                        give(answer, Err(e.clone()));
                    }
                }
            }
        }
    }

    /// The change `write` makes: of its job as the group's earlier writes left it, returned with the
    /// record the group starts from.
    fn change_of(
        &self,
        write: Write,
        group: &HashMap<String, JobGroup>,
        now: i64,
    ) -> Result<Found> {
        let current = |stored: Arc<Job>| match group.get(&stored.job_id) {
            Some(g) => Current::Grouped(g.before.clone(), &g.changes.job),
            None => Current::Stored(stored),
        };
        match write {
            Write::StartNext {
                thing,
                namespace,
                status_details,
                step_deadline,
            } => {
                let Some((execution, stored)) = self.next_pending(&thing, namespace.as_deref())?
                else {
                    return Ok(Found::Nothing);
                };
                let current = current(stored);
                let started = transitions::start_execution(
                    current.job(),
                    &execution,
                    status_details,
                    step_deadline,
                    now,
                );
                match started {
                    Some(change) => Ok(Found::Change(current.before(), Box::new(change))),
                    None => Ok(Found::Unchanged(execution, current.before())),
                }
            }
            Write::Update {
                thing,
                namespace,
                job_id,
                update,
            } => {
                let (execution, stored) =
                    self.device_execution_of(&thing, namespace.as_deref(), &job_id)?;
                let current = current(stored);
                let change =
                    transitions::update_execution(current.job(), &execution, &update, now)?;
                Ok(Found::Change(current.before(), Box::new(change)))
            }
        }
    }
}

/// A write's job: as stored, or as the group's earlier writes left it (with the record before them).
enum Current<'a> {
    Stored(Arc<Job>),
    Grouped(Arc<Job>, &'a Job),
}

impl Current<'_> {
    fn job(&self) -> &Job {
        match self {
            Current::Stored(job) => job,
            Current::Grouped(_, job) => job,
        }
    }

    /// The record the group starts from.
    fn before(&self) -> Arc<Job> {
        match self {
            Current::Stored(job) | Current::Grouped(job, _) => job.clone(),
        }
    }
}

/// What a queued write found.
enum Found {
    /// StartNext: nothing pending.
    Nothing,
    /// StartNext: the next execution was already started; with its job.
    Unchanged(Execution, Arc<Job>),
    /// A change, with the job's record as the group starts from it.
    Change(Arc<Job>, Box<ExecutionChange>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(thing: &str) -> Queued {
        Queued {
            write: Write::StartNext {
                thing: thing.into(),
                namespace: None,
                status_details: None,
                step_deadline: None,
            },
            answer: Answer::default(),
        }
    }

    #[test]
    fn a_group_closes_when_it_is_full_or_when_its_window_ends() {
        let writes = Arc::new(DeviceWrites::new(Duration::from_secs(30), 3));
        let started = Instant::now();
        let joining: Vec<_> = (0..3)
            .map(|i| {
                let writes = writes.clone();
                std::thread::spawn(move || writes.join(queued(&format!("t{i}"))))
            })
            .collect();
        joining.into_iter().for_each(|j| j.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(writes.take_all().len(), 3);

        let writes = DeviceWrites::new(Duration::from_millis(50), 3);
        let started = Instant::now();
        writes.join(queued("t0"));
        assert!(started.elapsed() >= Duration::from_millis(50));
        // A write that comes while a closed group waits for the lock joins it without waiting.
        let started = Instant::now();
        writes.join(queued("t1"));
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(writes.take_all().len(), 2);
    }
}
