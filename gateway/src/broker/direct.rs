//! Direct delivery: gateway-originated messages handed straight to a client connection's writer, past the
//! router, and the registry of sessions that makes it possible.
//!
//! This module owns the decision to keep the gateway's `$` traffic out of rumqttd 0.20's router, which
//! matches every topic it has not seen before against every filter it knows and keeps every such topic
//! forever: per-(job, thing) notification topics fanned out to N devices, and each client id's presence
//! topics when a fleet (re)connects, cost it N² matches and memory that only grows (README, "Notification
//! fan-out and memory", for the figures). Here, per live client id, the registry keeps the filters it was
//! granted (external `$` form, added when the SUBACK is written, removed on UNSUBSCRIBE) and its connection's
//! `wire`: the socket while the connection's writer is idle, else a bounded queue the writer drains beside
//! the router's output;
//! [`Broker::deliver`](super::Broker::deliver) looks the client up, checks its filters and queues a QoS 0
//! PUBLISH, one lookup per message and nothing kept. That loses no one: only the device `{thing}` may
//! subscribe under `$aws/things/{thing}/` and its client id is its thing name, an operator's
//! `$sprig/control/{clientId}/` replies are its own, and presence events go to the few clients holding a
//! filter under `$aws/events/` (operators), kept apart. The queue never blocks the caller: a full one (a
//! client that stopped reading) drops the message, counted and logged; the QoS 1 messages a session held
//! for its client go the same way, given packet ids by the writer (`inflight`). Each entry is also the
//! client id's session as sprig sees it, owned by one principal ([`Identity`]): another principal
//! presenting that client id is refused while the entry lives; a persistent session outlives its connection
//! for its expiry, keeping its filters and, in its [`Backlog`] (bounded; job notifications coalesced per
//! topic), what is delivered meanwhile; a clean connection discards the session it finds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::backlog::{Backlog, Keep, Limits, Waiting};
use super::options::SubOptions;
use super::topics::matches;
use super::wire::{Refused, Wire};
use crate::auth::Identity;
use crate::store::sessions::{StoredMessage, StoredSession};

/// Why a message was dropped: its metric label and its log line.
#[derive(Debug, Clone, Copy)]
enum Dropped {
    /// A connected client's direct queue was full.
    QueueFull,
    /// A disconnected session's backlog was full.
    BacklogFull,
    /// A QoS 0 message for a client that reads too slowly (its writer's budget was spent).
    SlowReader,
}

impl Dropped {
    fn label(self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::BacklogFull => "backlog_full",
            Dropped::SlowReader => "slow_reader",
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Dropped::QueueFull => "client's direct queue is full",
            Dropped::BacklogFull => "session's backlog is full",
            Dropped::SlowReader => "the client reads too slowly",
        }
    }
}

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
    /// No connection of that client id is open, and no persistent session: nothing is kept for later.
    Offline,
    /// The client's persistent session is disconnected: kept until it reconnects.
    Queued,
    /// The client's queue was full: the message was dropped (counted and logged).
    Dropped,
    /// The topic is empty or holds a wildcard.
    InvalidTopic,
}

/// What [`Outlets::deliver_all`] decided for one message under the registry's lock.
enum Decided {
    Done(Delivery),
    /// For a connected client: handed to its wire once the lock is released.
    ToWire(Arc<Wire>, Bytes),
}

/// How many messages of a [`Broker::deliver_many`](super::Broker::deliver_many) call ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deliveries {
    pub delivered: usize,
    pub not_subscribed: usize,
    pub offline: usize,
    pub queued: usize,
    pub dropped: usize,
    pub invalid: usize,
}

impl Deliveries {
    pub fn count(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Delivered => self.delivered += 1,
            Delivery::NotSubscribed => self.not_subscribed += 1,
            Delivery::Offline => self.offline += 1,
            Delivery::Queued => self.queued += 1,
            Delivery::Dropped => self.dropped += 1,
            Delivery::InvalidTopic => self.invalid += 1,
        }
    }

    pub fn add(&mut self, other: Deliveries) {
        self.delivered += other.delivered;
        self.not_subscribed += other.not_subscribed;
        self.offline += other.offline;
        self.queued += other.queued;
        self.dropped += other.dropped;
        self.invalid += other.invalid;
    }
}

/// One client id's session: its current connection's queue (none while offline), granted filters, owner.
#[derive(Debug)]
struct Outlet {
    /// The connection number (see `Sessions`): an older connection's calls never touch a newer one's entry.
    number: u64,
    owner: Identity,
    /// How long the session outlives its connection; `None`: it ends with it.
    expiry: Option<Duration>,
    /// When its last connection closed (a persistent session that is offline).
    left_at: Option<Instant>,
    backlog: Backlog,
    filters: Vec<String>,
    /// The MQTT 5 options of its routed filters (in memory: a restart gives them the defaults).
    options: Vec<(String, SubOptions)>,
    /// The connection's way in (see `wire`): its socket while its writer is idle, else a flume channel of
    /// boxed messages, which allocates its buffer as messages come (most connections get a few a day; a
    /// tokio channel allocates 32 slots and 512 bytes of state up front, for every connection).
    queue: Option<Arc<Wire>>,
    dropped: u64,
}

impl Outlet {
    fn expired(&self, now: Instant) -> bool {
        match (self.left_at, self.expiry) {
            (Some(left), Some(expiry)) => now.duration_since(left) >= expiry,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// Client id -> [`Outlet`].
#[derive(Debug, Default)]
pub(crate) struct Outlets {
    entries: Mutex<Registry>,
    dropped: AtomicU64,
    limits: Limits,
    /// Rung when a persistent session changed (see [`Outlets::take_changed`]).
    changed: tokio::sync::Notify,
}

/// How a connection asks for its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionRequest {
    /// Start afresh, discarding any session of the client id (MQTT 3.1.1 clean session, MQTT 5 clean start).
    pub discard: bool,
    /// How long the session outlives the connection; `None`: it ends with it.
    pub expiry: Option<Duration>,
}

/// The session a connection got.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Resumed {
    /// The filters of the session it resumed; `None`: a new session.
    pub filters: Option<Vec<String>>,
    /// What waited for it, oldest first: to be written before anything else.
    pub backlog: Vec<Waiting>,
    /// The options of its routed filters (see `options`).
    pub options: Vec<(String, SubOptions)>,
}

/// Prefix of the gateway's own event topics (presence), which [`Outlets::publish_event`] sends.
const EVENTS_PREFIX: &str = "$aws/events/";

#[derive(Debug, Default)]
struct Registry {
    outlets: HashMap<String, Outlet>,
    /// Client ids holding a filter under [`EVENTS_PREFIX`] (operators watching presence): the few that an
    /// event is matched against, instead of every connection.
    watchers: HashSet<String>,
    /// Client ids whose persistent session changed (or ended) since it was last written to the store.
    changed: HashSet<String>,
}

impl Registry {
    /// Notes that `client_id`'s stored session is out of date, if it has or had one.
    fn touch(&mut self, client_id: &str, persistent: bool) {
        if persistent && !self.changed.contains(client_id) {
            self.changed.insert(client_id.to_owned());
        }
    }

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
    /// The registry, with `limits` on each disconnected session's backlog.
    pub(crate) fn new(limits: Limits) -> Outlets {
        Outlets {
            limits,
            ..Outlets::default()
        }
    }

    /// A connection of `owner` opened: from now on, messages for `client_id` go to `wire`. It takes over
    /// the client id's session (live or kept), resuming it unless `request.discard`, or is refused with the
    /// session's owner when that is someone else.
    pub(crate) fn open(
        &self,
        client_id: &str,
        number: u64,
        owner: &Identity,
        request: SessionRequest,
        wire: Arc<Wire>,
    ) -> Result<Resumed, Identity> {
        let now = Instant::now();
        let mut registry = self.lock();
        let was_persistent = registry
            .outlets
            .get(client_id)
            .is_some_and(|o| o.expiry.is_some());
        let previous = match registry.outlets.get(client_id) {
            Some(old) if old.expired(now) => None,
            Some(old) if &old.owner != owner => return Err(old.owner.clone()),
            Some(_) => registry.outlets.remove(client_id),
            None => None,
        };
        // A clean session ends with its connection, even one that is being taken over right now.
        let resumable = previous.filter(|old| old.expiry.is_some() && !request.discard);
        let resumed = match resumable {
            Some(mut old) => Resumed {
                filters: Some(old.filters.clone()),
                backlog: old.backlog.take(),
                options: std::mem::take(&mut old.options),
            },
            _ => Resumed::default(),
        };
        let outlet = Outlet {
            number,
            owner: owner.clone(),
            expiry: request.expiry,
            left_at: None,
            backlog: Backlog::default(),
            filters: resumed.filters.clone().unwrap_or_default(),
            options: resumed.options.clone(),
            queue: Some(wire),
            dropped: 0,
        };
        registry.outlets.insert(client_id.to_owned(), outlet);
        registry.update_watcher(client_id);
        registry.touch(client_id, was_persistent || request.expiry.is_some());
        drop(registry);
        self.changed.notify_one();
        Ok(resumed)
    }

    /// Connection `number` of `client_id` ended. A persistent session stays, with its filters, and keeps
    /// what is delivered to it from now on.
    pub(crate) fn close(&self, client_id: &str, number: u64) {
        self.leave(client_id, number, Vec::new());
    }

    /// Connection `number` of `client_id` ended with `unacknowledged` QoS 1 messages. A persistent session
    /// stays, keeps them first in its backlog, and keeps what is delivered to it from now on: its filters
    /// are returned. A newer connection that took the session over gets them; a clean session ends, and
    /// they with it.
    pub(crate) fn leave(
        &self,
        client_id: &str,
        number: u64,
        unacknowledged: Vec<Waiting>,
    ) -> Option<Vec<String>> {
        let mut registry = self.lock();
        let Some(outlet) = registry.connection(client_id, number) else {
            drop(registry);
            self.keep(client_id, unacknowledged);
            return None;
        };
        if outlet.expiry.is_none() {
            registry.outlets.remove(client_id);
            registry.update_watcher(client_id);
            return None;
        }
        outlet.queue = None;
        outlet.left_at = Some(Instant::now());
        for message in unacknowledged {
            self.backlog_push(outlet, client_id, message, Keep::Each);
        }
        let filters = outlet.filters.clone();
        registry.touch(client_id, true);
        drop(registry);
        self.changed.notify_one();
        Some(filters)
    }

    /// QoS 1 messages for `client_id` that sprig holds (from its parked router link, or left unacknowledged
    /// by a connection that was taken over): to its connection, or to its backlog while it is away.
    pub(crate) fn keep(&self, client_id: &str, messages: Vec<Waiting>) {
        if messages.is_empty() {
            return;
        }
        let mut registry = self.lock();
        let Some(outlet) = registry.outlets.get_mut(client_id) else {
            return;
        };
        let mut queued = false;
        for message in messages {
            match &outlet.queue {
                Some(wire) => {
                    let topic = message.topic.clone();
                    if wire.queue(message).is_err() {
                        self.count_drop(outlet, client_id, &topic, Dropped::QueueFull);
                    }
                }
                None => queued |= self.backlog_push(outlet, client_id, message, Keep::Each),
            }
        }
        if queued {
            registry.touch(client_id, true);
            drop(registry);
            self.changed.notify_one();
        }
    }

    /// Adds a message to a disconnected session's backlog; false (dropped, counted) when it is full.
    fn backlog_push(
        &self,
        outlet: &mut Outlet,
        client_id: &str,
        message: Waiting,
        keep: Keep,
    ) -> bool {
        let topic = message.topic.clone();
        if outlet.left_at.is_some() && outlet.backlog.push(message, keep, self.limits) {
            crate::metrics::get().messages_queued.inc();
            return true;
        }
        self.count_drop(outlet, client_id, &topic, Dropped::BacklogFull);
        false
    }

    /// Connection `number` of `client_id` changes how long its session outlives it (MQTT 5 DISCONNECT).
    /// A session that was to end with its connection cannot be made persistent then: false, unchanged.
    pub(crate) fn change_expiry(
        &self,
        client_id: &str,
        number: u64,
        expiry: Option<Duration>,
    ) -> bool {
        let mut registry = self.lock();
        let Some(outlet) = registry.connection(client_id, number) else {
            return true;
        };
        if outlet.expiry.is_none() {
            return expiry.is_none();
        }
        outlet.expiry = expiry;
        registry.touch(client_id, true);
        true
    }

    /// Ends the disconnected sessions whose expiry has passed; returns their client ids.
    pub(crate) fn expire(&self, now: Instant) -> Vec<String> {
        let mut registry = self.lock();
        let expired: Vec<String> = registry
            .outlets
            .iter()
            .filter(|(_, o)| o.expired(now))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in &expired {
            registry.outlets.remove(client_id);
            registry.update_watcher(client_id);
            registry.touch(client_id, true);
        }
        drop(registry);
        if !expired.is_empty() {
            self.changed.notify_one();
        }
        expired
    }

    /// Brings back the sessions the store kept (at start-up, before any client connects), disconnected
    /// since they were written; expired ones are left out and removed from the store at the next write.
    /// Returns those brought back: (client id, owner, filters).
    pub(crate) fn restore(
        &self,
        stored: Vec<(String, StoredSession)>,
    ) -> Vec<(String, Identity, Vec<String>)> {
        let (now, wall) = (Instant::now(), epoch_ms());
        let mut registry = self.lock();
        let mut restored = Vec::new();
        for (client_id, session) in stored {
            // Time spent away, as the wall clock says (a session connected when written left just now).
            let away_ms = session.left_at_ms.map_or(0, |left| wall - left);
            let away = Duration::from_millis(away_ms.max(0) as u64);
            let outlet = Outlet {
                number: 0,
                owner: session.owner,
                expiry: Some(Duration::from_secs(session.expiry_s)),
                left_at: Some(now.checked_sub(away).unwrap_or(now)),
                backlog: session.backlog.into_iter().map(Waiting::from).collect(),
                filters: session.filters,
                options: Vec::new(),
                queue: None,
                dropped: 0,
            };
            if outlet.expired(now) {
                registry.touch(&client_id, true);
                continue;
            }
            restored.push((
                client_id.clone(),
                outlet.owner.clone(),
                outlet.filters.clone(),
            ));
            registry.outlets.insert(client_id.clone(), outlet);
            registry.update_watcher(&client_id);
        }
        restored
    }

    /// Marks sessions as changed again (their write failed).
    pub(crate) fn mark_changed(&self, client_ids: Vec<String>) {
        self.lock().changed.extend(client_ids);
    }

    /// Waits until a persistent session changed since the last [`Outlets::take_changed`].
    pub(crate) async fn changed(&self) {
        self.changed.notified().await
    }

    /// The persistent sessions that changed since the last call, as they are now (`None`: ended).
    pub(crate) fn take_changed(&self) -> Vec<(String, Option<StoredSession>)> {
        let mut registry = self.lock();
        let wall = epoch_ms();
        let now = Instant::now();
        let changed = std::mem::take(&mut registry.changed);
        changed
            .into_iter()
            .map(|client_id| {
                let stored = registry.outlets.get(&client_id).and_then(|o| {
                    let expiry = o.expiry?;
                    let left_at_ms = o
                        .left_at
                        .map(|left| wall - now.duration_since(left).as_millis() as i64);
                    Some(StoredSession {
                        owner: o.owner.clone(),
                        expiry_s: expiry.as_secs(),
                        left_at_ms,
                        filters: o.filters.clone(),
                        backlog: o.backlog.iter().map(StoredMessage::from).collect(),
                    })
                });
                (client_id, stored)
            })
            .collect()
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
        let persistent = outlet.expiry.is_some();
        registry.touch(client_id, persistent);
        registry.update_watcher(client_id);
    }

    /// The options connection `number` of `client_id` subscribed to routed `filter` with, kept with its
    /// session.
    pub(crate) fn set_options(
        &self,
        client_id: &str,
        number: u64,
        filter: &str,
        options: SubOptions,
    ) {
        let mut registry = self.lock();
        if let Some(outlet) = registry.connection(client_id, number) {
            match outlet.options.iter_mut().find(|(f, _)| f == filter) {
                Some((_, held)) => *held = options,
                None => outlet.options.push((filter.to_owned(), options)),
            }
        }
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
            outlet.options.retain(|(f, _)| !filters.contains(f));
            let persistent = outlet.expiry.is_some();
            registry.update_watcher(client_id);
            registry.touch(client_id, persistent);
        }
    }

    /// Queues `payload` on `topic` for `client_id` if one of its filters matches (in its backlog, each
    /// kept, while a persistent session is offline). Never blocks.
    pub(crate) fn deliver(&self, client_id: &str, topic: &str, payload: Bytes) -> Delivery {
        let mut counts = Deliveries::default();
        let delivery = self.deliver_all([(client_id, topic, payload)], Keep::Each, &mut counts);
        delivery.unwrap_or(Delivery::InvalidTopic)
    }

    /// Sends one of the gateway's own events (a topic under `$aws/events/`) to every client whose filters
    /// match it. Only the clients holding such filters are looked at (operators: devices may not
    /// subscribe there), so an event costs nothing per connected device. Never blocks.
    pub(crate) fn publish_event(&self, topic: &str, payload: Bytes) -> Deliveries {
        let watchers: Vec<String> = self.lock().watchers.iter().cloned().collect();
        let messages = watchers.iter().map(|w| (w, topic, payload.clone()));
        let mut counts = Deliveries::default();
        self.deliver_all(messages, Keep::Each, &mut counts);
        counts
    }

    /// [`Outlets::deliver`] for many state notifications, under one lock: while a persistent session is
    /// offline, only the latest per topic is kept.
    pub(crate) fn deliver_many<C, T>(
        &self,
        messages: impl IntoIterator<Item = (C, T, Bytes)>,
    ) -> Deliveries
    where
        C: AsRef<str>,
        T: AsRef<str>,
    {
        let mut counts = Deliveries::default();
        self.deliver_all(messages, Keep::Latest, &mut counts);
        counts
    }

    /// Delivers each message, counting the outcomes; returns the last one's. Who gets what is decided
    /// under one lock; the messages for connected clients are handed to their wires after it is released
    /// (a wire may write to a socket, and other deliverers need not wait for that). A client's outlet is
    /// looked up once for consecutive messages to it (a notification and its notify-next).
    fn deliver_all<C, T>(
        &self,
        messages: impl IntoIterator<Item = (C, T, Bytes)>,
        keep: Keep,
        counts: &mut Deliveries,
    ) -> Option<Delivery>
    where
        C: AsRef<str>,
        T: AsRef<str>,
    {
        let mut last = None;
        let mut live = Vec::new();
        let mut registry = self.lock();
        let Registry {
            outlets, changed, ..
        } = &mut *registry;
        // The client whose outlet `outlet` is, once one was looked up.
        let (mut looked_up, mut outlet) = (None::<String>, None);
        for (client_id, topic, payload) in messages {
            let (id, name) = (client_id.as_ref(), topic.as_ref());
            if looked_up.as_deref() != Some(id) {
                outlet = outlets.get_mut(id);
                let buffer = looked_up.get_or_insert_with(String::new);
                buffer.clear();
                buffer.push_str(id);
            }
            match self.deliver_locked(outlet.as_deref_mut(), changed, id, name, payload, keep) {
                Decided::Done(delivery) => {
                    counts.count(delivery);
                    last = Some(delivery);
                }
                Decided::ToWire(wire, payload) => live.push((wire, client_id, topic, payload)),
            }
        }
        drop(registry);
        if counts.queued > 0 {
            self.changed.notify_one();
        }
        for (wire, client_id, topic, payload) in live {
            let (client_id, topic) = (client_id.as_ref(), topic.as_ref());
            let delivery = match wire.deliver(topic, payload) {
                Ok(()) => Delivery::Delivered,
                Err(Refused::Closed) => Delivery::Offline,
                Err(Refused::Full) => {
                    self.count_queue_full(client_id, topic);
                    Delivery::Dropped
                }
            };
            counts.count(delivery);
            last = Some(delivery);
        }
        last
    }

    /// What becomes of a message to `client_id` (whose outlet, if it has one, is `outlet`): decided here,
    /// or handed to the wire of the connected client it goes to.
    fn deliver_locked(
        &self,
        outlet: Option<&mut Outlet>,
        changed: &mut HashSet<String>,
        client_id: &str,
        topic: &str,
        payload: Bytes,
        keep: Keep,
    ) -> Decided {
        // Bytes, not chars: this runs for every message of a fan-out.
        if topic.is_empty() || topic.bytes().any(|b| b == b'+' || b == b'#') {
            return Decided::Done(Delivery::InvalidTopic);
        }
        let Some(outlet) = outlet else {
            return Decided::Done(Delivery::Offline);
        };
        if !outlet.filters.iter().any(|f| matches(topic, f)) {
            return Decided::Done(Delivery::NotSubscribed);
        }
        if let Some(wire) = &outlet.queue {
            return Decided::ToWire(wire.clone(), payload);
        }
        let message = Waiting::direct(topic, payload);
        if self.backlog_push(outlet, client_id, message, keep) {
            changed.insert(client_id.to_owned());
            return Decided::Done(Delivery::Queued);
        }
        Decided::Done(Delivery::Dropped)
    }

    /// Counts a message dropped because `client_id`'s queue was full.
    fn count_queue_full(&self, client_id: &str, topic: &str) {
        let mut registry = self.lock();
        match registry.outlets.get_mut(client_id) {
            Some(outlet) => self.count_drop(outlet, client_id, topic, Dropped::QueueFull),
            // Its session ended meanwhile: counted all the same.
            None => _ = self.count(Dropped::QueueFull),
        }
    }

    fn count_drop(&self, outlet: &mut Outlet, client_id: &str, topic: &str, why: Dropped) {
        outlet.dropped += 1;
        let total = self.count(why);
        // The first drop of a connection, then every power of two: visible, never a flood.
        if outlet.dropped.is_power_of_two() {
            tracing::warn!(
                client_id,
                topic,
                dropped = outlet.dropped,
                dropped_all_clients = total,
                "{}: message dropped",
                why.explanation()
            );
        }
    }

    /// Counts a message a connection's writer dropped for a client that reads too slowly; the total of
    /// all drops since the broker started.
    pub(crate) fn count_dropped(&self) -> u64 {
        self.count(Dropped::SlowReader)
    }

    /// Counts one dropped message in the metrics and the total; returns the total.
    fn count(&self, why: Dropped) -> u64 {
        crate::metrics::get().dropped(why.label());
        self.dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Messages dropped on full queues since the broker started.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How many messages wait in `client_id`'s session for its client to come back.
    #[cfg(test)]
    pub(crate) fn waiting(&self, client_id: &str) -> usize {
        self.lock()
            .outlets
            .get(client_id)
            .map_or(0, |o| o.backlog.iter().count())
    }

    /// The filters `client_id` holds now.
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

/// The wall clock in milliseconds since the epoch (what a stored session's times are in).
fn epoch_ms() -> i64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::wire::Direct;

    fn topic_of(delivered: Direct) -> (String, Bytes) {
        match delivered {
            Direct::Message(message) => (message.topic, message.payload),
            Direct::Rest => panic!("a queue-only wire never writes part of a packet"),
        }
    }

    fn wire(queue: flume::Sender<Box<Direct>>) -> Arc<Wire> {
        Arc::new(Wire::queue_only(queue))
    }

    fn filters(list: &[&str]) -> Vec<String> {
        list.iter().map(|f| f.to_string()).collect()
    }

    const NOTIFY: &str = "$aws/things/d1/jobs/notify";
    const CLEAN: SessionRequest = SessionRequest {
        discard: true,
        expiry: None,
    };
    const KEPT: SessionRequest = SessionRequest {
        discard: false,
        expiry: Some(Duration::from_secs(3600)),
    };

    fn owner(client_id: &str) -> Identity {
        Identity::Device(client_id.to_owned())
    }

    /// Events reach the clients watching `$aws/events/` and only them; a watcher that unsubscribes or
    /// closes is no longer one.
    #[test]
    fn events_go_to_their_watchers_only() {
        let outlets = Outlets::default();
        let (op_tx, op_rx) = flume::bounded(QUEUE);
        let (dev_tx, dev_rx) = flume::bounded(QUEUE);
        outlets
            .open("op", 1, &owner("op"), CLEAN, wire(op_tx))
            .unwrap();
        outlets
            .open("d1", 2, &owner("d1"), CLEAN, wire(dev_tx))
            .unwrap();
        outlets.subscribe("op", 1, &filters(&["$aws/events/presence/connected/+"]));
        outlets.subscribe("d1", 2, &filters(&["$aws/things/d1/#"]));
        assert_eq!(outlets.lock().watchers.len(), 1);

        let topic = "$aws/events/presence/connected/d1";
        let counts = outlets.publish_event(topic, Bytes::from_static(b"{}"));
        assert_eq!((counts.delivered, counts.not_subscribed), (1, 0));
        assert_eq!(topic_of(*op_rx.try_recv().unwrap()).0, topic);
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
        let (tx, rx) = flume::bounded(QUEUE);
        outlets
            .open("d1", 1, &owner("d1"), CLEAN, wire(tx))
            .unwrap();
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
            topic_of(*rx.try_recv().unwrap()),
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
        let (tx, rx) = flume::bounded(QUEUE);
        outlets
            .open("d1", 1, &owner("d1"), CLEAN, wire(tx))
            .unwrap();
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
        let (tx, rx) = flume::bounded(2);
        outlets
            .open("d1", 1, &owner("d1"), CLEAN, wire(tx))
            .unwrap();
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
        let (old_tx, old_rx) = flume::bounded(QUEUE);
        let (new_tx, new_rx) = flume::bounded(QUEUE);
        outlets
            .open("d1", 1, &owner("d1"), CLEAN, wire(old_tx))
            .unwrap();
        outlets.subscribe("d1", 1, &filters(&[NOTIFY]));
        outlets
            .open("d1", 2, &owner("d1"), CLEAN, wire(new_tx))
            .unwrap();
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
    fn a_persistent_session_keeps_its_filters_and_backlog_across_connections() {
        let outlets = Outlets::default();
        let (tx, _rx) = flume::bounded(QUEUE);
        outlets.open("d1", 1, &owner("d1"), KEPT, wire(tx)).unwrap();
        outlets.subscribe("d1", 1, &filters(&[NOTIFY]));
        outlets.close("d1", 1);
        // Offline: notifications wait, the latest per topic; replies each.
        let notifications = [1, 2].map(|n| ("d1", NOTIFY, Bytes::from(vec![n])));
        assert_eq!(outlets.deliver_many(notifications).queued, 2);
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Queued
        );
        assert_eq!(
            outlets.deliver("d1", "$aws/things/d1/other", Bytes::new()),
            Delivery::NotSubscribed
        );
        let (tx, rx) = flume::bounded(QUEUE);
        let resumed = outlets.open("d1", 2, &owner("d1"), KEPT, wire(tx)).unwrap();
        assert_eq!(resumed.filters, Some(vec![NOTIFY.to_owned()]));
        let payloads: Vec<&[u8]> = resumed.backlog.iter().map(|m| m.payload.as_ref()).collect();
        assert_eq!(payloads, [&[2][..], &[][..]]);
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Delivered
        );
        assert!(rx.try_recv().is_ok());
        outlets.close("d1", 2);
        // Reconnecting clean discards them.
        let (tx, _rx) = flume::bounded(QUEUE);
        let resumed = outlets
            .open("d1", 3, &owner("d1"), CLEAN, wire(tx))
            .unwrap();
        assert_eq!(resumed, Resumed::default());
        assert!(outlets.filters("d1").is_empty());
    }

    #[test]
    fn a_clean_session_ends_with_its_connection_even_when_taken_over() {
        let outlets = Outlets::default();
        let (tx, _rx) = flume::bounded(QUEUE);
        outlets
            .open("d1", 1, &owner("d1"), CLEAN, wire(tx))
            .unwrap();
        outlets.subscribe("d1", 1, &filters(&[NOTIFY]));
        // Its connection is still open when a persistent one takes the client id over.
        let (tx, _rx) = flume::bounded(QUEUE);
        let resumed = outlets.open("d1", 2, &owner("d1"), KEPT, wire(tx)).unwrap();
        assert_eq!(resumed, Resumed::default());
        assert!(outlets.filters("d1").is_empty());
    }

    #[test]
    fn a_session_is_taken_over_only_by_its_owner() {
        let outlets = Outlets::default();
        let operator = Identity::Operator("ops".into());
        let (tx, _rx) = flume::bounded(QUEUE);
        outlets.open("d1", 1, &owner("d1"), KEPT, wire(tx)).unwrap();
        let (tx, _rx) = flume::bounded(QUEUE);
        assert_eq!(
            outlets.open("d1", 2, &operator, CLEAN, wire(tx)),
            Err(owner("d1"))
        );
        // Offline and kept: still the device's.
        outlets.close("d1", 1);
        let (tx, _rx) = flume::bounded(QUEUE);
        assert_eq!(
            outlets.open("d1", 3, &operator, KEPT, wire(tx)),
            Err(owner("d1"))
        );
        // Once expired, the client id is free.
        let later = Instant::now() + Duration::from_secs(3601);
        assert_eq!(outlets.expire(later), ["d1"]);
        let (tx, _rx) = flume::bounded(QUEUE);
        assert!(outlets.open("d1", 4, &operator, CLEAN, wire(tx)).is_ok());
    }

    #[test]
    fn a_disconnect_may_change_a_persistent_sessions_expiry_but_not_start_one() {
        let outlets = Outlets::default();
        let (tx, _rx) = flume::bounded(QUEUE);
        outlets.open("d1", 1, &owner("d1"), KEPT, wire(tx)).unwrap();
        outlets.subscribe("d1", 1, &filters(&[NOTIFY]));
        assert!(outlets.change_expiry("d1", 1, Some(Duration::from_secs(4))));
        outlets.close("d1", 1);
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(outlets.expire(later), ["d1"]);

        let (tx, _rx) = flume::bounded(QUEUE);
        outlets
            .open("d2", 2, &owner("d2"), CLEAN, wire(tx))
            .unwrap();
        assert!(!outlets.change_expiry("d2", 2, Some(Duration::from_secs(60))));
        outlets.close("d2", 2);
        assert_eq!(
            outlets.deliver("d2", NOTIFY, Bytes::new()),
            Delivery::Offline
        );
    }

    #[test]
    fn a_session_expires_after_its_expiry_and_not_before() {
        let outlets = Outlets::new(Limits {
            messages: 1,
            bytes: 1024,
        });
        let (tx, _rx) = flume::bounded(QUEUE);
        let request = SessionRequest {
            discard: false,
            expiry: Some(Duration::from_secs(60)),
        };
        outlets
            .open("d1", 1, &owner("d1"), request, wire(tx))
            .unwrap();
        outlets.subscribe("d1", 1, &filters(&["$aws/things/d1/#"]));
        outlets.close("d1", 1);
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Queued
        );
        // Beyond the backlog's limit: dropped and counted.
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Dropped
        );
        assert_eq!(outlets.dropped(), 1);
        assert!(outlets.expire(Instant::now()).is_empty());
        assert_eq!(
            outlets.expire(Instant::now() + Duration::from_secs(61)),
            ["d1"]
        );
        assert_eq!(
            outlets.deliver("d1", NOTIFY, Bytes::new()),
            Delivery::Offline
        );
    }
}
