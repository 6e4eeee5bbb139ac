//! Last wills: what a client asked to be published when its connection ends without a DISCONNECT (lost,
//! silent past its keep-alive, closed for breaking the protocol). The connection checks the will's topic
//! against the topic rules when it connects (a will nobody may publish is logged then, and again when it
//! would have been sent) and publishes it here, with the properties of its CONNECT (MQTT 5) and an
//! [`Origin`], like any publish of the client's.
//!
//! MQTT 5's Will Delay Interval (§3.1.3.2.2) holds a will back: it is published when the delay or the
//! session ends, whichever comes first; a new connection of the client id before then cancels it, unless
//! it starts a new session (clean start), which ends the old one: then the will goes out at once. A will
//! waits in a task of its own and goes out on a router link of its own, since the client's is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::LinkTx;
use rumqttd::protocol::{LastWill, LastWillProperties, Packet, Publish, PublishProperties};
use tokio::sync::oneshot;

use super::internal::{disconnect_now, push_now};
use super::origin::Origin;
use super::topics::{served_directly, to_internal};
use super::{stopped, Shared};

/// A will, ready to be published.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    /// External form; allowed by the topic rules.
    pub(crate) topic: String,
    pub(crate) message: Bytes,
    pub(crate) retain: bool,
    /// The publish's properties, [`Origin`] attached.
    pub(crate) props: Option<PublishProperties>,
    /// The Will Delay Interval (zero: none).
    pub(crate) delay: Duration,
}

impl Will {
    /// The will of a CONNECT (`topic` checked by the caller), from client `client_id`.
    pub(crate) fn new(
        client_id: &str,
        topic: &str,
        will: LastWill,
        props: Option<LastWillProperties>,
    ) -> Will {
        let origin = Origin::now(will.qos as u8, will.retain, client_id);
        let delay_s = props.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
        let props = props.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            content_type: p.content_type,
            ..PublishProperties::default()
        });
        Will {
            topic: topic.to_owned(),
            message: will.message,
            retain: will.retain,
            props: origin.attach(props),
            delay: Duration::from_secs(delay_s.into()),
        }
    }
}

/// Publishes `will` now, through the router link `tx` (a `$` topic goes to the gateway's services).
pub(crate) fn publish(shared: &Shared, will: Will, tx: &mut LinkTx) {
    if let Some(routed) = hand_out(shared, will) {
        push_now(tx, routed);
    }
}

/// Publishes `will` of a connection that had no router link: the router gets it on a link of its own
/// (made in a task of its own) only when it must carry it: retained, or on a topic one of its filters
/// matches.
pub(crate) fn publish_without_link(shared: &Arc<Shared>, client_id: &str, will: Will) {
    let Some(Packet::Publish(publish, props)) = hand_out(shared, will) else {
        return;
    };
    let topic = String::from_utf8_lossy(&publish.topic);
    if !publish.retain && !shared.routed.may_deliver(&topic) {
        return;
    }
    let shared = shared.clone();
    let client_id = client_id.to_owned();
    tokio::spawn(async move {
        on_own_link(&shared, &client_id, Packet::Publish(publish, props)).await;
    });
}

/// Gives `will` to the gateway's services (all of it, on a `$` topic; a copy otherwise) and records it
/// when retained; returns the publish the router must be given, if any.
fn hand_out(shared: &Shared, will: Will) -> Option<Packet> {
    let Will {
        topic,
        message,
        retain,
        props,
        ..
    } = will;
    if served_directly(&topic) {
        shared.taps.dispatch_now(&topic, message);
        return None;
    }
    shared.taps.copy_now(&topic, &message, retain);
    shared.retained.published(&topic, &message, retain, &props);
    let publish = Publish::new(Bytes::from(to_internal(&topic)), message, retain);
    Some(Packet::Publish(publish, props))
}

/// Pushes `routed` (a will) into a router link opened for it alone, then closes that link.
async fn on_own_link(shared: &Shared, client_id: &str, routed: Packet) {
    match shared.link().await {
        Ok(((mut tx, _rx, _ack), _name)) => {
            push_now(&mut tx, routed);
            disconnect_now(&mut tx);
        }
        Err(e) => tracing::warn!(client_id, "cannot publish the last will: {e}"),
    }
}

/// The wills held back by their delay, by client id.
#[derive(Debug, Default)]
pub(crate) struct DelayedWills {
    /// Sending `true` publishes the will at once, `false` cancels it; each under a number of its own.
    waiting: Mutex<HashMap<String, (u64, oneshot::Sender<bool>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl DelayedWills {
    /// Holds `will` of `client_id` back for `delay` (its Will Delay Interval, or less when its session
    /// ends sooner), then publishes it unless [`DelayedWills::connected`] cancelled it meanwhile.
    pub(crate) fn hold(shared: &Arc<Shared>, client_id: &str, will: Will, delay: Duration) {
        let (decide, decided) = oneshot::channel();
        let number = (shared.wills.next).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let waiting = (number, decide);
        let replaced = lock(&shared.wills.waiting).insert(client_id.to_owned(), waiting);
        if let Some((_, older)) = replaced {
            let _ = older.send(true);
        }
        let client_id = client_id.to_owned();
        let waiting = wait_then_publish(shared.clone(), client_id, number, will, delay, decided);
        tokio::spawn(waiting);
    }

    /// `client_id` connected again: its will waiting, if any, is cancelled; or published now, when the
    /// connection starts a new session (`clean_start`), which ends the one the will belonged to.
    pub(crate) fn connected(&self, client_id: &str, clean_start: bool) {
        if let Some((_, waiting)) = lock(&self.waiting).remove(client_id) {
            let _ = waiting.send(clean_start);
        }
    }
}

async fn wait_then_publish(
    shared: Arc<Shared>,
    client_id: String,
    number: u64,
    will: Will,
    delay: Duration,
    mut decided: oneshot::Receiver<bool>,
) {
    let mut shutdown = shared.shutdown.clone();
    let publish_now = tokio::select! {
        () = tokio::time::sleep(delay) => {
            let mut waiting = lock(&shared.wills.waiting);
            if waiting.get(&client_id).is_some_and(|(n, _)| *n == number) {
                waiting.remove(&client_id);
                true
            } else {
                // A connection took it away just now: its decision is sent already.
                decided.try_recv().unwrap_or(false)
            }
        }
        decision = &mut decided => decision.unwrap_or(false),
        () = stopped(&mut shutdown) => false,
    };
    if !publish_now {
        tracing::info!(
            client_id,
            "last will cancelled: the client connected again within its delay"
        );
        return;
    }
    tracing::info!(client_id, topic = will.topic, "delayed last will published");
    if let Some(routed) = hand_out(&shared, will) {
        on_own_link(&shared, &client_id, routed).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
