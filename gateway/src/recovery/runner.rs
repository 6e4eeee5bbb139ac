//! Runs PENDING recoveries through their plugins and records each outcome.
//!
//! The runner wakes every half second, when the engine reports a change that created recoveries (a
//! `JobEvent`), when a device subscribes (it is attached and listening, so a command published to it now
//! is received), and when a device publishes to its route's `ack_topic`. It reads and records recoveries
//! through the jobs engine, the store's one writer. It
//! runs the due recoveries of attached devices, one call at a time per route instance (plugin instances
//! serialize their calls anyway). A handler failure (panic, error, garbage answer, overrun, crash) is
//! recorded and retried after a backoff that doubles, up to the route's `max_failures`.
//!
//! Each route's plugin runs as its `isolation` says. `"process"`: in a plugin host process
//! ([`HostedInstance`]); a crash or an overrun ends the host, and the next call starts a new one once the
//! host's restart delay has passed; meanwhile the route's recoveries wait, without an attempt counted
//! against them. `"in-process"`: on a worker thread ([`PluginInstance`]); an overrun quarantines the
//! instance, which is replaced by a fresh one at most [`MAX_REPLACEMENTS`] times per route (each stuck
//! instance keeps its thread), after which the route's recoveries fail until an operator resets the
//! route's plugin ([`Handlers::reset`]).
//!
//! A route whose plugin refused its config at startup is out of service ([`Handlers::load`]): its
//! recoveries fail with the refusal, which names the config file, the route and the key.
//!
//! [`HostedInstance`]: crate::plugins::HostedInstance
//! [`PluginInstance`]: crate::plugins::PluginInstance
//! [`MAX_REPLACEMENTS`]: super::handlers::MAX_REPLACEMENTS

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sprig_sdk::{Action, Outcome, Reason, RecoveryContext, MAX_ACKNOWLEDGEMENT};
use tokio::sync::{broadcast, mpsc, watch};

use super::handlers::{Handlers, RouteHandler};
use super::Routes;
use crate::broker::{Broker, BrokerError, InternalSender};
use crate::jobs::clock::now_ms;
use crate::jobs::{Engine, JobEvent};
use crate::model::{RecoveryReason, RecoveryRecord, RecoveryState};
use crate::plugins::FailureKind;

const TICK: Duration = Duration::from_millis(500);

/// Runs recoveries until `shutdown` turns true; `subscribed` is told once acknowledgements are taken.
/// `created` carries the engine's events of changes that created recoveries (see
/// [`Engine::with_recovery_routes`]): they start at once rather than at the next tick.
pub async fn run(
    broker: Arc<Broker>,
    engine: Arc<Engine>,
    routes: Arc<Routes>,
    handlers: Arc<Handlers>,
    mut created: mpsc::UnboundedReceiver<JobEvent>,
    mut shutdown: watch::Receiver<bool>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> Result<(), BrokerError> {
    let mut client = broker.internal_client("sprig-recovery").await?;
    for route in handlers.iter() {
        if let Some(topic) = &route.route().ack_topic {
            client.subscribe(&topic.replace("{thing}", "+")).await?;
        }
    }
    let _ = subscribed.send(());
    let (sender, mut receiver) = client.split();
    let mut subscriptions = broker.subscriptions();
    let runner = Runner {
        broker,
        engine,
        routes,
        handlers,
        sender,
        unflushed: Default::default(),
    };
    // Device -> the connection that subscribed: a device listens until that connection ends.
    let mut listening = Listening::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Which devices to look at this time: one that acknowledged or subscribed, or all of them.
        let mut acknowledgement = None;
        let mut subscribed = None;
        let mut ticked = false;
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tick.tick() => ticked = true,
            Some(_) = created.recv() => {
                // One pass runs every recovery created so far: the events queued meanwhile add nothing.
                while created.try_recv().is_ok() {}
            }
            event = subscriptions.recv() => match event {
                Ok(event) => subscribed = Some((event.client_id, event.connection)),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            message = receiver.next() => acknowledgement = Some(message?),
        }
        let focus = match (acknowledgement, subscribed) {
            (Some((topic, payload)), _) => runner.acknowledge(&topic, &payload, &listening).await,
            (None, Some((thing, connection))) => {
                listening.insert(thing.clone(), connection);
                Some(thing)
            }
            (None, None) => None,
        };
        // Forgetting detached devices walks the whole set: on the tick only, never per event (a fleet
        // subscribing at once would make that N²); each run checks its device's connection anyway.
        if ticked {
            listening.retain(|thing, connection| runner.is_listening(thing, *connection));
        }
        runner.run_due(&listening, focus).await;
    }
    // Plugin hosts end with the gateway, reaped rather than left to the kernel.
    runner.handlers.shutdown().await;
    Ok(())
}

/// Devices that subscribed, by the connection that did.
type Listening = HashMap<String, u64>;

struct Runner {
    broker: Arc<Broker>,
    engine: Arc<Engine>,
    routes: Arc<Routes>,
    handlers: Arc<Handlers>,
    sender: InternalSender,
    /// An outcome was written and not flushed yet (see [`Runner::finish`]).
    unflushed: AtomicBool,
}

impl Runner {
    /// Is connection `connection` of the device `thing`, the one that subscribed, still attached? A newer
    /// connection of the same device counts only once it has subscribed too.
    fn is_listening(&self, thing: &str, connection: u64) -> bool {
        self.broker.sessions().is_current(thing, connection)
    }

    /// A message on an `ack_topic`: the device's PENDING recoveries are acknowledged and due, and keep what
    /// it said (durably, like the rest of the recovery) for the handler's next context. Returns the device.
    ///
    /// Flushed at once unless the device is listening: then its next attempt runs right after, and that
    /// attempt's flush, before the handler call, makes the acknowledgement durable with it (one flush
    /// fewer per acknowledged recovery).
    async fn acknowledge(
        &self,
        topic: &str,
        payload: &[u8],
        listening: &Listening,
    ) -> Option<String> {
        let thing = self
            .handlers
            .iter()
            .find_map(|r| thing_in_topic(r.route().ack_topic.as_deref()?, topic))?;
        let attempted_now = listening
            .get(&thing)
            .is_some_and(|&connection| self.is_listening(&thing, connection));
        let said = acknowledgement_of(payload);
        let now = now_ms();
        let of_thing = thing.clone();
        for mut recovery in self
            .engine
            .open_recoveries(Some(of_thing))
            .await
            .unwrap_or_default()
        {
            recovery.acknowledged = true;
            recovery.acknowledgement = Some(said.clone());
            recovery.next_attempt_at = now;
            recovery.updated_at = now;
            // What the device said must reach its handler even if the gateway stops first.
            if self.save(recovery, !attempted_now).await && attempted_now {
                self.unflushed.store(true, Ordering::Relaxed);
            }
        }
        Some(thing)
    }

    /// Runs every due recovery of the devices that are attached and listening (of `focus` only, if given:
    /// an acknowledgement or a subscription concerns one device, and a full scan per message would make a
    /// burst of N acknowledgements cost N²).
    async fn run_due(&self, listening: &Listening, focus: Option<String>) {
        let now = now_ms();
        let Some(open) = self.engine.open_recoveries(focus).await else {
            return;
        };
        for recovery in open {
            let thing = &recovery.thing_name;
            let listens = listening
                .get(thing)
                .is_some_and(|&connection| self.is_listening(thing, connection));
            if recovery.next_attempt_at <= now && listens {
                self.attempt(recovery).await;
            }
        }
        self.flush_outcomes().await;
    }

    /// Makes the outcomes written since the last flush durable, if any.
    async fn flush_outcomes(&self) {
        if self.unflushed.swap(false, Ordering::Relaxed) {
            self.engine.flush_recoveries().await;
        }
    }

    /// One handler call for `recovery`, and its consequences recorded.
    async fn attempt(&self, mut recovery: RecoveryRecord) {
        let Some(route) = self
            .routes
            .route_for(&recovery.thing_name, recovery.namespace_id.as_deref())
            .and_then(|index| self.handlers.get(index))
        else {
            recovery.last_error = Some("no [[recovery]] route matches this device any more".into());
            return self.finish(recovery, RecoveryState::Failed).await;
        };
        // The route's plugin host was lost and its restart delay has not passed: not this device's
        // failure, so no attempt is counted; the recovery stays due and runs once a host can start.
        if route.restart_delay().is_some() {
            return;
        }
        // Only a call that never returned leaves a PENDING recovery at its last attempt: the gateway
        // stopped during it (a plugin that aborts or crashes takes the process with it). Calling again
        // would crash it again, after every restart.
        if recovery.attempts >= route.route().max_attempts {
            recovery.last_error = Some(format!(
                "gave up after {} attempts: the last one never returned (the gateway stopped during the \
                 handler call: did the plugin abort or crash?)",
                recovery.attempts
            ));
            return self.finish(recovery, RecoveryState::Failed).await;
        }
        // Recorded, and flushed, before the call: a crash during it counts as an attempt, so a plugin that
        // takes the gateway down ends at `max_attempts` instead of in a crash loop.
        recovery.attempts += 1;
        recovery.updated_at = now_ms();
        if !self.save(recovery.clone(), true).await {
            return;
        }
        // That flush made every outcome written before it durable too.
        self.unflushed.store(false, Ordering::Relaxed);
        let context = context_of(&recovery);
        let answer = route.recover(&context).await;
        let now = now_ms();
        recovery.acknowledged = false;
        recovery.acknowledgement = None;
        match answer
            .map_err(|e| operator_error(route, &e))
            .and_then(|answer| check_actions(&recovery.thing_name, answer))
        {
            Ok(answer) => self.apply(&mut recovery, answer, route, now).await,
            Err(error) => {
                tracing::warn!(
                    plugin = route.plugin(),
                    thing = %recovery.thing_name,
                    job_id = %recovery.job_id,
                    attempt = recovery.attempts,
                    %error,
                    "recovery handler failed"
                );
                recovery.failures += 1;
                recovery.last_error = Some(error);
                if recovery.failures >= route.route().max_failures {
                    return self.finish(recovery, RecoveryState::Failed).await;
                }
                let backoff = route
                    .route()
                    .retry_backoff_ms
                    .saturating_mul(1 << (recovery.failures - 1).min(16));
                recovery.next_attempt_at = now + backoff as i64;
            }
        }
        if recovery.state == RecoveryState::Pending
            && recovery.attempts >= route.route().max_attempts
        {
            recovery.last_error = Some(format!("gave up after {} attempts", recovery.attempts));
            return self.finish(recovery, RecoveryState::Failed).await;
        }
        let state = recovery.state;
        self.finish(recovery, state).await;
    }

    /// Carries out the handler's actions and takes its outcome.
    async fn apply(
        &self,
        recovery: &mut RecoveryRecord,
        answer: sprig_sdk::Recovery,
        route: &RouteHandler,
        now: i64,
    ) {
        for action in answer.actions {
            match action {
                Action::Publish { topic, payload, .. } => {
                    if let Err(e) = self
                        .sender
                        .publish(&topic, payload.into_bytes().into())
                        .await
                    {
                        tracing::warn!(thing = %recovery.thing_name, topic, error = %e, "could not publish a recovery command");
                    }
                }
                Action::SetStatusDetails { status_details } => {
                    recovery.recorded_status_details = Some(status_details)
                }
            }
        }
        match answer.outcome {
            Outcome::Recovered => recovery.state = RecoveryState::Recovered,
            Outcome::Failed { reason } => {
                recovery.last_error = Some(reason);
                recovery.state = RecoveryState::Failed;
            }
            Outcome::RetryLater { after_ms } => {
                recovery.next_attempt_at = now + after_ms.min(86_400_000) as i64
            }
        }
        if recovery.state != RecoveryState::Pending {
            tracing::info!(
                plugin = route.plugin(),
                thing = %recovery.thing_name,
                job_id = %recovery.job_id,
                outcome = recovery.state.as_str(),
                attempts = recovery.attempts,
                "recovery ended"
            );
        }
    }

    /// Records the attempt's outcome. Written at once, flushed with the next attempt's flush (before its
    /// handler call) or at the end of the runner's pass, whichever comes first: one flush per recovery
    /// rather than two. A crash in between leaves the recovery PENDING with its attempt counted, and its
    /// handler is called again after the restart, as a crash during the call would.
    async fn finish(&self, mut recovery: RecoveryRecord, state: RecoveryState) {
        recovery.state = state;
        recovery.updated_at = now_ms();
        if self.save(recovery, false).await {
            self.unflushed.store(true, Ordering::Relaxed);
        }
    }

    /// Writes a recovery (and makes it durable at once if `flush`); false if the store failed (logged; the
    /// recovery stays as it was).
    async fn save(&self, recovery: RecoveryRecord, flush: bool) -> bool {
        self.engine.record_recovery(recovery, flush).await
    }
}

/// A plugin failure as the recovery records it: a quarantined route's failure says how to clear it.
fn operator_error(route: &RouteHandler, error: &crate::plugins::PluginError) -> String {
    match error.kind() {
        FailureKind::Quarantined => format!(
            "{error} (route {route}: its instances were replaced {max} times; `sprig plugin reset {route}` \
             makes a new one)",
            route = route.route().name,
            max = super::handlers::MAX_REPLACEMENTS
        ),
        _ => error.to_string(),
    }
}

/// The context a handler gets for `recovery`.
fn context_of(recovery: &RecoveryRecord) -> RecoveryContext {
    RecoveryContext {
        thing_name: recovery.thing_name.clone(),
        job_id: recovery.job_id.clone(),
        namespace_id: recovery.namespace_id.clone(),
        job_document: serde_json::from_str(&recovery.job_document)
            .unwrap_or_else(|_| serde_json::Value::String(recovery.job_document.clone())),
        execution_status: recovery.execution_status.as_str().to_owned(),
        status_details: recovery.status_details.clone(),
        reason: match recovery.reason {
            RecoveryReason::JobDeleted | RecoveryReason::ExecutionDeleted => Reason::ForceDeleted,
            RecoveryReason::JobForceCanceled | RecoveryReason::ExecutionForceCanceled => {
                Reason::ForceCanceled
            }
        },
        attempt: recovery.attempts,
        acknowledged: recovery.acknowledged,
        acknowledgement: recovery
            .acknowledgement
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok()),
    }
}

/// What the handler's context will carry for an acknowledgement's `payload`, as JSON text: the payload
/// itself if it is JSON of at most [`MAX_ACKNOWLEDGEMENT`] bytes, else a JSON string of its text (at most
/// that many bytes of it, cut at a character boundary; invalid UTF-8 replaced).
fn acknowledgement_of(payload: &[u8]) -> String {
    if payload.len() <= MAX_ACKNOWLEDGEMENT {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) {
            return value.to_string();
        }
    }
    let mut end = payload.len().min(MAX_ACKNOWLEDGEMENT);
    let text = loop {
        match std::str::from_utf8(&payload[..end]) {
            Ok(text) => break std::borrow::Cow::Borrowed(text),
            // Cut inside a character: end before it (at most 3 bytes back).
            Err(e) if e.error_len().is_none() => end = e.valid_up_to(),
            Err(_) => break String::from_utf8_lossy(&payload[..end]),
        }
    };
    serde_json::Value::String(text.into_owned()).to_string()
}

/// Every rule for an answer for `thing` (the sdk's `Recovery::validate_for`): anything else is a garbage
/// answer. Also the verdict of `sprig plugin check`'s dry run.
pub(crate) fn check_actions(
    thing: &str,
    answer: sprig_sdk::Recovery,
) -> Result<sprig_sdk::Recovery, String> {
    match answer.validate_for(thing) {
        Ok(()) => Ok(answer),
        Err(why) => Err(format!("garbage answer: {why}")),
    }
}

/// The thing a `{thing}` template names in `topic`, if the topic is an instance of the template.
fn thing_in_topic(template: &str, topic: &str) -> Option<String> {
    let (prefix, suffix) = template.split_once("{thing}")?;
    let thing = topic.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (!thing.is_empty() && !thing.contains('/')).then(|| thing.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_topics_name_their_thing() {
        let template = "$aws/things/{thing}/rollback/ack";
        assert_eq!(
            thing_in_topic(template, "$aws/things/pump-1/rollback/ack"),
            Some("pump-1".into())
        );
        assert_eq!(
            thing_in_topic(template, "$aws/things/a/b/rollback/ack"),
            None
        );
        assert_eq!(
            thing_in_topic(template, "$aws/things/pump-1/rollback"),
            None
        );
    }

    #[test]
    fn acknowledgements_reach_the_handler_as_json_bounded() {
        let context = |payload: &[u8]| {
            let json = acknowledgement_of(payload);
            serde_json::from_str::<serde_json::Value>(&json).unwrap()
        };
        assert_eq!(
            context(br#"{"status": "FAILED", "reason": "disk full"}"#),
            serde_json::json!({"status": "FAILED", "reason": "disk full"})
        );
        assert_eq!(context(b"3"), serde_json::json!(3));
        assert_eq!(context(b"done"), serde_json::json!("done"));
        assert_eq!(context(b""), serde_json::json!(""));
        assert_eq!(context(b"\xffok"), serde_json::json!("\u{fffd}ok"));
        // Too long to keep whole: a string of its first bytes, whole characters only.
        let long = format!("{{\"pad\": \"{}\"}}", "é".repeat(MAX_ACKNOWLEDGEMENT));
        let cut = context(long.as_bytes());
        let text = cut.as_str().unwrap();
        assert!(text.len() <= MAX_ACKNOWLEDGEMENT && text.len() > MAX_ACKNOWLEDGEMENT - 4);
        assert!(long.starts_with(text));
    }

    #[test]
    fn handlers_publish_only_to_their_device() {
        let publish = |topic: &str| sprig_sdk::Recovery {
            actions: vec![Action::Publish {
                topic: topic.into(),
                payload: "{}".into(),
                qos: 1,
            }],
            outcome: Outcome::Recovered,
        };
        assert!(check_actions("d1", publish("$aws/things/d1/rollback")).is_ok());
        assert!(check_actions("d1", publish("$aws/things/d2/rollback")).is_err());
        assert!(check_actions("d1", publish("$sprig/control/x/DeleteJob")).is_err());
    }
}
