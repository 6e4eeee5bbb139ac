//! Direct delivery: gateway-originated messages handed straight to a client connection's writer, past the
//! router.
//!
//! The registry here keeps, per live client connection, the filters it was granted (external `$` form,
//! added when the SUBACK is written, removed on UNSUBSCRIBE) and the sending end of a bounded queue that the
//! connection's writer loop drains alongside the router's output. [`Broker::deliver`](super::Broker::deliver)
//! looks the client up, checks its filters against the topic and queues a QoS 0 PUBLISH: O(1) per message
//! (one map lookup and the client's handful of filters), where rumqttd 0.20's router matches every topic it
//! has not seen before against every filter it knows and keeps every such topic forever. Per-(job, thing)
//! topics fanned out to N devices therefore cost N² matches in the router (2×10⁸ at N = 10,000, seconds)
//! and memory that only grows; delivered directly they cost N lookups and nothing is kept.
//!
//! Direct delivery reaches only the named client. That loses no one for topics under
//! `$aws/things/{thing}/`: only the device `{thing}` may subscribe there (`Principal::may_subscribe`;
//! operators may not), and a device's client id is its thing name. Internal clients that subscribe under
//! `$aws/things/+/...` (the device API) take requests from devices, not the gateway's own messages.
//!
//! The gateway's own events (presence: `$aws/events/presence/...`) go the same way, to the clients holding
//! a filter under `$aws/events/` (operators; devices may not subscribe there), which the registry keeps
//! apart so an event is matched against those few and not against every connection. Through the router,
//! each client id's two presence topics were new topics matched against every device's filters: N² work
//! whenever a fleet (re)connects.
//!
//! Messages are sent at QoS 0: the notifications sent this way were QoS 0 already, and QoS 0 needs no packet
//! id, so nothing can collide with the router's packet ids for the connection, and no PUBACK comes back that
//! the router would have to ignore. The queue never blocks the caller: when a client's queue is full (a
//! client that stopped reading), the message is dropped, counted and logged.
//!
//! Sessions follow the router's: a connection that ends with `clean_session = false` leaves its filters
//! behind for the next connection of the same client id with `clean_session = false` (the router restores
//! its subscriptions the same way); a clean connection starts with none.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use rumqttd::protocol::Publish;
use tokio::sync::mpsc;

use super::topics::matches;

/// Messages a connection's direct queue holds before further ones are dropped. Devices subscribe only under
/// their own thing, so a burst for one connection is a few messages per job event: this is far above it.
pub(crate) const QUEUE: usize = 256;

/// What [`Broker::deliver`](super::Broker::deliver) did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the client's writer.
    Delivered,
    /// The client is connected, but none of its filters matches the topic.
    NotSubscribed,
    /// No connection of that client id is open: nothing is kept for later.
    Offline,
    /// The client's queue was full: the message was dropped (counted and logged).
    Dropped,
    /// The topic is empty or holds a wildcard.
    InvalidTopic,
}

/// How many messages of a [`Broker::deliver_many`](super::Broker::deliver_many) call ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deliveries {
    pub delivered: usize,
    pub not_subscribed: usize,
    pub offline: usize,
    pub dropped: usize,
    pub invalid: usize,
}

impl Deliveries {
    pub fn count(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Delivered => self.delivered += 1,
            Delivery::NotSubscribed => self.not_subscribed += 1,
            Delivery::Offline => self.offline += 1,
            Delivery::Dropped => self.dropped += 1,
            Delivery::InvalidTopic => self.invalid += 1,
        }
    }

    pub fn add(&mut self, other: Deliveries) {
        self.delivered += other.delivered;
        self.not_subscribed += other.not_subscribed;
        self.offline += other.offline;
        self.dropped += other.dropped;
        self.invalid += other.invalid;
    }
}

/// One client id's entry: its current connection's queue (none while offline) and granted filters.
#[derive(Debug)]
struct Outlet {
    /// The connection number (see `Sessions`): an older connection's calls never touch a newer one's entry.
    number: u64,
    clean: bool,
    filters: Vec<String>,
    /// Plain `Publish`es, not `Packet`s: tokio allocates a queue's slots 32 at a time, and a `Packet` is
    /// five times the size (32 x 392 bytes per connection, mostly never written).
    queue: Option<mpsc::Sender<Publish>>,
    dropped: u64,
}

/// Client id -> [`Outlet`].
#[derive(Debug, Default)]
pub(crate) struct Outlets {
    entries: Mutex<Registry>,
    dropped: AtomicU64,
}

/// Prefix of the gateway's own event topics (presence), which [`Outlets::publish_event`] sends.
const EVENTS_PREFIX: &str = "$aws/events/";

#[derive(Debug, Default)]
struct Registry {
    outlets: HashMap<String, Outlet>,
    /// Client ids holding a filter under [`EVENTS_PREFIX`] (operators watching presence): the few that an
    /// event is matched against, instead of every connection.
    watchers: HashSet<String>,
}

impl Registry {
    /// `client_id`'s entry, if connection `number` still owns it (an older connection's calls never touch
    /// a newer one's entry).
    fn connection(&mut self, client_id: &str, number: u64) -> Option<&mut Outlet> {
        self.outlets
            .get_mut(client_id)
            .filter(|o| o.number == number)
    }

    /// Keeps `watchers` in step with `client_id`'s filters after they changed.
    fn update_watcher(&mut self, client_id: &str) {
        // (`#` and `+` at the first level never match a `$` topic.)
        let watches = self
            .outlets
            .get(client_id)
            .is_some_and(|o| o.filters.iter().any(|f| f.starts_with(EVENTS_PREFIX)));
        if watches {
            if !self.watchers.contains(client_id) {
                self.watchers.insert(client_id.to_owned());
            }
        } else {
            self.watchers.remove(client_id);
        }
    }
}

impl Outlets {
    /// A connection opened: from now on, messages for `client_id` go to `queue`. A persistent session
    /// (`clean == false`) keeps the filters its previous connection left (or the one it takes over).
    pub(crate) fn open(
        &self,
        client_id: &str,
        number: u64,
        clean: bool,
        queue: mpsc::Sender<Publish>,
    ) {
        let mut registry = self.lock();
        let filters = match registry.outlets.remove(client_id) {
            Some(old) if !clean => old.filters,
            _ => Vec::new(),
        };
        let outlet = Outlet {
            number,
            clean,
            filters,
            queue: Some(queue),
            dropped: 0,
        };
        registry.outlets.insert(client_id.to_owned(), outlet);
        registry.update_watcher(client_id);
    }

    /// Connection `number` of `client_id` ended. Its filters stay for a persistent session.
    pub(crate) fn close(&self, client_id: &str, number: u64) {
        let mut registry = self.lock();
        let Some(outlet) = registry.connection(client_id, number) else {
            return;
        };
        if outlet.clean {
            registry.outlets.remove(client_id);
            registry.update_watcher(client_id);
        } else {
            outlet.queue = None;
        }
    }

    /// Filters granted to connection `number` (its SUBACK is being written). `$share/` filters are left to
    /// the router (their group semantics are not reproduced here; devices cannot subscribe to them).
    pub(crate) fn subscribe(&self, client_id: &str, number: u64, granted: &[String]) {
        let mut registry = self.lock();
        let Some(outlet) = registry.connection(client_id, number) else {
            return;
        };
        for filter in granted {
            if !filter.starts_with("$share/") && !outlet.filters.contains(filter) {
                outlet.filters.push(filter.clone());
            }
        }
        registry.update_watcher(client_id);
    }

    /// Filters connection `number` unsubscribed from.
    pub(crate) fn unsubscribe(&self, client_id: &str, number: u64, filters: &[String]) {
        let mut registry = self.lock();
        if let Some(outlet) = registry
            .outlets
            .get_mut(client_id)
            .filter(|o| o.number == number)
        {
            outlet.filters.retain(|f| !filters.contains(f));
            registry.update_watcher(client_id);
        }
    }

    /// Queues `payload` on `topic` for `client_id` if one of its filters matches. Never blocks.
    pub(crate) fn deliver(&self, client_id: &str, topic: &str, payload: Bytes) -> Delivery {
        let mut registry = self.lock();
        self.deliver_locked(&mut registry.outlets, client_id, topic, payload)
    }

    /// Sends one of the gateway's own events (a topic under `$aws/events/`) to every client whose filters
    /// match it. Only the clients holding such filters are looked at (operators: devices may not
    /// subscribe there), so an event costs nothing per connected device. Never blocks.
    pub(crate) fn publish_event(&self, topic: &str, payload: Bytes) -> Deliveries {
        let mut counts = Deliveries::default();
        let mut registry = self.lock();
        let Registry { outlets, watchers } = &mut *registry;
        for client_id in watchers.iter() {
            counts.count(self.deliver_locked(outlets, client_id, topic, payload.clone()));
        }
        counts
    }

    /// [`Outlets::deliver`] for many messages, under one lock.
    pub(crate) fn deliver_many<C, T>(
        &self,
        messages: impl IntoIterator<Item = (C, T, Bytes)>,
    ) -> Deliveries
    where
        C: AsRef<str>,
        T: AsRef<str>,
    {
        let mut counts = Deliveries::default();
        let mut registry = self.lock();
        for (client_id, topic, payload) in messages {
            let delivery = self.deliver_locked(
                &mut registry.outlets,
                client_id.as_ref(),
                topic.as_ref(),
                payload,
            );
            counts.count(delivery);
        }
        counts
    }

    fn deliver_locked(
        &self,
        entries: &mut HashMap<String, Outlet>,
        client_id: &str,
        topic: &str,
        payload: Bytes,
    ) -> Delivery {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Delivery::InvalidTopic;
        }
        let Some(outlet) = entries.get_mut(client_id) else {
            return Delivery::Offline;
        };
        let Some(queue) = &outlet.queue else {
            return Delivery::Offline;
        };
        if !outlet.filters.iter().any(|f| matches(topic, f)) {
            return Delivery::NotSubscribed;
        }
        let publish = Publish::new(Bytes::copy_from_slice(topic.as_bytes()), payload, false);
        match queue.try_send(publish) {
            Ok(()) => Delivery::Delivered,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Offline,
            Err(mpsc::error::TrySendError::Full(_)) => {
                outlet.dropped += 1;
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop of a connection, then every power of two: visible, never a flood.
                if outlet.dropped.is_power_of_two() {
                    tracing::warn!(
                        client_id,
                        topic,
                        dropped = outlet.dropped,
                        dropped_all_clients = total,
                        "client's direct queue is full ({QUEUE} messages): message dropped"
                    );
                }
                Delivery::Dropped
            }
        }
    }

    /// Messages dropped on full queues since the broker started.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The filters `client_id` holds now (tests).
    #[cfg(test)]
    pub(crate) fn filters(&self, client_id: &str) -> Vec<String> {
        self.lock()
            .outlets
            .get(client_id)
            .map(|o| o.filters.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Every update leaves the map consistent: recover it after a panic elsewhere.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic_of(publish: Publish) -> (String, Bytes) {
        (
            String::from_utf8(publish.topic.to_vec()).unwrap(),
            publish.payload,
        )
    }

    fn filters(list: &[&str]) -> Vec<String> {
        list.iter().map(|f| f.to_string()).collect()
    }

    const NOTIFY: &str = "$aws/things/d1/jobs/notify";

    /// Events reach the clients watching `$aws/events/` and only them; a watcher that unsubscribes or
    /// closes is no longer one.
    #[test]
    fn events_go_to_their_watchers_only() {
        let outlets = Outlets::default();
        let (op_tx, mut op_rx) = mpsc::channel(QUEUE);
        let (dev_tx, mut dev_rx) = mpsc::channel(QUEUE);
        outlets.open("op", 1, true, op_tx);
        outlets.open("d1", 2, true, dev_tx);
        outlets.subscribe("op", 1, &filters(&["$aws/events/presence/connected/+"]));
        outlets.subscribe("d1", 2, &filters(&["$aws/things/d1/#"]));
        assert_eq!(outlets.lock().watchers.len(), 1);

        let topic = "$aws/events/presence/connected/d1";
        let counts = outlets.publish_event(topic, Bytes::from_static(b"{}"));
        assert_eq!((counts.delivered, counts.not_subscribed), (1, 0));
        assert_eq!(topic_of(op_rx.try_recv().unwrap()).0, topic);
        assert!(dev_rx.try_recv().is_err());
        // A topic the watcher's filter does not cover.
        let other = outlets.publish_event("$aws/events/presence/disconnected/d1", Bytes::new());
        assert_eq!((other.delivered, other.not_subscribed), (0, 1));

        outlets.unsubscribe("op", 1, &filters(&["$aws/events/presence/connected/+"]));
        assert!(outlets.lock().watchers.is_empty());
        outlets.subscribe("op", 1, &filters(&["$aws/events/presence/#"]));
        outlets.close("op", 1);
        assert!(outlets.lock().watchers.is_empty());
        assert_eq!(
            outlets.publish_event(topic, Bytes::new()),
            Deliveries::default()
        );
    }

    #[test]
    fn a_matching_filter_gets_the_message_and_others_do_not() {
        let outlets = Outlets::default();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        outlets.open("d1", 1, true, tx);
        let body = Bytes::from_static(b"{}");
        assert_eq!(
            outlets.deliver("d1", NOTIFY, body.clone()),
            Delivery::NotSubscribed
        );
        outlets.subscribe("d1", 1, &filters(&["$aws/things/d1/jobs/+"]));
        assert_eq!(
            outlets.deliver("d1", NOTIFY, body.clone()),
            Delivery::Delivered
        );
        assert_eq!(
            topic_of(rx.try_recv().unwrap()),
            (NOTIFY.into(), body.clone())
        );
        let other = "$aws/things/d1/jobs/j1/notify-namespace-acme/";
        assert_eq!(
            outlets.deliver("d1", other, body.clone()),
            Delivery::NotSubscribed
        );
        assert_eq!(
            outlets.deliver("d2", NOTIFY, body.clone()),
            Delivery::Offline
        );
        assert_eq!(
            outlets.deliver("d1", "$aws/things/d1/jobs/#", body),
            Delivery::InvalidTopic
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn unsubscribe_and_disconnect_stop_delivery() {
        let outlets = Outlets::default();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        outlets.open("d1", 1, true, tx);
        outlets.subscribe("d1", 1, &filters(&[NOTIFY, "$aws/things/d1/jobs/#"]));
        outlets.unsubscribe("d1", 1, &filters(&["$aws/things/d1/jobs/#"]));
        assert_eq!(outlets.filters("d1"), [NOTIFY]);
        outlets.unsubscribe("d1", 1, &filters(&[NOTIFY]));
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::NotSubscribed
        );
        outlets.subscribe("d1", 1, &filters(&[NOTIFY]));
        outlets.close("d1", 1);
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Offline
        );
        assert!(rx.try_recv().is_err());
        // A clean session leaves nothing behind.
        assert!(outlets.filters("d1").is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let outlets = Outlets::default();
        let (tx, mut rx) = mpsc::channel(2);
        outlets.open("d1", 1, true, tx);
        outlets.subscribe("d1", 1, &filters(&[NOTIFY]));
        let messages = (0..5).map(|_| ("d1", NOTIFY, Bytes::new()));
        let counts = outlets.deliver_many(messages);
        assert_eq!((counts.delivered, counts.dropped), (2, 3));
        assert_eq!(outlets.dropped(), 3);
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Delivered
        );
    }

    #[test]
    fn a_newer_connection_is_not_touched_by_the_old_ones_calls() {
        let outlets = Outlets::default();
        let (old_tx, mut old_rx) = mpsc::channel(QUEUE);
        let (new_tx, mut new_rx) = mpsc::channel(QUEUE);
        outlets.open("d1", 1, true, old_tx);
        outlets.subscribe("d1", 1, &filters(&[NOTIFY]));
        outlets.open("d1", 2, true, new_tx);
        // A clean takeover starts without the old filters; the old connection cannot add or close.
        assert!(outlets.filters("d1").is_empty());
        outlets.subscribe("d1", 1, &filters(&["$aws/things/d1/#"]));
        outlets.close("d1", 1);
        outlets.subscribe("d1", 2, &filters(&[NOTIFY]));
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Delivered
        );
        assert!(new_rx.try_recv().is_ok());
        assert!(old_rx.try_recv().is_err());
    }

    #[test]
    fn a_persistent_session_keeps_its_filters_across_connections() {
        let outlets = Outlets::default();
        let (tx, _rx) = mpsc::channel(QUEUE);
        outlets.open("d1", 1, false, tx);
        outlets.subscribe("d1", 1, &filters(&[NOTIFY]));
        outlets.close("d1", 1);
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Offline
        );
        let (tx, mut rx) = mpsc::channel(QUEUE);
        outlets.open("d1", 2, false, tx);
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Delivered
        );
        assert!(rx.try_recv().is_ok());
        outlets.close("d1", 2);
        // Reconnecting clean discards them, as the router does.
        let (tx, _rx) = mpsc::channel(QUEUE);
        outlets.open("d1", 3, true, tx);
        assert!(outlets.filters("d1").is_empty());
    }
}
