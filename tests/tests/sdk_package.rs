//! `sprig-sdk` stands alone: plugin crates outside this repository depend on it by git or by path, so its
//! `Cargo.toml` inherits nothing from the workspace, its values stay those of the workspace (a plugin's sdk
//! version is the gateway's version), and `cargo package` makes a crate of it.

use std::process::Command;

use sprig_tests::workspace;

fn manifest(path: &str) -> toml::Table {
    let text = std::fs::read_to_string(workspace().join(path)).unwrap();
    toml::from_str(&text).unwrap()
}

fn table<'a>(value: &'a toml::Table, key: &str) -> &'a toml::Table {
    value[key]
        .as_table()
        .unwrap_or_else(|| panic!("{key} is a table"))
}

#[test]
fn the_sdk_inherits_nothing_and_keeps_the_workspace_values() {
    let root = manifest("Cargo.toml");
    let sdk = manifest("sdk/Cargo.toml");
    let shared = table(table(&root, "workspace"), "package");
    let own = table(&sdk, "package");
    for key in ["version", "edition", "license", "rust-version"] {
        assert_eq!(
            own.get(key),
            shared.get(key),
            "sdk/Cargo.toml's `{key}` differs from [workspace.package]'s: keep them equal"
        );
    }
    let workspace_deps = table(table(&root, "workspace"), "dependencies");
    for (name, spec) in table(&sdk, "dependencies") {
        let spec = spec
            .as_table()
            .cloned()
            .unwrap_or_else(|| toml::Table::from_iter([("version".to_owned(), spec.clone())]));
        assert!(
            !spec.contains_key("workspace"),
            "sdk/Cargo.toml inherits `{name}` from the workspace: a crate outside it could not build"
        );
        if let Some(shared) = workspace_deps.get(name) {
            let shared = shared.as_table().cloned().unwrap_or_else(|| {
                toml::Table::from_iter([("version".to_owned(), shared.clone())])
            });
            assert_eq!(
                spec, shared,
                "sdk/Cargo.toml's `{name}` differs from [workspace.dependencies]'s: keep them equal"
            );
        }
    }
}

#[test]
fn cargo_packages_the_sdk() {
    let target = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO"))
        .args([
            "package",
            "-p",
            "sprig-sdk",
            "--allow-dirty",
            "--no-verify",
            "--offline",
        ])
        .arg("--target-dir")
        .arg(target.path())
        .current_dir(workspace())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let version = table(&manifest("sdk/Cargo.toml"), "package")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let crate_file = target
        .path()
        .join("package")
        .join(format!("sprig-sdk-{version}.crate"));
    assert!(
        crate_file.is_file(),
        "no {}: {stderr}",
        crate_file.display()
    );
}
