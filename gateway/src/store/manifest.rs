//! The manifest: a small file beside sled's files (`sprig-manifest.json` in the store directory) holding
//! the store's account ([`Meta`]) as it was at the last flush, and the sizes of sled's files then. It is
//! sprig's evidence, outside sled, of what the store held: a store that opens but has lost data no
//! longer matches it.
//!
//! It is written at the store's periodic flush (every half second, when something changed) and at
//! shutdown, never before sled's flush that made its account durable: the account is read first, then
//! sled flushes, then the manifest is written (to a temporary file, fsynced, renamed over the old one,
//! the directory fsynced). So the manifest never claims more than the disk holds, and a crash leaves
//! either the old manifest or the new one.
//!
//! The rule ([`judge`]): a store is accepted when it is the manifest's store, at the manifest's
//! generation with the same counts, or **ahead** of it (changes made after the last manifest write reach
//! the disk too: sled writes its buffers as they fill, and a `kill -9` may fall between a flush and the
//! manifest write). A store **behind** the manifest has lost changes that had been flushed, and is
//! refused; an empty store whose manifest says otherwise is the extreme case. A store at the same
//! generation with other counts is damaged in a way its own account did not see. Changes of the last
//! half second before a crash are beyond the manifest's sight: it cannot tell whether they were lost.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::meta::{Counts, Meta, TREES};

/// The manifest's file name, in the store directory.
pub const FILE: &str = "sprig-manifest.json";

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// For a person who opens the file.
    pub about: String,
    /// [`Meta::store_id`], in hex.
    pub store_id: String,
    pub generation: u64,
    /// Entries per tree.
    pub counts: BTreeMap<String, u64>,
    /// sled's files (relative to the store directory) and their sizes at the last flush: named when sled
    /// fails to open the store, to say which file was cut short or lost.
    pub files: BTreeMap<String, u64>,
}

impl Manifest {
    /// The manifest of `meta`, for the store in `dir` as its files are now.
    pub fn of(meta: &Meta, dir: &Path) -> Manifest {
        Manifest {
            about: "sprig's record of its jobs store at the last flush; see README, \
                    \"Store damage and backups\""
                .into(),
            store_id: format!("{:016x}", meta.store_id),
            generation: meta.generation,
            counts: TREES
                .iter()
                .zip(meta.counts.0)
                .map(|(name, count)| (name.to_string(), count))
                .collect(),
            files: sled_files(dir),
        }
    }

    /// The counts, in [`Counts`]' order (a tree the file does not name counts 0).
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (slot, name) in counts.0.iter_mut().zip(TREES) {
            *slot = self.counts.get(name).copied().unwrap_or(0);
        }
        counts
    }
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The manifest in `dir`: `Ok(None)` if there is none, `Err` (what is wrong) if it cannot be read.
pub fn read(dir: &Path) -> Result<Option<Manifest>, String> {
    let text = match fs::read(path(dir)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("not a manifest sprig wrote ({e})"))
}

/// Replaces the manifest in `dir` atomically: a temporary file, fsynced, renamed over the old one, and
/// the directory fsynced so that the rename itself survives a power cut.
pub fn write(dir: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let temporary = dir.join(format!("{FILE}.tmp"));
    let mut file = fs::File::create(&temporary)?;
    let mut text = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    text.push(b'\n');
    file.write_all(&text)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path(dir))?;
    fs::File::open(dir)?.sync_all()
}

/// sled's files in `dir` (`db`, `conf`, `snap.*`, `blobs/*`) and their sizes.
pub fn sled_files(dir: &Path) -> BTreeMap<String, u64> {
    let mut files = BTreeMap::new();
    for (sub, prefix) in [(dir.to_owned(), ""), (dir.join("blobs"), "blobs/")] {
        let Ok(entries) = fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_sleds =
                !prefix.is_empty() || name == "db" || name == "conf" || name.starts_with("snap.");
            match entry.metadata() {
                Ok(meta) if meta.is_file() && is_sleds => {
                    files.insert(format!("{prefix}{name}"), meta.len());
                }
                _ => {}
            }
        }
    }
    files
}

/// What is wrong between a store and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The manifest is another store's.
    OtherStore { store: u64, manifest: String },
    /// The store has fewer changes than the manifest recorded: flushed changes are gone.
    Behind {
        store: u64,
        manifest: u64,
        counts: Vec<(&'static str, u64, u64)>,
    },
    /// Same generation, other counts.
    CountsDiffer {
        generation: u64,
        counts: Vec<(&'static str, u64, u64)>,
    },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::OtherStore { store, manifest } => write!(
                f,
                "{FILE} belongs to another store (store id {manifest}, this store's is {store:016x})"
            ),
            Mismatch::Behind {
                store: 0, counts, ..
            } if counts.iter().all(|(_, ours, _)| *ours == 0) => {
                write!(f, "it is empty, but {FILE} recorded ")?;
                list_theirs(f, counts)?;
                write!(f, " at the last flush")
            }
            Mismatch::Behind {
                store,
                manifest,
                counts,
            } => {
                write!(
                    f,
                    "it has lost data: it holds {store} changes, but {FILE} recorded {manifest} at the last \
                     flush"
                )?;
                if !counts.is_empty() {
                    write!(f, " (")?;
                    list_both(f, counts)?;
                    write!(f, ")")?;
                }
                Ok(())
            }
            Mismatch::CountsDiffer { generation, counts } => {
                write!(
                    f,
                    "its records do not match {FILE} at the same change ({generation}): "
                )?;
                list_both(f, counts)
            }
        }
    }
}

/// The trees of records (jobs, executions, recoveries, sessions) among `counts` if any of them differ,
/// else all: an index's count says little more than its records' do.
fn shown(counts: &[(&'static str, u64, u64)]) -> Vec<(&'static str, u64, u64)> {
    const RECORDS: [&str; 4] = ["jobs", "executions", "recoveries", "mqtt_sessions"];
    let records: Vec<_> = counts
        .iter()
        .filter(|(tree, ..)| RECORDS.contains(tree))
        .copied()
        .collect();
    if records.is_empty() {
        counts.to_vec()
    } else {
        records
    }
}

fn list_both(
    f: &mut std::fmt::Formatter<'_>,
    counts: &[(&'static str, u64, u64)],
) -> std::fmt::Result {
    for (i, (tree, ours, theirs)) in shown(counts).iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        write!(f, "{sep}{tree}: {ours} now, {theirs} then")?;
    }
    Ok(())
}

fn list_theirs(
    f: &mut std::fmt::Formatter<'_>,
    counts: &[(&'static str, u64, u64)],
) -> std::fmt::Result {
    for (i, (tree, _, theirs)) in shown(counts).iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        write!(f, "{sep}{tree}: {theirs}")?;
    }
    Ok(())
}

/// How a store stands to its manifest, when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// At the manifest's generation, with its counts.
    Matches,
    /// This many changes ahead (made after the last manifest write).
    Ahead(u64),
}

/// The rule of the module's doc: accept a store at or ahead of its manifest, refuse one behind it.
pub fn judge(store: &Meta, manifest: &Manifest) -> Result<Standing, Mismatch> {
    let theirs = manifest.counts();
    // An empty store is behind whatever manifest recorded changes, whichever store id sled's fresh
    // start gave it (a `db` cut to nothing opens as a new store).
    let empty = store.generation == 0 && store.counts == Counts::default();
    if empty && manifest.generation > 0 {
        return Err(Mismatch::Behind {
            store: 0,
            manifest: manifest.generation,
            counts: store.counts.differences(&theirs).collect(),
        });
    }
    if manifest.store_id != format!("{:016x}", store.store_id) {
        return Err(Mismatch::OtherStore {
            store: store.store_id,
            manifest: manifest.store_id.clone(),
        });
    }
    let counts: Vec<_> = store.counts.differences(&theirs).collect();
    match store.generation.cmp(&manifest.generation) {
        std::cmp::Ordering::Less => Err(Mismatch::Behind {
            store: store.generation,
            manifest: manifest.generation,
            counts,
        }),
        std::cmp::Ordering::Equal if !counts.is_empty() => Err(Mismatch::CountsDiffer {
            generation: store.generation,
            counts,
        }),
        std::cmp::Ordering::Equal => Ok(Standing::Matches),
        std::cmp::Ordering::Greater => Ok(Standing::Ahead(store.generation - manifest.generation)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta::TreeIx;

    fn meta(generation: u64, jobs: u64, executions: u64) -> Meta {
        let mut counts = Counts::default();
        counts.0[TreeIx::Jobs as usize] = jobs;
        counts.0[TreeIx::Executions as usize] = executions;
        Meta {
            store_id: 7,
            generation,
            counts,
        }
    }

    fn manifest(of: &Meta) -> Manifest {
        Manifest::of(of, Path::new("/nonexistent"))
    }

    #[test]
    fn a_store_at_its_manifest_or_ahead_of_it_is_accepted() {
        let then = meta(30, 3, 300);
        assert_eq!(judge(&then, &manifest(&then)), Ok(Standing::Matches));
        // Changes after the last manifest write (a kill -9 before the next one): any counts.
        assert_eq!(
            judge(&meta(34, 2, 100), &manifest(&then)),
            Ok(Standing::Ahead(4))
        );
    }

    #[test]
    fn a_store_behind_its_manifest_has_lost_data_and_says_which_counts() {
        let then = meta(30, 3, 300);
        let refused = judge(&meta(12, 1, 100), &manifest(&then)).unwrap_err();
        assert!(matches!(refused, Mismatch::Behind { .. }));
        let text = refused.to_string();
        assert!(
            text.contains("lost data")
                && text.contains("12 changes")
                && text.contains("recorded 30")
                && text.contains("jobs: 1 now, 3 then")
                && text.contains("executions: 100 now, 300 then"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_store_with_a_manifest_that_says_otherwise_is_refused() {
        let then = meta(30, 3, 300);
        let empty = Meta {
            store_id: 7,
            ..Meta::default()
        };
        let text = judge(&empty, &manifest(&then)).unwrap_err().to_string();
        assert!(
            text.contains("it is empty") && text.contains("jobs: 3, executions: 300"),
            "{text}"
        );
        // Whatever store id sled's fresh start gave it.
        let fresh = Meta {
            store_id: 99,
            ..Meta::default()
        };
        assert!(judge(&fresh, &manifest(&then))
            .unwrap_err()
            .to_string()
            .contains("it is empty"));
    }

    #[test]
    fn same_generation_other_counts_and_another_stores_manifest_are_refused() {
        let then = meta(30, 3, 300);
        assert!(matches!(
            judge(&meta(30, 3, 299), &manifest(&then)),
            Err(Mismatch::CountsDiffer { .. })
        ));
        let other = Meta {
            store_id: 8,
            ..then
        };
        let text = judge(&other, &manifest(&then)).unwrap_err().to_string();
        assert!(text.contains("another store"), "{text}");
    }

    #[test]
    fn the_manifest_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        std::fs::write(dir.path().join("db"), [0u8; 10]).unwrap();
        let written = Manifest::of(&meta(5, 1, 2), dir.path());
        write(dir.path(), &written).unwrap();
        let read_back = read(dir.path()).unwrap().unwrap();
        assert_eq!(read_back, written);
        assert_eq!(read_back.files.get("db"), Some(&10));
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        std::fs::write(path(dir.path()), "{ cut sho").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("not a manifest"));
    }
}
