//! Process isolation end to end (`isolation = "process"`, the default): the real gateway runs each
//! route's plugin in a `sprig plugin-host` child process. A plugin that aborts, panics, segfaults, hangs
//! or spins costs only its host: the recovery ends FAILED with the cause named, the gateway keeps serving
//! devices, its CPU comes back, and no host outlives its use or the gateway.

use std::time::{Duration, Instant};

use sprig_tests::procfs;
use sprig_tests::{plugin_path, run_a_job_end_to_end, start_job, wait_for_recovery, Gateway};

/// The misbehaving modes, and what the FAILED recovery's `lastError` must say.
const MODES: [(&str, &str); 5] = [
    ("abort", "killed by SIGABRT"),
    ("panic", "panicked"),
    ("segfault", "killed by SIGSEGV"),
    ("hang", "overran its budget of 300 ms; host killed"),
    ("spin", "overran its budget of 300 ms; host killed"),
];

/// One route per mode (`{mode}-*`), in the default isolation: 300 ms budget, two failures to FAILED.
/// `hang` and `spin` would take a minute if nothing stopped them. `panic` gets 20 s: with
/// `RUST_BACKTRACE` set, a fresh host symbolizes the panic's backtrace from the debug build's debug info,
/// which takes longer than 300 ms.
fn misbehaving_routes(config: String) -> String {
    let misbehave = plugin_path("sprig-plugin-misbehave");
    let mut text = config;
    for (mode, _) in MODES {
        let budget_ms = if mode == "panic" { 20_000 } else { 300 };
        text.push_str(&format!(
            "\n[[recovery]]\nthings = \"{mode}-*\"\nplugin = {misbehave:?}\nbudget_ms = {budget_ms}\n\
             max_failures = 2\nretry_backoff_ms = 100\n[recovery.config]\nmode = \"{mode}\"\n\
             hang_ms = 60000\n"
        ));
    }
    text
}

/// The gateway's children that are plugin hosts, live or not reaped.
fn hosts(gateway: &Gateway) -> Vec<procfs::Stat> {
    let hosts: Vec<procfs::Stat> = procfs::children(gateway.pid());
    for host in &hosts {
        let cmdline = procfs::cmdline(host.pid);
        assert!(
            cmdline.contains("plugin-host --library") || host.state == 'Z',
            "a child of the gateway that is no plugin host: {cmdline}"
        );
    }
    hosts
}

/// Waits until the gateway and its hosts use less than a fifth of a core over a quarter second, and
/// returns how long that took; panics after `within`.
fn wait_for_idle(gateway: &Gateway, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let share = procfs::cpu_share(gateway.pid(), Duration::from_millis(250));
        if share < 0.2 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the gateway and its hosts still use {:.0} % of a core after {within:?}",
            share * 100.0
        );
    }
}

/// Waits until none of `pids` is a live process (zombies of processes reparented away count as gone).
fn wait_until_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    while let Some(pid) = pids.iter().find(|&&pid| procfs::is_alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "plugin host {pid} still runs after {within:?}: {}",
            procfs::cmdline(*pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crashing_and_overrunning_plugins_end_only_their_host_and_the_gateway_serves_on() {
    let mut gateway = Gateway::start_with(misbehaving_routes);
    let pid = gateway.pid();
    let started_hosts = hosts(&gateway);
    assert_eq!(started_hosts.len(), MODES.len(), "one host per route");
    assert!(started_hosts.iter().all(|h| h.state != 'Z'));
    let mut op = gateway.operator().await;

    for (mode, cause) in MODES {
        let thing = format!("{mode}-1");
        let _device = start_job(&gateway, &mut op, &thing, &format!("job-{mode}")).await;
        op.request(
            "DeleteJob",
            serde_json::json!({"jobId": format!("job-{mode}"), "force": true}),
        )
        .await
        .unwrap();
        let done = wait_for_recovery(&mut op, &thing, Duration::from_secs(30), |r| {
            r["status"] != "PENDING"
        })
        .await;
        assert_eq!(done["status"], "FAILED", "{mode}: {done}");
        assert_eq!(done["failures"], 2, "{mode}: {done}");
        let error = done["lastError"].as_str().unwrap_or_default();
        assert!(
            error.contains("sprig-plugin-misbehave") && error.contains(cause),
            "{mode}: {error}"
        );

        // The gateway itself is untouched: the same process, serving a device a whole job.
        assert_eq!(gateway.pid(), pid);
        assert!(procfs::is_alive(pid), "{mode}: the gateway died");
        run_a_job_end_to_end(
            &gateway,
            &mut op,
            &format!("ok-{mode}"),
            &format!("after-{mode}"),
        )
        .await;

        // An overrun killed the host: within 2 s of the budget the CPU is back (a spinning plugin would
        // keep a core busy for a minute), and so it is after every other mode.
        let idle_after = wait_for_idle(&gateway, Duration::from_secs(2));
        eprintln!("{mode}: idle {idle_after:?} after the recovery failed");
    }

    // Every host that died was reaped and, with no call since, not restarted: only the panic route's
    // host (the sdk's shim caught its panics) is left, and none of the hosts started with the gateway
    // survives elsewhere.
    let left = hosts(&gateway);
    assert!(left.iter().all(|h| h.state != 'Z'), "zombies: {left:?}");
    assert_eq!(left.len(), 1, "{left:?}");
    let panic_host = left[0].pid;
    assert!(started_hosts.iter().any(|h| h.pid == panic_host));
    let dead: Vec<u32> = started_hosts
        .iter()
        .map(|h| h.pid)
        .filter(|&p| p != panic_host)
        .collect();
    wait_until_gone(&dead, Duration::from_secs(1));

    // What the hosts printed is in the gateway's log, with the route; each restart is logged.
    let line = gateway.wait_for_log("misbehave: aborting for abort-1", Duration::from_secs(5));
    assert!(line.contains("recovery[0]"), "{line}");
    let line = gateway.wait_for_log(
        "misbehave: segfaulting for segfault-1",
        Duration::from_secs(5),
    );
    assert!(line.contains("recovery[2]"), "{line}");
    assert!(
        gateway.log_lines("restarting the plugin host").len() >= 4,
        "{}",
        gateway.log()
    );

    // A clean stop ends the last host too.
    drop(op);
    assert_eq!(gateway.terminate(), Some(0), "{}", gateway.log());
    wait_until_gone(&[panic_host], Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_with_sigkill_leaves_no_host_behind() {
    let reset = plugin_path("sprig-plugin-reset");
    let misbehave = plugin_path("sprig-plugin-misbehave");
    let mut gateway = Gateway::start_with(|config| {
        format!(
            "{config}\n[[recovery]]\nthings = \"hang-*\"\nplugin = {misbehave:?}\nbudget_ms = 60000\n\
             [recovery.config]\nmode = \"hang\"\n\
             [[recovery]]\nthings = \"a-*\"\nplugin = {reset:?}\nisolation = \"process\"\n\
             [recovery.config]\nstatus_details = {{ state = \"reset\" }}\n\
             [[recovery]]\nthings = \"b-*\"\nplugin = {reset:?}\nisolation = \"in-process\"\n\
             [recovery.config]\nstatus_details = {{ state = \"reset\" }}\n"
        )
    });
    // Two routes in hosts, one in the gateway's own process.
    let pids: Vec<u32> = hosts(&gateway).iter().map(|h| h.pid).collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    // One host is busy in a call (it does not read its pipe), the other idle.
    let mut op = gateway.operator().await;
    let _device = start_job(&gateway, &mut op, "hang-1", "job-hang").await;
    op.request(
        "DeleteJob",
        serde_json::json!({"jobId": "job-hang", "force": true}),
    )
    .await
    .unwrap();
    wait_for_recovery(&mut op, "hang-1", Duration::from_secs(10), |r| {
        r["attempts"] == 1
    })
    .await;
    drop(op);
    gateway.kill9();
    // The kernel kills both (PR_SET_PDEATHSIG): the busy one would not notice its pipe closing.
    wait_until_gone(&pids, Duration::from_secs(2));
}
