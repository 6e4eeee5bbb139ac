//! In-process clients of the broker, for the gateway's own services (control API, device API, recovery).
//!
//! Their `$` subscriptions are taps (see `taps`) and their `$` publishes go straight to the one client
//! they are addressed to (see `topics::addressee`): the router sees neither. Other topics (none today; the
//! uplink's bridged topics later) go through the client's router link.

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Filter, Packet, Publish, QoS};
use rumqttd::protocol::{RetainForwardRule, Subscribe};
use rumqttd::Notification;
use tokio::sync::{mpsc, Mutex};

use super::taps::{Tapped, TAP_QUEUE};
use super::topics::{addressee, served_directly, to_external, to_internal};
use super::{BrokerError, Shared};

/// An in-process client of the broker. Topics are in external form (`$aws/...`) everywhere.
pub struct InternalClient {
    sender: InternalSender,
    receiver: InternalReceiver,
}

/// The publishing half of an [`InternalClient`]; clone it freely.
#[derive(Clone)]
pub struct InternalSender {
    link: Arc<OwnedLink>,
    /// Delivers what is published on `$` topics straight to the client they are for, and registers taps.
    shared: Arc<Shared>,
    /// This client's tap queue, given to every tap it subscribes.
    tap: mpsc::Sender<Tapped>,
}

/// The receiving half of an [`InternalClient`].
pub struct InternalReceiver {
    tapped: mpsc::Receiver<Tapped>,
    link_rx: LinkRx,
    // Keeps the router connection open while only the receiver is left.
    _link: Arc<OwnedLink>,
}

/// The sending side of a router connection; ends the connection in the router when dropped.
struct OwnedLink {
    tx: Mutex<LinkTx>,
}

impl Drop for OwnedLink {
    fn drop(&mut self) {
        disconnect_now(self.tx.get_mut());
    }
}

/// Tells the router a connection ends, from synchronous code (`Drop`).
///
/// `LinkTx::send` is an `async fn` without an await point (it pushes to a buffer and does a flume send), so
/// one poll completes it.
pub(crate) fn disconnect_now(link_tx: &mut LinkTx) {
    let packet = Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    );
    push_now(link_tx, packet);
}

/// Pushes one packet into a link from synchronous code (see [`disconnect_now`]).
pub(crate) fn push_now(link_tx: &mut LinkTx, packet: Packet) {
    if !try_push_now(link_tx, packet) {
        tracing::debug!("router already gone");
    }
}

/// [`push_now`]; false when the router is gone.
pub(crate) fn try_push_now(link_tx: &mut LinkTx, packet: Packet) -> bool {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};

    struct NoopWake;
    impl Wake for NoopWake {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let mut send = std::pin::pin!(link_tx.send(packet));
    !matches!(send.as_mut().poll(&mut cx), Poll::Ready(Err(_)))
}

impl InternalClient {
    pub(crate) fn new(link_tx: LinkTx, link_rx: LinkRx, shared: Arc<Shared>) -> InternalClient {
        let link = Arc::new(OwnedLink {
            tx: Mutex::new(link_tx),
        });
        let (tap, tapped) = mpsc::channel(TAP_QUEUE);
        InternalClient {
            sender: InternalSender {
                link: link.clone(),
                shared,
                tap,
            },
            receiver: InternalReceiver {
                tapped,
                link_rx,
                _link: link,
            },
        }
    }

    /// Subscribes to `filter` (external form, e.g. `$sprig/control/+/+`). What clients publish on matching
    /// topics after this returns is delivered to [`InternalClient::next`].
    pub async fn subscribe(&mut self, filter: &str) -> Result<(), BrokerError> {
        self.sender.subscribe(filter).await
    }

    /// Publishes `payload` on `topic` (external form). On a `$` topic it goes to the one client it is
    /// addressed to, at QoS 0 (never to the gateway's own taps); elsewhere subscribers receive it through
    /// the router at their subscription's QoS.
    pub async fn publish(&mut self, topic: &str, payload: Bytes) -> Result<(), BrokerError> {
        self.sender.publish(topic, payload).await
    }

    /// The next publish received on a subscription: (external topic, payload).
    pub async fn next(&mut self) -> Result<(String, Bytes), BrokerError> {
        self.receiver.next().await
    }

    /// Splits into a cloneable sender and a receiver, for a service that receives in one task and replies
    /// from many. The router connection ends when both halves (and all sender clones) are dropped.
    pub fn split(self) -> (InternalSender, InternalReceiver) {
        (self.sender, self.receiver)
    }
}

impl InternalSender {
    /// Publishes `payload` on `topic` (external form, no wildcards). See [`InternalClient::publish`].
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BrokerError> {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(BrokerError::InvalidTopic(topic.to_owned()));
        }
        if served_directly(topic) {
            match addressee(topic) {
                Some(client_id) => {
                    self.shared.outlets.deliver(client_id, topic, payload);
                }
                None => tracing::debug!(topic, "no client may subscribe there: not delivered"),
            }
            return Ok(());
        }
        let publish = Publish::new(Bytes::from(to_internal(topic)), payload, false);
        self.send(Packet::Publish(publish, None)).await
    }

    /// Subscribes to `filter` (external form). See [`InternalClient::subscribe`].
    pub async fn subscribe(&self, filter: &str) -> Result<(), BrokerError> {
        if !rumqttd::protocol::valid_filter(filter) {
            return Err(BrokerError::InvalidTopic(filter.to_owned()));
        }
        if served_directly(filter) {
            self.shared.taps.add(filter, self.tap.clone());
            return Ok(());
        }
        // Counted before the router has it: from now on publishes that match go to the router.
        let path = to_internal(filter);
        self.shared.routed.record([path.as_str()]);
        // QoS 0 inside the process: nothing is lost between the router and this link, and the router
        // would otherwise wait for PUBACKs from us.
        let subscribe = Subscribe {
            pkid: 1,
            filters: vec![Filter {
                path,
                qos: QoS::AtMostOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            }],
        };
        self.send(Packet::Subscribe(subscribe, None)).await
    }

    async fn send(&self, packet: Packet) -> Result<(), BrokerError> {
        self.link
            .tx
            .lock()
            .await
            .send(packet)
            .await
            .map(|_| ())
            .map_err(|_| BrokerError::Closed)
    }
}

impl InternalReceiver {
    /// The next publish received, from a tap or the router: (external topic, payload). The router's
    /// acknowledgements are skipped, and its flow control (`Unschedule`) is answered here, so the caller
    /// only sees messages.
    pub async fn next(&mut self) -> Result<(String, Bytes), BrokerError> {
        loop {
            // Both are cancel-safe: flume's and tokio's receives take nothing when dropped unfinished.
            let notification = tokio::select! {
                Some(tapped) = self.tapped.recv() => return Ok(tapped),
                notification = self.link_rx.next() => notification,
            };
            let notification = notification.map_err(|_| BrokerError::Closed)?;
            match notification {
                Some(Notification::Forward(forward)) => {
                    let topic = String::from_utf8_lossy(&forward.publish.topic);
                    return Ok((to_external(&topic).to_owned(), forward.publish.payload));
                }
                // The router pauses a link whose buffer filled up until the link says it is ready again.
                Some(Notification::Unschedule) => {
                    self.link_rx.wake().await.map_err(|_| BrokerError::Closed)?
                }
                Some(Notification::Disconnect(..)) => return Err(BrokerError::Closed),
                Some(_) | None => {}
            }
        }
    }
}
