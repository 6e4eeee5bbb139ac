//! Devices' writes (StartNextPendingJobExecution, UpdateJobExecution) committed in groups: the requests
//! that arrive while the store is busy with a write share the next transaction.
//!
//! Every sled 0.34 transaction writes the log to the disk twice, at once (`pin_log` rolls the log buffer
//! before and after its batch marker, and each buffer write is followed by `sync_file_range`), so one
//! costs at least two pages of the SD card however small it is: a 1,000-device job whose devices each
//! wrote IN_PROGRESS then SUCCEEDED in transactions of their own cost ~16 KiB per execution from that
//! alone (README, Benchmarks: "SD-card wear"). So a request does not commit by itself. It joins a queue
//! and takes the store's write lock; whoever gets the lock first with its request still queued (the
//! leader) takes every queued request, applies them one after the other (each sees the job as the ones
//! before it left it), and commits the executions of each job with the job's record in one transaction
//! (`Engine::commit_execution_group`), then hands each request its answer. The others find their
//! answer once they have the lock. Nothing waits for company: a lone request is its own group, as
//! before, and a group is answered only once it is committed, as a single request was.
//!
//! A group holds at most one request per thing (the thing index and the execution a request reads are
//! then the store's, untouched by the group); a thing's second request waits for the next group.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// The devices' writes waiting for the store's write lock, and how long a group stays open.
#[derive(Debug, Default)]
pub(crate) struct DeviceWrites {
    queue: Mutex<Queue>,
    window: Duration,
}

#[derive(Debug, Default)]
struct Queue {
    writes: Vec<Queued>,
    /// When the writes queued now stop waiting for company.
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
    /// A group takes the writes that arrive within `window` of its first (`jobs.device_write_window_ms`).
    pub(crate) fn new(window: Duration) -> DeviceWrites {
        DeviceWrites {
            window,
            ..DeviceWrites::default()
        }
    }

    /// Writes queued and not yet taken by a group.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue().writes.len()
    }

    /// Queues a write; returns when its group closes.
    fn push(&self, queued: Queued) -> Instant {
        let mut queue = self.queue();
        let closes = match queue.closes {
            Some(closes) if !queue.writes.is_empty() => closes,
            _ => Instant::now() + self.window,
        };
        queue.closes = Some(closes);
        queue.writes.push(queued);
        closes
    }

    /// Every write queued, for the group that takes them.
    fn take_all(&self) -> Vec<Queued> {
        std::mem::take(&mut self.queue().writes)
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
        let closes = self.device_writes.push(Queued {
            write,
            answer: answer.clone(),
        });
        std::thread::sleep(closes.saturating_duration_since(Instant::now()));
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
