//! Paths of the workspace and its build products, and the builds themselves: `cargo build` is run on first
//! use of each product, once per process, so a test or benchmark never runs a stale binary or plugin.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support lies two levels under the workspace root")
        .to_owned()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Runs `cargo build --quiet ARGS` in the workspace (the cargo running the tests, if any), panicking on
/// failure. Cargo releases its build lock before it runs tests, so this works from inside a test.
///
/// Without the variables cargo sets for the test it runs (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...):
/// ring's build script watches those, so a build seeing the test's values reran it, and the next
/// `cargo test` rebuilt ring and everything above it.
pub fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        if is_set_for_the_crate_run(&name.to_string_lossy()) {
            command.env_remove(name);
        }
    }
    let status = command
        .args(["build", "--quiet"])
        .args(args)
        .current_dir(workspace())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}

/// A variable cargo sets for the crate it builds or runs, rather than a setting of cargo's own.
fn is_set_for_the_crate_run(name: &str) -> bool {
    [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
        || name == "CARGO_PRIMARY_PACKAGE"
}

/// Which of cargo's profiles a product is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// What the tests run: quick to build.
    Debug,
    /// What the benchmarks measure.
    Release,
}

impl Profile {
    /// The directory under the target directory, and the flags that select the profile.
    fn dir_and_flags(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Profile::Debug => ("debug", &[]),
            Profile::Release => ("release", &["--release"]),
        }
    }
}

/// Builds `args` in `profile` unless this process already did, and returns the profile's directory.
/// Builds are serialized: two tests asking for the same product build it once.
fn build_once(profile: Profile, args: &[&str]) -> PathBuf {
    static BUILT: Mutex<Vec<(Profile, Vec<String>)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = (profile, args.iter().map(|a| a.to_string()).collect());
    let (dir, flags) = profile.dir_and_flags();
    if !built.contains(&key) {
        cargo_build(&[flags, args].concat());
        built.push(key);
    }
    target_dir().join(dir)
}

/// The `sprig` binary in `profile`, built on first use.
pub fn sprig_bin_in(profile: Profile) -> PathBuf {
    build_once(profile, &["-p", "sprig-gateway", "--bin", "sprig"]).join("sprig")
}

/// The debug `sprig` binary, built on first use.
pub fn sprig_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| sprig_bin_in(Profile::Debug))
}

/// The release `sprig` binary, built on first use (for benchmarks).
pub fn release_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| sprig_bin_in(Profile::Release))
}

/// The shared library of the plugin crate `package` (e.g. `sprig-plugin-rollback`) in `profile`, built
/// on first use.
pub fn plugin_path_in(profile: Profile, package: &str) -> PathBuf {
    build_once(profile, &["-p", package]).join(plugin_file(package))
}

/// The debug shared library of the plugin crate `package`, built on first use.
pub fn plugin_path(package: &str) -> PathBuf {
    plugin_path_in(Profile::Debug, package)
}

/// `libsprig_plugin_x.so` for `sprig-plugin-x`: cargo's name for a cdylib.
fn plugin_file(package: &str) -> String {
    format!("lib{}.so", package.replace('-', "_"))
}

/// The misbehave plugin built with `--features wrong-abi` (it declares ABI version 2), in a target dir of
/// its own so that it does not replace the good build.
pub fn wrong_abi_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = target_dir().join("wrong-abi");
        cargo_build(&[
            "-p",
            "sprig-plugin-misbehave",
            "--features",
            "wrong-abi",
            "--target-dir",
            dir.to_str().expect("a UTF-8 target dir"),
        ]);
        dir.join("debug")
            .join(plugin_file("sprig-plugin-misbehave"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_is_the_directory_of_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"), "{manifest}");
    }

    #[test]
    fn a_plugin_package_names_its_cdylib() {
        assert_eq!(
            plugin_file("sprig-plugin-rollback"),
            "libsprig_plugin_rollback.so"
        );
    }
}
