//! Small file systems for tests that fill the disk: a tmpfs of a given size, mounted on a temporary
//! directory, grown on demand and unmounted when dropped.
//!
//! Mounting needs root (CI runs as root). Where it is not permitted the test is skipped, not passed:
//! [`Tmpfs::mount`] prints a `SKIPPED` line and returns `None`, and the test returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted when dropped (drop it after the gateway that uses it).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `2m`), or says why the test `test` is
    /// skipped and returns `None`.
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            Ok(out) => {
                skip(test, &String::from_utf8_lossy(&out.stderr));
                None
            }
            Err(e) => {
                skip(test, &e.to_string());
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory inside the file system.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Changes the file system's size (a disk that was full gets room again).
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "cannot resize the tmpfs to {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Says on the terminal that `test` did not run, and why. Written to the process's stderr directly:
/// libtest captures what `println!`/`eprintln!` print and shows it only for failing tests, and a skip
/// must not look like a pass.
fn skip(test: &str, why: &str) {
    let why = why.lines().next().unwrap_or_default().trim();
    let line = format!("\nSKIPPED {test}: cannot mount a tmpfs (needs root, as in CI): {why}\n");
    // One write, so that the line is not torn by the other tests' output.
    let _ = std::io::stderr().write_all(line.as_bytes());
}
