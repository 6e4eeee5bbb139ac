//! Random command sequences against the rules, applied to an in-memory world as the engine applies them to
//! the store, checking after every command what must hold whatever the order: an execution's
//! versionNumber only grows, its status moves only as AWS allows, terminal states are absorbing, at most
//! `max_concurrent_deletions` jobs (and a namespace's own limit) are in DELETION_IN_PROGRESS, and a job's
//! counts agree with its executions.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::*;
use crate::model::ExecutionCounts;

const JOBS: usize = 4;
const THINGS: usize = 3;
const NAMESPACES: [Option<&str>; 3] = [None, Some("small"), Some("big")];

#[derive(Debug, Clone)]
enum Command {
    Create {
        job: usize,
        namespace: usize,
    },
    Delete {
        job: usize,
        force: bool,
    },
    DeleteBatch {
        job: usize,
        batch: usize,
    },
    Cancel {
        job: usize,
        force: bool,
    },
    StartNext {
        job: usize,
        thing: usize,
        minutes: Option<i64>,
    },
    Update {
        job: usize,
        thing: usize,
        status: usize,
        expected_version: Option<i64>,
    },
    Tick {
        ms: i64,
    },
    CancelExecution {
        job: usize,
        thing: usize,
        force: bool,
        expected_version: Option<i64>,
    },
    DeleteExecution {
        job: usize,
        thing: usize,
        force: bool,
    },
    UpdateJob {
        job: usize,
    },
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (0..JOBS, 0..NAMESPACES.len())
            .prop_map(|(job, namespace)| Command::Create { job, namespace }),
        (0..JOBS, any::<bool>()).prop_map(|(job, force)| Command::Delete { job, force }),
        (0..JOBS, 1..=THINGS).prop_map(|(job, batch)| Command::DeleteBatch { job, batch }),
        (0..JOBS, any::<bool>()).prop_map(|(job, force)| Command::Cancel { job, force }),
        (0..JOBS, 0..THINGS, proptest::option::of(1..3i64)).prop_map(|(job, thing, minutes)| {
            Command::StartNext {
                job,
                thing,
                minutes,
            }
        }),
        (0..JOBS, 0..THINGS, 0..4usize, proptest::option::of(1..5i64)).prop_map(
            |(job, thing, status, expected_version)| Command::Update {
                job,
                thing,
                status,
                expected_version
            }
        ),
        (0..200_000i64).prop_map(|ms| Command::Tick { ms }),
        (
            0..JOBS,
            0..THINGS,
            any::<bool>(),
            proptest::option::of(1..5i64)
        )
            .prop_map(|(job, thing, force, expected_version)| {
                Command::CancelExecution {
                    job,
                    thing,
                    force,
                    expected_version,
                }
            }),
        (0..JOBS, 0..THINGS, any::<bool>())
            .prop_map(|(job, thing, force)| Command::DeleteExecution { job, thing, force }),
        (0..JOBS).prop_map(|job| Command::UpdateJob { job }),
    ]
}

/// The store, as far as the rules are concerned.
#[derive(Debug, Default)]
struct World {
    now: i64,
    jobs: BTreeMap<String, Job>,
    executions: BTreeMap<(String, String), Execution>,
}

fn job_id(index: usize) -> String {
    format!("j{index}")
}

fn thing(index: usize) -> String {
    format!("t{index}")
}

fn limits() -> Limits {
    Limits {
        max_concurrent_deletions: 2,
        per_namespace: [("small".to_owned(), 1)].into(),
    }
}

impl World {
    fn executions_of(&self, job_id: &str) -> Vec<Execution> {
        self.executions
            .values()
            .filter(|e| e.job_id == job_id)
            .cloned()
            .collect()
    }

    fn deleting(&self) -> impl Iterator<Item = &Job> {
        self.jobs
            .values()
            .filter(|j| j.status == JobStatus::DeletionInProgress)
    }

    fn load(&self, namespace: Option<&str>) -> DeletionLoad {
        DeletionLoad {
            deleting: self.deleting().count(),
            deleting_in_namespace: self
                .deleting()
                .filter(|j| j.namespace_id.as_deref() == namespace)
                .count(),
        }
    }

    /// The job and the thing's execution of it, as an operator finds them.
    fn operator_view(&self, job: usize, thing_index: usize) -> Option<(Job, Execution)> {
        let job = self.jobs.get(&job_id(job))?;
        let execution = self
            .executions
            .get(&(job.job_id.clone(), thing(thing_index)))?;
        Some((job.clone(), execution.clone()))
    }

    /// The job and the thing's execution of it, if devices see the job (the engine's scope rule).
    fn device_view(&self, job: usize, thing_index: usize) -> Option<(Job, Execution)> {
        let job = self
            .jobs
            .get(&job_id(job))
            .filter(|j| j.status != JobStatus::DeletionInProgress)?;
        let execution = self
            .executions
            .get(&(job.job_id.clone(), thing(thing_index)))?;
        Some((job.clone(), execution.clone()))
    }

    fn run(&mut self, command: &Command) -> Option<(String, Transition)> {
        let now = self.now;
        let routed = |e: &Execution| e.thing_name != "t0";
        match *command {
            Command::Tick { ms } => {
                self.now += ms;
                None
            }
            Command::Create { job, namespace } => {
                let id = job_id(job);
                if self.jobs.contains_key(&id) {
                    return None;
                }
                let targets = (0..THINGS).map(thing).collect();
                let mut created =
                    Job::created(&id, NAMESPACES[namespace], "{}".into(), targets, now);
                let executions: Vec<Execution> = (0..THINGS)
                    .map(|t| Execution::queued(&id, &thing(t), now))
                    .collect();
                executions.iter().for_each(|e| created.counts.add(e.status));
                self.jobs.insert(id.clone(), created.clone());
                let transition = Transition {
                    job: Some(created),
                    put_executions: executions,
                    ..Default::default()
                };
                Some((id, transition))
            }
            Command::Delete { job, force } => {
                let before = self.jobs.get(&job_id(job))?.clone();
                let request = DeleteJobRequest {
                    job_id: before.job_id.clone(),
                    force,
                    namespace_id: None,
                };
                let load = self.load(before.namespace_id.as_deref());
                let transition = start_deletion(&before, &request, load, &limits(), now).ok()?;
                Some((before.job_id, transition))
            }
            Command::DeleteBatch { job, batch } => {
                let before = self
                    .jobs
                    .get(&job_id(job))
                    .filter(|j| j.status == JobStatus::DeletionInProgress)?
                    .clone();
                let executions: Vec<Execution> = self
                    .executions_of(&before.job_id)
                    .into_iter()
                    .take(batch)
                    .collect();
                let transition = if executions.is_empty() {
                    remove_deleted_job()
                } else {
                    delete_executions(&before, executions, now, routed)
                };
                Some((before.job_id, transition))
            }
            Command::Cancel { job, force } => {
                let before = self.jobs.get(&job_id(job))?.clone();
                let request = CancelJobRequest {
                    job_id: before.job_id.clone(),
                    reason_code: None,
                    comment: None,
                    force,
                };
                let mut cancellation = cancel_job(&before, &request, now).ok()?;
                for execution in self.executions_of(&before.job_id) {
                    cancellation.execution(execution, routed);
                }
                Some((before.job_id, cancellation.finish()))
            }
            Command::StartNext {
                job,
                thing,
                minutes,
            } => {
                let (before, execution) = self.device_view(job, thing)?;
                let deadline = step_deadline(minutes, now).ok()?;
                let started = start_execution(&before, &execution, None, deadline, now)?;
                Some((before.job_id, started.into()))
            }
            Command::Update {
                job,
                thing,
                status,
                expected_version,
            } => {
                let (before, execution) = self.device_view(job, thing)?;
                let statuses = ["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"];
                let update = DeviceUpdate {
                    status: device_status(statuses[status]).ok()?,
                    status_details: None,
                    expected_version,
                    execution_number: None,
                    step_deadline: None,
                };
                let updated = update_execution(&before, &execution, &update, now).ok()?;
                Some((before.job_id, updated.into()))
            }
            Command::CancelExecution {
                job,
                thing,
                force,
                expected_version,
            } => {
                let (before, execution) = self.operator_view(job, thing)?;
                let request = CancelJobExecutionRequest {
                    job_id: before.job_id.clone(),
                    thing_name: execution.thing_name.clone(),
                    force,
                    expected_version,
                    status_details: None,
                };
                let canceled = cancel_execution(&before, &execution, &request, routed, now).ok()?;
                Some((before.job_id, canceled))
            }
            Command::DeleteExecution { job, thing, force } => {
                let (before, execution) = self.operator_view(job, thing)?;
                let request = DeleteJobExecutionRequest {
                    job_id: before.job_id.clone(),
                    thing_name: execution.thing_name.clone(),
                    execution_number: execution.execution_number,
                    force,
                    namespace_id: None,
                };
                let deleted = delete_execution(&before, &execution, &request, routed, now).ok()?;
                Some((before.job_id, deleted))
            }
            Command::UpdateJob { job } => {
                let before = self.jobs.get(&job_id(job))?.clone();
                let request = UpdateJobRequest {
                    job_id: before.job_id.clone(),
                    description: Some(format!("updated at {now}")),
                    ..Default::default()
                };
                let updated = update_job(&before, &request, now).ok()??;
                Some((before.job_id, updated))
            }
        }
    }

    /// The step timer, as the engine runs it every second: every execution whose deadline passed.
    fn time_out_due(&mut self) {
        let due: Vec<Execution> = self
            .executions
            .values()
            .filter(|e| e.step_deadline.is_some_and(|d| d <= self.now))
            .cloned()
            .collect();
        for execution in due {
            let Some(job) = self.jobs.get(&execution.job_id).cloned() else {
                continue;
            };
            if let Some(change) = time_out(&job, &execution, self.now) {
                self.apply_checked(&job.job_id, change.into());
            }
        }
    }

    /// Applies `transition` of `job_id`, checking it against the world as it was.
    fn apply_checked(&mut self, job_id: &str, transition: Transition) {
        let before = self.jobs.get(job_id).cloned();
        if let (Some(before), Some(after)) = (&before, &transition.job) {
            check_job_moves(before.status, after.status);
        }
        for execution in &transition.put_executions {
            let key = (execution.job_id.clone(), execution.thing_name.clone());
            if let Some(old) = self.executions.get(&key) {
                assert!(
                    execution.version_number > old.version_number,
                    "versionNumber went from {} to {}",
                    old.version_number,
                    execution.version_number
                );
                assert!(
                    execution_may_move(old.status, execution.status),
                    "{:?} -> {:?} is not a move AWS allows",
                    old.status,
                    execution.status
                );
            }
            self.executions.insert(key, execution.clone());
        }
        for execution in &transition.delete_executions {
            let key = (execution.job_id.clone(), execution.thing_name.clone());
            assert!(self.executions.remove(&key).is_some(), "removed twice");
        }
        for recovery in &transition.recoveries {
            assert_eq!(recovery.execution_status, ExecutionStatus::InProgress);
        }
        match transition.job {
            Some(job) => {
                self.jobs.insert(job_id.to_owned(), job);
            }
            None => {
                assert!(
                    self.executions_of(job_id).is_empty(),
                    "a job removed before its executions"
                );
                self.jobs.remove(job_id);
            }
        }
    }

    fn check(&self) {
        let limits = limits();
        assert!(self.deleting().count() <= limits.max_concurrent_deletions);
        for (namespace, limit) in &limits.per_namespace {
            let in_namespace = self
                .deleting()
                .filter(|j| j.namespace_id.as_deref() == Some(namespace))
                .count();
            assert!(
                in_namespace <= *limit,
                "{in_namespace} deletions in {namespace}"
            );
        }
        for job in self.jobs.values() {
            let mut counts = ExecutionCounts::default();
            self.executions_of(&job.job_id)
                .iter()
                .for_each(|e| counts.add(e.status));
            assert_eq!(job.counts, counts, "the counts of {}", job.job_id);
            if job.status == JobStatus::InProgress {
                assert!(
                    job.counts.pending() > 0,
                    "{} should be COMPLETED",
                    job.job_id
                );
            }
        }
    }
}

/// A job's status moves: a terminal job only to DELETION_IN_PROGRESS (or stays, CANCELED again with
/// force), and a job being deleted stays so until it is gone.
fn check_job_moves(from: JobStatus, to: JobStatus) {
    use JobStatus::*;
    let allowed = match from {
        InProgress => matches!(to, InProgress | Completed | Canceled | DeletionInProgress),
        Completed => matches!(to, Completed | DeletionInProgress),
        Canceled => matches!(to, Canceled | DeletionInProgress),
        DeletionInProgress => to == DeletionInProgress,
        Creating => true,
    };
    assert!(allowed, "job {from:?} -> {to:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_invariants_hold_for_every_command_sequence(
        commands in proptest::collection::vec(command(), 1..60)
    ) {
        let mut world = World { now: 1_000_000, ..Default::default() };
        for command in &commands {
            if let Some((job_id, transition)) = world.run(command) {
                world.apply_checked(&job_id, transition);
            }
            world.time_out_due();
            world.check();
        }
    }
}
