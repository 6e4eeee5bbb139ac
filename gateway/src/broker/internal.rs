//! In-process clients of the router, for the gateway's own services (control API, presence events).

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Filter, Packet, Publish, QoS};
use rumqttd::protocol::{RetainForwardRule, Subscribe};
use rumqttd::Notification;
use tokio::sync::Mutex;

use super::topics::{to_external, to_internal};
use super::{BrokerError, Shared};

/// The thing whose `$aws/things/{thing}/...` topic this is.
fn thing_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, _) = rest.split_once('/')?;
    (!thing.is_empty()).then_some(thing)
}

/// An in-process client of the broker. Topics are in external form (`$aws/...`) everywhere.
pub struct InternalClient {
    sender: InternalSender,
    receiver: InternalReceiver,
}

/// The publishing half of an [`InternalClient`]; clone it freely.
#[derive(Clone)]
pub struct InternalSender {
    link: Arc<OwnedLink>,
    /// Delivers what is published on a thing's `$aws/things/{thing}/...` topics straight to that device:
    /// the router never has those subscriptions (see `connection::served_directly`).
    shared: Arc<Shared>,
}

/// The receiving half of an [`InternalClient`].
pub struct InternalReceiver {
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
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};

    struct NoopWake;
    impl Wake for NoopWake {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let mut send = std::pin::pin!(link_tx.send(packet));
    if let Poll::Ready(Err(e)) = send.as_mut().poll(&mut cx) {
        tracing::debug!("router already gone: {e}");
    }
}

impl InternalClient {
    pub(crate) fn new(link_tx: LinkTx, link_rx: LinkRx, shared: Arc<Shared>) -> InternalClient {
        let link = Arc::new(OwnedLink {
            tx: Mutex::new(link_tx),
        });
        InternalClient {
            sender: InternalSender {
                link: link.clone(),
                shared,
            },
            receiver: InternalReceiver {
                link_rx,
                _link: link,
            },
        }
    }

    /// Subscribes to `filter` (external form, e.g. `$sprig/control/+/+`). Publishes the router handles after
    /// this returns are delivered to [`InternalClient::next`].
    pub async fn subscribe(&mut self, filter: &str) -> Result<(), BrokerError> {
        self.sender.subscribe(filter).await
    }

    /// Publishes `payload` on `topic` (external form). Subscribers receive it at their subscription's QoS.
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
        if let Some(thing) = thing_of(topic) {
            self.shared.outlets.deliver(thing, topic, payload);
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
        // QoS 0 inside the process: nothing is lost between the router and this link, and the router
        // would otherwise wait for PUBACKs from us.
        let subscribe = Subscribe {
            pkid: 1,
            filters: vec![Filter {
                path: to_internal(filter),
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
    /// The next publish received: (external topic, payload). Acknowledgements are skipped, and the
    /// router's flow control (`Unschedule`) is answered here, so the caller only sees messages.
    pub async fn next(&mut self) -> Result<(String, Bytes), BrokerError> {
        loop {
            let notification = self.link_rx.next().await.map_err(|_| BrokerError::Closed)?;
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
