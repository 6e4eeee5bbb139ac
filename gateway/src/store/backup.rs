//! `sprig store backup` and `sprig store restore`: the operator's way back from a damaged store.
//!
//! Both run with the gateway stopped (sled allows one process per store; a running gateway is named).
//! A backup is a copy of the store directory's files, taken while this process holds the store open
//! with nothing writing in the background, right after a flush that also wrote the manifest: so the
//! copy is one consistent state, and carries the evidence that it is whole. Only a store that opens and
//! proves whole is backed up, and the copy is compared with the original, file by file.
//!
//! A restore copies a backup beside the store (`store.restoring`), proves the copy whole as a gateway
//! would, and only then swaps it in by renaming; a store already there is renamed aside
//! (`store.replaced-<epoch seconds>`), never deleted, and only with `--force`.

use std::fs;
use std::path::{Path, PathBuf};

use super::damage;
use super::manifest;
use super::{Result, Store, StoreError};

/// What a backup or a restore holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub jobs: u64,
    pub executions: u64,
    /// Changes the store has had.
    pub generation: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} jobs, {} executions, {} changes",
            self.jobs, self.executions, self.generation
        )
    }
}

/// Copies the store in `store_dir` into `to` (a new or empty directory).
pub fn backup(store_dir: &Path, cache_bytes: u64, to: &Path) -> Result<Summary> {
    refuse_unless_empty(to)?;
    let store = Store::open_for_maintenance(store_dir, cache_bytes)?;
    store.checkpoint()?;
    let summary = store.summary()?;
    copy_store(store_dir, to)?;
    compare(store_dir, to)?;
    Ok(summary)
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub summary: Summary,
    /// Where the store that was there went.
    pub moved_aside: Option<PathBuf>,
}

/// Replaces the store in `store_dir` with the backup in `from`; a store already there is moved aside,
/// and only if `force`.
pub fn restore(store_dir: &Path, cache_bytes: u64, from: &Path, force: bool) -> Result<Restored> {
    let replacing = store_dir.exists();
    if replacing {
        damage::refuse_if_in_use(store_dir)?;
    }
    for missing in ["db", manifest::FILE] {
        if !from.join(missing).is_file() {
            return Err(StoreError::NotABackup {
                dir: from.to_owned(),
                missing,
            });
        }
    }
    if replacing && !force {
        return Err(StoreError::WouldReplace {
            path: store_dir.to_owned(),
        });
    }
    let staging = sibling(store_dir, "restoring");
    // Left by a restore that was interrupted: it never became the store.
    remove_dir_if_present(&staging)?;
    let summary = stage(from, &staging, cache_bytes).inspect_err(|_| {
        let _ = fs::remove_dir_all(&staging);
    })?;
    let moved_aside = if replacing {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = sibling(store_dir, &format!("replaced-{seconds}"));
        rename(store_dir, &aside)?;
        Some(aside)
    } else {
        None
    };
    rename(&staging, store_dir)?;
    sync_dir(store_dir.parent().unwrap_or(Path::new(".")))?;
    Ok(Restored {
        summary,
        moved_aside,
    })
}

/// Copies the backup to `staging` and proves the copy whole.
fn stage(from: &Path, staging: &Path, cache_bytes: u64) -> Result<Summary> {
    copy_store(from, staging)?;
    compare(from, staging)?;
    let store = Store::open_for_maintenance(staging, cache_bytes).map_err(|e| match e {
        StoreError::Damaged { damage, .. } => StoreError::BackupDamaged {
            dir: from.to_owned(),
            damage,
        },
        other => other,
    })?;
    store.summary()
}

/// `store` with another name in the same directory (so that renaming it is atomic): `store.<suffix>`.
fn sibling(store_dir: &Path, suffix: &str) -> PathBuf {
    let name = store_dir
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    store_dir.with_file_name(format!("{name}.{suffix}"))
}

/// The files that make a store: sled's and the manifest.
fn store_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = manifest::sled_files(dir).into_keys().collect();
    if manifest::path(dir).is_file() {
        files.push(manifest::FILE.to_owned());
    }
    files
}

/// Copies the store's files from `from` into `to` (created if needed), each fsynced, and the
/// directories too.
fn copy_store(from: &Path, to: &Path) -> Result<()> {
    let blobs = to.join("blobs");
    fs::create_dir_all(&blobs)
        .map_err(|e| files(format!("cannot create {}", blobs.display()), e))?;
    for name in store_files(from) {
        let (source, target) = (from.join(&name), to.join(&name));
        fs::copy(&source, &target).map_err(|e| {
            files(
                format!("cannot copy {} to {}", source.display(), target.display()),
                e,
            )
        })?;
        fs::File::open(&target)
            .and_then(|f| f.sync_all())
            .map_err(|e| files(format!("cannot sync {}", target.display()), e))?;
    }
    sync_dir(&blobs)?;
    sync_dir(to)
}

/// Proves that `to` holds what `from` holds: the same files, byte for byte (by CRC-32).
fn compare(from: &Path, to: &Path) -> Result<()> {
    for name in store_files(from) {
        let (source, copy) = (checksum(&from.join(&name))?, checksum(&to.join(&name))?);
        if source != copy {
            return Err(files(
                format!(
                    "the copy of {name} in {} differs from the original",
                    to.display()
                ),
                std::io::Error::other("checksum mismatch"),
            ));
        }
    }
    Ok(())
}

fn checksum(path: &Path) -> Result<(u64, u32)> {
    let bytes = fs::read(path).map_err(|e| files(format!("cannot read {}", path.display()), e))?;
    Ok((bytes.len() as u64, crc32fast::hash(&bytes)))
}

fn refuse_unless_empty(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            Some(_) => Err(StoreError::TargetNotEmpty {
                dir: dir.to_owned(),
            }),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(files(format!("cannot read {}", dir.display()), e)),
    }
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(files(format!("cannot remove {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| {
        files(
            format!("cannot rename {} to {}", from.display(), to.display()),
            e,
        )
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| files(format!("cannot sync {}", dir.display()), e))
}

fn files(what: String, source: std::io::Error) -> StoreError {
    StoreError::Files { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Job;
    use crate::store::Change;

    fn store_with_one_job(dir: &Path) {
        let store = Store::open(dir, 1 << 20).unwrap();
        let job = Job::created("j1", None, "{}".into(), vec![], 1);
        store
            .commit(&Change {
                job_after: Some(&job),
                ..Default::default()
            })
            .unwrap();
        store.close().unwrap();
    }

    #[test]
    fn a_backup_restores_over_a_damaged_store_which_is_moved_aside() {
        let data = tempfile::tempdir().unwrap();
        let store_dir = data.path().join("store");
        store_with_one_job(&store_dir);
        let saved = data.path().join("backup");
        let summary = backup(&store_dir, 1 << 20, &saved).unwrap();
        assert_eq!((summary.jobs, summary.generation), (1, 1));
        assert!(matches!(
            backup(&store_dir, 1 << 20, &saved),
            Err(StoreError::TargetNotEmpty { .. })
        ));

        fs::remove_file(store_dir.join("db")).unwrap();
        assert!(matches!(
            Store::open(&store_dir, 1 << 20),
            Err(StoreError::Damaged { .. })
        ));
        assert!(matches!(
            restore(&store_dir, 1 << 20, &saved, false),
            Err(StoreError::WouldReplace { .. })
        ));
        let restored = restore(&store_dir, 1 << 20, &saved, true).unwrap();
        assert_eq!(restored.summary, summary);
        let aside = restored.moved_aside.unwrap();
        assert!(aside.join(manifest::FILE).is_file(), "{}", aside.display());
        let store = Store::open(&store_dir, 1 << 20).unwrap();
        assert!(store.job("j1").unwrap().is_some());
    }

    #[test]
    fn a_damaged_backup_leaves_the_store_as_it_was() {
        let data = tempfile::tempdir().unwrap();
        let store_dir = data.path().join("store");
        store_with_one_job(&store_dir);
        let saved = data.path().join("backup");
        backup(&store_dir, 1 << 20, &saved).unwrap();
        fs::write(saved.join("db"), b"").unwrap();

        let err = restore(&store_dir, 1 << 20, &saved, true).unwrap_err();
        assert!(matches!(err, StoreError::BackupDamaged { .. }), "{err}");
        assert!(err.to_string().contains("restore an older backup"), "{err}");
        assert!(!data.path().join("store.restoring").exists());
        let store = Store::open(&store_dir, 1 << 20).unwrap();
        assert!(store.job("j1").unwrap().is_some());
    }

    #[test]
    fn a_directory_that_holds_no_backup_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let err = restore(&data.path().join("store"), 1 << 20, data.path(), true).unwrap_err();
        assert!(
            matches!(err, StoreError::NotABackup { missing: "db", .. }),
            "{err}"
        );
    }
}
