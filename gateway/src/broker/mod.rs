//! The embedded MQTT broker: sprig's listeners, per-connection authentication and topic authorization, and
//! the clients' sessions, in front of a rumqttd `Router` that does the routing; plus direct delivery of the
//! gateway's own messages to one client's connection.
//!
//! sprig owns the TCP listeners because rumqttd 0.20's router disconnects any client that subscribes to a
//! filter starting with `$` (other than `$share/`), while every topic sprig serves does (`$aws/things/...`,
//! `$sprig/control/...`): each connection speaks MQTT 3.1.1 or 5 with sprig's own reader and writer
//! (`connection`, `codec`), is authenticated with [`crate::auth::Authenticator`], has every PUBLISH and
//! SUBSCRIBE checked against its [`Principal`](crate::auth::Principal), and reaches the router through a
//! local link with `$` topics rewritten to an internal form and back (`topics`). No `$` topic reaches the
//! router, which never forgets a topic or a filter and matches each new topic against every filter (N² for
//! per-device topics, see `direct`): what clients publish on `$` topics goes to the gateway's services
//! ([`InternalClient`]s, through `taps`), and the gateway's own messages go to the one connection they are
//! for ([`Broker::deliver`], `direct`, written to an idle connection's socket by the deliverer: `wire`);
//! only topic-rule traffic, device to device, is routed. Sessions are
//! sprig's too, since the router's neither expire nor survive a restart and go to whoever presents the
//! client id: `direct` keeps each client id's session (owner, filters, expiry, what waits for it, written
//! to the store), `parking` an absent session's router link, `inflight` what a connection wrote at QoS 1
//! and is still owed; router links are always clean and named from a pool (`links`), not after client ids,
//! which the router would remember for good. What the router forgets of a message travels beside it
//! (`origin`), and the connections deliver it as MQTT 3.1.1 and 5 say (`options`, `retained`, `wills`).

mod admission;
mod backlog;
mod codec;
mod connection;
mod direct;
mod inflight;
mod internal;
mod links;
mod options;
mod origin;
mod parking;
mod presence;
mod quota;
mod retained;
mod routed;
mod sessions;
pub mod skips;
mod taps;
pub(crate) mod tls;
mod topics;
mod trim;
mod wills;
mod wire;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

use crate::auth::Authenticator;
use crate::config::BrokerConfig;
use crate::store::sessions::SessionTree;
use links::LinkName;

pub use direct::{Deliveries, Delivery};
pub use internal::{InternalClient, InternalReceiver, InternalSender};
pub use sessions::Sessions;
pub use taps::Copied;
pub use topics::matches as topic_matches;

/// Router connections reserved beyond `max_connections` for internal clients and session takeovers.
const ROUTER_HEADROOM: usize = 32;
/// How long [`Broker::shutdown`] waits for connections to close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// Subscription events a slow [`Broker::subscriptions`] receiver may fall behind by before it lags.
const SUBSCRIPTION_EVENTS: usize = 4096;

/// Presence events a slow [`Broker::presence_events`] receiver may fall behind by before it lags.
const PRESENCE_EVENTS: usize = 4096;

/// A client's SUBSCRIBE, reported once the router has acknowledged it (when its SUBACK is written), so a
/// publish made after receiving this event reaches the new subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeEvent {
    pub client_id: String,
    /// Which connection of that client id subscribed (see [`Sessions::is_current`]): a later connection of
    /// the same id has to subscribe again.
    pub connection: u64,
    /// The filters the router granted, in external form (`$aws/...`); denied ones are left out.
    pub filters: Vec<String>,
}

/// Errors of the broker's API.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The router refused or failed to open a connection.
    #[error("cannot connect to the MQTT router: {0}")]
    Link(String),
    /// The router connection of an internal client is closed.
    #[error("the broker connection is closed")]
    Closed,
    /// A topic or filter that cannot be used (empty, wildcards in a topic, malformed filter).
    #[error("invalid topic or filter `{0}`")]
    InvalidTopic(String),
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The stored persistent sessions cannot be read.
    #[error("cannot read the stored MQTT sessions: {0}")]
    Sessions(String),
    /// The TLS certificate or key cannot be used (`key`: the config key naming the file).
    #[error("key `{key}`: {reason}")]
    Tls { key: String, reason: String },
}

/// The halves of an accepted connection's byte stream, plain TCP or TLS.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

type LinkParts = (LinkTx, LinkRx, Notification);

/// State shared by the broker handle, the acceptors and the connections.
pub(crate) struct Shared {
    /// Opens router connections (see `links`).
    link_maker: links::LinkMaker,
    /// The names client links go by in the router.
    link_names: Arc<links::LinkNames>,
    auth: Arc<Authenticator>,
    sessions: Arc<Sessions>,
    /// Each live connection's granted filters and direct queue, for [`Broker::deliver`].
    outlets: direct::Outlets,
    /// The router links of persistent sessions whose clients are away (see `parking`).
    parked: parking::Parked,
    config: BrokerConfig,
    /// Connected clients, counted against `config.max_connections`.
    clients: AtomicUsize,
    /// Told about every closed connection, to give their memory back (see `trim`).
    trimmer: Arc<trim::Trimmer>,
    /// The gateway services' `$` subscriptions (see `taps`).
    taps: taps::Taps,
    /// The filters the router holds, capped (see `routed`).
    routed: routed::RoutedFilters,
    /// The retained messages of routed topics (see `retained`).
    retained: retained::Retained,
    /// Last wills held back by their delay (see `wills`).
    wills: wills::DelayedWills,
    /// Granted subscriptions, for [`Broker::subscriptions`]; sending without receivers costs nothing.
    subscriptions: broadcast::Sender<SubscribeEvent>,
    /// Presence events (topic, body), for [`Broker::presence_events`]; sending without receivers costs
    /// nothing.
    presence: broadcast::Sender<(String, Bytes)>,
    /// Password checks running at once (see [`PASSWORD_CHECKS`]).
    password_checks: Arc<Semaphore>,
    /// Password checks per address: a few at once, slower after failures (see `admission`).
    logins: admission::Logins,
    /// Becomes true at shutdown (and errs when the [`Broker`] is dropped).
    shutdown: watch::Receiver<bool>,
    /// Becomes true once clients may be accepted (see [`Broker::accept_clients`]).
    accepting: watch::Receiver<bool>,
    /// Where persistent sessions are kept across restarts (none: in memory only).
    session_tree: Option<SessionTree>,
    /// Held while changed sessions are written, so batches land in the order they were taken.
    persisting: tokio::sync::Mutex<()>,
}

/// At most this many password checks at once (fewer with fewer cores). Each is argon2 with 19 MiB of
/// memory for ~50 ms: a fleet reconnecting at once would otherwise cost 19 MiB per device in flight
/// (24 devices raised the peak RSS by 343 MiB), and more checks than cores finish no sooner.
const PASSWORD_CHECKS: usize = 4;

/// How many password checks may run at once on this machine.
fn password_check_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(PASSWORD_CHECKS))
}

impl Shared {
    /// Opens a clean router connection for a client, under a name of the pool's (see `links`), without
    /// blocking the runtime (`LinkBuilder::build` waits on a channel).
    async fn link(&self) -> Result<(LinkParts, LinkName), BrokerError> {
        let name = self.link_names.take();
        let parts = self.link_maker.open(&name.to_router()).await?;
        Ok((parts, name))
    }

    /// Presence events go straight to the operators watching them, not through the router (see `direct`).
    fn publish_presence(&self, topic: &str, body: Bytes) {
        if self.presence.receiver_count() > 0 {
            let _ = self.presence.send((topic.to_owned(), body.clone()));
        }
        let counts = self.outlets.publish_event(topic, body);
        if counts.dropped > 0 {
            tracing::debug!(
                topic,
                dropped = counts.dropped,
                "presence event not delivered to all watchers"
            );
        }
    }
}

/// The running broker. Cheap to share: [`Broker::start`] returns it in an `Arc`. Dropping the last handle
/// stops accepting and closes every connection (without waiting); [`Broker::shutdown`] waits.
pub struct Broker {
    shared: Arc<Shared>,
    local_addrs: Vec<SocketAddr>,
    tls_local_addrs: Vec<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    /// Cloned into every acceptor and connection; shutdown drops this one and waits for the rest.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_closed: tokio::sync::Mutex<mpsc::Receiver<()>>,
    next_internal: AtomicU64,
    /// Opens the listeners to clients ([`Broker::accept_clients`]).
    accepting_tx: watch::Sender<bool>,
}

impl Broker {
    /// Starts the broker. Must be called inside a tokio runtime. Binds every listener in `config.listen`
    /// and `config.tls_listen` before returning (a bad address, certificate or key is an error here),
    /// spawns the router thread, then accepts in background tasks. Logs each address it listens on.
    pub async fn start(
        config: &BrokerConfig,
        auth: Arc<Authenticator>,
    ) -> Result<Arc<Broker>, BrokerError> {
        Broker::start_with(config, auth, None).await
    }

    /// [`Broker::start`] with persistent sessions kept in `sessions`: those stored there are restored
    /// before the first client is accepted, and every change is written behind.
    pub async fn start_persistent(
        config: &BrokerConfig,
        auth: Arc<Authenticator>,
        sessions: SessionTree,
    ) -> Result<Arc<Broker>, BrokerError> {
        Broker::start_with(config, auth, Some(sessions)).await
    }

    /// Starts accepting clients. Until then the listeners are bound (a bad address fails the start) but
    /// connections wait in the kernel's backlog: the gateway opens them once its services take requests,
    /// so that a request sent while it starts is answered, not lost.
    pub fn accept_clients(&self) {
        self.accepting_tx.send_replace(true);
    }

    async fn start_with(
        config: &BrokerConfig,
        auth: Arc<Authenticator>,
        session_tree: Option<SessionTree>,
    ) -> Result<Arc<Broker>, BrokerError> {
        let tls = tls::acceptor(config)?;
        // Bind first: the router thread cannot be stopped once spawned.
        let mut listeners = Vec::with_capacity(config.listen.len() + config.tls_listen.len());
        let plain = config.listen.iter().map(|addr| (addr, None));
        let secure = config.tls_listen.iter().map(|addr| (addr, tls.clone()));
        for (&addr, tls) in plain.chain(secure) {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| BrokerError::Bind { addr, source })?;
            listeners.push((listener, local, tls));
        }

        let router_tx = Router::new(0, router_config(config)).spawn();
        let link_maker = links::LinkMaker::start(move |client_id: &str| {
            // Always clean: the sessions are sprig's (see `direct`).
            let (link_tx, link_rx, ack) = LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(true)
                .build()
                // (`LinkError` is large: it is turned into text right here.)
                .map_err(|e| e.to_string())?;
            // rumqttd gives every link an incoming buffer with room for 200 packets (78 KB) that a
            // connection almost never uses; it grows again on demand.
            link_tx.buffer().shrink_to_fit();
            Ok((link_tx, link_rx, ack))
        })
        .map_err(|e| BrokerError::Link(format!("cannot start the router link thread: {e}")))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // `Broker::start` (no stored sessions: tests, tools) accepts at once; the daemon opens later.
        let (accepting_tx, accepting) = watch::channel(session_tree.is_none());
        let shared = Arc::new(Shared {
            link_maker,
            link_names: Arc::default(),
            auth,
            sessions: Arc::new(Sessions::default()),
            outlets: direct::Outlets::new(backlog::Limits {
                messages: config.persistent_session_max_queued_messages,
                bytes: config.persistent_session_max_queued_bytes,
            }),
            parked: parking::Parked::default(),
            config: config.clone(),
            clients: AtomicUsize::new(0),
            trimmer: Arc::default(),
            taps: taps::Taps::default(),
            routed: routed::RoutedFilters::new(config.max_router_filters),
            retained: retained::Retained::default(),
            wills: wills::DelayedWills::default(),
            subscriptions: broadcast::channel(SUBSCRIPTION_EVENTS).0,
            presence: broadcast::channel(PRESENCE_EVENTS).0,
            password_checks: Arc::new(Semaphore::new(password_check_permits())),
            logins: admission::Logins::default(),
            shutdown: shutdown_rx,
            accepting,
            session_tree,
            persisting: tokio::sync::Mutex::new(()),
        });
        if let Some(tree) = shared.session_tree.clone() {
            let stored = tokio::task::spawn_blocking(move || tree.load())
                .await
                .map_err(|e| BrokerError::Sessions(e.to_string()))?
                .map_err(|e| BrokerError::Sessions(e.to_string()))?;
            let restored = shared.outlets.restore(stored);
            tracing::info!(
                restored = restored.len(),
                "persistent MQTT sessions restored"
            );
            park_restored(&shared, restored).await?;
            tokio::spawn(persist_sessions(shared.clone()));
        }
        tokio::spawn(shared.trimmer.clone().run(shared.shutdown.clone()));
        tokio::spawn(skips::report(shared.shutdown.clone()));
        tokio::spawn(expire_sessions(shared.clone()));
        let (alive, all_closed) = mpsc::channel(1);
        let (local_addrs, tls_local_addrs) = listeners
            .iter()
            .partition::<Vec<_>, _>(|(_, _, tls)| tls.is_none());
        let local_addrs = local_addrs.iter().map(|(_, local, _)| *local).collect();
        let tls_local_addrs = tls_local_addrs.iter().map(|(_, local, _)| *local).collect();
        for (listener, local, tls) in listeners {
            let tls_note = if tls.is_some() { " (TLS)" } else { "" };
            tracing::info!("MQTT broker listening on {local}{tls_note}");
            tokio::spawn(accept_loop(
                shared.clone(),
                listener,
                local,
                tls,
                alive.clone(),
            ));
        }
        Ok(Arc::new(Broker {
            shared,
            local_addrs,
            tls_local_addrs,
            shutdown_tx,
            alive: Mutex::new(Some(alive)),
            all_closed: tokio::sync::Mutex::new(all_closed),
            next_internal: AtomicU64::new(0),
            accepting_tx,
        }))
    }

    /// The addresses actually bound, in `config.listen` order (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs.clone()
    }

    /// The TLS addresses actually bound, in `config.tls_listen` order (port 0 resolved).
    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.tls_local_addrs.clone()
    }

    /// An in-process client of the router for the gateway's own services (control API, notifications).
    /// `name` only labels it (its router client id is `~sprig-{name}-{n}`, which no MQTT client can use).
    pub async fn internal_client(&self, name: &str) -> Result<InternalClient, BrokerError> {
        if *self.shutdown_tx.borrow() {
            return Err(BrokerError::ShuttingDown);
        }
        let n = self.next_internal.fetch_add(1, Ordering::Relaxed);
        let label: String = name
            .chars()
            .map(|c| if "+$#/".contains(c) { '_' } else { c })
            .collect();
        let client_id = format!("~sprig-{label}-{n}");
        let (link_tx, link_rx, _ack) = self.shared.link_maker.open(&client_id).await?;
        Ok(InternalClient::new(link_tx, link_rx, self.shared.clone()))
    }

    /// From now on, what clients publish on routed topics (not `$`) matching `filter` is handed to `queue`
    /// before the router has it, and the publisher's acknowledgement waits until the service confirms
    /// through [`Copied::taken`] (the uplink's `out` topics: on disk before the device's PUBACK). Last
    /// wills are copied too, without waiting. A full queue holds the publishers back.
    pub fn copy_routed(&self, filter: &str, queue: mpsc::Sender<Copied>) {
        self.shared.taps.add_copy(filter, queue);
    }

    /// The live client connections: client id -> [`Principal`](crate::auth::Principal).
    pub fn sessions(&self) -> Arc<Sessions> {
        self.shared.sessions.clone()
    }

    /// Every granted SUBSCRIBE from now on, reported after the router acknowledged it (see
    /// [`SubscribeEvent`]). A receiver that falls more than 4096 events behind gets `Lagged`.
    pub fn subscriptions(&self) -> broadcast::Receiver<SubscribeEvent> {
        self.shared.subscriptions.subscribe()
    }

    /// Every presence event from now on (`$aws/events/presence/{connected|disconnected}/{clientId}` and its
    /// body), as the operators watching them get it. A receiver that falls more than 4096 events behind
    /// gets `Lagged`.
    pub fn presence_events(&self) -> broadcast::Receiver<(String, Bytes)> {
        self.shared.presence.subscribe()
    }

    /// Sends `payload` on `topic` (external form, no wildcards) to the connection of `client_id`, if one of
    /// the filters that connection was granted matches, without the router: only that client gets it,
    /// at QoS 0. Never blocks: a client whose queue is full loses the message (counted and logged). Meant
    /// for topics only one client may subscribe to (a device's `$aws/things/{thing}/...`); see `direct`.
    pub fn deliver(&self, client_id: &str, topic: &str, payload: Bytes) -> Delivery {
        self.shared.outlets.deliver(client_id, topic, payload)
    }

    /// [`Broker::deliver`] for many (client id, topic, payload), in order, under one lock.
    pub fn deliver_many<C, T>(
        &self,
        messages: impl IntoIterator<Item = (C, T, Bytes)>,
    ) -> Deliveries
    where
        C: AsRef<str>,
        T: AsRef<str>,
    {
        self.shared.outlets.deliver_many(messages)
    }

    /// Messages [`Broker::deliver`] dropped on full client queues since the start.
    pub fn deliveries_dropped(&self) -> u64 {
        self.shared.outlets.dropped()
    }

    /// Stops accepting, disconnects every client (MQTT 5 clients get DISCONNECT "server shutting down"),
    /// and returns when they are all closed, or after 2 s at most.
    pub async fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
        drop(self.alive.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut all_closed = self.all_closed.lock().await;
        // `recv` yields `None` once every acceptor and connection has dropped its sender.
        if tokio::time::timeout(SHUTDOWN_WAIT, all_closed.recv())
            .await
            .is_err()
        {
            tracing::warn!("some MQTT connections did not close within {SHUTDOWN_WAIT:?}");
        }
        // The sessions as the closed connections left them.
        write_sessions(&self.shared).await;
    }
}

/// Gives each restored session with filters a router link, subscribed to them and parked, so that what
/// other clients publish for it from now on is kept until its client is back.
async fn park_restored(
    shared: &Arc<Shared>,
    restored: Vec<(String, crate::auth::Identity, Vec<String>)>,
) -> Result<(), BrokerError> {
    for (client_id, owner, filters) in restored {
        if filters.iter().all(|f| topics::served_directly(f)) {
            continue;
        }
        let ((mut tx, rx, _ack), name) = shared.link().await?;
        parking::restore_filters(&mut tx, &filters, &shared.routed);
        let most = shared.config.max_connections;
        shared
            .parked
            .park(shared, &client_id, owner, (tx, rx, name), most);
    }
    Ok(())
}

/// rumqttd's `RouterConfig::default()` allows 0 connections: every field comes from the config. The
/// router holds the links of connected clients and those parked for absent ones (at most as many again).
fn router_config(config: &BrokerConfig) -> RouterConfig {
    RouterConfig {
        max_connections: 2 * config.max_connections + ROUTER_HEADROOM,
        max_outgoing_packet_count: config.max_outgoing_packet_count,
        max_segment_size: config.max_segment_size,
        max_segment_count: config.max_segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

/// Accepts connections on one listener (TLS ones complete their handshake first) until shutdown.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<tls::TlsAcceptor>,
    alive: mpsc::Sender<()>,
) {
    let mut shutdown = shared.shutdown.clone();
    let mut accepting = shared.accepting.clone();
    tokio::select! {
        () = stopped(&mut shutdown) => return,
        opened = accepting.wait_for(|open| *open) => if opened.is_err() { return },
    }
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(acceptor) = &tls {
                        let connection = tls::serve(acceptor.clone(), shared.clone(), stream, peer, local, alive.clone());
                        tokio::spawn(connection);
                        continue;
                    }
                    let (read_half, write_half) = stream.into_split();
                    // Shared with the connection's direct deliveries (see `wire`).
                    let socket = Arc::new(write_half);
                    let accepted = connection::Accepted {
                        read_half: Box::new(read_half),
                        write_half: Box::new(wire::SharedSocket(socket.clone())),
                        socket: Some(socket),
                        peer,
                        listener: local,
                        certificate: None,
                    };
                    let connection = connection::serve(shared.clone(), accepted, alive.clone());
                    tokio::spawn(connection);
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept on {local} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    tracing::info!("MQTT listener {local} closed");
}

/// Writes persistent sessions to the store as they change, until shutdown (which writes the last ones).
async fn persist_sessions(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = shared.outlets.changed() => write_sessions(&shared).await,
        }
    }
}

/// Writes the sessions that changed since the last write, off the runtime. A failed write is logged; the
/// sessions stay in memory and are written with their next change.
async fn write_sessions(shared: &Shared) {
    let Some(tree) = shared.session_tree.clone() else {
        return;
    };
    let _turn = shared.persisting.lock().await;
    let changes = shared.outlets.take_changed();
    if changes.is_empty() {
        return;
    }
    let ids: Vec<String> = changes.iter().map(|(id, _)| id.clone()).collect();
    let written = tokio::task::spawn_blocking(move || tree.write(&changes)).await;
    let error = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(
        count = ids.len(),
        error,
        "cannot write MQTT sessions to the store"
    );
    shared.outlets.mark_changed(ids);
}

/// How often disconnected sessions are checked for expiry (a resuming client checks its own at once).
const EXPIRY_SWEEP: Duration = Duration::from_secs(10);

/// Ends persistent sessions whose expiry has passed, and closes their parked router links, until shutdown.
async fn expire_sessions(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut ticks = tokio::time::interval(EXPIRY_SWEEP);
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            now = ticks.tick() => {
                let expired = shared.outlets.expire(now.into_std());
                if !expired.is_empty() {
                    tracing::info!(count = expired.len(), "persistent sessions expired");
                    shared.parked.release(&expired);
                }
            }
        }
    }
}

/// Resolves once shutdown starts (or the [`Broker`] is dropped).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await: drop it here.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
