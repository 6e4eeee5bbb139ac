//! One client connection: the handshake (`handshake`: CONNECT, authentication, the session and CONNACK),
//! then two loops that splice the socket and the client's router link together, authorizing and rewriting
//! topics on the way.
//!
//! The reader loop (this task) takes packets off the socket, checks each PUBLISH and SUBSCRIBE against the
//! client's [`Principal`], rewrites `$` topics to the router's form and pushes the packet into the link. The
//! writer loop (its own task, `writer`) writes what the router hands back, restoring `$` topics, and writes
//! replies the reader produces itself (SUBACKs sprig answers alone, PUBACKs of denied publishes,
//! UNSUBACKs), and the gateway's direct deliveries (see `direct`): the connection registers its `wire` for
//! them when it is accepted (deliverers write to the socket themselves while the writer is idle), adds
//! filters when granted, removes them on UNSUBSCRIBE and hands its session what it leaves (unacknowledged
//! messages, its router link to park) when it ends. The link is opened when the connection first needs the
//! router and given back when an UNSUBSCRIBE leaves it no routed filter and the router owes it nothing
//! ([`RouterOwed`]).
//!
//! Where rumqttd's router falls short of MQTT, the two loops make up for it: the reader resolves topic
//! aliases, holds the client to the server's Receive Maximum, attaches each routed publish's `Origin` and
//! records subscription options; the writer delivers at the right QoS, applies the options and the message
//! expiry, keeps the client's Maximum Packet Size, Receive Maximum and Topic Alias Maximum, and settles
//! with the router the publishes it does not write at QoS 1 (the reader tells the router, in its order).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, Packet, PingResp, PubAck,
    PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelProperties, Publish,
    QoS, RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use tokio::sync::{mpsc, oneshot};

mod handshake;
mod writer;

#[cfg(test)]
pub(crate) use handshake::MAX_KEEP_ALIVE_S;
use handshake::{accept, connack, ConnectRequest, Refusal};
use writer::{splice_codes, write_loop, Outgoing, Subscribed};

use super::admission::Slot;
use super::codec::{PacketReader, PacketWriter, ReadError, Version};
use super::direct::Resumed;
use super::inflight::{qos_and_pkid, Acked, Inflight};
use super::internal::disconnect_now;
use super::links::LinkName;
use super::options::{ConnectionOptions, SubOptions};
use super::origin::Origin;
use super::presence::{DisconnectReason, PresenceInfo};
use super::quota::PublishQuota;
use super::retained::Kept;
use super::routed::Deliverable;
use super::sessions::TakenOver;
use super::topics::{is_reserved, served_directly, to_internal};
use super::wills::{self, DelayedWills, Will};
use super::wire::{Direct, Wire};
use super::{ReadHalf, Shared, WriteHalf};
use crate::auth::{Principal, VerifiedCertificate};
use tokio::net::tcp::OwnedWriteHalf;

/// A connection a listener accepted, before its CONNECT.
pub(crate) struct Accepted {
    pub(crate) read_half: ReadHalf,
    pub(crate) write_half: WriteHalf,
    /// A plain TCP socket's writing half, which direct deliveries may write to (see `wire`); `None` for
    /// TLS.
    pub(crate) socket: Option<Arc<OwnedWriteHalf>>,
    pub(crate) peer: SocketAddr,
    /// The listener's address.
    pub(crate) listener: SocketAddr,
    /// The client certificate a TLS listener verified, if any.
    pub(crate) certificate: Option<VerifiedCertificate>,
}

/// Serves one accepted connection until it closes. `alive` is held until the end so shutdown can wait
/// for it.
///
/// The task of a connection keeps room for the largest of its waits as long as it lives, and thousands of
/// idle connections add up: the handshake runs boxed (its memory is freed once the client is in), and
/// this is a plain function returning an `async move` block, since an `async fn` keeps its arguments
/// twice (as given, and moved into its body).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn serve(
    shared: Arc<Shared>,
    accepted: Accepted,
    alive: mpsc::Sender<()>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let _alive = alive;
        let handshake = open(shared, accepted);
        // Not `if let`: its scrutinee, the client and all, would stay in the state while the client runs.
        let Some((client, reader, writing)) = Box::pin(handshake).await else {
            return;
        };
        client.run(reader, writing).await;
    }
}

/// Reads the CONNECT and runs the handshake: the client, its socket's reading half and its running writer,
/// once it is in.
async fn open(
    shared: Arc<Shared>,
    accepted: Accepted,
) -> Option<(Client, PacketReader<ReadHalf>, Writing)> {
    let Accepted {
        read_half,
        write_half,
        socket,
        peer,
        listener,
        certificate,
    } = accepted;
    let mut reader = PacketReader::new(read_half, shared.config.max_payload_size);
    let limit = Duration::from_millis(shared.config.connection_timeout_ms.into());
    let first = tokio::time::timeout(limit, async {
        let version = reader.sniff_version().await?;
        Ok::<_, ReadError>((version, reader.read(version, None).await?))
    })
    .await;
    let (version, packet) = match first {
        Ok(Ok(first)) => first,
        Ok(Err(ReadError::UnsupportedLevel(level))) => {
            tracing::info!(%peer, level, "refused a connection: unsupported MQTT protocol level");
            let mut writer = PacketWriter::new(write_half, Version::V311);
            let _ = writer
                .send(connack(ConnectReturnCode::RefusedProtocolVersion))
                .await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, "connection closed before CONNECT: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "no CONNECT within {} ms, closing", limit.as_millis());
            return None;
        }
    };
    let Packet::Connect(connect, props, will, will_props, login) = packet else {
        tracing::info!(%peer, "first packet is not CONNECT, closing");
        return None;
    };
    let stall = Duration::from_millis(shared.config.write_stall_timeout_ms);
    let mut writer = PacketWriter::new(write_half, version).with_stall_limit(stall);
    // From here on the connection counts against `max_connections`, while its login is checked too.
    let Some(slot) = Slot::take(&shared) else {
        let max = shared.config.max_connections;
        tracing::warn!(%peer, "refused a connection: {max} clients connected already");
        let _ = writer
            .send(connack(Refusal::Unavailable.code(version)))
            .await;
        return None;
    };
    let request = ConnectRequest {
        connect,
        session_expiry_s: props.as_ref().and_then(|p| p.session_expiry_interval),
        max_packet_size: props.as_ref().and_then(|p| p.max_packet_size),
        receive_maximum: props.as_ref().and_then(|p| p.receive_maximum),
        topic_alias_max: props.as_ref().and_then(|p| p.topic_alias_max),
        will,
        will_props,
        login,
        peer,
        listener,
        certificate,
        socket,
    };
    let (mut client, writer, link_rx) = accept(&shared, request, writer, &mut reader, slot).await?;
    let writing = client.start_writer(writer, link_rx);
    Some((client, reader, writing))
}

/// An accepted, authenticated client, with its router link once it needs one.
struct Client {
    shared: Arc<Shared>,
    client_id: String,
    principal: Principal,
    version: Version,
    keep_alive: u16,
    /// The receiving end of this connection's direct-delivery queue, until the writer takes it.
    direct: Option<flume::Receiver<Box<Direct>>>,
    /// Its way in for direct deliveries, which the reader tells of each command it sends the writer.
    wire: Arc<Wire>,
    /// QoS 1 publishes written to the client and not yet acknowledged (the writer adds, the reader removes).
    inflight: SharedInflight,
    /// Told by the writer when it settled router publishes the reader should acknowledge to the router.
    settled: Arc<tokio::sync::Notify>,
    /// The options of its routed subscriptions (the reader sets, the writer applies).
    options: SharedOptions,
    /// Its QoS 1 and 2 publishes not yet acknowledged (PUBACK, PUBCOMP written): MQTT 5 clients may have at
    /// most the Receive Maximum sprig's CONNACK gave (`max_inflight_count`); the reader adds, the writer
    /// takes off.
    receiving: Arc<AtomicUsize>,
    /// Told by the reader when the client acknowledged a publish: the writer may send more.
    window: Arc<tokio::sync::Notify>,
    /// The client's Receive Maximum: at most this many QoS 1 publishes are sent to it unacknowledged.
    receive_maximum: u16,
    /// MQTT 5 topic aliases the client set, at most [`TOPIC_ALIAS_MAX`].
    aliases: HashMap<u16, Bytes>,
    /// Its shared subscriptions (`$share/...`), which its session does not keep (see `inbound_unsubscribe`).
    shared_filters: Vec<String>,
    /// The session it resumed (filters and what waited for it), until the writer takes it.
    resumed: Option<Box<Resumed>>,
    will: Option<Box<LastWords>>,
    /// How long the session outlives the connection (`None`: it ends with it); a delayed will waits no longer.
    session_expiry: Option<Duration>,
    /// Its router link: made when the connection first subscribes to a filter the router serves or
    /// publishes where the router must carry it (see `link_tx`), or at once for a resumed session that has
    /// such filters. A device that only speaks to the gateway (the Jobs API, its notifications) never has
    /// one: the router's buffers are most of what a connection would cost.
    link: Option<Box<LinkGuard>>,
    /// What the router still owes the connection (see [`RouterOwed`]): it keeps its link until nothing.
    router_owed: Arc<RouterOwed>,
    /// Its last routed subscription went (an UNSUBSCRIBE): the link is given back once the router owes
    /// nothing (see `give_back_link`). A publish the router carries keeps it.
    unlink_wanted: bool,
    /// Packet ids of the client's QoS 2 publishes on `$` topics awaiting their PUBREL (see
    /// `gateway_publish`); at most the client's receive maximum, as an honest client keeps to it.
    gateway_qos2: HashSet<u16>,
    /// How fast the client may publish (see `quota`).
    quota: PublishQuota,
    presence: PresenceInfo,
    /// Copies of its publishes whose acknowledgement waits for them (see [`SharedCopies`]).
    copies: SharedCopies,
    /// Which of the topics it publishes on the router may deliver (see `needs_router`).
    deliverable: Deliverable,
    /// Counts it in `sprig_connections` while it lives.
    _counted: crate::metrics::OpenConnection,
    /// Fires when a newer connection of the same client id took over, until `run` takes it.
    taken_over: Option<TakenOver>,
    // Dropped last: they free the client's slot and its `Sessions` entry even if this task panics.
    session: SessionGuard,
    _slot: Slot,
}

/// A CONNECT's will: to be published, or not allowed by the topic rules (logged when it would have been).
enum LastWords {
    Will(Will),
    Denied(String),
}

/// The Topic Alias Maximum sprig gives MQTT 5 clients (as mosquitto's default): a client may name up to this
/// many topics by a number in its PUBLISHes.
pub(crate) const TOPIC_ALIAS_MAX: u16 = 10;

/// How long a connection that was taken over goes on reading what its client had sent before: enough for
/// bytes already in the socket (a client sends DISCONNECT and connects again at once), not a wait for more.
const TAKEOVER_DRAIN: Duration = Duration::from_millis(50);

/// Asks the writer to write `last` (if any) and close, and waits a second at most for it to end; returns
/// the router link's receiving half it gives back, if any.
async fn close_writer(
    to_writer: &ToWriterTx,
    last: Option<Box<Packet>>,
    writer_task: &mut tokio::task::JoinHandle<(WriterEnd, Option<LinkRx>)>,
) -> Option<LinkRx> {
    let _ = to_writer.send(ToWriter::Close(last), false).await;
    match tokio::time::timeout(Duration::from_secs(1), &mut *writer_task).await {
        Ok(Ok((_, rx))) => rx,
        Ok(Err(_)) => None,
        Err(_) => {
            writer_task.abort();
            // Aborted, it cannot say it is no longer idle.
            to_writer.wire.close();
            None
        }
    }
}

/// The reader's way to the writer: each command is announced to the connection's wire before it is sent,
/// so that no direct delivery is written ahead of it (see `wire`).
struct ToWriterTx {
    tx: flume::Sender<ToWriter>,
    wire: Arc<Wire>,
}

impl ToWriterTx {
    /// Sends `command`, announced first unless it was already (`announced`); `Err` when the writer is gone.
    async fn send(&self, command: ToWriter, announced: bool) -> Result<(), ()> {
        if !announced {
            self.wire.announce();
        }
        self.tx.send_async(command).await.map_err(|_| ())
    }

    /// Sends `command`, announced, if the writer's queue has room now; else gives it back, unannounced.
    fn try_send(&self, command: ToWriter) -> Result<(), ToWriter> {
        self.wire.announce();
        self.tx.try_send(command).map_err(|e| {
            self.wire.withdraw();
            e.into_inner()
        })
    }
}

/// The connection's writer, running.
struct Writing {
    to_writer: ToWriterTx,
    writer_task: tokio::task::JoinHandle<(WriterEnd, Option<LinkRx>)>,
    pending: PendingSubacks,
}

/// Why a connection's loops stopped.
enum Ended {
    Reader(ReaderEnd),
    Writer(Result<(WriterEnd, Option<LinkRx>), tokio::task::JoinError>),
    Shutdown,
    TakenOver,
}

/// Removes the client's `Sessions` entry and closes its direct-delivery outlet, unless a newer connection
/// of the same client id replaced them.
struct SessionGuard {
    shared: Arc<Shared>,
    client_id: String,
    number: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.outlets.close(&self.client_id, self.number);
        self.shared.sessions.remove(&self.client_id, self.number);
    }
}

/// The client's side of its router connection: tells the router the connection ended when dropped, then
/// releases the link's name.
struct LinkGuard {
    /// `None` once handed on (parked for the session).
    tx: Option<LinkTx>,
    /// False once the router dropped this connection itself: the link's connection id may already belong
    /// to someone else.
    router_has_it: bool,
    /// Dropped after `tx` was closed (fields drop after `drop` ran).
    name: Option<LinkName>,
}

impl LinkGuard {
    fn new(tx: LinkTx, name: LinkName) -> LinkGuard {
        LinkGuard {
            tx: Some(tx),
            router_has_it: true,
            name: Some(name),
        }
    }

    fn tx(&mut self) -> &mut LinkTx {
        self.tx
            .as_mut()
            .expect("the link is handed on only when the connection has ended")
    }

    /// The link and its name, to outlive this connection, if the router still has it.
    fn hand_on(&mut self) -> Option<(LinkTx, LinkName)> {
        let tx = self.tx.take().filter(|_| self.router_has_it)?;
        Some((tx, self.name.take()?))
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.as_mut().filter(|_| self.router_has_it) {
            disconnect_now(tx);
        }
    }
}

/// A connection's [`Inflight`], shared by its reader (acknowledgements) and writer (publishes).
type SharedInflight = Arc<Mutex<Inflight>>;

/// A connection's subscription options, shared by its reader (SUBSCRIBE, UNSUBSCRIBE) and writer.
type SharedOptions = Arc<Mutex<ConnectionOptions>>;

/// What the reader asks the writer to do. Everything is boxed: tokio allocates a queue's first 32 slots
/// with the queue, for every connection, and a `Packet` is 392 bytes.
enum ToWriter {
    Packet(Box<Packet>),
    /// A SUBACK sprig answered itself: write it, then report these filters as granted.
    SubAck(Box<(Packet, Vec<String>)>),
    /// Write this last packet (if any) and close the socket.
    Close(Option<Box<Packet>>),
    /// The router link the reader made just now: deliver what comes on it from here on.
    Link(Box<LinkRx>),
    /// The connection no longer needs its router link: stop reading it, then close it.
    Unlink(Box<LinkGuard>),
}

/// What the router owes a connection, counted by its reader and writer: whether its link may be given
/// back without anything the client waits for being lost.
#[derive(Debug, Default)]
pub(super) struct RouterOwed {
    /// Answers the router owes for what the reader forwarded (PUBACK, PUBREC and PUBCOMP, SUBACK,
    /// UNSUBACK), added by the reader before it forwards, taken off by the writer as they come.
    pub(super) answers: AtomicUsize,
    /// Router publishes the writer holds back for the client's Receive Maximum.
    pub(super) held: AtomicUsize,
}

impl RouterOwed {
    /// The writer got one of the answers; true when it was the last one owed.
    pub(super) fn answered(&self) -> bool {
        let before = self
            .answers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        before == Ok(1)
    }

    fn nothing(&self) -> bool {
        self.answers.load(Ordering::Acquire) == 0 && self.held.load(Ordering::Acquire) == 0
    }
}

/// How many answers the router owes for `packet`, forwarded to it by the reader.
fn answers_owed(packet: &Packet) -> usize {
    match packet {
        Packet::Publish(publish, _) => qos_and_pkid(publish).0.into(),
        Packet::Subscribe(subscribe, _) if subscribe.pkid != super::parking::RESTORE_PKID => 1,
        Packet::Unsubscribe(..) => 1,
        _ => 0,
    }
}

/// Why the writer loop ended.
#[derive(Debug)]
enum WriterEnd {
    Closed,
    RouterGone,
    RouterDisconnect,
    Io(std::io::Error),
}

/// Why the reader loop ended.
#[derive(Debug)]
enum ReaderEnd {
    ClientDisconnect,
    Lost(DisconnectReason, String),
    /// A QoS 2 publish was denied: there is no way to refuse it politely, so the client is disconnected.
    Denied(String),
    /// The client broke a rule that MQTT 5 answers with this DISCONNECT reason code.
    Broke(DisconnectReasonCode, String),
    RouterGone,
}

/// SUBSCRIBEs forwarded to the router and not yet acknowledged, by pkid.
type PendingSubacks = Arc<Mutex<HashMap<u16, PendingSuback>>>;

/// How sprig answers one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Denied,
    /// Beyond `max_subscriptions_per_connection`.
    OverQuota,
    /// The filter the connection holds already in another form, shared or not (see `routed_twice`).
    Clash,
    /// Granted by sprig alone at this QoS: only the gateway sends on it (see [`served_directly`]).
    Direct(u8),
    /// Forwarded: the router's code.
    Router,
}

/// What the writer needs to finish a SUBSCRIBE's SUBACK and report it.
#[derive(Debug)]
struct PendingSuback {
    /// How each of the client's filters is answered, by position.
    answers: Vec<Answer>,
    /// The forwarded filters, in external form and in order.
    filters: Vec<String>,
    /// The filters granted directly (already in the outlet), reported with the router's.
    direct: Vec<String>,
    /// Filters unsubscribed while this SUBACK was pending: not added to the direct outlet when it comes.
    revoked: Vec<String>,
    /// Retained messages to send after the SUBACK, each with its subscription's QoS (see `retained`).
    resend: Vec<(Kept, u8)>,
}

impl Client {
    /// Spawns the connection's writer (see `writer`) on the socket's writing half and the router link's
    /// receiving half, if any. Done before `run`, whose state then keeps neither for as long as it lives.
    fn start_writer(
        &mut self,
        writer: PacketWriter<WriteHalf>,
        link_rx: Option<LinkRx>,
    ) -> Writing {
        let (tx, commands) = flume::bounded(64);
        let to_writer = ToWriterTx {
            tx,
            wire: self.wire.clone(),
        };
        let pending = PendingSubacks::default();
        let subscribed = Subscribed {
            shared: self.shared.clone(),
            client_id: self.client_id.clone(),
            number: self.session.number,
        };
        let direct = self.direct.take().unwrap_or_else(|| flume::bounded(1).1);
        let resumed = self.resumed.take().map(|r| *r).unwrap_or_default();
        let outgoing = Outgoing {
            writer,
            inflight: self.inflight.clone(),
            settled: self.settled.clone(),
            options: self.options.clone(),
            client_id: self.client_id.clone(),
            receiving: self.receiving.clone(),
            router_owed: self.router_owed.clone(),
            too_large: 0,
            window: self.window.clone(),
            receive_maximum: usize::from(self.receive_maximum),
            held: std::collections::VecDeque::new(),
            copies: self.copies.clone(),
            budget: self.shared.config.max_queued_bytes,
            dropped: 0,
            wire: self.wire.clone(),
            commands_taken: 0,
        };
        let writer_task = write_loop(
            outgoing,
            link_rx,
            commands,
            direct,
            pending.clone(),
            subscribed,
            resumed,
        );
        Writing {
            to_writer,
            writer_task: tokio::spawn(writer_task),
            pending,
        }
    }

    /// Runs the connection's two loops until it ends, then leaves its session. (A plain function returning
    /// an `async move` block, as `serve`.)
    #[allow(clippy::manual_async_fn)] // on purpose: see `serve`
    fn run(
        mut self,
        mut reader: PacketReader<ReadHalf>,
        writing: Writing,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let Writing {
                to_writer,
                mut writer_task,
                pending,
            } = writing;
            let mut shutdown = self.shared.shutdown.clone();
            let version = self.version;
            // The router link's receiving half, back from the writer: a persistent session parks it.
            let mut link_rx = None;
            let mut writer_done = false;
            let mut taken_over = self.taken_over.take().expect("run once");
            let ended = {
                let read = self.read_loop(&mut reader, &to_writer, &pending, version);
                tokio::pin!(read);
                tokio::select! {
                    end = &mut read => Ended::Reader(end),
                    joined = &mut writer_task => Ended::Writer(joined),
                    () = super::stopped(&mut shutdown) => Ended::Shutdown,
                    Ok(()) = &mut taken_over => {
                        // What the client sent before it connected again is still this connection's to act on.
                        match tokio::time::timeout(TAKEOVER_DRAIN, &mut read).await {
                            Ok(end) => Ended::Reader(end),
                            Err(_) => Ended::TakenOver,
                        }
                    }
                }
            };
            let (reason, last) = match ended {
                Ended::Reader(end) => self.reader_ended(end, version),
                Ended::Writer(joined) => {
                    writer_done = true;
                    let end = match joined {
                        Ok((end, rx)) => {
                            link_rx = rx;
                            end
                        }
                        Err(e) => {
                            WriterEnd::Io(std::io::Error::other(format!("writer task failed: {e}")))
                        }
                    };
                    self.writer_ended(end)
                }
                Ended::Shutdown => (
                    DisconnectReason::ServerInitiated,
                    v5_disconnect(version, DisconnectReasonCode::ServerShuttingDown),
                ),
                Ended::TakenOver => {
                    tracing::info!(
                        client_id = self.client_id,
                        "session taken over by a newer connection"
                    );
                    (
                        DisconnectReason::DuplicateClientId,
                        v5_disconnect(version, DisconnectReasonCode::SessionTakenOver),
                    )
                }
            };
            // Boxed now: a packet kept in the state until the end would cost every connection its room.
            let last = last.map(Box::new);
            if !writer_done {
                link_rx = Box::pin(close_writer(&to_writer, last, &mut writer_task)).await;
            }
            Box::pin(self.finish(reason, link_rx)).await;
        }
    }

    fn reader_ended(
        &mut self,
        end: ReaderEnd,
        version: Version,
    ) -> (DisconnectReason, Option<Packet>) {
        match end {
            ReaderEnd::ClientDisconnect => (DisconnectReason::ClientInitiated, None),
            ReaderEnd::Lost(reason, detail) => {
                tracing::info!(client_id = self.client_id, "connection lost: {detail}");
                self.publish_will();
                let code = match reason {
                    DisconnectReason::KeepAliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
                    DisconnectReason::ClientError => DisconnectReasonCode::ProtocolError,
                    _ => DisconnectReasonCode::UnspecifiedError,
                };
                (reason, v5_disconnect(version, code))
            }
            ReaderEnd::Broke(code, detail) => {
                tracing::info!(client_id = self.client_id, ?code, "disconnecting: {detail}");
                self.publish_will();
                (DisconnectReason::ClientError, v5_disconnect(version, code))
            }
            ReaderEnd::Denied(topic) => {
                tracing::warn!(
                    client_id = self.client_id,
                    topic,
                    "denied QoS 2 publish, disconnecting"
                );
                (
                    DisconnectReason::AuthorizationError,
                    v5_disconnect(version, DisconnectReasonCode::NotAuthorized),
                )
            }
            ReaderEnd::RouterGone => {
                self.router_dropped_link();
                (self.router_gone_reason(), None)
            }
        }
    }

    fn writer_ended(&mut self, end: WriterEnd) -> (DisconnectReason, Option<Packet>) {
        match end {
            WriterEnd::Closed => (DisconnectReason::ServerInitiated, None),
            WriterEnd::RouterGone | WriterEnd::RouterDisconnect => {
                self.router_dropped_link();
                (self.router_gone_reason(), None)
            }
            WriterEnd::Io(e) => {
                tracing::info!(client_id = self.client_id, "connection lost: {e}");
                self.publish_will();
                (DisconnectReason::ConnectionLost, None)
            }
        }
    }

    /// The router ended this connection's link itself: its connection id may be someone else's now.
    fn router_dropped_link(&mut self) {
        if let Some(link) = &mut self.link {
            link.router_has_it = false;
        }
    }

    fn router_gone_reason(&self) -> DisconnectReason {
        if self
            .shared
            .sessions
            .superseded(&self.client_id, self.session.number)
        {
            DisconnectReason::DuplicateClientId
        } else {
            DisconnectReason::ServerInitiated
        }
    }

    /// A new Session Expiry Interval from the client's DISCONNECT, capped like the CONNECT's.
    fn change_session_expiry(&self, expiry_s: u32) {
        let granted_s = expiry_s.min(self.shared.config.persistent_session_expiry_s);
        let expiry = (granted_s > 0).then(|| Duration::from_secs(granted_s.into()));
        let outlets = &self.shared.outlets;
        if !outlets.change_expiry(&self.client_id, self.session.number, expiry) {
            tracing::info!(
                client_id = self.client_id,
                expiry_s,
                "DISCONNECT asks to keep a session that was to end with its connection: ignored"
            );
        }
    }

    /// Publishes the client's last will, if it may publish there (see `wills`); only on an abnormal end.
    /// MQTT 5: after its Will Delay Interval, or when the session ends if that comes first.
    fn publish_will(&mut self) {
        let will = match self.will.take().map(|w| *w) {
            None => return,
            Some(LastWords::Denied(topic)) => {
                tracing::warn!(
                    client_id = self.client_id,
                    topic,
                    "last will not published: the topic rules do not let this client publish there"
                );
                return;
            }
            Some(LastWords::Will(will)) => will,
        };
        let delay = will.delay.min(self.session_expiry.unwrap_or_default());
        if delay.is_zero() {
            match &mut self.link {
                Some(link) => wills::publish(&self.shared, will, link.tx()),
                None => wills::publish_without_link(&self.shared, &self.client_id, will),
            }
            return;
        }
        tracing::debug!(client_id = self.client_id, ?delay, "last will held back");
        DelayedWills::hold(&self.shared, &self.client_id, will, delay);
    }

    async fn finish(mut self, reason: DisconnectReason, link_rx: Option<LinkRx>) {
        tracing::info!(client_id = self.client_id, reason = ?reason, "client disconnected");
        crate::metrics::get().disconnected(reason.as_aws());
        self.leave_session(link_rx);
        let (topic, body) = self.presence.event(Some(reason));
        let shared = self.shared.clone();
        // Ends the router connection and frees the session before announcing it.
        drop(self);
        shared.publish_presence(&topic, body);
    }

    /// Hands the session what this connection leaves behind: the QoS 1 messages the client never
    /// acknowledged (kept by a persistent session, or given to the connection that took it over) and, for a
    /// persistent session, its router link, parked until the client is back.
    fn leave_session(&mut self, link_rx: Option<LinkRx>) {
        let (router_pkids, unacknowledged) = lock(&self.inflight).take();
        let outlets = &self.shared.outlets;
        let Some(filters) = outlets.leave(&self.client_id, self.session.number, unacknowledged)
        else {
            return;
        };
        // Only a session with filters the router serves has anything to wait for there.
        if filters.iter().all(|f| served_directly(f)) {
            return;
        }
        let owner = self.principal.identity();
        let Some(rx) = link_rx else {
            return;
        };
        let Some((mut tx, name)) = self.link.as_mut().and_then(|l| l.hand_on()) else {
            return;
        };
        // The session holds those messages now; the router wants its acknowledgements in order.
        for pkid in router_pkids {
            let ack = PubAck {
                pkid,
                reason: PubAckReason::Success,
            };
            send_now(&mut tx, Packet::PubAck(ack, None));
        }
        let most = self.shared.config.max_connections;
        let parked = &self.shared.parked;
        parked.park(&self.shared, &self.client_id, owner, (tx, rx, name), most);
    }

    /// Socket -> router, with authorization and topic rewriting.
    async fn read_loop(
        &mut self,
        reader: &mut PacketReader<ReadHalf>,
        to_writer: &ToWriterTx,
        pending: &PendingSubacks,
        version: Version,
    ) -> ReaderEnd {
        // MQTT: a client silent for 1.5 x keep-alive is gone; keep-alive 0 means no limit.
        let idle =
            (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500));
        let settled = self.settled.clone();
        let mut last_packet = tokio::time::Instant::now();
        loop {
            // Counted from the last packet, not from the last wake-up below.
            let left = idle.map(|idle| {
                (last_packet + idle)
                    .saturating_duration_since(last_packet.max(tokio::time::Instant::now()))
            });
            let read = tokio::select! {
                read = reader.read(version, left) => read,
                // The writer settled router publishes (see `Inflight::release`): tell the router.
                () = settled.notified() => {
                    if self.release_router_acks().is_err() {
                        return ReaderEnd::RouterGone;
                    }
                    self.give_back_link(to_writer);
                    continue;
                }
            };
            let packet = match read {
                Ok(packet) => packet,
                Err(e) => return lost(e),
            };
            last_packet = tokio::time::Instant::now();
            // A client's acknowledgement (of a notification at QoS 1, the most frequent) is taken here;
            // anything else is handled apart, boxed: handling a packet waits on several things, and the
            // task of an idle connection would otherwise keep room for all of them as long as it lives.
            let end = match packet {
                Packet::PubAck(ack, _) => match self.acknowledged(ack.pkid) {
                    // The router is told in its own order (see `Inflight::release`).
                    Acked::Router => self
                        .release_router_acks()
                        .err()
                        .map(|()| ReaderEnd::RouterGone),
                    Acked::Own => None,
                    // Nothing in flight has that id (a duplicate, or made up): not passed on, as the router
                    // would take it for its oldest publish's ack, log an error and drop the connection.
                    Acked::Unknown => {
                        let pkid = ack.pkid;
                        tracing::debug!(
                            client_id = self.client_id,
                            pkid,
                            "PUBACK for nothing in flight: ignored"
                        );
                        None
                    }
                },
                packet => Box::pin(self.on_packet(packet, to_writer, pending, version)).await,
            };
            if let Some(end) = end {
                return end;
            }
            self.give_back_link(to_writer);
        }
    }

    /// Handles one packet the client sent; `Some` when the connection must end.
    async fn on_packet(
        &mut self,
        packet: Packet,
        to_writer: &ToWriterTx,
        pending: &PendingSubacks,
        version: Version,
    ) -> Option<ReaderEnd> {
        let announced = matches!(packet, Packet::Subscribe(..));
        let forward = match packet {
            Packet::Publish(publish, props) => {
                let size = publish.topic.len() + publish.payload.len();
                let metrics = crate::metrics::get();
                metrics.messages_received.inc();
                metrics.bytes_received.inc_by(size as u64);
                self.quota.admit(&self.client_id, size).await;
                self.inbound_publish(publish, props, version)
            }
            Packet::Subscribe(subscribe, props) => {
                // Before its filters are granted: nothing for them is written ahead of the SUBACK.
                self.wire.announce();
                self.inbound_subscribe(subscribe, props, version, pending)
            }
            Packet::Unsubscribe(unsubscribe, props) => {
                self.inbound_unsubscribe(unsubscribe, props, pending)
            }
            Packet::Disconnect(_, props) => {
                // MQTT 5: the DISCONNECT may shorten or lengthen the session's expiry (not start one).
                if let Some(expiry_s) = props.and_then(|p| p.session_expiry_interval) {
                    self.change_session_expiry(expiry_s);
                }
                return Some(ReaderEnd::ClientDisconnect);
            }
            Packet::PubRel(pubrel, props) => self.inbound_pubrel(pubrel, props),
            // Answered here, link or not (the router would only answer it too).
            Packet::PingReq(_) => Inbound::reply(Packet::PingResp(PingResp)),
            p @ (Packet::PubRec(..) | Packet::PubComp(..)) => Inbound::forward(p),
            other => {
                let detail = format!("unexpected packet {other:?}");
                return Some(ReaderEnd::Lost(DisconnectReason::ClientError, detail));
            }
        };
        let Inbound {
            to_router,
            to_taps,
            copy,
            reply,
            granted,
            denied,
            violation,
            then,
        } = forward;
        if let Some((code, detail)) = violation {
            return Some(ReaderEnd::Broke(code, detail));
        }
        if let Some(topic) = denied {
            return Some(ReaderEnd::Denied(topic));
        }
        if let Some((topic, payload)) = to_taps {
            // Before the acknowledgement: a client that got its PUBACK may count on the request
            // having been taken.
            self.shared.taps.dispatch(&topic, payload).await;
        }
        if let Some(Copy {
            topic,
            payload,
            qos,
            pkid,
            retain,
        }) = copy
        {
            // Handed over before the router has the publish; the router's acknowledgement waits in
            // the writer until the copy (the uplink's spool) is taken, so a client that got its
            // PUBACK may count on it. QoS 0 promises nothing to wait for.
            let taken = self.shared.taps.copy(&topic, &payload, qos, retain).await;
            if qos > 0 && !taken.is_empty() {
                lock(&self.copies).insert(pkid, taken);
            }
        }
        if announced && reply.is_none() {
            self.wire.withdraw();
        }
        // After the copy's record: an acknowledgement sprig makes itself waits for it too.
        if let Some(reply) = reply {
            let reply = match granted {
                Some(granted) => ToWriter::SubAck(Box::new((reply, granted))),
                None => ToWriter::Packet(Box::new(reply)),
            };
            if to_writer.send(reply, announced).await.is_err() {
                return Some(ReaderEnd::Lost(
                    DisconnectReason::ConnectionLost,
                    "writer gone".into(),
                ));
            }
        }
        for packet in to_router.into_iter().chain(then) {
            if let Err(end) = self.open_link_for(&packet, to_writer).await {
                return Some(end);
            }
            // Without a link, nothing of the router's to answer or undo (see `opens_link`).
            let Some(link) = self.link.as_mut() else {
                continue;
            };
            // Counted first: the writer takes each answer off as it comes.
            let owed = answers_owed(&packet);
            self.router_owed.answers.fetch_add(owed, Ordering::AcqRel);
            // A publish the router carries: the link is in use.
            self.unlink_wanted &= !matches!(packet, Packet::Publish(..));
            // Pushed in place, as the router's acknowledgements are (`LinkTx::send` never waits).
            if !super::internal::try_push_now(link.tx(), packet) {
                return Some(ReaderEnd::RouterGone);
            }
        }
        None
    }

    /// Does the session hold a filter the router serves (its own record: a resumed session's routed
    /// filters have no options until subscribed again)?
    fn holds_routed_filters(&self) -> bool {
        let filters = self.shared.outlets.filters(&self.client_id);
        !self.shared_filters.is_empty() || filters.iter().any(|f| !served_directly(f))
    }

    /// Gives the router link back if the connection no longer needs it: its last routed subscription went
    /// and the router owes it nothing (no answer, no publish held or unacknowledged). The writer stops
    /// reading the link, then closes it (see [`ToWriter::Unlink`]); a later SUBSCRIBE or publish the
    /// router must carry opens a new one. Never waits: with the writer's queue full, it is tried again at
    /// the next chance.
    fn give_back_link(&mut self, to_writer: &ToWriterTx) {
        if !self.unlink_wanted
            || self.link.is_none()
            || !self.router_owed.nothing()
            || self.holds_routed_filters()
            || lock(&self.inflight).holds_router()
        {
            return;
        }
        let Some(link) = self.link.take() else {
            return;
        };
        match to_writer.try_send(ToWriter::Unlink(link)) {
            Ok(()) => {
                self.unlink_wanted = false;
                tracing::debug!(client_id = self.client_id, "router link given back");
            }
            // The writer's queue is full: kept, and tried again at the next chance.
            Err(command) => {
                if let ToWriter::Unlink(link) = command {
                    self.link = Some(link);
                }
            }
        }
    }

    fn acknowledged(&self, pkid: u16) -> Acked {
        let acked = lock(&self.inflight).acknowledged(pkid);
        if acked != Acked::Unknown {
            self.window.notify_one();
        }
        acked
    }

    /// Acknowledges to the router, in its order, the publishes of its that are done (see
    /// [`Inflight::release`]).
    fn release_router_acks(&mut self) -> Result<(), ()> {
        let released = lock(&self.inflight).release();
        let Some(link) = &mut self.link else {
            return Ok(());
        };
        for pkid in released {
            let reason = PubAckReason::Success;
            let ack = Packet::PubAck(PubAck { pkid, reason }, None);
            if !super::internal::try_push_now(link.tx(), ack) {
                return Err(());
            }
        }
        Ok(())
    }

    /// Opens the router link if the connection has none and `packet` needs one (the writer is handed its
    /// receiving half first).
    async fn open_link_for(
        &mut self,
        packet: &Packet,
        to_writer: &ToWriterTx,
    ) -> Result<(), ReaderEnd> {
        if self.link.is_none() && opens_link(packet) {
            let (link, rx) = handshake::open_link(&self.shared).await.map_err(|e| {
                tracing::warn!(client_id = self.client_id, "no router link: {e}");
                ReaderEnd::RouterGone
            })?;
            if to_writer
                .send(ToWriter::Link(Box::new(rx)), false)
                .await
                .is_err()
            {
                return Err(ReaderEnd::Lost(
                    DisconnectReason::ConnectionLost,
                    "writer gone".into(),
                ));
            }
            tracing::debug!(client_id = self.client_id, "router link opened");
            self.link = Some(Box::new(link));
        }
        Ok(())
    }

    /// The built-in topic rules and the configured ones, for this client (see [`crate::auth::Authenticator`]).
    fn may_publish(&self, topic: &str) -> bool {
        self.shared
            .auth
            .may_publish(&self.principal, &self.client_id, topic)
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        self.shared
            .auth
            .may_subscribe(&self.principal, &self.client_id, filter)
    }

    fn inbound_publish(
        &mut self,
        mut publish: Publish,
        props: Option<rumqttd::protocol::PublishProperties>,
        version: Version,
    ) -> Inbound {
        if let Some(alias) = props.as_ref().and_then(|p| p.topic_alias) {
            if let Err((code, detail)) = self.resolve_alias(alias, &mut publish) {
                return Inbound::broke(code, detail);
            }
        }
        if qos_and_pkid(&publish).0 > 0 && version == Version::V5 {
            let most = self.shared.config.max_inflight_count;
            if self.receiving.fetch_add(1, Ordering::Relaxed) >= most {
                let detail = format!(
                    "more than its Receive Maximum ({most}) QoS 1 and 2 publishes unacknowledged"
                );
                return Inbound::broke(DisconnectReasonCode::ReceiveMaximumExceeded, detail);
            }
        }
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        if !crate::topic_filter::is_topic_name(&topic) {
            // MQTT: a PUBLISH topic has no wildcards (nor NUL); a client that sends one is closed.
            return Inbound::violation(format!("PUBLISH to `{topic}`, which is not a topic name"));
        }
        if !is_reserved(&topic) && self.may_publish(&topic) && served_directly(&topic) {
            return self.gateway_publish(topic, publish);
        }
        if !is_reserved(&topic) && self.may_publish(&topic) {
            let copy = self.shared.taps.copies(&topic).then(|| {
                let (qos, pkid) = qos_and_pkid(&publish);
                Copy {
                    payload: publish.payload.clone(),
                    qos,
                    pkid,
                    retain: publish.retain,
                    topic: topic.clone(),
                }
            });
            let internal = to_internal(&topic);
            if !self.needs_router(&publish, &internal) {
                return self.publish_past_router(&publish, copy);
            }
            let (qos, _) = qos_and_pkid(&publish);
            let origin = Origin::now(qos, publish.retain, &self.client_id);
            publish.topic = Bytes::from(internal);
            // The alias is the client's (resolved above), not passed on.
            let props = origin.attach(props).map(|mut p| {
                p.topic_alias = None;
                p
            });
            let retained = &self.shared.retained;
            retained.published(&topic, &publish.payload, publish.retain, &props);
            return Inbound {
                copy,
                ..Inbound::forward(Packet::Publish(publish, props))
            };
        }
        tracing::warn!(client_id = self.client_id, topic, "publish denied");
        match qos_and_pkid(&publish) {
            (1, pkid) => {
                let reason = match version {
                    Version::V311 => PubAckReason::Success,
                    Version::V5 => PubAckReason::NotAuthorized,
                };
                Inbound::reply(Packet::PubAck(PubAck { pkid, reason }, None))
            }
            (2, _) => Inbound::deny(topic),
            _ => Inbound::default(),
        }
    }

    /// Must the router have this publish on `topic` (internal form)? Not when none of its filters
    /// matches (see [`RoutedFilters::may_deliver`](super::routed::RoutedFilters::may_deliver)), unless
    /// it is retained (the router keeps it for later subscribers) or QoS 2 (the router runs its exchange).
    fn needs_router(&mut self, publish: &Publish, topic: &str) -> bool {
        publish.retain
            || qos_and_pkid(publish).0 == 2
            || self.deliverable.check(&self.shared.routed, topic)
    }

    /// A publish no router filter matches: only its copy (the uplink's) goes anywhere; sprig acknowledges
    /// it itself, once the copy is taken (the writer holds the PUBACK as it holds the router's).
    fn publish_past_router(&mut self, publish: &Publish, copy: Option<Copy>) -> Inbound {
        Inbound {
            copy,
            reply: self.acknowledge_itself(publish),
            ..Inbound::default()
        }
    }

    /// sprig's own acknowledgement of a publish the router does not get: PUBACK for QoS 1; PUBREC for
    /// QoS 2, and PUBCOMP when its PUBREL comes (`inbound_pubrel`); nothing for QoS 0.
    fn acknowledge_itself(&mut self, publish: &Publish) -> Option<Packet> {
        match qos_and_pkid(publish) {
            (1, pkid) => {
                let reason = PubAckReason::Success;
                Some(Packet::PubAck(PubAck { pkid, reason }, None))
            }
            (2, pkid) => {
                self.gateway_qos2.insert(pkid);
                let reason = PubRecReason::Success;
                Some(Packet::PubRec(PubRec { pkid, reason }, None))
            }
            _ => None,
        }
    }

    /// MQTT 5 topic aliases (§3.3.2.3.4): a PUBLISH with a topic sets `alias` to it, one without uses it.
    /// An alias of 0 or above [`TOPIC_ALIAS_MAX`] is answered DISCONNECT 0x94, one never set 0x82.
    fn resolve_alias(
        &mut self,
        alias: u16,
        publish: &mut Publish,
    ) -> Result<(), (DisconnectReasonCode, String)> {
        if alias == 0 || alias > TOPIC_ALIAS_MAX {
            let detail = format!("topic alias {alias}, not within 1 to {TOPIC_ALIAS_MAX}");
            return Err((DisconnectReasonCode::TopicAliasInvalid, detail));
        }
        if !publish.topic.is_empty() {
            self.aliases.insert(alias, publish.topic.clone());
            return Ok(());
        }
        let topic = self.aliases.get(&alias).ok_or_else(|| {
            let detail = format!("PUBLISH with topic alias {alias}, which it never set");
            (DisconnectReasonCode::ProtocolError, detail)
        })?;
        publish.topic = topic.clone();
        Ok(())
    }

    /// A publish on a `$` topic, which is for the gateway's services: handed to their taps, never to the
    /// router, nor back to the publisher (the only client that could subscribe there; the README's choice).
    /// sprig acknowledges it itself: PUBACK for QoS 1; PUBREC for QoS 2, PUBCOMP when its PUBREL comes.
    fn gateway_publish(&mut self, topic: String, publish: Publish) -> Inbound {
        Inbound {
            reply: self.acknowledge_itself(&publish),
            to_taps: Some((topic, publish.payload)),
            ..Inbound::default()
        }
    }

    /// A PUBREL: sprig completes the QoS 2 exchanges of `$` publishes itself, the router the others.
    fn inbound_pubrel(&mut self, pubrel: PubRel, props: Option<PubRelProperties>) -> Inbound {
        if self.gateway_qos2.remove(&pubrel.pkid) {
            let pkid = pubrel.pkid;
            let reason = PubCompReason::Success;
            return Inbound::reply(Packet::PubComp(PubComp { pkid, reason }, None));
        }
        if self.link.is_none() {
            // No QoS 2 publish of its went to the router: there is no exchange to complete.
            let pkid = pubrel.pkid;
            let reason = PubCompReason::PacketIdentifierNotFound;
            return Inbound::reply(Packet::PubComp(PubComp { pkid, reason }, None));
        }
        Inbound::forward(Packet::PubRel(pubrel, props))
    }

    fn inbound_subscribe(
        &mut self,
        subscribe: Subscribe,
        props: Option<rumqttd::protocol::SubscribeProperties>,
        version: Version,
        pending: &PendingSubacks,
    ) -> Inbound {
        let pkid = subscribe.pkid;
        let mut answers = Vec::with_capacity(subscribe.filters.len());
        let (mut forwarded, mut external, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        // What the connection holds or is being granted: new filters beyond the cap are refused.
        let mut held = self.shared.outlets.filters(&self.client_id);
        held.extend(
            lock(pending)
                .values()
                .flat_map(|p| p.filters.iter().cloned()),
        );
        let most = self.shared.config.max_subscriptions_per_connection;
        // Retained messages the router will not send again, for filters held already (see `retained`).
        let mut resend = Vec::new();
        for mut filter in subscribe.filters {
            if !self.may_subscribe_checked(&filter.path) {
                answers.push(Answer::Denied);
                continue;
            }
            let held_already = held.contains(&filter.path);
            if !held_already {
                if held.len() >= most {
                    tracing::warn!(
                        client_id = self.client_id,
                        filter = filter.path,
                        most,
                        "subscribe refused: too many subscriptions"
                    );
                    answers.push(Answer::OverQuota);
                    continue;
                }
                held.push(filter.path.clone());
            }
            // At most QoS 1, as AWS IoT Core grants: what the client has not acknowledged is kept for its
            // session, which QoS 2's exchange would not allow.
            if filter.qos == QoS::ExactlyOnce {
                filter.qos = QoS::AtLeastOnce;
            }
            if served_directly(&filter.path) {
                answers.push(Answer::Direct(filter.qos as u8));
                direct.push(filter.path);
                continue;
            }
            if let Some(other) = self.routed_twice(&filter.path, &held, &external) {
                tracing::warn!(
                    client_id = self.client_id,
                    filter = filter.path,
                    other,
                    "subscribe refused: rumqttd 0.20 cannot hold one filter twice for a connection (shared \
                     and not, or in two groups)"
                );
                answers.push(Answer::Clash);
                continue;
            }
            let internal = to_internal(&filter.path);
            if !self.shared.routed.admit(&internal) {
                let (held, most) = (self.shared.routed.count(), self.shared.routed.most());
                tracing::warn!(
                    client_id = self.client_id,
                    filter = filter.path,
                    held,
                    most,
                    "subscribe refused: the router holds broker.max_router_filters filters, and never \
                     frees one (a restart does)"
                );
                answers.push(Answer::OverQuota);
                continue;
            }
            answers.push(Answer::Router);
            // A shared subscription's options apply to what its filter matches.
            let shared_filter = (filter.path.strip_prefix("$share/"))
                .and_then(|rest| rest.split_once('/'))
                .map(|(_, inner)| inner.to_owned());
            let matched = shared_filter.as_deref().unwrap_or(&filter.path);
            if shared_filter.is_some() && !self.shared_filters.contains(&filter.path) {
                self.shared_filters.push(filter.path.clone());
            }
            lock(&self.options).set(matched, SubOptions::of(&filter));
            if shared_filter.is_none() {
                let (outlets, number) = (&self.shared.outlets, self.session.number);
                outlets.set_options(&self.client_id, number, matched, SubOptions::of(&filter));
            }
            // MQTT 5 §3.8.4: no retained messages for a shared subscription.
            if held_already
                && shared_filter.is_none()
                && filter.retain_forward_rule == RetainForwardRule::OnEverySubscribe
            {
                let qos = filter.qos as u8;
                let kept = self.shared.retained.matching(&filter.path);
                resend.extend(kept.into_iter().map(|kept| (kept, qos)));
            }
            external.push(std::mem::replace(&mut filter.path, internal));
            forwarded.push(filter);
        }
        // Granted at once, before the client's next packet is read: a request it publishes right after its
        // SUBSCRIBE is answered on a subscription that is already there.
        let outlets = &self.shared.outlets;
        outlets.subscribe(&self.client_id, self.session.number, &direct);
        if forwarded.is_empty() {
            let codes = splice_codes(&answers, Vec::new(), version);
            let suback = Packet::SubAck(
                SubAck {
                    pkid,
                    return_codes: codes,
                },
                None,
            );
            return Inbound::suback(suback, direct);
        }
        let suback = PendingSuback {
            answers,
            filters: external,
            direct,
            revoked: Vec::new(),
            resend,
        };
        lock(pending).insert(pkid, suback);
        Inbound::forward(Packet::Subscribe(
            Subscribe {
                pkid,
                filters: forwarded,
            },
            props,
        ))
    }

    /// Another of the connection's routed subscriptions (held, or earlier in this SUBSCRIBE) on the same
    /// filter as `path`, one shared and not, or shared in another group: rumqttd 0.20 keeps one log per
    /// filter and a link may read it only once (`router/routing.rs` asserts so, and panics in a debug
    /// build), so such a second subscription is refused.
    fn routed_twice<'a>(
        &'a self,
        path: &str,
        held: &'a [String],
        forwarded: &'a [String],
    ) -> Option<&'a str> {
        fn filter_of(path: &str) -> &str {
            (path.strip_prefix("$share/"))
                .and_then(|rest| rest.split_once('/'))
                .map_or(path, |(_, inner)| inner)
        }
        let wanted = filter_of(path);
        (held.iter().chain(&self.shared_filters).chain(forwarded))
            .find(|other| {
                other.as_str() != path && !served_directly(other) && filter_of(other) == wanted
            })
            .map(String::as_str)
    }

    /// May the client subscribe to `filter` (well-formed, not internal, allowed by the rules)? Logs why not.
    fn may_subscribe_checked(&self, filter: &str) -> bool {
        if let Err(e) = crate::topic_filter::check_filter(filter) {
            tracing::warn!(client_id = self.client_id, filter, "invalid filter: {e}");
            return false;
        }
        if is_reserved(filter) || !self.may_subscribe(filter) {
            tracing::warn!(client_id = self.client_id, filter, "subscribe denied");
            return false;
        }
        true
    }

    /// The router answers UNSUBSCRIBE only for filters that were subscribed, so sprig answers every one
    /// itself and drops the router's UNSUBACKs. Direct delivery on those filters stops right here, before
    /// the UNSUBACK is written, including for a SUBSCRIBE of them still waiting for its SUBACK.
    fn inbound_unsubscribe(
        &mut self,
        unsubscribe: Unsubscribe,
        props: Option<rumqttd::protocol::UnsubscribeProperties>,
        pending: &PendingSubacks,
    ) -> Inbound {
        let pkid = unsubscribe.pkid;
        let reasons = vec![UnsubAckReason::Success; unsubscribe.filters.len()];
        let reply = Packet::UnsubAck(UnsubAck { pkid, reasons }, None);
        let external: Vec<String> = unsubscribe
            .filters
            .into_iter()
            .filter(|f| !is_reserved(f))
            .collect();
        {
            // Under the lock the writer holds while it adds a SUBACK's filters: no interleaving.
            let mut pending = lock(pending);
            for waiting in pending.values_mut() {
                waiting.revoked.extend(external.iter().cloned());
            }
            let outlets = &self.shared.outlets;
            outlets.unsubscribe(&self.client_id, self.session.number, &external);
        }
        let mut options = lock(&self.options);
        for filter in &external {
            options.remove(filter);
        }
        drop(options);
        let filters: Vec<String> = external
            .iter()
            .filter(|f| !served_directly(f))
            .map(|f| to_internal(f))
            .collect();
        if filters.is_empty() {
            return Inbound::reply(reply);
        }
        // rumqttd 0.20 takes the link out of every shared group when it unsubscribes from one
        // (`router/routing.rs`): the shared subscriptions it keeps are given again, which puts it back in
        // their groups and changes nothing else (the router holds them already).
        let rejoin = external.iter().any(|f| f.starts_with("$share/")).then(|| {
            let filters: Vec<Filter> = (self.shared_filters.iter())
                .filter(|f| !external.contains(f))
                .map(|f| super::parking::restored(f))
                .collect();
            let pkid = super::parking::RESTORE_PKID;
            Packet::Subscribe(Subscribe { pkid, filters }, None)
        });
        self.shared_filters.retain(|f| !external.contains(f));
        // Its last routed subscription: the link goes once the router owes nothing.
        self.unlink_wanted = !self.holds_routed_filters();
        Inbound {
            then: rejoin.filter(|p| matches!(p, Packet::Subscribe(s, _) if !s.filters.is_empty())),
            ..Inbound::both(
                Packet::Unsubscribe(Unsubscribe { pkid, filters }, props),
                reply,
            )
        }
    }
}

/// A routed publish to be copied to the services that asked (see `taps`), in the client's form.
struct Copy {
    topic: String,
    payload: Bytes,
    qos: u8,
    pkid: u16,
    retain: bool,
}

/// The copies (see `taps`) of the client's QoS 1 and 2 publishes not yet confirmed, by packet id: the
/// writer holds each one's PUBACK (PUBREC) until its copy is taken. The reader adds, the writer removes.
pub(super) type SharedCopies = Arc<Mutex<HashMap<u16, Vec<oneshot::Receiver<()>>>>>;

/// What the reader does with one inbound packet: push it to the router, answer the client, or both.
#[derive(Default)]
struct Inbound {
    to_router: Option<Packet>,
    /// A client's publish for the gateway's services (see `taps`).
    to_taps: Option<(String, Bytes)>,
    /// A routed publish that a service wants a copy of first (see `taps`).
    copy: Option<Copy>,
    reply: Option<Packet>,
    /// The reply is a SUBACK granting these filters: reported once it is written.
    granted: Option<Vec<String>>,
    /// A QoS 2 publish to this topic was denied.
    denied: Option<String>,
    /// Pushed to the router after `to_router`.
    then: Option<Packet>,
    /// The client broke the protocol: it is closed, with this DISCONNECT reason code (MQTT 5).
    violation: Option<(DisconnectReasonCode, String)>,
}

impl Inbound {
    fn forward(packet: Packet) -> Inbound {
        Inbound {
            to_router: Some(packet),
            ..Inbound::default()
        }
    }

    fn reply(packet: Packet) -> Inbound {
        Inbound {
            reply: Some(packet),
            ..Inbound::default()
        }
    }

    fn both(packet: Packet, reply: Packet) -> Inbound {
        Inbound {
            to_router: Some(packet),
            reply: Some(reply),
            ..Inbound::default()
        }
    }

    fn suback(packet: Packet, granted: Vec<String>) -> Inbound {
        Inbound {
            reply: Some(packet),
            granted: Some(granted),
            ..Inbound::default()
        }
    }

    fn violation(detail: String) -> Inbound {
        Inbound::broke(DisconnectReasonCode::ProtocolError, detail)
    }

    fn broke(code: DisconnectReasonCode, detail: String) -> Inbound {
        Inbound {
            violation: Some((code, detail)),
            ..Inbound::default()
        }
    }

    fn deny(topic: String) -> Inbound {
        Inbound {
            denied: Some(topic),
            ..Inbound::default()
        }
    }
}

fn lost(e: ReadError) -> ReaderEnd {
    let reason = match e {
        ReadError::KeepAlive => DisconnectReason::KeepAliveTimeout,
        ReadError::Protocol(_) | ReadError::Violation(_) | ReadError::UnsupportedLevel(_) => {
            DisconnectReason::ClientError
        }
        ReadError::Closed | ReadError::Io(_) => DisconnectReason::ConnectionLost,
    };
    ReaderEnd::Lost(reason, e.to_string())
}

fn denied_code(version: Version) -> SubscribeReasonCode {
    match version {
        Version::V311 => SubscribeReasonCode::Failure,
        Version::V5 => SubscribeReasonCode::NotAuthorized,
    }
}

fn v5_disconnect(version: Version, reason_code: DisconnectReasonCode) -> Option<Packet> {
    (version == Version::V5).then(|| Packet::Disconnect(Disconnect { reason_code }, None))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Does `packet` warrant a router link of its own when the connection has none? A publish or a SUBSCRIBE
/// the reader forwards does (the router must carry it); anything else forwarded (an UNSUBSCRIBE, a
/// shared group rejoined, acknowledgements) is about what only a link could hold, so without one there is
/// nothing to tell the router.
fn opens_link(packet: &Packet) -> bool {
    match packet {
        Packet::Publish(..) => true,
        Packet::Subscribe(subscribe, _) => subscribe.pkid != super::parking::RESTORE_PKID,
        _ => false,
    }
}

/// Sends a packet on a link from synchronous code (see [`disconnect_now`]).
fn send_now(link_tx: &mut LinkTx, packet: Packet) {
    super::internal::push_now(link_tx, packet);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_take_their_filters_positions() {
        use Answer::{Denied, Direct, OverQuota, Router};
        let codes = splice_codes(
            &[Denied, Router, Direct(1), Denied, Router, Direct(0)],
            vec![SubscribeReasonCode::QoS1, SubscribeReasonCode::QoS0],
            Version::V311,
        );
        let over = splice_codes(&[OverQuota], Vec::new(), Version::V5);
        assert_eq!(over, [SubscribeReasonCode::QuotaExceeded]);
        assert_eq!(
            codes,
            vec![
                SubscribeReasonCode::Failure,
                SubscribeReasonCode::QoS1,
                SubscribeReasonCode::QoS1,
                SubscribeReasonCode::Failure,
                SubscribeReasonCode::QoS0,
                SubscribeReasonCode::QoS0
            ]
        );
    }

    #[test]
    fn qos_and_pkid_are_read_from_a_publish() {
        let publish =
            Publish::deserialize(Bytes::from_static(&[0x32, 0x12, 0x34, 0, 1, b't', b'x']));
        assert_eq!(qos_and_pkid(&publish), (1, 0x1234));
    }
}
