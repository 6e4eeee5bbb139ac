//! The QoS 1 messages a connection wrote to its client and has not seen acknowledged yet, so that none is
//! lost when the connection ends: a persistent session gets them again (DUP) when its client is back.
//!
//! Two kinds share the client's packet ids. The router numbers the QoS 1 publishes it forwards on a link
//! 1 to [`ROUTER_PKIDS`] (rumqttd 0.20: `MAX_INFLIGHT`), and wants their PUBACKs in that order; sprig's own
//! QoS 1 deliveries (what waited for a resumed session) take the ids above, so the two never collide and a
//! PUBACK is told apart by its id alone.
//!
//! The router wants its acknowledgements in the order it numbered its publishes, and sprig writes some of
//! them at QoS 0 (a QoS 0 message on a QoS 1 subscription, see `origin`) or not at all (see `writer`):
//! those are *settled* at once, a client's PUBACK marks its publish done, and [`Inflight::release`] gives
//! the packet ids the router may be told of now: the leading run of done or settled ones, in order.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{Publish, PublishProperties};

use super::backlog::Waiting;

/// The packet ids the router uses for a link's QoS 1 publishes: 1 to this.
pub(crate) const ROUTER_PKIDS: u16 = 100;

/// Whose a PUBACK was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acked {
    /// A router publish: the router must be told.
    Router,
    /// One of sprig's own: done.
    Own,
    /// Nothing in flight had that id (a router id is passed on all the same).
    Unknown,
}

#[derive(Debug)]
struct Sent {
    pkid: u16,
    from_router: bool,
    /// A router publish the client acknowledged, or one it owes nothing for: the router may be told.
    done: bool,
    message: Waiting,
}

/// The unacknowledged QoS 1 publishes of one connection, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    sent: VecDeque<Sent>,
    last_own: u16,
}

impl Inflight {
    /// A router publish written at QoS 1 with the router's `pkid` (and its properties as routed).
    pub(crate) fn sent_by_router(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: &Bytes,
        props: Option<PublishProperties>,
    ) {
        let message = Waiting {
            topic: topic.to_owned(),
            payload: payload.clone(),
            reliable: true,
            dup: true,
            props: props.map(Box::new),
        };
        self.sent.push_back(Sent {
            pkid,
            from_router: true,
            done: false,
            message,
        });
    }

    /// A router publish with the router's `pkid` that the client owes no acknowledgement for (written at
    /// QoS 0, or not written): done at once, released in its turn.
    pub(crate) fn settled_by_router(&mut self, pkid: u16) {
        self.sent.push_back(Sent {
            pkid,
            from_router: true,
            done: true,
            message: Waiting::direct("", Bytes::new()),
        });
    }

    /// The router publishes it may be told are acknowledged now, in its order: the leading run of done
    /// ones (own messages between them do not hold them up).
    pub(crate) fn release(&mut self) -> Vec<u16> {
        let mut released = Vec::new();
        while let Some(i) = self.sent.iter().position(|s| s.from_router) {
            if !self.sent[i].done {
                break;
            }
            if let Some(sent) = self.sent.remove(i) {
                released.push(sent.pkid);
            }
        }
        released
    }

    /// Gives `message` a packet id of sprig's own and records it as sent; returns the id.
    pub(crate) fn send_own(&mut self, message: Waiting) -> u16 {
        let pkid = loop {
            self.last_own = match self.last_own {
                u16::MAX | 0 => ROUTER_PKIDS + 1,
                n if n < ROUTER_PKIDS => ROUTER_PKIDS + 1,
                n => n + 1,
            };
            if !self.sent.iter().any(|s| s.pkid == self.last_own) {
                break self.last_own;
            }
        };
        let message = Waiting {
            dup: true,
            ..message
        };
        self.sent.push_back(Sent {
            pkid,
            from_router: false,
            done: false,
            message,
        });
        pkid
    }

    /// True while a router publish is recorded: unacknowledged, or not yet released to the router.
    pub(crate) fn holds_router(&self) -> bool {
        self.sent.iter().any(|s| s.from_router)
    }

    /// QoS 1 publishes written and not acknowledged by the client (settled ones are not owed).
    pub(crate) fn owed(&self) -> usize {
        self.sent.iter().filter(|s| !s.done).count()
    }

    /// The client acknowledged `pkid`. A router publish is marked done (see [`Inflight::release`]).
    pub(crate) fn acknowledged(&mut self, pkid: u16) -> Acked {
        let Some(i) = self.sent.iter().position(|s| s.pkid == pkid && !s.done) else {
            return Acked::Unknown;
        };
        if self.sent[i].from_router {
            self.sent[i].done = true;
            return Acked::Router;
        }
        self.sent.remove(i);
        Acked::Own
    }

    /// Everything still unacknowledged, oldest first: the router's packet ids (to acknowledge to it, in
    /// order, once sprig keeps the messages), and the messages, to be sent again.
    pub(crate) fn take(&mut self) -> (Vec<u16>, Vec<Waiting>) {
        let mut router_pkids = Vec::new();
        let messages = self
            .sent
            .drain(..)
            .filter_map(|sent| {
                if sent.from_router {
                    router_pkids.push(sent.pkid);
                }
                (!sent.done).then_some(sent.message)
            })
            .collect();
        (router_pkids, messages)
    }
}

/// QoS and packet id of a publish. rumqttd keeps both fields private; its own serialization exposes them
/// (header byte, then the packet id), at the cost of a copy of the message.
pub(crate) fn qos_and_pkid(publish: &Publish) -> (u8, u16) {
    let bytes = publish.serialize();
    match bytes.get(..3) {
        Some(&[header, hi, lo]) => ((header >> 1) & 0b11, u16::from_be_bytes([hi, lo])),
        _ => (0, 0),
    }
}

/// A QoS 1 PUBLISH of `message` with packet id `pkid`. rumqttd keeps a `Publish`'s QoS, packet id and DUP
/// flag private, so it is built from its wire form (header byte, packet id, topic, payload).
pub(crate) fn qos1_publish(message: &Waiting, pkid: u16) -> Publish {
    let mut wire = BytesMut::with_capacity(5 + message.topic.len() + message.payload.len());
    let dup = if message.dup { 0x08 } else { 0 };
    wire.put_u8(0x32 | dup);
    wire.put_u16(pkid);
    wire.put_u16(message.topic.len() as u16);
    wire.put_slice(message.topic.as_bytes());
    wire.put_slice(&message.payload);
    Publish::deserialize(wire.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str) -> Waiting {
        Waiting {
            topic: topic.into(),
            payload: Bytes::from_static(b"p"),
            reliable: true,
            dup: false,
            props: None,
        }
    }

    #[test]
    fn own_packet_ids_never_meet_the_routers_and_skip_those_in_use() {
        let mut inflight = Inflight::default();
        inflight.sent_by_router(1, "a", &Bytes::new(), None);
        let first = inflight.send_own(message("b"));
        assert_eq!(first, ROUTER_PKIDS + 1);
        inflight.last_own = u16::MAX;
        // Wraps to the first own id, which is still in flight: the next one.
        assert_eq!(inflight.send_own(message("c")), ROUTER_PKIDS + 2);
        assert_eq!(inflight.acknowledged(1), Acked::Router);
        assert_eq!(inflight.acknowledged(1), Acked::Unknown);
        assert_eq!(inflight.release(), [1]);
        assert_eq!(inflight.acknowledged(first), Acked::Own);
        assert_eq!(inflight.acknowledged(first), Acked::Unknown);
    }

    #[test]
    fn what_was_never_acknowledged_is_taken_in_order_marked_dup() {
        let mut inflight = Inflight::default();
        inflight.sent_by_router(7, "r1", &Bytes::new(), None);
        inflight.send_own(message("own"));
        inflight.sent_by_router(8, "r2", &Bytes::new(), None);
        inflight.acknowledged(7);
        assert_eq!(inflight.release(), [7]);
        let (router, messages) = inflight.take();
        assert_eq!(router, [8]);
        let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["own", "r2"]);
        assert!(messages.iter().all(|m| m.dup && m.reliable));
    }

    #[test]
    fn the_router_is_told_in_its_order_and_settled_publishes_wait_their_turn() {
        let mut inflight = Inflight::default();
        inflight.sent_by_router(1, "a", &Bytes::new(), None);
        inflight.settled_by_router(2);
        inflight.send_own(message("own"));
        inflight.sent_by_router(3, "b", &Bytes::new(), None);
        assert_eq!(
            inflight.release(),
            Vec::<u16>::new(),
            "1 is not acknowledged"
        );
        assert_eq!(inflight.acknowledged(3), Acked::Router);
        assert_eq!(inflight.release(), Vec::<u16>::new(), "3 waits for 1");
        inflight.acknowledged(1);
        assert_eq!(inflight.release(), [1, 2, 3]);
        inflight.settled_by_router(4);
        assert_eq!(inflight.release(), [4]);
        let (router, messages) = inflight.take();
        assert!(router.is_empty());
        assert_eq!(messages.len(), 1, "the own message is still owed");
    }

    #[test]
    fn a_qos1_publish_carries_its_packet_id_and_dup_flag() {
        let publish = qos1_publish(
            &Waiting {
                dup: true,
                ..message("t/x")
            },
            4242,
        );
        let wire = publish.serialize();
        assert_eq!(wire[0], 0x3a);
        assert_eq!(u16::from_be_bytes([wire[1], wire[2]]), 4242);
        assert_eq!(publish.topic.as_ref(), b"t/x");
        assert_eq!(publish.payload.as_ref(), b"p");
    }
}
