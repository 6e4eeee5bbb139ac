//! A connection's writer: router output, the gateway's direct deliveries and the reader's replies, to the
//! socket; and how a SUBSCRIBE's SUBACK is put together from sprig's answers and the router's. Each
//! routed publish is delivered as MQTT says, not as the router forwards it (see `origin`, `options`).

use bytes::Bytes;
use rumqttd::local::LinkRx;
use rumqttd::protocol::{Packet, Publish, PublishProperties, SubscribeReasonCode};
use rumqttd::Notification;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::super::backlog::Waiting;
use super::super::codec::{PacketWriter, Progress, Version};
use super::super::direct::Resumed;
use super::super::inflight::{qos1_publish, qos_and_pkid};
use super::super::origin::Origin;
use super::super::parking::RESTORE_PKID;
use super::super::retained::Kept;
use super::super::topics::to_external;
use super::super::wire::{Direct, Wire};
use super::super::{Shared, SubscribeEvent, WriteHalf};
use super::{
    denied_code, lock, Answer, PendingSubacks, RouterOwed, SharedCopies, SharedInflight,
    SharedOptions, ToWriter, WriterEnd,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Where the writer records granted subscriptions: the connection's direct outlet, and the reports of
/// [`super::Broker::subscriptions`] (see [`super::SubscribeEvent`]).
pub(super) struct Subscribed {
    pub(super) shared: Arc<Shared>,
    pub(super) client_id: String,
    /// The connection number (see `Sessions`).
    pub(super) number: u64,
}

impl Subscribed {
    /// Direct delivery on `granted` (minus `revoked`) starts now; called under the pending-SUBACK lock.
    fn grant(&self, granted: &[String], revoked: &[String]) {
        let granted: Vec<String> = granted
            .iter()
            .filter(|f| !revoked.contains(f))
            .cloned()
            .collect();
        let outlets = &self.shared.outlets;
        outlets.subscribe(&self.client_id, self.number, &granted);
    }

    fn report(&self, filters: Vec<String>) {
        if filters.is_empty() {
            return;
        }
        // Fails only when nobody listens, which is fine.
        let _ = self.shared.subscriptions.send(SubscribeEvent {
            client_id: self.client_id.clone(),
            connection: self.number,
            filters,
        });
    }
}

/// Packets of one source (the reader's replies, direct deliveries, router notifications) encoded into one
/// write, at most: what waits behind each other goes out together, and no source holds the others long.
const WRITE_BATCH: usize = 64;

/// The socket's writing half and the record of what it wrote at QoS 1.
pub(super) struct Outgoing {
    pub(super) writer: PacketWriter<WriteHalf>,
    pub(super) inflight: SharedInflight,
    /// Told when a router publish was settled here (see [`super::super::inflight::Inflight::release`]).
    pub(super) settled: Arc<tokio::sync::Notify>,
    /// The options of the connection's routed subscriptions (see `options`).
    pub(super) options: SharedOptions,
    pub(super) client_id: String,
    /// The client's QoS 1 and 2 publishes not yet acknowledged (see `Client::receiving`).
    pub(super) receiving: Arc<AtomicUsize>,
    /// Messages not sent because they were larger than the client's Maximum Packet Size.
    pub(super) too_large: u64,
    /// Told when the client acknowledged a publish (see `held`).
    pub(super) window: Arc<tokio::sync::Notify>,
    /// The client's Receive Maximum (MQTT 5 §3.3.4: no more QoS 1 publishes unacknowledged than this).
    pub(super) receive_maximum: usize,
    /// Router publishes at QoS 1 held back while the client owes its Receive Maximum, in order; the
    /// router's other packets (acknowledgements of the client's own publishes, SUBACKs) go on meanwhile.
    pub(super) held: std::collections::VecDeque<Packet>,
    /// Copies whose publish's acknowledgement must wait for them (see [`SharedCopies`]).
    pub(super) copies: SharedCopies,
    /// Bytes that may wait for the client (`broker.max_queued_bytes`): beyond them QoS 0 messages are
    /// dropped, not queued.
    pub(super) budget: usize,
    /// QoS 0 messages dropped for this connection because it read too slowly.
    pub(super) dropped: u64,
    /// What the router owes the connection (see [`RouterOwed`]): the writer takes answers off as they come
    /// and counts the publishes it holds.
    pub(super) router_owed: Arc<RouterOwed>,
    /// The connection's way in for direct deliveries, written to by deliverers while this writer is idle.
    pub(super) wire: Arc<Wire>,
    /// The reader's commands taken since the writer last said it was idle (see [`Wire::park`]).
    pub(super) commands_taken: usize,
}

impl Outgoing {
    /// The writer has something to write: deliverers no longer write to the socket, and the end of a
    /// packet one of them left goes first.
    fn take_wire(&mut self) {
        if let Some(rest) = self.wire.take_over() {
            self.writer.put_first(&rest);
        }
    }

    /// True when as much waits for the client as it may be sent ahead.
    fn full(&self) -> bool {
        self.writer.pending() >= self.budget
    }

    /// True when a router publish at QoS 1 must wait: the client owes its Receive Maximum already, or
    /// others wait before it.
    fn must_hold(&self, packet: &Packet) -> bool {
        let Packet::Publish(publish, props) = packet else {
            return false;
        };
        if qos_and_pkid(publish).0 == 0 {
            return false;
        }
        // Behind held ones, every publish the router numbered waits (the router is acknowledged in the
        // order it numbered them), also a QoS 0 message on a QoS 1 subscription, which on its own is not
        // the window's (it goes out at QoS 0).
        let published = Origin::peek(props).map_or(2, |o| o.qos);
        !self.held.is_empty()
            || (published > 0 && lock(&self.inflight).owed() >= self.receive_maximum)
    }

    /// The connection ends: the publishes still held are owed to the client like those written, so the
    /// session keeps them and the router is acknowledged them in its order (see `leave_session`).
    fn owe_held(&mut self) {
        let mut inflight = lock(&self.inflight);
        for packet in self.held.drain(..) {
            if let Packet::Publish(publish, props) = packet {
                let (_, pkid) = qos_and_pkid(&publish);
                let topic = String::from_utf8_lossy(&publish.topic);
                inflight.sent_by_router(pkid, &topic, &publish.payload, props);
            }
        }
    }

    /// Writes the held publishes the client's Receive Maximum lets through now.
    fn release_held(&mut self) -> std::io::Result<()> {
        while !self.held.is_empty() && lock(&self.inflight).owed() < self.receive_maximum {
            if let Some(packet) = self.held.pop_front() {
                self.router_owed.held.fetch_sub(1, Ordering::AcqRel);
                self.encode_from_router(packet)?;
            }
        }
        Ok(())
    }

    /// Encodes one of the session's own messages: at QoS 0, or at QoS 1 under a packet id of sprig's (see
    /// [`Inflight`]), recorded until the client acknowledges it.
    /// A routed message kept for the session carries its properties (and `Origin`): one past its Message
    /// Expiry Interval is not sent.
    fn encode_message(&mut self, mut message: Waiting) -> std::io::Result<()> {
        // Kept as it is (origin attached) for sending it again; a copy is written.
        let kept = message.props.take();
        let mut props = kept.as_deref().cloned();
        let origin = Origin::take(&mut props);
        if (origin.as_ref()).is_some_and(|o| o.expire(&mut props, SystemTime::now())) {
            return Ok(());
        }
        let (publish, pkid) = if message.reliable {
            let sent = Waiting {
                props: kept,
                ..message.clone()
            };
            let pkid = lock(&self.inflight).send_own(sent);
            (qos1_publish(&message, pkid), Some(pkid))
        } else {
            let publish = Publish::new(Bytes::from(message.topic), message.payload, false);
            (publish, None)
        };
        self.encode_own(publish, props, pkid)
    }

    /// Encodes one of sprig's own publishes (`pkid`: its QoS 1 packet id); one larger than the client's
    /// Maximum Packet Size is dropped, and no longer owed.
    fn encode_own(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        pkid: Option<u16>,
    ) -> std::io::Result<()> {
        let topic = publish.topic.clone();
        if !self
            .writer
            .encode_publish(Packet::Publish(publish, props))?
        {
            self.count_too_large(&topic);
            if let Some(pkid) = pkid {
                lock(&self.inflight).acknowledged(pkid);
            }
        }
        Ok(())
    }

    /// Logs (the first, then every power of two) a message not sent because it is larger than the client's
    /// Maximum Packet Size.
    fn count_too_large(&mut self, topic: &Bytes) {
        self.too_large += 1;
        if self.too_large.is_power_of_two() {
            tracing::warn!(
                client_id = self.client_id,
                topic = %String::from_utf8_lossy(topic),
                dropped = self.too_large,
                "message larger than the client's Maximum Packet Size: not sent"
            );
        }
    }

    /// Encodes a packet that is not a PUBLISH; an acknowledgement that ends a client's QoS 1 or 2 publish
    /// gives back its place in the Receive Maximum (see `Client::receiving`).
    fn encode_other(&mut self, packet: Packet) -> std::io::Result<()> {
        if matches!(packet, Packet::PubAck(..) | Packet::PubComp(..)) {
            let _ = (self.receiving)
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        self.writer.encode(packet)
    }

    /// Encodes one packet from the router; a QoS 1 publish is recorded until the client acknowledges it.
    /// A publish goes out at the lower of its subscription's QoS (the router's) and its publisher's (MQTT
    /// 3.8.4), which the router forgets (see `origin`): a QoS 0 message on a QoS 1 subscription is written
    /// at QoS 0, and settled with the router here. Returns false when it was a QoS 0 publish dropped because
    /// the client is too far behind.
    fn encode_from_router(&mut self, packet: Packet) -> std::io::Result<bool> {
        let Packet::Publish(mut publish, mut props) = packet else {
            return self.encode_other(packet).map(|()| true);
        };
        let (routed_qos, pkid) = qos_and_pkid(&publish);
        // As routed, origin attached: what is kept for sending it again.
        let routed_props = props.clone();
        let origin = Origin::take(&mut props);
        let qos = (origin.as_ref()).map_or(routed_qos, |o| o.qos.min(routed_qos));
        // The router clears the retain flag of live messages: set, it is a retained message sent because
        // the connection subscribed.
        let on_subscribing = publish.retain;
        let options = lock(&self.options).for_topic(&String::from_utf8_lossy(&publish.topic));
        let own = origin
            .as_ref()
            .is_some_and(|o| o.client_id == self.client_id);
        // rumqttd counts a retained message's expiry itself when it sends it on subscribing.
        let expired = !on_subscribing
            && (origin.as_ref()).is_some_and(|o| o.expire(&mut props, SystemTime::now()));
        if (options.no_local && own) || (options.no_retained && on_subscribing) || expired {
            if routed_qos > 0 {
                lock(&self.inflight).settled_by_router(pkid);
                self.settled.notify_one();
            }
            return Ok(true);
        }
        if options.retain_as_published && !on_subscribing {
            publish.retain = origin.as_ref().is_some_and(|o| o.retain);
        }
        if qos < routed_qos {
            lock(&self.inflight).settled_by_router(pkid);
            self.settled.notify_one();
            publish = Publish::new(publish.topic, publish.payload, publish.retain);
        }
        if qos == 0 && self.full() {
            return Ok(false);
        }
        let (topic, payload) = (publish.topic.clone(), publish.payload.clone());
        if !self
            .writer
            .encode_publish(Packet::Publish(publish, props))?
        {
            self.count_too_large(&topic);
            if qos > 0 {
                lock(&self.inflight).settled_by_router(pkid);
                self.settled.notify_one();
            }
            return Ok(true);
        }
        if qos > 0 {
            let topic = String::from_utf8_lossy(&topic);
            lock(&self.inflight).sent_by_router(pkid, &topic, &payload, routed_props);
        }
        Ok(true)
    }

    /// Encodes a retained message sent again for a subscription the connection held already (see
    /// `retained`), at the lower of its QoS and the subscription's `granted` one, retain flag set.
    fn encode_retained(&mut self, kept: Kept, granted: u8) -> std::io::Result<()> {
        let routed = kept.props.clone();
        let mut props = kept.props;
        let origin = Origin::take(&mut props);
        if (origin.as_ref()).is_some_and(|o| o.expire(&mut props, SystemTime::now())) {
            return Ok(());
        }
        let published = origin.map_or(0, |o| o.qos);
        let (publish, pkid) = if published.min(granted) == 0 {
            let publish = Publish::new(Bytes::from(kept.topic), kept.payload, true);
            (publish, None)
        } else {
            let message = Waiting {
                topic: kept.topic,
                payload: kept.payload,
                reliable: true,
                dup: false,
                props: routed.map(Box::new),
            };
            let pkid = lock(&self.inflight).send_own(message.clone());
            let mut publish = qos1_publish(&message, pkid);
            publish.retain = true;
            (publish, Some(pkid))
        };
        self.encode_own(publish, props, pkid)
    }

    /// The copies that `packet`, the router's acknowledgement of a client's publish, must wait for.
    fn copies_acknowledged_by(&self, packet: &Packet) -> Vec<oneshot::Receiver<()>> {
        let pkid = match packet {
            Packet::PubAck(ack, _) => ack.pkid,
            Packet::PubRec(rec, _) => rec.pkid,
            _ => return Vec::new(),
        };
        lock(&self.copies).remove(&pkid).unwrap_or_default()
    }

    /// Counts and logs (the first, then every power of two) a QoS 0 message dropped for this client.
    fn count_drop(&mut self, subscribed: &Subscribed, topic: &str) {
        self.dropped += 1;
        let total = subscribed.shared.outlets.count_dropped();
        if self.dropped.is_power_of_two() {
            tracing::warn!(
                client_id = subscribed.client_id,
                topic,
                dropped = self.dropped,
                dropped_all_clients = total,
                queued_bytes = self.writer.pending(),
                "the client reads too slowly: QoS 0 message dropped"
            );
        }
    }
}

/// Writes what waited for a resumed session, before anything else, and reports its filters as granted.
async fn write_backlog(
    out: &mut Outgoing,
    resumed: Resumed,
    subscribed: &Subscribed,
) -> std::io::Result<()> {
    for message in resumed.backlog {
        out.encode_message(message)?;
    }
    out.writer.flush().await?;
    subscribed.report(resumed.filters.unwrap_or_default());
    Ok(())
}

/// Router -> socket, restoring `$` topics, splicing denied filters into SUBACKs and reporting granted
/// subscriptions once their SUBACK is written; and direct deliveries -> socket. A resumed session's
/// backlog goes first. The connection may have no router link, or get one later (`ToWriter::Link`). Gives
/// the router link's receiving half back when it ends.
///
/// A plain function returning an `async move` block, not an `async fn`: an `async fn` keeps its
/// arguments twice in its state (as given, and moved into its body), for as long as the task lives.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(super) fn write_loop(
    mut out: Outgoing,
    mut link_rx: Option<LinkRx>,
    commands: flume::Receiver<ToWriter>,
    direct: flume::Receiver<Box<Direct>>,
    pending: PendingSubacks,
    subscribed: Subscribed,
    resumed: Resumed,
) -> impl std::future::Future<Output = (WriterEnd, Option<LinkRx>)> + Send {
    async move {
        // Boxed, as every wait but the loop's own: the connection's task keeps room for the largest of
        // its waits for as long as it lives, and thousands of idle connections add up.
        let backlog = Box::pin(write_backlog(&mut out, resumed, &subscribed)).await;
        let end = match backlog {
            Err(e) => WriterEnd::Io(e),
            Ok(()) => {
                let mut sources = Sources {
                    link_rx: &mut link_rx,
                    commands: &commands,
                    direct: &direct,
                    direct_open: true,
                };
                write_until_end(&mut out, &mut sources, &pending, &subscribed).await
            }
        };
        out.wire.close();
        out.owe_held();
        (end, link_rx)
    }
}

/// What the writer takes packets from.
struct Sources<'a> {
    link_rx: &'a mut Option<LinkRx>,
    commands: &'a flume::Receiver<ToWriter>,
    direct: &'a flume::Receiver<Box<Direct>>,
    /// False once a newer connection of this client id took the outlet over (the sender is gone).
    direct_open: bool,
}

async fn write_until_end(
    out: &mut Outgoing,
    sources: &mut Sources<'_>,
    pending: &PendingSubacks,
    subscribed: &Subscribed,
) -> WriterEnd {
    // Packets are encoded into the writer's buffer and written as the socket takes them, so a client that
    // reads slowly never holds up taking what comes next: its QoS 0 messages beyond `out.budget` are
    // dropped right here, instead of waiting (without bound) in the router and the direct queue.
    let window = out.window.clone();
    let stall = out.writer.stall_limit().unwrap_or(NEVER);
    let stall_timer = tokio::time::sleep(stall);
    tokio::pin!(stall_timer);
    let mut stall_armed = false;
    // Bytes the stream took that it may still hold itself (TLS records not yet on the socket).
    let mut unflushed = false;
    loop {
        let waiting = out.writer.pending() > 0 || unflushed;
        // The stall clock runs while something waits for the client, from when it began to wait or last
        // took some.
        if waiting && !stall_armed {
            stall_timer.as_mut().reset(Instant::now() + stall);
        }
        stall_armed = waiting;
        // Nothing of its own to write: deliverers may write to the socket until it has again.
        if !waiting && out.held.is_empty() {
            let taken = std::mem::take(&mut out.commands_taken);
            out.wire.park(taken, || sources.direct.is_empty());
        }
        // Each branch encodes what it got and says what remains (`Step`); nothing is awaited inside the
        // `select!`, whose state holds the largest thing any branch got (a router notification).
        let step = tokio::select! {
            // Replies the reader made are written before later router output.
            biased;
            command = sources.commands.recv_async() => match command {
                Ok(command) => take_commands(out, sources, command),
                Err(_) => {
                    out.take_wire();
                    Step::wait(Slow::Close(None, WriterEnd::Closed))
                }
            },
            progress = out.writer.write_or_flush(), if waiting => match progress {
                Ok(Progress::Wrote) => {
                    unflushed = true;
                    stall_timer.as_mut().reset(Instant::now() + stall);
                    Step::Done
                }
                Ok(Progress::Flushed) => {
                    unflushed = false;
                    Step::Done
                }
                Err(e) => Step::End(WriterEnd::Io(e)),
            },
            () = &mut stall_timer, if waiting => {
                let ms = stall.as_millis();
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client read nothing for {ms} ms"),
                );
                Step::End(WriterEnd::Io(e))
            }
            () = window.notified(), if !out.held.is_empty() => {
                out.take_wire();
                encoded(out.release_held())
            }
            message = sources.direct.recv_async(), if sources.direct_open => match message {
                Ok(message) => take_messages(out, sources.direct, message, subscribed),
                Err(_) => {
                    sources.direct_open = false;
                    Step::Done
                }
            },
            notification = next_notification(sources.link_rx) => match sources.link_rx.as_mut() {
                Some(rx) => take_notifications(out, rx, notification, pending, subscribed),
                None => Step::Done,
            },
        };
        match step {
            Step::Done => {}
            Step::End(end) => return end,
            Step::Wait(slow) => {
                let slow = finish_slow(out, sources.link_rx, *slow, subscribed);
                if let Some(end) = Box::pin(slow).await {
                    return end;
                }
            }
        }
    }
}

/// Encodes `first` of the direct deliveries and whatever else is queued, into the same write, up to
/// [`WRITE_BATCH`]: a QoS 0 message is dropped instead when the client is too far behind.
fn take_messages(
    out: &mut Outgoing,
    direct: &flume::Receiver<Box<Direct>>,
    first: Box<Direct>,
    subscribed: &Subscribed,
) -> Step {
    out.take_wire();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(delivered) = next.take() {
        let Direct::Message(message) = *delivered else {
            // The end of a packet a deliverer wrote in part, which `take_wire` put first.
            taken += 1;
            if taken < WRITE_BATCH {
                next = direct.try_recv().ok();
            }
            continue;
        };
        if !message.reliable && out.full() {
            out.count_drop(subscribed, &message.topic);
        } else if let Err(e) = out.encode_message(message) {
            return Step::End(WriterEnd::Io(e));
        }
        taken += 1;
        if taken < WRITE_BATCH {
            next = direct.try_recv().ok();
        }
    }
    Step::Done
}

/// The router link's next notification; never, while the connection has no link.
async fn next_notification(
    link_rx: &mut Option<LinkRx>,
) -> Result<Option<Notification>, rumqttd::local::LinkError> {
    match link_rx {
        Some(link_rx) => link_rx.next().await,
        None => std::future::pending().await,
    }
}

/// `future`'s output if it has one without waiting.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// What one of the reader's commands or one router notification asks of the writer, once encoded.
enum Step {
    /// Done (encoded, or nothing to do).
    Done,
    /// The writer ends.
    End(WriterEnd),
    /// Something to wait for first: rare, and done apart (see [`finish_slow`]) so that the long-lived
    /// writer loop does not carry its state.
    Wait(Box<Slow>),
}

impl Step {
    fn wait(slow: Slow) -> Step {
        Step::Wait(Box::new(slow))
    }
}

/// What waits (see [`Step::Wait`]).
enum Slow {
    /// The copies of a client's publish (see `taps`), then its acknowledgement.
    Copied(Vec<oneshot::Receiver<()>>, Packet),
    /// A SUBACK written at once, then its filters reported granted and retained messages sent.
    SubAck(Packet, Vec<String>, Vec<(Kept, u8)>),
    /// The last packet (if any) written, the socket closed, and the writer ended for this reason.
    Close(Option<Packet>, WriterEnd),
    /// The router paused this link because its buffer filled up: say we are ready again, or nothing
    /// more is ever delivered.
    Wake,
}

/// Encodes `first` of the reader's commands and those queued behind it (they go out in one write), up
/// to [`WRITE_BATCH`] or one that must wait.
fn take_commands(out: &mut Outgoing, sources: &mut Sources<'_>, first: ToWriter) -> Step {
    out.take_wire();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(command) = next.take() {
        out.commands_taken += 1;
        let step = on_command(out, command, sources.link_rx);
        if !matches!(step, Step::Done) {
            return step;
        }
        taken += 1;
        if taken < WRITE_BATCH {
            next = sources.commands.try_recv().ok();
        }
    }
    Step::Done
}

/// Encodes one of the reader's replies.
fn on_command(out: &mut Outgoing, command: ToWriter, link_rx: &mut Option<LinkRx>) -> Step {
    match command {
        ToWriter::Packet(packet) => {
            // An acknowledgement sprig made itself waits for its publish's copies, as the router's does.
            let copies = out.copies_acknowledged_by(&packet);
            if !copies.is_empty() {
                return Step::wait(Slow::Copied(copies, *packet));
            }
            encoded(out.encode_other(*packet))
        }
        ToWriter::SubAck(suback) => {
            let (packet, granted) = *suback;
            Step::wait(Slow::SubAck(packet, granted, Vec::new()))
        }
        ToWriter::Close(last) => Step::wait(Slow::Close(last.map(|p| *p), WriterEnd::Closed)),
        ToWriter::Link(rx) => {
            *link_rx = Some(*rx);
            Step::Done
        }
        ToWriter::Unlink(link) => {
            // Not read any more before it is closed: its end is not the router gone.
            *link_rx = None;
            drop(link);
            Step::Done
        }
    }
}

/// Encodes `first` of the router's notifications and what else it has for this client now, into the
/// same write (a publisher's PUBACKs come a batch at a time, and each write is a system call), up to
/// [`WRITE_BATCH`] or one that must wait.
fn take_notifications(
    out: &mut Outgoing,
    link_rx: &mut LinkRx,
    first: Result<Option<Notification>, rumqttd::local::LinkError>,
    pending: &PendingSubacks,
    subscribed: &Subscribed,
) -> Step {
    out.take_wire();
    let version = out.writer.version();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(notification) = next.take() {
        let notification = match notification {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(_) => return Step::End(WriterEnd::RouterGone),
        };
        let step = on_notification(out, notification, pending, subscribed, version);
        if !matches!(step, Step::Done) {
            return step;
        }
        taken += 1;
        if taken < WRITE_BATCH {
            next = ready_now(link_rx.next());
        }
    }
    Step::Done
}

/// Encodes what one router notification has for the client.
fn on_notification(
    out: &mut Outgoing,
    notification: Notification,
    pending: &PendingSubacks,
    subscribed: &Subscribed,
    version: Version,
) -> Step {
    if let Notification::Unschedule = notification {
        return Step::wait(Slow::Wake);
    }
    let Some(packet) = Option::<Packet>::from(notification) else {
        return Step::Done;
    };
    // The last answer the router owed: the reader may give the link back (see `give_back_link`).
    if answers_the_reader(&packet) && out.router_owed.answered() {
        out.settled.notify_one();
    }
    let copies = out.copies_acknowledged_by(&packet);
    if !copies.is_empty() {
        return Step::wait(Slow::Copied(copies, packet));
    }
    from_router(out, packet, pending, subscribed, version)
}

/// Encodes one packet from the router, as `outbound` says.
fn from_router(
    out: &mut Outgoing,
    packet: Packet,
    pending: &PendingSubacks,
    subscribed: &Subscribed,
    version: Version,
) -> Step {
    match outbound(packet, pending, subscribed, version) {
        Outbound::Write(packet) if out.must_hold(&packet) => {
            out.router_owed.held.fetch_add(1, Ordering::AcqRel);
            out.held.push_back(packet);
            Step::Done
        }
        Outbound::Write(packet) => {
            let topic = match &packet {
                Packet::Publish(publish, _) => Some(publish.topic.clone()),
                _ => None,
            };
            match out.encode_from_router(packet) {
                Ok(true) => Step::Done,
                Ok(false) => {
                    let topic = topic.unwrap_or_default();
                    out.count_drop(subscribed, &String::from_utf8_lossy(&topic));
                    Step::Done
                }
                Err(e) => Step::End(WriterEnd::Io(e)),
            }
        }
        Outbound::SubAck(packet, granted, resend) => {
            Step::wait(Slow::SubAck(packet, granted, resend))
        }
        Outbound::Skip => Step::Done,
        Outbound::Close(last) => Step::wait(Slow::Close(last, WriterEnd::RouterDisconnect)),
    }
}

/// Does what waits (see [`Slow`]); `Some` when the writer must end.
async fn finish_slow(
    out: &mut Outgoing,
    link_rx: &mut Option<LinkRx>,
    slow: Slow,
    subscribed: &Subscribed,
) -> Option<WriterEnd> {
    match slow {
        Slow::Copied(copies, packet) => {
            for taken in copies {
                // A service that ended dropped its sender: nothing more to wait for.
                let _ = taken.await;
            }
            // Only acknowledgements wait for copies: encoded as they are.
            out.encode_other(packet).err().map(WriterEnd::Io)
        }
        Slow::SubAck(packet, granted, resend) => {
            if let Err(e) = out.writer.send(packet).await {
                return Some(WriterEnd::Io(e));
            }
            subscribed.report(granted);
            for (kept, qos) in resend {
                if let Err(e) = out.encode_retained(kept, qos) {
                    return Some(WriterEnd::Io(e));
                }
            }
            None
        }
        Slow::Close(last, end) => {
            if let Some(last) = last {
                let _ = out.writer.send(last).await;
            }
            out.writer.shutdown().await;
            Some(end)
        }
        Slow::Wake => {
            let link_rx = link_rx.as_mut()?;
            link_rx.wake().await.err().map(|_| WriterEnd::RouterGone)
        }
    }
}

/// Is `packet` the router's answer to something the reader forwarded (see `answers_owed`)?
fn answers_the_reader(packet: &Packet) -> bool {
    match packet {
        Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..) | Packet::UnsubAck(..) => {
            true
        }
        Packet::SubAck(suback, _) => suback.pkid != RESTORE_PKID,
        _ => false,
    }
}

fn encoded(result: std::io::Result<()>) -> Step {
    match result {
        Ok(()) => Step::Done,
        Err(e) => Step::End(WriterEnd::Io(e)),
    }
}

/// A stall limit that never comes (no limit configured): a year, well within tokio's timer range.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the writer does with one packet from the router.
enum Outbound {
    Write(Packet),
    /// A SUBACK, with the filters (external form) the router granted and the retained messages to send
    /// after it.
    SubAck(Packet, Vec<String>, Vec<(Kept, u8)>),
    Skip,
    /// The router ends the connection: write this (MQTT 5 only) and close.
    Close(Option<Packet>),
}

fn outbound(
    packet: Packet,
    pending: &PendingSubacks,
    subscribed: &Subscribed,
    version: Version,
) -> Outbound {
    match packet {
        Packet::Publish(mut publish, props) => {
            // Subscriptions are authorized when made and clients cannot name internal topics, so whatever
            // the router forwards is visible to this client: no second check here (dropping a QoS 1 publish
            // here would also stall the router's in-flight window for this client).
            let external = match std::str::from_utf8(&publish.topic) {
                Ok(topic) => to_external(topic).to_owned(),
                Err(_) => return Outbound::Skip,
            };
            publish.topic = Bytes::from(external);
            Outbound::Write(Packet::Publish(publish, props))
        }
        Packet::SubAck(suback, _) if suback.pkid == RESTORE_PKID => Outbound::Skip,
        Packet::SubAck(mut suback, props) => {
            let mut pending = lock(pending);
            let Some(forwarded) = pending.remove(&suback.pkid) else {
                return Outbound::Write(Packet::SubAck(suback, props));
            };
            let mut granted = granted_filters(forwarded.filters, &suback.return_codes);
            // Before the SUBACK is written and reported: a delivery made after the report reaches it.
            subscribed.grant(&granted, &forwarded.revoked);
            drop(pending);
            suback.return_codes = splice_codes(&forwarded.answers, suback.return_codes, version);
            granted.extend(forwarded.direct);
            Outbound::SubAck(Packet::SubAck(suback, props), granted, forwarded.resend)
        }
        // Answered by the reader already (see `inbound_unsubscribe`).
        Packet::UnsubAck(..) | Packet::ConnAck(..) => Outbound::Skip,
        Packet::Disconnect(disconnect, props) => Outbound::Close(
            (version == Version::V5).then_some(Packet::Disconnect(disconnect, props)),
        ),
        other => Outbound::Write(other),
    }
}

/// The forwarded filters whose code from the router is a success.
fn granted_filters(forwarded: Vec<String>, router_codes: &[SubscribeReasonCode]) -> Vec<String> {
    forwarded
        .into_iter()
        .zip(router_codes)
        .filter(|(_, code)| {
            matches!(
                code,
                SubscribeReasonCode::QoS0
                    | SubscribeReasonCode::QoS1
                    | SubscribeReasonCode::QoS2
                    | SubscribeReasonCode::Success(_)
            )
        })
        .map(|(filter, _)| filter)
        .collect()
}

/// The SUBACK's codes: the router's for the forwarded filters, in their positions among the denied ones
/// and those granted directly.
pub(super) fn splice_codes(
    answers: &[Answer],
    router_codes: Vec<SubscribeReasonCode>,
    version: Version,
) -> Vec<SubscribeReasonCode> {
    let mut router_codes = router_codes.into_iter();
    answers
        .iter()
        .map(|answer| match answer {
            Answer::Router => router_codes
                .next()
                .unwrap_or(SubscribeReasonCode::Unspecified),
            Answer::Direct(qos) => granted_code(*qos),
            Answer::Denied => denied_code(version),
            Answer::OverQuota => match version {
                Version::V311 => SubscribeReasonCode::Failure,
                Version::V5 => SubscribeReasonCode::QuotaExceeded,
            },
            Answer::Clash => match version {
                Version::V311 => SubscribeReasonCode::Failure,
                Version::V5 => SubscribeReasonCode::ImplementationSpecific,
            },
        })
        .collect()
}

/// The code of a granted filter, as the router writes it for both versions.
fn granted_code(qos: u8) -> SubscribeReasonCode {
    match qos {
        0 => SubscribeReasonCode::QoS0,
        _ => SubscribeReasonCode::QoS1,
    }
}
