//! `sprig plugin new`: the crate it writes builds offline on its own, passes its own tests, and the
//! gateway loads it and accepts its answer in a dry run; bad names and occupied directories are refused
//! before anything is written.

use std::path::Path;
use std::process::{Command, Output};

use sprig_tests::{sprig_bin, target_dir, workspace};

fn sprig(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(sprig_bin())
        .args(args)
        .env_remove("SPRIG_SDK_GIT")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cargo ARGS --offline` in the new crate. Its target dir is shared between runs (under the workspace's
/// `target/`), so the sdk and serde are compiled once, not per run.
fn cargo(crate_dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .arg("--offline")
        .env("CARGO_TARGET_DIR", target_dir().join("plugin-new"))
        .current_dir(crate_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_new_plugin_builds_tests_and_passes_the_gateways_checks() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("pumps-recovery");
    let sdk = workspace().join("sdk");
    let (code, stdout, stderr) = sprig(
        &[
            "plugin",
            "new",
            "pumps-recovery",
            "--path",
            crate_dir.to_str().unwrap(),
            "--sdk-path",
            sdk.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("Created the plugin crate pumps-recovery")
            && stdout.contains("target/release/libpumps_recovery.so"),
        "{stdout}"
    );
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        "recovery.toml",
        ".gitignore",
    ] {
        assert!(crate_dir.join(file).is_file(), "no {file}");
    }

    cargo(&crate_dir, &["build"]);
    let tested = cargo(&crate_dir, &["test"]);
    let tested = String::from_utf8_lossy(&tested.stdout);
    assert!(tested.contains("test result: ok. 2 passed"), "{tested}");

    let library = target_dir()
        .join("plugin-new")
        .join("debug")
        .join("libpumps_recovery.so");
    let library = library.to_str().unwrap();
    let (code, stdout, stderr) = sprig(&["plugin", "check", library], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("name:        pumps-recovery"), "{stdout}");

    // The dry run the README shows, on the sample route the crate comes with.
    let recovery = crate_dir.join("recovery.toml");
    let context = dir.path().join("context.json");
    std::fs::write(&context, r#"{"thingName": "pump-1"}"#).unwrap();
    let (code, stdout, stderr) = sprig(
        &[
            "plugin",
            "check",
            library,
            "--config",
            recovery.to_str().unwrap(),
            "--context",
            context.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("answer:  accepted")
            && stdout.contains("\"topic\": \"$aws/things/pump-1/abandon\""),
        "{stdout}"
    );
}

#[test]
fn bad_names_and_occupied_directories_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = workspace().join("sdk");
    let sdk = sdk.to_str().unwrap();
    let target = dir.path().join("x");
    let target = target.to_str().unwrap();
    for name in ["2fast", "fn", "my plugin"] {
        let (code, _, stderr) = sprig(
            &["plugin", "new", name, "--path", target, "--sdk-path", sdk],
            &[],
        );
        assert_eq!(code, Some(252), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name:?} is not a plugin crate name")),
            "{stderr}"
        );
    }
    assert!(!dir.path().join("x").exists());

    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "mine").unwrap();
    let (code, _, stderr) = sprig(
        &[
            "plugin",
            "new",
            "p",
            "--path",
            occupied.to_str().unwrap(),
            "--sdk-path",
            sdk,
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} exists and is not empty", occupied.display())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&occupied).unwrap().count(),
        1,
        "nothing was written"
    );

    // No flag: $SPRIG_SDK_GIT, at this sprig's release tag.
    let fresh = dir.path().join("fresh");
    let (code, _, stderr) = sprig(
        &["plugin", "new", "p", "--path", fresh.to_str().unwrap()],
        &[("SPRIG_SDK_GIT", "https://example.org/sprig.git")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let manifest = std::fs::read_to_string(fresh.join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&manifest).unwrap();
    assert_eq!(
        manifest["dependencies"]["sprig-sdk"],
        toml::Value::Table(toml::Table::from_iter([
            ("git".to_owned(), "https://example.org/sprig.git".into()),
            (
                "tag".to_owned(),
                format!("v{}", env!("CARGO_PKG_VERSION")).into()
            ),
        ]))
    );
}
