//! The consistency check: every record against its index entries and counts, every index entry against a
//! record, and the store's account against a walk of every tree and against the manifest. `sprig store
//! check` runs all of it ([`Store::check`](super::Store::check)); opening a store runs the jobs part
//! ([`super::damage`]), because sled can fall back to an older version of a large record without a word.

use std::collections::BTreeMap;
use std::path::Path;

use super::codec;
use super::codec::IndexCode;
use super::handle::Trees;
use super::manifest;
use super::Result;
use crate::model::{Execution, ExecutionCounts, Job, JobStatus, RecoveryState};

impl Trees {
    pub(super) fn check(&self, dir: &Path) -> Result<CheckReport> {
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
            if !self.thing_executions.contains_key(execution.thing_key())? {
                report.problem(format!(
                    "execution {name}: missing from its thing's executions"
                ));
            }
            if let Some(key) = execution.deadline_key() {
                if !self.by_deadline.contains_key(key)? {
                    report.problem(format!("execution {name}: missing from the deadline index"));
                }
            }
        }
        for (tree, index) in [
            (&self.by_thing, "thing index"),
            (&self.thing_executions, "things' executions"),
        ] {
            for entry in tree.iter() {
                let (key, _) = entry?;
                let job_id = String::from_utf8_lossy(codec::last_part(&key)).into_owned();
                let thing = String::from_utf8_lossy(&key[..key.len() - job_id.len() - 1]);
                if !self
                    .executions
                    .contains_key(codec::execution_key(&job_id, &thing))?
                {
                    report.problem(format!("{index}: {thing}/{job_id} has no execution"));
                }
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

    /// Every job record against what the transactions that wrote it wrote beside it: its entries in the
    /// status and namespace indexes, its executions' counts and its targets; and every entry of those
    /// indexes, every execution and every job's targets, against a job. Also run whenever the store is
    /// opened ([`super::damage`]): the targets of a job with many of them are large enough for sled to
    /// keep in a blob file, and sled reads a lost blob as a write torn by a crash, falling back to the
    /// earlier version of what it held without a word (here: no targets; in stores of format 5 and
    /// before, which kept them in the record, an older record: another status, older counts). One walk
    /// of the executions, a count per job.
    pub(super) fn check_jobs(&self, report: &mut CheckReport) -> Result<()> {
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
            // Targets are written with the step that ends a creation, never before.
            let has_targets = self.job_targets.contains_key(&key)?;
            if has_targets != (job.status != JobStatus::Creating) {
                report.problem(format!(
                    "job {name}: its record says {}, but its targets are {}",
                    job.status.as_str(),
                    if has_targets { "there" } else { "missing" }
                ));
            }
        }
        for entry in self.job_targets.iter() {
            let (key, value) = entry?;
            let name = String::from_utf8_lossy(&key).into_owned();
            if let Err(e) = codec::decode::<Vec<String>>(&value) {
                report.problem(format!("the targets of job {name}: {e}"));
            }
            if !self.jobs.contains_key(&key)? {
                report.problem(format!("the targets of job {name}, which does not exist"));
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
            let indexed = super::codec::job_status_of_code(key[0])
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
    pub(super) fn check_account(&self, dir: &Path, report: &mut CheckReport) -> Result<()> {
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

/// What [`Store::check`](super::Store::check) found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub jobs: u64,
    pub executions: u64,
    /// Changes the store has had (`Meta::generation`).
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
