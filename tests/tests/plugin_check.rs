//! `sprig plugin check PATH`: the real binary on the real plugins of `plugins/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sprig_tests::{cargo_build, sprig_bin, target_dir};

fn rollback_plugin() -> PathBuf {
    sprig_tests::plugin_path("sprig-plugin-rollback")
}

/// misbehave built with `--features wrong-abi`, in its own target dir.
fn wrong_abi_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = target_dir().join("wrong-abi");
        cargo_build(&[
            "-p",
            "sprig-plugin-misbehave",
            "--features",
            "wrong-abi",
            "--target-dir",
            dir.to_str().unwrap(),
        ]);
        dir.join("debug").join("libsprig_plugin_misbehave.so")
    })
}

fn check(path: &Path) -> (Output, String, String) {
    let out = Command::new(sprig_bin())
        .args(["plugin", "check"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn a_good_plugin_prints_its_descriptor() {
    let (out, stdout, stderr) = check(&rollback_plugin());
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("name:        sprig-plugin-rollback"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("version:     {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(stdout.contains("sdk version: "), "{stdout}");
    assert!(stdout.contains("ABI version: 1"), "{stdout}");
    assert!(stdout.contains("libsprig_plugin_rollback.so"), "{stdout}");
}

#[test]
fn the_wrong_abi_is_refused_naming_both_versions() {
    let path = wrong_abi_plugin();
    let (out, stdout, stderr) = check(path);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("plugin refused"), "{stderr}");
    assert!(
        stderr.contains("ABI version 2") && stderr.contains("ABI version 1"),
        "{stderr}"
    );
    assert!(stderr.contains("wrong-abi"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libfake.so");
    std::fs::write(&path, "not an ELF file\n").unwrap();
    let (out, _, stderr) = check(&path);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("libfake.so") && stderr.contains("not a loadable shared library"),
        "{stderr}"
    );

    let (out, _, stderr) = check(&dir.path().join("missing.so"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing.so") && stderr.contains("cannot open plugin"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_recovery_route_whose_plugin_has_the_wrong_abi() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", sprig_tests::free_port());
    let config = format!(
        "{}\n[[recovery]]\nplugin = {:?}\n",
        sprig_tests::config_for(&listen, &dir.path().join("data")),
        wrong_abi_plugin()
    );
    let out = sprig_tests::run_refusing(&dir.path().join("gateway.toml"), &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("recovery[0]"), "{stderr}");
    assert!(
        stderr.contains("ABI version 2") && stderr.contains("ABI version 1"),
        "{stderr}"
    );
}

/// A plugin built with `panic = "abort"` would abort the gateway on its first panic: `export_plugin!`
/// refuses to compile it, saying why.
#[test]
fn a_plugin_built_with_panic_abort_does_not_compile() {
    let dir = target_dir().join("panic-abort");
    let out = Command::new(env!("CARGO"))
        .args(["build", "-p", "sprig-plugin-reset", "--target-dir"])
        .arg(&dir)
        .args(["--config", "profile.dev.panic=\"abort\""])
        .current_dir(sprig_tests::workspace())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it compiled:\n{stderr}");
    assert!(
        stderr.contains("sprig plugins must be built with `panic = \"unwind\"`"),
        "{stderr}"
    );
}
