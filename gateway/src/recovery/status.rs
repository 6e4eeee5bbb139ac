//! What operators see of the routes' plugins (`ListPlugins`, `DescribePlugin`, `ResetPlugin`): the request
//! and response shapes, and the rules that name a plugin's state from its runtime facts.
//!
//! Pure: [`Facts`] in, a [`PluginView`] out, with `now` passed in; [`super::handlers`] gathers the facts
//! from the live instances. Times are epoch seconds with milliseconds, as in the Jobs API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{Isolation, RecoveryRoute};
use crate::plugins::{FailureKind, HostPhase, HostStatus, PluginDescriptor, PluginStats};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListPluginsRequest {
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

/// `DescribePlugin` and `ResetPlugin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRequest {
    pub route_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPluginsResponse {
    pub plugins: Vec<PluginView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `DescribePlugin`'s and `ResetPlugin`'s response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginResponse {
    pub plugin: PluginView,
}

/// One `[[recovery]]` route's plugin as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginView {
    pub route_name: String,
    pub things: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<String>,
    /// `process` or `in-process`, as in the config.
    pub isolation: &'static str,
    pub plugin: PluginInfo,
    pub budget_ms: u64,
    /// [`PluginState::as_str`].
    pub state: &'static str,
    /// Why the plugin is in its state, when it is not READY.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    pub state_since: f64,
    /// When the route's next call may start a new host (BACKING_OFF, FAILED_TO_LOAD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<f64>,
    /// The plugin host's process id (process isolation, while a host runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<u32>,
    /// When the host's call in progress started (process isolation): a call that is still running
    /// long after this is what a reset interrupts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_started_at: Option<f64>,
    /// Hosts lost since one last answered a call (process isolation): what the restart delay grows with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts_lost_in_a_row: Option<u32>,
    /// Quarantined instances the route may still replace by itself before a reset (in-process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacements_left: Option<u32>,
    /// Threads of earlier instances that have not ended (in-process): a thread stuck in an overrun call
    /// cannot be killed, and runs until the plugin returns or the gateway stops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandoned_threads: Option<u32>,
    pub stats: StatsView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureView>,
}

/// The plugin's library, and what its descriptor says (once a host or the gateway loaded it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginInfo {
    pub path: String,
    pub name: String,
    pub version: String,
    pub sdk_version: String,
}

/// The route's calls (`create` of each instance or host, and `recover`), since the gateway started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    pub calls: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub panicked: u64,
    pub garbage: u64,
    pub timed_out: u64,
    pub crashed: u64,
    pub quarantined: u64,
    /// Hosts (process) or instances (in-process) started since the first.
    pub restarts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureView {
    pub at: f64,
    /// [`failure_kind`]: `TIMED_OUT`, `CRASHED`, `PANICKED`, `FAILED`, `GARBAGE`, `QUARANTINED`,
    /// `LOAD_FAILED`.
    pub kind: &'static str,
    pub message: String,
}

/// Where a route's plugin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginState {
    /// It takes calls: a live host, or a live in-process instance.
    Ready,
    /// A new host or instance is loading the library and running `create`.
    Starting,
    /// Process: the last host was lost; the next may start at `retryAt` (the route's recoveries wait,
    /// without an attempt counted against them).
    BackingOff,
    /// Process: the last host was lost and its restart delay is over; the route's next call starts one.
    Stopped,
    /// In-process: an overrun quarantined the instance; its thread is abandoned. The route's next call
    /// replaces it while `replacementsLeft` > 0; after that its calls fail at once until a reset.
    Quarantined,
    /// The last attempt to start a host or make an instance failed (the library cannot be loaded, or
    /// `create` refused its config); process: tried again at `retryAt`.
    FailedToLoad,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Ready => "READY",
            PluginState::Starting => "STARTING",
            PluginState::BackingOff => "BACKING_OFF",
            PluginState::Stopped => "STOPPED",
            PluginState::Quarantined => "QUARANTINED",
            PluginState::FailedToLoad => "FAILED_TO_LOAD",
        }
    }
}

/// A recorded failure of a route's plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub at: SystemTime,
    pub kind: &'static str,
    pub message: String,
}

/// The name of a failure kind in the API.
pub fn failure_kind(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Panicked => "PANICKED",
        FailureKind::Failed => "FAILED",
        FailureKind::Garbage => "GARBAGE",
        FailureKind::TimedOut => "TIMED_OUT",
        FailureKind::Crashed => "CRASHED",
        FailureKind::Quarantined => "QUARANTINED",
    }
}

/// A new host's or instance's library could not be loaded.
pub const LOAD_FAILED: &str = "LOAD_FAILED";

/// An in-process route's instance, as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProcessFacts {
    /// A live instance (`Some(true)`: quarantined), or none.
    pub instance: Option<bool>,
    /// A new instance is being made.
    pub starting: bool,
    /// Since when the instance (or its absence) is as it is.
    pub since: SystemTime,
    /// Why the last instance could not be made, if it could not.
    pub start_error: Option<String>,
    /// When and why the instance was quarantined.
    pub quarantine: Option<(SystemTime, String)>,
    pub replacements_left: u32,
    /// Worker threads of the route's instances still running, the live one's included.
    pub running_threads: usize,
    pub restarts: u64,
}

/// Where a route's plugin runs, and how it stands there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    Host(HostStatus),
    InProcess(InProcessFacts),
    /// Out of service since `since`: the plugin refused the route's config at startup (`message` names
    /// the file, the route and the key); a restart with a fixed config brings it back.
    Refused {
        message: String,
        since: SystemTime,
    },
}

/// Everything known about a route's plugin at one moment.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub route: &'a RecoveryRoute,
    pub descriptor: &'a PluginDescriptor,
    pub stats: PluginStats,
    pub last_failure: Option<&'a Failure>,
    pub place: Where,
}

impl PluginView {
    /// The view of `facts` at `now`.
    pub fn of(facts: &Facts<'_>, now: SystemTime) -> PluginView {
        let route = facts.route;
        let descriptor = facts.descriptor;
        let judged = judge(&facts.place, facts.last_failure);
        let (host, in_process) = match &facts.place {
            Where::Host(host) => (Some(host), None),
            Where::InProcess(facts) => (None, Some(facts)),
            Where::Refused { .. } => (None, None),
        };
        let host_pid = host.and_then(|host| match host.phase {
            HostPhase::Running { pid } => Some(pid),
            _ => None,
        });
        let restarts = host.map_or_else(|| in_process.map_or(0, |f| f.restarts), |h| h.restarts);
        let stats = facts.stats;
        PluginView {
            route_name: route.name.clone(),
            things: route.things.clone(),
            namespace_id: route.namespace.clone(),
            isolation: match route.isolation {
                Isolation::Process => "process",
                Isolation::InProcess => "in-process",
            },
            plugin: PluginInfo {
                path: descriptor.path.display().to_string(),
                name: descriptor.name.clone(),
                version: descriptor.version.clone(),
                sdk_version: descriptor.sdk_version.clone(),
            },
            budget_ms: route.budget_ms,
            state: judged.state.as_str(),
            state_reason: judged.reason,
            state_since: seconds(judged.since),
            retry_at: judged.retry_in.map(|wait| seconds(now + wait)),
            host_pid,
            call_started_at: host.and_then(|host| host.call_since).map(seconds),
            hosts_lost_in_a_row: host.map(|host| host.lost_in_a_row),
            replacements_left: in_process.map(|facts| facts.replacements_left),
            abandoned_threads: in_process.map(abandoned_threads),
            stats: StatsView {
                calls: stats.calls,
                succeeded: stats.succeeded,
                failed: stats.failed,
                panicked: stats.panicked,
                garbage: stats.garbage,
                timed_out: stats.timed_out,
                crashed: stats.crashed,
                quarantined: stats.quarantined,
                restarts,
            },
            last_failure: facts.last_failure.map(|failure| FailureView {
                at: seconds(failure.at),
                kind: failure.kind,
                message: failure.message.clone(),
            }),
        }
    }
}

/// A state, why, since when, and how long until a new host may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub state: PluginState,
    pub reason: Option<String>,
    pub since: SystemTime,
    pub retry_in: Option<Duration>,
}

/// The rules that name a plugin's state.
pub fn judge(place: &Where, last_failure: Option<&Failure>) -> Judged {
    let lost = || last_failure.map(|failure| failure.message.clone());
    match place {
        Where::Host(host) => {
            let (state, reason) = match &host.phase {
                HostPhase::Running { .. } => (PluginState::Ready, None),
                HostPhase::Starting => (PluginState::Starting, None),
                HostPhase::Down {
                    start_error: Some(error),
                } => (PluginState::FailedToLoad, Some(error.clone())),
                HostPhase::Down { start_error: None } if host.restart_delay.is_some() => {
                    (PluginState::BackingOff, lost())
                }
                HostPhase::Down { start_error: None } => (PluginState::Stopped, lost()),
            };
            Judged {
                state,
                reason,
                since: host.since,
                retry_in: host.restart_delay,
            }
        }
        Where::InProcess(facts) => {
            let (state, reason, since) = match (facts.instance, &facts.quarantine) {
                _ if facts.starting => (PluginState::Starting, None, facts.since),
                (Some(true), Some((at, why))) => (PluginState::Quarantined, Some(why.clone()), *at),
                (Some(true), None) => (PluginState::Quarantined, lost(), facts.since),
                (Some(false), _) => (PluginState::Ready, None, facts.since),
                (None, _) => (
                    PluginState::FailedToLoad,
                    facts.start_error.clone().or_else(lost),
                    facts.since,
                ),
            };
            Judged {
                state,
                reason,
                since,
                retry_in: None,
            }
        }
        Where::Refused { message, since } => Judged {
            state: PluginState::FailedToLoad,
            reason: Some(message.clone()),
            since: *since,
            retry_in: None,
        },
    }
}

/// Running threads that are not the live, usable instance's.
fn abandoned_threads(facts: &InProcessFacts) -> u32 {
    let live = usize::from(facts.instance == Some(false));
    facts.running_threads.saturating_sub(live) as u32
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_millis() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn host(phase: HostPhase, restart_delay: Option<Duration>) -> Where {
        Where::Host(HostStatus {
            phase,
            since: at(1_000),
            restart_delay,
            lost_in_a_row: 2,
            restarts: 2,
            call_since: None,
        })
    }

    fn overran() -> Failure {
        Failure {
            at: at(900),
            kind: "TIMED_OUT",
            message: "plugin p overran its budget of 300 ms; host killed".into(),
        }
    }

    fn in_process(instance: Option<bool>, quarantine: bool) -> InProcessFacts {
        InProcessFacts {
            instance,
            starting: false,
            since: at(1_000),
            start_error: None,
            quarantine: quarantine.then(|| (at(2_000), "did not answer".to_owned())),
            replacements_left: 3,
            running_threads: 2,
            restarts: 0,
        }
    }

    #[test]
    fn a_host_is_ready_while_it_runs_and_backs_off_after_a_loss_then_stops() {
        let failure = overran();
        let ready = judge(&host(HostPhase::Running { pid: 7 }, None), Some(&failure));
        assert_eq!((ready.state, ready.reason), (PluginState::Ready, None));

        let wait = Some(Duration::from_millis(400));
        let down = HostPhase::Down { start_error: None };
        let backing_off = judge(&host(down.clone(), wait), Some(&failure));
        assert_eq!(backing_off.state, PluginState::BackingOff);
        assert_eq!(
            backing_off.reason.as_deref(),
            Some(failure.message.as_str())
        );
        assert_eq!(backing_off.retry_in, wait);

        let stopped = judge(&host(down, None), Some(&failure));
        assert_eq!(stopped.state, PluginState::Stopped);
        assert_eq!(stopped.retry_in, None);
    }

    #[test]
    fn a_route_whose_config_was_refused_failed_to_load_for_good() {
        let message =
            "gateway.toml: [[recovery]] \"pumps\" (recovery[0]) [recovery.config] topic: bad";
        let since = SystemTime::UNIX_EPOCH;
        let place = Where::Refused {
            message: message.into(),
            since,
        };
        let judged = judge(&place, Some(&overran()));
        assert_eq!(judged.state, PluginState::FailedToLoad);
        assert_eq!(judged.reason.as_deref(), Some(message));
        assert_eq!((judged.since, judged.retry_in), (since, None));
    }

    #[test]
    fn a_host_that_cannot_start_failed_to_load_with_its_error() {
        let phase = HostPhase::Down {
            start_error: Some("x.so is not a sprig plugin".into()),
        };
        let judged = judge(&host(phase, Some(Duration::from_secs(1))), Some(&overran()));
        assert_eq!(judged.state, PluginState::FailedToLoad);
        assert_eq!(judged.reason.as_deref(), Some("x.so is not a sprig plugin"));
        assert_eq!(judged.retry_in, Some(Duration::from_secs(1)));
        assert_eq!(
            judge(&host(HostPhase::Starting, None), None).state,
            PluginState::Starting
        );
    }

    #[test]
    fn an_in_process_instance_is_quarantined_since_its_overrun() {
        let judged = judge(&Where::InProcess(in_process(Some(true), true)), None);
        assert_eq!(judged.state, PluginState::Quarantined);
        assert_eq!(judged.since, at(2_000));
        assert_eq!(judged.reason.as_deref(), Some("did not answer"));
        let ready = judge(&Where::InProcess(in_process(Some(false), false)), None);
        assert_eq!((ready.state, ready.since), (PluginState::Ready, at(1_000)));
        let mut failed = in_process(None, false);
        failed.start_error = Some("plugin p failed: bad config".into());
        let judged = judge(&Where::InProcess(failed), None);
        assert_eq!(judged.state, PluginState::FailedToLoad);
        assert_eq!(
            judged.reason.as_deref(),
            Some("plugin p failed: bad config")
        );
    }

    #[test]
    fn only_threads_other_than_the_live_instances_are_abandoned() {
        // A usable instance's thread is its own; a quarantined one's is abandoned.
        assert_eq!(abandoned_threads(&in_process(Some(false), false)), 1);
        assert_eq!(abandoned_threads(&in_process(Some(true), true)), 2);
        let mut none = in_process(None, false);
        none.running_threads = 0;
        assert_eq!(abandoned_threads(&none), 0);
    }

    #[test]
    fn the_view_names_the_state_in_aws_style_with_epoch_seconds() {
        let route: RecoveryRoute = toml::from_str(
            "name = \"pumps\"\nthings = \"pump-*\"\nplugin = \"/p/libx.so\"\nbudget_ms = 300\n",
        )
        .unwrap();
        let descriptor = PluginDescriptor {
            name: "x".into(),
            version: "1.0.0".into(),
            sdk_version: "0.1.0".into(),
            abi_version: 1,
            path: "/p/libx.so".into(),
        };
        let failure = overran();
        let facts = Facts {
            route: &route,
            descriptor: &descriptor,
            stats: PluginStats {
                calls: 3,
                succeeded: 1,
                timed_out: 2,
                ..PluginStats::default()
            },
            last_failure: Some(&failure),
            place: host(
                HostPhase::Down { start_error: None },
                Some(Duration::from_millis(400)),
            ),
        };
        let view = serde_json::to_value(PluginView::of(&facts, at(1_100))).unwrap();
        assert_eq!(
            view,
            serde_json::json!({
                "routeName": "pumps",
                "things": "pump-*",
                "isolation": "process",
                "plugin": {"path": "/p/libx.so", "name": "x", "version": "1.0.0", "sdkVersion": "0.1.0"},
                "budgetMs": 300,
                "state": "BACKING_OFF",
                "stateReason": "plugin p overran its budget of 300 ms; host killed",
                "stateSince": 1.0,
                "retryAt": 1.5,
                "hostsLostInARow": 2,
                "stats": {"calls": 3, "succeeded": 1, "failed": 0, "panicked": 0, "garbage": 0,
                          "timedOut": 2, "crashed": 0, "quarantined": 0, "restarts": 2},
                "lastFailure": {"at": 0.9, "kind": "TIMED_OUT",
                                "message": "plugin p overran its budget of 300 ms; host killed"}
            })
        );
    }
}
