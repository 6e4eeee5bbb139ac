//! Opening a store that may be damaged, and saying what is wrong with it.
//!
//! sled meets damage in three ways: an error (`Corruption`, a missing file), a panic (an index out of
//! bounds in its recovery), or nothing at all (a log cut short opens as the store it was at the cut).
//! [`open_verified`] turns all three into [`StoreError::Damaged`], naming the file and the damage:
//! checks sled would get wrong come first (the file lock, a damaged `conf`, a `db` that is gone), sled's
//! open and a walk of every tree run with panics caught and kept off the terminal ([`quietly`]), and the
//! store's account and manifest must agree with what the walk found ([`super::meta`],
//! [`super::manifest`]), and every job record with the indexes and executions written with it (sled
//! answers a lost blob file with an earlier version of the record it held, which no count shows). What
//! the manifest recorded of sled's files points at the one that was cut short or lost.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Once;

use super::handle::Trees;
use super::manifest::{self, Manifest, Standing};
use super::meta::Meta;
use super::{CheckReport, Result, StoreError};

/// A store that opened and proved whole.
pub(super) struct Verified {
    pub trees: Trees,
    pub meta: Meta,
    /// How it stands to its manifest; `None`: it had none.
    pub standing: Option<Standing>,
}

/// Opens the store in `dir` and proves it whole, or says what is damaged. `background`: let sled run
/// its own flusher (a serving gateway), or not (a maintenance command that copies the files).
pub(super) fn open_verified(dir: &Path, cache_bytes: u64, background: bool) -> Result<Verified> {
    refuse_if_in_use(dir)?;
    check_conf(dir)?;
    let recorded = manifest::read(dir).map_err(|why| {
        damaged(
            dir,
            format!(
                "{} cannot be read: {why}. Delete it: sprig then checks the store against the \
                 store's own account alone, and writes a new one",
                manifest::FILE
            ),
        )
    })?;
    // sled may write to the files as it opens them (a damaged log is cut at the damage): the hints
    // compare the manifest with the files as they were before.
    let before = manifest::sled_files(dir);
    if let Some(recorded) = &recorded {
        if !dir.join("db").exists() {
            let damage = format!(
                "db is missing, but {} recorded {} changes",
                manifest::FILE,
                recorded.generation
            );
            return Err(damaged(dir, with_hints(damage, &before, Some(recorded))));
        }
    }
    let opened = quietly(
        || -> Result<(Trees, std::result::Result<Meta, String>, CheckReport)> {
            let trees = Trees::open(dir, cache_bytes, background)?;
            let account = trees.account()?;
            let mut jobs = CheckReport::default();
            trees.check_jobs(&mut jobs)?;
            Ok((trees, account, jobs))
        },
    );
    let (trees, account, jobs) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Err(explain(dir, e, &before, recorded.as_ref())),
        Err(panic) => {
            let damage = format!("sled gave up reading it ({panic})");
            return Err(damaged(dir, with_hints(damage, &before, recorded.as_ref())));
        }
    };
    let meta =
        account.map_err(|damage| damaged(dir, with_hints(damage, &before, recorded.as_ref())))?;
    let standing = match &recorded {
        Some(recorded) => Some(manifest::judge(&meta, recorded).map_err(|mismatch| {
            damaged(
                dir,
                with_hints(mismatch.to_string(), &before, Some(recorded)),
            )
        })?),
        None => None,
    };
    if !jobs.is_consistent() {
        let damage = format!(
            "its job records do not agree with the indexes and executions written with them ({}): \
             sled falls back to an earlier version of a job record when the file that held the latest \
             one is lost",
            listed(&jobs.problems, 3)
        );
        return Err(damaged(dir, with_hints(damage, &before, recorded.as_ref())));
    }
    Ok(Verified {
        trees,
        meta,
        standing,
    })
}

/// sled allows one process per store, and says so only as "could not acquire lock": a gateway that is
/// running is named instead.
pub(super) fn refuse_if_in_use(dir: &Path) -> Result<()> {
    use fs2::FileExt;
    let file = match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db"))
    {
        Ok(file) => file,
        // No db yet (a new store), or one sprig cannot write: sled's open says what is wrong.
        Err(_) => return Ok(()),
    };
    // A handle of this same process that was just closed lets go of the lock a moment later, when sled's
    // background threads have finished with it (a reopen after a full disk, tests): that is waited for,
    // briefly; a running gateway holds it for good.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => {
                let _ = FileExt::unlock(&file);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::InUse {
                        path: dir.to_owned(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(_) => return Ok(()),
        }
    }
}

/// How long a store's lock may take to be let go of by a handle that was just closed.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// sled's `conf` is its settings and a checksum. sled warns about a wrong checksum and goes on to
/// misread the file ("created using a sled version earlier than 0.29"); sprig names it instead.
fn check_conf(dir: &Path) -> Result<()> {
    let Ok(bytes) = fs::read(dir.join("conf")) else {
        return Ok(()); // none yet: sled writes it
    };
    // sled treats a file this short as missing, and writes it anew.
    if bytes.len() <= 8 {
        return Ok(());
    }
    let (settings, checksum) = bytes.split_at(bytes.len() - 4);
    let expected = u32::from_le_bytes(checksum.try_into().expect("4 bytes"));
    if crc32fast::hash(settings) == expected {
        return Ok(());
    }
    Err(damaged(
        dir,
        "conf (sled's settings) is damaged: its checksum does not match. It holds only settings that \
         sprig always sets the same: delete it and sled writes it anew"
            .into(),
    ))
}

/// An error from sled's open or the walk, as damage of a named file where it is one.
fn explain(
    dir: &Path,
    error: StoreError,
    files: &BTreeMap<String, u64>,
    recorded: Option<&Manifest>,
) -> StoreError {
    let damage = match &error {
        StoreError::Sled(sled::Error::Corruption { at, .. }) => match at {
            Some(sled::DiskPtr::Inline(offset)) => {
                format!("db holds corrupt data at byte offset {offset}")
            }
            Some(sled::DiskPtr::Blob(_, blob)) => {
                format!("blobs/{blob} is corrupt (its checksum does not match)")
            }
            None => "sled found corrupt data in db or in its snapshot (snap.*)".into(),
        },
        StoreError::Sled(sled::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            format!("a file sled needs is missing or cut short ({e})")
        }
        StoreError::Sled(sled::Error::ReportableBug(what)) => {
            format!("sled failed while reading it ({what})")
        }
        StoreError::Sled(sled::Error::Unsupported(what)) => format!("sled refused it ({what})"),
        StoreError::Codec { what, source } => format!("{what} cannot be read ({source})"),
        // Not damage: no permission, no space, a newer store format.
        _ => return error,
    };
    damaged(dir, with_hints(damage, files, recorded))
}

/// The first `most` of `problems`, and how many more there are.
fn listed(problems: &[String], most: usize) -> String {
    let mut text = problems[..problems.len().min(most)].join("; ");
    if problems.len() > most {
        text.push_str(&format!("; and {} more", problems.len() - most));
    }
    text
}

fn damaged(dir: &Path, damage: String) -> StoreError {
    StoreError::Damaged {
        path: dir.to_owned(),
        damage,
    }
}

/// `damage`, followed by what changed in sled's `files` (name → size) since the manifest recorded them:
/// which is missing, which is shorter. sled truncates and deletes files of its own accord too, so these
/// are pointers, not proof.
fn with_hints(damage: String, now: &BTreeMap<String, u64>, recorded: Option<&Manifest>) -> String {
    let Some(recorded) = recorded else {
        return damage;
    };
    let hints: Vec<String> = recorded
        .files
        .iter()
        .filter_map(|(file, &then)| match now.get(file) {
            None => Some(format!(
                "{file} is missing ({then} bytes at the last flush)"
            )),
            Some(&size) if size < then => {
                Some(format!("{file} is {size} bytes ({then} at the last flush)"))
            }
            Some(_) => None,
        })
        .collect();
    if hints.is_empty() {
        damage
    } else {
        format!("{damage}; {}", hints.join("; "))
    }
}

thread_local! {
    /// Set while [`quietly`] runs on this thread: the panic hook keeps quiet.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// Where the last quiet panic happened.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `work`, turning a panic into its message (with where it happened). The default panic hook
/// would print sled's panic, a note about backtraces and maybe a backtrace to the terminal, above
/// sprig's own message; while `work` runs on this thread the hook only notes the location. (sled 0.34
/// panics on some damage, e.g. "tried to serialize Uninitialized" for a flipped byte in its log.)
pub(super) fn quietly<T>(work: impl FnOnce() -> T) -> std::result::Result<T, String> {
    install_hook();
    QUIET.with(|quiet| quiet.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    QUIET.with(|quiet| quiet.set(false));
    outcome.map_err(|payload| {
        let location = LOCATION.with(|l| l.borrow_mut().take());
        match location {
            Some(location) => format!("{} at {location}", panic_message(&*payload)),
            None => panic_message(&*payload),
        }
    })
}

/// Wraps the panic hook once: quiet on threads inside [`quietly`], unchanged elsewhere.
fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", short_path(l.file()), l.line()));
                LOCATION.with(|l| *l.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// The last three components of a source path (`sled-0.34.7/src/serialization.rs`): enough to find the
/// line, without the build machine's directories.
fn short_path(file: &str) -> String {
    let parts: Vec<&str> = file.rsplit('/').take(3).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_where_it_happened() {
        let caught = quietly(|| -> u32 {
            let cut: &[u8] = &[1, 2, 3];
            let at = cut.len() + 2;
            u32::from(cut[at])
        })
        .unwrap_err();
        assert!(caught.contains("index out of bounds"), "{caught}");
        assert!(caught.contains(" at src/store/damage.rs:"), "{caught}");
        assert_eq!(quietly(|| 7), Ok(7));
        assert!(!QUIET.with(Cell::get));
    }

    #[test]
    fn a_damaged_conf_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let settings = b"segment_size: 524288\nuse_compression: false\nversion: 0.34\n";
        let mut conf = settings.to_vec();
        conf.extend(crc32fast::hash(settings).to_le_bytes());
        fs::write(dir.path().join("conf"), &conf).unwrap();
        check_conf(dir.path()).unwrap();

        conf[3] ^= 0x20;
        fs::write(dir.path().join("conf"), &conf).unwrap();
        let text = check_conf(dir.path()).unwrap_err().to_string();
        assert!(
            text.contains("conf (sled's settings) is damaged") && text.contains("delete it"),
            "{text}"
        );
    }

    #[test]
    fn hints_name_files_that_are_missing_or_shorter_than_at_the_last_flush() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("blobs")).unwrap();
        fs::write(dir.path().join("db"), [0u8; 100]).unwrap();
        fs::write(dir.path().join("blobs").join("42"), [0u8; 10]).unwrap();
        let recorded = Manifest::of(&Meta::default(), dir.path());
        fs::write(dir.path().join("db"), [0u8; 60]).unwrap();
        fs::remove_file(dir.path().join("blobs").join("42")).unwrap();
        let now = manifest::sled_files(dir.path());
        let text = with_hints("damage".into(), &now, Some(&recorded));
        assert_eq!(
            text,
            "damage; blobs/42 is missing (10 bytes at the last flush); db is 60 bytes (100 at the last flush)"
        );
    }
}
