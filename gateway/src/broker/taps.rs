//! Taps: the gateway's own services' subscriptions to `$` topics (the control API's
//! `$sprig/control/+/+`, the device API's `$aws/things/+/jobs/#`, recovery acknowledgements), served by
//! sprig instead of the router.
//!
//! Every `$` topic is sprig's: only devices (under their own thing) and operators (under their own control
//! prefix) may publish there, and what is published there is meant for one of these services. Through the
//! router each such topic would stay forever (rumqttd 0.20 keeps every topic that matched a filter, and
//! every filter ever subscribed): one topic per (thing, job) from the device API, a few per CLI invocation
//! from the control API. Here a publish is matched against the handful of taps and handed to each match's
//! queue; nothing is kept. A full queue makes the publisher wait (its connection's reader stops reading
//! until the service caught up), which slows the client down instead of losing its request.
//!
//! Copies: a service may also want what clients publish on *routed* topics, before the router has it
//! (the uplink's `out` topics, spooled to disk before the client's acknowledgement): a matching publish
//! is handed to the service's queue as a [`Copied`] before the router sees it, and the connection's
//! writer holds the client's PUBACK (or PUBREC) until the service confirms it took the message. The
//! reader goes on meanwhile, so a service takes a publisher's messages in batches.

use std::sync::RwLock;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::topics::matches;

/// Messages a tap's queue holds before publishers wait.
pub(crate) const TAP_QUEUE: usize = 1024;

/// A message on its way to a tap: (external topic, payload).
pub(crate) type Tapped = (String, Bytes);

/// A client's publish on a routed topic, copied to a service before it is routed (see the module's
/// documentation).
#[derive(Debug)]
pub struct Copied {
    /// The topic as the client published it.
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// Send `()` once the message is taken (the publisher's acknowledgement waits for it); `None` for a
    /// last will, which nobody waits for.
    pub taken: Option<oneshot::Sender<()>>,
}

/// The registered taps: (filter, queue of the service that subscribed); and the copies of routed topics.
#[derive(Debug, Default)]
pub(crate) struct Taps {
    entries: RwLock<Vec<(String, mpsc::Sender<Tapped>)>>,
    copies: RwLock<Vec<(String, mpsc::Sender<Copied>)>>,
}

impl Taps {
    /// Adds a tap: what clients publish on topics matching `filter` goes to `queue` from now on.
    pub(crate) fn add(&self, filter: &str, queue: mpsc::Sender<Tapped>) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(_, q)| !q.is_closed());
        entries.push((filter.to_owned(), queue));
    }

    /// The queues whose filters match `topic` (a service subscribed twice gets a message once per filter,
    /// as MQTT's overlapping subscriptions may).
    fn matching(&self, topic: &str) -> Vec<mpsc::Sender<Tapped>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|(filter, _)| matches(topic, filter))
            .map(|(_, queue)| queue.clone())
            .collect()
    }

    /// Hands a client's publish to every matching tap, waiting while a queue is full. Returns how many
    /// taps took it.
    pub(crate) async fn dispatch(&self, topic: &str, payload: Bytes) -> usize {
        let mut taken = 0;
        for queue in self.matching(topic) {
            if queue
                .send((topic.to_owned(), payload.clone()))
                .await
                .is_ok()
            {
                taken += 1;
            }
        }
        taken
    }

    /// [`Taps::dispatch`] from code that cannot wait (a will, sent as its connection ends): a full queue
    /// drops the message, logged.
    pub(crate) fn dispatch_now(&self, topic: &str, payload: Bytes) {
        for queue in self.matching(topic) {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                queue.try_send((topic.to_owned(), payload.clone()))
            {
                tracing::warn!(topic, "a gateway service's queue is full: message dropped");
            }
        }
    }
}

impl Taps {
    /// From now on, what clients publish on routed topics matching `filter` is copied to `queue` first.
    pub(crate) fn add_copy(&self, filter: &str, queue: mpsc::Sender<Copied>) {
        let mut copies = self.copies.write().unwrap_or_else(|e| e.into_inner());
        copies.retain(|(_, q)| !q.is_closed());
        copies.push((filter.to_owned(), queue));
    }

    /// Whether a publish on `topic` is copied to some service (cheap when no copies are registered).
    pub(crate) fn copies(&self, topic: &str) -> bool {
        let copies = self.copies.read().unwrap_or_else(|e| e.into_inner());
        copies.iter().any(|(filter, _)| matches(topic, filter))
    }

    /// The queues of the copies whose filters match `topic`, each once (a service that registered
    /// overlapping filters gets one copy).
    fn copy_queues(&self, topic: &str) -> Vec<mpsc::Sender<Copied>> {
        let copies = self.copies.read().unwrap_or_else(|e| e.into_inner());
        let mut queues: Vec<mpsc::Sender<Copied>> = Vec::new();
        for (filter, queue) in copies.iter() {
            if matches(topic, filter) && !queues.iter().any(|q| q.same_channel(queue)) {
                queues.push(queue.clone());
            }
        }
        queues
    }

    /// Copies a client's publish to every matching service (waiting only while a queue is full); the
    /// returned receivers fire once each service took it (a service that ended drops its sender).
    pub(crate) async fn copy(
        &self,
        topic: &str,
        payload: &Bytes,
        qos: u8,
        retain: bool,
    ) -> Vec<oneshot::Receiver<()>> {
        let mut taken = Vec::new();
        for queue in self.copy_queues(topic) {
            let (sender, confirmed) = oneshot::channel();
            let copied = Copied {
                topic: topic.to_owned(),
                payload: payload.clone(),
                qos,
                retain,
                taken: Some(sender),
            };
            if queue.send(copied).await.is_ok() {
                taken.push(confirmed);
            }
        }
        taken
    }

    /// [`Taps::copy`] for a last will, from code that cannot wait: a full queue drops it, logged.
    pub(crate) fn copy_now(&self, topic: &str, payload: &Bytes, retain: bool) {
        for queue in self.copy_queues(topic) {
            let copied = Copied {
                topic: topic.to_owned(),
                payload: payload.clone(),
                qos: 0,
                retain,
                taken: None,
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(copied) {
                tracing::warn!(
                    topic,
                    "a gateway service's queue is full: last will not copied"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_publish_reaches_the_matching_taps_only() {
        let taps = Taps::default();
        let (control, mut control_rx) = mpsc::channel(4);
        let (device_api, mut device_api_rx) = mpsc::channel(4);
        taps.add("$sprig/control/+/+", control);
        taps.add("$aws/things/+/jobs/#", device_api);

        let taken = taps
            .dispatch("$aws/things/d1/jobs/get", Bytes::from_static(b"{}"))
            .await;
        assert_eq!(taken, 1);
        let (topic, payload) = device_api_rx.recv().await.unwrap();
        assert_eq!(
            (topic.as_str(), &payload[..]),
            ("$aws/things/d1/jobs/get", &b"{}"[..])
        );
        assert!(control_rx.try_recv().is_err());

        let taken = taps
            .dispatch("$sprig/control/cli/ListJobs/accepted", Bytes::new())
            .await;
        assert_eq!(taken, 0, "a reply topic is not a request");
    }

    #[tokio::test]
    async fn a_tap_whose_service_ended_is_skipped_and_forgotten() {
        let taps = Taps::default();
        let (gone, gone_rx) = mpsc::channel(1);
        taps.add("$aws/things/+/jobs/#", gone);
        drop(gone_rx);
        assert_eq!(
            taps.dispatch("$aws/things/d1/jobs/get", Bytes::new()).await,
            0
        );
        let (live, mut live_rx) = mpsc::channel(1);
        taps.add("$aws/things/+/jobs/#", live);
        assert_eq!(taps.entries.read().unwrap().len(), 1);
        assert_eq!(
            taps.dispatch("$aws/things/d1/jobs/get", Bytes::new()).await,
            1
        );
        assert!(live_rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_routed_publish_is_copied_and_confirmed_once_it_is_taken() {
        let taps = Taps::default();
        assert!(!taps.copies("dt/t1/temp"), "nothing registered");
        let (queue, mut copies) = mpsc::channel(4);
        taps.add_copy("dt/#", queue.clone());
        taps.add_copy("dt/+/temp", queue);
        assert!(taps.copies("dt/t1/temp") && !taps.copies("cmd/t1"));

        let payload = Bytes::from_static(b"21.5");
        let mut taken = taps.copy("dt/t1/temp", &payload, 1, true).await;
        assert_eq!(
            taken.len(),
            1,
            "overlapping filters of one service copy once"
        );
        let copied = copies.recv().await.unwrap();
        assert_eq!(
            (
                copied.topic.as_str(),
                &copied.payload[..],
                copied.qos,
                copied.retain
            ),
            ("dt/t1/temp", &b"21.5"[..], 1, true)
        );
        let mut confirmed = taken.pop().unwrap();
        assert!(
            confirmed.try_recv().is_err(),
            "not confirmed before it is taken"
        );
        copied.taken.unwrap().send(()).unwrap();
        confirmed.await.unwrap();
        assert!(copies.try_recv().is_err(), "overlapping filters copy once");
    }
}
