//! Plugins in C, against `sdk/include/sprig_plugin.h`: `plugins/c-example` built with the system C
//! compiler, checked by `sprig plugin check`, and running a real recovery in the real gateway (in a host
//! process, the default), its log lines in the gateway's log; and a plugin built against ABI version 1's
//! first, shorter descriptor (no `set_host`), which a gateway must still accept and run. Skipped, saying
//! so, where no C compiler exists (`.ci/run` installs one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sprig_tests::{sprig_bin, start_job, target_dir, wait_for_recovery, workspace, Gateway};

/// A plugin of ABI version 1's first layout: the descriptor ends after `free`, its `size` says so, and
/// it logs to stderr, having no host callback.
const FIRST_LAYOUT_PLUGIN: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sprig_plugin.h"

typedef struct {
    uint32_t abi_version, size;
    SprigBytes sdk_version, name, version;
    SprigCreateFn create;
    SprigRecoverFn recover;
    SprigDestroyFn destroy;
    SprigFreeFn free;
} FirstDescriptor;

static int instance;
static int32_t create(SprigBytes config, void **out_instance, SprigBytes *out_message) {
    (void)config; (void)out_message;
    *out_instance = &instance;
    return SPRIG_STATUS_OK;
}
static int32_t recover(void *instance, SprigBytes context, SprigBytes *out) {
    (void)instance; (void)context;
    static const char answer[] = "{\"actions\":[],\"outcome\":{\"type\":\"recovered\"}}";
    char *copy = malloc(sizeof answer);
    memcpy(copy, answer, sizeof answer);
    fprintf(stderr, "first-layout plugin: recovering, no host callback\n");
    *out = (SprigBytes){(const uint8_t *)copy, sizeof answer - 1};
    return SPRIG_STATUS_OK;
}
static void destroy(void *instance) { (void)instance; }
static void release(SprigBytes bytes) { free((void *)bytes.ptr); }

const FirstDescriptor SPRIG_PLUGIN_DESCRIPTOR = {
    SPRIG_ABI_VERSION, sizeof(FirstDescriptor), SPRIG_BYTES_LITERAL(SPRIG_SDK_VERSION),
    SPRIG_BYTES_LITERAL("first-layout"), SPRIG_BYTES_LITERAL("1.0.0"),
    create, recover, destroy, release,
};
"#;

/// `cc`, if there is one.
fn c_compiler() -> Option<&'static str> {
    let found = Command::new("cc").arg("--version").output();
    found.is_ok_and(|out| out.status.success()).then_some("cc")
}

/// Builds `source` as a plugin library `lib{name}.so` under the target dir, strictly, as its README says.
fn build_c_plugin(cc: &str, source: &Path, name: &str) -> PathBuf {
    let dir = target_dir().join("c-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let library = dir.join(format!("lib{name}.so"));
    let out = Command::new(cc)
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o",
        ])
        .arg(&library)
        .arg(source)
        .arg("-I")
        .arg(workspace().join("sdk/include"))
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "{} does not build:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    library
}

/// `sprig plugin check PATH`: its stdout, which it must print (the plugin is accepted).
fn check(library: &Path) -> String {
    let out = Command::new(sprig_bin())
        .args(["plugin", "check"])
        .arg(library)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn a_c_plugin_is_checked_and_recovers_a_device_through_the_gateway() {
    let Some(cc) = c_compiler() else {
        eprintln!("SKIPPED: no C compiler (`cc`) on this machine; .ci/run installs one");
        return;
    };
    let example = build_c_plugin(
        cc,
        &workspace().join("plugins/c-example/plugin.c"),
        "sprig_plugin_c_example",
    );
    let first_source = target_dir().join("c-plugins/first_layout.c");
    std::fs::create_dir_all(first_source.parent().unwrap()).unwrap();
    std::fs::write(&first_source, FIRST_LAYOUT_PLUGIN).unwrap();
    let first = build_c_plugin(cc, &first_source, "first_layout");

    let checked = check(&example);
    assert!(
        checked.contains("name:        sprig-plugin-c-example"),
        "{checked}"
    );
    assert!(checked.contains("ABI version: 1"), "{checked}");
    assert!(check(&first).contains("name:        first-layout"));

    let gateway = Gateway::start_with(|config| {
        format!(
            "{config}\n[[recovery]]\nthings = \"c-*\"\nplugin = {example:?}\n\
             [[recovery]]\nthings = \"old-*\"\nplugin = {first:?}\n"
        )
    });
    let mut op = gateway.operator().await;
    let mut device = start_job(&gateway, &mut op, "c-1", "fw-c").await;
    op.request("DeleteJob", json!({"jobId": "fw-c", "force": true}))
        .await
        .unwrap();
    let command = device
        .expect_message("$aws/things/c-1/rollback", Duration::from_secs(10))
        .await;
    assert_eq!(
        command,
        json!({"jobId": "fw-c", "action": "rollback", "by": "c-example"})
    );
    let done = wait_for_recovery(&mut op, "c-1", Duration::from_secs(10), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(done["status"], "RECOVERED", "{done}");
    // Its log lines, through the callback: at their level, with its name and route, not as raw stderr.
    let line = gateway.wait_for_log(
        "c-example: sent rollback to c-1 for job fw-c",
        Duration::from_secs(5),
    );
    for expected in [
        "INFO",
        "sprig::plugin",
        "sprig-plugin-c-example",
        "recovery[0]",
    ] {
        assert!(line.contains(expected), "{expected:?} missing: {line}");
    }

    // The first layout: accepted, never handed a host (it has no set_host), and it runs.
    let _old = start_job(&gateway, &mut op, "old-1", "fw-old").await;
    op.request("DeleteJob", json!({"jobId": "fw-old", "force": true}))
        .await
        .unwrap();
    let done = wait_for_recovery(&mut op, "old-1", Duration::from_secs(10), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(done["status"], "RECOVERED", "{done}");
    let line = gateway.wait_for_log("first-layout plugin: recovering", Duration::from_secs(5));
    assert!(
        line.contains("plugin host:") && line.contains("recovery[1]"),
        "{line}"
    );
}
