//! What an operator sees of the recovery routes' plugins and how it clears a quarantine or a backoff, end
//! to end with the real binary and the real `misbehave` plugin: `sprig list-plugins`,
//! `sprig describe-plugin`, `sprig plugin reset ROUTE` (control operations ListPlugins, DescribePlugin,
//! ResetPlugin), in process isolation (the host is killed and restarted) and in-process (a quarantined
//! instance is replaced, its stuck thread abandoned).

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sprig_tests::procfs;
use sprig_tests::{hash_password, plugin_path, start_job, wait_for_recovery, Gateway, Operator};

/// A `[[recovery]]` route running `misbehave` in `mode` for `{name}-*`, with a 300 ms budget and the
/// given extra settings.
fn misbehaving_route(name: &str, mode: &str, settings: &str) -> String {
    let misbehave = plugin_path("sprig-plugin-misbehave");
    format!(
        "\n[[recovery]]\nname = \"{name}\"\nthings = \"{name}-*\"\nplugin = {misbehave:?}\n\
         budget_ms = 300\nretry_backoff_ms = 10\n{settings}\n[recovery.config]\nmode = \"{mode}\"\n\
         hang_ms = 60000\n"
    )
}

/// Runs an operator command against `gateway`; its JSON output if it succeeded.
fn cli_json(gateway: &Gateway, args: &[&str]) -> Value {
    let out = gateway.cli(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `sprig describe-plugin --route-name ROUTE`'s plugin.
fn describe(gateway: &Gateway, route: &str) -> Value {
    cli_json(gateway, &["describe-plugin", "--route-name", route])["plugin"].clone()
}

/// Polls `describe-plugin` until the route's plugin satisfies `wanted`, and returns it.
fn wait_for_plugin(
    gateway: &Gateway,
    route: &str,
    within: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let plugin = describe(gateway, route);
        if wanted(&plugin) {
            return plugin;
        }
        assert!(
            Instant::now() < deadline,
            "{route}: not as expected within {within:?}: {plugin:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A device of `thing` running `job`, which is then force-deleted: a recovery for the route.
async fn interrupt(
    gateway: &Gateway,
    op: &mut Operator,
    thing: &str,
    job: &str,
) -> sprig_tests::device::Device {
    let device = start_job(gateway, op, thing, job).await;
    op.request("DeleteJob", json!({"jobId": job, "force": true}))
        .await
        .unwrap();
    device
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_for_an_overrun_is_seen_and_reset_and_the_route_serves_again() {
    let gateway = Gateway::start_with(|config| {
        config
            + &misbehaving_route("stuck", "hang", "max_failures = 1")
            + &misbehaving_route("crashy", "segfault", "max_failures = 30\nmax_attempts = 40")
    });
    let mut op = gateway.operator().await;

    // At start: both hosts run, each has answered its `create`.
    let listed = cli_json(&gateway, &["list-plugins"]);
    let plugins = listed["plugins"].as_array().unwrap();
    let names: Vec<&str> = plugins.iter().map(|p| text(&p["routeName"])).collect();
    assert_eq!(names, ["stuck", "crashy"]);
    let stuck = &plugins[0];
    assert_eq!(stuck["state"], "READY", "{stuck:#}");
    assert_eq!(stuck["isolation"], "process");
    assert_eq!(stuck["plugin"]["name"], "sprig-plugin-misbehave");
    assert_eq!(stuck["stats"]["calls"], 1, "{stuck:#}");
    assert!(stuck.get("lastFailure").is_none(), "{stuck:#}");
    let first_host = stuck["hostPid"].as_u64().expect("a host pid") as u32;
    assert!(procfs::is_alive(first_host));

    // A hanging call overruns: the host is killed, the recovery FAILED, and the plugin says why.
    let _stuck_1 = interrupt(&gateway, &mut op, "stuck-1", "job-stuck-1").await;
    let failed = wait_for_recovery(&mut op, "stuck-1", Duration::from_secs(20), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["routeName"], "stuck", "{failed}");
    let lost = describe(&gateway, "stuck");
    assert!(
        ["BACKING_OFF", "STOPPED"].contains(&text(&lost["state"])),
        "{lost:#}"
    );
    assert!(lost.get("hostPid").is_none(), "{lost:#}");
    assert_eq!(lost["hostsLostInARow"], 1, "{lost:#}");
    assert_eq!(lost["stats"]["timedOut"], 1, "{lost:#}");
    assert_eq!(lost["lastFailure"]["kind"], "TIMED_OUT", "{lost:#}");
    let message = text(&lost["lastFailure"]["message"]);
    assert!(
        message.contains("overran its budget of 300 ms; host killed"),
        "{message}"
    );
    assert!(!procfs::is_alive(first_host), "the overrun killed the host");

    // `sprig plugin reset ROUTE`: a new host at once.
    let reset = cli_json(&gateway, &["plugin", "reset", "stuck"])["plugin"].clone();
    assert_eq!(reset["state"], "READY", "{reset:#}");
    assert_eq!(reset["hostsLostInARow"], 0, "{reset:#}");
    assert_eq!(reset["stats"]["restarts"], 1, "{reset:#}");
    let second_host = reset["hostPid"].as_u64().expect("a new host") as u32;
    assert_ne!(second_host, first_host);
    assert!(procfs::is_alive(second_host));
    assert_eq!(reset["lastFailure"], lost["lastFailure"], "history is kept");

    // The next recovery is called again: a second overrun.
    let _stuck_2 = interrupt(&gateway, &mut op, "stuck-2", "job-stuck-2").await;
    wait_for_recovery(&mut op, "stuck-2", Duration::from_secs(20), |r| {
        r["status"] == "FAILED"
    })
    .await;
    let again = describe(&gateway, "stuck");
    assert_eq!(again["stats"]["timedOut"], 2, "{again:#}");

    // A host that crashes at every call backs off longer each time; the route's recovery waits meanwhile.
    let _crashy = interrupt(&gateway, &mut op, "crashy-1", "job-crashy").await;
    let backing_off = wait_for_plugin(&gateway, "crashy", Duration::from_secs(40), |p| {
        p["state"] == "BACKING_OFF" && p["hostsLostInARow"].as_u64() >= Some(5)
    });
    assert_eq!(
        backing_off["lastFailure"]["kind"], "CRASHED",
        "{backing_off:#}"
    );
    assert!(
        text(&backing_off["lastFailure"]["message"]).contains("killed by SIGSEGV"),
        "{backing_off:#}"
    );
    let retry_in =
        backing_off["retryAt"].as_f64().unwrap() - backing_off["stateSince"].as_f64().unwrap();
    assert!(retry_in >= 1.5, "the 5th loss waits 1.6 s: {backing_off:#}");
    let recovery = wait_for_recovery(&mut op, "crashy-1", Duration::from_secs(1), |_| true).await;
    assert_eq!(recovery["status"], "PENDING", "{recovery}");
    assert_eq!(recovery["routeName"], "crashy");
    assert!(
        text(&recovery["lastError"]).contains("killed by SIGSEGV"),
        "{recovery}"
    );

    // A reset cuts the backoff short.
    let reset = cli_json(&gateway, &["plugin", "reset", "crashy"])["plugin"].clone();
    assert_eq!(reset["state"], "READY", "{reset:#}");
    assert_eq!(reset["hostsLostInARow"], 0, "{reset:#}");
    assert!(reset.get("retryAt").is_none(), "{reset:#}");
    assert!(reset["hostPid"].is_u64(), "{reset:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_process_quarantine_is_seen_by_the_plugin_and_its_recoveries_and_reset() {
    let gateway = Gateway::start_with(|config| {
        config
            + &misbehaving_route(
                "stuck",
                "hang",
                "isolation = \"in-process\"\nmax_failures = 5",
            )
    });
    let mut op = gateway.operator().await;
    let ready = describe(&gateway, "stuck");
    assert_eq!(ready["state"], "READY", "{ready:#}");
    assert_eq!(ready["isolation"], "in-process");
    assert_eq!(
        (&ready["replacementsLeft"], &ready["abandonedThreads"]),
        (&json!(3), &json!(0)),
        "{ready:#}"
    );
    assert!(ready.get("hostPid").is_none(), "{ready:#}");

    // Each overrun quarantines the instance and the next call replaces it, three times; then the
    // route's calls fail at once, and the recovery ends FAILED saying how to clear it.
    let _device = interrupt(&gateway, &mut op, "stuck-1", "job-1").await;
    let failed = wait_for_recovery(&mut op, "stuck-1", Duration::from_secs(30), |r| {
        r["status"] != "PENDING"
    })
    .await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let described = op
        .request(
            "DescribeRecovery",
            json!({"recoveryId": failed["recoveryId"]}),
        )
        .await
        .unwrap()["recovery"]
        .clone();
    assert_eq!(
        (&described["attempts"], &described["failures"]),
        (&json!(5), &json!(5)),
        "{described}"
    );
    assert_eq!(described["routeName"], "stuck");
    let error = text(&described["lastError"]);
    assert!(
        error.contains("is quarantined") && error.contains("`sprig plugin reset stuck`"),
        "{error}"
    );

    let quarantined = describe(&gateway, "stuck");
    assert_eq!(quarantined["state"], "QUARANTINED", "{quarantined:#}");
    assert!(
        text(&quarantined["stateReason"]).contains("did not answer within its 300ms budget"),
        "{quarantined:#}"
    );
    assert_eq!(quarantined["replacementsLeft"], 0, "{quarantined:#}");
    assert_eq!(quarantined["abandonedThreads"], 4, "{quarantined:#}");
    assert_eq!(
        quarantined["lastFailure"]["kind"], "QUARANTINED",
        "{quarantined:#}"
    );
    let stats = &quarantined["stats"];
    assert_eq!(
        (
            &stats["timedOut"],
            &stats["quarantined"],
            &stats["restarts"]
        ),
        (&json!(4), &json!(1), &json!(3)),
        "{quarantined:#}"
    );

    // A reset makes a new instance; the stuck threads cannot be killed, and the reply says so.
    let reset = cli_json(&gateway, &["plugin", "reset", "stuck"])["plugin"].clone();
    assert_eq!(reset["state"], "READY", "{reset:#}");
    assert_eq!(reset["replacementsLeft"], 3, "{reset:#}");
    assert_eq!(reset["abandonedThreads"], 4, "{reset:#}");
    assert_eq!(reset["stats"]["restarts"], 4, "{reset:#}");

    // The next recovery reaches the plugin again (an overrun, not a refusal).
    let _device = interrupt(&gateway, &mut op, "stuck-2", "job-2").await;
    let called = wait_for_plugin(&gateway, "stuck", Duration::from_secs(20), |p| {
        p["stats"]["timedOut"].as_u64() >= Some(5)
    });
    assert_eq!(called["stats"]["quarantined"], 1, "{called:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_operators_without_every_grant_are_refused() {
    let hash = hash_password("acme-pw");
    let gateway = Gateway::start_with(|config| {
        format!(
            "{config}\n[[auth.operators]]\nusername = \"acme\"\npassword_hash = \"{hash}\"\n\
             namespaces = [\"acme\"]\nstandard_jobs = true\n{}",
            misbehaving_route("stuck", "hang", "")
        )
    });

    let out = gateway.cli(&["plugin", "reset", "nope"]);
    assert_eq!(out.status.code(), Some(254), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "An error occurred (ResourceNotFoundException) when calling the ResetPlugin operation: no \
         [[recovery]] route is named nope; the routes are: stuck"
    );
    let out = gateway.cli(&["describe-plugin", "--route-name", "nope"]);
    assert_eq!(out.status.code(), Some(254), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(ResourceNotFoundException)"),
        "{}",
        stderr(&out)
    );

    // An operator of one namespace may not see or reset what serves every namespace.
    let pid_before = describe(&gateway, "stuck")["hostPid"].clone();
    let as_acme = ["--username", "acme", "--password", "acme-pw"];
    for command in [&["plugin", "reset", "stuck"][..], &["list-plugins"]] {
        let out = gateway.cli(&[command, &as_acme[..]].concat());
        assert_eq!(
            out.status.code(),
            Some(254),
            "{command:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("(UnauthorizedException)")
                && stderr(&out).contains("operator acme may not call"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        describe(&gateway, "stuck")["hostPid"],
        pid_before,
        "nothing was reset"
    );
}
