//! `include/sprig_plugin.h` describes the very ABI of `sprig_sdk::abi`: the system C compiler builds
//! `c_layout.c`, which prints every size, offset and constant the header declares, and each is compared
//! with the Rust side. Skipped, saying so, where no C compiler exists (`.ci/run` installs one).

use std::collections::HashMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use sprig_sdk::abi::{self, Bytes, Descriptor, HostApi};

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `cc`, if there is one.
fn c_compiler() -> Option<&'static str> {
    let found = Command::new("cc").arg("--version").output();
    found.is_ok_and(|out| out.status.success()).then_some("cc")
}

/// Compiles `c_layout.c` strictly and runs it: its `name value` lines.
fn header_facts(cc: &str, out_dir: &Path) -> HashMap<String, String> {
    let program = out_dir.join("c_layout");
    let compiled = Command::new(cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o"])
        .arg(&program)
        .arg(sdk_dir().join("tests/c_layout.c"))
        .arg("-I")
        .arg(sdk_dir().join("include"))
        .output()
        .expect("run cc");
    assert!(
        compiled.status.success(),
        "the header does not compile cleanly:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let ran = Command::new(&program).output().expect("run c_layout");
    assert!(ran.status.success());
    String::from_utf8(ran.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn the_c_header_matches_the_rust_abi() {
    let Some(cc) = c_compiler() else {
        eprintln!("SKIPPED: no C compiler (`cc`) on this machine; .ci/run installs one");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let facts = header_facts(cc, dir.path());
    let expected: Vec<(&str, String)> = vec![
        ("sizeof SprigBytes", size_of::<Bytes>().to_string()),
        (
            "offsetof SprigBytes.ptr",
            offset_of!(Bytes, ptr).to_string(),
        ),
        (
            "offsetof SprigBytes.len",
            offset_of!(Bytes, len).to_string(),
        ),
        ("sizeof SprigHostApi", size_of::<HostApi>().to_string()),
        (
            "offsetof SprigHostApi.size",
            offset_of!(HostApi, size).to_string(),
        ),
        (
            "offsetof SprigHostApi.log",
            offset_of!(HostApi, log).to_string(),
        ),
        (
            "sizeof SprigDescriptor",
            size_of::<Descriptor>().to_string(),
        ),
        (
            "alignof SprigDescriptor",
            align_of::<Descriptor>().to_string(),
        ),
        (
            "offsetof SprigDescriptor.abi_version",
            offset_of!(Descriptor, abi_version).to_string(),
        ),
        (
            "offsetof SprigDescriptor.size",
            offset_of!(Descriptor, size).to_string(),
        ),
        (
            "offsetof SprigDescriptor.sdk_version",
            offset_of!(Descriptor, sdk_version).to_string(),
        ),
        (
            "offsetof SprigDescriptor.name",
            offset_of!(Descriptor, name).to_string(),
        ),
        (
            "offsetof SprigDescriptor.version",
            offset_of!(Descriptor, version).to_string(),
        ),
        (
            "offsetof SprigDescriptor.create",
            offset_of!(Descriptor, create).to_string(),
        ),
        (
            "offsetof SprigDescriptor.recover",
            offset_of!(Descriptor, recover).to_string(),
        ),
        (
            "offsetof SprigDescriptor.destroy",
            offset_of!(Descriptor, destroy).to_string(),
        ),
        (
            "offsetof SprigDescriptor.free",
            offset_of!(Descriptor, free).to_string(),
        ),
        (
            "offsetof SprigDescriptor.set_host",
            offset_of!(Descriptor, set_host).to_string(),
        ),
        (
            "SPRIG_DESCRIPTOR_V1_SIZE",
            abi::DESCRIPTOR_V1_SIZE.to_string(),
        ),
        ("SPRIG_ABI_VERSION", abi::ABI_VERSION.to_string()),
        ("SPRIG_STATUS_OK", abi::STATUS_OK.to_string()),
        ("SPRIG_STATUS_ERROR", abi::STATUS_ERROR.to_string()),
        ("SPRIG_STATUS_PANIC", abi::STATUS_PANIC.to_string()),
        ("SPRIG_LOG_ERROR", abi::LOG_ERROR.to_string()),
        ("SPRIG_LOG_WARN", abi::LOG_WARN.to_string()),
        ("SPRIG_LOG_INFO", abi::LOG_INFO.to_string()),
        ("SPRIG_LOG_DEBUG", abi::LOG_DEBUG.to_string()),
        ("SPRIG_LOG_TRACE", abi::LOG_TRACE.to_string()),
        ("SPRIG_MAX_LOG_MESSAGE", abi::MAX_LOG_MESSAGE.to_string()),
        ("SPRIG_SDK_VERSION", abi::SDK_VERSION.to_owned()),
        (
            "SPRIG_DESCRIPTOR_SYMBOL",
            std::str::from_utf8(abi::DESCRIPTOR_SYMBOL)
                .unwrap()
                .trim_end_matches('\0')
                .to_owned(),
        ),
    ];
    for (name, value) in &expected {
        assert_eq!(
            facts.get(*name),
            Some(value),
            "{name}: the header says {:?}, Rust {value}",
            facts.get(*name)
        );
    }
    assert_eq!(
        facts.len(),
        expected.len(),
        "a fact of the header is not checked: {facts:?}"
    );
}
