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

use std::sync::RwLock;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::topics::matches;

/// Messages a tap's queue holds before publishers wait.
pub(crate) const TAP_QUEUE: usize = 1024;

/// A message on its way to a tap: (external topic, payload).
pub(crate) type Tapped = (String, Bytes);

/// The registered taps: (filter, queue of the service that subscribed).
#[derive(Debug, Default)]
pub(crate) struct Taps {
    entries: RwLock<Vec<(String, mpsc::Sender<Tapped>)>>,
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
}
