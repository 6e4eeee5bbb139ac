//! Parked router links: while a persistent session's client is away, sprig keeps the session's router
//! connection open and takes what the router forwards to it, so nothing waits in the router.
//!
//! Each QoS 1 message the router forwards to a parked link goes into the session's backlog (bounded, kept
//! in the store with the session, so it survives a restart) and is acknowledged to the router at once; the
//! client gets it, at QoS 1, when it comes back, whatever happened to the gateway in between. QoS 0
//! messages are not kept for an absent client (AWS IoT Core and mosquitto keep none either). A client that
//! resumes its session takes its parked link back (its subscriptions are in the router already); a session
//! that ends (expired, or discarded by a clean connection) has its link closed. Router links are always
//! opened clean: the router keeps no session of its own, sprig's is the only one.
//!
//! A parked link costs what a connected client's router connection costs, so at most `max_connections`
//! links are parked; beyond that a session keeps its backlog of the gateway's own messages but not the
//! router's traffic (logged).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::Subscribe;
use rumqttd::protocol::{
    Filter, Packet, PubAck, PubAckReason, Publish, PublishProperties, QoS, RetainForwardRule,
};
use rumqttd::Notification;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::backlog::Waiting;
use super::inflight::qos_and_pkid;
use super::internal::{disconnect_now, push_now};
use super::links::LinkName;
use super::origin::Origin;
use super::routed::RoutedFilters;
use super::topics::{served_directly, to_external, to_internal};
use super::{stopped, Shared};
use crate::auth::Identity;

/// The packet id of the SUBSCRIBE that gives a router link a session's filters back (never a client's:
/// MQTT packet ids start at 1). Its SUBACK is not passed on.
pub(crate) const RESTORE_PKID: u16 = 0;

/// The two halves of a router connection, and the name it has there (released when the link is dropped,
/// after it was closed).
pub(crate) type Link = (LinkTx, LinkRx, LinkName);

struct ParkedLink {
    owner: Identity,
    stop: oneshot::Sender<()>,
    /// Gives the link back when stopped; `None` if the router dropped it meanwhile.
    task: JoinHandle<Option<Link>>,
}

/// The parked links, by client id.
#[derive(Default)]
pub(crate) struct Parked {
    links: Mutex<HashMap<String, ParkedLink>>,
    /// Sessions not parked because `most` were already (logged on the first and every power of two).
    refused: std::sync::atomic::AtomicU64,
}

impl Parked {
    /// Parks `link` for `client_id`'s session, owned by `owner`; false (the link closed) when `most`
    /// links are parked already.
    pub(crate) fn park(
        &self,
        shared: &Arc<Shared>,
        client_id: &str,
        owner: Identity,
        (mut tx, rx, name): Link,
        most: usize,
    ) -> bool {
        let mut links = self.lock();
        if links.len() >= most {
            drop(links);
            let refused = self
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if refused.is_power_of_two() {
                tracing::warn!(client_id, most, refused, "too many parked sessions: messages between clients are not kept for this one while it is away");
            }
            disconnect_now(&mut tx);
            return false;
        }
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(hold(
            shared.clone(),
            client_id.to_owned(),
            (tx, rx, name),
            stopped,
        ));
        let parked = ParkedLink { owner, stop, task };
        if let Some(old) = links.insert(client_id.to_owned(), parked) {
            close(old);
        }
        true
    }

    /// Takes back the link parked for `client_id`, if `owner` parked it.
    pub(crate) async fn unpark(&self, client_id: &str, owner: &Identity) -> Option<Link> {
        let parked = {
            let mut links = self.lock();
            match links.get(client_id) {
                Some(p) if &p.owner == owner => links.remove(client_id),
                _ => None,
            }
        }?;
        let _ = parked.stop.send(());
        parked.task.await.ok().flatten()
    }

    /// Closes the links parked for `client_ids` (their sessions ended).
    pub(crate) fn release(&self, client_ids: &[String]) {
        let mut links = self.lock();
        for client_id in client_ids {
            if let Some(parked) = links.remove(client_id) {
                close(parked);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ParkedLink>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stops a parked link and closes it in the router.
fn close(parked: ParkedLink) {
    let _ = parked.stop.send(());
    tokio::spawn(async move {
        if let Ok(Some((mut tx, _rx, _name))) = parked.task.await {
            disconnect_now(&mut tx);
        }
    });
}

/// `filter` (external form) as a session's filters are given back to the router: at QoS 1, no options.
pub(crate) fn restored(filter: &str) -> Filter {
    Filter {
        path: to_internal(filter),
        qos: QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::Never,
    }
}

/// Subscribes a fresh router link to those of a resumed session's filters (external form) that the router
/// serves, at QoS 1; false when there are none.
pub(crate) fn restore_filters(tx: &mut LinkTx, filters: &[String], routed: &RoutedFilters) -> bool {
    let filters: Vec<Filter> = filters
        .iter()
        .filter(|f| !served_directly(f))
        .map(|f| restored(f))
        .collect();
    if filters.is_empty() {
        return false;
    }
    routed.record(filters.iter().map(|f| f.path.as_str()));
    let subscribe = Subscribe {
        pkid: RESTORE_PKID,
        filters,
    };
    push_now(tx, Packet::Subscribe(subscribe, None));
    true
}

/// Takes what the router forwards to a parked link until stopped (then gives the link back), until the
/// router drops the link, or until shutdown.
async fn hold(
    shared: Arc<Shared>,
    client_id: String,
    (mut tx, mut rx, name): Link,
    mut stop: oneshot::Receiver<()>,
) -> Option<Link> {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let notification = tokio::select! {
            _ = &mut stop => return Some((tx, rx, name)),
            () = stopped(&mut shutdown) => {
                disconnect_now(&mut tx);
                return None;
            }
            notification = rx.next() => notification,
        };
        let notification = match notification {
            Ok(Some(Notification::Unschedule)) => {
                // The router paused the link: say it may go on, or nothing more is forwarded.
                rx.wake().await.ok()?;
                continue;
            }
            Ok(Some(notification)) => notification,
            Ok(None) => continue,
            Err(_) => return None,
        };
        match Option::<Packet>::from(notification) {
            Some(Packet::Publish(publish, props)) => {
                keep(&shared, &client_id, &mut tx, publish, props).await
            }
            Some(Packet::Disconnect(..)) => return None,
            _ => {}
        }
    }
}

/// A QoS 1 message for an absent client: into its session's backlog, then acknowledged to the router. A
/// QoS 0 one is not kept, also when its subscription is QoS 1 (the router forwards it at QoS 1, see
/// `origin`), as mosquitto does not.
async fn keep(
    shared: &Shared,
    client_id: &str,
    tx: &mut LinkTx,
    publish: Publish,
    mut props: Option<PublishProperties>,
) {
    let (qos, pkid) = qos_and_pkid(&publish);
    if qos == 0 {
        return;
    }
    // The origin stays with the properties: the message's expiry is counted from it on delivery.
    let published_qos = (Origin::peek(&props)).map_or(qos, |o| o.qos);
    if let (Ok(topic), true) = (std::str::from_utf8(&publish.topic), published_qos > 0) {
        let message = Waiting {
            topic: to_external(topic).to_owned(),
            payload: publish.payload,
            reliable: true,
            dup: false,
            props: props.take().map(Box::new),
        };
        shared.outlets.keep(client_id, vec![message]);
    }
    let ack = PubAck {
        pkid,
        reason: PubAckReason::Success,
    };
    let _ = tx.send(Packet::PubAck(ack, None)).await;
}
