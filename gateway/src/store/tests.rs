//! The store end to end: commits and reads, the checks, damage refused at open, format upgrades.

use super::codec::IndexCode;
use super::handle::{FORMAT_KEY, STORE_FORMAT};
use super::*;
use crate::model::{ExecutionCounts, ExecutionStatus, JobStatus};

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
    let executions: Vec<Execution> = things.iter().map(|t| Execution::queued(id, t, 1)).collect();
    let mut counts = ExecutionCounts::default();
    executions.iter().for_each(|e| counts.add(e.status));
    let targets = things.iter().map(|t| t.to_string()).collect();
    let job = Job {
        counts,
        ..Job::created(id, namespace, "{}".into(), targets, 1)
    };
    (job, executions)
}

/// `job` as the store reads it back: its targets are kept apart.
fn without_targets(job: &Job) -> Job {
    Job {
        targets: Vec::new(),
        ..job.clone()
    }
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

/// Each asked thing's pending job ids, sorted.
fn pending_ids(store: &Store, things: &[&str]) -> Vec<Vec<String>> {
    let pending = store.pending_executions_of_things(things).unwrap();
    let ids = |executions: Vec<Execution>| {
        let mut ids: Vec<String> = executions.into_iter().map(|e| e.job_id).collect();
        ids.sort();
        ids
    };
    pending.into_iter().map(ids).collect()
}

/// The pending index, once built, follows every commit (a new pending execution, one that starts, one
/// that finishes, one deleted, a thing's last one gone) and answers what an index built afresh from the
/// trees after a reopen answers.
#[test]
fn the_pending_index_follows_commits_as_the_trees_do() {
    let dir = tempfile::tempdir().unwrap();
    let things = ["t1", "t2", "t3"];
    let store = Store::open(dir.path(), 8 << 20).unwrap();
    let (j1, execs) = job("j1", None, &things);
    put_job(&store, &j1, &execs);
    // Built now, before the changes below.
    assert_eq!(pending_ids(&store, &things), [["j1"], ["j1"], ["j1"]]);

    let (j2, execs) = job("j2", Some("acme"), &things[..2]);
    put_job(&store, &j2, &execs);
    let mut started = store.execution("j1", "t1").unwrap().unwrap();
    started.status = ExecutionStatus::InProgress;
    let mut done = store.execution("j1", "t2").unwrap().unwrap();
    done.status = ExecutionStatus::Succeeded;
    let mut j1 = j1.clone();
    j1.counts
        .shift(ExecutionStatus::Queued, ExecutionStatus::InProgress);
    j1.counts
        .shift(ExecutionStatus::Queued, ExecutionStatus::Succeeded);
    put_job(&store, &j1, &[started.clone(), done]);
    let gone = store.execution("j1", "t3").unwrap().unwrap();
    let before = j1.clone();
    j1.counts.remove(ExecutionStatus::Queued);
    store
        .commit(&Change {
            job_before: Some(&before),
            job_after: Some(&j1),
            delete_executions: std::slice::from_ref(&gone),
            ..Default::default()
        })
        .unwrap();

    let expected = [vec!["j1", "j2"], vec!["j2"], vec![]];
    assert_eq!(pending_ids(&store, &things), expected);
    let t1 = store
        .pending_executions_of_things(&["t1"])
        .unwrap()
        .remove(0);
    let j1_on_t1 = t1.iter().find(|e| e.job_id == "j1");
    assert_eq!(j1_on_t1, Some(&started), "the execution as last committed");
    store.close().unwrap();

    let reopened = Store::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(pending_ids(&reopened, &things), expected);
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
    let batched = pending_ids(&store, &asked);
    let one_by_one: Vec<Vec<String>> = asked
        .iter()
        .map(|t| pending_ids(&store, &[t]).remove(0))
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
    let batched = store.handle.run(|t| t.executions(&pairs)).unwrap();
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

    assert_eq!(store.job("j1").unwrap(), Some(without_targets(&j)));
    assert_eq!(store.job_targets("j1").unwrap(), Some(j.targets.clone()));
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

fn job_ids_of_thing(store: &Store, thing: &str, after: Option<&str>) -> Vec<String> {
    store
        .job_ids_of_thing_after(thing, after)
        .collect::<Result<_>>()
        .unwrap()
}

#[test]
fn a_things_executions_are_listed_whatever_their_status_until_removed() {
    let (_dir, store) = open();
    let (j1, mut e1) = job("j1", None, &["t1", "t10"]);
    put_job(&store, &j1, &e1);
    let (j2, e2) = job("j2", None, &["t1"]);
    put_job(&store, &j2, &e2);
    let (j0, e0) = job("j0", None, &["t2"]);
    put_job(&store, &j0, &e0);
    // Finished: out of the pending index, still among the thing's executions.
    e1[0].status = ExecutionStatus::Succeeded;
    put_job(&store, &j1, &e1[..1]);
    assert_eq!(store.pending_job_ids_of_thing("t1").unwrap(), vec!["j2"]);
    assert_eq!(job_ids_of_thing(&store, "t1", None), vec!["j1", "j2"]);
    assert_eq!(job_ids_of_thing(&store, "t1", Some("j1")), vec!["j2"]);
    assert_eq!(
        job_ids_of_thing(&store, "t1", Some("j2")),
        Vec::<String>::new()
    );
    assert_eq!(job_ids_of_thing(&store, "t10", None), vec!["j1"]);
    assert_eq!(job_ids_of_thing(&store, "t", None), Vec::<String>::new());

    store
        .commit(&Change {
            job_before: Some(&j1),
            job_after: Some(&j1),
            delete_executions: &e1[..1],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(job_ids_of_thing(&store, "t1", None), vec!["j2"]);
    store
        .trees()
        .thing_executions
        .remove(e2[0].thing_key())
        .unwrap();
    let report = store.check().unwrap();
    assert!(
        report
            .to_string()
            .contains("execution j2/t1: missing from its thing's executions"),
        "{report}"
    );
}

/// Makes the store in `dir` (three jobs of one target, written by this release) look as a release of
/// `format` left it: `undo` takes away what that format did not have, the account is written as
/// `account` encodes it. Returns the account as it was.
fn as_format(
    dir: &Path,
    format: u8,
    undo: impl FnOnce(&handle::Trees),
    account: impl FnOnce(&meta::Meta) -> Vec<u8>,
) -> meta::Meta {
    store_with_jobs(dir, 3);
    let store = Store::open_for_maintenance(dir, 8 << 20).unwrap();
    let trees = store.trees();
    undo(&trees);
    let meta = trees.meta().unwrap();
    trees.db.insert(meta::META_KEY, account(&meta)).unwrap();
    trees.db.insert(FORMAT_KEY, &[format]).unwrap();
    trees.db.flush().unwrap();
    meta
}

/// Opens the store in `dir`, which must come up in this release's format with the account it had
/// (`before`) carried over, one change later, and consistent.
fn upgraded(dir: &Path, before: &meta::Meta) -> Store {
    let store = Store::open(dir, 8 << 20).unwrap();
    assert_eq!(
        store.trees().db.get(FORMAT_KEY).unwrap().unwrap().as_ref(),
        &[STORE_FORMAT]
    );
    let after = store.trees().meta().unwrap();
    assert_eq!(
        (after.store_id, after.generation),
        (before.store_id, before.generation + 1)
    );
    assert_eq!(after.counts.get(meta::TreeIx::JobTargets), 3);
    let report = store.check().unwrap();
    assert!(report.is_consistent(), "{report}");
    store
}

/// Puts every job's targets back into its record and empties `job_targets`, as formats 5 and before kept
/// them.
fn targets_in_records(trees: &handle::Trees) {
    for entry in trees.job_targets.iter() {
        let (key, value) = entry.unwrap();
        let mut job: Job = codec::decode(&trees.jobs.get(&key).unwrap().unwrap()).unwrap();
        job.targets = codec::decode(&value).unwrap();
        trees.jobs.insert(&key, codec::encode(&job)).unwrap();
    }
    trees.job_targets.clear().unwrap();
}

/// A format 4 store (no `thing_executions`, targets in the job records, an account of nine trees) opens
/// as format 6: every execution indexed by thing, the targets moved out, its account carried over, so
/// that its manifest still names it.
#[test]
fn a_format_4_store_indexes_every_execution_by_thing_moves_targets_out_and_keeps_its_account() {
    let dir = tempfile::tempdir().unwrap();
    let undo = |trees: &handle::Trees| {
        trees.thing_executions.clear().unwrap();
        targets_in_records(trees);
    };
    let before = as_format(dir.path(), 4, undo, |meta| {
        codec::encode(&upgrade::MetaOfFormat4 {
            store_id: meta.store_id,
            generation: meta.generation,
            counts: meta.counts.0[..9].try_into().unwrap(),
        })
    });
    let store = upgraded(dir.path(), &before);
    let after = store.trees().meta().unwrap();
    assert_eq!(after.counts.get(meta::TreeIx::ThingExecutions), 3);
    assert_eq!(job_ids_of_thing(&store, "t1", None), vec!["j0", "j1", "j2"]);
}

/// A format 5 store (targets in the job records, an account of ten trees) opens as format 6: the targets
/// moved out of the records, its account carried over, so that its manifest still names it.
#[test]
fn a_format_5_store_moves_targets_out_of_the_job_records_and_keeps_its_account() {
    let dir = tempfile::tempdir().unwrap();
    let before = as_format(dir.path(), 5, targets_in_records, |meta| {
        codec::encode(&upgrade::MetaOfFormat5 {
            store_id: meta.store_id,
            generation: meta.generation,
            counts: meta.counts.0[..10].try_into().unwrap(),
        })
    });
    let store = upgraded(dir.path(), &before);
    assert!(store.job("j1").unwrap().unwrap().targets.is_empty());
    assert_eq!(
        store.job_targets("j1").unwrap(),
        Some(vec!["t1".to_owned()])
    );
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
    assert_eq!(store.job("j1").unwrap(), Some(without_targets(&j)));
    assert_eq!(store.job_targets("j1").unwrap(), Some(j.targets));
}

#[test]
fn recoveries_are_indexed_while_pending() {
    use crate::model::{RecoveryReason, RecoveryRecord, RecoveryState};
    let (_dir, store) = open();
    let (j, mut execs) = job("j1", None, &["t1", "t2"]);
    execs[0].status = ExecutionStatus::InProgress;
    let mut recovery = RecoveryRecord::for_execution(&j, &execs[0], RecoveryReason::JobDeleted, 5);
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
