//! Plugin logging end to end: what a plugin logs with the sdk's macros (`sprig_sdk::warn!` …) reaches the
//! real gateway's log at its level, tagged with the plugin's name and its route, in both isolations; and a
//! plugin logging in a loop has its lines bounded, with how many were dropped said in the log.

use std::time::Duration;

use serde_json::json;
use sprig_tests::{plugin_path, start_job, wait_for_recovery, Gateway};

/// A misbehave route answering `Recovered` and logging `log` (extra config lines in `extra`).
fn logging_route(things: &str, isolation: &str, extra: &str) -> String {
    let misbehave = plugin_path("sprig-plugin-misbehave");
    format!(
        "\n[[recovery]]\nthings = \"{things}\"\nplugin = {misbehave:?}\nisolation = \"{isolation}\"\n\
         [recovery.config]\nmode = \"ok\"\n{extra}\n"
    )
}

/// Force-deletes `job` under a device `thing` that runs it, and waits until its recovery ends.
async fn recover(gateway: &Gateway, thing: &str, job: &str) {
    let mut op = gateway.operator().await;
    let _device = start_job(gateway, &mut op, thing, job).await;
    op.request("DeleteJob", json!({"jobId": job, "force": true}))
        .await
        .unwrap();
    let done = wait_for_recovery(&mut op, thing, Duration::from_secs(20), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(done["status"], "RECOVERED", "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_log_lines_reach_the_gateway_log_with_level_plugin_and_route() {
    let gateway = Gateway::start_with(|config| {
        config
            + &logging_route(
                "hosted-*",
                "process",
                "log = \"hosted line for {thing}\"\nlog_level = \"warn\"\nlog_from_thread = true",
            )
            + &logging_route(
                "inproc-*",
                "in-process",
                "log = \"in-process line for {thing}\"\nlog_level = \"error\"",
            )
            + &logging_route(
                "quiet-*",
                "process",
                "log = \"debug line for {thing}\"\nlog_level = \"debug\"",
            )
    });
    recover(&gateway, "hosted-1", "job-hosted").await;
    recover(&gateway, "inproc-1", "job-inproc").await;
    recover(&gateway, "quiet-1", "job-quiet").await;

    // From a thread of the plugin's own, in its host process: the route is the host's.
    let line = gateway.wait_for_log("hosted line for hosted-1", Duration::from_secs(5));
    for expected in [
        "WARN",
        "sprig::plugin",
        "sprig-plugin-misbehave",
        "recovery[0]",
    ] {
        assert!(line.contains(expected), "{expected:?} missing: {line}");
    }
    assert!(
        !line.contains("plugin host:"),
        "a log line, not raw stderr: {line}"
    );
    // In-process, from the instance's thread: the route is the instance's.
    let line = gateway.wait_for_log("in-process line for inproc-1", Duration::from_secs(5));
    for expected in [
        "ERROR",
        "sprig::plugin",
        "sprig-plugin-misbehave",
        "recovery[1]",
    ] {
        assert!(line.contains(expected), "{expected:?} missing: {line}");
    }
    // The gateway's default filter (info) hides a plugin's debug lines, as its own.
    assert!(
        gateway.log_lines("debug line for quiet-1").is_empty(),
        "{}",
        gateway.log()
    );
}

/// The lines of `needle` in the log, and the lines dropped according to the log's summaries.
fn admitted_and_dropped(gateway: &Gateway, needle: &str, route: &str) -> (usize, u64) {
    let admitted = gateway.log_lines(needle).len();
    let dropped = gateway
        .log_lines("log lines dropped")
        .iter()
        .filter(|line| line.contains(route))
        .map(|line| {
            let count = line
                .split("dropped=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no count: {line}"));
            count.parse::<u64>().unwrap()
        })
        .sum();
    (admitted, dropped)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_logging_in_a_loop_is_bounded_and_the_drops_are_counted() {
    const LINES: u64 = 20_000;
    let flood = |name: &str| {
        format!("log = \"{name} flood line\"\nlog_level = \"info\"\nlog_repeat = {LINES}")
    };
    let gateway = Gateway::start_with(|config| {
        config
            + &logging_route("hosted-*", "process", &flood("hosted"))
            + &logging_route("inproc-*", "in-process", &flood("inproc"))
    });
    recover(&gateway, "hosted-1", "job-hosted").await;
    recover(&gateway, "inproc-1", "job-inproc").await;

    for (name, route) in [("hosted", "recovery[0]"), ("inproc", "recovery[1]")] {
        // The summary is logged after the call that flooded: by the time the recovery is listed as
        // RECOVERED it is in the log (in-process), or on its way through the host's pipe.
        gateway.wait_for_log(
            &format!("route=\"{route}\" dropped="),
            Duration::from_secs(5),
        );
        let (admitted, dropped) =
            admitted_and_dropped(&gateway, &format!("{name} flood line"), route);
        // A burst of 100 and 50 a second: a loop of 20,000 lines passes a few hundred at most.
        assert!(
            (50..=1_000).contains(&admitted),
            "{name}: {admitted} lines admitted"
        );
        assert_eq!(
            admitted as u64 + dropped,
            LINES,
            "{name}: every line is either in the log or counted as dropped"
        );
    }
}
