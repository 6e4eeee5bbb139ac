//! A damaged store, against the real binary: `sprig store check` and `sprig run` name the file and the
//! damage, say what to do, exit 1 and never panic or report "ready"; a store that opens but lost data is
//! caught by its manifest; `sprig store backup` / `restore` bring it back.
//!
//! Each test builds its stores with a real gateway, then damages copies of them: truncated, byte-flipped
//! and missing files. Where sled cannot tell that a damaged byte mattered (a flip in a record that a later
//! one replaced), the store must then open whole: never accepted with data missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use sprig_tests::{config_for, create_job, free_port, run_to_exit, Gateway, Operator};

const WITHIN: Duration = Duration::from_secs(60);

/// Creates `count` jobs of `things` things each, named `{prefix}{i}`.
async fn create_jobs(op: &mut Operator, prefix: &str, count: usize, things: usize) {
    for i in 0..count {
        let names: Vec<String> = (0..things)
            .map(|t| format!("{prefix}{i}-thing-{t:06}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        op.request(
            "CreateJob",
            create_job(&format!("{prefix}{i}"), None, &names),
        )
        .await
        .unwrap();
    }
}

/// The jobs the manifest of the store in `data_dir` counts, once it exists.
fn manifest_jobs(data_dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(data_dir.join("store/sprig-manifest.json")).ok()?;
    let manifest: Value = serde_json::from_str(&text).ok()?;
    manifest["counts"]["jobs"].as_u64()
}

/// Waits until the manifest counts `jobs` jobs (the periodic flush wrote it).
fn wait_for_manifest(data_dir: &Path, jobs: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while manifest_jobs(data_dir) != Some(jobs) {
        assert!(
            Instant::now() < deadline,
            "the manifest did not count {jobs} jobs within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A store stopped by SIGTERM: 5 jobs of 100 things, and one of 8,000 whose record sled keeps as a
/// blob file.
async fn stopped_store() -> Gateway {
    let mut gateway = Gateway::start();
    let mut op = gateway.operator().await;
    create_jobs(&mut op, "small", 5, 100).await;
    create_jobs(&mut op, "big", 1, 8000).await;
    drop(op);
    assert_eq!(gateway.terminate(), Some(0));
    let blobs = fs::read_dir(gateway.data_dir().join("store/blobs")).unwrap();
    assert!(
        blobs.count() > 0,
        "the 8,000-thing job was not kept as a blob"
    );
    gateway
}

/// A store killed (SIGKILL) after 30 jobs of 100 things, once its manifest counted them all; and a copy
/// of its manifest from when it counted 10.
async fn killed_store() -> (Gateway, PathBuf) {
    let mut gateway = Gateway::start();
    let mut op = gateway.operator().await;
    create_jobs(&mut op, "early", 10, 100).await;
    wait_for_manifest(&gateway.data_dir(), 10);
    let early = gateway.dir.path().join("early-manifest.json");
    fs::copy(gateway.data_dir().join("store/sprig-manifest.json"), &early).unwrap();
    create_jobs(&mut op, "late", 20, 100).await;
    wait_for_manifest(&gateway.data_dir(), 30);
    drop(op);
    gateway.kill9();
    (gateway, early)
}

/// A copy of `data_dir` in a fresh directory, with a config on a free port: (its dir, the config file).
fn copy_of(data_dir: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(data_dir, &dir.path().join("data"));
    let config = dir.path().join("gateway.toml");
    let listen = format!("127.0.0.1:{}", free_port());
    fs::write(&config, config_for(&listen, &dir.path().join("data"))).unwrap();
    (dir, config)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One way to damage a store: what it does to the store directory, what the refusal must say, and
/// whether the damage must be refused (else the store may also open whole, if sled shows that nothing
/// it needed was hit).
struct Case {
    name: String,
    damage: Box<dyn Fn(&Path)>,
    says: Vec<&'static str>,
    certain: bool,
}

fn case(name: &str, says: &[&'static str], damage: impl Fn(&Path) + 'static) -> Case {
    Case {
        name: name.into(),
        damage: Box::new(damage),
        says: says.to_vec(),
        certain: true,
    }
}

fn truncate(file: &Path, fraction: f64) {
    let len = fs::metadata(file).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(file).unwrap();
    file.set_len((len as f64 * fraction) as u64).unwrap();
}

fn flip(file: &Path, fraction: f64) {
    let mut bytes = fs::read(file).unwrap();
    let at = (bytes.len() as f64 * fraction) as usize;
    for byte in &mut bytes[at..at + 4] {
        *byte ^= 0xA5;
    }
    fs::write(file, bytes).unwrap();
}

fn truncations(at: &[f64], says: &'static [&'static str]) -> Vec<Case> {
    at.iter()
        .copied()
        .map(|at| {
            case(&format!("db cut at {at}"), says, move |store| {
                truncate(&store.join("db"), at)
            })
        })
        .collect()
}

fn flips() -> Vec<Case> {
    [0.3, 0.5, 0.7, 0.9]
        .into_iter()
        .map(|at| Case {
            certain: false,
            ..case(&format!("db flipped at {at}"), &[], move |store| {
                flip(&store.join("db"), at)
            })
        })
        .collect()
}

/// Runs every case on its own copies of `data_dir` (one for `store check`, one for `sprig run`, since
/// sled writes as it opens), and asserts what the module says. `whole` is what `store check` prints of
/// the undamaged store. Returns how many cases were refused.
fn run_cases(data_dir: &Path, whole: &str, cases: &[Case]) -> usize {
    let mut refused = 0;
    for case in cases {
        let (dir, config) = copy_of(data_dir);
        let store = dir.path().join("data/store");
        (case.damage)(&store);
        let check = run_to_exit(&["store", "check"], &config, WITHIN);
        let check_text = text(&check);
        let said = check_text.lines().find(|l| l.starts_with("sprig:"));
        println!("{}: {}", case.name, said.unwrap_or("accepted whole"));
        assert!(
            !check_text.contains("panicked"),
            "{}: {check_text}",
            case.name
        );
        if check.status.success() {
            assert!(!case.certain, "{}: accepted:\n{check_text}", case.name);
            assert!(
                check_text.contains(whole) && check_text.contains("store is consistent"),
                "{}: accepted with data missing:\n{check_text}",
                case.name
            );
            continue;
        }
        refused += 1;
        assert_refusal(&case.name, &check, &store, &case.says);

        let (dir, config) = copy_of(data_dir);
        let store = dir.path().join("data/store");
        (case.damage)(&store);
        let run = run_to_exit(&["run"], &config, WITHIN);
        assert_refusal(&case.name, &run, &store, &case.says);
        assert!(
            !text(&run).contains("ready"),
            "{}: {}",
            case.name,
            text(&run)
        );
    }
    refused
}

/// Exit 1, naming the store and the damage (`says`), with what to do; no panic.
fn assert_refusal(case: &str, out: &Output, store: &Path, says: &[&str]) {
    let text = text(out);
    assert_eq!(out.status.code(), Some(1), "{case}: {text}");
    let store = store.display().to_string();
    for needle in [store.as_str(), "is damaged", "sprig store restore --from"]
        .iter()
        .chain(says)
    {
        assert!(text.contains(needle), "{case}: no {needle:?} in:\n{text}");
    }
    assert!(!text.contains("panicked"), "{case}: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_is_refused_naming_the_file_and_what_to_do() {
    let gateway = stopped_store().await;
    let data = gateway.data_dir();
    // Every blob file: sled may have written the job record's latest version twice (the write, and
    // later the whole leaf again when it merged the leaf's updates), and losing one copy loses nothing.
    let blobs = |store: &Path| -> Vec<PathBuf> {
        fs::read_dir(store.join("blobs"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect()
    };
    let mut cases = truncations(&[0.0, 0.25, 0.5, 0.75, 0.9], &["db"]);
    cases.extend(flips());
    cases.extend([
        case("db deleted", &["db is missing", "recorded"], |store| {
            fs::remove_file(store.join("db")).unwrap()
        }),
        // sled skips a blob that is gone and keeps the page's version before it: the job record
        // without its last change, which the store's indexes tell.
        case("blobs deleted", &["blobs/", "is missing"], move |store| {
            blobs(store)
                .iter()
                .for_each(|b| fs::remove_file(b).unwrap())
        }),
        // sled reads a cut blob as a write torn by a crash, and its log as ending there: the manifest
        // tells, and names the blob.
        case(
            "blobs cut",
            &["blobs/", "at the last flush"],
            move |store| blobs(store).iter().for_each(|b| truncate(b, 0.5)),
        ),
        case(
            "conf flipped",
            &["conf (sled's settings) is damaged", "delete it"],
            |store| flip(&store.join("conf"), 0.1),
        ),
        case(
            "manifest cut",
            &["sprig-manifest.json cannot be read"],
            |store| truncate(&store.join("sprig-manifest.json"), 0.5),
        ),
    ]);
    run_cases(&data, "6 jobs, 8500 executions", &cases);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_opens_but_lost_data_is_caught_by_its_manifest() {
    let (gateway, _) = killed_store().await;
    // sled opens a db emptied as an empty store: only the manifest tells, with the counts then and now.
    // A db cut short is refused naming the db: sled opens it as the store it was at the cut, which the
    // manifest tells, or it cannot read back a page (a tree's root beyond the cut, as with the store's
    // format 5 and its tenth tree), which is refused as damage as well. Unless the cut only took space
    // sled no longer used (seen once at 50 %): then the store opens whole, which is right too. Never is
    // it accepted with data missing.
    let whole = "30 jobs, 3000 executions";
    let emptied = case("db emptied", &["it is empty", "jobs: 30"], |store| {
        truncate(&store.join("db"), 0.0)
    });
    assert_eq!(run_cases(&gateway.data_dir(), whole, &[emptied]), 1);
    let cuts: Vec<Case> = truncations(&[0.25, 0.5, 0.75], &["db"])
        .into_iter()
        .map(|cut| Case {
            certain: false,
            ..cut
        })
        .collect();
    let refused = run_cases(&gateway.data_dir(), whole, &cuts);
    assert!(refused > 0, "no cut was refused");
    let refused = run_cases(&gateway.data_dir(), whole, &flips());
    assert!(refused > 0, "no flipped byte was refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_ahead_of_its_manifest_starts_after_a_crash_between_flush_and_manifest() {
    let (mut gateway, early) = killed_store().await;
    // As if the gateway was killed after a flush of the last 20 jobs but before their manifest.
    fs::copy(&early, gateway.data_dir().join("store/sprig-manifest.json")).unwrap();
    gateway.spawn();
    gateway.wait_for_log("changes made after its manifest", Duration::from_secs(10));
    let mut op = gateway.operator().await;
    assert_eq!(op.job_status("late19").await, "IN_PROGRESS");
    drop(op);
    assert_eq!(gateway.terminate(), Some(0));
    assert_eq!(manifest_jobs(&gateway.data_dir()), Some(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_and_restore_bring_a_damaged_store_back() {
    let mut gateway = Gateway::start();
    let mut op = gateway.operator().await;
    create_jobs(&mut op, "kept", 3, 10).await;
    drop(op);

    // While the gateway runs, every store command refuses, naming it.
    let backup_dir = gateway.dir.path().join("backup");
    let backup_arg = backup_dir.display().to_string();
    for args in [
        vec!["store", "check"],
        vec!["store", "backup", "--to", &backup_arg],
        vec!["store", "restore", "--from", &backup_arg, "--force"],
    ] {
        let out = run_to_exit(&args, &gateway.config_path, WITHIN);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("in use by another process"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(gateway.terminate(), Some(0));

    let out = run_to_exit(
        &["store", "backup", "--to", &backup_arg],
        &gateway.config_path,
        WITHIN,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("3 jobs, 30 executions"),
        "{}",
        text(&out)
    );

    // The store is lost; the gateway refuses to start on what is left.
    let store = gateway.data_dir().join("store");
    truncate(&store.join("db"), 0.0);
    let run = run_to_exit(&["run"], &gateway.config_path, WITHIN);
    assert_refusal("emptied", &run, &store, &["db"]);

    let restore = ["store", "restore", "--from", &backup_arg];
    let out = run_to_exit(&restore, &gateway.config_path, WITHIN);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("only with --force"), "{}", text(&out));

    let out = run_to_exit(
        &[&restore[..], &["--force"]].concat(),
        &gateway.config_path,
        WITHIN,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("3 jobs, 30 executions"),
        "{}",
        text(&out)
    );
    let aside: Vec<_> = fs::read_dir(gateway.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("store.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged store is kept aside");

    gateway.spawn();
    let mut op = gateway.operator().await;
    assert_eq!(op.job_status("kept2").await, "IN_PROGRESS");
}
